"""Logs: one line per command and per projection batch, with structured fields, as
JSON lines under LOG_FORMAT=json; the CLI's stderr stays quiet unless LOG_LEVEL asks."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from payments import services
from payments.domain import PaymentError
from payments.eventstore import EventStoreError, get_event_store, reset_event_store
from paymentsite.logging import JsonFormatter
from projections.projectors import PaymentProjection
from projections.runner import ProjectionRunner

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = uuid4()


def json_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict[str, Any]]:
    """The records of ``logger``, each through the formatter and parsed back."""
    formatter = JsonFormatter()
    lines = [formatter.format(r) for r in caplog.records if r.name == logger]
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


def commands(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return json_lines(caplog, "payments.services")


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="payments")
    caplog.set_level(logging.INFO, logger="projections")


def test_a_command_is_one_json_line_with_its_fields(caplog) -> None:
    payment = services.create_payment(amount="10.00", currency="EUR")
    [line] = commands(caplog)
    assert datetime.fromisoformat(line["time"]).utcoffset() == timedelta(0)
    assert (line["level"], line["logger"]) == ("INFO", "payments.services")
    assert line["message"].startswith(f"create {payment.id} -> PaymentCreated at version 0")
    assert line["payment_id"] == str(payment.id)
    assert (line["action"], line["event_type"], line["outcome"]) == (
        "create", "PaymentCreated", "ok")
    assert line["version"] == 0
    assert isinstance(line["duration_ms"], float)
    assert line["duration_ms"] >= 0


@pytest.mark.parametrize(("command", "kwargs"), [
    ("settle_payment", {}),  # pending: the status says no
    ("authorize_payment", {"bank_name": "  "}),  # bad input, refused before any read
    ("refund_payment", {"payment_id": UNKNOWN}),  # no such payment
])
def test_a_refused_command_logs_outcome_refused_at_info(caplog, command, kwargs) -> None:
    payment = services.create_payment(amount="10.00")
    caplog.clear()
    kwargs = {"payment_id": payment.id, **kwargs}
    with pytest.raises(PaymentError) as refused:
        getattr(services, command)(**kwargs)
    [line] = commands(caplog)
    assert (line["level"], line["outcome"], line["event_type"]) == ("INFO", "refused", None)
    assert line["payment_id"] == str(kwargs["payment_id"])
    assert line["action"] == command.removesuffix("_payment")
    assert line["message"].endswith(str(refused.value))


def test_a_conflict_logs_at_warning(caplog) -> None:
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    caplog.clear()
    with pytest.raises(services.ConcurrencyConflict):
        services.settle_payment(payment_id=payment.id, expected_version=0)
    [line] = commands(caplog)
    assert (line["level"], line["outcome"], line["action"]) == ("WARNING", "conflict", "settle")


def test_an_unreachable_store_logs_unavailable_at_warning(caplog, settings, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    settings.EVENTSTORE_URI = f"sqlite:///{blocker / 'events.sqlite3'}"
    reset_event_store()
    with pytest.raises(EventStoreError):
        services.create_payment(amount="10.00")
    [line] = commands(caplog)
    assert (line["level"], line["outcome"], line["action"]) == (
        "WARNING", "unavailable", "create")


def test_a_retried_command_logs_replayed(caplog) -> None:
    first = services.create_payment(amount="10.00", idempotency_key="k-1")
    again = services.create_payment(amount="10.00", idempotency_key="k-1")
    assert again == first
    assert [line["outcome"] for line in commands(caplog)] == ["ok", "replayed"]


def test_nothing_is_logged_below_the_level(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="payments")
    payment = services.create_payment(amount="10.00")
    with pytest.raises(PaymentError):
        services.settle_payment(payment_id=payment.id)
    assert commands(caplog) == []


def test_a_runner_batch_is_one_line_with_count_and_positions(caplog) -> None:
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    services.settle_payment(payment_id=payment.id)
    positions = [e.position for e in get_event_store().read_all()]
    caplog.clear()
    ProjectionRunner(PaymentProjection(), get_event_store(), batch_size=2).run(once=True)
    batches = [line for line in json_lines(caplog, "projections.runner") if "count" in line]
    assert [(b["projection"], b["count"], b["first_position"], b["last_position"])
            for b in batches] == [
        ("payment", 2, positions[0], positions[1]),
        ("payment", 1, positions[2], positions[2]),
    ]
    assert all(b["level"] == "INFO" and b["duration_ms"] >= 0 for b in batches)


# --- the environment, end to end: manage.py api in a subprocess --------------------------


def manage_api(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "LOG_FORMAT")}
    return subprocess.run(
        [sys.executable, "manage.py", "api", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**clean, **env,
                         "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'events.sqlite3'}",
                         "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"},
    )


def test_log_format_json_from_the_environment(tmp_path: Path) -> None:
    created = manage_api("-a", "create", "-v", "10.00", tmp_path=tmp_path,
                         LOG_LEVEL="info", LOG_FORMAT="json")
    assert created.returncode == 0, created.stderr
    payment_id = created.stdout.strip()
    assert created.stdout == payment_id + "\n"  # logs never reach stdout
    [line] = [json.loads(text) for text in created.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= line.keys()
    assert (line["payment_id"], line["action"], line["outcome"]) == (payment_id, "create", "ok")

    refused = manage_api("-a", "settle", "-i", payment_id, tmp_path=tmp_path,
                         LOG_LEVEL="INFO", LOG_FORMAT="json")
    assert refused.returncode == 1
    log, error = refused.stderr.splitlines()
    assert json.loads(log)["outcome"] == "refused"
    assert error.startswith("CommandError: ")


def test_by_default_the_cli_stderr_has_only_its_own_errors(tmp_path: Path) -> None:
    created = manage_api("-a", "create", "-v", "10.00", tmp_path=tmp_path)
    assert created.returncode == 0
    assert created.stderr == ""
    refused = manage_api("-a", "settle", "-i", created.stdout.strip(), tmp_path=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("CommandError: ")


def test_an_unknown_log_format_is_refused_at_startup(tmp_path: Path) -> None:
    result = manage_api("-a", "create", "-v", "1", tmp_path=tmp_path, LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "LOG_FORMAT must be plain or json" in result.stderr
