"""Projectors event by event, and properties over random histories: the projected
PaymentView equals the aggregate's fold, and DeclineView counts equal a count over
the events, however the events are cut into batches."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
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
    payment_from_row,
)
from tests.test_domain import amounts, commands, run

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


def lifecycle(history: History, *steps: str, amount: str = "100.00") -> UUID:
    """Record a payment's events: ``"authorize Acme"``, ``"settle 40.00"``, ``"decline 05"``."""
    created = create_payment(payment_id=uuid4(), amount=amount, currency="EUR", occurred_at=T0)
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
    payment_id = lifecycle(history, "authorize Acme", "settle 40.00", "settle", "refund 10.00")
    projection = PaymentProjection()
    expected_statuses = ["pending", "authorized", "partially_settled", "settled",
                         "partially_refunded"]
    for item, status in zip(history.items, expected_statuses, strict=True):
        projection.apply([item])
        row = PaymentView.objects.get(payment_id=payment_id)
        assert row.status == status
        assert (row.version, row.position) == (item.record.version, item.record.position)
    row = PaymentView.objects.get(payment_id=payment_id)
    assert (row.amount, row.settled_amount, row.refunded_amount) == (
        Decimal("100.00"), Decimal("100.00"), Decimal("10.00"))
    assert row.bank_name == "Acme"
    assert row.created_at == T0
    assert row.updated_at == T0 + timedelta(seconds=4)


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


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    payments=st.lists(st.tuples(amounts, st.lists(commands, max_size=8)), min_size=1,
                      max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=10), min_size=1, max_size=20),
)
def test_projected_read_models_equal_the_fold_and_a_count(payments, cuts) -> None:
    PaymentView.objects.all().delete()
    DeclineView.objects.all().delete()
    history = History()
    at = T0
    # Interleave the payments' events, as concurrent payments would.
    states: list[Payment] = []
    for amount, _ in payments:
        event = create_payment(payment_id=uuid4(), amount=amount, currency="EUR", occurred_at=at)
        history.record(event)
        states.append(apply(None, event, 0))
    for step in range(max(len(c) for _, c in payments)):
        for i, (_, sequence) in enumerate(payments):
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

    for state in states:
        assert payment_from_row(PaymentView.objects.get(payment_id=state.id)) == state
    expected = Counter(
        (e.event.decline_code, e.event.bank_name, e.event.occurred_at.date())
        for e in history.items if isinstance(e.event, PaymentDeclined)
    )
    assert {(r.decline_code, r.bank_name, r.date): r.count for r in DeclineView.objects.all()} \
        == dict(expected)
