"""Metrics (paymentsite/metrics.py): what a scrape of /metrics and of a runner's port shows
after commands, store calls, batches and failures; who may scrape; the alert rules.

Metrics are process-wide and only grow, so each test compares a scrape after what it did
with one before. Every worker of gunicorn adding up: tests/test_deploy.py.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from django.core.management import CommandError, call_command
from django.test import Client
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from payments import services
from payments.domain import Payment
from payments.events import stream_name
from payments.eventstore import (
    EventStoreUnavailable,
    NewEvent,
    StreamState,
    WrongExpectedVersion,
    get_event_store,
)
from payments.eventstore.embedded import EmbeddedEventStore
from payments.eventstore.esdb import EventStoreDBEventStore
from payments.eventstore.instrumented import InstrumentedEventStore
from paymentsite import metrics
from projections.management.commands.projection_status import projection_readings
from projections.projectors import PaymentProjection
from projections.runner import Progress, ProjectionRunner
from tests.esdb_double import EventStoreDBDouble

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "a-scrapers-token-for-the-tests"
BEARER = {"Authorization": f"Bearer {TOKEN}"}

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _a_scrapers_token(settings) -> None:
    """As production: DEBUG off (pytest-django's default), a token for the scraper."""
    settings.METRICS_ENABLED = True
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_IPS = []


def scrape(**headers: str) -> str:
    response = Client().get("/metrics", headers=headers or BEARER)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with (at least) ``labels`` in a scrape; 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def grew(before: str, after: str, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# --- commands, HTTP and the store, from one API command ---------------------------------


def test_an_api_command_shows_as_a_command_an_http_response_and_a_store_append() -> None:
    from django.contrib.auth import get_user_model

    api = APIClient()
    api.force_authenticate(get_user_model().objects.create_user("scraped"))
    before = scrape()
    created = api.post("/api/payments/", {"amount": "10.00"}, format="json")
    assert created.status_code == 201
    refused = api.post(f"/api/payments/{created.json()['id']}/settle/", {}, format="json")
    assert refused.status_code == 409  # a pending payment cannot be settled
    after = scrape()

    assert grew(before, after, "payments_commands_total", action="create", outcome="ok") == 1
    assert grew(before, after, "payments_command_duration_seconds_count",
                action="create", outcome="ok") == 1
    assert grew(before, after, "payments_command_duration_seconds_sum",
                action="create", outcome="ok") > 0
    assert grew(before, after, "payments_commands_total", action="settle", outcome="refused") == 1
    assert grew(before, after, "django_http_responses_total_by_status_view_method_total",
                view="api:payments", status="201", method="POST") == 1
    assert grew(before, after, "django_http_responses_total_by_status_view_method_total",
                view="api:payment-settle", status="409", method="POST") == 1
    assert grew(before, after, "django_http_requests_latency_seconds_by_view_method_count",
                view="api:payments", method="POST") == 1
    # The create appended; the refused settle decided on the state it held, and did not.
    assert grew(before, after, "payments_eventstore_operation_duration_seconds_count",
                adapter="embedded", operation="append") == 1


def test_an_outage_counts_as_503_by_view_for_the_api_and_the_pages(settings, tmp_path) -> None:
    """What the 5xx alert reads: the answer the site gives when the store is down."""
    from django.contrib.auth import get_user_model

    from payments.eventstore import reset_event_store

    user = get_user_model().objects.create_user("scraped")
    api, browser = APIClient(), Client()
    api.force_authenticate(user)
    browser.force_login(user)
    reset_event_store()
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be")
    settings.EVENTSTORE_URI = f"sqlite:///{blocked / 'events.sqlite3'}"
    before = scrape()
    assert api.post("/api/payments/", {"amount": "1.00"}, format="json").status_code == 503
    assert browser.get(f"/payments/{uuid4()}/").status_code == 503
    after = scrape()
    name = "django_http_responses_total_by_status_view_method_total"
    assert grew(before, after, name, view="api:payments", status="503", method="POST") == 1
    assert grew(before, after, name, view="payments:detail", status="503", method="GET") == 1
    # The page's view raised (the API's answered its own 503): counted, and timed once.
    assert grew(before, after, "django_http_exceptions_total_by_view_total",
                view="payments:detail") == 1
    assert grew(before, after, "django_http_exceptions_total_by_view_total",
                view="api:payments") == 0
    assert grew(before, after, "django_http_requests_latency_seconds_by_view_method_count",
                view="payments:detail", method="GET") == 1
    assert grew(before, after, "payments_commands_total", action="create",
                outcome="unavailable") == 1
    # The projections as the database has them; no head and no lag rather than wrong ones.
    assert 'payments_projection_checkpoint_position{projection="payment"} 0.0' in after
    assert 'payments_projection_failed{projection="payment"} 0.0' in after
    assert "payments_projection_head_position{" not in after
    assert "payments_projection_lag_seconds{" not in after


def test_a_made_up_method_is_one_series_whatever_it_is() -> None:
    before = scrape()
    for method in ("BREW", "PROPFIND", "X" * 40):
        assert Client().generic(method, "/healthz").status_code == 405
    after = scrape()
    assert grew(before, after, "django_http_responses_total_by_status_view_method_total",
                view="healthz", status="405", method="<invalid method>") == 3
    assert grew(before, after, "django_http_requests_latency_seconds_by_view_method_count",
                view="healthz", method="<invalid method>") == 3
    assert "BREW" not in after


def test_projections_that_cannot_be_read_leave_the_rest_of_the_scrape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> list[metrics.ProjectionReading]:
        raise RuntimeError("the database went away")

    assert list(metrics.ProjectionCollector(broken).collect()) == []
    assert "could not read the projections: the database went away" in caplog.text


def unavailable_store(tmp_path: Path) -> EmbeddedEventStore:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the store's folder should be")
    return EmbeddedEventStore(blocked / "events.sqlite3", timeout=0.5)


def create_twice_with_one_key(_: Path) -> None:
    key = str(uuid4())
    services.create_payment(amount="1.00", idempotency_key=key)
    services.create_payment(amount="1.00", idempotency_key=key)


# Each outcome: the action, how to get it, and the error the service raises for it.
OUTCOMES: dict[str, tuple[str, Callable[[Path], object], type[Exception] | None]] = {
    "ok": ("create", lambda _: services.create_payment(amount="1.00"), None),
    "replayed": ("create", create_twice_with_one_key, None),
    "refused": ("create", lambda _: services.create_payment(amount="-1.00"),
                services.PaymentError),
    "conflict": ("authorize", lambda _: services.authorize_payment(
        payment_id=services.create_payment(amount="1.00").id, bank_name="Bank",
        expected_version=7), services.ConcurrencyConflict),
    "unavailable": ("create", lambda tmp_path: services.create_payment(
        amount="1.00", store=unavailable_store(tmp_path)), EventStoreUnavailable),
}


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_each_outcome_of_a_command_is_counted_and_timed(outcome: str, tmp_path: Path) -> None:
    action, command, raises = OUTCOMES[outcome]
    before = scrape()
    if raises is None:
        command(tmp_path)
    else:
        with pytest.raises(raises):
            command(tmp_path)
    after = scrape()
    assert grew(before, after, "payments_commands_total", action=action, outcome=outcome) == 1
    assert grew(before, after, "payments_command_duration_seconds_count",
                action=action, outcome=outcome) == 1


def ours() -> list[str]:
    """This process's samples of our own metrics (the process's CPU time and such move)."""
    return [line for line in generate_latest(REGISTRY).decode().splitlines()
            if line.startswith("payments_")]


def test_with_metrics_off_nothing_is_recorded_and_there_is_no_page(settings) -> None:
    from payments.eventstore import reset_event_store

    settings.METRICS_ENABLED = False
    reset_event_store()  # the next one is opened as the setting says
    before = ours()
    services.create_payment(amount="1.00")
    assert not isinstance(get_event_store(), InstrumentedEventStore)
    assert ours() == before
    assert Client().get("/metrics", headers=BEARER).status_code == 404


# --- who may scrape -----------------------------------------------------------------------


def refused(response: object) -> bool:
    """The site's 404, and nothing of the metrics in it."""
    return response.status_code == 404 and b"payments_" not in response.content  # type: ignore[attr-defined]


@pytest.mark.parametrize("authorization", [
    None, "", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Token {TOKEN}", TOKEN, "Bearer",
])
def test_a_scrape_without_the_token_is_refused_as_a_page_that_is_not_there(
    authorization: str | None,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = Client().get("/metrics", headers=headers)
    assert refused(response)
    assert response.content == Client().get("/no-such-page").content.replace(
        b"/no-such-page", b"/metrics")


@pytest.mark.parametrize("authorization", [f"Bearer {TOKEN}", f"bearer {TOKEN}",
                                           f"Bearer  {TOKEN} "])
def test_the_token_as_a_bearer_token_lets_a_scrape_in(authorization: str) -> None:
    assert Client().get("/metrics", headers={"Authorization": authorization}).status_code == 200


@pytest.mark.parametrize(("allowed", "peer", "lets_in"), [
    (["10.0.0.0/8"], "10.1.2.3", True),
    (["10.0.0.0/8"], "::ffff:10.1.2.3", True),  # an IPv4 peer of a server on [::]
    (["192.0.2.7", "2001:db8::/32"], "2001:db8::1", True),
    (["10.0.0.0/8"], "192.0.2.7", False),
    (["192.0.2.7"], "192.0.2.8", False),
    (["10.0.0.0/8"], "not an address", False),
])
def test_an_allowed_address_scrapes_without_the_token(
    settings, allowed: list[str], peer: str, lets_in: bool,
) -> None:
    settings.METRICS_ALLOWED_IPS = allowed
    response = Client(REMOTE_ADDR=peer).get("/metrics")
    assert response.status_code == 200 if lets_in else refused(response)


@pytest.mark.parametrize(("debug", "status"), [(True, 200), (False, 404)])
def test_with_neither_token_nor_addresses_only_debug_is_open(settings, debug: bool,
                                                             status: int) -> None:
    settings.METRICS_TOKEN = ""
    settings.DEBUG = debug
    assert Client().get("/metrics").status_code == status


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("METRICS_TOKEN", "short", "METRICS_TOKEN must be at least 16 characters"),
    ("METRICS_ALLOWED_IPS", "10.0.0.0/8,10.0.0.300", "'10.0.0.300' is not an address"),
])
def test_a_bad_metrics_setting_stops_the_start(variable: str, value: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import paymentsite.settings"], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "SECRET_KEY": "tests-only", "DEBUG": "true",
             variable: value},
    )
    assert done.returncode != 0
    assert message in done.stderr


# --- the event store, by adapter ----------------------------------------------------------


def test_eventstoredb_calls_are_timed_and_their_errors_counted_as_esdb() -> None:
    with EventStoreDBDouble() as double:
        store = InstrumentedEventStore(EventStoreDBEventStore(double.uri, timeout=2.0), "esdb")
        try:
            before = scrape()
            stream = f"metrics-{uuid4()}"
            store.append(stream, [NewEvent("Happened", b"{}")], StreamState.NO_STREAM)
            with pytest.raises(WrongExpectedVersion):
                store.append(stream, [NewEvent("Happened", b"{}")], StreamState.NO_STREAM)
            assert len(store.read_stream(stream)) == 1
            after = scrape()
        finally:
            store.close()
    for operation, calls in (("append", 2), ("read_stream", 1)):
        assert grew(before, after, "payments_eventstore_operation_duration_seconds_count",
                    adapter="esdb", operation=operation) == calls
    assert grew(before, after, "payments_eventstore_errors_total", adapter="esdb",
                operation="append", error="WrongExpectedVersion") == 1
    assert grew(before, after, "payments_eventstore_events_read_total", adapter="esdb",
                operation="read_stream") == 1
    assert grew(before, after, "payments_eventstore_operation_duration_seconds_count",
                adapter="embedded", operation="append") == 0


def test_a_store_that_is_down_counts_as_unavailable(tmp_path: Path) -> None:
    store = InstrumentedEventStore(unavailable_store(tmp_path), "embedded")
    # Read here, not scraped: a scrape asks the process's store for its head itself.
    errors = {"adapter": "embedded", "operation": "head_position",
              "error": "EventStoreUnavailable"}
    calls = {"adapter": "embedded", "operation": "head_position"}
    before = [REGISTRY.get_sample_value("payments_eventstore_errors_total", errors) or 0,
              REGISTRY.get_sample_value("payments_eventstore_operation_duration_seconds_count",
                                        calls)]
    with pytest.raises(EventStoreUnavailable):
        store.head_position()
    after = [REGISTRY.get_sample_value("payments_eventstore_errors_total", errors),
             REGISTRY.get_sample_value("payments_eventstore_operation_duration_seconds_count",
                                       calls)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1]


def test_a_subscription_counts_the_events_it_delivers() -> None:
    for _ in range(3):
        services.create_payment(amount="1.00")
    before = scrape()
    with get_event_store().subscribe() as subscription:
        assert len(subscription.get_many(10, timeout=1.0)) == 3
        assert subscription.position == get_event_store().head_position()
    after = scrape()
    assert grew(before, after, "payments_eventstore_events_read_total", adapter="embedded",
                operation="subscription") == 3
    assert get_event_store().path  # the adapter's own attributes pass through


# --- a runner's port -----------------------------------------------------------------------


@pytest.fixture
def runner_port() -> Iterator[int]:
    """The payment projection's metrics served as ``run_projection --metrics-port`` does."""
    with metrics.serving(0, "127.0.0.1", lambda: projection_readings(["payment"])) as (_, port):
        yield port


def scrape_port(port: int, **headers: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers=headers or BEARER)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()


def create_payments(count: int) -> list[Payment]:
    return [services.create_payment(amount="1.00") for _ in range(count)]


@pytest.mark.django_db(transaction=True)  # the port's thread reads the checkpoints
def test_a_runner_shows_its_position_head_lag_and_batches(runner_port: int,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    create_payments(3)
    before = scrape_port(runner_port)
    ProjectionRunner(PaymentProjection(), get_event_store()).run(once=True)
    after = scrape_port(runner_port)
    head = get_event_store().head_position()
    for name in ("payments_projection_checkpoint_position", "payments_projection_head_position"):
        assert value(after, name, projection="payment") == head
    assert value(after, "payments_projection_lag_events", projection="payment") == 0
    assert value(after, "payments_projection_lag_seconds", projection="payment") == 0
    assert value(after, "payments_projection_failed", projection="payment") == 0
    assert grew(before, after, "payments_projection_batch_size_count", projection="payment") == 1
    assert grew(before, after, "payments_projection_batch_size_sum", projection="payment") == 3
    assert grew(before, after, "payments_projection_batch_duration_seconds_count",
                projection="payment") == 1
    assert value(after, "payments_projection_runner_state", projection="payment",
                 state="following") == 1
    assert value(after, "payments_projection_runner_state", projection="payment",
                 state="catching_up") == 0
    assert "payments_projection_checkpoint_position{projection=\"decline\"}" not in after

    # Two more events, not applied: the lag counts them, and is as old as the first.
    create_payments(2)
    first = get_event_store().read_all(after=head, limit=1)[0]
    assert first.recorded_at is not None
    monkeypatch.setattr(metrics, "_clock", lambda: first.recorded_at.timestamp() + 42)
    behind = scrape_port(runner_port)
    assert value(behind, "payments_projection_lag_events", projection="payment") == 2
    assert value(behind, "payments_projection_lag_seconds",
                 projection="payment") == pytest.approx(42, abs=0.001)
    assert value(behind, "payments_projection_head_position",
                 projection="payment") == get_event_store().head_position()
    assert value(behind, "payments_projection_checkpoint_position", projection="payment") == head


@pytest.mark.django_db(transaction=True)
def test_a_runners_port_refuses_a_scrape_without_the_token(runner_port: int) -> None:
    with pytest.raises(urllib.error.HTTPError) as refused_scrape:
        scrape_port(runner_port, Authorization="Bearer not-the-token")
    assert refused_scrape.value.code == 404
    assert b"payments_" not in refused_scrape.value.read()


def states_seen(runner: ProjectionRunner) -> list[str]:
    """The runner's state in the metrics at each of its commits, noted from then on."""
    seen: list[str] = []

    def note(progress: Progress) -> None:
        text = generate_latest(REGISTRY).decode()
        state = [s for s in metrics.RUNNER_STATES if value(
            text, "payments_projection_runner_state", projection="payment", state=s) == 1]
        seen.extend(state)

    runner.on_progress = note
    return seen


@pytest.mark.django_db(transaction=True)
def test_a_runner_is_catching_up_while_full_batches_wait_then_following() -> None:
    create_payments(5)
    runner = ProjectionRunner(PaymentProjection(), get_event_store(), batch_size=2)
    seen = states_seen(runner)
    runner.run(once=True)
    assert seen[0] == "catching_up"
    assert seen[-1] == "following"


@pytest.mark.django_db(transaction=True)
def test_a_rebuilding_runner_says_so() -> None:
    create_payments(2)
    ProjectionRunner(PaymentProjection(), get_event_store()).run(once=True)
    runner = ProjectionRunner(PaymentProjection(), get_event_store())
    seen = states_seen(runner)
    runner.run(rebuild=True, once=True)
    assert seen
    assert set(seen) == {"rebuilding"}


@pytest.mark.django_db(transaction=True)
def test_a_runner_that_stops_on_an_event_shows_failed_here_and_on_the_web() -> None:
    create_payments(1)
    get_event_store().append(stream_name(uuid4()), [NewEvent("PaymentVoided", b"{}")],
                             StreamState.NO_STREAM)
    with pytest.raises(CommandError, match="PaymentVoided"):
        call_command("run_projection", "payment", "--once", stdout=StringIO())
    text = generate_latest(REGISTRY).decode()
    assert value(text, "payments_projection_runner_state", projection="payment",
                 state="failed") == 1
    assert value(text, "payments_projection_runner_state", projection="payment",
                 state="following") == 0
    # The process exits; the web reads the failure the runner recorded, as /readyz does.
    web = scrape()
    assert value(web, "payments_projection_failed", projection="payment") == 1
    assert value(web, "payments_projection_failed", projection="decline") == 0
    assert value(web, "payments_projection_lag_events", projection="payment") == 1


@pytest.mark.django_db(transaction=True)
def test_run_projection_serves_metrics_on_its_port_then_frees_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="projections.runner")
    call_command("run_projection", "payment", "--once", "--metrics-port", "0", stdout=StringIO())
    served = [r.getMessage() for r in caplog.records if r.getMessage().startswith("metrics of")]
    assert len(served) == 1, served
    port = int(re.fullmatch(r"metrics of payment at http://127\.0\.0\.1:(\d+)/metrics",
                            served[0])[1])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # closed with the command


@pytest.mark.django_db(transaction=True)
def test_run_projection_says_when_its_metrics_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
            call_command("run_projection", "payment", "--once", "--metrics-port", str(port),
                         stdout=StringIO())
    with pytest.raises(CommandError, match="--metrics-port must be a port"):
        call_command("run_projection", "payment", "--once", "--metrics-port", "70000")


# --- the alert rules ---------------------------------------------------------------------


def test_the_alert_rules_are_the_documented_ones_and_name_metrics_that_exist() -> None:
    rules_file = ROOT / "deploy" / "alerts.yml"
    documented = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "OPERATIONS.md").read_text(),
                            re.DOTALL)
    assert rules_file.read_text() in documented, "docs/OPERATIONS.md shows deploy/alerts.yml"
    rules = yaml.safe_load(rules_file.read_text())
    alerts = {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]}
    assert len(alerts) == 3
    for rule in alerts.values():
        assert {"expr", "for", "labels", "annotations"} <= rule.keys(), rule["alert"]
    # Every metric an expression names is one a scrape of the web or a runner shows.
    Client().get("/healthz")
    exported = {family.name for family in text_string_to_metric_families(
        scrape() + generate_latest(REGISTRY).decode())}
    for rule in alerts.values():
        names = re.findall(r"\b((?:payments|django)_[a-z_]+)", rule["expr"])
        assert names, rule["alert"]
        for name in names:
            assert name.removesuffix("_total") in exported, f"{rule['alert']}: {name}"
