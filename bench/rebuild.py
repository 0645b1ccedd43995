"""Projection rebuild throughput and live latency, against the original approach.

    .venv/bin/python bench/rebuild.py [--events 100000] [--live 300]

Writes about N events (most payments settle, some refund, ~15% are declined, over
several banks and codes) into a fresh embedded store, then, in a fresh SQLite
database:

* rebuilds both projections with the runner (batches of 1000, one transaction
  each, checkpoint inside it): at once, each in a process of its own as deployed,
  and one after the other in this process; prints events/s for both;
* rebuilds them the way the original sample did — one event per transaction, the
  checkpoint saved after each — on a slice of the events, and prints the ratio;
* follows live: appends payments one at a time through the command service while
  the payment runner follows, and prints the latency from append to committed
  PaymentView row (median, p99).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_tmp = tempfile.TemporaryDirectory(dir=ROOT / "var")
os.environ["DATABASE_URL"] = f"sqlite:///{_tmp.name}/db.sqlite3"
os.environ["EVENTSTORE_URI"] = f"sqlite:///{_tmp.name}/events.sqlite3"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "paymentsite.settings")
os.environ.setdefault("SECRET_KEY", "bench-only")
os.environ["DEBUG"] = "false"  # as in production: no query log

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from payments import services  # noqa: E402
from payments.domain import apply, create_payment  # noqa: E402
from payments.events import PaymentEvent, encode_data, encode_metadata, stream_name  # noqa: E402
from payments.eventstore import NewEvent, StreamState, get_event_store  # noqa: E402
from projections.models import PaymentView  # noqa: E402
from projections.projectors import DeclineProjection, PaymentProjection  # noqa: E402
from projections.runner import Progress, ProjectionRunner  # noqa: E402

BANKS = ["Northbank", "Eastbank", "Southbank", "Westbank", "Midbank"]
CODES = ["05", "51", "54", "N7", "14", "61"]


def life_cycle(n: int, at: datetime) -> list[PaymentEvent]:
    """The events of payment number ``n``: 15% declined, a tenth of the rest refunded."""
    bank = BANKS[n % len(BANKS)]
    created = create_payment(payment_id=uuid4(), amount=f"{10 + n % 990}.{n % 100:02d}",
                             currency="EUR", occurred_at=at)
    events: list[PaymentEvent] = [created]
    payment = apply(None, created, 0)

    def record(event: PaymentEvent) -> None:
        nonlocal payment
        events.append(event)
        payment = apply(payment, event, len(events) - 1)

    if n % 20 < 3:
        record(payment.decline(bank_name=bank, decline_code=CODES[n % len(CODES)],
                               occurred_at=at))
    else:
        record(payment.authorize(bank_name=bank, occurred_at=at))
        record(payment.settle(occurred_at=at))
        if n % 10 == 7:
            record(payment.refund(amount=Decimal("5.00"), occurred_at=at))
    return events


def write_events(target: int) -> int:
    """Payment life cycles, one append (one commit) per payment; returns the event count."""
    store = get_event_store()
    written, n = 0, 0
    start = datetime(2026, 11, 1, tzinfo=UTC)
    while written < target:
        events = life_cycle(n, start + timedelta(seconds=n * 37))
        metadata = encode_metadata(correlation_id=uuid4(), causation_id=uuid4())
        store.append(
            stream_name(events[0].payment_id),
            [NewEvent(type=e.type_name, data=encode_data(e), metadata=metadata) for e in events],
            StreamState.NO_STREAM,
        )
        written += len(events)
        n += 1
    return written


def rebuild(batch_size: int, limit_events: int | None = None) -> tuple[int, float]:
    """Rebuild both projections, one after the other; (events applied, seconds)."""
    store = get_event_store()
    stop = threading.Event()
    total = 0
    started = time.perf_counter()
    for projection in (PaymentProjection(), DeclineProjection()):
        runner = ProjectionRunner(projection, store, batch_size=batch_size, stop=stop)
        if limit_events is not None:
            # Stop once the slice is done: the original approach is too slow for all.
            def enough(progress: Progress, runner: ProjectionRunner = runner) -> None:
                if progress.applied >= limit_events:
                    runner.stop.set()

            runner.on_progress = enough
        runner.run(once=True, reset=True)
        total += runner.progress.applied
        stop.clear()
    return total, time.perf_counter() - started


def rebuild_in_processes(batch_size: int) -> float:
    """Rebuild both projections at once, each in a process of its own (as deployed:
    one worker per projection); the seconds until both are done."""
    from django.db import connections

    from payments.eventstore import reset_event_store

    connections.close_all()  # nothing open may cross the fork
    reset_event_store()
    started = time.perf_counter()
    children = []
    for projection in (PaymentProjection(), DeclineProjection()):
        pid = os.fork()
        if pid == 0:  # the child: rebuild, then leave without running the parent's exit code
            code = 1
            try:
                ProjectionRunner(projection, get_event_store(), batch_size=batch_size).run(
                    once=True, reset=True)
                code = 0
            finally:
                os._exit(code)
        children.append(pid)
    failures = [pid for pid in children if os.waitpid(pid, 0)[1] != 0]
    if failures:
        raise SystemExit(f"a rebuild process failed: {failures}")
    return time.perf_counter() - started


def live_latency(samples: int) -> list[float]:
    """Seconds from the start of an append to its PaymentView row being committed."""
    store = get_event_store()
    stop = threading.Event()
    committed = threading.Condition()
    committed_at: dict[int, float] = {}

    def on_progress(progress: Progress) -> None:
        with committed:
            committed_at[progress.position] = time.perf_counter()
            committed.notify_all()

    runner = ProjectionRunner(PaymentProjection(), store, stop=stop, on_progress=on_progress)
    thread = threading.Thread(target=runner.run)
    thread.start()
    latencies = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            payment = services.create_payment(amount="12.34", currency="EUR", store=store)
            position = store.head_position()
            with committed:
                committed.wait_for(lambda p=position: any(k >= p for k in committed_at),
                                   timeout=5)
                done = min(t for k, t in committed_at.items() if k >= position)
                committed_at.clear()
            latencies.append(done - started)
            assert PaymentView.objects.filter(payment_id=payment.id).exists()
    finally:
        stop.set()
        thread.join()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--baseline-events", type=int, default=5_000,
                        help="events for the one-event-per-transaction rebuild")
    parser.add_argument("--live", type=int, default=300, help="live latency samples")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    t = time.perf_counter()
    events = write_events(args.events)
    print(f"wrote {events} events in {time.perf_counter() - t:.1f} s")

    # The slow original first, so that the full rebuild leaves the runners at the head.
    applied_1, seconds_1 = rebuild(batch_size=1, limit_events=args.baseline_events)
    rate_1 = applied_1 / 2 / seconds_1
    _, seconds = rebuild(batch_size=1000)
    rate = events / seconds
    parallel_seconds = rebuild_in_processes(batch_size=1000)
    parallel_rate = events / parallel_seconds
    print(f"rebuild, both projections, one process each: {parallel_rate:9,.0f} events/s"
          f"  ({events} events in {parallel_seconds:.2f} s; target >= 30,000)")
    print(f"rebuild, both projections, one after other: {rate:10,.0f} events/s"
          f"  ({events} events x 2 projections in {seconds:.2f} s)")
    print(f"rebuild, one event per transaction:          {rate_1:10,.0f} events/s"
          f"  ({applied_1 // 2} events x 2 projections in {seconds_1:.2f} s)")
    print(f"ratio batched / one-per-transaction:         {rate / rate_1:10.1f} x  (target >= 15,"
          " both one after the other)")

    latencies = sorted(live_latency(args.live))
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"live append -> PaymentView committed:  median {statistics.median(latencies) * 1000:.1f}"
          f" ms, p99 {p99 * 1000:.1f} ms over {len(latencies)} appends (target p99 <= 50 ms)")
    connection.close()
    _tmp.cleanup()


if __name__ == "__main__":
    main()
