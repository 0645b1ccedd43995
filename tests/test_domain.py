"""The payment aggregate: the life cycle as a story, the input rules, and properties
over random command sequences (invariants always hold; folding the events gives
back the same state)."""

from __future__ import annotations

import re
from dataclasses import FrozenInstanceError, fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payments.domain import (
    ALLOWED_ACTIONS,
    Action,
    AmountExceedsBalance,
    HistoryError,
    InvalidInput,
    Payment,
    PaymentError,
    PaymentStatus,
    TransitionNotAllowed,
    apply,
    create_payment,
    fold,
    parse_amount,
    parse_bank_name,
    parse_currency,
    parse_decline_code,
)
from payments.events import PaymentEvent, PaymentRefunded, PaymentSettled
from tests.amounts import BAD_AMOUNTS

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def new_payment(amount: str = "100.00") -> tuple[Payment, list[PaymentEvent]]:
    created = create_payment(payment_id=uuid4(), amount=amount, currency="EUR", occurred_at=T0)
    return apply(None, created, 0), [created]


def step(payment: Payment, events: list[PaymentEvent], event: PaymentEvent) -> Payment:
    events.append(event)
    return apply(payment, event, len(events) - 1)


def test_the_whole_life_cycle_of_a_payment() -> None:
    payment, events = new_payment("100.00")
    assert payment.status is PaymentStatus.PENDING
    payment = step(payment, events, payment.authorize(bank_name=" Acme Bank ", occurred_at=T0))
    assert (payment.status, payment.bank_name) == (PaymentStatus.AUTHORIZED, "Acme Bank")
    payment = step(payment, events, payment.settle(amount=Decimal("40"), occurred_at=T0))
    assert payment.status is PaymentStatus.PARTIALLY_SETTLED
    assert payment.settled_amount == Decimal("40.00")
    payment = step(payment, events, payment.settle(occurred_at=T0))  # the rest by default
    assert (payment.status, payment.settled_amount) == (PaymentStatus.SETTLED, Decimal("100.00"))
    payment = step(payment, events, payment.refund(amount=Decimal("30.00"), occurred_at=T0))
    assert payment.status is PaymentStatus.PARTIALLY_REFUNDED
    payment = step(payment, events, payment.refund(occurred_at=T0))
    assert (payment.status, payment.refunded_amount) == (PaymentStatus.REFUNDED, Decimal("100.00"))
    assert payment.version == 5
    assert fold(events) == payment
    with pytest.raises(TransitionNotAllowed, match="refunded; allowed: nothing"):
        payment.refund(occurred_at=T0)


def test_first_refund_ends_settlement() -> None:
    payment, events = new_payment("100.00")
    payment = step(payment, events, payment.authorize(bank_name="B", occurred_at=T0))
    payment = step(payment, events, payment.settle(amount=Decimal("50"), occurred_at=T0))
    payment = step(payment, events, payment.refund(amount=Decimal("50"), occurred_at=T0))
    # Everything settled is refunded: final, although only half was ever settled.
    assert payment.status is PaymentStatus.REFUNDED
    with pytest.raises(TransitionNotAllowed):
        payment.settle(occurred_at=T0)


def test_decline_is_final_and_keeps_the_code_as_a_string() -> None:
    payment, events = new_payment()
    payment = step(
        payment, events, payment.decline(bank_name="Bank", decline_code="05", occurred_at=T0)
    )
    assert (payment.status, payment.decline_code) == (PaymentStatus.DECLINED, "05")
    for command in (
        lambda: payment.authorize(bank_name="B", occurred_at=T0),
        lambda: payment.settle(occurred_at=T0),
        lambda: payment.refund(occurred_at=T0),
        lambda: payment.decline(bank_name="B", decline_code="51", occurred_at=T0),
    ):
        with pytest.raises(TransitionNotAllowed, match="payment that is declined"):
            command()


def test_a_refused_command_names_the_status_and_what_is_allowed() -> None:
    payment, _ = new_payment()
    with pytest.raises(TransitionNotAllowed) as refused:
        payment.settle(occurred_at=T0)
    assert str(refused.value) == (
        "cannot settle a payment that is pending; allowed: authorize, decline"
    )


def test_settling_more_than_outstanding_is_refused() -> None:
    payment, events = new_payment("10.00")
    payment = step(payment, events, payment.authorize(bank_name="B", occurred_at=T0))
    with pytest.raises(AmountExceedsBalance, match=r"only 10.00 is left to settle"):
        payment.settle(amount=Decimal("10.01"), occurred_at=T0)


@pytest.mark.parametrize(
    ("raw", "message"),
    # The table every interface is tested with (tests/amounts.py); a payment's amount
    # cannot be blank either (a blank settle or refund amount is the forms' default).
    [*BAD_AMOUNTS, ("", "is not a plain decimal")],
)
def test_bad_amounts_are_refused_with_a_reason(raw: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)):
        parse_amount(raw)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [("100", "100.00"), ("0.01", "0.01"), ("999999999999.99", "999999999999.99"),
     ("12.5", "12.50"), ("007.10", "7.10")],
)
def test_amounts_are_decimals_with_two_places(raw: str, parsed: str) -> None:
    assert str(parse_amount(raw)) == parsed


def test_floats_are_never_money() -> None:
    with pytest.raises(InvalidInput, match="not a float"):
        parse_amount(0.1)  # type: ignore[arg-type]


def test_names_codes_and_currencies() -> None:
    assert parse_bank_name("  Bank  ") == "Bank"
    assert parse_decline_code("n7") == "N7"
    assert parse_currency("eur") == "EUR"
    for bad_code in ("12345", "0-5", "", "5 1"):
        with pytest.raises(InvalidInput, match="decline_code"):
            parse_decline_code(bad_code)
    for bad_name in ("", "   ", "x" * 101):
        with pytest.raises(InvalidInput, match="bank_name"):
            parse_bank_name(bad_name)
    for bad_currency in ("EURO", "E1R", ""):
        with pytest.raises(InvalidInput, match="currency"):
            parse_currency(bad_currency)


def test_a_history_that_does_not_start_with_creation_is_refused() -> None:
    settled = PaymentSettled(
        payment_id=uuid4(), occurred_at=T0, bank_name="B", amount=Decimal("1.00"),
        settlement_id=uuid4(),
    )
    with pytest.raises(HistoryError):
        fold([settled])


# --- properties over random command sequences ---------------------------------------

amounts = st.decimals(
    min_value=Decimal("0.01"), max_value=Decimal("1000.00"), places=2,
    allow_nan=False, allow_infinity=False,
)
commands = st.one_of(
    st.tuples(st.just(Action.AUTHORIZE), st.sampled_from(["Bank A", "Bank B"])),
    st.tuples(st.just(Action.SETTLE), st.none() | amounts),
    st.tuples(st.just(Action.REFUND), st.none() | amounts),
    st.tuples(st.just(Action.DECLINE), st.sampled_from(["05", "51", "N7"])),
)


def run(payment: Payment, action: Action, argument: object, at: datetime) -> PaymentEvent:
    if action is Action.AUTHORIZE:
        return payment.authorize(bank_name=str(argument), occurred_at=at)
    if action is Action.SETTLE:
        return payment.settle(amount=argument, occurred_at=at)  # type: ignore[arg-type]
    if action is Action.REFUND:
        return payment.refund(amount=argument, occurred_at=at)  # type: ignore[arg-type]
    return payment.decline(bank_name="Bank", decline_code=str(argument), occurred_at=at)


def assert_invariants(payment: Payment) -> None:
    assert payment.amount > 0
    assert Decimal("0") <= payment.refunded_amount <= payment.settled_amount <= payment.amount
    for value in (payment.amount, payment.settled_amount, payment.refunded_amount):
        assert value == value.quantize(Decimal("0.01"))


@settings(max_examples=300, deadline=None)
@given(amount=amounts, sequence=st.lists(commands, max_size=25))
def test_random_command_sequences_keep_the_invariants(
    amount: Decimal, sequence: list[tuple[Action, object]]
) -> None:
    payment, events = new_payment(str(amount))
    for n, (action, argument) in enumerate(sequence, start=1):
        before = payment
        at = T0 + timedelta(seconds=n)
        refused: PaymentError | None = None
        try:
            event = run(payment, action, argument, at)
        except PaymentError as error:
            refused = error
        if refused is not None:
            # A refusal changes nothing and is for a reason the rules name.
            assert payment == before
            if action not in ALLOWED_ACTIONS[payment.status]:
                assert isinstance(refused, TransitionNotAllowed)
                assert str(payment.status) in str(refused)
            else:
                assert isinstance(refused, AmountExceedsBalance)
            continue
        assert action in ALLOWED_ACTIONS[before.status]
        payment = step(payment, events, event)
        assert_invariants(payment)
        if before.status in (PaymentStatus.DECLINED, PaymentStatus.REFUNDED):
            pytest.fail(f"a final payment changed: {before.status} -> {payment.status}")
    assert fold(events) == payment
    assert payment.version == len(events) - 1


@settings(max_examples=100, deadline=None)
@given(amount=amounts, sequence=st.lists(commands, max_size=25))
def test_apply_leaves_the_payment_it_is_given_as_it_was(
    amount: Decimal, sequence: list[tuple[Action, object]]
) -> None:
    """``apply`` copies the state (cheaply: a rebuild folds every event) and never
    changes the one it is given, which others hold (the command service's cache); the
    copy is a whole, frozen Payment, down to the fields equality leaves out."""
    payment, events = new_payment(str(amount))
    payment = replace(payment, position=7)  # the service sets it; folding carries it
    for n, (action, argument) in enumerate(sequence, start=1):
        try:
            event = run(payment, action, argument, T0 + timedelta(seconds=n))
        except PaymentError:
            continue
        given_state = dict(vars(payment))
        after = step(payment, events, event)
        assert vars(payment) == given_state
        assert type(after) is Payment
        assert set(vars(after)) == {f.name for f in fields(Payment)}
        with pytest.raises(FrozenInstanceError):
            after.status = PaymentStatus.PENDING  # type: ignore[misc]
        assert (after.position, after.version) == (7, len(events) - 1)
        assert (after.settlements, after.refunds) == (
            sum(isinstance(e, PaymentSettled) for e in events),
            sum(isinstance(e, PaymentRefunded) for e in events))
        payment = after
