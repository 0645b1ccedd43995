from django.apps import AppConfig


class ProjectionsConfig(AppConfig):
    """The read side: read models built from the event store (arrives with its issue)."""

    default_auto_field = "django.db.models.BigAutoField"
    name = "projections"
