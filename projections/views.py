"""The read-side pages: the overview, the payment list and the decline report.

Each view validates its filters with a small form (through the domain's rules) and
calls one query function of ``projections.selectors``. A filter that fails is shown
beside its field and the page answers 400 (the other filters still apply); a page
number out of range is a 400 page that says which numbers there are. Each honours
``?after=<position>`` (``reads``: read your writes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import date
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from payments.domain import (
    InvalidInput,
    PaymentStatus,
    parse_bank_name,
    parse_currency,
    parse_decline_code,
)
from paymentsite import live
from paymentsite.live import live_page
from projections import read_your_writes, selectors
from projections.charts import bar_chart
from projections.projectors import DeclineProjection, PaymentProjection

MAX_REPORT_DAYS = selectors.MAX_REPORT_DAYS
# No card payment predates it; and the report's windows stay far from date.min.
EARLIEST_DATE = date(1970, 1, 1)


def _normalised(parse: Any, value: str) -> str:
    """An optional filter value through a domain rule (empty: no filter)."""
    if not value.strip():
        return ""
    try:
        return parse(value)
    except InvalidInput as e:
        raise forms.ValidationError(e.message) from None


class PaymentFilterForm(forms.Form):
    status = forms.ChoiceField(required=False, choices=[
        ("", "any status"), *[(s.value, s.value.replace("_", " ")) for s in PaymentStatus]])
    bank_name = forms.CharField(required=False, label="Bank")
    currency = forms.CharField(required=False, widget=forms.TextInput(attrs={"size": "4"}))
    page = forms.IntegerField(
        required=False, min_value=1, max_value=selectors.MAX_PAGE, widget=forms.HiddenInput,
        error_messages={
            "invalid": f"the page must be a whole number from 1 to {selectors.MAX_PAGE:,}",
            "min_value": f"the page must be a whole number from 1 to {selectors.MAX_PAGE:,}",
            "max_value": f"the page must be a whole number from 1 to {selectors.MAX_PAGE:,};"
                         " narrow the filters to reach older payments",
        })

    def clean_bank_name(self) -> str:
        return _normalised(parse_bank_name, self.cleaned_data["bank_name"])

    def clean_currency(self) -> str:
        return _normalised(parse_currency, self.cleaned_data["currency"])


class DeclineFilterForm(forms.Form):
    code = forms.CharField(required=False, label="Decline code",
                           widget=forms.TextInput(attrs={"size": "5"}))
    bank = forms.CharField(required=False, label="Bank")
    date_from = forms.DateField(required=False, label="From",
                                widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To",
                              widget=forms.DateInput(attrs={"type": "date"}))

    def clean_code(self) -> str:
        return _normalised(parse_decline_code, self.cleaned_data["code"])

    def clean_bank(self) -> str:
        return _normalised(parse_bank_name, self.cleaned_data["bank"])

    def _in_range(self, name: str) -> date | None:
        day: date | None = self.cleaned_data.get(name)
        if day is not None and day < EARLIEST_DATE:
            raise forms.ValidationError(f"enter a date from {EARLIEST_DATE:%Y-%m-%d} on")
        return day

    def clean_date_from(self) -> date | None:
        return self._in_range("date_from")

    def clean_date_to(self) -> date | None:
        return self._in_range("date_to")

    def clean(self) -> dict[str, Any]:
        """A range that runs forwards and keeps the chart readable."""
        data = super().clean()
        start: date | None = data.get("date_from")
        end: date | None = data.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError("the start date is after the end date")
        if start and end and (end - start).days >= MAX_REPORT_DAYS:
            raise forms.ValidationError(f"the range may span at most {MAX_REPORT_DAYS} days")
        return data


View = Callable[..., HttpResponse]


def reads(*projections: str) -> Callable[[View], View]:
    """The page reads these projections: given ``?after=<position>``, it waits (boundedly)
    until they have applied that event, and says so (``read_your_writes``): a banner
    when it is stale (``request.freshness``, for ``_stale.html``) and the headers.

    A live poll (``X-Live-Version``) only looks: it asks again in a second. Outside
    ``live_page``, so that the page's live version is read after the wait. A bad
    ``after`` is the site's 400 page.
    """

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                freshness = read_your_writes.wait_until_applied(
                    projections, request.GET.get(read_your_writes.AFTER),
                    wait=live.HEADER not in request.headers)
            except InvalidInput as e:
                query = request.GET.copy()
                query.pop(read_your_writes.AFTER, None)
                return render(request, "400.html", {
                    "message": f"{e}.",
                    "back": f"{request.path}?{query.urlencode()}" if query else request.path,
                }, status=400)
            request.freshness = freshness  # type: ignore[attr-defined] # _stale.html
            response = view(request, *args, **kwargs)
            for name, value in read_your_writes.headers(freshness).items():
                response[name] = value
            return response

        return wrapped

    return decorate


def _valid(form: forms.Form) -> dict[str, Any]:
    """The filters that passed (an invalid one is shown beside its field and ignored)."""
    form.is_valid()
    return {k: v for k, v in form.cleaned_data.items() if k not in form.errors}


@login_required
@require_GET
@reads(PaymentProjection.name)
@live_page(selectors.read_models_version)
def overview(request: HttpRequest) -> HttpResponse:
    """GET /: payments by status, the latest payments, the projections' lag."""
    return render(request, "projections/overview.html", {"overview": selectors.overview()})


def _status(form: forms.Form) -> int:
    """400 when a filter was refused (the page still shows, with the message), else 200."""
    return 400 if form.errors else 200


@login_required
@require_GET
@reads(PaymentProjection.name)
@live_page(selectors.read_models_version)
def payment_list(request: HttpRequest) -> HttpResponse:
    """GET /payments/: PaymentView, filtered by status, bank and currency; paginated."""
    form = PaymentFilterForm(request.GET)
    filters = _valid(form)
    query = request.GET.copy()
    query.pop("page", None)
    if "page" in form.errors:  # a hidden field: say it on a page of its own
        return render(request, "400.html", {
            "message": " ".join(form.errors["page"]),
            "back": f"{request.path}?{query.urlencode()}" if query else request.path,
        }, status=400)
    number = filters.pop("page", None) or 1
    page = selectors.payments_page(filters, number)
    return render(request, "projections/payment_list.html",
                  {"form": form, "page": page, "query": query.urlencode()},
                  status=_status(form))


@login_required
@require_GET
@reads(DeclineProjection.name)
@live_page(selectors.read_models_version)
def declines(request: HttpRequest) -> HttpResponse:
    """GET /declines/: declines by code, bank and day, with a chart per day per code."""
    form = DeclineFilterForm(request.GET)
    filters = _valid(form)
    if form.non_field_errors():
        filters.pop("date_from", None)
        filters.pop("date_to", None)
    report = selectors.declines_report(
        code=filters.get("code") or None, bank=filters.get("bank") or None,
        date_from=filters.get("date_from"), date_to=filters.get("date_to"),
    )
    return render(request, "projections/declines.html", {
        "form": form, "report": report, "chart": bar_chart(report.days, report.per_day),
    }, status=_status(form))
