"""The command service's log: one line per command, its fields also given apart for
LOG_FORMAT=json, where operators filter on them (so the fields are an interface).

Here every command takes 12.34 ms on the service's clock, so each line is exact.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from payments import services
from payments.domain import HistoryError
from payments.events import stream_name
from payments.eventstore import (
    EventStoreUnavailable,
    NewEvent,
    StreamState,
    UnreadableEvent,
    get_event_store,
    reset_event_store,
)
from tests.test_logging import commands
from tests.test_services import COMMANDS, ready_for, written_by_another_program

pytestmark = pytest.mark.django_db(databases=[])

EVENT_TYPES = {"create": "PaymentCreated", "authorize": "PaymentAuthorized",
               "settle": "PaymentSettled", "refund": "PaymentRefunded",
               "decline": "PaymentDeclined"}


@pytest.fixture(autouse=True)
def _info_on_a_clock(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="payments")
    ticks = itertools.count(100.0, 0.01234)
    monkeypatch.setattr(services.time, "perf_counter", lambda: next(ticks))


def last_line(caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """The last command's line as JSON, without its wall-clock time."""
    line = commands(caplog)[-1]
    del line["time"]
    return line


def fields(action: str, payment_id: UUID, outcome: str, level: str = "INFO",
           event_type: str | None = None) -> dict[str, Any]:
    return {"level": level, "logger": "payments.services", "payment_id": str(payment_id),
            "action": action, "event_type": event_type, "outcome": outcome,
            "duration_ms": 12.3}


@pytest.mark.parametrize("action", EVENT_TYPES)
def test_a_command_that_went_through_logs_its_event_and_version(
    caplog: pytest.LogCaptureFixture, action: str
) -> None:
    if action == "create":
        done = services.create_payment(amount="10.00")
    else:
        done = COMMANDS[action](payment_id=ready_for(action).id)
    event_type = EVENT_TYPES[action]
    assert last_line(caplog) == {
        **fields(action, done.id, "ok", event_type=event_type), "version": done.version,
        "message": f"{action} {done.id} -> {event_type} at version {done.version} in 12.3 ms",
    }


def test_a_command_the_rules_refuse_logs_why(caplog: pytest.LogCaptureFixture) -> None:
    payment = services.create_payment(amount="10.00")
    with pytest.raises(services.PaymentError) as refused:
        services.settle_payment(payment_id=payment.id)
    assert last_line(caplog) == {
        **fields("settle", payment.id, "refused"),
        "message": f"settle {payment.id} refused in 12.3 ms: {refused.value}",
    }


def test_a_retried_command_logs_that_it_was_replayed(caplog: pytest.LogCaptureFixture) -> None:
    services.create_payment(amount="10.00", idempotency_key="k")
    payment = services.create_payment(amount="10.00", idempotency_key="k")
    assert last_line(caplog) == {
        **fields("create", payment.id, "replayed"),
        "message": f"create {payment.id} replayed in 12.3 ms",
    }


def a_stale_expected_version(settings: Any, tmp_path: Path) -> tuple[UUID, dict[str, Any]]:
    return services.create_payment(amount="10.00").id, {"expected_version": 1}


def an_unreachable_store(settings: Any, tmp_path: Path) -> tuple[UUID, dict[str, Any]]:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the store's folder should be")
    reset_event_store()
    settings.EVENTSTORE_URI = f"sqlite:///{blocked / 'events.sqlite3'}"
    return uuid4(), {}


def an_unreadable_event(settings: Any, tmp_path: Path) -> tuple[UUID, dict[str, Any]]:
    payment_id = uuid4()
    written_by_another_program(get_event_store(), payment_id,
                               NewEvent(type="PaymentAuthorized", data=b"{}"))
    return payment_id, {}


def a_payment_created_twice(settings: Any, tmp_path: Path) -> tuple[UUID, dict[str, Any]]:
    payment_id = uuid4()
    created = written_by_another_program(get_event_store(), payment_id)
    get_event_store().append(stream_name(payment_id),
                             [NewEvent(type=created.type, data=created.data)], StreamState.ANY)
    return payment_id, {}


@pytest.mark.parametrize(("provoke", "error", "level", "outcome"), [
    (a_stale_expected_version, services.ConcurrencyConflict, "WARNING", "conflict"),
    (an_unreachable_store, EventStoreUnavailable, "WARNING", "unavailable"),
    # A stream this code cannot read, or cannot fold: an error, not the rules.
    (an_unreadable_event, UnreadableEvent, "ERROR", "error"),
    (a_payment_created_twice, HistoryError, "ERROR", "error"),
])
def test_a_command_that_failed_logs_how_at_the_level_it_deserves(
    caplog: pytest.LogCaptureFixture, settings: Any, tmp_path: Path,
    provoke: Callable[[Any, Path], tuple[UUID, dict[str, Any]]], error: type[Exception],
    level: str, outcome: str,
) -> None:
    payment_id, kwargs = provoke(settings, tmp_path)
    with pytest.raises(error) as failed:
        services.authorize_payment(payment_id=payment_id, bank_name="Bank", **kwargs)
    assert last_line(caplog) == {
        **fields("authorize", payment_id, outcome, level=level),
        "message": f"authorize {payment_id} {outcome} in 12.3 ms: {failed.value}",
    }
