"""OpenTelemetry traces: off unless the environment configures an exporter.

The standard variables decide (docs/ARCHITECTURE.md, "Traces"; README, "Configuration"):
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console`` or both, comma-separated; ``none``), or an
``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) alone, which means ``otlp``;
``OTEL_SDK_DISABLED=true`` turns it all off. The SDK reads the rest itself:
``OTEL_SERVICE_NAME`` (else "paymentsite"), ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``.

On, each process has one tracer provider, an exporter thread (a ``BatchSpanProcessor``)
per exporter, and:

* Django's instrumentation: a span per request, the parent of a command's span;
* the read-model database's statements, on Django's connections only (SQLite's or
  psycopg's instrumentation): the embedded event store's own SQLite connections are
  left alone (a runner's poll would be a span every 50 ms); its reads and appends are
  events on the command's span;
* a span per command (payments/services.py), whose W3C trace context its event's
  metadata carries, and a span per runner batch (projections/runner.py) linked to them.

Off, nothing of OpenTelemetry is imported and nothing is instrumented.

``setup()`` runs once per process, when Django starts (``PaymentsiteConfig.ready``):
gunicorn loads the application in each worker after forking it (``preload_app`` stays
off), so each worker starts its own exporter thread.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

DEFAULT_SERVICE_NAME = "paymentsite"
# Requests that make no span unless OTEL_PYTHON_(DJANGO_)EXCLUDED_URLS says otherwise:
# probes and scrapes, every few seconds, and static files.
DEFAULT_EXCLUDED_URLS = "/healthz,/readyz,/metrics,/static/"
_EXPORTERS = {"otlp": "otlp", "otlp_proto_http": "otlp", "console": "console"}

_lock = threading.Lock()
_started: bool | None = None  # None: setup() has not run in this process
_instrumented: dict[str, Any] = {}  # what instrument() did, for uninstrument()


def exporters_configured(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the OTEL_* variables ask for ("otlp", "console"); [] is off.

    Refuses what this build cannot export to, rather than run untraced unawares: an
    unknown exporter, or OTLP over gRPC or JSON (only ``http/protobuf`` is installed).
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
             if name.strip()]
    if not names and (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                      or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        names = ["otlp"]
    if "none" in names:
        return []
    unknown = [name for name in names if name not in _EXPORTERS]
    if unknown:
        raise ImproperlyConfigured(
            f"OTEL_TRACES_EXPORTER: {', '.join(unknown)} is not installed; use otlp"
            " (OTLP over HTTP), console or none")
    exporters = list(dict.fromkeys(_EXPORTERS[name] for name in names))
    if "otlp" in exporters:
        protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
        if protocol.strip().lower() != "http/protobuf":
            raise ImproperlyConfigured(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: only http/protobuf is installed"
                " (point OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port, 4318)")
    return exporters


def setup(environ: Mapping[str, str] | None = None) -> bool:
    """Trace this process if the environment says so; once per process. True if on."""
    global _started
    with _lock:
        if _started is None:
            _started = _start(os.environ if environ is None else environ)
        return _started


def _start(environ: Mapping[str, str]) -> bool:
    exporters = exporters_configured(environ)
    if not exporters:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider = TracerProvider(resource=resource)  # flushes and stops at exit
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    instrument(provider, environ)
    return True


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        # stderr: the CLI's stdout is for scripts (`ID=$(manage.py api -a create …)`).
        return ConsoleSpanExporter(out=sys.stderr)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*


def instrument(provider: TracerProvider, environ: Mapping[str, str] | None = None) -> None:
    """Trace requests, the read-model database, commands and batches into ``provider``.

    ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (``django``, ``sqlite3``, ``psycopg``) leaves
    some out, as OpenTelemetry's own launcher does. Tests call this with a provider of
    their own (and ``uninstrument`` after); the process-wide one is ``setup``'s.
    """
    from django.db.backends.signals import connection_created

    from payments import services
    from projections import runner

    environ = os.environ if environ is None else environ
    disabled = {name.strip() for name in
                environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")}
    if "django" not in disabled:
        from opentelemetry.instrumentation.django import DjangoInstrumentor

        excluded = (environ.get("OTEL_PYTHON_DJANGO_EXCLUDED_URLS")
                    or environ.get("OTEL_PYTHON_EXCLUDED_URLS") or DEFAULT_EXCLUDED_URLS)
        DjangoInstrumentor().instrument(tracer_provider=provider, excluded_urls=excluded)
        _instrumented["django"] = DjangoInstrumentor
    if "sqlite3" not in disabled:
        # Django's SQLite connections, one by one as they open: instrumenting the module
        # would take in the embedded event store's too.
        def trace_connection(sender: object, connection: Any, **kwargs: object) -> None:
            if connection.vendor == "sqlite":
                from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

                connection.connection = SQLite3Instrumentor.instrument_connection(
                    connection.connection, tracer_provider=provider)

        connection_created.connect(trace_connection, weak=False,
                                   dispatch_uid="paymentsite.tracing")
        _instrumented["sqlite3"] = trace_connection
    if "psycopg" not in disabled:
        # psycopg's connect, which only Django calls here (the event store is SQLite or
        # EventStoreDB); it keeps Django's own cursor class beneath the traced one.
        from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

        PsycopgInstrumentor().instrument(tracer_provider=provider)
        _instrumented["psycopg"] = PsycopgInstrumentor
    services.trace_commands(provider.get_tracer("payments.services"))
    runner.trace_batches(provider.get_tracer("projections.runner"))


def uninstrument() -> None:
    """Undo ``instrument`` (for tests): no more spans from this process's code.

    Database connections opened meanwhile are closed (in this thread), so the next ones
    are plain.
    """
    from django.db import connections
    from django.db.backends.signals import connection_created

    from payments import services
    from projections import runner

    services.trace_commands(None)
    runner.trace_batches(None)
    if _instrumented.pop("sqlite3", None) is not None:
        connection_created.disconnect(dispatch_uid="paymentsite.tracing")
    for name in ("django", "psycopg"):
        instrumentor = _instrumented.pop(name, None)
        if instrumentor is not None:
            instrumentor().uninstrument()
    connections.close_all()
