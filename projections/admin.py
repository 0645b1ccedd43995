"""A read-only admin over the read models and the projections' checkpoints.

The projections own these tables: anything typed into a form here would be
overwritten by the next event (or, for a checkpoint, would skip or repeat events).
So nobody may add, change or delete; staff may look. The lists are built for a
table of millions of rows: no full count, filters and sorting only on indexed
columns, and the payment search goes by primary key or by indexed exact matches.
The date drill-down (``templates/admin/projections/change_list.html``) and the lists
of a column's values (``IndexedValuesListFilter``) find what they show by index probes
(``projections.admin_probes``), not by reading every row.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Page, Paginator
from django.db.models import BigIntegerField, Model, Q, QuerySet, Value
from django.http import HttpRequest, QueryDict
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from payments.domain import PaymentError
from payments.eventstore import EventStoreError, get_event_store
from payments.history import nearest_page, page_links, page_summary
from payments.services import PaymentNotFound, find_payment
from projections.admin_probes import distinct_values
from projections.locks import is_locked
from projections.models import Checkpoint, DeclineView, PaymentView

admin.site.site_header = "Payments"
admin.site.site_title = "Payments admin"
admin.site.index_title = "Read models and projections"
# The list of every model beside each page takes a quarter of a laptop's width, which
# the read models' lists need; the index page and the breadcrumbs lead everywhere.
admin.site.enable_nav_sidebar = False

COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):
    """Counts at most ``COUNT_CAP + 1`` rows, so a list page never counts a whole table.

    ``show_full_result_count = False`` only drops the admin's *second* count; the
    paginator still counts the (filtered) list, which unfiltered is every row.
    Above the cap the list shows ``COUNT_CAP + 1`` rows and as many pages: narrow it
    with a filter, the date links or a search to reach older rows.
    """

    @cached_property
    def count(self) -> int:
        """The number of rows, but at most ``COUNT_CAP + 1`` (a bounded subquery)."""
        return self.object_list[: COUNT_CAP + 1].count()


class IndexedValuesListFilter(admin.AllValuesFieldListFilter):
    """Django's list of every value of a column, found by a loose index scan (one seek
    per value in an index that starts with the column) instead of ``SELECT DISTINCT``,
    which reads the whole index: about 60 ms on a million rows against under 1 ms.

    The values are the whole table's, as Django's are when the admin's queryset is the
    whole table (it is, for every model here).
    """

    def __init__(self, field: Any, request: HttpRequest, params: dict[str, Any],
                 model: type[Model], model_admin: admin.ModelAdmin, field_path: str) -> None:
        super().__init__(field, request, params, model, model_admin, field_path)
        if field_path != field.name:
            raise ValueError(f"{type(self).__name__} lists a column of the model's own"
                             f" table, not {field_path!r}")
        self.lookup_choices = distinct_values(model, field.name)


class _ChangeList(ChangeList):
    """Django's list, with a date drill-down year beyond any date (``?date__year=-10**18``)
    refused as a bad filter (the list without it and "?e=1"), as Django refuses a year
    that is merely out of range; Django itself lets that OverflowError through: a 500."""

    def get_filters(self, request: HttpRequest) -> Any:
        try:
            return super().get_filters(request)
        except OverflowError as e:
            raise IncorrectLookupParameters(e) from e


class ReadOnlyAdmin(admin.ModelAdmin):
    """Staff may view; nobody adds, changes or deletes what a projection writes."""

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return _ChangeList

    actions = None
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts are one COUNT per filter choice
    list_per_page = 100

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return bool(request.user.is_active and request.user.is_staff)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_staff)


def _unquote(term: str) -> str:
    """The search term without surrounding whitespace or one pair of matching quotes."""
    term = term.strip()
    if len(term) >= 2 and term[0] == term[-1] and term[0] in "\"'":
        term = term[1:-1].strip()
    return term


_HISTORY_QUERY_ATTR = "_projections_admin_query"


def _history_links(page: Page, query: QueryDict) -> SafeString:
    """Links to the other pages of the history, keeping the rest of the query."""
    if page.paginator.num_pages == 1:
        return SafeString("")

    def link(number: int, label: str, element_id: str = "") -> SafeString:
        linked = query.copy()
        linked["events_page"] = str(number)
        return format_html('<a{} href="?{}">{}</a>',
                           format_html(' id="{}"', element_id) if element_id else "",
                           linked.urlencode(), label)

    parts = []
    if page.has_previous():
        parts.append(link(page.previous_page_number(), "← older", "event-history-older"))
    for number in page_links(page):
        if number == page.number:
            parts.append(format_html("<strong>{}</strong>", number))
        elif isinstance(number, int):
            parts.append(link(number, str(number)))
        else:
            parts.append(format_html("{}", number))
    if page.has_next():
        parts.append(link(page.next_page_number(), "newer →", "event-history-newer"))
    return format_html('<p id="event-history-pages">{}</p>',
                       format_html_join(" ", "{}", ((part,) for part in parts)))


def history_url(payment_id: UUID) -> str:
    """The HTML event-history page of a payment (the page arrives with the HTML views)."""
    return f"/payments/{payment_id}/"


@admin.register(PaymentView)
class PaymentViewAdmin(ReadOnlyAdmin):
    # Built to fit 1280 px on one line a row: a short id (the whole one on hover and on
    # the row's page), amounts with their currency, a long bank name cut (whole on hover).
    list_display = (
        "short_id", "status", "amount_shown", "settled_shown", "refunded_shown", "bank",
        "code", "updated", "version", "history_link",
    )
    # Each filter has an index: status, bank_name, currency (each with -updated_at),
    # -created_at and -updated_at (see the model's Meta.indexes). The values of
    # currency and bank_name come from the first column of their index.
    list_filter = (
        "status", ("currency", IndexedValuesListFilter),
        ("bank_name", IndexedValuesListFilter), "created_at", "updated_at",
    )
    # Shows the box; get_search_results does the searching.
    search_fields = ("=payment_id", "=reference", "=bank_name")
    search_help_text = ("A payment id (full UUID), a merchant reference or a bank name (exact,"
                        " case-sensitive).")
    date_hierarchy = "updated_at"
    ordering = ("-updated_at",)
    sortable_by = ("short_id", "updated")  # the indexed ones: no sort of a whole table
    fieldsets = (
        (None, {"fields": (
            "payment_id", "status", ("amount", "currency"), "reference",
            ("settled_amount", "refunded_amount"), ("bank_name", "decline_code"),
        )}),
        ("Stream", {"fields": (
            ("created_at", "updated_at"), ("version", "position"), "history_link",
        )}),
        ("Events, read from the event store", {"fields": ("event_history",)}),
    )
    readonly_fields = ("history_link", "event_history")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[PaymentView], search_term: str
    ) -> tuple[QuerySet[PaymentView], bool]:
        """A UUID looks up the primary key; any term is also an exact merchant reference
        (an order id may well be a UUID) and, if not a UUID, an exact bank name.

        Django's own ``=payment_id`` search compares the column cast to text (no index)
        and ``icontains`` reads every row; these are index lookups (the reference's
        index holds only rows that have one: the term is never empty here).
        """
        term = _unquote(search_term)
        if not term:
            return queryset, False
        by_reference = Q(reference=term) & ~Q(reference="")  # the partial index's condition
        try:
            payment_id = UUID(term)
        except ValueError:
            return queryset.filter(Q(bank_name=term) | by_reference), False
        return queryset.filter(Q(payment_id=payment_id) | by_reference), False

    @admin.display(description="payment", ordering="payment_id")
    def short_id(self, obj: PaymentView) -> SafeString:
        """The first 8 hex digits: unique enough to tell rows apart, one line wide."""
        return format_html('<span class="short-id" title="{}">{}…</span>', obj.payment_id,
                           str(obj.payment_id)[:8])

    @admin.display(description="amount")
    def amount_shown(self, obj: PaymentView) -> str:
        return f"{obj.amount} {obj.currency}"

    @admin.display(description="settled")
    def settled_shown(self, obj: PaymentView) -> str:
        return f"{obj.settled_amount} {obj.currency}"

    @admin.display(description="refunded")
    def refunded_shown(self, obj: PaymentView) -> str:
        return f"{obj.refunded_amount} {obj.currency}"

    @admin.display(description="bank")
    def bank(self, obj: PaymentView) -> SafeString:
        return format_html('<span class="bank" title="{}">{}</span>', obj.bank_name,
                           obj.bank_name)

    @admin.display(description="code")
    def code(self, obj: PaymentView) -> str:
        """The decline code, under a header as narrow as the codes."""
        return obj.decline_code or "-"

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: PaymentView) -> str:
        return f"{timezone.localtime(obj.updated_at):%Y-%m-%d %H:%M}"

    @admin.display(description="events")
    def history_link(self, obj: PaymentView) -> SafeString:
        return format_html('<a href="{}">history</a>', history_url(obj.payment_id))

    def get_object(self, request: HttpRequest, object_id: str,
                   from_field: str | None = None) -> PaymentView | None:
        """The row, carrying the request's query for ``event_history``'s page links
        (a display method sees only the row; the admin instance is shared by threads)."""
        obj = super().get_object(request, object_id, from_field)
        if obj is not None:
            setattr(obj, _HISTORY_QUERY_ATTR, request.GET.copy())
        return obj

    @admin.display(description="events")
    def event_history(self, obj: PaymentView) -> SafeString:
        """The payment's stream as a table, a page at a time (``?events_page=N``, newest
        page first): the source of truth beside the read model."""
        try:
            found = find_payment(payment_id=obj.payment_id)
        except PaymentNotFound:
            return format_html(
                "<strong>{}</strong> {}", "The event store has no stream for this payment.",
                "The read model was built from another store, or the store was reset.",
            )
        except EventStoreError as e:
            return format_html(
                "<strong>The event store is unavailable, so the events cannot be shown"
                " now.</strong> ({})", str(e),
            )
        except (ValueError, PaymentError) as e:  # undecodable bytes, an impossible history
            return format_html("<strong>The stream cannot be read:</strong> {}", str(e))
        query: QueryDict = getattr(obj, _HISTORY_QUERY_ATTR, None) or QueryDict(mutable=True)
        page = nearest_page(found.history, query.get("events_page"))
        rows = format_html_join(
            "\n", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            (
                (entry.version, entry.type, entry.occurred_at.isoformat(), entry.position,
                 json.dumps(entry.data, sort_keys=True))
                for entry in page.object_list
            ),
        )
        return format_html(
            '<p id="event-history-count">{}</p>{}'
            "<table><thead><tr><th>version</th><th>type</th><th>occurred at</th>"
            "<th>position</th><th>data</th></tr></thead><tbody>{}</tbody></table>",
            page_summary(page), _history_links(page, query), rows,
        )


@admin.register(DeclineView)
class DeclineViewAdmin(ReadOnlyAdmin):
    list_display = ("date", "decline_code", "bank_name", "count")
    # date: declineview_date; decline_code: the unique (code, bank, date) constraint's
    # index; bank_name: declineview_bank_date.
    list_filter = (
        "date", ("decline_code", IndexedValuesListFilter),
        ("bank_name", IndexedValuesListFilter),
    )
    date_hierarchy = "date"
    ordering = ("-date", "decline_code", "bank_name")
    sortable_by = ("date",)


_HEAD_ATTR = "_projections_admin_head"


def head_for(request: HttpRequest) -> int | None:
    """The store's head position, asked once per request (None: store unavailable)."""
    if not hasattr(request, _HEAD_ATTR):
        try:
            head: int | None = get_event_store().head_position()
        except EventStoreError:
            head = None
        setattr(request, _HEAD_ATTR, head)
    return getattr(request, _HEAD_ATTR)


@admin.register(Checkpoint)
class CheckpointAdmin(ReadOnlyAdmin):
    list_display = ("name", "position", "updated_at", "head", "lag", "runner_active")
    fields = ("name", "position", "updated_at", "head", "lag", "runner_active")
    readonly_fields = ("head", "lag", "runner_active")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Checkpoint]:
        """Every row carries the head read once for this request (as ``store_head``)."""
        return super().get_queryset(request).annotate(
            store_head=Value(head_for(request), output_field=BigIntegerField())
        )

    @admin.display(description="head")
    def head(self, obj: Any) -> str:
        head = getattr(obj, "store_head", None)
        return "event store unavailable" if head is None else str(head)

    @admin.display(description="lag (positions)")
    def lag(self, obj: Any) -> str:
        """Head minus checkpoint: positions, not events (EventStoreDB's are not dense)."""
        head = getattr(obj, "store_head", None)
        return "?" if head is None else str(head - obj.position)

    @admin.display(description="runner active", boolean=True)
    def runner_active(self, obj: Checkpoint) -> bool:
        return is_locked(obj.name)
