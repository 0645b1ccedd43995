"""``manage.py projection_status [--json]``: where each projection is, and how far behind.

For every projection: its checkpoint (position and when it last moved), the store's
head position, the lag in events still to apply (counted up to a cap, so a projection
that is far behind costs one bounded read), whether a runner holds its lock, the
projection version its read model was built by, and a ``--rebuild`` in progress (or
abandoned) with how far it has got. Read-only: it creates no checkpoint and takes no
lock for longer than a check.
"""

from __future__ import annotations

import json
import logging
from argparse import ArgumentParser
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from payments.eventstore import EventStore, EventStoreError, UnreadableEvent, get_event_store
from paymentsite.metrics import ProjectionReading
from projections.locks import is_locked
from projections.models import Checkpoint, Rebuild
from projections.projectors import PROJECTIONS
from projections.runner import rebuild_lock_name

LAG_CAP = 100_000
METRICS_LAG_CAP = 1000  # events counted per scrape; the lag in seconds says how far beyond

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lag:
    """Events after a checkpoint; ``capped`` means "more than ``events``"."""

    events: int
    capped: bool
    oldest: datetime | None = None  # when the first event after the checkpoint was recorded

    def __str__(self) -> str:
        return f">{self.events}" if self.capped else str(self.events)


@dataclass(frozen=True)
class RebuildStatus:
    """A ``--rebuild`` beside the live read model: where its shadow tables are."""

    version: int
    position: int
    head: int
    started_at: datetime
    active: bool  # False: its command stopped half way (the next --rebuild starts over)

    @property
    def done(self) -> float:
        """The fraction of the store the shadow has applied, by position."""
        return min(self.position / self.head, 1.0) if self.head else 1.0

    def __str__(self) -> str:
        if not self.active:
            return f"abandoned at {self.done:.0%} (run --rebuild again to start over)"
        return (f"rebuilding version {self.version}: {self.done:.0%}"
                f" ({self.position} of {self.head})")

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "position": self.position, "head": self.head,
                "progress": round(self.done, 4), "started_at": self.started_at.isoformat(),
                "active": self.active}


@dataclass(frozen=True)
class ProjectionStatus:
    name: str
    position: int
    updated_at: datetime | None  # None: the projection has never run
    head: int
    lag: Lag
    runner_active: bool
    failure: str = ""  # why its last runner stopped on an error; empty: it did not
    failed_at: datetime | None = None
    version: int = 1  # the projection version its read model was built by
    code_version: int = 1  # the version this code's runner applies
    rebuild: RebuildStatus | None = None

    @property
    def failed(self) -> bool:
        return bool(self.failure)

    @property
    def state(self) -> str:
        """``failed``, ``running`` or ``stopped``: what an operator looks at first."""
        if self.failed:
            return "failed"
        return "running" if self.runner_active else "stopped"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "position": self.position,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "head": self.head,
            "lag": self.lag.events,
            "lag_capped": self.lag.capped,
            "runner_active": self.runner_active,
            "state": self.state,
            "failure": self.failure or None,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "version": self.version,
            "code_version": self.code_version,
            "rebuild": self.rebuild.as_dict() if self.rebuild else None,
        }


def count_lag(store: EventStore, position: int, head: int, cap: int | None = None) -> Lag:
    """The events after ``position``, read at most ``cap + 1`` of them (positions need
    not be dense, so head minus position is not a count), and when the first was recorded."""
    cap = LAG_CAP if cap is None else cap
    if position >= head:
        return Lag(0, capped=False)
    found = store.read_all(after=position, limit=cap + 1)
    oldest = found[0].recorded_at if found else None
    if len(found) > cap:
        return Lag(cap, capped=True, oldest=oldest)
    return Lag(len(found), capped=False, oldest=oldest)


def projection_statuses(
    store: EventStore, names: Iterable[str], *, lag_cap: int | None = None
) -> list[ProjectionStatus]:
    """One status per projection; the head is read once for all of them.

    ``lag_cap`` bounds each lag read (default ``LAG_CAP``): a frequent caller, such
    as the readiness probe, only needs to know "far behind", cheaply.
    """
    names = list(names)
    head = store.head_position()
    checkpoints = {c.name: c for c in Checkpoint.objects.filter(name__in=names)}
    rebuilds = {r.name: r for r in Rebuild.objects.filter(name__in=names)}
    lags: dict[int, Lag] = {}  # projections at the same position share one read
    statuses = []
    for name in names:
        checkpoint = checkpoints.get(name)
        position = checkpoint.position if checkpoint else 0
        if position not in lags:
            lags[position] = count_lag(store, position, head, lag_cap)
        statuses.append(ProjectionStatus(
            name=name,
            position=position,
            updated_at=checkpoint.updated_at if checkpoint else None,
            head=head,
            lag=lags[position],
            runner_active=is_locked(name),
            failure=checkpoint.failure if checkpoint else "",
            failed_at=checkpoint.failed_at if checkpoint else None,
            version=checkpoint.version if checkpoint else PROJECTIONS[name].version,
            code_version=PROJECTIONS[name].version,
            rebuild=_rebuild_status(rebuilds.get(name), head),
        ))
    return statuses


def projection_readings(names: Iterable[str]) -> list[ProjectionReading]:
    """The projections as a scrape of /metrics or of a runner's port shows them: checkpoint,
    failure, head and lag (up to ``METRICS_LAG_CAP`` events) read now, so a runner that is
    down or stuck shows too. Without the store, the checkpoints alone."""
    names = list(names)
    try:
        statuses = projection_statuses(get_event_store(), names, lag_cap=METRICS_LAG_CAP)
    except EventStoreError as e:
        logger.warning("metrics: the event store did not answer; projections' lag unknown: %s",
                       e)
        checkpoints = {c.name: c for c in Checkpoint.objects.filter(name__in=names)}
        readings = []
        for name in names:
            checkpoint = checkpoints.get(name)
            readings.append(ProjectionReading(
                name=name, position=checkpoint.position if checkpoint else 0,
                failed=bool(checkpoint and checkpoint.failure)))
        return readings
    return [ProjectionReading(name=s.name, position=s.position, failed=s.failed, head=s.head,
                              lag_events=s.lag.events, oldest_unapplied=s.lag.oldest)
            for s in statuses]


def _rebuild_status(rebuild: Rebuild | None, head: int) -> RebuildStatus | None:
    if rebuild is None:
        return None
    return RebuildStatus(version=rebuild.version, position=rebuild.position, head=head,
                         started_at=rebuild.started_at,
                         active=is_locked(rebuild_lock_name(rebuild.name)))


def format_table(statuses: list[ProjectionStatus]) -> str:
    """A plain aligned table: names and times left-aligned, numbers right-aligned."""
    header = ("projection", "checkpoint", "updated", "head", "lag", "runner")
    rows = [
        (
            s.name,
            str(s.position),
            s.updated_at.isoformat(timespec="seconds") if s.updated_at else "never",
            str(s.head),
            str(s.lag),
            "FAILED" if s.failed else "active" if s.runner_active else "-",
        )
        for s in statuses
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4}
    lines = [
        "  ".join(
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ).rstrip()
        for row in [header, *rows]
    ]
    notes = [
        f"FAILED: {s.name} at {s.failed_at.isoformat(timespec='seconds') if s.failed_at else '?'}:"
        f" {s.failure}"
        for s in statuses if s.failed
    ] + [
        f"note: {s.name}'s checkpoint {s.position} is past the head {s.head}"
        " (was the event store replaced?)"
        for s in statuses if s.position > s.head
    ] + [
        f"rebuild: {s.name} {s.rebuild}" for s in statuses if s.rebuild is not None
    ] + [
        f"VERSION: {s.name}'s read model was built by projection version {s.version}; this"
        f" code applies version {s.code_version}: run_projection {s.name} --rebuild"
        for s in statuses if s.version != s.code_version and s.position
    ]
    return "\n".join(lines + notes)


class Command(BaseCommand):
    help = (
        "Show each projection's checkpoint, the event store's head position, the lag in"
        f" events (counted up to {LAG_CAP}; more shows as >{LAG_CAP}) and whether a"
        " runner is active. --json: the same as JSON (lag_capped: true means more than"
        " lag)."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            store = get_event_store()
        except ValueError as e:  # an EVENTSTORE_URI this code does not support
            raise CommandError(str(e)) from e
        try:
            statuses = projection_statuses(store, PROJECTIONS)
        except UnreadableEvent as e:
            raise CommandError(f"event store: {e}") from e
        except EventStoreError as e:
            raise CommandError(f"event store unavailable: {e}") from e
        if options["json"]:
            head = statuses[0].head if statuses else 0
            self.stdout.write(json.dumps(
                {"head": head, "projections": [s.as_dict() for s in statuses]}, indent=2
            ))
        else:
            self.stdout.write(format_table(statuses))
