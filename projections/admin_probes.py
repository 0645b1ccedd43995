"""What the admin's changelist asks of a whole table, answered by index probes instead.

Django's changelist finds the date drill-down's periods with ``SELECT DISTINCT`` over
the truncated date of every (filtered) row (on SQLite a Python function per row), the
start level with ``MIN`` and ``MAX`` in one query (SQLite then reads every row), and a
list filter's values with ``SELECT DISTINCT`` over the column. At a million rows that
is seconds. The same answers, here, cost a few seeks in an index whose first column is
the one asked about (or whose first columns are the filters' equalities, then it):

* ``date_bounds``: the first and the last value, each as ``ORDER BY … LIMIT 1``;
* ``distinct_periods``: those two, then one ``EXISTS`` per period between them, all in
  one query (at most 12 months in a year, 31 days in a month);
* ``distinct_values``: a loose index scan, each value the ``MIN`` above the previous
  one (a recursive query: one seek per value, whatever the number of rows).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from typing import Any

from django.conf import settings
from django.contrib.admin.utils import get_fields_from_path
from django.db import connections, models, router
from django.db.models import Exists, QuerySet, Subquery
from django.utils import timezone

from payments.rawsql import FromDb

KINDS = ("year", "month", "day")
PROBES_PER_QUERY = 100  # EXISTS per statement (only years can be that many)


def _zone(field: models.Field) -> tzinfo | None:
    """Where Django truncates this field's values: the current time zone for an aware
    datetime field (as ``QuerySet.datetimes``), nowhere for dates and naive datetimes."""
    if isinstance(field, models.DateTimeField) and settings.USE_TZ:
        return timezone.get_current_timezone()
    return None


def _local(value: date, zone: tzinfo | None) -> date:
    """The value as a naive local datetime (or the date itself)."""
    if zone is not None and isinstance(value, datetime) and timezone.is_aware(value):
        return timezone.localtime(value, zone).replace(tzinfo=None)
    return value


def _period_start(value: date, kind: str) -> date:
    """The start of the ``kind`` (year, month or day) holding the value, of its type."""
    start = date(value.year, 1 if kind == "year" else value.month,
                 value.day if kind == "day" else 1)
    return datetime(start.year, start.month, start.day) if isinstance(value, datetime) \
        else start


def _next_start(start: date, kind: str) -> date | None:
    """The start of the following period; None after the last one the calendar has."""
    try:
        if kind == "year":
            return start.replace(year=start.year + 1)
        if kind == "month":
            return (start + timedelta(days=32)).replace(day=1)  # start is the 1st
        return start + timedelta(days=1)
    except (ValueError, OverflowError):
        return None


def _present(queryset: QuerySet, field_name: str) -> QuerySet:
    return queryset.filter(**{f"{field_name}__isnull": False}).order_by()


def _within(queryset: QuerySet, field_name: str, start: date, end: date) -> QuerySet:
    """The queryset's rows from ``start`` to before ``end``, that range written first.

    The list is often narrowed to a wider range of the same column already (the
    year or month chosen above); given two ranges on one column, SQLite seeks with the
    first one written and filters by the other, which would read the wider range."""
    within = queryset.model._base_manager.using(queryset.db).filter(
        **{f"{field_name}__gte": start, f"{field_name}__lt": end})
    if queryset.query.distinct:
        within = within.distinct()
    return within & queryset.order_by()


def date_bounds(queryset: QuerySet, field_name: str) -> tuple[Any, Any] | None:
    """``(MIN, MAX)`` of the field over the queryset (None if it has no value), in one
    statement of two ``ORDER BY … LIMIT 1`` probes: SQLite answers ``MIN`` and ``MAX``
    asked together by reading every row."""
    present = _present(queryset, field_name)
    last = present.order_by(f"-{field_name}").values(field_name)[:1]
    row = (present.order_by(field_name).annotate(probed_last=Subquery(last))
           .values_list(field_name, "probed_last")[:1])
    found = list(row)
    return (found[0][0], found[0][1]) if found else None


def distinct_periods(queryset: QuerySet, field_name: str, kind: str,
                     bounds: tuple[Any, Any] | None = None) -> list[Any]:
    """What ``queryset.datetimes(field_name, kind)`` (a datetime field) or
    ``queryset.dates(field_name, kind)`` (a date field) returns, in ascending order:
    the start of every year, month or day that holds a row. ``bounds`` is
    ``date_bounds(queryset, field_name)`` if the caller has it already.

    Two statements whatever the number of rows (and one more per 100 periods between
    the first and the last, which only years can need)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    zone = _zone(get_fields_from_path(queryset.model, field_name)[-1])
    if bounds is None:
        bounds = date_bounds(queryset, field_name)
    if bounds is None:
        return []

    def aware(start: date) -> date:
        return timezone.make_aware(start, zone) if zone is not None else start

    first, last = (_period_start(_local(value, zone), kind) for value in bounds)
    starts: list[date] = []
    start: date | None = first
    while start is not None and start <= last:
        starts.append(start)
        start = _next_start(start, kind)
    held = {first, last}
    present = _present(queryset, field_name)
    between = starts[1:-1]
    for offset in range(0, len(between), PROBES_PER_QUERY):
        chunk = between[offset:offset + PROBES_PER_QUERY]
        probes: dict[str, Exists] = {}
        for i, start in enumerate(chunk):
            following = _next_start(start, kind)  # not None: the last period is after it
            probes[f"period_{i}"] = Exists(
                _within(queryset, field_name, aware(start), aware(following)))
        # One row (the first one, an index seek) carries every answer.
        flags = present.order_by(field_name).annotate(**probes).values_list(*probes)[:1]
        for start, flag in zip(chunk, next(iter(flags)), strict=True):
            if flag:
                held.add(start)
    return [aware(start) for start in starts if start in held]


def distinct_values(model: type[models.Model], field_name: str,
                    using: str | None = None) -> list[Any]:
    """``SELECT DISTINCT field FROM table ORDER BY field`` over the whole table, as a
    loose index scan: each value is the ``MIN`` above the one before (one seek each in
    an index that starts with the column), and ``None`` last if a row has no value."""
    field = model._meta.get_field(field_name)
    connection = connections[using or router.db_for_read(model)]
    quote = connection.ops.quote_name
    table, column = quote(model._meta.db_table), quote(field.column)
    sql = (
        f"WITH RECURSIVE found(value) AS ("
        f" SELECT MIN({column}) FROM {table}"
        f" UNION ALL SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > found.value)"
        f" FROM found WHERE found.value IS NOT NULL"
        f") SELECT value FROM found WHERE value IS NOT NULL ORDER BY value"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        raw = [row[0] for row in cursor.fetchall()]
        has_null = False
        if field.null:
            cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} IS NULL)")
            has_null = bool(cursor.fetchone()[0])
    from_db = FromDb(field, model._meta.db_table, connection)
    values = [from_db(value) for value in raw]
    return [*values, None] if has_null else values
