"""The HTML pages' answer when the event store is unreachable: a 503 page, no traceback.

One place for every page (the REST API has its own handler in ``payments.api.errors``
and never lets the exception reach this middleware).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from payments.domain import HistoryError
from payments.events import EventDecodeError
from payments.eventstore import EventStoreError, UnreadableEvent

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class EventStoreUnavailableMiddleware:
    """Turns an unreachable store (or an unreadable stream) into the 503 page."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, HistoryError | EventDecodeError | UnreadableEvent):
            # A stream this code cannot fold: the operator must look (as in the API).
            logger.error("cannot read events on %s: %s", request.path, exception,
                         exc_info=exception)
            message = "This payment's events cannot be read right now."
        elif isinstance(exception, EventStoreError):
            logger.warning("event store error on %s: %s", request.path, exception)
            message = "The event store is unreachable right now."
        else:
            return None
        response = render(request, "503.html", {"message": message}, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
