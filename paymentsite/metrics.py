"""Prometheus metrics: every metric of our own is defined here, and here they are served.

What each metric means, with its labels, and the alert rules to start with:
docs/OPERATIONS.md. Recorded by the code that knows it:

* HTTP requests, by ``HttpMetricsMiddleware`` (settings.MIDDLEWARE), per response;
* the command service (``payments.services``), once per command, whatever its outcome;
* the event store wrapper (``payments.eventstore.instrumented``), per call, by adapter;
* the projection runner (``projections.runner``), per batch and per change of state;
* the checkpoints and the store's head, read when a scrape asks (``ProjectionCollector``):
  a runner that is down or stuck is seen as well, its lag growing.

Served at ``/metrics`` by the web app and, with ``run_projection --metrics-port``, by a
runner on a port of its own; both answer only whom ``access_allowed`` lets in. Under
gunicorn every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(paymentsite/gunicorn.conf.py sets it) and a scrape sums them; in a process of its own
(runserver, a runner, the tests) they stay in memory.

This module imports nothing of ``payments`` or ``projections``: both record here.
With ``METRICS_ENABLED`` off nothing is recorded (a command costs one settings lookup).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from django.conf import settings
from django.db import connections
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.views.decorators.cache import never_cache
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

# No `_created` series (a metric's creation time): the text format makes each one a series
# of its own, and under gunicorn (multiprocess mode) there are none; now neither anywhere.
disable_created_metrics()

# Seconds: a command or a store call takes a millisecond or so; an outage, the deadline.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)

# --- commands (payments/services.py) ---------------------------------------------------

COMMANDS = Counter(
    "payments_commands", "Commands the command service carried out, by action and outcome.",
    ["action", "outcome"],
)
COMMAND_SECONDS = Histogram(
    "payments_command_duration_seconds",
    "How long commands took in the command service (parse, decide, append), by action and"
    " outcome.",
    ["action", "outcome"], buckets=LATENCY_BUCKETS,
)
_commands: dict[tuple[str, str], tuple[Any, Any]] = {}  # each label pair's children, once


def observe_command(action: str, outcome: str, seconds: float) -> None:
    """One command ended: ``outcome`` is ok, replayed, refused, conflict, unavailable or error."""
    if not settings.METRICS_ENABLED:
        return
    children = _commands.get((action, outcome))
    if children is None:  # .labels() looks the children up under a lock: once per pair
        children = _commands.setdefault((action, outcome), (
            COMMANDS.labels(action, outcome), COMMAND_SECONDS.labels(action, outcome)))
    children[0].inc()
    children[1].observe(seconds)


# --- the event store (payments/eventstore/instrumented.py) ------------------------------

STORE_SECONDS = Histogram(
    "payments_eventstore_operation_duration_seconds",
    "How long event store calls took, failed ones included, by adapter (embedded, esdb) and"
    " operation (append, read_stream, read_all, head_position, subscribe).",
    ["adapter", "operation"], buckets=LATENCY_BUCKETS,
)
STORE_ERRORS = Counter(
    "payments_eventstore_errors",
    "Event store calls that raised, by adapter, operation (subscription: a following"
    " subscription broke) and error (WrongExpectedVersion, StreamNotFound,"
    " EventStoreUnavailable, UnreadableEvent, EventStoreError, other).",
    ["adapter", "operation", "error"],
)
STORE_EVENTS_READ = Counter(
    "payments_eventstore_events_read",
    "Events read from the store, by adapter and operation (read_stream, read_all,"
    " subscription).",
    ["adapter", "operation"],
)

# --- HTTP requests (settings.MIDDLEWARE) ------------------------------------------------
#
# django-prometheus's names, labels and buckets, which the alert rules (deploy/alerts.yml)
# and any dashboard read: only the three series docs/OPERATIONS.md names, recorded by the
# middleware below instead of its 17 (docs/DECISIONS.md, "HTTP metrics of our own").

HTTP_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                        10.0, 25.0, 50.0, 75.0, float("inf"))
HTTP_RESPONSES = Counter(
    "django_http_responses_total_by_status_view_method",
    "Count of responses by status, view, method.", ["status", "view", "method"],
)
HTTP_SECONDS = Histogram(
    "django_http_requests_latency_seconds_by_view_method",
    "Histogram of request processing time labelled by view.", ["view", "method"],
    buckets=HTTP_LATENCY_BUCKETS,
)
HTTP_EXCEPTIONS = Counter(
    "django_http_exceptions_total_by_view", "Count of exceptions by view.", ["view"],
)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "OPTIONS",
                          "CONNECT", "PATCH"})
UNNAMED_VIEW = "<unnamed view>"
# Each (status, view, method)'s children, once: a URL name, a status the site answers and
# a known method (anything else is "<invalid method>"), so the labels stay few.
_http: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _view_name(request: HttpRequest) -> str:
    """The URL's name (``api:payments``); an unknown URL's is ``<unnamed view>``."""
    match = request.resolver_match
    return (match.view_name if match is not None else None) or UNNAMED_VIEW


class HttpMetricsMiddleware:
    """Each response by status, view and method, the time in the view (and the middlewares
    inside this one), and the exceptions views raise. Only in ``MIDDLEWARE`` when
    ``METRICS_ENABLED``: off, a request pays nothing for it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        seconds = time.perf_counter() - started
        method = request.method if request.method in HTTP_METHODS else "<invalid method>"
        key = (str(response.status_code), _view_name(request), str(method))
        children = _http.get(key)
        if children is None:  # .labels() looks the children up under a lock: once per key
            children = _http.setdefault(key, (HTTP_RESPONSES.labels(*key),
                                              HTTP_SECONDS.labels(*key[1:])))
        children[0].inc()
        children[1].observe(seconds)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> None:
        """Counted, then left to the handlers outside (a 503 page, a 500)."""
        HTTP_EXCEPTIONS.labels(_view_name(request)).inc()


# --- projections (projections/runner.py, run_projection) ---------------------------------

RUNNER_STATES = ("following", "catching_up", "rebuilding", "failed")
RUNNER_STATE = Gauge(
    "payments_projection_runner_state",
    "1 for the state this process's runner of the projection is in, 0 for the others:"
    " following (caught up, applying live events), catching_up (a full batch was waiting),"
    " rebuilding (filling shadow tables, --rebuild), failed (stopped on an error; the"
    " process exits).",
    ["projection", "state"], multiprocess_mode="livemax",
)
BATCH_SIZE = Histogram(
    "payments_projection_batch_size",
    "Events per batch a runner applied in one transaction with its checkpoint.",
    ["projection"], buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
BATCH_SECONDS = Histogram(
    "payments_projection_batch_duration_seconds",
    "How long a runner's batch took: decoding, applying and committing with the checkpoint.",
    ["projection"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def observe_batch(projection: str, events: int, seconds: float) -> None:
    """A runner committed a batch of ``events`` events in ``seconds``."""
    if settings.METRICS_ENABLED:
        BATCH_SIZE.labels(projection).observe(events)
        BATCH_SECONDS.labels(projection).observe(seconds)


def set_runner_state(projection: str, state: str) -> None:
    """This process's runner of ``projection`` is now in ``state`` (one of RUNNER_STATES)."""
    if state not in RUNNER_STATES:
        raise ValueError(f"unknown runner state {state!r}")
    if settings.METRICS_ENABLED:
        for known in RUNNER_STATES:
            RUNNER_STATE.labels(projection, known).set(1 if known == state else 0)


@dataclass(frozen=True)
class ProjectionReading:
    """A projection as a scrape finds it (projections.management.commands.projection_status
    reads it from the checkpoints and the store)."""

    name: str
    position: int  # its checkpoint: the last event applied
    failed: bool  # its last runner stopped on an error, as /readyz and the overview say
    head: int | None = None  # the store's head; None when the store could not be asked
    lag_events: int | None = None  # events after the checkpoint, counted up to a cap
    oldest_unapplied: datetime | None = None  # when the first of them was recorded


def _clock() -> float:
    return time.time()


class ProjectionCollector(Collector):
    """Each projection's checkpoint, the store's head and the lag, read at scrape time."""

    def __init__(self, read: Callable[[], Iterable[ProjectionReading]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        try:
            readings = list(self.read())
        except Exception as e:  # a scrape must not fail: the other metrics still count
            logger.warning("metrics: could not read the projections: %s", e)
            return
        position = _gauge("payments_projection_checkpoint_position",
                          "The position of the last event the projection applied (its"
                          " checkpoint).")
        failed = _gauge("payments_projection_failed",
                        "1 while the projection's checkpoint records that its runner stopped on"
                        " an error (as /readyz and projection_status show), else 0.")
        head = _gauge("payments_projection_head_position",
                      "The event store's head position, as the lag is measured against.")
        lag_events = _gauge("payments_projection_lag_events",
                            "Events after the checkpoint, not yet applied (counted up to 1000).")
        lag_seconds = _gauge("payments_projection_lag_seconds",
                             "The age of the oldest event not yet applied (0: caught up).")
        now = _clock()
        for reading in readings:
            label = [reading.name]
            position.add_metric(label, reading.position)
            failed.add_metric(label, 1 if reading.failed else 0)
            if reading.head is None or reading.lag_events is None:
                continue  # the store did not answer: no number rather than a wrong one
            head.add_metric(label, reading.head)
            lag_events.add_metric(label, reading.lag_events)
            if reading.lag_events == 0:
                lag_seconds.add_metric(label, 0)
            elif reading.oldest_unapplied is not None:
                lag_seconds.add_metric(label,
                                       max(0.0, now - reading.oldest_unapplied.timestamp()))
        yield from (position, failed, head, lag_events, lag_seconds)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=["projection"])


# --- serving ----------------------------------------------------------------------------


class _Scrape(Collector):
    """What one scrape shows: several collectors, one after the other."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def _all_workers() -> Collector:
    """Under gunicorn (``PROMETHEUS_MULTIPROC_DIR`` set) every worker's values, summed from
    their files (dead workers' counts included); otherwise this process's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def access_allowed(remote_addr: str | None, authorization: str | None) -> bool:
    """Whether a scrape may see the metrics: it carries ``METRICS_TOKEN`` as a bearer token,
    or comes from an address of ``METRICS_ALLOWED_IPS``. With neither set, only with DEBUG on
    (``dev.py run``): production must set one of them, or nobody scrapes."""
    token: str = settings.METRICS_TOKEN
    networks: list[str] = settings.METRICS_ALLOWED_IPS
    if not token and not networks:
        return bool(settings.DEBUG)
    if token and authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode(), token.encode()
        ):
            return True
    if networks and remote_addr:
        try:
            address = ipaddress.ip_address(remote_addr)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # a server on [::] sees IPv4 peers as ::ffff:a.b.c.d
        return any(address in ipaddress.ip_network(network, strict=False)
                   for network in networks)
    return False


def _refused(remote_addr: str | None) -> None:
    logger.warning("metrics: refused a scrape from %s (see METRICS_TOKEN, METRICS_ALLOWED_IPS)",
                   remote_addr or "an unknown address")


def metrics_view(
    read_projections: Callable[[], Iterable[ProjectionReading]],
) -> Callable[[HttpRequest], HttpResponse]:
    """The web app's ``/metrics``: every worker's metrics and the projections'. A scrape
    that is not allowed gets the site's 404, as for a page that does not exist."""
    projections = ProjectionCollector(read_projections)

    @never_cache
    def metrics(request: HttpRequest) -> HttpResponse:
        if not settings.METRICS_ENABLED:
            raise Http404
        remote_addr = request.META.get("REMOTE_ADDR")
        if not access_allowed(remote_addr, request.headers.get("Authorization")):
            _refused(remote_addr)
            raise Http404
        if request.method not in ("GET", "HEAD"):
            return HttpResponseNotAllowed(["GET", "HEAD"])
        return HttpResponse(generate_latest(_Scrape(_all_workers(), projections)),
                            content_type=CONTENT_TYPE_LATEST)

    return metrics


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """A line per scrape would drown the runner's own lines."""


@contextmanager
def serving(
    port: int, address: str, read_projections: Callable[[], Iterable[ProjectionReading]]
) -> Iterator[tuple[str, int]]:
    """Serve this process's metrics and its projections' at ``http://address:port/metrics``
    (any path) for the block, in a thread; yields the address and port (port 0: a free one).

    A runner's own values, never the multiprocess files: those are the web workers'.
    The same access rule as ``/metrics``; a refused scrape gets a bare 404.
    """
    app = make_wsgi_app(_Scrape(REGISTRY, ProjectionCollector(read_projections)))

    def allowed_only(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if not access_allowed(environ.get("REMOTE_ADDR"), environ.get("HTTP_AUTHORIZATION")):
            _refused(environ.get("REMOTE_ADDR"))
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"Not Found\n"]
        try:
            return app(environ, start_response)
        finally:
            connections.close_all()  # this request's thread's: it ends now

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = make_server(address, port, allowed_only, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    try:
        host, bound = server.server_address[:2]
        yield str(host), int(bound)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
