"""The read-side pages: the overview, the payment list and the decline report.

Each view validates its filters with a small form (through the domain's rules) and
calls one query function of ``projections.selectors``.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from payments.domain import InvalidInput, PaymentStatus, parse_currency, parse_decline_code
from projections import selectors
from projections.charts import bar_chart

MAX_REPORT_DAYS = 366


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
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

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


def _valid(form: forms.Form) -> dict[str, Any]:
    """The filters that passed (an invalid one is shown beside its field and ignored)."""
    form.is_valid()
    return {k: v for k, v in form.cleaned_data.items() if k not in form.errors}


@login_required
@require_GET
def overview(request: HttpRequest) -> HttpResponse:
    """GET /: payments by status, the latest payments, the projections' lag."""
    return render(request, "projections/overview.html", {"overview": selectors.overview()})


@login_required
@require_GET
def payment_list(request: HttpRequest) -> HttpResponse:
    """GET /payments/: PaymentView, filtered by status, bank and currency; paginated."""
    form = PaymentFilterForm(request.GET)
    filters = _valid(form)
    number = filters.pop("page", None) or 1
    page = selectors.payments_page(filters, number)
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "projections/payment_list.html",
                  {"form": form, "page": page, "query": query.urlencode()})


@login_required
@require_GET
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
    })
