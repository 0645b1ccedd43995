"""Read your writes (issue 13): every command answers its event's position, and a list
given it (``?after=``) waits until its projection has applied that event, or answers
marked stale once READ_YOUR_WRITES_TIMEOUT has passed; never an error.

The runners here are real ones in a thread, held back by an Event inside the
projection's ``apply`` (before it commits); the read's own pause lets them go, so the
read is known to have found its projection behind and to have waited for it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import pytest
from django.core.management import call_command
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from payments import services
from payments.domain import InvalidInput, Payment
from payments.eventstore import get_event_store
from payments.services import find_payment_as_of
from paymentsite.live import HEADER as LIVE_HEADER
from projections import read_your_writes
from projections.projectors import DeclineProjection, PaymentProjection, Projection
from projections.read_your_writes import MAX_POSITION, parse_after
from tests.test_runner import following

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


def last_position(payment_id: UUID) -> int:
    """Where the payment's newest event is in the store."""
    return get_event_store().read_stream(f"payments-{payment_id}")[-1].position


def declined() -> Payment:
    """A payment created and declined (code N7): its answer carries the decline's position."""
    payment = services.create_payment(amount="12.00")
    return services.decline_payment(payment_id=payment.id, bank_name="Ryw Bank",
                                    decline_code="N7")


# What each list shows once its projection has the declined payment.
def shows_payment_in_json(body: bytes, payment: Payment) -> bool:
    return str(payment.id) in [row["id"] for row in json.loads(body)["results"]]


def shows_decline_in_json(body: bytes, payment: Payment) -> bool:
    return any(row["decline_code"] == "N7" for row in json.loads(body)["results"])


def shows_payment_row(body: bytes, payment: Payment) -> bool:
    return f'data-payment-id="{payment.id}"' in body.decode()


def shows_decline_row(body: bytes, payment: Payment) -> bool:
    return re.search(r'<tr class="decline-row">.*?<td>N7</td>', body.decode()) is not None


LISTS: list[tuple[str, type[Projection], Callable[[bytes, Payment], bool]]] = [
    ("/api/payments/", PaymentProjection, shows_payment_in_json),
    ("/api/declines/", DeclineProjection, shows_decline_in_json),
    ("/payments/", PaymentProjection, shows_payment_row),
    ("/declines/", DeclineProjection, shows_decline_row),
    ("/", PaymentProjection, shows_payment_row),
]
PAGES = ["/payments/", "/declines/", "/"]


@contextmanager
def held_back(projection_class: type[Projection]) -> Iterator[threading.Event]:
    """A runner of the projection in a thread that applies nothing until the Event is set."""
    release = threading.Event()

    class HeldBack(projection_class):  # type: ignore[valid-type,misc]
        def apply(self, batch: Any) -> None:
            assert release.wait(30), "the test never let the runner go"
            super().apply(batch)

    with following(HeldBack()):
        try:
            yield release
        finally:
            release.set()


def pauses(monkeypatch: pytest.MonkeyPatch, *, then: Callable[[], None] | None = None,
           allowed: bool = True) -> list[float]:
    """Record the read's pauses; ``then`` runs at each one; not ``allowed``: a pause fails."""
    seen: list[float] = []
    pause = read_your_writes._pause

    def recording(seconds: float) -> None:
        assert allowed, "the read waited, and should not have"
        seen.append(seconds)
        if then is not None:
            then()
        pause(seconds)

    monkeypatch.setattr(read_your_writes, "_pause", recording)
    return seen


# --- every command answers its event's position -------------------------------------------


def test_every_command_and_find_answers_its_events_position() -> None:
    created = services.create_payment(amount="50.00")
    assert created.position == last_position(created.id) > 0
    authorized = services.authorize_payment(payment_id=created.id, bank_name="B",
                                            idempotency_key="ryw-authorize")
    assert authorized.position == last_position(created.id) > created.position
    settled = services.settle_payment(payment_id=created.id, amount="20.00")
    refunded = services.refund_payment(payment_id=created.id, amount="5.00")
    assert created.position < authorized.position < settled.position < refunded.position
    assert refunded.position == last_position(created.id)
    # A replay answers the original event's position, though others followed it.
    again = services.authorize_payment(payment_id=created.id, bank_name="B",
                                       idempotency_key="ryw-authorize")
    assert (again.version, again.position) == (authorized.version, authorized.position)
    # Reads from the stream say the position of the last event folded.
    assert services.find_payment(payment_id=created.id).payment.position == refunded.position
    past = find_payment_as_of(payment_id=created.id, version=1).payment
    assert (past.version, past.position) == (1, authorized.position)
    assert declined().position == get_event_store().head_position()


def test_the_api_answers_the_position_in_the_body_and_a_header(browser: Client) -> None:
    created = browser.post("/api/payments/", {"amount": "30.00"},
                           content_type="application/json")
    assert created.status_code == 201
    body = created.json()
    assert body["position"] == int(created["X-Event-Position"]) == last_position(body["id"])
    key = {"HTTP_IDEMPOTENCY_KEY": "ryw-1"}
    authorized = browser.post(f"/api/payments/{body['id']}/authorize/", {"bank_name": "B"},
                              content_type="application/json", **key)
    position = last_position(body["id"])
    assert authorized.json()["position"] == int(authorized["X-Event-Position"]) == position
    browser.post(f"/api/payments/{body['id']}/settle/", {}, content_type="application/json")
    replayed = browser.post(f"/api/payments/{body['id']}/authorize/", {"bank_name": "B"},
                            content_type="application/json", **key)
    assert replayed["Idempotent-Replayed"] == "true"
    assert replayed.json()["position"] == int(replayed["X-Event-Position"]) == position
    detail = browser.get(f"/api/payments/{body['id']}/").json()
    assert detail["position"] == detail["events"][-1]["position"] == last_position(body["id"])
    past = browser.get(f"/api/payments/{body['id']}/?as_of_version=0").json()
    assert past["position"] == past["events"][-1]["position"] == body["position"]


def test_the_cli_prints_the_position(tmp_path: Path) -> None:
    out = StringIO()
    call_command("api", "-a", "create", "-v", "10.00", "--json", stdout=out)
    created = json.loads(out.getvalue())
    assert created["position"] == last_position(created["id"])
    out = StringIO()
    call_command("api", "-a", "authorize", "-i", created["id"], "-b", "Bank", stdout=out)
    assert f"position: {last_position(created['id'])}" in out.getvalue().splitlines()
    out = StringIO()
    call_command("api", "-a", "settle", "-i", created["id"], "--json", stdout=out)
    assert json.loads(out.getvalue())["position"] == last_position(created["id"])


# --- a list with ?after= waits for its projection -------------------------------------------


@pytest.mark.parametrize(("path", "projection", "shows"), LISTS)
def test_a_read_after_a_command_shows_it_while_the_runner_lags(
        browser: Client, settings: Any, monkeypatch: pytest.MonkeyPatch, path: str,
        projection: type[Projection], shows: Callable[[bytes, Payment], bool]) -> None:
    settings.READ_YOUR_WRITES_TIMEOUT = 30  # far more than the runner needs once let go
    with held_back(projection) as release:
        payment = declined()
        plain = browser.get(path)
        assert plain.status_code == 200
        assert not shows(plain.content, payment)  # the runner has applied nothing yet
        assert "X-Read-Model-Stale" not in plain
        seen = pauses(monkeypatch, then=release.set)
        fresh = browser.get(f"{path}?after={payment.position}")
    assert seen  # it found the projection behind, and waited
    assert fresh.status_code == 200
    assert shows(fresh.content, payment)
    assert fresh["X-Read-Model-Stale"] == "false"
    assert int(fresh["X-Read-Model-Position"]) >= payment.position
    assert b'id="stale-notice"' not in fresh.content


@pytest.mark.parametrize(("path", "projection", "shows"), LISTS)
def test_with_no_runner_the_read_answers_within_the_bound_marked_stale(
        browser: Client, settings: Any, monkeypatch: pytest.MonkeyPatch, path: str,
        projection: type[Projection], shows: Callable[[bytes, Payment], bool]) -> None:
    settings.READ_YOUR_WRITES_TIMEOUT = 0.05
    payment = declined()
    seen = pauses(monkeypatch)
    stale = browser.get(f"{path}?after={payment.position}")
    assert seen  # it waited, then gave up
    assert stale.status_code == 200
    assert not shows(stale.content, payment)
    assert stale["X-Read-Model-Stale"] == "true"
    assert stale["X-Read-Model-Position"] == "0"
    if not path.startswith("/api/"):
        notice = re.search(r'<p id="stale-notice"[^>]*data-after="(\d+)" data-position="(\d+)"',
                           stale.content.decode())
        assert notice is not None
        assert notice.groups() == (str(payment.position), "0")


@pytest.mark.parametrize(("path", "projection", "shows"), LISTS)
def test_a_read_after_an_applied_event_does_not_wait(
        browser: Client, monkeypatch: pytest.MonkeyPatch, path: str,
        projection: type[Projection], shows: Callable[[bytes, Payment], bool]) -> None:
    payment = declined()
    call_command("run_projection", "all", "--once", stdout=StringIO())
    pauses(monkeypatch, allowed=False)
    for after in (payment.position, 0):
        response = browser.get(f"{path}?after={after}")
        assert response.status_code == 200
        assert shows(response.content, payment)
        assert response["X-Read-Model-Stale"] == "false"
        assert response["X-Read-Model-Position"] == str(get_event_store().head_position())


@pytest.mark.parametrize("path", PAGES)
def test_a_live_poll_of_a_page_with_after_only_looks(
        browser: Client, settings: Any, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """live.js asks the page's own address, ?after= and all, every second: it must not
    wait each time while the projection is behind."""
    settings.READ_YOUR_WRITES_TIMEOUT = 30
    payment = declined()
    pauses(monkeypatch, allowed=False)
    polled = browser.get(f"{path}?after={payment.position}",
                         headers={LIVE_HEADER: "a version this page no longer has"})
    assert polled.status_code == 200
    assert polled["X-Read-Model-Stale"] == "true"
    assert b'id="stale-notice"' in polled.content


# --- bad positions -------------------------------------------------------------------------

BAD_AFTER = ["abc", "-1", "1.5", "1e3", " ", "+3", "0x10", "\u0663",
             "9223372036854775808", "1" * 40]


def test_a_bad_after_is_a_400_on_the_api(browser: Client) -> None:
    for after in BAD_AFTER:
        for path in ("/api/payments/", "/api/declines/"):
            response = browser.get(path, {"after": after})
            assert response.status_code == 400, after
            assert list(response.json()) == ["after"]
            assert "must be a whole number from 0" in response.json()["after"][0]


@pytest.mark.parametrize("path", PAGES)
def test_a_bad_after_is_the_sites_400_page(browser: Client, path: str) -> None:
    response = browser.get(path, {"after": "soon", "status": "pending"})
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="bad-request"' in html
    assert "after: must be a whole number from 0" in html
    back = re.search(r'<a href="([^"]+)">Back</a>', html).group(1)
    assert "after" not in back


def test_a_position_beyond_the_stores_head_is_refused_not_waited_for(
        browser: Client, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.READ_YOUR_WRITES_TIMEOUT = 30
    payment = declined()
    pauses(monkeypatch, allowed=False)
    beyond = payment.position + 1
    response = browser.get("/api/payments/", {"after": beyond})
    assert response.status_code == 400
    assert response.json()["after"] == [
        f"{beyond} is beyond the event store's last position, {payment.position}: no command"
        " answered it here"]
    assert browser.get("/payments/", {"after": beyond}).status_code == 400
    assert browser.get("/api/payments/").status_code == 200  # without it: the list


def test_an_empty_after_is_no_after(browser: Client) -> None:
    response = browser.get("/api/payments/", {"after": ""})
    assert response.status_code == 200
    assert "X-Read-Model-Stale" not in response


@given(st.integers(min_value=0, max_value=MAX_POSITION))
def test_every_position_parses_to_itself(position: int) -> None:
    assert parse_after(str(position)) == parse_after(position) == position


@given(st.text(max_size=30))
def test_only_plain_whole_numbers_are_positions(text: str) -> None:
    plain = re.fullmatch(r"[0-9]{1,19}", text.strip(), re.ASCII)
    if text == "":
        assert parse_after(text) is None
    elif plain and int(text) <= MAX_POSITION:
        assert parse_after(text) == int(text)
    else:
        with pytest.raises(InvalidInput) as refused:
            parse_after(text)
        assert refused.value.field == "after"


# --- the HTML flow -------------------------------------------------------------------------


def nav_link(html: str, name: str) -> str:
    return re.search(rf'<a id="nav-{name}" href="([^"]+)">', html).group(1)


def form_key(html: str, action: str) -> dict[str, str]:
    form = re.search(rf'<form[^>]*action="[^"]*/{action}/".*?</form>', html, re.S).group(0)
    return dict(re.findall(r'name="(idempotency_key|expected_version)" value="([^"]*)"', form))


def test_after_a_form_the_lists_the_user_goes_to_show_the_change(
        browser: Client, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.READ_YOUR_WRITES_TIMEOUT = 30
    with held_back(PaymentProjection) as release:
        created = browser.post("/payments/new/", {"amount": "64.00", "currency": "EUR"})
        assert created.status_code == 302
        location = urlsplit(created["Location"])
        payment_id = UUID(location.path.strip("/").split("/")[-1])
        assert location.query == f"after={last_position(payment_id)}"
        page = browser.get(created["Location"]).content.decode()
        for name in ("overview", "payments", "declines"):
            assert nav_link(page, name).endswith(f"?{location.query}")
        assert nav_link(page, "new") == "/payments/new/"
        seen = pauses(monkeypatch, then=release.set)
        listed = browser.get(nav_link(page, "payments")).content.decode()
        assert seen
        assert re.search(rf'data-payment-id="{payment_id}"', listed)
        assert 'id="stale-notice"' not in listed
        assert nav_link(listed, "overview").endswith(f"?{location.query}")  # carried on

    # An action on the payment's page: its redirect carries the new event's position.
    with held_back(PaymentProjection) as release:
        acted = browser.post(f"/payments/{payment_id}/authorize/",
                             {"bank_name": "Form Bank", **form_key(page, "authorize")})
        assert acted.status_code == 302
        assert urlsplit(acted["Location"]).query == f"after={last_position(payment_id)}"
        page = browser.get(acted["Location"]).content.decode()
        pauses(monkeypatch, then=release.set)
        listed = browser.get(nav_link(page, "payments")).content.decode()
        row = re.search(rf'data-payment-id="{payment_id}".*?</tr>', listed, re.S).group(0)
        assert "authorized" in row


def test_a_bad_after_on_another_page_is_not_carried_on(browser: Client) -> None:
    payment = services.create_payment(amount="3.00")
    page = browser.get(f"/payments/{payment.id}/", {"after": "later"})
    assert page.status_code == 200  # the payment's page reads its stream, not a projection
    assert nav_link(page.content.decode(), "payments") == "/payments/"


# --- the setting ---------------------------------------------------------------------------


def timeout_in_a_process(**env: str) -> subprocess.CompletedProcess[str]:
    code = ("import django; django.setup(); from django.conf import settings; "
            "print(settings.READ_YOUR_WRITES_TIMEOUT)")
    clean = {k: v for k, v in os.environ.items() if k != "READ_YOUR_WRITES_TIMEOUT"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**clean, "DJANGO_SETTINGS_MODULE": "paymentsite.settings", "DEBUG": "true", **env},
    )


def test_the_bound_comes_from_the_environment() -> None:
    assert timeout_in_a_process().stdout.strip() == "2.0"
    assert timeout_in_a_process(READ_YOUR_WRITES_TIMEOUT="0.5").stdout.strip() == "0.5"
    wrong = timeout_in_a_process(READ_YOUR_WRITES_TIMEOUT="-1")
    assert wrong.returncode != 0
    assert "READ_YOUR_WRITES_TIMEOUT must be from 0 to 30 s" in wrong.stderr
