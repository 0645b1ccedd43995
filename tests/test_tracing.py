"""Traces (paymentsite/tracing.py): a request's span, its command's span and steps, the
read-model database's statements, the trace context in the event's metadata, and the
runner's batch span linked back to the command; nothing at all while tracing is off.

One tracer provider for the whole session, given to ``tracing.instrument`` explicitly:
OpenTelemetry's global provider is never set here, so no other test is traced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from rest_framework.test import APIClient

from payments import services
from payments.domain import create_payment
from payments.events import decode_metadata, encode_data, stream_name
from payments.eventstore import (
    NewEvent,
    RecordedEvent,
    StreamState,
    get_event_store,
    reset_event_store,
)
from payments.eventstore.embedded import EmbeddedEventStore
from paymentsite import tracing
from projections import runner
from projections.models import PaymentView
from projections.projectors import PaymentProjection
from projections.runner import ProjectionRunner

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def span_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


@pytest.fixture
def spans(
    transactional_db: None, span_provider: tuple[TracerProvider, InMemorySpanExporter],
) -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, into the session's provider; off again after it."""
    provider, exporter = span_provider
    tracing.uninstrument()  # should OTEL_* have traced this process; and the next
    tracing.instrument(provider, environ={})  # connection opens traced
    exporter.clear()
    try:
        yield exporter
    finally:
        tracing.uninstrument()
        exporter.clear()


@pytest.fixture
def client() -> APIClient:
    api = APIClient()
    api.force_authenticate(get_user_model().objects.create_user("tracer"))
    return api


def named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [span for span in exporter.get_finished_spans() if span.name == name]
    assert len(found) == 1, [span.name for span in exporter.get_finished_spans()]
    return found[0]


def traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def last_record(payment_id: str | UUID) -> RecordedEvent:
    return get_event_store().read_stream(stream_name(UUID(str(payment_id))))[-1]


def test_an_api_command_is_a_request_span_with_the_command_span_beneath(
    spans: InMemorySpanExporter, client: APIClient,
) -> None:
    response = client.post("/api/payments/", {"amount": "12.50"}, format="json",
                           headers={"Idempotency-Key": "trace-1"})
    assert response.status_code == 201
    payment_id = response.json()["id"]

    command = named(spans, "payment.create")
    request = next(span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER)
    assert request.parent is None
    assert request.attributes["http.method"] == "POST"
    assert request.attributes["http.status_code"] == 201
    assert command.parent.span_id == request.context.span_id
    record = last_record(payment_id)
    assert dict(command.attributes) == {
        "payment.id": payment_id, "payment.action": "create", "payment.outcome": "ok",
        "payment.event_type": "PaymentCreated", "payment.version": 0,
        "payment.position": record.position,
    }
    assert command.status.status_code is StatusCode.UNSET
    # Its steps are events on it (a new payment has no stream to load).
    assert [event.name for event in command.events] == ["payment.decided", "payment.appended"]
    assert [span.name for span in spans.get_finished_spans()
            if span.parent and span.parent.span_id == command.context.span_id] == []
    # The idempotency record is the read-model database's: its statements are spans too.
    statements = [span for span in spans.get_finished_spans() if span.kind is SpanKind.CLIENT
                  and span.context.trace_id == request.context.trace_id]
    assert any("payments_idempotencyrecord" in span.attributes["db.statement"]
               for span in statements)
    assert {span.attributes["db.system"] for span in statements} <= {"sqlite", "postgresql"}

    # The event carries the command span's trace context, the schema version still last.
    assert decode_metadata(record.metadata)["traceparent"] == traceparent(command)
    assert record.metadata.endswith(b'"schemaVersion":2}')


def test_the_token_lookup_is_a_database_span_of_the_request(
    spans: InMemorySpanExporter,
) -> None:
    """The token query runs on the driver's cursor, which tracing instruments."""
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=get_user_model().objects.create_user("bearer"))
    api = APIClient(headers={"Authorization": f"Token {token.key}"})
    spans.clear()
    assert api.get("/api/payments/").status_code == 200
    request = next(span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER)
    lookups = [span for span in spans.get_finished_spans() if span.kind is SpanKind.CLIENT
               and span.context.trace_id == request.context.trace_id
               and "authtoken_token" in span.attributes["db.statement"]]
    assert len(lookups) == 1
    assert lookups[0].attributes["db.system"] in ("sqlite", "postgresql")


def test_a_refused_command_is_not_an_error_and_a_failed_one_is(
    spans: InMemorySpanExporter, client: APIClient, settings: Any, tmp_path: Path,
) -> None:
    payment_id = client.post("/api/payments/", {"amount": "1.00"}, format="json").json()["id"]
    response = client.post(f"/api/payments/{payment_id}/refund/", {}, format="json")
    assert response.status_code == 409
    refused = named(spans, "payment.refund")
    assert refused.attributes["payment.outcome"] == "refused"
    assert refused.status.status_code is StatusCode.UNSET

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings.EVENTSTORE_URI = f"sqlite:///{blocker / 'events.sqlite3'}"
    reset_event_store()
    assert client.post(f"/api/payments/{payment_id}/settle/", {},
                       format="json").status_code == 503
    failed = named(spans, "payment.settle")
    assert failed.attributes["payment.outcome"] == "unavailable"
    assert failed.status.status_code is StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]


def test_a_race_lost_to_another_process_shows_on_the_commands_span(
    spans: InMemorySpanExporter, tmp_path: Path,
) -> None:
    """Two stores on one file are two processes' views: the first remembers the payment
    one settle behind, so its settle loses a race, reads the stream and decides again."""
    one = EmbeddedEventStore(tmp_path / "shared.sqlite3")
    other = EmbeddedEventStore(tmp_path / "shared.sqlite3")
    try:
        payment = services.create_payment(amount="10.00", store=one)
        services.authorize_payment(payment_id=payment.id, bank_name="Bank", store=one)
        services.settle_payment(payment_id=payment.id, amount="1.00", store=other)
        spans.clear()

        settled = services.settle_payment(payment_id=payment.id, amount="2.00", store=one)
    finally:
        one.close()
        other.close()

    command = named(spans, "payment.settle")
    assert [(event.name, dict(event.attributes)) for event in command.events] == [
        ("payment.decided", {}), ("payment.lost_race", {"attempt": 1}),
        ("payment.loaded", {}), ("payment.decided", {}), ("payment.appended", {})]
    assert (command.attributes["payment.outcome"], command.attributes["payment.version"]) == (
        "ok", settled.version)
    assert command.parent is None  # no request: a trace of its own


def test_the_runners_batch_span_links_back_to_the_commands_spans(
    spans: InMemorySpanExporter, client: APIClient,
) -> None:
    created = client.post("/api/payments/", {"amount": "5.00"}, format="json").json()
    client.post(f"/api/payments/{created['id']}/authorize/", {"bank_name": "Acme"},
                format="json")
    commands = [named(spans, "payment.create"), named(spans, "payment.authorize")]
    first, last = last_record(created["id"]).position - 1, last_record(created["id"]).position

    ProjectionRunner(PaymentProjection(), get_event_store()).run(once=True)

    assert PaymentView.objects.get(payment_id=created["id"]).status == "authorized"
    batch = named(spans, "projection.payment.batch")
    assert batch.parent is None  # a trace of its own, linked to the commands'
    assert batch.attributes["projection.batch.count"] == 2
    assert (batch.attributes["projection.batch.first_position"],
            batch.attributes["projection.batch.last_position"]) == (first, last)
    assert batch.attributes["projection.rebuild"] is False
    assert [(link.context.trace_id, link.context.span_id) for link in batch.links] == [
        (span.context.trace_id, span.context.span_id) for span in commands]
    assert [link.attributes["payment.position"] for link in batch.links] == [first, last]
    # The batch's own statements (the read model, the checkpoint) are within it.
    assert any(span.kind is SpanKind.CLIENT and span.parent is not None
               and span.parent.span_id == batch.context.span_id
               for span in spans.get_finished_spans())


def test_a_batch_links_to_at_most_max_links_commands_and_passes_bad_trace_contexts_by(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runner, "MAX_LINKS", 3)
    store = get_event_store()
    # Another program's events, whose trace contexts are not ones: no link, no failure.
    for junk in (b'"00-zz-yy-01"', b"5", b'{"a":1}'):
        created = create_payment(payment_id=uuid4(), amount="1.00", currency="EUR",
                                 occurred_at=datetime.now(UTC))
        store.append(stream_name(created.payment_id), [NewEvent(
            type=created.type_name, data=encode_data(created),
            metadata=b'{"traceparent":' + junk + b',"schemaVersion":2}')],
            StreamState.NO_STREAM)
    for amount in range(1, 6):
        services.create_payment(amount=f"{amount}.00")
    commands = [span for span in spans.get_finished_spans() if span.name == "payment.create"]

    ProjectionRunner(PaymentProjection(), store).run(once=True)

    batch = named(spans, "projection.payment.batch")
    assert batch.attributes["projection.batch.count"] == 8
    assert [link.context.span_id for link in batch.links] == [
        span.context.span_id for span in commands[:3]]
    assert PaymentView.objects.count() == 8


def test_with_tracing_off_no_span_is_made_and_the_metadata_is_as_before(
    transactional_db: None, span_provider: tuple[TracerProvider, InMemorySpanExporter],
    client: APIClient,
) -> None:
    provider, exporter = span_provider
    tracing.instrument(provider, environ={})
    tracing.uninstrument()  # as if never on
    exporter.clear()
    created = client.post("/api/payments/", {"amount": "5.00"}, format="json").json()
    record = last_record(created["id"])
    correlation = decode_metadata(record.metadata)["$correlationId"]
    assert record.metadata == (f'{{"$correlationId":"{correlation}","$causationId":'
                               f'"{correlation}","schemaVersion":2}}').encode()
    ProjectionRunner(PaymentProjection(), get_event_store()).run(once=True)
    assert PaymentView.objects.filter(payment_id=created["id"]).exists()
    assert exporter.get_finished_spans() == ()


# --- the environment decides ---------------------------------------------------------------


@pytest.mark.parametrize(("environ", "exporters"), [
    ({}, []),
    ({"OTEL_SERVICE_NAME": "web"}, []),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": " OTLP , console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp_proto_http,otlp"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     ["otlp"]),
])
def test_the_otel_variables_choose_the_exporters(environ: dict[str, str],
                                                 exporters: list[str]) -> None:
    assert tracing.exporters_configured(environ) == exporters


@pytest.mark.parametrize(("environ", "named_in_error"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "jaeger"),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
     "grpc"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
     "http/json"),
])
def test_an_exporter_this_build_lacks_is_refused_by_name(environ: dict[str, str],
                                                         named_in_error: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=named_in_error):
        tracing.exporters_configured(environ)


def manage(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OTEL_")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, **environ}, check=False)


def test_a_process_traces_only_when_its_environment_names_an_exporter(tmp_path: Path) -> None:
    """Through Django's start-up, as every process does: off, nothing of OpenTelemetry is
    even imported; on, the CLI's stdout is still the new id alone, and the spans go to
    stderr."""
    where = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
             "EVENTSTORE_URI": f"sqlite:///{tmp_path / 'events.sqlite3'}", "DEBUG": "true"}
    off = manage("shell", "--verbosity", "0", "-c", "import sys\nfrom payments import services\n"
                 "services.create_payment(amount='1.00')\n"
                 "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))",
                 **where)
    assert off.returncode == 0, off.stderr
    assert off.stdout.strip() == "[]"

    on = manage("api", "-a", "create", "-v", "7.00", OTEL_TRACES_EXPORTER="console",
                OTEL_SERVICE_NAME="payments-cli", **where)
    assert on.returncode == 0, on.stderr
    payment_id = UUID(on.stdout.strip())
    printed = json.JSONDecoder()
    command = None
    at = on.stderr.find("{")
    while at >= 0:
        span, end = printed.raw_decode(on.stderr, at)
        if span["name"] == "payment.create":
            command = span
        at = on.stderr.find("{", end)
    assert command is not None, on.stderr
    assert command["attributes"]["payment.id"] == str(payment_id)
    assert command["resource"]["attributes"]["service.name"] == "payments-cli"
