"""Read your writes (DESIGN.md): a read of a projection given the position of a command's
event waits, boundedly, until the projection has applied it, or says that it is stale.

Every command answers with its event's position (``Payment.position``: the API's
``position`` and ``X-Event-Position``, ``manage.py api --json``, the HTML redirect's
``?after=``). Every list that reads a projection (``/api/payments/``, ``/api/declines/``,
``/payments/``, ``/declines/``, the overview) passes its ``?after=`` to
``wait_until_applied`` before it queries, and answers with ``headers``: this module is
the one place of the rule.

The runners are other processes, so there is nothing to be woken by: the wait reads the
projection's checkpoint row (one primary-key read) with pauses that double from
``FIRST_PAUSE`` to ``LONGEST_PAUSE``: a read that waits the whole bound costs about
a hundred such reads, and one whose projection is a moment behind, a handful. It never
waits inside a transaction: on SQLite that would hold the write lock the runner needs,
and a snapshot would never see the runner's commit (views run in autocommit).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from payments.domain import InvalidInput
from payments.eventstore import EventStoreError, get_event_store
from projections.models import Checkpoint

AFTER = "after"  # the query parameter
STALE_HEADER = "X-Read-Model-Stale"  # "true" or "false", on an answer to a read with after
POSITION_HEADER = "X-Read-Model-Position"  # the projection's checkpoint it was read at
FIRST_PAUSE = 0.002  # s
LONGEST_PAUSE = 0.020  # s: a caught-up projection is seen at most this late
MAX_POSITION = 2**63 - 1  # a checkpoint is a signed 64-bit number
_POSITION = re.compile(r"[0-9]{1,19}", re.ASCII)

_pause: Callable[[float], None] = time.sleep  # tests hold the wait here


@dataclass(frozen=True)
class Freshness:
    """How a read with ``?after=`` stands: the event asked for, and where the
    projections it read had got to (their lowest checkpoint) when it read them."""

    after: int
    position: int
    waited: bool  # it waited (up to READ_YOUR_WRITES_TIMEOUT), or only looked

    @property
    def stale(self) -> bool:
        """The answer may not show the change at ``after``."""
        return self.position < self.after


def parse_after(value: str | int | None) -> int | None:
    """``?after=``: a store position, a whole number from 0; absent or empty: None."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_POSITION:
        return value
    text = value.strip() if isinstance(value, str) else ""
    if _POSITION.fullmatch(text) and int(text) <= MAX_POSITION:
        return int(text)
    raise InvalidInput(AFTER, f"must be a whole number from 0 to {MAX_POSITION} (the"
                              f" `position` a command answered), not {value!r:.40}")


def applied_position(projections: Sequence[str]) -> int:
    """The lowest checkpoint of ``projections``: every event up to it is in all of them."""
    found = dict(Checkpoint.objects.filter(name__in=projections)
                 .values_list("name", "position"))
    return min(found.get(name, 0) for name in projections)


def wait_until_applied(projections: Sequence[str], after: str | int | None, *,
                       wait: bool = True) -> Freshness | None:
    """Wait until every one of ``projections`` has applied the event at ``after``, at most
    ``READ_YOUR_WRITES_TIMEOUT``; then say how it stands. None when no ``after`` is given.

    ``wait=False`` only looks (a page's live poll: it asks again in a second anyway).
    A position beyond the store's last event names no event of this store: ``after`` is
    refused (``InvalidInput``) rather than waited for in vain; while the store cannot be
    asked, it is waited for.
    """
    wanted = parse_after(after)
    if wanted is None:
        return None
    position = applied_position(projections)
    if position >= wanted:
        return Freshness(after=wanted, position=position, waited=False)
    timeout = settings.READ_YOUR_WRITES_TIMEOUT
    if not wait or timeout <= 0 or connection.in_atomic_block:
        return Freshness(after=wanted, position=position, waited=False)
    _refuse_beyond_head(wanted)
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while (remaining := deadline - time.monotonic()) > 0:
        _pause(min(pause, remaining))
        pause = min(pause * 2, LONGEST_PAUSE)
        position = applied_position(projections)
        if position >= wanted:
            break
    return Freshness(after=wanted, position=position, waited=True)


def _refuse_beyond_head(wanted: int) -> None:
    try:
        head = get_event_store().head_position()
    except EventStoreError:
        return
    if wanted > head:
        raise InvalidInput(AFTER, f"{wanted} is beyond the event store's last position,"
                                  f" {head}: no command answered it here")


def headers(freshness: Freshness | None) -> dict[str, str]:
    """What an answer to a read with ``?after=`` says: stale or not, and at which position."""
    if freshness is None:
        return {}
    return {STALE_HEADER: "true" if freshness.stale else "false",
            POSITION_HEADER: str(freshness.position)}
