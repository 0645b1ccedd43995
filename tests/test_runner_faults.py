"""The runner under faults, as real processes: SIGKILL mid catch-up, two runners at
once, SIGTERM, and the event store going away and coming back.

Each test builds its own database and event store files and runs ``manage.py`` in
subprocesses against them; the results are read straight from the database. The
database is a SQLite file, or, when the tests run on PostgreSQL (DATABASE_URL), a
fresh database on that server, dropped afterwards.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote
from uuid import uuid4

import pytest
from django.conf import settings
from django.db import DatabaseError, connection

from payments import services
from payments.eventstore import get_event_store
from payments.eventstore.embedded import EmbeddedEventStore
from payments.eventstore.esdb import EventStoreDBEventStore
from projections.models import Checkpoint, DeclineView
from projections.projectors import DeclineProjection
from projections.runner import Progress, ProjectionRunner
from tests.esdb_double import EventStoreDBDouble
from tests.test_runner import decline_rows, decline_some, declines_in_the_store

ROOT = Path(__file__).resolve().parent.parent


def _postgres() -> dict | None:
    """The test run's PostgreSQL settings, or None when it runs on SQLite."""
    database = settings.DATABASES["default"]
    return database if database["ENGINE"] == "django.db.backends.postgresql" else None


def _pg_admin(database: dict) -> object:
    import psycopg

    return psycopg.connect(
        host=database["HOST"] or None, port=database["PORT"] or None,
        user=database["USER"] or None, password=database["PASSWORD"] or None,
        dbname="postgres", autocommit=True,
    )


@dataclass
class Site:
    """A database and an event store of one test's own, driven through manage.py."""

    database: Path | str  # a SQLite file, or the name of a PostgreSQL database
    events: Path

    @property
    def database_url(self) -> str:
        pg = _postgres()
        if pg is None:
            return f"sqlite:///{self.database}"
        login = quote(pg["USER"], safe="") + (
            f":{quote(pg['PASSWORD'], safe='')}" if pg["PASSWORD"] else "")
        return f"postgres://{login}@{pg['HOST']}:{pg['PORT']}/{self.database}"

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "EVENTSTORE_URI": f"sqlite:///{self.events}",
            "PYTHONUNBUFFERED": "1",
        }

    def query(self, sql: str) -> list[tuple]:
        """Rows of a query on the site's database (the runners' own, not the test's)."""
        pg = _postgres()
        if pg is None:
            connection = sqlite3.connect(self.database)
            try:
                return connection.execute(sql).fetchall()
            finally:
                connection.close()
        import psycopg

        with psycopg.connect(self.database_url) as connection:
            return connection.execute(sql).fetchall()

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def snapshot(self) -> dict[str, list[tuple]]:
        return {
            table: self.query(f"SELECT {columns} FROM {table} ORDER BY 1, 2, 3")
            for table, columns in {
                "projections_paymentview": "payment_id, status, amount, settled_amount,"
                " refunded_amount, bank_name, decline_code, created_at, updated_at,"
                " version, position",
                "projections_declineview": "decline_code, bank_name, date, count",
                "projections_checkpoint": "name, position, 0",
            }.items()
        }

    def declines_counted(self) -> int:
        return self.query("SELECT sum(count) FROM projections_declineview")[0][0]


@pytest.fixture
def make_site() -> Iterator[Callable[[Path], Site]]:
    """Builds migrated sites; on PostgreSQL their databases are dropped afterwards."""
    pg = _postgres()
    created: list[str] = []

    def make(folder: Path) -> Site:
        folder.mkdir(parents=True, exist_ok=True)
        database: Path | str = folder / "db.sqlite3"
        if pg is not None:
            database = f"{pg['NAME']}_site_{uuid4().hex[:12]}"
            with _pg_admin(pg) as admin:
                admin.execute(f'CREATE DATABASE "{database}"')
            created.append(database)
        site = Site(database=database, events=folder / "events.sqlite3")
        migrated = site.manage("migrate", "--verbosity", "0")
        assert migrated.returncode == 0, migrated.stderr
        return site

    yield make
    if created:
        with _pg_admin(pg) as admin:
            for database in created:
                admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def write_payments(events: Path, count: int) -> int:
    """``count`` payments with a realistic mix of outcomes; returns the declines."""
    store = EmbeddedEventStore(events)
    declines = 0
    try:
        for n in range(count):
            payment = services.create_payment(amount="100.00", currency="EUR", store=store)
            if n % 7 == 3:
                services.decline_payment(payment_id=payment.id, bank_name=f"Bank {n % 3}",
                                         decline_code=("05", "51", "N7")[n % 3], store=store)
                declines += 1
                continue
            services.authorize_payment(payment_id=payment.id, bank_name=f"Bank {n % 3}",
                                       store=store)
            if n % 5:
                services.settle_payment(payment_id=payment.id, store=store)
                if n % 11 == 1:
                    services.refund_payment(payment_id=payment.id, amount="10.00", store=store)
    finally:
        store.close()
    return declines


def lines_until(process: subprocess.Popen[str], needle: str, times: int) -> Iterator[str]:
    """Read the runner's log until ``needle`` has appeared ``times`` times."""
    seen = 0
    assert process.stderr is not None
    for line in process.stderr:
        yield line
        if needle in line:
            seen += 1
            if seen == times:
                return
    raise AssertionError(f"the runner ended before {times} x {needle!r}")


@pytest.fixture
def site(make_site: Callable[[Path], Site], tmp_path: Path) -> Site:
    return make_site(tmp_path / "site")


@pytest.mark.timeout(300)
def test_sigkill_at_any_point_of_a_catch_up_loses_and_repeats_nothing(
    site: Site, make_site: Callable[[Path], Site], tmp_path: Path
) -> None:
    declines = write_payments(site.events, 1500)
    for kill_after in (1, 4, 9, 16, 25):
        runner = site.start("run_projection", "all", "--batch-size", "40")
        try:
            for _ in lines_until(runner, "applied", kill_after):
                pass
        finally:
            runner.send_signal(signal.SIGKILL)
            runner.wait(30)
        assert runner.returncode == -signal.SIGKILL
    finished = site.manage("run_projection", "all", "--once")
    assert finished.returncode == 0, finished.stderr

    reference = make_site(tmp_path / "reference")
    reference.events.unlink(missing_ok=True)
    os.link(site.events, reference.events)
    rebuilt = reference.manage("run_projection", "all", "--once", "--batch-size", "1000")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert site.snapshot() == reference.snapshot()
    assert site.declines_counted() == declines


# --- the same, deterministically: the checkpoint's move fails inside the batch ---------------


@contextmanager
def checkpoint_moves_refused(name: str, past: int) -> Iterator[None]:
    """A trigger in the read models' database refuses to move ``name``'s checkpoint past
    ``past``: the batch's transaction fails at the checkpoint, as it would if the process
    died or the database went away at that statement."""
    refuse = "the checkpoint may not move (a fault injected by the test)"
    when = f"NEW.name = '{name}' AND NEW.position > {int(past)}"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("CREATE FUNCTION refuse_checkpoint_move() RETURNS trigger"
                           f" LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{refuse}'; END $$")
            cursor.execute("CREATE TRIGGER refuse_checkpoint_move BEFORE UPDATE ON"
                           f" projections_checkpoint FOR EACH ROW WHEN ({when})"
                           " EXECUTE FUNCTION refuse_checkpoint_move()")
        else:
            cursor.execute("CREATE TRIGGER refuse_checkpoint_move BEFORE UPDATE ON"
                           f" projections_checkpoint WHEN {when}"
                           f" BEGIN SELECT RAISE(ABORT, '{refuse}'); END")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("DROP TRIGGER refuse_checkpoint_move ON projections_checkpoint")
                cursor.execute("DROP FUNCTION refuse_checkpoint_move()")
            else:
                cursor.execute("DROP TRIGGER refuse_checkpoint_move")


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_checkpoint_cannot_move_is_not_kept_and_is_counted_once_later() -> None:
    """Issue 16: exactly once, without the SIGKILL test's timing. The batch and the
    checkpoint are one transaction, so when the checkpoint's move fails, the batch's
    counts are not kept either; the next run applies the batch once. (Were the
    checkpoint moved in a transaction of its own after the read model's, the counts
    would stay while the checkpoint did not move, and the next run would count again.)"""
    decline_some("05 51", bank="Bank A")
    ProjectionRunner(DeclineProjection(), get_event_store()).run(once=True)
    before = decline_rows()
    checkpoint = Checkpoint.objects.get(name="decline").position
    assert before == declines_in_the_store()
    # One batch that adds to an existing row and creates new ones.
    decline_some("05 05 N7", bank="Bank A")
    decline_some("51", bank="Bank B")

    with checkpoint_moves_refused("decline", past=checkpoint), \
            pytest.raises(DatabaseError, match="the checkpoint may not move"):
        ProjectionRunner(DeclineProjection(), get_event_store()).run(once=True)

    assert decline_rows() == before  # no part of the batch was kept
    assert Checkpoint.objects.get(name="decline").position == checkpoint
    # A runner that then runs normally applies the batch, once.
    ProjectionRunner(DeclineProjection(), get_event_store()).run(once=True)
    assert decline_rows() == declines_in_the_store()
    assert sum(decline_rows().values()) == 6
    assert Checkpoint.objects.get(name="decline").position == get_event_store().head_position()


@pytest.mark.timeout(300)
def test_two_runners_of_one_projection_started_together_count_exactly(site: Site) -> None:
    declines = write_payments(site.events, 800)
    first = site.start("run_projection", "decline", "--once", "--batch-size", "10")
    second = site.start("run_projection", "decline", "--once", "--batch-size", "10")
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert (first.returncode, second.returncode) == (0, 0), outputs
    assert site.declines_counted() == declines
    logs = "".join(err for _, err in outputs)
    assert "another runner is active" in logs or "applied 0 events" in "".join(
        out for out, _ in outputs)


@pytest.mark.timeout(120)
def test_sigterm_commits_the_batch_in_hand_and_exits_zero(site: Site) -> None:
    write_payments(site.events, 300)
    runner = site.start("run_projection", "all", "--batch-size", "25")
    for _ in lines_until(runner, "applied", 3):
        pass
    runner.send_signal(signal.SIGTERM)
    stdout, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0
    checkpoints = dict(site.query("SELECT name, position FROM projections_checkpoint"))
    for name in ("payment", "decline"):
        assert f"{name}: applied" in stdout
        assert f"checkpoint at {checkpoints[name]}" in stdout
    # The rest is picked up from those checkpoints by the next run.
    assert site.manage("run_projection", "all", "--once").returncode == 0


@pytest.mark.timeout(120)
def test_embedded_store_unavailable_then_back(site: Site, tmp_path: Path) -> None:
    """The store's folder is a plain file, so the store cannot be opened; then it is back."""
    write_payments(site.events, 50)
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    env_events = blocked / "events.sqlite3"
    runner = subprocess.Popen(
        [sys.executable, "manage.py", "run_projection", "payment", "--once"], cwd=ROOT,
        env={**site.env, "EVENTSTORE_URI": f"sqlite:///{env_events}"}, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    for _ in lines_until(runner, "event store unavailable", 2):
        pass
    blocked.unlink()
    blocked.mkdir()
    os.link(site.events, env_events)
    stdout, _ = runner.communicate(timeout=60)
    assert runner.returncode == 0
    head = EmbeddedEventStore(site.events).head_position()
    assert f"checkpoint at {head}" in stdout
    assert site.query("SELECT count(*) FROM projections_paymentview") == [(50,)]


class _Seen(logging.Handler):
    """Keeps the log messages that mention ``needle``; ``wait_for(n)`` the n-th one."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.needle = needle
        self.messages: list[str] = []
        self.changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            with self.changed:
                self.messages.append(record.getMessage())
                self.changed.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: len(self.messages) >= count, timeout)


@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_eventstoredb_unavailable_then_back_loses_nothing() -> None:
    with EventStoreDBDouble() as double:
        store = EventStoreDBEventStore(double.uri, timeout=1.0)
        caught_up = threading.Condition()
        stop = threading.Event()

        def on_progress(progress: Progress) -> None:
            with caught_up:
                caught_up.notify_all()

        def decline(n: int) -> None:
            for _ in range(n):
                payment = services.create_payment(amount="5.00", currency="EUR", store=store)
                services.decline_payment(payment_id=payment.id, bank_name="Bank",
                                         decline_code="05", store=store)

        runner = ProjectionRunner(DeclineProjection(), store, stop=stop, on_progress=on_progress)
        seen = _Seen("event store unavailable")
        logging.getLogger("projections.runner").addHandler(seen)
        thread = threading.Thread(target=runner.run)
        thread.start()
        try:
            decline(5)
            with caught_up:
                assert caught_up.wait_for(lambda: runner.progress.applied == 10, timeout=20)
            double.stop()
            # Two failed retries: the wait has grown (0.5 s, then 1 s).
            assert seen.wait_for(2, 20), "the runner never noticed the store was gone"
            double.restart()
            decline(7)
            with caught_up:
                assert caught_up.wait_for(lambda: runner.progress.position
                                          >= store.head_position(), timeout=30)
            # A second outage starts again from the shortest wait, not where the first ended.
            outages = len(seen.messages)
            double.stop()
            assert seen.wait_for(outages + 1, 20)
            assert "retrying in 0.5 s" in seen.messages[outages]
            double.restart()
            decline(1)
            with caught_up:
                assert caught_up.wait_for(lambda: runner.progress.position
                                          >= store.head_position(), timeout=30)
        finally:
            stop.set()
            thread.join(30)
            logging.getLogger("projections.runner").removeHandler(seen)
            store.close()
        assert not thread.is_alive()
        assert list(DeclineView.objects.values_list("decline_code", "count")) == [("05", 13)]
