"""Values read with plain SQL, converted as the ORM converts them.

A few hot or whole-table reads (the API's token lookup, the admin's lists of a
column's values) skip the ORM's query building; what they read must still come out
as the ORM would give it (aware datetimes and Decimals on SQLite, UUIDs, ...).
"""

from __future__ import annotations

from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field


class FromDb:
    """Converts one selected column's raw values with the backend's and field's converters."""

    def __init__(self, field: Field, alias: str, connection: BaseDatabaseWrapper) -> None:
        self.column = field.get_col(alias)
        self.connection = connection
        self.converters = (connection.ops.get_db_converters(self.column)
                           + self.column.get_db_converters(connection))

    def __call__(self, value: Any) -> Any:
        for convert in self.converters:
            value = convert(value, self.column, self.connection)
        return value
