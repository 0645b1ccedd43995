"""Pages that update themselves (paymentsite/live.py, static/js/live.js; issue 14).

Each live page says the version of what it shows; a poll with that version is a 204
with no body until the data changes, then the page again with the new version. The
browser side (a command through the API appearing on an open list) is in
tests/test_browser.py.
"""

from __future__ import annotations

import re

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client

from payments import services
from payments.eventstore import get_event_store, reset_event_store

pytestmark = pytest.mark.django_db(transaction=True)

READ_MODEL_PAGES = ["/", "/payments/", "/declines/"]


def version_on(html: str) -> str:
    found = re.search(r'<body data-page="[^"]*" data-live-version="([^"]+)">', html)
    assert found, html[:500]
    return found.group(1)


def poll(browser: Client, path: str, version: str):
    return browser.get(path, HTTP_X_LIVE_VERSION=version)


@pytest.mark.parametrize("path", READ_MODEL_PAGES)
def test_a_read_model_page_is_a_204_until_a_projection_applies_an_event(
        browser: Client, path: str) -> None:
    page = browser.get(path)
    html = page.content.decode()
    version = version_on(html)
    assert page["X-Live-Version"] == version
    assert '<script src="/static/js/live.js" defer></script>' in html
    unchanged = poll(browser, path, version)
    assert unchanged.status_code == 204
    assert unchanged.content == b""
    assert unchanged["Cache-Control"] == "no-store"

    payment = services.create_payment(amount="12.00")
    services.decline_payment(payment_id=payment.id, bank_name="Acme", decline_code="05")
    # The lag shown is measured at most every few seconds (selectors.lags): so is a poll's.
    assert poll(browser, path, version).status_code == 204
    cache.clear()  # those seconds have passed
    behind = poll(browser, path, version)  # the head moved: the lag shown changes
    assert behind.status_code == 200
    call_command("run_projection", "all", "--once")
    changed = poll(browser, path, behind["X-Live-Version"])  # at once: a checkpoint moved
    assert changed.status_code == 200
    assert version_on(changed.content.decode()) == changed["X-Live-Version"] != version
    assert poll(browser, path, changed["X-Live-Version"]).status_code == 204


def test_a_poll_asks_the_store_nothing_while_the_lag_is_fresh(
        browser: Client, monkeypatch) -> None:
    """Many open tabs cost one measurement of the lag per few seconds, not one each."""
    version = version_on(browser.get("/payments/").content.decode())
    asked = []
    store = get_event_store()
    monkeypatch.setattr(store, "head_position", lambda **kw: asked.append(kw) or 0)
    for _ in range(5):
        assert poll(browser, "/payments/", version).status_code == 204
    assert asked == []


def test_a_store_that_is_down_is_one_version_too(browser: Client, settings) -> None:
    settings.EVENTSTORE_URI = "bogus://nowhere"
    reset_event_store()
    try:
        page = browser.get("/")
        assert page.status_code == 200
        assert page["X-Live-Version"] == "store-unreachable"
        assert poll(browser, "/", "store-unreachable").status_code == 204
    finally:
        reset_event_store()


def test_the_list_region_holds_the_new_row(browser: Client) -> None:
    version = version_on(browser.get("/payments/").content.decode())
    payment = services.create_payment(amount="12.00")
    call_command("run_projection", "all", "--once")
    html = poll(browser, "/payments/", version).content.decode()
    region = html.split('<div id="payments-live" data-live-region>', 1)[1]
    assert f'data-payment-id="{payment.id}"' in region


def test_a_payments_page_follows_its_stream(browser: Client) -> None:
    payment = services.create_payment(amount="12.00")
    path = f"/payments/{payment.id}/"
    version = version_on(browser.get(path).content.decode())
    assert poll(browser, path, version).status_code == 204
    services.authorize_payment(payment_id=payment.id, bank_name="Acme")  # from elsewhere
    html = poll(browser, path, version).content.decode()
    for region in ("state-card", "actions", "history"):
        assert f'id="{region}" class="card" data-live-region' in html
    assert 'data-status="authorized"' in html


def test_pages_that_are_not_live_carry_no_script(browser: Client) -> None:
    html = browser.get("/payments/new/").content.decode()
    assert "data-live-version" not in html
    assert "live.js" not in html


def test_a_poll_needs_a_login_like_the_page(client: Client) -> None:
    response = client.get("/payments/", HTTP_X_LIVE_VERSION="anything")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
