"""The EventStoreDB adapter of the event store port, over esdbclient 1.1.7.

Why it looks the way it does:

* Every call carries a deadline (esdbclient sets none on reads), so a server that is
  down or silent gives ``EventStoreUnavailable`` instead of a hang.
* One retry rule, for every call (``_reconnecting``; esdbclient's own retries are
  off): a follower's "not leader" answer reconnects to the leader it names, an
  unavailable node reconnects (by gossip for a cluster URI), and the call runs once
  more if its deadline has not passed; a second failure is ``EventStoreUnavailable``.
  A subscription that a follower confirms and then refuses is opened again the same
  way.
* esdbclient's errors are mapped here, at the boundary, so nothing else imports it.
* ``$all`` reads from a commit position include the event at that position, the
  port's ``after`` excludes it: the adapter drops it. Subscriptions from a position
  exclude it on the protocol level already.
* A subscription is read by a daemon thread into a bounded queue, so ``get(timeout)``
  can wait a bounded time although the gRPC stream itself has no deadline, and a
  consumer that falls behind stops the thread, which stops reading the stream, which
  lets gRPC's flow control stop the server: a catch-up of any length holds at most
  ``BUFFER`` events here (plus what one HTTP/2 window holds).
* The server's checkpoints (sent while it scans past other categories) are passed on
  as the subscription's ``position``, so a runner's checkpoint keeps up on a store
  busy with other categories.
"""

from __future__ import annotations

import inspect
import logging
import math
import queue
import re
import sys
import threading
import time
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
from esdbclient.events import CaughtUp as EsdbCaughtUp
from esdbclient.events import Checkpoint as EsdbCheckpoint
from esdbclient.exceptions import (
    AccessDeniedError,
    DeadlineExceeded,
    DiscoveryFailed,
    EventStoreDBClientException,
    GrpcError,
    NodeIsNotLeader,
    NotFound,
    ServiceUnavailable,
    StreamIsDeleted,
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

logger = logging.getLogger(__name__)

BUFFER = 1000  # events a subscription holds for its consumer: a runner's batch
# Until the server says the subscription is live, a batch may wait this long to fill:
# the reading thread hands over events a few at a time, and a catch-up committed in
# batches of seven (one durable commit each) ran at a seventh of the embedded store's.
CATCH_UP_LINGER = 0.05  # seconds

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


def _retryable(error: BaseException, idempotent: bool) -> bool:
    """Whether a call that failed with ``error`` may run once more, after a reconnect.

    A follower's refusal (``NodeIsNotLeader``): always, it did nothing. A node that is
    unavailable (or another gRPC failure, or a channel another thread closed): only an
    ``idempotent`` call, since the first attempt may have been carried out. A deadline
    that passed, or access denied: never.
    """
    if isinstance(error, NodeIsNotLeader):
        return True
    if isinstance(error, DeadlineExceeded) or _access_denied(error):
        return False
    return idempotent and (isinstance(error, GrpcError) or _closed_channel(error))


def _access_denied(error: BaseException) -> bool:
    """The server refused the user (esdbclient leaves PERMISSION_DENIED a GrpcError)."""
    if isinstance(error, AccessDeniedError):
        return True
    cause = error if isinstance(error, grpc.Call) else error.args[0] if error.args else None
    return isinstance(cause, grpc.Call) and cause.code() in (
        grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED
    )


def _leader(error: BaseException) -> str | None:
    """The leader (``host:port``) that a follower's refusal names, if it names one."""
    if isinstance(error, NodeIsNotLeader):
        with suppress(KeyError, TypeError):  # trailers without the leader's address
            return error.leader_grpc_target
    return None


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
        if isinstance(error, NotFound | StreamIsDeleted) and stream is not None:
            return StreamNotFound(stream)  # a tombstoned stream has no events either
        if _access_denied(error):
            # Retrying will not help until someone grants access: a plain error, not
            # "unavailable" (a runner stops and says so instead of retrying for ever).
            return EventStoreError(
                f"EventStoreDB at {self.target}: access denied ({self._reason(error)}); the"
                " user needs read on $all to run projections (see the README)"
            )
        if isinstance(error, ServiceUnavailable | DiscoveryFailed | DeadlineExceeded | GrpcError
                      | NodeIsNotLeader):  # a follower, still after a reconnect: an election
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
    * No retries of esdbclient's own: its decorators retry these calls up to three more
      times (``@retrygrpc`` any gRPC error after 0.1 s, ``@autoreconnect`` unavailable,
      and "not leader" only for a cluster URI), each with a full deadline. The adapter's
      ``_reconnecting`` is the one rule instead, so the undecorated methods.
    * ``reconnect_after``: replaces a connection only if no other thread did already,
      so one thread's reconnect never closes the channel another has just retried on.

    (This overrides and reads private esdbclient members; esdbclient is pinned.)
    """

    append_to_stream = inspect.unwrap(EventStoreDBClient.append_to_stream)
    get_stream = inspect.unwrap(EventStoreDBClient.get_stream)
    get_commit_position = inspect.unwrap(EventStoreDBClient.get_commit_position)
    subscribe_to_all = inspect.unwrap(EventStoreDBClient.subscribe_to_all)

    @property
    def connection(self) -> object:
        """The connection calls use now (compared by identity in ``reconnect_after``)."""
        return self._connection

    def reconnect_after(self, failed: object, error: BaseException) -> None:
        """Replace the connection ``failed``, unless another thread replaced it already:
        with one to the leader ``error`` names (a ``NodeIsNotLeader``), else as esdbclient
        connects (gossip for a cluster URI, else the URI's node)."""
        with self._reconnection_lock:
            if self._connection is not failed:
                return
            old, self._connection = self._connection, self._connect(_leader(error))
        old.close()

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


class _RefusedAfterConfirmation:
    """An esdbclient catch-up subscription, opened once more if a follower refuses it.

    EventStoreDB confirms a subscription before its first read of the log, so a
    follower refuses it only then (NOT_FOUND "Leader info available", see
    ``tests/esdb_double.py``'s cluster): esdbclient's ``subscribe_to_all`` has returned,
    and ``NodeIsNotLeader`` is the first thing on the stream. Before anything came, that
    refusal is the opening's, and the store's retry rule (``recover``) applies to it: the
    subscription is opened once more, on the leader named. A refusal after something came
    ends the stream like any other failure (the subscriber resubscribes from its own
    position, and its next call meets the retry rule).
    """

    def __init__(
        self,
        client: _Client,
        open_subscription: Callable[[_Client], AbstractCatchupSubscription],
        recover: Callable[[_Client, object, BaseException, float], None],
    ) -> None:
        self._client = client
        self._open = open_subscription
        self._recover = recover
        self._connection, self._opened = client.connection, time.monotonic()
        self._lock = threading.Lock()
        self._stopped = False
        self._received = self._retried = False
        self._inner = open_subscription(client)
        self._items = iter(self._inner)

    def __iter__(self) -> _RefusedAfterConfirmation:
        return self

    def __next__(self) -> object:
        try:
            item = next(self._items)
        except NodeIsNotLeader as e:
            if self._received or self._retried:
                raise
            self._retried = True
            self._recover(self._client, self._connection, e, self._opened)  # or raises
            inner = self._open(self._client)
            with self._lock:
                self._inner, stopped = inner, self._stopped
            if stopped:  # stop() came while the new one was opening
                inner.stop()
                raise StopIteration from None
            self._items = iter(inner)
            item = next(self._items)  # a second refusal goes to the subscriber
        self._received = True
        return item

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            inner = self._inner
        inner.stop()

    def __getattr__(self, name: str) -> object:  # subscription_id and the like
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)


class EventStoreDBEventStore(Closing):
    """The event store port on EventStoreDB (``esdb://`` or ``esdb+discover://`` URIs).

    The esdbclient client is created on first use, so constructing the store never
    talks to the server; a malformed URI raises ``ValueError`` at once.
    """

    def __init__(
        self, uri: str, *, timeout: float = 5.0, subscription_buffer: int = BUFFER
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout
        self.subscription_buffer = subscription_buffer
        self._uri = _bounded_discovery(uri, timeout)
        self._errors = _ErrorMapper(ConnectionSpec(self._uri))  # validates the URI
        self._client: _Client | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._subscriptions: set[EventStoreDBSubscription] = set()

    @property
    def target(self) -> str:
        """The server address(es), without credentials: safe for logs and messages."""
        return self._errors.target

    # --- plumbing -------------------------------------------------------------------------

    def _connected(self) -> _Client:
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

    def _reconnecting(self, call: Callable[[_Client], T], *, idempotent: bool = True) -> T:
        """Run ``call``; if it fails in a way another node or a new channel may not,
        reconnect and run it once more (``_recover``). Every call of the port goes
        through here, so a leader change or a server restart costs one retry, not an
        error; a second failure goes to the caller (``_boundary``: unavailable).

        ``idempotent=False`` (an append with expected version ``any``): no retry after
        an unavailable node, which may have written it (only a "not leader" answer says
        that nothing was done).
        """
        client = self._connected()
        connection, started = client.connection, time.monotonic()
        try:
            return call(client)
        except (EventStoreDBClientException, ValueError) as e:
            self._recover(client, connection, e, started, idempotent=idempotent)
        return call(client)

    def _recover(
        self,
        client: _Client,
        connection: object,
        error: BaseException,
        started: float,
        *,
        idempotent: bool = True,
    ) -> None:
        """The retry rule: raise ``error`` unless it is retryable (``_retryable``) and the
        call's deadline (``timeout`` from ``started``) has not passed; else reconnect: to
        the leader a follower named, or anew (after a restart the old channel may still
        wait out its reconnect backoff; a new one, with its own subchannel, does not)."""
        if (self._closed or not _retryable(error, idempotent)
                or time.monotonic() - started >= self.timeout):
            raise error  # closed meanwhile: a new connection would never be closed
        leader = _leader(error)
        # DEBUG: a retry that works is routine (a restart, an election); one that fails
        # is EventStoreUnavailable, which its caller logs (and the CLI's stderr is one line).
        logger.debug("EventStoreDB at %s: %s; reconnecting%s and trying once more",
                    self.target, self._errors._reason(error), f" to the leader at {leader}"
                    if leader else "")
        client.reconnect_after(connection, error)

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
            # A retry carries the same event ids: for an exact or no-stream expected
            # version the server takes a repeat as the first append (idempotency), so a
            # retry after a lost answer (a leader that crashed after writing) stores
            # nothing twice. For ``any`` the server only remembers recent ids in memory.
            position = self._reconnecting(
                lambda client: client.append_to_stream(
                    stream, current_version=current, events=batch, timeout=self.timeout
                ),
                idempotent=expected_version is not StreamState.ANY,
            )
            if expected_version is StreamState.ANY:
                return self._reconnecting(
                    lambda client: self._located(client, stream, events[-1].id)
                )
            if expected_version is StreamState.NO_STREAM:
                version = len(events) - 1
            else:
                version = int(expected_version) + len(events)
            if position <= 0:
                # Some servers answer a repeated (idempotent) append without a position.
                return AppendResult(version, self._reconnecting(
                    lambda client: self._position_at(client, stream, version)
                ))
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
            events = self._reconnecting(
                lambda client: client.get_stream(stream, timeout=self.timeout)
            )
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

        def read(client: _Client) -> list[EsdbRecordedEvent]:
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
            self._connected()

        def open_subscription() -> AbstractCatchupSubscription:
            # In the subscription's thread, through the retry rule; a follower's refusal
            # after its confirmation too (_RefusedAfterConfirmation).
            return self._reconnecting(
                lambda client: _RefusedAfterConfirmation(client, subscribe_to_all, self._recover)
            )

        def subscribe_to_all(client: _Client) -> AbstractCatchupSubscription:
            # No deadline: the call lives as long as the subscription. esdbclient reads
            # the confirmation here, so a refused connection fails at once; a silent
            # server is bounded by the wait in EventStoreDBSubscription.
            return client.subscribe_to_all(
                commit_position=after,
                filter_include=self._filter(category),
                filter_by_stream_name=True,
                include_checkpoints=True,  # become the subscription's position
                include_caught_up=True,  # from then on, batches take only what is there
                timeout=None,
            )

        subscription = EventStoreDBSubscription(
            open_subscription, after=after, errors=self._errors, timeout=self.timeout,
            buffer=self.subscription_buffer,
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
        """The position of the last event of ``$all``: at or after the category's last.

        One unfiltered backward read of one event. The category's own last event would
        take a filtered backward read, which the server answers by scanning ``$all`` until
        it finds one: all of it on a store with no such event yet. The port allows any
        position at or after the category's last event: lag is counted in events, and a
        runner reaches this position through the server's checkpoints.
        """
        with self._boundary():
            position = self._reconnecting(lambda client: client.get_commit_position(
                filter_exclude=(), timeout=self.timeout
            ))
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


class _Checkpoint:
    """What the reading thread queues for a server checkpoint: the server has looked at
    everything up to ``position`` and sent every matching event before this."""

    __slots__ = ("position",)

    def __init__(self, position: int) -> None:
        self.position = position


_WAKE = object()  # queued by close() so a blocked get() returns at once
_CAUGHT_UP = object()  # queued when the server says the history is done: live from here


class EventStoreDBSubscription(Subscription):
    """The port's ``Subscription`` over an esdbclient catch-up subscription.

    A daemon thread iterates the gRPC stream into a bounded queue: when the consumer
    falls behind, the thread waits for room and stops reading the stream, and HTTP/2
    flow control stops the server (back-pressure instead of the whole history in
    memory). ``get`` returns events in order; once the stream broke, ``get`` raises
    ``EventStoreUnavailable`` (after the events that came before the break), and keeps
    raising on later calls.
    """

    def __init__(
        self,
        open_subscription: Callable[[], AbstractCatchupSubscription],
        *,
        after: int | None,
        errors: _ErrorMapper,
        timeout: float,
        buffer: int = BUFFER,
    ) -> None:
        if buffer < 1:
            raise ValueError("buffer must hold at least one event")
        self._open = open_subscription
        self._after = after
        self._position = after
        self._errors = errors
        self._queue: queue.Queue[RecordedEvent | _Checkpoint | _Failed | object] = (
            queue.Queue(maxsize=buffer)
        )
        self._closed = threading.Event()
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._inner: AbstractCatchupSubscription | None = None
        self._start_error: EventStoreError | None = None
        self._error: EventStoreError | None = None
        self._timeout = timeout
        self.live = False  # the server said the history is done (its "caught up")
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

    @property
    def buffered(self) -> int:
        """How many items wait for the consumer now (never more than the buffer)."""
        return self._queue.qsize()

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
                if isinstance(item, EsdbCheckpoint):
                    if item.commit_position is not None:
                        self._put(_Checkpoint(item.commit_position))
                    continue
                if isinstance(item, EsdbCaughtUp):
                    self._put(_CAUGHT_UP)
                    continue
                if not _is_event(item):
                    continue
                event = _recorded(item)
                if self._after is not None and event.position <= self._after:
                    continue
                self._put(event)
            else:
                if not self._closed.is_set():
                    raise EventStoreUnavailable(
                        f"EventStoreDB at {self._errors.target}: the subscription ended"
                    )
        except BaseException as e:  # reported to the subscriber
            if not self._closed.is_set():
                self._put(_Failed(self._as_port_error(e)))
        finally:
            inner.stop()

    def _put(self, item: RecordedEvent | _Checkpoint | _Failed) -> None:
        """Wait for room in the queue: this wait is the back-pressure. close() empties
        the queue, so a waiting put returns at once and the loop sees the close."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

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
        deadline = time.monotonic() + max(timeout, 0)
        while not self._closed.is_set():
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                return None
            if isinstance(item, RecordedEvent):
                self._position = item.position
                return item
            if item is _CAUGHT_UP:
                self.live = True
                continue
            if isinstance(item, _Checkpoint):
                # Servers may repeat an older checkpoint: the position never goes back.
                if self._position is None or item.position > self._position:
                    self._position = item.position
                continue
            if isinstance(item, _Failed):
                self._error = item.error
                self._raise(item.error)
            with suppress(queue.Full):  # let other blocked getters see the close too
                self._queue.put_nowait(_WAKE)
            return None
        return None

    @property
    def position(self) -> int | None:
        return self._position

    def fill_wait(self, started: float) -> float:
        """While catching up, a batch may wait up to ``CATCH_UP_LINGER`` to fill; once
        live, it takes only what has already arrived (a lone live event is not held)."""
        return 0.0 if self.live else max(started + CATCH_UP_LINGER - time.monotonic(), 0.0)

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
        with self._queue.mutex:  # nothing will be read any more; wake a waiting put
            self._queue.queue.clear()
            self._queue.not_full.notify_all()
        self._queue.put_nowait(_WAKE)
        if threading.current_thread() is not self._thread:
            self._thread.join(self._timeout)
        if self.on_close is not None:
            self.on_close(self)

    @property
    def closed(self) -> bool:
        return self._closed.is_set()
