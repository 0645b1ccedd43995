from django.apps import AppConfig


class PaymentsConfig(AppConfig):
    """The write side: domain, events, event store adapters and the command service."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "payments"
