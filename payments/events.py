"""The payment events and their JSON form: the integration contract.

Other programs read these events, so the type names, the field names and their
JSON shapes (amounts as strings with two places, UTC ISO 8601 timestamps, UUIDs as
strings) only ever change as a new schema version with an upcaster here.
Plain Python: the projections import this module, and so may any other reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache, lru_cache
from json.encoder import encode_basestring_ascii
from typing import Any, ClassVar
from uuid import UUID

from payments import text
from payments.eventstore.port import RecordedEvent, UnreadableEvent

STREAM_CATEGORY = "payments"
SCHEMA_VERSION = 2


class EventDecodeError(ValueError):
    """Stored bytes that are not a payment event this code understands."""


@dataclass(frozen=True)
class PaymentEvent:
    """Base class: every payment event names its payment and when it happened."""

    type_name: ClassVar[str]

    payment_id: UUID
    occurred_at: datetime


@dataclass(frozen=True)
class PaymentCreated(PaymentEvent):
    type_name: ClassVar[str] = "PaymentCreated"

    amount: Decimal
    currency: str
    # Since schema version 2: the merchant's own reference, "" for none (and for every
    # payment created at version 1, which had none).
    reference: str = ""


@dataclass(frozen=True)
class PaymentAuthorized(PaymentEvent):
    type_name: ClassVar[str] = "PaymentAuthorized"

    bank_name: str
    authorization_id: UUID


@dataclass(frozen=True)
class PaymentSettled(PaymentEvent):
    type_name: ClassVar[str] = "PaymentSettled"

    bank_name: str
    amount: Decimal
    settlement_id: UUID


@dataclass(frozen=True)
class PaymentRefunded(PaymentEvent):
    type_name: ClassVar[str] = "PaymentRefunded"

    amount: Decimal
    refund_id: UUID


@dataclass(frozen=True)
class PaymentDeclined(PaymentEvent):
    type_name: ClassVar[str] = "PaymentDeclined"

    bank_name: str
    decline_code: str
    decline_id: UUID


EVENT_TYPES: dict[str, type[PaymentEvent]] = {
    cls.type_name: cls
    for cls in (PaymentCreated, PaymentAuthorized, PaymentSettled, PaymentRefunded, PaymentDeclined)
}


def stream_name(payment_id: UUID) -> str:
    """The stream of one payment; its category stream is ``$ce-payments``."""
    return f"{STREAM_CATEGORY}-{payment_id}"


def payment_id_from_stream(stream: str) -> UUID:
    """The inverse of ``stream_name``."""
    prefix = f"{STREAM_CATEGORY}-"
    if not stream.startswith(prefix):
        raise EventDecodeError(f"{stream!r} is not a payment stream")
    return UUID(stream[len(prefix):])


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, microseconds kept (e.g. ``2026-11-29T14:00:00.123456Z``)."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")[:-6] + "Z"  # drop "+00:00"


# Each field type's JSON text. UUIDs, amounts and timestamps need no escaping; text
# goes through json's own string encoder (what json.dumps calls for a str, without its
# argument handling). Same bytes as json.dumps of the whole document, faster (encoding
# is on the path of every command).
_ENCODERS: dict[str, Callable[[Any], str]] = {
    "UUID": lambda value: f'"{value}"',
    "Decimal": lambda value: f'"{value:.2f}"',
    "datetime": lambda value: f'"{format_timestamp(value)}"',
    "str": encode_basestring_ascii,
}


@cache
def _encoders(cls: type[PaymentEvent]) -> tuple[tuple[str, str, Callable[[Any], str]], ...]:
    """Each field's JSON key (with its colon), name and encoder, worked out once per class."""
    return tuple((f'"{f.name}":', f.name, _ENCODERS[str(f.type)]) for f in fields(cls))


def encode_data(event: PaymentEvent) -> bytes:
    """The event's JSON data, compact, keys in field order."""
    return ("{" + ",".join([key + encode(getattr(event, name))
                            for key, name, encode in _encoders(type(event))]) + "}").encode()


def encode_metadata(
    *, correlation_id: UUID, causation_id: UUID, trace_context: Mapping[str, str] | None = None
) -> bytes:
    """Metadata in EventStoreDB's convention, plus the schema version of the data.

    ``trace_context``: the W3C headers of the command's span (``traceparent``, and
    ``tracestate`` if any), so that a reader's span can link back to the command; given
    only while tracing is on. The schema version stays the last key: ``_schema_version``
    reads it from the end.
    """
    # UUIDs print as plain hex and dashes: no JSON escaping needed (this is a hot path).
    traced = "".join(f"{json.dumps(name)}:{json.dumps(value)},"
                     for name, value in trace_context.items()) if trace_context else ""
    return (
        f'{{"$correlationId":"{correlation_id}","$causationId":"{causation_id}",{traced}'
        f'"schemaVersion":{SCHEMA_VERSION}}}'
    ).encode()


def decode_metadata(metadata: bytes) -> dict[str, Any]:
    """Metadata as a dict (empty for events written without any)."""
    if not metadata:
        return {}
    try:
        document = json.loads(metadata)
    except ValueError as e:
        raise EventDecodeError(f"metadata is not JSON: {e}") from None
    if not isinstance(document, dict):
        raise EventDecodeError("metadata is not a JSON object")
    return document


def _schema_version(metadata: bytes) -> object:
    """The metadata's schema version; the JSON is parsed only when not our own form.

    A document that names no version is at version 1: every event this code wrote says
    its version, so one without came from another writer, and the contract it can be
    assumed to know is the first one (reading it as the current version would change
    its meaning with every bump).
    """
    if metadata.endswith(_CURRENT_VERSION_SUFFIX):  # what encode_metadata writes
        return SCHEMA_VERSION
    for suffix, version in _OLDER_VERSION_SUFFIXES:  # what it wrote before (a rebuild
        if metadata.endswith(suffix):  # reads them all: parsing costs 3 µs an event)
            return version
    return decode_metadata(metadata).get("schemaVersion", 1)


_CURRENT_VERSION_SUFFIX = f'"schemaVersion":{SCHEMA_VERSION}}}'.encode()
_OLDER_VERSION_SUFFIXES = tuple(
    (f'"schemaVersion":{version}}}'.encode(), version) for version in range(1, SCHEMA_VERSION)
)
_JSON = json.JSONDecoder()  # as json.loads's own decoder


def _json_loads(text: str) -> Any:
    """``json.loads(text)`` at half its cost when nothing surrounds the document.

    What we write has no whitespace around it, and the decoder's public ``raw_decode``
    skips the two regular expressions ``loads`` runs to look for some (a rebuild
    decodes every event). Anything else, and every error, is ``loads``'s own answer.
    """
    try:
        document, end = _JSON.raw_decode(text)
        if end == len(text):
            return document
    except ValueError:
        pass
    return json.loads(text)


# --- the read-time step: every stored document passes here before it is an event ------
#
# Upcasters: for an event type and a schema version n, a function that turns the stored
# JSON document of version n into version n + 1. Decoding applies them in order up to
# SCHEMA_VERSION (a type with no upcaster at n did not change at n + 1); new events are
# written at SCHEMA_VERSION only. An upcaster never edits what the version meant: old
# events are never rewritten, and tests/fixtures/events-v<n>.jsonl must keep decoding.
Document = dict[str, Any]


def _created_v1_to_v2(document: Document) -> Document:
    """PaymentCreated 1 → 2: the merchant ``reference`` arrived; a v1 payment has none.

    Set, not defaulted: a key of that name in a v1 document was never part of the
    contract (another writer's extra field), so it is not a reference either.
    """
    return {**document, "reference": ""}


UPCASTERS: dict[tuple[str, int], Callable[[Document], Document]] = {
    (PaymentCreated.type_name, 1): _created_v1_to_v2,
}


def upcast(type_name: str, version: object, document: Document) -> Document:
    """The document at the current schema version; an unknown version is refused."""
    if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
        raise EventDecodeError(
            f"{type_name} schema version {version!r} is not supported (this code reads"
            f" versions 1 to {SCHEMA_VERSION})"
        )
    for step in range(version, SCHEMA_VERSION):
        upcaster = UPCASTERS.get((type_name, step))
        if upcaster is not None:
            document = upcaster(document)
    return document


def _repair_text(value: Any) -> Any:
    """Every string in a stored document made valid under the text rule (payments.text).

    Events stored before the rule may hold lone surrogates, NUL or control characters;
    they must still project into any database and render on any page.
    """
    if isinstance(value, str):
        return text.repair(value)
    if isinstance(value, dict):
        return {_repair_text(k): _repair_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repair_text(v) for v in value]
    return value


def decode_document(type_name: str, data: bytes, metadata: bytes = b"") -> Document:
    """The stored data as a JSON object at the current schema version, its text valid.

    The one read-time step of the contract: every reader (the command service's fold,
    the runners, the histories) decodes through here.
    """
    if type_name not in EVENT_TYPES:
        raise EventDecodeError(f"unknown event type {type_name!r}")
    version = _schema_version(metadata)
    try:
        # Invalid UTF-8 (another tool's bytes) becomes U+FFFD, as the text rule repairs.
        document = _json_loads(data.decode(errors="replace"))  # str: no encoding sniffing
    except (ValueError, RecursionError) as e:
        raise EventDecodeError(f"bad {type_name} data: not JSON ({e})") from None
    if not isinstance(document, dict):
        raise EventDecodeError(f"bad {type_name} data: not a JSON object")
    if type(version) is not int or version != SCHEMA_VERSION:  # the usual case: no call
        document = upcast(type_name, version, document)
    # Our own writes are ASCII with no escapes (json.dumps escapes all else), so they
    # can hold no character the rule forbids: the repair walks only the others.
    if not data.isascii() or b"\\" in data or b"\x7f" in data:
        try:
            document = _repair_text(document)
        except RecursionError:
            raise EventDecodeError(f"bad {type_name} data: nested too deeply") from None
    return document


def decode_event(type_name: str, data: bytes, metadata: bytes = b"") -> PaymentEvent:
    """Parse stored JSON back into an event, checking every field's type."""
    return _event_from(type_name, decode_document(type_name, data, metadata))


def _event_from(type_name: str, document: Document) -> PaymentEvent:
    cls = EVENT_TYPES[type_name]
    try:
        # By position, in field order (the parsers' order): a rebuild decodes every event.
        return cls(*[parse(document[name]) for name, parse in _parsers(cls)])
    except (ValueError, KeyError, TypeError, ArithmeticError) as e:
        raise EventDecodeError(f"bad {type_name} data: {e!r}") from None


def read_recorded(record: RecordedEvent) -> tuple[Document, PaymentEvent]:
    """A stored event's document (as histories show it) and the event decoded from it,
    parsed once; a failure is the port's ``UnreadableEvent``, naming the event."""
    try:
        document = decode_document(record.type, record.data, record.metadata)
        return document, _event_from(record.type, document)
    except EventDecodeError as e:
        raise UnreadableEvent(record.position, record.stream, record.type, str(e)) from None


def decode_recorded(record: RecordedEvent) -> PaymentEvent:
    """A stored event decoded; a failure is the port's ``UnreadableEvent``, with its place."""
    try:
        return _event_from(record.type, decode_document(record.type, record.data,
                                                        record.metadata))
    except EventDecodeError as e:
        raise UnreadableEvent(record.position, record.stream, record.type, str(e)) from None


# Each field type's parser from JSON. Each checks for a string itself, rather than
# calling _parse_str: a rebuild parses every field of every event.
def _parse_str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def _parse_uuid(value: object) -> UUID:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return UUID(value)


# A payment's id comes with each of its events, and a reader decodes them together (a
# stream; a runner's batch): parsed once, kept for the next few. UUIDs are immutable.
_payment_uuid = lru_cache(maxsize=4096)(UUID)


def _parse_payment_id(value: object) -> UUID:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return _payment_uuid(value)


def _parse_decimal(value: object) -> Decimal:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    amount = Decimal(value)
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite amount")
    return amount


def _parse_datetime(value: object) -> datetime:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is UTC:  # what we write ("…Z"): already what we keep
        return moment
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone")
    return moment.astimezone(UTC)


_PARSERS = {"UUID": _parse_uuid, "Decimal": _parse_decimal, "datetime": _parse_datetime,
            "str": _parse_str}


@cache
def _parsers(cls: type[PaymentEvent]) -> tuple[tuple[str, Any], ...]:
    """Each field's name and parser, in field order, worked out once per event class."""
    return tuple((f.name, _parse_payment_id if f.name == "payment_id" else _PARSERS[str(f.type)])
                 for f in fields(cls))
