"""The EventStoreDB adapter of the event store port, over esdbclient 1.1.7.

Why it looks the way it does:

* Every call carries a deadline (esdbclient sets none on reads), so a server that is
  down or silent gives ``EventStoreUnavailable`` instead of a hang. esdbclient's
  decorators retry a failed call once and reconnect once on ``ServiceUnavailable``;
  against a server that refuses connections that costs milliseconds, against one that
  swallows packets at most a few deadlines.
* esdbclient's errors are mapped here, at the boundary, so nothing else imports it.
* ``$all`` reads from a commit position include the event at that position, the
  port's ``after`` excludes it: the adapter drops it. Subscriptions from a position
  exclude it on the protocol level already.
* A subscription is read by a daemon thread into a queue, so ``get(timeout)`` can
  wait a bounded time although the gRPC stream itself has no deadline.
"""

from __future__ import annotations

import math
import queue
import re
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import grpc
from esdbclient import EventStoreDBClient
from esdbclient import NewEvent as EsdbNewEvent
from esdbclient import RecordedEvent as EsdbRecordedEvent
from esdbclient import StreamState as EsdbStreamState
from esdbclient.common import AbstractCatchupSubscription, GrpcOptions
from esdbclient.connection_spec import URI_SCHEME_ESDB_DISCOVER, ConnectionSpec
from esdbclient.exceptions import (
    DeadlineExceeded,
    DiscoveryFailed,
    EventStoreDBClientException,
    GrpcError,
    NotFound,
    ServiceUnavailable,
    WrongCurrentVersion,
)

from payments.eventstore.port import (
    AppendResult,
    Closing,
    EventStoreError,
    EventStoreUnavailable,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamNotFound,
    StreamState,
    Subscription,
    WrongExpectedVersion,
)

__all__ = ["EventStoreDBEventStore", "EventStoreDBSubscription"]

T = TypeVar("T")

# esdbclient's WrongCurrentVersion carries the actual revision only in its message.
_ACTUAL_REVISION = re.compile(r"Stream position of last event is (\d+)")


def _recorded(event: EsdbRecordedEvent) -> RecordedEvent:
    """esdbclient's recorded event as the port's."""
    return RecordedEvent(
        id=event.id,
        stream=event.stream_name,
        type=event.type,
        data=event.data,
        metadata=event.metadata,
        version=event.stream_position,
        position=event.commit_position if event.commit_position is not None else 0,
        recorded_at=event.recorded_at,
    )


def _is_event(item: object) -> bool:
    """True for a real event, False for a Checkpoint or CaughtUp (subclasses of it)."""
    return type(item) is EsdbRecordedEvent


def _closed_channel(error: BaseException) -> bool:
    """esdbclient's ValueError when a call meets a channel another thread just replaced."""
    text = str(error)
    return isinstance(error, ValueError) and (
        "Channel closed!" in text or "Cannot invoke RPC on closed channel!" in text
    )


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class _ErrorMapper:
    """Turns esdbclient's and gRPC's errors into the port's, never showing the password."""

    def __init__(self, spec: ConnectionSpec) -> None:
        self.target = ",".join(spec.targets)
        self._secret = spec.password or ""

    def _reason(self, error: BaseException) -> str:
        cause = error.args[0] if error.args else None
        if isinstance(cause, grpc.Call):  # GrpcError(rpc_error): say code and details
            reason = f"{cause.code().name}: {cause.details()}"
        else:
            reason = str(error) or type(error).__name__
        reason = f"{type(error).__name__}: {_one_line(reason)}"
        return reason.replace(self._secret, "***") if self._secret else reason

    def unavailable(self, error: BaseException) -> EventStoreUnavailable:
        return EventStoreUnavailable(
            f"EventStoreDB at {self.target} unavailable ({self._reason(error)})"
        )

    def map(
        self,
        error: BaseException,
        stream: str | None = None,
        expected: ExpectedVersion | None = None,
    ) -> EventStoreError:
        """The port's error for ``error`` (anything unexpected counts as unavailable)."""
        if isinstance(error, EventStoreError):
            return error
        if isinstance(error, WrongCurrentVersion) and stream is not None and expected is not None:
            match = _ACTUAL_REVISION.search(str(error))
            return WrongExpectedVersion(stream, expected, int(match[1]) if match else None)
        if isinstance(error, NotFound) and stream is not None:
            return StreamNotFound(stream)
        if isinstance(error, ServiceUnavailable | DiscoveryFailed | DeadlineExceeded | GrpcError):
            return self.unavailable(error)
        if isinstance(error, EventStoreDBClientException):
            # Access denied, stream deleted, bad request…: the server answered, with a no.
            return EventStoreError(f"EventStoreDB at {self.target}: {self._reason(error)}")
        return self.unavailable(error)  # raw gRPC errors, esdbclient's closed-channel ValueError


def _bounded_discovery(uri: str, timeout: float) -> str:
    """Bound gossip where esdbclient gossips and the URI does not say (default: 10 x 5 s).

    It gossips for ``esdb+discover://`` and for ``esdb://`` with several hosts (a
    cluster): it asks the nodes which one leads before the first call.
    """
    parts = urlsplit(uri)
    if parts.scheme != URI_SCHEME_ESDB_DISCOVER and "," not in parts.netloc:
        return uri
    query = parse_qsl(parts.query, keep_blank_values=True)
    given = {key.upper() for key, _ in query}
    if "GOSSIPTIMEOUT" not in given:
        query.append(("GossipTimeout", str(max(1, math.ceil(timeout)))))
    if "MAXDISCOVERATTEMPTS" not in given:
        query.append(("MaxDiscoverAttempts", "2"))
    return urlunsplit(parts._replace(query=urlencode(query)))


# EventStoreDB's own clients ping every 10 s and give up 10 s after an unanswered ping.
KEEPALIVE_INTERVAL_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 10_000


def keepalive_options(spec: ConnectionSpec) -> GrpcOptions:
    """HTTP/2 keepalive pings, at the URI's ``KeepAliveInterval``/``KeepAliveTimeout``.

    A subscription receives nothing while nothing is appended, so only an unanswered
    ping tells it that the connection died without a FIN or RST (a NAT or firewall
    that forgot it, a partition); then the call fails and the runner reconnects.
    esdbclient 1.1.7 sets the interval under a name gRPC does not know
    (``grpc.keepalive_ms``), so without this there are no pings and such a
    subscription waits for ever.
    """
    interval = spec.options.KeepAliveInterval or KEEPALIVE_INTERVAL_MS
    timeout = spec.options.KeepAliveTimeout or KEEPALIVE_TIMEOUT_MS
    return (
        ("grpc.keepalive_time_ms", interval),
        ("grpc.keepalive_timeout_ms", timeout),
        # gRPC's own pings (flow control's) wait 60 s for an answer, and while one is
        # out no keepalive ping is sent: give them the same timeout.
        ("grpc.http2.ping_timeout_ms", timeout),
        ("grpc.http2.max_pings_without_data", 0),  # a quiet subscription keeps pinging
    )


class _Client(EventStoreDBClient):
    """esdbclient's client on gRPC channels that fail fast and reconnect for real.

    * No transparent retries: with them (gRPC's default) grpcio 1.71 can strand a call
      that races the server's GOAWAY (a restart): it never completes, deadline or not.
      Without them it fails with UNAVAILABLE at once and is retried on a new channel.
    * A subchannel pool per channel: with gRPC's global pool, the new channel of a
      reconnect shares the old one's connection, still waiting out its reconnect
      backoff (1 s and growing), so the retry fails too although the server is back.
    * Keepalive pings that gRPC understands (``keepalive_options``).

    (This overrides a private esdbclient method; esdbclient is pinned.)
    """

    def _construct_grpc_channel(
        self, grpc_target: str, grpc_options: GrpcOptions = ()
    ) -> grpc.Channel:
        options = (
            *grpc_options,
            ("grpc.enable_retries", 0),
            ("grpc.use_local_subchannel_pool", 1),
            *keepalive_options(self.connection_spec),
        )
        return super()._construct_grpc_channel(grpc_target, options)


class EventStoreDBEventStore(Closing):
    """The event store port on EventStoreDB (``esdb://`` or ``esdb+discover://`` URIs).

    The esdbclient client is created on first use, so constructing the store never
    talks to the server; a malformed URI raises ``ValueError`` at once.
    """

    def __init__(self, uri: str, *, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self._uri = _bounded_discovery(uri, timeout)
        self._errors = _ErrorMapper(ConnectionSpec(self._uri))  # validates the URI
        self._client: EventStoreDBClient | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._subscriptions: set[EventStoreDBSubscription] = set()

    @property
    def target(self) -> str:
        """The server address(es), without credentials: safe for logs and messages."""
        return self._errors.target

    # --- plumbing -------------------------------------------------------------------------

    def _connected(self) -> EventStoreDBClient:
        """The client, created once (for esdb+discover that gossips, hence under the lock)."""
        with self._lock:
            if self._closed:
                raise EventStoreError(f"the event store for {self.target} is closed")
            if self._client is None:
                self._client = _Client(self._uri)
            return self._client

    @contextmanager
    def _boundary(
        self, stream: str | None = None, expected: ExpectedVersion | None = None
    ) -> Iterator[None]:
        """Map esdbclient's errors to the port's, chaining the original."""
        try:
            yield
        except (EventStoreDBClientException, grpc.RpcError) as e:
            raise self._errors.map(e, stream, expected) from e
        except ValueError as e:
            if not _closed_channel(e):
                raise
            raise self._errors.unavailable(e) from e

    def _reconnecting(self, call: Callable[[EventStoreDBClient], T]) -> T:
        """Run ``call``, reconnecting and retrying once if the channel is unavailable.

        For esdbclient methods without ``@autoreconnect`` (``read_all``): after a server
        restart the old channel may still be waiting out its reconnect backoff and fail
        fast meanwhile; a new channel (with its own subchannel, see ``_Client``) does not.
        """
        client = self._connected()
        try:
            return call(client)
        except (ServiceUnavailable, ValueError) as e:
            if isinstance(e, ValueError) and not _closed_channel(e):
                raise
            client.reconnect()
            return call(client)

    def _filter(self, category: str) -> tuple[str]:
        return (f"{re.escape(category)}-.*",)

    # --- the port -------------------------------------------------------------------------

    def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        """Append as one batch (esdbclient's BatchAppend); repeats return the original result."""
        if not events:
            raise ValueError("nothing to append")
        if isinstance(expected_version, StreamState):
            current: int | EsdbStreamState = (
                EsdbStreamState.NO_STREAM
                if expected_version is StreamState.NO_STREAM
                else EsdbStreamState.ANY
            )
        elif expected_version < 0:
            raise ValueError(f"expected version {expected_version} is negative")
        else:
            current = int(expected_version)
        batch = [
            EsdbNewEvent(
                type=e.type,
                data=e.data,
                metadata=e.metadata,
                content_type="application/json",
                id=e.id,
            )
            for e in events
        ]
        with self._boundary(stream, expected_version):
            client = self._connected()
            position = client.append_to_stream(
                stream, current_version=current, events=batch, timeout=self.timeout
            )
            if expected_version is StreamState.ANY:
                return self._located(client, stream, events[-1].id)
            if expected_version is StreamState.NO_STREAM:
                version = len(events) - 1
            else:
                version = int(expected_version) + len(events)
            if position <= 0:
                # Some servers answer a repeated (idempotent) append without a position.
                return AppendResult(version, self._position_at(client, stream, version))
            return AppendResult(version=version, position=position)

    def _located(self, client: EventStoreDBClient, stream: str, event_id: UUID) -> AppendResult:
        """Where the event ``event_id`` sits (ANY appends: the server does not say)."""
        last = client.get_stream(stream, backwards=True, limit=1, timeout=self.timeout)
        candidates = (
            last
            if last and last[0].id == event_id
            else client.get_stream(stream, backwards=True, timeout=self.timeout)
        )
        for event in candidates:
            if event.id == event_id and event.commit_position is not None:
                return AppendResult(version=event.stream_position, position=event.commit_position)
        raise EventStoreError(f"appended event {event_id} not found in stream {stream!r}")

    def _position_at(self, client: EventStoreDBClient, stream: str, version: int) -> int:
        events = client.get_stream(stream, stream_position=version, limit=1, timeout=self.timeout)
        if not events or events[0].commit_position is None:
            raise EventStoreError(f"no position for {stream!r} version {version}")
        return events[0].commit_position

    def read_stream(self, stream: str) -> list[RecordedEvent]:
        """All events of one stream in version order; ``StreamNotFound`` if none."""
        with self._boundary(stream):
            events = self._connected().get_stream(stream, timeout=self.timeout)
        if not events:
            raise StreamNotFound(stream)
        return [_recorded(e) for e in events]

    def read_all(
        self, *, after: int | None = None, category: str = "payments", limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of ``<category>-…`` streams with position > ``after``, in position order."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit {limit} is negative")
        if limit == 0:
            return []
        # A read from `after` returns the event at `after` too: ask for one more.
        requested = sys.maxsize if limit is None else limit + (after is not None)

        def read(client: EventStoreDBClient) -> list[EsdbRecordedEvent]:
            with client.read_all(
                commit_position=after,
                filter_include=self._filter(category),
                filter_by_stream_name=True,
                limit=requested,
                timeout=self.timeout,
            ) as events:
                return [e for e in events if _is_event(e)]

        with self._boundary():
            events = self._reconnecting(read)
        found = [
            _recorded(e)
            for e in events
            if after is None or (e.commit_position is not None and e.commit_position > after)
        ]
        return found if limit is None else found[:limit]

    def subscribe(
        self, *, after: int | None = None, category: str = "payments"
    ) -> EventStoreDBSubscription:
        """A catch-up subscription from just after ``after``; raises if the server is down."""
        with self._boundary():
            client = self._connected()

        def open_subscription() -> AbstractCatchupSubscription:
            # No deadline: the call lives as long as the subscription. esdbclient reads
            # the confirmation here, so a refused connection fails at once; a silent
            # server is bounded by the wait in EventStoreDBSubscription.
            return client.subscribe_to_all(
                commit_position=after,
                filter_include=self._filter(category),
                filter_by_stream_name=True,
                timeout=None,
            )

        subscription = EventStoreDBSubscription(
            open_subscription, after=after, errors=self._errors, timeout=self.timeout
        )
        with self._lock:
            self._subscriptions.add(subscription)
            closed = self._closed
        if closed:
            subscription.close()
            raise EventStoreError(f"the event store for {self.target} is closed")
        subscription.on_close = self._forget
        return subscription

    def _forget(self, subscription: EventStoreDBSubscription) -> None:
        with self._lock:
            self._subscriptions.discard(subscription)

    def head_position(self, *, category: str = "payments") -> int:
        """The position of the category's last event, 0 when there is none."""
        with self._boundary():
            position = self._connected().get_commit_position(
                filter_include=self._filter(category),
                filter_by_stream_name=True,
                timeout=self.timeout,
            )
        return position or 0

    def close(self) -> None:
        """Close subscriptions and the client (esdbclient's destructor is noisy at exit)."""
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            subscriptions = list(self._subscriptions)
            self._subscriptions.clear()
        for subscription in subscriptions:
            subscription.close()
        if client is not None:
            with suppress(Exception):  # closing must not fail; the channel is gone anyway
                client.close()



class _Failed:
    """What the reading thread queues when the subscription broke."""

    def __init__(self, error: EventStoreError) -> None:
        self.error = error


_WAKE = object()  # queued by close() so a blocked get() returns at once


class EventStoreDBSubscription(Subscription):
    """The port's ``Subscription`` over an esdbclient catch-up subscription.

    A daemon thread iterates the gRPC stream into a queue. ``get`` returns events in
    order; once the stream broke, ``get`` raises ``EventStoreUnavailable`` (after
    the events that came before the break), and keeps raising on later calls.
    """

    def __init__(
        self,
        open_subscription: Callable[[], AbstractCatchupSubscription],
        *,
        after: int | None,
        errors: _ErrorMapper,
        timeout: float,
    ) -> None:
        self._open = open_subscription
        self._after = after
        self._errors = errors
        self._queue: queue.Queue[RecordedEvent | _Failed | object] = queue.Queue()
        self._closed = threading.Event()
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._inner: AbstractCatchupSubscription | None = None
        self._start_error: EventStoreError | None = None
        self._error: EventStoreError | None = None
        self._timeout = timeout
        self.on_close: Callable[[EventStoreDBSubscription], None] | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"esdb-subscription {errors.target}", daemon=True
        )
        self._thread.start()
        if not self._started.wait(timeout):
            self.close()
            raise EventStoreUnavailable(
                f"EventStoreDB at {errors.target} unavailable"
                f" (no subscription confirmation within {timeout:g} s)"
            )
        if self._start_error is not None:
            self.close()
            raise self._start_error

    def _run(self) -> None:
        """The reading thread: confirmation, then events into the queue until stopped."""
        try:
            inner = self._open()
        except BaseException as e:  # reported to the subscriber
            self._start_error = self._as_port_error(e)
            self._started.set()
            return
        with self._lock:
            if self._closed.is_set():
                inner.stop()
                return
            self._inner = inner
        self._started.set()
        try:
            for item in inner:
                if self._closed.is_set():
                    break
                if not _is_event(item):
                    continue
                event = _recorded(item)
                if self._after is not None and event.position <= self._after:
                    continue
                self._queue.put(event)
            else:
                if not self._closed.is_set():
                    raise EventStoreUnavailable(
                        f"EventStoreDB at {self._errors.target}: the subscription ended"
                    )
        except BaseException as e:  # reported to the subscriber
            if not self._closed.is_set():
                self._queue.put(_Failed(self._as_port_error(e)))
        finally:
            inner.stop()

    def _as_port_error(self, error: BaseException) -> EventStoreError:
        mapped = self._errors.map(error)
        if mapped is not error:
            mapped.__cause__ = error
        return mapped

    def _raise(self, error: EventStoreError) -> None:
        raise EventStoreUnavailable(str(error)) from (error.__cause__ or error)

    def get(self, timeout: float) -> RecordedEvent | None:
        """The next event, or None if none came within ``timeout`` (or once closed)."""
        if self._error is not None:
            self._raise(self._error)
        if self._closed.is_set():
            return None
        try:
            item = self._queue.get(timeout=max(timeout, 0))
        except queue.Empty:
            return None
        if isinstance(item, _Failed):
            self._error = item.error
            self._raise(item.error)
        if isinstance(item, RecordedEvent):
            return item
        self._queue.put(_WAKE)  # let other blocked getters see the close too
        return None

    def close(self) -> None:
        """Stop the gRPC stream and the reading thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            inner = self._inner
        if inner is not None:
            with suppress(Exception):  # the call is gone either way
                inner.stop()
        self._queue.put(_WAKE)
        if threading.current_thread() is not self._thread:
            self._thread.join(self._timeout)
        if self.on_close is not None:
            self.on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
