"""The ISO 4217 currency codes a payment may be in.

From pycountry (Debian's iso-codes data, kept current with ISO 4217's amendments)
rather than a table of our own: the list changes (``XCG`` arrived in 2025) and a
payments system should follow it with a version bump, not an edit.

Left out are the codes that name no money a payment can be made in: precious metals,
bond-market and accounting units, the SDR, and the testing and "no currency" codes.
"""

from __future__ import annotations

from functools import cache

import pycountry

NOT_PAYABLE = frozenset({
    "XAU", "XAG", "XPD", "XPT",  # gold, silver, palladium, platinum
    "XBA", "XBB", "XBC", "XBD",  # European bond-market units
    "XDR", "XSU", "XUA", "XAD",  # SDR, Sucre, ADB and Arab accounting units
    "XTS", "XXX",  # reserved for testing; "no currency"
})



@cache
def currency_codes() -> frozenset[str]:
    """The codes a payment may be in; read on first use, not at import (the CLI starts
    faster, and importing the domain touches no data file)."""
    return frozenset(currency.alpha_3 for currency in pycountry.currencies) - NOT_PAYABLE
