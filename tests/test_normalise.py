"""responder.normalise: the text and number forms the built-in plugins compare in."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from responder.normalise import (
    MOBILE_PATTERN,
    canonical_number,
    compact_number,
    display_form,
    is_mobile,
    is_separator,
    normalise,
    number_argument,
)

# -- text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CX", "cx"),
        ("ＣＸ", "cx"),
        ("ｃｘ　１２３", "cx 123"),
        ("  CX   123  ", "cx 123"),
        ("\u3000查询\u3000", "查询"),
        ("CX。", "cx"),
        ("cx!", "cx"),
        ("CX！！", "cx"),
        ("cx ?", "cx"),
        ("查询～", "查询"),
        ("退订，谢谢", "退订,谢谢"),
        ("CX\t\n123", "cx 123"),
        ("?", "?"),
        ("？？", "??"),
        ("", ""),
        ("Straße", "strasse"),
    ],
)
def test_normalise(text, expected):
    assert normalise(text) == expected


@given(st.text())
def test_normalise_is_idempotent(text):
    assert normalise(normalise(text)) == normalise(text)


@given(st.text())
def test_normalised_text_has_no_outer_or_double_whitespace(text):
    result = normalise(text)
    assert result == result.strip()
    assert "  " not in result
    assert "\u3000" not in result


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" for c in text)


printable = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ")


@given(printable)
def test_full_width_text_normalises_like_half_width(text):
    assert normalise(_full_width(text)) == normalise(text)


@given(printable)
def test_case_does_not_matter(text):
    assert normalise(text.upper()) == normalise(text.lower())


@given(
    st.text(alphabet=string.ascii_letters + "查询退订", min_size=1),
    st.lists(st.sampled_from(list("。！？，.!?,~… ")), max_size=4),
)
def test_trailing_punctuation_is_ignored(word, tail):
    assert normalise(word + "".join(tail)) == normalise(word)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("ＣＸ　１２３！", "CX 123"), ("  Straße。 ", "Straße"), ("？？", "??")],
)
def test_display_form_keeps_the_case(text, expected):
    assert display_form(text) == expected


@pytest.mark.parametrize(
    ("char", "expected"),
    [
        *[(" ", True), ("\u3000", True), ("，", True), ("。", True), ("~", True), ("!", True)],
        *[("_", True), ("a", False), ("查", False), ("1", False), ("+", False)],
    ],
)
def test_is_separator(char, expected):
    assert is_separator(char) is expected


# -- phone numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("13800138000", "13800138000"),
        ("+86 138 0013 8000", "13800138000"),
        ("008613800138000", "13800138000"),
        ("8613800138000", "13800138000"),
        ("+86 10 8888 8888", "861088888888"),  # a landline keeps its country code
        ("10086", "10086"),
        ("", ""),
    ],
)
def test_canonical_number(number, expected):
    assert canonical_number(number) == expected


@given(st.text())
def test_canonical_number_is_idempotent(number):
    assert canonical_number(canonical_number(number)) == canonical_number(number)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("+86 138-0013-8000", "8613800138000"), (" 10086 ", "10086"), ("abc", "abc")],
)
def test_compact_number(text, expected):
    assert compact_number(text) == expected


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("13800138000", True),
        ("19912345678", True),
        ("12345678901", False),
        ("1380013800", False),
        ("138001380001", False),
        ("+8613800138000", False),
        ("10086", False),
    ],
)
def test_is_mobile(number, expected):
    assert is_mobile(number) is expected
    assert MOBILE_PATTERN == r"1[3-9]\d{9}"


@pytest.mark.parametrize(
    ("typed", "number"),
    [
        ("13800138000", "13800138000"),
        ("+86 138-0013-8000", "13800138000"),
        ("95588", "95588"),
        ("1234", None),
        ("1380013800O", None),
        ("", None),
        (None, None),
    ],
)
def test_number_argument_reads_a_number_typed_on_a_command_line(typed, number):
    assert number_argument(typed) == number
