"""Storage calls that survive a database that is away for a moment (a restart, a network blip)."""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional

import optuna

from ..progress import worker_label


def transient_storage_errors() -> tuple[type[BaseException], ...]:
    """What a storage that is away for a moment raises (a restart, a network blip)."""
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, optuna.exceptions.StorageInternalError)


# What a database says when the fault is its disk or its file, not the network: a minute of retries does not
# fix it, and every retry holds the trial's process (SQLite's and PostgreSQL's wording).
LASTING = ("database or disk is full", "No space left on device", "attempt to write a readonly database",
           "could not extend file", "Disk quota exceeded")


def error_behind(exc: BaseException, matches: Callable[[BaseException], bool]) -> Optional[BaseException]:
    """`exc` or the first error behind it (its cause, else its context, and so on) that `matches`. Optuna wraps
    the database's error in StorageInternalError, and its optimize loop raises `AssertionError: Should not
    reach` over an error that kept it from recording a trial's end."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if matches(seen):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_lasting(exc: BaseException) -> bool:
    """Does `exc`, or an error behind it, say that the fault is the database's disk or file (LASTING)?"""
    return error_behind(exc, lambda e: any(words in str(e) for words in LASTING)) is not None


def retry_transient(fn: Callable, what: str, attempts: int = 7):
    """Call `fn`, retrying while the storage is unreachable (a restart, a network blip): 1+2+...+32 s."""
    for attempt in range(attempts):
        try:
            return fn()
        except transient_storage_errors() as exc:
            if attempt == attempts - 1 or is_lasting(exc):
                raise
            delay = 2 ** attempt
            print(f"{worker_label()}storage unreachable during {what} ({storage_problem(exc)}); retrying in {delay} s",
                  file=sys.stderr, flush=True)
            time.sleep(delay)


def storage_error_behind(exc: BaseException) -> Optional[BaseException]:
    """The storage error that caused `exc` (a full disk under the database, a server away), if one did."""
    return error_behind(exc, lambda e: isinstance(e, transient_storage_errors()))


def storage_problem(exc: BaseException) -> str:
    """A storage error in one line: its type and the database's own words (`database or disk is full`)."""
    original = getattr(exc, "orig", None) or exc.__cause__ or exc
    text = str(original).splitlines()[0] if str(original) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
