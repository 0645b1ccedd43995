"""``{% probed_date_hierarchy cl %}``: Django's own ``{% date_hierarchy cl %}``, with the
questions it asks of the list's queryset answered by index probes.

Django's tag asks ``cl.queryset`` two things: ``aggregate(first=Min(f), last=Max(f))``
(SQLite then reads every row) and ``datetimes(f, kind)`` / ``dates(f, kind)`` (``SELECT
DISTINCT`` over the truncated date of every row: on SQLite a Python function per row).
At a million rows that is seconds. Here Django's function runs unchanged on a stand-in
changelist whose queryset answers those two from ``projections.admin_probes``, a few
index seeks. ``templates/admin/projections/change_list.html`` puts this tag in place of
Django's for every changelist of this app.
"""

from __future__ import annotations

from typing import Any

from django.contrib.admin.templatetags import admin_list
from django.contrib.admin.templatetags.base import InclusionAdminNode
from django.contrib.admin.views.main import ChangeList
from django.db.models import Max, Min, QuerySet
from django.template import Library
from django.template.base import Parser, Token

from projections.admin_probes import date_bounds, distinct_periods

register = Library()


class ProbedQuerySet:
    """The two questions Django's date hierarchy asks of a queryset, and nothing else."""

    def __init__(self, queryset: QuerySet, field_name: str) -> None:
        self.queryset = queryset
        self.field_name = field_name
        self.bounds: tuple[Any, Any] | None = None
        self.bounds_known = False  # the tag asks the bounds first, then the periods

    def aggregate(self, **expressions: Min | Max) -> dict[str, Any]:
        """``first``/``last``: the field's ``Min`` and ``Max`` (what the tag asks)."""
        asked = {name: (type(e), e.source_expressions[0].name) for name, e in expressions.items()}
        if asked != {"first": (Min, self.field_name), "last": (Max, self.field_name)}:
            raise NotImplementedError(f"only the date hierarchy's bounds, not {asked}")
        self.bounds, self.bounds_known = date_bounds(self.queryset, self.field_name), True
        first, last = self.bounds if self.bounds is not None else (None, None)
        return {"first": first, "last": last}

    def datetimes(self, field_name: str, kind: str) -> list[Any]:
        if self.bounds_known and self.bounds is None:
            return []  # no row has a date
        return distinct_periods(self.queryset, field_name, kind, self.bounds)

    dates = datetimes  # distinct_periods answers for date and datetime fields alike


class ProbedChangeList:
    """The changelist as Django's tag sees it, but for its queryset."""

    def __init__(self, changelist: ChangeList) -> None:
        self.changelist = changelist
        self.queryset = ProbedQuerySet(changelist.queryset, changelist.date_hierarchy)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.changelist, name)


def date_hierarchy(cl: ChangeList) -> dict[str, Any] | None:
    """The context of ``admin/date_hierarchy.html``, made by Django's own function."""
    if not cl.date_hierarchy:
        return None
    return admin_list.date_hierarchy(ProbedChangeList(cl))


@register.tag(name="probed_date_hierarchy")
def probed_date_hierarchy_tag(parser: Parser, token: Token) -> InclusionAdminNode:
    """Rendered with ``admin/date_hierarchy.html``, overridable per app and model."""
    return InclusionAdminNode(parser, token, func=date_hierarchy,
                              template_name="date_hierarchy.html", takes_context=False)
