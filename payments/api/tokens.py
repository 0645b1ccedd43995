"""A user's API token (DRF's ``authtoken``): shown, made or replaced from one place,
for the token page (``/accounts/token/``) and ``manage.py api_token``.

One token per user, as DRF's ``Token`` model has it. Rotating replaces it in one
transaction: the old key stops working the moment the new one exists.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from rest_framework.authtoken.models import Token


def find_token(user: AbstractBaseUser) -> Token | None:
    return Token.objects.filter(user=user).first()


def issue_token(user: AbstractBaseUser) -> Token:
    """The user's token, made if they have none (so asking twice gives one token)."""
    token, _ = Token.objects.get_or_create(user=user)
    return token


@transaction.atomic
def rotate_token(user: AbstractBaseUser) -> Token:
    """A new token for the user; the old one, if any, no longer authenticates."""
    Token.objects.filter(user=user).delete()
    return Token.objects.create(user=user)
