"""Checked-in fixtures of stored events (JSON lines: stream, type, data, metadata, id),
appended byte for byte as they were once stored."""

from __future__ import annotations

import json
from pathlib import Path
from uuid import UUID

from payments.eventstore import EventStore, NewEvent, StreamState


def stored_lines(fixture: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in fixture.read_text().splitlines()]


def load_stored_events(store: EventStore, fixture: Path) -> None:
    """Append the fixture's events byte for byte, in its order, as they were stored."""
    versions: dict[str, int] = {}
    for stored in stored_lines(fixture):
        stream = stored["stream"]
        expected = versions.get(stream, StreamState.NO_STREAM)
        store.append(stream, [NewEvent(type=stored["type"], data=stored["data"].encode(),
                                       metadata=stored["metadata"].encode(),
                                       id=UUID(stored["id"]))], expected)
        versions[stream] = versions.get(stream, -1) + 1
