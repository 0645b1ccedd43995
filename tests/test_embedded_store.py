"""The embedded store's own behaviour beyond the shared contract: whose turn it is to
append, between the threads of a process and between processes."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
from pathlib import Path
from uuid import uuid4

import pytest

from payments.eventstore import EventStoreUnavailable, NewEvent, StreamState
from payments.eventstore.embedded import EmbeddedEventStore

ROOT = Path(__file__).resolve().parent.parent


def new_event() -> NewEvent:
    return NewEvent(type="PaymentCreated", data=b"{}", metadata=b"{}", id=uuid4())


def test_an_append_waits_its_turn_and_says_busy_when_it_never_comes(tmp_path: Path) -> None:
    store = EmbeddedEventStore(tmp_path / "events.sqlite3", timeout=0.3)
    try:
        store.append("payments-a", [new_event()], StreamState.NO_STREAM)
        # Another writer's turn (any open file description of the lock file will do).
        other = os.open(f"{store.path}-writer.lock", os.O_RDWR)
        fcntl.flock(other, fcntl.LOCK_EX)
        try:
            with pytest.raises(EventStoreUnavailable, match="busy"):
                store.append("payments-b", [new_event()], StreamState.NO_STREAM)
            waiting = threading.Thread(
                target=store.append, args=("payments-c", [new_event()], StreamState.NO_STREAM))
            waiting.start()
        finally:
            fcntl.flock(other, fcntl.LOCK_UN)
            os.close(other)
        waiting.join(5)
        assert not waiting.is_alive()
        assert [e.stream for e in store.read_all()] == ["payments-a", "payments-c"]
    finally:
        store.close()


APPENDER = """
import sys
from uuid import uuid4
from payments.eventstore import NewEvent, StreamState
from payments.eventstore.embedded import EmbeddedEventStore

store = EmbeddedEventStore(sys.argv[1], timeout=30)
for n in range(int(sys.argv[3])):
    event = NewEvent(type="PaymentCreated", data=b"{}", metadata=b"{}", id=uuid4())
    store.append(f"payments-{sys.argv[2]}-{n}", [event], StreamState.NO_STREAM)
store.close()
"""


def test_processes_and_threads_appending_at_once_all_land_in_order(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    store = EmbeddedEventStore(path, timeout=30)
    try:
        processes = [
            subprocess.Popen([sys.executable, "-c", APPENDER, str(path), f"p{i}", "150"],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
            for i in range(2)
        ]
        threads = [
            threading.Thread(target=lambda t=t: [
                store.append(f"payments-t{t}-{n}", [new_event()], StreamState.NO_STREAM)
                for n in range(150)
            ])
            for t in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [p.wait(60) for p in processes] == [0, 0]
        events = list(store.read_all())
        assert len(events) == 5 * 150
        assert [e.position for e in events] == list(range(1, 5 * 150 + 1))
        assert len({e.stream for e in events}) == 5 * 150
    finally:
        store.close()
