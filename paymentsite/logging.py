"""``LOG_FORMAT=json``: one JSON object per line, for a log collector to index.

Each line has ``time`` (ISO 8601, UTC), ``level``, ``logger`` and ``message``, then
the fields the call passed with ``extra=`` (``payment_id``, ``outcome``,
``duration_ms``…), so a collector can filter on them without parsing the message.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

# What every LogRecord carries; anything else on a record came from ``extra=``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON; values JSON lacks (UUID, Decimal) become strings."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)
