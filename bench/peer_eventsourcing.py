"""The peer: our payment life cycle on the ``eventsourcing`` library (9.5, bench only).

    .venv/bin/python bench/peer_eventsourcing.py [--payments 1000]

A reviewer's floor for the command path: the library's ``Application`` with its SQLite
persistence module (``PERSISTENCE_MODULE=eventsourcing.sqlite``, a file in the bench's
folder) and an ``Aggregate`` with the same create -> authorize -> settle rules as
``payments.domain`` (status checks, Decimal amounts, the same input parsing), written the
way the library's own examples write one: a command method checks, then calls an
``@event`` method whose body is the state change. Each command is one
``repository.get``, the decision and one ``save`` (one insert, one durable commit), as
our command service's is.

Durability matches our store's: the library sets WAL and leaves ``synchronous`` at
SQLite's compiled default, which ``measure`` reads back and requires to be FULL (it is
on Debian's and Python's builds); otherwise the comparison would be unfair, so the run
stops and says so. What is not the same: the library's transactions begin DEFERRED (ours
IMMEDIATE) and it takes no lock among processes (ours takes a lock file), and its events
carry no correlation or causation ids (ours do, in their metadata).

Two configurations of the repository:

* ``cached``: its aggregate cache (``AGGREGATE_CACHE_MAXSIZE``, the size of our service's
  ``_RecentPayments``) without fast-forward: a command on a payment that this process
  just saved reads nothing, as ours does. The library calls that mode safe for one
  writer only (a stale cache entry is never refreshed); ours forgets the entry when an
  append loses a race and reads the stream again. Same work per command: the baseline.
* ``default``: the library's defaults, no cache: every ``repository.get`` reads the
  stream and replays it. A reference.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

try:
    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event
except ImportError as e:  # not a runtime dependency: bench/requirements.txt
    raise ImportError("the eventsourcing peer needs the bench requirements:"
                      " .venv/bin/python -m pip install -r bench/requirements.txt") from e

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The domain's input rules only (no Django): both sides parse the same way.
from payments.domain import (  # noqa: E402
    MAX_SETTLEMENTS,
    parse_amount,
    parse_bank_name,
    parse_currency,
)

CACHE_SIZE = 10_000  # as payments.services._RecentPayments
SYNCHRONOUS_FULL = 2  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


class PeerError(Exception):
    """A command the rules refuse."""


class PeerPayment(Aggregate):
    """A payment: pending -> authorized -> (partially) settled, as ``payments.domain``."""

    @event("Created")
    def __init__(self, amount: Decimal, currency: str, reference: str) -> None:
        self.amount = amount
        self.currency = currency
        self.reference = reference
        self.status = "pending"
        self.settled_amount = Decimal("0.00")
        self.refunded_amount = Decimal("0.00")
        self.bank_name: str | None = None
        self.settlements = 0

    def authorize(self, bank_name: str) -> None:
        if self.status != "pending":
            raise PeerError(f"cannot authorize a payment that is {self.status}")
        self._authorized(bank_name=parse_bank_name(bank_name), authorization_id=uuid4())

    @event("Authorized")
    def _authorized(self, bank_name: str, authorization_id: UUID) -> None:
        self.status = "authorized"
        self.bank_name = bank_name

    def settle(self, amount: Decimal | None = None) -> None:
        if self.status not in ("authorized", "partially_settled"):
            raise PeerError(f"cannot settle a payment that is {self.status}")
        if self.settlements >= MAX_SETTLEMENTS:
            raise PeerError("too many settlements")
        outstanding = self.amount - self.settled_amount
        asked = outstanding if amount is None else parse_amount(amount)
        if asked > outstanding:
            raise PeerError(f"cannot settle {asked}: only {outstanding} is left")
        self._settled(bank_name=self.bank_name or "", amount=asked, settlement_id=uuid4())

    @event("Settled")
    def _settled(self, bank_name: str, amount: Decimal, settlement_id: UUID) -> None:
        self.settled_amount += amount
        self.settlements += 1
        self.status = "settled" if self.settled_amount >= self.amount else "partially_settled"


class PeerPayments(Application):
    """The application: one method per command, each a get, a decision and a save."""

    env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite"}  # the library reads it from here

    def create_payment(self, amount: str, currency: str) -> UUID:
        payment = PeerPayment(amount=parse_amount(amount), currency=parse_currency(currency),
                              reference="")
        self.save(payment)
        return payment.id

    def authorize_payment(self, payment_id: UUID, bank_name: str) -> None:
        payment: PeerPayment = self.repository.get(payment_id)
        payment.authorize(bank_name)
        self.save(payment)

    def settle_payment(self, payment_id: UUID, amount: str | None = None) -> None:
        payment: PeerPayment = self.repository.get(payment_id)
        payment.settle(amount)
        self.save(payment)

    def find(self, payment_id: UUID) -> PeerPayment:
        return self.repository.get(payment_id)


def open_peer(path: Path, *, cached: bool) -> PeerPayments:
    """The application on a SQLite file at ``path`` (created), as configured above."""
    env = {"SQLITE_DBNAME": str(path)}
    if cached:
        env.update(AGGREGATE_CACHE_MAXSIZE=str(CACHE_SIZE), AGGREGATE_CACHE_FASTFORWARD="n")
    return PeerPayments(env=env)


def durability(app: PeerPayments) -> tuple[str, int]:
    """The journal mode and ``synchronous`` level of the library's own connections."""
    datastore = app.factory.datastore  # type: ignore[attr-defined] - SQLiteFactory's
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA journal_mode")
        journal = cursor.fetchone()[0]
        cursor.execute("PRAGMA synchronous")
        return journal, cursor.fetchone()[0]


def peer_run(folder: Path, payments: int, *, cached: bool) -> tuple[float, float]:
    """Commands per second through the peer, sequentially, and its CPU per command (µs)."""
    name = "cached" if cached else "default"
    app = open_peer(folder / f"peer-{name}.sqlite3", cached=cached)
    try:
        journal, synchronous = durability(app)
        if journal.lower() != "wal" or synchronous < SYNCHRONOUS_FULL:
            raise RuntimeError(
                f"the peer's SQLite runs journal_mode={journal} synchronous={synchronous}:"
                " less durable than our store (WAL, synchronous=FULL), so no fair baseline"
                f" (SQLite {sqlite3.sqlite_version})")
        started, cpu_started = time.perf_counter(), time.process_time()
        for _ in range(payments):
            payment_id = app.create_payment(amount="100.00", currency="EUR")
            app.authorize_payment(payment_id, bank_name="Bench Bank")
            app.settle_payment(payment_id)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        last = app.find(payment_id)
        if last.status != "settled" or last.version != 3:  # the library counts from 1
            raise RuntimeError(f"the peer's life cycle went wrong: {last.status}, v{last.version}")
    finally:
        app.close()
    return 3 * payments / elapsed, cpu / (3 * payments) * 1e6


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=1000)
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "var", prefix="bench-peer-") as folder:
        app = open_peer(Path(folder) / "probe.sqlite3", cached=False)
        journal, synchronous = durability(app)
        app.close()
        print(f"the library's SQLite: journal_mode={journal} synchronous={synchronous}")
        results: dict[str, Any] = {}
        for cached in (True, False):
            results["cached" if cached else "default"] = peer_run(
                Path(folder), args.payments, cached=cached)
        for name, (rate, cpu) in results.items():
            print(f"peer, {name:8s} {rate:8.0f} commands/s, {cpu:6.1f} us CPU per command")


if __name__ == "__main__":
    main()
