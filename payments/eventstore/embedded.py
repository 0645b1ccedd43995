"""The embedded event store: one SQLite file, WAL, durable commits.

Why this is safe as an event store:

* ``UNIQUE (stream, version)`` turns a lost race into an ``IntegrityError`` that we
  report as ``WrongExpectedVersion``; the expected version is checked inside the
  same write transaction (``BEGIN IMMEDIATE``), so two writers cannot both pass it.
* ``position`` is an ``AUTOINCREMENT`` key assigned while the writer holds SQLite's
  single write lock, and the lock is held until commit. So positions become visible
  in order: a reader can never see position N+1 committed while N is still pending,
  and a subscriber that reads "after N" can never skip an event.
* ``synchronous=FULL`` in WAL mode: a commit is on disk when ``append`` returns.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self
from uuid import UUID

from payments.eventstore.port import (
    AppendResult,
    EventStoreUnavailable,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamNotFound,
    StreamState,
    WrongExpectedVersion,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    stream      TEXT    NOT NULL,
    category    TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    data        BLOB    NOT NULL,
    metadata    BLOB    NOT NULL,
    recorded_at TEXT    NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX IF NOT EXISTS events_by_category ON events (category, position);
"""

_COLUMNS = "event_id, stream, type, data, metadata, version, position, recorded_at"

# How often a live subscription looks for appends made by other processes. Appends
# made through this process's store wake subscribers at once instead.
POLL_INTERVAL = 0.05


def _category(stream: str) -> str:
    return stream.split("-", 1)[0]


def _recorded(row: tuple) -> RecordedEvent:
    event_id, stream, type_, data, metadata, version, position, recorded_at = row
    return RecordedEvent(
        id=UUID(event_id),
        stream=stream,
        type=type_,
        data=bytes(data),
        metadata=bytes(metadata),
        version=version,
        position=position,
        recorded_at=datetime.fromisoformat(recorded_at),
    )


class EmbeddedEventStore:
    """The event store port on a SQLite file; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        self._appended = threading.Condition()
        self._closed = False
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EventStoreUnavailable(f"cannot create {self.path.parent}: {e}") from e
        with self._guard():
            self._connection().executescript(SCHEMA)

    # --- connections ------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread: sqlite3 connections must not be shared."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise EventStoreUnavailable("the event store is closed")
            # isolation_level=None: we issue BEGIN/COMMIT ourselves.
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None,
                check_same_thread=False,
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _guard(self) -> _SqliteErrors:
        return _SqliteErrors(self)

    def _forget_connection(self) -> None:
        """Drop this thread's connection after an I/O error, so a retry reconnects."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            with self._connections_lock:
                if connection in self._connections:
                    self._connections.remove(connection)
            connection.close()

    # --- the port -----------------------------------------------------------------

    def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        """Append in one durable transaction, checking the version inside it."""
        if not events:
            raise ValueError("nothing to append")
        with self._guard():
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = self._append_locked(connection, stream, events, expected_version)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        with self._appended:
            self._appended.notify_all()
        return result

    def _append_locked(
        self,
        connection: sqlite3.Connection,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion,
    ) -> AppendResult:
        row = connection.execute(
            "SELECT max(version) FROM events WHERE stream = ?", (stream,)
        ).fetchone()
        current: int | None = row[0]
        start = self._start_version(stream, current, expected_version)
        replayed = self._replayed(connection, stream, events, expected_version, start)
        if replayed is not None:
            return replayed
        if start != (0 if current is None else current + 1):
            raise WrongExpectedVersion(stream, expected_version, current)
        recorded_at = datetime.now(UTC).isoformat()
        category = _category(stream)
        connection.executemany(
            "INSERT INTO events (event_id, stream, category, version, type, data, metadata,"
            " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (str(e.id), stream, category, start + i, e.type, e.data, e.metadata, recorded_at)
                for i, e in enumerate(events)
            ],
        )
        position = connection.execute("SELECT last_insert_rowid()").fetchone()[0]
        return AppendResult(version=start + len(events) - 1, position=position)

    @staticmethod
    def _start_version(stream: str, current: int | None, expected: ExpectedVersion) -> int:
        """The version the first new event gets if the expectation holds."""
        if expected is StreamState.ANY:
            return 0 if current is None else current + 1
        if expected is StreamState.NO_STREAM:
            return 0
        if expected < 0:
            raise ValueError(f"expected version {expected} is negative")
        return expected + 1

    @staticmethod
    def _replayed(
        connection: sqlite3.Connection,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion,
        start: int,
    ) -> AppendResult | None:
        """The original result if these very events were appended at ``start`` already.

        That is how a client retries an append whose answer it never got. Ids that
        exist anywhere else make the append a conflict, never a silent duplicate.
        """
        ids = [str(e.id) for e in events]
        rows = connection.execute(
            f"SELECT event_id, stream, version, position FROM events WHERE event_id IN"
            f" ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
        if not rows:
            return None
        found = {event_id: (s, v, p) for event_id, s, v, p in rows}
        first = found.get(ids[0], (None, start, None))[1]
        if expected_version is not StreamState.ANY:
            first = start
        if [found.get(i, (None, None, None))[:2] for i in ids] != [
            (stream, first + n) for n in range(len(ids))
        ]:
            raise WrongExpectedVersion(stream, expected_version, None)
        _, version, position = found[ids[-1]]
        return AppendResult(version=version, position=position)

    def read_stream(self, stream: str) -> list[RecordedEvent]:
        with self._guard():
            rows = self._connection().execute(
                f"SELECT {_COLUMNS} FROM events WHERE stream = ? ORDER BY version", (stream,)
            ).fetchall()
        if not rows:
            raise StreamNotFound(stream)
        return [_recorded(row) for row in rows]

    def read_all(
        self, *, after: int | None = None, category: str = "payments", limit: int | None = None
    ) -> list[RecordedEvent]:
        with self._guard():
            rows = self._connection().execute(
                f"SELECT {_COLUMNS} FROM events WHERE category = ? AND position > ?"
                " ORDER BY position LIMIT ?",
                (category, after or 0, -1 if limit is None else limit),
            ).fetchall()
        return [_recorded(row) for row in rows]

    def subscribe(
        self, *, after: int | None = None, category: str = "payments"
    ) -> EmbeddedSubscription:
        return EmbeddedSubscription(self, after=after, category=category)

    def head_position(self, *, category: str = "payments") -> int:
        with self._guard():
            row = self._connection().execute(
                "SELECT max(position) FROM events WHERE category = ?", (category,)
            ).fetchone()
        return row[0] or 0

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
        with self._appended:
            self._appended.notify_all()

    def wait_for_append(self, timeout: float) -> None:
        """Block until this process appends or ``timeout`` passes (subscriptions use it)."""
        with self._appended:
            self._appended.wait(timeout)


class _SqliteErrors:
    """Turns SQLite's I/O and locking errors into the port's ``EventStoreUnavailable``."""

    def __init__(self, store: EmbeddedEventStore) -> None:
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, sqlite3.Error):
            self.store._forget_connection()
            raise EventStoreUnavailable(
                f"embedded event store {self.store.path} is unavailable: {exc}"
            ) from exc


class EmbeddedSubscription:
    """A catch-up subscription that reads in pages and then polls for appends."""

    PAGE = 500

    def __init__(self, store: EmbeddedEventStore, *, after: int | None, category: str) -> None:
        self._store = store
        self._after = after or 0
        self._category = category
        self._buffer: list[RecordedEvent] = []
        self._closed = False

    def get(self, timeout: float) -> RecordedEvent | None:
        deadline = time.monotonic() + timeout
        while not self._closed:
            if not self._buffer:
                self._buffer = self._store.read_all(
                    after=self._after, category=self._category, limit=self.PAGE
                )
                self._buffer.reverse()  # pop() from the end is O(1)
            if self._buffer:
                event = self._buffer.pop()
                self._after = event.position
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._store.wait_for_append(min(left, POLL_INTERVAL))
        return None

    def close(self) -> None:
        self._closed = True

    def __iter__(self) -> Iterator[RecordedEvent]:
        while not self._closed:
            event = self.get(timeout=1.0)
            if event is not None:
                yield event

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
