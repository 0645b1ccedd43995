"""A payment's history one page at a time: the payment page, the API detail, the admin.

A stream can hold thousands of events (those stored before the limit on settles and
refunds per payment); ``find_payment`` still reads them all, but the HTML and the JSON
are what cost, so every view shows one page of them. Pages are counted from the oldest
event: page 1 always starts with ``PaymentCreated`` and a page's events never change as
the stream grows, so a link stays right and a client that follows ``next`` gets every
event once. The pages people read open on the last page (the newest events, the one a
command just appended); the API opens on the first, as it always has.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeVar

from django.core.paginator import Page, Paginator

PAGE_SIZE = 50  # events per page on the payment's page and in the admin
API_PAGE_SIZE = 100  # the API detail's default; a payment that short is answered whole
API_MAX_PAGE_SIZE = 500

_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_MAX_DIGITS = 18  # far beyond any page; longer numbers are not parsed at all

T = TypeVar("T")


class PageParameterError(ValueError):
    """A page or page size that names no page; the message says which ones exist."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


def _integer(value: str | None) -> int | None:
    """A whole number in ASCII digits (maybe negative), else None.

    A number with more digits than any page count is clamped rather than parsed, so
    ``?events_page=<a million digits>`` costs no more than ``?events_page=2``.
    """
    if value is None or not _INTEGER.fullmatch(value):
        return None
    digits = value.lstrip("-").lstrip("0")
    if len(digits) > _MAX_DIGITS:
        return -(10**_MAX_DIGITS) if value.startswith("-") else 10**_MAX_DIGITS
    return int(value)


def nearest_page(history: Sequence[T], value: str | None, *, size: int = PAGE_SIZE) -> Page:
    """For pages people read: the page ``value`` names, moved to the nearest one that
    exists (0 is the first, 10**30 the last); no number at all is the last page."""
    paginator = Paginator(history, size)
    number = _integer(value)
    if number is None:
        number = paginator.num_pages
    return paginator.page(min(max(number, 1), paginator.num_pages))


def exact_page(history: Sequence[T], page: str | None, page_size: str | None, *,
               default_size: int = API_PAGE_SIZE, max_size: int = API_MAX_PAGE_SIZE) -> Page:
    """For the API: exactly the page asked for (default the first), or ``PageParameterError``.

    A client walking the pages must never be handed another page than it asked for,
    so a number out of range is refused, not moved.
    """
    if page_size is None:
        size = default_size
    else:
        size = _integer(page_size) or 0
        if not 1 <= size <= max_size:
            raise PageParameterError(
                "page_size", f"must be a whole number from 1 to {max_size}, not {page_size!r:.40}"
            )
    paginator = Paginator(history, size)
    number = 1 if page is None else _integer(page)
    if number is None or not 1 <= number <= paginator.num_pages:
        raise PageParameterError(
            "page",
            f"must be a whole number from 1 to {paginator.num_pages}, not {page!r:.40}:"
            f" {paginator.count} events make {paginator.num_pages}"
            f" page{'' if paginator.num_pages == 1 else 's'} of {size}",
        )
    return paginator.page(number)


def page_links(page: Page) -> list[int | str]:
    """The page numbers to link to around ``page``, with ``…`` for the ones left out."""
    return list(page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1))


def page_summary(page: Page) -> str:
    """What the page shows, in words: "2 events" or "Events 51 to 100 of 250 (page 2 of 5)"."""
    count, pages = page.paginator.count, page.paginator.num_pages
    if pages == 1:
        return f"{count} event{'' if count == 1 else 's'}, oldest first"
    shown = (f"Event {page.start_index()}" if page.start_index() == page.end_index()
             else f"Events {page.start_index()} to {page.end_index()}")
    return f"{shown} of {count}, oldest first (page {page.number} of {pages})"
