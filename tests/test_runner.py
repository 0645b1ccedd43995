"""The projection runner in this process: catch-up then live, --once, --reset, poison."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from uuid import uuid4

import pytest
from django.core.management import CommandError, call_command
from django.db import close_old_connections, connection

from payments import services
from payments.events import PaymentDeclined, decode_recorded, stream_name
from payments.eventstore import NewEvent, StreamState, get_event_store
from projections.locks import is_locked, try_lock, unlock
from projections.models import Checkpoint, DeclineView, PaymentView
from projections.projectors import DeclineProjection, PaymentProjection, Projection
from projections.runner import Progress, ProjectionRunner

pytestmark = pytest.mark.django_db(transaction=True)


def snapshot() -> tuple[list[tuple], list[tuple], list[tuple]]:
    """Everything the projections wrote, in a comparable form."""
    payments = sorted(PaymentView.objects.values_list(
        "payment_id", "status", "amount", "currency", "settled_amount", "refunded_amount",
        "bank_name", "decline_code", "created_at", "updated_at", "version", "position"))
    declines = sorted(DeclineView.objects.values_list("decline_code", "bank_name", "date", "count"))
    checkpoints = sorted(Checkpoint.objects.values_list("name", "position"))
    return payments, declines, checkpoints


def some_payments(n: int = 3) -> list:
    made = []
    for i in range(n):
        payment = services.create_payment(amount=f"{10 + i}.00")
        services.authorize_payment(payment_id=payment.id, bank_name=f"Bank {i % 2}")
        if i % 3 == 2:
            made.append(services.decline_payment(payment_id=payment.id, bank_name="Bank 9",
                                                 decline_code="05"))
        else:
            made.append(services.settle_payment(payment_id=payment.id))
    return made


def run_projection(*args: str) -> str:
    out = StringIO()
    call_command("run_projection", *args, stdout=out)
    return out.getvalue()


class Following:
    """A runner in a thread of its own; ``wait_until`` waits on its commits."""

    def __init__(self, runner: ProjectionRunner, reached: threading.Condition) -> None:
        self.runner = runner
        self.reached = reached

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        with self.reached:
            assert self.reached.wait_for(predicate, timeout=timeout)

    def caught_up(self) -> None:
        self.wait_until(lambda: self.runner.progress.position
                        >= self.runner.store.head_position())


@contextmanager
def following(
    projection: Projection,
    *,
    batch_size: int = 1000,
    on_commit: Callable[[], None] | None = None,
) -> Iterator[Following]:
    """Run ``projection`` in a thread for the block, then stop it and check it ended."""
    reached = threading.Condition()
    stop = threading.Event()

    def on_progress(progress: Progress) -> None:
        if on_commit is not None:
            on_commit()
        with reached:
            reached.notify_all()

    runner = ProjectionRunner(projection, get_event_store(), batch_size=batch_size, stop=stop,
                              on_progress=on_progress)

    def run() -> None:
        try:
            runner.run()
        finally:
            connection.close()  # a thread's connection is its own to close

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield Following(runner, reached)
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_the_runner_catches_up_then_follows_live_appends() -> None:
    some_payments(3)
    with following(PaymentProjection()) as runner:
        runner.caught_up()
        assert PaymentView.objects.count() == 3
        live = services.create_payment(amount="77.00")
        runner.caught_up()
        assert PaymentView.objects.get(payment_id=live.id).amount == live.amount
    assert Checkpoint.objects.get(name="payment").position == get_event_store().head_position()


def test_a_runner_in_a_thread_holds_the_lock_on_its_own_connection_and_releases_it() -> None:
    some_payments(2)
    with following(PaymentProjection()) as runner:
        runner.wait_until(lambda: PaymentView.objects.count() == 2)
        assert is_locked("payment")
        assert try_lock("payment") is None  # this thread's connection is another session
        assert not is_locked("decline")
    assert not is_locked("payment")
    lock = try_lock("payment")
    assert lock is not None
    unlock("payment", lock)


def test_a_runner_keeps_its_connection_and_lock_for_its_whole_life() -> None:
    """Persistent connections are the request cycle's business: only close_old_connections,
    at a request's start and end, closes an old connection (CONN_MAX_AGE) or arms a health
    check (CONN_HEALTH_CHECKS). A runner serves no request, so its connection, and on
    PostgreSQL the session that holds its lock, lasts as long as the runner, however long
    past its maximum age."""
    for _ in range(3):
        some_payments(3)
    sessions: list[object] = []

    def record_the_session() -> None:
        if not sessions:  # as if CONN_MAX_AGE were 0 and a health check were due
            connection.close_at = time.monotonic() - 1
            connection.health_check_enabled = True
        sessions.append(connection.connection)

    with following(DeclineProjection(), batch_size=2, on_commit=record_the_session) as runner:
        runner.caught_up()
        assert is_locked("decline")
    assert len(sessions) > 5
    assert all(session is sessions[0] for session in sessions)


def as_if_max_age_passed() -> None:
    """What close_old_connections does at a request's start or end past CONN_MAX_AGE."""
    connection.close_at = time.monotonic() - 1
    close_old_connections()
    assert connection.connection is None


def as_if_a_health_check_failed() -> None:
    """A health check armed (as close_old_connections arms it with CONN_HEALTH_CHECKS)
    that finds the connection unusable: the next query closes it and opens another."""
    connection.health_check_enabled = True
    connection.health_check_done = False
    verdicts = iter([False])
    connection.is_usable = lambda: next(verdicts, True)


@pytest.mark.parametrize("closer", [as_if_max_age_passed, as_if_a_health_check_failed])
def test_a_runner_whose_connection_is_closed_under_it_commits_nothing_unlocked(
        caplog, closer: Callable[[], None]) -> None:
    """Should the runner's connection be closed and reopened under it, on PostgreSQL the
    session's advisory lock goes with it (SQLite's is a file lock, held by the process).
    The runner notices inside the next batch's transaction, rolls that batch back, takes
    the lock again and counts exactly."""
    for _ in range(3):
        some_payments(3)  # one decline in each
    sessions: list[object] = []

    def close_the_connection_once() -> None:
        sessions.append(connection.connection)
        if len(sessions) == 1:
            closer()

    with following(DeclineProjection(), batch_size=4,
                   on_commit=close_the_connection_once) as runner:
        runner.caught_up()
    assert len(sessions) > 1
    assert sessions[-1] is not sessions[0]  # it was closed and reopened
    assert list(DeclineView.objects.values_list("decline_code", "bank_name", "count")) == [
        ("05", "Bank 9", 3)]
    assert Checkpoint.objects.get(name="decline").position == get_event_store().head_position()
    if connection.vendor == "postgresql":
        assert "the database connection that held the runner's lock was closed" in caplog.text
    assert not is_locked("decline")


def test_once_catches_up_and_exits() -> None:
    made = some_payments(6)
    output = run_projection("all", "--once")
    assert "payment: applied 18 events" in output
    for payment in made:
        row = PaymentView.objects.get(payment_id=payment.id)
        assert (row.status, row.settled_amount, row.version) == (
            payment.status, payment.settled_amount, payment.version)
    assert list(DeclineView.objects.values_list("decline_code", "bank_name", "count")) == [
        ("05", "Bank 9", 2)]
    assert "applied 0 events" in run_projection("decline", "--once")


def test_a_reset_rebuild_equals_the_incremental_build() -> None:
    for _ in range(3):
        some_payments(4)
        run_projection("all", "--once", "--batch-size", "5")
    incremental = snapshot()
    output = run_projection("all", "--reset", "--once", "--batch-size", "7")
    assert "applied 36 events" in output
    assert snapshot() == incremental


def decline_some(codes: str, bank: str) -> None:
    """One declined payment per decline code in ``codes`` (space-separated)."""
    for code in codes.split():
        payment = services.create_payment(amount="5.00", currency="EUR")
        services.decline_payment(payment_id=payment.id, bank_name=bank, decline_code=code)


def decline_rows() -> dict[tuple, int]:
    return {(r.decline_code, r.bank_name, r.date): r.count for r in DeclineView.objects.all()}


def declines_in_the_store() -> dict[tuple, int]:
    """DeclineView as the design defines it: a count over the stored events."""
    declined = [decode_recorded(r) for r in get_event_store().read_all()
                if r.type == PaymentDeclined.type_name]
    return dict(Counter((e.decline_code, e.bank_name, e.occurred_at.date())
                        for e in declined if isinstance(e, PaymentDeclined)))


def test_a_runner_restarted_from_its_checkpoint_counts_each_decline_once() -> None:
    """Issue 16: a runner resumes *after* its checkpoint, the last event it applied. Here
    that event is always a decline, so a subscription that started at the checkpoint
    (re-reading it) would count it again at each restart: the decline counts show it,
    where the payment projection's idempotent re-apply would not."""
    store = get_event_store()
    rounds = [("05 51", "Bank A"), ("05 N7 05", "Bank A"), ("51", "Bank B"), ("05", "Bank A")]
    for codes, bank in rounds:
        decline_some(codes, bank)
        run_projection("decline", "--once", "--batch-size", "3")
        assert Checkpoint.objects.get(name="decline").position == store.head_position()
        assert decline_rows() == declines_in_the_store()
    assert sum(decline_rows().values()) == 7
    # Restarted with nothing new: nothing is applied again.
    run_projection("decline", "--once")
    assert decline_rows() == declines_in_the_store()


def test_a_poison_event_stops_the_runner_naming_it() -> None:
    some_payments(1)
    store = get_event_store()
    good_head = store.head_position()
    bad_stream = stream_name(uuid4())
    store.append(bad_stream, [NewEvent(type="PaymentVoided", data=b"{}")], StreamState.NO_STREAM)
    services.create_payment(amount="1.00")  # after the poison: must not be applied
    with pytest.raises(CommandError) as stopped:
        run_projection("payment", "--once")
    message = str(stopped.value)
    assert "projection 'payment'" in message
    assert f"position {good_head + 1}" in message
    assert bad_stream in message
    assert "PaymentVoided" in message
    # Everything before the poison is applied and checkpointed; nothing after it.
    assert Checkpoint.objects.get(name="payment").position == good_head
    assert PaymentView.objects.count() == 1


def test_bad_data_stops_the_projections_that_read_that_type() -> None:
    store = get_event_store()
    store.append(stream_name(uuid4()), [NewEvent(type="PaymentCreated", data=b'{"amount": 1}')],
                 StreamState.NO_STREAM)
    with pytest.raises(CommandError, match="type PaymentCreated"):
        run_projection("payment", "--once")
    assert Checkpoint.objects.get(name="payment").position == 0
    # The decline projection reads only declines: it passes the event by.
    run_projection("decline", "--once")
    assert Checkpoint.objects.get(name="decline").position == store.head_position()
    store.append(stream_name(uuid4()), [NewEvent(type="PaymentDeclined", data=b"[]")],
                 StreamState.NO_STREAM)
    with pytest.raises(CommandError, match="type PaymentDeclined"):
        run_projection("decline", "--once")


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(CommandError, match="at least 1"):
        run_projection("all", "--once", "--batch-size", "0")


def test_the_rebuild_progress_bar_shows_events_rate_and_eta() -> None:
    from projections.management.commands.run_projection import progress_bar

    progress = Progress(applied=2_500, start=1_000, position=3_500, head=11_000)
    line = progress_bar("payment", progress, rate=1_250.0, width=10)
    assert line.startswith("payment  25% |██        | ")
    assert "2,500 events" in line
    assert "1,250 ev/s" in line
    assert "ETA 00:00:06" in line  # 7,500 events to go at 1,250 a second
