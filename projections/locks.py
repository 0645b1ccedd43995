"""One active runner per projection.

On PostgreSQL: a session-level advisory lock, held by the runner's connection (it
goes with the process, however the process ends). On SQLite: an exclusive
``flock`` on a file beside the database file, which the kernel also releases when
the process dies. A second runner waits, saying so once, until the lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.5


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for the projection's name."""
    digest = hashlib.sha256(f"projection:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_file(name: str) -> Path:
    database = str(connection.settings_dict["NAME"])
    if database.startswith("file:") or database == ":memory:" or not database:
        return Path(tempfile.gettempdir()) / f"paymentsite-{os.getpid()}-{name}.lock"
    return Path(f"{database}.{name}.lock")


def _try_lock_sqlite(name: str) -> int | None:
    fd = os.open(_lock_file(name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _try_lock_postgresql(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_advisory_key(name)])
        return bool(cursor.fetchone()[0])


def _unlock_postgresql(name: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s)", [_advisory_key(name)])


def try_lock(name: str) -> object | None:
    """A token if the projection's lock was free (now held), else None."""
    if connection.vendor == "postgresql":
        return name if _try_lock_postgresql(name) else None
    return _try_lock_sqlite(name)


def unlock(name: str, token: object) -> None:
    if connection.vendor == "postgresql":
        _unlock_postgresql(name)
    else:
        assert isinstance(token, int)
        fcntl.flock(token, fcntl.LOCK_UN)
        os.close(token)


def is_locked(name: str) -> bool:
    """Whether some runner holds the projection (for the status command)."""
    token = try_lock(name)
    if token is None:
        return True
    unlock(name, token)
    return False


@contextlib.contextmanager
def single_runner(name: str, *, stop: threading.Event) -> Iterator[bool]:
    """Hold the projection's lock for the block; yields False if stopped while waiting."""
    token = try_lock(name)
    if token is None:
        logger.warning("projection %s: another runner is active; waiting for it", name)
        while token is None:
            if stop.wait(RETRY_SECONDS):
                yield False
                return
            token = try_lock(name)
        logger.warning("projection %s: the other runner is gone; taking over", name)
    try:
        yield True
    finally:
        unlock(name, token)
