"""Stopping on a signal without cutting a database write in half.

SIGTERM and Ctrl-C stop a sweep by raising KeyboardInterrupt in the main thread wherever it is. Raised inside
a write to a SQLite store (MLflow's or Optuna's), it could leave this process's connection holding the
database's write lock with nobody to commit or roll it back: the same process's next write (marking its trial
interrupted, closing its runs) then waited on its own lock, three minutes per call (seen: a worker whose
launcher was SIGKILLed took minutes to stop). Inside `whole_write()` the signal is noted instead, and raised
the moment the write returns."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

_depth = 0  # whole writes under way in the main thread (the only one signal handlers run in)
_pending: Optional[str] = None


def request_stop(reason: str) -> None:
    """From a signal handler: stop now (KeyboardInterrupt), or, during a whole write, as soon as it ends."""
    global _pending
    if _depth:
        _pending = reason
        return
    raise KeyboardInterrupt(reason)


@contextmanager
def whole_write() -> Iterator[None]:
    """A call to a store that a signal must not cut short (other threads' calls are not signalled: as is)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if not _depth and _pending is not None:
            reason, _pending = _pending, None
            raise KeyboardInterrupt(reason)
