"""What every page's layout (templates/base.html) needs beyond Django's own processors."""

from __future__ import annotations

from django.http import HttpRequest

from payments.domain import InvalidInput
from projections.read_your_writes import AFTER, parse_after


def read_after(request: HttpRequest) -> dict[str, int | None]:
    """``read_after``: this page's ``?after=<position>``, which the links to the read-model
    pages carry on, so that the lists a user goes to after a command show it (read your
    writes; the redirect after a form gives it). A bad one is not passed on: the pages
    that read projections refuse it themselves."""
    try:
        return {"read_after": parse_after(request.GET.get(AFTER))}
    except InvalidInput:
        return {"read_after": None}
