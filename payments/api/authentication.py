"""DRF's token authentication, with one plain SQL query instead of the ORM's.

Every API request authenticates. DRF's ``TokenAuthentication`` looks the token up
with ``Token.objects.select_related("user").get(key=...)``: building that query
costs ~0.3 ms of Python per request (a fifth of a small request's CPU time), the
query itself 0.02 ms. This does the same lookup with SQL made once, and answers
exactly as DRF does: same errors, same ``(user, token)``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from payments.rawsql import FromDb


@cache
def _lookup() -> tuple[str, list[str], list[str], list[FromDb]]:
    """The SQL, the user's and the token's fields it selects, and their converters
    (so the user and token come out exactly as ``select_related`` makes them)."""
    user_model = get_user_model()
    quote = connection.ops.quote_name
    selected = [("u", f) for f in user_model._meta.concrete_fields] + [
        ("t", f) for f in Token._meta.concrete_fields
    ]
    sql = (
        f"SELECT {', '.join(f'{a}.{quote(f.column)}' for a, f in selected)}"
        f" FROM {quote(Token._meta.db_table)} t"
        f" JOIN {quote(user_model._meta.db_table)} u"
        f" ON u.{quote(user_model._meta.pk.column)} = t.{quote('user_id')}"
        f" WHERE t.{quote('key')} = %s"
    )
    user_fields = [f.attname for a, f in selected if a == "u"]
    token_fields = [f.attname for a, f in selected if a == "t"]
    return sql, user_fields, token_fields, [FromDb(f, a, connection) for a, f in selected]


class TokenAuthentication(authentication.TokenAuthentication):
    """``Authorization: Token <key>``, looked up with one prepared-once query."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        sql, user_fields, token_fields, converters = _lookup()
        with connection.cursor() as cursor:
            cursor.execute(sql, [key])
            found = cursor.fetchone()
        if found is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        row = [convert(value) for convert, value in zip(converters, found, strict=True)]
        user = get_user_model().from_db(connection.alias, user_fields,
                                        row[:len(user_fields)])
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        token = Token.from_db(connection.alias, token_fields, row[len(user_fields):])
        token.user = user  # as select_related would have it
        return user, token
