"""The event contract: names, fields and JSON shapes other programs rely on."""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import fields
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from payments import events as contract
from payments import text
from payments.events import (
    EVENT_TYPES,
    EventDecodeError,
    PaymentAuthorized,
    PaymentCreated,
    PaymentDeclined,
    PaymentRefunded,
    PaymentSettled,
    decode_document,
    decode_event,
    decode_metadata,
    decode_recorded,
    encode_data,
    encode_metadata,
    format_timestamp,
    payment_id_from_stream,
    read_recorded,
    stream_name,
    upcast,
)
from payments.eventstore import RecordedEvent, UnreadableEvent

PAYMENT_ID = UUID("0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11")
REF_ID = UUID("7d0f0e8e-3c62-4b7e-8f3a-2b1f8f0f9c44")
AT = datetime(2026, 11, 29, 13, 5, 0, 123456, tzinfo=UTC)


def test_the_five_event_types_and_their_fields_are_the_contract() -> None:
    assert {name: [f.name for f in fields(cls)] for name, cls in EVENT_TYPES.items()} == {
        "PaymentCreated": ["payment_id", "occurred_at", "amount", "currency", "reference"],
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
        "reference": "",
    }


def test_the_bytes_of_a_version_2_created_payment_with_a_reference() -> None:
    """Pinned: other programs parse these bytes. Non-ASCII text is escaped (our writes
    stay ASCII), and the reference is the last key."""
    event = PaymentCreated(payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("100.00"),
                           currency="EUR", reference='Bestellung "Mai" Nr. 4 \u2013 K\u00f6ln')
    data = encode_data(event)
    assert data == (
        b'{"payment_id":"0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11",'
        b'"occurred_at":"2026-11-29T13:05:00.123456Z","amount":"100.00","currency":"EUR",'
        b'"reference":"Bestellung \\"Mai\\" Nr. 4 \\u2013 K\\u00f6ln"}'
    )
    metadata = encode_metadata(correlation_id=REF_ID, causation_id=REF_ID)
    assert metadata.endswith(b'"schemaVersion":2}')
    assert decode_event("PaymentCreated", data, metadata) == event


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
        "schemaVersion": 2,
    }


def test_a_traced_commands_metadata_carries_its_trace_context_before_the_schema_version(
) -> None:
    """The W3C headers go in as JSON strings (a tracestate may hold quotes), and the
    schema version stays the last key, which decoding reads from the end."""
    trace_context = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                     "tracestate": 'vendor=a"b\\c'}
    metadata = encode_metadata(correlation_id=REF_ID, causation_id=PAYMENT_ID,
                               trace_context=trace_context)
    assert metadata.endswith(b'"schemaVersion":2}')
    assert decode_metadata(metadata) == {"$correlationId": str(REF_ID),
                                         "$causationId": str(PAYMENT_ID), **trace_context,
                                         "schemaVersion": 2}
    assert encode_metadata(correlation_id=REF_ID, causation_id=PAYMENT_ID, trace_context={}) \
        == encode_metadata(correlation_id=REF_ID, causation_id=PAYMENT_ID)
    event = PaymentRefunded(payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("1.50"),
                            refund_id=REF_ID)
    assert decode_event(event.type_name, encode_data(event), metadata) == event


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
references = st.one_of(st.just(""), texts.map(lambda t: t.strip()[:64]))
events = st.one_of(
    st.builds(PaymentCreated, payment_id=st.uuids(), occurred_at=moments, amount=money,
              currency=st.sampled_from(["EUR", "USD", "GBP"]), reference=references),
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


# 2.0 and "2" equal the current version but are not an int: refused, not read as 2.
@pytest.mark.parametrize("version", [0, 3, "1", "2", None, True, 1.0, 2.0])
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


# --- what a reader is told when stored data is not an event (the runner shows it) -----

CREATED = ('{"payment_id":"0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11",'
           '"occurred_at":"2026-11-29T13:05:00Z","amount":%s,"currency":"EUR"}')


@pytest.mark.parametrize(("type_name", "data", "metadata", "reason"), [
    ("PaymentVoided", b"{}", b"", "unknown event type 'PaymentVoided'"),
    ("PaymentCreated", b"not json", b"",
     "bad PaymentCreated data: not JSON (Expecting value: line 1 column 1 (char 0))"),
    ("PaymentCreated", b"[1]", b"", "bad PaymentCreated data: not a JSON object"),
    ("PaymentCreated", b"{}", b"nope",
     "metadata is not JSON: Expecting value: line 1 column 1 (char 0)"),
    ("PaymentCreated", b"{}", b"[]", "metadata is not a JSON object"),
    ("PaymentCreated", (CREATED % "100").encode(), b"",
     "bad PaymentCreated data: TypeError('expected a string, got 100')"),
    ("PaymentCreated", (CREATED % '"NaN"').encode(), b"",
     "bad PaymentCreated data: ValueError(\"'NaN' is not a finite amount\")"),
    ("PaymentCreated", (CREATED % '"1.00"').replace("00Z", "00").encode(), b"",
     "bad PaymentCreated data: ValueError(\"'2026-11-29T13:05:00' has no time zone\")"),
    ("PaymentCreated", b'{"payment_id":"0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11"}', b"",
     "bad PaymentCreated data: KeyError('occurred_at')"),
    ("PaymentCreated", (CREATED % '"1.00"').encode(), b'{"schemaVersion":2}',
     "bad PaymentCreated data: KeyError('reference')"),  # version 2 has it, even empty
    ("PaymentRefunded", b"{}", b'{"schemaVersion": 3}',
     "PaymentRefunded schema version 3 is not supported (this code reads versions 1 to 2)"),
    ("PaymentCreated", b"{}", b'{"$correlationId":"c","$causationId":"c","schemaVersion":3}',
     "PaymentCreated schema version 3 is not supported (this code reads versions 1 to 2)"),
    ("PaymentRefunded", b"{}", b'{"schemaVersion": "1"}',
     "PaymentRefunded schema version '1' is not supported (this code reads versions 1 to 2)"),
])
def test_undecodable_data_is_refused_with_a_reason_that_says_what_is_wrong(
    type_name: str, data: bytes, metadata: bytes, reason: str
) -> None:
    """The reason is what an operator reads when a projection stops on the event."""
    record = RecordedEvent(id=uuid4(), stream=stream_name(PAYMENT_ID), type=type_name,
                           data=data, metadata=metadata, version=0, position=7)
    with pytest.raises(UnreadableEvent) as raised:
        decode_recorded(record)
    assert (raised.value.position, raised.value.type, raised.value.reason) == (
        7, type_name, reason)
    assert str(raised.value).endswith(f"cannot be read: {reason}")


# Deeper than the repair can walk, not than json can parse: a level costs the repair two
# Python frames before 3.12 (a comprehension was a call of its own), one since.
TOO_DEEP_TO_REPAIR = 600 if sys.version_info < (3, 12) else 1200


def test_a_document_too_deep_to_repair_is_refused_by_name() -> None:
    data = (b'{"x":"\\u0000","y":' + b"[" * TOO_DEEP_TO_REPAIR + b"]" * TOO_DEEP_TO_REPAIR
            + b"}")
    with pytest.raises(EventDecodeError) as raised:
        decode_document("PaymentCreated", data)
    assert str(raised.value) == "bad PaymentCreated data: nested too deeply"


def test_a_recorded_event_decodes_to_its_event_and_its_document() -> None:
    event = PaymentRefunded(payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("2.50"),
                            refund_id=REF_ID)
    record = RecordedEvent(id=uuid4(), stream=stream_name(PAYMENT_ID), type="PaymentRefunded",
                           data=encode_data(event), metadata=encode_metadata(
                               correlation_id=REF_ID, causation_id=REF_ID),
                           version=1, position=9)
    assert decode_recorded(record) == event
    assert read_recorded(record) == (json.loads(encode_data(event)), event)


def test_a_document_stored_without_metadata_is_at_version_one() -> None:
    """Not at the current version: a writer that names no version knows the first
    contract, and the meaning of its events must not change with every bump."""
    data = (CREATED % '"5.00"').encode()
    assert decode_document("PaymentCreated", data) == {**json.loads(data), "reference": ""}
    assert decode_document("PaymentCreated", data, b'{"$correlationId":"c"}') == \
        {**json.loads(data), "reference": ""}


@pytest.mark.parametrize("stream", ["payments", "payment-0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11"])
def test_a_stream_outside_the_payments_category_is_named_in_the_refusal(stream: str) -> None:
    with pytest.raises(EventDecodeError) as raised:
        payment_id_from_stream(stream)
    assert str(raised.value) == f"{stream!r} is not a payment stream"


def test_a_naive_timestamp_is_refused_rather_than_guessed() -> None:
    with pytest.raises(ValueError, match=r"^timestamps must be timezone-aware$"):
        format_timestamp(datetime(2026, 11, 29, 13, 5))


@pytest.fixture
def local_time_five_hours_behind_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A machine whose local time zone is not UTC (POSIX TZ: no tz database needed)."""
    monkeypatch.setenv("TZ", "EST5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("local_time_five_hours_behind_utc")
def test_timestamps_are_utc_whatever_the_machine_s_time_zone() -> None:
    """Written with a Z and decoded in UTC: the decline report's date is the UTC date."""
    late_evening_in_new_york = datetime(2026, 11, 29, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    event = PaymentDeclined(payment_id=PAYMENT_ID, occurred_at=late_evening_in_new_york,
                            bank_name="B", decline_code="05", decline_id=REF_ID)
    data = encode_data(event)
    assert json.loads(data)["occurred_at"] == "2026-11-30T04:30:00.000000Z"
    decoded = decode_event("PaymentDeclined", data.replace(b"2026-11-30T04:30:00.000000Z",
                                                           b"2026-11-29T23:30:00-05:00"))
    assert decoded.occurred_at.utcoffset() == timedelta(0)
    assert decoded.occurred_at.date() == date(2026, 11, 30)


@pytest.mark.parametrize(("stored", "decoded"), [
    ("Cafe\u0301", "Caf\u00e9"),  # raw UTF-8, not escaped: still normalised
    ("\u202eevil", "\ufffdevil"),
    ("Ac\x7fme", "Ac\ufffdme"),  # DEL is ASCII yet forbidden (Cc)
])
def test_unescaped_text_another_tool_stored_is_repaired(stored: str, decoded: str) -> None:
    data = json.dumps({"payment_id": str(PAYMENT_ID), "occurred_at": "2026-11-29T13:05:00Z",
                       "bank_name": stored, "authorization_id": str(REF_ID)},
                      ensure_ascii=False).encode()
    assert decode_event("PaymentAuthorized", data).bank_name == decoded


def test_every_string_of_a_stored_document_is_repaired_not_only_the_fields() -> None:
    """Histories show the whole document, with any fields another writer added."""
    data = json.dumps({"payment_id": str(PAYMENT_ID), "notes": ["a\u0000b", {"k\u202e": "v"}],
                       "count": 3}).encode()
    assert decode_document("PaymentRefunded", data) == {
        "payment_id": str(PAYMENT_ID), "notes": ["a\ufffdb", {"k\ufffd": "v"}], "count": 3,
    }


# --- upcasting: as the code will be after schema bumps --------------------------------

OLD_METADATA = b'{"$correlationId":"c","$causationId":"c","schemaVersion":%d}'


@pytest.fixture
def schema_at_version_3(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bumps: PaymentCreated changed at 1→2 and 2→3, PaymentRefunded only at 2→3.
    Each upcaster notes its step, so a test sees which ran and in what order."""
    monkeypatch.setattr(contract, "SCHEMA_VERSION", 3)
    # How decoding spots our own current metadata; the module derives it at import.
    monkeypatch.setattr(contract, "_CURRENT_VERSION_SUFFIX", b'"schemaVersion":3}')
    monkeypatch.setattr(contract, "_OLDER_VERSION_SUFFIXES",
                        ((b'"schemaVersion":1}', 1), (b'"schemaVersion":2}', 2)))

    def step(name: str) -> Callable[[dict], dict]:
        return lambda document: {**document, "steps": [*document.get("steps", []), name]}

    monkeypatch.setitem(contract.UPCASTERS, ("PaymentCreated", 1), step("created 1→2"))
    monkeypatch.setitem(contract.UPCASTERS, ("PaymentCreated", 2), step("created 2→3"))
    monkeypatch.setitem(contract.UPCASTERS, ("PaymentRefunded", 2), step("refunded 2→3"))


@pytest.mark.usefixtures("schema_at_version_3")
@pytest.mark.parametrize(("type_name", "version", "steps"), [
    ("PaymentCreated", 1, ["created 1→2", "created 2→3"]),
    ("PaymentCreated", 2, ["created 2→3"]),
    ("PaymentRefunded", 1, ["refunded 2→3"]),  # no change at 1→2 for this type
    ("PaymentRefunded", 2, ["refunded 2→3"]),
])
def test_an_old_document_passes_each_later_upcaster_once_in_order(
    type_name: str, version: int, steps: list[str]
) -> None:
    stored = decode_document(type_name, b'{"payment_id":"p"}', OLD_METADATA % version)
    assert stored == {"payment_id": "p", "steps": steps}


@pytest.mark.usefixtures("schema_at_version_3")
def test_a_document_at_the_current_version_passes_no_upcaster() -> None:
    assert decode_document("PaymentCreated", b'{"payment_id":"p"}', OLD_METADATA % 3) == {
        "payment_id": "p"}
    assert upcast("PaymentCreated", 3, {"payment_id": "p"}) == {"payment_id": "p"}


@pytest.mark.usefixtures("schema_at_version_3")
@pytest.mark.parametrize("version", [0, 4])
def test_a_version_outside_one_to_current_is_refused_by_upcast(version: int) -> None:
    with pytest.raises(EventDecodeError) as raised:
        upcast("PaymentCreated", version, {})
    assert str(raised.value) == (f"PaymentCreated schema version {version} is not supported"
                                 " (this code reads versions 1 to 3)")


# --- upcasting: the real chain of this code --------------------------------------------

V1_METADATA = OLD_METADATA % 1


def test_a_version_1_created_payment_upcasts_to_no_reference() -> None:
    """As version-1 code wrote it: no reference key, ``"schemaVersion":1``."""
    data = b'{"payment_id":"0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11",' \
           b'"occurred_at":"2026-11-29T13:05:00.123456Z","amount":"100.00","currency":"EUR"}'
    assert decode_document("PaymentCreated", data, V1_METADATA) == {
        **json.loads(data), "reference": ""}
    assert decode_event("PaymentCreated", data, V1_METADATA) == PaymentCreated(
        payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("100.00"), currency="EUR",
        reference="")


@pytest.mark.parametrize("metadata", [
    V1_METADATA,  # as our version-1 code wrote it: recognised without parsing
    b'{"schemaVersion": 1}', b'{"schemaVersion":1,"$correlationId":"c"}',
    b'{"$correlationId":"c"}', b"",  # no version: version 1
])
def test_version_1_is_read_from_every_spelling_of_its_metadata(metadata: bytes) -> None:
    data = (CREATED % '"5.00"').encode()
    assert decode_document("PaymentCreated", data, metadata)["reference"] == ""
    spelled_as_2 = metadata.replace(b"1}", b"2}").replace(b"1,", b"2,")
    if spelled_as_2 != metadata:  # the same spellings of version 2 keep their reference
        with_reference = data[:-1] + b',"reference":"r"}'
        assert decode_document("PaymentCreated", with_reference, spelled_as_2)["reference"] \
            == "r"


def test_a_key_named_reference_in_a_version_1_document_is_not_a_reference() -> None:
    """Version 1 had no reference: another writer's extra key of that name meant
    something else, whatever it holds."""
    for stray in ('"order 7"', "42", "null"):
        data = (CREATED % '"5.00"')[:-1].encode() + b',"reference":' + stray.encode() + b"}"
        assert decode_event("PaymentCreated", data, V1_METADATA).reference == ""


def test_only_created_payments_change_between_versions_1_and_2() -> None:
    assert {key for key in contract.UPCASTERS if key[1] == 1} == {("PaymentCreated", 1)}
    event = PaymentSettled(payment_id=PAYMENT_ID, occurred_at=AT, bank_name="B",
                           amount=Decimal("1.00"), settlement_id=REF_ID)
    assert decode_document("PaymentSettled", encode_data(event), V1_METADATA) == \
        json.loads(encode_data(event))


@pytest.mark.parametrize("reference", ["", "order 1234", "x" * 64, "Caf\u00e9 \U0001f600"])
def test_a_version_2_created_payment_round_trips_with_its_reference(reference: str) -> None:
    event = PaymentCreated(payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("9.99"),
                           currency="USD", reference=reference)
    record = RecordedEvent(id=uuid4(), stream=stream_name(PAYMENT_ID), type="PaymentCreated",
                           data=encode_data(event),
                           metadata=encode_metadata(correlation_id=REF_ID, causation_id=REF_ID),
                           version=0, position=1)
    document, decoded = read_recorded(record)
    assert decoded == event
    assert document["reference"] == reference
    # The upcaster is for version 1 only: a version-2 reference is never overwritten.
    assert decode_event("PaymentCreated", encode_data(event), OLD_METADATA % 2) == event


def test_a_future_version_is_refused_with_a_message_naming_what_this_code_reads() -> None:
    event = PaymentCreated(payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("1.00"),
                           currency="EUR", reference="r")
    record = RecordedEvent(id=uuid4(), stream=stream_name(PAYMENT_ID), type="PaymentCreated",
                           data=encode_data(event), metadata=OLD_METADATA % 3, version=0,
                           position=5)
    with pytest.raises(UnreadableEvent) as raised:
        read_recorded(record)
    assert str(raised.value).endswith(
        "cannot be read: PaymentCreated schema version 3 is not supported (this code reads"
        " versions 1 to 2)")


# --- the decoder's fast path answers as json.loads would ------------------------------

_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)
_AROUND = st.sampled_from(["", " ", "\n", "\t ", "\ufeff", "x", "]", "{}", "\x00"])


@given(st.one_of(
    st.tuples(_AROUND, _JSON_VALUES.map(json.dumps), _AROUND).map("".join),
    st.text(max_size=30),
))
def test_stored_json_is_read_as_json_loads_reads_it(text: str) -> None:
    """What we write is read without json.loads's look for whitespace around it; any
    other text gets json.loads's own answer, value or message (the runner shows it)."""
    def answer(loads: Callable[[str], object]) -> object:
        try:
            return ("value", repr(loads(text)))  # repr: NaN is not equal to itself
        except ValueError as e:
            return ("error", type(e), str(e))

    assert answer(contract._json_loads) == answer(json.loads)


def test_a_payment_id_reads_as_one_uuid_in_any_spelling_and_only_as_text() -> None:
    """Payment ids are parsed once and kept (a batch holds each payment's events
    together): the same text gives the same UUID, another spelling of it too, and a
    refusal is never kept in its place."""
    created = json.loads(encode_data(PaymentCreated(
        payment_id=PAYMENT_ID, occurred_at=AT, amount=Decimal("1.00"), currency="EUR")))
    for spelling in (str(PAYMENT_ID), str(PAYMENT_ID).upper(), PAYMENT_ID.hex,
                     f"{{{PAYMENT_ID}}}", str(PAYMENT_ID)):
        data = json.dumps({**created, "payment_id": spelling}).encode()
        assert decode_event("PaymentCreated", data).payment_id == PAYMENT_ID
    for bad, reason in (("not-a-uuid", "ValueError('badly formed hexadecimal UUID string')"),
                        (7, "TypeError('expected a string, got 7')")):
        data = json.dumps({**created, "payment_id": bad}).encode()
        for _ in range(2):
            with pytest.raises(EventDecodeError) as refused:
                decode_event("PaymentCreated", data)
            assert str(refused.value) == f"bad PaymentCreated data: {reason}"
