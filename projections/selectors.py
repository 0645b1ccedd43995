"""The read side's queries for the HTML pages: one function per page, over the read models.

The read models lag the event store by a moment; each page that lists them also says
by how much (the projection's lag), or that the store cannot be asked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from django.core.cache import cache
from django.db.models import Count, QuerySet, Sum

from payments.domain import PaymentStatus
from payments.eventstore import EventStoreError, get_event_store
from projections.management.commands.projection_status import (
    ProjectionStatus,
    projection_statuses,
)
from projections.models import Checkpoint, DeclineView, PaymentView
from projections.projectors import PROJECTIONS, DeclineProjection, PaymentProjection

PAGE_SIZE = 25
LATEST = 10
REPORT_DAYS = 30  # the report's default window, ending at the latest decline
REPORT_ROWS = 500


LAG_CACHE_SECONDS = 5  # how stale the lag on a page may be
PAGE_LAG_CAP = 1000  # events counted per lag for a page; more shows as ">1000"


def lags(names: list[str] | None = None) -> list[ProjectionStatus] | None:
    """Each projection's checkpoint, head and lag; None when the store cannot be asked.

    Measured at most once per ``LAG_CACHE_SECONDS`` per process and checkpoint (Django's
    cache), and counted up to ``PAGE_LAG_CAP`` events: a page load does not scan the
    store, however many people look at the pages while a runner is down.
    """
    names = names or list(PROJECTIONS)
    # Keyed by the checkpoints too: a runner that moves shows at once; a runner that is
    # down (its checkpoint still) costs one bounded count per interval, not per load.
    positions = dict(Checkpoint.objects.filter(name__in=names).values_list("name", "position"))
    key = "projection-lags:" + ",".join(f"{n}@{positions.get(n, 0)}" for n in names)
    found = cache.get(key)
    if found is None:
        try:
            statuses = projection_statuses(get_event_store(), names, lag_cap=PAGE_LAG_CAP)
        except EventStoreError:
            statuses = None
        found = (statuses,)  # a tuple: "unreachable" is cached too
        cache.set(key, found, LAG_CACHE_SECONDS)
    return found[0]


def read_models_version() -> str:
    """What the read-model pages are drawn from, for their live polls (paymentsite.live):
    each projection's checkpoint, head, lag, runner and failure, as ``lags`` has them
    (so a poll costs one query and a cache read)."""
    statuses = lags()
    if statuses is None:
        return "store-unreachable"
    return ",".join(f"{s.name}:{s.position}:{s.head}:{s.lag}:{s.runner_active:d}:{s.failed:d}"
                    f":{s.rebuild.position if s.rebuild else '-'}" for s in statuses)


def failed_projections() -> list[Checkpoint]:
    """The projections whose last runner stopped on an error (read from the database:
    shown even when the event store is down)."""
    return list(Checkpoint.objects.exclude(failure="").order_by("name"))


@dataclass(frozen=True)
class Overview:
    counts: list[tuple[str, int]]  # every status, in life-cycle order
    total: int
    latest: list[PaymentView]
    lags: list[ProjectionStatus] | None
    failures: list[Checkpoint]


def overview() -> Overview:
    """Payments by status, the latest payments and every projection's lag."""
    found = dict(PaymentView.objects.order_by().values_list("status").annotate(n=Count("pk")))
    counts = [(status.value, found.get(status.value, 0)) for status in PaymentStatus]
    return Overview(
        counts=counts,
        total=sum(n for _, n in counts),
        latest=list(PaymentView.objects.order_by("-updated_at", "payment_id")[:LATEST]),
        lags=lags(),
        failures=failed_projections(),
    )


@dataclass(frozen=True)
class Page:
    rows: list[Any]
    number: int
    has_previous: bool
    has_next: bool
    lag: ProjectionStatus | None  # None: the store is unreachable


# The list pages by offset: beyond this many pages (250,000 rows) the database would
# skip rows for nothing and a number can overflow SQL's 64-bit OFFSET; narrow the filters.
MAX_PAGE = 10_000


def _page(queryset: QuerySet, number: int) -> tuple[list[Any], bool]:
    """One page and whether another follows, without counting the whole table."""
    start = (number - 1) * PAGE_SIZE
    rows = list(queryset[start:start + PAGE_SIZE + 1])
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


def payments_page(filters: dict[str, Any], number: int) -> Page:
    """PaymentView rows matching the (already validated) filters, newest change first.

    ``number`` is from 1 to ``MAX_PAGE`` (the view refuses others with a 400); a page
    past the last row is simply empty.
    """
    if not 1 <= number <= MAX_PAGE:
        raise ValueError(f"page {number} is not from 1 to {MAX_PAGE}")
    queryset = PaymentView.objects.filter(
        **{k: v for k, v in filters.items() if v not in (None, "")}
    ).order_by("-updated_at", "payment_id")
    rows, has_next = _page(queryset, number)
    statuses = lags([PaymentProjection.name])
    return Page(rows=rows, number=number, has_previous=number > 1, has_next=has_next,
                lag=statuses[0] if statuses else None)


@dataclass(frozen=True)
class DeclineReport:
    date_from: date | None
    date_to: date | None
    rows: list[DeclineView]  # at most REPORT_ROWS, newest first
    truncated: bool
    by_code: list[tuple[str, int]]
    by_bank: list[tuple[str, int]]
    days: list[date]
    per_day: dict[str, dict[date, int]]  # code -> day -> declines
    lag: ProjectionStatus | None


MAX_REPORT_DAYS = 366  # the longest window: a year of daily bars is already a dense chart


def _shifted(day: date, days: int) -> date:
    """``day`` moved by ``days``, kept inside the calendar (date.min to date.max)."""
    try:
        return day + timedelta(days=days)
    except OverflowError:
        return date.max if days > 0 else date.min


def declines_report(*, code: str | None, bank: str | None, date_from: date | None,
                    date_to: date | None) -> DeclineReport:
    """DeclineView by code, bank and day; without dates, the last 30 days with declines.

    With only ``date_from``, up to the latest decline but at most ``MAX_REPORT_DAYS``;
    with only ``date_to``, the 30 days that end there. Both given may span at most
    ``MAX_REPORT_DAYS`` (the view says so to the user; here it is a ValueError).
    """
    if date_from is not None and date_to is not None and (
            (date_to - date_from).days >= MAX_REPORT_DAYS):
        raise ValueError(f"a report spans at most {MAX_REPORT_DAYS} days")
    queryset = DeclineView.objects.all()
    if code:
        queryset = queryset.filter(decline_code=code)
    if bank:
        queryset = queryset.filter(bank_name=bank)
    if date_to is None:
        latest = queryset.order_by("-date").values_list("date", flat=True).first()
        if date_from is None:
            date_to = latest
        else:
            date_to = min(max(latest or date_from, date_from),
                          _shifted(date_from, MAX_REPORT_DAYS - 1))
    if date_from is None and date_to is not None:
        date_from = _shifted(date_to, -(REPORT_DAYS - 1))
    if date_from is not None:
        queryset = queryset.filter(date__gte=date_from)
    if date_to is not None:
        queryset = queryset.filter(date__lte=date_to)
    rows = list(queryset.order_by("-date", "decline_code", "bank_name")[:REPORT_ROWS + 1])
    totals = queryset.order_by()
    per_day: dict[str, dict[date, int]] = defaultdict(dict)
    for day, decline_code, n in totals.values_list("date", "decline_code").annotate(
            n=Sum("count")):
        per_day[decline_code][day] = n
    days: list[date] = []
    if date_from is not None and date_to is not None and per_day:
        days = [date_from + timedelta(days=i) for i in range((date_to - date_from).days + 1)]
    statuses = lags([DeclineProjection.name])
    return DeclineReport(
        date_from=date_from, date_to=date_to,
        rows=rows[:REPORT_ROWS], truncated=len(rows) > REPORT_ROWS,
        by_code=list(totals.values_list("decline_code").annotate(n=Sum("count"))
                     .order_by("-n", "decline_code")),
        by_bank=list(totals.values_list("bank_name").annotate(n=Sum("count"))
                     .order_by("-n", "bank_name")),
        days=days, per_day=dict(sorted(per_day.items())),
        lag=statuses[0] if statuses else None,
    )
