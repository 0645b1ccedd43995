"""Issue 10, the web surface: each finding as a test that failed before its fix.

The API answers JSON in DRF's shape for every status; the site answers its own pages;
a POST to a URL without its trailing slash is never redirected (the redirect would
lose the command) nor a RuntimeError; bodies and query parameters are bounded (a 400
or 413 with a message, never a 500); the API is throttled and logins are locked out.
A refused command appends nothing to the event store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.core.management import call_command
from django.template import loader
from django.test import Client, RequestFactory
from rest_framework.test import APIClient
from rest_framework.throttling import UserRateThrottle

from payments import services
from payments.api.parsers import MAX_BODY_BYTES, MAX_DEPTH
from payments.eventstore import get_event_store
from paymentsite import errors
from projections import selectors
from projections.models import DeclineView

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "a long test password"
TECHNICAL_PAGE = "DEBUG = True"  # Django's yellow pages say so; ours never do


@pytest.fixture
def user() -> Any:
    return get_user_model().objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def head() -> int:
    """The store's head position: unchanged means nothing was appended."""
    return get_event_store().head_position()


def page_of(response: Any) -> str:
    return response.content.decode()


def assert_json_error(response: Any, status: int) -> str:
    """A DRF-shaped error: JSON, one ``detail`` string; returns the detail."""
    assert response.status_code == status, page_of(response)
    assert response["Content-Type"] == "application/json", page_of(response)
    body = json.loads(response.content)
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str)
    assert "Traceback" not in body["detail"]
    return body["detail"]


# --- 1. a POST without the trailing slash --------------------------------------------------


@pytest.mark.parametrize("debug", [False, True])
def test_api_post_without_trailing_slash_is_a_json_404_naming_the_url(
        api: APIClient, settings, debug: bool) -> None:
    settings.DEBUG = debug  # on: CommonMiddleware raised RuntimeError; off: a 301 lost it
    before = head()
    response = api.post("/api/payments", {"amount": "10.00"}, format="json")
    detail = assert_json_error(response, 404)
    assert detail == "no endpoint at /api/payments; did you mean /api/payments/ ?"
    assert "Location" not in response
    assert head() == before


@pytest.mark.parametrize("debug", [False, True])
def test_api_command_without_trailing_slash_appends_nothing(api: APIClient, settings,
                                                           debug: bool) -> None:
    settings.DEBUG = debug
    payment = services.create_payment(amount="10.00")
    before = head()
    response = api.post(f"/api/payments/{payment.id}/authorize", {"bank_name": "Acme"},
                        format="json")
    detail = assert_json_error(response, 404)
    assert detail.endswith(f"did you mean /api/payments/{payment.id}/authorize/ ?")
    assert head() == before
    assert services.find_payment(payment_id=payment.id).payment.status == "pending"


def test_api_get_without_trailing_slash_is_still_redirected(api: APIClient) -> None:
    response = api.get("/api/payments?status=settled")
    assert response.status_code == 301
    assert response["Location"] == "/api/payments/?status=settled"


@pytest.mark.parametrize("debug", [False, True])
def test_site_post_without_trailing_slash_is_a_404_page(browser: Client, settings,
                                                        debug: bool) -> None:
    settings.DEBUG = debug
    before = head()
    response = browser.post("/payments/new", {"amount": "5.00", "currency": "EUR"})
    assert response.status_code == 404
    html = page_of(response)
    assert 'id="not-found"' in html
    assert 'href="/payments/new/"' in html  # "did you mean"
    assert TECHNICAL_PAGE not in html
    assert head() == before


# --- 2. every status under /api/ is JSON ---------------------------------------------------


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/api/nonexistent/", "/api/payments/x/y/z/", "/api/"])
def test_unknown_api_paths_are_json_404(api: APIClient, settings, debug: bool,
                                        path: str) -> None:
    settings.DEBUG = debug
    for response in (api.get(path), api.post(path, {}, format="json")):
        assert assert_json_error(response, 404) == f"no endpoint at {path}"


def test_api_405_is_json_with_allow(api: APIClient) -> None:
    response = api.delete("/api/payments/")
    assert_json_error(response, 405)
    assert "POST" in response["Allow"]


@pytest.mark.parametrize("debug", [False, True])
def test_api_500_is_json_without_a_traceback(user: Any, settings, monkeypatch,
                                             debug: bool) -> None:
    settings.DEBUG = debug

    def broken(**kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(services, "find_payment", broken)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    detail = assert_json_error(client.get(f"/api/payments/{uuid4()}/"), 500)
    assert "a bug" not in detail


@pytest.mark.parametrize("debug", [False, True])
def test_api_400_from_django_is_json(api: APIClient, settings, debug: bool) -> None:
    settings.DEBUG = debug
    response = api.get("/api/payments/", headers={"host": "evil.example"})  # DisallowedHost
    assert_json_error(response, 400)


def test_handlers_answer_json_under_api_and_pages_elsewhere() -> None:
    factory = RequestFactory()
    assert_json_error(errors.permission_denied(factory.get("/api/payments/"),
                                               PermissionDenied()), 403)
    assert_json_error(errors.bad_request(factory.get("/api/payments/"), ValueError()), 400)
    assert_json_error(errors.server_error(factory.get("/api/payments/")), 500)
    page = errors.permission_denied(factory.get("/payments/"), PermissionDenied())
    assert page.status_code == 403
    assert page["Content-Type"].startswith("text/html")


def test_probes_keep_their_json(client: Client) -> None:
    assert client.post("/healthz").status_code == 405
    assert client.post("/healthz")["Content-Type"] == "application/json"


# --- 3. the site's own 404, 405 and 500 pages, DEBUG on or off ----------------------------


@pytest.mark.parametrize("debug", [False, True])
@pytest.mark.parametrize("path", ["/no-such-page/", "/payments/not-a-uuid/"])
def test_site_404_is_the_styled_page(browser: Client, settings, debug: bool, path: str) -> None:
    settings.DEBUG = debug
    response = browser.get(path)
    assert response.status_code == 404
    html = page_of(response)
    assert 'id="not-found"' in html
    assert 'href="/static/css/site.css"' in html
    assert TECHNICAL_PAGE not in html


@pytest.mark.parametrize("debug", [False, True])
def test_unknown_payment_page_is_the_styled_404(browser: Client, settings, debug: bool) -> None:
    settings.DEBUG = debug
    response = browser.get(f"/payments/{uuid4()}/")
    assert response.status_code == 404
    assert 'id="not-found"' in page_of(response)
    assert TECHNICAL_PAGE not in page_of(response)


@pytest.mark.parametrize("debug", [False, True])
def test_site_405_is_the_styled_page_with_allow(browser: Client, settings, debug: bool) -> None:
    settings.DEBUG = debug
    payment = services.create_payment(amount="10.00")
    wrong_method = browser.put(f"/payments/{payment.id}/authorize/")
    assert wrong_method.status_code == 405
    assert wrong_method["Allow"] == "GET, POST"
    html = page_of(wrong_method)
    assert 'id="method-not-allowed"' in html
    assert "PUT" in html
    before = head()
    posted = browser.post("/", {"amount": "1.00"})
    assert posted.status_code == 405
    assert posted["Allow"] == "GET"
    assert 'id="method-not-allowed"' in page_of(posted)
    assert head() == before


def test_site_500_is_the_styled_page(user: Any, settings, monkeypatch) -> None:
    settings.DEBUG = False  # DEBUG on shows Django's traceback page, as it should
    monkeypatch.setattr(selectors, "overview", lambda: 1 / 0)
    client = Client(raise_request_exception=False)
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 500
    assert 'id="server-error"' in page_of(response)
    assert "ZeroDivisionError" not in page_of(response)


def test_500_page_renders_without_a_request_or_the_database(django_db_blocker) -> None:
    request = RequestFactory().get("/payments/")
    with django_db_blocker.block():
        html = loader.get_template("500.html").render()
        response = errors.server_error(request)
    assert 'id="server-error"' in html
    assert response.status_code == 500
    assert 'id="server-error"' in page_of(response)


@pytest.mark.parametrize("debug", [False, True])
def test_admin_and_static_files_still_work(client: Client, settings, debug: bool) -> None:
    settings.DEBUG = debug
    assert client.get("/admin/login/").status_code == 200
    static = client.get("/static/css/site.css")
    assert static.status_code == 200
    assert b"".join(static.streaming_content).startswith(b"/*")
    admin = get_user_model().objects.create_superuser("boss", password=PASSWORD)
    client.force_login(admin)
    assert client.get("/admin/").status_code == 200
    missing = client.get("/admin/projections/nothing-here/")
    assert missing.status_code == 404
    assert TECHNICAL_PAGE not in page_of(missing)


# --- 4. JSON bodies: depth and size --------------------------------------------------------


def post_raw(api: APIClient, path: str, body: str | bytes, **headers: str) -> Any:
    return api.generic("POST", path, body, content_type="application/json", headers=headers)


# 60,000 "[" fit in the size bound and overflowed the decoder's recursion (a 500).
@pytest.mark.parametrize("body", ["[" * 60_000, '{"amount": ' + "[" * 5_000 + "]" * 5_000 + "}",
                                  '{"amount": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
                                  + "}"])
def test_deeply_nested_json_is_a_400(api: APIClient, body: str) -> None:
    payment = services.create_payment(amount="10.00")
    before = head()
    for path in ("/api/payments/", f"/api/payments/{payment.id}/settle/"):
        response = post_raw(api, path, body, **{"Idempotency-Key": "deep-1"})
        detail = assert_json_error(response, 400)
        assert f"nested more than {MAX_DEPTH} levels deep" in detail
    assert head() == before
    # A 400 decided nothing: the key is still free for the corrected request.
    fixed = post_raw(api, "/api/payments/", '{"amount": "1.00"}', **{"Idempotency-Key": "deep-1"})
    assert fixed.status_code == 201


def test_oversized_json_body_is_a_413(api: APIClient) -> None:
    before = head()
    body = '{"amount": "10.00"' + " " * MAX_BODY_BYTES + "}"
    detail = assert_json_error(post_raw(api, "/api/payments/", body), 413)
    assert f"at most {MAX_BODY_BYTES} bytes" in detail
    assert head() == before
    assert_json_error(post_raw(api, "/api/payments/", "[" * 100_000), 413)  # the body
    just_fits = '{"amount": "10.00"' + " " * (MAX_BODY_BYTES - 19) + "}"
    assert len(just_fits) == MAX_BODY_BYTES
    assert post_raw(api, "/api/payments/", just_fits).status_code == 201


def test_malformed_json_still_reads_as_before(api: APIClient) -> None:
    detail = assert_json_error(post_raw(api, "/api/payments/", '{"amount": '), 400)
    assert detail.startswith("JSON parse error - ")
    assert_json_error(post_raw(api, "/api/payments/", '{"amount": NaN}'), 400)
    assert_json_error(post_raw(api, "/api/payments/", b'{"amount": "\xff"}'), 400)


# --- 5. absurd query parameters -------------------------------------------------------------


@pytest.mark.parametrize("page", ["400000000000000000", "0", "-1", "abc", "1e3", "9" * 5000])
def test_absurd_page_numbers_on_the_list_are_a_400(browser: Client, page: str) -> None:
    response = browser.get("/payments/", {"page": page})
    assert response.status_code == 400
    html = page_of(response)
    assert 'id="bad-request"' in html
    assert f"from 1 to {selectors.MAX_PAGE:,}" in html or "whole number" in html


def test_a_page_past_the_end_is_empty_not_an_error(browser: Client) -> None:
    response = browser.get("/payments/", {"page": selectors.MAX_PAGE})
    assert response.status_code == 200
    assert page_of(response).count('class="payment-row"') == 0


@pytest.mark.parametrize("query", [{"bank_name": "x" * 101}, {"currency": "euros"},
                                   {"bank_name": "a\tb"}])  # NUL: see the test below
def test_bad_filters_on_the_list_are_a_400_with_the_message(browser: Client,
                                                           query: dict[str, str]) -> None:
    response = browser.get("/payments/", query)
    assert response.status_code == 400
    assert 'class="errorlist' in page_of(response)


@pytest.mark.parametrize("query", [
    {"page": "400000000000000000"}, {"page": "-1"}, {"page": "9" * 5000},
    {"page_size": "1" + "0" * 30}, {"page_size": "-5"}, {"page": "1", "page_size": "0"},
])
@pytest.mark.parametrize("path", ["/api/payments/", "/api/declines/"])
def test_absurd_pages_on_the_api_lists_are_json_not_500(api: APIClient, path: str,
                                                        query: dict[str, str]) -> None:
    response = api.get(path, query)
    assert response.status_code in (200, 404), page_of(response)
    assert response["Content-Type"] == "application/json"
    if response.status_code == 404:
        assert response.json() == {"detail": "Invalid page."}


@pytest.mark.parametrize("path", ["/api/payments/?bank_name=", "/api/declines/?bank_name=",
                                  "/payments/?bank_name=", "/declines/?bank="])
def test_oversized_filters_are_never_a_500(api: APIClient, browser: Client, path: str) -> None:
    client = api if path.startswith("/api/") else browser
    response = client.get(path + "x" * 20_000)  # past PostgreSQL's btree key size
    assert response.status_code in (200, 400), page_of(response)


@pytest.mark.parametrize("path", [
    "/admin/projections/paymentview/?bank_name=%00", "/admin/projections/paymentview/?q=%00",
    "/admin/projections/paymentview/?status__exact=%00",
    "/admin/projections/declineview/?decline_code=%00", "/payments/?bank_name=Ac%00me",
    "/api/payments/?bank_name=%00", "/api/declines/?decline_code=05&bank_name=%00",
    "/declines/?bank=%00", "/?x%00=1",
])
def test_nul_in_any_query_parameter_is_a_400(user: Any, path: str) -> None:
    """Found by the generated suite on PostgreSQL: the admin's list filters passed NUL to
    the database (DataError, a 500). NUL is never a valid parameter: one check for all."""
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 400
    if path.startswith("/api/"):
        assert response.json() == {"detail": "query parameters must not contain NUL (U+0000)"}
    else:
        assert "query parameters must not contain NUL" in page_of(response)


@pytest.mark.parametrize("query", [{"date": "0001-01-01"}, {"date_from": "0001-01-01"},
                                   {"date_to": "9999-12-31"}])
def test_extreme_dates_on_the_api_declines_are_answered(api: APIClient,
                                                        query: dict[str, str]) -> None:
    assert api.get("/api/declines/", query).status_code == 200
    bad = api.get("/api/declines/", {"date_from": "10000-01-01"})
    assert bad.status_code == 400
    assert "date_from" in bad.json()


@pytest.mark.parametrize(("query", "message"), [
    ({"date_to": "0001-01-01"}, "from 1970-01-01"),
    ({"date_from": "0001-01-01"}, "from 1970-01-01"),
    ({"date_from": "1969-12-31", "date_to": "1970-01-05"}, "from 1970-01-01"),
    ({"date_to": "not-a-date"}, "Enter a valid date"),
    ({"date_from": "2024-01-01", "date_to": "2025-06-01"}, "at most 366 days"),
    ({"date_from": "2025-03-02", "date_to": "2025-03-01"}, "the start date is after the end"),
    ({"bank": "x" * 101}, "at most 100 characters"),
    ({"code": "TOOLONG"}, "1 to 4 letters or digits"),
])
def test_bad_report_dates_are_a_400_with_a_message(browser: Client, query: dict[str, str],
                                                   message: str) -> None:
    response = browser.get("/declines/", query)
    assert response.status_code == 400
    assert message in page_of(response)


def test_an_open_ended_report_is_bounded(browser: Client) -> None:
    # Only date_from: up to the latest decline, but at most MAX_REPORT_DAYS (it built
    # 740k days from 0001-01-01).
    for day in (date(2025, 3, 1), date(2027, 1, 1)):
        DeclineView.objects.create(decline_code="05", bank_name="Acme", date=day, count=2)
    report = selectors.declines_report(code=None, bank=None, date_from=date(2025, 1, 1),
                                       date_to=None)
    assert report.date_to == date(2025, 1, 1) + timedelta(days=selectors.MAX_REPORT_DAYS - 1)
    assert len(report.days) == selectors.MAX_REPORT_DAYS
    assert [row.date for row in report.rows] == [date(2025, 3, 1)]
    response = browser.get("/declines/", {"date_from": "1970-01-01"})
    assert response.status_code == 200
    assert "1971-01-01" in page_of(response)  # the window's end, shown


def test_the_report_window_never_overflows() -> None:
    DeclineView.objects.create(decline_code="05", bank_name="Acme", date=date(1, 1, 5), count=1)
    report = selectors.declines_report(code=None, bank=None, date_from=None,
                                       date_to=date(1, 1, 5))
    assert report.date_from == date.min
    report = selectors.declines_report(code=None, bank=None, date_from=None, date_to=None)
    assert report.date_from == date.min


# --- 6. throttling and login lock-out -------------------------------------------------------


def test_api_is_throttled_per_user_with_a_json_429(api: APIClient, monkeypatch) -> None:
    monkeypatch.setattr(UserRateThrottle, "rate", "3/min", raising=False)
    for _ in range(3):
        assert api.get("/api/payments/").status_code == 200
    before = head()
    refused = api.post("/api/payments/", {"amount": "10.00"}, format="json")
    detail = assert_json_error(refused, 429)
    assert detail.startswith("Request was throttled.")
    assert 0 < int(refused["Retry-After"]) <= 60
    assert head() == before
    other = APIClient()
    other.force_authenticate(get_user_model().objects.create_user("bob"))
    assert other.get("/api/payments/").status_code == 200  # per user


def settings_in_a_process(**env: str) -> subprocess.CompletedProcess[str]:
    code = ("import django, json; django.setup(); from django.conf import settings; "
            "print(json.dumps([settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'],"
            " settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME.total_seconds()]))")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("API_THROTTLE_", "AXES_"))}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, "DJANGO_SETTINGS_MODULE": "paymentsite.settings", "DEBUG": "true", **env},
    )


def test_throttle_and_lockout_settings_come_from_the_environment() -> None:
    default = settings_in_a_process()
    assert default.returncode == 0, default.stderr
    assert json.loads(default.stdout) == [{"user": "6000/min", "anon": "60/min"}, 5, 900.0]
    custom = settings_in_a_process(API_THROTTLE_USER="100/s", API_THROTTLE_ANON="off",
                                   AXES_FAILURE_LIMIT="3", AXES_COOLOFF_MINUTES="60")
    assert custom.returncode == 0, custom.stderr
    assert json.loads(custom.stdout) == [{"user": "100/s", "anon": None}, 3, 3600.0]
    wrong = settings_in_a_process(API_THROTTLE_USER="fast")
    assert wrong.returncode != 0
    assert "API_THROTTLE_USER must be a rate such as 600/min" in wrong.stderr


LOGINS = ["/accounts/login/", "/admin/login/", "/api/auth/login/"]


@pytest.mark.parametrize("login", LOGINS)
def test_logins_lock_out_after_repeated_failures(client: Client, settings, login: str) -> None:
    get_user_model().objects.create_superuser("boss", password=PASSWORD)
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        wrong = client.post(login, {"username": "boss", "password": "guess"})
        assert wrong.status_code == 200  # the form again, with its error
    locked = client.post(login, {"username": "boss", "password": "guess"})
    assert locked.status_code == 429
    again = client.post(login, {"username": "boss", "password": PASSWORD})
    assert again.status_code == 429  # the right password does not help now
    assert again["Content-Type"].startswith("text/html")
    html = page_of(again)
    assert 'id="locked-out"' in html
    assert "15 minutes" in html
    assert int(again["Retry-After"]) == 15 * 60
    assert client.get("/").status_code == 302  # not logged in

    # Username and address together: the same user from elsewhere still logs in.
    elsewhere = Client(REMOTE_ADDR="203.0.113.9")
    assert elsewhere.post(login, {"username": "boss", "password": PASSWORD}).status_code == 302

    call_command("axes_reset", verbosity=0)  # what an administrator runs to unlock
    assert client.post(login, {"username": "boss", "password": PASSWORD}).status_code == 302


def test_lockout_ends_after_the_cool_off(client: Client, settings, user: Any) -> None:
    from axes.models import AccessAttempt

    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "alice", "password": "guess"})
    assert client.post("/accounts/login/",
                       {"username": "alice", "password": PASSWORD}).status_code == 429
    AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time
                                 - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert client.post("/accounts/login/",
                       {"username": "alice", "password": PASSWORD}).status_code == 302


# --- 7. documented ------------------------------------------------------------------------


def test_limits_and_throttling_are_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Limits and throttling", 1)[1].split("\n## ", 1)[0]
    for name in ("API_THROTTLE_USER", "API_THROTTLE_ANON", "AXES_FAILURE_LIMIT",
                 "AXES_COOLOFF_MINUTES", "axes_reset", "413", "429"):
        assert name in section, name
