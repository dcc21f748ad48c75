"""One writer of a table at a time: a file lock beside the database (local databases)."""

from __future__ import annotations

import contextlib
import os
import time

from ..errors import CuratorError
from .database import Database


@contextlib.contextmanager
def writer_lock(database: Database, table: str, timeout: float = 3600.0):
    """Serialise curator's writers of one table (local databases): read-modify-commit
    sequences (statistics, scores) then never interleave. Waits with backoff; readers
    never wait (every Lance version is a consistent snapshot). On object stores, where
    no lock exists, Lance's optimistic commits and the statistics' version check apply.
    """
    if not database.is_local:
        yield
        return
    import fcntl

    folder = os.path.join(database.uri, "_curator_locks")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{table}.lock"), "a+") as handle:
        deadline, delay = time.monotonic() + timeout, 0.005
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CuratorError(f"table {table!r} stayed locked by another writer for {timeout:.0f} s")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

