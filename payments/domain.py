"""The payment aggregate: plain Python, no Django, no I/O.

Functional style: a command is a function of the current state that either refuses
(raising a ``PaymentError``) or returns the one event it decides; ``apply`` is the
only thing that changes state, and ``fold`` rebuilds a payment from its events. The
projections reuse ``apply`` so that the read model and the write side cannot drift.

Every input rule (amount, currency, bank name, decline code) lives here, in one
place; the CLI, the API and the forms call ``parse_*`` and show the message.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from uuid import UUID, uuid4

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
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECLINE_CODE = re.compile(r"[A-Z0-9]{1,4}")


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


# --- input rules -------------------------------------------------------------------


def parse_amount(value: str | Decimal | int, field: str = "amount") -> Decimal:
    """A positive amount with at most 2 decimal places and 12 integer digits."""
    if isinstance(value, float):
        raise InvalidInput(field, 'must be a decimal string such as "12.50", not a float')
    try:
        amount = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError, TypeError):
        raise InvalidInput(field, f"{value!r} is not a number") from None
    if not amount.is_finite():
        raise InvalidInput(field, f"{value!r} is not a finite number")
    if amount <= 0:
        raise InvalidInput(field, "must be greater than 0")
    if amount > MAX_AMOUNT:
        raise InvalidInput(field, f"must be at most {MAX_AMOUNT:,}")
    cents = amount.quantize(CENT)  # safe: below MAX_AMOUNT, well within 28 digits
    if cents != amount:
        raise InvalidInput(field, "must have at most 2 decimal places")
    return cents


def parse_currency(value: str) -> str:
    """An ISO 4217 alphabetic code: three letters, upper-cased."""
    code = value.strip().upper()
    if not _CURRENCY.fullmatch(code):
        raise InvalidInput("currency", f"{value!r} is not a three-letter ISO 4217 code")
    return code


def parse_bank_name(value: str) -> str:
    """A bank name: trimmed, not empty, at most 100 characters."""
    name = value.strip()
    if not name:
        raise InvalidInput("bank_name", "must not be empty")
    if len(name) > MAX_BANK_NAME_LENGTH:
        raise InvalidInput("bank_name", f"must be at most {MAX_BANK_NAME_LENGTH} characters")
    return name


def parse_decline_code(value: str) -> str:
    """A card network decline code (``05``, ``51``, ``N7``): 1-4 letters or digits."""
    code = value.strip().upper()
    if not _DECLINE_CODE.fullmatch(code):
        raise InvalidInput("decline_code", f"{value!r} is not 1 to 4 letters or digits")
    return code


# --- the aggregate ------------------------------------------------------------------


@dataclass(frozen=True)
class Payment:
    """The state of one payment, folded from its events."""

    id: UUID
    status: PaymentStatus
    amount: Decimal
    currency: str
    settled_amount: Decimal = Decimal("0.00")
    refunded_amount: Decimal = Decimal("0.00")
    bank_name: str | None = None
    decline_code: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    version: int = 0  # stream version of the last event applied (0-based)

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
    *, payment_id: UUID, amount: Decimal | str, currency: str, occurred_at: datetime
) -> PaymentCreated:
    """Decide the first event of a new payment."""
    return PaymentCreated(
        payment_id=payment_id,
        amount=parse_amount(amount),
        currency=parse_currency(currency),
        occurred_at=occurred_at,
    )


class HistoryError(PaymentError):
    """Events that cannot follow each other: a corrupt or foreign stream."""


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
            created_at=event.occurred_at,
            updated_at=event.occurred_at,
            version=version,
        )
    if payment is None:
        raise HistoryError(f"{type(event).__name__} before PaymentCreated")
    at = event.occurred_at
    if isinstance(event, PaymentAuthorized):
        return replace(payment, status=PaymentStatus.AUTHORIZED, bank_name=event.bank_name,
                       updated_at=at, version=version)
    if isinstance(event, PaymentSettled):
        settled = payment.settled_amount + event.amount
        status = (
            PaymentStatus.SETTLED if settled >= payment.amount
            else PaymentStatus.PARTIALLY_SETTLED
        )
        return replace(
            payment, status=status, settled_amount=settled,
            bank_name=event.bank_name or payment.bank_name, updated_at=at, version=version,
        )
    if isinstance(event, PaymentRefunded):
        refunded = payment.refunded_amount + event.amount
        status = (
            PaymentStatus.REFUNDED if refunded >= payment.settled_amount
            else PaymentStatus.PARTIALLY_REFUNDED
        )
        return replace(payment, status=status, refunded_amount=refunded, updated_at=at,
                       version=version)
    if isinstance(event, PaymentDeclined):
        return replace(
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
