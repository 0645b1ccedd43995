"""The event contract: names, fields and JSON shapes other programs rely on."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
    encode_data,
    encode_metadata,
    payment_id_from_stream,
    stream_name,
)

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
texts = st.text(min_size=1, max_size=100)
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
