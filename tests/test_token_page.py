"""The API token, from the site (/accounts/token/) and from `manage.py api_token` (issue 14).

A logged-in user sees their token, makes it if missing and replaces it (POST, CSRF,
a confirmation box); a replaced token stops authenticating at once.
"""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db

PAGE = "/accounts/token/"


def key_on(html: str) -> str | None:
    found = re.search(r'id="api-token"[^>]*value="([0-9a-f]{40})"', html)
    return found.group(1) if found else None


def api_status(key: str) -> int:
    return Client().get("/api/payments/", HTTP_AUTHORIZATION=f"Token {key}").status_code


def test_the_page_needs_a_login(client: Client) -> None:
    response = client.get(PAGE)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={PAGE}"


def test_without_a_token_the_page_offers_to_make_one(browser: Client, user) -> None:
    html = browser.get(PAGE).content.decode()
    assert 'id="create-form"' in html
    assert key_on(html) is None
    assert not Token.objects.filter(user=user).exists()  # looking makes nothing


def test_making_the_token_shows_it_with_a_curl_line_that_uses_it(browser: Client, user) -> None:
    response = browser.post(PAGE, {"action": "create"}, follow=True)
    html = response.content.decode()
    key = key_on(html)
    assert key == Token.objects.get(user=user).key
    assert "Your API token is ready." in html
    assert f'curl -H "Authorization: Token {key}" http://testserver/api/payments/' in html
    assert api_status(key) == 200
    # Asking again keeps the same token: one per user.
    browser.post(PAGE, {"action": "create"})
    assert Token.objects.get(user=user).key == key


def test_replacing_needs_the_box_ticked_then_the_old_token_stops_working(
        browser: Client, user) -> None:
    old = Token.objects.create(user=user).key
    response = browser.post(PAGE, {"action": "rotate"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "Tick the box to confirm" in html
    assert key_on(html) == old  # unchanged, and still shown
    assert api_status(old) == 200

    response = browser.post(PAGE, {"action": "rotate", "confirm": "on"}, follow=True)
    new = key_on(response.content.decode())
    assert new not in (None, old)
    assert "no longer works" in response.content.decode()
    assert api_status(old) == 401
    assert api_status(new) == 200


def test_posts_without_the_csrf_token_change_nothing(user) -> None:
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    old = Token.objects.create(user=user).key
    assert strict.post(PAGE, {"action": "rotate", "confirm": "on"}).status_code == 403
    assert Token.objects.get(user=user).key == old


def test_an_unknown_action_is_a_400(browser: Client, user) -> None:
    response = browser.post(PAGE, {"action": "delete"})
    assert response.status_code == 400
    assert 'id="bad-request-message">action must be create or rotate<' in response.content.decode()
    assert not Token.objects.filter(user=user).exists()


def test_the_site_navigation_links_to_the_token_page(browser: Client) -> None:
    assert f'id="nav-token" href="{PAGE}"' in browser.get("/").content.decode()


def run_api_token(*args: str) -> str:
    out = StringIO()
    call_command("api_token", *args, stdout=out)
    return out.getvalue()


def test_the_command_prints_the_key_alone_and_rotates_on_request(user) -> None:
    printed = run_api_token("clerk")
    assert printed == f"{Token.objects.get(user=user).key}\n"
    assert run_api_token("clerk") == printed  # the same token again
    rotated = run_api_token("clerk", "--rotate")
    assert rotated != printed
    assert rotated == f"{Token.objects.get(user=user).key}\n"


def test_the_command_names_the_users_there_are_for_an_unknown_one(user) -> None:
    with pytest.raises(CommandError, match=r"^no user 'alice'; users: clerk$"):
        run_api_token("alice")
    assert not Token.objects.exists()


def test_the_command_says_how_to_get_a_first_user() -> None:
    with pytest.raises(CommandError) as refused:
        run_api_token("admin")
    assert str(refused.value) == ("no user 'admin'; there are no users yet"
                                  " (python3 dev.py run makes admin)")
