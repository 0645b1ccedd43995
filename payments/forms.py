"""The HTML forms of the payment commands.

Each field is checked by the domain's own ``parse_*`` rule, so a form shows exactly
the message the API and the CLI give. Fields are ``required=False`` on purpose: an
empty value reaches the domain rule, which names the problem in its own words.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID

from django import forms
from django.conf import settings
from django.core.validators import ProhibitNullCharactersValidator

from payments.domain import (
    InvalidInput,
    parse_amount,
    parse_bank_name,
    parse_currency,
    parse_decline_code,
    parse_reference,
)


def _domain_rule(parse: Callable[[str], Any], value: str) -> Any:
    """``parse(value)``, its ``InvalidInput`` shown as the field's error."""
    try:
        return parse(value)
    except InvalidInput as e:
        raise forms.ValidationError(e.message) from None


def _text(label: str, *, required: bool, **attrs: str) -> forms.CharField:
    """A text field checked by the domain; ``required`` only marks it for the browser."""
    widget_attrs: dict[str, Any] = {"autocomplete": "off", **attrs}
    if required:
        widget_attrs["required"] = True
    field = forms.CharField(
        label=label, required=False, strip=False, widget=forms.TextInput(attrs=widget_attrs)
    )
    # Django's own NUL check would answer first, in other words than the API and the CLI:
    # the domain's text rule refuses NUL with the same message everywhere.
    field.validators = [v for v in field.validators
                        if not isinstance(v, ProhibitNullCharactersValidator)]
    return field


class CommandForm(forms.Form):
    """Common to every command: the version the user saw and a per-page idempotency key.

    ``expected_version`` turns "someone changed it meanwhile" into a clear 409 instead
    of acting on a state the user never saw; ``idempotency_key`` makes a double submit
    of the same rendered form append one event, not two.
    """

    expected_version = forms.IntegerField(required=False, min_value=0,
                                          widget=forms.HiddenInput)
    idempotency_key = forms.UUIDField(required=False, widget=forms.HiddenInput)

    def command_options(self, user_pk: object) -> dict[str, Any]:
        """The service's keyword arguments common to all commands."""
        key: UUID | None = self.cleaned_data.get("idempotency_key")
        # Scoped to the user: nobody can replay or block another user's key.
        options: dict[str, Any] = {"idempotency_key": f"html:{user_pk}:{key}" if key else None}
        if "expected_version" in self.fields:
            options["expected_version"] = self.cleaned_data.get("expected_version")
        return options

    def arguments(self) -> dict[str, Any]:
        """The command's own arguments (the fields other than the common ones)."""
        common = set(CommandForm.base_fields)
        return {k: v for k, v in self.cleaned_data.items() if k not in common}


def _optional_amount(value: str) -> Decimal | None:
    return None if not value.strip() else parse_amount(value)


def _optional_bank_name(value: str) -> str | None:
    return None if not value.strip() else parse_bank_name(value)


class CreatePaymentForm(CommandForm):
    expected_version = None  # a new payment has no version yet
    amount = _text("Amount", required=True, inputmode="decimal", placeholder="100.00")
    currency = _text("Currency", required=True, maxlength="3", size="4")
    # No maxlength: a browser counts UTF-16 units, the rule counts characters (and says so).
    reference = _text("Reference (optional)", required=False, placeholder="order 1234")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["currency"].initial = settings.DEFAULT_CURRENCY

    def clean_amount(self) -> Decimal:
        return _domain_rule(parse_amount, self.cleaned_data["amount"])

    def clean_currency(self) -> str:
        return _domain_rule(parse_currency, self.cleaned_data["currency"])

    def clean_reference(self) -> str:
        return _domain_rule(parse_reference, self.cleaned_data["reference"])


class AuthorizeForm(CommandForm):
    bank_name = _text("Bank", required=True)

    def clean_bank_name(self) -> str:
        return _domain_rule(parse_bank_name, self.cleaned_data["bank_name"])


class SettleForm(CommandForm):
    amount = _text("Amount (empty: all outstanding)", required=False, inputmode="decimal")
    bank_name = _text("Bank (empty: keep)", required=False)

    def clean_amount(self) -> Decimal | None:
        return _domain_rule(_optional_amount, self.cleaned_data["amount"])

    def clean_bank_name(self) -> str | None:
        return _domain_rule(_optional_bank_name, self.cleaned_data["bank_name"])


class RefundForm(CommandForm):
    amount = _text("Amount (empty: all settled)", required=False, inputmode="decimal")

    def clean_amount(self) -> Decimal | None:
        return _domain_rule(_optional_amount, self.cleaned_data["amount"])


class DeclineForm(CommandForm):
    bank_name = _text("Bank", required=True)
    decline_code = _text("Decline code", required=True, maxlength="4", size="5",
                         placeholder="05")

    def clean_bank_name(self) -> str:
        return _domain_rule(parse_bank_name, self.cleaned_data["bank_name"])

    def clean_decline_code(self) -> str:
        return _domain_rule(parse_decline_code, self.cleaned_data["decline_code"])


class RotateTokenForm(forms.Form):
    """Replacing the API token breaks every script that uses it: ask first."""

    confirm = forms.BooleanField(
        label="I understand that the current token stops working at once",
        error_messages={"required": "Tick the box to confirm: scripts that use the current"
                                    " token will get 401 until they use the new one."})
