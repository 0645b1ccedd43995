"""Projectors: plain functions of a read model and an event, and the two projections
that apply them to a batch of events inside the runner's transaction.

The payment projector reuses the aggregate's own ``apply``: the read model cannot
disagree with the write side about what an event means. The decline projector
counts ``PaymentDeclined`` per (code, bank, UTC date) and ignores the rest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import ClassVar, NamedTuple, Protocol
from uuid import UUID

from django.db import connection, models

from payments.domain import HistoryError, Payment, PaymentStatus, apply
from payments.events import EVENT_TYPES, PaymentDeclined, PaymentEvent, stream_name
from payments.eventstore import RecordedEvent
from projections.models import DeclineView, PaymentView

logger = logging.getLogger(__name__)


class ProjectionError(Exception):
    """An event the projection cannot apply: the runner stops on it, loudly."""

    def __init__(self, projection: str, record: RecordedEvent, reason: str) -> None:
        self.projection = projection
        self.record = record
        super().__init__(
            f"projection {projection!r} cannot apply the event at position {record.position}"
            f" (stream {record.stream}, version {record.version}, type {record.type}):"
            f" {reason}"
        )


class Decoded(NamedTuple):
    """A stored event with its decoded payload (a named tuple: cheap, one per event)."""

    record: RecordedEvent
    event: PaymentEvent


Tables = Mapping[type[models.Model], type[models.Model]]


class Projection(Protocol):
    """What the runner needs of a projection."""

    name: ClassVar[str]
    # What its read model means: raised whenever the same events would now give other
    # rows (a new column, another rule). A runner refuses to apply events to tables
    # built by another version; ``run_projection NAME --rebuild`` builds them anew.
    version: ClassVar[int]
    handles: ClassVar[frozenset[str]]  # the event types it decodes; others pass by
    read_models: ClassVar[tuple[type[models.Model], ...]]  # the tables it writes

    def apply(self, batch: list[Decoded]) -> None:
        """Write the batch's effect; called inside the runner's transaction."""
        ...

    def clear(self) -> None:
        """Delete everything this projection built (for a rebuild)."""
        ...


# --- the projectors -------------------------------------------------------------------


def project_payment(view: Payment | None, event: PaymentEvent, version: int) -> Payment:
    """The payment read model after ``event``: the aggregate's own fold step."""
    return apply(view, event, version)


DeclineKey = tuple[str, str, date]

# The read models' free-text columns, and how many characters each holds. Codes
# (currency, decline code) are not cut: a cut code would be another code, so one too
# long stops the runner, naming the event, as any event it cannot apply does.
_PAYMENT_TEXT = {name: PaymentView._meta.get_field(name).max_length
                 for name in ("reference", "bank_name")}
_REFERENCE_LIMIT = _PAYMENT_TEXT["reference"] or 0
_BANK_LIMIT = _PAYMENT_TEXT["bank_name"] or 0
_DECLINE_BANK = DeclineView._meta.get_field("bank_name").max_length


def fit_to_columns(payment: Payment, record: RecordedEvent) -> Payment:
    """The payment with any text longer than its column cut to fit, and a warning.

    The domain never decides such text; only another writer's event (or one stored
    before a limit) holds it. Cut, it projects on every database alike (PostgreSQL
    would refuse the row and stop the runner; SQLite would keep it whole): one string
    must never stop a read model. The event keeps it whole, as does the payment's page.
    """
    if (len(payment.reference) <= _REFERENCE_LIMIT
            and len(payment.bank_name or "") <= _BANK_LIMIT):
        return payment  # the usual case, first: every event of a rebuild passes here
    long = {name: value[:limit] for name, limit in _PAYMENT_TEXT.items()
            if limit is not None and len(value := getattr(payment, name) or "") > limit}
    if not long:
        return payment
    logger.warning("the event at position %d (stream %s, version %d) makes %s longer than"
                   " the read model's columns: cut to fit", record.position, record.stream,
                   record.version, ", ".join(sorted(long)))
    return replace(payment, **long)


def count_decline(counts: Counter[DeclineKey], event: PaymentDeclined) -> None:
    """One more decline for its code, bank and UTC date (the bank's name cut to its
    column, as ``fit_to_columns`` says why; the payment projection warns of it)."""
    counts[(event.decline_code, event.bank_name[:_DECLINE_BANK],
            event.occurred_at.astimezone(UTC).date())] += 1


# --- conversions between the domain and the rows ---------------------------------------


def payment_from_row(row: PaymentView) -> Payment:
    return Payment(
        id=row.payment_id,
        status=PaymentStatus(row.status),
        amount=row.amount,
        currency=row.currency,
        reference=row.reference,
        settled_amount=row.settled_amount,
        refunded_amount=row.refunded_amount,
        bank_name=row.bank_name or None,
        decline_code=row.decline_code or None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        version=row.version,
    )


def row_from_payment(
    payment: Payment, position: int, model: type[PaymentView] = PaymentView
) -> PaymentView:
    return model(
        payment_id=payment.id,
        status=payment.status.value,
        amount=payment.amount,
        currency=payment.currency,
        reference=payment.reference,
        settled_amount=payment.settled_amount,
        refunded_amount=payment.refunded_amount,
        bank_name=payment.bank_name or "",
        decline_code=payment.decline_code or "",
        created_at=payment.created_at,
        updated_at=payment.updated_at,
        version=payment.version,
        position=position,
    )


_PAYMENT_FIELDS = [
    "status", "amount", "currency", "reference", "settled_amount", "refunded_amount",
    "bank_name", "decline_code", "created_at", "updated_at", "version", "position",
]


def _sqlite_datetime(moment: datetime) -> str:
    """What Django's SQLite backend stores for an aware datetime (naive UTC, str())."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(sep=" ")[:-6]  # str() of the naive UTC time, without "+00:00"


def _payment_values(payment: Payment, position: int, *, sqlite: bool) -> tuple[object, ...]:
    # Amounts go as Decimal on both: Django's SQLite backend adapts Decimal to str.
    assert payment.created_at is not None
    assert payment.updated_at is not None
    return (
        payment.id.hex if sqlite else payment.id,
        payment.status.value,
        payment.amount,
        payment.currency,
        payment.reference,
        payment.settled_amount,
        payment.refunded_amount,
        payment.bank_name or "",
        payment.decline_code or "",
        _sqlite_datetime(payment.created_at) if sqlite else payment.created_at,
        _sqlite_datetime(payment.updated_at) if sqlite else payment.updated_at,
        payment.version,
        position,
    )


# The databases that get the upsert's own SQL; any other takes the ORM's bulk upsert.
_UPSERT_VENDORS = ("sqlite", "postgresql")


def upsert_payment_views(
    states: Iterable[tuple[Payment, int]], model: type[PaymentView] = PaymentView
) -> None:
    """Insert or update one PaymentView row per payment, in one statement per batch.

    The hot path of a rebuild: the ORM's bulk upsert prepares every value of every
    row field by field, which cost more than everything else in a batch together.
    ``INSERT … ON CONFLICT … DO UPDATE`` is the same SQL on SQLite and PostgreSQL;
    any other database takes the ORM's path. A stored row is only ever replaced by a
    later state (a greater ``position``): a row the projection did not read (see
    ``PaymentProjection.apply``) may be ahead of the batch, never put back.
    """
    states = list(states)
    if not states:
        return
    if connection.vendor not in _UPSERT_VENDORS:
        model.objects.bulk_create(
            [row_from_payment(p, pos, model) for p, pos in states], batch_size=500,
            update_conflicts=True, unique_fields=["payment_id"], update_fields=_PAYMENT_FIELDS,
        )
        return
    sqlite = connection.vendor == "sqlite"
    quote = connection.ops.quote_name
    table = quote(model._meta.db_table)
    columns = ["payment_id", *_PAYMENT_FIELDS]
    sql = (
        f"INSERT INTO {table} ({', '.join(map(quote, columns))})"
        f" VALUES ({', '.join(['%s'] * len(columns))})"
        f" ON CONFLICT ({quote('payment_id')}) DO UPDATE SET "
        + ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in _PAYMENT_FIELDS)
        + f" WHERE excluded.{quote('position')} > {table}.{quote('position')}"
    )
    with connection.cursor() as cursor:
        cursor.executemany(sql, [_payment_values(p, pos, sqlite=sqlite) for p, pos in states])


# --- the projections ------------------------------------------------------------------


class _OnTables:
    """A projection writes its read models, or the shadow tables a ``--rebuild`` fills
    beside them (``tables`` maps each read model to the model of its shadow)."""

    read_models: ClassVar[tuple[type[models.Model], ...]]

    def __init__(self, tables: Tables | None = None) -> None:
        self.tables: Tables = tables or {}

    def clear(self) -> None:
        """Delete everything this projection built (for a rebuild)."""
        for model in self.read_models:
            self.tables.get(model, model).objects.all().delete()


class PaymentProjection(_OnTables):
    """PaymentView: every event of every payment, one upsert per payment per batch."""

    name: ClassVar[str] = "payment"
    version: ClassVar[int] = 1
    handles: ClassVar[frozenset[str]] = frozenset(EVENT_TYPES)
    read_models: ClassVar[tuple[type[models.Model], ...]] = (PaymentView,)

    def apply(self, batch: list[Decoded]) -> None:
        view: type[PaymentView] = self.tables.get(PaymentView, PaymentView)  # type: ignore[assignment]
        known = self._stored(view, batch)
        for record, event in batch:
            current, position = known.get(event.payment_id, _NO_ROW)
            if record.position <= position:
                continue  # already in the row (only after a manual checkpoint move)
            try:
                payment = project_payment(current, event, record.version)
            except HistoryError as e:
                raise ProjectionError(self.name, record, str(e)) from e
            known[payment.id] = (fit_to_columns(payment, record), record.position)
        upsert_payment_views(known.values(), view)

    @staticmethod
    def _stored(view: type[PaymentView], batch: list[Decoded]) -> dict[UUID, tuple[Payment, int]]:
        """The stored rows of the batch's payments that can have one, in one query.

        A payment whose first event in the batch is the first event of its own stream
        (version 0 of ``payments-<its id>``) has none: no event of it came before, so
        none was applied. (Unless the read model is ahead of its checkpoint, moved back
        by hand: the upsert never puts a row back, and the fold from that first event
        arrives at the same state.) In a rebuild most payments start in the batch that
        holds their events, and none of them costs a lookup. Without our own upsert
        (another database), every row is read.
        """
        first: dict[UUID, RecordedEvent] = {}
        for record, event in batch:
            first.setdefault(event.payment_id, record)
        if connection.vendor in _UPSERT_VENDORS:
            ids = [payment_id for payment_id, record in first.items()
                   if record.version != 0 or record.stream != stream_name(payment_id)]
        else:
            ids = list(first)
        if not ids:
            return {}
        return {row.payment_id: (payment_from_row(row), row.position)
                for row in view.objects.filter(payment_id__in=ids)}


_NO_ROW: tuple[None, int] = (None, 0)


class DeclineProjection(_OnTables):
    """DeclineView: declines counted by code, bank and date; increments per batch."""

    name: ClassVar[str] = "decline"
    version: ClassVar[int] = 1
    handles: ClassVar[frozenset[str]] = frozenset({PaymentDeclined.type_name})
    read_models: ClassVar[tuple[type[models.Model], ...]] = (DeclineView,)

    def apply(self, batch: list[Decoded]) -> None:
        view: type[DeclineView] = self.tables.get(DeclineView, DeclineView)  # type: ignore[assignment]
        counts: Counter[DeclineKey] = Counter()
        for item in batch:
            if isinstance(item.event, PaymentDeclined):
                count_decline(counts, item.event)
        if not counts:
            return
        # A superset by each column (few distinct values), narrowed here: no long OR chain.
        codes = {code for code, _, _ in counts}
        banks = {bank for _, bank, _ in counts}
        days = {day for _, _, day in counts}
        existing = {
            (r.decline_code, r.bank_name, r.date): r
            for r in view.objects.filter(
                decline_code__in=codes, bank_name__in=banks, date__in=days
            )
            if (r.decline_code, r.bank_name, r.date) in counts
        }
        new = []
        for key, added in counts.items():
            row = existing.get(key)
            if row is None:
                new.append(view(decline_code=key[0], bank_name=key[1], date=key[2],
                                       count=added))
            else:
                row.count += added
        view.objects.bulk_update(existing.values(), ["count"], batch_size=500)
        view.objects.bulk_create(new, batch_size=500)


PROJECTIONS: dict[str, type[PaymentProjection] | type[DeclineProjection]] = {
    PaymentProjection.name: PaymentProjection,
    DeclineProjection.name: DeclineProjection,
}
