"""An event log written before the text rule still projects and renders.

``fixtures/poisoned_events.jsonl`` holds events as an earlier version (or another
program) stored them: bank names with a lone surrogate, NUL, a newline and a tab, bidi
overrides, a zero-width space, NEL and a line separator, a decomposed accent. Loaded
into the store as they are, they decode through the contract's read-time step
(each forbidden character becomes U+FFFD, then NFC), project into the read models on
SQLite and on PostgreSQL (where NUL used to kill both runners), and every page, admin
view and API endpoint that shows them answers 200. The fixture must keep decoding.
"""

from __future__ import annotations

import json
import logging
from datetime import date
from decimal import Decimal
from io import StringIO
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payments import text
from payments.events import stream_name
from payments.eventstore import NewEvent, StreamState, get_event_store
from payments.services import find_payment
from projections.models import Checkpoint, DeclineView, PaymentView
from tests.stored_events import load_stored_events

pytestmark = pytest.mark.django_db(transaction=True)

FIXTURE = Path(__file__).parent / "fixtures" / "poisoned_events.jsonl"
P1, P2, P3, P4 = (UUID(f"6f1c1e0a-1b8e-4a59-9a0e-0d7c2f6a1c0{n}") for n in range(1, 5))
R = text.REPLACEMENT

EXPECTED_PAYMENTS = {
    P1: ("settled", Decimal("100.00"), "EUR", Decimal("100.00"), f"Ac{R}me", ""),
    P2: ("declined", Decimal("50.00"), "USD", Decimal("0.00"), f"Ac{R}me", "05"),
    P3: ("declined", Decimal("10.00"), "EUR", Decimal("0.00"), f"{R}knaB liveE{R}", "N7"),
    P4: ("authorized", Decimal("20.00"), "GBP", Decimal("0.00"),
         f"Caf\u00e9 Cr\u00e9dit {R}{R}{R}", ""),
}
EXPECTED_DECLINES = {
    ("05", f"Ac{R}me", date(2026, 10, 3), 1),
    ("N7", f"{R}knaB liveE{R}", date(2026, 10, 5), 1),
}


def load_fixture() -> None:
    """Append the fixture's events byte for byte, as they were once stored."""
    load_stored_events(get_event_store(), FIXTURE)


@pytest.fixture
def admin(db) -> Client:
    user = get_user_model().objects.create_superuser("auditor", password="pw-auditor-1")
    client = Client()
    client.force_login(user)
    return client


def test_the_fixture_really_holds_what_the_rule_now_refuses() -> None:
    """Guard against a fixture "cleaned" by an editor: the poison must be in the file."""
    raw = FIXTURE.read_text()
    for escaped in (r"\\ud800", r"\\u0000", r"\\n", r"\\t", r"\\u202e", r"\\u200b",
                    r"\\u0085", r"\\u2028", r"Cafe\\u0301"):
        assert escaped in raw, escaped


def test_a_poisoned_log_projects_and_renders_everywhere(admin: Client) -> None:
    load_fixture()
    call_command("run_projection", "all", "--once")

    head = get_event_store().head_position()
    assert dict(Checkpoint.objects.values_list("name", "position")) == \
        {"payment": head, "decline": head}
    assert not Checkpoint.objects.exclude(failure="").exists()
    rows = {
        row[0]: row[1:] for row in PaymentView.objects.values_list(
            "payment_id", "status", "amount", "currency", "settled_amount", "bank_name",
            "decline_code")
    }
    assert rows == EXPECTED_PAYMENTS
    assert set(DeclineView.objects.values_list("decline_code", "bank_name", "date",
                                               "count")) == EXPECTED_DECLINES
    # The write side folds the same state: commands on these payments still work.
    assert find_payment(payment_id=P4).payment.bank_name == EXPECTED_PAYMENTS[P4][4]

    pages = ["/", "/payments/", "/declines/", "/api/payments/", "/api/declines/",
             "/admin/projections/paymentview/", "/admin/projections/declineview/",
             "/admin/projections/checkpoint/"]
    for payment_id in EXPECTED_PAYMENTS:
        pages += [f"/payments/{payment_id}/", f"/api/payments/{payment_id}/",
                  f"/admin/projections/paymentview/{payment_id}/change/"]
    for path in pages:
        response = admin.get(path)
        assert response.status_code == 200, path
        body = response.content.decode()
        for forbidden in ("\x00", "\u202e", "\u2028", "\x85"):
            assert forbidden not in body, (path, forbidden)
    detail = admin.get(f"/api/payments/{P3}/").json()
    assert [e["data"].get("bank_name") for e in detail["events"]] == \
        [None, f"Line1{R}Line2{R}End", f"{R}knaB liveE{R}"]
    out = admin.get(f"/payments/{P1}/").content.decode()
    assert f"Ac{R}me" in out


def test_the_cli_prints_one_line_per_field_for_a_poisoned_payment(capsys) -> None:
    load_fixture()
    call_command("api", "-a", "find", "-i", str(P3))
    lines = capsys.readouterr().out.splitlines()
    assert f"bank_name: {R}knaB liveE{R}" in lines
    assert [line.split(" ")[3] for line in lines if line.startswith("event:")] == \
        ["PaymentCreated", "PaymentAuthorized", "PaymentDeclined"]


@given(bank_name=st.text(st.characters(codec="utf-8", categories=["L", "N", "Zs"]),
                         min_size=101, max_size=400),
       reference=st.text(st.characters(codec="utf-8", categories=["L", "N"]),
                         min_size=65, max_size=200))
@settings(max_examples=5, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_text_longer_than_its_column_from_another_writer_is_cut_and_the_runner_goes_on(
    bank_name: str, reference: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """The domain never writes such text; another program might. Cut to the column on
    both databases (PostgreSQL would refuse the row and stop the runner), with a
    warning; the event, and the payment's page, keep it whole."""
    bank_name, reference = bank_name.strip() or "x" * 101, reference.strip() or "y" * 65
    payment_id = uuid4()
    at = '"occurred_at":"2026-10-03T10:00:00.000000Z"'
    meta = b'{"schemaVersion":2}'
    store = get_event_store()
    store.append(stream_name(payment_id), [
        NewEvent("PaymentCreated", (f'{{"payment_id":"{payment_id}",{at},"amount":"5.00",'
                                    f'"currency":"EUR","reference":{json.dumps(reference)}}}'
                                    ).encode(), meta),
        NewEvent("PaymentDeclined", (f'{{"payment_id":"{payment_id}",{at},'
                                     f'"bank_name":{json.dumps(bank_name)},'
                                     f'"decline_code":"05","decline_id":"{uuid4()}"}}').encode(),
                 meta),
    ], StreamState.NO_STREAM)
    with caplog.at_level(logging.WARNING, logger="projections.projectors"):
        call_command("run_projection", "all", "--once", stdout=StringIO())

    assert not Checkpoint.objects.exclude(failure="").exists()
    row = PaymentView.objects.get(payment_id=payment_id)
    assert text.normalise(bank_name).startswith(row.bank_name)
    assert (len(row.bank_name), len(row.reference)) == (100, 64)
    assert row.reference == text.normalise(reference)[:64]
    assert DeclineView.objects.filter(bank_name=row.bank_name, decline_code="05").exists()
    assert "version 0) makes reference longer than the read model's columns" in caplog.text
    assert "version 1) makes bank_name longer than the read model's columns" in caplog.text
    assert find_payment(payment_id=payment_id).payment.bank_name == text.normalise(bank_name)
