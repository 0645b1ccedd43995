"""The command service on the embedded store: use cases, idempotency, concurrency."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID, uuid4, uuid5

import pytest

from payments import services
from payments.domain import (
    AmountExceedsBalance,
    InvalidInput,
    Payment,
    PaymentStatus,
    TransitionNotAllowed,
)
from payments.domain import create_payment as decide_create
from payments.events import encode_data, stream_name
from payments.eventstore import EventStore, NewEvent, StreamState, get_event_store

pytestmark = pytest.mark.django_db(databases=[])

KEY_REUSED = "this idempotency key was already used for a different request"


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
    assert metadata["schemaVersion"] == 2


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
    with pytest.raises(services.IdempotencyKeyReused, match=f"^{KEY_REUSED}$"):
        services.create_payment(amount="11.00", idempotency_key="k")
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Bank", idempotency_key="a")
    with pytest.raises(services.IdempotencyKeyReused, match=f"^{KEY_REUSED}$"):
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


# --- every command the same way: correlation, expected version, idempotency key ---------

# Each command on a payment whose status allows it, with a valid request.
COMMANDS: dict[str, Callable[..., Payment]] = {
    "authorize": lambda **kw: services.authorize_payment(bank_name="Bank", **kw),
    "settle": lambda **kw: services.settle_payment(amount="4.00", **kw),
    "refund": lambda **kw: services.refund_payment(amount="4.00", **kw),
    "decline": lambda **kw: services.decline_payment(bank_name="Bank", decline_code="05", **kw),
}


def ready_for(action: str) -> Payment:
    """A new payment of 10.00 whose status allows ``action``."""
    payment = services.create_payment(amount="10.00")
    if action in ("settle", "refund"):
        payment = services.authorize_payment(payment_id=payment.id, bank_name="Bank")
    if action == "refund":
        payment = services.settle_payment(payment_id=payment.id)
    return payment


def metadata_of_last_event(payment_id: UUID) -> dict[str, object]:
    return json.loads(get_event_store().read_stream(stream_name(payment_id))[-1].metadata)


@pytest.mark.parametrize("action", COMMANDS)
def test_each_command_passes_the_callers_correlation_id_on(action: str) -> None:
    payment = ready_for(action)
    correlation = uuid4()
    COMMANDS[action](payment_id=payment.id, correlation_id=correlation)
    assert metadata_of_last_event(payment.id)["$correlationId"] == str(correlation)


@pytest.mark.parametrize("action", COMMANDS)
def test_each_command_refuses_an_expected_version_that_is_not_current(action: str) -> None:
    payment = ready_for(action)
    with pytest.raises(services.ConcurrencyConflict) as refused:
        COMMANDS[action](payment_id=payment.id, expected_version=payment.version + 1)
    assert str(refused.value) == (f"payment {payment.id} is at version {payment.version},"
                                  f" not {payment.version + 1}; it is {payment.status}")
    assert len(get_event_store().read_stream(stream_name(payment.id))) == payment.version + 1
    # The current version is accepted.
    done = COMMANDS[action](payment_id=payment.id, expected_version=payment.version)
    assert done.version == payment.version + 1


@pytest.mark.parametrize("action", COMMANDS)
def test_each_command_retried_with_its_idempotency_key_appends_nothing_more(
    action: str,
) -> None:
    payment = ready_for(action)
    first = COMMANDS[action](payment_id=payment.id, idempotency_key="retried")
    again = COMMANDS[action](payment_id=payment.id, idempotency_key="retried")
    assert again == first
    assert first.version == payment.version + 1
    assert len(get_event_store().read_stream(stream_name(payment.id))) == first.version + 1


def test_a_declined_payment_keeps_the_bank_and_code_and_takes_nothing_more() -> None:
    payment = services.create_payment(amount="10.00")
    declined = services.decline_payment(payment_id=payment.id, bank_name=" Acme Bank ",
                                        decline_code="n7")
    assert (declined.status, declined.bank_name, declined.decline_code, declined.version) == (
        PaymentStatus.DECLINED, "Acme Bank", "N7", 1)
    event = services.find_payment(payment_id=payment.id).history[-1]
    assert (event.type, event.data["bank_name"], event.data["decline_code"]) == (
        "PaymentDeclined", "Acme Bank", "N7")
    with pytest.raises(TransitionNotAllowed, match="declined; allowed: nothing"):
        services.authorize_payment(payment_id=payment.id, bank_name="Bank")
    with pytest.raises(InvalidInput) as refused:
        services.decline_payment(payment_id=payment.id, bank_name="Bank", decline_code="")
    assert refused.value.field == "decline_code"


def test_a_settle_may_name_the_bank_that_settled() -> None:
    payment = ready_for("settle")
    settled = services.settle_payment(payment_id=payment.id, amount="4.00",
                                      bank_name=" Other Bank ")
    assert settled.bank_name == "Other Bank"
    event = services.find_payment(payment_id=payment.id).history[-1]
    assert (event.type, event.data["bank_name"]) == ("PaymentSettled", "Other Bank")


def test_an_unknown_payment_is_reported_with_its_id() -> None:
    unknown = uuid4()
    with pytest.raises(services.PaymentNotFound) as refused:
        services.find_payment(payment_id=unknown)
    assert (str(refused.value), refused.value.payment_id) == (
        f"payment {unknown} not found", unknown)


def test_a_history_entry_has_its_events_time_and_id() -> None:
    created = services.create_payment(amount="10.00")
    authorized = services.authorize_payment(payment_id=created.id, bank_name="Bank")
    history = services.find_payment(payment_id=created.id).history
    records = get_event_store().read_stream(stream_name(created.id))
    assert [e.event_id for e in history] == [r.id for r in records]
    assert [e.occurred_at for e in history] == [created.created_at, authorized.updated_at]


# --- idempotency keys ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["k", "x" * 255, "order 1/é"])
def test_an_idempotency_key_is_1_to_255_printable_characters(key: str) -> None:
    assert services.parse_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "\u200bzero-width"])
def test_other_idempotency_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        services.parse_idempotency_key(key)
    assert (refused.value.field, refused.value.message) == (
        "idempotency_key", "must be 1 to 255 printable characters")


def test_one_key_on_two_payments_is_two_commands() -> None:
    """A key is looked for in the commanded payment's own stream: the same key sent
    for another payment is a command of its own, not a retry, and its event has an id
    of its own (readers of the category stream tell events apart by their ids)."""
    one, other = (ready_for("authorize") for _ in range(2))
    event_ids = []
    for payment in (one, other):
        authorized = services.authorize_payment(payment_id=payment.id, bank_name="Bank",
                                                idempotency_key="same")
        assert (authorized.status, authorized.version) == (PaymentStatus.AUTHORIZED, 1)
        _created, authorization = get_event_store().read_stream(stream_name(payment.id))
        event_ids.append(authorization.id)
    assert event_ids[0] != event_ids[1]


def test_a_reference_is_part_of_the_request_a_key_stands_for() -> None:
    first = services.create_payment(amount="10.00", reference=" order 7", idempotency_key="c")
    assert first.reference == "order 7"
    again = services.create_payment(amount="10", reference="order 7 ", idempotency_key="c")
    assert again == first  # normalised, the same request: a replay
    for other in ("order 8", ""):
        with pytest.raises(services.IdempotencyKeyReused, match=f"^{KEY_REUSED}$"):
            services.create_payment(amount="10.00", reference=other, idempotency_key="c")
    assert len(get_event_store().read_stream(stream_name(first.id))) == 1


def test_a_create_keyed_by_version_1_code_is_still_replayed_after_the_upgrade() -> None:
    """Version 1's create fingerprint had no reference. A create without one still has
    that fingerprint, so a client retrying across the upgrade gets its payment back."""
    namespace = services._IDEMPOTENCY_NAMESPACE
    key = "before-the-upgrade"
    payment_id = uuid5(namespace, key)
    fingerprint = json.dumps({"amount": "10.00", "currency": "EUR"}, sort_keys=True)
    causation = uuid5(namespace, f"{payment_id}/{key}/create/{fingerprint}")
    data = (f'{{"payment_id":"{payment_id}","occurred_at":"2026-09-01T08:00:00.000000Z",'
            f'"amount":"10.00","currency":"EUR"}}')
    metadata = (f'{{"$correlationId":"{causation}","$causationId":"{causation}",'
                f'"schemaVersion":1}}')
    get_event_store().append(stream_name(payment_id), [NewEvent(
        type="PaymentCreated", data=data.encode(), metadata=metadata.encode(),
        id=uuid5(namespace, f"{payment_id}/{key}"))], StreamState.NO_STREAM)

    replayed = services.create_payment(amount="10.00", currency="EUR", idempotency_key=key)
    assert (replayed.id, replayed.reference, replayed.version) == (payment_id, "", 0)
    with pytest.raises(services.IdempotencyKeyReused):
        services.create_payment(amount="10.00", reference="r", idempotency_key=key)
    assert len(get_event_store().read_stream(stream_name(payment_id))) == 1


def test_a_bank_named_none_is_not_the_absence_of_a_bank() -> None:
    """The request behind a key tells a value left out from the text "None"."""
    payment = ready_for("settle")
    services.settle_payment(payment_id=payment.id, amount="1.00", idempotency_key="s")
    with pytest.raises(services.IdempotencyKeyReused, match=f"^{KEY_REUSED}$"):
        services.settle_payment(payment_id=payment.id, amount="1.00", bank_name="None",
                                idempotency_key="s")


def written_by_another_program(store: EventStore, payment_id: UUID,
                               *more: NewEvent) -> NewEvent:
    """Stores a stream for ``payment_id`` that no command of this service wrote: its
    PaymentCreated (returned), then ``more``."""
    created = decide_create(payment_id=payment_id, amount="10.00", currency="EUR",
                            occurred_at=datetime.now(UTC))
    first = NewEvent(type=created.type_name, data=encode_data(created))
    store.append(stream_name(payment_id), [first, *more], StreamState.NO_STREAM)
    return first


def test_a_create_whose_key_names_a_payment_created_otherwise_is_refused(
    embedded_store: EventStore,
) -> None:
    """A create's key gives the payment its id; if a stream with that id exists without
    the create's event, the key was used for another payment (here: another program)."""
    payment = services.create_payment(amount="10.00", idempotency_key="k")
    written_by_another_program(embedded_store, payment.id)
    with pytest.raises(services.IdempotencyKeyReused) as refused:
        services.create_payment(amount="10.00", idempotency_key="k", store=embedded_store)
    assert str(refused.value) == "this idempotency key was already used for a different payment"
