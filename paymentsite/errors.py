"""Every error answers in the format of the surface that was asked: JSON under ``/api/``
(DRF's ``{"detail": …}``), the site's own pages elsewhere; never Django's debug pages for
a 404 or 405, never a redirect that turns a command into a GET.

* ``page_not_found``, ``server_error``, ``bad_request``, ``permission_denied``: Django's
  error handlers (``handler404`` … in ``paymentsite/urls.py``), used with DEBUG off.
* ``ErrorPagesMiddleware``: with DEBUG on Django answers a 404 with its technical page
  and never calls ``handler404``, and ``require_GET``/``require_POST`` answer an empty
  405 in any mode; the middleware gives both the same answers as the handlers.
* ``CommonMiddleware``: APPEND_SLASH only for GET and HEAD (a POST is not redirected).
* ``login_locked_out``: django-axes' lock-out answer, a page with ``Retry-After``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from http import HTTPStatus
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware
from django.shortcuts import render
from django.template import loader
from django.urls import is_valid_path
from django.utils.cache import patch_vary_headers
from django.views import defaults

logger = logging.getLogger(__name__)

# Paths that answer JSON: the REST API and the probes. DRF's login page under
# /api/auth/ is an HTML form for people (to browse /api/docs/), so it keeps pages.
JSON_PREFIXES = ("/api/",)
JSON_PATHS = ("/api", "/healthz", "/readyz")
HTML_UNDER_API = ("/api/auth/",)
# The headers that tell a client what to do next survive a re-rendered answer.
KEPT_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
SAFE_METHODS = ("GET", "HEAD")

# A fallback 500 page with no template engine involved, for when 500.html itself fails.
PLAIN_500 = (
    '<!doctype html><html lang="en"><head><meta charset="utf-8">'
    "<title>Server error · Payments</title></head><body>"
    '<h1 id="server-error">Something went wrong</h1>'
    "<p>The error was logged. Please try again; if it keeps happening, tell the operator.</p>"
    "</body></html>"
)


def answers_json(request: HttpRequest) -> bool:
    """Whether the request is to the JSON surface (API, probes) rather than the site."""
    path = request.path_info
    if path.startswith(HTML_UNDER_API):
        return False
    return path in JSON_PATHS or path.startswith(JSON_PREFIXES)


def _mark(response: HttpResponseBase) -> HttpResponseBase:
    """Tell ErrorPagesMiddleware that this answer is already the final one."""
    response.is_error_page = True  # type: ignore[attr-defined]
    return response


def _slash_hint(request: HttpRequest) -> str | None:
    """The path with a trailing slash, when that is a real route (the usual mistake)."""
    path = request.path_info
    if path.endswith("/") or not is_valid_path(f"{path}/", getattr(request, "urlconf", None)):
        return None
    return f"{request.path}/"


def not_found_detail(request: HttpRequest) -> str:
    """What the API says for a path with no endpoint: the path, and the likely fix."""
    hint = _slash_hint(request)
    detail = f"no endpoint at {request.path}"
    return f"{detail}; did you mean {hint} ?" if hint else detail


def json_error(status: int, detail: str) -> JsonResponse:
    """An error in DRF's shape, for paths that DRF's own handler never sees."""
    return _mark(JsonResponse({"detail": detail}, status=status,
                              json_dumps_params={"separators": (",", ":")}))  # as DRF's


def _json_detail(request: HttpRequest, status: int) -> str:
    if status == HTTPStatus.NOT_FOUND:
        return not_found_detail(request)
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        return f'Method "{request.method}" not allowed.'
    if status >= HTTPStatus.INTERNAL_SERVER_ERROR:
        return "server error; it was logged, please try again later"
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"


def _site_404(request: HttpRequest) -> HttpResponse:
    response = render(request, "404.html", {"did_you_mean": _slash_hint(request)},
                      status=HTTPStatus.NOT_FOUND)
    patch_vary_headers(response, ("Cookie",))  # the header shows who is logged in
    return _mark(response)


def not_found_page(request: HttpRequest, message: str, *,
                   link: tuple[str, str] | None = None) -> HttpResponse:
    """The site's 404 page saying why, for a view that knows (a payment's page before the
    payment existed), with a link (address, words) to what does exist."""
    response = render(request, "404.html", {"message": message, "link": link},
                      status=HTTPStatus.NOT_FOUND)
    patch_vary_headers(response, ("Cookie",))
    return _mark(response)


def _site_405(request: HttpRequest, allowed: str) -> HttpResponse:
    response = render(request, "405.html", {"method": request.method, "allowed": allowed},
                      status=HTTPStatus.METHOD_NOT_ALLOWED)
    response["Allow"] = allowed
    patch_vary_headers(response, ("Cookie",))
    return _mark(response)


# --- Django's error handlers (DEBUG off) -------------------------------------------------


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: JSON under /api/, the site's 404 page elsewhere."""
    if answers_json(request):
        return json_error(HTTPStatus.NOT_FOUND, not_found_detail(request))
    return _site_404(request)


def server_error(request: HttpRequest) -> HttpResponse:
    """handler500: no request context and no database, as either may be what failed."""
    if answers_json(request):
        return json_error(HTTPStatus.INTERNAL_SERVER_ERROR,
                          _json_detail(request, HTTPStatus.INTERNAL_SERVER_ERROR))
    try:
        html = loader.get_template("500.html").render()
    except Exception:  # the page must not fail in turn: the plain one never does
        logger.exception("500.html could not be rendered")
        html = PLAIN_500
    return _mark(HttpResponse(html, status=HTTPStatus.INTERNAL_SERVER_ERROR))


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400 (a SuspiciousOperation, such as a Host header not allowed)."""
    if answers_json(request):
        return json_error(HTTPStatus.BAD_REQUEST, "bad request")
    return _mark(defaults.bad_request(request, exception))


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403 (Django's PermissionDenied outside DRF's views)."""
    if answers_json(request):
        return json_error(HTTPStatus.FORBIDDEN,
                          "You do not have permission to perform this action.")
    return _mark(defaults.permission_denied(request, exception))


# --- middleware ----------------------------------------------------------------------------


def _is_json(response: HttpResponseBase) -> bool:
    return response.get("Content-Type", "").startswith("application/json")


def _is_page_to_replace(response: HttpResponseBase) -> bool:
    """Django's technical 404 page or an empty 405: HTML (or nothing) that is not ours."""
    if getattr(response, "streaming", False):
        return False
    return response.get("Content-Type", "").startswith("text/html")


NUL_IN_QUERY = "query parameters must not contain NUL (U+0000)"


def _has_nul(request: HttpRequest) -> bool:
    """NUL in a query parameter: never a valid filter, page or id anywhere, and
    PostgreSQL refuses it in a query (the admin's list filters answered 500)."""
    return "%00" in request.META.get("QUERY_STRING", "") and any(
        "\x00" in key or any("\x00" in value for value in values)
        for key, values in request.GET.lists()
    )


def _nul_in_query(request: HttpRequest) -> HttpResponseBase:
    if answers_json(request):
        return json_error(HTTPStatus.BAD_REQUEST, NUL_IN_QUERY)
    return _mark(render(request, "400.html", {"message": f"The {NUL_IN_QUERY}."},
                        status=HTTPStatus.BAD_REQUEST))


class ErrorPagesMiddleware:
    """Re-answers errors that Django made without our handlers, keeping status and headers.

    Under /api/ (and the probes) any error that is not JSON becomes DRF's shape; on the
    site a 404 or 405 becomes the site's page. Nothing else is touched: admin pages,
    static files, DRF's own JSON and every answer below 400 pass as they are.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if _has_nul(request):
            return _nul_in_query(request)
        response = self.get_response(request)
        status = response.status_code
        if status < HTTPStatus.BAD_REQUEST or getattr(response, "is_error_page", False):
            return response
        if answers_json(request):
            if _is_json(response) or getattr(response, "streaming", False):
                return response
            replaced: HttpResponseBase = json_error(status, _json_detail(request, status))
        elif status == HTTPStatus.NOT_FOUND and _is_page_to_replace(response):
            replaced = _site_404(request)
        elif status == HTTPStatus.METHOD_NOT_ALLOWED and _is_page_to_replace(response):
            replaced = _site_405(request, response.get("Allow", ""))
        else:
            return response
        for header in KEPT_HEADERS:
            if header in response:
                replaced[header] = response[header]
        return replaced


class CommonMiddleware(DjangoCommonMiddleware):
    """Django's CommonMiddleware, but APPEND_SLASH redirects only GET and HEAD.

    A redirect of a POST becomes a GET in every client (and with DEBUG on Django raises
    RuntimeError instead): the command would be lost. Other methods get the 404 that
    names the URL with its slash.
    """

    def should_redirect_with_slash(self, request: HttpRequest) -> bool:
        return request.method in SAFE_METHODS and super().should_redirect_with_slash(request)


# --- django-axes ----------------------------------------------------------------------------


def login_locked_out(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict[str, Any] | None = None) -> HttpResponse:
    """AXES_LOCKOUT_CALLABLE: the lock-out page (429), saying for how long, with Retry-After."""
    cool_off: timedelta = settings.AXES_COOLOFF_TIME
    minutes = max(1, round(cool_off.total_seconds() / 60))
    response = render(request, "registration/locked_out.html", {
        "minutes": minutes, "failure_limit": settings.AXES_FAILURE_LIMIT,
    }, status=HTTPStatus.TOO_MANY_REQUESTS)
    response["Retry-After"] = str(int(cool_off.total_seconds()))
    return _mark(response)
