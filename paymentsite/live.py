"""Pages that update themselves: static/js/live.js asks the page's own address again,
with the version it shows, and swaps in the regions marked ``data-live-region``.

A view wrapped in ``live_page(version)`` answers such a request with 204 and no body
while the version is unchanged: one cheap query instead of a page. The version names
what the page is drawn from: for the read-model pages, what their lag notices show
(``projections.selectors.read_models_version``, from the same cache, so a poll does not
ask the store either); for a payment's page, read from its stream, the store's head.
Without JavaScript the page is the plain page; a poll never changes anything. An
address that never changes (``unless``: a payment as it was after one of its events)
is served as a plain page, with no version and no script.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from payments.eventstore import EventStoreError, get_event_store

HEADER = "X-Live-Version"

View = Callable[..., HttpResponse]


def store_head() -> str:
    """The event store's head position ("-" while it is unreachable)."""
    try:
        return str(get_event_store().head_position())
    except EventStoreError:
        return "-"


def live_page(
    version: Callable[[], str], *, unless: Callable[[HttpRequest], bool] | None = None,
) -> Callable[[View], View]:
    """Answer a live poll (the ``X-Live-Version`` header) with 204 while ``version()`` is
    what the browser has; otherwise the page, its version in the header and on <body>.
    A request for which ``unless`` holds gets the plain page: nothing to follow there."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if unless is not None and unless(request):
                return view(request, *args, **kwargs)
            current = version()
            if request.headers.get(HEADER) == current:
                response = HttpResponse(status=204)
            else:
                request.live_version = current  # type: ignore[attr-defined] # base.html
                response = view(request, *args, **kwargs)
            response[HEADER] = current
            response["Cache-Control"] = "no-store"  # a poll must reach the server
            return response

        return wrapped

    return decorate
