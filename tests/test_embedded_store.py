"""The embedded store's own behaviour beyond the shared contract: whose turn it is to
append, between the threads of a process and between processes; what it answers when
its file, its connection or a row is not as it wrote them; the subscription's pages and
positions; and the resources it holds."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payments.eventstore import (
    AppendResult,
    EventStoreUnavailable,
    ExpectedVersion,
    NewEvent,
    StreamNotFound,
    StreamState,
    UnreadableEvent,
    WrongExpectedVersion,
    open_event_store,
)
from payments.eventstore.embedded import EmbeddedEventStore, EmbeddedSubscription

ROOT = Path(__file__).resolve().parent.parent


def new_event() -> NewEvent:
    return NewEvent(type="PaymentCreated", data=b"{}", metadata=b"{}", id=uuid4())


def test_an_append_waits_its_turn_and_says_busy_when_it_never_comes(tmp_path: Path) -> None:
    store = EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=0.3)
    try:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        # Another writer's turn (any open file description of the lock file will do).
        other = os.open(f"{store.path}-writer.lock", os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX)
        try:
            with pytest.raises(EventStoreUnavailable, match="busy"):
                store.append("payments-b", [new_event()], StreamState.NO_STREAM)
            waiting = threading.Thread(
                target=store.append, args=("payments-c", [new_event()], StreamState.NO_STREAM))
            waiting.start()
        finally:
            fcntl.flock(other, fcntl.LOCK_UN)
            os.close(other)
        waiting.join(5)
        assert not waiting.is_alive()
        assert [e.stream for e in store.read_all()] == ["payments-a", "payments-c"]
    finally:
        store.close()


APPENDER = """
import sys
from uuid import uuid4
from payments.eventstore import NewEvent, StreamState
from payments.eventstore.embedded import EmbeddedEventStore

store = EmbeddedEventStore(sys.argv[1], timeout=30)
for n in range(int(sys.argv[3])):
    event = NewEvent(type="PaymentCreated", data=b"{}", metadata=b"{}", id=uuid4())
    store.append(f"payments-{sys.argv[2]}-{n}", [event], StreamState.NO_STREAM)
store.close()
"""


def test_processes_and_threads_appending_at_once_all_land_in_order(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = EmbeddedEventStore(path, timeout=30)
    try:
        processes = [
            subprocess.Popen([sys.executable, "-c", APPENDER, str(path), f"p{i}", "150"],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            for i in range(2)
        ]
        threads = [
            threading.Thread(target=lambda t=t: [
                store.append(f"payments-t{t}-{n}", [new_event()], StreamState.NO_STREAM)
                for n in range(150)
            ])
            for t in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [p.wait(60) for p in processes] == [0, 0]
        events = list(store.read_all())
        assert len(events) == 5 * 150
        assert [e.position for e in events] == list(range(1, 5 * 150 + 1))
        assert len({e.stream for e in events}) == 5 * 150
    finally:
        store.close()


# --- appends: what a refusal says ------------------------------------------------------

def test_an_append_of_nothing_or_at_a_negative_version_is_a_programming_error(
    embedded_store: EmbeddedEventStore,
) -> None:
    with pytest.raises(ValueError, match=r"^nothing to append$"):
        embedded_store.append("payments-a", [], StreamState.NO_STREAM)
    with pytest.raises(ValueError, match=r"^expected version -1 is negative$"):
        embedded_store.append("payments-a", [new_event()], -1)
    with pytest.raises(StreamNotFound):
        embedded_store.read_stream("payments-a")


def test_a_conflict_names_the_stream_the_expected_and_the_actual_version(
    embedded_store: EmbeddedEventStore,
) -> None:
    embedded_store.append("payments-a", [new_event()], StreamState.NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as raised:
        embedded_store.append("payments-a", [new_event()], 5)
    assert (raised.value.stream, raised.value.expected, raised.value.actual) == (
        "payments-a", 5, 0)
    assert str(raised.value) == "stream 'payments-a' is at version 0, expected 5"
    with pytest.raises(StreamNotFound) as missing:
        embedded_store.read_stream("payments-b")
    assert (missing.value.stream, str(missing.value)) == (
        "payments-b", "stream 'payments-b' not found")


def test_a_retry_is_a_replay_only_of_the_very_events_at_the_very_version(
    embedded_store: EmbeddedEventStore,
) -> None:
    """The same first event followed by other events, or the same events sent at another
    expected version, is a different append: a conflict, never a silent success."""
    first, second, other = new_event(), new_event(), new_event()
    embedded_store.append("payments-a", [first, second], StreamState.NO_STREAM)
    with pytest.raises(WrongExpectedVersion):
        embedded_store.append("payments-a", [first, other], StreamState.NO_STREAM)
    later = new_event()
    embedded_store.append("payments-a", [later], 1)
    with pytest.raises(WrongExpectedVersion):
        embedded_store.append("payments-a", [later], StreamState.NO_STREAM)
    assert [r.id for r in embedded_store.read_stream("payments-a")] == [
        first.id, second.id, later.id]


def test_each_event_is_stamped_with_the_utc_time_it_was_recorded(
    embedded_store: EmbeddedEventStore,
) -> None:
    before = datetime.now(UTC)
    embedded_store.append("payments-a", [new_event()], StreamState.NO_STREAM)
    after = datetime.now(UTC)
    [recorded] = embedded_store.read_stream("payments-a")
    assert recorded.recorded_at is not None
    assert recorded.recorded_at.tzinfo is UTC
    # A float of seconds keeps microseconds to within a microsecond or so.
    assert before.timestamp() - 0.001 <= recorded.recorded_at.timestamp() <= \
        after.timestamp() + 0.001


# --- the file and the connection -------------------------------------------------------

def test_a_store_in_folders_that_do_not_exist_yet_makes_them(tmp_path: Path) -> None:
    """Whichever call comes first: a read opens the database, an append its lock file."""
    reader = EmbeddedEventStore(tmp_path / "a" / "b" / "events.sqlite3")
    writer = EmbeddedEventStore(tmp_path / "c" / "d" / "events.sqlite3")
    try:
        assert reader.read_all() == []
        assert writer.append("payments-a", [new_event()], StreamState.NO_STREAM).version == 0
    finally:
        reader.close()
        writer.close()


def test_a_path_that_cannot_be_a_folder_is_unavailable_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    path = tmp_path / "a-file" / "events.sqlite3"
    why = f"embedded event store {path} is unavailable: [Errno 17] File exists: '{path.parent}'"
    with EmbeddedEventStore(path) as store:
        with pytest.raises(EventStoreUnavailable) as reading:
            store.read_all()
        with pytest.raises(EventStoreUnavailable) as appending:
            store.append("payments-a", [new_event()], StreamState.NO_STREAM)
    assert str(reading.value) == str(appending.value) == why


def test_a_file_that_is_not_a_database_is_unavailable_until_it_is_one(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    path.write_bytes(b"not a database, but it is long enough to have a header" * 4)
    with EmbeddedEventStore(path) as store:
        with pytest.raises(EventStoreUnavailable) as raised:
            store.read_all()
        assert str(raised.value) == (
            f"embedded event store {path} is unavailable: file is not a database")
        path.write_bytes(b"")  # an empty file is an empty database
        assert store.append("payments-a", [new_event()], StreamState.NO_STREAM).version == 0


def test_an_append_blocked_by_another_program_s_write_says_unavailable_in_time(
    tmp_path: Path,
) -> None:
    """Another program (the sqlite3 shell, a repair script) holding the write lock: the
    append waits the store's timeout, not SQLite's default, and the next one works."""
    store = EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=0.2)
    try:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(EventStoreUnavailable, match="is unavailable: database is locked"):
            store.append("payments-a", [new_event()], 0)
        assert time.monotonic() - started < 2
        other.execute("ROLLBACK")
        other.close()
        assert store.append("payments-a", [new_event()], 0).version == 1
    finally:
        store.close()


def open_files(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open (Linux: /proc/self/fd)."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                names.append(Path(target).name)
    return sorted(names)


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(),
                                reason="needs /proc/self/fd (Linux)")


def fail_log_writes(store: EmbeddedEventStore) -> None:
    """Every connection's log file (open now) fails every write, as a full device would."""
    full = os.open("/dev/full", os.O_RDWR)
    try:
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") == f"{store.path}-wal":
                    os.dup2(full, int(fd))
    finally:
        os.close(full)


@needs_proc
def test_a_connection_that_hit_an_io_error_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    """The connection's log file now fails every write (as a stale or full device would):
    the append says unavailable, and the retry opens the files again and succeeds."""
    with EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=1.0) as store:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        fail_log_writes(store)
        retried = new_event()
        with pytest.raises(EventStoreUnavailable, match="database or disk is full"):
            store.append("payments-a", [retried], 0)
        assert store.append("payments-a", [retried], 0).version == 1
        assert len(store.read_stream("payments-a")) == 2


@needs_proc
def test_calls_reuse_the_thread_s_connection_and_close_releases_every_file(
    tmp_path: Path,
) -> None:
    for stream in ("payments-a", "payments-b"):  # the second store after the first closed
        store = EmbeddedEventStore(tmp_path / "events.sqlite3")
        for version in range(20):
            expected = StreamState.NO_STREAM if version == 0 else version - 1
            store.append(stream, [new_event()], expected)
            store.read_stream(stream)
            store.read_all()
            store.head_position()
        assert open_files(tmp_path) == [
            "events.sqlite3", "events.sqlite3-shm", "events.sqlite3-wal",
            "events.sqlite3-writer.lock",
        ]
        store.close()
        assert open_files(tmp_path) == []
        store.close()  # a second close is harmless


def test_the_lock_file_is_readable_by_all_and_writable_by_the_owner_only(
    embedded_store: EmbeddedEventStore,
) -> None:
    embedded_store.append("payments-a", [new_event()], StreamState.NO_STREAM)
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(os.stat(f"{embedded_store.path}-writer.lock").st_mode)
    assert mode == 0o644 & ~umask


def test_a_closed_store_refuses_every_call(embedded_store: EmbeddedEventStore) -> None:
    embedded_store.append("payments-a", [new_event()], StreamState.NO_STREAM)
    subscription = embedded_store.subscribe()
    embedded_store.close()
    calls = [
        lambda: embedded_store.append("payments-a", [new_event()], 0),
        lambda: embedded_store.read_stream("payments-a"),
        lambda: embedded_store.read_all(),
        lambda: embedded_store.head_position(),
        lambda: subscription.get(timeout=0),
    ]
    for call in calls:
        with pytest.raises(EventStoreUnavailable, match=r"^the event store is closed$"):
            call()


@needs_proc
def test_an_append_to_a_closed_store_opens_nothing(tmp_path: Path) -> None:
    """Found by the mutation run: the refusal came after the writers' lock file was
    opened again, and that descriptor was never closed."""
    store = EmbeddedEventStore(tmp_path / "events.sqlite3")
    store.append("payments-a", [new_event()], StreamState.NO_STREAM)
    store.close()
    assert open_files(tmp_path) == []
    with pytest.raises(EventStoreUnavailable, match=r"^the event store is closed$"):
        store.append("payments-a", [new_event()], 0)
    assert open_files(tmp_path) == []


def test_a_writers_lock_file_that_cannot_be_opened_is_unavailable_and_says_why(
        tmp_path: Path) -> None:
    store = EmbeddedEventStore(tmp_path / "events.sqlite3")
    (tmp_path / "events.sqlite3-writer.lock").mkdir()  # something else has the name
    with pytest.raises(EventStoreUnavailable) as refused:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
    assert str(refused.value) == (
        f"embedded event store {store.path} is unavailable: [Errno 21] Is a directory:"
        f" '{tmp_path / 'events.sqlite3-writer.lock'}'")
    store.close()


def test_a_forked_child_takes_its_turn_on_a_lock_file_of_its_own(tmp_path: Path) -> None:
    """A server that forks its workers after the store was made (gunicorn --preload):
    an inherited descriptor would share the parent's lock, so the child opens its own
    and waits for the parent's turn to end."""
    store = EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=0.3)
    fcntl.flock(store._writer_lock_file(), fcntl.LOCK_EX)  # the parent is appending
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's outcome is its exit code
        try:
            store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        except EventStoreUnavailable as e:
            os._exit(3 if "is busy" in str(e) else 4)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    store.close()
    assert os.waitstatus_to_exitcode(status) == 3  # waited, and said so in time


def test_a_store_opened_directly_waits_as_long_as_one_opened_by_uri(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    with EmbeddedEventStore(path) as direct, open_event_store(f"sqlite:///{path}") as by_uri:
        assert direct.timeout == by_uri.timeout


# --- group commit: appends of threads that wait meanwhile share one transaction -------

Request = tuple[str, list[NewEvent], ExpectedVersion]
Answer = AppendResult | Exception


def in_line(store: EmbeddedEventStore, count: int) -> None:
    """Wait until ``count`` appends are in line: one leads, the others queue behind it."""
    deadline = time.monotonic() + 10
    while not (store._leading and len(store._queue) == count - 1):
        assert time.monotonic() < deadline, f"{len(store._queue)} appends queued"
        time.sleep(0.001)


def appended_as_one_group(
    store: EmbeddedEventStore, requests: list[Request],
    meanwhile: Callable[[], None] = lambda: None,
) -> tuple[list[Answer], list[str]]:
    """Each request appended by a thread of its own, in this order, while the test holds
    the lock-file descriptor's lock: the first thread leads and waits for it, the others
    queue behind it; then (after ``meanwhile``) the leader takes them all. Each thread's
    answer, in order, and the statements SQLite ran meanwhile (every thread opened its
    connection before it got in line)."""
    answers: list[Answer | None] = [None] * len(requests)

    def append(n: int) -> None:
        try:
            answers[n] = store.append(*requests[n])
        except Exception as e:  # the answer under test
            answers[n] = e

    threads = [threading.Thread(target=append, args=(n,)) for n in range(len(requests))]
    statements: list[str] = []
    with store._writer:
        for n, thread in enumerate(threads):
            thread.start()
            in_line(store, n + 1)  # so the queue's order is the requests' order
        for connection in store._connections:
            connection.set_trace_callback(statements.append)
        meanwhile()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    for connection in store._connections:
        connection.set_trace_callback(None)
    assert all(answer is not None for answer in answers)
    return answers, statements  # type: ignore[return-value]


TRANSACTIONS = ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")


def test_appends_that_wait_meanwhile_share_one_commit_and_each_hears_its_own_answer(
    tmp_path: Path,
) -> None:
    with EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=30) as store:
        moved_on = [new_event()]
        before = store.append("payments-moved", moved_on, StreamState.NO_STREAM).position
        commits = store.commits
        requests: list[Request] = [
            ("payments-a", [new_event(), new_event()], StreamState.NO_STREAM),
            ("payments-moved", [new_event()], StreamState.NO_STREAM),  # wrong: it exists
            ("payments-moved", moved_on, StreamState.NO_STREAM),  # a retry: a replay
            ("payments-moved", [new_event()], 0),
            ("payments-b", [new_event()], StreamState.ANY),
        ]
        answers, statements = appended_as_one_group(store, requests)

        assert [s for s in statements if s in TRANSACTIONS] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert statements.count("SAVEPOINT request") == 1  # for the one of two events
        assert store.commits == commits + 1
        assert answers[0] == AppendResult(version=1, position=before + 2)
        assert isinstance(answers[1], WrongExpectedVersion)
        assert (answers[1].expected, answers[1].actual) == (StreamState.NO_STREAM, 0)
        assert answers[2] == AppendResult(version=0, position=before)
        assert answers[3] == AppendResult(version=1, position=before + 3)
        assert answers[4] == AppendResult(version=0, position=before + 4)
        assert [(e.stream, e.version, e.id) for e in store.read_all(after=before)] == [
            ("payments-a", 0, requests[0][1][0].id), ("payments-a", 1, requests[0][1][1].id),
            ("payments-moved", 1, requests[3][1][0].id), ("payments-b", 0, requests[4][1][0].id),
        ]


def test_the_leader_s_own_append_can_fail_and_the_group_still_commits(tmp_path: Path) -> None:
    with EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=30) as store:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        answers, statements = appended_as_one_group(store, [
            ("payments-a", [new_event()], 3),  # the first thread's: it leads
            ("payments-b", [new_event()], StreamState.NO_STREAM),
        ])
        assert isinstance(answers[0], WrongExpectedVersion)
        assert (answers[0].expected, answers[0].actual) == (3, 0)
        assert answers[1] == AppendResult(version=0, position=2)
        assert [s for s in statements if s in TRANSACTIONS] == ["BEGIN IMMEDIATE", "COMMIT"]
        assert [(e.stream, e.version) for e in store.read_all()] == [
            ("payments-a", 0), ("payments-b", 0)]


def test_a_group_that_writes_nothing_is_rolled_back_not_committed(tmp_path: Path) -> None:
    with EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=30) as store:
        first = [new_event()]
        store.append("payments-a", first, StreamState.NO_STREAM)
        commits = store.commits
        answers, statements = appended_as_one_group(store, [
            ("payments-a", first, StreamState.NO_STREAM),
            ("payments-a", [new_event()], 4),
        ])
        assert answers[0] == AppendResult(version=0, position=1)
        assert isinstance(answers[1], WrongExpectedVersion)
        assert [s for s in statements if s in TRANSACTIONS] == ["BEGIN IMMEDIATE", "ROLLBACK"]
        assert store.commits == commits
        assert len(store.read_all()) == 1


def test_a_failing_append_leaves_none_of_its_rows_in_the_group_s_commit(tmp_path: Path) -> None:
    """Its first event went in before its second collided with a row another tool wrote
    (version 2, past a gap), or before its second turned out to be no event at all: its
    savepoint takes the first back, and the appends around it commit."""
    with EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=30) as store:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        with contextlib.closing(sqlite3.connect(store.path)) as db, db:
            db.execute(
                "INSERT INTO events (event_id, stream, category, version, type, data, metadata,"
                " recorded_at) VALUES (?, 'payments-a', 'payments', 2, 'Repaired', x'7b7d',"
                " x'7b7d', 0)", (uuid4().bytes,))
        not_an_event = NewEvent(type="PaymentCreated", data=b"{}", id=None)  # type: ignore[arg-type]
        answers, _ = appended_as_one_group(store, [
            ("payments-b", [new_event()], StreamState.NO_STREAM),
            ("payments-a", [new_event(), new_event()], 0),
            ("payments-c", [new_event(), not_an_event], StreamState.NO_STREAM),
            ("payments-d", [new_event()], StreamState.NO_STREAM),
        ])
        assert answers[0] == AppendResult(version=0, position=3)
        assert isinstance(answers[1], WrongExpectedVersion)
        assert isinstance(answers[2], AttributeError)
        assert answers[3] == AppendResult(version=0, position=4)
        assert [(e.stream, e.version) for e in store.read_all(after=2)] == [
            ("payments-b", 0), ("payments-d", 0)]
        assert [r.version for r in store.read_stream("payments-a")] == [0, 2]


@needs_proc
def test_a_group_whose_commit_fails_tells_every_append_unavailable(tmp_path: Path) -> None:
    """The log file fails every write (as a full device would): the transaction is lost,
    so each append hears what a lone one would, and nothing was written; the leader's
    connection is dropped (the next call of its thread opens a fresh one)."""
    path = tmp_path / "events.sqlite3"
    with EmbeddedEventStore(path, timeout=30) as store:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        requests: list[Request] = [(f"payments-{n}", [new_event()], StreamState.NO_STREAM)
                                   for n in range(3)]
        answers, _ = appended_as_one_group(store, requests, lambda: fail_log_writes(store))
        assert [type(a) for a in answers] == [EventStoreUnavailable] * 3
        [why] = {str(a) for a in answers}
        assert why.startswith(f"embedded event store {path} is unavailable: ")
        assert len(store._connections) == 3  # the main thread's and the followers'
    with EmbeddedEventStore(path) as fresh:
        assert [e.stream for e in fresh.read_all()] == ["payments-a"]
        assert [fresh.append(*request).version for request in requests] == [0, 0, 0]


class Interrupting:
    """An event whose id interrupts whoever reads it, as Ctrl-C would the leader."""

    type, data, metadata = "PaymentCreated", b"{}", b"{}"

    @property
    def id(self) -> UUID:
        raise KeyboardInterrupt


def test_an_interrupted_leader_raises_and_its_followers_hear_unavailable(tmp_path: Path) -> None:
    with EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=30) as store:
        interrupted: list[BaseException] = []

        def lead() -> None:
            try:
                store.append("payments-a", [Interrupting()],  # type: ignore[list-item]
                             StreamState.NO_STREAM)
            except BaseException as e:  # the thread's outcome under test
                interrupted.append(e)

        leader = threading.Thread(target=lead)
        answers: list[Answer] = []
        followers = [threading.Thread(target=lambda n=n: answers.append(_answer(
            store, (f"payments-{n}", [new_event()], StreamState.NO_STREAM)))) for n in range(2)]
        with store._writer:
            leader.start()
            in_line(store, 1)
            for n, follower in enumerate(followers):
                follower.start()
                in_line(store, n + 2)
        for thread in (leader, *followers):
            thread.join(30)
        assert [type(e) for e in interrupted] == [KeyboardInterrupt]
        assert [type(a) for a in answers] == [EventStoreUnavailable] * 2
        assert all("the append was interrupted (KeyboardInterrupt())" in str(a) for a in answers)
        assert store.read_all() == []
        assert store.append("payments-a", [new_event()], StreamState.NO_STREAM).version == 0


def _answer(store: EmbeddedEventStore, request: Request) -> Answer:
    try:
        return store.append(*request)
    except Exception as e:  # the answer under test
        return e


def test_an_append_that_waits_past_its_timeout_for_a_leader_leaves_the_queue(
    tmp_path: Path,
) -> None:
    with EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=0.2) as store:
        answers: list[Answer] = []
        threads = [threading.Thread(target=lambda n=n: answers.append(_answer(
            store, (f"payments-{n}", [new_event()], StreamState.NO_STREAM)))) for n in range(2)]
        with store._writer:  # the first thread leads and waits for it; the second queues
            for n, thread in enumerate(threads):
                thread.start()
                in_line(store, n + 1)
            for thread in threads:
                thread.join(30)
        assert [type(a) for a in answers] == [EventStoreUnavailable] * 2
        assert all("is busy: no turn to append within 0.2 s" in str(a) for a in answers)
        assert (len(store._queue), store._leading) == (0, False)
        assert store.append("payments-a", [new_event()], StreamState.NO_STREAM).version == 0


@st.composite
def appends_then_a_group(draw: st.DrawFn) -> tuple[list[Request], list[Request]]:
    """Appends made one at a time, then appends made as one group: to a few streams, at
    any expected version, of new events or of events some append sent before."""
    sent: list[list[NewEvent]] = []

    def request() -> Request:
        if sent and draw(st.booleans()):
            events = draw(st.sampled_from(sent))
        else:
            events = [NewEvent(type="Tested", data=b"{}", id=UUID(int=len(sent) * 2 + n))
                      for n in range(draw(st.integers(1, 2)))]
        sent.append(events)
        expected = draw(st.sampled_from([StreamState.NO_STREAM, StreamState.ANY, 0, 1, 2]))
        return draw(st.sampled_from(["payments-a", "payments-b", "payments-c"])), events, expected

    before = [request() for _ in range(draw(st.integers(0, 4)))]
    return before, [request() for _ in range(draw(st.integers(2, 6)))]


def described(answer: Answer) -> object:
    return answer if isinstance(answer, AppendResult) else (type(answer), str(answer))


@settings(max_examples=30, deadline=None)
@given(appends=appends_then_a_group())
def test_a_group_answers_and_writes_what_its_appends_one_at_a_time_would(
    appends: tuple[list[Request], list[Request]],
) -> None:
    before, group = appends
    with tempfile.TemporaryDirectory() as folder, \
            EmbeddedEventStore(Path(folder) / "grouped.sqlite3", timeout=30) as grouped, \
            EmbeddedEventStore(Path(folder) / "one-by-one.sqlite3", timeout=30) as one_by_one:
        for store in (grouped, one_by_one):
            for request in before:
                _answer(store, request)
        answers, statements = appended_as_one_group(grouped, group)
        already = len(one_by_one.read_all())
        alone = [_answer(one_by_one, request) for request in group]
        assert [described(a) for a in answers] == [described(a) for a in alone]
        wrote = len(one_by_one.read_all()) > already
        assert [s for s in statements if s in TRANSACTIONS] == [
            "BEGIN IMMEDIATE", "COMMIT" if wrote else "ROLLBACK"]
        assert [(e.id, e.stream, e.version, e.position) for e in grouped.read_all()] == [
            (e.id, e.stream, e.version, e.position) for e in one_by_one.read_all()]


# --- rows another tool wrote --------------------------------------------------------

def store_foreign_row(store: EmbeddedEventStore, stream: str, event_id: bytes) -> int:
    """A row written without the store (a repair script, another program); its position."""
    store.head_position()  # the store has made its file
    with contextlib.closing(sqlite3.connect(store.path)) as db, db:  # closed, committed
        return db.execute(
            "INSERT INTO events (event_id, stream, category, version, type, data, metadata,"
            " recorded_at) VALUES (?, ?, ?, 0, 'Repaired', x'7b7d', x'7b7d', 0)",
            (event_id, stream, stream.split("-")[0]),
        ).lastrowid


def test_a_row_the_store_cannot_read_is_named_by_its_place(
    embedded_store: EmbeddedEventStore,
) -> None:
    position = store_foreign_row(embedded_store, "payments-x", b"\x00")
    with pytest.raises(UnreadableEvent) as raised:
        embedded_store.read_stream("payments-x")
    error = raised.value
    assert (error.position, error.stream, error.type, error.reason) == (
        position, "payments-x", "Repaired", "the stored row: bytes is not a 16-char string")


def append_one_each(store: EmbeddedEventStore, streams: list[str]) -> list[int]:
    """One event in each stream; their positions."""
    return [store.append(s, [new_event()], StreamState.NO_STREAM).position for s in streams]


def test_a_page_ends_before_an_unreadable_row_and_the_next_read_names_it(
    embedded_store: EmbeddedEventStore,
) -> None:
    good = append_one_each(embedded_store, ["payments-a", "payments-b", "payments-c"])
    bad = store_foreign_row(embedded_store, "payments-x", b"\x00")
    append_one_each(embedded_store, ["payments-d"])
    events, covered = embedded_store.read_page(after=None, category="payments", limit=10)
    assert ([e.position for e in events], covered) == (good, good[-1])
    with pytest.raises(UnreadableEvent) as raised:
        embedded_store.read_page(after=covered, category="payments", limit=10)
    assert raised.value.position == bad


def test_a_page_covers_up_to_its_last_event_when_full_else_to_the_store_s_last(
    embedded_store: EmbeddedEventStore,
) -> None:
    """A full page says nothing of what lies beyond it; a page that is not full has seen
    everything, other categories' events included."""
    assert embedded_store.read_page(after=None, category="payments", limit=3) == ([], 0)
    mine = append_one_each(embedded_store, [f"payments-{n}" for n in range(4)])
    others = append_one_each(embedded_store, ["shipping-a", "shipping-b"])
    events, covered = embedded_store.read_page(after=None, category="payments", limit=3)
    assert ([e.position for e in events], covered) == (mine[:3], mine[2])
    events, covered = embedded_store.read_page(after=mine[2], category="payments", limit=3)
    assert ([e.position for e in events], covered) == (mine[3:], others[-1])
    assert embedded_store.read_page(after=others[-1], category="payments", limit=3) == (
        [], others[-1])


def test_the_head_is_the_category_s_last_event_and_zero_before_any(
    embedded_store: EmbeddedEventStore,
) -> None:
    assert embedded_store.head_position() == 0
    [mine] = append_one_each(embedded_store, ["payments-a"])
    append_one_each(embedded_store, ["shipping-a"])
    assert embedded_store.head_position() == mine  # "payments" unless told otherwise


# --- the subscription ------------------------------------------------------------------

def test_a_subscription_follows_the_payments_category_unless_told_otherwise(
    embedded_store: EmbeddedEventStore,
) -> None:
    append_one_each(embedded_store, ["shipping-a"])
    [mine] = append_one_each(embedded_store, ["payments-a"])
    with embedded_store.subscribe() as subscription:
        assert subscription.get(timeout=0).position == mine


def test_a_subscription_starts_where_it_is_told_and_an_empty_store_covers_nothing(
    embedded_store: EmbeddedEventStore,
) -> None:
    """On an empty store the position stays 0: a checkpoint moved past it would skip the
    first event ever appended."""
    with embedded_store.subscribe(after=7) as resumed:
        assert resumed.position == 7
    with embedded_store.subscribe() as subscription:
        assert subscription.position == 0
        assert subscription.get(timeout=0) is None
        assert subscription.position == 0
        [first] = append_one_each(embedded_store, ["payments-a"])
        assert subscription.get(timeout=0).position == first == 1


def test_get_waits_the_whole_timeout_for_a_live_event_before_saying_none(
    embedded_store: EmbeddedEventStore,
) -> None:
    with embedded_store.subscribe() as subscription:
        started = time.monotonic()
        assert subscription.get(timeout=0.2) is None
        assert time.monotonic() - started >= 0.2


def test_a_closed_subscription_returns_nothing_more(embedded_store: EmbeddedEventStore) -> None:
    append_one_each(embedded_store, ["payments-a"])
    subscription = embedded_store.subscribe()
    assert subscription.closed is False
    subscription.close()
    assert subscription.closed is True
    started = time.monotonic()
    assert subscription.get(timeout=5) is None
    assert subscription.get_many(10, timeout=5) == []
    assert time.monotonic() - started < 1


@pytest.fixture
def pages_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    """Small pages, so a few events cross page boundaries."""
    monkeypatch.setattr(EmbeddedSubscription, "PAGE", 2)


@pytest.mark.usefixtures("pages_of_two")
def test_get_many_takes_whole_batches_across_pages_in_order(
    embedded_store: EmbeddedEventStore,
) -> None:
    mine = append_one_each(embedded_store, [f"payments-{n}" for n in range(5)])
    others = append_one_each(embedded_store, ["shipping-a"])
    with embedded_store.subscribe() as subscription:
        assert [e.position for e in subscription.get_many(4, timeout=0)] == mine[:4]
        assert subscription.position == mine[3]
        assert [e.position for e in subscription.get_many(10, timeout=0)] == mine[4:]
        assert subscription.position == others[-1]  # the last read looked past them
        assert subscription.get_many(10, timeout=0) == []


def test_get_many_never_returns_more_than_asked(embedded_store: EmbeddedEventStore) -> None:
    mine = append_one_each(embedded_store, [f"payments-{n}" for n in range(5)])
    with embedded_store.subscribe() as subscription:  # one page holds all five
        assert [e.position for e in subscription.get_many(3, timeout=0)] == mine[:3]
        assert [e.position for e in subscription.get_many(3, timeout=0)] == mine[3:]


@pytest.mark.usefixtures("pages_of_two")
def test_a_catch_up_reads_a_page_at_a_time_and_each_read_covers_the_store_then(
    embedded_store: EmbeddedEventStore,
) -> None:
    """At most a page of events in memory however long the catch-up; the page that is not
    full also covers what other categories appended meanwhile."""
    mine = append_one_each(embedded_store, ["payments-a", "payments-b", "payments-c"])
    with embedded_store.subscribe() as subscription:
        assert subscription.get(timeout=0).position == mine[0]
        [other] = append_one_each(embedded_store, ["shipping-a"])
        assert [subscription.get(timeout=0).position for _ in mine[1:]] == mine[1:]
        assert subscription.position == other


@pytest.mark.usefixtures("pages_of_two")
def test_get_returns_each_event_once_across_pages(embedded_store: EmbeddedEventStore) -> None:
    mine = append_one_each(embedded_store, [f"payments-{n}" for n in range(5)])
    with embedded_store.subscribe() as subscription:
        received = []
        for _ in mine:
            received.append(subscription.get(timeout=0).position)
            assert subscription.position == received[-1]
        assert received == mine
        assert subscription.get(timeout=0) is None


def test_get_many_returns_the_events_before_an_unreadable_one_then_names_it(
    embedded_store: EmbeddedEventStore,
) -> None:
    good = append_one_each(embedded_store, ["payments-a", "payments-b"])
    bad = store_foreign_row(embedded_store, "payments-x", b"\x00")
    with embedded_store.subscribe() as subscription:
        assert [e.position for e in subscription.get_many(10, timeout=0)] == good
        with pytest.raises(UnreadableEvent) as raised:
            subscription.get_many(10, timeout=0)
        assert raised.value.position == bad
