"""The EventStoreDB adapter through leader changes, against the cluster-mode double.

A node that is not the leader refuses what needs the leader with NOT_FOUND,
"Leader info available" and the leader's address (``EventStoreDBCluster``'s doc has
where the server does this). The adapter reconnects to that leader and tries once
more; a second refusal in a row is the port's ``EventStoreUnavailable``.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import pytest
from django.db import connection

from payments import services
from payments.eventstore.esdb import EventStoreDBEventStore
from payments.eventstore.port import EventStoreUnavailable, NewEvent, StreamState
from projections.models import Checkpoint, PaymentView
from projections.projectors import PaymentProjection
from projections.runner import Progress, ProjectionRunner, reset_projection
from tests.esdb_double import EventStoreDBCluster

pytestmark = pytest.mark.timeout(60)

DEADLINE = 2.0


def event(n: int = 0) -> NewEvent:
    return NewEvent(type="PaymentInitiated", data=f'{{"n": {n}}}'.encode(), metadata=b"{}")


@pytest.fixture
def cluster() -> Iterator[EventStoreDBCluster]:
    with EventStoreDBCluster() as nodes:
        yield nodes


@pytest.fixture
def seeded(cluster: EventStoreDBCluster) -> EventStoreDBCluster:
    """A cluster whose log has two payment events (written through the leader)."""
    with EventStoreDBEventStore(cluster.uri, timeout=DEADLINE) as writer:
        writer.append("payments-seed", [event(0), event(1)], StreamState.NO_STREAM)
    return cluster


def _append(store: EventStoreDBEventStore) -> object:
    new = event(7)
    result = store.append("payments-new", [new], StreamState.NO_STREAM)
    return result.version, new.id


def _read_stream(store: EventStoreDBEventStore) -> object:
    return [e.version for e in store.read_stream("payments-seed")]


def _read_all(store: EventStoreDBEventStore) -> object:
    return [e.version for e in store.read_all()]


def _head_position(store: EventStoreDBEventStore) -> object:
    return store.head_position() > 0


def _subscribe(store: EventStoreDBEventStore) -> object:
    with store.subscribe() as subscription:
        first, second = subscription.get(DEADLINE), subscription.get(DEADLINE)
    return [e.version if e else None for e in (first, second)]


CALLS: dict[str, tuple[Callable[[EventStoreDBEventStore], object], object]] = {
    "append": (_append, None),  # checked apart: the event is stored once
    "read_stream": (_read_stream, [0, 1]),
    "read_all": (_read_all, [0, 1]),
    "head_position": (_head_position, True),
    "subscribe": (_subscribe, [0, 1]),
}


def _ids_in(cluster: EventStoreDBCluster, stream: str) -> list[UUID]:
    """The event ids the cluster's log holds for ``stream``, in order (a repeat shows)."""
    records = [r for r in cluster.stored() if r.stream == stream]
    return [UUID(r.event_id) for r in records]


# --- each call on a connection to a follower ------------------------------------------


def _assert_served(seeded: EventStoreDBCluster, name: str, outcome: Any,
                   expected: Any) -> None:
    """The call answered as the leader would: an append stored once, a read its data."""
    if name == "append":
        version, event_id = outcome
        assert version == 0
        assert _ids_in(seeded, "payments-new") == [event_id]
    else:
        assert outcome == expected


@pytest.mark.parametrize("name", CALLS)
def test_a_call_on_a_follower_goes_to_the_leader_it_names(seeded, name):
    """A single-node URI that points at a follower (no gossip): refused once, then done."""
    call, expected = CALLS[name]
    follower = seeded.follower()
    with EventStoreDBEventStore(seeded.node_uri(follower), timeout=DEADLINE) as store:
        outcome = call(store)

    assert seeded.nodes[follower].calls["NotLeader"] == 1
    assert seeded.nodes[seeded.leader].calls["NotLeader"] == 0
    _assert_served(seeded, name, outcome, expected)


@pytest.mark.parametrize("name", CALLS)
def test_a_call_after_the_leader_moved_goes_to_the_new_leader(seeded, name):
    """A cluster URI: connected to the leader by gossip, which then steps down."""
    call, expected = CALLS[name]
    with EventStoreDBEventStore(seeded.uri, timeout=DEADLINE) as store:
        assert store.head_position() > 0  # connected, to the leader
        old = seeded.leader
        new = seeded.move_leader()
        outcome = call(store)

    assert seeded.nodes[old].calls["NotLeader"] == 1
    assert seeded.nodes[new].calls["NotLeader"] == 0
    _assert_served(seeded, name, outcome, expected)


@pytest.mark.parametrize("name", CALLS)
def test_a_second_refusal_in_a_row_is_unavailable(seeded, name):
    """Mid-election, a follower may name a node that is no longer (or not yet) the leader:
    one retry, then the port's "unavailable", never a loop or a plain error."""
    call, _ = CALLS[name]
    first, second = seeded.follower(), (seeded.follower() + 1) % 3
    seeded.mislead(first, second)
    seeded.mislead(second, first)
    with (
        EventStoreDBEventStore(seeded.node_uri(first), timeout=DEADLINE) as store,
        pytest.raises(EventStoreUnavailable, match="NodeIsNotLeader"),
    ):
        call(store)

    assert seeded.calls["NotLeader"] == 2
    assert seeded.nodes[first].calls["NotLeader"] == 1
    assert seeded.nodes[second].calls["NotLeader"] == 1
    assert _ids_in(seeded, "payments-new") == []


def test_a_write_whose_answer_was_lost_in_a_leader_crash_is_ids_in(cluster):
    """The append is written, then the leader goes down before it answers: the retry on
    the new leader carries the same event id and expected version, so it is a repeat."""
    with EventStoreDBEventStore(cluster.uri, timeout=DEADLINE) as store:
        first = store.append("payments-1", [event(0)], StreamState.NO_STREAM)
        crash = cluster.crash_after_next_append()
        second = event(1)
        result = store.append("payments-1", [second], 0)

    assert crash.is_set()
    assert result.version == 1
    assert result.position > first.position
    assert _ids_in(cluster, "payments-1")[1:] == [second.id]


def test_gossip_names_the_leader_for_both_uri_forms(cluster):
    cluster.elect(2)
    for n, uri in enumerate((cluster.uri, cluster.discover_uri)):
        with EventStoreDBEventStore(uri, timeout=DEADLINE) as store:
            store.append(f"payments-{n}", [event()], StreamState.NO_STREAM)
    assert cluster.calls["NotLeader"] == 0
    assert cluster.nodes[2].calls["BatchAppend"] == 2


def test_a_follower_serves_a_subscription_from_the_end(cluster):
    """The server confirms before it reads; from the end there is nothing to read."""
    follower = cluster.follower()
    with EventStoreDBEventStore(cluster.node_uri(follower), timeout=DEADLINE) as store:
        client = store._connected()
        with client.subscribe_to_all(from_end=True, timeout=None) as subscription:
            with EventStoreDBEventStore(cluster.uri, timeout=DEADLINE) as writer:
                writer.append("payments-1", [event()], StreamState.NO_STREAM)
            assert next(iter(subscription)).stream_name == "payments-1"
    assert cluster.calls["NotLeader"] == 0


# --- the scenario: commands and a runner through two leader changes -------------------

PAYMENTS = 12  # 3 commands each
CRASH_AFTER = 9  # acknowledged commands, then the leader crashes on the next append
RESIGN_AFTER = 21  # ... then the next leader steps down (and stays up)


class _Acknowledged:
    """The commands that answered: (stream, version, event type), in order. The thread
    that issues them stops after the counts in ``gates`` until the test opens the gate."""

    def __init__(self, *gates: int) -> None:
        self.items: list[tuple[str, int, str]] = []
        self.failures: list[BaseException] = []
        self.changed = threading.Condition()
        self.gates = {count: threading.Event() for count in gates}

    def add(self, payment: services.Payment, event_type: str) -> None:
        with self.changed:
            self.items.append((f"payments-{payment.id}", payment.version, event_type))
            count = len(self.items)
            self.changed.notify_all()
        if count in self.gates and not self.gates[count].wait(30):
            raise TimeoutError(f"the gate after {count} commands was never opened")

    def fail(self, error: BaseException) -> None:
        with self.changed:
            self.failures.append(error)
            self.changed.notify_all()

    def wait_for(self, count: int) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: len(self.items) >= count or bool(self.failures), timeout=30
            )


def _in_thread(target: Callable[[], None]) -> threading.Thread:
    """A thread that closes its own database connection when done."""

    def run() -> None:
        try:
            target()
        finally:
            connection.close()

    return threading.Thread(target=run, name=target.__name__)


def _issue_commands(store: EventStoreDBEventStore, acknowledged: _Acknowledged) -> None:
    try:
        for _ in range(PAYMENTS):
            payment = services.create_payment(amount="10.00", currency="EUR", store=store)
            acknowledged.add(payment, "PaymentCreated")
            payment = services.authorize_payment(payment_id=payment.id, bank_name="Bank",
                                                 store=store)
            acknowledged.add(payment, "PaymentAuthorized")
            payment = services.settle_payment(payment_id=payment.id, store=store)
            acknowledged.add(payment, "PaymentSettled")
    except BaseException as e:  # the test reports it
        acknowledged.fail(e)


def _rows() -> list[dict]:
    return list(PaymentView.objects.order_by("payment_id").values())


def _following(caplog: pytest.LogCaptureFixture) -> list[int]:
    """The positions the runner (re)subscribed from, in order."""
    found = (re.search(r"following from position (\d+)", r.getMessage()) for r in caplog.records)
    return [int(m[1]) for m in found if m]


@pytest.mark.django_db(transaction=True)
def test_commands_and_a_runner_through_leader_changes(cluster, caplog):
    """Two leader changes while commands flow and the payment projection follows.

    First the leader crashes right after it wrote an append, before it answers, and
    comes back as a follower: that command's retry goes to the new leader as a repeat,
    and the runner's stream on the crashed node breaks, so it subscribes again from its
    checkpoint. Then the new leader steps down and stays up: the next commands are
    refused there and go to the next leader; the runner's live subscription on it goes
    on, as the server's does. The points are fixed (after so many acknowledged
    commands, the runner caught up); nothing waits on time.
    """
    caplog.set_level(logging.INFO, logger="projections.runner")
    acknowledged = _Acknowledged(CRASH_AFTER, RESIGN_AFTER)
    progressed = threading.Condition()
    stop = threading.Event()

    def on_progress(progress: Progress) -> None:
        with progressed:
            progressed.notify_all()

    def caught_up(count: int = 1) -> bool:
        """The runner has applied everything stored, after subscribing ``count`` times."""
        head = max(r.position for r in cluster.stored())
        with progressed:
            return progressed.wait_for(
                lambda: runner.progress.position >= head and len(_following(caplog)) >= count,
                timeout=30,
            )

    commands_store = EventStoreDBEventStore(cluster.uri, timeout=DEADLINE)
    runner_store = EventStoreDBEventStore(cluster.uri, timeout=DEADLINE)
    runner = ProjectionRunner(PaymentProjection(), runner_store, batch_size=5, stop=stop,
                              on_progress=on_progress)
    runner_thread = _in_thread(runner.run)
    commands = _in_thread(lambda: _issue_commands(commands_store, acknowledged))
    runner_thread.start()
    commands.start()
    try:
        assert acknowledged.wait_for(CRASH_AFTER), acknowledged.failures
        assert caught_up()
        crashed = cluster.leader
        crash = cluster.crash_after_next_append()
        acknowledged.gates[CRASH_AFTER].set()

        assert acknowledged.wait_for(RESIGN_AFTER), acknowledged.failures
        assert crash.is_set()
        assert caught_up(2)  # resubscribed after the crash, and caught up
        resigned = cluster.leader
        cluster.move_leader()
        acknowledged.gates[RESIGN_AFTER].set()

        commands.join(30)
        assert not commands.is_alive()
        assert acknowledged.failures == []
        assert caught_up(2)
    finally:
        stop.set()
        for gate in acknowledged.gates.values():
            gate.set()
        commands.join(30)
        runner_thread.join(30)
        commands_store.close()
        runner_store.close()
    assert not runner_thread.is_alive()
    head = max(r.position for r in cluster.stored())

    # Every acknowledged command is stored, once; nothing else is.
    stored = [(r.stream, r.revision, r.type) for r in cluster.stored()]
    assert sorted(stored) == sorted(acknowledged.items)
    assert len(acknowledged.items) == 3 * PAYMENTS
    assert max(Counter(r.event_id for r in cluster.stored()).values()) == 1

    # The commands after the second change were refused once by the old leader; the
    # runner subscribed twice: at the start, and from its checkpoint after the crash.
    assert cluster.nodes[resigned].calls["NotLeader"] >= 1
    assert crashed != resigned
    following = _following(caplog)
    assert len(following) == 2, caplog.text
    assert following[0] == 0
    assert following[1] in {position for position in (r.position for r in cluster.stored())}

    # The read model equals a clean rebuild.
    followed = _rows()
    assert len(followed) == PAYMENTS
    assert {row["status"] for row in followed} == {"settled"}
    reset_projection(PaymentProjection())
    assert PaymentView.objects.count() == 0
    with EventStoreDBEventStore(cluster.uri, timeout=DEADLINE) as fresh:
        ProjectionRunner(PaymentProjection(), fresh).run(once=True)
    assert _rows() == followed
    assert Checkpoint.objects.get(name="payment").position == head
