"""Contention on one payment is resolved by waiting, not refusing (issue 11).

Within a process, commands on one payment take turns; between processes (here: two
stores on one embedded file), a lost race backs off and decides again. A 409 is then
the rules, the caller's expected version, or the command's deadline — nothing else.

Sixteen threads send 128 settles of 1.00 to a payment of 100.00: the balance (and the
limit of 100 settlements a payment takes) allows 100 of them, and exactly those are
accepted; the other 28 are refused by the rules (the payment is settled), none by a
conflict.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from payments import services
from payments.domain import MAX_SETTLEMENTS, Payment, PaymentStatus
from payments.events import stream_name
from payments.eventstore import AppendResult, EventStore, ExpectedVersion, NewEvent
from payments.eventstore.embedded import EmbeddedEventStore
from payments.eventstore.esdb import EventStoreDBEventStore
from tests.esdb_double import EventStoreDBDouble

pytestmark = pytest.mark.django_db(databases=[])

THREADS = 16
SETTLES_PER_THREAD = 8  # 128 settles of 1.00
ALLOWED = MAX_SETTLEMENTS  # settles of 1.00 on a payment of 100.00: balance and limit agree
AMOUNT = Decimal(ALLOWED)
LOST_RACE = "lost a race"


@pytest.fixture(params=["embedded", "esdb-double"])
def store(request: pytest.FixtureRequest, embedded_store: EventStore) -> Iterator[EventStore]:
    """Each adapter: the embedded SQLite store, and EventStoreDB's through the double."""
    if request.param == "embedded":
        yield embedded_store
        return
    with EventStoreDBDouble() as double:
        esdb = EventStoreDBEventStore(double.uri, timeout=5.0)
        yield esdb
        esdb.close()


@pytest.fixture
def generous_deadline(settings) -> None:
    """Long enough for a loaded CI machine: these tests are about waiting, not deadlines."""
    settings.COMMAND_DEADLINE = 60.0


def authorized(store: EventStore, amount: str) -> UUID:
    payment = services.create_payment(amount=amount, store=store)
    services.authorize_payment(payment_id=payment.id, bank_name="Bank", store=store)
    return payment.id


def settle_together(stores: Sequence[EventStore], payment_id: UUID) -> list[str]:
    """``THREADS`` threads (spread over ``stores``) start at once, each settling 1.00
    ``SETTLES_PER_THREAD`` times; each settle's outcome: "ok" or the error's name."""
    outcomes: list[str] = []
    barrier = threading.Barrier(THREADS)

    def worker(store: EventStore) -> None:
        barrier.wait()
        for _ in range(SETTLES_PER_THREAD):
            try:
                services.settle_payment(payment_id=payment_id, amount="1.00", store=store)
                outcomes.append("ok")
            except Exception as e:  # any failure shows in the outcomes
                outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=worker, args=(stores[n % len(stores)],))
               for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def lost_races(caplog: pytest.LogCaptureFixture) -> int:
    return sum(LOST_RACE in record.getMessage() for record in caplog.records)


@pytest.mark.usefixtures("generous_deadline")
def test_sixteen_threads_settling_one_payment_get_every_settle_the_balance_allows(
    store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    payment_id = authorized(store, f"{AMOUNT:.2f}")
    caplog.set_level(logging.INFO, logger="payments")

    outcomes = settle_together([store], payment_id)

    # The rest is refused by the rules (a settled payment takes no settle), not a conflict.
    assert Counter(outcomes) == {
        "ok": ALLOWED, "TransitionNotAllowed": THREADS * SETTLES_PER_THREAD - ALLOWED}
    # They took turns: none decided on a version that another had moved on from.
    assert lost_races(caplog) == 0
    found = services.find_payment(payment_id=payment_id, store=store)
    assert (found.payment.status, found.payment.settled_amount) == (
        PaymentStatus.SETTLED, AMOUNT)
    assert [e.version for e in found.history] == list(range(2 + ALLOWED))
    assert len(services._turns) == 0  # every turn was given back and forgotten


@pytest.mark.usefixtures("generous_deadline")
def test_two_stores_on_one_file_settling_one_payment_get_every_settle_the_balance_allows(
    two_views: tuple[EmbeddedEventStore, EmbeddedEventStore], caplog: pytest.LogCaptureFixture
) -> None:
    """Two stores are two processes' views: their races are lost, backed off, re-decided."""
    one, other = two_views
    payment_id = authorized(one, f"{AMOUNT:.2f}")
    # Each store remembers the payment, and `one` remembers it one settle behind:
    # its first settle below is sure to lose a race.
    services.settle_payment(payment_id=payment_id, amount="1.00", store=one)
    services.settle_payment(payment_id=payment_id, amount="1.00", store=other)
    caplog.set_level(logging.INFO, logger="payments")

    outcomes = settle_together([one, other], payment_id)

    allowed = ALLOWED - 2
    assert Counter(outcomes) == {
        "ok": allowed, "TransitionNotAllowed": THREADS * SETTLES_PER_THREAD - allowed}
    assert lost_races(caplog) >= 1
    for store in (one, other):
        payment = services.find_payment(payment_id=payment_id, store=store).payment
        assert (payment.status, payment.settled_amount) == (PaymentStatus.SETTLED, AMOUNT)


def test_waiting_for_a_turn_ends_at_the_deadline(
    settings, embedded_store: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    settings.COMMAND_DEADLINE = 0.05
    payment_id = authorized(embedded_store, "10.00")
    refused: list[Exception] = []

    def settle() -> None:
        try:
            services.settle_payment(payment_id=payment_id, store=embedded_store)
        except Exception as e:
            refused.append(e)

    # Another command holds the payment's turn for as long as this test wants.
    with services._turns.taking(embedded_store, payment_id, deadline=float("inf")):
        waiting = threading.Thread(target=settle)
        waiting.start()
        waiting.join()

    [error] = refused
    assert isinstance(error, services.ConcurrencyConflict)
    assert str(error) == (f"payment {payment_id} was busy with other commands until the"
                          " command's deadline (0.05 s) passed; try again")
    assert [r.outcome for r in caplog.records if hasattr(r, "outcome")][-1] == "conflict"
    assert len(embedded_store.read_stream(stream_name(payment_id))) == 2  # nothing appended
    # Once the turn is free, the same command goes through.
    settled = services.settle_payment(payment_id=payment_id, store=embedded_store)
    assert settled.status is PaymentStatus.SETTLED


class Beaten:
    """A store on which another process appends to the stream just before each of the
    first ``times`` appends (by default, every one)."""

    def __init__(self, store: EventStore, other_writes: Callable[[], object],
                 times: int | None = None) -> None:
        self.store = store
        self.other_writes = other_writes
        self.times = times
        self.appends = 0

    def read_stream(self, stream: str) -> list:
        return self.store.read_stream(stream)

    def append(self, stream: str, events: Sequence[NewEvent],
               expected_version: ExpectedVersion) -> AppendResult:
        self.appends += 1
        if self.times is None or self.appends <= self.times:
            self.other_writes()
        return self.store.append(stream, events, expected_version)


@pytest.fixture
def two_views(tmp_path: Path) -> Iterator[tuple[EmbeddedEventStore, EmbeddedEventStore]]:
    """Two stores on one file: what two processes see."""
    path = tmp_path / "events.sqlite3"
    one, other = EmbeddedEventStore(path), EmbeddedEventStore(path)
    yield one, other
    one.close()
    other.close()


def beaten_by(other: EventStore, payment_id: UUID, one: EventStore,
              times: int | None = None) -> Beaten:
    """``one``, on which ``other`` settles 0.01 of the payment before each append."""
    return Beaten(one, lambda: services.settle_payment(
        payment_id=payment_id, amount="0.01", store=other), times)


def settled_amounts(store: EventStore, payment_id: UUID) -> list[str]:
    history = services.find_payment(payment_id=payment_id, store=store).history
    return [e.data["amount"] for e in history if e.type == "PaymentSettled"]


@pytest.mark.usefixtures("generous_deadline")
def test_a_race_lost_to_another_process_is_decided_again_on_its_state(
    two_views: tuple[EmbeddedEventStore, EmbeddedEventStore], caplog: pytest.LogCaptureFixture
) -> None:
    one, other = two_views
    payment_id = authorized(one, "100.00")
    beaten = beaten_by(other, payment_id, one, times=3)
    caplog.set_level(logging.INFO, logger="payments")

    payment = services.settle_payment(payment_id=payment_id, amount="5.00",
                                      store=beaten)  # type: ignore[arg-type]

    assert (beaten.appends, lost_races(caplog)) == (4, 3)
    assert [r.getMessage() for r in caplog.records if LOST_RACE in r.getMessage()] == [
        f"settle {payment_id}: lost a race to another process (attempt {n}), backing off"
        for n in (1, 2, 3)]
    assert (payment.version, payment.settled_amount) == (5, Decimal("5.03"))
    assert settled_amounts(one, payment_id) == ["0.01", "0.01", "0.01", "5.00"]


def test_racing_another_process_ends_at_the_deadline(
    settings, two_views: tuple[EmbeddedEventStore, EmbeddedEventStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.COMMAND_DEADLINE = 0.05
    one, other = two_views
    payment_id = authorized(one, "100.00")
    beaten = beaten_by(other, payment_id, one)
    caplog.set_level(logging.INFO, logger="payments")

    with pytest.raises(services.ConcurrencyConflict) as conflict:
        services.settle_payment(payment_id=payment_id, amount="5.00",
                                store=beaten)  # type: ignore[arg-type]

    assert str(conflict.value) == (
        f"payment {payment_id} kept changing while settle was decided until the"
        " command's deadline (0.05 s) passed; try again")
    assert lost_races(caplog) == beaten.appends >= 1
    assert [r.outcome for r in caplog.records if hasattr(r, "outcome")][-1] == "conflict"
    # Only the other's settles are stored, never this command's.
    assert settled_amounts(one, payment_id) == ["0.01"] * beaten.appends


def test_a_store_that_lost_a_race_forgets_the_state_it_remembered(
    settings, two_views: tuple[EmbeddedEventStore, EmbeddedEventStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 16: the service remembers, per store, the state of the payments it commanded
    last. Once another process has appended, that memory is stale: the lost race must
    drop it, or the command (and every later one on that payment through this store)
    decides on the stale state again and again until its deadline."""
    settings.COMMAND_DEADLINE = 0.5  # the bug ends in a conflict after it: fail fast
    one, other = two_views
    payment_id = authorized(one, "100.00")  # `one` remembers the payment at version 1
    services.settle_payment(payment_id=payment_id, amount="10.00", store=other)  # version 2
    caplog.set_level(logging.INFO, logger="payments")

    settled = services.settle_payment(payment_id=payment_id, amount="20.00", store=one)

    assert lost_races(caplog) == 1  # decided once on what it remembered, then on the store
    assert (settled.status, settled.version, settled.settled_amount) == (
        PaymentStatus.PARTIALLY_SETTLED, 3, Decimal("30.00"))
    # What `one` remembers now is current: the next command goes through at once.
    refunded = services.refund_payment(payment_id=payment_id, amount="5.00", store=one)
    assert (refunded.status, refunded.version, refunded.refunded_amount) == (
        PaymentStatus.PARTIALLY_REFUNDED, 4, Decimal("5.00"))
    assert lost_races(caplog) == 1
    assert settled_amounts(other, payment_id) == ["10.00", "20.00"]


@pytest.mark.usefixtures("generous_deadline")
def test_an_expected_version_that_loses_a_race_is_refused_not_decided_again(
    two_views: tuple[EmbeddedEventStore, EmbeddedEventStore],
) -> None:
    one, other = two_views
    payment_id = authorized(one, "100.00")
    beaten = beaten_by(other, payment_id, one)
    with pytest.raises(services.ConcurrencyConflict, match="at version 2, not 1"):
        services.settle_payment(payment_id=payment_id, expected_version=1,
                                store=beaten)  # type: ignore[arg-type]
    assert beaten.appends == 1


def test_turns_are_forgotten_when_no_command_needs_them(embedded_store: EventStore) -> None:
    """The registry holds the turns in use, not one per payment ever commanded."""
    for _ in range(10_000):
        with services._turns.taking(embedded_store, uuid4(), deadline=float("inf")):
            pass
    assert len(services._turns) == 0


def test_an_expected_version_is_checked_against_the_store_not_what_was_remembered(
    two_views: tuple[EmbeddedEventStore, EmbeddedEventStore],
) -> None:
    """`one` remembers the payment a version behind; the caller's expected version is
    the store's current one, so the command goes through."""
    one, other = two_views
    payment_id = authorized(one, "100.00")  # `one` remembers version 1
    services.settle_payment(payment_id=payment_id, amount="10.00", store=other)  # version 2
    settled = services.settle_payment(payment_id=payment_id, amount="20.00",
                                      expected_version=2, store=one)
    assert (settled.version, settled.settled_amount) == (3, Decimal("30.00"))


def test_backing_off_pauses_a_random_while_up_to_a_ceiling_that_doubles_per_lost_race(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full jitter: a pause drawn from [0, ceiling], the ceiling 1 ms, 2 ms, 4 ms ...
    up to 50 ms, and never past the deadline. (The draw returns its upper end here.)"""
    draws: list[tuple[float, float]] = []
    pauses: list[float] = []

    def highest(low: float, high: float) -> float:
        draws.append((low, high))
        return high

    monkeypatch.setattr(services.random, "uniform", highest)
    monkeypatch.setattr(services.time, "sleep", pauses.append)
    payment_id = uuid4()
    for attempt in (1, 2, 3, 4, 5, 6, 7, 8, 1000):
        services._back_off(payment_id, "settle", attempt, services.time.monotonic() + 60)
    ceilings = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.050, 0.050, 0.050]
    assert draws == [(0, pytest.approx(c)) for c in ceilings]
    assert pauses == pytest.approx(ceilings)

    services._back_off(payment_id, "settle", 1, services.time.monotonic() + 0.0005)
    assert 0 < pauses[-1] <= 0.0005  # what is left until the deadline, not the 1 ms drawn


def test_the_recent_payments_are_the_latest_put_per_store(
    two_views: tuple[EmbeddedEventStore, EmbeddedEventStore],
) -> None:
    """The memory of recent payments is an LRU of bounded size, one per store."""
    one, other = two_views
    recent = services._RecentPayments(size=2)
    a, b, c, d = (Payment(id=uuid4(), status=PaymentStatus.PENDING, amount=Decimal("1.00"),
                          currency="EUR") for _ in range(4))
    for payment in (a, b, c):
        recent.put(one, payment)
    assert [recent.get(one, p.id) for p in (a, b, c)] == [None, b, c]  # a was the oldest
    recent.put(one, b)  # b is now the latest ...
    recent.put(one, d)  # ... so c goes
    assert [recent.get(one, p.id) for p in (b, c, d)] == [b, None, d]
    assert recent.get(other, b.id) is None
    recent.forget(one, b.id)
    assert recent.get(one, b.id) is None


def test_a_registry_of_turns_holds_a_turn_while_it_is_taken(embedded_store: EventStore) -> None:
    turns = services._StreamTurns()
    one, other = uuid4(), uuid4()
    with turns.taking(embedded_store, one, deadline=float("inf")):
        with turns.taking(embedded_store, other, deadline=float("inf")):
            assert len(turns) == 2
        assert len(turns) == 1
    assert len(turns) == 0
