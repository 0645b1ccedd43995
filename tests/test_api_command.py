"""``manage.py api`` end to end: through call_command and as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from io import StringIO
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from django.core.management import CommandError, call_command

from payments.eventstore import get_event_store
from payments.services import find_payment

pytestmark = pytest.mark.django_db(databases=[])
ROOT = Path(__file__).resolve().parent.parent


def api(*args: str) -> str:
    out = StringIO()
    call_command("api", *args, stdout=out)
    return out.getvalue()


def fields(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if not line.startswith("event"))


def test_the_original_flags_drive_a_payment_through_its_life() -> None:
    payment_id = api("-a", "create", "-v", "100.00").strip()
    assert len(payment_id) == 36
    assert fields(api("-a", "authorize", "-i", payment_id, "-b", "Acme Bank"))["status"] == (
        "authorized")
    assert fields(api("-a", "settle", "-i", payment_id, "-v", "60"))["settled_amount"] == "60.00"
    settled = fields(api("-a", "settle", "-i", payment_id))
    assert (settled["status"], settled["settled_amount"]) == ("settled", "100.00")
    refunded = fields(api("--action", "refund", "--id", payment_id, "--value", "100"))
    assert (refunded["status"], refunded["refunded_amount"]) == ("refunded", "100.00")

    found = api("-a", "find", "-i", payment_id)
    assert fields(found)["version"] == "4"
    events = [line for line in found.splitlines() if line.startswith("event: ")]
    assert [line.split()[3] for line in events] == [
        "PaymentCreated", "PaymentAuthorized", "PaymentSettled", "PaymentSettled",
        "PaymentRefunded",
    ]


def test_decline_and_json_output() -> None:
    payment_id = api("-a", "create", "-v", "5", "--currency", "usd").strip()
    declined = json.loads(api("-a", "decline", "-i", payment_id, "-b", "B", "-c", "05", "--json"))
    assert declined["status"] == "declined"
    assert declined["decline_code"] == "05"
    assert declined["currency"] == "USD"
    found = json.loads(api("-a", "find", "-i", payment_id, "--json"))
    assert [e["type"] for e in found["events"]] == ["PaymentCreated", "PaymentDeclined"]


def test_create_takes_a_reference_that_find_and_json_show() -> None:
    payment_id = api("-a", "create", "-v", "10.00", "-r", "  order 1234 ").strip()
    found = api("-a", "find", "-i", payment_id)
    assert fields(found)["reference"] == "order 1234"  # trimmed, by the domain's rule
    [created] = [line for line in found.splitlines() if line.startswith("event: 0 ")]
    assert created.endswith("PaymentCreated amount=10.00, currency=EUR, reference=order 1234")
    assert json.loads(api("-a", "find", "-i", payment_id, "--json"))["reference"] == \
        "order 1234"
    as_json = json.loads(api("-a", "create", "-v", "1", "--reference", "Caf\u00e9", "--json"))
    assert as_json["reference"] == "Caf\u00e9"
    assert find_payment(payment_id=UUID(as_json["id"])).payment.reference == "Caf\u00e9"
    without = api("-a", "create", "-v", "1").strip()
    assert fields(api("-a", "find", "-i", without))["reference"] == ""
    assert fields(api("-a", "authorize", "-i", without, "-b", "B"))["reference"] == ""


def test_a_retried_create_with_its_key_is_one_payment_and_the_reference_is_compared() -> None:
    first = api("-a", "create", "-v", "5", "-r", "order 7", "--idempotency-key", "k-1").strip()
    again = api("-a", "create", "-v", "5.00", "-r", " order 7", "--idempotency-key", "k-1")
    assert again.strip() == first  # the same request, normalised: a replay
    with pytest.raises(CommandError, match="already used for a different"):
        api("-a", "create", "-v", "5", "-r", "order 8", "--idempotency-key", "k-1")
    with pytest.raises(CommandError, match="already used for a different"):
        api("-a", "create", "-v", "5", "--idempotency-key", "k-1")
    assert len(find_payment(payment_id=UUID(first)).history) == 1


BAD_INPUTS = [
    (["-a", "create"], "create needs -v/--value"),
    (["-a", "create", "-v", "abc"], "-v/--value: 'abc' is not a plain decimal"),
    (["-a", "create", "-v", " 5"], "is not a plain decimal"),
    (["-a", "create", "-v", "1_000"], "is not a plain decimal"),
    (["-a", "create", "-v", "+5"], "is not a plain decimal"),
    (["-a", "create", "-v", "1", "--currency", "XYZ"], "XYZ is not an ISO 4217 currency code"),
    (["-a", "create", "-v", "1", "--currency", ""], "three-letter ISO 4217 code"),
    (["-a", "create", "-v", "1", "-i", str(uuid4())], "create takes no -i/--id"),
    (["-a", "create", "-v", "1", "--idempotency-key", ""], "--idempotency-key: must be 1 to 255"),
    (["-a", "create", "-v", "1", "--idempotency-key", "k" * 256], "must be 1 to 255 printable"),
    (["-a", "create", "-v", "1", "--idempotency-key", "a\tb"], "must be 1 to 255 printable"),
    (["-a", "create", "-v", "-1"], "greater than 0"),
    (["-a", "create", "-v", "0"], "greater than 0"),
    (["-a", "create", "-v", "0.001"], "at most 2 decimal places"),
    (["-a", "create", "-v", "1e309"], "is not a plain decimal"),
    (["-a", "create", "-v", "1" * 30], "at most 999,999,999,999.99"),
    (["-a", "create", "-v", "1", "--currency", "EURO"], "three-letter ISO 4217"),
    (["-a", "find"], "find needs -i/--id"),
    (["-a", "find", "-i", "not-a-uuid"], "is not a payment id"),
    (["-a", "find", "-i", str(uuid4())], "not found"),
    (["-a", "authorize", "-i", "{id}"], "authorize needs -b/--bank-name"),
    (["-a", "authorize", "-i", "{id}", "-b", "  "], "-b/--bank-name: must not be empty"),
    (["-a", "authorize", "-i", "{id}", "-b", "Line1\nLine2"], "one line of text without control"),
    (["-a", "authorize", "-i", "{id}", "-b", "Bank\udcff"], r"not valid UTF-8 text \(it holds the"
                                                               r" byte 0xFF\)"),
    (["-a", "authorize", "-i", "{id}", "-b", "\u202eknaB"], "direction overrides"),
    (["-a", "decline", "-i", "{id}", "-b", "B", "-c", "12345"], "1 to 4 letters or digits"),
    (["-a", "decline", "-i", "{id}", "-b", "B", "-c", "0;5"], "1 to 4 letters or digits"),
    (["-a", "decline", "-i", "{id}", "-b", "B", "-c", "\u00df"], "1 to 4 letters or digits"),
    (["-a", "settle", "-i", "{id}"], "cannot settle a payment that is pending"),
    (["-a", "refund", "-i", "{id}", "-v", "abc"], "'abc' is not a plain decimal"),
    (["-a", "create", "-v", "1", "-r", "r" * 65], "^-r/--reference: must be at most 64"
                                                  " characters$"),
    (["-a", "create", "-v", "1", "-r", "order\x07 7"], "^-r/--reference: must be one line of"
                                                       " text without control characters"
                                                       r" \(found U\+0007\)$"),
    (["-a", "create", "-v", "1", "--reference", "\u202eorder"], "-r/--reference: must not"
                                                               " contain invisible format"),
    (["-a", "authorize", "-i", "{id}", "-b", "B", "-r", "x"],
     "authorize takes no -r/--reference: a payment's reference is given when it is created"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_is_refused_and_nothing_is_appended(args: list[str], message: str) -> None:
    payment_id = api("-a", "create", "-v", "10.00").strip()
    head = get_event_store().head_position()
    with pytest.raises(CommandError, match=message):
        api(*(a.replace("{id}", payment_id) for a in args))
    assert get_event_store().head_position() == head


def run_manage(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'cli-events.sqlite3'}",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'cli-db.sqlite3'}",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )


def test_as_a_script_create_prints_the_id_alone_and_errors_are_one_line(tmp_path: Path) -> None:
    created = run_manage("api", "-a", "create", "-v", "10.00", tmp_path=tmp_path)
    assert created.returncode == 0, created.stderr
    payment_id = created.stdout.strip()
    assert created.stdout == payment_id + "\n"

    found = run_manage("api", "-a", "find", "-i", payment_id, tmp_path=tmp_path)
    assert found.returncode == 0
    assert "status: pending" in found.stdout.splitlines()

    for args in (
        ["-a", "create", "-v", "-1"],
        ["-a", "create", "-v", "1e309"],
        ["-a", "settle", "-i", payment_id],
        ["-a", "find", "-i", "nope"],
        ["-a", "find", "-i"],  # argparse's own error, made one line too
        ["-a", "decline", "-i", payment_id, "-b", "B", "-c", "ABCDE"],
    ):
        refused = run_manage("api", *args, tmp_path=tmp_path)
        assert refused.returncode != 0, args
        assert refused.stdout == ""
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "Traceback" not in refused.stderr

    history = run_manage("api", "-a", "find", "-i", payment_id, tmp_path=tmp_path)
    assert sum(line.startswith("event: ") for line in history.stdout.splitlines()) == 1


def test_an_unreachable_store_is_one_line_too(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    env_uri = f"sqlite:///{blocker / 'events.sqlite3'}"
    result = subprocess.run(
        [sys.executable, "manage.py", "api", "-a", "create", "-v", "1"], cwd=ROOT,
        env={**os.environ, "EVENTSTORE_URI": env_uri}, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("CommandError: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_with_eventstore_uri_the_same_commands_write_to_eventstoredb(tmp_path: Path) -> None:
    """The CLI in a subprocess, talking gRPC to the EventStoreDB double in this process."""
    from payments.eventstore.esdb import EventStoreDBEventStore
    from tests.esdb_double import EventStoreDBDouble

    with EventStoreDBDouble() as double:
        env = {**os.environ, "EVENTSTORE_URI": double.uri, "EVENTSTORE_TIMEOUT": "5"}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "manage.py", "api", *args], cwd=ROOT, env=env,
                capture_output=True, text=True, timeout=60,
            )

        created = cli("-a", "create", "-v", "100.00")
        assert created.returncode == 0, created.stderr
        payment_id = created.stdout.strip()
        assert cli("-a", "authorize", "-i", payment_id, "-b", "Acme").returncode == 0
        assert cli("-a", "settle", "-i", payment_id).returncode == 0
        refused = cli("-a", "authorize", "-i", payment_id, "-b", "Acme")
        assert refused.returncode == 1
        assert "cannot authorize a payment that is settled" in refused.stderr
        assert refused.stderr.count("\n") == 1

        store = EventStoreDBEventStore(double.uri)
        try:
            recorded = store.read_stream(f"payments-{payment_id}")
        finally:
            store.close()
        assert [r.type for r in recorded] == [
            "PaymentCreated", "PaymentAuthorized", "PaymentSettled"]
        assert json.loads(recorded[0].data)["amount"] == "100.00"

        double.stop()
        down = cli("-a", "find", "-i", payment_id)
        assert down.returncode == 1
        assert "unavailable" in down.stderr
        assert len(down.stderr.strip().splitlines()) == 1


def test_hostile_arguments_from_a_shell_are_refused_in_one_line(tmp_path: Path) -> None:
    """Issue 10: bytes that are not UTF-8 (Python reads them as lone surrogates), a
    newline, a bad EVENTSTORE_URI: one line on stderr, exit 1, nothing appended."""
    payment_id = run_manage("api", "-a", "create", "-v", "10.00", tmp_path=tmp_path).stdout.strip()
    for bank in (b"Bank\xff", b"Line1\nLine2", "\u202eknaB".encode()):
        refused = subprocess.run(
            [os.fsencode(sys.executable), b"manage.py", b"api", b"-a", b"authorize", b"-i",
             payment_id.encode(), b"-b", bank], cwd=ROOT, capture_output=True, timeout=60,
            env={**os.environ, "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'cli-events.sqlite3'}",
                 "DATABASE_URL": f"sqlite:///{tmp_path / 'cli-db.sqlite3'}"},
        )
        assert refused.returncode == 1, bank
        assert refused.stdout == b""
        assert refused.stderr.startswith(b"CommandError: -b/--bank-name: ")
        assert refused.stderr.count(b"\n") == 1, refused.stderr
    found = run_manage("api", "-a", "find", "-i", payment_id, tmp_path=tmp_path)
    assert found.stdout.count("event: ") == 1  # nothing was appended

    bogus = subprocess.run(
        [sys.executable, "manage.py", "api", "-a", "find", "-i", payment_id], cwd=ROOT,
        env={**os.environ, "EVENTSTORE_URI": "bogus://x"}, capture_output=True, text=True,
        timeout=60,
    )
    assert bogus.returncode == 1
    assert bogus.stderr == ("CommandError: EVENTSTORE_URI bogus://… is not supported: use"
                            " sqlite:///path or esdb://host:port\n")


@pytest.mark.parametrize("uri", ["sqlite:///var/elsewhere/events.sqlite3", "sqlite:///"])
def test_a_relative_event_store_path_is_refused_and_makes_no_folder(
        tmp_path: Path, uri: str) -> None:
    """A relative path would depend on the folder a command is run from."""
    refused = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "api", "-a", "create", "-v", "1.00"],
        cwd=tmp_path, env={**os.environ, "EVENTSTORE_URI": uri,
                           "DATABASE_URL": f"sqlite:///{tmp_path / 'cli-db.sqlite3'}"},
        capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    path = uri.removeprefix("sqlite:///") or "none"
    assert refused.stderr == (
        f"CommandError: EVENTSTORE_URI {uri} names a relative path ({path}): give the"
        " absolute path after sqlite:/// (sqlite:////srv/payments/events.sqlite3, four"
        " slashes in all)\n")
    assert list(tmp_path.iterdir()) == []  # no folder, no file


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``manage.py api -a find … | head -1``: no BrokenPipeError, no traceback."""
    env = {**os.environ, "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'cli-events.sqlite3'}",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'cli-db.sqlite3'}"}
    created = run_manage("api", "-a", "create", "-v", "1000.00", tmp_path=tmp_path)
    payment_id = created.stdout.strip()
    run_manage("api", "-a", "authorize", "-i", payment_id, "-b", "Acme", tmp_path=tmp_path)
    for _ in range(3):
        run_manage("api", "-a", "settle", "-i", payment_id, "-v", "1.00", tmp_path=tmp_path)
    # The reader closes its end before the command writes: the write meets a closed pipe
    # every time (head -1 only sometimes closes early enough).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        finished = subprocess.run(
            [sys.executable, "manage.py", "api", "-a", "find", "-i", payment_id, "--json"],
            cwd=ROOT, env=env, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert finished.stderr == ""
    assert finished.returncode == 1  # as Python advises: the answer was not delivered


@pytest.mark.django_db
def test_cli_idempotency_keys_cannot_collide_with_an_api_users_keys() -> None:
    """The service sees "<user pk>:<key>" from the API; the CLI's keys are "cli:<key>"."""
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    user = get_user_model().objects.create_user("api-user", password="pw-api-user-1")
    client = APIClient()
    client.force_authenticate(user)
    via_api = client.post("/api/payments/", {"amount": "5.00"}, format="json",
                          headers={"Idempotency-Key": "shared-key"})
    assert via_api.status_code == 201
    via_cli = api("-a", "create", "-v", "7.00", "--idempotency-key", f"{user.pk}:shared-key")
    assert via_cli.strip() != via_api.json()["id"]
    assert find_payment(payment_id=via_cli.strip()).payment.amount == Decimal("7.00")
