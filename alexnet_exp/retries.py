"""Storage calls that survive a database that is away for a moment (a restart, a network blip)."""
from __future__ import annotations

import sys
import time
from typing import Callable

import optuna

from .progress import worker_label


def transient_storage_errors() -> tuple[type[BaseException], ...]:
    """What a storage that is away for a moment raises (a restart, a network blip)."""
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, optuna.exceptions.StorageInternalError)


def retry_transient(fn: Callable, what: str, attempts: int = 7):
    """Call `fn`, retrying while the storage is unreachable (a restart, a network blip): 1+2+...+32 s."""
    for attempt in range(attempts):
        try:
            return fn()
        except transient_storage_errors() as exc:
            if attempt == attempts - 1:
                raise
            delay = 2 ** attempt
            print(f"{worker_label()}storage unreachable during {what} ({type(exc).__name__}); retrying in {delay} s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)
