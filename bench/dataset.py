"""Payment histories for the benchmarks, written straight into an embedded store file
(or, through ``histories``, into the EventStoreDB double: ``bench/catchup.py``).

Every history is made by the aggregate itself (so it is valid) and encoded by
``payments.events`` (so it is what the service would have stored). Of the payments,
15% are declined; the rest are authorized and settled, and a tenth of those refunded
in part: 2.95 events per payment, over five banks and six decline codes.

Appending through the store costs one durable commit per payment (over half an hour
for a million); here the rows go in with ``executemany``, in large transactions,
with the store's own schema and insert, and the file is left in WAL mode as the
store keeps it.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

from payments.domain import apply, create_payment
from payments.events import PaymentEvent, encode_data, encode_metadata, stream_name
from payments.eventstore.embedded import _INSERT, SCHEMA, _category  # as the store writes

BANKS = ["Northbank", "Eastbank", "Southbank", "Westbank", "Midbank"]
CODES = ["05", "51", "54", "N7", "14", "61"]
START = datetime(2026, 11, 1, tzinfo=UTC)
CHUNK = 20_000  # payments per transaction: bounded memory, few commits
EVENTS_PER_20_PAYMENTS = 59  # 3 declined x 2 events, 17 settled x 3, 2 refunds


def life_cycle(n: int, at: datetime) -> list[PaymentEvent]:
    """The events of payment number ``n``: 15% declined, a tenth of the rest refunded."""
    bank = BANKS[n % len(BANKS)]
    created = create_payment(payment_id=uuid4(), amount=f"{10 + n % 990}.{n % 100:02d}",
                             currency="EUR", occurred_at=at)
    events: list[PaymentEvent] = [created]
    payment = apply(None, created, 0)

    def record(event: PaymentEvent) -> None:
        nonlocal payment
        events.append(event)
        payment = apply(payment, event, len(events) - 1)

    if n % 20 < 3:
        record(payment.decline(bank_name=bank, decline_code=CODES[n % len(CODES)],
                               occurred_at=at))
    else:
        record(payment.authorize(bank_name=bank, occurred_at=at))
        record(payment.settle(occurred_at=at))
        if n % 10 == 7:
            record(payment.refund(amount=Decimal("5.00"), occurred_at=at))
    return events


def histories(first: int, count: int) -> Iterator[tuple[str, int, str, bytes, bytes]]:
    """The events of payments ``first`` .. ``first + count - 1``, in order, as any store
    keeps them: (stream, version, type, data, metadata), encoded as the service does.
    The embedded store's rows (``_rows``) and the EventStoreDB double's load
    (``bench/catchup.py``) are both made from this."""
    for n in range(first, first + count):
        events = life_cycle(n, START + timedelta(seconds=n * 37))
        stream = stream_name(events[0].payment_id)
        metadata = encode_metadata(correlation_id=uuid4(), causation_id=uuid4())
        for version, event in enumerate(events):
            yield stream, version, event.type_name, encode_data(event), metadata


def payments_for(events: int) -> int:
    """How many payment histories make about ``events`` events."""
    return math.ceil(events * 20 / EVENTS_PER_20_PAYMENTS)


def _rows(first: int, count: int, recorded_at: float) -> Iterator[tuple]:
    """The ``events`` rows of payments ``first`` .. ``first + count - 1``, in order."""
    for stream, version, type_name, data, metadata in histories(first, count):
        yield (uuid4().bytes, stream, _category(stream), version, type_name, data, metadata,
               recorded_at)


def write_payments(path: Path, *, payments: int | None = None,
                   events: int | None = None) -> tuple[int, int]:
    """Write ``payments`` histories (or enough for about ``events`` events) into a new
    store file; returns (payments, events) written.

    The file must not exist yet: positions start at 1 and nothing else may hold the
    file while it is written.
    """
    if (payments is None) == (events is None):
        raise ValueError("give payments or events")
    if payments is None:
        payments = payments_for(events)
    if path.exists():
        raise FileExistsError(f"{path} exists: the bulk load writes a new store only")
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # No journal while loading (a crash leaves a file we throw away anyway); a large
        # cache, so that inserts into the (stream, version) index stay in memory.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-1000000")  # KiB: up to 1 GB
        connection.executescript(SCHEMA)
        recorded_at = time.time()
        written = 0
        for first in range(0, payments, CHUNK):
            rows = list(_rows(first, min(CHUNK, payments - first), recorded_at))
            connection.execute("BEGIN")
            connection.executemany(_INSERT, rows)
            connection.execute("COMMIT")
            written += len(rows)
        connection.execute("PRAGMA journal_mode=WAL")  # as the store keeps its file
    finally:
        connection.close()
    return payments, written
