"""The HTML pages, through Django's test client: login, the life cycle through the
forms, errors, escaping, the 404 and 503 pages, the chart and the production checks."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID, uuid4

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from payments import services
from payments.eventstore import get_event_store, reset_event_store
from projections.charts import bar_chart
from projections.models import DeclineView
from tests.amounts import BAD_AMOUNTS

pytestmark = pytest.mark.django_db

XSS = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
ACTION_FORMS = ("authorize", "settle", "refund", "decline")


def page_of(response) -> str:
    return response.content.decode()


def forms_on(html: str) -> set[str]:
    return {a for a in ACTION_FORMS if f'id="form-{a}"' in html}


def timeline(html: str) -> list[str]:
    return re.findall(r'<li class="event" data-type="([^"]+)"', html)


def status_on(html: str) -> str:
    return re.search(r'id="payment-status"[^>]*data-status="([^"]+)"', html).group(1)


def create(browser: Client, amount: str = "100.00") -> UUID:
    response = browser.post("/payments/new/", {"amount": amount, "currency": "EUR"})
    assert response.status_code == 302, page_of(response)
    return UUID(urlsplit(response["Location"]).path.strip("/").split("/")[-1])


def act(browser: Client, payment_id: UUID, action: str, **data: str):
    return browser.post(f"/payments/{payment_id}/{action}/", data, follow=True)


# --- login ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/payments/", "/payments/new/", f"/payments/{uuid4()}/",
                                  "/declines/"])
def test_every_page_needs_a_login(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_anonymous_command_is_sent_to_login_and_appends_nothing(client: Client) -> None:
    payment = services.create_payment(amount="5.00")
    response = client.post(f"/payments/{payment.id}/authorize/", {"bank_name": "Acme"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert services.find_payment(payment_id=payment.id).payment.version == 0


def test_login_page_logs_in_and_out(client: Client, user) -> None:
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    assert 'id="login-form"' in page_of(page)
    assert 'href="/static/css/site.css"' in page_of(page)
    response = client.post("/accounts/login/",
                           {"username": "clerk", "password": "a long test password"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_the_stylesheet_is_served_without_collectstatic(browser: Client) -> None:
    response = browser.get("/static/css/site.css")
    assert response.status_code == 200
    assert b"system-ui" in b"".join(response.streaming_content)


# --- the life cycle through the forms --------------------------------------------------


def test_life_cycle_through_the_forms(browser: Client) -> None:
    new = browser.get("/payments/new/")
    assert 'id="create-form"' in page_of(new)
    assert 'name="currency"' in page_of(new)
    assert 'value="EUR"' in page_of(new)

    payment_id = create(browser, "100.00")
    html = page_of(browser.get(f"/payments/{payment_id}/"))
    assert status_on(html) == "pending"
    assert timeline(html) == ["PaymentCreated"]
    assert forms_on(html) == {"authorize", "decline"}

    steps = [
        ("authorize", {"bank_name": "Acme Bank"}, "authorized", {"settle", "decline"}),
        ("settle", {"amount": "30.00", "bank_name": ""}, "partially_settled",
         {"settle", "refund"}),
        ("settle", {"amount": "", "bank_name": ""}, "settled", {"refund"}),
        ("refund", {"amount": ""}, "refunded", set()),
    ]
    for n, (action, data, status, allowed) in enumerate(steps, start=2):
        response = act(browser, payment_id, action, **data)
        assert response.status_code == 200
        # To the payment's page, with its event's position for the lists it links to.
        assert response.redirect_chain == [
            (f"/payments/{payment_id}/?after={get_event_store().head_position()}", 302)]
        html = page_of(response)
        assert status_on(html) == status
        assert len(timeline(html)) == n
        assert forms_on(html) == allowed
        words = status.replace("_", " ")
        assert f"the payment is now {words}." in html  # the success message, for people
        # Shown once: the next page has it no more (the message storage was used).
        assert "the payment is now" not in page_of(browser.get(f"/payments/{payment_id}/"))
    assert timeline(html)[-1] == "PaymentRefunded"  # newest last
    assert 'id="payment-settled">100.00 EUR<' in html
    assert 'id="no-actions"' in html

    declined = create(browser, "20.00")
    response = act(browser, declined, "decline", bank_name="Zeta", decline_code="05")
    html = page_of(response)
    assert status_on(html) == "declined"
    assert timeline(html) == ["PaymentCreated", "PaymentDeclined"]
    assert forms_on(html) == set()


def test_bad_amount_shows_the_domains_message_next_to_the_field(browser: Client) -> None:
    payment_id = create(browser)
    act(browser, payment_id, "authorize", bank_name="Acme")
    response = browser.post(f"/payments/{payment_id}/settle/", {"amount": "-5"})
    assert response.status_code == 400
    html = page_of(response)
    errors = re.search(r'id="settle-amount_error">(.*?)</ul>', html).group(1)
    assert "must be greater than 0" in errors
    assert len(timeline(html)) == 2  # nothing appended
    assert services.find_payment(payment_id=payment_id).payment.version == 1

    response = browser.post("/payments/new/", {"amount": "1.234", "currency": "EUR"})
    assert response.status_code == 400
    assert "must have at most 2 decimal places" in re.search(
        r'id="id_amount_error">(.*?)</ul>', page_of(response)).group(1)
    response = browser.post("/payments/new/", {"amount": "1", "currency": "euro"})
    assert response.status_code == 400
    assert "must be a three-letter ISO 4217 code" in page_of(response)


def test_a_refused_command_is_a_409_with_the_message_at_the_top(browser: Client) -> None:
    payment_id = create(browser, "10.00")
    response = browser.post(f"/payments/{payment_id}/refund/", {"amount": ""})
    assert response.status_code == 409
    html = page_of(response)
    assert "cannot refund a payment that is pending" in re.search(
        r'id="payment-errors"(.*?)</ul>', html, re.S).group(1)
    assert forms_on(html) == {"authorize", "decline"}

    act(browser, payment_id, "authorize", bank_name="Acme")
    response = browser.post(f"/payments/{payment_id}/settle/", {"amount": "11.00"})
    assert response.status_code == 409
    assert "only 10.00 is left to settle" in page_of(response)

    # A form rendered at version 1, sent after another change: refused, not applied.
    act(browser, payment_id, "settle", amount="1.00")
    response = browser.post(f"/payments/{payment_id}/settle/",
                            {"amount": "1.00", "expected_version": "1"})
    assert response.status_code == 409
    assert ("This payment changed while you were on this page: it is now partially settled."
            " Review and try again.") in page_of(response)
    assert status_on(page_of(response)) == "partially_settled"  # the state now, shown
    assert 'id="payment-settled">1.00 EUR<' in page_of(response)
    assert services.find_payment(payment_id=payment_id).payment.version == 2


def test_an_edited_resent_form_is_told_apart_from_a_double_submit(browser: Client) -> None:
    """Back, edit, send again: the same key with other values. Said for people; the
    new-payment form comes back with a fresh key, so sending it again makes a payment."""
    key = str(uuid4())
    first = browser.post("/payments/new/", {"amount": "10.00", "currency": "EUR",
                                            "idempotency_key": key})
    assert first.status_code == 302
    edited = browser.post("/payments/new/", {"amount": "12.00", "currency": "EUR",
                                             "idempotency_key": key})
    assert edited.status_code == 400
    html = page_of(edited)
    assert ("This form was already sent, with other values (after going back and editing"
            " it?), and made a payment then.") in html
    fresh = re.search(r'name="idempotency_key" value="([^"]+)"', html).group(1)
    assert fresh != key
    assert 'value="12.00"' in html
    again = browser.post("/payments/new/", {"amount": "12.00", "currency": "EUR",
                                            "idempotency_key": fresh})
    assert again.status_code == 302

    payment_id = UUID(urlsplit(first["Location"]).path.strip("/").split("/")[-1])
    sent = {"bank_name": "Acme", "idempotency_key": str(uuid4()), "expected_version": "0"}
    assert browser.post(f"/payments/{payment_id}/authorize/", sent).status_code == 302
    response = browser.post(f"/payments/{payment_id}/authorize/", {**sent, "bank_name": "Other"})
    assert response.status_code == 409
    assert ("This form was already sent, with other values (after going back and editing"
            " it?): the payment is now authorized. Review and try again.") in page_of(response)


def test_a_double_submit_of_the_same_form_appends_once(browser: Client) -> None:
    payment_id = create(browser)
    key = str(uuid4())
    for _ in range(2):
        response = browser.post(f"/payments/{payment_id}/authorize/",
                                {"bank_name": "Acme", "idempotency_key": key,
                                 "expected_version": "0"})
        assert response.status_code == 302
    assert services.find_payment(payment_id=payment_id).payment.version == 1


def test_post_without_csrf_token_is_refused(user) -> None:
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    payment = services.create_payment(amount="5.00")
    response = strict.post(f"/payments/{payment.id}/authorize/", {"bank_name": "Acme"})
    assert response.status_code == 403
    assert 'id="csrf-failure"' in page_of(response)
    assert strict.post("/payments/new/", {"amount": "1.00"}).status_code == 403
    assert services.find_payment(payment_id=payment.id).payment.version == 0
    # The page's own form carries a token, and that token is accepted.
    html = page_of(strict.get(f"/payments/{payment.id}/"))
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)
    response = strict.post(f"/payments/{payment.id}/authorize/",
                           {"bank_name": "Acme", "csrfmiddlewaretoken": token})
    assert response.status_code == 302


# --- escaping ----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the projection runners work in threads
def test_bank_name_is_escaped_on_every_page(browser: Client) -> None:
    authorized = create(browser)
    act(browser, authorized, "authorize", bank_name=XSS)
    declined = create(browser)
    act(browser, declined, "decline", bank_name=XSS, decline_code="05")
    call_command("run_projection", "all", "--once")
    pages = [f"/payments/{authorized}/", f"/payments/{declined}/", "/payments/", "/",
             "/declines/", f"/payments/?bank_name={XSS}"]
    for path in pages:
        response = browser.get(path)
        assert response.status_code == 200, path
        html = page_of(response)
        assert XSS not in html, path
        assert ESCAPED in html, path


# --- 404 and 503 -------------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"/payments/{uuid4()}/", "/payments/not-a-uuid/",
                                  "/payments/12345/authorize/"])
def test_unknown_or_malformed_payment_is_a_404_page(browser: Client, path: str) -> None:
    response = browser.get(path)
    assert response.status_code == 404
    assert 'id="not-found"' in page_of(response)


def test_commands_on_unknown_payments_and_actions_are_404(browser: Client) -> None:
    assert browser.post(f"/payments/{uuid4()}/authorize/",
                        {"bank_name": "Acme"}).status_code == 404
    payment_id = create(browser)
    assert browser.post(f"/payments/{payment_id}/explode/").status_code == 404
    assert browser.get(f"/payments/{payment_id}/explode/").status_code == 404


def test_opening_a_command_address_goes_to_the_payments_form(browser: Client) -> None:
    """A refused form leaves its address in the bar: a reload or a bookmark GETs it."""
    payment_id = create(browser)
    response = browser.get(f"/payments/{payment_id}/authorize/")
    assert response.status_code == 302
    assert response["Location"] == f"/payments/{payment_id}/#form-authorize"
    assert services.find_payment(payment_id=payment_id).payment.version == 0


def test_store_unreachable_is_a_503_page(browser: Client, settings, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    settings.EVENTSTORE_URI = f"sqlite:///{tmp_path / 'a-file' / 'events.sqlite3'}"
    reset_event_store()
    for response in (browser.get(f"/payments/{uuid4()}/"),
                     browser.post("/payments/new/", {"amount": "1.00", "currency": "EUR"}),
                     browser.post(f"/payments/{uuid4()}/authorize/", {"bank_name": "A"})):
        assert response.status_code == 503
        assert "event store is unreachable" in page_of(response)
        assert "Traceback" not in page_of(response)
    # The read-side pages still work, and say what they cannot know.
    overview = browser.get("/")
    assert overview.status_code == 200
    assert 'id="store-unreachable"' in page_of(overview)
    assert "Event store unreachable" in page_of(overview)
    listing = browser.get("/payments/")
    assert listing.status_code == 200
    assert 'data-lag="unknown"' in page_of(listing)


# --- the read-side pages ------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_list_filters_paginates_and_says_when_it_is_behind(browser: Client) -> None:
    ids = [create(browser, f"{n}.00") for n in range(1, 4)]
    act(browser, ids[0], "authorize", bank_name="Acme")
    listing = page_of(browser.get("/payments/"))
    assert "may be 4 events behind" in listing
    call_command("run_projection", "all", "--once")
    listing = page_of(browser.get("/payments/"))
    assert 'data-lag="0"' in listing
    assert listing.count('class="payment-row"') == 3
    only = page_of(browser.get("/payments/?status=authorized"))
    assert only.count('class="payment-row"') == 1
    assert str(ids[0]) in only
    assert page_of(browser.get("/payments/?bank_name=Nope")).count('class="payment-row"') == 0
    assert page_of(browser.get("/payments/?currency=eur")).count('class="payment-row"') == 3
    bad = page_of(browser.get("/payments/?currency=euros"))
    assert "must be a three-letter ISO 4217 code" in bad


def test_list_pagination(browser: Client, monkeypatch) -> None:
    from projections import selectors
    from tests.test_admin import payment_row

    monkeypatch.setattr(selectors, "PAGE_SIZE", 2)
    for _ in range(5):
        payment_row()
    first = page_of(browser.get("/payments/?status=authorized"))
    assert first.count('class="payment-row"') == 2
    assert 'id="page-next"' in first
    assert 'id="page-previous"' not in first
    assert "?status=authorized&amp;page=2" in first
    last = page_of(browser.get("/payments/?status=authorized&page=3"))
    assert last.count('class="payment-row"') == 1
    assert 'id="page-next"' not in last
    assert 'id="page-previous"' in last


@pytest.mark.django_db(transaction=True)
def test_overview_counts_latest_and_lag(browser: Client) -> None:
    ids = [create(browser) for _ in range(12)]
    act(browser, ids[0], "authorize", bank_name="Acme")
    call_command("run_projection", "all", "--once")
    html = page_of(browser.get("/"))
    assert re.search(r'data-status="pending">.*?class="num count">11<', html)
    assert re.search(r'data-status="authorized">.*?class="num count">1<', html)
    assert 'id="status-total">12<' in html
    latest = re.search(r'id="latest-payments">(.*?)</table>', html, re.S).group(1)
    assert latest.count('class="payment-row"') == 10
    assert re.search(r'data-projection="payment">.*?class="num lag">0<', html)


def test_declines_report_and_chart(browser: Client) -> None:
    rows = [("05", "Acme", date(2025, 3, 1), 2), ("05", "Zeta", date(2025, 3, 1), 1),
            ("51", "Acme", date(2025, 3, 1), 4), ("05", "Acme", date(2025, 3, 3), 1),
            ("N7", "Zeta", date(2025, 3, 2), 3), ("51", "Acme", date(2024, 1, 1), 9)]
    for code, bank, day, n in rows:
        DeclineView.objects.create(decline_code=code, bank_name=bank, date=day, count=n)
    html = page_of(browser.get("/declines/"))
    # The last 30 days up to the latest decline: 2024's row is outside.
    assert "2025-02-02" in html
    assert "2025-03-03" in html
    bars = re.findall(r'<rect class="bar" data-code="([^"]+)" data-date="([^"]+)"', html)
    assert sorted(bars) == [("05", "2025-03-01"), ("05", "2025-03-03"), ("51", "2025-03-01"),
                            ("N7", "2025-03-02")]  # Acme and Zeta's 05 on 03-01 are one bar
    assert re.search(r'data-code="05"><td>05</td><td class="num">4<', html)
    assert 'class="legend"' in html

    filtered = page_of(browser.get("/declines/?code=05&bank=Acme&date_from=2025-03-01"
                                   "&date_to=2025-03-02"))
    assert re.findall(r'<rect class="bar" data-code="([^"]+)"', filtered) == ["05"]
    assert filtered.count('class="decline-row"') == 1
    bad = page_of(browser.get("/declines/?code=toolong&date_from=2025-03-02&date_to=2025-03-01"))
    assert "must be 1 to 4 letters or digits" in bad
    assert "the start date is after the end date" in bad
    empty = page_of(browser.get("/declines/?bank=Nobody"))
    assert 'id="declines-chart-empty"' in empty


def test_chart_escapes_its_labels_and_counts_bars() -> None:
    days = [date(2025, 1, 1), date(2025, 1, 2)]
    svg = str(bar_chart(days, {XSS: {days[0]: 3}, "05": {days[0]: 1, days[1]: 2}}))
    assert XSS not in svg
    assert ESCAPED in svg
    assert svg.count('<rect class="bar"') == 3
    assert svg.startswith('<svg id="declines-chart"')
    assert str(bar_chart([], {})).startswith('<p class="muted" id="declines-chart-empty"')


# --- admin and production settings --------------------------------------------------------


def test_admin_pages_still_load(client: Client) -> None:
    admin = get_user_model().objects.create_superuser("boss", password="a long test password")
    client.force_login(admin)
    for path in ["/admin/", "/admin/projections/paymentview/",
                 "/admin/projections/declineview/", "/admin/projections/checkpoint/"]:
        assert client.get(path).status_code == 200, path


def test_production_settings_pass_check_deploy() -> None:
    env = {
        **os.environ,
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(60),
        "ALLOWED_HOSTS": "payments.example.com",
        "DJANGO_SETTINGS_MODULE": "paymentsite.settings",
    }
    env.pop("SECURE_SSL_REDIRECT", None)
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(("field", "value", "message"), [
    ("bank_name", "Ac\x00me", "must not contain NUL"),
    ("bank_name", "Line1\r\nLine2", "one line of text"),
    ("bank_name", "\u202eknaB", "direction overrides"),
])
def test_the_forms_refuse_text_the_rule_forbids_and_append_nothing(
        browser: Client, field: str, value: str, message: str) -> None:
    payment_id = create(browser)
    response = browser.post(f"/payments/{payment_id}/authorize/", {field: value})
    assert response.status_code == 400
    errors = re.search(r'id="authorize-bank_name_error">(.*?)</ul>', page_of(response)).group(1)
    assert message in errors
    assert services.find_payment(payment_id=payment_id).payment.version == 0


# --- the merchant's reference (issue 12) ------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the projection runners work in threads
def test_the_new_payment_form_takes_a_reference_that_the_pages_show(browser: Client) -> None:
    form = page_of(browser.get("/payments/new/"))
    assert re.search(r'<input type="text" name="reference"[^>]*id="id_reference"', form)
    response = browser.post("/payments/new/", {"amount": "10.00", "currency": "EUR",
                                               "reference": "  Order <b>42</b> \u2013 Caf\u00e9 "})
    assert response.status_code == 302
    payment_id = UUID(urlsplit(response["Location"]).path.strip("/").split("/")[-1])
    reference = "Order <b>42</b> \u2013 Caf\u00e9"  # trimmed
    assert services.find_payment(payment_id=payment_id).payment.reference == reference
    html = page_of(browser.get(f"/payments/{payment_id}/"))
    escaped = "Order &lt;b&gt;42&lt;/b&gt; \u2013 Caf\u00e9"
    assert f'<dd id="payment-reference">{escaped}</dd>' in html
    without = create(browser)
    assert '<dd id="payment-reference">\u2014</dd>' in page_of(browser.get(f"/payments/{without}/"))

    call_command("run_projection", "all", "--once")
    for path in ("/payments/", "/"):  # in the id's title: the list stays one line a row
        html = page_of(browser.get(path))
        assert f'title="Reference: {escaped}"' in html, path
        assert "<b>42" not in html


@pytest.mark.parametrize(("value", "message"), [
    ("r" * 65, "must be at most 64 characters"),
    ("order\t42", "must be one line of text without control characters (found U+0009)"),
    ("order\x0042", "must not contain NUL (U+0000)"),
    ("\u202eorder", "must not contain invisible format characters"),
])
def test_the_new_payment_form_refuses_a_reference_the_rule_forbids_and_appends_nothing(
        browser: Client, value: str, message: str) -> None:
    response = browser.post("/payments/new/", {"amount": "10.00", "currency": "EUR",
                                               "reference": value})
    assert response.status_code == 400
    errors = re.search(r'id="id_reference_error">(.*?)</ul>', page_of(response)).group(1)
    assert message in errors
    assert get_event_store().head_position() == 0


def test_a_reference_of_64_characters_or_only_spaces_is_accepted(browser: Client) -> None:
    for value, stored in (("r" * 64, "r" * 64), ("   ", ""), ("", "")):
        response = browser.post("/payments/new/", {"amount": "1", "currency": "EUR",
                                                   "reference": value})
        assert response.status_code == 302, page_of(response)
        payment_id = UUID(urlsplit(response["Location"]).path.strip("/").split("/")[-1])
        assert services.find_payment(payment_id=payment_id).payment.reference == stored


AMOUNT_FORMS = {"create": "id_amount_error", "settle": "settle-amount_error",
                "refund": "refund-amount_error"}


def ready_for(action: str) -> UUID | None:
    """A payment whose status allows ``action`` (None: ``create`` needs none)."""
    if action == "create":
        return None
    payment = services.create_payment(amount="100.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme")
    if action == "refund":
        services.settle_payment(payment_id=payment.id)
    return payment.id


@pytest.mark.parametrize("form", AMOUNT_FORMS)
def test_every_form_that_takes_an_amount_refuses_each_bad_amount_as_the_api_does(
        browser: Client, form: str) -> None:
    """Issue 16: the API's table of bad amounts (tests/amounts.py), on every form. The
    payment is in a status that allows the action, so the amount is the only thing wrong:
    the form comes back (400) with the domain's message next to the field, never a 500,
    and nothing is appended. Every row is tried; the failures are reported together."""
    store = get_event_store()
    wrong = []
    for amount, message in BAD_AMOUNTS:
        payment_id = ready_for(form)
        head = store.head_position()
        path = "/payments/new/" if payment_id is None else f"/payments/{payment_id}/{form}/"
        try:
            response = browser.post(path, {"amount": amount, "currency": "EUR"})
        except Exception as e:  # a 500: the test client raises what the view raised
            wrong.append(f"{amount!r}: raised {e!r}")
            continue
        errors = re.search(rf'id="{AMOUNT_FORMS[form]}">(.*?)</ul>', page_of(response))
        if response.status_code != 400 or not errors or message not in errors.group(1):
            wrong.append(f"{amount!r}: {response.status_code},"
                         f" amount's errors: {errors and errors.group(1)!r}")
        elif payment_id is not None and form not in forms_on(page_of(response)):
            wrong.append(f"{amount!r}: the refused form is not shown again")
        if store.head_position() != head:
            wrong.append(f"{amount!r}: appended an event")
    assert not wrong, f"{form} form, wrong answers to bad amounts:\n" + "\n".join(wrong)


@pytest.mark.django_db(transaction=True)
def test_page_loads_do_not_scan_the_store_for_the_lag(browser: Client, monkeypatch) -> None:
    """Issue 10: every load of /, /payments/ and /declines/ used to count the lag by
    reading up to 100,000 events. Now: one bounded count per interval and checkpoint."""
    for n in range(3):
        create(browser, f"{n + 1}.00")
    store = get_event_store()
    reads: list[int | None] = []
    read_all = store.read_all

    def counting_read_all(**kwargs):
        reads.append(kwargs.get("limit"))
        return read_all(**kwargs)

    monkeypatch.setattr(store, "read_all", counting_read_all)
    for _ in range(5):
        for path in ("/", "/payments/", "/declines/"):
            assert browser.get(path).status_code == 200
    assert len(reads) == 3  # once per set of projections a page asks: all, payment, decline
    assert set(reads) == {1001}  # never more than the page's cap (+1 to tell "more")
    # A runner that moves on shows at once (a new checkpoint, a new count).
    monkeypatch.undo()
    call_command("run_projection", "all", "--once")
    assert 'data-lag="0"' in page_of(browser.get("/payments/"))
