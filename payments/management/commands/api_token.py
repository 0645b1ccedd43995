"""``manage.py api_token USERNAME [--rotate]``: print a user's API token, made if missing.

Prints the key alone, so that ``TOKEN=$(manage.py api_token admin)`` works; an unknown
user is an error on stderr (exit 1) that names the users there are, never an empty key.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from payments.api.tokens import issue_token, rotate_token

SHOWN_USERS = 10


class Command(BaseCommand):
    help = "Print USERNAME's API token (made if missing); --rotate replaces it."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--rotate", action="store_true",
                            help="replace the token: the old one stops working at once")

    def handle(self, *args: Any, **options: Any) -> None:
        users = get_user_model()
        try:
            user = users.objects.get_by_natural_key(options["username"])
        except users.DoesNotExist:
            names = list(users.objects.order_by(users.USERNAME_FIELD)
                         .values_list(users.USERNAME_FIELD, flat=True)[:SHOWN_USERS])
            known = (f"users: {', '.join(names)}" if names
                     else "there are no users yet (python3 dev.py run makes admin)")
            raise CommandError(f"no user {options['username']!r}; {known}") from None
        token = rotate_token(user) if options["rotate"] else issue_token(user)
        self.stdout.write(token.key)
