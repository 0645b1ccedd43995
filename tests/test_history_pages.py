"""Long histories are shown a page at a time: the payment's page, the API detail, the admin.

A payment may have been grown to thousands of events before the limit on settles per
payment (issue 10, finding 8: 10,000 settles of 0.01 made a 3 MB API answer and a 6 MB
page). Such streams are written here straight through the event store port, as they
were stored then, with no command limit in the way.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID, uuid4

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from payments import services
from payments.events import PaymentSettled, encode_data, encode_metadata, stream_name
from payments.eventstore import NewEvent, get_event_store
from payments.history import API_MAX_PAGE_SIZE, API_PAGE_SIZE, PAGE_SIZE
from projections.models import PaymentView

pytestmark = pytest.mark.django_db

EVENTS = 250  # created, authorized and 248 settles of 0.01


def long_payment(events: int = EVENTS) -> UUID:
    """A payment with ``events`` events: created, authorized, then settles of 0.01."""
    payment = services.create_payment(amount="100.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    settles = [
        NewEvent(
            type=PaymentSettled.type_name,
            data=encode_data(PaymentSettled(
                payment_id=payment.id, occurred_at=datetime.now(UTC), bank_name="Acme Bank",
                amount=Decimal("0.01"), settlement_id=uuid4(),
            )),
            metadata=encode_metadata(correlation_id=uuid4(), causation_id=uuid4()),
        )
        for _ in range(events - 2)
    ]
    get_event_store().append(stream_name(payment.id), settles, 1)
    return payment.id


def short_payment() -> UUID:
    payment = services.create_payment(amount="10.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    return payment.id


# --- the payment's page ---------------------------------------------------------------


@pytest.fixture
def browser() -> Client:
    client = Client()
    client.force_login(get_user_model().objects.create_user("clerk"))
    return client


def versions_on(html: str) -> list[int]:
    return [int(v) for v in re.findall(r'<li class="event" data-type="[^"]+" data-version="(\d+)"',
                                       html)]


def page_links_on(html: str) -> dict[str, int]:
    """The history's page links: ``older``, ``newer`` and every numbered one by its number."""
    nav = re.search(r'<nav id="history-pages".*?</nav>', html, re.S)
    assert nav, "no page links"
    links = {m[1]: int(m[2]) for m in re.finditer(
        r'<a id="history-(older|newer)" rel="\w+" href="\?events_page=(\d+)#history"', nav[0])}
    for number in re.findall(r'data-page="(\d+)" href="\?events_page=\1#history"', nav[0]):
        links[number] = int(number)
    return links


def count_on(html: str) -> str:
    return re.sub(r"\s+", " ", re.search(r'id="history-count"[^>]*>(.*?)</p>', html, re.S)[1])


def test_the_page_opens_on_the_newest_events_with_links_to_the_others(browser: Client) -> None:
    payment_id = long_payment()
    response = browser.get(f"/payments/{payment_id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert versions_on(html) == list(range(200, 250))  # the last page, oldest first
    assert count_on(html) == "Events 201 to 250 of 250, oldest first (page 5 of 5)"
    assert f'data-count="{EVENTS}"' in html
    links = page_links_on(html)
    assert links["older"] == 4
    assert "newer" not in links
    assert {"1", "3", "4"} <= set(links)  # the first page and the neighbours
    assert '<span class="history-page" aria-current="page">5</span>' in html


def test_following_the_links_shows_every_event_once(browser: Client) -> None:
    payment_id = long_payment()
    first = browser.get(f"/payments/{payment_id}/?events_page=1").content.decode()
    assert versions_on(first)[0] == 0
    assert 'data-type="PaymentCreated"' in first
    assert "older" not in page_links_on(first)
    seen, html = [], first
    while True:
        seen += versions_on(html)
        assert len(versions_on(html)) <= PAGE_SIZE
        newer = page_links_on(html).get("newer")
        if newer is None:
            break
        html = browser.get(f"/payments/{payment_id}/?events_page={newer}").content.decode()
    assert seen == list(range(EVENTS))


@pytest.mark.parametrize(("value", "versions"), [
    ("0", range(0, 50)), ("-3", range(0, 50)), ("6", range(200, 250)),
    ("99999999999999999999", range(200, 250)), ("9" * 5000, range(200, 250)),
    ("-" + "9" * 5000, range(0, 50)), ("abc", range(200, 250)), ("", range(200, 250)),
    ("2.5", range(200, 250)), ("٣", range(200, 250)), ("3", range(100, 150)),
])
def test_a_page_out_of_range_shows_the_nearest_one(browser: Client, value: str,
                                                   versions: range) -> None:
    payment_id = long_payment()
    response = browser.get(f"/payments/{payment_id}/", {"events_page": value})
    assert response.status_code == 200
    assert versions_on(response.content.decode()) == list(versions)


def test_the_forms_work_from_any_page_of_the_history(browser: Client) -> None:
    payment_id = long_payment()
    html = browser.get(f"/payments/{payment_id}/?events_page=1").content.decode()
    assert 'id="form-refund"' in html
    assert f'name="expected_version" value="{EVENTS - 1}"' in html
    key = re.search(r'id="form-refund".*?name="idempotency_key" value="([^"]+)"', html, re.S)[1]
    response = browser.post(f"/payments/{payment_id}/refund/",
                            {"amount": "0.01", "expected_version": EVENTS - 1,
                             "idempotency_key": key}, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    # Back on the newest page, where the refund just appended shows.
    assert versions_on(html) == list(range(250, 251))
    assert 'data-type="PaymentRefunded"' in html
    assert count_on(html) == "Event 251 of 251, oldest first (page 6 of 6)"
    # A refused form is shown again with the (newest) history, not a 500.
    refused = browser.post(f"/payments/{payment_id}/refund/",
                           {"amount": "abc", "expected_version": EVENTS,
                            "idempotency_key": str(uuid4())})
    assert refused.status_code == 400
    assert versions_on(refused.content.decode()) == [250]


def test_a_short_history_is_shown_whole_without_page_links(browser: Client) -> None:
    payment_id = short_payment()
    html = browser.get(f"/payments/{payment_id}/").content.decode()
    assert versions_on(html) == [0, 1]
    assert count_on(html) == "2 events, oldest first"
    assert 'id="history-pages"' not in html
    assert versions_on(browser.get(f"/payments/{payment_id}/?events_page=9").content.decode()) \
        == [0, 1]


def test_a_page_of_a_huge_history_stays_small(browser: Client) -> None:
    payment_id = long_payment(3000)
    short = len(browser.get(f"/payments/{short_payment()}/").content)
    html = browser.get(f"/payments/{payment_id}/").content
    # 50 events of some 550 bytes each on top of a short payment's page, not 3,000.
    assert len(html) < short + PAGE_SIZE * 1000
    assert versions_on(html.decode()) == list(range(2950, 3000))


# --- the API detail -------------------------------------------------------------------


@pytest.fixture
def api() -> APIClient:
    client = APIClient()
    client.force_authenticate(get_user_model().objects.create_user("alice"))
    return client


def detail(api: APIClient, payment_id: UUID | str, **params: Any) -> Any:
    return api.get(f"/api/payments/{payment_id}/", params)


def test_the_api_answers_the_first_page_with_the_count_and_a_next_link(api: APIClient) -> None:
    payment_id = long_payment()
    response = detail(api, payment_id)
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == EVENTS - 1
    assert body["settled_amount"] == "2.48"
    assert body["events_count"] == EVENTS
    assert [e["version"] for e in body["events"]] == list(range(API_PAGE_SIZE))
    assert body["events"][0]["type"] == "PaymentCreated"
    assert body["events_previous"] is None
    assert body["events_next"] == f"http://testserver/api/payments/{payment_id}/?events_page=2"


@pytest.mark.parametrize("page_size", [None, 1, 7, 100, 249, 250, API_MAX_PAGE_SIZE])
def test_following_events_next_returns_every_event_once(api: APIClient,
                                                        page_size: int | None) -> None:
    payment_id = long_payment()
    params = {} if page_size is None else {"events_page_size": str(page_size)}
    response = detail(api, payment_id, **params)
    size = page_size or API_PAGE_SIZE
    seen: list[int] = []
    pages, before = 0, None
    while True:
        assert response.status_code == 200
        body = response.json()
        pages += 1
        versions = [e["version"] for e in body["events"]]
        assert body["events_count"] == EVENTS
        assert 1 <= len(versions) <= size
        if before is None:
            assert body["events_previous"] is None
        else:  # events_previous leads back to the page before, whose events we saw
            assert query_of(body["events_previous"]) == {"events_page": str(pages - 1), **params}
            assert [e["version"] for e in api.get(body["events_previous"]).json()["events"]] \
                == before
        seen += versions
        if body["events_next"] is None:
            break
        assert query_of(body["events_next"]) == {"events_page": str(pages + 1), **params}
        before = versions
        response = api.get(body["events_next"])
    assert seen == list(range(EVENTS))
    assert pages == -(-EVENTS // size)


def query_of(url: str) -> dict[str, str]:
    assert url.startswith("http://testserver/api/payments/")
    return {k: v for k, v in parse_qsl(urlsplit(url).query)}


@pytest.mark.parametrize(("params", "field"), [
    ({"events_page": "0"}, "events_page"), ({"events_page": "-1"}, "events_page"),
    ({"events_page": "4"}, "events_page"), ({"events_page": "abc"}, "events_page"),
    ({"events_page": "1" * 5000}, "events_page"), ({"events_page": ""}, "events_page"),
    ({"events_page": "1.0"}, "events_page"),
    ({"events_page_size": "0"}, "events_page_size"),
    ({"events_page_size": str(API_MAX_PAGE_SIZE + 1)}, "events_page_size"),
    ({"events_page_size": "10" * 3000}, "events_page_size"),
    ({"events_page_size": "many"}, "events_page_size"),
    ({"events_page": "2", "events_page_size": "250"}, "events_page"),
])
def test_a_page_that_does_not_exist_is_a_400_naming_the_parameter(
    api: APIClient, params: dict[str, str], field: str
) -> None:
    payment_id = long_payment()
    response = detail(api, payment_id, **params)
    assert response.status_code == 400
    assert set(response.json()) == {field}
    assert "must be a whole number from 1 to" in response.json()[field][0]


def test_the_api_answers_a_short_payment_as_it_always_did(api: APIClient) -> None:
    payment_id = short_payment()
    body = detail(api, payment_id).json()
    assert [e["type"] for e in body["events"]] == ["PaymentCreated", "PaymentAuthorized"]
    assert set(body["events"][0]) == {"type", "data", "version", "position", "occurred_at"}
    assert (body["events_count"], body["events_next"], body["events_previous"]) == (2, None, None)
    # A history of exactly one page has no next page either.
    exact = long_payment(API_PAGE_SIZE)
    body = detail(api, exact).json()
    assert (len(body["events"]), body["events_next"]) == (API_PAGE_SIZE, None)


def test_an_unknown_payment_is_still_a_404_whatever_the_page(api: APIClient) -> None:
    response = detail(api, uuid4(), events_page="abc")
    assert response.status_code == 404


def test_the_schema_documents_the_pages(api: APIClient) -> None:
    spec = api.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"}).json()
    operation = spec["paths"]["/api/payments/{payment_id}/"]["get"]
    parameters = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert parameters["events_page"]["minimum"] == 1
    assert parameters["events_page_size"]["maximum"] == API_MAX_PAGE_SIZE
    assert parameters["events_page_size"]["default"] == API_PAGE_SIZE
    assert "400" in operation["responses"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    properties = spec["components"]["schemas"][schema.rsplit("/", 1)[1]]["properties"]
    assert {"events", "events_count", "events_next", "events_previous"} <= set(properties)
    assert properties["events_next"]["nullable"] is True


# --- the admin ------------------------------------------------------------------------


def admin_row(payment_id: UUID, version: int) -> PaymentView:
    now = datetime.now(UTC)
    return PaymentView.objects.create(
        payment_id=payment_id, status="partially_settled", amount=Decimal("100.00"),
        currency="EUR", settled_amount=Decimal("2.48"), refunded_amount=Decimal("0.00"),
        bank_name="Acme Bank", decline_code="", created_at=now, updated_at=now,
        version=version, position=version + 1,
    )


def admin_versions(html: str) -> list[int]:
    return [int(v) for v in re.findall(r"<tr><td>(\d+)</td><td>Payment\w+</td>", html)]


def test_the_admin_shows_the_newest_page_of_events_and_links_to_the_others(admin_client) -> None:
    payment_id = long_payment()
    admin_row(payment_id, EVENTS - 1)
    change = reverse("admin:projections_paymentview_change", args=[payment_id])
    html = admin_client.get(change).content.decode()
    assert admin_versions(html) == list(range(200, 250))
    assert "Events 201 to 250 of 250, oldest first (page 5 of 5)" in html
    older = re.search(r'<a id="event-history-older" href="\?([^"]+)">', html)[1]
    assert older == "events_page=4"
    assert 'id="event-history-newer"' not in html

    first = admin_client.get(change, {"events_page": "1"}).content.decode()
    assert admin_versions(first)[:2] == [0, 1]
    assert len(admin_versions(first)) == PAGE_SIZE
    assert "<td>PaymentCreated</td>" in first
    assert re.search(r'<a id="event-history-newer" href="\?events_page=2">', first)

    for absurd in ("0", "9" * 400, "x"):
        response = admin_client.get(change, {"events_page": absurd})
        assert response.status_code == 200
        assert len(admin_versions(response.content.decode())) == PAGE_SIZE


def test_the_admin_page_links_keep_the_changelist_filters(admin_client) -> None:
    payment_id = long_payment()
    admin_row(payment_id, EVENTS - 1)
    change = reverse("admin:projections_paymentview_change", args=[payment_id])
    html = admin_client.get(change, {"_changelist_filters": "status=settled"}).content.decode()
    older = re.search(r'<a id="event-history-older" href="\?([^"]+)">', html)[1]
    assert older == "_changelist_filters=status%3Dsettled&amp;events_page=4"


def test_the_admin_shows_a_short_history_whole(admin_client) -> None:
    payment_id = short_payment()
    admin_row(payment_id, 1)
    html = admin_client.get(
        reverse("admin:projections_paymentview_change", args=[payment_id])).content.decode()
    assert admin_versions(html) == [0, 1]
    assert "2 events, oldest first" in html
    assert "event-history-pages" not in html
