"""The REST API's JSON shapes: input fields that defer to the domain, and outputs.

Input rules are the domain's ``parse_*`` functions, called here so that a bad field
is a 400 with the domain's own message; nothing in this module decides a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.paginator import Page
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.fields import SkipField, empty

from payments.domain import (
    MAX_BANK_NAME_LENGTH,
    MAX_REFERENCE_LENGTH,
    InvalidInput,
    Payment,
    PaymentStatus,
    parse_amount,
    parse_bank_name,
    parse_currency,
    parse_decline_code,
    parse_reference,
)
from payments.history import API_PAGE_SIZE
from payments.services import AsOf, HistoryEntry, PaymentWithHistory

MONEY = {"max_digits": 14, "decimal_places": 2}
# On every command's answer: the store position of the payment's event, the value a list
# read passes as ``?after=`` to see the change (read your writes).
EVENT_POSITION_HEADER = "X-Event-Position"
POSITION_HELP = ("the event store position of the last event folded into this state (a"
                 " command's answer: its own event's); pass it as `?after=` to a list to read"
                 " it with this change")


class DomainField(serializers.Field):
    """A JSON string checked and normalised by one of the domain's ``parse_*`` functions."""

    default_error_messages = {"not_a_string": "must be a string"}

    def __init__(self, parse: Callable[[str], Any], **kwargs: Any) -> None:
        self.parse = parse
        super().__init__(**kwargs)

    def check_type(self, data: Any) -> None:
        """JSON strings only: a number or a list is not a name or a code."""
        if not isinstance(data, str):
            self.fail("not_a_string")

    def to_internal_value(self, data: Any) -> Any:
        self.check_type(data)
        try:
            return self.parse(data)
        except InvalidInput as e:
            raise serializers.ValidationError(e.message) from None

    def to_representation(self, value: Any) -> str:
        return str(value)


@extend_schema_field(
    {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,2})?$", "example": "100.00",
     "description": "a plain decimal string above 0 (no sign, exponent, spaces or"
                    " separators), at most 2 places and 12 integer digits; a JSON integer is"
                    " exact and accepted, a number with a fraction (a float) is refused"}
)
class AmountField(DomainField):
    """Money as a decimal string; a JSON integer is exact and accepted, a float is not."""

    default_error_messages = {"not_a_string": 'must be a decimal string such as "100.00"'}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(parse_amount, **kwargs)

    def check_type(self, data: Any) -> None:
        # bool is an int to Python, and Decimal() takes lists and tuples: refuse them here.
        # A float goes on to parse_amount, which refuses it with the domain's reason.
        if isinstance(data, bool) or not isinstance(data, str | int | float):
            self.fail("not_a_string")


@extend_schema_field({"type": "string", "pattern": "^[A-Za-z]{3}$", "example": "EUR",
                      "description": "an ISO 4217 currency code"})
class CurrencyField(DomainField):
    """An ISO 4217 code; the domain upper-cases it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(parse_currency, **kwargs)


@extend_schema_field(
    {"type": "string", "minLength": 1, "maxLength": MAX_BANK_NAME_LENGTH, "example": "Acme Bank"}
)
class BankNameField(DomainField):
    """A bank name; the domain trims it and bounds its length."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(parse_bank_name, **kwargs)


@extend_schema_field(
    {"type": "string", "maxLength": MAX_REFERENCE_LENGTH, "example": "order 1234",
     "description": f"the merchant's own reference, at most {MAX_REFERENCE_LENGTH}"
                    " characters of one line of text (no control or format characters);"
                    " trimmed; empty or absent: none"}
)
class ReferenceField(DomainField):
    """The merchant's optional reference; the domain applies the text rule and trims it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(parse_reference, **kwargs)


@extend_schema_field({"type": "string", "pattern": "^[A-Za-z0-9]{1,4}$", "example": "05"})
class DeclineCodeField(DomainField):
    """A card network decline code, kept as a string so ``05`` stays ``05``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(parse_decline_code, **kwargs)


class CommandSerializer(serializers.Serializer):
    """Base of the command inputs: a field it does not know is refused, by name.

    Refusing (rather than ignoring) catches a client's typo such as ``ammount`` before
    it silently settles the whole outstanding amount.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                allowed = ", ".join(self.fields) or "no fields"
                raise serializers.ValidationError(
                    {name: [f"unknown field; this request takes: {allowed}"] for name in unknown}
                )
        return super().to_internal_value(data)

    @classmethod
    def validated(cls, data: Any) -> dict[str, Any]:
        """``data`` checked as ``cls(data=data).is_valid(raise_exception=True)`` checks it,
        with the same result.

        A body of known fields that passes every check is checked on the class's declared
        fields themselves, which DRF never binds (each instance gets deep copies): building
        that instance cost a command 25 µs, more than its checks. Anything else goes to
        the serializer, so that every refusal reads exactly as DRF writes it.
        """
        fields = cls._declared_fields
        # A JSON object only (a QueryDict reads absent and blank fields its own way).
        if type(data) is dict and data.keys() <= fields.keys():
            serializer = cls()  # for its hooks only: no data, no fields built
            attrs: dict[str, Any] = {}
            try:
                for name, field in fields.items():
                    try:
                        value = field.run_validation(data.get(name, empty))
                    except SkipField:  # absent and optional
                        continue
                    hook = getattr(serializer, f"validate_{name}", None)
                    attrs[name] = value if hook is None else hook(value)
                return dict(serializer.validate(attrs))
            except (serializers.ValidationError, DjangoValidationError):
                pass  # the serializer says why, in DRF's words
        serializer = cls(data=data)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)


class ExistingPaymentCommandSerializer(CommandSerializer):
    """A command on an existing payment: the caller may name the version it expects."""

    expected_version = serializers.IntegerField(
        min_value=0, max_value=2**63 - 1, required=False,
        help_text="refuse with 409 unless the payment is at this version (optimistic"
                  " concurrency); versions count from 0",
    )


# --- outputs ---------------------------------------------------------------------------
#
# The output serializers describe the JSON for the schema; their to_representation is a
# plain function, also used by `manage.py api --json`. Building a DRF serializer's
# fields (a deep copy per instance) cost a fifth of a request's CPU time.


def payment_json(payment: Payment) -> dict[str, Any]:
    """The payment as the API and ``manage.py api --json`` answer it."""
    return {
        "id": str(payment.id),
        "status": payment.status.value,
        "amount": f"{payment.amount:.2f}",
        "currency": payment.currency,
        "reference": payment.reference,
        "settled_amount": f"{payment.settled_amount:.2f}",
        "refunded_amount": f"{payment.refunded_amount:.2f}",
        "bank_name": payment.bank_name,
        "decline_code": payment.decline_code,
        "version": payment.version,
        "position": payment.position,
    }


def command_headers(payment: Payment) -> dict[str, str]:
    """The headers of a command's answer: where its event is in the store."""
    return {EVENT_POSITION_HEADER: str(payment.position)}


def event_json(entry: HistoryEntry) -> dict[str, Any]:
    """One stored event as the detail and ``manage.py api -a find --json`` show it."""
    return {"type": entry.type, "data": entry.data, "version": entry.version,
            "position": entry.position, "occurred_at": _timestamp(entry.occurred_at)}


def as_of_json(as_of: AsOf | None) -> dict[str, Any]:
    """``{"as_of": …}`` for a past state (which event, when, and the version now); nothing
    for the current state, whose answer stays as it always was."""
    if as_of is None:
        return {}
    return {"as_of": {
        "version": as_of.version,
        "time": _timestamp(as_of.time),
        "current_version": as_of.current_version,
        "requested_time": (None if as_of.requested_time is None
                           else _timestamp(as_of.requested_time)),
    }}


def history_json(found: PaymentWithHistory) -> dict[str, Any]:
    """The payment and every event it was folded from, oldest first (the CLI's ``find``:
    its user asked for the whole history; the API answers a page, ``detail_json``)."""
    return {**payment_json(found.payment), **as_of_json(found.as_of),
            "events": [event_json(e) for e in found.history]}


@dataclass(frozen=True)
class PaymentDetail:
    """A payment, one page of its events and the URLs of the pages either side."""

    payment: Payment
    events: Page
    next_url: str | None
    previous_url: str | None
    as_of: AsOf | None = None  # a past state: the events are those up to it


def detail_json(detail: PaymentDetail) -> dict[str, Any]:
    """The API detail: the payment, the number of its events and one page of them."""
    return {
        **payment_json(detail.payment),
        **as_of_json(detail.as_of),
        "events_count": detail.events.paginator.count,
        "events_next": detail.next_url,
        "events_previous": detail.previous_url,
        "events": [event_json(e) for e in detail.events.object_list],
    }


def _timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as DRF's DateTimeField writes it."""
    text = moment.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"


class PaymentSerializer(serializers.Serializer):
    """A payment's state, as every command answers it."""

    def to_representation(self, instance: Payment) -> dict[str, Any]:
        return payment_json(instance)

    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=[s.value for s in PaymentStatus])
    amount = serializers.DecimalField(**MONEY)
    currency = serializers.CharField()
    reference = serializers.CharField(
        allow_blank=True, help_text="the merchant's reference given at create; \"\" for none")
    settled_amount = serializers.DecimalField(**MONEY)
    refunded_amount = serializers.DecimalField(**MONEY)
    bank_name = serializers.CharField(allow_null=True)
    decline_code = serializers.CharField(allow_null=True)
    version = serializers.IntegerField(help_text="stream version of the last event (from 0)")
    position = serializers.IntegerField(help_text=POSITION_HELP)


class PaymentEventSerializer(serializers.Serializer):
    """One stored event of a payment."""

    type = serializers.CharField()
    data = serializers.DictField()
    version = serializers.IntegerField()
    position = serializers.IntegerField()
    occurred_at = serializers.DateTimeField()


class AsOfSerializer(serializers.Serializer):
    """Which past state a detail shows (only when ``as_of_version`` or ``as_of`` was given)."""

    version = serializers.IntegerField(
        help_text="the last event folded into this state (from 0); `version` above is the same")
    time = serializers.DateTimeField(help_text="when that event occurred (UTC)")
    current_version = serializers.IntegerField(
        help_text="the payment's last version now: the state is past when it is higher")
    requested_time = serializers.DateTimeField(
        allow_null=True, help_text="the moment asked for with `as_of`, in UTC; null when"
                                   " asked by `as_of_version`")


class PaymentDetailSerializer(PaymentSerializer):
    """A payment folded from its stream, with one page of the events it was folded from."""

    as_of = AsOfSerializer(
        required=False,
        help_text="present only for a past state (`as_of_version` or `as_of`): the payment as"
                  " it was right after event `as_of.version`, and its events up to there")

    events_count = serializers.IntegerField(help_text="how many events the payment has")
    events_next = serializers.URLField(
        allow_null=True, help_text="the next (newer) page of events; null on the last page")
    events_previous = serializers.URLField(
        allow_null=True, help_text="the previous (older) page of events; null on the first")
    events = PaymentEventSerializer(
        many=True, help_text=f"one page of the payment's events, oldest first: all of them"
                             f" when they fit on one page ({API_PAGE_SIZE} by default)")

    def to_representation(self, instance: PaymentDetail) -> dict[str, Any]:
        return detail_json(instance)


class BlankAsNullCharField(serializers.CharField):
    """The read models keep "" for "none"; the API says null, as the detail does."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_null=True, **kwargs)

    def to_representation(self, value: Any) -> str | None:
        return str(value) if value else None


class ErrorSerializer(serializers.Serializer):
    """DRF's error shape for everything but field errors."""

    detail = serializers.CharField()
