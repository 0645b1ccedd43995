"""The pages in a real browser: Debian's chromium driven by Selenium through
/usr/bin/chromedriver (given explicitly, so Selenium Manager never looks online).

As a user: log in, create a payment, authorize, settle part, settle the rest, refund;
create another and decline it; a bad amount shows its error beside the field; with the
projection runners following live, both payments are in the list and the decline in
the report. A screenshot of each page visited goes to $SCREENSHOT_DIR
(default var/screenshots). A missing chromium or chromedriver fails these tests.
"""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from rest_framework.authtoken.models import Token
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from payments.eventstore import get_event_store
from projections.projectors import PROJECTIONS
from projections.runner import ProjectionRunner

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ACTIONS = ("authorize", "settle", "refund", "decline")
USERNAME, PASSWORD = "clerk", "a long browser test password"
BANK = "Acme <b>Bank</b>"
WAIT = 15  # seconds any one page or read model may take

pytestmark = pytest.mark.timeout(300)


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("SCREENSHOT_DIR") or "var/screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"browser tests need Debian's chromium and chromium-driver: missing "
                    f"{', '.join(missing)} (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                     f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(argument)
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    browser.set_page_load_timeout(WAIT * 2)
    try:
        yield browser
    finally:
        browser.quit()


class User:
    """The browser as a user: open pages, fill forms, look at what is shown."""

    def __init__(self, driver: WebDriver, base_url: str, shots: Path, prefix: str) -> None:
        self.driver = driver
        self.base_url = base_url
        self.shots = shots
        self.prefix = prefix
        self.taken = 0

    def wait(self) -> WebDriverWait:
        return WebDriverWait(self.driver, WAIT, poll_frequency=0.1)

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def screenshot(self, name: str) -> Path:
        self.taken += 1
        path = self.shots / f"{self.prefix}-{self.taken:02d}-{name}.png"
        assert self.driver.save_screenshot(str(path)), path
        return path

    def find(self, selector: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def all(self, selector: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def page(self) -> str:
        return self.find("body").get_attribute("data-page")

    def fill(self, selector: str, value: str) -> None:
        field = self.find(selector)
        field.clear()
        field.send_keys(value)

    def submit(self, button: str) -> None:
        """Click a submit button and wait for the page it leads to.

        The old page is marked with a script variable that a new document does not
        have. (Waiting for the old ``<html>`` to go stale instead breaks on chromedriver
        156, which then answers "Node with given id does not belong to the document"
        as an unknown error.) While the page changes, a script call may fail the same
        way: the wait tries again until the new page is complete.
        """
        self.driver.execute_script("window.leftByTest = true")
        self.find(button).click()
        WebDriverWait(self.driver, WAIT, poll_frequency=0.1,
                      ignored_exceptions=(WebDriverException,)).until(
            lambda d: d.execute_script(
                "return window.leftByTest === undefined && document.readyState === 'complete'"
            ),
            message=f"no new page after clicking {button}",
        )

    def log_in(self, username: str, password: str) -> None:
        self.open("/")
        assert self.page() == "login"  # every page needs a login
        self.screenshot("login")
        self.fill("#id_username", username)
        self.fill("#id_password", password)
        self.submit("#login-button")
        assert self.page() == "overview"
        assert self.find("#logout-form").text.startswith(username)

    # --- a payment's page ---

    def status(self) -> str:
        return self.find("#payment-status").get_attribute("data-status")

    def timeline(self) -> list[str]:
        return [li.get_attribute("data-type") for li in self.all("#timeline li.event")]

    def action_forms(self) -> set[str]:
        return {a for a in ACTIONS if self.all(f"#form-{a}")}

    def payment_id(self) -> str:
        # After a form, the page's address carries its event's position (?after=).
        match = re.search(r"/payments/([0-9a-f-]{36})/(\?after=[0-9]+)?$",
                          self.driver.current_url)
        assert match, self.driver.current_url
        return match.group(1)

    def refresh_until(self, condition: Callable[[], bool]) -> None:
        """Reload the page until the condition holds (a read model catching up)."""

        def reloaded(driver: WebDriver) -> bool:
            driver.refresh()
            try:
                return condition()
            except (NoSuchElementException, StaleElementReferenceException):
                return False

        WebDriverWait(self.driver, WAIT, poll_frequency=0.25).until(reloaded)


@pytest.fixture
def user(driver: WebDriver, live_server, transactional_db, request) -> User:
    get_user_model().objects.create_user(USERNAME, password=PASSWORD)
    driver.delete_all_cookies()
    prefix = re.sub(r"[^\w.-]+", "-", request.node.name.removeprefix("test_")).strip("-")
    return User(driver, live_server.url, screenshot_dir(), prefix)


@pytest.fixture
def projection_runners(transactional_db) -> Iterator[list[ProjectionRunner]]:
    """Both projections followed live in background threads, as `run_projection all`."""
    store = get_event_store()
    stop = threading.Event()
    failures: list[BaseException] = []
    runners = [ProjectionRunner(projection(), store, stop=stop)
               for projection in PROJECTIONS.values()]

    def run(runner: ProjectionRunner) -> None:
        try:
            runner.run()
        except BaseException as e:  # reported by the test, not lost in the thread
            failures.append(e)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(r,), name=f"runner-{r.name}", daemon=True)
               for r in runners]
    try:
        for thread in threads:
            thread.start()
        yield runners
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    assert not [t.name for t in threads if t.is_alive()], "a runner did not stop"
    assert not failures, failures


def assert_bank_escaped(element: WebElement) -> None:
    """The bank name's markup is shown as text, never parsed into elements."""
    assert element.text == BANK
    assert not element.find_elements(By.CSS_SELECTOR, "*")


def test_a_payment_through_its_life_and_a_decline(user: User, projection_runners,
                                                 settings) -> None:
    settings.READ_YOUR_WRITES_TIMEOUT = WAIT  # the lists wait for the runners, up to this
    user.log_in(USERNAME, PASSWORD)
    user.screenshot("overview")

    # Create.
    user.find("#nav-new").click()
    user.wait().until(lambda d: user.page() == "payment-new")
    user.screenshot("new")
    user.fill("#id_amount", "100.00")
    user.submit("#create-button")
    assert user.page() == "payment-detail"
    paid = user.payment_id()
    assert user.status() == "pending"
    assert user.find("#payment-amount").text == "100.00 EUR"
    assert user.timeline() == ["PaymentCreated"]
    assert user.action_forms() == {"authorize", "decline"}
    assert "pending" in user.find("#messages").text
    user.screenshot("detail-pending")

    # Authorize, settle part, settle the rest, refund: one more event each time.
    steps = [
        ("authorize", {"#authorize-bank_name": BANK}, "authorized", "PaymentAuthorized",
         {"settle", "decline"}),
        ("settle", {"#settle-amount": "40.00"}, "partially_settled", "PaymentSettled",
         {"settle", "refund"}),
        ("settle", {}, "settled", "PaymentSettled", {"refund"}),
        ("refund", {}, "refunded", "PaymentRefunded", set()),
    ]
    for action, fields, status, event, allowed in steps:
        before = user.timeline()
        for selector, value in fields.items():
            user.fill(selector, value)
        user.submit(f"#{action}-button")
        assert user.payment_id() == paid
        assert user.status() == status
        assert user.find("#payment-status").text == status
        assert user.timeline() == [*before, event]
        assert user.action_forms() == allowed
        assert f"now {status.replace('_', ' ')}." in user.find("#messages").text
        assert not user.all("#payment-errors")
        user.screenshot(f"detail-{status}")
        if status == "partially_settled":
            assert user.find("#payment-settled").text == "40.00 EUR"
    assert user.find("#payment-settled").text == "100.00 EUR"
    assert user.find("#payment-refunded").text == "100.00 EUR"
    assert user.all("#no-actions")
    assert_bank_escaped(user.find("#payment-bank"))
    versions = [li.get_attribute("data-version") for li in user.all("#timeline li.event")]
    assert versions == sorted(versions, key=int)  # oldest first
    assert versions[-1] == user.find("#payment-version").text

    # Another payment, declined.
    user.open("/payments/new/")
    user.fill("#id_amount", "25.50")
    user.submit("#create-button")
    declined = user.payment_id()
    assert declined != paid
    assert user.action_forms() == {"authorize", "decline"}
    user.fill("#decline-bank_name", BANK)
    user.fill("#decline-decline_code", "05")
    user.submit("#decline-button")
    assert user.status() == "declined"
    assert user.timeline() == ["PaymentCreated", "PaymentDeclined"]
    assert user.action_forms() == set()
    assert user.all("#no-actions")
    assert user.find("#payment-decline-code").text == "05"
    assert_bank_escaped(user.find("#payment-bank"))
    user.screenshot("detail-declined")

    # The read models, kept by the runners in the background. The nav's links carry the
    # last command's position (?after=): the list waits for it, and shows it at once...
    user.find("#nav-payments").click()

    def row(payment_id: str) -> str:
        return f'#payments tr.payment-row[data-payment-id="{payment_id}"]'

    assert user.page() == "payment-list"
    assert re.search(r"/payments/\?after=[0-9]+$", user.driver.current_url)
    assert not user.all("#stale-notice")
    assert "refunded" in user.find(row(paid)).text
    assert "declined" in user.find(row(declined)).text
    assert len(user.all("#payments tr.payment-row")) == 2
    for payment_id in (paid, declined):
        assert_bank_escaped(user.find(f"{row(payment_id)} td.bank"))
    assert "05" in user.find(row(declined)).text
    user.screenshot("list")

    # ...the decline report...
    user.find("#nav-declines").click()
    assert user.page() == "declines"
    assert not user.all("#stale-notice")
    [decline] = user.all("#declines tr.decline-row")
    assert decline.find_element(By.CSS_SELECTOR, "td:nth-child(2)").text == "05"
    assert decline.find_element(By.CSS_SELECTOR, "td.num").text == "1"
    assert_bank_escaped(decline.find_element(By.CSS_SELECTOR, "td.bank"))
    assert user.find('#declines-by-code tr[data-code="05"]').text.split() == ["05", "1"]
    assert user.all('#declines-chart rect.bar[data-code="05"]')
    user.screenshot("declines")

    # ...and the overview, caught up.
    user.find("#nav-overview").click()
    user.refresh_until(lambda: user.find("#status-total").text == "2"
                       and all(td.text == "0" for td in user.all("#projection-lag td.lag")))
    assert user.find('#status-counts tr[data-status="refunded"] td.count').text == "1"
    assert user.find('#status-counts tr[data-status="declined"] td.count').text == "1"
    assert len(user.all("#latest-payments tr.payment-row")) == 2
    user.screenshot("overview-caught-up")


@pytest.mark.parametrize("amount", ["abc", "0.001"])
def test_a_bad_amount_shows_its_error_beside_the_field(user: User, amount: str) -> None:
    user.log_in(USERNAME, PASSWORD)
    user.find("#nav-new").click()
    user.wait().until(lambda d: user.page() == "payment-new")
    user.fill("#id_amount", amount)
    user.submit("#create-button")
    assert user.page() == "payment-new"  # still the form, no payment made
    error = user.find("#id_amount_error")
    assert error.text.strip()
    # Beside its field: inside the amount's .field, named by its aria-describedby.
    field = user.find("#id_amount")
    assert field.find_element(By.XPATH, "..").get_attribute("class") == "field has-error"
    assert "id_amount_error" in (field.get_attribute("aria-describedby") or "")
    assert field.get_attribute("value") == amount
    assert not user.all("#messages")
    user.screenshot(f"new-error-{amount}")


def test_a_command_through_the_api_appears_on_the_open_list_without_a_reload(
        user: User, projection_runners, live_server) -> None:
    """static/js/live.js: the list swaps its rows in as the projection applies them."""
    user.log_in(USERNAME, PASSWORD)
    user.open("/payments/")
    assert user.page() == "payment-list"
    assert not user.all("tr.payment-row")
    user.driver.execute_script("window.openedByTest = true")  # a reload would lose it
    token = Token.objects.create(user=get_user_model().objects.get(username=USERNAME))
    request = urllib.request.Request(
        f"{live_server.url}/api/payments/", data=json.dumps({"amount": "42.00"}).encode(),
        headers={"Authorization": f"Token {token.key}", "Content-Type": "application/json"},
        method="POST")
    with urllib.request.urlopen(request, timeout=WAIT) as answer:
        created = json.load(answer)
    row = f'tr.payment-row[data-payment-id="{created["id"]}"]'
    user.wait().until(lambda d: user.all(row), message="the new payment never appeared")
    assert user.driver.execute_script("return window.openedByTest === true")
    assert "42.00 EUR" in user.find(row).text
    user.screenshot("list-updated-live")


def test_an_event_on_the_timeline_shows_the_payment_as_it_was_then(user: User) -> None:
    """Click an event: the state right after it, under a banner, no forms and no polling;
    "Back to now" returns to the current state."""
    from payments import services

    payment = services.create_payment(amount="30.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    services.settle_payment(payment_id=payment.id)
    user.log_in(USERNAME, PASSWORD)
    user.open(f"/payments/{payment.id}/")
    assert user.status() == "settled"
    assert not user.all("#as-of")
    user.submit('#timeline li.event[data-version="1"] a.event-type')  # a link: a click, a page
    assert user.driver.current_url.endswith(f"/payments/{payment.id}/?as_of_version=1")
    banner = user.find("#as-of")
    assert "as it was after event 1 (PaymentAuthorized" in banner.text
    assert "not the current state: the payment is now at version 2" in banner.text
    assert user.status() == "authorized"
    assert user.timeline() == ["PaymentCreated", "PaymentAuthorized"]
    assert user.action_forms() == set()
    assert user.all("#past-no-actions")
    assert user.find("body").get_attribute("data-live-version") is None  # not polled
    user.screenshot("detail-as-of-version-1")
    user.submit("#as-of-now")
    assert user.payment_id() == str(payment.id)
    assert not user.all("#as-of")
    assert user.status() == "settled"
    assert user.action_forms() == {"refund"}


# --- every page at a phone's width and a laptop's (issue 14) ----------------------------

WIDTHS = {"phone": 390, "laptop": 1280}
LONG_BANK = "The Very Long Name of a Cooperative Savings Bank of the Northern Provinces and Isles"


def fits(driver: WebDriver) -> bool:
    """Nothing makes the page itself scroll sideways (a table may scroll in its card)."""
    return driver.execute_script(
        "return document.documentElement.scrollWidth <= window.innerWidth")


def some_history() -> dict[str, str]:
    """Payments in several states, long bank names among them, applied to the read models."""
    from django.core.management import call_command

    from payments import services

    made = {}
    for n in range(12):
        payment = services.create_payment(amount=f"{1000 + n}.50", currency="EUR")
        services.authorize_payment(payment_id=payment.id, bank_name=LONG_BANK if n % 2 else "Acme")
        if n % 3 == 0:
            services.decline_payment(payment_id=payment.id, bank_name=LONG_BANK, decline_code="05")
        else:
            services.settle_payment(payment_id=payment.id, amount="500.00")
        made.setdefault("payment", str(payment.id))
    call_command("run_projection", "all", "--once")
    return made


@pytest.mark.parametrize("width", list(WIDTHS))
def test_every_page_fits_the_screen(user: User, width: str) -> None:
    made = some_history()
    admin_user = get_user_model().objects.get(username=USERNAME)
    admin_user.is_staff = admin_user.is_superuser = True
    admin_user.save()
    user.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": WIDTHS[width], "height": 900, "deviceScaleFactor": 1,
        "mobile": width == "phone"})
    try:
        user.open("/")
        assert fits(user.driver), "login"
        user.screenshot(f"{width}-login")
        user.log_in(USERNAME, PASSWORD)
        pages = {
            "overview": "/", "payments": "/payments/", "new": "/payments/new/",
            "payment": f"/payments/{made['payment']}/",
            "payment-as-of": f"/payments/{made['payment']}/?as_of_version=1",
            "declines": "/declines/",
            "token": "/accounts/token/",
            "admin-payments": "/admin/projections/paymentview/",
            "admin-payment": f"/admin/projections/paymentview/{made['payment']}/change/",
        }
        crowded = []
        for name, path in pages.items():
            user.open(path)
            user.screenshot(f"{width}-{name}")
            if not fits(user.driver) and not (name.startswith("admin") and width == "phone"):
                crowded.append(name)
        user.open("/accounts/token/")
        user.submit("#create-token-button")
        assert re.fullmatch(r"[0-9a-f]{40}", user.find("#api-token").get_attribute("value"))
        user.screenshot(f"{width}-token-made")
        if not fits(user.driver):
            crowded.append("token-made")
        assert crowded == [], f"wider than {WIDTHS[width]} px: {crowded}"
        if width == "laptop":
            user.open("/admin/projections/paymentview/")
            assert user.driver.execute_script(  # the list itself, not only the page
                "var r = document.querySelector('#changelist .results');"
                " return r.scrollWidth <= r.clientWidth")
            short = user.find("#result_list tbody tr th .short-id")
            assert re.fullmatch(r"[0-9a-f]{8}…", short.text)  # a short id…
            assert short.get_attribute("title").startswith(short.text[:8])  # …whole on hover
            assert len(short.get_attribute("title")) == 36
            heights = {r.size["height"] for r in user.all("#result_list tbody tr")}
            assert max(heights) < 40, heights  # one line a row
    finally:
        user.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
