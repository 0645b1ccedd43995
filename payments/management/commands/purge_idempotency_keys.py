"""``manage.py purge_idempotency_keys``: forget Idempotency-Key answers older than N hours.

Keys are kept at least 24 hours (DESIGN.md); run this from cron or a timer. A retry
after the purge is still safe: the service finds its event in the stream and appends
nothing (it just cannot replay a refusal any more).
"""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from payments.models import KEEP_HOURS, IdempotencyRecord


def purge(older_than_hours: float) -> int:
    """Delete the records older than the given age; returns how many went."""
    cutoff = timezone.now() - timedelta(hours=older_than_hours)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted


class Command(BaseCommand):
    help = "Delete stored Idempotency-Key answers older than --older-than-hours (default 24)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--older-than-hours", type=float, default=KEEP_HOURS)

    def handle(self, *args: Any, **options: Any) -> None:
        hours: float = options["older_than_hours"]
        if hours < KEEP_HOURS:
            raise CommandError(f"keys are kept at least {KEEP_HOURS} hours; got {hours:g}")
        deleted = purge(hours)
        self.stdout.write(f"deleted {deleted} idempotency record(s) older than {hours:g} h")
