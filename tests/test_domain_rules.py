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
    HistoryError,
    InvalidInput,
    LimitReached,
    Payment,
    PaymentError,
    TransitionNotAllowed,
    apply,
    create_payment,
    fold,
    parse_amount,
    parse_bank_name,
    parse_currency,
    parse_decline_code,
    parse_reference,
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
# dev.py mutate: the same examples for every mutant and every run, so a score is stable.
settings.register_profile("domain-rules-mutate", parent=settings.get_profile("domain-rules-ci"),
                          derandomize=True)
PROFILE = settings.get_profile({"dev": "domain-rules-dev", "mutate": "domain-rules-mutate"}
                               .get(os.environ.get("HYPOTHESIS_PROFILE", ""), "domain-rules-ci"))


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


# --- what the mutation run found (docs/TESTING.md) ----------------------------------------
#
# ``python3 dev.py mutate`` changed domain.py one small edit at a time; each test below
# fails on an edit that the tests above let through. They state the rules exactly: the
# whole refusal (field and words: "each refusal reads the same everywhere", and the API
# shows the field), every field of every event, and every field of the state.

PLAIN = ('is not a plain decimal such as "12.50" (digits and at most one point; no sign,'
         " exponent, spaces or separators)")


def refusal(parse, *args, **kwargs) -> tuple[str, str]:
    """(field, message) of the InvalidInput that ``parse`` raises; its text is both."""
    with pytest.raises(InvalidInput) as refused:
        parse(*args, **kwargs)
    error = refused.value
    assert str(error) == f"{error.field}: {error.message}"
    return error.field, error.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (0.1, 'must be a decimal string such as "12.50", not a float'),
        (True, f"True {PLAIN}"),
        ("1" * 41, "must be at most 999,999,999,999.99"),
        ("-5", "must be greater than 0"),
        ("1e2", f"'1e2' {PLAIN}"),
        ("1.001", "must have at most 2 decimal places"),
        (Decimal("NaN"), "Decimal('NaN') is not a finite number"),
        (Decimal("-Infinity"), "Decimal('-Infinity') is not a finite number"),
        ([], f"list {PLAIN}"),
        (None, f"NoneType {PLAIN}"),
        ("0.00", "must be greater than 0"),
        (0, "must be greater than 0"),
        (Decimal("1000000000000"), "must be at most 999,999,999,999.99"),
        (Decimal("1.001"), "must have at most 2 decimal places"),
    ],
    ids=["float", "bool", "41 characters", "negative", "exponent", "3 places", "NaN",
         "-Infinity", "list", "None", "zero", "int zero", "Decimal too big",
         "Decimal 3 places"],
)
def test_an_amount_is_refused_with_its_field_and_the_whole_reason(raw, message) -> None:
    assert refusal(parse_amount, raw) == ("amount", message)
    assert refusal(parse_amount, raw, field="settle_amount") == ("settle_amount", message)


def test_an_amount_of_forty_characters_is_still_read() -> None:
    """Over 40 characters is refused unread; 40 that make a valid amount are fine."""
    assert parse_amount("0" * 36 + "1.00") == Decimal("1.00")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "must be a three-letter ISO 4217 code such as EUR"),
        (978, "must be a three-letter ISO 4217 code such as EUR"),
        ("EURO", "must be a three-letter ISO 4217 code such as EUR"),
        ("xyz", "XYZ is not an ISO 4217 currency code"),
    ],
)
def test_a_currency_is_refused_with_its_field_and_the_whole_reason(raw, message) -> None:
    assert refusal(parse_currency, raw) == ("currency", message)


@pytest.mark.parametrize("raw", [None, 5, "12345", "0-5", ""])
def test_a_decline_code_is_refused_with_its_field_and_the_whole_reason(raw) -> None:
    assert refusal(parse_decline_code, raw) == (
        "decline_code", "must be 1 to 4 letters or digits, such as 05 or N7")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "must be text"),
        (42, "must be text"),
        ("   ", "must not be empty"),
        ("x" * 101, "must be at most 100 characters"),
        ("Acme\x00Bank", "must not contain NUL (U+0000)"),
        ("Acme\u202eBank", "must not contain invisible format characters such as direction"
                           " overrides (found U+202E)"),
        # Far too long, even if trimming would leave little: refused without a scan.
        (" " * 1000 + "a", "must be at most 100 characters"),
    ],
    ids=["None", "int", "blank", "101 characters", "NUL", "bidi override", "1001 characters"],
)
def test_a_bank_name_is_refused_with_its_field_and_the_whole_reason(raw, message) -> None:
    assert refusal(parse_bank_name, raw) == ("bank_name", message)


def test_a_bank_name_is_counted_after_trimming_and_may_have_100_characters() -> None:
    assert parse_bank_name("x" * 100) == "x" * 100
    assert parse_bank_name(" " * 999 + "a") == "a"  # 1,000 characters: scanned, trimmed


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "must be text"),
        (42, "must be text"),
        ("r" * 65, "must be at most 64 characters"),
        ("order\t42", "must be one line of text without control characters (found U+0009)"),
        ("\t", "must be one line of text without control characters (found U+0009)"),
        ("order\x0042", "must not contain NUL (U+0000)"),
        ("order\u2028", "must be one line of text without control characters (found U+2028)"),
        ("\u202eorder", "must not contain invisible format characters such as direction"
                        " overrides (found U+202E)"),
        ("order\udcff", "is not valid UTF-8 text (it holds the byte 0xFF)"),
        (" " * 641, "must be at most 64 characters"),
    ],
    ids=["None", "int", "65 characters", "tab", "a tab alone", "NUL", "line separator",
         "bidi override", "not UTF-8", "641 spaces"],
)
def test_a_reference_is_refused_with_its_field_and_the_whole_reason(raw, message) -> None:
    """The text rule, as for every free-text field: even a control character alone is
    refused rather than taken for "no reference"."""
    assert refusal(parse_reference, raw) == ("reference", message)


@pytest.mark.parametrize(("raw", "parsed"), [
    ("", ""), ("   ", ""), ("\u3000\u00a0", ""),  # nothing but spaces is no reference
    ("  order 1234 ", "order 1234"), ("r" * 64, "r" * 64), (" " * 100 + "r" * 64, "r" * 64),
    ("Cafe\u0301" * 16, "Caf\u00e9" * 16),  # 80 code points sent, 64 characters after NFC
])
def test_a_reference_is_optional_trimmed_normalised_and_counted_in_characters(
    raw: str, parsed: str
) -> None:
    assert parse_reference(raw) == parsed


def test_create_decides_the_reference_and_the_state_keeps_it() -> None:
    payment_id = uuid4()
    created = create_payment(payment_id=payment_id, amount="1.00", currency="EUR",
                             reference=" order 7 ", occurred_at=T0)
    assert created.reference == "order 7"
    assert create_payment(payment_id=payment_id, amount="1.00", currency="EUR",
                          occurred_at=T0).reference == ""
    with pytest.raises(InvalidInput, match=r"^reference: must be at most 64 characters$"):
        create_payment(payment_id=payment_id, amount="1.00", currency="EUR",
                       reference="r" * 65, occurred_at=T0)
    pending = apply(None, created, 0)
    assert pending.reference == "order 7"
    authorized = apply(pending, pending.authorize(bank_name="B", occurred_at=T1), 1)
    assert authorized.reference == "order 7"  # only PaymentCreated sets it


def test_each_refusal_carries_the_status_and_action_it_is_about() -> None:
    settled = reach(("authorize", "settle 60.00"))
    with pytest.raises(TransitionNotAllowed) as refused:
        settled.decline(bank_name="Acme Bank", decline_code="05", occurred_at=T0)
    assert (refused.value.status, refused.value.action) == ("partially_settled", "decline")
    with pytest.raises(AmountExceedsBalance) as too_much:
        settled.settle(amount=Decimal("60.00"), occurred_at=T0)
    assert (too_much.value.status, too_much.value.action) == ("partially_settled", "settle")
    assert str(too_much.value) == (
        "cannot settle 60.00: only 40.00 is left to settle on a payment that is"
        " partially_settled")
    with pytest.raises(AmountExceedsBalance) as too_much:
        settled.refund(amount=Decimal("60.01"), occurred_at=T0)
    assert (too_much.value.status, too_much.value.action) == ("partially_settled", "refund")
    assert str(too_much.value) == (
        "cannot refund 60.01: only 60.00 is left to refund on a payment that is"
        " partially_settled")


# The limits (DECISIONS.md): at most 100 settlements and 100 refunds per payment.

def cents_at_a_time(payment: Payment, action: str, times: int) -> Payment:
    for _ in range(times):
        payment = apply(payment, command(payment, action, "0.01", T0), payment.version + 1)
    return payment


def test_a_payment_takes_100_settlements_and_no_more() -> None:
    payment = cents_at_a_time(reach(("authorize",)), "settle", 99)
    assert payment.settlements == 99
    payment = cents_at_a_time(payment, "settle", 1)  # the 100th
    assert (payment.settlements, payment.settled_amount) == (100, Decimal("1.00"))
    with pytest.raises(LimitReached) as refused:
        payment.settle(occurred_at=T0)
    error = refused.value
    assert (error.status, error.action, error.limit) == ("partially_settled", "settle", 100)
    assert str(error) == (
        "cannot settle this payment again: it has 100 settlements, the most one payment may"
        " have; settle what is left in one go")
    payment.refund(occurred_at=T0)  # refunds are still allowed


def test_a_payment_takes_100_refunds_and_no_more() -> None:
    payment = cents_at_a_time(reach(("authorize", "settle")), "refund", 100)
    assert (payment.refunds, payment.refunded_amount) == (100, Decimal("1.00"))
    with pytest.raises(LimitReached) as refused:
        payment.refund(amount=Decimal("0.01"), occurred_at=T0)
    error = refused.value
    assert (error.status, error.action, error.limit) == ("partially_refunded", "refund", 100)
    assert str(error) == (
        "cannot refund this payment again: it has 100 refunds, the most one payment may"
        " have; refund what is left in one go")


# Every field of every event a command decides, and of the state each event gives.

T1, T2, T3, T4 = (T0 + timedelta(hours=n) for n in range(1, 5))


def test_each_event_carries_its_payment_time_and_a_new_id_and_the_state_follows() -> None:
    payment_id = uuid4()
    created = create_payment(payment_id=payment_id, amount="100.00", currency=" eur ",
                             occurred_at=T0)
    assert (created.payment_id, created.amount, created.currency, created.occurred_at) == (
        payment_id, Decimal("100.00"), "EUR", T0)
    with pytest.raises(InvalidInput):
        create_payment(payment_id=payment_id, amount="1.00", currency="XYZ", occurred_at=T0)
    pending = apply(None, created, 0)
    assert pending == Payment(id=payment_id, status="pending", amount=Decimal("100.00"),
                              currency="EUR", created_at=T0, updated_at=T0, version=0)

    authorized_event = pending.authorize(bank_name="  Acme Bank ", occurred_at=T1)
    again = pending.authorize(bank_name="Acme Bank", occurred_at=T1)
    assert (authorized_event.payment_id, authorized_event.bank_name,
            authorized_event.occurred_at) == (payment_id, "Acme Bank", T1)
    assert authorized_event.authorization_id != again.authorization_id
    authorized = apply(pending, authorized_event, 1)
    assert (authorized.status, authorized.bank_name, authorized.created_at,
            authorized.updated_at, authorized.version) == ("authorized", "Acme Bank", T0, T1, 1)

    # A settle is by the authorizing bank unless it names another.
    by_default = authorized.settle(amount=Decimal("10.00"), occurred_at=T2)
    named = authorized.settle(amount=Decimal("10.00"), bank_name=" Other Bank ", occurred_at=T2)
    assert (by_default.payment_id, by_default.bank_name, by_default.amount,
            by_default.occurred_at) == (payment_id, "Acme Bank", Decimal("10.00"), T2)
    assert named.bank_name == "Other Bank"
    assert by_default.settlement_id != named.settlement_id
    with pytest.raises(InvalidInput):
        authorized.settle(bank_name="   ", occurred_at=T2)
    settled_once = apply(authorized, named, 2)
    assert (settled_once.status, settled_once.settled_amount, settled_once.settlements,
            settled_once.bank_name, settled_once.updated_at, settled_once.version) == (
        "partially_settled", Decimal("10.00"), 1, "Other Bank", T2, 2)
    # A settlement that names no bank keeps the one the payment has.
    unnamed = PaymentSettled(payment_id=payment_id, occurred_at=T3, bank_name="",
                             amount=Decimal("90.00"), settlement_id=uuid4())
    settled = apply(settled_once, unnamed, 3)
    assert (settled.status, settled.settled_amount, settled.settlements, settled.bank_name,
            settled.updated_at) == ("settled", Decimal("100.00"), 2, "Other Bank", T3)

    refund = settled.refund(amount=Decimal("30.00"), occurred_at=T4)
    other = settled.refund(amount=Decimal("30.00"), occurred_at=T4)
    assert (refund.payment_id, refund.amount, refund.occurred_at) == (
        payment_id, Decimal("30.00"), T4)
    assert refund.refund_id != other.refund_id
    refunded = apply(settled, refund, 4)
    assert (refunded.status, refunded.refunded_amount, refunded.refunds, refunded.updated_at,
            refunded.created_at, refunded.version) == (
        "partially_refunded", Decimal("30.00"), 1, T4, T0, 4)
    refunded = apply(refunded, settled.refund(amount=Decimal("70.00"), occurred_at=T4), 5)
    assert (refunded.status, refunded.refunds) == ("refunded", 2)


def test_a_decline_carries_the_bank_and_code_and_the_state_keeps_them() -> None:
    authorized = reach(("authorize",))
    declined_event = authorized.decline(bank_name=" Other Bank ", decline_code=" n7 ",
                                        occurred_at=T2)
    again = authorized.decline(bank_name="Other Bank", decline_code="N7", occurred_at=T2)
    assert (declined_event.payment_id, declined_event.bank_name, declined_event.decline_code,
            declined_event.occurred_at) == (authorized.id, "Other Bank", "N7", T2)
    assert declined_event.decline_id != again.decline_id
    declined = apply(authorized, declined_event, 2)
    assert (declined.status, declined.bank_name, declined.decline_code, declined.updated_at,
            declined.version) == ("declined", "Other Bank", "N7", T2, 2)


def test_a_settle_with_no_bank_known_names_none() -> None:
    """A history whose authorization named no bank (a foreign or old stream)."""
    payment = fold([
        create_payment(payment_id=uuid4(), amount="5.00", currency="EUR", occurred_at=T0),
        PaymentAuthorized(payment_id=uuid4(), occurred_at=T1, bank_name="",
                          authorization_id=uuid4()),
    ])
    assert payment is not None
    assert payment.settle(occurred_at=T2).bank_name == ""


@dataclass(frozen=True)
class PaymentDisputed(PaymentEvent):
    """An event the aggregate does not know (a newer or foreign producer's)."""


def test_a_history_that_cannot_be_folded_says_why() -> None:
    payment_id = uuid4()
    created = create_payment(payment_id=payment_id, amount="5.00", currency="EUR",
                             occurred_at=T0)
    with pytest.raises(HistoryError) as refused:
        fold([created, created])
    assert str(refused.value) == f"payment {payment_id} is created twice"
    settled = PaymentSettled(payment_id=payment_id, occurred_at=T0, bank_name="B",
                             amount=Decimal("1.00"), settlement_id=uuid4())
    with pytest.raises(HistoryError) as refused:
        fold([settled])
    assert str(refused.value) == "PaymentSettled before PaymentCreated"
    with pytest.raises(HistoryError) as refused:
        fold([created, PaymentDisputed(payment_id=payment_id, occurred_at=T1)])
    assert str(refused.value) == "unknown event PaymentDisputed"


def test_the_state_has_the_version_its_last_event_was_read_at_even_the_first() -> None:
    """The version is the stream's, not a count: a stream need not start at 0 (an
    EventStoreDB stream deleted and written again goes on numbering)."""
    created = create_payment(payment_id=uuid4(), amount="5.00", currency="EUR",
                             occurred_at=T0)
    assert apply(None, created, 7).version == 7
