"""No silent runner death: a runner that stops on an error says so everywhere.

Any exception in a projection's thread ends ``run_projection`` with a non-zero exit and
one log line naming the projection and the event; ``projection_status``, the overview
and ``/readyz`` show the projection as failed with that reason until a runner moves on.
A batch that fails is applied again event by event, so the events before the culprit
are kept. Rows the store cannot read are the port's error, with their position.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from payments import services
from payments.events import stream_name
from payments.eventstore import get_event_store
from projections.models import Checkpoint, DeclineView, PaymentView
from projections.projectors import DeclineProjection, PaymentProjection

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def run_projection(*args: str) -> str:
    out = StringIO()
    call_command("run_projection", *args, stdout=out)
    return out.getvalue()


def status_table() -> str:
    out = StringIO()
    call_command("projection_status", stdout=out)
    return out.getvalue()


def declined_payment(bank: str = "Acme") -> None:
    payment = services.create_payment(amount="5.00")
    services.decline_payment(payment_id=payment.id, bank_name=bank, decline_code="05")


@pytest.fixture
def decline_projection_crashes(monkeypatch) -> None:
    """A bug in the decline projector: it raises something nobody expected."""

    def apply(self, batch) -> None:
        raise RuntimeError("a bug nobody expected")

    monkeypatch.setattr(DeclineProjection, "apply", apply)


def test_an_unexpected_exception_in_one_thread_fails_the_process_and_says_where(
        decline_projection_crashes, client, admin_client, caplog) -> None:
    declined_payment()
    head = get_event_store().head_position()
    with caplog.at_level(logging.ERROR, logger="projections.runner"), \
            pytest.raises(CommandError) as stopped:
        run_projection("all", "--once")
    # Non-zero exit (CommandError) with the reason: projection, position, stream and type.
    message = str(stopped.value)
    assert "projection 'decline' cannot apply the event at position" in message
    assert f"position {head}" in message
    assert "type PaymentDeclined" in message
    assert "RuntimeError: a bug nobody expected" in message
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [message]

    checkpoint = Checkpoint.objects.get(name="decline")
    assert checkpoint.failure == message
    assert checkpoint.failed_at is not None
    # projection_status: FAILED in the table, the reason below it, no traceback.
    table = status_table()
    assert "FAILED" in table.splitlines()[[line.split()[0] for line in table.splitlines()]
                                          .index("decline")]
    assert "FAILED: decline at " in table
    assert message in table
    # /readyz: not ready, naming the projection and the reason.
    ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["checks"]["projections"] == "fail"
    assert body["failed_projections"] == {"decline": message}
    assert {p["name"]: p["state"] for p in body["projections"]}["decline"] == "failed"
    # The overview says so too.
    overview = admin_client.get("/").content.decode()
    assert 'class="notice error projection-failed" data-projection="decline"' in overview
    assert "RuntimeError: a bug nobody expected" in overview


def test_a_failure_is_cleared_once_a_runner_moves_on(decline_projection_crashes,
                                                      monkeypatch, client) -> None:
    declined_payment()
    with pytest.raises(CommandError):
        run_projection("decline", "--once")
    assert Checkpoint.objects.get(name="decline").failure
    monkeypatch.undo()  # the bug is fixed and the runner restarted
    run_projection("decline", "--once")
    checkpoint = Checkpoint.objects.get(name="decline")
    assert (checkpoint.failure, checkpoint.failed_at) == ("", None)
    assert DeclineView.objects.get().count == 1
    assert client.get("/readyz").status_code == 200


def test_a_failing_batch_keeps_the_events_before_the_culprit(monkeypatch) -> None:
    """One bad event among good ones in a batch: the good ones before it are applied,
    the runner stops on it by position, nothing after it is applied."""
    made = [services.create_payment(amount=f"{n}.00") for n in (1, 2, 3, 4)]
    records = get_event_store().read_all()
    culprit = records[2]
    original = PaymentProjection.apply

    def apply(self, batch) -> None:
        if any(d.record.position == culprit.position for d in batch):
            raise ValueError("the database refused a value")
        original(self, batch)

    monkeypatch.setattr(PaymentProjection, "apply", apply)
    with pytest.raises(CommandError, match=rf"position {culprit.position} \(stream"
                                           rf" {culprit.stream}, version 0, type"
                                           r" PaymentCreated\): ValueError"):
        run_projection("payment", "--once", "--batch-size", "100")
    assert set(PaymentView.objects.values_list("payment_id", flat=True)) == \
        {made[0].id, made[1].id}
    assert Checkpoint.objects.get(name="payment").position == records[1].position


def corrupt_row(store_file: Path, position: int, data: object) -> None:
    """Rewrite one stored event's data as another tool might have written it."""
    with sqlite3.connect(store_file) as db:
        db.execute("UPDATE events SET data = ? WHERE position = ?", (data, position))


def test_a_row_written_as_text_reads_as_the_json_it_holds(settings, admin_client) -> None:
    payment = services.create_payment(amount="7.00")
    store = get_event_store()
    position = store.head_position()
    original = store.read_stream(stream_name(payment.id))[0].data
    corrupt_row(Path(settings.EVENTSTORE_URI.removeprefix("sqlite:///")), position,
                original.decode())  # TEXT, not BLOB
    run_projection("all", "--once")
    assert PaymentView.objects.get().amount == payment.amount
    assert admin_client.get(f"/payments/{payment.id}/").status_code == 200


def test_a_row_the_store_cannot_read_is_its_error_with_the_position(settings, client,
                                                                      admin_client) -> None:
    good = services.create_payment(amount="1.00")
    bad = services.create_payment(amount="2.00")
    position = get_event_store().head_position()
    # An event id that is not 16 bytes: a row another tool wrote, or a manual repair
    # gone wrong.
    store_file = Path(settings.EVENTSTORE_URI.removeprefix("sqlite:///"))
    with sqlite3.connect(store_file) as db:
        db.execute("UPDATE events SET event_id = x'00' WHERE position = ?", (position,))
    with pytest.raises(CommandError, match=rf"position {position} \(stream"
                                           rf" {stream_name(bad.id)}, type PaymentCreated\)"):
        run_projection("payment", "--once")
    assert list(PaymentView.objects.values_list("payment_id", flat=True)) == [good.id]
    # Every page and probe still answers, none with a traceback.
    for path in ("/", "/payments/", "/declines/", f"/payments/{good.id}/"):
        assert admin_client.get(path).status_code == 200, path
    unreadable = admin_client.get(f"/payments/{bad.id}/")
    assert unreadable.status_code == 503
    assert "cannot be read" in unreadable.content.decode()
    api = admin_client.get(f"/api/payments/{bad.id}/")
    assert api.status_code == 503
    assert "cannot be read" in api.json()["detail"]
    assert client.get("/readyz").status_code == 503  # the payment runner failed
    with pytest.raises(CommandError, match=f"position {position}"):
        status_table()


def test_the_process_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    """As operators and supervisors see it: a real process, its exit code and stderr."""
    env = {
        "PATH": "/usr/bin:/bin", "DEBUG": "true", "SECRET_KEY": "tests-only",
        "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'events.sqlite3'}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }

    def manage(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    assert manage("migrate", "--verbosity", "0").returncode == 0
    payment_id = manage("api", "-a", "create", "-v", "3.00").stdout.strip()
    with sqlite3.connect(tmp_path / "events.sqlite3") as db:
        db.execute("UPDATE events SET data = x'7b' WHERE stream = ?",
                   (stream_name(payment_id),))  # "{": not JSON
    ran = manage("run_projection", "all", "--once")
    assert ran.returncode == 1
    assert "Traceback" not in ran.stderr
    assert f"stream {stream_name(payment_id)}, version 0, type PaymentCreated" in ran.stderr
    status = json.loads(manage("projection_status", "--json").stdout)
    states = {p["name"]: (p["state"], p["failure"]) for p in status["projections"]}
    assert states["payment"][0] == "failed"
    assert "not JSON" in states["payment"][1]
    assert states["decline"] == ("stopped", None)  # it had nothing to read: no failure


def test_a_value_the_database_refuses_stops_the_runner_on_that_event(monkeypatch) -> None:
    """The issue's PostgreSQL finding, with the text rule's repair switched off so a NUL
    reaches the read model: PostgreSQL refuses it (DataError), and the runner must name
    the event, keep the good events of the batch, and exit non-zero — not die silently
    with "applied 0 events". SQLite stores NUL, so there the batch is applied."""
    from django.db import connection

    from payments import events

    before = services.create_payment(amount="1.00")
    poisoned = services.create_payment(amount="2.00")
    services.authorize_payment(payment_id=poisoned.id, bank_name="Acme")
    store = get_event_store()
    record = store.read_stream(stream_name(poisoned.id))[1]
    corrupt_row(Path(get_event_store().path), record.position,
                record.data.replace(b'"Acme"', b'"Ac\\u0000me"'))
    services.create_payment(amount="3.00")  # after the culprit: must not be applied
    monkeypatch.setattr(events, "_repair_text", lambda document: document)

    if connection.vendor != "postgresql":
        run_projection("payment", "--once", "--batch-size", "100")
        assert PaymentView.objects.get(payment_id=poisoned.id).bank_name == "Ac\x00me"
        return
    with pytest.raises(CommandError, match=rf"position {record.position} \(stream"
                                           rf" {record.stream}, version 1, type"
                                           r" PaymentAuthorized\): DataError"):
        run_projection("payment", "--once", "--batch-size", "100")
    assert set(PaymentView.objects.values_list("payment_id", flat=True)) == \
        {before.id, poisoned.id}  # created before the culprit; the third is not applied
    assert PaymentView.objects.get(payment_id=poisoned.id).status == "pending"
    assert Checkpoint.objects.get(name="payment").failure.startswith(
        f"projection 'payment' cannot apply the event at position {record.position}")
