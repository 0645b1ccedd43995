"""The one place where the application's errors become HTTP answers.

DESIGN.md: 400 bad input, 404 unknown payment, 409 a rule or a concurrent change
refused the command, 422 an idempotency key reused for another request, 503 the
event store is unreachable; never a 500 with a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from payments.domain import (
    AmountExceedsBalance,
    InvalidInput,
    LimitReached,
    PaymentError,
    TransitionNotAllowed,
)
from payments.events import EventDecodeError
from payments.eventstore import EventStoreError, UnreadableEvent
from payments.services import ConcurrencyConflict, IdempotencyKeyReused, PaymentNotFound

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class Conflict(exceptions.APIException):
    """A rule of the payment or a concurrent change refused the command."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "the payment's state refused this command"
    default_code = "conflict"


class IdempotencyKeyConflict(exceptions.APIException):
    """The Idempotency-Key was used before for a different request."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_detail = "this Idempotency-Key was already used for a different request"
    default_code = "idempotency_key_reused"


class StoreUnavailable(exceptions.APIException):
    """The event store cannot answer now; the client may retry later."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "the event store is unreachable; try again later"
    default_code = "event_store_unavailable"


def to_api_exception(exc: Exception) -> Exception:
    """The DRF exception that answers an application error (others pass through)."""
    if isinstance(exc, InvalidInput):
        return exceptions.ValidationError({exc.field: [exc.message]})
    if isinstance(exc, TransitionNotAllowed | AmountExceedsBalance | LimitReached
                  | ConcurrencyConflict):
        return Conflict(str(exc))
    if isinstance(exc, PaymentNotFound):
        return exceptions.NotFound(str(exc))
    if isinstance(exc, IdempotencyKeyReused):
        return IdempotencyKeyConflict(str(exc))
    if isinstance(exc, PaymentError | EventDecodeError | UnreadableEvent):
        # A stream this code cannot fold (corrupt, or written by a newer version): the
        # operator must look; the client gets a clean answer and no traceback.
        logger.error("cannot read a payment's events: %s", exc, exc_info=exc)
        return StoreUnavailable("this payment's events cannot be read now; try again later")
    if isinstance(exc, EventStoreError):
        logger.warning("event store error: %s", exc)
        return StoreUnavailable()
    return exc


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, after turning the application's errors into API exceptions."""
    api_exc = to_api_exception(exc)
    response = drf_exception_handler(api_exc, context)
    if response is not None and response.status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response
