"""A protocol-level test double of EventStoreDB: an in-process gRPC server.

This is NOT EventStoreDB and not a fake of the port. It speaks, over real gRPC on
127.0.0.1, the subset of the EventStoreDB client protocol that esdbclient 1.1.7 uses
for ``payments.eventstore.esdb.EventStoreDBEventStore``, so the adapter's wire-level
behaviour (deadlines, error mapping, reconnects, position arithmetic) can be tested
without a server process. It is built on the servicer stubs esdbclient ships:

* ``streams.Streams/Append`` (client stream: options, then proposed messages) and
  ``BatchAppend`` (bidi stream: options + proposed messages + ``is_final``), with
  the expected-version checks (revision, no_stream, any, stream_exists) and
  EventStoreDB's idempotency: re-appending the same event ids at the same place
  succeeds with the original positions and appends nothing;
* ``streams.Streams/Read``: stream reads (forwards/backwards, from a revision,
  limit, ``stream_not_found``), ``$all`` reads from a commit position with the
  stream-name or event-type filter, and catch-up subscriptions (confirmation first,
  then history, a checkpoint and ``caught_up``, then live appends until cancelled);
* ``gossip.Gossip/Read``: one live leader member, so ``esdb+discover://`` works.

Semantics mimicked from EventStoreDB: positions are non-dense and strictly
increasing, commit position == prepare position per event; a read of ``$all``
forwards from P includes P, backwards from P excludes it; a subscription from P
excludes P; filter regexes are searched (like .NET ``Regex.IsMatch``), which is
what makes esdbclient's ``^(?!…)`` exclude filters work; event ids come back in the
form the client asked for (esdbclient asks for strings and drops events whose id
has no string form); ``created`` is 100 ns ticks since the Unix epoch.

The data lives in memory and survives ``stop()``/``restart()``, which rebinds the
same port, so tests can take the "server" away and bring it back.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import grpc
from esdbclient.protos.Grpc import (
    code_pb2,
    gossip_pb2,
    gossip_pb2_grpc,
    shared_pb2,
    status_pb2,
    streams_pb2,
    streams_pb2_grpc,
)
from google.protobuf import any_pb2, empty_pb2

from payments.eventstore.port import Closing

HOST = "127.0.0.1"
FIRST_POSITION = 1000  # EventStoreDB's first user events are never at position 0
POSITION_STEP = 137  # positions are not dense, so nothing may assume +1
WAKE_INTERVAL = 0.5  # a live subscription re-checks that its call is alive this often

_Options = streams_pb2.ReadReq.Options
_ReadEvent = streams_pb2.ReadResp.ReadEvent


@dataclass(frozen=True)
class _Record:
    """One stored event, as the double keeps it."""

    stream: str
    revision: int
    event_id: str
    type: str
    content_type: str
    data: bytes
    custom_metadata: bytes
    created: int  # 100 ns ticks since the Unix epoch
    position: int


@dataclass(frozen=True)
class _Proposed:
    """One event of an append request, decoded."""

    event_id: str
    type: str
    content_type: str
    data: bytes
    custom_metadata: bytes


@dataclass(frozen=True)
class _Expected:
    """The expected stream state of an append: kind is revision/no_stream/any/stream_exists."""

    kind: str
    revision: int = -1


@dataclass(frozen=True)
class _Written:
    """A successful (or idempotently repeated) append."""

    revision: int  # the stream's revision after the append, -1 if it has no events
    position: int | None  # the last event's position, None when nothing was written
    repeated: bool = False  # True: an idempotent repeat, nothing was written


@dataclass(frozen=True)
class _Conflict:
    """A failed expected-version check."""

    current: int | None  # None: the stream does not exist


class _Log:
    """The store: all records in commit order, and per stream; one condition guards both."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.records: list[_Record] = []
        self.streams: dict[str, list[_Record]] = {}
        self._next_position = FIRST_POSITION

    def append(
        self, stream: str, expected: _Expected, proposed: list[_Proposed]
    ) -> _Written | _Conflict:
        """Check the expectation and write atomically, or repeat an earlier identical write."""
        with self.changed:
            events = self.streams.get(stream, [])
            current = len(events) - 1
            if expected.kind in ("revision", "no_stream"):
                if current != expected.revision:
                    return self._repeated(events, expected.revision + 1, proposed) or _Conflict(
                        current if events else None
                    )
            else:
                if expected.kind == "stream_exists" and not events:
                    return _Conflict(None)
                ids = [p.event_id for p in proposed]
                known = {r.event_id: r.revision for r in events}
                if proposed and ids[0] in known:
                    repeated = self._repeated(events, known[ids[0]], proposed)
                    return repeated or _Conflict(current)
                if any(i in known for i in ids):
                    return _Conflict(current)
            if not proposed:
                return _Written(current, None)
            created = time.time_ns() // 100
            for offset, p in enumerate(proposed):
                record = _Record(
                    stream=stream,
                    revision=current + 1 + offset,
                    event_id=p.event_id,
                    type=p.type,
                    content_type=p.content_type,
                    data=p.data,
                    custom_metadata=p.custom_metadata,
                    created=created,
                    position=self._next_position,
                )
                self._next_position += POSITION_STEP
                self.records.append(record)
                self.streams.setdefault(stream, []).append(record)
            self.changed.notify_all()
            return _Written(self.streams[stream][-1].revision, self.records[-1].position)

    @staticmethod
    def _repeated(events: list[_Record], start: int, proposed: list[_Proposed]) -> _Written | None:
        """The original outcome if ``proposed`` are exactly the events stored from ``start``."""
        stored = events[start : start + len(proposed)] if start >= 0 else []
        if not proposed or [r.event_id for r in stored] != [p.event_id for p in proposed]:
            return None
        return _Written(stored[-1].revision, stored[-1].position, repeated=True)

    def wake(self) -> None:
        """Wake every waiting subscription (a call ended or the server stops)."""
        with self.changed:
            self.changed.notify_all()


def _uuid_message(value: str, structured: bool) -> shared_pb2.UUID:
    """An event id in the form the reader asked for (esdbclient asks for strings)."""
    if not structured:
        return shared_pb2.UUID(string=value)
    bits = uuid.UUID(value).int
    most, least = bits >> 64, bits & ((1 << 64) - 1)
    return shared_pb2.UUID(
        structured=shared_pb2.UUID.Structured(
            most_significant_bits=most - (1 << 64) if most >= 1 << 63 else most,
            least_significant_bits=least - (1 << 64) if least >= 1 << 63 else least,
        )
    )


def _uuid_string(message: shared_pb2.UUID) -> str:
    """An event id of a request, whichever form the client sent."""
    if message.WhichOneof("value") == "structured":
        most = message.structured.most_significant_bits % (1 << 64)
        least = message.structured.least_significant_bits % (1 << 64)
        return str(uuid.UUID(int=(most << 64) | least))
    return str(uuid.UUID(message.string))


def _proposed(messages: Iterable[Any]) -> list[_Proposed]:
    """Decode Append/BatchAppend proposed messages (both have the same fields)."""
    return [
        _Proposed(
            event_id=_uuid_string(m.id),
            type=m.metadata.get("type", ""),
            content_type=m.metadata.get("content-type", "application/octet-stream"),
            data=m.data,
            custom_metadata=m.custom_metadata,
        )
        for m in messages
    ]


def _expected(options: Any, revision_field: str) -> _Expected:
    """The expected state of Append (``revision``) or BatchAppend (``stream_position``) options."""
    which = options.WhichOneof(
        "expected_stream_revision" if revision_field == "revision" else "expected_stream_position"
    )
    if which == revision_field:
        return _Expected("revision", getattr(options, revision_field))
    if which == "no_stream":
        return _Expected("no_stream", -1)
    if which == "stream_exists":
        return _Expected("stream_exists")
    return _Expected("any")


def _read_resp(record: _Record, structured: bool) -> streams_pb2.ReadResp:
    """A recorded event on the wire; positions go on both the read event and the record."""
    event = _ReadEvent.RecordedEvent(
        id=_uuid_message(record.event_id, structured),
        stream_identifier=shared_pb2.StreamIdentifier(stream_name=record.stream.encode()),
        stream_revision=record.revision,
        prepare_position=record.position,
        commit_position=record.position,
        metadata={
            "type": record.type,
            "content-type": record.content_type,
            "created": str(record.created),
        },
        custom_metadata=record.custom_metadata,
        data=record.data,
    )
    return streams_pb2.ReadResp(event=_ReadEvent(event=event, commit_position=record.position))


def _filter(options: Any) -> Callable[[_Record], bool]:
    """The predicate of a ``$all`` read's filter option (regex is searched, like .NET)."""
    if options.WhichOneof("filter_option") != "filter":
        return lambda record: True
    which = options.filter.WhichOneof("filter")
    expression = getattr(options.filter, which)

    def key(record: _Record) -> str:
        return record.stream if which == "stream_identifier" else record.type

    if expression.regex:
        pattern = re.compile(expression.regex)
        return lambda record: pattern.search(key(record)) is not None
    prefixes = tuple(expression.prefix)
    return lambda record: key(record).startswith(prefixes)


class _Streams(streams_pb2_grpc.StreamsServicer):
    """The ``event_store.client.streams.Streams`` service over a ``_Log``."""

    def __init__(self, log: _Log, serving: threading.Event, idempotent_position: bool) -> None:
        self._log = log
        self._serving = serving
        self._idempotent_position = idempotent_position
        self.calls: Counter[str] = Counter()

    def _count(self, method: str) -> None:
        with self._log.changed:
            self.calls[method] += 1

    # --- appends ---------------------------------------------------------------------

    def Append(  # gRPC method name
        self, request_iterator: Iterator[streams_pb2.AppendReq], context: grpc.ServicerContext
    ) -> streams_pb2.AppendResp:
        """Client stream: the first message carries the options, the rest the events."""
        self._count("Append")
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("content") != "options":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be options")
        options = first.options
        stream = options.stream_identifier.stream_name.decode()
        expected = _expected(options, "revision")
        proposed = _proposed(r.proposed_message for r in request_iterator)
        outcome = self._log.append(stream, expected, proposed)
        if isinstance(outcome, _Conflict):
            wrong = streams_pb2.AppendResp.WrongExpectedVersion()
            if outcome.current is None:
                wrong.current_no_stream.CopyFrom(shared_pb2.Empty())
            else:
                wrong.current_revision = outcome.current
            if expected.kind == "revision":
                wrong.expected_revision = expected.revision
            else:
                getattr(wrong, f"expected_{expected.kind}").CopyFrom(shared_pb2.Empty())
            return streams_pb2.AppendResp(wrong_expected_version=wrong)
        success = self._success(
            streams_pb2.AppendResp.Success(), outcome, shared_pb2.Empty,
            streams_pb2.AppendResp.Position,
        )
        return streams_pb2.AppendResp(success=success)

    def BatchAppend(  # gRPC method name
        self,
        request_iterator: Iterator[streams_pb2.BatchAppendReq],
        context: grpc.ServicerContext,
    ) -> Iterator[streams_pb2.BatchAppendResp]:
        """Bidi stream: requests accumulate per correlation id until ``is_final``."""
        self._count("BatchAppend")
        pending: dict[str, tuple[streams_pb2.BatchAppendReq.Options, list[Any]]] = {}
        for request in request_iterator:
            key = request.correlation_id.SerializeToString()
            if request.HasField("options") or key not in pending:
                pending[key] = (request.options, [])
            pending[key][1].extend(request.proposed_messages)
            if request.is_final:
                options, messages = pending.pop(key)
                yield self._batch_append(request.correlation_id, options, _proposed(messages))

    def _batch_append(
        self,
        correlation_id: shared_pb2.UUID,
        options: streams_pb2.BatchAppendReq.Options,
        proposed: list[_Proposed],
    ) -> streams_pb2.BatchAppendResp:
        stream = options.stream_identifier.stream_name.decode()
        expected = _expected(options, "stream_position")
        outcome = self._log.append(stream, expected, proposed)
        response = streams_pb2.BatchAppendResp(
            correlation_id=correlation_id, stream_identifier=options.stream_identifier
        )
        if expected.kind == "revision":
            response.stream_position = expected.revision
        else:
            getattr(response, expected.kind).CopyFrom(empty_pb2.Empty())
        if isinstance(outcome, _Conflict):
            # esdbclient looks for a packed shared.WrongExpectedVersion in the status details.
            wrong = shared_pb2.WrongExpectedVersion()
            if outcome.current is None:
                wrong.current_no_stream.CopyFrom(empty_pb2.Empty())
            else:
                wrong.current_stream_revision = outcome.current
            if expected.kind == "revision":
                wrong.expected_stream_position = expected.revision
            else:
                getattr(wrong, f"expected_{expected.kind}").CopyFrom(empty_pb2.Empty())
            details = any_pb2.Any()
            details.Pack(wrong)
            response.error.CopyFrom(
                status_pb2.Status(
                    code=code_pb2.FAILED_PRECONDITION,
                    message="WrongExpectedVersion",
                    details=details,
                )
            )
            return response
        success = self._success(
            streams_pb2.BatchAppendResp.Success(), outcome, empty_pb2.Empty,
            shared_pb2.AllStreamPosition,
        )
        response.success.CopyFrom(success)
        return response

    def _success(self, success: Any, outcome: _Written, empty: Any, position_type: Any) -> Any:
        """Fill an Append or BatchAppend success: the two differ only in message types."""
        if outcome.revision < 0:
            success.no_stream.CopyFrom(empty())
        else:
            success.current_revision = outcome.revision
        position = self._reported_position(outcome)
        if position is None:
            success.no_position.CopyFrom(empty())
        else:
            success.position.CopyFrom(
                position_type(commit_position=position, prepare_position=position)
            )
        return success

    def _reported_position(self, outcome: _Written) -> int | None:
        """The position to answer with; none for a repeated append if so configured."""
        return None if outcome.repeated and not self._idempotent_position else outcome.position

    # --- reads and subscriptions -----------------------------------------------------

    def Read(  # gRPC method name
        self, request: streams_pb2.ReadReq, context: grpc.ServicerContext
    ) -> Iterator[streams_pb2.ReadResp]:
        """Stream and ``$all`` reads, and catch-up subscriptions to either."""
        options = request.options
        structured = options.uuid_option.WhichOneof("content") == "structured"
        self._count("Read")
        if options.WhichOneof("count_option") == "subscription":
            yield from self._subscribe(options, structured, context)
        elif options.WhichOneof("stream_option") == "stream":
            yield from self._read_stream(options, structured)
        else:
            yield from self._read_all(options, structured)

    def _read_stream(self, options: Any, structured: bool) -> Iterator[streams_pb2.ReadResp]:
        identifier = options.stream.stream_identifier
        with self._log.changed:
            events = list(self._log.streams.get(identifier.stream_name.decode(), []))
        if not events:
            yield streams_pb2.ReadResp(
                stream_not_found=streams_pb2.ReadResp.StreamNotFound(stream_identifier=identifier)
            )
            return
        forwards = options.read_direction == _Options.Forwards
        which = options.stream.WhichOneof("revision_option")
        if which == "revision":
            revision = options.stream.revision
            selected = events[revision:] if forwards else events[: revision + 1][::-1]
        elif which == "end":
            selected = [] if forwards else events[::-1]
        else:
            selected = events if forwards else events[:1]
        for record in selected[: options.count]:
            yield _read_resp(record, structured)

    def _read_all(self, options: Any, structured: bool) -> Iterator[streams_pb2.ReadResp]:
        forwards = options.read_direction == _Options.Forwards
        which = options.all.WhichOneof("all_option")
        with self._log.changed:
            records = list(self._log.records)
        if which == "position":
            at = options.all.position.commit_position
            if forwards:
                selected = [r for r in records if r.position >= at]
            else:
                selected = [r for r in reversed(records) if r.position < at]
        elif which == "end":
            selected = [] if forwards else records[::-1]
        else:
            selected = records if forwards else []
        matches = _filter(options)
        count = 0
        for record in selected:
            if count >= options.count:
                break
            if matches(record):
                count += 1
                yield _read_resp(record, structured)

    def _subscribe(
        self, options: Any, structured: bool, context: grpc.ServicerContext
    ) -> Iterator[streams_pb2.ReadResp]:
        """Confirmation, history, checkpoint, caught-up, then live events until cancelled."""
        context.add_callback(self._log.wake)
        matches = _filter(options)
        with self._log.changed:
            records = self._log.records
            if options.WhichOneof("stream_option") == "stream":
                name = options.stream.stream_identifier.stream_name.decode()
                which = options.stream.WhichOneof("revision_option")
                after = options.stream.revision if which == "revision" else -1
                start = len(records) if which == "end" else 0

                def wanted(record: _Record) -> bool:
                    return record.stream == name and record.revision > after

            else:
                which = options.all.WhichOneof("all_option")
                if which == "position":
                    at = options.all.position.commit_position
                    later = (i for i, r in enumerate(records) if r.position > at)
                    start = next(later, len(records))
                else:
                    start = len(records) if which == "end" else 0

                def wanted(record: _Record) -> bool:
                    return matches(record)

            history = records[start:]
            cursor = len(records)
        yield streams_pb2.ReadResp(
            confirmation=streams_pb2.ReadResp.SubscriptionConfirmation(
                subscription_id=str(uuid.uuid4())
            )
        )
        for record in history:
            if wanted(record):
                yield _read_resp(record, structured)
        if history and options.WhichOneof("filter_option") == "filter":
            last = history[-1].position
            yield streams_pb2.ReadResp(
                checkpoint=streams_pb2.ReadResp.Checkpoint(
                    commit_position=last, prepare_position=last
                )
            )
        yield streams_pb2.ReadResp(caught_up=streams_pb2.ReadResp.CaughtUp())
        while True:
            with self._log.changed:
                while cursor >= len(self._log.records) and self._alive(context):
                    self._log.changed.wait(WAKE_INTERVAL)
                if not self._serving.is_set():
                    # Like a server going away: the client sees UNAVAILABLE, not a clean end.
                    context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
                if not context.is_active():
                    return
                live = self._log.records[cursor:]
                cursor += len(live)
            for record in live:
                if wanted(record):
                    yield _read_resp(record, structured)

    def _alive(self, context: grpc.ServicerContext) -> bool:
        return self._serving.is_set() and context.is_active()


class _Gossip(gossip_pb2_grpc.GossipServicer):
    """``event_store.client.gossip.Gossip``: a cluster of one live leader."""

    def __init__(self, port: Callable[[], int]) -> None:
        self._port = port
        self._instance = str(uuid.uuid4())

    def Read(  # gRPC method name
        self, request: shared_pb2.Empty, context: grpc.ServicerContext
    ) -> gossip_pb2.ClusterInfo:
        member = gossip_pb2.MemberInfo(
            instance_id=shared_pb2.UUID(string=self._instance),
            time_stamp=time.time_ns() // 100,
            state=gossip_pb2.MemberInfo.VNodeState.Leader,
            is_alive=True,
            http_end_point=gossip_pb2.EndPoint(address=HOST, port=self._port()),
        )
        return gossip_pb2.ClusterInfo(members=[member])


class EventStoreDBDouble:
    """An in-process, in-memory EventStoreDB protocol double on 127.0.0.1.

    ``idempotent_position=False`` makes a repeated (idempotent) append answer
    without a position, as some EventStoreDB versions do, so clients' fallbacks can
    be tested.
    """

    def __init__(self, *, idempotent_position: bool = True, max_workers: int = 32) -> None:
        self._log = _Log()
        self._serving = threading.Event()
        self._streams = _Streams(self._log, self._serving, idempotent_position)
        self._gossip = _Gossip(lambda: self.port)
        self._max_workers = max_workers
        self._lifecycle = threading.Lock()
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._port = 0

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the double has not been started")
        return self._port

    @property
    def uri(self) -> str:
        """The ``esdb://`` URI of the double (insecure)."""
        return f"esdb://{HOST}:{self.port}?Tls=false"

    @property
    def discover_uri(self) -> str:
        """The same endpoint as an ``esdb+discover://`` URI (gossip answers one leader)."""
        return f"esdb+discover://{HOST}:{self.port}?Tls=false"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def calls(self) -> Counter[str]:
        """How often each Streams method was called (a copy), e.g. ``calls["BatchAppend"]``."""
        with self._log.changed:
            return Counter(self._streams.calls)

    def start(self) -> str:
        """Serve on a free port the first time, on the same port afterwards; return the URI."""
        with self._lifecycle:
            if self._server is None:
                executor = ThreadPoolExecutor(
                    max_workers=self._max_workers, thread_name_prefix="esdb-double"
                )
                # EventStoreDB takes its clients' keepalive pings (every 10 s by
                # default); gRPC's own server would call them abuse and hang up.
                server = grpc.server(executor, options=[
                    ("grpc.http2.min_recv_ping_interval_without_data_ms", 0),
                    ("grpc.http2.max_ping_strikes", 0),
                ])
                streams_pb2_grpc.add_StreamsServicer_to_server(self._streams, server)
                gossip_pb2_grpc.add_GossipServicer_to_server(self._gossip, server)
                port = server.add_insecure_port(f"{HOST}:{self._port}")
                if not port or (self._port and port != self._port):
                    executor.shutdown(wait=False)
                    raise RuntimeError(f"cannot bind {HOST}:{self._port}")
                self._port = port
                self._serving.set()
                server.start()
                self._server, self._executor = server, executor
        return self.uri

    def stop(self) -> None:
        """Stop serving at once (calls in flight fail, new ones are refused); keep the data."""
        with self._lifecycle:
            server, executor = self._server, self._executor
            self._server = self._executor = None
            if server is None:
                return
            self._serving.clear()
            self._log.wake()
            server.stop(grace=0).wait()
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def restart(self) -> None:
        """Serve again on the same port with the same data."""
        self.stop()
        self.start()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SilenceableLink(Closing):
    """A TCP relay to a server that can go silent: the connections stay open, the
    bytes sent are taken (TCP acknowledges them) but nothing is delivered or answered.

    What a client sees when a NAT or firewall between it and EventStoreDB forgets the
    connection, or the network parts: no FIN, no RST, only silence.
    """

    def __init__(self, port: int) -> None:
        self._target = (HOST, port)
        self._listener = socket.create_server((HOST, 0))
        self._silent = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="silenceable-link", daemon=True).start()

    @property
    def uri(self) -> str:
        """An ``esdb://`` URI (insecure) through the link."""
        return f"esdb://{HOST}:{self._listener.getsockname()[1]}?Tls=false"

    def go_silent(self) -> None:
        self._silent.set()

    def close(self) -> None:
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._target)
            except OSError:
                return  # closed
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                if not self._silent.is_set():
                    sink.sendall(data)
            except OSError:
                return
