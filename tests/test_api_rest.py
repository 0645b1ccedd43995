"""The REST API over HTTP (DRF's test client): life cycle, status codes, idempotency,
authentication, and the read-model lists."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from uuid import uuid4

import hypothesis
import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from payments import services
from payments.eventstore import get_event_store, reset_event_store
from payments.models import IdempotencyRecord
from payments.services import find_payment
from tests.amounts import BAD_AMOUNTS

pytestmark = pytest.mark.django_db

PAYMENT_FIELDS = {"id", "status", "amount", "currency", "reference", "settled_amount",
                  "refunded_amount", "bank_name", "decline_code", "version", "position"}


@pytest.fixture
def user() -> Any:
    return get_user_model().objects.create_user("alice")


@pytest.fixture
def client(user: Any) -> APIClient:
    api = APIClient()
    api.force_authenticate(user)
    return api


def create(client: APIClient, amount: Any = "100.00", **extra: Any) -> dict[str, Any]:
    response = client.post("/api/payments/", {"amount": amount, **extra}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def command(client: APIClient, payment_id: str, action: str, body: dict[str, Any] | None = None,
            **headers: str) -> Any:
    # json.dumps escapes what is not ASCII, as most clients do: a lone surrogate can be sent.
    return client.post(f"/api/payments/{payment_id}/{action}/", json.dumps(body or {}),
                       content_type="application/json", headers=headers)


def stream_length(payment_id: str) -> int:
    return len(find_payment(payment_id=payment_id).history)


# --- the life cycle --------------------------------------------------------------------


def test_a_payment_goes_through_its_life_over_http(client: APIClient) -> None:
    response = client.post("/api/payments/", {"amount": "100.00", "currency": "usd"},
                           format="json")
    assert response.status_code == 201
    created = response.json()
    assert set(created) == PAYMENT_FIELDS
    assert created["status"] == "pending"
    assert (created["amount"], created["currency"], created["version"]) == ("100.00", "USD", 0)
    assert response["Location"].endswith(f"/api/payments/{created['id']}/")
    pid = created["id"]

    authorized = command(client, pid, "authorize", {"bank_name": "  Acme Bank "}).json()
    assert (authorized["status"], authorized["bank_name"]) == ("authorized", "Acme Bank")
    partly = command(client, pid, "settle", {"amount": "40"}).json()
    assert (partly["status"], partly["settled_amount"]) == ("partially_settled", "40.00")
    settled = command(client, pid, "settle", {"expected_version": 2}).json()
    assert (settled["status"], settled["settled_amount"]) == ("settled", "100.00")
    refunded = command(client, pid, "refund", {"amount": "10.00"}).json()
    assert (refunded["status"], refunded["refunded_amount"]) == ("partially_refunded", "10.00")
    assert command(client, pid, "refund").json()["status"] == "refunded"

    detail = client.get(response["Location"])
    assert detail.status_code == 200
    body = detail.json()
    assert body["status"] == "refunded"
    assert body["version"] == 5
    assert [e["type"] for e in body["events"]] == [
        "PaymentCreated", "PaymentAuthorized", "PaymentSettled", "PaymentSettled",
        "PaymentRefunded", "PaymentRefunded",
    ]
    assert [e["version"] for e in body["events"]] == list(range(6))
    first = body["events"][0]
    assert set(first) == {"type", "data", "version", "position", "occurred_at"}
    assert first["data"]["amount"] == "100.00"


def test_decline(client: APIClient) -> None:
    pid = create(client)["id"]
    declined = command(client, pid, "decline", {"bank_name": "B", "decline_code": "n7"})
    assert declined.status_code == 200
    assert (declined.json()["status"], declined.json()["decline_code"]) == ("declined", "N7")


# --- the merchant's reference (issue 12) --------------------------------------------------


def test_create_takes_a_reference_that_every_answer_shows(client: APIClient) -> None:
    created = create(client, "10.00", reference="  order 1234  ")
    assert created["reference"] == "order 1234"  # trimmed by the domain
    detail = client.get(f"/api/payments/{created['id']}/").json()
    assert detail["reference"] == "order 1234"
    assert detail["events"][0]["data"]["reference"] == "order 1234"
    authorized = command(client, created["id"], "authorize", {"bank_name": "B"}).json()
    assert authorized["reference"] == "order 1234"
    for body in ({"amount": "1"}, {"amount": "1", "reference": None},
                 {"amount": "1", "reference": "   "}):
        assert create(client, **body)["reference"] == "", body


@pytest.mark.parametrize(("reference", "message"), [
    ("r" * 65, "must be at most 64 characters"),
    ("order\n42", "must be one line of text without control characters (found U+000A)"),
    ("order\u0007", "must be one line of text without control characters (found U+0007)"),
    ("\u202eorder", "must not contain invisible format characters such as direction"
                    " overrides (found U+202E)"),
    ("Ac\ud800me", "is not valid Unicode text: it holds a lone surrogate (U+D800)"),
    (1234, "must be a string"),
    (["order"], "must be a string"),
])
def test_a_reference_the_rule_forbids_is_a_400_and_nothing_is_written(
    client: APIClient, reference: Any, message: str
) -> None:
    response = client.post("/api/payments/", json.dumps({"amount": "1", "reference": reference}),
                           content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"reference": [message]}
    assert get_event_store().head_position() == 0


def test_a_reference_of_64_characters_counts_characters_after_normalisation(
    client: APIClient,
) -> None:
    decomposed = "Cafe\u0301" * 16  # 80 code points as sent, 64 characters once NFC
    assert create(client, reference=decomposed)["reference"] == "Caf\u00e9" * 16
    assert create(client, reference="\U0001f600" * 64)["reference"] == "\U0001f600" * 64


def test_the_reference_is_part_of_what_a_retried_create_compares(client: APIClient) -> None:
    def post(body: dict[str, Any]) -> Any:
        return client.post("/api/payments/", body, format="json",
                           headers={"Idempotency-Key": "order-7"})

    first = post({"amount": "5.00", "reference": "order 7"})
    assert first.status_code == 201
    assert post({"amount": "5.00", "reference": "order 8"}).status_code == 422
    IdempotencyRecord.objects.all().delete()  # the service's own check, without the record
    assert post({"amount": "5.00", "reference": "order 8"}).status_code == 422
    assert post({"amount": "5.00"}).status_code == 422
    again = post({"amount": "5.00", "reference": " order 7 "})  # the same, once normalised
    assert (again.status_code, again.json()) == (201, first.json())
    assert stream_length(first.json()["id"]) == 1


# --- 400: bad input, with the domain's messages ------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        # Text amounts: every interface's table, below (tests/amounts.py). These are JSON's.
        ({"amount": 10.5}, "amount", "not a float"),
        ({"amount": True}, "amount", "decimal string"),
        ({"amount": ["1"]}, "amount", "decimal string"),
        ({}, "amount", "required"),
        ({"amount": "1", "currency": "EURO"}, "currency", "three-letter ISO 4217"),
        ({"amount": 2**70}, "amount", "must be at most 999,999,999,999.99"),
        ({"amount": "1", "currency": "XYZ"}, "currency", "XYZ is not an ISO 4217 currency code"),
        ({"amount": "1", "currency": "XTS"}, "currency", "XTS is not an ISO 4217 currency code"),
        ({"amount": "1", "currency": ""}, "currency", "three-letter ISO 4217"),
        ({"amount": "1", "currency": "\u017fek"}, "currency", "three-letter ISO 4217"),
        ({"amount": "1", "currency": 978}, "currency", "must be a string"),
        ({"amount": "1", "colour": "red"}, "colour", "unknown field"),
        ({"amount": "1", "expected_version": 0}, "expected_version", "unknown field"),
    ],
)
def test_create_refuses_bad_input_by_field(
    client: APIClient, body: dict[str, Any], field: str, message: str
) -> None:
    response = client.post("/api/payments/", body, format="json")
    assert response.status_code == 400
    errors = response.json()
    assert list(errors) == [field]
    assert message in errors[field][0]


@pytest.mark.parametrize("action", ["create", "settle", "refund"])
def test_every_bad_amount_is_refused_by_each_action_that_takes_one(
    client: APIClient, action: str
) -> None:
    """The table every interface is tested with (tests/amounts.py). The payment is in a
    status that allows the action, so the amount is the only thing wrong. Every row is
    tried; the failures are reported together."""
    store = get_event_store()
    wrong = []
    for amount, message in BAD_AMOUNTS:
        if action == "create":
            path = "/api/payments/"
        else:
            payment = services.create_payment(amount="100.00")
            services.authorize_payment(payment_id=payment.id, bank_name="B")
            if action == "refund":
                services.settle_payment(payment_id=payment.id)
            path = f"/api/payments/{payment.id}/{action}/"
        head = store.head_position()
        response = client.post(path, json.dumps({"amount": amount}),
                               content_type="application/json")
        body = response.json()
        if response.status_code != 400 or list(body) != ["amount"] \
                or message not in body["amount"][0]:
            wrong.append(f"{amount!r}: {response.status_code} {body}")
        if store.head_position() != head:
            wrong.append(f"{amount!r}: appended an event")
    assert not wrong, f"{action}, wrong answers to bad amounts:\n" + "\n".join(wrong)


def test_a_json_integer_amount_is_exact_and_accepted(client: APIClient) -> None:
    assert create(client, amount=25)["amount"] == "25.00"


@pytest.mark.parametrize(
    ("action", "body", "field", "message"),
    [
        ("authorize", {"bank_name": "   "}, "bank_name", "must not be empty"),
        ("authorize", {"bank_name": "B" * 101}, "bank_name", "at most 100 characters"),
        ("authorize", {}, "bank_name", "required"),
        ("authorize", {"bank_name": "B", "expected_version": -1}, "expected_version", "0"),
        ("authorize", {"bank_name": "B", "bank": "B"}, "bank", "unknown field"),
        ("decline", {"bank_name": "B", "decline_code": "12345"}, "decline_code", "1 to 4"),
        ("decline", {"bank_name": "B", "decline_code": "0-5"}, "decline_code", "1 to 4"),
        ("settle", {"ammount": "5"}, "ammount", "unknown field"),
        # Issue 10: the text rule. Each of these was stored (and stopped a runner) before.
        ("authorize", {"bank_name": "Ac\ud800me"}, "bank_name", "lone surrogate (U+D800)"),
        ("authorize", {"bank_name": "Ac\u0000me"}, "bank_name", "must not contain NUL"),
        ("authorize", {"bank_name": "Line1\nLine2"}, "bank_name", "one line of text"),
        ("authorize", {"bank_name": "Acme\tBank"}, "bank_name", "one line of text"),
        ("authorize", {"bank_name": "\u202eAcme"}, "bank_name", "direction overrides"),
        ("authorize", {"bank_name": "Ac\u200dme"}, "bank_name", "(found U+200D)"),
        ("settle", {"bank_name": "Ac\u2028me"}, "bank_name", "one line of text"),
        ("decline", {"bank_name": "\x85Acme", "decline_code": "05"}, "bank_name", "U+0085"),
    ],
)
def test_commands_refuse_bad_input_by_field(
    client: APIClient, action: str, body: dict[str, Any], field: str, message: str
) -> None:
    pid = create(client)["id"]
    response = command(client, pid, action, body)
    assert response.status_code == 400
    assert message in response.json()[field][0]
    assert stream_length(pid) == 1


def test_a_body_that_is_not_an_object_is_a_400(client: APIClient) -> None:
    response = client.post("/api/payments/", ["100.00"], format="json")
    assert response.status_code == 400
    malformed = client.post("/api/payments/", "{not json", content_type="application/json")
    assert malformed.status_code == 400


# Bodies a client may send a command: known and unknown fields, with JSON values good and bad.
_JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["100.00", "0", "1e3", " 5 ", "EUR", "usd", "XXX", "05", "N7", "Acme Bank",
                     "", " ", "\x00", "\u202e", "9" * 13, "3.0", "-1"]),
    st.text(max_size=8), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
# Each field's good values (valid for one command or another); any value a time in eight.
_FIELDS = {
    "amount": st.sampled_from(["100.00", "0.01", 5, None]),
    "currency": st.sampled_from(["EUR", "usd", None]),
    "reference": st.sampled_from(["order 1", "", " x ", None]),
    "bank_name": st.sampled_from(["Acme Bank", " B ", None]),
    "decline_code": st.sampled_from(["05", "n7", None]),
    "expected_version": st.sampled_from([0, 3, "4", 2.0, None]),
    "ammount": st.just("1.00"),  # a typo: refused by name
}
@pytest.mark.django_db(databases=[])
@hypothesis.settings(max_examples=300, deadline=None)
@given(action=st.sampled_from(["create", "authorize", "settle", "refund", "decline"]),
       data=st.data())
def test_a_command_body_is_checked_as_its_drf_serializer_checks_it(action: str,
                                                                    data: st.DataObject) -> None:
    """``CommandSerializer.validated`` checks a valid body without building a serializer:
    every body gets what ``is_valid`` gives, the same values or the same errors."""
    from payments.api import commands

    input_class = {"create": commands.CreatePaymentSerializer,
                   "authorize": commands.AuthorizePaymentSerializer,
                   "settle": commands.SettlePaymentSerializer,
                   "refund": commands.RefundPaymentSerializer,
                   "decline": commands.DeclinePaymentSerializer}[action]
    # Mostly the command's own fields, now and then another's or a typo; or not an object.
    names = [*input_class._declared_fields, *data.draw(st.lists(st.sampled_from(list(_FIELDS)),
                                                                max_size=1))]
    body = data.draw(st.one_of(
        st.fixed_dictionaries({}, optional={name: mostly(_FIELDS[name]) for name in names}),
        _JSON_VALUES,
    ), label="body")

    def drf() -> dict[str, Any]:
        serializer = input_class(data=body)
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    assert outcome(lambda: input_class.validated(body)) == outcome(drf)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good``'s values seven times in eight, else any JSON value (one_of would draw from
    each of _JSON_VALUES' alternatives as often as from ``good``)."""
    return st.integers(0, 7).flatmap(lambda k: good if k else _JSON_VALUES)


def outcome(check: Callable[[], dict[str, Any]]) -> tuple[Any, ...]:
    """What a check gave: its values and their types, or its error and what it says."""
    from rest_framework.exceptions import ValidationError

    try:
        values = check()
    except ValidationError as e:
        return ("refused", e.detail)
    except Exception as e:
        return (type(e), str(e))
    return ("valid", values, [type(v) for v in values.values()])


# --- 404, 409 ----------------------------------------------------------------------------


@pytest.mark.parametrize("payment_id", [str(uuid4()), "not-a-uuid", "12345"])
def test_unknown_or_malformed_ids_are_404(client: APIClient, payment_id: str) -> None:
    assert client.get(f"/api/payments/{payment_id}/").status_code == 404
    response = command(client, payment_id, "authorize", {"bank_name": "B"})
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


def test_a_refused_transition_is_409_naming_the_status(client: APIClient) -> None:
    pid = create(client)["id"]
    response = command(client, pid, "refund")
    assert response.status_code == 409
    assert "pending" in response.json()["detail"]
    assert stream_length(pid) == 1


def test_settling_more_than_outstanding_is_409(client: APIClient) -> None:
    pid = create(client, "10.00")["id"]
    command(client, pid, "authorize", {"bank_name": "B"})
    response = command(client, pid, "settle", {"amount": "10.01"})
    assert response.status_code == 409
    assert "authorized" in response.json()["detail"]


def test_an_expected_version_mismatch_is_409(client: APIClient) -> None:
    pid = create(client)["id"]
    response = command(client, pid, "authorize", {"bank_name": "B", "expected_version": 3})
    assert response.status_code == 409
    assert "version 0" in response.json()["detail"]
    assert "pending" in response.json()["detail"]
    ok = command(client, pid, "authorize", {"bank_name": "B", "expected_version": 0})
    assert ok.status_code == 200


# --- 503 ---------------------------------------------------------------------------------


def test_an_unreachable_event_store_is_503(client: APIClient, settings: Any,
                                           tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.EVENTSTORE_URI = f"sqlite:///{blocker / 'events.sqlite3'}"
    reset_event_store()
    for response in (
        client.post("/api/payments/", {"amount": "1.00"}, format="json"),
        client.get(f"/api/payments/{uuid4()}/"),
        command(client, str(uuid4()), "settle"),
    ):
        assert response.status_code == 503
        assert "unreachable" in response.json()["detail"]
        assert response["Retry-After"]


# --- Idempotency-Key ----------------------------------------------------------------------


def test_a_retried_create_returns_the_first_answer_and_appends_nothing(client: APIClient) -> None:
    first = client.post("/api/payments/", {"amount": "5.00"}, format="json",
                        headers={"Idempotency-Key": "k1"})
    again = client.post("/api/payments/", {"amount": "5.00"}, format="json",
                        headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201
    assert first.content == again.content  # byte for byte (jsonb would reorder the keys)
    assert first["Location"] == again["Location"]
    assert again["Idempotent-Replayed"] == "true"
    assert stream_length(first.json()["id"]) == 1


def test_a_retried_command_returns_the_first_answer_even_after_later_changes(
    client: APIClient,
) -> None:
    pid = create(client)["id"]
    command(client, pid, "authorize", {"bank_name": "B"})
    first = command(client, pid, "settle", {"amount": "30.00"}, **{"Idempotency-Key": "s1"})
    command(client, pid, "settle", {"amount": "20.00"})
    again = command(client, pid, "settle", {"amount": "30.00"}, **{"Idempotency-Key": "s1"})
    assert (first.status_code, first.json()) == (again.status_code, again.json())
    assert again.json()["settled_amount"] == "30.00"
    assert stream_length(pid) == 4


def test_a_retry_after_losing_the_record_appends_nothing(client: APIClient) -> None:
    """A crash between the append and the record: the service's own key still holds."""
    pid = create(client)["id"]
    first = command(client, pid, "authorize", {"bank_name": "B"}, **{"Idempotency-Key": "a1"})
    IdempotencyRecord.objects.all().delete()
    again = command(client, pid, "authorize", {"bank_name": "B"}, **{"Idempotency-Key": "a1"})
    assert (again.status_code, again.json()) == (200, first.json())
    assert stream_length(pid) == 2


def test_a_refusal_is_the_first_answer_too(client: APIClient) -> None:
    pid = create(client)["id"]
    first = command(client, pid, "settle", {}, **{"Idempotency-Key": "early"})
    assert first.status_code == 409
    command(client, pid, "authorize", {"bank_name": "B"})
    again = command(client, pid, "settle", {}, **{"Idempotency-Key": "early"})
    assert (again.status_code, again.json()) == (409, first.json())
    assert stream_length(pid) == 2


def test_bad_input_is_not_remembered_so_the_key_can_be_reused_once_fixed(
    client: APIClient,
) -> None:
    bad = client.post("/api/payments/", {"amount": "x"}, format="json",
                      headers={"Idempotency-Key": "fix-me"})
    assert bad.status_code == 400
    good = client.post("/api/payments/", {"amount": "1"}, format="json",
                       headers={"Idempotency-Key": "fix-me"})
    assert good.status_code == 201


def test_reusing_a_key_for_another_request_is_422(client: APIClient) -> None:
    pid = create(client)["id"]
    command(client, pid, "authorize", {"bank_name": "B"}, **{"Idempotency-Key": "k"})
    for response in (
        command(client, pid, "authorize", {"bank_name": "Other"}, **{"Idempotency-Key": "k"}),
        command(client, pid, "decline", {"bank_name": "B", "decline_code": "05"},
                **{"Idempotency-Key": "k"}),
        client.post("/api/payments/", {"amount": "1.00"}, format="json",
                    headers={"Idempotency-Key": "k"}),
    ):
        assert response.status_code == 422
        assert "already used for a different request" in response.json()["detail"]
    assert stream_length(pid) == 2


def test_the_service_refuses_a_reused_key_even_without_the_record(client: APIClient) -> None:
    pid = create(client)["id"]
    command(client, pid, "authorize", {"bank_name": "B"}, **{"Idempotency-Key": "k"})
    IdempotencyRecord.objects.all().delete()
    response = command(client, pid, "authorize", {"bank_name": "C"}, **{"Idempotency-Key": "k"})
    assert response.status_code == 422


def test_keys_belong_to_their_user(client: APIClient) -> None:
    body = {"amount": "7.00"}
    mine = client.post("/api/payments/", body, format="json", headers={"Idempotency-Key": "same"})
    bob = APIClient()
    bob.force_authenticate(get_user_model().objects.create_user("bob"))
    theirs = bob.post("/api/payments/", body, format="json", headers={"Idempotency-Key": "same"})
    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("key", ["", "x" * 256])
def test_a_malformed_key_is_400(client: APIClient, key: str) -> None:
    response = client.post("/api/payments/", {"amount": "1"}, format="json",
                           headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()


def test_purge_idempotency_keys_keeps_a_day(client: APIClient) -> None:
    client.post("/api/payments/", {"amount": "1"}, format="json", headers={"Idempotency-Key": "a"})
    client.post("/api/payments/", {"amount": "2"}, format="json", headers={"Idempotency-Key": "b"})
    IdempotencyRecord.objects.filter(key="a").update(
        created_at=timezone.now() - timedelta(hours=25))
    out = StringIO()
    call_command("purge_idempotency_keys", "--older-than-hours", "24", stdout=out)
    assert "deleted 1 " in out.getvalue()
    assert list(IdempotencyRecord.objects.values_list("key", flat=True)) == ["b"]
    with pytest.raises(CommandError, match="at least 24 hours"):
        call_command("purge_idempotency_keys", "--older-than-hours", "1")


# --- authentication ----------------------------------------------------------------------

ENDPOINTS = [
    ("get", "/api/payments/"),
    ("post", "/api/payments/"),
    ("get", "/api/payments/{id}/"),
    ("post", "/api/payments/{id}/authorize/"),
    ("post", "/api/payments/{id}/settle/"),
    ("post", "/api/payments/{id}/refund/"),
    ("post", "/api/payments/{id}/decline/"),
    ("get", "/api/declines/"),
    ("get", "/api/schema/"),
    ("get", "/api/docs/"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_anonymous_callers_are_refused_everywhere(client: APIClient, method: str,
                                                  path: str) -> None:
    pid = create(client)["id"]
    anonymous = APIClient()
    response = getattr(anonymous, method)(path.format(id=pid), {"amount": "1"}, format="json") \
        if method == "post" else anonymous.get(path.format(id=pid))
    assert response.status_code in (401, 403)
    assert stream_length(pid) == 1


def test_a_wrong_token_is_refused(client: APIClient) -> None:
    response = APIClient().get("/api/payments/", headers={"Authorization": "Token nope"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid token."}


def test_an_inactive_users_token_is_refused(user: Any) -> None:
    token = Token.objects.create(user=user)
    user.is_active = False
    user.save()
    response = APIClient().get("/api/payments/", headers={"Authorization": f"Token {token.key}"})
    assert response.status_code == 401
    assert response.json() == {"detail": "User inactive or deleted."}


def test_a_deleted_token_or_deactivated_user_is_refused_on_the_very_next_request(
        user: Any) -> None:
    """The token is looked up in the database on every request: nothing is remembered."""
    token = Token.objects.create(user=user)
    api = APIClient(headers={"Authorization": f"Token {token.key}"})
    assert api.get("/api/payments/").status_code == 200
    get_user_model().objects.filter(pk=user.pk).update(is_active=False)
    refused = api.get("/api/payments/")
    assert (refused.status_code, refused.json()) == (401, {"detail": "User inactive or deleted."})
    get_user_model().objects.filter(pk=user.pk).update(is_active=True)
    assert api.get("/api/payments/").status_code == 200
    Token.objects.filter(pk=token.pk).delete()
    refused = api.post("/api/payments/", {"amount": "1.00"}, format="json")
    assert (refused.status_code, refused.json()) == (401, {"detail": "Invalid token."})


@pytest.mark.parametrize("key", ["a\x00b", "x" * 100_000, "\u202eabc".encode().decode("latin-1"),
                                 "' OR 1=1 --", "é" * 10])
def test_a_hostile_token_is_a_401_on_every_database(key: str) -> None:
    """NUL (which PostgreSQL refuses in a query), a huge key, UTF-8 as a WSGI server hands
    it over (Latin-1), SQL, a key that is not ASCII: each a 401, never a 500."""
    response = APIClient().get("/api/payments/", HTTP_AUTHORIZATION=f"Token {key}")
    assert response.status_code == 401
    assert response.json()["detail"].startswith(("Invalid token.", "Invalid token header."))


def test_the_token_query_is_seen_where_django_logs_queries(user: Any) -> None:
    """Read on the driver's cursor, but through Django's when queries are logged
    (DEBUG, assertNumQueries): it is counted like any other."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    token = Token.objects.create(user=user)
    api = APIClient(headers={"Authorization": f"Token {token.key}"})
    with CaptureQueriesContext(connection) as queries:
        assert api.get("/api/payments/").status_code == 200
    assert any("authtoken_token" in query["sql"] and token.key in query["sql"]
               for query in queries.captured_queries)


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/json; indent=2",
                                    "text/html", "*/*;q=0.8", "application/*"])
@pytest.mark.parametrize("query", ["", "?format=json", "?format=xml", "?format="])
def test_content_negotiation_answers_as_drfs(accept: str | None, query: str) -> None:
    """payments.api.negotiation answers an absent Accept or */* without DRF's parsing:
    the same renderer and media type as DRF's, or the same error, for any request."""
    from rest_framework.negotiation import DefaultContentNegotiation
    from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    from payments.api.negotiation import ContentNegotiation

    headers = {} if accept is None else {"Accept": accept}
    request = Request(APIRequestFactory().get(f"/api/payments/{query}", headers=headers))
    for renderers in ([JSONRenderer()], [BrowsableAPIRenderer(), JSONRenderer()], []):
        answers = []
        for negotiation in (ContentNegotiation(), DefaultContentNegotiation()):
            try:
                renderer, media_type = negotiation.select_renderer(request, renderers)
                answers.append((renderer, media_type))
            except Exception as e:  # the same exception, with the same detail
                answers.append((type(e), str(e)))
        assert answers[0] == answers[1], (accept, query, renderers)


def test_our_token_lookup_gives_what_drfs_gives(user: Any) -> None:
    """payments.api.authentication replaces DRF's ORM lookup with one SQL query."""
    from rest_framework.authentication import TokenAuthentication as DrfTokenAuthentication

    from payments.api.authentication import TokenAuthentication

    user.last_login = timezone.now()
    user.save()
    token = Token.objects.create(user=user)
    ours = TokenAuthentication().authenticate_credentials(token.key)
    drfs = DrfTokenAuthentication().authenticate_credentials(token.key)
    for mine, theirs in zip(ours, drfs, strict=True):
        assert type(mine) is type(theirs)
        fields = [f.attname for f in type(mine)._meta.concrete_fields]
        assert [getattr(mine, f) for f in fields] == [getattr(theirs, f) for f in fields]
    assert ours[1].user is ours[0]


def test_token_authentication(user: Any) -> None:
    token = Token.objects.create(user=user)
    api = APIClient(headers={"Authorization": f"Token {token.key}"})
    created = api.post("/api/payments/", {"amount": "3.00"}, format="json")
    assert created.status_code == 201
    assert api.get(created["Location"]).status_code == 200
    assert api.get("/api/schema/").status_code == 200


def test_session_authentication_with_csrf(user: Any) -> None:
    api = APIClient(enforce_csrf_checks=True)
    api.force_login(user)
    assert api.get("/api/payments/").status_code == 200
    refused = api.post("/api/payments/", {"amount": "1"}, format="json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]


def test_schema_and_docs(client: APIClient) -> None:
    schema = client.get("/api/schema/", headers={"Accept": "application/vnd.oai.openapi+json"})
    assert schema.status_code == 200
    spec = schema.json()
    assert spec["openapi"].startswith("3.")
    schemas = spec["components"]["schemas"]
    reference = schemas["CreatePaymentRequest"]["properties"]["reference"]
    assert (reference["type"], reference["maxLength"], reference.get("nullable")) == \
        ("string", 64, True)
    assert "reference" not in schemas["CreatePaymentRequest"]["required"]
    for shown in ("Payment", "PaymentDetail", "PaymentListItem"):  # always there, "" for none
        assert schemas[shown]["properties"]["reference"]["type"] == "string", shown
        assert "reference" in schemas[shown]["required"], shown
    settle = spec["paths"]["/api/payments/{payment_id}/settle/"]["post"]
    assert {"200", "400", "404", "409", "422", "503"} <= set(settle["responses"])
    assert "Idempotency-Key" in [p["name"] for p in settle["parameters"]]
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html
    assert "cdn" not in html.lower()


# --- lists from the read models -----------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the runners work in threads of their own
def test_lists_filter_and_paginate(client: APIClient) -> None:
    ids = [create(client, f"{n}.00")["id"] for n in range(1, 6)]
    for pid in ids[:3]:
        command(client, pid, "authorize", {"bank_name": "Acme"})
    command(client, ids[3], "decline", {"bank_name": "Acme", "decline_code": "05"})
    command(client, ids[4], "decline", {"bank_name": "Zeta", "decline_code": "51"})
    referenced = create(client, "6.00", reference="order 6")["id"]
    call_command("run_projection", "all", "--once")

    everything = client.get("/api/payments/").json()
    assert everything["count"] == 6
    assert set(everything["results"][0]) == PAYMENT_FIELDS | {"created_at", "updated_at"}
    assert {row["id"]: row["reference"] for row in everything["results"]} == \
        {**dict.fromkeys(ids, ""), referenced: "order 6"}
    updated = [row["updated_at"] for row in everything["results"]]
    assert updated == sorted(updated, reverse=True)

    authorized = client.get("/api/payments/", {"status": "authorized"}).json()
    assert {row["id"] for row in authorized["results"]} == set(ids[:3])
    assert client.get("/api/payments/", {"bank_name": "Zeta"}).json()["count"] == 1
    assert client.get("/api/payments/", {"currency": "eur"}).json()["count"] == 6
    assert client.get("/api/payments/", {"status": "lost"}).status_code == 400
    assert client.get("/api/payments/", {"currency": "E"}).status_code == 400

    page = client.get("/api/payments/", {"page_size": 2, "page": 2}).json()
    assert len(page["results"]) == 2
    assert page["next"]
    assert page["previous"]
    assert client.get("/api/payments/", {"page": 9}).status_code == 404

    declines = client.get("/api/declines/").json()
    assert declines["count"] == 2
    assert set(declines["results"][0]) == {"decline_code", "bank_name", "date", "count"}
    today = declines["results"][0]["date"]
    only = client.get("/api/declines/", {"decline_code": "05", "bank_name": "Acme",
                                         "date": today}).json()
    assert [(r["decline_code"], r["count"]) for r in only["results"]] == [("05", 1)]
    assert client.get("/api/declines/", {"date": "1999-01-01"}).json()["count"] == 0
    assert client.get("/api/declines/", {"date": "yesterday"}).status_code == 400
    assert client.get("/api/declines/", {"page_size": 1}).json()["next"]


def test_accepted_text_is_stored_nfc_normalised_and_trimmed(client: APIClient) -> None:
    pid = create(client)["id"]
    response = command(client, pid, "authorize", {"bank_name": "  Cafe\u0301 Cr\u00e9dit  "})
    assert response.status_code == 200
    assert response.json()["bank_name"] == "Caf\u00e9 Cr\u00e9dit"
    detail = client.get(f"/api/payments/{pid}/").json()
    assert detail["events"][1]["data"]["bank_name"] == "Caf\u00e9 Cr\u00e9dit"


def test_the_bank_name_limit_counts_characters_after_normalisation(client: APIClient) -> None:
    pid = create(client)["id"]
    name = "e\u0301" * 100  # 200 code points typed, 100 characters once composed
    response = command(client, pid, "authorize", {"bank_name": name})
    assert response.status_code == 200
    assert response.json()["bank_name"] == "\u00e9" * 100


def test_a_payment_takes_at_most_100_settlements(client: APIClient) -> None:
    """Bounded work: a stream cannot be grown without end with 0.01 settles."""
    pid = create(client, amount="1000.00")["id"]
    command(client, pid, "authorize", {"bank_name": "Acme"})
    for _ in range(100):
        assert command(client, pid, "settle", {"amount": "0.01"}).status_code == 200
    refused = command(client, pid, "settle", {"amount": "0.01"})
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        "cannot settle this payment again: it has 100 settlements, the most one payment may"
        " have; settle what is left in one go")
    assert stream_length(pid) == 102
