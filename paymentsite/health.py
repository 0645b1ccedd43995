"""Probes for a container runtime or load balancer: ``/healthz`` and ``/readyz``.

``/healthz`` (liveness) only says the process answers: it touches nothing, so a slow
store never gets a healthy process restarted. ``/readyz`` (readiness) says whether
requests can be served: the event store answers within a short deadline, the
database a trivial query, and no projection's runner has stopped on an error (the
read models would silently fall behind: a failed projection makes it unready, with the
runner's one-line reason). It also reports each projection's checkpoint and lag (as
``manage.py projection_status`` computes them), but lag alone does not make it unready.

Both are anonymous and exempt from the HTTPS redirect (a healthcheck asks over plain
HTTP on localhost), so they tell check names, ok/fail and numbers, never a URI, a
host or an error's text; the reason of a failure goes to the log.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from payments.eventstore import EventStore, EventStoreError, UnreadableEvent, get_event_store
from projections.management.commands.projection_status import (
    ProjectionStatus,
    projection_statuses,
)
from projections.projectors import PROJECTIONS
from projections.selectors import failed_projections

logger = logging.getLogger(__name__)

STORE_DEADLINE = 2.0  # seconds: a probe must answer before the prober's own timeout
LAG_CAP = 1000  # events counted per lag on each probe; more shows as lag_capped

# The head is read in a worker so the probe can stop waiting at the deadline (a call
# that hangs still ends at EVENTSTORE_TIMEOUT, in the worker). A forked process (a
# gunicorn worker of a preloaded app, say) gets a pool of its own: the parent's worker
# threads do not exist in the child, and its pool would never run a probe.
_store_probe: ThreadPoolExecutor


def _new_probe_pool() -> None:
    global _store_probe  # one pool per process, replaced on fork
    _store_probe = ThreadPoolExecutor(max_workers=2, thread_name_prefix="readyz")


_new_probe_pool()
os.register_at_fork(after_in_child=_new_probe_pool)


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` found; projections are None when they could not be read."""

    event_store: bool
    database: bool
    projections: list[ProjectionStatus] | None
    failed: dict[str, str] = field(default_factory=dict)  # projection -> why it stopped

    @property
    def ready(self) -> bool:
        return self.event_store and self.database and not self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "unavailable",
            "checks": {
                "event_store": "ok" if self.event_store else "fail",
                "database": "ok" if self.database else "fail",
                "projections": "fail" if self.failed else "ok",
            },
            "failed_projections": self.failed,
            "projections": None if self.projections is None
            else [s.as_dict() for s in self.projections],
        }


def readiness() -> Readiness:
    """Check the event store and the database, then read the projections' lag."""
    store = _reachable_store()
    database = _database_reachable()
    failed = _failed_projections() if database else {}
    if store is None or not database:
        return Readiness(event_store=store is not None, database=database, projections=None,
                         failed=failed)
    try:
        statuses = projection_statuses(store, PROJECTIONS, lag_cap=LAG_CAP)
    except UnreadableEvent as e:  # the store answers; a runner will stop on that event
        logger.error("readiness: %s", e)
        return Readiness(event_store=True, database=True, projections=None, failed=failed)
    except EventStoreError as e:  # gone between the two reads
        logger.warning("readiness: event store failed reading the lag: %s", e)
        return Readiness(event_store=False, database=True, projections=None, failed=failed)
    except DatabaseError as e:
        logger.warning("readiness: database failed reading the checkpoints: %s", e)
        return Readiness(event_store=True, database=False, projections=None)
    return Readiness(event_store=True, database=True, projections=statuses, failed=failed)


def _failed_projections() -> dict[str, str]:
    """Each projection whose runner stopped on an error, with its reason."""
    try:
        return {checkpoint.name: checkpoint.failure for checkpoint in failed_projections()}
    except DatabaseError as e:
        logger.warning("readiness: database failed reading the checkpoints: %s", e)
        return {}


def _reachable_store() -> EventStore | None:
    """The store, if its head position could be read within ``STORE_DEADLINE``."""
    try:
        store = get_event_store()
        _store_probe.submit(store.head_position).result(timeout=STORE_DEADLINE)
    except Exception as e:  # whatever it is (timeout, bad URI, refused), not ready
        logger.warning("readiness: event store check failed: %s", str(e) or type(e).__name__)
        return None
    return store


def _database_reachable() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as e:  # whatever it is, no query can be served
        logger.warning("readiness: database check failed: %s", e)
        return False
    return True


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. Nothing else is asked."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: 200 when the event store and the database answer, 503 naming which not."""
    found = readiness()
    return JsonResponse(found.as_dict(), status=200 if found.ready else 503)
