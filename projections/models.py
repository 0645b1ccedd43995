"""Read models built by the projections. Their field names are a contract: the
admin, reports and SQL users read them. Only the projections write them."""

from __future__ import annotations

from django.db import models

from payments.domain import MAX_REFERENCE_LENGTH, PaymentStatus

MONEY = {"max_digits": 14, "decimal_places": 2}


class PaymentView(models.Model):
    """The latest state of each payment, as folded from its events."""

    payment_id = models.UUIDField(primary_key=True)
    status = models.CharField(max_length=20, choices=[(s.value, s.value) for s in PaymentStatus])
    amount = models.DecimalField(**MONEY)
    currency = models.CharField(max_length=3)
    # The merchant's reference (PaymentCreated, schema version 2); "" for none.
    reference = models.CharField(max_length=MAX_REFERENCE_LENGTH, blank=True, default="")
    settled_amount = models.DecimalField(**MONEY)
    refunded_amount = models.DecimalField(**MONEY)
    bank_name = models.CharField(max_length=100, blank=True, default="")
    decline_code = models.CharField(max_length=4, blank=True, default="")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    version = models.IntegerField(help_text="stream version of the last event applied")
    position = models.BigIntegerField(help_text="store position of the last event applied")

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            # The lists people filter: by status or bank, newest first.
            models.Index(fields=["status", "-updated_at"], name="paymentview_status_updated"),
            models.Index(fields=["bank_name", "-updated_at"], name="paymentview_bank_updated"),
            models.Index(fields=["currency", "-updated_at"], name="paymentview_currency_updated"),
            # Status and bank together (the API, the payment list): their count reads
            # only these entries, newest first needs no sort; currency too, if asked.
            models.Index(fields=["status", "bank_name", "-updated_at", "currency"],
                         name="paymentview_status_bank_upd"),
            models.Index(fields=["-updated_at"], name="paymentview_updated"),
            models.Index(fields=["-created_at"], name="paymentview_created"),
            # The admin's search by reference. Partial: most payments have none, and a
            # row without one costs the projection's upserts no index entry.
            models.Index(fields=["reference"], name="paymentview_reference",
                         condition=~models.Q(reference="")),
        ]

    def __str__(self) -> str:
        return f"{self.payment_id} {self.status} {self.amount} {self.currency}"


class DeclineView(models.Model):
    """Declines counted by decline code, bank and UTC date of the decline."""

    decline_code = models.CharField(max_length=4)
    bank_name = models.CharField(max_length=100)
    date = models.DateField()
    count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-date", "decline_code", "bank_name"]
        constraints = [
            models.UniqueConstraint(
                fields=["decline_code", "bank_name", "date"], name="declineview_unique_key"
            ),
        ]
        indexes = [
            models.Index(fields=["-date"], name="declineview_date"),
            models.Index(fields=["bank_name", "-date"], name="declineview_bank_date"),
        ]

    def __str__(self) -> str:
        return f"{self.date} {self.decline_code} {self.bank_name}: {self.count}"


class Checkpoint(models.Model):
    """Where a projection is: the position of the last event it applied (the "ledger")."""

    name = models.CharField(max_length=50, primary_key=True)
    position = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)
    # Why the projection's last runner stopped on an error (empty: it did not); shown
    # by projection_status, the overview and /readyz until a runner moves on again.
    failure = models.TextField(blank=True, default="")
    failed_at = models.DateTimeField(null=True, blank=True)
    # The projection's version (its ``version``) that built the read model: a runner of
    # another version refuses to apply events to it, so no table mixes two meanings.
    version = models.PositiveIntegerField(default=1)
    # When a ``--rebuild`` last swapped a new read model in: a runner that was following
    # the old one sees it change and goes on from the new checkpoint.
    rebuilt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} at {self.position}"


class Rebuild(models.Model):
    """A ``run_projection NAME --rebuild`` in progress (or abandoned): the shadow tables
    it is building beside the live read model, and how far they have got.

    The row exists exactly while the shadow tables do; the swap deletes it in the
    transaction that makes the shadow live.
    """

    name = models.CharField(max_length=50, primary_key=True)
    version = models.PositiveIntegerField(help_text="the projection version being built")
    position = models.BigIntegerField(default=0, help_text="the shadow's checkpoint")
    started_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"rebuild of {self.name} at {self.position}"
