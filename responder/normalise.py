"""Text and phone-number helpers shared by the built-in plugins, public for plugin authors.

``normalise`` is the form keywords and messages are compared in (the keyword rules, the
opt-out words and the webhook's ``match`` all use it); ``canonical_number`` the form a
phone number is compared in (the opt-out list, the guard's lists). See docs/plugins.md.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

MOBILE_PATTERN: Final = r"1[3-9]\d{9}"
"""A mainland China mobile number, without a +86 prefix: 11 digits starting 13–19."""
MOBILE: Final = re.compile(MOBILE_PATTERN)


# -- text ----------------------------------------------------------------------------------


def is_separator(char: str) -> bool:
    """Whitespace or punctuation in any script (and "~"): what ends a word."""
    return char.isspace() or char == "~" or unicodedata.category(char)[0] == "P"


def display_form(text: str) -> str:
    """The text as matched, case kept: NFKC (full-width to half-width, U+3000 to a space),
    whitespace collapsed and trimmed, trailing punctuation removed (unless that is all)."""
    collapsed = " ".join(unicodedata.normalize("NFKC", text).split())
    end = len(collapsed)
    while end and is_separator(collapsed[end - 1]):
        end -= 1
    return collapsed[:end] if end else collapsed


def normalise(text: str) -> str:
    """The form keywords and messages are compared in: ``display_form`` case-folded.

    "ＣＸ　１２３！" and "cx 123" both become "cx 123".
    """
    return display_form(text).casefold()


# -- phone numbers -------------------------------------------------------------------------


def compact_number(text: str) -> str:
    """A number as typed by a person, without spaces, dashes and a leading "+".

    "+86 138-0013-8000" becomes "8613800138000"; the result is not checked to be digits.
    """
    return "".join(text.split()).replace("-", "").removeprefix("+")


def canonical_number(number: str) -> str:
    """A phone number as lists key it: digits only, without a +86 / 0086 / 86 prefix
    in front of a mobile number."""
    if number.isascii() and number.isdigit():  # the usual case, and every canonical one
        digits = number
    else:
        digits = "".join(char for char in number if char.isdigit())
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11 and digits[-11] == "1":
            return digits[len(prefix) :]
    return digits


def is_mobile(number: str) -> bool:
    """Whether ``number`` is exactly a mainland China mobile number (``MOBILE_PATTERN``)."""
    return MOBILE.fullmatch(number) is not None


def number_argument(text: str | None) -> str | None:
    """A phone number typed on a command line, in ``canonical_number`` form; None when it
    is not one (5 to 20 digits once spaces, dashes and a leading "+" are gone)."""
    compact = compact_number(text or "")
    if not compact.isdigit() or not 5 <= len(compact) <= 20:
        return None
    return canonical_number(compact)
