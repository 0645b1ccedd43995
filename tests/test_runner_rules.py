"""The runner's rules, in this process and fast: retries with backoff while the store is
away, the checkpoint past other categories' events, failures recorded and cleared, and
the progress it reports."""

from __future__ import annotations

import itertools
import logging
import re
import threading
import time
from typing import Any

import pytest

from payments import services
from payments.eventstore import (
    EventStore,
    EventStoreUnavailable,
    NewEvent,
    StreamState,
    get_event_store,
)
from payments.eventstore.esdb import EventStoreDBEventStore
from projections import runner as runner_module
from projections.locks import RETRY_SECONDS, try_lock, unlock
from projections.models import Checkpoint, DeclineView, PaymentView
from projections.projectors import DeclineProjection, PaymentProjection, ProjectionError
from projections.runner import (
    CHECKPOINT_INTERVAL,
    MAX_BACKOFF,
    CheckpointMoved,
    Progress,
    ProjectionRunner,
    clear_failure,
    record_failure,
)
from tests.esdb_double import EventStoreDBDouble
from tests.test_runner import decline_rows, decline_some, declines_in_the_store, following

pytestmark = pytest.mark.django_db(transaction=True)


class Waits(threading.Event):
    """A stop event that notes each wait the runner asks for and returns at once: the
    backoff is read, not slept."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.asked.append(timeout)
        return self.is_set()


class Outage:
    """The test's embedded store, unreachable for its next ``head_failures`` calls of
    ``head_position``, and then (``lost_subscriptions``) for the first read of as many
    subscriptions."""

    def __init__(self, store: EventStore, *, head_failures: int = 0,
                 lost_subscriptions: int = 0) -> None:
        self.store = store
        self.head_failures = head_failures
        self.lost_subscriptions = lost_subscriptions

    def head_position(self) -> int:
        if self.head_failures:
            self.head_failures -= 1
            raise EventStoreUnavailable("connection refused")
        return self.store.head_position()

    def subscribe(self, **options: Any) -> Any:
        subscription = self.store.subscribe(**options)
        if self.lost_subscriptions:
            self.lost_subscriptions -= 1
            subscription.get_many = _connection_reset  # type: ignore[method-assign]
        return subscription

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def _connection_reset(max_count: int, timeout: float) -> list:
    raise EventStoreUnavailable("connection reset")


def run_once(store: Any, projection: Any = None, **options: Any) -> ProjectionRunner:
    runner = ProjectionRunner(projection or PaymentProjection(), store, **options)
    runner.run(once=True)
    return runner


def test_the_runner_retries_a_store_that_is_away_doubling_its_wait_up_to_a_cap(
        caplog) -> None:
    payment = services.create_payment(amount="10.00")
    stop = Waits()
    with caplog.at_level(logging.WARNING, logger="projections.runner"):
        run_once(Outage(get_event_store(), head_failures=8), stop=stop)
    assert stop.asked == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF]
    assert MAX_BACKOFF == 30.0
    warnings = [r.getMessage() for r in caplog.records
                if r.name == "projections.runner" and r.levelno == logging.WARNING]
    assert warnings[:2] == [
        "projection payment: event store unavailable (connection refused); retrying in"
        " 0.5 s from the checkpoint",
        "projection payment: event store unavailable (connection refused); retrying in"
        " 1.0 s from the checkpoint",
    ]
    assert PaymentView.objects.get().payment_id == payment.id  # then it caught up


def test_once_the_store_answers_a_later_outage_waits_the_first_backoff_again() -> None:
    services.create_payment(amount="10.00")
    stop = Waits()
    store = Outage(get_event_store(), head_failures=2, lost_subscriptions=1)
    run_once(store, stop=stop)
    # Two refusals, then a subscription that opened and lost its connection.
    assert stop.asked == [0.5, 1.0, 0.5]
    assert PaymentView.objects.count() == 1


def test_a_runner_stopped_during_an_outage_ends_without_applying() -> None:
    services.create_payment(amount="10.00")
    stop = Waits()
    stop.set()
    ProjectionRunner(PaymentProjection(), Outage(get_event_store(), head_failures=1),
                     stop=stop).run()
    assert not PaymentView.objects.exists()


def foreign_events(count: int) -> int:
    """``count`` events of another category (another application on the same store);
    the position of the last one."""
    result = get_event_store().append(
        "shipping-1", [NewEvent("Shipped", b"{}") for _ in range(count)], StreamState.NO_STREAM)
    return result.position


def test_the_checkpoint_moves_past_other_categories_events_after_the_last_payment() -> None:
    services.create_payment(amount="10.00")
    payment_head = get_event_store().head_position()
    last = foreign_events(3)
    runner = run_once(get_event_store(), batch_size=1)
    assert Checkpoint.objects.get(name="payment").position == last > payment_head
    assert (runner.progress.applied, runner.progress.position) == (1, last)
    assert runner.progress.head >= runner.progress.position
    assert PaymentView.objects.get().position == payment_head


def test_progress_counts_the_events_applied_from_where_the_run_began() -> None:
    first = services.create_payment(amount="1.00")
    run_once(get_event_store())
    services.authorize_payment(payment_id=first.id, bank_name="Acme")
    services.create_payment(amount="2.00")
    seen: list[tuple[int, int, int, int]] = []

    def on_progress(progress: Progress) -> None:
        seen.append((progress.applied, progress.start, progress.position, progress.head))

    runner = run_once(get_event_store(), batch_size=1, on_progress=on_progress)
    head = get_event_store().head_position()
    assert seen == [(1, head - 2, head - 1, head), (2, head - 2, head, head)]
    assert runner.progress.applied == 2


def test_a_failure_is_recorded_without_moving_the_checkpoint() -> None:
    record_failure("payment", "projection 'payment' cannot apply the event at position 7")
    failed = Checkpoint.objects.get(name="payment")  # made, for a projection never run
    assert (failed.position, failed.failure) == (
        0, "projection 'payment' cannot apply the event at position 7")
    assert failed.failed_at is not None
    record_failure("payment", "again")
    again = Checkpoint.objects.get(name="payment")
    assert (again.failure, again.updated_at) == ("again", failed.updated_at)
    assert again.failed_at >= failed.failed_at


def test_a_runner_with_nothing_to_apply_clears_its_own_failure_only() -> None:
    services.create_payment(amount="10.00")
    run_once(get_event_store())
    record_failure("payment", "the payment runner stopped")
    record_failure("decline", "the decline runner stopped")
    run_once(get_event_store())  # caught up: nothing it failed on is left
    payment = Checkpoint.objects.get(name="payment")
    assert (payment.failure, payment.failed_at) == ("", None)
    assert Checkpoint.objects.get(name="decline").failure == "the decline runner stopped"
    clear_failure("decline")
    decline = Checkpoint.objects.get(name="decline")
    assert (decline.failure, decline.failed_at, decline.position) == ("", None, 0)


def test_clearing_a_projection_that_never_failed_leaves_its_checkpoint_as_it_was() -> None:
    services.create_payment(amount="10.00")
    run_once(get_event_store(), DeclineProjection())
    before = Checkpoint.objects.get(name="decline")
    clear_failure("decline")
    after = Checkpoint.objects.get(name="decline")
    assert (after.position, after.updated_at, after.failure, after.failed_at) == (
        before.position, before.updated_at, "", None)


def test_each_batch_is_logged_with_its_count_positions_and_duration(caplog) -> None:
    """The log line an operator reads, and its fields for LOG_FORMAT=json."""
    for amount in ("1.00", "2.00", "3.00"):
        services.create_payment(amount=amount)
    with caplog.at_level(logging.INFO, logger="projections.runner"):
        run_once(get_event_store(), batch_size=2)
    records = [r for r in caplog.records if r.name == "projections.runner"]
    assert records[0].getMessage() == "projection payment: following from position 0"
    batches = records[1:]
    assert [re.sub(r"in \d+\.\d ms$", "in … ms", r.getMessage()) for r in batches] == [
        "projection payment: applied 2 events, positions 1..2, in … ms",
        "projection payment: applied 1 events, positions 3..3, in … ms",
    ]
    assert [(r.projection, r.count, r.first_position, r.last_position) for r in batches] == [
        ("payment", 2, 1, 2), ("payment", 1, 3, 3)]
    for record in batches:  # milliseconds, to a tenth: a commit takes some, not minutes
        assert 0 < record.duration_ms < 60_000
        assert record.duration_ms == round(record.duration_ms, 1)


def test_a_projection_that_raises_stops_on_the_event_and_a_fixed_runner_clears_the_failure(
        monkeypatch, caplog) -> None:
    """The batch is applied again event by event: the events before the culprit are kept,
    the runner stops naming the culprit, and the next runner that moves past it clears
    the recorded failure."""
    payment = services.create_payment(amount="5.00")
    services.decline_payment(payment_id=payment.id, bank_name="Acme", decline_code="05")

    def apply(self, batch) -> None:
        raise RuntimeError("a bug nobody expected")

    monkeypatch.setattr(DeclineProjection, "apply", apply)
    with caplog.at_level(logging.WARNING, logger="projections.runner"), \
            pytest.raises(ProjectionError) as stopped:
        run_once(get_event_store(), DeclineProjection())
    assert str(stopped.value) == (
        f"projection 'decline' cannot apply the event at position 2 (stream"
        f" payments-{payment.id}, version 1, type PaymentDeclined):"
        f" RuntimeError: a bug nobody expected")
    assert isinstance(stopped.value.__cause__, RuntimeError)
    assert [r.getMessage() for r in caplog.records if r.name == "projections.runner"
            and r.levelno == logging.WARNING] == [
        "projection decline: a batch of 2 events failed (RuntimeError: a bug nobody"
        " expected); applying them one by one to find the event"]
    assert Checkpoint.objects.get(name="decline").position == 1  # the creation passed by
    record_failure("decline", str(stopped.value))  # as run_projection does

    monkeypatch.undo()  # the bug is fixed and the runner restarted
    run_once(get_event_store(), DeclineProjection())
    checkpoint = Checkpoint.objects.get(name="decline")
    assert (checkpoint.position, checkpoint.failure, checkpoint.failed_at) == (2, "", None)
    assert DeclineView.objects.get().count == 1


def test_a_following_runner_moves_past_other_events_at_most_once_a_second() -> None:
    """Live, with no event of its own to apply, the runner still moves its checkpoint
    past other categories' events (so a restart skips them), but not at every poll."""
    services.create_payment(amount="10.00")
    commits: list[float] = []

    def committed() -> None:
        commits.append(time.monotonic())

    with following(PaymentProjection(), on_commit=committed) as runner:
        runner.caught_up()
        first = foreign_events(2)
        runner.wait_until(lambda: runner.runner.progress.position == first, timeout=5)
        last = get_event_store().append("shipping-2", [NewEvent("Shipped", b"{}")],
                                        StreamState.NO_STREAM).position
        runner.wait_until(lambda: runner.runner.progress.position == last, timeout=5)
    assert Checkpoint.objects.get(name="payment").position == last
    assert len(commits) == 3  # the payment, then each time the others' events in one move
    assert commits[1] - commits[0] >= CHECKPOINT_INTERVAL
    assert commits[2] - commits[1] >= CHECKPOINT_INTERVAL


def test_a_following_runner_on_a_store_of_other_events_moves_past_them() -> None:
    last = foreign_events(2)
    with following(PaymentProjection()) as runner:
        runner.wait_until(lambda: runner.runner.progress.position == last, timeout=5)
    assert Checkpoint.objects.get(name="payment").position == last


def test_a_caught_up_runner_reports_the_checkpoint_as_its_position() -> None:
    services.create_payment(amount="10.00")
    head = get_event_store().head_position()
    run_once(get_event_store())
    runner = run_once(get_event_store())
    assert runner.progress.applied == 0
    assert (runner.progress.start, runner.progress.position, runner.progress.head) == (
        head, head, head)


def test_a_runner_that_lost_its_lock_rolls_the_batch_back_and_takes_the_lock_again(
        monkeypatch, caplog) -> None:
    """On PostgreSQL the lock is the session's: a reopened connection has lost it. The
    batch in hand is not committed, and the declines are counted exactly once."""
    decline_some("05 05 51", "Acme")
    answers = iter([False])  # the first check finds the lock gone, later ones held
    monkeypatch.setattr(runner_module, "holds", lambda lock: next(answers, True))
    with caplog.at_level(logging.WARNING, logger="projections.runner"):
        run_once(get_event_store(), DeclineProjection(), batch_size=4)
    assert [r.getMessage() for r in caplog.records if r.name == "projections.runner"
            and r.levelno == logging.WARNING] == [
        "projection decline: the database connection that held the runner's lock was"
        " closed; the batch in hand is rolled back and the lock taken again"]
    assert decline_rows() == declines_in_the_store()
    assert sum(decline_rows().values()) == 3
    assert Checkpoint.objects.get(name="decline").position == get_event_store().head_position()


class StopWhenIdle:
    """The test's store; the runner's stop is set the first time its subscription comes
    back with no event (a SIGTERM while the runner waits for live events)."""

    def __init__(self, store: EventStore, stop: threading.Event) -> None:
        self.store = store
        self.stop = stop

    def subscribe(self, **options: Any) -> Any:
        subscription = self.store.subscribe(**options)
        get_many = subscription.get_many

        def get_many_then_stop(max_count: int, timeout: float) -> list:
            batch = get_many(max_count, timeout)
            if not batch:
                self.stop.set()
            return batch

        subscription.get_many = get_many_then_stop  # type: ignore[method-assign]
        return subscription

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def test_a_runner_stopped_while_idle_keeps_what_it_looked_past() -> None:
    """Stopped before a second passed, it still moves its checkpoint past the other
    categories' events it has read, so the next run does not read them again."""
    services.create_payment(amount="10.00")
    run_once(get_event_store())
    last = foreign_events(2)
    stop = threading.Event()
    ProjectionRunner(PaymentProjection(), StopWhenIdle(get_event_store(), stop),
                     stop=stop).run()
    assert Checkpoint.objects.get(name="payment").position == last


def test_on_eventstoredb_the_checkpoint_moves_past_other_events_between_payments(
        caplog) -> None:
    """EventStoreDB says how far it looked with checkpoints, between events: a runner
    that has no event to apply moves its checkpoint to the server's checkpoint."""
    with EventStoreDBDouble() as double, \
            EventStoreDBEventStore(double.uri, timeout=5.0) as store, \
            caplog.at_level(logging.DEBUG, logger="projections.runner"):
        services.create_payment(amount="10.00", store=store)
        double.load("shipping", "Shipped", b"{}", 3000, streams=10)
        services.create_payment(amount="11.00", store=store)
        last = double.load("shipping-later", "Shipped", b"{}", 3000, streams=10)
        run_once(store, batch_size=1)
    assert Checkpoint.objects.get(name="payment").position == last
    assert PaymentView.objects.count() == 2
    assert [r.getMessage() for r in caplog.records if r.name == "projections.runner"][-1] \
        == f"projection payment: checkpoint moved to {last} past other events"


def test_a_batch_that_fails_only_as_a_whole_is_applied_event_by_event(monkeypatch) -> None:
    """Event by event, every event applies: all are kept, and the last one's commit
    also moves the checkpoint past the other categories' events read with them."""
    made = [services.create_payment(amount=f"{n}.00") for n in (1, 2, 3)]
    last = foreign_events(2)
    original = PaymentProjection.apply

    def apply(self, batch) -> None:
        if len(batch) > 1:
            raise ValueError("the database refused a statement this large")
        original(self, batch)

    monkeypatch.setattr(PaymentProjection, "apply", apply)
    runner = run_once(get_event_store())
    assert set(PaymentView.objects.values_list("payment_id", flat=True)) == {
        payment.id for payment in made}
    assert Checkpoint.objects.get(name="payment").position == last
    assert runner.progress.applied == 3


def test_an_event_of_a_type_no_code_knows_stops_the_runner_after_the_ones_before() -> None:
    services.create_payment(amount="1.00")
    unknown = get_event_store().append("payments-00000000-0000-4000-8000-000000000000",
                                       [NewEvent("PaymentVoided", b"{}")], StreamState.NO_STREAM)
    services.create_payment(amount="2.00")
    runner = ProjectionRunner(PaymentProjection(), get_event_store())
    with pytest.raises(ProjectionError) as stopped:
        runner.run(once=True)
    assert str(stopped.value) == (
        f"projection 'payment' cannot apply the event at position {unknown.position} (stream"
        " payments-00000000-0000-4000-8000-000000000000, version 0, type PaymentVoided):"
        " unknown event type 'PaymentVoided'")
    assert runner.progress.applied == 1
    assert Checkpoint.objects.get(name="payment").position == unknown.position - 1


def test_data_that_does_not_decode_stops_the_runner_naming_the_reason() -> None:
    bad = get_event_store().append("payments-00000000-0000-4000-8000-000000000000",
                                   [NewEvent("PaymentCreated", b"[]")], StreamState.NO_STREAM)
    with pytest.raises(ProjectionError) as stopped:
        run_once(get_event_store())
    assert str(stopped.value) == (
        f"projection 'payment' cannot apply the event at position {bad.position} (stream"
        " payments-00000000-0000-4000-8000-000000000000, version 0, type PaymentCreated):"
        " bad PaymentCreated data: not a JSON object")


def test_a_runner_whose_checkpoint_another_runner_moved_stops_and_counts_nothing() -> None:
    decline_some("05 51", "Acme")

    def another_runner_commits(progress: Progress) -> None:
        Checkpoint.objects.filter(name="decline").update(position=progress.position + 1)

    with pytest.raises(CheckpointMoved) as stopped:
        run_once(get_event_store(), DeclineProjection(), batch_size=1,
                 on_progress=another_runner_commits)
    assert str(stopped.value) == (
        "projection 'decline': the checkpoint is no longer at 1; is another runner active?")
    assert sum(decline_rows().values()) == 0  # the creation passed; the decline was not


def test_each_move_of_the_checkpoint_stamps_its_time() -> None:
    services.create_payment(amount="1.00")
    run_once(get_event_store())
    before = Checkpoint.objects.get(name="payment").updated_at
    services.create_payment(amount="2.00")
    run_once(get_event_store())
    assert Checkpoint.objects.get(name="payment").updated_at > before


def test_the_stores_own_records_pass_the_runner_by() -> None:
    """A hard-deleted stream leaves EventStoreDB's ``$streamDeleted`` record in $all."""
    with EventStoreDBDouble() as double, \
            EventStoreDBEventStore(double.uri, timeout=5.0) as store:
        kept = services.create_payment(amount="10.00", store=store)
        deleted = services.create_payment(amount="20.00", store=store)
        double.tombstone(f"payments-{deleted.id}")
        run_once(store)
        assert Checkpoint.objects.get(name="payment").position >= store.head_position()
    assert kept.id in set(PaymentView.objects.values_list("payment_id", flat=True))


class StoppedWhileWaiting(Waits):
    """A SIGTERM that arrives during the first wait."""

    def wait(self, timeout: float | None = None) -> bool:
        self.set()
        return super().wait(timeout)


def test_a_runner_stopped_while_another_holds_the_lock_applies_nothing() -> None:
    services.create_payment(amount="1.00")
    held = try_lock("payment")  # another runner (this test's own connection)
    assert held is not None
    try:
        stop = StoppedWhileWaiting()
        ProjectionRunner(PaymentProjection(), get_event_store(), stop=stop).run(once=True)
    finally:
        unlock("payment", held)
    assert stop.asked == [RETRY_SECONDS]
    assert not PaymentView.objects.exists()


def test_a_reset_whose_lock_was_lost_clears_the_read_model_once(monkeypatch, caplog) -> None:
    """The rebuild resumes from its own checkpoint after taking the lock again."""
    decline_some("05 51", "Acme")
    run_once(get_event_store(), DeclineProjection())
    answers = iter([True, False])  # the reset's check, then the first batch's
    monkeypatch.setattr(runner_module, "holds", lambda lock: next(answers, True))
    with caplog.at_level(logging.INFO, logger="projections.runner"):
        ProjectionRunner(DeclineProjection(), get_event_store(), batch_size=2).run(
            once=True, reset=True)
    assert [r.getMessage() for r in caplog.records
            if r.name == "projections.runner" and "cleared" in r.getMessage()] == [
        "projection decline: read model and checkpoint cleared"]
    assert decline_rows() == declines_in_the_store()


# --- an EventStoreDB server that sends no checkpoints ------------------------------------


class _Unplaced:
    """A subscription that never says how far it looked (``position`` stays None)."""

    position = None

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription

    def __enter__(self) -> _Unplaced:
        self.subscription.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.subscription.__exit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.subscription, name)


class WithoutCheckpoints:
    """The test's store as an EventStoreDB server that sends no checkpoints would be:
    its head is the log's last event of any category (as ``$all``'s is), and its
    subscriptions report no position. The runner must still see that it caught up."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def head_position(self) -> int:
        return max(self.store.head_position(), self.store.head_position(category="shipping"))

    def subscribe(self, **options: Any) -> _Unplaced:
        return _Unplaced(self.store.subscribe(**options))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def run_in_a_thread(runner: ProjectionRunner, *, once: bool) -> list[BaseException]:
    """Run it; a runner that does not end by itself within 10 s is stopped and named."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            runner.run(once=once)
        except BaseException as e:  # reported by the test
            errors.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    ended = not thread.is_alive()
    runner.stop.set()
    thread.join(10)
    assert ended, "the runner did not end by itself"
    return errors


def test_once_without_checkpoints_ends_when_no_payment_is_left_to_read() -> None:
    services.create_payment(amount="10.00")
    payment_head = get_event_store().head_position()
    foreign_events(2)  # the log's head is past the last payment
    runner = ProjectionRunner(PaymentProjection(), WithoutCheckpoints(get_event_store()))
    assert run_in_a_thread(runner, once=True) == []
    assert runner.progress.applied == 1
    assert Checkpoint.objects.get(name="payment").position == payment_head
    assert PaymentView.objects.count() == 1


def test_stopped_without_a_position_from_the_store_it_ends_cleanly() -> None:
    services.create_payment(amount="10.00")
    payment_head = get_event_store().head_position()
    stop = threading.Event()
    store = StopWhenIdle(WithoutCheckpoints(get_event_store()), stop)
    runner = ProjectionRunner(PaymentProjection(), store, stop=stop)  # type: ignore[arg-type]
    assert run_in_a_thread(runner, once=False) == []
    assert Checkpoint.objects.get(name="payment").position == payment_head


def test_a_batchs_duration_is_logged_in_milliseconds_to_a_tenth(caplog, monkeypatch) -> None:
    """Every batch takes 12.34 ms on the runner's clock here: the line says 12.3."""
    services.create_payment(amount="1.00")
    ticks = itertools.count(100.0, 0.01234)
    monkeypatch.setattr(runner_module.time, "perf_counter", lambda: next(ticks))
    with caplog.at_level(logging.INFO, logger="projections.runner"):
        run_once(get_event_store())
    batch = [r for r in caplog.records if r.name == "projections.runner"][-1]
    assert batch.getMessage() == "projection payment: applied 1 events, positions 1..1, in 12.3 ms"
    assert batch.duration_ms == 12.3
