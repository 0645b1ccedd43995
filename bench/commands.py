"""Command throughput on the embedded store, against SQLite's own durable ceiling.

    .venv/bin/python bench/commands.py [--payments 2000] [--rounds 3]

Runs create -> authorize -> settle for N payments, one after another, through the
command service (each command: read the stream, decide, one durable append). In
the same run it measures the ceiling: one durable (WAL, synchronous=FULL) one-row
commit per command on a bare SQLite file in the same folder, the row as large as an
event (data and metadata) but with no index and no work around it. It prints both rates
and their ratio; the target is a ratio of at least 0.8.

It also runs the same life cycles from 16 threads at once, each on payments of its own,
against the same ceiling: the store's group commit lets their appends share commits
(the target is a ratio of at least 1.5; it prints how many appends a commit carried).

It also runs the service with a log line per command, and with tracing on (a span per
command, a BatchSpanProcessor exporting nowhere: the spans' own cost, not a collector's),
each against the plain service in the same round.

Between the two it also measures the same life cycle's commits straight into a table
of the store's own schema, with the store's own statements (``UNIQUE (stream,
version)``, the version check inside the insert) and no Python around them: what the
schema alone costs, the most any service on it could reach.

The service runs with metrics off (METRICS_ENABLED), and again, in the same rounds and
alternating which goes first, with them on (the command's counter and histogram, the
store's timing, as the web app records them): their ratio is what metrics cost a command.
Set PROMETHEUS_MULTIPROC_DIR to an empty folder to measure them as gunicorn keeps them.

In the same rounds, the peer: the same life cycle on the ``eventsourcing`` library's
Application and SQLite persistence (``peer_eventsourcing.py``; bench/requirements.txt),
with its aggregate cache (the same work per command as ours: no read of a payment it just
saved) and in its default configuration (a read and replay per command). The plain
service, the metered one and the two peers take turns, in reverse order every other round.
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from uuid import uuid4

from harness import setup_django, step
from peer_eventsourcing import peer_run

THREADS = 16  # as many as the HTTP bench's clients

FOLDER = setup_django()

from django.conf import settings  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import (  # noqa: E402
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from payments import services  # noqa: E402
from payments.eventstore.embedded import (  # noqa: E402
    _INSERT,
    _INSERT_AFTER,
    SCHEMA,
    EmbeddedEventStore,
    _category,
)
from payments.eventstore.instrumented import InstrumentedEventStore  # noqa: E402
from paymentsite import tracing  # noqa: E402
from paymentsite.logging import JsonFormatter  # noqa: E402


@contextmanager
def command_log_lines(path: Path) -> Iterator[None]:
    """The service's INFO line per command, as JSON into ``path``, for the block."""
    service_logger = logging.getLogger("payments.services")
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    level, propagate = service_logger.level, service_logger.propagate
    service_logger.addHandler(handler)
    service_logger.setLevel(logging.INFO)
    service_logger.propagate = False
    try:
        yield
    finally:
        service_logger.removeHandler(handler)
        service_logger.setLevel(level)
        service_logger.propagate = propagate
        handler.close()


class _Discard(SpanExporter):
    """An exporter that sends nowhere."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@contextmanager
def traced() -> Iterator[None]:
    """Tracing on for the block, as paymentsite/tracing.py sets it up in production."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_Discard()))
    tracing.instrument(provider, environ={})
    try:
        yield
    finally:
        tracing.uninstrument()
        provider.shutdown()


def service_run(folder: Path, payments: int, name: str = "events", *,
                metrics: bool = False) -> tuple[float, float]:
    """Commands per second through the service, sequentially (``metrics``: recorded), and
    the CPU time of this process per command in microseconds: what metrics add to it is
    not drowned by the disk's waits, which vary far more from run to run."""
    settings.METRICS_ENABLED = metrics
    embedded = EmbeddedEventStore(folder / f"{name}.sqlite3")
    store = InstrumentedEventStore(embedded, "embedded") if metrics else embedded
    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(payments):
            payment = services.create_payment(amount="100.00", currency="EUR", store=store)
            services.authorize_payment(payment_id=payment.id, bank_name="Bench Bank", store=store)
            services.settle_payment(payment_id=payment.id, store=store)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        store.close()
    return 3 * payments / elapsed, cpu / (3 * payments) * 1e6


def service_rate(folder: Path, payments: int, name: str = "events") -> float:
    """Commands per second through the service, sequentially."""
    return service_run(folder, payments, name)[0]


def threaded_service_run(folder: Path, payments: int, threads: int = THREADS,
                         name: str = "events-threads") -> tuple[float, float]:
    """Commands per second through the service from ``threads`` threads of one process at
    once, each running the life cycle of payments of its own (no contention on a payment:
    the appends share only the store), and appends per durable commit (group commit)."""
    settings.METRICS_ENABLED = False
    store = EmbeddedEventStore(folder / f"{name}.sqlite3")
    start = threading.Barrier(threads + 1)
    failures: list[BaseException] = []

    def life_cycles(count: int) -> None:
        start.wait()
        try:
            for _ in range(count):
                payment = services.create_payment(amount="100.00", currency="EUR", store=store)
                services.authorize_payment(payment_id=payment.id, bank_name="Bench Bank",
                                           store=store)
                services.settle_payment(payment_id=payment.id, store=store)
        except BaseException as e:  # reported below, after the join
            failures.append(e)

    shares = [payments // threads + (n < payments % threads) for n in range(threads)]
    workers = [threading.Thread(target=life_cycles, args=(share,)) for share in shares]
    try:
        for worker in workers:
            worker.start()
        start.wait()
        started, commits = time.perf_counter(), store.commits
        for worker in workers:
            worker.join()
        elapsed, commits = time.perf_counter() - started, store.commits - commits
    finally:
        store.close()
    if failures:
        raise failures[0]
    return 3 * payments / elapsed, 3 * payments / max(commits, 1)


_SETTLED_DATA = (
    b'{"payment_id":"0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11","occurred_at":'
    b'"2026-11-29T13:05:00.123456Z","bank_name":"Bench Bank","amount":"100.00",'
    b'"settlement_id":"7d0f0e8e-3c62-4b7e-8f3a-2b1f8f0f9c44"}'
)
_METADATA = (
    b'{"$correlationId":"0b9c4a52-6f0e-4f6b-9a59-7a4a0f3e2d11",'
    b'"$causationId":"7d0f0e8e-3c62-4b7e-8f3a-2b1f8f0f9c44","schemaVersion":1}'
)


def _durable_connection(path: Path) -> sqlite3.Connection:
    """A connection set up as the store sets up its own: WAL, durable commits, and
    BEGIN/COMMIT issued by the caller."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def sqlite_ceiling_rate(folder: Path, commits: int) -> float:
    """Durable one-row commits per second on a bare SQLite file: the floor of any append."""
    connection = _durable_connection(folder / "ceiling.sqlite3")
    connection.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    # A row the size of an event (its data and metadata), so only the work differs.
    body = bytes(len(_SETTLED_DATA) + len(_METADATA))
    started = time.perf_counter()
    for _ in range(commits):
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO rows (body) VALUES (?)", (body,))
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return commits / elapsed


def events_schema_rate(folder: Path, payments: int) -> float:
    """The life cycle's durable commits into the events schema, straight through sqlite3.

    One transaction per event, as ``append`` runs it: ``BEGIN IMMEDIATE``, the store's
    insert (for a later version, the one that requires the version before), ``COMMIT``.
    The statements and their values are made before the clock starts.
    """
    connection = _durable_connection(folder / "schema.sqlite3")
    connection.executescript(SCHEMA)
    commits = []
    for _ in range(payments):
        stream = f"payments-{uuid4()}"
        for version, type_ in enumerate(("PaymentCreated", "PaymentAuthorized", "PaymentSettled")):
            row = (uuid4().bytes, stream, _category(stream), version, type_, _SETTLED_DATA,
                   _METADATA, 0.0)
            commits.append((_INSERT, row) if version == 0
                           else (_INSERT_AFTER, (*row, stream, version - 1)))
    started = time.perf_counter()
    for statement, values in commits:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute(statement, values)
        connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return len(commits) / elapsed


TAKING_TURNS = ("service", "metered", "peer_cached", "peer_default")


def measure(*, payments: int = 2000, rounds: int = 3) -> dict[str, Any]:
    """The best service and ceiling rates (commands/s) of ``rounds`` interleaved rounds."""
    ceiling: list[float] = []
    schema: list[float] = []
    logged: list[float] = []
    traced_: list[float] = []
    threaded: list[float] = []
    appends_per_commit: list[float] = []
    # The runs that take turns: the service with metrics off and on, and the two peers.
    rates: dict[str, list[float]] = {name: [] for name in TAKING_TURNS}
    cpu: dict[str, list[float]] = {name: [] for name in TAKING_TURNS}  # µs per command
    # Interleave the rounds so that a burst of disk noise hits both sides alike.
    for round_ in range(rounds):
        folder = FOLDER / f"round-{round_}"
        folder.mkdir()
        with step(f"round {round_ + 1} of {rounds}"):
            ceiling.append(sqlite_ceiling_rate(folder, 3 * payments))
            schema.append(events_schema_rate(folder, payments))
            runs: list[tuple[str, Callable[[], tuple[float, float]]]] = [
                ("service", partial(service_run, folder, payments, "events-metrics-False")),
                ("metered", partial(service_run, folder, payments, "events-metrics-True",
                                    metrics=True)),
                ("peer_cached", partial(peer_run, folder, payments, cached=True)),
                ("peer_default", partial(peer_run, folder, payments, cached=False)),
            ]
            for name, run in runs if round_ % 2 == 0 else reversed(runs):
                rate, cpu_us = run()
                rates[name].append(rate)
                cpu[name].append(cpu_us)
            rate, per_commit = threaded_service_run(folder, payments)
            threaded.append(rate)
            appends_per_commit.append(per_commit)
            with command_log_lines(folder / "commands.log"):
                logged.append(service_rate(folder, payments, "events-logged"))
            with traced():
                traced_.append(service_rate(folder, payments, "events-traced"))
    figures: dict[str, Any] = {
        "commands": 3 * payments, "ceiling_rate": max(ceiling), "schema_rate": max(schema),
        "logged_rate": max(logged), "ceiling_runs": ceiling, "schema_runs": schema,
        "logged_runs": logged, "traced_rate": max(traced_), "traced_runs": traced_,
        "threaded_rate": max(threaded), "threaded_runs": threaded,
        "appends_per_commit": statistics.median(appends_per_commit),
    }
    for name in TAKING_TURNS:
        figures |= {f"{name}_rate": max(rates[name]), f"{name}_runs": rates[name],
                    f"{name}_cpu_us": statistics.median(cpu[name])}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many, interleaved")
    args = parser.parse_args()
    f = measure(payments=args.payments, rounds=args.rounds)
    print(f"commands per run:            {f['commands']} ({args.payments} payments x 3)")
    print(f"SQLite durable commit floor: {f['ceiling_rate']:8.0f} commits/s  (runs: "
          + ", ".join(f"{r:.0f}" for r in f["ceiling_runs"]) + ")")
    print(f"the same into events schema: {f['schema_rate']:8.0f} commits/s  (runs: "
          + ", ".join(f"{r:.0f}" for r in f["schema_runs"]) + ")")
    print(f"command service:             {f['service_rate']:8.0f} commands/s (runs: "
          + ", ".join(f"{r:.0f}" for r in f["service_runs"]) + ")")
    print(f"... with a log line each:    {f['logged_rate']:8.0f} commands/s (runs: "
          + ", ".join(f"{r:.0f}" for r in f["logged_runs"]) + ")")
    print(f"... with metrics:            {f['metered_rate']:8.0f} commands/s (runs: "
          + ", ".join(f"{r:.0f}" for r in f["metered_runs"]) + ")")
    print(f"... with tracing on:         {f['traced_rate']:8.0f} commands/s (runs: "
          + ", ".join(f"{r:.0f}" for r in f["traced_runs"]) + ")")
    print(f"{f'... from {THREADS} threads:':29}{f['threaded_rate']:8.0f} commands/s (runs: "
          + ", ".join(f"{r:.0f}" for r in f["threaded_runs"])
          + f"; {f['appends_per_commit']:.1f} appends per commit, median)")
    print(f"ratio traced / service:      {f['traced_rate'] / f['service_rate']:8.2f}")
    print(f"ratio schema / ceiling:      {f['schema_rate'] / f['ceiling_rate']:8.2f}"
          "  (the most a service on this schema could reach)")
    print(f"ratio service / ceiling:     {f['service_rate'] / f['ceiling_rate']:8.2f}"
          "  (target >= 0.80)")
    print(f"{f'ratio {THREADS} threads / ceiling:':29}{f['threaded_rate'] / f['ceiling_rate']:8.2f}"
          "  (target >= 1.5)")
    print(f"ratio with / without metrics: {f['metered_rate'] / f['service_rate']:7.3f}"
          "  (best runs; the disk's noise is larger than the difference)")
    print(f"CPU per command, median:     {f['service_cpu_us']:8.1f} us without metrics,"
          f" {f['metered_cpu_us']:.1f} us with (x{f['metered_cpu_us'] / f['service_cpu_us']:.3f})")
    for name, label, target in (("peer_cached", "cached", "target >= 1.5"),
                                ("peer_default", "no cache", "reference")):
        print(f"eventsourcing peer, {label + ':':9s}{f[f'{name}_rate']:8.0f} commands/s (runs: "
              + ", ".join(f"{r:.0f}" for r in f[f"{name}_runs"])
              + f"), {f[f'{name}_cpu_us']:.1f} us CPU per command")
        print(f"ratio service / that peer:   {f['service_rate'] / f[f'{name}_rate']:8.2f}"
              f"  ({target}; CPU per command, peer / service:"
              f" {f[f'{name}_cpu_us'] / f['service_cpu_us']:.2f})")


if __name__ == "__main__":
    main()
