"""One contract for every event store adapter.

Each test runs on the embedded SQLite store, on the EventStoreDB adapter against the
in-process protocol-level double (``tests/esdb_double.py``), and on the EventStoreDB
adapter against a real server when ``ESDB_TEST_URI`` is set (skipped, visibly,
otherwise). Every test uses a category of its own, so a real server's older data
never gets in the way.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import pytest

from payments.eventstore import (
    AppendResult,
    EventStore,
    EventStoreUnavailable,
    NewEvent,
    StreamNotFound,
    StreamState,
    WrongExpectedVersion,
)
from payments.eventstore.embedded import EmbeddedEventStore
from payments.eventstore.esdb import EventStoreDBEventStore
from tests.esdb_double import EventStoreDBDouble

ESDB_TEST_URI = os.environ.get("ESDB_TEST_URI")


@dataclass
class Harness:
    """A store under test, a category of its own, and a way to see it down."""

    store: EventStore
    category: str
    open_down_store: Callable[[], EventStore]

    def stream(self) -> str:
        return f"{self.category}-{uuid4()}"


@pytest.fixture(params=["embedded", "esdb-double", "esdb-real"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    category = f"contract{uuid4().hex[:10]}"
    if request.param == "embedded":
        store = EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=1.0)
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        yield Harness(
            store, category, lambda: EmbeddedEventStore(blocker / "events.sqlite3", timeout=1.0)
        )
        store.close()
    elif request.param == "esdb-double":
        with EventStoreDBDouble() as double:
            store = EventStoreDBEventStore(double.uri, timeout=1.0)

            def stop_double() -> EventStore:
                double.stop()
                return store

            yield Harness(store, category, stop_double)
            store.close()
    else:
        if not ESDB_TEST_URI:
            pytest.skip("ESDB_TEST_URI is not set: no real EventStoreDB to run against")
        store = EventStoreDBEventStore(ESDB_TEST_URI, timeout=5.0)
        yield Harness(
            store, category,
            lambda: EventStoreDBEventStore("esdb://127.0.0.1:1?Tls=false", timeout=1.0),
        )
        store.close()


def event(n: int = 0, **kwargs: object) -> NewEvent:
    return NewEvent(type="Tested", data=json.dumps({"n": n}).encode(),
                    metadata=b'{"schemaVersion":1}', **kwargs)  # type: ignore[arg-type]


def test_append_to_a_new_stream_and_read_it_back(harness: Harness) -> None:
    stream = harness.stream()
    new = event(1)
    result = harness.store.append(stream, [new], StreamState.NO_STREAM)
    assert result.version == 0
    assert result.position > 0
    [recorded] = harness.store.read_stream(stream)
    assert (recorded.id, recorded.stream, recorded.type) == (new.id, stream, "Tested")
    assert (recorded.data, recorded.metadata) == (new.data, new.metadata)
    assert (recorded.version, recorded.position) == (0, result.position)


def test_several_events_append_atomically_in_order(harness: Harness) -> None:
    stream = harness.stream()
    result = harness.store.append(stream, [event(n) for n in range(3)], StreamState.NO_STREAM)
    assert result.version == 2
    more = harness.store.append(stream, [event(3)], 2)
    assert more.version == 3
    recorded = harness.store.read_stream(stream)
    assert [json.loads(r.data)["n"] for r in recorded] == [0, 1, 2, 3]
    assert [r.version for r in recorded] == [0, 1, 2, 3]
    positions = [r.position for r in recorded]
    assert positions == sorted(set(positions))
    assert positions[2] == result.position
    assert positions[3] == more.position


def test_a_wrong_expected_version_appends_nothing(harness: Harness) -> None:
    stream = harness.stream()
    harness.store.append(stream, [event(0)], StreamState.NO_STREAM)
    for expected in (StreamState.NO_STREAM, 1, 5):
        with pytest.raises(WrongExpectedVersion):
            harness.store.append(stream, [event(9)], expected)
    with pytest.raises(WrongExpectedVersion):
        harness.store.append(harness.stream(), [event(9)], 0)  # the stream does not exist
    assert len(harness.store.read_stream(stream)) == 1


def test_any_version_appends_at_the_end(harness: Harness) -> None:
    stream = harness.stream()
    assert harness.store.append(stream, [event(0)], StreamState.ANY).version == 0
    assert harness.store.append(stream, [event(1)], StreamState.ANY).version == 1


def test_reading_a_stream_that_does_not_exist(harness: Harness) -> None:
    with pytest.raises(StreamNotFound):
        harness.store.read_stream(harness.stream())


def test_appending_the_same_event_ids_again_is_idempotent(harness: Harness) -> None:
    stream = harness.stream()
    first = [event(0), event(1)]
    original = harness.store.append(stream, first, StreamState.NO_STREAM)
    assert harness.store.append(stream, first, StreamState.NO_STREAM) == original
    follow_up = [event(2)]
    appended = harness.store.append(stream, follow_up, 1)
    assert harness.store.append(stream, follow_up, 1) == appended
    anywhere = [event(3)]
    at_end = harness.store.append(stream, anywhere, StreamState.ANY)
    assert harness.store.append(stream, anywhere, StreamState.ANY) == at_end
    assert [r.id for r in harness.store.read_stream(stream)] == [
        e.id for e in first + follow_up + anywhere
    ]


def test_read_all_follows_the_category_from_after_a_position(harness: Harness) -> None:
    assert harness.store.read_all(category=harness.category) == []
    streams = [harness.stream() for _ in range(3)]
    results = [harness.store.append(s, [event(i)], StreamState.NO_STREAM)
               for i, s in enumerate(streams)]
    other = f"other{uuid4().hex[:8]}-{uuid4()}"
    harness.store.append(other, [event(99)], StreamState.NO_STREAM)

    everything = harness.store.read_all(category=harness.category)
    assert [r.stream for r in everything] == streams
    assert [r.position for r in everything] == [r.position for r in results]
    after_first = harness.store.read_all(after=results[0].position, category=harness.category)
    assert [r.stream for r in after_first] == streams[1:]
    limited = harness.store.read_all(category=harness.category, limit=2)
    assert [r.stream for r in limited] == streams[:2]


def test_head_position_is_at_or_after_the_category_s_last_event(harness: Harness) -> None:
    stream = harness.stream()
    first = harness.store.append(stream, [event(0)], StreamState.NO_STREAM)
    head = harness.store.head_position(category=harness.category)
    assert head >= first.position
    assert harness.store.read_all(after=head, category=harness.category) == []

    last = harness.store.append(stream, [event(1)], 0)
    assert harness.store.head_position(category=harness.category) >= last.position


def test_a_subscription_s_position_moves_past_other_categories(harness: Harness) -> None:
    """Server checkpoints (EventStoreDB) or the store's head (embedded): a runner can move
    its checkpoint past other categories' events, so a restart does not read them again."""
    mine = harness.store.append(harness.stream(), [event(0)], StreamState.NO_STREAM)
    others = [harness.store.append(f"other{uuid4().hex[:8]}-{uuid4()}", [event(n)],
                                   StreamState.NO_STREAM) for n in range(400)]
    head = harness.store.head_position(category=harness.category)
    with harness.store.subscribe(after=mine.position - 1, category=harness.category) as sub:
        assert sub.get(timeout=5).position == mine.position
        assert sub.position == mine.position or sub.position >= others[-1].position
        deadline = time.monotonic() + 10
        while sub.position < max(head, others[-1].position) and time.monotonic() < deadline:
            assert sub.get(timeout=0.2) is None  # no event of the category: only checkpoints
        assert sub.position >= others[-1].position
        assert sub.position >= head
    with harness.store.subscribe(after=sub.position, category=harness.category) as again:
        assert again.get(timeout=0.3) is None
        late = harness.store.append(harness.stream(), [event(1)], StreamState.NO_STREAM)
        assert again.get(timeout=5).position == late.position


@pytest.mark.timeout(60)
def test_concurrent_appends_to_one_stream_exactly_one_wins_per_version(
    harness: Harness,
) -> None:
    stream = harness.stream()
    harness.store.append(stream, [event(0)], StreamState.NO_STREAM)
    winners: Counter[int] = Counter()
    losses = Counter[int]()
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def writer() -> None:
        barrier.wait()
        for _ in range(15):
            version = harness.store.read_stream(stream)[-1].version
            try:
                harness.store.append(stream, [event(version + 1)], version)
            except WrongExpectedVersion:
                with lock:
                    losses[version] += 1
            else:
                with lock:
                    winners[version] += 1

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    recorded = harness.store.read_stream(stream)
    assert all(count == 1 for count in winners.values()), winners
    assert sum(winners.values()) == len(recorded) - 1
    assert [r.version for r in recorded] == list(range(len(recorded)))


@pytest.mark.timeout(60)
def test_appends_released_together_each_get_their_own_answer_and_a_wrong_one_fails_alone(
    harness: Harness,
) -> None:
    """A mixed batch (the embedded store commits such appends as one group): a new
    stream, streams moving on, an exact retry, and one expected version that is wrong.
    Each thread hears its own answer; the wrong one appends nothing; the rest commit."""
    existing = [harness.stream() for _ in range(4)]
    retried = [event(0)]
    originals = {s: harness.store.append(s, retried if n == 0 else [event(0)],
                                         StreamState.NO_STREAM)
                 for n, s in enumerate(existing)}
    wrong, fresh = existing[1], harness.stream()
    appends = {
        existing[0]: (retried, StreamState.NO_STREAM),  # a retry of what is there: a replay
        wrong: ([event(1)], 5),
        existing[2]: ([event(1), event(2)], 0),
        existing[3]: ([event(1)], StreamState.ANY),
        fresh: ([event(0), event(1)], StreamState.NO_STREAM),
    }
    start = threading.Barrier(len(appends))
    answers: dict[str, object] = {}

    def append(stream: str) -> None:
        events, expected = appends[stream]
        start.wait()
        try:
            answers[stream] = harness.store.append(stream, events, expected)
        except WrongExpectedVersion as e:
            answers[stream] = e

    threads = [threading.Thread(target=append, args=(s,)) for s in appends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    refused = answers[wrong]
    assert isinstance(refused, WrongExpectedVersion), refused
    assert (refused.stream, refused.expected, refused.actual) == (wrong, 5, 0)
    assert len(harness.store.read_stream(wrong)) == 1
    assert answers[existing[0]] == originals[existing[0]]
    assert [r.id for r in harness.store.read_stream(existing[0])] == [retried[0].id]
    new_positions = []
    for stream in (existing[2], existing[3], fresh):
        events, _ = appends[stream]
        recorded = harness.store.read_stream(stream)
        added = recorded[-len(events):]
        assert [r.id for r in added] == [e.id for e in events]
        assert [r.version for r in recorded] == list(range(len(recorded)))
        assert answers[stream] == AppendResult(version=len(recorded) - 1,
                                               position=added[-1].position)
        assert [r.position for r in added] == sorted(r.position for r in added)
        new_positions += [r.position for r in added]
    everything = harness.store.read_all(category=harness.category)
    assert sorted(new_positions) == [r.position for r in everything
                                     if r.position > max(o.position for o in originals.values())]


@pytest.mark.timeout(60)
def test_a_subscription_catches_up_then_receives_live_appends(harness: Harness) -> None:
    history = [harness.stream() for _ in range(3)]
    for s in history:
        harness.store.append(s, [event()], StreamState.NO_STREAM)
    with harness.store.subscribe(category=harness.category) as subscription:
        received = [subscription.get(timeout=10) for _ in history]
        assert [r.stream for r in received if r] == history
        assert subscription.get(timeout=0.2) is None  # caught up: nothing more yet
        live = harness.stream()
        result = harness.store.append(live, [event()], StreamState.NO_STREAM)
        arrived = subscription.get(timeout=10)
        assert arrived is not None
        assert (arrived.stream, arrived.position) == (live, result.position)


@pytest.mark.timeout(60)
def test_a_subscription_resumes_after_a_position_and_misses_nothing(harness: Harness) -> None:
    streams = [harness.stream() for _ in range(4)]
    positions = [harness.store.append(s, [event()], StreamState.NO_STREAM).position
                 for s in streams[:2]]

    def write_the_rest() -> None:
        for s in streams[2:]:
            harness.store.append(s, [event()], StreamState.NO_STREAM)

    with harness.store.subscribe(after=positions[0], category=harness.category) as subscription:
        writer = threading.Thread(target=write_the_rest)
        writer.start()
        try:
            received = [subscription.get(timeout=10) for _ in streams[1:]]
        finally:
            writer.join()  # before the store closes, even when get fails
    assert [r.stream for r in received if r] == streams[1:]


@pytest.mark.timeout(60)
def test_a_store_that_is_down_answers_unavailable_within_the_deadline(
    harness: Harness,
) -> None:
    stream = harness.stream()
    harness.store.append(stream, [event()], StreamState.NO_STREAM)
    with pytest.raises(EventStoreUnavailable):  # noqa: PT012 - opening may be what fails
        down = harness.open_down_store()
        down.append(harness.stream(), [event()], StreamState.NO_STREAM)
    with pytest.raises(EventStoreUnavailable):  # noqa: PT012
        down = harness.open_down_store()
        down.read_stream(stream)


@pytest.mark.timeout(120)
def test_a_subscriber_never_skips_an_event_while_many_write_at_once(harness: Harness) -> None:
    writers, per_writer = 4, 25
    with harness.store.subscribe(category=harness.category) as subscription:

        def write() -> None:
            for _ in range(per_writer):
                harness.store.append(harness.stream(), [event()], StreamState.NO_STREAM)

        threads = [threading.Thread(target=write) for _ in range(writers)]
        for thread in threads:
            thread.start()
        received = []
        try:
            while len(received) < writers * per_writer:
                arrived = subscription.get(timeout=10)
                assert arrived is not None, f"only {len(received)} events arrived"
                received.append(arrived)
        finally:
            for thread in threads:  # before the store closes, even when get fails
                thread.join()
    positions = [r.position for r in received]
    assert positions == sorted(set(positions))
    assert positions == [r.position for r in harness.store.read_all(category=harness.category)]
