"""No request ever gets a 500: schemathesis fuzzes every operation of the served schema.

The schema is read from the app itself (in-process WSGI, authenticated with a token)
and each operation gets a few hundred generated requests, valid and invalid. A
generated payment id that is a UUID is swapped for a real payment, in a state drawn
from the example, so the commands reach the service and the domain, not only 404.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode

from payments import services

EXAMPLES_PER_OPERATION = 300
OPERATIONS = [
    ("POST", "/api/payments/"),
    ("GET", "/api/payments/"),
    ("GET", "/api/payments/{payment_id}/"),
    ("POST", "/api/payments/{payment_id}/authorize/"),
    ("POST", "/api/payments/{payment_id}/settle/"),
    ("POST", "/api/payments/{payment_id}/refund/"),
    ("POST", "/api/payments/{payment_id}/decline/"),
    ("GET", "/api/declines/"),
]


@pytest.fixture
def _keep_test_connection() -> Iterator[None]:
    """As Django's test client does: a request must not close the test's transaction."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def token(db: None, _keep_test_connection: None) -> str:
    user = get_user_model().objects.create_user("fuzzer")
    return Token.objects.create(user=user).key


@pytest.fixture
def api_schema(token: str) -> Any:
    """The schema as the app serves it, loaded over in-process WSGI with the token."""
    from paymentsite.wsgi import application

    return schemathesis.openapi.from_wsgi(
        "/api/schema/?format=json", application, headers={"Authorization": f"Token {token}"}
    )


def real_payment(seed: str) -> str:
    """A payment in one of the states the commands meet, chosen by the example."""
    stage = hashlib.sha256(seed.encode()).digest()[0] % 4
    payment = services.create_payment(amount="100.00")
    if stage >= 1:
        payment = services.authorize_payment(payment_id=payment.id, bank_name="Fuzz Bank")
    if stage >= 2:
        payment = services.settle_payment(payment_id=payment.id, amount="40.00")
    if stage >= 3:
        payment = services.refund_payment(payment_id=payment.id, amount="10.00")
    return str(payment.id)


def with_real_payment(case: Any) -> None:
    """Point a well-formed payment id at an existing payment (malformed ones stay)."""
    value = case.path_parameters.get("payment_id") if case.path_parameters else None
    if not isinstance(value, str):
        return
    try:
        UUID(value)
    except ValueError:
        return
    case.path_parameters["payment_id"] = real_payment(value)


def test_every_served_operation_is_fuzzed(api_schema: Any) -> None:
    served = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


# schemathesis' own pytest wiring (`from_fixture` + `parametrize`) needs the schema
# before the test runs or a pytest internal that pytest 9 renamed; the served schema
# needs the test's database for its token. So each operation is a plain Hypothesis test
# over schemathesis' strategies: valid requests and invalid ones.
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_request_gets_a_server_error(api_schema: Any, token: str, method: str,
                                        path: str) -> None:
    operation = api_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                      operation.as_strategy(GenerationMode.NEGATIVE))
    auth = {"Authorization": f"Token {token}"}

    @given(case=cases)
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        with_real_payment(case)
        case.call_and_validate(headers=auth, checks=[not_a_server_error])

    fuzz()
