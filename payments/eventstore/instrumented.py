"""The event store's metrics: every call of the port timed and its errors counted, by
adapter, around whichever store ``get_event_store()`` opened.

One wrapper rather than a timer in each adapter: both adapters are measured alike, by
the same code, and stay free of metrics. The metrics themselves are defined in
``paymentsite.metrics`` (their meaning: docs/OPERATIONS.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any, TypeVar

from payments.eventstore.port import (
    AppendResult,
    Closing,
    EventStore,
    EventStoreError,
    EventStoreUnavailable,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamNotFound,
    Subscription,
    UnreadableEvent,
    WrongExpectedVersion,
)
from paymentsite.metrics import STORE_ERRORS, STORE_EVENTS_READ, STORE_SECONDS

T = TypeVar("T")

OPERATIONS = ("append", "read_stream", "read_all", "head_position", "subscribe")
_KNOWN_ERRORS = (WrongExpectedVersion, StreamNotFound, UnreadableEvent, EventStoreUnavailable,
                 EventStoreError)


def error_label(error: BaseException) -> str:
    """The port's error class (a few, known in advance), else ``other`` (a bug)."""
    for kind in _KNOWN_ERRORS:
        if isinstance(error, kind):
            return kind.__name__
    return "other"


class InstrumentedEventStore(Closing):
    """The port, delegated to ``store``; anything else (an adapter's own attributes, such
    as the embedded store's ``path``) passes straight through."""

    def __init__(self, store: EventStore, adapter: str) -> None:
        self.store = store
        self.adapter = adapter
        # The children made once: .labels() takes a lock and builds a key on every call.
        self._seconds = {op: STORE_SECONDS.labels(adapter, op) for op in OPERATIONS}
        self._read = {op: STORE_EVENTS_READ.labels(adapter, op)
                      for op in ("read_stream", "read_all", "subscription")}

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        started = perf_counter()
        try:
            return call()
        except Exception as e:
            STORE_ERRORS.labels(self.adapter, operation, error_label(e)).inc()
            raise
        finally:
            self._seconds[operation].observe(perf_counter() - started)

    def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        return self._call("append", lambda: self.store.append(stream, events, expected_version))

    def read_stream(self, stream: str) -> list[RecordedEvent]:
        records = self._call("read_stream", lambda: self.store.read_stream(stream))
        self._read["read_stream"].inc(len(records))
        return records

    def read_all(
        self, *, after: int | None = None, category: str = "payments", limit: int | None = None
    ) -> list[RecordedEvent]:
        records = self._call("read_all", lambda: self.store.read_all(
            after=after, category=category, limit=limit))
        self._read["read_all"].inc(len(records))
        return records

    def subscribe(self, *, after: int | None = None, category: str = "payments") -> Subscription:
        subscription = self._call("subscribe", lambda: self.store.subscribe(
            after=after, category=category))
        return InstrumentedSubscription(subscription, self.adapter, self._read["subscription"])

    def head_position(self, *, category: str = "payments") -> int:
        return self._call("head_position", lambda: self.store.head_position(category=category))

    def close(self) -> None:
        self.store.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


class InstrumentedSubscription(Subscription):
    """A subscription whose events are counted and whose breaks (the store went away while
    a runner followed it) are counted as errors of the ``subscription`` operation. Its
    waits are not timed: they last as long as no event comes."""

    def __init__(self, subscription: Subscription, adapter: str, events: Any) -> None:
        self.subscription = subscription
        self.adapter = adapter
        self._events = events

    def _counted(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except Exception as e:
            STORE_ERRORS.labels(self.adapter, "subscription", error_label(e)).inc()
            raise

    def get(self, timeout: float) -> RecordedEvent | None:
        event = self._counted(lambda: self.subscription.get(timeout))
        if event is not None:
            self._events.inc()
        return event

    def get_many(self, max_count: int, timeout: float) -> list[RecordedEvent]:
        batch = self._counted(lambda: self.subscription.get_many(max_count, timeout))
        if batch:
            self._events.inc(len(batch))
        return batch

    @property
    def closed(self) -> bool:
        return self.subscription.closed

    @property
    def position(self) -> int | None:
        return self.subscription.position

    def fill_wait(self, started: float) -> float:
        return self.subscription.fill_wait(started)

    def close(self) -> None:
        self.subscription.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.subscription, name)
