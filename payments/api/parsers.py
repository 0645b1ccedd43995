"""The API's JSON parser: DRF's, bounded in size and depth.

A command's body is a flat object of a few short fields. Without bounds, one request
could make the server read megabytes into memory, or nest ``[`` a hundred thousand
times and overflow the decoder's recursion (a RecursionError, answered as a 500).
Here both are the client's error with a message: 413 above ``MAX_BODY_BYTES``, 400
deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from rest_framework import exceptions, parsers, status
from rest_framework.utils import json

MAX_BODY_BYTES = 64 * 1024  # a command is under 200 bytes; this leaves room for any later field
MAX_DEPTH = 32  # objects and arrays inside each other; commands use 1


class RequestBodyTooLarge(exceptions.APIException):
    """The body is larger than any request of this API needs."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = f"the request body may be at most {MAX_BODY_BYTES} bytes"
    default_code = "request_body_too_large"


def _too_deep(data: Any) -> bool:
    """Whether containers nest deeper than MAX_DEPTH (iterative: no recursion of our own)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _declared_length(parser_context: Mapping[str, Any]) -> int:
    request = parser_context.get("request")
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
    except (TypeError, ValueError):
        return 0


class JSONParser(parsers.JSONParser):
    """DRF's JSONParser with a size bound (413) and a nesting bound (400)."""

    def parse(self, stream: IO[bytes], media_type: str | None = None,
              parser_context: Mapping[str, Any] | None = None) -> Any:
        parser_context = parser_context or {}
        if _declared_length(parser_context) > MAX_BODY_BYTES:
            raise RequestBodyTooLarge()
        raw = stream.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            raise RequestBodyTooLarge()
        encoding = parsers.get_encoding(parser_context)  # text codecs only, as DRF's
        too_deep = exceptions.ParseError(
            f"JSON parse error - nested more than {MAX_DEPTH} levels deep")
        try:
            data = json.loads(raw.decode(encoding),
                              parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:
            raise too_deep from None
        except ValueError as e:  # also UnicodeDecodeError
            raise exceptions.ParseError(f"JSON parse error - {e}") from None
        if _too_deep(data):
            raise too_deep
        return data
