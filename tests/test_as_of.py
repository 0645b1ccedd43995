"""A payment as it was: after one of its events (``as_of_version``) or at a moment
(``as_of``), through the service, the API, the payment's page and ``manage.py api``.

Streams are written through the event store port where a test needs exact times or an
old schema version; the commands write the rest.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from io import StringIO
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from payments import services
from payments.domain import (
    Action,
    InvalidInput,
    Payment,
    PaymentError,
    PaymentStatus,
    apply,
    fold,
)
from payments.domain import create_payment as decide_create
from payments.events import PaymentEvent, encode_data, encode_metadata, stream_name
from payments.eventstore import NewEvent, StreamState, get_event_store
from payments.history import PAGE_SIZE
from tests.test_api_command import run_manage

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def write(payment_id: UUID, events: list[PaymentEvent]) -> None:
    """The events as one stream, through the port, at the times they carry."""
    get_event_store().append(stream_name(payment_id), [
        NewEvent(type=e.type_name, data=encode_data(e),
                 metadata=encode_metadata(correlation_id=uuid4(), causation_id=uuid4()))
        for e in events
    ], StreamState.NO_STREAM)


def settled_and_refunded() -> tuple[UUID, list[PaymentEvent]]:
    """Created, authorized, settled 40.00, refunded 10.00: one minute apart from T0."""
    payment_id = uuid4()
    created = decide_create(payment_id=payment_id, amount="100.00", currency="EUR",
                            occurred_at=T0)
    payment = apply(None, created, 0)
    events: list[PaymentEvent] = [created]
    for n, decide in enumerate([
        lambda p, at: p.authorize(bank_name="Acme Bank", occurred_at=at),
        lambda p, at: p.settle(amount=Decimal("40.00"), occurred_at=at),
        lambda p, at: p.refund(amount=Decimal("10.00"), occurred_at=at),
    ], start=1):
        event = decide(payment, T0 + timedelta(minutes=n))
        payment = apply(payment, event, n)
        events.append(event)
    write(payment_id, events)
    return payment_id, events


# --- the service --------------------------------------------------------------------------

amounts = st.integers(min_value=1, max_value=100_000).map(lambda cents: Decimal(cents) / 100)
steps = st.one_of(
    st.tuples(st.just(Action.AUTHORIZE), st.sampled_from(["Bank A", "Bank B"])),
    st.tuples(st.just(Action.SETTLE), st.none() | amounts),
    st.tuples(st.just(Action.REFUND), st.none() | amounts),
    st.tuples(st.just(Action.DECLINE), st.sampled_from(["05", "51"])),
)


def decide(payment: Payment, action: Action, argument: Any, at: datetime) -> PaymentEvent:
    if action is Action.AUTHORIZE:
        return payment.authorize(bank_name=argument, occurred_at=at)
    if action is Action.SETTLE:
        return payment.settle(amount=argument, occurred_at=at)
    if action is Action.REFUND:
        return payment.refund(amount=argument, occurred_at=at)
    return payment.decline(bank_name="Bank", decline_code=argument, occurred_at=at)


@st.composite
def histories(draw: st.DrawFn) -> list[PaymentEvent]:
    """A payment's events as the rules allow them, each at or after the one before (ties
    too: two events in the same microsecond)."""
    at = T0
    created = decide_create(payment_id=uuid4(), amount=draw(amounts), currency="EUR",
                            occurred_at=at)
    events: list[PaymentEvent] = [created]
    payment = apply(None, created, 0)
    for action, argument in draw(st.lists(steps, max_size=12)):
        at += timedelta(seconds=draw(st.integers(0, 3)))
        try:
            event = decide(payment, action, argument, at)
        except PaymentError:
            continue
        payment = apply(payment, event, len(events))
        events.append(event)
    return events


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(events=histories(), data=st.data())
def test_the_state_as_of_version_n_is_the_fold_of_the_first_n_plus_1_events(
        events: list[PaymentEvent], data: st.DataObject) -> None:
    payment_id = events[0].payment_id
    write(payment_id, events)
    now = services.find_payment(payment_id=payment_id)
    for n in range(len(events)):
        found = services.find_payment_as_of(payment_id=payment_id, version=n)
        assert found.payment == fold(events[: n + 1])
        assert found.payment.version == n
        assert found.history == now.history[: n + 1]
        assert found.as_of == services.AsOf(version=n, time=events[n].occurred_at,
                                            current_version=len(events) - 1)
    assert found.payment == now.payment  # as of the last version: the current state

    # At a moment: the events that occurred at or before it, the same written three ways.
    seconds = data.draw(st.integers(-2, int((events[-1].occurred_at - T0).total_seconds()) + 2))
    moment = T0 + timedelta(seconds=seconds, microseconds=data.draw(st.sampled_from([0, -1])))
    spelled = data.draw(st.sampled_from([
        moment, moment.isoformat(), moment.replace(tzinfo=None).isoformat(),  # no zone: UTC
        moment.astimezone(timezone(-timedelta(hours=2, minutes=30))).isoformat(),
    ]))
    count = sum(1 for e in events if e.occurred_at <= moment)
    if count == 0:
        with pytest.raises(services.PaymentNotYetCreated):
            services.find_payment_as_of(payment_id=payment_id, time=spelled)
        return
    at = services.find_payment_as_of(payment_id=payment_id, time=spelled)
    assert at.payment == fold(events[:count])
    assert at.history == now.history[:count]
    assert at.as_of is not None
    assert (at.as_of.version, at.as_of.requested_time) == (count - 1, moment)


def test_neither_parameter_is_the_current_state() -> None:
    payment_id, _ = settled_and_refunded()
    found = services.find_payment_as_of(payment_id=payment_id)
    assert found == services.find_payment(payment_id=payment_id)
    assert found.as_of is None


def test_a_time_is_at_or_before_and_without_a_zone_is_utc() -> None:
    payment_id, events = settled_and_refunded()
    authorized_at = events[1].occurred_at
    cases = {
        "2026-03-01T09:01:00Z": 1,  # the very moment of the authorization: included
        "2026-03-01T09:01:00": 1,  # no zone: UTC
        "2026-03-01 09:01:00+00:00": 1,
        "2026-03-01T10:01:00+01:00": 1,  # the same moment in another zone
        "2026-03-01T09:00:59.999999": 0,  # a microsecond before: only the creation
        "20260301T090130Z": 1,  # ISO 8601's basic format
        "2026-03-01T09:59:59Z": 3,  # after the last event: the state now, marked as of
    }
    for spelled, version in cases.items():
        found = services.find_payment_as_of(payment_id=payment_id, time=spelled)
        assert found.as_of is not None
        assert (found.payment.version, found.as_of.version) == (version, version), spelled
        assert found.as_of.time == events[version].occurred_at
        assert found.as_of.current_version == 3
    at = services.find_payment_as_of(payment_id=payment_id, time="2026-03-01T10:01:00+01:00")
    assert at.as_of is not None
    assert at.as_of.requested_time == authorized_at
    assert at.as_of.requested_time.tzinfo is UTC
    naive = services.find_payment_as_of(payment_id=payment_id,
                                        time=authorized_at.replace(tzinfo=None))
    assert naive.payment.status == PaymentStatus.AUTHORIZED


def test_a_time_before_the_payment_existed_is_not_found_and_says_when_it_was_created() -> None:
    payment_id, _ = settled_and_refunded()
    with pytest.raises(services.PaymentNotYetCreated) as raised:
        services.find_payment_as_of(payment_id=payment_id, time="2026-03-01T08:59:59Z")
    assert isinstance(raised.value, services.PaymentNotFound)  # a 404 wherever that is one
    assert str(raised.value) == (f"payment {payment_id} did not exist yet at"
                                 f" 2026-03-01T08:59:59.000000Z: it was created at"
                                 f" 2026-03-01T09:00:00.000000Z")


@pytest.mark.parametrize(("version", "time", "field", "message"), [
    (4, None, "as_of_version", "has versions 0 to 3: 4 is beyond its last version, 3"),
    ("99", None, "as_of_version", "has versions 0 to 3: 99 is beyond its last version, 3"),
    (-1, None, "as_of_version", r"must be a whole number from 0 \(the payment's first event\),"
                                r" not -1$"),
    ("-1", None, "as_of_version", "must be a whole number from 0 .*, not '-1'$"),
    ("1.0", None, "as_of_version", "not '1.0'"),
    ("", None, "as_of_version", "not ''"),
    ("٣", None, "as_of_version", "not '٣'"),  # an Arabic-Indic 3 is not an ASCII digit
    ("1" * 19, None, "as_of_version", "must be a whole number"),
    (True, None, "as_of_version", "not True"),
    (None, "yesterday", "as_of", "'yesterday' is not an ISO 8601 time such as"
                                 " 2026-11-29T14:00:00Z$"),
    (None, "2026-03-01T10:00:00 01:00", "as_of", "in a URL write its \\+ as %2B"),
    (None, "2026-03-01", "as_of", "'2026-03-01' is a date; give a time of day too"),
    (None, "2026-03-01T24:00:00Z", "as_of", "is not an ISO 8601 time"),
    (None, "", "as_of", "'' is not an ISO 8601 time"),
    (None, "2026-03-01T10:00:00Z" + "0" * 60, "as_of", "too long"),
    (None, "0001-01-01T00:00:00+01:00", "as_of", "out of range"),
    (1, "2026-03-01T10:00:00Z", "as_of", "give as_of_version or as_of, not both"),
])
def test_bad_parameters_are_invalid_input_naming_the_parameter(
        version: Any, time: Any, field: str, message: str) -> None:
    payment_id, _ = settled_and_refunded()
    with pytest.raises(InvalidInput, match=message) as raised:
        services.find_payment_as_of(payment_id=payment_id, version=version, time=time)
    assert raised.value.field == field


def test_bad_parameters_are_refused_before_the_store_is_asked() -> None:
    with pytest.raises(InvalidInput):
        services.find_payment_as_of(payment_id=uuid4(), version="x")
    with pytest.raises(services.PaymentNotFound):
        services.find_payment_as_of(payment_id=uuid4(), version="0")


def test_an_upcast_history_reads_as_of_each_version() -> None:
    """A PaymentCreated stored at schema version 1, as another program (or this one, before
    PaymentCreated v2) wrote it; only fields that version 1 has are looked at."""
    payment_id = uuid4()
    metadata = json.dumps({"$correlationId": str(uuid4()), "$causationId": str(uuid4()),
                           "schemaVersion": 1}).encode()
    data = json.dumps({"payment_id": str(payment_id), "amount": "100.00", "currency": "EUR",
                       "occurred_at": "2026-03-01T09:00:00.000000Z"}).encode()
    get_event_store().append(stream_name(payment_id),
                             [NewEvent(type="PaymentCreated", data=data, metadata=metadata)],
                             StreamState.NO_STREAM)
    services.authorize_payment(payment_id=payment_id, bank_name="Acme Bank")
    services.settle_payment(payment_id=payment_id, amount="30.00")
    expected = [  # status, settled, bank at each version
        (PaymentStatus.PENDING, Decimal("0.00"), None),
        (PaymentStatus.AUTHORIZED, Decimal("0.00"), "Acme Bank"),
        (PaymentStatus.PARTIALLY_SETTLED, Decimal("30.00"), "Acme Bank"),
    ]
    for version, (status, settled, bank) in enumerate(expected):
        found = services.find_payment_as_of(payment_id=payment_id, version=version)
        payment = found.payment
        assert (payment.id, payment.amount, payment.currency) == (
            payment_id, Decimal("100.00"), "EUR")
        assert (payment.status, payment.settled_amount, payment.bank_name, payment.version) == (
            status, settled, bank, version)
        assert [e.version for e in found.history] == list(range(version + 1))
        created = found.history[0]
        assert created.type == "PaymentCreated"
        assert {k: created.data[k] for k in ("payment_id", "amount", "currency")} == {
            "payment_id": str(payment_id), "amount": "100.00", "currency": "EUR"}
        assert created.occurred_at == T0
    at_creation = services.find_payment_as_of(payment_id=payment_id,
                                              time="2026-03-01T09:00:00")
    assert at_creation.payment.status == PaymentStatus.PENDING


# --- the API --------------------------------------------------------------------------------


@pytest.fixture
def api_client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_api_answers_a_past_state_marked_as_of(api_client: APIClient) -> None:
    payment_id, events = settled_and_refunded()
    now = api_client.get(f"/api/payments/{payment_id}/").json()
    assert "as_of" not in now  # without the parameters: as it always was
    for version in range(4):
        answer = api_client.get(f"/api/payments/{payment_id}/?as_of_version={version}")
        assert answer.status_code == 200, answer.json()
        body = answer.json()
        assert body["as_of"] == {
            "version": version,
            "time": events[version].occurred_at.isoformat().replace("+00:00", "Z"),
            "current_version": 3, "requested_time": None,
        }
        assert body["version"] == version
        assert body["events_count"] == version + 1
        assert body["events"] == now["events"][: version + 1]
    past = api_client.get(f"/api/payments/{payment_id}/?as_of_version=2").json()
    assert (past["status"], past["settled_amount"], past["refunded_amount"]) == (
        "partially_settled", "40.00", "0.00")
    last = api_client.get(f"/api/payments/{payment_id}/?as_of_version=3").json()
    assert {k: v for k, v in last.items() if k != "as_of"} == now

    at = api_client.get(f"/api/payments/{payment_id}/", {"as_of": "2026-03-01T10:01:30+01:00"})
    assert at.status_code == 200
    assert at.json()["as_of"] == {"version": 1, "time": "2026-03-01T09:01:00Z",
                                  "current_version": 3,
                                  "requested_time": "2026-03-01T09:01:30Z"}
    assert at.json()["status"] == "authorized"


def test_a_past_states_event_pages_stay_in_that_state(api_client: APIClient) -> None:
    payment_id, _ = settled_and_refunded()
    first = api_client.get(
        f"/api/payments/{payment_id}/?as_of_version=2&events_page_size=2").json()
    assert [e["version"] for e in first["events"]] == [0, 1]
    second = api_client.get(first["events_next"]).json()
    assert second["as_of"]["version"] == 2
    assert [e["version"] for e in second["events"]] == [2]
    assert second["events_next"] is None


@pytest.mark.parametrize(("query", "status", "body"), [
    ("as_of_version=4", 400, {"as_of_version": [
        "payment {id} has versions 0 to 3: 4 is beyond its last version, 3"]}),
    ("as_of_version=-1", 400, {"as_of_version": [
        "must be a whole number from 0 (the payment's first event), not '-1'"]}),
    ("as_of_version=two", 400, {"as_of_version": [
        "must be a whole number from 0 (the payment's first event), not 'two'"]}),
    ("as_of=soon", 400, {"as_of": [
        "'soon' is not an ISO 8601 time such as 2026-11-29T14:00:00Z"]}),
    ("as_of=2026-03-01T10:00:00+01:00", 400, {"as_of": [  # the + not escaped in the URL
        "'2026-03-01T10:00:00 01:00' is not an ISO 8601 time such as 2026-11-29T14:00:00Z;"
        " in a URL write its + as %2B"]}),
    ("as_of_version=1&as_of=2026-03-01T10:00:00Z", 400, {"as_of": [
        "give as_of_version or as_of, not both"]}),
    ("as_of=2026-02-28T23:00:00Z", 404, {"detail": (
        "payment {id} did not exist yet at 2026-02-28T23:00:00.000000Z: it was created at"
        " 2026-03-01T09:00:00.000000Z")}),
])
def test_bad_parameters_are_a_400_and_before_creation_a_404(
        api_client: APIClient, query: str, status: int, body: dict[str, Any]) -> None:
    payment_id, _ = settled_and_refunded()
    answer = api_client.get(f"/api/payments/{payment_id}/?{query}")
    assert answer.status_code == status
    assert answer.json() == json.loads(json.dumps(body).replace("{id}", str(payment_id)))


def test_the_schema_documents_both_parameters(api_client: APIClient) -> None:
    schema = api_client.get("/api/schema/",
                            headers={"Accept": "application/vnd.oai.openapi+json"})
    operation = schema.json()["paths"]["/api/payments/{payment_id}/"]["get"]
    parameters = {p["name"]: p for p in operation["parameters"]}
    assert parameters["as_of_version"]["schema"] == {"type": "integer", "minimum": 0}
    assert parameters["as_of"]["schema"] == {"type": "string", "format": "date-time"}
    detail = schema.json()["components"]["schemas"]["PaymentDetail"]
    assert "as_of" in detail["properties"]
    assert "as_of" not in detail.get("required", [])


# --- the payment's page ---------------------------------------------------------------------


def html_of(response: Any) -> str:
    return response.content.decode()


def versions_on(html: str) -> list[int]:
    return [int(v) for v in re.findall(r'<li class="event" data-type="[^"]+" data-version="(\d+)"',
                                       html)]


def forms_on(html: str) -> set[str]:
    return {a for a in ("authorize", "settle", "refund", "decline") if f'id="form-{a}"' in html}


def test_each_event_links_to_the_state_right_after_it(browser: Client) -> None:
    payment_id, _ = settled_and_refunded()
    html = html_of(browser.get(f"/payments/{payment_id}/"))
    links = re.findall(r'<a class="event-type" href="\?as_of_version=(\d+)"', html)
    assert links == ["0", "1", "2", "3"]
    assert 'id="as-of"' not in html
    assert forms_on(html) == {"refund"}


def test_a_past_state_has_a_banner_no_forms_and_no_live_updates(browser: Client) -> None:
    payment_id, _ = settled_and_refunded()
    response = browser.get(f"/payments/{payment_id}/?as_of_version=1")
    assert response.status_code == 200
    html = html_of(response)
    banner = re.search(r'<section id="as-of".*?</section>', html, re.S)
    assert banner, html
    words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", banner[0])).strip()
    assert words == ("A past state. This is the payment as it was after event 1"
                     " (PaymentAuthorized, 2026-03-01 09:01:00 UTC). It is not the current"
                     " state: the payment is now at version 3. Back to now")
    assert f'<a id="as-of-now" href="/payments/{payment_id}/">Back to now</a>' in banner[0]
    assert 'data-version="1" data-current-version="3"' in banner[0]
    assert 'id="payment-status" class="status status-authorized"' in html
    assert versions_on(html) == [0, 1]
    assert '<li class="event" data-type="PaymentAuthorized" data-version="1"' \
           ' aria-current="step">' in html
    assert forms_on(html) == set()
    assert 'id="past-no-actions"' in html
    assert "data-live-version" not in html
    assert "live.js" not in html
    assert "X-Live-Version" not in response
    # A poll would be answered with the page, not a 204: but no script polls a past state.
    assert browser.get(f"/payments/{payment_id}/?as_of_version=1",
                       HTTP_X_LIVE_VERSION="1").status_code == 200


def test_the_page_takes_a_time_too(browser: Client) -> None:
    payment_id, _ = settled_and_refunded()
    html = html_of(browser.get(f"/payments/{payment_id}/", {"as_of": "2026-03-01T09:02:30"}))
    assert versions_on(html) == [0, 1, 2]
    assert "the last event by" in html
    assert "2026-03-01 09:02:30 UTC" in html


def test_the_last_version_is_still_shown_as_a_past_state(browser: Client) -> None:
    payment_id, _ = settled_and_refunded()
    html = html_of(browser.get(f"/payments/{payment_id}/?as_of_version=3"))
    assert "nothing had happened after it when this page was drawn" in html
    assert forms_on(html) == set()


def test_a_past_states_history_pages_stay_in_that_state(browser: Client) -> None:
    payment = services.create_payment(amount="100.00")
    services.authorize_payment(payment_id=payment.id, bank_name="Acme Bank")
    for _ in range(PAGE_SIZE + 5):
        services.settle_payment(payment_id=payment.id, amount="0.01")
    version = PAGE_SIZE + 3  # on the second page
    html = html_of(browser.get(f"/payments/{payment.id}/?as_of_version={version}"))
    assert versions_on(html) == list(range(PAGE_SIZE, version + 1))  # the page it is on
    assert f'href="?as_of_version={version}&amp;events_page=1#history"' in html
    first = html_of(browser.get(f"/payments/{payment.id}/?as_of_version={version}&events_page=1"))
    assert versions_on(first) == list(range(PAGE_SIZE))
    assert 'id="as-of"' in first
    assert f'id="history-count" class="muted" data-count="{version + 1}"' in first


@pytest.mark.parametrize(("query", "message"), [
    ("as_of_version=4", "as_of_version: payment {id} has versions 0 to 3: 4 is beyond its last"
                        " version, 3"),
    ("as_of_version=-1", "as_of_version: must be a whole number from 0 (the payment&#x27;s first"
                         " event), not &#x27;-1&#x27;"),
    ("as_of_version=1e3", "not &#x27;1e3&#x27;"),
    ("as_of=2026-03-01", "is a date; give a time of day too"),
    ("as_of=2026-03-01T09:00:00Z&as_of_version=0", "give as_of_version or as_of, not both"),
])
def test_bad_parameters_are_the_sites_400_page(browser: Client, query: str,
                                                message: str) -> None:
    payment_id, _ = settled_and_refunded()
    response = browser.get(f"/payments/{payment_id}/?{query}")
    assert response.status_code == 400
    html = html_of(response)
    assert 'id="bad-request"' in html
    assert message.replace("{id}", str(payment_id)) in html
    assert f'<a href="/payments/{payment_id}/">Back</a>' in html


def test_a_time_before_the_payment_is_a_404_page_that_says_so(browser: Client) -> None:
    payment_id, _ = settled_and_refunded()
    response = browser.get(f"/payments/{payment_id}/?as_of=2026-03-01T08:00:00Z")
    assert response.status_code == 404
    html = html_of(response)
    assert (f'<p id="not-found-message">The payment {payment_id} did not exist yet at'
            f" 2026-03-01T08:00:00.000000Z: it was created at 2026-03-01T09:00:00.000000Z.</p>"
            in html)
    assert f'<a id="not-found-link" href="/payments/{payment_id}/">' in html
    assert browser.get(f"/payments/{uuid4()}/?as_of_version=0").status_code == 404


def test_a_command_form_still_goes_back_to_the_current_state(browser: Client) -> None:
    payment_id, _ = settled_and_refunded()
    page = html_of(browser.get(f"/payments/{payment_id}/"))
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page)[1]
    response = browser.post(f"/payments/{payment_id}/refund/?as_of_version=0",
                            {"amount": "5.00", "expected_version": "3", "idempotency_key": key})
    assert response.status_code == 302
    assert response["Location"] == (
        f"/payments/{payment_id}/?after={get_event_store().head_position()}")


# --- manage.py api ----------------------------------------------------------------------------


def api(*args: str) -> str:
    out = StringIO()
    call_command("api", *args, stdout=out)
    return out.getvalue()


def test_find_as_of_a_version_says_it_is_a_past_state() -> None:
    payment_id, _ = settled_and_refunded()
    lines = api("-a", "find", "-i", str(payment_id), "--as-of", "2").splitlines()
    assert lines[0] == ("as_of: a past state, right after event 2 at"
                        " 2026-03-01T09:02:00.000000Z; the payment is now at version 3")
    fields = dict(line.split(": ", 1) for line in lines[1:] if not line.startswith("event: "))
    assert (fields["status"], fields["settled_amount"], fields["version"]) == (
        "partially_settled", "40.00", "2")
    assert [line.split()[3] for line in lines if line.startswith("event: ")] == [
        "PaymentCreated", "PaymentAuthorized", "PaymentSettled"]


def test_find_as_of_a_time_and_as_json() -> None:
    payment_id, _ = settled_and_refunded()
    found = json.loads(api("-a", "find", "-i", str(payment_id), "--as-of",
                           "2026-03-01T09:01:30", "--json"))
    assert found["as_of"] == {"version": 1, "time": "2026-03-01T09:01:00Z",
                              "current_version": 3, "requested_time": "2026-03-01T09:01:30Z"}
    assert found["status"] == "authorized"
    assert [e["version"] for e in found["events"]] == [0, 1]
    text = api("-a", "find", "-i", str(payment_id), "--as-of", "2026-03-01T11:00:00+01:00")
    assert text.splitlines()[0] == (
        "as_of: a past state, right after event 3 at 2026-03-01T09:03:00.000000Z, the last"
        " event by 2026-03-01T10:00:00.000000Z; no event has followed it yet")
    assert "as_of" not in api("-a", "find", "-i", str(payment_id))


@pytest.mark.parametrize(("value", "message"), [
    ("4", "^--as-of: payment .* has versions 0 to 3: 4 is beyond its last version, 3$"),
    ("-1", r"^--as-of: must be a whole number from 0 \(the payment's first event\), not '-1'$"),
    ("1.5", "^--as-of: '1.5' is not an ISO 8601 time"),
    ("2026-03-01", "^--as-of: '2026-03-01' is a date"),
    ("2026-03-01T08:00:00Z", "^payment .* did not exist yet at 2026-03-01T08:00:00.000000Z"),
])
def test_find_refuses_a_bad_as_of_in_one_message(value: str, message: str) -> None:
    payment_id, _ = settled_and_refunded()
    with pytest.raises(CommandError, match=message):
        api("-a", "find", "-i", str(payment_id), "--as-of", value)


def test_as_of_goes_with_find_only_and_appends_nothing() -> None:
    payment_id, _ = settled_and_refunded()
    head = get_event_store().head_position()
    with pytest.raises(CommandError, match=r"^--as-of goes with -a find only, not with refund$"):
        api("-a", "refund", "-i", str(payment_id), "--as-of", "1")
    assert get_event_store().head_position() == head


def test_as_a_script_a_bad_as_of_is_one_line_on_stderr(tmp_path) -> None:
    created = run_manage("api", "-a", "create", "-v", "10.00", tmp_path=tmp_path)
    payment_id = created.stdout.strip()
    past = run_manage("api", "-a", "find", "-i", payment_id, "--as-of", "0", tmp_path=tmp_path)
    assert past.returncode == 0, past.stderr
    assert past.stdout.startswith("as_of: a past state, right after event 0 at ")
    for value in ("1", "-1", "never", "1999-01-01T00:00:00Z"):
        refused = run_manage("api", "-a", "find", "-i", payment_id, "--as-of", value,
                             tmp_path=tmp_path)
        assert refused.returncode == 1, value
        assert refused.stdout == ""
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith("CommandError: "), refused.stderr


def test_as_of_reads_the_same_from_eventstoredb() -> None:
    """The rule is the service's, over the store port: EventStoreDB (the double that the
    contract suite checks against the real server) answers as the embedded store does."""
    from payments.eventstore.esdb import EventStoreDBEventStore
    from tests.esdb_double import EventStoreDBDouble

    with EventStoreDBDouble() as double:
        store = EventStoreDBEventStore(double.uri, timeout=2.0)
        try:
            payment = services.create_payment(amount="30.00", currency="EUR", store=store)
            services.authorize_payment(payment_id=payment.id, bank_name="Far Bank", store=store)
            services.settle_payment(payment_id=payment.id, amount="10.00", store=store)
            first = services.find_payment_as_of(payment_id=payment.id, version=0, store=store)
            second = services.find_payment_as_of(payment_id=payment.id, version="1", store=store)
            with pytest.raises(services.InvalidInput, match="beyond its last version, 2"):
                services.find_payment_as_of(payment_id=payment.id, version=3, store=store)
        finally:
            store.close()
    assert (first.payment.status, len(first.history)) == ("pending", 1)
    assert (second.payment.status, second.payment.bank_name) == ("authorized", "Far Bank")
    assert second.as_of is not None
    assert second.as_of.current_version == 2
