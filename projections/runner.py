"""The projection runner: follows the event store and keeps a read model current.

Exactly once: a batch of events and the checkpoint that says "applied up to here"
are written in ONE database transaction. A crash before the commit loses the
batch and its checkpoint together (the next run re-reads it); a crash after it
loses nothing. The checkpoint moves only from the position this runner read, so a
second runner that somehow got past the lock fails its commit instead of counting
twice.

A rebuild (``run(rebuild=True)``) builds the read model anew in shadow tables while
the live ones keep serving (and their runner keeps following); once the shadow has
caught up, one transaction swaps the tables and their checkpoints (projections/shadow.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from payments.events import EVENT_TYPES, EventDecodeError, decode_metadata, decode_recorded
from payments.eventstore import (
    EventStore,
    EventStoreUnavailable,
    RecordedEvent,
    Subscription,
    UnreadableEvent,
)
from paymentsite.metrics import observe_batch, set_runner_state
from projections.locks import Lock, holds, single_runner
from projections.models import Checkpoint, Rebuild
from projections.projectors import Decoded, Projection, ProjectionError
from projections.shadow import create_shadow_tables, swap_in_shadow_tables

if TYPE_CHECKING:
    from opentelemetry.trace import Link, Span, Tracer

logger = logging.getLogger(__name__)

FIRST_BACKOFF = 0.5  # seconds; doubled after each failed retry, up to MAX_BACKOFF
MAX_BACKOFF = 30.0
FIRST_EVENT_WAIT = 0.25  # seconds; also how often a stop request is noticed
# Seconds between checkpoint moves with no event (the store looked past other
# categories' events): often enough that a restart skips them, rarely enough that a
# store busy with other categories costs the read model's database little.
CHECKPOINT_INTERVAL = 1.0
# A batch's span links to the spans of the commands whose events it applied: to the
# first this many of them (a catch-up's batch of 1,000 would otherwise carry 1,000 links;
# OpenTelemetry's SDK keeps 128 by default too).
MAX_LINKS = 128

# Set by paymentsite/tracing.py when the environment configures an exporter (None: off,
# no span and nothing of OpenTelemetry imported).
_tracer: Tracer | None = None
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def trace_batches(tracer: Tracer | None) -> None:
    """Give every batch a span from ``tracer`` from now on (None: no spans)."""
    global _tracer
    _tracer = tracer


def _command_links(batch: list[RecordedEvent], handles: Collection[str]) -> list[Link]:
    """Links to the spans of the commands that appended the events a batch applies, read
    from the W3C trace context in their metadata (the first ``MAX_LINKS``)."""
    from opentelemetry.trace import Link, get_current_span
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    links: list[Link] = []
    for record in batch:
        if record.type not in handles or b'"traceparent"' not in record.metadata:
            continue
        try:
            metadata = decode_metadata(record.metadata)
        except EventDecodeError:
            continue  # not ours to judge here: decoding the event names what is wrong
        headers = {name: value for name in ("traceparent", "tracestate")
                   if isinstance(value := metadata.get(name), str)}
        context = get_current_span(propagator.extract(headers)).get_span_context()
        if context.is_valid:
            links.append(Link(context, {"payment.position": record.position}))
            if len(links) == MAX_LINKS:
                break
    return links


class CheckpointMoved(Exception):
    """Another runner moved the checkpoint under us: stop rather than double count."""


class VersionMismatch(Exception):
    """The read model was built by another version of the projection: applying this
    version's events to it would mix two meanings in one table."""

    def __init__(self, name: str, stored: int, code: int) -> None:
        super().__init__(
            f"projection {name!r}: its read model was built by projection version {stored};"
            f" this code is version {code}. No event was applied. Rebuild it beside the live"
            f" one (run_projection {name} --rebuild), or clear it (run_projection {name}"
            " --reset)."
        )


class LockLost(Exception):
    """The runner's database session that held its lock is gone (the connection was
    closed and reopened): the batch in hand is rolled back, and the lock taken again."""


@dataclass
class Progress:
    """What a runner has done so far; the command shows it as a bar or log lines."""

    applied: int = 0
    start: int = 0  # the checkpoint the run began at
    position: int = 0
    head: int = 0
    started: float = field(default_factory=time.monotonic)


def checkpoint_position(name: str) -> int:
    """The position of the last event the projection applied (0: none yet)."""
    checkpoint, _ = Checkpoint.objects.get_or_create(name=name)
    return checkpoint.position


def record_failure(name: str, reason: str) -> None:
    """Say, where status, the overview and /readyz read it, why the runner stopped."""
    # update(), not save(): updated_at says when the checkpoint last moved, and it did not.
    if not Checkpoint.objects.filter(name=name).update(failure=reason, failed_at=timezone.now()):
        Checkpoint.objects.create(name=name, failure=reason, failed_at=timezone.now())


def clear_failure(name: str) -> None:
    """The projection runs again: its last failure is history."""
    Checkpoint.objects.filter(name=name, failed_at__isnull=False).update(
        failure="", failed_at=None
    )


class _ApplyFailed(Exception):
    """The projection raised while applying a batch (the transaction is rolled back)."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(f"{type(error).__name__}: {error}")


def reset_projection(projection: Projection) -> None:
    """Delete the read model and its checkpoint together, for a rebuild from the start."""
    with transaction.atomic():
        projection.clear()
        Checkpoint.objects.update_or_create(
            name=projection.name, defaults={"position": 0, "version": projection.version}
        )


def rebuild_lock_name(name: str) -> str:
    """The lock a ``--rebuild`` holds: one rebuild per projection, beside its runner."""
    return f"{name}-rebuild"


class LiveCheckpoint:
    """The live read model's checkpoint (a ``Checkpoint`` row), for this projection's
    version only."""

    def __init__(self, projection: Projection) -> None:
        self.name = projection.name
        self.version = projection.version
        self.rebuilt_at: object = None  # as read by ``read``: a swap since changes it

    def read(self) -> int:
        """The position to follow from; refuses a read model of another version (one
        that holds no event yet is simply this version's)."""
        checkpoint, _ = Checkpoint.objects.get_or_create(
            name=self.name, defaults={"version": self.version}
        )
        if checkpoint.version != self.version:
            if checkpoint.position != 0:
                raise VersionMismatch(self.name, checkpoint.version, self.version)
            Checkpoint.objects.filter(name=self.name, position=0).update(version=self.version)
        self.rebuilt_at = checkpoint.rebuilt_at
        return checkpoint.position

    def move(self, position: int, to: int) -> bool:
        """From ``position`` (only) to ``to``; clears a failure an earlier runner recorded."""
        return Checkpoint.objects.filter(
            name=self.name, position=position, version=self.version
        ).update(position=to, updated_at=timezone.now(), failure="", failed_at=None) == 1


class ShadowCheckpoint:
    """The checkpoint of the shadow tables a rebuild fills (its ``Rebuild`` row)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def read(self) -> int:
        return Rebuild.objects.get(name=self.name).position

    def move(self, position: int, to: int) -> bool:
        return Rebuild.objects.filter(name=self.name, position=position).update(
            position=to, updated_at=timezone.now()) == 1


class ProjectionRunner:
    """Runs one projection: catch up from its checkpoint, then follow live appends."""

    def __init__(
        self,
        projection: Projection,
        store: EventStore,
        *,
        batch_size: int = 1000,
        stop: threading.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        checkpoint: LiveCheckpoint | ShadowCheckpoint | None = None,
    ) -> None:
        self.projection = projection
        self.checkpoint = checkpoint or LiveCheckpoint(projection)
        self.store = store
        self.batch_size = batch_size
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.progress = Progress()
        self._lock: Lock | None = None
        self.rebuilding = False  # a failure now is the rebuild's, not the live model's
        self.swapped = False  # a rebuild of this runner's swapped its tables in
        self._backoff = FIRST_BACKOFF  # the next wait after a store outage
        self._state: str | None = None  # as the metrics say (paymentsite.metrics)

    @property
    def name(self) -> str:
        return self.projection.name

    def _set_state(self, state: str) -> None:
        """Say in the metrics what the runner of the live read model is doing (a rebuild's
        shadow runner says nothing: its runner is ``rebuilding``)."""
        if state != self._state and (state == "rebuilding"
                                     or isinstance(self.checkpoint, LiveCheckpoint)):
            self._state = state
            set_runner_state(self.name, state)

    def run(self, *, once: bool = False, reset: bool = False, rebuild: bool = False) -> None:
        """Hold the projection's lock and run until caught up (``once``) or stopped.

        ``reset`` clears the read model and checkpoint first, under the same lock, so
        a rebuild never races a runner that is still applying events. ``rebuild``
        builds the read model anew beside the live one and swaps it in (without the
        projection's lock: its runner goes on following meanwhile); then, unless
        ``once``, this runner follows on the new tables. Should the lock be lost (its
        database session ended), the runner waits for it again and resumes from the
        checkpoint.
        """
        if rebuild and (not self.rebuild() or once):
            return
        while not self.stop.is_set():
            with single_runner(self.name, stop=self.stop) as lock:
                if lock is None:
                    return  # stopped while waiting for the other runner
                self._lock = lock
                try:
                    if reset:
                        with transaction.atomic():
                            reset_projection(self.projection)
                            self._check_lock()
                        reset = False
                        logger.info("projection %s: read model and checkpoint cleared",
                                    self.name)
                    self._run_with_retries(once=once)
                    return
                except LockLost as e:
                    logger.warning("projection %s: %s", self.name, e)
                except CheckpointMoved:
                    if not isinstance(self.checkpoint, LiveCheckpoint):
                        raise
                    rebuilt_at = self.checkpoint.rebuilt_at  # as the run read it
                    self.checkpoint.read()  # a rebuild of another version: VersionMismatch
                    if self.checkpoint.rebuilt_at == rebuilt_at:
                        raise
                    logger.warning(
                        "projection %s: a rebuild swapped new tables in beside this runner;"
                        " going on from their checkpoint", self.name)
                finally:
                    self._lock = None

    def rebuild(self) -> bool:
        """Build the read model anew in shadow tables, then swap them in; False when
        stopped first (the live tables untouched; the next rebuild starts over).

        Holds the rebuild's own lock, not the projection's: the live runner goes on
        following while the shadow fills. The shadow catches up in passes until a pass
        finds less than a batch to do; the swap's transaction then waits for the live
        runner's batch in hand, applies to the shadow the few events the live read
        model has and the shadow not yet, and swaps tables and checkpoints.
        """
        self.rebuilding = True
        self._set_state("rebuilding")
        try:
            return self._rebuild()
        finally:
            self.rebuilding = False

    def _rebuild(self) -> bool:
        name = rebuild_lock_name(self.name)
        with single_runner(name, stop=self.stop) as lock:
            if lock is None:
                return False
            read_models = self.projection.read_models
            Rebuild.objects.filter(name=self.name).delete()
            tables = create_shadow_tables(read_models)
            Rebuild.objects.create(name=self.name, version=self.projection.version,
                                   started_at=timezone.now())
            logger.info("projection %s: rebuilding version %d in shadow tables beside the"
                        " live read model", self.name, self.projection.version)
            shadow = ProjectionRunner(
                type(self.projection)(tables), self.store, batch_size=self.batch_size,
                stop=self.stop, on_progress=self.on_progress,
                checkpoint=ShadowCheckpoint(self.name),
            )
            shadow.progress = self.progress
            shadow._lock = lock
            while not self.stop.is_set():
                applied = self.progress.applied
                shadow._run_with_retries(once=True)
                if self.progress.applied - applied < self.batch_size:
                    break  # close to the head: the rest fits in the swap's transaction
            if self.stop.is_set():
                logger.warning("projection %s: rebuild stopped at position %d; the live read"
                               " model is untouched (the next --rebuild starts over)",
                               self.name, self.progress.position)
                return False
            self._swap(shadow)
            self.swapped = True
        logger.info("projection %s: rebuilt; the new read model is live, at position %d",
                    self.name, checkpoint_position(self.name))
        return True

    def _swap(self, shadow: ProjectionRunner) -> None:
        """One transaction: the shadow brought to the live checkpoint, then tables and
        checkpoints swapped. The live checkpoint's row is locked first, as the live
        runner's batches lock it: its batch in hand commits before, the next one after
        (on the new tables; it notices the swap only if the checkpoint moved)."""
        with transaction.atomic():
            live, _ = Checkpoint.objects.select_for_update().get_or_create(name=self.name)
            position = shadow.checkpoint.read()
            while position < live.position:  # the live runner was ahead: catch up to it
                records = [r for r in self.store.read_all(after=position, limit=self.batch_size)
                           if r.position <= live.position]
                covered = live.position if len(records) < self.batch_size else None
                position = shadow._commit_batch(records, position, covered)
            shadow._check_lock()
            swap_in_shadow_tables(self.projection.read_models)
            Checkpoint.objects.filter(name=self.name).update(
                position=position, version=self.projection.version, rebuilt_at=timezone.now(),
                updated_at=timezone.now(), failure="", failed_at=None,
            )
            Rebuild.objects.filter(name=self.name).delete()

    def _check_lock(self) -> None:
        """Inside a batch's transaction: this connection's session still holds the lock."""
        if self._lock is not None and not holds(self._lock):
            raise LockLost(
                "the database connection that held the runner's lock was closed; the batch"
                " in hand is rolled back and the lock taken again"
            )

    def _run_with_retries(self, *, once: bool) -> None:
        while not self.stop.is_set():
            try:
                self._follow(once=once)
                return
            except EventStoreUnavailable as e:
                backoff = self._backoff
                logger.warning(
                    "projection %s: event store unavailable (%s); retrying in %.1f s from"
                    " the checkpoint", self.name, e, backoff,
                )
                self.stop.wait(backoff)
                self._backoff = min(backoff * 2, MAX_BACKOFF)

    def _follow(self, *, once: bool) -> None:
        position = self.checkpoint.read()
        head = self.store.head_position()
        if self.progress.applied == 0:
            self.progress.start = position
        self.progress.position = position
        self.progress.head = head
        self._set_state("catching_up" if position < head else "following")
        if position >= head:
            if isinstance(self.checkpoint, LiveCheckpoint):
                clear_failure(self.name)  # caught up: nothing it failed on is left
            if once:
                return
        logger.info("projection %s: following from position %d", self.name, position)
        with self.store.subscribe(after=position) as subscription:
            self._backoff = FIRST_BACKOFF  # the store answers: a later outage starts over
            moved = time.monotonic()
            while not self.stop.is_set():
                batch = self._collect(subscription)
                # A full batch: more was waiting. Less: it has all that has arrived.
                self._set_state("catching_up" if len(batch) >= self.batch_size else "following")
                # Read after the batch: what the store looked past includes its events.
                covered = subscription.position
                if batch:
                    position = self._commit(batch, position, covered)
                    moved = time.monotonic()
                elif covered is not None and covered > position and (
                    once or time.monotonic() - moved >= CHECKPOINT_INTERVAL
                ):
                    position = self._commit([], position, covered)
                    moved = time.monotonic()
                elif once and not batch and not self.store.read_all(after=position, limit=1):
                    return  # caught up, on a server that sent no checkpoint to say so
                if once and position >= head:
                    return
            covered = subscription.position
            if covered is not None and covered > position:
                self._commit([], position, covered)  # stopping: keep what was looked past

    def _collect(self, subscription: Subscription) -> list[RecordedEvent]:
        """Up to ``batch_size`` events: waits (briefly) only for the first one.

        Then it takes what has already arrived, so a lone live event is committed at
        once, a catch-up fills whole batches, and no batch waits on a trickle: the
        batch is bounded by size and by time.
        """
        return subscription.get_many(self.batch_size, timeout=FIRST_EVENT_WAIT)

    def _commit(
        self, batch: list[RecordedEvent], position: int, covered: int | None = None
    ) -> int:
        """Apply the batch and move the checkpoint in one transaction; the new position.

        ``covered``: the subscription's position after the batch (every event up to it
        is in the batch or before it), so the checkpoint also moves past other
        categories' events, never past an event not applied. Should the projection
        raise on the batch (a value its database refuses, a bug), the batch is applied
        again one event per transaction: the events before the culprit are kept, and
        the runner stops naming the culprit.
        """
        try:
            with self._batch_span(batch):
                return self._commit_batch(batch, position, covered)
        except _ApplyFailed as e:
            if len(batch) == 1:
                raise ProjectionError(self.name, batch[0], str(e)) from e.error
            logger.warning("projection %s: a batch of %d events failed (%s); applying them"
                           " one by one to find the event", self.name, len(batch), e)
        for index, record in enumerate(batch):
            position = self._commit([record], position,
                                    covered if index == len(batch) - 1 else None)
        return position

    def _batch_span(self, batch: list[RecordedEvent]) -> AbstractContextManager[Span | None]:
        """The batch's span, linked to its commands'; none for a move past other events."""
        tracer = _tracer
        if tracer is None or not batch:
            return _NO_SPAN
        return tracer.start_as_current_span(
            f"projection.{self.name}.batch",
            links=_command_links(batch, self.projection.handles),
            attributes={"projection.name": self.name, "projection.batch.count": len(batch),
                        "projection.batch.first_position": batch[0].position,
                        "projection.batch.last_position": batch[-1].position,
                        "projection.rebuild": isinstance(self.checkpoint, ShadowCheckpoint)},
        )

    def _commit_batch(
        self, batch: list[RecordedEvent], position: int, covered: int | None = None
    ) -> int:
        """One transaction: the batch's effect and the checkpoint.

        Only the event types the projection handles are decoded (a tolerant reader);
        the store's own records (types starting with ``$``, such as a tombstone's
        ``$streamDeleted``) pass by; a type no code knows, or data that does not
        decode, stops the runner after the events before it are committed.
        """
        started = time.perf_counter()
        decoded: list[Decoded] = []
        poison: ProjectionError | None = None
        last = position
        handles = self.projection.handles
        for record in batch:
            if record.type in handles:
                try:
                    event = decode_recorded(record)
                except UnreadableEvent as e:
                    poison = ProjectionError(self.name, record, e.reason)
                    break
                decoded.append(Decoded(record, event))
            elif record.type not in EVENT_TYPES and not record.type.startswith("$"):
                poison = ProjectionError(self.name, record, f"unknown event type {record.type!r}")
                break
            last = record.position
        if poison is None and covered is not None and covered > last:
            last = covered
        if last != position:
            with transaction.atomic():
                # The checkpoint first: its row lock queues a second writer (PostgreSQL
                # locks the row; SQLite's IMMEDIATE transactions the whole file) until
                # this commit, after which it finds the checkpoint moved and writes
                # nothing, instead of colliding on the read model's rows. Moving on also
                # clears a failure that an earlier runner recorded.
                if not self.checkpoint.move(position, last):
                    raise CheckpointMoved(
                        f"projection {self.name!r}: the checkpoint is no longer at {position};"
                        " is another runner active?"
                    )
                if decoded:
                    try:
                        self.projection.apply(decoded)
                    except (ProjectionError, OperationalError, InterfaceError):
                        raise  # named already, or the database itself is down
                    except Exception as e:
                        raise _ApplyFailed(e) from e
                self._check_lock()
            applied = len(batch) if poison is None else batch.index(poison.record)
            self.progress.applied += applied
            self.progress.position = last
            self.progress.head = max(self.progress.head, last)  # the head read at start moves
            seconds = time.perf_counter() - started
            duration_ms = round(seconds * 1000, 1)
            if not batch:
                logger.debug("projection %s: checkpoint moved to %d past other events",
                             self.name, last)
            else:
                observe_batch(self.name, applied, seconds)
                logger.info(
                    "projection %s: applied %d events, positions %d..%d, in %.1f ms",
                    self.name, applied, batch[0].position, last, duration_ms,
                    extra={"projection": self.name, "count": applied,
                           "first_position": batch[0].position, "last_position": last,
                           "duration_ms": duration_ms},
                )
            if self.on_progress is not None:
                self.on_progress(self.progress)
        if poison is not None:
            raise poison
        return last
