"""The payment's rules, restated from DESIGN.md and checked against the aggregate (issue 16).

Nothing here reads the code's own tables (``ALLOWED_ACTIONS``): the transition table is
spelled out below as the design gives it, and the property test keeps an independent
model of the balances (a few lines, in cents). Each test kills a bug that once passed
the whole suite: a settle compared with the payment's amount instead of what is
outstanding, a table that lets a partially refunded payment settle again (the first
refund ends settlement) or a partially settled one be declined.

Size: the ``domain-rules-ci`` profile (below) runs the property test in a few seconds;
``HYPOTHESIS_PROFILE=dev`` runs ten times as many examples. Each example reports the
statuses it reached (``hypothesis.event``), so ``--hypothesis-show-statistics`` shows
how often the strategy reaches each of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from payments.domain import (
    AmountExceedsBalance,
    InvalidInput,
    Payment,
    PaymentError,
    TransitionNotAllowed,
    apply,
    create_payment,
    fold,
)
from payments.events import (
    PaymentAuthorized,
    PaymentDeclined,
    PaymentEvent,
    PaymentRefunded,
    PaymentSettled,
)

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

# --- the design's table, literally ---------------------------------------------------------
#
# DESIGN.md, "Domain: the payment aggregate": status -> the actions allowed next.
TRANSITIONS: dict[str, set[str]] = {
    "pending": {"authorize", "decline"},
    "authorized": {"settle", "decline"},
    "partially_settled": {"settle", "refund"},
    "settled": {"refund"},
    "partially_refunded": {"refund"},
    "refunded": set(),
    "declined": set(),
}
ACTIONS = ("authorize", "settle", "refund", "decline")
FINAL = {"refunded", "declined"}
EVENT_OF = {"authorize": PaymentAuthorized, "settle": PaymentSettled,
            "refund": PaymentRefunded, "decline": PaymentDeclined}

# Ways to each status, as commands from a new payment of 100.00; some statuses have two
# (a payment refunded after a partial settlement can no more settle than a settled one).
PATHS: dict[str, tuple[str, ...]] = {
    "pending": (),
    "authorized": ("authorize",),
    "partially_settled": ("authorize", "settle 40.00"),
    "settled": ("authorize", "settle 40.00", "settle"),
    "partially_refunded": ("authorize", "settle", "refund 30.00"),
    "partially_refunded after a partial settlement": (
        "authorize", "settle 40.00", "refund 10.00"),
    "refunded": ("authorize", "settle 40.00", "settle", "refund 30.00", "refund"),
    "refunded after a partial settlement": ("authorize", "settle 40.00", "refund"),
    "declined": ("decline",),
    "declined after authorization": ("authorize", "decline"),
}


def command(payment: Payment, action: str, amount: str | None, at: datetime) -> PaymentEvent:
    """One command on the aggregate; ``amount`` None is the default (all that is left)."""
    if action == "authorize":
        return payment.authorize(bank_name="Acme Bank", occurred_at=at)
    if action == "settle":
        return payment.settle(amount=None if amount is None else Decimal(amount),
                              occurred_at=at)
    if action == "refund":
        return payment.refund(amount=None if amount is None else Decimal(amount),
                              occurred_at=at)
    assert action == "decline"
    return payment.decline(bank_name="Acme Bank", decline_code="05", occurred_at=at)


def reach(path: tuple[str, ...]) -> Payment:
    created = create_payment(payment_id=uuid4(), amount="100.00", currency="EUR",
                             occurred_at=T0)
    payment = apply(None, created, 0)
    for n, step in enumerate(path, start=1):
        action, _, amount = step.partition(" ")
        payment = apply(payment, command(payment, action, amount or None,
                                         T0 + timedelta(seconds=n)), n)
    return payment


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("amount", [None, "0.01"], ids=["default amount", "0.01"])
def test_each_action_from_each_status_follows_the_design_table(
    path: str, action: str, amount: str | None
) -> None:
    payment = reach(PATHS[path])
    status = path.split()[0]
    assert payment.status == status, f"{PATHS[path]} should reach {status}"
    at = T0 + timedelta(days=1)
    if action in TRANSITIONS[status]:
        decided = command(payment, action, amount, at)
        assert isinstance(decided, EVENT_OF[action])
        assert apply(payment, decided, payment.version + 1).version == payment.version + 1
    else:
        with pytest.raises(TransitionNotAllowed) as refused:
            command(payment, action, amount, at)
        # It says why: the current status and what is allowed (DESIGN.md).
        message = str(refused.value)
        assert f"cannot {action} a payment that is {status}" in message
        named = {a for a in ACTIONS if a in message.partition("allowed:")[2]}
        assert named == TRANSITIONS[status], message


@pytest.mark.parametrize("path", PATHS)
def test_the_actions_a_payment_offers_are_the_design_table(path: str) -> None:
    """What the forms offer (``allowed_actions``) is the table's row, nothing more."""
    payment = reach(PATHS[path])
    assert {str(a) for a in payment.allowed_actions} == TRANSITIONS[path.split()[0]]


def test_a_second_settle_is_bounded_by_what_is_outstanding_not_by_the_amount() -> None:
    payment = reach(("authorize", "settle 60.00"))
    with pytest.raises(AmountExceedsBalance, match=r"only 40\.00 is left to settle"):
        payment.settle(amount=Decimal("60.00"), occurred_at=T0)
    settled = payment.settle(amount=Decimal("40.00"), occurred_at=T0)
    assert apply(payment, settled, 3).settled_amount == Decimal("100.00")


def test_a_second_refund_is_bounded_by_what_is_refundable_not_by_what_was_settled() -> None:
    payment = reach(("authorize", "settle", "refund 60.00"))
    with pytest.raises(AmountExceedsBalance, match=r"only 40\.00 is left to refund"):
        payment.refund(amount=Decimal("60.00"), occurred_at=T0)


# --- an independent model of the rules, in cents ------------------------------------------

MAX_CENTS = 99_999_999_999_999  # 999,999,999,999.99


@dataclass
class Model:
    """The design's rules in a few lines: balances in cents and the status they give.

    (The limit of 100 settlements and 100 refunds a payment takes is left out: a
    sequence of at most 30 commands never reaches it.)
    """

    amount: int
    settled: int = 0
    refunded: int = 0
    status: str = "pending"

    def left(self, action: str) -> int:
        """What a settle (outstanding) or a refund (refundable) may still take."""
        return self.amount - self.settled if action == "settle" else self.settled - self.refunded

    def expect(self, action: str, cents: int | None) -> type[PaymentError] | None:
        """The error the rules give for this command, or None (then the model moves on)."""
        if action not in TRANSITIONS[self.status]:
            return TransitionNotAllowed
        asked = self.left(action) if cents is None else cents
        if action in ("settle", "refund"):
            if asked > MAX_CENTS:
                return InvalidInput
            if asked > self.left(action):
                return AmountExceedsBalance
        if action == "authorize":
            self.status = "authorized"
        elif action == "decline":
            self.status = "declined"
        elif action == "settle":
            self.settled += asked
            self.status = "settled" if self.settled == self.amount else "partially_settled"
        else:  # the first refund ends settlement
            self.refunded += asked
            self.status = "refunded" if self.refunded == self.settled else "partially_refunded"
        return None


def cents(value: Decimal) -> int:
    assert value == value.quantize(Decimal("0.01")), value
    return int(value * 100)


def money(amount_in_cents: int) -> str:
    return f"{amount_in_cents // 100}.{amount_in_cents % 100:02d}"


# --- the strategy: amounts as shares of what is left, declines rare -----------------------
#
# A step is three draws interpreted against the model's state: which action (mostly one
# the status allows, declines a tenth as often as the others, now and then any action at
# all, to be refused), how its amount is chosen (a share of 1..99% of what is left, the
# default None, exactly the rest, or more than is left by a share of what is already
# taken — the amount the first bug let through), and the share.

@dataclass(frozen=True)
class Step:
    pick: int  # 0..99: which action
    kind: str  # how the amount is chosen: a share of what is left, default, rest or over
    percent: int  # 1..99


# Shares of 1..99% (all of it is what the kinds "default" and "rest" ask), of payments that
# mostly have cents to share (a payment of 0.01 settles in one go, whatever the share).
KINDS = ["share"] * 7 + ["default", "rest", "over", "over"]  # weights: a list, in order
steps = st.builds(Step, st.integers(0, 99), st.sampled_from(KINDS), st.integers(1, 99))
payment_cents = st.one_of(st.integers(100, 1_000_000), st.integers(1, MAX_CENTS),
                          st.sampled_from([1, 2, 101, MAX_CENTS]))


def choose_action(model: Model, pick: int) -> str:
    # Hypothesis favours small numbers (0 most of all): they pick the common case.
    if pick >= 88:  # any action, allowed or not
        return ACTIONS[pick % 4]
    allowed = sorted(TRANSITIONS[model.status])
    if not allowed:
        return ACTIONS[pick % 4]  # final: everything is refused
    if "decline" in allowed and pick % 10 == 9:
        return "decline"
    others = [a for a in allowed if a != "decline"]
    if others == ["refund", "settle"]:  # partially settled: settle again more often
        return "settle" if pick % 10 < 7 else "refund"
    return others[pick % len(others)]


def choose_amount(model: Model, action: str, step: Step) -> int | None:
    left = model.left(action)
    if step.kind == "share":
        return max(1, left * step.percent // 100)
    if step.kind == "default":
        return None  # all that is left
    if step.kind == "rest":
        return left  # exactly what is left, given explicitly
    # More than is left, by a share of what is already taken (still within the payment's
    # amount for a settle, within what was settled for a refund), or by a cent.
    taken = model.settled if action == "settle" else model.refunded
    return left + max(1, taken * step.percent // 100)


HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("domain-rules-ci", max_examples=400, deadline=None, database=None,
                          suppress_health_check=HEALTH, print_blob=True)
settings.register_profile("domain-rules-dev", max_examples=4000, deadline=None,
                          suppress_health_check=HEALTH, print_blob=True)
PROFILE = settings.get_profile(
    "domain-rules-dev" if os.environ.get("HYPOTHESIS_PROFILE") == "dev" else "domain-rules-ci")


@dataclass
class Reached:
    """What an example went through, reported as Hypothesis events (statistics)."""

    statuses: set[str] = field(default_factory=lambda: {"pending"})
    settled_again: int = 0  # settles accepted from partially_settled
    refused: set[str] = field(default_factory=set)

    def report(self) -> None:
        for status in sorted(self.statuses):
            event(f"reached {status}")
        if self.settled_again:
            event("settled again from partially_settled")
        for reason in sorted(self.refused):
            event(f"refused: {reason}")


@settings(PROFILE)
@given(amount=payment_cents, sequence=st.lists(steps, min_size=6, max_size=30))
def test_balances_and_status_follow_an_independent_model_of_the_rules(
    amount: int, sequence: list[Step]
) -> None:
    model = Model(amount)
    created = create_payment(payment_id=uuid4(), amount=money(amount), currency="EUR",
                             occurred_at=T0)
    payment = apply(None, created, 0)
    events: list[PaymentEvent] = [created]
    reached = Reached()
    for n, step in enumerate(sequence, start=1):
        action = choose_action(model, step.pick)
        asked = choose_amount(model, action, step) if action in ("settle", "refund") else None
        before, status_before = payment, model.status
        text = None if asked is None else money(asked)
        expected = model.expect(action, asked)
        where = f"step {n}: {action} {text} on {before.status} {before}"
        refused: PaymentError | None = None
        try:
            decided = command(payment, action, text, T0 + timedelta(seconds=n))
        except PaymentError as error:
            refused = error
        if refused is not None:
            assert expected is not None, f"{where}: refused ({refused}), the rules allow it"
            assert type(refused) is expected, f"{where}: {refused!r}, not {expected.__name__}"
            if expected is not InvalidInput:  # a rule refused it: it names the status
                assert f"payment that is {before.status}" in str(refused), where
            reached.refused.add(expected.__name__)
            continue  # and nothing changed: ``payment`` is still ``before``
        assert expected is None, f"{where}: accepted, the rules say {expected.__name__}"
        assert isinstance(decided, EVENT_OF[action]), where
        if asked is not None:
            assert cents(decided.amount) == asked, where  # type: ignore[attr-defined]
        events.append(decided)
        payment = apply(payment, decided, len(events) - 1)
        # The model's balances and status, and the invariants of DESIGN.md.
        assert (payment.status, cents(payment.amount), cents(payment.settled_amount),
                cents(payment.refunded_amount)) == (
            model.status, model.amount, model.settled, model.refunded), where
        assert payment.amount > 0
        assert payment.settled_amount <= payment.amount
        assert payment.refunded_amount <= payment.settled_amount
        assert status_before not in FINAL, f"{where}: a final payment changed"
        reached.statuses.add(model.status)
        if status_before == "partially_settled" and action == "settle":
            reached.settled_again += 1
    assert fold(events) == payment
    assert payment.version == len(events) - 1
    reached.report()
