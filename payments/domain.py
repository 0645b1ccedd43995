"""The payment aggregate: plain Python, no Django, no I/O.

Functional style: a command is a function of the current state that either refuses
(raising a ``PaymentError``) or returns the one event it decides; ``apply`` is the
only thing that changes state, and ``fold`` rebuilds a payment from its events. The
projections reuse ``apply`` so that the read model and the write side cannot drift.

Every input rule (amount, currency, bank name, decline code, reference) lives here, in one
place; the CLI, the API and the forms call ``parse_*`` and show the message.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from payments import text
from payments.currencies import currency_codes
from payments.events import (
    PaymentAuthorized,
    PaymentCreated,
    PaymentDeclined,
    PaymentEvent,
    PaymentRefunded,
    PaymentSettled,
)

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("999999999999.99")
MAX_BANK_NAME_LENGTH = 100
MAX_REFERENCE_LENGTH = 64
# Settle and refund events per payment. A card payment is captured in a few parts
# (shipments) and refunded in a few; a hundred of each is far beyond any real order and
# keeps every stream short enough to read and fold on each command (DECISIONS.md).
MAX_SETTLEMENTS = 100
MAX_REFUNDS = 100
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_DECLINE_CODE = re.compile(r"[A-Za-z0-9]{1,4}")


class PaymentStatus(enum.StrEnum):
    """Where a payment is in its life cycle."""

    PENDING = "pending"
    AUTHORIZED = "authorized"
    PARTIALLY_SETTLED = "partially_settled"
    SETTLED = "settled"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    DECLINED = "declined"


class Action(enum.StrEnum):
    """The commands a payment accepts (creation aside)."""

    AUTHORIZE = "authorize"
    SETTLE = "settle"
    REFUND = "refund"
    DECLINE = "decline"


ALLOWED_ACTIONS: dict[PaymentStatus, tuple[Action, ...]] = {
    PaymentStatus.PENDING: (Action.AUTHORIZE, Action.DECLINE),
    PaymentStatus.AUTHORIZED: (Action.SETTLE, Action.DECLINE),
    PaymentStatus.PARTIALLY_SETTLED: (Action.SETTLE, Action.REFUND),
    PaymentStatus.SETTLED: (Action.REFUND,),
    PaymentStatus.PARTIALLY_REFUNDED: (Action.REFUND,),
    PaymentStatus.REFUNDED: (),
    PaymentStatus.DECLINED: (),
}


class PaymentError(Exception):
    """Base class of the domain's errors; the message is meant for the user."""


class InvalidInput(PaymentError, ValueError):
    """A value breaks a rule of its own (shape, range), whatever the payment's state."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class TransitionNotAllowed(PaymentError):
    """The payment's status does not allow the action."""

    def __init__(self, status: PaymentStatus, action: Action) -> None:
        self.status = status
        self.action = action
        allowed = ", ".join(ALLOWED_ACTIONS[status]) or "nothing (final)"
        super().__init__(f"cannot {action} a payment that is {status}; allowed: {allowed}")


class AmountExceedsBalance(PaymentError):
    """A settle or refund asks for more than is left to settle or refund."""

    def __init__(
        self, status: PaymentStatus, action: Action, asked: Decimal, left: Decimal
    ) -> None:
        self.status = status
        self.action = action
        super().__init__(
            f"cannot {action} {asked}: only {left} is left to {action} on a payment that is"
            f" {status}"
        )


class LimitReached(PaymentError):
    """The payment already has as many settlements (or refunds) as one payment may."""

    def __init__(self, status: PaymentStatus, action: Action, limit: int) -> None:
        self.status = status
        self.action = action
        self.limit = limit
        what = "settlements" if action == Action.SETTLE else "refunds"
        super().__init__(
            f"cannot {action} this payment again: it has {limit} {what}, the most one"
            f" payment may have; {action} what is left in one go"
        )


# --- input rules -------------------------------------------------------------------
#
# One parse function per kind of input; the API, the forms and the CLI call these and
# show their message, so a refusal reads the same on every interface.

# A plain decimal: ASCII digits, at most one point. No sign, exponent, underscore or
# space anywhere (Decimal() would take "1e2", "1_000", " 5", "+5" and Arabic digits).
_PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_NEGATIVE_DECIMAL = re.compile(r"-[0-9]+(?:\.[0-9]+)?")
_MAX_AMOUNT_TEXT = 40  # characters; anything longer is refused before it is parsed
PLAIN_DECIMAL_MESSAGE = (
    'is not a plain decimal such as "12.50" (digits and at most one point; no sign,'
    " exponent, spaces or separators)"
)


def parse_amount(value: str | Decimal | int, field: str = "amount") -> Decimal:
    """A positive amount with at most 2 decimal places and 12 integer digits.

    Text must be a plain decimal; an int (a JSON integer) is exact and accepted; a float
    never is (0.1 is not 0.10).
    """
    if isinstance(value, float):
        raise InvalidInput(field, 'must be a decimal string such as "12.50", not a float')
    if isinstance(value, bool):
        raise InvalidInput(field, f"{value!r} {PLAIN_DECIMAL_MESSAGE}")
    if isinstance(value, str):
        if len(value) > _MAX_AMOUNT_TEXT:
            raise InvalidInput(field, f"must be at most {MAX_AMOUNT:,}")
        if _NEGATIVE_DECIMAL.fullmatch(value):
            raise InvalidInput(field, "must be greater than 0")
        if not _PLAIN_DECIMAL.fullmatch(value):
            raise InvalidInput(field, f"{value!r} {PLAIN_DECIMAL_MESSAGE}")
        if len(value.partition(".")[2]) > 2:
            raise InvalidInput(field, "must have at most 2 decimal places")
        amount = Decimal(value)
    elif isinstance(value, int | Decimal):
        amount = Decimal(value)
        if not amount.is_finite():
            raise InvalidInput(field, f"{value!r} is not a finite number")
    else:
        raise InvalidInput(field, f"{type(value).__name__} {PLAIN_DECIMAL_MESSAGE}")
    if amount <= 0:
        raise InvalidInput(field, "must be greater than 0")
    if amount > MAX_AMOUNT:
        raise InvalidInput(field, f"must be at most {MAX_AMOUNT:,}")
    cents = amount.quantize(CENT)  # safe: below MAX_AMOUNT, well within 28 digits
    if cents != amount:
        raise InvalidInput(field, "must have at most 2 decimal places")
    return cents


def parse_currency(value: str) -> str:
    """An ISO 4217 currency code from the real list (``EUR``, ``usd``), upper-cased."""
    code = value.strip() if isinstance(value, str) else ""
    if not _CURRENCY.fullmatch(code):  # before upper(): "\u017fek".upper() is "SEK"
        raise InvalidInput("currency", "must be a three-letter ISO 4217 code such as EUR")
    code = code.upper()
    if code not in currency_codes():
        raise InvalidInput("currency", f"{code} is not an ISO 4217 currency code")
    return code


def parse_text(value: str, field: str, *, max_length: int, allow_empty: bool = False) -> str:
    """The text rule (DESIGN.md) for every free-text field: valid, printable, one line.

    Refuses lone surrogates, NUL, control and format characters (bidi overrides
    included) with a message naming the character; then NFC, trimmed, 1 to
    ``max_length`` characters (code points, after normalisation); 0 when
    ``allow_empty`` (an optional field: nothing but spaces is nothing).
    """
    if not isinstance(value, str):
        raise InvalidInput(field, "must be text")
    if len(value) > 10 * max_length:  # far too long whatever trimming leaves: not scanned
        raise InvalidInput(field, f"must be at most {max_length} characters")
    found = text.forbidden_character(value)
    if found is not None:
        raise InvalidInput(field, text.describe(found))
    cleaned = text.normalise(value).strip()
    if not cleaned and not allow_empty:
        raise InvalidInput(field, "must not be empty")
    if len(cleaned) > max_length:
        raise InvalidInput(field, f"must be at most {max_length} characters")
    return cleaned


def parse_bank_name(value: str) -> str:
    """A bank name under the text rule, at most 100 characters."""
    return parse_text(value, "bank_name", max_length=MAX_BANK_NAME_LENGTH)


def parse_reference(value: str) -> str:
    """The merchant's own reference (an order number, an invoice): optional free text
    under the text rule, at most 64 characters; empty or only spaces is "" (none)."""
    return parse_text(value, "reference", max_length=MAX_REFERENCE_LENGTH, allow_empty=True)


def parse_decline_code(value: str) -> str:
    """A card network decline code (``05``, ``51``, ``N7``): 1-4 ASCII letters or digits."""
    code = value.strip() if isinstance(value, str) else ""
    if not _DECLINE_CODE.fullmatch(code):  # before upper(): "ß".upper() is "SS"
        raise InvalidInput("decline_code", "must be 1 to 4 letters or digits, such as 05 or N7")
    return code.upper()


# --- the aggregate ------------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """The state of one payment, folded from its events."""

    id: UUID
    status: PaymentStatus
    amount: Decimal
    currency: str
    reference: str = ""  # the merchant's, from PaymentCreated; "" for none
    settled_amount: Decimal = Decimal("0.00")
    refunded_amount: Decimal = Decimal("0.00")
    bank_name: str | None = None
    decline_code: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0  # stream version of the last event applied (0-based)
    # The store position of that event: what a read of a projection may wait for (read
    # your writes). The store numbers it, not the events, so the command service sets it
    # once the state is loaded or appended; equality leaves it out (the same state read
    # from another store, or folded without one, is the same payment).
    position: int = field(default=0, compare=False)
    # Events so far, for the limits: the write side's bookkeeping, not part of what a
    # payment is (the read model does not keep them, so equality leaves them out).
    settlements: int = field(default=0, compare=False)  # PaymentSettled (MAX_SETTLEMENTS)
    refunds: int = field(default=0, compare=False)  # PaymentRefunded (MAX_REFUNDS)

    @property
    def allowed_actions(self) -> tuple[Action, ...]:
        """What the status allows next; the forms offer exactly these."""
        return ALLOWED_ACTIONS[self.status]

    @property
    def outstanding(self) -> Decimal:
        """What is left to settle."""
        return self.amount - self.settled_amount

    @property
    def refundable(self) -> Decimal:
        """What is left to refund."""
        return self.settled_amount - self.refunded_amount

    def _require(self, action: Action) -> None:
        if action not in self.allowed_actions:
            raise TransitionNotAllowed(self.status, action)

    def authorize(self, *, bank_name: str, occurred_at: datetime) -> PaymentAuthorized:
        """Record the bank's authorization of a pending payment."""
        self._require(Action.AUTHORIZE)
        return PaymentAuthorized(
            payment_id=self.id,
            bank_name=parse_bank_name(bank_name),
            authorization_id=uuid4(),
            occurred_at=occurred_at,
        )

    def settle(
        self, *, amount: Decimal | None = None, bank_name: str | None = None,
        occurred_at: datetime,
    ) -> PaymentSettled:
        """Settle part or (by default) all of what is outstanding."""
        self._require(Action.SETTLE)
        if self.settlements >= MAX_SETTLEMENTS:
            raise LimitReached(self.status, Action.SETTLE, MAX_SETTLEMENTS)
        asked = self.outstanding if amount is None else parse_amount(amount)
        if asked > self.outstanding:
            raise AmountExceedsBalance(self.status, Action.SETTLE, asked, self.outstanding)
        bank = self.bank_name if bank_name is None else parse_bank_name(bank_name)
        return PaymentSettled(
            payment_id=self.id,
            bank_name=bank or "",
            amount=asked,
            settlement_id=uuid4(),
            occurred_at=occurred_at,
        )

    def refund(self, *, amount: Decimal | None = None, occurred_at: datetime) -> PaymentRefunded:
        """Refund part or (by default) all of what was settled and not yet refunded."""
        self._require(Action.REFUND)
        if self.refunds >= MAX_REFUNDS:
            raise LimitReached(self.status, Action.REFUND, MAX_REFUNDS)
        asked = self.refundable if amount is None else parse_amount(amount)
        if asked > self.refundable:
            raise AmountExceedsBalance(self.status, Action.REFUND, asked, self.refundable)
        return PaymentRefunded(
            payment_id=self.id, amount=asked, refund_id=uuid4(), occurred_at=occurred_at
        )

    def decline(
        self, *, bank_name: str, decline_code: str, occurred_at: datetime
    ) -> PaymentDeclined:
        """Record the bank's refusal; a declined payment never changes again."""
        self._require(Action.DECLINE)
        return PaymentDeclined(
            payment_id=self.id,
            bank_name=parse_bank_name(bank_name),
            decline_code=parse_decline_code(decline_code),
            decline_id=uuid4(),
            occurred_at=occurred_at,
        )


def create_payment(
    *, payment_id: UUID, amount: Decimal | str, currency: str, reference: str = "",
    occurred_at: datetime,
) -> PaymentCreated:
    """Decide the first event of a new payment."""
    return PaymentCreated(
        payment_id=payment_id,
        amount=parse_amount(amount),
        currency=parse_currency(currency),
        reference=parse_reference(reference),
        occurred_at=occurred_at,
    )


class HistoryError(PaymentError):
    """Events that cannot follow each other: a corrupt or foreign stream."""


def _evolved(payment: Payment, **changes: Any) -> Payment:
    """``payment`` with ``changes``: what ``dataclasses.replace`` gives, at a fifth of its cost.

    ``apply`` is a rebuild's hot path (every event of every payment), and ``replace``
    checks each field and runs the frozen ``__init__`` again. ``Payment.__init__`` only
    sets the fields, so a copy of them with the changes is the same payment (and still
    frozen). Only ``apply`` calls it, with field names spelt out.
    """
    evolved = object.__new__(Payment)
    evolved.__dict__.update(payment.__dict__, **changes)
    return evolved


def apply(payment: Payment | None, event: PaymentEvent, version: int) -> Payment:
    """The state after ``event``: the one place where a payment's state changes."""
    if isinstance(event, PaymentCreated):
        if payment is not None:
            raise HistoryError(f"payment {event.payment_id} is created twice")
        return Payment(
            id=event.payment_id,
            status=PaymentStatus.PENDING,
            amount=event.amount,
            currency=event.currency,
            reference=event.reference,
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            version=version,
        )
    if payment is None:
        raise HistoryError(f"{type(event).__name__} before PaymentCreated")
    at = event.occurred_at
    if isinstance(event, PaymentAuthorized):
        return _evolved(payment, status=PaymentStatus.AUTHORIZED, bank_name=event.bank_name,
                        updated_at=at, version=version)
    if isinstance(event, PaymentSettled):
        settled = payment.settled_amount + event.amount
        status = (
            PaymentStatus.SETTLED if settled >= payment.amount
            else PaymentStatus.PARTIALLY_SETTLED
        )
        return _evolved(
            payment, status=status, settled_amount=settled, settlements=payment.settlements + 1,
            bank_name=event.bank_name or payment.bank_name, updated_at=at, version=version,
        )
    if isinstance(event, PaymentRefunded):
        refunded = payment.refunded_amount + event.amount
        status = (
            PaymentStatus.REFUNDED if refunded >= payment.settled_amount
            else PaymentStatus.PARTIALLY_REFUNDED
        )
        return _evolved(payment, status=status, refunded_amount=refunded,
                        refunds=payment.refunds + 1, updated_at=at, version=version)
    if isinstance(event, PaymentDeclined):
        return _evolved(
            payment, status=PaymentStatus.DECLINED, bank_name=event.bank_name,
            decline_code=event.decline_code, updated_at=at, version=version,
        )
    raise HistoryError(f"unknown event {type(event).__name__}")


def fold(events: Iterable[PaymentEvent]) -> Payment | None:
    """Rebuild a payment from its events (versions counted from 0)."""
    payment: Payment | None = None
    for version, event in enumerate(events):
        payment = apply(payment, event, version)
    return payment
