"""The durable variant's one table, in the ``writes`` database only."""

from __future__ import annotations

from typing import Any

from django.db import models


class Row(models.Model):
    """One small row per request."""

    amount = models.DecimalField(max_digits=14, decimal_places=2)
    currency = models.CharField(max_length=3)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


class WritesRouter:
    """Rows go to ``writes``; everything else (users, tokens) stays in ``default``."""

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str | None:
        return "writes" if model is Row else None

    db_for_read = db_for_write

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        return (db == "writes") == (app_label == "drf_floor")
