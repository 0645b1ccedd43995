"""Projectors event by event, and properties over random histories: the projected
PaymentView equals the aggregate's fold, and DeclineView counts equal a count over
the events, however the events are cut into batches."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payments.domain import Action, Payment, PaymentError, apply, create_payment, fold
from payments.events import (
    PaymentDeclined,
    PaymentEvent,
    encode_data,
    encode_metadata,
    stream_name,
)
from payments.eventstore import RecordedEvent
from projections.models import DeclineView, PaymentView
from projections.projectors import (
    DeclineProjection,
    Decoded,
    PaymentProjection,
    ProjectionError,
    payment_from_row,
)
from tests.test_domain import amounts, commands, run
from tests.test_runner import snapshot

T0 = datetime(2026, 11, 29, 23, 59, 58, tzinfo=UTC)

pytestmark = pytest.mark.django_db


class History:
    """Events of several payments, with positions, as a store would hand them out."""

    def __init__(self) -> None:
        self.items: list[Decoded] = []
        self.events: dict[UUID, list[PaymentEvent]] = {}

    def record(self, event: PaymentEvent) -> None:
        stream_events = self.events.setdefault(event.payment_id, [])
        stream_events.append(event)
        record = RecordedEvent(
            id=uuid4(), stream=stream_name(event.payment_id), type=event.type_name,
            data=encode_data(event),
            metadata=encode_metadata(correlation_id=uuid4(), causation_id=uuid4()),
            version=len(stream_events) - 1, position=len(self.items) + 1,
        )
        self.items.append(Decoded(record, event))

    def state(self, payment_id: UUID) -> Payment | None:
        return fold(self.events[payment_id])


def lifecycle(history: History, *steps: str, amount: str = "100.00", reference: str = "") -> UUID:
    """Record a payment's events: ``"authorize Acme"``, ``"settle 40.00"``, ``"decline 05"``."""
    created = create_payment(payment_id=uuid4(), amount=amount, currency="EUR",
                             reference=reference, occurred_at=T0)
    history.record(created)
    payment = apply(None, created, 0)
    for n, step in enumerate(steps, start=1):
        action, _, argument = step.partition(" ")
        event = run(payment, Action(action), argument or None, T0 + timedelta(seconds=n))
        payment = apply(payment, event, n)
        history.record(event)
    return payment.id


def test_payment_projector_follows_each_event() -> None:
    history = History()
    payment_id = lifecycle(history, "authorize Acme", "settle 40.00", "settle", "refund 10.00",
                           "refund")
    projection = PaymentProjection()
    expected = [("pending", "0.00", "0.00"), ("authorized", "0.00", "0.00"),
                ("partially_settled", "40.00", "0.00"), ("settled", "100.00", "0.00"),
                ("partially_refunded", "100.00", "10.00"), ("refunded", "100.00", "100.00")]
    # One event per batch: each step starts from what the row says (payment_from_row).
    for item, (status, settled, refunded) in zip(history.items, expected, strict=True):
        projection.apply([item])
        row = PaymentView.objects.get(payment_id=payment_id)
        assert (row.status, row.settled_amount, row.refunded_amount) == (
            status, Decimal(settled), Decimal(refunded))
        assert (row.version, row.position) == (item.record.version, item.record.position)
    row = PaymentView.objects.get(payment_id=payment_id)
    assert row.amount == Decimal("100.00")
    assert row.bank_name == "Acme"
    assert row.created_at == T0
    assert row.updated_at == T0 + timedelta(seconds=5)


def test_decline_projector_counts_by_code_bank_and_utc_date() -> None:
    history = History()
    lifecycle(history, "decline 05")  # declined at 23:59:59 UTC on the 29th
    lifecycle(history, "authorize X", "decline 05")  # at 00:00:00 on the 30th
    lifecycle(history, "decline 51")
    lifecycle(history, "authorize X", "settle")  # not a decline
    projection = DeclineProjection()
    projection.apply(history.items[:3])
    projection.apply(history.items[3:])
    rows = DeclineView.objects.values_list("decline_code", "bank_name", "date", "count")
    assert sorted(rows) == [
        ("05", "Bank", T0.date(), 1),
        ("05", "Bank", (T0 + timedelta(days=1)).date(), 1),
        ("51", "Bank", T0.date(), 1),
    ]
    # Counts are increments: applying an event twice would count it twice, which is why
    # the runner moves the checkpoint in the same transaction.
    projection.apply(history.items[1:2])
    assert DeclineView.objects.get(decline_code="05", date=T0.date()).count == 2


def test_declines_of_one_code_bank_and_date_in_one_batch_add_up() -> None:
    history = History()
    for _ in range(3):
        lifecycle(history, "decline 51")
    DeclineProjection().apply(history.items)
    assert list(DeclineView.objects.values_list("decline_code", "bank_name", "date", "count")) \
        == [("51", "Bank", T0.date(), 3)]


def test_declines_are_dated_in_utc_whatever_the_sites_time_zone() -> None:
    """In Auckland (UTC+13 in November) a decline at 23:59:59 UTC on the 29th happens on
    the 30th; the report counts it on the 29th, its UTC date, wherever the site runs."""
    history = History()
    lifecycle(history, "decline 05")
    with override_settings(TIME_ZONE="Pacific/Auckland"):  # the process's local time too
        DeclineProjection().apply(history.items)
    assert DeclineView.objects.get().date == T0.date()


def three_payments(history: History) -> list[UUID]:
    """A pending, a declined and a partially refunded payment: every optional field both
    empty and set."""
    return [lifecycle(history),
            lifecycle(history, "authorize Acme", "decline N7"),
            lifecycle(history, "authorize Acme", "settle 30.00", "refund 5.00",
                      reference="order 3")]


def test_each_row_reads_back_as_the_payment_its_events_fold_to() -> None:
    history = History()
    payment_ids = three_payments(history)
    PaymentProjection().apply(history.items)
    for payment_id in payment_ids:
        row = PaymentView.objects.get(payment_id=payment_id)
        assert payment_from_row(row) == history.state(payment_id)


def test_the_reference_is_set_at_create_and_kept_through_every_later_batch() -> None:
    history = History()
    payment_id = lifecycle(history, "authorize Acme", "settle 30.00", "refund 5.00",
                           reference="Caf\u00e9 \U0001f600 " + "r" * 57)
    projection = PaymentProjection()
    for item in history.items:  # an insert, then an update per event: each keeps it
        projection.apply([item])
        row = PaymentView.objects.get(payment_id=payment_id)
        assert row.reference == "Caf\u00e9 \U0001f600 " + "r" * 57
        assert len(row.reference) == 64


def test_the_upserts_times_are_found_by_the_orms_time_lookups() -> None:
    """On SQLite the upsert writes datetimes itself: as Django's backend would (naive UTC
    text), or the ORM's lookups on created_at and updated_at would miss the rows."""
    history = History()
    pending, declined, refunded = three_payments(history)
    PaymentProjection().apply(history.items)
    assert set(PaymentView.objects.filter(created_at=T0).values_list("payment_id", flat=True)) \
        == {pending, declined, refunded}
    assert list(PaymentView.objects.filter(updated_at=T0 + timedelta(seconds=2))
                .values_list("payment_id", flat=True)) == [declined]


def test_times_are_stored_as_instants_whatever_offset_the_events_carry() -> None:
    """Events made in this process may carry any UTC offset (decoded ones carry UTC)."""
    berlin = ZoneInfo("Europe/Berlin")
    history = History()
    created = create_payment(payment_id=uuid4(), amount="10.00", currency="EUR",
                             occurred_at=T0.astimezone(berlin))
    history.record(created)
    history.record(apply(None, created, 0).authorize(
        bank_name="Acme", occurred_at=(T0 + timedelta(hours=1)).astimezone(berlin)))
    with override_settings(TIME_ZONE="Pacific/Auckland"):  # the process's local time too
        PaymentProjection().apply(history.items)
    row = PaymentView.objects.get()
    assert (row.created_at, row.updated_at) == (T0, T0 + timedelta(hours=1))


def test_events_already_in_a_row_are_passed_by() -> None:
    """After a manual checkpoint move, a batch may hold events a row already has: the
    projection applies only those after the row's position, and every one of them."""
    history = History()
    first = lifecycle(history, "authorize Acme", "settle 40.00", "settle")
    second = lifecycle(history)
    projection = PaymentProjection()
    projection.apply(history.items[:3])  # the first payment, 40.00 settled
    projection.apply(history.items)
    row = PaymentView.objects.get(payment_id=first)
    assert (row.status, row.settled_amount) == ("settled", Decimal("100.00"))
    assert PaymentView.objects.get(payment_id=second).status == "pending"


def test_an_event_the_aggregate_refuses_stops_the_projection_naming_it() -> None:
    history = History()
    payment_id = lifecycle(history, "authorize Acme")
    authorized = history.items[1].record
    with pytest.raises(ProjectionError) as refused:
        PaymentProjection().apply(history.items[1:])  # authorized, never created
    assert str(refused.value) == (
        f"projection 'payment' cannot apply the event at position 2 (stream"
        f" payments-{payment_id}, version 1, type PaymentAuthorized):"
        f" PaymentAuthorized before PaymentCreated")
    assert (refused.value.projection, refused.value.record) == ("payment", authorized)
    assert not PaymentView.objects.exists()


@pytest.mark.parametrize("stream_of", ["another payment's stream, first", "its own, later"])
def test_a_payment_created_again_in_a_later_batch_stops_the_projection(stream_of) -> None:
    """A payment whose first event in a batch starts its stream has no row, and the
    projection does not look for one; but a PaymentCreated for a payment that has one,
    written by another program into another stream or later into its own, is looked up
    and refused, as the aggregate refuses it."""
    history = History()
    payment_id = lifecycle(history, "authorize Acme")
    projection = PaymentProjection()
    projection.apply(history.items)
    again = create_payment(payment_id=payment_id, amount="5.00", currency="EUR",
                           occurred_at=T0 + timedelta(days=1))
    stream, version = ((stream_name(uuid4()), 0) if stream_of.startswith("another")
                       else (stream_name(payment_id), 2))
    record = RecordedEvent(id=uuid4(), stream=stream, type=again.type_name,
                           data=encode_data(again), metadata=b"{}", version=version,
                           position=3)
    with pytest.raises(ProjectionError, match=f"payment {payment_id} is created twice"):
        projection.apply([Decoded(record, again)])
    assert PaymentView.objects.get(payment_id=payment_id).status == "authorized"


def test_other_databases_take_the_orms_path_to_the_same_rows(monkeypatch) -> None:
    """The upsert has its own SQL for SQLite and PostgreSQL and uses the ORM's bulk upsert on
    any other database: both write the same rows (the ORM's path runs here on the test
    database, told it is another vendor). One event per batch: inserts, then updates."""
    history = History()
    three_payments(history)
    projection = PaymentProjection()
    for item in history.items:
        projection.apply([item])
    by_sql = snapshot()[0]
    projection.clear()
    monkeypatch.setattr(connection, "vendor", "another")
    for item in history.items:
        projection.apply([item])
    monkeypatch.undo()
    assert snapshot()[0] == by_sql


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    payments=st.lists(st.tuples(amounts, st.lists(commands, max_size=8),
                                st.sampled_from(["", "order 1", "Caf\u00e9 \U0001f600",
                                                 "r" * 64])),
                      min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=20),
    again_from=st.integers(min_value=0, max_value=60),
)
def test_projected_read_models_equal_the_fold_and_a_count(payments, cuts, again_from) -> None:
    """Cut into any batches, PaymentView is what the aggregate folds and DeclineView a
    count; and with the payment projection's checkpoint then moved back by hand to any
    earlier position, applying its events again changes no row after any batch (its
    rows are ahead: a payment whose first event in a batch starts its stream is not
    looked up, and its row must not be put back)."""
    PaymentView.objects.all().delete()
    DeclineView.objects.all().delete()
    history = History()
    at = T0
    # Interleave the payments' events, as concurrent payments would.
    states: list[Payment] = []
    for amount, _, reference in payments:
        event = create_payment(payment_id=uuid4(), amount=amount, currency="EUR",
                               reference=reference, occurred_at=at)
        history.record(event)
        states.append(apply(None, event, 0))
    for step in range(max(len(c) for _, c, _ in payments)):
        for i, (_, sequence, _) in enumerate(payments):
            if step >= len(sequence):
                continue
            at += timedelta(hours=7)  # dates change now and then
            action, argument = sequence[step]
            try:
                event = run(states[i], action, argument, at)
            except PaymentError:
                continue
            states[i] = apply(states[i], event, states[i].version + 1)
            history.record(event)

    payment_projection, decline_projection = PaymentProjection(), DeclineProjection()
    start, n = 0, 0
    while start < len(history.items):
        batch = history.items[start:start + cuts[n % len(cuts)]]
        payment_projection.apply(batch)
        decline_projection.apply(batch)
        start += len(batch)
        n += 1
    # The checkpoint moved back by hand: events already applied change nothing, in any
    # batch (counts are increments: only PaymentView takes them again).
    projected = snapshot()[0]
    start = min(again_from, len(history.items) - 1)
    while start < len(history.items):
        batch = history.items[start:start + cuts[n % len(cuts)]]
        payment_projection.apply(batch)
        assert snapshot()[0] == projected
        start += len(batch)
        n += 1

    for state in states:
        assert payment_from_row(PaymentView.objects.get(payment_id=state.id)) == state
    expected = Counter(
        (e.event.decline_code, e.event.bank_name, e.event.occurred_at.date())
        for e in history.items if isinstance(e.event, PaymentDeclined)
    )
    assert {(r.decline_code, r.bank_name, r.date): r.count for r in DeclineView.objects.all()} \
        == dict(expected)
