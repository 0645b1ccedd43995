"""The event store port: the one interface the application uses to store events.

Two adapters implement it (``embedded.EmbeddedEventStore`` on SQLite and
``esdb.EventStoreDBEventStore`` on EventStoreDB) and pass one contract test suite
(``tests/test_eventstore_contract.py``). Nothing outside the adapters imports
``sqlite3`` or ``esdbclient``.

Positions: every recorded event carries ``version`` (0-based, within its stream) and
``position`` (global, strictly increasing in commit order, not necessarily dense).
Reading "after" a position excludes it, so a checkpoint holding the position of the
last applied event resumes exactly at the next one.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import NamedTuple, Protocol, Self
from uuid import UUID, uuid4


class StreamState(enum.Enum):
    """Expected versions that are not a number."""

    NO_STREAM = "no_stream"  # the stream must not exist yet
    ANY = "any"  # no concurrency check (never used by the command service)


ExpectedVersion = int | StreamState


@dataclass(frozen=True)
class NewEvent:
    """An event to append. ``data`` and ``metadata`` are UTF-8 JSON documents."""

    type: str
    data: bytes
    metadata: bytes = b"{}"
    id: UUID = field(default_factory=uuid4)


class RecordedEvent(NamedTuple):
    """An event as the store holds it.

    A named tuple, not a frozen dataclass: a catch-up makes one per event, and a tuple
    costs a quarter as much to build (fields, keywords, equality and immutability alike).
    """

    id: UUID
    stream: str
    type: str
    data: bytes
    metadata: bytes
    version: int
    position: int
    recorded_at: datetime | None = None


@dataclass(frozen=True)
class AppendResult:
    """Where an append left the stream: its new version and the last event's position."""

    version: int
    position: int


class EventStoreError(Exception):
    """Base class of the port's errors."""


class WrongExpectedVersion(EventStoreError):
    """The stream is not at the version the caller expected (a concurrent change)."""

    def __init__(self, stream: str, expected: ExpectedVersion, actual: int | None) -> None:
        self.stream = stream
        self.expected = expected
        self.actual = actual
        shown = expected.value if isinstance(expected, StreamState) else expected
        super().__init__(
            f"stream {stream!r} is at version {actual if actual is not None else 'none'},"
            f" expected {shown}"
        )


class StreamNotFound(EventStoreError):
    """The stream has no events."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        super().__init__(f"stream {stream!r} not found")


class UnreadableEvent(EventStoreError):
    """A stored event that cannot be read as one: a row another tool wrote, data that is
    not JSON, an unknown schema version. Its position, stream and type say which."""

    def __init__(self, position: int, stream: str, type: str, reason: str) -> None:
        self.position = position
        self.stream = stream
        self.type = type
        self.reason = reason
        super().__init__(
            f"the event at position {position} (stream {stream}, type {type}) cannot be"
            f" read: {reason}"
        )


class EventStoreUnavailable(EventStoreError):
    """The store could not be reached (or did not answer) within the deadline."""


class Closing:
    """``with store:`` / ``with subscription:`` closes it at the end of the block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Subscription(Closing):
    """A catch-up subscription: history first, then live appends, in position order.

    ``get`` waits at most ``timeout`` seconds and returns ``None`` when nothing came,
    so a caller can bound its batches by time and notice a stop request. Errors of
    the store surface from ``get`` (and iteration) as ``EventStoreUnavailable``.
    Adapters implement ``get``, ``close``, ``closed`` and ``position``.
    """

    def get(self, timeout: float) -> RecordedEvent | None:
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    @property
    def position(self) -> int | None:
        """Every event of the category at or before this position has been returned.

        At least the position of the last event ``get`` returned; further when the store
        says it has looked past other categories' events (EventStoreDB's checkpoints, the
        embedded store's head), so a runner can move its checkpoint past them and a
        restart does not read them again. None before anything is known.
        """
        raise NotImplementedError

    def get_many(self, max_count: int, timeout: float) -> list[RecordedEvent]:
        """Up to ``max_count`` events: waits at most ``timeout`` for the first one, then
        only as long as ``fill_wait`` says (by default not at all: a batch takes what is
        already there and never waits on a slow trickle)."""
        first = self.get(timeout)
        if first is None:
            return []
        batch = [first]
        started = time.monotonic()
        while len(batch) < max_count:
            try:
                following = self.get(self.fill_wait(started))
            except UnreadableEvent:
                break  # the events before it first; the next call raises it
            if following is None:
                break
            batch.append(following)
        return batch

    def fill_wait(self, started: float) -> float:
        """Seconds a batch begun at ``started`` (monotonic) may still wait for more."""
        return 0.0

    def __iter__(self) -> Iterator[RecordedEvent]:
        """Every event, waiting for live ones, until closed."""
        while not self.closed:
            event = self.get(timeout=1.0)
            if event is not None:
                yield event


class EventStore(Protocol):
    """The operations the application needs from an event store."""

    def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: ExpectedVersion
    ) -> AppendResult:
        """Append atomically if the stream is at ``expected_version``.

        Appending events whose ids are already the stream's latest events at that
        version is a no-op that returns the original result (idempotent retry).
        Raises ``WrongExpectedVersion`` otherwise.
        """
        ...

    def read_stream(self, stream: str) -> list[RecordedEvent]:
        """All events of one stream in version order; ``StreamNotFound`` if none."""
        ...

    def read_all(
        self, *, after: int | None = None, category: str = "payments", limit: int | None = None
    ) -> list[RecordedEvent]:
        """Events of streams ``<category>-…`` with position > ``after``, in order."""
        ...

    def subscribe(self, *, after: int | None = None, category: str = "payments") -> Subscription:
        """A catch-up subscription from just after ``after`` (the start if None)."""
        ...

    def head_position(self, *, category: str = "payments") -> int:
        """A position at or after the category's last event (0: the store is empty).

        A subscriber whose ``position`` reached it has seen every event of the category
        committed before the call. The embedded store answers the category's last event;
        EventStoreDB the last event of ``$all``, since finding the category's last event
        there is a filtered scan of the whole log when the category is rare. Either way
        it answers in constant time, on a store of any size.
        """
        ...

    def close(self) -> None:
        """Release connections and threads."""
        ...
