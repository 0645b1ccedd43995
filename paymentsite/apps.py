from django.apps import AppConfig


class PaymentsiteConfig(AppConfig):
    """The project itself: what each process sets up once Django has started."""

    name = "paymentsite"

    def ready(self) -> None:
        # After every app is loaded (the command service and the runners are traced), in
        # each process: gunicorn's workers load the application after they fork.
        from paymentsite import tracing

        tracing.setup()
