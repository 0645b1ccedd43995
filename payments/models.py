"""The REST API's own table: the first answer to each Idempotency-Key.

Not write-side state (events are the only truth about payments): it lets a retried
POST get back exactly the status and body of its first answer without calling the
service again, and tells a reused key from a retry.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

# Kept at least this long (DESIGN.md: "at least 24 hours"); purge_idempotency_keys
# deletes older ones.
KEEP_HOURS = 24


class IdempotencyRecord(models.Model):
    """A user's Idempotency-Key, the request it was first used for and its answer."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    key = models.CharField(max_length=255)
    request_fingerprint = models.CharField(
        max_length=64, help_text="SHA-256 of method, path and JSON body"
    )
    status_code = models.PositiveSmallIntegerField()
    # The JSON text itself, not a JSONField: PostgreSQL's jsonb reorders an object's
    # keys, and a replay must be the first answer byte for byte.
    response_body = models.TextField(help_text="the first answer's JSON body, verbatim")
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_user_key"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key} -> {self.status_code}"
