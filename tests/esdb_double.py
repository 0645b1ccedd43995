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

``EventStoreDBCluster`` (at the end) is the cluster mode: three such servers on one
log, one leader at a time, followers refusing what needs the leader as EventStoreDB
24.10 does (its docstring says what the server does, and where in its source).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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
class _Deleted:
    """An append to a tombstoned stream."""


@dataclass(frozen=True)
class _Conflict:
    """A failed expected-version check."""

    current: int | None  # None: the stream does not exist


class _Log:
    """The store: all records in commit order, and per stream; one condition guards both.

    ``remembered`` is the server's bounded in-memory cache of committed event ids
    (``IndexWriter._committedEvents``): the only thing an ``any`` append's idempotency
    consults, and it is lost on a restart. ``considered`` counts the records that
    ``$all`` reads and subscriptions looked at, so a test can tell a scan from a seek.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.records: list[_Record] = []
        self.streams: dict[str, list[_Record]] = {}
        self.tombstoned: set[str] = set()
        self.remembered: dict[str, tuple[str, int]] = {}
        self.considered = 0
        self._next_position = FIRST_POSITION

    def consider(self, count: int) -> None:
        with self.changed:
            self.considered += count

    def load(self, stream: str, type: str, data: bytes, count: int, *, metadata: bytes = b"{}",
             streams: int = 1) -> int:
        """Store ``count`` events at once, spread round-robin over ``streams`` streams
        named ``<stream>-<n>`` (a large store in seconds, for benchmarks and scans); the
        last one's position."""
        with self.changed:
            created = time.time_ns() // 100
            for n in range(count):
                name = f"{stream}-{n % streams}" if streams > 1 else stream
                events = self.streams.setdefault(name, [])
                record = _Record(name, len(events), str(uuid.uuid4()), type, "application/json",
                                 data, metadata, created, self._next_position)
                self._next_position += POSITION_STEP
                self.records.append(record)
                events.append(record)
            self.changed.notify_all()
            return self.records[-1].position

    def append(
        self, stream: str, expected: _Expected, proposed: list[_Proposed]
    ) -> _Written | _Conflict | _Deleted:
        """Check the expectation and write atomically, or repeat an earlier identical write."""
        with self.changed:
            if stream in self.tombstoned:
                return _Deleted()
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
                # The server's rule (IndexWriter.CheckCommit): only the remembered ids
                # count, and only when the FIRST id is one; otherwise it writes them all.
                first = self.remembered.get(proposed[0].event_id) if proposed else None
                if first is not None and first[0] == stream:
                    return self._repeated(events, first[1], proposed) or _Conflict(current)
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
                self.remembered[p.event_id] = (stream, record.revision)
            self.changed.notify_all()
            return _Written(self.streams[stream][-1].revision, self.records[-1].position)

    @staticmethod
    def _repeated(events: list[_Record], start: int, proposed: list[_Proposed]) -> _Written | None:
        """The original outcome if ``proposed`` are exactly the events stored from ``start``."""
        stored = events[start : start + len(proposed)] if start >= 0 else []
        if not proposed or [r.event_id for r in stored] != [p.event_id for p in proposed]:
            return None
        return _Written(stored[-1].revision, stored[-1].position, repeated=True)

    def tombstone(self, stream: str) -> None:
        """Delete a stream for good; ``$all`` gets the server's ``$streamDeleted`` record."""
        with self.changed:
            self.tombstoned.add(stream)
            record = _Record(stream, (1 << 63) - 1, str(uuid.uuid4()), "$streamDeleted",
                             "application/octet-stream", b"", b"", time.time_ns() // 100,
                             self._next_position)
            self._next_position += POSITION_STEP
            self.records.append(record)
            self.changed.notify_all()

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


def _abort_deleted(context: grpc.ServicerContext, stream: str) -> None:
    """What the server answers for a tombstoned stream (``RpcExceptions.StreamDeleted``)."""
    context.set_trailing_metadata((("exception", "stream-deleted"), ("stream-name", stream)))
    context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"Event stream '{stream}' is deleted.")


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
        self.deny_all = False  # True: $all reads and subscriptions are refused (ACL)
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
        if isinstance(outcome, _Deleted):
            _abort_deleted(context, stream)
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
        if isinstance(outcome, _Deleted):
            details = any_pb2.Any()
            details.Pack(shared_pb2.StreamDeleted(stream_identifier=options.stream_identifier))
            response.error.CopyFrom(status_pb2.Status(
                code=code_pb2.FAILED_PRECONDITION, message="StreamDeleted", details=details
            ))
            return response
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
        if self.deny_all and options.WhichOneof("stream_option") != "stream":
            # A user without read on $all (its default ACL: $admins only).
            context.set_trailing_metadata((("exception", "access-denied"),))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "Access Denied")
        if options.WhichOneof("count_option") == "subscription":
            yield from self._subscribe(options, structured, context)
        elif options.WhichOneof("stream_option") == "stream":
            yield from self._read_stream(options, structured, context)
        else:
            yield from self._read_all(options, structured)

    def _read_stream(
        self, options: Any, structured: bool, context: grpc.ServicerContext
    ) -> Iterator[streams_pb2.ReadResp]:
        identifier = options.stream.stream_identifier
        name = identifier.stream_name.decode()
        with self._log.changed:
            deleted = name in self._log.tombstoned
            events = list(self._log.streams.get(name, []))
        if deleted:
            _abort_deleted(context, name)
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
        """Seeks to the start (positions are sorted), then considers records one by one
        until ``count`` matched: a filtered read of a rare category scans, as the
        server's does. Records are only appended, so indexes stay valid unlocked."""
        forwards = options.read_direction == _Options.Forwards
        which = options.all.WhichOneof("all_option")
        with self._log.changed:
            records = self._log.records
            end = len(records)
        if which == "position":
            at = bisect.bisect_left(records, options.all.position.commit_position, 0, end,
                                    key=lambda r: r.position)
            indexes = range(at, end) if forwards else range(at - 1, -1, -1)
        elif which == "end":
            indexes = range(0) if forwards else range(end - 1, -1, -1)
        else:
            indexes = range(end) if forwards else range(0)
        matches = _filter(options)
        count = considered = 0
        for index in indexes:
            if count >= options.count:
                break
            considered += 1
            record = records[index]
            if matches(record):
                count += 1
                self._log.consider(considered)  # counted before the client sees it
                considered = 0
                yield _read_resp(record, structured)
        self._log.consider(considered)

    def _subscribe(
        self, options: Any, structured: bool, context: grpc.ServicerContext
    ) -> Iterator[streams_pb2.ReadResp]:
        """Confirmation, history, checkpoint, caught-up, then live events until cancelled.

        A filtered ``$all`` subscription also sends a checkpoint after every
        ``window x checkpointIntervalMultiplier`` records it considered and when it goes
        live (``Enumerator.AllSubscriptionFiltered``): the position of the last record
        considered, every matching record up to it having been sent before.
        """
        context.add_callback(self._log.wake)
        matches = _filter(options)
        filtered = options.WhichOneof("filter_option") == "filter"
        interval = 0
        if filtered:
            window = options.filter.max if options.filter.WhichOneof("window") == "max" else 32
            interval = max(window, 1) * max(options.filter.checkpointIntervalMultiplier, 1)
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
                    start = bisect.bisect_right(records, options.all.position.commit_position,
                                                key=lambda r: r.position)
                else:
                    start = len(records) if which == "end" else 0

                def wanted(record: _Record) -> bool:
                    return matches(record)

            cursor = len(records)
        yield streams_pb2.ReadResp(
            confirmation=streams_pb2.ReadResp.SubscriptionConfirmation(
                subscription_id=str(uuid.uuid4())
            )
        )
        since_checkpoint = 0

        def checkpoint(position: int) -> streams_pb2.ReadResp:
            nonlocal since_checkpoint
            since_checkpoint = 0
            return streams_pb2.ReadResp(checkpoint=streams_pb2.ReadResp.Checkpoint(
                commit_position=position, prepare_position=position
            ))

        def scan(first: int, stop: int) -> Iterator[streams_pb2.ReadResp]:
            """The records [first, stop): matching ones, and checkpoints on the way."""
            nonlocal since_checkpoint
            for index in range(first, stop):
                record = records[index]
                self._log.consider(1)  # counted before the client can see it
                if wanted(record):
                    yield _read_resp(record, structured)
                since_checkpoint += 1
                if interval and since_checkpoint >= interval:
                    yield checkpoint(record.position)

        yield from scan(start, cursor)
        if filtered and cursor > start:
            yield checkpoint(records[cursor - 1].position)
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
                first, cursor = cursor, len(self._log.records)
            yield from scan(first, cursor)

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


class _Serving:
    """``with server:`` serves for the block and stops at its end."""

    def start(self) -> str:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EventStoreDBDouble(_Serving):
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
    def considered(self) -> int:
        """How many records ``$all`` reads and subscriptions have looked at so far."""
        with self._log.changed:
            return self._log.considered

    def load(self, stream: str, type: str, data: bytes, count: int, *,
             metadata: bytes = b"{}", streams: int = 1) -> int:
        """Store ``count`` events directly (see ``_Log.load``): a large store in seconds;
        the last one's position."""
        return self._log.load(stream, type, data, count, metadata=metadata, streams=streams)

    def tombstone(self, stream: str) -> None:
        """Delete ``stream`` for good, as ``$tombstone`` does on the server."""
        self._log.tombstone(stream)

    def deny_reads_of_all(self) -> None:
        """Answer ``$all`` reads as the server does for a user not in its ACL."""
        self._streams.deny_all = True

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
        """Serve again on the same port with the same data (on disk) but not the memory
        cache of recent event ids (``any`` appends rely on it for idempotency)."""
        self.stop()
        with self._log.changed:
            self._log.remembered.clear()
        self.start()



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


# --- cluster mode ---------------------------------------------------------------------


def _requires_leader(context: grpc.ServicerContext) -> bool:
    """The ``requires-leader`` header (esdbclient sends ``true`` with NodePreference=leader,
    its default; the server reads it in ``ServiceBase.GetRequiresLeader``)."""
    return dict(context.invocation_metadata()).get("requires-leader", "").lower() == "true"


def _abort_not_leader(context: grpc.ServicerContext, port: int) -> None:
    """The server's ``RpcExceptions.LeaderInfo``: NOT_FOUND, "Leader info available", and
    the leader's (advertised HTTP = gRPC) endpoint in the trailers."""
    context.set_trailing_metadata((
        ("exception", "not-leader"),
        ("leader-endpoint-host", HOST),
        ("leader-endpoint-port", str(port)),
    ))
    context.abort(grpc.StatusCode.NOT_FOUND, "Leader info available")


class _NodeStreams(_Streams):
    """The Streams service of one cluster node: a node that is not the leader (in its
    own view) refuses the calls that require one, as ``ClusterVNodeController`` does."""

    def __init__(
        self,
        log: _Log,
        serving: threading.Event,
        leader: Callable[[], int | None],
        crash: Callable[[], bool],
    ) -> None:
        super().__init__(log, serving, idempotent_position=True)
        self._leader = leader  # the port of the leader when it is another node, else None
        self._crash = crash  # True once: this node goes down after the write, unanswered

    def _elsewhere(self, context: grpc.ServicerContext) -> int | None:
        """The leader's port if this call needs the leader and this node is not it."""
        return self._leader() if _requires_leader(context) else None

    def _refuse(self, method: str, context: grpc.ServicerContext, port: int) -> None:
        self._count(method)
        self._count("NotLeader")
        _abort_not_leader(context, port)

    def Append(  # gRPC method name
        self, request_iterator: Iterator[streams_pb2.AppendReq], context: grpc.ServicerContext
    ) -> streams_pb2.AppendResp:
        requests = list(request_iterator)  # the server reads the request, then asks the node
        port = self._elsewhere(context)
        if port is not None:
            self._refuse("Append", context, port)
        return super().Append(iter(requests), context)

    def BatchAppend(  # gRPC method name
        self,
        request_iterator: Iterator[streams_pb2.BatchAppendReq],
        context: grpc.ServicerContext,
    ) -> Iterator[streams_pb2.BatchAppendResp]:
        """A refused batch ends the whole call with the not-leader status: the server's
        ``BatchAppendWorker`` throws ``RpcExceptions.LeaderInfo`` out of its writer."""
        if _requires_leader(context):
            received: list[streams_pb2.BatchAppendReq] = []
            for request in request_iterator:
                received.append(request)
                if request.is_final:
                    port = self._leader()
                    if port is not None:
                        self._refuse("BatchAppend", context, port)
                    break
            request_iterator = itertools.chain(received, request_iterator)
        for response in super().BatchAppend(request_iterator, context):
            if self._crash():
                context.abort(grpc.StatusCode.UNAVAILABLE, "the node went down")
            yield response

    def Read(  # gRPC method name
        self, request: streams_pb2.ReadReq, context: grpc.ServicerContext
    ) -> Iterator[streams_pb2.ReadResp]:
        """Reads are refused before any answer. A subscription is confirmed first and
        refused then, at its first read of the log (``Enumerator.AllSubscription*``:
        ``SubscribeToLive`` and ``ConfirmSubscription`` come before ``CatchUp``); one
        from the end reads nothing and goes live, so a follower serves it."""
        options = request.options
        port = self._elsewhere(context)
        if port is not None and options.WhichOneof("count_option") == "subscription":
            which = (options.all.WhichOneof("all_option")
                     if options.WhichOneof("stream_option") == "all"
                     else options.stream.WhichOneof("revision_option"))
            if which != "end":
                self._count("Read")
                yield streams_pb2.ReadResp(
                    confirmation=streams_pb2.ReadResp.SubscriptionConfirmation(
                        subscription_id=str(uuid.uuid4())
                    )
                )
                self._count("NotLeader")
                _abort_not_leader(context, port)
            port = None
        if port is not None:
            self._refuse("Read", context, port)
        yield from super().Read(request, context)


class _NodeGossip(gossip_pb2_grpc.GossipServicer):
    """A cluster node's gossip: every member, with the states this node believes."""

    def __init__(self, cluster: EventStoreDBCluster, index: int) -> None:
        self._cluster = cluster
        self._index = index

    def Read(  # gRPC method name
        self, request: shared_pb2.Empty, context: grpc.ServicerContext
    ) -> gossip_pb2.ClusterInfo:
        return gossip_pb2.ClusterInfo(members=self._cluster._members(self._index))


class _ClusterNode(EventStoreDBDouble):
    """One node of an ``EventStoreDBCluster``: its own gRPC server, the cluster's log."""

    def __init__(self, cluster: EventStoreDBCluster, index: int, log: _Log,
                 max_workers: int) -> None:
        super().__init__(max_workers=max_workers)
        self.index = index
        self.instance_id = str(uuid.uuid4())
        self._log = log
        self._streams = _NodeStreams(log, self._serving, lambda: cluster._leader_port(index),
                                     lambda: cluster._crash(index))
        self._gossip = _NodeGossip(cluster, index)


class EventStoreDBCluster(_Serving):
    """Three (``size``) in-process EventStoreDB nodes on one log, one leader at a time.

    What a real cluster does, as read in EventStoreDB 24.10's source
    (``src/EventStore.Core/...``):

    * A node that is not the leader refuses every call that carries the
      ``requires-leader: true`` header (esdbclient sends it on every call unless
      ``NodePreference`` is not ``leader``): appends, stream and ``$all`` reads, and the
      reads of a catch-up subscription (``Services/VNode/ClusterVNodeController.cs``:
      ``HandleAsNonLeader`` -> ``DenyRequestBecauseNotLeader``, a ``NotHandled`` with
      reason ``NotLeader`` and the leader's endpoints). The gRPC layer turns that into
      ``RpcExceptions.LeaderInfo`` (``Services/Transport/Grpc/RpcExceptions.cs``): status
      NOT_FOUND, details ``"Leader info available"``, trailers ``exception: not-leader``,
      ``leader-endpoint-host`` and ``leader-endpoint-port`` (``Grpc/Constants.cs``); the
      whole call fails, BatchAppend included (``Streams.BatchAppend.cs`` throws it out
      of the response writer). Without the header a follower serves reads itself and
      forwards writes to the leader (here: the same log).
    * A catch-up subscription is confirmed BEFORE its first read
      (``Services/Transport/Enumerators/Enumerator.AllSubscriptionFiltered.cs``,
      ``MainLoop``: ``SubscribeToLive``, ``ConfirmSubscription``, then ``CatchUp``, whose
      ``ReadPage`` carries ``requiresLeader``), so on a follower the client sees the
      confirmation and then the stream fails with the not-leader status. A subscription
      from the end has nothing to read and goes live at once: a follower serves it.
    * Nothing ends open calls when leadership moves: ``SubscriptionsService`` drops
      subscriptions only on ``BecomeShuttingDown`` (``Services/SubscriptionsService.cs``),
      and no code in the gRPC transport watches the node's state. A deposed leader that
      stays up (``elect(i)``) keeps serving its live subscriptions as a follower; the
      first read such a subscription needs later (after falling behind) is refused like
      any other. A deposed leader that wrote what the new leader never got must truncate
      its log, which it does offline: it shuts down and restarts
      (``Services/ClusterStorageWriterService.cs``, "OFFLINE TRUNCATION IS NEEDED ...
      SHUTTING DOWN NODE"; ``ClusterVNode.cs`` truncates at start-up). Then every call
      on it fails UNAVAILABLE, as with a crash: ``elect(i, restart_old=True)``.
    * Gossip (``Grpc/Gossip.Read.cs``) lists every member with its state and its HTTP
      endpoint, which is also the gRPC one; esdbclient connects to the one in state
      Leader.

    Here every node serves the same ``_Log`` (replication is instantaneous, nothing is
    ever truncated), and each node has a view of who leads (``elect`` sets all views;
    ``mislead`` gives one node a stale view, as during an election).
    """

    def __init__(self, size: int = 3, *, max_workers: int = 16) -> None:
        if size < 1:
            raise ValueError("a cluster has at least one node")
        self._log = _Log()
        self._lock = threading.Lock()
        self.nodes = [_ClusterNode(self, i, self._log, max_workers) for i in range(size)]
        self._views = [0] * size  # the node each node believes leads
        self._leader = 0
        self._crash_armed: threading.Event | None = None
        self._restarts: list[threading.Thread] = []

    # --- what the nodes answer ------------------------------------------------------

    def _leader_port(self, index: int) -> int | None:
        """The port of the leader as node ``index`` sees it, None if it leads itself."""
        with self._lock:
            believed = self._views[index]
        return None if believed == index else self.nodes[believed].port

    def _crash(self, index: int) -> bool:
        """Called by node ``index`` after it wrote an append: True if it must go down now
        (then the next node leads, and this one restarts in the background)."""
        with self._lock:
            crashed, self._crash_armed = self._crash_armed, None
            if crashed is None or index != self._leader:
                self._crash_armed = crashed
                return False
            self._leader = (index + 1) % len(self.nodes)
            self._views = [self._leader] * len(self.nodes)
            node = self.nodes[index]
            restart = threading.Thread(target=lambda: (node.stop(), node.start()),
                                       name=f"esdb-double restart {index}")
            self._restarts.append(restart)
        crashed.set()
        restart.start()
        return True

    def _members(self, index: int) -> list[gossip_pb2.MemberInfo]:
        with self._lock:
            believed = self._views[index]
        leader, follower = (gossip_pb2.MemberInfo.VNodeState.Leader,
                            gossip_pb2.MemberInfo.VNodeState.Follower)
        return [
            gossip_pb2.MemberInfo(
                instance_id=shared_pb2.UUID(string=node.instance_id),
                time_stamp=time.time_ns() // 100,
                state=leader if node.index == believed else follower,
                is_alive=node.running,
                http_end_point=gossip_pb2.EndPoint(address=HOST, port=node.port),
            )
            for node in self.nodes
        ]

    # --- for tests ------------------------------------------------------------------

    @property
    def leader(self) -> int:
        """The index of the node that leads (the last one elected)."""
        with self._lock:
            return self._leader

    @property
    def uri(self) -> str:
        """``esdb://`` with every node: esdbclient asks their gossip for the leader."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.nodes)
        return f"esdb://{hosts}?Tls=false"

    @property
    def discover_uri(self) -> str:
        """``esdb+discover://`` with one seed node (the first)."""
        return f"esdb+discover://{HOST}:{self.nodes[0].port}?Tls=false"

    def node_uri(self, index: int) -> str:
        """A single-node ``esdb://`` URI: esdbclient connects to it without gossip."""
        return self.nodes[index].uri

    def follower(self) -> int:
        """The index of a node that does not lead."""
        return (self.leader + 1) % len(self.nodes)

    def elect(self, index: int, *, restart_old: bool = False) -> None:
        """Make node ``index`` the leader, in every node's view.

        The old leader becomes a follower; its open calls go on (see the class doc).
        ``restart_old``: it goes down and comes back instead (a crash, or the offline
        truncation of a deposed leader): its calls in flight fail UNAVAILABLE. Its data
        is not forgotten (``EventStoreDBDouble.restart`` would drop the recent-ids cache,
        which is the new leader's memory here).
        """
        with self._lock:
            old, self._leader = self._leader, index
            self._views = [index] * len(self.nodes)
        if restart_old and old != index:
            self.nodes[old].stop()
            self.nodes[old].start()

    def move_leader(self, *, restart_old: bool = False) -> int:
        """Elect the next node; returns its index."""
        index = self.follower()
        self.elect(index, restart_old=restart_old)
        return index

    def crash_after_next_append(self) -> threading.Event:
        """The leader goes down right after it writes the next BatchAppend, before it
        answers (the client sees UNAVAILABLE), and comes back as a follower; the next node
        leads. The event is set when that happened."""
        crashed = threading.Event()
        with self._lock:
            self._crash_armed = crashed
        return crashed

    def mislead(self, node: int, believes: int) -> None:
        """Give ``node`` a stale view of the leader (until the next ``elect``)."""
        with self._lock:
            self._views[node] = believes

    @property
    def calls(self) -> Counter[str]:
        """The Streams calls of all nodes together; ``calls["NotLeader"]``: refusals."""
        total: Counter[str] = Counter()
        for node in self.nodes:
            total.update(node.calls)
        return total

    def stored(self) -> list[_Record]:
        """Every record of the log, in commit order (a copy)."""
        with self._log.changed:
            return list(self._log.records)

    def start(self) -> str:
        for node in self.nodes:
            node.start()
        return self.uri

    def stop(self) -> None:
        with self._lock:
            restarts, self._restarts = self._restarts, []
        for restart in restarts:
            restart.join()
        for node in self.nodes:
            node.stop()

