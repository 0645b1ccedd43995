"""One active runner per projection.

On PostgreSQL: a session-level advisory lock, held by the runner's own connection
(Django's connections are per thread, so each runner thread has its own session; the
lock goes with the session, however the process ends). On SQLite: an exclusive
``flock`` on a file beside the database file, which the kernel also releases when
the process dies. A second runner waits, saying so once, until the lock is free.

A session lock lasts only as long as its connection. Should Django close and reopen
the runner's connection (``CONN_MAX_AGE``, ``close_old_connections``, a failed health
check), the new session does not hold the lock; ``holds`` tells, and the runner
checks it inside every batch transaction, so it never commits a batch unlocked.
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
from dataclasses import dataclass
from pathlib import Path

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)

RETRY_SECONDS = 0.5


@dataclass(frozen=True, eq=False)
class Lock:
    """A held projection lock: the flocked file (SQLite) or the session (PostgreSQL)."""

    name: str
    fd: int | None = None
    session: object | None = None  # the DB-API connection whose session holds the lock


def _advisory_key(name: str) -> int:
    """A stable signed 64-bit key for the projection's name."""
    digest = hashlib.sha256(f"projection:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_file(name: str) -> Path:
    database = str(connection.settings_dict["NAME"])
    if database.startswith("file:") or database == ":memory:" or not database:
        return Path(tempfile.gettempdir()) / f"paymentsite-{os.getpid()}-{name}.lock"
    return Path(f"{database}.{name}.lock")


def _try_lock_sqlite(name: str) -> Lock | None:
    fd = os.open(_lock_file(name), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return Lock(name, fd=fd)


def _try_lock_postgresql(name: str) -> Lock | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_advisory_key(name)])
        acquired = bool(cursor.fetchone()[0])
    return Lock(name, session=connection.connection) if acquired else None


def _is_locked_postgresql(name: str) -> bool:
    """Whether any session holds the lock: read from pg_locks, taking nothing.

    (Trying the lock would not do: a session that holds it gets it again.) A bigint
    advisory key shows as classid (high 32 bits), objid (low 32 bits), objsubid 1.
    """
    key = _advisory_key(name) & 0xFFFF_FFFF_FFFF_FFFF
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = %s AND objid = %s AND objsubid = 1)",
            [key >> 32, key & 0xFFFF_FFFF],
        )
        return bool(cursor.fetchone()[0])


def try_lock(name: str) -> Lock | None:
    """The lock if it was free (now held by this thread's connection), else None."""
    if connection.vendor == "postgresql":
        return _try_lock_postgresql(name)
    return _try_lock_sqlite(name)


def holds(lock: Lock) -> bool:
    """Whether the lock is still held: on PostgreSQL, whether this thread's connection
    is still the session that took it (a closed and reopened connection is not)."""
    if lock.session is not None:
        return connection.connection is lock.session
    return True


def unlock(name: str, lock: Lock) -> None:
    if lock.fd is not None:
        fcntl.flock(lock.fd, fcntl.LOCK_UN)
        os.close(lock.fd)
        return
    if not holds(lock):
        return  # that session has ended, and its lock with it
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [_advisory_key(name)])
    except DatabaseError:
        # A broken connection: end the session for sure, which releases the lock.
        connection.close()


def is_locked(name: str) -> bool:
    """Whether some runner holds the projection (for the status command)."""
    if connection.vendor == "postgresql":
        return _is_locked_postgresql(name)
    lock = try_lock(name)
    if lock is None:
        return True
    unlock(name, lock)
    return False


@contextlib.contextmanager
def single_runner(name: str, *, stop: threading.Event) -> Iterator[Lock | None]:
    """Hold the projection's lock for the block; yields None if stopped while waiting."""
    lock = try_lock(name)
    if lock is None:
        logger.warning("projection %s: another runner is active; waiting for it", name)
        while lock is None:
            if stop.wait(RETRY_SECONDS):
                yield None
                return
            lock = try_lock(name)
        logger.warning("projection %s: the other runner is gone; taking over", name)
    try:
        yield lock
    finally:
        unlock(name, lock)
