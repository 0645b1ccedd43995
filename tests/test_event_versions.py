"""Events stored by every earlier schema version keep decoding, projecting and folding.

``fixtures/events-v1.jsonl`` holds events exactly as version-1 code stored them (written
by hand from the version-1 encoding: no ``reference`` on ``PaymentCreated``, metadata
with ``"schemaVersion":1``): every event type, seven payments in every kind of state,
interleaved as a store would hold them. Loaded byte for byte into each store, both
projections build the rows below, and the command service folds each payment to the
same state, with no reference (the upcaster's ``""``). Never edit the fixture; the next
version adds ``events-v2.jsonl`` and a test beside this one (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import pytest

from payments import services
from payments.events import EVENT_TYPES, stream_name
from payments.eventstore import EventStore
from payments.eventstore.embedded import EmbeddedEventStore
from payments.eventstore.esdb import EventStoreDBEventStore
from projections.models import Checkpoint, DeclineView, PaymentView
from projections.projectors import DeclineProjection, PaymentProjection, payment_from_row
from projections.runner import ProjectionRunner
from tests.esdb_double import EventStoreDBDouble
from tests.stored_events import load_stored_events, stored_lines

pytestmark = pytest.mark.django_db(transaction=True)  # the ESDB double serves from threads

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "events-v1.jsonl"
P1, P2, P3, P4, P5, P6, P7 = (UUID(f"5e1a7c00-0000-4000-8000-00000000000{n}")
                              for n in range(1, 8))
CREDIT = "Cr\u00e9dit Mutuel \u00d6sterreich"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# status, amount, currency, reference, settled, refunded, bank, decline code,
# created_at, updated_at, version
EXPECTED_PAYMENTS = {
    P1: ("partially_refunded", Decimal("100.00"), "EUR", "", Decimal("100.00"),
         Decimal("25.00"), "Acme Bank", "", at("2026-09-01T08:00"), at("2026-09-04T08:00"), 4),
    P2: ("declined", Decimal("50.00"), "USD", "", Decimal("0.00"), Decimal("0.00"),
         "Zeta Bank", "05", at("2026-09-01T08:05:00.25"), at("2026-09-01T23:59:59.999999"), 1),
    P3: ("declined", Decimal("75.50"), "GBP", "", Decimal("0.00"), Decimal("0.00"),
         "Acme Bank", "N7", at("2026-09-02T10:00"), at("2026-09-03T00:00"), 2),
    P4: ("refunded", Decimal("20.00"), "EUR", "", Decimal("20.00"), Decimal("20.00"),
         CREDIT, "", at("2026-09-02T10:30"), at("2026-09-05T09:00"), 4),
    P5: ("pending", Decimal("10.00"), "EUR", "", Decimal("0.00"), Decimal("0.00"),
         "", "", at("2026-09-03T13:00"), at("2026-09-03T13:00"), 0),
    P6: ("partially_settled", Decimal("999999999999.99"), "JPY", "", Decimal("0.01"),
         Decimal("0.00"), "Zeta Bank", "", at("2026-09-03T14:00"), at("2026-09-04T10:00"), 2),
    P7: ("declined", Decimal("5.00"), "EUR", "", Decimal("0.00"), Decimal("0.00"),
         "Zeta Bank", "05", at("2026-09-01T20:00"), at("2026-09-01T21:00"), 1),
}
ROW_FIELDS = ("status", "amount", "currency", "reference", "settled_amount",
              "refunded_amount", "bank_name", "decline_code", "created_at", "updated_at",
              "version")
EXPECTED_DECLINES = {
    ("05", "Zeta Bank", date(2026, 9, 1), 2),
    ("N7", "Acme Bank", date(2026, 9, 3), 1),
}


@pytest.fixture(params=["embedded", "esdb-double"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    """Each adapter the contract suite runs on without a server of its own."""
    if request.param == "embedded":
        embedded = EmbeddedEventStore(tmp_path / "events.sqlite3")
        yield embedded
        embedded.close()
    else:
        with EventStoreDBDouble() as double:
            esdb = EventStoreDBEventStore(double.uri, timeout=5.0)
            yield esdb
            esdb.close()


def project(store: EventStore) -> None:
    for projection in (PaymentProjection(), DeclineProjection()):
        ProjectionRunner(projection, store).run(once=True)


def rows() -> dict[UUID, tuple[object, ...]]:
    return {row[0]: row[1:] for row in PaymentView.objects.values_list("payment_id", *ROW_FIELDS)}


def test_the_fixture_is_what_version_1_wrote() -> None:
    """Guard against a fixture "updated" by an editor: version 1, every type, no reference."""
    lines = stored_lines(FIXTURE_V1)
    assert {line["type"] for line in lines} == set(EVENT_TYPES)
    for line in lines:
        assert json.loads(line["metadata"])["schemaVersion"] == 1
        assert line["metadata"].endswith('"schemaVersion":1}')
        data = json.loads(line["data"])
        assert list(data)[:2] == ["payment_id", "occurred_at"]
        if line["type"] == "PaymentCreated":
            assert list(data) == ["payment_id", "occurred_at", "amount", "currency"]
    assert len({line["stream"] for line in lines}) == len(EXPECTED_PAYMENTS)


def test_version_1_events_project_and_fold_on_every_store(store: EventStore) -> None:
    load_stored_events(store, FIXTURE_V1)
    project(store)

    head = store.head_position()
    assert dict(Checkpoint.objects.values_list("name", "position")) == \
        {"payment": head, "decline": head}
    assert not Checkpoint.objects.exclude(failure="").exists()
    assert rows() == EXPECTED_PAYMENTS
    assert set(DeclineView.objects.values_list("decline_code", "bank_name", "date",
                                               "count")) == EXPECTED_DECLINES
    for payment_id in EXPECTED_PAYMENTS:
        found = services.find_payment(payment_id=payment_id, store=store)
        assert found.payment.reference == ""
        row = PaymentView.objects.get(payment_id=payment_id)
        assert payment_from_row(row) == found.payment  # the read model and the fold agree
        assert row.position == found.history[-1].position
        created = found.history[0]
        assert (created.type, created.data["reference"]) == ("PaymentCreated", "")


def test_a_version_1_payment_takes_new_commands_and_new_payments_carry_a_reference(
    store: EventStore,
) -> None:
    """A stream of version-1 events followed by a version-2 one, and a new payment beside
    them: both fold and project."""
    load_stored_events(store, FIXTURE_V1)
    refunded = services.refund_payment(payment_id=P1, store=store)
    new = services.create_payment(amount="12.00", currency="EUR", reference="order 1234",
                                  store=store)
    project(store)

    assert (refunded.status, refunded.reference, refunded.refunded_amount) == \
        ("refunded", "", Decimal("100.00"))
    [newest] = store.read_stream(stream_name(new.id))
    assert json.loads(newest.metadata)["schemaVersion"] == 2
    assert json.loads(newest.data)["reference"] == "order 1234"
    assert services.find_payment(payment_id=new.id, store=store).payment.reference == \
        "order 1234"
    got = rows()
    assert got[P1][:6] == ("refunded", Decimal("100.00"), "EUR", "", Decimal("100.00"),
                           Decimal("100.00"))
    assert got[new.id][:4] == ("pending", Decimal("12.00"), "EUR", "order 1234")
    assert {k: v for k, v in got.items() if k not in (P1, new.id)} == \
        {k: v for k, v in EXPECTED_PAYMENTS.items() if k != P1}
