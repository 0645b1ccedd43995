"""A store busy with other categories: the runner's checkpoint keeps up with what the
store looked past, so a restart does not read those events again, and the checkpoint
never passes an event that was not applied."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from payments import services
from payments.events import stream_name
from payments.eventstore import EventStore, NewEvent, StreamState
from payments.eventstore.embedded import EmbeddedEventStore
from payments.eventstore.esdb import EventStoreDBEventStore
from projections.models import Checkpoint, PaymentView
from projections.projectors import PaymentProjection
from projections.runner import ProjectionRunner
from tests.esdb_double import EventStoreDBDouble

pytestmark = pytest.mark.django_db(transaction=True)

FOREIGN = 100_000


class Considered(Protocol):
    def __call__(self) -> int | None: ...


@dataclass
class Busy:
    """A store, a way to add other categories' events in bulk, and (on the double) how
    many records the server has looked at."""

    store: EventStore
    add_foreign: AddForeign
    considered: Considered


class AddForeign(Protocol):
    def __call__(self, count: int) -> int: ...  # the last one's position


@pytest.fixture(params=["embedded", "esdb-double"])
def busy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Busy]:
    if request.param == "embedded":
        store = EmbeddedEventStore(tmp_path / "events.sqlite3")

        def add(count: int) -> int:  # appends of 5,000 events: a large store in seconds
            for start in range(0, count, 5_000):
                events = [NewEvent("Shipped", b"{}") for _ in range(min(5_000, count - start))]
                last = store.append(f"shipping-{start}", events, StreamState.NO_STREAM)
            return last.position

        yield Busy(store, add, lambda: None)
        store.close()
    else:
        with EventStoreDBDouble() as double:
            store = EventStoreDBEventStore(double.uri, timeout=5.0)

            def load(count: int) -> int:
                return double.load("shipping-bulk", "Shipped", b"{}", count, streams=100)

            yield Busy(store, load, lambda: double.considered)
            store.close()


def run_once(store: EventStore) -> ProjectionRunner:
    runner = ProjectionRunner(PaymentProjection(), store)
    runner.run(once=True)
    return runner


def checkpoint() -> int:
    return Checkpoint.objects.get(name="payment").position


def test_a_restart_does_not_read_other_categories_again(busy: Busy) -> None:
    payment = services.create_payment(amount="10.00", store=busy.store)
    last_foreign = busy.add_foreign(FOREIGN)

    runner = run_once(busy.store)

    assert checkpoint() >= last_foreign  # past the other events, not parked at the payment
    # The progress shown never reads "at position P of H" with P past H.
    assert runner.progress.head >= runner.progress.position == checkpoint()
    late = services.authorize_payment(payment_id=payment.id, bank_name="Bank",
                                      store=busy.store)
    before = busy.considered()
    run_once(busy.store)
    after = busy.considered()
    if before is not None and after is not None:
        assert after - before < 1_000, "the restart scanned the other categories again"
    view = PaymentView.objects.get(payment_id=payment.id)
    assert (view.status, view.version) == ("authorized", late.version)
    assert checkpoint() >= busy.store.head_position()


def test_the_checkpoint_never_passes_an_event_that_was_not_applied(busy: Busy) -> None:
    good = services.create_payment(amount="10.00", store=busy.store)
    bad_stream = stream_name(good.id).replace(str(good.id), "00000000-0000-4000-8000-000000000000")
    poisoned = busy.store.append(
        bad_stream, [NewEvent("PaymentCreated", json.dumps({"amount": "x"}).encode())],
        StreamState.NO_STREAM,
    )
    busy.add_foreign(2_000)

    with pytest.raises(Exception, match=f"position {poisoned.position}"):
        run_once(busy.store)

    assert checkpoint() < poisoned.position
    assert PaymentView.objects.filter(payment_id=good.id).exists()


def test_a_tombstoned_payment_is_not_found_and_its_deletion_passes_the_runner() -> None:
    """An operator hard-deleted a payment's stream on EventStoreDB: the payment is "not
    found" (404), not "store unavailable" (503), and the runner passes the server's
    ``$streamDeleted`` record (the store's own, like every ``$`` type) instead of
    stopping on an unknown event type."""
    with EventStoreDBDouble() as double, \
            EventStoreDBEventStore(double.uri, timeout=5.0) as store:
        kept = services.create_payment(amount="10.00", store=store)
        deleted = services.create_payment(amount="20.00", store=store)
        double.tombstone(stream_name(deleted.id))

        with pytest.raises(services.PaymentNotFound):
            services.find_payment(payment_id=deleted.id, store=store)
        run_once(store)

        assert checkpoint() >= store.head_position()
        assert PaymentView.objects.filter(payment_id=kept.id).exists()


def test_a_runner_without_read_on_all_stops_and_says_so(settings) -> None:
    """Secure mode without the grant of the README: no retry loop that looks like an
    outage, but a failed projection whose reason names the missing access."""
    from django.core.management import CommandError, call_command

    from payments.eventstore import reset_event_store

    with EventStoreDBDouble() as double:
        double.deny_reads_of_all()
        settings.EVENTSTORE_URI = double.uri
        reset_event_store()
        try:
            with pytest.raises(CommandError, match="access denied"):
                call_command("run_projection", "payment")
        finally:
            reset_event_store()
    failed = Checkpoint.objects.get(name="payment")
    assert "needs read on $all" in failed.failure
