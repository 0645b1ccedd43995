"""``Idempotency-Key`` on every POST: a retry gets the first answer, and nothing more.

Two layers, so that no instant is unsafe:

* ``IdempotencyRecord`` keeps the first answer per (user, key): a retry of the same
  request (method, path and JSON body) gets its status and body back without the
  service being called; another request with the key is a 422.
* The service is given ``"<user pk>:<key>"`` as its own idempotency key, so a crash
  between the append and the record (or two retries racing) appends nothing more:
  the service finds its event in the stream and answers from it.

Stored: the answers the service gave — success and its refusals (404, 409 on a
rule). Not stored: bad input (400: nothing was decided, the client fixes it and may
keep the key), a concurrency conflict, and 503 (both say "try again").
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from typing import Any

from django.db import IntegrityError, transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments.api.serializers import EVENT_POSITION_HEADER
from payments.domain import AmountExceedsBalance, InvalidInput, TransitionNotAllowed
from payments.models import IdempotencyRecord
from payments.services import IdempotencyKeyReused, PaymentNotFound, parse_idempotency_key

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_STORED_REFUSALS = (TransitionNotAllowed, AmountExceedsBalance, PaymentNotFound)
# The headers of the first answer that a replay gives again (the rest are per response).
_STORED_HEADERS = ("Location", EVENT_POSITION_HEADER)

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="Any string of 1-255 printable characters, unique per intended command"
                " (a UUID is a good choice). A retry with the same key and request returns"
                " the first answer and changes nothing; the same key with another request"
                " is a 422. Keys belong to the user and are kept at least 24 hours.",
)

PostHandler = Callable[..., Response]


def request_key(request: Request) -> str | None:
    """The caller's Idempotency-Key, checked; None when the header is absent."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    try:
        return parse_idempotency_key(key)
    except InvalidInput as e:
        raise exceptions.ValidationError({HEADER: [e.message]}) from None


def service_key(request: Request) -> str | None:
    """The key for the command service: scoped by the user, as keys belong to users."""
    key = request_key(request)
    return None if key is None else f"{request.user.pk}:{key}"


def fingerprint(request: Request) -> str:
    """What makes two requests "the same": method, path and the parsed JSON body."""
    body = json.dumps(request.data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path}\n{body}".encode()).hexdigest()


def _replay(record: IdempotencyRecord, request_fingerprint: str) -> Response:
    if record.request_fingerprint != request_fingerprint:
        raise IdempotencyKeyReused(
            f"Idempotency-Key {record.key!r} was already used for a different request"
            " (another payment, action or body); use a new key for a new command"
        )
    response = Response(json.loads(record.response_body), status=record.status_code,
                        headers=record.response_headers)
    response[REPLAYED_HEADER] = "true"
    return response


def _store(request: Request, key: str, request_fingerprint: str, response: Response) -> Response:
    """Keep the first answer; if a concurrent twin stored one first, answer with that."""
    headers = {name: response[name] for name in _STORED_HEADERS if response.has_header(name)}
    try:
        with transaction.atomic():
            IdempotencyRecord.objects.create(
                user=request.user, key=key, request_fingerprint=request_fingerprint,
                status_code=response.status_code, response_body=json.dumps(response.data),
                response_headers=headers,
            )
    except IntegrityError:
        return _replay(IdempotencyRecord.objects.get(user=request.user, key=key),
                       request_fingerprint)
    return response


def idempotent(post: PostHandler) -> PostHandler:
    """Wrap a command view's ``post`` with the Idempotency-Key protocol."""

    @functools.wraps(post)
    def wrapper(view: APIView, request: Request, *args: Any, **kwargs: Any) -> Response:
        key = request_key(request)
        if key is None:
            return post(view, request, *args, **kwargs)
        request_fingerprint = fingerprint(request)
        record = IdempotencyRecord.objects.filter(user=request.user, key=key).first()
        if record is not None:
            return _replay(record, request_fingerprint)
        try:
            response = post(view, request, *args, **kwargs)
        except _STORED_REFUSALS as exc:
            response = view.handle_exception(exc)
        # Other errors propagate unstored: DRF's exception handler answers them.
        return _store(request, key, request_fingerprint, response)

    return wrapper
