"""DRF's content negotiation, answered at once when the client accepts anything.

Most clients send no ``Accept`` (or ``*/*``): DRF then builds the request's whole
header mapping, parses the header into media types and matches them against each
renderer, some 15 µs a request, to pick the first renderer with its own media type.
That answer is given here directly; any other ``Accept`` (or a ``?format=``) goes to
DRF's negotiation, 406 included.
"""

from __future__ import annotations

from typing import Any

from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

ANYTHING = "*/*"


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's, with the answer for an absent ``Accept`` or ``*/*`` given without parsing."""

    def select_renderer(self, request: Request, renderers: list[BaseRenderer],
                        format_suffix: Any = None) -> tuple[BaseRenderer, str]:
        if (renderers and format_suffix is None
                and request.META.get("HTTP_ACCEPT", ANYTHING) == ANYTHING
                and self.settings.URL_FORMAT_OVERRIDE not in request.query_params):
            # DRF's answer for */*: the first renderer, with its media type.
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)
