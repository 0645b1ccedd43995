"""``manage.py projection_status``: checkpoints, head, lag and runners, as text or JSON."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from payments import services
from payments.eventstore import EventStoreUnavailable, get_event_store
from projections.locks import try_lock, unlock
from projections.management.commands import projection_status
from projections.models import Checkpoint
from projections.projectors import PROJECTIONS

pytestmark = pytest.mark.django_db


def status(*args: str) -> str:
    out = StringIO()
    call_command("projection_status", *args, stdout=out)
    return out.getvalue()


def append_events(count: int) -> list[int]:
    """``count`` (at least 2) events of one payment; their positions, in order."""
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    for _ in range(count - 2):
        services.settle_payment(payment_id=payment.id, amount="0.01")
    return [e.position for e in get_event_store().read_all()]


def set_checkpoint(name: str, position: int) -> None:
    Checkpoint.objects.update_or_create(name=name, defaults={"position": position})


def rows(output: str) -> dict[str, list[str]]:
    lines = output.splitlines()
    return {line.split()[0]: line.split() for line in lines[1:] if not line.startswith("note")}


def test_an_empty_store_and_no_checkpoints() -> None:
    Checkpoint.objects.all().delete()  # migrate made them; a fresh --reset may not have
    output = status()
    header = output.splitlines()[0].split()
    assert header == ["projection", "checkpoint", "updated", "head", "lag", "runner"]
    table = rows(output)
    assert set(table) == set(PROJECTIONS)
    for name in PROJECTIONS:
        assert table[name] == [name, "0", "never", "0", "0", "-"]
    assert not Checkpoint.objects.exists()  # looking creates nothing


def test_the_checkpoints_that_migrate_creates() -> None:
    table = rows(status())
    for name in PROJECTIONS:
        assert table[name][1] == "0"
        assert table[name][2] != "never"


def test_the_lag_counts_the_events_after_each_checkpoint() -> None:
    positions = append_events(5)
    set_checkpoint("payment", positions[1])
    output = status()
    table = rows(output)
    head = str(positions[-1])
    assert table["payment"][1] == str(positions[1])
    assert table["payment"][3] == head
    assert table["payment"][-2:] == ["3", "-"]
    assert table["decline"][1] == "0"
    assert table["decline"][3:] == [head, "5", "-"]

    data = json.loads(status("--json"))
    assert data["head"] == positions[-1]
    by_name = {p["name"]: p for p in data["projections"]}
    assert set(by_name) == set(PROJECTIONS)
    assert by_name["payment"]["position"] == positions[1]
    assert by_name["payment"]["updated_at"] is not None
    assert (by_name["payment"]["lag"], by_name["payment"]["lag_capped"]) == (3, False)
    assert by_name["decline"]["position"] == 0
    assert by_name["decline"]["lag"] == 5
    assert by_name["payment"]["runner_active"] is False


def test_a_caught_up_projection_has_no_lag() -> None:
    positions = append_events(2)
    set_checkpoint("payment", positions[-1])
    assert rows(status())["payment"][-2] == "0"


def test_a_large_lag_is_capped(monkeypatch) -> None:
    append_events(4)
    monkeypatch.setattr(projection_status, "LAG_CAP", 2)
    assert rows(status())["payment"][-2] == ">2"
    data = json.loads(status("--json"))
    assert (data["projections"][0]["lag"], data["projections"][0]["lag_capped"]) == (2, True)


def test_a_held_lock_is_an_active_runner() -> None:
    token = try_lock("decline")
    assert token is not None
    try:
        table = rows(status())
    finally:
        unlock("decline", token)
    assert table["decline"][-1] == "active"
    assert table["payment"][-1] == "-"


def test_a_checkpoint_past_the_head_is_pointed_out() -> None:
    set_checkpoint("payment", 42)
    output = status()
    assert "note: payment's checkpoint 42 is past the head 0" in output


def test_an_unavailable_store_is_one_line_and_an_error(monkeypatch) -> None:
    class Down:
        def head_position(self, **kwargs):
            raise EventStoreUnavailable("connection refused")

    monkeypatch.setattr(projection_status, "get_event_store", Down)
    with pytest.raises(CommandError, match=r"^event store unavailable: connection refused$"):
        status()


def test_an_unsupported_uri_is_an_error(settings) -> None:
    from payments.eventstore import reset_event_store

    reset_event_store()
    settings.EVENTSTORE_URI = "mysql://nowhere"
    with pytest.raises(CommandError, match="not supported"):
        status()
