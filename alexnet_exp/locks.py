"""Exclusive sections across processes and machines, for the few steps of a sweep that must happen once.

Creating a study's MLflow parent run, enqueuing its baselines, evaluating the best trial on the test split:
each is "read, then write if missing", which N launchers started at the same instant would all do at once.
Optuna's storage has no compare-and-set, so these steps run under a lock that lives where the study lives:
- SQLite storage (one machine): an `fcntl` lock on a file beside the database;
- PostgreSQL: a session-level advisory lock (`pg_advisory_lock`) on the study's database;
- MySQL: a named lock (`GET_LOCK`).
Every one of them is released by the operating system or the server when its holder dies, so a killed process
never leaves a study locked.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from .redaction import redact_url

WAIT_NOTE_SECONDS = 30.0  # say what we wait for when a lock is held longer than this


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the duration of the block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _wait(lambda: _try_flock(fcntl, fd), f"the lock file {path}")
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_flock(fcntl, fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _wait(attempt, what: str, poll: float = 0.05) -> None:
    started = time.monotonic()
    noted = False
    while not attempt():
        if not noted and time.monotonic() - started > WAIT_NOTE_SECONDS:
            print(f"waiting for {what} (another process of this study holds it)", file=sys.stderr, flush=True)
            noted = True
        time.sleep(poll)


def _lock_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks, stable across processes and machines."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///path` URL; None for in-memory databases and other URLs."""
    if not url.startswith("sqlite:"):
        return None
    path = url.split(":///", 1)[1] if ":///" in url else ""
    path = path.split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def study_lock(storage_url: str, study_name: str) -> Iterator[None]:
    """An exclusive section for one study, shared by every process that uses `storage_url`."""
    db = sqlite_path(storage_url)
    if db is not None:
        with file_lock(db.with_name(f"{db.name}.{study_name}.lock")):
            yield
        return
    backend = storage_url.split(":", 1)[0].split("+", 1)[0]
    if backend not in ("postgresql", "mysql"):
        yield  # in-memory storages live in one process: nothing to share
        return
    import sqlalchemy

    key = f"alexnet_exp:{study_name}"
    engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        # autocommit: a session-level lock needs no transaction, and one left idle in a transaction can be cut
        # by the server (idle_in_transaction_session_timeout), releasing the lock silently
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if backend == "postgresql":
                _wait(lambda: conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"),
                                           {"k": _lock_key(key)}).scalar(),
                      f"the study lock of {study_name!r} on {redact_url(storage_url)}", poll=0.2)
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _lock_key(key)})
            else:
                name = hashlib.sha256(key.encode()).hexdigest()[:60]  # MySQL names are at most 64 characters
                _wait(lambda: conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1,
                      f"the study lock of {study_name!r} on {redact_url(storage_url)}", poll=0.2)
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
    finally:
        engine.dispose()
