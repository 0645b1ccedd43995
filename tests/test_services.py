"""The command service on the embedded store: use cases, idempotency, concurrency."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from uuid import uuid4

import pytest

from payments import services
from payments.domain import AmountExceedsBalance, InvalidInput, PaymentStatus, TransitionNotAllowed
from payments.events import stream_name
from payments.eventstore import get_event_store

pytestmark = pytest.mark.django_db(databases=[])


def test_a_payment_through_its_life_cycle_is_a_stream_of_events() -> None:
    payment = services.create_payment(amount="100.00", currency="usd")
    assert (payment.status, payment.currency, payment.version) == ("pending", "USD", 0)
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    services.settle_payment(payment_id=payment.id, amount="40.00")
    services.settle_payment(payment_id=payment.id)
    refunded = services.refund_payment(payment_id=payment.id, amount=Decimal("25.5"))
    assert refunded.status is PaymentStatus.PARTIALLY_REFUNDED
    assert (refunded.settled_amount, refunded.refunded_amount) == (
        Decimal("100.00"), Decimal("25.50"))

    found = services.find_payment(payment_id=payment.id)
    assert found.payment == refunded
    assert [e.type for e in found.history] == [
        "PaymentCreated", "PaymentAuthorized", "PaymentSettled", "PaymentSettled",
        "PaymentRefunded",
    ]
    assert [e.version for e in found.history] == [0, 1, 2, 3, 4]
    assert found.history[2].data["amount"] == "40.00"
    positions = [e.position for e in found.history]
    assert positions == sorted(positions)


def test_the_default_currency_comes_from_settings(settings) -> None:
    settings.DEFAULT_CURRENCY = "GBP"
    assert services.create_payment(amount="1.00").currency == "GBP"


def test_events_carry_correlation_and_causation() -> None:
    correlation = uuid4()
    payment = services.create_payment(amount="5.00", correlation_id=correlation)
    [record] = get_event_store().read_stream(stream_name(payment.id))
    metadata = json.loads(record.metadata)
    assert metadata["$correlationId"] == str(correlation)
    assert metadata["$causationId"] != str(correlation)
    assert metadata["schemaVersion"] == 1


def test_a_refused_command_appends_nothing() -> None:
    payment = services.create_payment(amount="10.00")
    with pytest.raises(TransitionNotAllowed, match="pending; allowed: authorize, decline"):
        services.refund_payment(payment_id=payment.id)
    with pytest.raises(InvalidInput):
        services.authorize_payment(payment_id=payment.id, bank_name=" ")
    with pytest.raises(services.PaymentNotFound):
        services.authorize_payment(payment_id=uuid4(), bank_name="Bank")
    assert len(get_event_store().read_stream(stream_name(payment.id))) == 1


def test_an_expected_version_that_is_not_current_is_a_conflict() -> None:
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Bank", expected_version=0)
    with pytest.raises(services.ConcurrencyConflict, match="at version 1, not 0"):
        services.settle_payment(payment_id=payment.id, expected_version=0)


def test_a_retried_command_with_an_idempotency_key_appends_nothing_more() -> None:
    first = services.create_payment(amount="10.00", idempotency_key="order-1")
    again = services.create_payment(amount="10.00", idempotency_key="order-1")
    assert again == first

    services.authorize_payment(payment_id=first.id, bank_name="Bank", idempotency_key="auth-1")
    part = services.settle_payment(payment_id=first.id, amount="4.00", idempotency_key="s-1")
    services.settle_payment(payment_id=first.id, amount="6.00", idempotency_key="s-2")
    # The retry of the first settle returns the state right after it, not the current one.
    retried = services.settle_payment(payment_id=first.id, amount="4.00", idempotency_key="s-1")
    assert retried == part
    assert retried.settled_amount == Decimal("4.00")
    assert len(get_event_store().read_stream(stream_name(first.id))) == 4


def test_the_same_idempotency_key_for_a_different_request_is_refused() -> None:
    services.create_payment(amount="10.00", idempotency_key="k")
    with pytest.raises(services.IdempotencyKeyReused):
        services.create_payment(amount="11.00", idempotency_key="k")
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Bank", idempotency_key="a")
    with pytest.raises(services.IdempotencyKeyReused):
        services.authorize_payment(payment_id=payment.id, bank_name="Other", idempotency_key="a")


def test_concurrent_settles_and_refunds_never_break_the_invariants() -> None:
    payment = services.create_payment(amount="100.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Bank")
    outcomes: list[str] = []
    barrier = threading.Barrier(12)

    def worker(n: int) -> None:
        barrier.wait()
        for _ in range(10):
            try:
                if n % 2:
                    services.settle_payment(payment_id=payment.id, amount="7.00")
                else:
                    services.refund_payment(payment_id=payment.id, amount="3.00")
                outcomes.append("ok")
            except (TransitionNotAllowed, AmountExceedsBalance, services.ConcurrencyConflict) as e:
                outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    found = services.find_payment(payment_id=payment.id)
    final = found.payment
    assert Decimal(0) <= final.refunded_amount <= final.settled_amount <= final.amount
    # Every success is exactly one event, and the stream has no gaps or duplicates.
    assert outcomes.count("ok") == len(found.history) - 2
    assert [e.version for e in found.history] == list(range(len(found.history)))
    settled = sum(Decimal(e.data["amount"]) for e in found.history if e.type == "PaymentSettled")
    refunded = sum(Decimal(e.data["amount"]) for e in found.history if e.type == "PaymentRefunded")
    assert (settled, refunded) == (final.settled_amount, final.refunded_amount)


def test_a_store_that_cannot_be_reached_is_reported_not_hung(settings, tmp_path) -> None:
    from payments.eventstore import EventStoreUnavailable, reset_event_store

    reset_event_store()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store's folder should be")
    settings.EVENTSTORE_URI = f"sqlite:///{blocked / 'events.sqlite3'}"
    with pytest.raises(EventStoreUnavailable):
        services.create_payment(amount="1.00")
