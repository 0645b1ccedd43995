"""``manage.py api``: the original ``api.py`` script, on the command service.

It keeps the script's short flags, so ``-v`` is the value here; Django's verbosity
keeps its long form ``--verbosity``. ``create`` prints the new id alone, for
``ID=$(python manage.py api -a create -v 10.00)``; other actions print the payment
as ``field: value`` lines (``--json`` for JSON). Errors: one line on stderr, exit 1.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from argparse import ArgumentParser
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from payments import services
from payments.api.serializers import history_json, payment_json
from payments.domain import InvalidInput, Payment, PaymentError
from payments.events import EventDecodeError, format_timestamp
from payments.eventstore import EventStoreError

ACTIONS = ("create", "authorize", "settle", "decline", "refund", "find")


@contextmanager
def _service_log_quiet(quiet: bool) -> Iterator[None]:
    """Unless LOG_LEVEL is set, keep the service's log lines off the CLI's stderr.

    The result is on stdout and a refusal is already one line on stderr; the
    command's log line (INFO, WARNING when the store is down) would only repeat it.
    """
    service_logger = logging.getLogger("payments.services")
    level = service_logger.level
    if quiet:
        service_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        service_logger.setLevel(level)


class Command(BaseCommand):
    help = (
        "Issue a payment command, as the original api.py did. "
        "Examples: api -a create -v 100.00 [-r 'order 1234']; api -a authorize -i ID -b 'Bank'; "
        "api -a settle -i ID [-v 40.00]; api -a refund -i ID [-v 10.00]; "
        "api -a decline -i ID -b 'Bank' -c 05; api -a find -i ID [--as-of VERSION_OR_TIME]"
    )

    def add_base_argument(self, parser: ArgumentParser, *args: Any, **kwargs: Any) -> None:
        """Give ``-v`` to the value, as in the original script; ``--verbosity`` stays."""
        super().add_base_argument(parser, *(a for a in args if a != "-v"), **kwargs)

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> ArgumentParser:
        """Report a usage error in one line (the full usage is one ``--help`` away)."""
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.print_usage = lambda file=None: None  # type: ignore[method-assign]
        return parser

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("-a", "--action", required=True, choices=ACTIONS)
        parser.add_argument("-i", "--id", help="the payment's id (every action but create)")
        parser.add_argument(
            "-v", "--value",
            help="amount, e.g. 100.00 (create; optional for settle and refund: all that is left)",
        )
        parser.add_argument("-b", "--bank-name", help="bank name (authorize, decline, settle)")
        parser.add_argument("-c", "--decline-code", help="decline code, e.g. 05 (decline)")
        parser.add_argument("--currency", help="ISO 4217 code for create (default from settings)")
        parser.add_argument("-r", "--reference",
                            help="the merchant's own reference for create, e.g. an order"
                                 " number (optional, at most 64 characters)")
        parser.add_argument("--idempotency-key", help="makes a retried command append nothing")
        parser.add_argument(
            "--as-of", metavar="VERSION_OR_TIME",
            help="find: the payment as it was right after event VERSION (a whole number, from"
                 " 0), or at an ISO 8601 TIME (UTC unless it names a zone)",
        )
        parser.add_argument("--json", action="store_true", help="print JSON")

    def execute(self, *args: Any, **options: Any) -> str | None:
        """A reader that went away (``| head -1``) ends the command quietly, no traceback."""
        try:
            return super().execute(*args, **options)
        except BrokenPipeError:
            # Point stdout at /dev/null so the interpreter's last flush cannot fail too,
            # and exit 1 without a word, as Python's documentation advises on EPIPE.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(1) from None

    def handle(self, *args: Any, **options: Any) -> None:
        with _service_log_quiet(settings.LOG_LEVEL is None):
            try:
                self._dispatch(options)
            except InvalidInput as e:
                raise CommandError(f"{_FLAGS.get(e.field, e.field)}: {e.message}") from e
            except (PaymentError, EventStoreError, EventDecodeError) as e:
                raise CommandError(str(e)) from e
            self.stdout.flush()  # a closed pipe shows here, inside execute

    def _dispatch(self, options: dict[str, Any]) -> None:
        action: str = options["action"]
        key = _scoped_key(options["idempotency_key"])
        if action == "create":
            if options["id"] is not None:
                raise CommandError("create takes no -i/--id: the new payment's id is chosen"
                                   " for it (use --idempotency-key to make a retry safe)")
            payment = services.create_payment(
                amount=_required(options, "value", action), currency=options["currency"],
                reference=options["reference"] or "", idempotency_key=key,
            )
            if options["json"]:
                self._print_json(payment_json(payment))
            else:
                self.stdout.write(str(payment.id))
            return
        if options["as_of"] is not None and action != "find":
            raise CommandError(f"--as-of goes with -a find only, not with {action}")
        if options["reference"] is not None:
            # Only a create sets it: taking it here silently would look like a change.
            raise CommandError(f"{action} takes no -r/--reference: a payment's reference is"
                               " given when it is created")
        payment_id = _payment_id(options["id"], action)
        if action == "find":
            found = services.find_payment_as_of(payment_id=payment_id,
                                                **_as_of(options["as_of"]))
            if options["json"]:
                self._print_json(history_json(found))
            else:
                if found.as_of is not None:
                    self.stdout.write(_past_state_line(found.as_of))
                self._print_fields(found.payment)
                for entry in history_json(found)["events"]:
                    details = ", ".join(
                        f"{k}={v}" for k, v in entry["data"].items()
                        if k not in ("payment_id", "occurred_at")
                    )
                    self.stdout.write(
                        f"event: {entry['version']} {entry['occurred_at']} {entry['type']}"
                        f" {details}"
                    )
            return
        if action == "authorize":
            payment = services.authorize_payment(
                payment_id=payment_id, bank_name=_required(options, "bank_name", action),
                idempotency_key=key,
            )
        elif action == "settle":
            payment = services.settle_payment(
                payment_id=payment_id, amount=options["value"], bank_name=options["bank_name"],
                idempotency_key=key,
            )
        elif action == "refund":
            payment = services.refund_payment(
                payment_id=payment_id, amount=options["value"], idempotency_key=key
            )
        else:
            payment = services.decline_payment(
                payment_id=payment_id, bank_name=_required(options, "bank_name", action),
                decline_code=_required(options, "decline_code", action), idempotency_key=key,
            )
        if options["json"]:
            self._print_json(payment_json(payment))
        else:
            self._print_fields(payment)

    def _print_fields(self, payment: Payment) -> None:
        for name, value in payment_json(payment).items():
            self.stdout.write(f"{name}: {'' if value is None else value}")

    def _print_json(self, document: dict[str, Any]) -> None:
        self.stdout.write(json.dumps(document, indent=2))


_FLAGS = {"value": "-v/--value", "bank_name": "-b/--bank-name",
          "decline_code": "-c/--decline-code", "id": "-i/--id", "amount": "-v/--value",
          "currency": "--currency", "idempotency_key": "--idempotency-key",
          "as_of_version": "--as-of", "as_of": "--as-of", "reference": "-r/--reference"}
_WHOLE_NUMBER = re.compile(r"\s*-?[0-9]+\s*", re.ASCII)


def _as_of(value: str | None) -> dict[str, str]:
    """``--as-of``: a whole number is a version (so ``-1`` is refused as one), anything
    else a time; the service parses and checks either."""
    if value is None:
        return {}
    return {"version": value} if _WHOLE_NUMBER.fullmatch(value) else {"time": value}


def _past_state_line(as_of: services.AsOf) -> str:
    """What ``find --as-of`` adds to the fields: which state this is, and that it is past."""
    asked = ("" if as_of.requested_time is None
             else f", the last event by {format_timestamp(as_of.requested_time)}")
    now = (f"the payment is now at version {as_of.current_version}"
           if as_of.current_version > as_of.version else "no event has followed it yet")
    return (f"as_of: a past state, right after event {as_of.version} at"
            f" {format_timestamp(as_of.time)}{asked}; {now}")


def _scoped_key(value: str | None) -> str | None:
    """The REST rule for keys, and a scope of the CLI's own: never an API user's key."""
    return None if value is None else f"cli:{services.parse_idempotency_key(value)}"


def _required(options: dict[str, Any], name: str, action: str) -> str:
    value = options[name]
    if value is None:
        raise CommandError(f"{action} needs {_FLAGS[name]}")
    return value


def _payment_id(value: str | None, action: str) -> UUID:
    if value is None:
        raise CommandError(f"{action} needs {_FLAGS['id']}")
    try:
        return UUID(value.strip())
    except ValueError:
        raise CommandError(f"-i/--id: {value!r} is not a payment id (a UUID)") from None
