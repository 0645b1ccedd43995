"""The command service: one function per use case, the only writer of events.

Each command loads the payment's stream, lets the aggregate decide one event, and
appends it with the version it read (optimistic concurrency). Commands on one
payment within a process take turns (``_StreamTurns``), so they do not race each
other; if another process got there first, the command backs off with jitter,
re-reads and re-decides until its deadline (``COMMAND_DEADLINE``), and only then
reports ``ConcurrencyConflict``.

Idempotency: given an ``idempotency_key``, the event id (and, for create, the
payment id) is derived from the key, so a retried command finds its own event in
the stream and returns the state as it was right after it, appending nothing. The
event's ``$causationId`` is derived from the key *and* the request, so the same key
with a different request is told apart (``IdempotencyKeyReused``).

Every command answers the payment with the store ``position`` of its event (a replay:
the original event's), which a read of a projection may pass to wait until the
projection has applied it (read your writes, ``projections.read_your_writes``).
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from django.conf import settings

from payments.domain import (
    HistoryError,
    InvalidInput,
    Payment,
    PaymentError,
    apply,
    fold,
    parse_amount,
    parse_bank_name,
    parse_currency,
    parse_decline_code,
    parse_reference,
)
from payments.domain import (
    create_payment as decide_create,
)
from payments.events import (
    Document,
    PaymentEvent,
    decode_metadata,
    encode_data,
    encode_metadata,
    format_timestamp,
    read_recorded,
    stream_name,
)
from payments.eventstore import (
    EventStore,
    EventStoreError,
    NewEvent,
    RecordedEvent,
    StreamNotFound,
    StreamState,
    UnreadableEvent,
    WrongExpectedVersion,
    get_event_store,
)
from paymentsite.metrics import observe_command

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

logger = logging.getLogger(__name__)

# Backing off after a lost race with another process: full jitter (a random pause up
# to a ceiling that doubles per attempt), so that racers spread out instead of meeting
# again; capped so that a long wait still re-tries often before the deadline.
FIRST_BACKOFF = 0.001  # s
LONGEST_BACKOFF = 0.050  # s
MAX_IDEMPOTENCY_KEY_LENGTH = 255
_IDEMPOTENCY_NAMESPACE = uuid5(NAMESPACE_URL, "urn:paymentsite:idempotency")


class PaymentNotFound(PaymentError):
    """No payment has this id."""

    def __init__(self, payment_id: UUID, message: str | None = None) -> None:
        self.payment_id = payment_id
        super().__init__(message or f"payment {payment_id} not found")


class PaymentNotYetCreated(PaymentNotFound):
    """A past state asked for a moment before the payment's first event: there was none."""

    def __init__(self, payment_id: UUID, moment: datetime, created_at: datetime) -> None:
        super().__init__(payment_id, f"payment {payment_id} did not exist yet at"
                                     f" {format_timestamp(moment)}: it was created at"
                                     f" {format_timestamp(created_at)}")
        self.moment = moment
        self.created_at = created_at


class ConcurrencyConflict(PaymentError):
    """The caller's expected version is not current, or the command's deadline passed
    while other changes to the payment kept it waiting."""


class IdempotencyKeyReused(PaymentError):
    """The idempotency key was used before for a different request."""


@dataclass(frozen=True)
class HistoryEntry:
    """One stored event of a payment, as the history pages and ``find`` show it."""

    type: str
    data: dict[str, Any]
    version: int
    position: int
    occurred_at: datetime
    event_id: UUID


@dataclass(frozen=True)
class AsOf:
    """Which past state a ``PaymentWithHistory`` holds: the one right after event ``version``."""

    version: int  # the last event folded (stream versions count from 0)
    time: datetime  # when that event occurred
    current_version: int  # the payment's last event now, so a reader can tell
    requested_time: datetime | None = None  # the moment asked for, in UTC (None: a version)


@dataclass(frozen=True)
class PaymentWithHistory:
    """A payment's state (folded from its stream) and the events it was folded from:
    the current state, or a past one (``as_of``) with the events up to it."""

    payment: Payment
    history: list[HistoryEntry]
    as_of: AsOf | None = None


@dataclass(frozen=True)
class _Loaded:
    payment: Payment
    records: list[RecordedEvent]
    documents: list[Document]  # each record's data, decoded once (histories show it)
    events: list[PaymentEvent]


def parse_idempotency_key(value: str) -> str:
    """A caller's idempotency key: 1 to 255 printable characters (a UUID is a good one).

    The same rule for the API's header and the CLI's flag. Callers scope the key before
    the service sees it (``"<user pk>:<key>"`` for the API, ``"cli:<key>"`` for the CLI,
    ``"html:…"`` for the forms), so no interface can replay or block another's command.
    """
    if not value or len(value) > MAX_IDEMPOTENCY_KEY_LENGTH or not value.isprintable():
        raise InvalidInput("idempotency_key",
                           f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters")
    return value


# --- use cases -----------------------------------------------------------------------


def create_payment(
    *,
    amount: Decimal | str,
    currency: str | None = None,
    reference: str = "",
    idempotency_key: str | None = None,
    correlation_id: UUID | None = None,
    store: EventStore | None = None,
) -> Payment:
    """Create a pending payment; returns it (its id is new, or derived from the key)."""
    payment_id = uuid5(_IDEMPOTENCY_NAMESPACE, idempotency_key) if idempotency_key else uuid4()
    return _run(
        store or get_event_store(), payment_id, "create",
        lambda: _create_request(amount, currency, reference),
        lambda _, request: decide_create(payment_id=payment_id, **request, occurred_at=_now()),
        idempotency_key=idempotency_key, correlation_id=correlation_id, expected_version=None,
        creates=True,
    )


def _create_request(
    amount: Decimal | str, currency: str | None, reference: str
) -> dict[str, Any]:
    """The create's arguments, normalised (what its idempotency fingerprint compares).

    No reference is left out rather than given as "": a create keyed before references
    existed has the same fingerprint when it is retried now, and is a replay, not a
    different request.
    """
    request: dict[str, Any] = {
        "amount": parse_amount(amount),
        # None: the default; "" is a currency that was given empty, refused.
        "currency": parse_currency(settings.DEFAULT_CURRENCY if currency is None else currency),
    }
    parsed_reference = parse_reference(reference)
    if parsed_reference:
        request["reference"] = parsed_reference
    return request


def authorize_payment(
    *,
    payment_id: UUID,
    bank_name: str,
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    correlation_id: UUID | None = None,
    store: EventStore | None = None,
) -> Payment:
    """Record the bank's authorization of a pending payment."""
    return _run(
        store or get_event_store(), payment_id, "authorize",
        lambda: {"bank_name": parse_bank_name(bank_name)},
        lambda p, request: p.authorize(**request, occurred_at=_now()),
        idempotency_key=idempotency_key, correlation_id=correlation_id,
        expected_version=expected_version,
    )


def settle_payment(
    *,
    payment_id: UUID,
    amount: Decimal | str | None = None,
    bank_name: str | None = None,
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    correlation_id: UUID | None = None,
    store: EventStore | None = None,
) -> Payment:
    """Settle ``amount``, or everything outstanding when no amount is given."""
    return _run(
        store or get_event_store(), payment_id, "settle",
        lambda: {"amount": None if amount is None else parse_amount(amount),
                 "bank_name": None if bank_name is None else parse_bank_name(bank_name)},
        lambda p, request: p.settle(**request, occurred_at=_now()),
        idempotency_key=idempotency_key, correlation_id=correlation_id,
        expected_version=expected_version,
    )


def refund_payment(
    *,
    payment_id: UUID,
    amount: Decimal | str | None = None,
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    correlation_id: UUID | None = None,
    store: EventStore | None = None,
) -> Payment:
    """Refund ``amount``, or everything settled and not yet refunded."""
    return _run(
        store or get_event_store(), payment_id, "refund",
        lambda: {"amount": None if amount is None else parse_amount(amount)},
        lambda p, request: p.refund(**request, occurred_at=_now()),
        idempotency_key=idempotency_key, correlation_id=correlation_id,
        expected_version=expected_version,
    )


def decline_payment(
    *,
    payment_id: UUID,
    bank_name: str,
    decline_code: str,
    expected_version: int | None = None,
    idempotency_key: str | None = None,
    correlation_id: UUID | None = None,
    store: EventStore | None = None,
) -> Payment:
    """Record the bank's refusal of a pending or authorized payment."""
    return _run(
        store or get_event_store(), payment_id, "decline",
        lambda: {"bank_name": parse_bank_name(bank_name),
                 "decline_code": parse_decline_code(decline_code)},
        lambda p, request: p.decline(**request, occurred_at=_now()),
        idempotency_key=idempotency_key, correlation_id=correlation_id,
        expected_version=expected_version,
    )


def find_payment(*, payment_id: UUID, store: EventStore | None = None) -> PaymentWithHistory:
    """The payment folded from its stream (always current) with its stored events."""
    loaded = _load(store or get_event_store(), payment_id)
    return PaymentWithHistory(payment=loaded.payment, history=_history(loaded))


def find_payment_as_of(
    *,
    payment_id: UUID,
    version: int | str | None = None,
    time: datetime | str | None = None,
    store: EventStore | None = None,
) -> PaymentWithHistory:
    """The payment as it was right after event ``version``, or at ``time`` (after the
    events that occurred at or before it), with the events up to there.

    Given neither, the current state (``as_of`` None), as ``find_payment``: views pass
    their query parameters straight through. A version counts from 0, as the store
    numbers events. A time is ISO 8601; one without a zone is UTC (as every stored
    time is). Bad input is ``InvalidInput`` naming the parameter (a version beyond the
    last names the last); a moment before the payment existed is ``PaymentNotYetCreated``.
    """
    if version is not None and time is not None:
        raise InvalidInput("as_of", "give as_of_version or as_of, not both")
    wanted = None if version is None else parse_as_of_version(version)
    moment = None if time is None else parse_as_of_time(time)
    if wanted is None and moment is None:
        return find_payment(payment_id=payment_id, store=store)
    loaded = _load(store or get_event_store(), payment_id)
    history = _history(loaded)
    last = history[-1].version
    if wanted is not None:
        if wanted > last:
            raise InvalidInput(
                "as_of_version",
                f"payment {payment_id} has versions 0 to {last}: {wanted} is beyond its last"
                f" version, {last}")
        count = sum(1 for entry in history if entry.version <= wanted)
    else:
        assert moment is not None
        # The longest run of events from the first that all occurred by then: the state is
        # always one the stream went through, even if a writer's clock ran behind.
        count = 0
        while count < len(history) and history[count].occurred_at <= moment:
            count += 1
        if count == 0:
            raise PaymentNotYetCreated(payment_id, moment, history[0].occurred_at)
    payment = loaded.payment
    if count < len(history):
        payment = None
        for record, event in zip(loaded.records[:count], loaded.events[:count], strict=True):
            payment = apply(payment, event, record.version)
    assert payment is not None
    shown = history[:count]
    payment = replace(payment, position=shown[-1].position)
    return PaymentWithHistory(
        payment=payment, history=shown,
        as_of=AsOf(version=shown[-1].version, time=shown[-1].occurred_at, current_version=last,
                   requested_time=moment),
    )


_VERSION = re.compile(r"[0-9]{1,18}", re.ASCII)  # more digits than any stream's length: refused
_MAX_TIME_TEXT = 64  # characters; a longer "time" is refused before it is parsed


def parse_as_of_version(value: int | str) -> int:
    """A stream version to look back to: a whole number from 0 (the payment's first event)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    text_value = value.strip() if isinstance(value, str) else None
    if text_value is None or not _VERSION.fullmatch(text_value):
        raise InvalidInput("as_of_version", f"must be a whole number from 0 (the payment's"
                                            f" first event), not {value!r:.40}")
    return int(text_value)


def parse_as_of_time(value: datetime | str) -> datetime:
    """A moment to look back to, in UTC: ISO 8601, a date with a time; no zone means UTC."""
    if isinstance(value, str):
        text_value = value.strip()
        example = "such as 2026-11-29T14:00:00Z"
        if len(text_value) > _MAX_TIME_TEXT:
            raise InvalidInput("as_of", f"is not an ISO 8601 time {example}: too long")
        try:
            date.fromisoformat(text_value)
        except ValueError:
            pass
        else:  # midnight, or the end of the day? Neither is guessed.
            raise InvalidInput("as_of", f"{text_value!r} is a date; give a time of day too,"
                                        f" {example} or 2026-11-29T23:59:59Z")
        try:
            moment = datetime.fromisoformat(text_value)
        except ValueError:
            # A "+" in a URL's query is a space once decoded: "…T10:00:00 01:00".
            hint = "; in a URL write its + as %2B" if " " in text_value else ""
            raise InvalidInput("as_of", f"{text_value!r:.40} is not an ISO 8601 time"
                                        f" {example}{hint}") from None
    elif isinstance(value, datetime):
        moment = value
    else:
        raise InvalidInput("as_of", "must be an ISO 8601 time such as 2026-11-29T14:00:00Z")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput("as_of", "is out of range (years 1 to 9999 in UTC)") from None


# --- traces ----------------------------------------------------------------------------
#
# A command's span, "payment.<action>", marks its steps with events (loaded, decided,
# appended, lost_race: an event costs a tenth of a span of its own), and its W3C trace
# context goes into its event's metadata (docs/ARCHITECTURE.md, "Traces").
# paymentsite/tracing.py sets the tracer when the environment configures an exporter; None,
# the default, leaves the command path as it was: no span, the metadata byte for byte as
# before, nothing of OpenTelemetry imported.

_tracer: Tracer | None = None
_NO_SPAN: AbstractContextManager[None] = nullcontext()


def trace_commands(tracer: Tracer | None) -> None:
    """Give every command a span from ``tracer`` from now on (None: no spans)."""
    global _tracer
    _tracer = tracer


def _command_span(action: str, payment_id: UUID) -> AbstractContextManager[Span | None]:
    """The command's span, the current one (over HTTP, a child of the request's), while
    tracing is on; nothing while off. Its outcome is ``_end_span``'s to say."""
    tracer = _tracer
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(
        f"payment.{action}", attributes={"payment.id": str(payment_id), "payment.action": action},
        record_exception=False, set_status_on_exception=False,
    )


def _step(name: str, attempt: int | None = None) -> None:
    """A step of the command, as an event on its span; nothing while off."""
    if _tracer is None:
        return
    from opentelemetry.trace import get_current_span

    get_current_span().add_event(name, None if attempt is None else {"attempt": attempt})


def _end_span(
    span: Span | None,
    outcome: str,
    *,
    event_type: str | None = None,
    version: int | None = None,
    position: int | None = None,
    error: Exception | None = None,
) -> None:
    """The command span's outcome; only a failure of the system (not a refusal by the
    rules, nor a conflict: those are answers) marks it an error."""
    if span is None:
        return
    attributes: dict[str, str | int] = {"payment.outcome": outcome}
    if event_type is not None:
        attributes["payment.event_type"] = event_type
    if version is not None:
        attributes["payment.version"] = version
    if position is not None:
        attributes["payment.position"] = position
    span.set_attributes(attributes)
    if error is not None and outcome in ("unavailable", "error"):
        from opentelemetry.trace import StatusCode

        span.record_exception(error)
        span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {error}")


def _trace_context() -> dict[str, str] | None:
    """The current span's W3C headers, for the event's metadata; None while off."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(headers)
    return headers


# --- the one command loop ------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _history(loaded: _Loaded) -> list[HistoryEntry]:
    return [
        HistoryEntry(
            type=record.type,
            data=document,
            version=record.version,
            position=record.position,
            occurred_at=event.occurred_at,
            event_id=record.id,
        )
        for record, document, event in zip(loaded.records, loaded.documents, loaded.events,
                                           strict=True)
    ]


def _load(store: EventStore, payment_id: UUID) -> _Loaded:
    try:
        records = store.read_stream(stream_name(payment_id))
    except StreamNotFound:
        raise PaymentNotFound(payment_id) from None
    decoded = [read_recorded(record) for record in records]
    events = [event for _, event in decoded]
    payment: Payment | None = None
    for record, event in zip(records, events, strict=True):
        payment = apply(payment, event, record.version)
    assert payment is not None  # a stream that exists has at least one event
    payment = replace(payment, position=records[-1].position)
    return _Loaded(payment=payment, records=records,
                   documents=[document for document, _ in decoded], events=events)


def _command_ids(
    payment_id: UUID, action: str, request: dict[str, object], idempotency_key: str | None
) -> tuple[UUID, UUID]:
    """The new event's id and the command's id (the event's causation)."""
    if idempotency_key is None:
        return uuid4(), uuid4()
    fingerprint = json.dumps({k: None if v is None else str(v) for k, v in request.items()},
                             sort_keys=True)
    return (
        uuid5(_IDEMPOTENCY_NAMESPACE, f"{payment_id}/{idempotency_key}"),
        uuid5(_IDEMPOTENCY_NAMESPACE, f"{payment_id}/{idempotency_key}/{action}/{fingerprint}"),
    )


def _replay(loaded: _Loaded, event_id: UUID, command_id: UUID) -> Payment | None:
    """The state right after this command's event, if the stream has it already."""
    for index, record in enumerate(loaded.records):
        if record.id != event_id:
            continue
        if decode_metadata(record.metadata).get("$causationId") != str(command_id):
            raise IdempotencyKeyReused(
                "this idempotency key was already used for a different request"
            )
        if index == len(loaded.records) - 1:
            return loaded.payment  # the usual retry: its event is still the last one
        replayed = fold(loaded.events[: index + 1])
        assert replayed is not None
        return replace(replayed, position=record.position)  # the original event's
    return None


class _RecentPayments:
    """The latest state of recently commanded payments, per store (an LRU).

    A safe shortcut, not a source of truth: a stream only grows, so the state at
    version v is the same whenever it is read, and the append's expected version
    rejects a decision made on a state that has since moved on (then we reload).
    It spares the read and the fold on the hot path of a payment's life cycle.
    """

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._by_store: weakref.WeakKeyDictionary[EventStore, OrderedDict[UUID, Payment]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, store: EventStore, payment_id: UUID) -> Payment | None:
        with self._lock:
            recent = self._by_store.get(store)
            return recent.get(payment_id) if recent is not None else None

    def put(self, store: EventStore, payment: Payment) -> None:
        with self._lock:
            recent = self._by_store.setdefault(store, OrderedDict())
            recent[payment.id] = payment
            recent.move_to_end(payment.id)
            if len(recent) > self.size:
                recent.popitem(last=False)

    def forget(self, store: EventStore, payment_id: UUID) -> None:
        with self._lock:
            recent = self._by_store.get(store)
            if recent is not None:
                recent.pop(payment_id, None)


_recent = _RecentPayments()


class _Turn:
    """One payment's lock, and how many commands hold it or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class _StreamTurns:
    """Commands on one payment, through one store, take turns within this process.

    Without turns, concurrent commands on a payment would all decide on the same
    version and all but one lose the append; waiting for a turn costs less than
    losing and re-deciding. A lock exists only while some command holds it or waits
    for it (a count of them, under one registry lock): the last one out removes it,
    so the registry holds at most one lock per command in flight, never one per
    payment ever commanded (a million payments leave it empty, not a million locks).
    Keyed by store as well: two stores are two views, like two processes, whose
    races the append's expected version and the back-off settle.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._turns: dict[tuple[EventStore, UUID], _Turn] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._turns)

    @contextmanager
    def taking(self, store: EventStore, payment_id: UUID, deadline: float) -> Iterator[None]:
        """Hold the payment's turn; waiting for it ends at ``deadline`` (monotonic)."""
        key = (store, payment_id)
        with self._lock:
            turn = self._turns.get(key)
            if turn is None:
                turn = self._turns[key] = _Turn()
            turn.users += 1
        try:
            wait = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
            if not turn.lock.acquire(timeout=wait):
                raise _deadline_passed(payment_id, "was busy with other commands")
            try:
                yield
            finally:
                turn.lock.release()
        finally:
            with self._lock:
                turn.users -= 1
                if not turn.users:
                    del self._turns[key]


_turns = _StreamTurns()


def _deadline_passed(payment_id: UUID, why: str) -> ConcurrencyConflict:
    """The 409 of a command that ran out of time waiting, not one the rules refused."""
    return ConcurrencyConflict(
        f"payment {payment_id} {why} until the command's deadline"
        f" ({settings.COMMAND_DEADLINE:g} s) passed; try again"
    )


def _back_off(payment_id: UUID, action: str, attempt: int, deadline: float) -> None:
    """Pause before re-deciding after lost race ``attempt`` (1, 2, ...): a random time up
    to 1 ms, 2 ms, 4 ms ... capped at ``LONGEST_BACKOFF``, and never past ``deadline``.

    Another process won the race (within this one, commands take turns); pausing for a
    random while lets it finish rather than meeting it again at once.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _deadline_passed(payment_id, f"kept changing while {action} was decided")
    ceiling = min(LONGEST_BACKOFF, FIRST_BACKOFF * 2 ** min(attempt - 1, 16))
    time.sleep(min(remaining, random.uniform(0, ceiling)))


def _current_state(
    store: EventStore,
    payment_id: UUID,
    event_id: UUID,
    command_id: UUID,
    *,
    needs_history: bool,
    creates: bool,
) -> tuple[Payment | None, Payment | None]:
    """(state to decide on, state to return as a replay); both None for a new payment."""
    if not needs_history:
        if creates:
            return None, None
        cached = _recent.get(store, payment_id)
        if cached is not None:
            return cached, None
    try:
        loaded = _load(store, payment_id)
        _step("payment.loaded")
    except PaymentNotFound:
        if creates:
            return None, None
        raise
    replayed = _replay(loaded, event_id, command_id) if needs_history else None
    if replayed is None and creates:
        raise IdempotencyKeyReused("this idempotency key was already used for a different payment")
    return loaded.payment, replayed


def _run(
    store: EventStore,
    payment_id: UUID,
    action: str,
    parse: Callable[[], dict[str, Any]],
    decide: Callable[[Payment | None, dict[str, Any]], PaymentEvent],
    *,
    idempotency_key: str | None,
    correlation_id: UUID | None,
    expected_version: int | None,
    creates: bool = False,
) -> Payment:
    """Parse the request and carry the command out; one log line says how it ended.

    Parsing happens here so that a command refused for bad input is logged too.
    """
    started = time.perf_counter()
    with _command_span(action, payment_id) as span:
        try:
            payment, event_type, position = _decide_and_append(
                store, payment_id, action, parse(), decide, idempotency_key=idempotency_key,
                correlation_id=correlation_id, expected_version=expected_version,
                creates=creates,
            )
        except Exception as e:
            level, outcome = _failure(e)
            _end_span(span, outcome, error=e)
            _log_command(level, outcome, action, payment_id, started, reason=e)
            raise
        outcome = "ok" if event_type else "replayed"
        _end_span(span, outcome, event_type=event_type, version=payment.version,
                  position=position)
    _log_command(logging.INFO, outcome, action, payment_id, started,
                 event_type=event_type, version=payment.version)
    return payment


def _failure(error: Exception) -> tuple[int, str]:
    """The log level and outcome of a command that raised ``error``."""
    if isinstance(error, ConcurrencyConflict):
        return logging.WARNING, "conflict"
    if isinstance(error, PaymentError) and not isinstance(error, HistoryError):
        return logging.INFO, "refused"  # the rules said no: the system is fine
    if isinstance(error, EventStoreError) and not isinstance(error, UnreadableEvent):
        return logging.WARNING, "unavailable"  # an unreadable event is an error, below
    return logging.ERROR, "error"  # a stream we cannot read, or a bug


def _log_command(
    level: int,
    outcome: str,
    action: str,
    payment_id: UUID,
    started: float,
    *,
    event_type: str | None = None,
    version: int | None = None,
    reason: Exception | None = None,
) -> None:
    """One line per command, its fields also given apart for LOG_FORMAT=json; and the
    command counted and timed by action and outcome (paymentsite.metrics), logged or not.

    Nothing is formatted when the level is off: this is on the benchmarked path.
    """
    seconds = time.perf_counter() - started
    observe_command(action, outcome, seconds)
    if not logger.isEnabledFor(level):
        return
    duration_ms = round(seconds * 1000, 1)
    fields = {"payment_id": str(payment_id), "action": action, "event_type": event_type,
              "outcome": outcome, "duration_ms": duration_ms}
    if outcome == "ok":
        logger.log(level, "%s %s -> %s at version %d in %.1f ms", action, payment_id,
                   event_type, version, duration_ms, extra={**fields, "version": version})
    else:
        logger.log(level, "%s %s %s in %.1f ms%s", action, payment_id, outcome, duration_ms,
                   f": {reason}" if reason else "", extra=fields)


def _decide_and_append(
    store: EventStore,
    payment_id: UUID,
    action: str,
    request: dict[str, Any],
    decide: Callable[[Payment | None, dict[str, Any]], PaymentEvent],
    *,
    idempotency_key: str | None,
    correlation_id: UUID | None,
    expected_version: int | None,
    creates: bool,
) -> tuple[Payment, str | None, int | None]:
    """In the payment's turn: load, decide, append with the version read; on a race
    lost to another process, back off and do it again, until the command's deadline.

    Returns the payment, the appended event's type and its position (both None: a
    replay, nothing new).
    """
    deadline = time.monotonic() + settings.COMMAND_DEADLINE
    stream = stream_name(payment_id)
    event_id, command_id = _command_ids(payment_id, action, request, idempotency_key)
    metadata = encode_metadata(
        correlation_id=correlation_id or command_id, causation_id=command_id,
        trace_context=_trace_context(),
    )
    # An idempotency key must see the history; so must a caller's expected version
    # that differs from what we hold (it is checked against the store, not the cache).
    needs_history = idempotency_key is not None
    lost = 0
    with _turns.taking(store, payment_id, deadline):
        while True:
            current, replayed = _current_state(
                store, payment_id, event_id, command_id, needs_history=needs_history,
                creates=creates,
            )
            if replayed is not None:
                return replayed, None, None
            if expected_version is not None and current is not None \
                    and current.version != expected_version:
                if not needs_history:
                    needs_history = True  # the cache may be behind: ask the store
                    continue
                raise ConcurrencyConflict(
                    f"payment {payment_id} is at version {current.version},"
                    f" not {expected_version}; it is {current.status}"
                )
            event = decide(current, request)
            _step("payment.decided")
            new_event = NewEvent(
                type=event.type_name, data=encode_data(event), metadata=metadata, id=event_id
            )
            try:
                result = store.append(
                    stream, [new_event], current.version if current else StreamState.NO_STREAM
                )
            except WrongExpectedVersion:
                lost += 1
                _step("payment.lost_race", lost)
                logger.info("%s %s: lost a race to another process (attempt %d), backing off",
                            action, payment_id, lost)
                _recent.forget(store, payment_id)
                _back_off(payment_id, action, lost, deadline)
                continue
            _step("payment.appended")
            payment = replace(apply(current, event, result.version), position=result.position)
            _recent.put(store, payment)
            return payment, event.type_name, result.position
