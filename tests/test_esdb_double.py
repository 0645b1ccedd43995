"""The EventStoreDB adapter against the protocol-level double (tests/esdb_double.py).

These cover what the shared contract suite does not: the wire (BatchAppend, reads
with deadlines, subscriptions over gRPC), error mapping, and a server that goes
away and comes back. No Django, no real EventStoreDB.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from esdbclient.connection_spec import ConnectionSpec
from esdbclient.exceptions import WrongCurrentVersion

from payments.eventstore.esdb import EventStoreDBEventStore, keepalive_options
from payments.eventstore.port import (
    EventStoreUnavailable,
    NewEvent,
    StreamNotFound,
    StreamState,
    Subscription,
    WrongExpectedVersion,
)
from tests.esdb_double import EventStoreDBDouble, SilenceableLink

pytestmark = pytest.mark.timeout(30)

DEADLINE = 1.0


def event(type_: str = "PaymentInitiated", n: int = 0) -> NewEvent:
    return NewEvent(type=type_, data=f'{{"n": {n}}}'.encode(), metadata=b'{"by": "test"}')


@pytest.fixture
def double() -> Iterator[EventStoreDBDouble]:
    with EventStoreDBDouble() as server:
        yield server


@pytest.fixture
def store(double: EventStoreDBDouble) -> Iterator[EventStoreDBEventStore]:
    with EventStoreDBEventStore(double.uri, timeout=DEADLINE) as adapter:
        yield adapter


def test_append_and_read_stream_round_trip(store, double):
    first = store.append("payments-1", [event(n=0)], StreamState.NO_STREAM)
    batch = [event("PaymentAuthorised", 1), event("PaymentCaptured", 2)]
    second = store.append("payments-1", batch, 0)

    events = store.read_stream("payments-1")

    assert [e.version for e in events] == [0, 1, 2]
    assert [e.type for e in events] == ["PaymentInitiated", "PaymentAuthorised", "PaymentCaptured"]
    assert [e.id for e in events[1:]] == [e.id for e in batch]
    assert events[2].data == b'{"n": 2}'
    assert events[2].metadata == b'{"by": "test"}'
    assert {e.stream for e in events} == {"payments-1"}
    assert all(e.recorded_at is not None for e in events)
    assert events[0].position < events[1].position < events[2].position
    assert (first.version, first.position) == (0, events[0].position)
    assert (second.version, second.position) == (2, events[2].position)
    # Lists go through BatchAppend, even a list of one.
    assert double.calls["BatchAppend"] == 2
    assert double.calls["Append"] == 0


def test_missing_stream_is_not_found(store):
    with pytest.raises(StreamNotFound):
        store.read_stream("payments-nope")


def test_wrong_expected_version_reports_the_actual_version(store):
    store.append("payments-1", [event(n=0), event(n=1)], StreamState.NO_STREAM)

    with pytest.raises(WrongExpectedVersion) as stale:
        store.append("payments-1", [event(n=2)], 0)
    with pytest.raises(WrongExpectedVersion) as exists:
        store.append("payments-1", [event(n=2)], StreamState.NO_STREAM)
    with pytest.raises(WrongExpectedVersion) as missing:
        store.append("payments-2", [event()], 3)

    assert (stale.value.stream, stale.value.expected, stale.value.actual) == ("payments-1", 0, 1)
    assert isinstance(stale.value.__cause__, WrongCurrentVersion)
    assert exists.value.actual == 1
    assert missing.value.actual is None
    assert len(store.read_stream("payments-1")) == 2


@pytest.mark.parametrize("idempotent_position", [True, False], ids=["position", "no-position"])
def test_repeated_append_returns_the_original_result(idempotent_position):
    # no-position: servers that answer a repeat without a position make the adapter look it up.
    with (
        EventStoreDBDouble(idempotent_position=idempotent_position) as double,
        EventStoreDBEventStore(double.uri, timeout=DEADLINE) as store,
    ):
        opening = [event(n=0), event(n=1)]
        original = store.append("payments-1", opening, StreamState.NO_STREAM)
        follow_up = [event(n=2)]
        later = store.append("payments-1", follow_up, 1)
        store.append("payments-1", [event(n=3)], 2)

        assert store.append("payments-1", opening, StreamState.NO_STREAM) == original
        assert store.append("payments-1", follow_up, 1) == later
        assert len(store.read_stream("payments-1")) == 4


def test_append_any_learns_the_version(store):
    first = store.append("payments-1", [event(n=0)], StreamState.ANY)
    batch = [event(n=1), event(n=2)]
    second = store.append("payments-1", batch, StreamState.ANY)
    store.append("payments-1", [event(n=3)], StreamState.ANY)

    assert (first.version, second.version) == (0, 2)
    assert store.append("payments-1", batch, StreamState.ANY) == second
    assert second.position == store.read_stream("payments-1")[2].position


def test_read_all_excludes_after_and_other_categories(store):
    a = store.append("payments-1", [event(n=0)], StreamState.NO_STREAM)
    store.append("refunds-1", [event(n=1)], StreamState.NO_STREAM)
    b = store.append("payments-2", [event(n=2)], StreamState.NO_STREAM)
    c = store.append("payments-1", [event(n=3)], 0)

    assert [e.position for e in store.read_all()] == [a.position, b.position, c.position]
    assert [e.position for e in store.read_all(after=a.position)] == [b.position, c.position]
    assert [e.position for e in store.read_all(after=a.position, limit=1)] == [b.position]
    assert [e.position for e in store.read_all(limit=2)] == [a.position, b.position]
    assert store.read_all(after=c.position) == []
    assert [e.stream for e in store.read_all(category="refunds")] == ["refunds-1"]


def test_head_position_is_the_last_position_of_all(store):
    assert store.head_position() == 0
    store.append("payments-1", [event(n=0)], StreamState.NO_STREAM)
    store.append("payments-2", [event(n=1)], StreamState.NO_STREAM)
    last = store.append("refunds-1", [event(n=2)], StreamState.NO_STREAM)

    assert store.head_position() == last.position


def test_head_position_on_a_large_store_without_payments_reads_one_record(double, store):
    """A filtered backward read would scan all of $all for a payment event that is not
    there: beyond /readyz's deadline on a big store. One unfiltered record answers."""
    double.load("refunds-x", "Refunded", b"{}", 100_000, streams=1000)
    before = double.considered

    head = store.head_position()

    assert double.considered - before == 1
    assert head == store.read_all(category="refunds", after=head - 1)[0].position
    assert store.read_all(category="payments") == []


def test_subscription_delivers_history_then_live_appends(store):
    first = store.append("payments-1", [event(n=0)], StreamState.NO_STREAM)
    second = store.append("payments-1", [event(n=1)], 0)

    with store.subscribe(after=first.position) as subscription:
        history = subscription.get(timeout=5)
        nothing = subscription.get(timeout=0.1)
        store.append("refunds-1", [event(n=2)], StreamState.NO_STREAM)
        live = store.append("payments-2", [event(n=3)], StreamState.NO_STREAM)
        arrived = subscription.get(timeout=5)

    assert history is not None
    assert history.position == second.position
    assert nothing is None
    assert arrived is not None
    assert (arrived.stream, arrived.position) == ("payments-2", live.position)


def test_closed_subscription_stops_its_thread(store):
    subscription = store.subscribe()
    threads = {t for t in threading.enumerate() if t.name.startswith("esdb-subscription")}
    assert threads

    subscription.close()

    assert subscription.get(timeout=0.1) is None
    assert list(subscription) == []
    assert not any(t.is_alive() for t in threads)


def test_stopped_server_gives_unavailable_not_a_hang(double):
    uri = double.uri.replace("esdb://", "esdb://admin:s3cret@")
    with EventStoreDBEventStore(uri, timeout=DEADLINE) as store:
        store.append("payments-1", [event()], StreamState.NO_STREAM)
        double.stop()

        calls = {
            "append": lambda: store.append("payments-1", [event()], 0),
            "read_stream": lambda: store.read_stream("payments-1"),
            "read_all": lambda: store.read_all(),
            "head_position": lambda: store.head_position(),
            "subscribe": lambda: store.subscribe(),
        }
        for name, call in calls.items():
            with pytest.raises(EventStoreUnavailable) as unavailable:
                call()
            message = str(unavailable.value)
            assert f"127.0.0.1:{double.port}" in message, name
            assert "s3cret" not in message, name
            assert "\n" not in message, name
            assert unavailable.value.__cause__ is not None, name


def test_live_subscription_surfaces_the_server_going_away(store, double):
    store.append("payments-1", [event()], StreamState.NO_STREAM)
    with store.subscribe() as subscription:
        assert subscription.get(timeout=5) is not None
        double.stop()

        with pytest.raises(EventStoreUnavailable):
            subscription.get(timeout=5)
        with pytest.raises(EventStoreUnavailable):  # and it stays broken
            subscription.get(timeout=0)


def read_until_it_fails(subscription: Subscription, *, tries: int) -> None:
    """Wait for events, half a second at a time, until ``get`` raises (or ``tries`` end)."""
    for _ in range(tries):
        subscription.get(timeout=0.5)


def test_quiet_subscription_keeps_pinging_and_notices_a_connection_gone_silent(double):
    """No FIN, no RST, only silence (a NAT that forgot the connection): keepalive pings
    that go unanswered end the subscription instead of it waiting for ever. The pings
    go on however long nothing is appended, and cost a live connection nothing."""
    keepalive = "&KeepAliveInterval=200&KeepAliveTimeout=500"
    with (
        SilenceableLink(double.port) as link,
        EventStoreDBEventStore(link.uri + keepalive, timeout=DEADLINE) as store,
        EventStoreDBEventStore(double.uri, timeout=DEADLINE) as writer,
        store.subscribe() as subscription,
    ):
        quiet = [subscription.get(timeout=0.2) for _ in range(15)]  # ~15 ping intervals
        appended = writer.append("payments-1", [event(n=0)], StreamState.NO_STREAM)
        arrived = subscription.get(timeout=5)
        quiet_again = [subscription.get(timeout=0.2) for _ in range(10)]
        link.go_silent()
        writer.append("payments-1", [event(n=1)], 0)  # never reaches the subscriber

        with pytest.raises(EventStoreUnavailable):
            read_until_it_fails(subscription, tries=40)  # 20 s; with these pings ~1 s

    assert quiet == [None] * 15
    assert quiet_again == [None] * 10
    assert arrived is not None
    assert arrived.position == appended.position


def test_keepalive_defaults_to_eventstoredbs_and_honours_the_uri():
    defaults = dict(keepalive_options(ConnectionSpec("esdb://127.0.0.1:2113?Tls=false")))
    given = dict(keepalive_options(ConnectionSpec(
        "esdb://127.0.0.1:2113?Tls=false&KeepAliveInterval=3000&KeepAliveTimeout=4000")))

    assert defaults["grpc.keepalive_time_ms"] == 10_000
    assert defaults["grpc.keepalive_timeout_ms"] == defaults["grpc.http2.ping_timeout_ms"] == 10_000
    assert given["grpc.keepalive_time_ms"] == 3000
    assert given["grpc.keepalive_timeout_ms"] == given["grpc.http2.ping_timeout_ms"] == 4000


def test_restarted_server_works_again_with_its_data(store, double):
    first = store.append("payments-1", [event(n=0)], StreamState.NO_STREAM)
    double.stop()
    with pytest.raises(EventStoreUnavailable):
        store.read_all()
    with pytest.raises(EventStoreUnavailable):
        store.append("payments-1", [event(n=1)], 0)

    double.restart()

    assert [e.position for e in store.read_all()] == [first.position]
    second = store.append("payments-1", [event(n=1)], 0)
    with store.subscribe(after=first.position) as subscription:
        arrived = subscription.get(timeout=5)
    assert arrived is not None
    assert arrived.position == second.position


def test_discover_uri_gossips_and_maps_discovery_failure(double):
    with EventStoreDBEventStore(double.discover_uri, timeout=DEADLINE) as store:
        result = store.append("payments-1", [event()], StreamState.NO_STREAM)
        assert store.head_position() == result.position

    double.stop()
    with (
        EventStoreDBEventStore(double.discover_uri, timeout=DEADLINE) as store,
        pytest.raises(EventStoreUnavailable, match="DiscoveryFailed"),
    ):
        store.head_position()


def test_silent_server_hits_the_deadline(black_hole):
    with EventStoreDBEventStore(black_hole, timeout=0.3) as store:
        with pytest.raises(EventStoreUnavailable, match="DeadlineExceeded"):
            store.read_all()
        with pytest.raises(EventStoreUnavailable):
            store.append("payments-1", [event()], StreamState.NO_STREAM)
        with pytest.raises(EventStoreUnavailable, match="no subscription confirmation"):
            store.subscribe()


def test_construction_validates_the_uri_without_connecting():
    with pytest.raises(ValueError, match="target"):
        EventStoreDBEventStore("esdb://?Tls=false", timeout=DEADLINE)
    # Nothing listens on port 1: constructing must not fail, only using it.
    with EventStoreDBEventStore("esdb://u:p@127.0.0.1:1?Tls=false", timeout=DEADLINE) as store:
        assert store.target == "127.0.0.1:1"


@pytest.mark.timeout(30)  # unbounded, esdbclient would gossip 10 x 5 s per node first
def test_cluster_uri_of_silent_nodes_fails_instead_of_gossiping_for_minutes(black_hole):
    silent = black_hole.removeprefix("esdb://").split("?")[0]
    with (
        EventStoreDBEventStore(f"esdb://{silent},{silent}?Tls=false", timeout=1.0) as store,
        pytest.raises(EventStoreUnavailable),
    ):
        store.head_position()


def test_a_paused_consumer_holds_at_most_the_buffer_and_loses_nothing(double):
    """Back-pressure: the reading thread waits for room, so gRPC's flow control stops the
    server instead of the whole history moving into this process's memory."""
    total, buffer = 20_000, 50
    double.load("payments-bulk", "PaymentCreated", b'{"pad": "' + b"x" * 1000 + b'"}', total,
                streams=100)
    with (EventStoreDBEventStore(double.uri, timeout=DEADLINE, subscription_buffer=buffer)
          as store, store.subscribe() as subscription):
        deadline = time.monotonic() + 10
        while subscription.buffered < buffer and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for the buffer to fill, not for a race
        assert subscription.buffered == buffer
        # However long the consumer pauses, the server stops once the HTTP/2 windows are
        # full (about 5,300 of these 1 KB events, measured: 6 MB of the 20 MB history).
        assert double.considered < total / 2

        received = subscription.get_many(total, timeout=5)
        while len(received) < total:
            more = subscription.get_many(total, timeout=5)
            assert more, f"stalled after {len(received)} events"
            received += more
            assert subscription.buffered <= buffer
    positions = [e.position for e in received]
    assert positions == sorted(set(positions))
    assert len(positions) == total


def test_a_tombstoned_stream_is_not_found(double, store):
    store.append("payments-1", [event(n=0)], StreamState.NO_STREAM)
    double.tombstone("payments-1")

    with pytest.raises(StreamNotFound):
        store.read_stream("payments-1")
    # $all shows the server's record of the deletion: the store's own type, with a "$".
    assert [e.type for e in store.read_all()] == ["PaymentInitiated", "$streamDeleted"]


def test_an_any_append_is_idempotent_only_while_the_server_remembers_its_first_id(double,
                                                                                    store):
    """EventStoreDB checks an "any" append against a memory cache of recent event ids,
    by the first id only: a retry after a server restart appends the events again. The
    command service never appends with "any"; exact versions are checked on disk."""
    exact = event(n=0)
    store.append("payments-1", [exact], StreamState.NO_STREAM)
    anywhere = event(n=1)
    first = store.append("payments-1", [anywhere], StreamState.ANY)
    assert store.append("payments-1", [anywhere], StreamState.ANY) == first

    double.restart()

    assert store.append("payments-1", [exact], StreamState.NO_STREAM).version == 0  # on disk
    again = store.append("payments-1", [anywhere], StreamState.ANY)
    assert again.version == first.version + 1  # a duplicate: the cache was lost
    assert [e.id for e in store.read_stream("payments-1")] == [exact.id, anywhere.id,
                                                                anywhere.id]


def test_a_subscription_is_live_once_the_server_says_its_history_is_done(double, store):
    """Until then its batches wait (briefly) to fill; from then on a lone live event is
    handed over at once."""
    history = [store.append(f"payments-{n}", [event(n=n)], StreamState.NO_STREAM)
               for n in range(3)]
    with store.subscribe() as subscription:
        assert not subscription.live
        assert [e.position for e in subscription.get_many(1000, 5)] == [
            r.position for r in history]
        assert subscription.get(timeout=0.5) is None
        assert subscription.live
        late = store.append("payments-9", [event(n=9)], StreamState.NO_STREAM)
        assert [e.position for e in subscription.get_many(1000, 5)] == [late.position]
