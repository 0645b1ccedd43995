"""Shadow tables: a read model built anew beside the live one, then swapped in.

``run_projection NAME --rebuild`` fills ``<table>__rebuild`` (same columns as the live
table, and only its primary key: bulk loading is faster without the other indexes)
from position 0 while the live table keeps serving. The swap, in one transaction,
drops the live table, renames the shadow to the live name and creates the live
table's indexes and constraints under their own names, so the schema after a swap
is exactly what the migrations made: a later migration finds the names it expects.

Readers never see a half state: PostgreSQL's DDL is transactional (a query waits
for the swap's lock, then reads the new table by name), and on SQLite the swap is
one write transaction (readers read the old snapshot until it commits).
"""

from __future__ import annotations

from functools import cache

from django.apps.registry import Apps
from django.db import connection, models
from django.db.backends.utils import CursorWrapper

SHADOW_SUFFIX = "__rebuild"

# Shadow models live in a registry of their own: they are no app's models (no
# migrations, no admin), only a way to point the ORM at the shadow tables.
_shadow_apps = Apps(installed_apps=())


@cache
def shadow_model(model: type[models.Model]) -> type[models.Model]:
    """A model with ``model``'s fields on the table ``<its table>__rebuild``."""
    meta = model._meta
    attrs: dict[str, object] = {
        "__module__": model.__module__,
        "Meta": type("Meta", (), {
            "app_label": meta.app_label,
            "db_table": meta.db_table + SHADOW_SUFFIX,
            "apps": _shadow_apps,
        }),
    }
    for field in meta.local_fields:
        attrs[field.name] = field.clone()
    return type(f"{model.__name__}Shadow", (models.Model,), attrs)


def _table_exists(table: str) -> bool:
    with connection.cursor() as cursor:
        return table in connection.introspection.table_names(cursor)


def drop_shadow_tables(read_models: tuple[type[models.Model], ...]) -> None:
    """Drop what an earlier, unfinished rebuild left (nothing if there is none)."""
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for model in read_models:
            cursor.execute(f"DROP TABLE IF EXISTS {quote(shadow_model(model)._meta.db_table)}")


def create_shadow_tables(
    read_models: tuple[type[models.Model], ...],
) -> dict[type[models.Model], type[models.Model]]:
    """Empty shadow tables for the read models (any old ones dropped first); each read
    model mapped to its shadow's model. Not inside a transaction: DDL on SQLite."""
    drop_shadow_tables(read_models)
    tables = {model: shadow_model(model) for model in read_models}
    with connection.schema_editor() as editor:
        for shadow in tables.values():
            editor.create_model(shadow)
    return tables


def shadow_exists(read_models: tuple[type[models.Model], ...]) -> bool:
    return all(_table_exists(shadow_model(m)._meta.db_table) for m in read_models)


def swap_in_shadow_tables(read_models: tuple[type[models.Model], ...]) -> None:
    """Inside the caller's transaction: the shadow tables become the live ones.

    The live table is dropped first, which frees its index and constraint names (they
    are global to the schema on PostgreSQL and to the file on SQLite); the indexes are
    then made on the renamed table under those names, from the live model.
    """
    quote = connection.ops.quote_name
    editor = connection.schema_editor()  # only to write the statements: never entered
    with connection.cursor() as cursor:
        for model in read_models:
            live = model._meta.db_table
            cursor.execute(f"DROP TABLE {quote(live)}")
            cursor.execute(
                f"ALTER TABLE {quote(shadow_model(model)._meta.db_table)} RENAME TO {quote(live)}"
            )
            if connection.vendor == "postgresql":
                _rename_implicit_names(cursor, model)
            for index in model._meta.indexes:
                cursor.execute(str(index.create_sql(model, editor)))
            for constraint in model._meta.constraints:
                cursor.execute(str(constraint.create_sql(model, editor)))


def _rename_implicit_names(cursor: CursorWrapper, model: type[models.Model]) -> None:
    """PostgreSQL named the shadow's primary key, check constraints and identity
    sequences after the shadow table; give them the names the live table's had (its
    drop just freed them), so that the next rebuild's shadow gets its own again."""
    quote = connection.ops.quote_name
    live = model._meta.db_table
    shadow = shadow_model(model)._meta.db_table
    cursor.execute("SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass",
                   [quote(live)])
    for (name,) in cursor.fetchall():
        if name.startswith(shadow):
            cursor.execute(f"ALTER TABLE {quote(live)} RENAME CONSTRAINT {quote(name)}"
                           f" TO {quote(live + name[len(shadow):])}")
    for field in model._meta.local_fields:
        cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [quote(live), field.column])
        (sequence,) = cursor.fetchone()
        name = sequence.rpartition(".")[2].strip('"') if sequence else ""
        if name.startswith(shadow):
            cursor.execute(f"ALTER SEQUENCE {sequence} RENAME TO"
                           f" {quote(live + name[len(shadow):])}")
