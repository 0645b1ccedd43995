"""Blue/green rebuilds (``run_projection NAME --rebuild``) and projection versions.

A rebuild fills shadow tables from position 0 while the live read model serves and
its runner follows; one transaction swaps them in. These tests run on SQLite and, in
``dev.py test``'s second run, on PostgreSQL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from io import StringIO
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import close_old_connections, connection
from django.test import Client

from bench.dataset import write_payments
from payments import services
from payments.eventstore import get_event_store
from projections.management.commands.projection_status import projection_statuses
from projections.models import Checkpoint, PaymentView, Rebuild
from projections.projectors import PROJECTIONS, PaymentProjection
from projections.runner import Progress, ProjectionRunner, VersionMismatch
from projections.shadow import shadow_exists
from tests.test_runner import snapshot, some_payments
from tests.test_runner_faults import lines_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db(transaction=True)


def schema() -> dict[str, dict[str, tuple]]:
    """Each read model's columns and the names of its indexes and constraints, with
    what they cover: what a later migration relies on."""
    with connection.cursor() as cursor:
        found = {}
        for model in (*PaymentProjection.read_models, *PROJECTIONS["decline"].read_models):
            table = model._meta.db_table
            constraints = connection.introspection.get_constraints(cursor, table)
            found[table] = {
                "columns": tuple(sorted(
                    (c.name, c.type_code) for c in
                    connection.introspection.get_table_description(cursor, table))),
                "constraints": tuple(sorted(
                    (name, tuple(c["columns"]), c["unique"], c["primary_key"])
                    for name, c in constraints.items()
                    if not name.startswith("sqlite_autoindex")  # named by SQLite itself
                )),
            }
    return found


def test_a_rebuild_makes_what_a_reset_makes_with_the_migrated_schema_twice_over() -> None:
    some_payments(12)
    call_command("run_projection", "all", "--once", stdout=StringIO())
    migrated = schema()
    expected = snapshot()
    for _ in range(2):  # a second rebuild: the first one's names must be free again
        out = StringIO()
        call_command("run_projection", "all", "--once", "--rebuild", stdout=out)
        assert "payment: applied 36 events, checkpoint at 36 (rebuilt beside the live read" \
               " model and swapped in)" in out.getvalue()
        assert snapshot() == expected
        assert schema() == migrated
        assert not Rebuild.objects.exists()
        assert not shadow_exists(PaymentProjection.read_models)
    assert Checkpoint.objects.get(name="payment").rebuilt_at is not None


def test_a_runner_of_another_version_refuses_until_a_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    some_payments(3)
    call_command("run_projection", "all", "--once", stdout=StringIO())
    before = snapshot()
    monkeypatch.setattr(PaymentProjection, "version", 2)
    [payment] = some_payments(1)  # an event the refusing runner must not apply

    with pytest.raises(CommandError, match=r"built by projection version 1; this code is"
                                           r" version 2\. No event was applied"):
        call_command("run_projection", "payment", "--once", stdout=StringIO())
    assert snapshot()[0] == before[0]  # PaymentView untouched
    failed = Checkpoint.objects.get(name="payment")
    assert "run_projection payment --rebuild" in failed.failure
    table = StringIO()
    call_command("projection_status", stdout=table)
    assert "VERSION: payment's read model was built by projection version 1" in table.getvalue()

    call_command("run_projection", "payment", "--once", "--rebuild", stdout=StringIO())
    checkpoint = Checkpoint.objects.get(name="payment")
    assert (checkpoint.version, checkpoint.failure) == (2, "")
    assert PaymentView.objects.filter(payment_id=payment.id).exists()
    call_command("run_projection", "payment", "--once", stdout=StringIO())  # runs again


def test_a_reset_adopts_the_codes_version(monkeypatch: pytest.MonkeyPatch) -> None:
    some_payments(2)
    call_command("run_projection", "payment", "--once", stdout=StringIO())
    monkeypatch.setattr(PaymentProjection, "version", 3)
    call_command("run_projection", "payment", "--once", "--reset", stdout=StringIO())
    assert Checkpoint.objects.get(name="payment").version == 3
    assert PaymentView.objects.count() == 2


class _Stopper:
    """on_progress: stops the runner after its n-th batch."""

    def __init__(self, stop: threading.Event, after: int) -> None:
        self.stop, self.after, self.batches = stop, after, 0

    def __call__(self, progress: Progress) -> None:
        self.batches += 1
        if self.batches == self.after:
            self.stop.set()


def test_a_rebuild_stopped_half_way_leaves_the_live_model_and_the_next_starts_over() -> None:
    some_payments(10)
    call_command("run_projection", "all", "--once", stdout=StringIO())
    before = snapshot()
    stop = threading.Event()
    runner = ProjectionRunner(PaymentProjection(), get_event_store(), batch_size=4, stop=stop,
                              on_progress=_Stopper(stop, after=2))
    runner.run(once=True, rebuild=True)
    assert snapshot() == before
    rebuild = Rebuild.objects.get(name="payment")
    assert 0 < rebuild.position < get_event_store().head_position()
    [status] = projection_statuses(get_event_store(), ["payment"])
    assert status.rebuild is not None
    assert not status.rebuild.active
    assert status.as_dict()["rebuild"]["position"] == rebuild.position
    overview = _admin_client().get("/").content.decode()
    assert "A rebuild of payment stopped half way" in overview
    ready = Client().get("/readyz").json()
    assert [p["rebuild"]["active"] for p in ready["projections"] if p["name"] == "payment"] == [
        False]

    call_command("run_projection", "payment", "--once", "--rebuild", stdout=StringIO())
    assert snapshot() == before
    assert not Rebuild.objects.exists()


def test_status_and_the_overview_show_a_rebuild_in_progress() -> None:
    some_payments(6)
    call_command("run_projection", "all", "--once", stdout=StringIO())
    seen: dict[str, object] = {}

    def look(progress: Progress) -> None:
        if "status" not in seen:  # from inside the rebuild, after its first batch
            seen["status"] = projection_statuses(get_event_store(), ["payment"])[0]
            table = StringIO()
            call_command("projection_status", stdout=table)
            seen["table"] = table.getvalue()
            seen["overview"] = _admin_client().get("/").content.decode()

    ProjectionRunner(PaymentProjection(), get_event_store(), batch_size=5,
                     on_progress=look).run(once=True, rebuild=True)
    status = seen["status"]
    assert status.rebuild.active
    assert status.rebuild.position == 5
    assert re.search(r"rebuild: payment rebuilding version 1: \d+% \(5 of \d+\)",
                     str(seen["table"]))
    assert "Rebuilding payment</strong> (version 1) beside the live read model" in str(
        seen["overview"])


def test_a_live_runner_behind_the_swap_goes_on_from_the_new_checkpoint() -> None:
    """The live runner read position L; the rebuild swaps in tables at S > L; its next
    commit finds the checkpoint moved, sees the swap, and follows on from S."""
    some_payments(4)
    call_command("run_projection", "payment", "--once", stdout=StringIO())
    store = get_event_store()
    stop = threading.Event()
    release = threading.Event()
    first_batch_done = threading.Event()

    def hold_after_first_batch(progress: Progress) -> None:
        first_batch_done.set()
        release.wait(30)  # the live runner holds here, behind, while the rebuild swaps

    live = ProjectionRunner(PaymentProjection(), store, stop=stop,
                            on_progress=hold_after_first_batch)
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            live.run()
        except BaseException as e:
            errors.append(e)
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        some_payments(1)  # the live runner applies it, then holds
        assert first_batch_done.wait(30)
        some_payments(2)  # the rebuild takes these; the live runner is behind them
        call_command("run_projection", "payment", "--once", "--rebuild", stdout=StringIO())
        swapped_at = Checkpoint.objects.get(name="payment").position
        release.set()
        later = some_payments(1)
        head = store.head_position()  # every event of that payment, not only its first
        while Checkpoint.objects.get(name="payment").position < head:
            assert thread.is_alive()
            assert not errors, errors
            first_batch_done.wait(0.05)
    finally:
        release.set()
        stop.set()
        thread.join(30)
    assert not errors
    assert Checkpoint.objects.get(name="payment").position > swapped_at
    assert PaymentView.objects.get(payment_id=later[0].id).status == later[0].status
    expected = snapshot()
    call_command("run_projection", "payment", "--once", "--reset", stdout=StringIO())
    assert snapshot() == expected


def test_a_runner_of_the_old_version_stops_when_a_rebuild_of_a_new_one_swaps_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    some_payments(2)
    call_command("run_projection", "payment", "--once", stdout=StringIO())
    old = ProjectionRunner(PaymentProjection(), get_event_store())  # version 1
    position = old.checkpoint.read()
    monkeypatch.setattr(PaymentProjection, "version", 2)
    call_command("run_projection", "payment", "--once", "--rebuild", stdout=StringIO())
    some_payments(1)

    assert not old.checkpoint.move(position, position + 1)  # its next batch: refused
    with pytest.raises(VersionMismatch, match="built by projection version 2; this code"
                                              " is version 1"):
        old.run(once=True)


# --- 20,000 events, as processes: reads during a rebuild, SIGKILL half way ------------------


def _admin_client() -> Client:
    from django.contrib.auth import get_user_model

    client = Client()
    client.force_login(get_user_model().objects.get_or_create(
        username="ops", defaults={"is_staff": True, "is_superuser": True})[0])
    return client


def _database_url() -> str:
    """The test database, for a manage.py in a subprocess."""
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{database['NAME']}"
    login = quote(database["USER"], safe="") + (
        f":{quote(database['PASSWORD'], safe='')}" if database["PASSWORD"] else "")
    return f"postgres://{login}@{database['HOST']}:{database['PORT']}/{database['NAME']}"


def _manage(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": _database_url(),
           "EVENTSTORE_URI": settings.EVENTSTORE_URI, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "manage.py", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def twenty_thousand_events(tmp_path: Path) -> int:
    """A store of 20,000 events (bench/dataset.py's mix), projected; yields the
    PaymentView row count."""
    path = Path(settings.EVENTSTORE_URI.removeprefix("sqlite:///"))
    write_payments(path, events=20_000)
    call_command("run_projection", "all", "--once", stdout=StringIO())
    return PaymentView.objects.count()


def _row_counts(client: Client, token: str, last_page: int) -> dict[str, int]:
    """How many rows each interface shows: the API's count, the admin's, and the rows of
    the HTML list's page that was the last one before the rebuild."""
    api = client.get("/api/payments/", HTTP_AUTHORIZATION=f"Token {token}")
    admin = client.get("/admin/projections/paymentview/")
    page = client.get(f"/payments/?page={last_page}")
    for response in (api, admin, page):
        assert response.status_code == 200, (response.status_code, response.content[:300])
    admin_count = re.search(rb"(\d+) payment views?", admin.content)
    assert admin_count, admin.content[-2000:]
    return {"api": api.json()["count"], "admin": int(admin_count[1]),
            "page": page.content.count(b'class="payment-row"')}


@pytest.mark.timeout(600)
def test_reads_during_a_rebuild_of_20000_events_never_see_fewer_rows_and_never_fail(
    twenty_thousand_events: int,
) -> None:
    from rest_framework.authtoken.models import Token

    client = _admin_client()
    token = Token.objects.create(user=_admin_user()).key
    last_page = (twenty_thousand_events + 24) // 25
    before = _row_counts(client, token, last_page)
    assert before["api"] == before["admin"] == twenty_thousand_events
    assert before["page"] > 0

    rebuild = _manage("run_projection", "payment", "--rebuild", "--once", "--batch-size", "500")
    stop = threading.Event()
    live = ProjectionRunner(PaymentProjection(), get_event_store(), stop=stop)
    errors: list[BaseException] = []
    created: list[object] = []
    seen: list[dict[str, int]] = []

    def in_thread(work) -> threading.Thread:  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                work()
            except BaseException as e:
                errors.append(e)
                stop.set()
            finally:
                connection.close()
        thread = threading.Thread(target=run)
        thread.start()
        return thread

    def issue_commands() -> None:
        while rebuild.poll() is None and not stop.is_set():
            payment = services.create_payment(amount="5.00", currency="EUR")
            services.authorize_payment(payment_id=payment.id, bank_name="Rebuild Bank")
            created.append(payment.id)

    def read() -> None:
        reader = _admin_client()
        while rebuild.poll() is None and not stop.is_set():
            seen.append(_row_counts(reader, token, last_page))

    threads = [in_thread(live.run), in_thread(issue_commands), in_thread(read)]
    try:
        _out, err = rebuild.communicate(timeout=500)
    finally:
        if rebuild.poll() is None:
            rebuild.kill()
        for thread in threads[1:]:
            thread.join(60)
    assert rebuild.returncode == 0, err
    assert "rebuilt; the new read model is live" in err
    assert not errors, errors
    assert seen
    assert created
    assert all(counts[key] >= before[key] for counts in seen for key in before), [
        counts for counts in seen if any(counts[key] < before[key] for key in before)][:3]

    services.create_payment(amount="6.00", currency="EUR")  # the live runner follows on
    head = get_event_store().head_position()
    while Checkpoint.objects.get(name="payment").position < head:
        assert threads[0].is_alive()
        assert not errors, errors
        stop.wait(0.05)
    stop.set()
    threads[0].join(30)
    assert not errors, errors
    assert PaymentView.objects.filter(payment_id__in=created).count() == len(created)
    rebuilt = snapshot()
    call_command("run_projection", "payment", "--once", "--reset", stdout=StringIO())
    assert snapshot() == rebuilt


def _admin_user():  # type: ignore[no-untyped-def]
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username="ops")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM],
                         ids=["SIGKILL", "SIGTERM"])
def test_a_rebuild_killed_half_way_leaves_the_live_tables_unchanged(
    twenty_thousand_events: int, stop_signal: signal.Signals
) -> None:
    before = snapshot()
    rebuild = _manage("run_projection", "payment", "--rebuild", "--once", "--batch-size", "500")
    try:
        for _ in lines_until(rebuild, "applied 500 events", 5):
            pass
    finally:
        rebuild.send_signal(stop_signal)
        out, err = rebuild.communicate(timeout=30)
    if stop_signal == signal.SIGKILL:
        assert rebuild.returncode == -signal.SIGKILL
    else:  # the batch in hand is committed, and the command says where it stopped
        assert rebuild.returncode == 0, err
        assert "(the rebuild stopped before its swap: the live read model is as it was;" \
               " --rebuild again starts over)" in out
        assert "rebuild stopped at position" in err
        assert "the live read model is untouched" in err
    assert snapshot() == before
    left = Rebuild.objects.get(name="payment")
    assert 2500 <= left.position < 20_000
    [status] = projection_statuses(get_event_store(), ["payment"])
    assert status.rebuild is not None
    assert not status.rebuild.active

    call_command("run_projection", "payment", "--rebuild", "--once", stdout=StringIO())
    assert snapshot() == before
    assert not Rebuild.objects.exists()


def test_a_rebuild_from_eventstoredb_makes_what_a_reset_makes() -> None:
    """The rebuild reads through the store port: EventStoreDB's positions (commit
    positions, not dense) serve the shadow's checkpoint and the swap's catch-up alike."""
    from payments.eventstore.esdb import EventStoreDBEventStore
    from projections.projectors import DeclineProjection
    from tests.esdb_double import EventStoreDBDouble

    with EventStoreDBDouble() as double:
        store = EventStoreDBEventStore(double.uri, timeout=2.0)
        try:
            for n in range(6):
                payment = services.create_payment(amount=f"{n + 1}.00", currency="EUR",
                                                  store=store)
                if n % 2:
                    services.decline_payment(payment_id=payment.id, bank_name="Far Bank",
                                             decline_code="05", store=store)
                else:
                    services.authorize_payment(payment_id=payment.id, bank_name="Far Bank",
                                               store=store)
            for projection in (PaymentProjection, DeclineProjection):
                ProjectionRunner(projection(), store).run(once=True)
            expected = snapshot()
            for projection in (PaymentProjection, DeclineProjection):
                ProjectionRunner(projection(), store, batch_size=4).run(once=True, rebuild=True)
            head = Checkpoint.objects.get(name="payment").position
        finally:
            store.close()
    assert snapshot() == expected
    assert PaymentView.objects.count() == 6
    assert head == Checkpoint.objects.get(name="decline").position > 12
