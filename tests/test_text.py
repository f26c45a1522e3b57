"""Text rules for outgoing SMS: responder.text."""

from __future__ import annotations

import codecs
import encodings
import encodings.aliases
import itertools
import pkgutil
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.text import (
    SMS_LIMIT,
    clean_control,
    fit_parts,
    make_encodable,
    split_parts,
)

SIGNATURE = "【某某公司】"
FAMILY = "👨\u200d👩\u200d👧\u200d👦"  # one emoji, seven code points
HEART = "❤\ufe0f"  # an emoji with a variation selector
FLAG = "🇨🇳"
ZWJ = "\u200d"

# --- helpers ------------------------------------------------------------------------------


def bodies_of(parts: list[str], prefix: str = "", suffix: str = "") -> list[str]:
    """The text in each part, after checking prefix, suffix and the (i/n) markers."""
    n = len(parts)
    bodies = []
    for i, part in enumerate(parts, 1):
        assert part.startswith(prefix), part
        assert part.endswith(suffix), part
        body = part[len(prefix) : len(part) - len(suffix)]
        if n > 1:
            marker = f"({i}/{n})"
            assert body.endswith(marker), (part, marker)
            body = body[: -len(marker)]
        bodies.append(body)
    return bodies


def is_high_surrogate(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


def is_variation_selector(ch: str) -> bool:
    return "\ufe00" <= ch <= "\ufe0f"


# --- clean_control ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("你好\x00吗", "你好吗"),
        ("line1\nline2\tend", "line1\nline2\tend"),
        ("a\r\nb", "a\nb"),
        ("bell\x07 esc\x1b del\x7f", "bell esc del"),
        ("c1\x80\x85\x9f", "c1"),
        ("\xa0中文 é", "\xa0中文 é"),
    ],
)
def test_clean_control_removes_c0_c1_controls_but_keeps_newline_and_tab(
    text: str, cleaned: str
) -> None:
    assert clean_control(text) == cleaned


@settings(max_examples=100)
@given(st.text())
def test_clean_control_leaves_no_control_character_but_newline_and_tab(text: str) -> None:
    cleaned = clean_control(text)
    assert all(unicodedata.category(ch) != "Cc" or ch in "\n\t" for ch in cleaned)
    assert cleaned == "".join(ch for ch in text if unicodedata.category(ch) != "Cc" or ch in "\n\t")


# --- make_encodable -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoding", "expected"),
    [
        ("你好，世界！", "gbk", ("你好，世界！", 0)),
        ("hi 😀", "gbk", ("hi □", 1)),
        (f"家人{FAMILY}好", "gbk", ("家人□好", 1)),
        (f"爱{HEART}你", "gbk", ("爱□你", 1)),
        (FLAG, "gbk", ("□", 1)),
        ("😀😀", "gbk", ("□□", 2)),
        ("a\ud800b", "utf-8", ("a□b", 1)),
        ("a\udc00b", "gb18030", ("a□b", 1)),
        ("\ud83d\ude00", "gbk", ("□", 1)),  # a surrogate pair is one placeholder
        ("\ud83d\ude00", "gb18030", ("😀", 0)),  # ... or recomposed when the codec can carry it
        ("e\u0301", "gbk", ("é", 0)),  # recomposed: GBK has é (pinyin)
        ("中文", "ascii", ("??", 2)),  # "□" is not ASCII
        (f"ok {FAMILY}", "ascii", ("ok ?", 1)),
        ("😀", "utf-8", ("😀", 0)),
        ("", "gbk", ("", 0)),
    ],
)
def test_make_encodable_replaces_each_unencodable_cluster_by_one_placeholder(
    text: str, encoding: str, expected: tuple[str, int]
) -> None:
    assert make_encodable(text, encoding) == expected


def test_make_encodable_uses_the_given_placeholder() -> None:
    assert make_encodable("中文ok", "ascii", placeholder="*") == ("**ok", 2)


def test_make_encodable_raises_lookup_error_for_an_unknown_codec() -> None:
    with pytest.raises(LookupError):
        make_encodable("中文😀", "no-such-codec")


def _text_codecs() -> list[str]:
    """Every codec name Python knows here that encodes str (not bytes-to-bytes ones)."""
    names = {m.name for m in pkgutil.iter_modules(encodings.__path__)}
    names |= set(encodings.aliases.aliases)
    usable = set()
    for name in names:
        try:
            info = codecs.lookup(name)
            "".encode(name)
        except LookupError:  # not here (mbcs), or not a text encoding (base64, rot13)
            continue
        except ValueError:  # a text encoding that refuses even "" ("undefined"): keep it
            pass
        usable.add(info.name)
    return sorted(usable)


TEXT_CODECS = _text_codecs()

nasty_chars = st.sampled_from(
    [
        "中",
        "é",
        "e",
        "\u0301",
        ZWJ,
        "\ufe0f",
        "\ud800",
        "\udbff",
        "\udc00",
        "😀",
        "🇨",
        "🇳",
        ".",
        "?",
    ]
)
nasty_text = st.text(st.one_of(st.characters(), nasty_chars), max_size=60)


@settings(max_examples=300)
@given(text=nasty_text, encoding=st.sampled_from(TEXT_CODECS))
def test_make_encodable_never_raises_for_any_text_and_codec(text: str, encoding: str) -> None:
    result, replaced = make_encodable(text, encoding)
    assert replaced >= 0
    assert isinstance(result, str)


@settings(max_examples=200)
@given(
    text=nasty_text,
    encoding=st.sampled_from(["gbk", "gb18030", "utf-8", "ascii"]),
    placeholder=st.sampled_from(["□", "?", "*", "😀"]),
)
def test_make_encodable_output_always_encodes(text: str, encoding: str, placeholder: str) -> None:
    result, replaced = make_encodable(text, encoding, placeholder)
    result.encode(encoding)
    if replaced:
        assert result != text


@settings(max_examples=100)
@given(text=st.text(), encoding=st.sampled_from(["gbk", "gb18030", "utf-8"]))
def test_make_encodable_keeps_text_the_codec_can_carry(text: str, encoding: str) -> None:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return
    assert make_encodable(text, encoding) == (text, 0)


# --- split_parts: examples ----------------------------------------------------------------


def test_split_parts_keeps_a_short_text_as_one_part_without_marker() -> None:
    assert split_parts("你好吗") == ["你好吗"]
    assert split_parts("") == [""]
    assert split_parts("你好吗", prefix=SIGNATURE) == [f"{SIGNATURE}你好吗"]
    assert split_parts("", suffix=SIGNATURE) == [SIGNATURE]


def test_split_parts_sends_exactly_70_characters_as_one_part() -> None:
    assert split_parts("中" * 70) == ["中" * 70]
    assert split_parts("a" * 70) == ["a" * 70]


def test_split_parts_splits_71_characters_into_two_marked_parts() -> None:
    assert split_parts("中" * 71) == ["中" * 65 + "(1/2)", "中" * 6 + "(2/2)"]


def test_split_parts_counts_the_signature_prefix_in_the_limit() -> None:
    assert split_parts("中" * 64, prefix=SIGNATURE) == [SIGNATURE + "中" * 64]
    assert split_parts("中" * 65, prefix=SIGNATURE) == [
        SIGNATURE + "中" * 59 + "(1/2)",
        SIGNATURE + "中" * 6 + "(2/2)",
    ]


def test_split_parts_puts_the_marker_before_a_signature_suffix() -> None:
    assert split_parts("中" * 65, suffix=SIGNATURE) == [
        "中" * 59 + "(1/2)" + SIGNATURE,
        "中" * 6 + "(2/2)" + SIGNATURE,
    ]


def test_split_parts_reserves_room_for_two_digit_markers_from_ten_parts_on() -> None:
    parts = split_parts("中" * 600)
    assert len(parts) == 10
    assert parts[0] == "中" * 63 + "(1/10)"  # 69: "(1/10)" is kept as wide as "(10/10)"
    assert parts[-1] == "中" * (600 - 9 * 63) + "(10/10)"
    assert all(len(part) <= SMS_LIMIT for part in parts)


def test_split_parts_uses_one_digit_markers_up_to_nine_parts() -> None:
    parts = split_parts("中" * 585)
    assert len(parts) == 9
    assert all(part == "中" * 65 + f"({i}/9)" for i, part in enumerate(parts, 1))


def test_split_parts_prefers_to_break_after_a_space() -> None:
    text = "word " * 20  # 100 characters
    parts = split_parts(text)
    assert parts[0] == "word " * 13 + "(1/2)"  # 65 characters of text end with a space
    assert bodies_of(parts) == ["word " * 13, "word " * 7]


def test_split_parts_prefers_to_break_after_chinese_punctuation() -> None:
    text = "中" * 55 + "。" + "文" * 30
    assert bodies_of(split_parts(text)) == ["中" * 55 + "。", "文" * 30]


def test_split_parts_breaks_hard_when_no_punctuation_is_near_the_end() -> None:
    text = "中" * 10 + "。" + "文" * 80  # the full stop is 54 characters back from 65
    assert bodies_of(split_parts(text)) == ["中" * 10 + "。" + "文" * 54, "文" * 26]


@pytest.mark.parametrize(
    ("text", "first_body"),
    [
        ("a" * 64 + "e\u0301" + "b" * 10, "a" * 64),  # combining acute stays with its e
        ("a" * 64 + "e\u0301\u0323" + "b" * 10, "a" * 64),  # two combining marks
        ("a" * 64 + HEART + "b" * 10, "a" * 64),  # variation selector stays with its emoji
        ("a" * 60 + FAMILY + "b" * 10, "a" * 60),  # a ZWJ sequence is not split
        ("a" * 63 + FAMILY + "b" * 10, "a" * 63),
        ("a" * 64 + "\ud83d\ude00" + "b" * 10, "a" * 64),  # a surrogate pair is not split
        ("a" * 64 + "\ud800" + "b" * 10, "a" * 64),  # nor is a lone high surrogate left at the end
        ("a" * 64 + FLAG + "b" * 10, "a" * 64),  # a flag is two regional indicators
    ],
)
def test_split_parts_keeps_clusters_together(text: str, first_body: str) -> None:
    bodies = bodies_of(split_parts(text))
    assert bodies[0] == first_body
    assert "".join(bodies) == text


def test_split_parts_cuts_a_cluster_longer_than_a_part() -> None:
    text = "e" + "\u0301" * 100
    parts = split_parts(text)
    assert all(len(part) <= SMS_LIMIT for part in parts)
    assert "".join(bodies_of(parts)) == text


@pytest.mark.parametrize(
    ("limit", "prefix", "suffix"),
    [
        (5, "", ""),
        (0, "", ""),
        (70, "x" * 65, ""),
        (70, "x" * 30, "y" * 35),
        (11, SIGNATURE, ""),
    ],
)
def test_split_parts_rejects_a_limit_that_leaves_no_room(
    limit: int, prefix: str, suffix: str
) -> None:
    with pytest.raises(ValueError, match="no room"):
        split_parts("中", limit=limit, prefix=prefix, suffix=suffix)


def test_split_parts_rejects_a_text_needing_markers_wider_than_the_room() -> None:
    # Room for one character with "(i/n)": nine parts at most.
    assert len(split_parts("中" * 9, limit=6)) == 9
    with pytest.raises(ValueError, match="no room"):
        split_parts("中" * 10, limit=6)


# --- split_parts: properties --------------------------------------------------------------

affixes = st.sampled_from(["", SIGNATURE, "【A】", "-- x"])
texts = st.one_of(
    st.text(st.one_of(st.characters(), nasty_chars), max_size=80),
    st.text(st.one_of(st.characters(), nasty_chars), min_size=40, max_size=400),
)


@st.composite
def split_args(draw: st.DrawFn, text: st.SearchStrategy[str] = texts) -> tuple[str, int, str, str]:
    """A text, prefix and suffix, and a limit that often makes the text need many parts."""
    chosen = draw(text)
    prefix, suffix = draw(affixes), draw(affixes)
    room = draw(st.integers(min_value=6, max_value=max(6, len(chosen) // 2 + 10)))
    return chosen, len(prefix) + len(suffix) + room, prefix, suffix


def split_or_skip(text: str, limit: int, prefix: str, suffix: str) -> list[str] | None:
    """split_parts, or None when the text needs more parts than the marker room allows."""
    try:
        return split_parts(text, limit=limit, prefix=prefix, suffix=suffix)
    except ValueError:
        return None


@settings(max_examples=200)
@given(split_args())
def test_split_parts_every_part_fits_the_limit(args: tuple[str, int, str, str]) -> None:
    parts = split_or_skip(*args)
    if parts is not None:
        assert all(len(part) <= args[1] for part in parts)


@settings(max_examples=200)
@given(split_args())
def test_split_parts_marks_parts_1_to_n_in_order_and_rejoins_to_the_text(
    args: tuple[str, int, str, str],
) -> None:
    text, limit, prefix, suffix = args
    parts = split_or_skip(*args)
    if parts is None:
        return
    assert parts
    bodies = bodies_of(parts, prefix, suffix)  # checks "(1/n)".."(n/n)"
    assert "".join(bodies) == text
    if len(parts) > 1:
        assert all(bodies), "no empty part"
        assert len(prefix + text + suffix) > limit, "a text that fits is never split"


def test_split_parts_raises_only_when_even_wide_markers_leave_no_room() -> None:
    assert len(split_parts("中" * 1000, limit=20)) == 77  # "(nn/77)" leaves 13 characters each
    with pytest.raises(ValueError, match="no room"):
        split_parts("中" * 1000, limit=10)  # would need 1000 parts of 1 character


def _not_an_extender(ch: str) -> bool:
    cp = ord(ch)
    return not (
        unicodedata.combining(ch)
        or unicodedata.category(ch) in ("Mn", "Mc", "Me", "Cs")
        or ch == ZWJ
        or 0x1F3FB <= cp <= 0x1F3FF  # skin tones
        or 0xE0000 <= cp <= 0xE0FFF  # tags, variation selectors supplement
        or 0x1F1E6 <= cp <= 0x1F1FF  # regional indicators
    )


base_chars = st.one_of(
    st.sampled_from(["中", "a", " ", "。", "，", ".", "!", "\n", "😀"]),
    st.characters().filter(_not_an_extender),
)
marks = st.sampled_from(["\u0301", "\u0323", "\u20e3", "\ufe0f", "\ufe0e", "\U0001f3fb", "\u0903"])
clusters = st.one_of(
    base_chars,
    st.tuples(base_chars, st.lists(marks, min_size=1, max_size=3)).map(
        lambda t: t[0] + "".join(t[1])
    ),
    st.sampled_from(
        [
            FAMILY,
            HEART,
            FLAG,
            "🏳\ufe0f\u200d🌈",
            "\ud83d\ude00",
            "\ud83d\ude00\ufe0f",
            "\udc00",
            "\ud800x",
        ]
    ),
)
clustered_text = st.one_of(
    st.lists(clusters, max_size=40), st.lists(clusters, min_size=40, max_size=150)
).map("".join)


@settings(max_examples=200)
@given(split_args(clustered_text))
def test_split_parts_never_breaks_inside_a_cluster(args: tuple[str, int, str, str]) -> None:
    text, limit, prefix, suffix = args
    # Clusters here are at most 7 code points; keep every part roomier than that.
    limit = max(limit, len(prefix) + len(suffix) + 16)
    parts = split_or_skip(text, limit, prefix, suffix)
    if parts is None:
        return
    bodies = bodies_of(parts, prefix, suffix)
    assert "".join(bodies) == text
    for before, after in itertools.pairwise(bodies):
        assert not before.endswith(ZWJ)
        assert not is_high_surrogate(before[-1])
        assert not unicodedata.combining(after[0])
        assert not is_variation_selector(after[0])
        assert after[0] != ZWJ


# --- fit_parts ----------------------------------------------------------------------------


def test_fit_parts_returns_split_parts_when_they_are_few_enough() -> None:
    text = "中" * 100
    assert fit_parts(text, max_parts=2) == (split_parts(text), False)
    assert fit_parts("你好", max_parts=1) == (["你好"], False)


def test_fit_parts_truncates_to_one_part_with_an_ellipsis() -> None:
    assert fit_parts("中" * 100, max_parts=1) == (["中" * 69 + "…"], True)
    assert fit_parts("中" * 100, max_parts=1, prefix=SIGNATURE) == (
        [SIGNATURE + "中" * 63 + "…"],
        True,
    )


def test_fit_parts_fills_exactly_max_parts_and_ends_with_the_ellipsis() -> None:
    parts, truncated = fit_parts("中" * 200, max_parts=2, suffix=SIGNATURE)
    assert truncated
    assert parts == [
        "中" * 59 + "(1/2)" + SIGNATURE,
        "中" * 58 + "…(2/2)" + SIGNATURE,
    ]


def test_fit_parts_does_not_cut_a_cluster_before_the_ellipsis() -> None:
    text = "a" * 68 + "e\u0301" + "b" * 10
    assert fit_parts(text, max_parts=1) == (["a" * 68 + "…"], True)


def test_fit_parts_uses_the_given_ellipsis() -> None:
    assert fit_parts("中" * 100, max_parts=1, ellipsis="...") == (["中" * 67 + "..."], True)


def test_fit_parts_rejects_fewer_than_one_part() -> None:
    with pytest.raises(ValueError):
        fit_parts("中", max_parts=0)


@settings(max_examples=200)
@given(args=split_args(), max_parts=st.integers(min_value=1, max_value=12))
def test_fit_parts_never_exceeds_max_parts_and_truncates_exactly_when_split_would(
    args: tuple[str, int, str, str], max_parts: int
) -> None:
    text, limit, prefix, suffix = args
    full = split_or_skip(*args)
    if full is None:
        return
    parts, truncated = fit_parts(
        text, max_parts=max_parts, limit=limit, prefix=prefix, suffix=suffix
    )
    assert truncated == (len(full) > max_parts)
    assert all(len(part) <= limit for part in parts)
    if not truncated:
        assert parts == full
        return
    assert len(parts) == max_parts
    joined = "".join(bodies_of(parts, prefix, suffix))
    assert joined.endswith("…")
    assert text.startswith(joined[: -len("…")])
