"""The event contract: names, fields and JSON shapes other programs rely on."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments import text
from payments.events import (
    EVENT_TYPES,
    EventDecodeError,
    PaymentAuthorized,
    PaymentCreated,
    PaymentDeclined,
    PaymentRefunded,
    PaymentSettled,
    decode_event,
    decode_metadata,
    decode_recorded,
    encode_data,
    encode_metadata,
    payment_id_from_stream,
    stream_name,
)
from payments.eventstore import RecordedEvent, UnreadableEvent

PAYMENT_ID = UUID("0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11")
REF_ID = UUID("7d0f0e8e-3c62-4b7e-8f3a-2b1f8f0f9c44")
AT = datetime(2026, 11, 29, 13, 5, 0, 123456, tzinfo=UTC)


def test_the_five_event_types_and_their_fields_are_the_contract() -> None:
    assert {name: [f.name for f in fields(cls)] for name, cls in EVENT_TYPES.items()} == {
        "PaymentCreated": ["payment_id", "occurred_at", "amount", "currency"],
        "PaymentAuthorized": ["payment_id", "occurred_at", "bank_name", "authorization_id"],
        "PaymentSettled": ["payment_id", "occurred_at", "bank_name", "amount", "settlement_id"],
        "PaymentRefunded": ["payment_id", "occurred_at", "amount", "refund_id"],
        "PaymentDeclined": [
            "payment_id", "occurred_at", "bank_name", "decline_code", "decline_id",
        ],
    }


def test_json_shape_of_a_created_payment() -> None:
    event = PaymentCreated(
        payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("100.00"), currency="EUR"
    )
    assert json.loads(encode_data(event)) == {
        "payment_id": "0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11",
        "occurred_at": "2026-11-29T13:05:00.123456Z",
        "amount": "100.00",
        "currency": "EUR",
    }


def test_timestamps_are_written_in_utc() -> None:
    local = AT.astimezone(timezone(timedelta(hours=5, minutes=30)))
    event = PaymentRefunded(
        payment_id=PAYMENT_ID, occurred_at=local, amount=Decimal("1.50"), refund_id=REF_ID
    )
    data = json.loads(encode_data(event))
    assert data["occurred_at"] == "2026-11-29T13:05:00.123456Z"
    assert data["amount"] == "1.50"


def test_decline_codes_stay_strings() -> None:
    event = PaymentDeclined(
        payment_id=PAYMENT_ID, occurred_at=AT, bank_name="B", decline_code="05", decline_id=REF_ID
    )
    assert json.loads(encode_data(event))["decline_code"] == "05"
    assert decode_event("PaymentDeclined", encode_data(event)) == event


def test_metadata_follows_eventstoredb_conventions() -> None:
    correlation, causation = uuid4(), uuid4()
    metadata = decode_metadata(encode_metadata(correlation_id=correlation, causation_id=causation))
    assert metadata == {
        "$correlationId": str(correlation),
        "$causationId": str(causation),
        "schemaVersion": 1,
    }


def test_streams_are_named_per_payment_in_the_payments_category() -> None:
    assert stream_name(PAYMENT_ID) == "payments-0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11"
    assert payment_id_from_stream(stream_name(PAYMENT_ID)) == PAYMENT_ID


@pytest.mark.parametrize(
    ("type_name", "data", "metadata"),
    [
        ("PaymentVoided", b"{}", b""),
        ("PaymentCreated", b"not json", b""),
        ("PaymentCreated", b'{"payment_id": "x"}', b""),
        ("PaymentCreated", b'{"payment_id": "0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11",'
         b'"occurred_at": "2026-11-29T13:05:00Z", "amount": 100, "currency": "EUR"}', b""),
        ("PaymentCreated", b'{"payment_id": "0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11",'
         b'"occurred_at": "2026-11-29T13:05:00", "amount": "1.00", "currency": "EUR"}', b""),
        ("PaymentCreated", b"{}", b'{"schemaVersion": 2}'),
    ],
)
def test_data_that_is_not_a_known_event_is_refused(
    type_name: str, data: bytes, metadata: bytes
) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(type_name, data, metadata)


money = st.decimals(
    min_value=Decimal("0.01"), max_value=Decimal("999999999999.99"), places=2,
    allow_nan=False, allow_infinity=False,
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
# Text as the domain accepts it (the text rule): such text round-trips exactly.
texts = st.text(
    alphabet=st.characters(exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp")),
    min_size=1, max_size=100,
).map(lambda t: unicodedata.normalize("NFC", t))
events = st.one_of(
    st.builds(PaymentCreated, payment_id=st.uuids(), occurred_at=moments, amount=money,
              currency=st.sampled_from(["EUR", "USD", "GBP"])),
    st.builds(PaymentAuthorized, payment_id=st.uuids(), occurred_at=moments, bank_name=texts,
              authorization_id=st.uuids()),
    st.builds(PaymentSettled, payment_id=st.uuids(), occurred_at=moments, bank_name=texts,
              amount=money, settlement_id=st.uuids()),
    st.builds(PaymentRefunded, payment_id=st.uuids(), occurred_at=moments, amount=money,
              refund_id=st.uuids()),
    st.builds(PaymentDeclined, payment_id=st.uuids(), occurred_at=moments, bank_name=texts,
              decline_code=st.from_regex(r"[A-Z0-9]{1,4}", fullmatch=True),
              decline_id=st.uuids()),
)


@given(event=events)
def test_every_event_round_trips_exactly(event) -> None:
    data = encode_data(event)
    decoded = decode_event(event.type_name, data, encode_metadata(
        correlation_id=uuid4(), causation_id=uuid4()))
    assert decoded == event
    assert encode_data(decoded) == data  # byte for byte: "100.00" stays "100.00"


@given(bank_name=st.text(alphabet=st.characters(codec=None), max_size=50))
def test_stored_text_of_any_kind_decodes_to_text_the_rule_allows(bank_name: str) -> None:
    """Events stored before the text rule (surrogates, NUL, controls, bidi overrides,
    denormalised) still decode: each forbidden character becomes U+FFFD, then NFC."""
    data = json.dumps({
        "payment_id": str(PAYMENT_ID), "occurred_at": "2026-11-29T13:05:00Z",
        "bank_name": bank_name, "authorization_id": str(REF_ID),
    }).encode()
    event = decode_event("PaymentAuthorized", data)
    assert event.bank_name == text.repair(bank_name)
    assert text.forbidden_character(event.bank_name) is None
    assert unicodedata.is_normalized("NFC", event.bank_name)
    event.bank_name.encode("utf-8")  # storable anywhere: no lone surrogate left


@pytest.mark.parametrize(("stored", "decoded"), [
    ("Ac\\ud800me", "Ac\ufffdme"),
    ("Ac\\u0000me", "Ac\ufffdme"),
    ("Line1\\nLine2", "Line1\ufffdLine2"),
    ("\\u202eevil", "\ufffdevil"),
    ("Cafe\\u0301", "Caf\u00e9"),
])
def test_poisoned_text_found_in_the_wild_is_repaired(stored: str, decoded: str) -> None:
    data = (f'{{"payment_id":"{PAYMENT_ID}","occurred_at":"2026-11-29T13:05:00Z",'
            f'"bank_name":"{stored}","authorization_id":"{REF_ID}"}}').encode()
    assert decode_event("PaymentAuthorized", data).bank_name == decoded


def test_invalid_utf8_in_stored_data_is_repaired_too() -> None:
    data = ('{"payment_id":"%s","occurred_at":"2026-11-29T13:05:00Z","bank_name":"Bank',
            '","authorization_id":"%s"}')
    raw = (data[0] % PAYMENT_ID).encode() + b"\xff" + (data[1] % REF_ID).encode()
    assert decode_event("PaymentAuthorized", raw).bank_name == "Bank\ufffd"


@pytest.mark.parametrize("version", [0, 2, "1", None, True, 1.0])
def test_a_schema_version_this_code_does_not_know_is_refused_by_name(version) -> None:
    event = PaymentRefunded(payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("1.00"),
                            refund_id=REF_ID)
    metadata = json.dumps({"schemaVersion": version}).encode()
    with pytest.raises(EventDecodeError, match=r"schema version .* is not supported"):
        decode_event("PaymentRefunded", encode_data(event), metadata)


def test_a_recorded_event_that_does_not_decode_is_the_ports_error_with_its_position() -> None:
    record = RecordedEvent(id=uuid4(), stream=stream_name(PAYMENT_ID), type="PaymentRefunded",
                           data=b"{not json", metadata=b"{}", version=3, position=42)
    with pytest.raises(UnreadableEvent, match=r"position 42 \(stream payments-.*, type"
                                              r" PaymentRefunded\) cannot be read") as raised:
        decode_recorded(record)
    assert raised.value.position == 42
