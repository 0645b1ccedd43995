"""The event store port and the choice of adapter by URI.

``sqlite:////absolute/path`` (the default: var/events.sqlite3) opens the embedded
store; ``esdb://`` and ``esdb+discover://`` open EventStoreDB through esdbclient.
The process's store (``get_event_store``) is measured (``instrumented``) unless
``METRICS_ENABLED`` is off.
"""

from __future__ import annotations

import atexit
import threading

from payments.eventstore.instrumented import InstrumentedEventStore
from payments.eventstore.port import (
    AppendResult,
    EventStore,
    EventStoreError,
    EventStoreUnavailable,
    ExpectedVersion,
    NewEvent,
    RecordedEvent,
    StreamNotFound,
    StreamState,
    Subscription,
    UnreadableEvent,
    WrongExpectedVersion,
)

__all__ = [
    "AppendResult",
    "EventStore",
    "EventStoreError",
    "EventStoreUnavailable",
    "ExpectedVersion",
    "NewEvent",
    "RecordedEvent",
    "StreamNotFound",
    "StreamState",
    "Subscription",
    "UnreadableEvent",
    "UnsupportedEventStoreURI",
    "WrongExpectedVersion",
    "adapter_name",
    "get_event_store",
    "open_event_store",
    "reset_event_store",
]


def open_event_store(uri: str, *, timeout: float = 5.0) -> EventStore:
    """A new store for ``uri``; the caller closes it."""
    if uri.startswith("sqlite:///"):
        from payments.eventstore.embedded import EmbeddedEventStore

        path = uri.removeprefix("sqlite:///")
        if not path.startswith("/"):
            # It would depend on the folder a command runs in, and make folders there.
            raise UnsupportedEventStoreURI(
                f"EVENTSTORE_URI {uri} names a relative path ({path or 'none'}): give the"
                f" absolute path after sqlite:/// (sqlite:////srv/payments/events.sqlite3,"
                " four slashes in all)")
        return EmbeddedEventStore(path, timeout=timeout)
    if uri.startswith(("esdb://", "esdb+discover://")):
        from payments.eventstore.esdb import EventStoreDBEventStore

        return EventStoreDBEventStore(uri, timeout=timeout)
    raise UnsupportedEventStoreURI(
        f"EVENTSTORE_URI {uri.split('://')[0]}://… is not supported:"
        " use sqlite:///path or esdb://host:port"
    )


class UnsupportedEventStoreURI(EventStoreError, ValueError):
    """EVENTSTORE_URI names no store this code can open (a configuration error)."""


_store: EventStore | None = None
_lock = threading.Lock()


def adapter_name(uri: str) -> str:
    """The adapter a URI opens, as metrics label it: ``embedded`` or ``esdb``."""
    return "embedded" if uri.startswith("sqlite:") else "esdb"


def get_event_store() -> EventStore:
    """The process's store, opened on first use from settings and closed at exit; its calls
    are timed and counted by adapter (paymentsite.metrics) when METRICS_ENABLED is on."""
    global _store
    with _lock:
        if _store is None:
            from django.conf import settings

            uri = settings.EVENTSTORE_URI
            _store = open_event_store(uri, timeout=settings.EVENTSTORE_TIMEOUT)
            if settings.METRICS_ENABLED:
                _store = InstrumentedEventStore(_store, adapter_name(uri))
        return _store


def reset_event_store() -> None:
    """Close the process's store so the next use reopens it (tests, settings changes)."""
    global _store
    with _lock:
        if _store is not None:
            _store.close()
            _store = None


atexit.register(reset_event_store)
