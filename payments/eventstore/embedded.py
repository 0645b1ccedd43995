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

Group commit: the threads of a process that append at the same time share one
transaction and one fsync (``append``; one process's groups and another's take turns on
the lock file).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from uuid import UUID

from payments.eventstore.port import (
    AppendResult,
    Closing,
    EventStoreUnavailable,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamNotFound,
    StreamState,
    Subscription,
    UnreadableEvent,
    WrongExpectedVersion,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,  -- max + 1: events are never deleted
    event_id    BLOB    NOT NULL,
    stream      TEXT    NOT NULL,
    category    TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    data        BLOB    NOT NULL,
    metadata    BLOB    NOT NULL,
    recorded_at REAL    NOT NULL,  -- Unix time, seconds
    UNIQUE (stream, version)
);
-- A category's events without walking past the others: subscriptions, lag and the
-- head stay cheap however many events of other categories the store holds.
CREATE INDEX IF NOT EXISTS events_by_category ON events (category, position);
"""
_INSERT = (
    "INSERT INTO events (event_id, stream, category, version, type, data, metadata, recorded_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_AFTER = (
    "INSERT INTO events (event_id, stream, category, version, type, data, metadata, recorded_at)"
    " SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS"
    " (SELECT 1 FROM events WHERE stream = ? AND version = ?)"
)

# data and metadata as BLOB whatever their storage class: a row that another tool wrote
# as TEXT holds the same JSON (a no-op for our own BLOBs).
_COLUMNS = (
    "event_id, stream, type, CAST(data AS BLOB), CAST(metadata AS BLOB), version, position,"
    " recorded_at"
)

# How often a live subscription looks for appends made by other processes. Appends
# made through this process's store wake subscribers at once instead.
POLL_INTERVAL = 0.05
# Waits between tries for another process's turn to append: short, since a turn lasts
# one commit (a fraction of a millisecond), doubling to this at most.
WRITER_FIRST_PAUSE = 0.00005
WRITER_LONGEST_PAUSE = 0.0002
# The most appends one transaction carries: bounds how long a group holds SQLite's write
# lock, and how long the last of its appends waits for the first one's answer.
GROUP_LIMIT = 64


def _category(stream: str) -> str:
    return stream.split("-", 1)[0]


def _recorded(row: tuple) -> RecordedEvent:
    event_id, stream, type_, data, metadata, version, position, recorded_at = row
    try:
        # By position: a catch-up builds one per event, and keywords cost a third more.
        return RecordedEvent(UUID(bytes=event_id), stream, type_, bytes(data), bytes(metadata),
                             version, position, datetime.fromtimestamp(recorded_at, UTC))
    except (TypeError, ValueError, OverflowError, OSError) as e:
        # A row this store did not write (NULL data, an id that is not 16 bytes...).
        raise UnreadableEvent(position, str(stream), str(type_), f"the stored row: {e}") from None


class _Append:
    """One caller's append in the group commit: its request, its state, its outcome."""

    __slots__ = ("done", "error", "events", "expected_version", "leads", "result", "stream",
                 "taken", "wakeup")

    def __init__(self, stream: str, events: Sequence[NewEvent],
                 expected_version: ExpectedVersion) -> None:
        self.stream = stream
        self.events = events
        self.expected_version = expected_version
        self.taken = False  # into a leader's group: its caller now waits for the outcome
        self.leads = False  # handed the lead by the last leader
        self.done = False  # its outcome is in result or error
        self.result: AppendResult | None = None
        self.error: BaseException | None = None
        self.wakeup: threading.Lock | None = None  # held while its caller waits in line


class EmbeddedEventStore(Closing):
    """The event store port on a SQLite file; safe across threads and processes."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        self._appended = threading.Condition()
        self._closed = False
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._errors = _SqliteErrors(self)
        self._schema_ready = False
        # Appends wait in line for a leader to commit them (see append), and take turns
        # among processes on a lock file beside the store (see _take_turn).
        self._line = threading.Lock()  # guards _queue and _leading
        self._queue: deque[_Append] = deque()  # appends that wait for a leader
        self._leading = False  # a thread of this process leads: the others queue
        self.commits = 0  # durable commits made: appends per commit show the grouping
        self._writer = threading.Lock()  # the leader's lock file descriptor, against close
        self._writer_fd: int | None = None
        self._writer_pid = 0
        # Nothing touches the file yet: a store that is down now may be up by first use,
        # and that first use reports it as EventStoreUnavailable like any later call.

    # --- connections ------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """One connection per thread: sqlite3 connections must not be shared."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise EventStoreUnavailable("the event store is closed")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EventStoreUnavailable(
                    f"embedded event store {self.path} is unavailable: {e}"
                ) from e
            with self._guard():  # here, so that a caller with a connection skips it
                # isolation_level=None: we issue BEGIN/COMMIT ourselves.
                connection = sqlite3.connect(
                    self.path, timeout=self.timeout, isolation_level=None,
                    check_same_thread=False,
                )
                try:
                    connection.execute("PRAGMA synchronous=FULL")  # per connection
                    with self._connections_lock:
                        if not self._schema_ready:
                            # WAL is a property of the file: set once, not per connection
                            # (switching journal mode takes a lock that busy waits skip).
                            connection.execute("PRAGMA journal_mode=WAL")
                            connection.executescript(SCHEMA)
                            self._schema_ready = True
                except sqlite3.Error:
                    connection.close()
                    raise
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    def _take_turn(self, deadline: float) -> int:
        """The leader's turn among processes: the lock file, locked by the time it
        returns its descriptor, or busy at ``deadline`` (monotonic). ``_end_turn`` ends it.

        Writers then never wait in SQLite's busy handler, whose sleeps grow to 100 ms
        (that was the 99th percentile of HTTP commands under 16 clients). A process
        that dies drops its lock. ``_writer`` only keeps ``close`` from closing the
        descriptor under a leader: within a process, one thread leads at a time. Two
        calls rather than a context manager: every append pays for what runs here.
        """
        if not self._writer.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise self._busy()
        try:
            fd = self._writer_lock_file()
            pause = WRITER_FIRST_PAUSE
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return fd
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise self._busy() from None
                    time.sleep(pause)
                    pause = min(pause * 2, WRITER_LONGEST_PAUSE)
        except BaseException:
            self._writer.release()
            raise

    def _end_turn(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._writer.release()

    def _busy(self) -> EventStoreUnavailable:
        return EventStoreUnavailable(
            f"embedded event store {self.path} is busy: no turn to append within"
            f" {self.timeout:g} s"
        )

    def _writer_lock_file(self) -> int:
        """This process's descriptor of the lock file (a forked child opens its own:
        an inherited descriptor would share the parent's lock)."""
        if self._writer_fd is None or self._writer_pid != os.getpid():
            try:  # the folder is there: append opened its connection first
                self._writer_fd = os.open(f"{self.path}-writer.lock", os.O_RDWR | os.O_CREAT,
                                          0o644)
            except OSError as e:
                raise EventStoreUnavailable(
                    f"embedded event store {self.path} is unavailable: {e}"
                ) from e
            self._writer_pid = os.getpid()
        return self._writer_fd

    def _guard(self) -> _SqliteErrors:
        return self._errors

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
        """Append in one durable transaction; the version check is part of the insert.

        Group commit: appends made meanwhile by other threads of this process share the
        transaction, and so the fsync, which is most of an append's time. The thread
        that finds no leader leads; the others queue and sleep. The leader takes the
        turn among processes (``_take_turn``), then the oldest waiting appends (with its
        own, ``GROUP_LIMIT`` in all), commits them together (``_commit``), wakes each of
        their threads with its own result or error, and hands the lead to the first of
        those that queued meanwhile (one wake-up per append, nobody woken for nothing).
        A lone writer leads at once: no thread of its own, no timer, no waiting for
        company.

        Waiting in line is bounded by ``timeout``, as the turn was before; once taken,
        an append waits for its leader's commit, which SQLite's busy timeout bounds in
        turn. Groups do not span processes: a leader would have to take other processes'
        events and hand back their answers through shared memory, and a process that
        died in the middle would leave theirs unknown; each process's leader takes the
        lock file in turn, and carries what its process queued meanwhile.
        """
        if not events:
            raise ValueError("nothing to append")
        if isinstance(expected_version, int) and expected_version < 0:
            raise ValueError(f"expected version {expected_version} is negative")
        self._connection()  # first: a closed store opens no lock file
        request = _Append(stream, events, expected_version)
        deadline = time.monotonic() + self.timeout
        with self._line:
            if self._leading:
                request.wakeup = threading.Lock()
                request.wakeup.acquire()
                self._queue.append(request)
            else:
                self._leading = True
        if request.wakeup is not None:
            self._follow(request, deadline)
        if not request.done:
            self._lead(request, deadline)
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    def _follow(self, request: _Append, deadline: float) -> None:
        """Sleep until a leader has answered ``request`` or handed it the lead: until the
        deadline while it waits in line (then busy), and for the answer once taken."""
        assert request.wakeup is not None
        try:
            if request.wakeup.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return
            with self._line:
                if not (request.taken or request.leads):
                    self._queue.remove(request)
                    raise self._busy()
            request.wakeup.acquire()
        except BaseException:  # busy, or interrupted (Ctrl-C) in line
            with self._line:
                if request in self._queue:
                    self._queue.remove(request)
                elif request.leads:
                    self._hand_on()
            raise

    def _lead(self, request: _Append, deadline: float) -> None:
        """Commit ``request`` with the oldest appends waiting in line, answer each, and
        hand on the lead. A failure before the group is taken is ``request``'s alone:
        the others wait on for the next leader."""
        group: list[_Append] = []
        committed = False
        try:
            connection = self._connection()
            fd = self._take_turn(deadline)
            try:
                with self._line:
                    group.append(request)
                    while self._queue and len(group) < GROUP_LIMIT:
                        group.append(self._queue.popleft())
                    for each in group:
                        each.taken = True
                committed = self._commit(connection, group)
            finally:
                self._end_turn(fd)
        finally:
            with self._line:
                for each in group[1:]:
                    each.done = True
                    assert each.wakeup is not None
                    each.wakeup.release()
                self._hand_on()
        if committed:
            with self._appended:
                self._appended.notify_all()

    def _hand_on(self) -> None:
        """The lead, to the first append in line, or to none (holding ``_line``)."""
        if self._queue:
            successor = self._queue.popleft()
            successor.leads = True
            assert successor.wakeup is not None
            successor.wakeup.release()
        else:
            self._leading = False

    def _commit(self, connection: sqlite3.Connection, group: list[_Append]) -> bool:
        """One transaction for ``group`` (``_insert_each``): an append that fails takes
        back its own rows only, and the others commit. True if it committed.

        A database error (I/O, a full disk, locked by another program) leaves the
        transaction in doubt: every append of the group hears ``EventStoreUnavailable``,
        as a lone append would, and the leader's connection is replaced. So does an
        interruption of the leader (KeyboardInterrupt), which it raises on; a retry with
        the same event ids then finds them, or appends them.
        """
        try:
            with self._guard():
                connection.execute("BEGIN IMMEDIATE")
                try:
                    committed = self._insert_each(connection, group)
                    connection.execute("COMMIT" if committed else "ROLLBACK")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
        except BaseException as error:
            leader = group[0]
            for each in group:
                each.result, each.error = None, error if each is leader else self._shared(error)
            if not isinstance(error, Exception):
                raise
            return False
        if committed:
            self.commits += 1
        return committed

    def _insert_each(self, connection: sqlite3.Connection, group: list[_Append]) -> bool:
        """Each append's rows, or its replay's result, or its error; True if any wrote.

        An append of several events in a group gets a savepoint, so that a failure
        after its first rows takes back only those. A single event is one statement,
        inserted or not; and a lone append's failure rolls back the whole transaction.
        An error of the database propagates: the whole transaction is in doubt.
        """
        grouped = len(group) > 1
        wrote = False
        for each in group:
            savepoint = grouped and len(each.events) > 1
            if savepoint:
                connection.execute("SAVEPOINT request")
            try:
                result = self._insert(connection, each.stream, each.events,
                                      each.expected_version)
                if result is None:
                    if savepoint:
                        connection.execute("ROLLBACK TO request")
                    result = self._replayed(connection, each.stream, each.events,
                                            each.expected_version)
                else:
                    wrote = True
                each.result = result
            except sqlite3.Error:
                raise
            except Exception as e:  # a conflict, or values that are no events: its own
                if savepoint:
                    connection.execute("ROLLBACK TO request")
                each.error = e.with_traceback(None)
            if savepoint:
                connection.execute("RELEASE request")
        return wrote

    def _shared(self, error: BaseException) -> EventStoreUnavailable:
        """What a follower hears when its group's transaction failed: what the leader
        heard if the store is unavailable, else that the append was interrupted."""
        shared = EventStoreUnavailable(
            str(error) if isinstance(error, EventStoreUnavailable)
            else f"embedded event store {self.path} is unavailable: the append was"
                 f" interrupted ({error!r})"
        )
        shared.__cause__ = error
        return shared

    @staticmethod
    def _insert(
        connection: sqlite3.Connection,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion,
    ) -> AppendResult | None:
        """Insert if the expectation holds; None if it does not (or the ids exist).

        The hot path is one statement per event: the unique (stream, version) and
        event_id keys catch a stream that moved on or a retried event, and for an
        exact expected version the first insert also requires that version to exist,
        so a stream can never get a gap.
        """
        if expected_version is StreamState.ANY:
            # No version to collide on: look for the first id in the stream instead.
            known = connection.execute(
                "SELECT 1 FROM events WHERE stream = ? AND event_id = ?",
                (stream, events[0].id.bytes),
            ).fetchone()
            if known:
                return None
            row = connection.execute(
                "SELECT max(version) FROM events WHERE stream = ?", (stream,)
            ).fetchone()
            start = 0 if row[0] is None else row[0] + 1
        elif expected_version is StreamState.NO_STREAM:
            start = 0
        else:  # append refused a negative one
            start = expected_version + 1
        recorded_at = time.time()
        category = _category(stream)
        cursor = connection.cursor()
        try:
            for offset, new in enumerate(events):
                values = (new.id.bytes, stream, category, start + offset, new.type, new.data,
                          new.metadata, recorded_at)
                if offset == 0 and start > 0:
                    cursor.execute(_INSERT_AFTER, (*values, stream, start - 1))
                    if cursor.rowcount == 0:
                        return None  # the version before ours does not exist yet
                else:
                    cursor.execute(_INSERT, values)
        except sqlite3.IntegrityError:
            return None
        return AppendResult(version=start + len(events) - 1, position=cursor.lastrowid or 0)

    @staticmethod
    def _replayed(
        connection: sqlite3.Connection,
        stream: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion,
    ) -> AppendResult:
        """The original result if these very events are in the stream already.

        That is how a client retries an append whose answer it never got. Otherwise
        the append is a conflict, never a silent duplicate.
        """
        ids = [e.id.bytes for e in events]
        found = {
            event_id: (s, v, p)
            for event_id, s, v, p in connection.execute(
                f"SELECT event_id, stream, version, position FROM events WHERE event_id IN"
                f" ({','.join('?' * len(ids))})",
                ids,
            )
        }
        if ids[0] in found:
            _, first, _ = found[ids[0]]
            in_order = [found.get(i, (None, None, None))[:2] for i in ids] == [
                (stream, first + n) for n in range(len(ids))
            ]
            expected_first = (
                first if expected_version is StreamState.ANY
                else 0 if expected_version is StreamState.NO_STREAM
                else expected_version + 1
            )
            if in_order and first == expected_first:
                _, version, position = found[ids[-1]]
                return AppendResult(version=version, position=position)
        row = connection.execute(
            "SELECT max(version) FROM events WHERE stream = ?", (stream,)
        ).fetchone()
        raise WrongExpectedVersion(stream, expected_version, row[0])

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
        return self.read_page(after=after, category=category, limit=limit)[0]

    def read_page(
        self, *, after: int | None, category: str, limit: int | None
    ) -> tuple[list[RecordedEvent], int]:
        """``read_all`` and the position it covers: when the page is not full, the last
        position of the whole store in the same snapshot (every event of the category
        up to there is in the page: positions become visible in order)."""
        with self._guard():
            connection = self._connection()
            connection.execute("BEGIN")  # one snapshot for both statements
            try:
                rows = connection.execute(
                    f"SELECT {_COLUMNS} FROM events WHERE category = ? AND position > ?"
                    " ORDER BY position LIMIT ?",
                    (category, after or 0, -1 if limit is None else limit),
                ).fetchall()
                full = limit is not None and len(rows) == limit
                last = None if full else connection.execute(
                    "SELECT max(position) FROM events"
                ).fetchone()[0]
            finally:
                connection.execute("COMMIT")
        events = []
        for row in rows:
            try:
                events.append(_recorded(row))
            except UnreadableEvent:
                if events:
                    # The events before it first; the next read starts at it.
                    return events, events[-1].position
                raise
        covered = events[-1].position if events else after or 0
        return events, max(covered, last or 0)

    def subscribe(
        self, *, after: int | None = None, category: str = "payments"
    ) -> EmbeddedSubscription:
        return EmbeddedSubscription(self, after=after, category=category)

    def head_position(self, *, category: str = "payments") -> int:
        with self._guard():
            # One step down the category's index, however large the store.
            row = self._connection().execute(
                "SELECT position FROM events WHERE category = ? ORDER BY position DESC LIMIT 1",
                (category,),
            ).fetchone()
        return row[0] if row else 0

    def close(self) -> None:
        self._closed = True
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        with self._writer:
            if self._writer_fd is not None and self._writer_pid == os.getpid():
                os.close(self._writer_fd)
            self._writer_fd = None
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


class EmbeddedSubscription(Subscription):
    """A catch-up subscription that reads in pages and then polls for appends."""

    PAGE = 500

    def __init__(self, store: EmbeddedEventStore, *, after: int | None, category: str) -> None:
        self._store = store
        self._after = after or 0
        self._category = category
        self._buffer: list[RecordedEvent] = []
        self._covered = self._after  # what the buffer's last read covered
        self._closed = False

    def _read(self) -> list[RecordedEvent]:
        """The next page, newest first (pop() from the end is O(1))."""
        events, self._covered = self._store.read_page(
            after=self._after, category=self._category, limit=self.PAGE
        )
        events.reverse()
        return events

    @property
    def position(self) -> int | None:
        # Once the buffer is handed out, the last read's coverage is the consumer's too.
        return self._after if self._buffer else max(self._after, self._covered)

    def get(self, timeout: float) -> RecordedEvent | None:
        deadline = time.monotonic() + timeout
        while not self._closed:
            if not self._buffer:
                self._buffer = self._read()
            if self._buffer:
                event = self._buffer.pop()
                self._after = event.position
                return event
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._store.wait_for_append(min(left, POLL_INTERVAL))
        return None

    def get_many(self, max_count: int, timeout: float) -> list[RecordedEvent]:
        """Whole slices of the page buffer: a catch-up costs no call per event."""
        first = self.get(timeout)
        if first is None:
            return []
        batch = [first]
        while len(batch) < max_count:
            if not self._buffer:
                try:
                    self._buffer = self._read()
                except UnreadableEvent:
                    break  # the events before it first; the next call raises it
                if not self._buffer:
                    break
            take = min(max_count - len(batch), len(self._buffer))
            chunk = self._buffer[-take:]
            del self._buffer[-take:]
            chunk.reverse()
            batch.extend(chunk)
            self._after = batch[-1].position
        return batch

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed
