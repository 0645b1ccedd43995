"""Django's message middleware, with the storage made when a view or a page first uses it.

Django's makes the storage for every request (a cookie signer and two backends, some
20 µs); only the HTML pages and the admin add or show messages, never the API. A
storage nobody touched has nothing to save at the end of the request, so leaving it
unmade answers the same: ``messages.add_message``, ``get_messages`` and the template
context see the storage as before, made on first use.
"""

from __future__ import annotations

from django.contrib.messages import middleware
from django.contrib.messages.storage import default_storage
from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import SimpleLazyObject, empty


class MessageMiddleware(middleware.MessageMiddleware):
    """Django's, the storage made on first use (the admin's check accepts a subclass)."""

    def process_request(self, request: HttpRequest) -> None:
        request._messages = SimpleLazyObject(  # type: ignore[attr-defined]
            lambda: default_storage(request))

    def process_response(self, request: HttpRequest,
                         response: HttpResponseBase) -> HttpResponseBase:
        messages = getattr(request, "_messages", None)
        if isinstance(messages, SimpleLazyObject) and messages._wrapped is empty:
            return response  # never used: nothing read, nothing added, nothing to store
        return super().process_response(request, response)
