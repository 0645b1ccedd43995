"""The one table of bad amounts, shared by every interface's tests (issue 16).

DESIGN.md: amounts are positive plain decimals, at most two places and twelve digits
before the point, and "the same parse function serves the API, the forms and the CLI,
so each refusal reads the same everywhere". So the domain's parser, the REST API and
every HTML form that takes an amount (create, settle, refund) are tested against the
same rows: each is refused with the same message, and nothing is appended.

Blank is not in the table: a payment must be created with an amount, but a blank
settle or refund amount means "all that is left" (each interface tests that apart).
"""

from __future__ import annotations

PLAIN = "is not a plain decimal"
POSITIVE = "must be greater than 0"
TWO_PLACES = "must have at most 2 decimal places"
AT_MOST = "must be at most 999,999,999,999.99"

# (text as a client sends it, what the refusal says)
BAD_AMOUNTS: list[tuple[str, str]] = [
    ("abc", PLAIN),
    ("ten", PLAIN),
    ("-5", POSITIVE),
    ("-0.01", POSITIVE),
    ("0", POSITIVE),
    ("0.00", POSITIVE),
    ("0.001", TWO_PLACES),
    ("1.000", TWO_PLACES),
    ("1.001", TWO_PLACES),
    # A float would take it as 0.1: money is never parsed through float.
    ("0.10000000000000000001", TWO_PLACES),
    ("1234567890123", AT_MOST),
    ("1000000000000.00", AT_MOST),
    ("1" * 30, AT_MOST),
    ("1" * 41, AT_MOST),  # refused before it is parsed
    # Decimal() and float() take all of these; a payments system must not.
    ("1e309", PLAIN),
    ("1e2", PLAIN),
    ("1E2", PLAIN),
    ("1_000", PLAIN),
    ("+5", PLAIN),
    (" 5", PLAIN),
    ("5 ", PLAIN),
    ("1 000", PLAIN),
    ("1,000.00", PLAIN),
    ("12,50", PLAIN),
    ("0x10", PLAIN),
    ("\u0661\u0662", PLAIN),  # Arabic-Indic digits
    ("\uff15", PLAIN),  # a fullwidth 5
    ("\u22125", PLAIN),  # a minus sign that is not ASCII
    ("5.", PLAIN),
    (".5", PLAIN),
    ("1.2.3", PLAIN),
    ("NaN", PLAIN),
    ("Infinity", PLAIN),
    ("-Infinity", PLAIN),
    ("5\x00", PLAIN),
]
