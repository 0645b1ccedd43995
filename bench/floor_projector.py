"""The floor of a rebuild: a bare Python projector of PaymentView, the rebuild's baseline.

What anyone would write by hand to fill PaymentView from the embedded store's file, and
nothing more: no Django, no port, no event classes, no runner. It reads the payment
events in position order, 1,000 at a time, with plain ``sqlite3``; decodes each with the
standard library's ``json.loads``; folds every payment into a dict (all of them, for the
whole run: it never reads its own table); and per batch, in one transaction, upserts
the batch's payments with one ``executemany`` and moves its checkpoint with one
``UPDATE``. Its tables are PaymentView's and Checkpoint's exactly as the migrations made
them (``schema`` copies their DDL, indexes included, from a migrated database), in a
database of its own opened with the read-model database's pragmas.

It trusts its input: our own events at the current schema version (UTC timestamps with
a ``Z`` and six decimals, as ``payments.events`` writes them), which is what
``dataset.py`` writes. ``bench/rebuild.py`` checks, in every run, that its rows are the
project's rows, value for value.
"""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

PAYMENT_TABLE = "projections_paymentview"
CHECKPOINT_TABLE = "projections_checkpoint"
NAME = "floor"  # its checkpoint's name
COLUMNS = ("payment_id", "status", "amount", "currency", "reference", "settled_amount",
           "refunded_amount", "bank_name", "decline_code", "created_at", "updated_at",
           "version", "position")
_QUOTED = [f'"{column}"' for column in COLUMNS]
UPSERT = (
    f'INSERT INTO "{PAYMENT_TABLE}" ({", ".join(_QUOTED)}) VALUES ({", ".join("?" * len(COLUMNS))})'
    ' ON CONFLICT ("payment_id") DO UPDATE SET '
    + ", ".join(f"{column} = excluded.{column}" for column in _QUOTED[1:])
)
READ = ("SELECT position, version, type, data FROM events"
        " WHERE category = 'payments' AND position > ? ORDER BY position LIMIT ?")
ZERO = Decimal("0.00")


def schema(database: Path) -> list[str]:
    """The CREATE statements of PaymentView's and Checkpoint's tables and their indexes,
    as the migrations left them in ``database`` (tables first)."""
    connection = sqlite3.connect(database)
    try:
        statements = [sql for (sql,) in connection.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name IN (?, ?) AND sql IS NOT NULL"
            " ORDER BY type <> 'table', name", (PAYMENT_TABLE, CHECKPOINT_TABLE))]
    finally:
        connection.close()
    if not any(PAYMENT_TABLE in sql and sql.startswith("CREATE TABLE") for sql in statements):
        raise SystemExit(f"{database} has no {PAYMENT_TABLE} table: migrate it first")
    return statements


def connect(database: Path, pragmas: str) -> sqlite3.Connection:
    """A connection as the read model's (``pragmas``: the settings' init_command)."""
    connection = sqlite3.connect(database, isolation_level=None, timeout=20)
    connection.executescript(pragmas)
    return connection


def create(database: Path, statements: list[str], pragmas: str) -> None:
    """A new database holding the tables and indexes of ``statements``, checkpoint at 0."""
    connection = connect(database, pragmas)
    try:
        for sql in statements:
            connection.execute(sql)
        connection.execute(
            f'INSERT INTO "{CHECKPOINT_TABLE}" (name, position, updated_at, failure, version)'
            " VALUES (?, 0, datetime('now'), '', 1)", (NAME,))
    finally:
        connection.close()


def _moment(timestamp: str) -> str:
    """``2026-11-01T10:00:00.000000Z`` as Django's SQLite backend stores the instant."""
    fraction = timestamp[19:26]
    return f"{timestamp[:10]} {timestamp[11:19]}{'' if fraction == '.000000' else fraction}"


def rebuild(events: Path, database: Path, pragmas: str, *, batch_size: int = 1000) -> int:
    """Clear the table and the checkpoint, then project every payment event in
    ``events`` into it; the number of events applied."""
    source = sqlite3.connect(events)
    target = connect(database, pragmas)
    target.execute("BEGIN IMMEDIATE")
    target.execute(f'DELETE FROM "{PAYMENT_TABLE}"')
    target.execute(f'UPDATE "{CHECKPOINT_TABLE}" SET position = 0 WHERE name = ?', (NAME,))
    target.execute("COMMIT")
    payments: dict[str, dict] = {}
    applied = position = checkpoint = 0
    try:
        while batch := source.execute(READ, (position, batch_size)).fetchall():
            changed: dict[str, dict] = {}
            for position, version, type_name, data in batch:
                event = json.loads(data)
                key = event["payment_id"].replace("-", "")
                at = _moment(event["occurred_at"])
                if type_name == "PaymentCreated":
                    payment = payments[key] = {
                        "status": "pending", "amount": Decimal(event["amount"]),
                        "currency": event["currency"], "reference": event["reference"],
                        "settled": ZERO, "refunded": ZERO, "bank_name": "", "decline_code": "",
                        "created_at": at,
                    }
                else:
                    payment = payments[key]
                    if type_name == "PaymentAuthorized":
                        payment["status"] = "authorized"
                        payment["bank_name"] = event["bank_name"]
                    elif type_name == "PaymentSettled":
                        settled = payment["settled"] = payment["settled"] + Decimal(event["amount"])
                        payment["status"] = (
                            "settled" if settled >= payment["amount"] else "partially_settled")
                        payment["bank_name"] = event["bank_name"] or payment["bank_name"]
                    elif type_name == "PaymentRefunded":
                        refunded = payment["refunded"] = (
                            payment["refunded"] + Decimal(event["amount"]))
                        payment["status"] = (
                            "refunded" if refunded >= payment["settled"] else "partially_refunded")
                    else:  # PaymentDeclined
                        payment["status"] = "declined"
                        payment["bank_name"] = event["bank_name"]
                        payment["decline_code"] = event["decline_code"]
                payment["updated_at"] = at
                payment["version"] = version
                payment["position"] = position
                changed[key] = payment
            target.execute("BEGIN IMMEDIATE")
            target.executemany(UPSERT, [
                (key, p["status"], str(p["amount"]), p["currency"], p["reference"],
                 str(p["settled"]), str(p["refunded"]), p["bank_name"], p["decline_code"],
                 p["created_at"], p["updated_at"], p["version"], p["position"])
                for key, p in changed.items()
            ])
            target.execute(
                f'UPDATE "{CHECKPOINT_TABLE}" SET position = ?, updated_at = datetime(\'now\')'
                " WHERE name = ? AND position = ?", (position, NAME, checkpoint))
            target.execute("COMMIT")
            checkpoint = position
            applied += len(batch)
    finally:
        source.close()
        target.close()
    return applied


def rows(database: Path, table: str = PAYMENT_TABLE) -> list[tuple]:
    """Every row of PaymentView's table in ``database``, by payment id, as stored."""
    connection = sqlite3.connect(database)
    try:
        return connection.execute(f'SELECT * FROM "{table}" ORDER BY payment_id').fetchall()
    finally:
        connection.close()
