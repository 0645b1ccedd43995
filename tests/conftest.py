"""Fixtures: every test gets its own embedded event store file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from payments.eventstore import EventStore, reset_event_store
from payments.eventstore.embedded import EmbeddedEventStore


@pytest.fixture(autouse=True)
def _isolated_event_store(settings, tmp_path: Path) -> Iterator[None]:
    """Point EVENTSTORE_URI at a fresh file, so no test sees another's events."""
    reset_event_store()
    settings.EVENTSTORE_URI = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    yield
    reset_event_store()


@pytest.fixture
def embedded_store(tmp_path: Path) -> Iterator[EventStore]:
    store = EmbeddedEventStore(tmp_path / "embedded-events.sqlite3")
    yield store
    store.close()
