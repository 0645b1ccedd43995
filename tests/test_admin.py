"""The read-only admin: staff can browse the read models; nobody can write them."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from django.contrib.admin import site as admin_site
from django.contrib.admin.templatetags.admin_list import date_hierarchy as djangos_drilldown
from django.contrib.auth import get_user_model
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from payments import services
from payments.eventstore import EventStoreUnavailable, get_event_store
from projections import admin as projections_admin
from projections.admin_probes import PROBES_PER_QUERY, distinct_periods
from projections.locks import try_lock, unlock
from projections.models import Checkpoint, DeclineView, PaymentView
from projections.templatetags.projections_admin import date_hierarchy

pytestmark = pytest.mark.django_db

XSS = "<script>alert(1)</script>"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def payment_row(payment_id: UUID | None = None, **fields) -> PaymentView:
    values = {
        "payment_id": payment_id or uuid4(), "status": "authorized",
        "amount": Decimal("10.00"), "currency": "EUR", "settled_amount": Decimal("0.00"),
        "refunded_amount": Decimal("0.00"), "bank_name": "Acme Bank", "decline_code": "",
        "created_at": NOW, "updated_at": NOW, "version": 1, "position": 2,
    }
    values.update(fields)
    return PaymentView.objects.create(**values)


def url(model: str, view: str, *args: object) -> str:
    return reverse(f"admin:projections_{model}_{view}", args=args)


@pytest.fixture
def rows() -> dict[str, object]:
    """A real payment in the store (with its history) and rows of every read model."""
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name=XSS)
    view = payment_row(payment.id, bank_name=XSS, version=1)
    for i in range(3):
        payment_row(updated_at=NOW - timedelta(days=i), bank_name=f"Bank {i}", currency="USD")
    decline = DeclineView.objects.create(
        decline_code="05", bank_name="Acme Bank", date=date(2025, 3, 1), count=3
    )
    checkpoint, _ = Checkpoint.objects.update_or_create(name="payment",
                                                        defaults={"position": 1})
    return {"payment": view, "decline": decline, "checkpoint": checkpoint}


def test_the_changelists_load_with_their_rows(admin_client, rows) -> None:
    payments = admin_client.get(url("paymentview", "changelist"))
    assert payments.status_code == 200
    assert b"Bank 2" in payments.content
    payment_id = rows["payment"].payment_id
    assert f'<a href="/payments/{payment_id}/">history</a>'.encode() in payments.content
    # A short id a row, the whole one on hover; the amounts with their currency.
    assert (f'<span class="short-id" title="{payment_id}">{str(payment_id)[:8]}…</span>'
            .encode() in payments.content)
    assert f"{rows['payment'].amount} {rows['payment'].currency}".encode() in payments.content

    declines = admin_client.get(url("declineview", "changelist"))
    assert declines.status_code == 200
    assert b"Acme Bank" in declines.content

    checkpoints = admin_client.get(url("checkpoint", "changelist"))
    assert checkpoints.status_code == 200
    head = get_event_store().head_position()
    assert head == 2
    text = checkpoints.content.decode()
    assert "Lag (positions)" in text
    assert f'<td class="field-head">{head}</td>' in text
    assert f'<td class="field-lag">{head - 1}</td>' in text


def test_the_filters_and_the_date_drilldown_load(admin_client, rows) -> None:
    for query in ("status__exact=authorized", "currency=USD", "bank_name=Bank+1",
                  "created_at__gte=2025-01-01+00:00:00%2B00:00",
                  "updated_at__year=2025&updated_at__month=3"):
        response = admin_client.get(url("paymentview", "changelist") + "?" + query)
        assert response.status_code == 200, query
    response = admin_client.get(url("declineview", "changelist") + "?decline_code=05")
    assert response.status_code == 200
    assert b"Acme Bank" in response.content


def test_the_payment_page_shows_its_event_history(admin_client, rows) -> None:
    payment = rows["payment"]
    response = admin_client.get(url("paymentview", "change", payment.payment_id))
    assert response.status_code == 200
    text = response.content.decode()
    assert "PaymentCreated" in text
    assert "PaymentAuthorized" in text
    assert f'href="/payments/{payment.payment_id}/"' in text


def test_user_text_is_escaped(admin_client, rows) -> None:
    for page in (url("paymentview", "changelist"),
                 url("paymentview", "change", rows["payment"].payment_id)):
        text = admin_client.get(page).content.decode()
        assert XSS not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_the_payment_page_says_when_the_store_is_unavailable(admin_client, rows,
                                                              monkeypatch) -> None:
    def unavailable(**kwargs):
        raise EventStoreUnavailable("connection refused")

    monkeypatch.setattr(projections_admin, "find_payment", unavailable)
    response = admin_client.get(url("paymentview", "change", rows["payment"].payment_id))
    assert response.status_code == 200
    assert b"event store is unavailable" in response.content


def test_a_payment_missing_from_the_store_is_explained(admin_client) -> None:
    row = payment_row()
    response = admin_client.get(url("paymentview", "change", row.payment_id))
    assert response.status_code == 200
    assert b"no stream for this payment" in response.content


def test_the_checkpoints_say_when_the_store_is_unavailable(admin_client, rows,
                                                           monkeypatch) -> None:
    class Down:
        def head_position(self, **kwargs):
            raise EventStoreUnavailable("down")

    monkeypatch.setattr(projections_admin, "get_event_store", Down)
    response = admin_client.get(url("checkpoint", "changelist"))
    assert response.status_code == 200
    assert b"event store unavailable" in response.content


def test_the_head_is_read_once_per_request(admin_client, rows, monkeypatch) -> None:
    assert Checkpoint.objects.count() == 2  # migrate creates one per projection
    calls = []
    store = get_event_store()

    class Counting:
        def head_position(self, **kwargs):
            calls.append(1)
            return store.head_position(**kwargs)

    monkeypatch.setattr(projections_admin, "get_event_store", Counting)
    assert admin_client.get(url("checkpoint", "changelist")).status_code == 200
    assert len(calls) == 1


def test_a_held_lock_shows_as_an_active_runner(admin_client, rows) -> None:
    token = try_lock("payment")
    assert token is not None
    try:
        text = admin_client.get(url("checkpoint", "changelist")).content.decode()
    finally:
        unlock("payment", token)
    assert '<td class="field-runner_active"><img src="/static/admin/img/icon-yes.svg"' in text


def test_the_view_pages_load(admin_client, rows) -> None:
    assert admin_client.get(
        url("declineview", "change", rows["decline"].pk)).status_code == 200
    checkpoint = admin_client.get(url("checkpoint", "change", "payment"))
    assert checkpoint.status_code == 200
    assert b"Lag (positions)" in checkpoint.content


@pytest.mark.parametrize("model", ["paymentview", "declineview", "checkpoint"])
def test_nothing_can_be_added_changed_or_deleted(admin_client, rows, model) -> None:
    pk = {"paymentview": rows["payment"].pk, "declineview": rows["decline"].pk,
          "checkpoint": "payment"}[model]
    assert admin_client.get(url(model, "add")).status_code == 403
    assert admin_client.post(url(model, "add"), {}).status_code == 403
    assert admin_client.post(url(model, "change", pk), {"position": 0}).status_code == 403
    assert admin_client.get(url(model, "delete", pk)).status_code == 403
    assert admin_client.post(url(model, "delete", pk), {"post": "yes"}).status_code == 403
    assert Checkpoint.objects.get(name="payment").position == 1
    assert PaymentView.objects.filter(pk=rows["payment"].pk).exists()
    assert DeclineView.objects.filter(pk=rows["decline"].pk).exists()


def test_search_by_uuid_by_bank_and_by_anything_else(admin_client, rows) -> None:
    changelist = url("paymentview", "changelist")
    target = rows["payment"].payment_id

    by_id = admin_client.get(changelist, {"q": str(target)})
    assert by_id.status_code == 200
    assert by_id.context["cl"].result_count == 1
    assert by_id.context["cl"].result_list[0].payment_id == target

    by_bank = admin_client.get(changelist, {"q": "Bank 1"})
    assert by_bank.status_code == 200
    assert [r.bank_name for r in by_bank.context["cl"].result_list] == ["Bank 1"]

    for junk in ("not-a-uuid", "1234", "'", '"Bank', "%", str(target)[:-1]):
        response = admin_client.get(changelist, {"q": junk})
        assert response.status_code == 200, junk
        assert response.context["cl"].result_count == 0, junk


def test_search_finds_a_merchant_reference_and_the_row_page_shows_it(admin_client,
                                                                     rows) -> None:
    changelist = url("paymentview", "changelist")
    order = payment_row(reference="order 1234", bank_name="Bank 9")
    uuid_like = str(uuid4())  # an order id may well be a UUID
    by_uuid_reference = payment_row(reference=uuid_like)

    for term, expected in (("order 1234", [order.payment_id]),
                           ('"order 1234"', [order.payment_id]),
                           (uuid_like, [by_uuid_reference.payment_id]),
                           (str(order.payment_id), [order.payment_id]),
                           ("Bank 9", [order.payment_id]),
                           ("order", []), ("ORDER 1234", [])):  # exact, case-sensitive
        response = admin_client.get(changelist, {"q": term})
        assert response.status_code == 200, term
        assert [r.payment_id for r in response.context["cl"].result_list] == expected, term
    assert b"a merchant reference" in admin_client.get(changelist).content  # the help text

    page = admin_client.get(url("paymentview", "change", order.payment_id)).content.decode()
    assert re.search(r'<div class="readonly">order 1234</div>', page)
    assert "Reference:" in page


@pytest.mark.parametrize("term", ["order 1234", str(uuid4())])
def test_the_reference_search_reads_its_index(term: str) -> None:
    """Most payments have no reference: the index holds only those that have one, and the
    search's own condition lets the database use it (a table of millions of rows)."""
    queryset, _ = projections_admin.PaymentViewAdmin(PaymentView, admin_site).get_search_results(
        None, PaymentView.objects.all(), term)
    sql, params = queryset.query.sql_with_params()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL enable_seqscan = off")  # a tiny table: ask what it can
            cursor.execute(f"EXPLAIN {sql}", params)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "paymentview_reference" in plan, plan


def test_the_count_is_capped(admin_client, monkeypatch) -> None:
    monkeypatch.setattr(projections_admin, "COUNT_CAP", 2)
    for _ in range(5):
        payment_row()
    response = admin_client.get(url("paymentview", "changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == 3


def test_staff_without_permissions_may_view(client, rows) -> None:
    staff = get_user_model().objects.create_user("staff", password="x", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("admin:index")).status_code == 200
    assert client.get(url("paymentview", "changelist")).status_code == 200
    assert client.get(url("checkpoint", "add")).status_code == 403


def test_a_user_who_is_not_staff_is_sent_to_the_login(client, rows) -> None:
    user = get_user_model().objects.create_user("someone", password="x")
    client.force_login(user)
    for page in (url("paymentview", "changelist"), url("declineview", "changelist"),
                 url("checkpoint", "changelist"),
                 url("paymentview", "change", rows["payment"].payment_id)):
        response = client.get(page)
        assert response.status_code == 302
        assert response.url.startswith(reverse("admin:login"))


def test_anonymous_is_sent_to_the_login(client) -> None:
    response = client.get(url("paymentview", "changelist"))
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login"))


# The date drill-down and the value filters: Django's answers, by index probes.

SPREAD = [  # several years, months and days; some rows on a boundary
    datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC),
    datetime(2024, 2, 29, 12, 0, tzinfo=UTC), datetime(2024, 3, 1, 0, 30, tzinfo=UTC),
    datetime(2024, 3, 1, 23, 30, tzinfo=UTC), datetime(2024, 3, 31, 23, 59, tzinfo=UTC),
    datetime(2024, 11, 5, 8, 0, tzinfo=UTC), datetime(2026, 6, 15, 4, 0, tzinfo=UTC),
]
DRILLDOWN = [  # none, a year, a month, a day chosen; alone and with a filter
    "", "updated_at__year=2024", "updated_at__year=2024&updated_at__month=3",
    "updated_at__year=2024&updated_at__month=3&updated_at__day=1",
    "updated_at__year=2025", "status__exact=settled",
    "status__exact=settled&updated_at__year=2024", "bank_name=Bank+1",
    "bank_name=Bank+1&updated_at__year=2024&updated_at__month=3", "q=Bank+2",
]


def spread_rows(count: int) -> None:
    """``count`` rows cycling over SPREAD, two statuses and three banks."""
    for i in range(count):
        at = SPREAD[i % len(SPREAD)] + timedelta(seconds=i // len(SPREAD))
        payment_row(updated_at=at, created_at=at, bank_name=f"Bank {i % 3}",
                    status="settled" if i % 2 else "authorized")


def test_the_date_drilldown_shows_what_djangos_own_shows(admin_client) -> None:
    spread_rows(len(SPREAD) * 3)
    for query in DRILLDOWN:
        response = admin_client.get(url("paymentview", "changelist") + "?" + query)
        assert response.status_code == 200, query
        cl = response.context["cl"]
        ours, djangos = date_hierarchy(cl), djangos_drilldown(cl)
        assert ours == djangos, query
        for choice in ours["choices"]:
            assert str(choice["title"]) in response.content.decode(), query
    # The top level lists the years that hold a row.
    top = date_hierarchy(admin_client.get(url("paymentview", "changelist")).context["cl"])
    assert [c["title"] for c in top["choices"]] == ["2023", "2024", "2026"]


@pytest.mark.parametrize("span", ["one year", "one month", "one day", "no rows"])
def test_the_drilldown_starts_where_djangos_does(admin_client, span) -> None:
    at = {"one year": [NOW, NOW + timedelta(days=60)],
          "one month": [NOW, NOW + timedelta(days=3)],
          "one day": [NOW, NOW + timedelta(hours=1)], "no rows": []}[span]
    for moment in at:
        payment_row(updated_at=moment)
    DeclineView.objects.bulk_create(
        DeclineView(decline_code=f"{i}", bank_name="Acme Bank", date=moment.date())
        for i, moment in enumerate(at))
    for model in ("paymentview", "declineview"):
        cl = admin_client.get(url(model, "changelist")).context["cl"]
        assert date_hierarchy(cl) == djangos_drilldown(cl), (model, span)


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Pacific/Kiritimati"])
def test_the_periods_are_querysets_datetimes_and_dates(zone) -> None:
    spread_rows(len(SPREAD))
    for i, at in enumerate(SPREAD):
        DeclineView.objects.create(decline_code=f"{i}", bank_name="Acme Bank", date=at.date())
    with timezone.override(zone):
        for queryset in (PaymentView.objects.all(), PaymentView.objects.filter(
                status="settled"), PaymentView.objects.filter(
                updated_at__gte=datetime(2024, 3, 1, tzinfo=UTC),
                updated_at__lt=datetime(2024, 4, 1, tzinfo=UTC)),
                PaymentView.objects.none(), PaymentView.objects.filter(bank_name="none")):
            for kind in ("year", "month", "day"):
                expected = list(queryset.datetimes("updated_at", kind))
                found = distinct_periods(queryset, "updated_at", kind)
                assert found == expected, (zone, kind, str(queryset.query))
                assert [str(v.tzinfo) for v in found] == [str(v.tzinfo) for v in expected]
        for kind in ("year", "month", "day"):
            assert distinct_periods(DeclineView.objects.all(), "date", kind) == list(
                DeclineView.objects.dates("date", kind))


def test_years_far_apart_are_found(admin_client) -> None:
    years = [1901, 1950, 2024, 1901 + PROBES_PER_QUERY + 7]
    for year in years:
        payment_row(updated_at=datetime(year, 5, 1, tzinfo=UTC))
    queryset = PaymentView.objects.all()
    assert distinct_periods(queryset, "updated_at", "year") == list(
        queryset.datetimes("updated_at", "year"))


def test_the_value_filters_list_every_value(admin_client) -> None:
    for bank, currency in (("Bank 2", "USD"), ("", "EUR"), ("Bank 10", "EUR"),
                           ("Bank 2", "CHF"), ("Änderbank", "USD")):
        payment_row(bank_name=bank, currency=currency)
    DeclineView.objects.create(decline_code="51", bank_name="Z Bank", date=NOW.date())
    DeclineView.objects.create(decline_code="05", bank_name="A Bank", date=NOW.date())
    for model, fields in (("paymentview", ("bank_name", "currency")),
                          ("declineview", ("bank_name", "decline_code"))):
        cl = admin_client.get(url(model, "changelist")).context["cl"]
        specs = {spec.field_path: spec for spec in cl.filter_specs
                 if hasattr(spec, "field_path")}
        model_class = cl.model
        for field in fields:
            expected = list(model_class.objects.order_by(field).values_list(field, flat=True)
                            .distinct())
            assert list(specs[field].lookup_choices) == expected, (model, field)


def changelist_queries(client, queries: list[str]) -> list[int]:
    counts = []
    for query in queries:
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url("paymentview", "changelist") + "?" + query).status_code == 200
        counts.append(len(captured))
        for sql in (q["sql"].upper() for q in captured):
            # What reads every row: DISTINCT, a truncation per row, MIN with MAX.
            assert "DISTINCT" not in sql, (query, sql)
            assert "TRUNC" not in sql, (query, sql)
            assert not ("MIN(" in sql and "MAX(" in sql), (query, sql)
    return counts


def test_the_changelist_asks_as_many_queries_for_24_rows_as_for_240(
        admin_client, django_assert_max_num_queries) -> None:
    """24 rows hold every combination of moment, bank and status that 240 hold: the
    same periods and values, ten times the rows."""
    spread_rows(24)
    with django_assert_max_num_queries(10 * len(DRILLDOWN)):
        few = changelist_queries(admin_client, DRILLDOWN)
    spread_rows(216)
    with django_assert_max_num_queries(10 * len(DRILLDOWN)):
        many = changelist_queries(admin_client, DRILLDOWN)
    assert many == few
    assert max(many) <= 10
