"""``manage.py run_projection payment|decline|all [--once] [--reset | --rebuild]
[--batch-size N] [--metrics-port N]``."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from argparse import ArgumentParser
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper

from payments.eventstore import EventStoreError, get_event_store
from paymentsite import metrics
from projections.locks import is_locked
from projections.management.commands.projection_status import projection_readings
from projections.projectors import PROJECTIONS, ProjectionError
from projections.runner import (
    CheckpointMoved,
    Progress,
    ProjectionRunner,
    VersionMismatch,
    checkpoint_position,
    rebuild_lock_name,
    record_failure,
)

LOG_EVERY_SECONDS = 5.0
# A batch of events makes at most one read-model row per event, so even a single
# statement for a whole batch (10,000 rows of up to 5 columns) stays under PostgreSQL's
# limit of 65,535 parameters, whatever statement size the projectors choose.
MAX_BATCH_SIZE = 10_000
MAX_REASON = 2000  # characters of a failure's reason kept for status, /readyz and the log

logger = logging.getLogger("projections.runner")


class Command(BaseCommand):
    help = (
        "Run projections: catch up from the checkpoint, then follow new events until "
        "SIGINT/SIGTERM. --once stops when caught up; --reset rebuilds from the start;"
        " --rebuild builds anew beside the live read model, which keeps serving, and swaps."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("projection", choices=[*PROJECTIONS, "all"])
        parser.add_argument("--once", action="store_true", help="catch up to the head, then exit")
        rebuild = parser.add_mutually_exclusive_group()
        rebuild.add_argument(
            "--reset", action="store_true",
            help="clear the read model and its checkpoint (one transaction), then rebuild",
        )
        rebuild.add_argument(
            "--rebuild", action="store_true",
            help="build the read model anew in shadow tables from position 0 while the live"
                 " one keeps serving, then swap them in one transaction (blue/green)",
        )
        parser.add_argument("--batch-size", type=int, default=1000, help="events per transaction")
        parser.add_argument(
            "--metrics-port", type=int, default=None, metavar="N",
            help="serve this process's metrics (Prometheus) at http://METRICS_ADDRESS:N/metrics"
                 " (default: METRICS_PORT; unset: none; 0: a free port, logged)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if options["batch_size"] > MAX_BATCH_SIZE:
            raise CommandError(
                f"--batch-size must be at most {MAX_BATCH_SIZE:,}: a batch's rows are written"
                " in statements that must stay under PostgreSQL's 65,535 parameters")
        names = list(PROJECTIONS) if options["projection"] == "all" else [options["projection"]]
        port = options["metrics_port"]
        port = settings.METRICS_PORT if port is None else port
        if port is not None and not 0 <= port <= 65535:
            raise CommandError(f"--metrics-port must be a port from 0 to 65535, not {port}")
        stop = threading.Event()
        previous = _stop_on_signals(stop)
        try:
            with _serving_metrics(names, port):
                self._run(names, options, stop)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _run(self, names: list[str], options: dict[str, Any], stop: threading.Event) -> None:
        # Waiting would not do for --reset: the active runner follows for ever (dev.py run's).
        if options["reset"] and (busy := [name for name in names if is_locked(name)]):
            raise CommandError(
                f"{', '.join(busy)}: another runner is active (python3 dev.py run, or"
                " another run_projection). Stop it first: --reset clears the read model"
                " that it writes. Nothing was reset. (--rebuild builds a new one beside it"
                " instead, and needs no stop.)")
        if options["rebuild"] and (
            busy := [name for name in names if is_locked(rebuild_lock_name(name))]
        ):
            raise CommandError(f"{', '.join(busy)}: a rebuild is already running. Nothing was"
                               " started.")
        store = get_event_store()
        runners = []
        reporter = _Reporter(self.stdout, show_bar=options["reset"] or options["rebuild"],
                             once=options["once"])
        for name in names:
            runners.append(ProjectionRunner(
                PROJECTIONS[name](), store, batch_size=options["batch_size"], stop=stop,
                on_progress=reporter.for_projection(name),
            ))
        with reporter.quiet_batches():
            failures = _run_all(runners, once=options["once"], reset=options["reset"],
                                rebuild=options["rebuild"], stop=stop)
        reporter.end_bar()
        for runner in runners:
            # The checkpoint as stored: a runner stopped while it waited moved nothing.
            summary = (f"{runner.name}: applied {runner.progress.applied} events, checkpoint"
                       f" at {checkpoint_position(runner.name)}")
            if options["rebuild"]:
                summary += (" (rebuilt beside the live read model and swapped in)"
                            if runner.swapped else
                            " (the rebuild stopped before its swap: the live read model is"
                            " as it was; --rebuild again starts over)")
            elif runner.progress.applied == 0 and is_locked(runner.name):
                summary += " (another runner was active: this one waited and did nothing)"
            self.stdout.write(summary)
        if failures:
            raise CommandError("; ".join(failures))


@contextlib.contextmanager
def _serving_metrics(names: list[str], port: int | None) -> Iterator[None]:
    """This process's metrics and its projections' on ``port`` for the block (none without
    a port, or with METRICS_ENABLED off)."""
    if port is None or not settings.METRICS_ENABLED:
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            address, bound = stack.enter_context(metrics.serving(
                port, settings.METRICS_ADDRESS, lambda: projection_readings(names)))
        except OSError as e:
            raise CommandError(f"metrics: cannot listen on {settings.METRICS_ADDRESS}:{port}:"
                               f" {e} (--metrics-port, METRICS_PORT, METRICS_ADDRESS)") from e
        logger.info("metrics of %s at http://%s:%d/metrics", ", ".join(names), address, bound)
        yield


def _run_all(
    runners: list[ProjectionRunner], *, once: bool, reset: bool, rebuild: bool,
    stop: threading.Event,
) -> list[str]:
    """Run each projection in a thread of its own; a failure stops them all."""
    failures: list[str] = []

    def run(runner: ProjectionRunner) -> None:
        from django.db import connection

        try:
            runner.run(once=once, reset=reset, rebuild=rebuild)
        except BaseException as e:  # no thread dies while its process looks well
            failures.append(fail_loudly(runner, e))
            stop.set()
        finally:
            connection.close()

    if len(runners) == 1:
        run(runners[0])
        return failures
    threads = [threading.Thread(target=run, args=(r,), name=f"projection-{r.name}")
               for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)  # wake for signals
    return failures


def fail_loudly(runner: ProjectionRunner, error: BaseException) -> str:
    """One log line naming the projection and where it stopped; the reason recorded for
    status, the overview and /readyz. Returns the reason."""
    metrics.set_runner_state(runner.name, "failed")
    if isinstance(error, ProjectionError | CheckpointMoved | VersionMismatch):
        reason = str(error)  # names the projection, and the event's position and type
    elif isinstance(error, EventStoreError):  # UnreadableEvent names the event
        reason = f"projection {runner.name!r} stopped: {error}"
    else:
        reason = (f"projection {runner.name!r} stopped after position"
                  f" {runner.progress.position}: {type(error).__name__}: {error}")
    if runner.rebuilding:
        reason = (f"rebuild of {runner.name!r} stopped; the live read model is untouched:"
                  f" {reason}")
    reason = reason[:MAX_REASON]  # an error may quote a huge value; status shows one line
    expected = isinstance(error, ProjectionError | CheckpointMoved | EventStoreError
                          | VersionMismatch)
    logger.error("%s", reason, exc_info=None if expected else error,  # a bug: its traceback
                 extra={"projection": runner.name, "position": runner.progress.position})
    if runner.rebuilding:
        return reason  # the live read model and its runner are fine: nothing to record
    try:
        record_failure(runner.name, reason)
    except Exception as e:  # the database may be what failed
        logger.error("projection %s: could not record the failure: %s", runner.name, e)
    return reason


def _stop_on_signals(stop: threading.Event) -> dict[int, Any]:
    """SIGINT/SIGTERM: finish the batch in hand, commit, exit 0. Returns the old handlers."""

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


class _Reporter:
    """Progress for every runner of the command: on a terminal during a rebuild, one
    line redrawn in place (one bar per projection, side by side, so two runners never
    fight over the line); otherwise a plain line per projection every few seconds."""

    def __init__(self, stdout: OutputWrapper, *, show_bar: bool, once: bool) -> None:
        self.stdout = stdout
        self.bar = show_bar and stdout.isatty()
        self.once = once
        self.latest: dict[str, tuple[Progress, float]] = {}
        self.last_line: dict[str, float] = {}
        self.caught_up: set[str] = set()
        self.lock = threading.Lock()

    def for_projection(self, name: str) -> Callable[[Progress], None]:
        return lambda progress: self.report(name, progress)

    @contextlib.contextmanager
    def quiet_batches(self) -> Iterator[None]:
        """While the bar is drawn, the runner's line per batch would break it: the bar
        says the same. Warnings and errors still show."""
        if not self.bar:
            yield
            return
        level = logger.level
        logger.setLevel(max(logging.WARNING, level))
        try:
            yield
        finally:
            logger.setLevel(level)

    def end_bar(self) -> None:
        with self.lock:
            if self.bar and self.latest:
                self.stdout.write("")  # end the bar's line
                self.latest.clear()

    def report(self, name: str, progress: Progress) -> None:
        now = time.monotonic()
        rate = progress.applied / max(now - progress.started, 1e-9)
        head = max(progress.head, progress.position)  # the head read at start moves on
        with self.lock:
            if self.bar and name not in self.caught_up:
                self.latest[name] = (progress, rate)
                line = "   ".join(progress_bar(n, p, r, width=20 if len(self.latest) > 1 else 30)
                                  for n, (p, r) in self.latest.items())
                self.stdout.write("\r" + line + "\x1b[K", ending="")  # K: clear the rest
                self.stdout.flush()
                if progress.position >= head and not self.once:
                    self.caught_up.add(name)
                    if self.caught_up >= self.latest.keys():
                        self.stdout.write("")
                        self.stdout.write(
                            f"rebuilt: {', '.join(sorted(self.caught_up))} caught up; following"
                            " new events until Ctrl-C (--once exits here)")
            elif now - self.last_line.get(name, 0.0) >= LOG_EVERY_SECONDS:
                self.last_line[name] = now
                where = "caught up" if progress.position >= head else f"of {head}"
                self.stdout.write(
                    f"{name}: {progress.applied} events applied, at position"
                    f" {progress.position} {where}, {rate:.0f} events/s"
                )


def progress_bar(name: str, progress: Progress, rate: float, width: int = 30) -> str:
    """``payment  42% |████████      | 42,000 events  31,250 ev/s  ETA 0:00:02``.

    The fraction is by position (dense on the embedded store, and monotonic on
    EventStoreDB too), so the ETA needs no count of the events still to come.
    """
    span = max(progress.head - progress.start, 1)
    done = min(max(progress.position - progress.start, 0) / span, 1.0)
    left = (progress.applied / done - progress.applied) / rate if done and rate else 0.0
    filled = int(done * width)
    eta = time.strftime("%H:%M:%S", time.gmtime(left))
    return (
        f"{name} {done:4.0%} |{'█' * filled}{' ' * (width - filled)}|"
        f" {progress.applied:,} events  {rate:,.0f} ev/s  ETA {eta}"
    )
