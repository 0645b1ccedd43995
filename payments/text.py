"""The text rule (DESIGN.md): what a free-text value may hold, in one place.

Plain Python, no Django: the domain refuses new text that breaks the rule
(``payments.domain.parse_text``), and the event contract repairs text already stored
before the rule existed (``payments.events`` at read time), so both use these two
functions and cannot drift apart.

Allowed: Unicode scalar values other than NUL, control and format characters
(categories Cc, Cf: line breaks, tabs, bidi overrides, zero-width joiners) and line
or paragraph separators (Zl, Zp: they break lines in terminals and in the CLI's
``field: value`` output). Lone surrogates (Cs) are not scalar values at all: no UTF-8
encoder, database or page can store or show them.
"""

from __future__ import annotations

import unicodedata

REPLACEMENT = "\ufffd"
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def forbidden_character(text: str) -> str | None:
    """The first character the rule forbids, or None. ASCII text is checked in C."""
    if text.isascii():
        if text.isprintable():  # ASCII printable: no Cc (tab, newline, NUL, DEL...)
            return None
        return next(ch for ch in text if not ch.isprintable())
    for ch in text:
        if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES:
            return ch
    return None


def describe(ch: str) -> str:
    """Why ``ch`` is refused, in words a user can act on."""
    code = f"U+{ord(ch):04X}"
    if ch == "\x00":
        return f"must not contain NUL ({code})"
    category = unicodedata.category(ch)
    if 0xDC80 <= ord(ch) <= 0xDCFF:  # how Python reads a byte of a command line not UTF-8
        return f"is not valid UTF-8 text (it holds the byte 0x{ord(ch) - 0xDC00:02X})"
    if category == "Cs":
        return f"is not valid Unicode text: it holds a lone surrogate ({code})"
    if category in ("Cc", "Zl", "Zp"):
        return f"must be one line of text without control characters (found {code})"
    return f"must not contain invisible format characters such as direction overrides" \
           f" (found {code})"


def normalise(text: str) -> str:
    """NFC, so that the same name typed on two keyboards is the same string."""
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def repair(text: str) -> str:
    """Stored text made valid: each forbidden character becomes U+FFFD, then NFC.

    For events written before the rule: they must still project and render, and the
    replacement character shows the reader that something was there.
    """
    if forbidden_character(text) is None:
        return normalise(text)
    return normalise("".join(
        REPLACEMENT if unicodedata.category(ch) in _FORBIDDEN_CATEGORIES else ch
        for ch in text
    ))
