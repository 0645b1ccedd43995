"""``/healthz`` and ``/readyz``: anonymous JSON probes, over plain HTTP, saying nothing
sensitive; readiness follows the event store and the database, and reports the lag."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from payments import services
from payments.eventstore import get_event_store, reset_event_store
from paymentsite import health
from projections.locks import try_lock, unlock
from projections.projectors import PROJECTIONS

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


def unreachable_store(settings, tmp_path: Path) -> None:
    """An event store file under a regular file: it can never be opened."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.EVENTSTORE_URI = f"sqlite:///{blocker / 'events.sqlite3'}"
    reset_event_store()


def test_healthz_answers_anyone_and_touches_nothing(client: Client, settings, tmp_path) -> None:
    unreachable_store(settings, tmp_path)  # liveness does not care
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}
    assert "no-store" in response["Cache-Control"]
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


def test_ready_when_the_store_and_the_database_answer(client: Client) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {"event_store": "ok", "database": "ok", "projections": "ok"}
    assert body["failed_projections"] == {}
    assert {p["name"] for p in body["projections"]} == set(PROJECTIONS)
    for projection in body["projections"]:
        assert (projection["head"], projection["lag"], projection["lag_capped"]) == (0, 0, False)


def test_lag_is_reported_and_does_not_make_it_unready(client: Client) -> None:
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    head = get_event_store().head_position()
    token = try_lock("decline")  # as a running runner would
    assert token is not None
    try:
        response = client.get("/readyz")
    finally:
        unlock("decline", token)
    assert response.status_code == 200
    by_name = {p["name"]: p for p in response.json()["projections"]}
    assert by_name["payment"]["position"] == 0
    assert by_name["payment"]["head"] == head
    assert (by_name["payment"]["lag"], by_name["payment"]["lag_capped"]) == (2, False)
    assert by_name["payment"]["runner_active"] is False
    assert by_name["decline"]["runner_active"] is True


def test_a_large_lag_is_capped_so_a_probe_stays_cheap(client: Client, monkeypatch) -> None:
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    services.settle_payment(payment_id=payment.id, amount="0.01")
    monkeypatch.setattr(health, "LAG_CAP", 2)
    projection = client.get("/readyz").json()["projections"][0]
    assert (projection["lag"], projection["lag_capped"]) == (2, True)


def assert_nothing_sensitive(text: str, *secrets: str) -> None:
    for secret in ("sqlite", "esdb", "events.sqlite3", "Errno", "Error", "Traceback",
                   "127.0.0.1", *secrets):
        assert secret.lower() not in text.lower(), secret


def test_store_down_is_a_503_in_json_naming_the_check(client: Client, settings,
                                                      tmp_path) -> None:
    unreachable_store(settings, tmp_path)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"  # not the pages' HTML 503
    assert response.json() == {
        "status": "unavailable",
        "checks": {"event_store": "fail", "database": "ok", "projections": "ok"},
        "failed_projections": {},
        "projections": None,
    }
    assert_nothing_sensitive(response.content.decode(), str(tmp_path), "a-file")


@pytest.mark.timeout(10)  # without the probe's own deadline it would wait 20 s
def test_a_store_that_hangs_fails_at_the_probe_deadline(client: Client, settings, monkeypatch,
                                                       black_hole: str) -> None:
    settings.EVENTSTORE_URI = black_hole
    settings.EVENTSTORE_TIMEOUT = 20.0  # the store's own calls would wait that long
    reset_event_store()
    monkeypatch.setattr(health, "STORE_DEADLINE", 0.3)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"] == {"event_store": "fail", "database": "ok",
                                         "projections": "ok"}
    assert_nothing_sensitive(response.content.decode(), black_hole.split("//")[1].split("?")[0])


def test_with_debug_off_the_probes_are_not_redirected_to_https(client: Client,
                                                               settings) -> None:
    settings.DEBUG = False
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/accounts/login/").status_code == 301  # the redirect is on
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_database_down_is_a_503_naming_it_in_a_production_process(tmp_path: Path) -> None:
    """A real process with DEBUG off whose database file cannot be opened."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    probe = (
        "from django.test import Client\n"
        "r = Client(HTTP_HOST='localhost').get('/readyz')\n"
        "print(r.status_code, r.content.decode())\n"
    )
    env = {
        **os.environ, "DEBUG": "false", "SECRET_KEY": "x" * 50,
        "DATABASE_URL": f"sqlite:///{blocker / 'db.sqlite3'}",
        "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'events.sqlite3'}",
    }
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", probe], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    status, body = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert status == "503"
    assert json.loads(body) == {
        "status": "unavailable",
        "checks": {"event_store": "ok", "database": "fail", "projections": "ok"},
        "failed_projections": {},
        "projections": None,
    }
    assert_nothing_sensitive(body, str(tmp_path), "a-file", "db.sqlite3")
