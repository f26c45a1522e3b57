"""Text rules for outgoing SMS: encodability, control characters, splitting into parts.

Pure functions: nothing here does I/O or logs. They return what they changed (a
replacement count, a truncation flag) so callers can log it.

The platform counts characters, not bytes (see ../shared/gateway-protocol.md): one Chinese
character, letter, digit or symbol each count as 1. Here a character is a Python code
point, so lengths are ``len()``.
"""

from __future__ import annotations

import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

SMS_LIMIT = 70
"""Characters per SMS sent through ``g70send``."""

_BREAK_AFTER = frozenset("。，！？；、.,!?;")
"""Punctuation a part may end with when splitting (whitespace too)."""
_BREAK_WINDOW = 15
"""How far back from a part's end a preferred break (after whitespace/punctuation) is looked for."""
_NARROWEST_MARKER = len("(1/2)")

_CONTROL = dict.fromkeys(
    [c for c in range(0x20) if c not in (0x09, 0x0A)] + [0x7F] + list(range(0x80, 0xA0))
)


def clean_control(text: str) -> str:
    """Remove C0 and C1 control characters (NUL, CR, ESC, DEL, U+0080–U+009F, ...).

    Newline and tab are kept.
    """
    return text.translate(_CONTROL)


# --- clusters -----------------------------------------------------------------------------


def _is_high(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


def _is_low(ch: str) -> bool:
    return "\udc00" <= ch <= "\udfff"


def _is_regional_indicator(cp: int) -> bool:
    return 0x1F1E6 <= cp <= 0x1F1FF


def _extends(cp: int) -> bool:
    """Whether code point ``cp`` belongs to the cluster before it."""
    if (
        cp == 0x200D  # ZWJ
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF  # variation selectors supplement
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tags (subdivision flags)
    ):
        return True
    ch = chr(cp)
    return unicodedata.combining(ch) != 0 or unicodedata.category(ch) in ("Mn", "Mc", "Me")


def _clusters(text: str) -> list[tuple[int, int]]:
    """Split ``text`` into grapheme-ish clusters, as ``(start, end)`` offsets.

    A cluster is a code point (or a UTF-16 surrogate pair held as two code points) with
    the combining marks, variation selectors, emoji modifiers and tags that follow it, and
    anything joined to it by a ZWJ. A regional-indicator pair (a flag) and CR LF are one
    cluster each. A lone surrogate is a base like any other. This is a simplification of
    Unicode's extended grapheme clusters, enough not to tear characters apart.
    """
    units: list[tuple[int, int]] = []  # (length in code points, code point)
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if _is_high(ch) and i + 1 < n and _is_low(text[i + 1]):
            cp = 0x10000 + ((ord(ch) - 0xD800) << 10) + (ord(text[i + 1]) - 0xDC00)
            units.append((2, cp))
            i += 2
        else:
            units.append((1, ord(ch)))
            i += 1

    clusters: list[tuple[int, int]] = []
    pos = k = 0
    while k < len(units):
        start = pos
        size, cp = units[k]
        pos += size
        k += 1
        if k < len(units) and (
            (cp == 0x0D and units[k][1] == 0x0A)
            or (_is_regional_indicator(cp) and _is_regional_indicator(units[k][1]))
        ):
            pos += units[k][0]
            k += 1
        joined = cp == 0x200D
        while k < len(units):
            size, cp = units[k]
            if not (joined or _extends(cp)):
                break
            joined = cp == 0x200D
            pos += size
            k += 1
        clusters.append((start, pos))
    return clusters


# --- encodability -------------------------------------------------------------------------


def _encodes(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except ValueError:  # UnicodeError and friends; LookupError (unknown codec) propagates
        return False
    return True


def _recompose(cluster: str) -> str:
    """Join UTF-16 surrogate pairs into one code point, then NFC-normalise."""
    joined = cluster.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return unicodedata.normalize("NFC", joined)


def make_encodable(text: str, encoding: str, placeholder: str = "□") -> tuple[str, int]:
    """Replace what ``encoding`` cannot carry by ``placeholder``; return ``(text, replacements)``.

    Works per cluster: an emoji ZWJ sequence or an emoji with a variation selector becomes
    one placeholder, and so does a lone surrogate. A cluster that only fails as written but
    encodes once recomposed (``e`` + U+0301 → ``é``, a surrogate pair → its character) is
    recomposed instead, which is not counted as a replacement. If the placeholder itself
    cannot be encoded, ``"?"`` is used (and ``""`` for a codec that cannot carry even that).

    Never raises for any text; an unknown codec or a codec that is not a text encoding
    raises LookupError.
    """
    if _encodes(text, encoding):
        return text, 0
    substitute = next((p for p in (placeholder, "?") if _encodes(p, encoding)), "")
    out: list[str] = []
    replaced = 0
    for start, end in _clusters(text):
        cluster = text[start:end]
        if _encodes(cluster, encoding):
            out.append(cluster)
            continue
        recomposed = _recompose(cluster)
        if recomposed != cluster and _encodes(recomposed, encoding):
            out.append(recomposed)
        else:
            out.append(substitute)
            replaced += 1
    return "".join(out), replaced


# --- splitting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Breaks:
    """Where ``text`` may be broken between parts."""

    text: str
    allowed: list[int]
    """Offsets where a part may end, ascending: cluster ends, except after a lone high surrogate."""
    preferred: frozenset[int]
    """Allowed offsets right after whitespace or punctuation."""

    @classmethod
    def of(cls, text: str) -> _Breaks:
        allowed: list[int] = []
        preferred: set[int] = set()
        for start, end in _clusters(text):
            if end < len(text) and _is_high(text[end - 1]):
                continue
            allowed.append(end)
            base = text[start]
            if base.isspace() or base in _BREAK_AFTER:
                preferred.add(end)
        return cls(text, allowed, frozenset(preferred))

    def hard_cut(self, start: int, end: int) -> int:
        """Cut at ``end`` even inside a cluster, but not inside a surrogate pair if avoidable."""
        text = self.text
        if end - 1 > start and _is_high(text[end - 1]) and end < len(text) and _is_low(text[end]):
            return end - 1
        return end

    def last_allowed(self, start: int, end: int) -> int:
        """The last allowed offset in ``(start, end]``; a hard cut at ``end`` if there is none."""
        i = bisect_right(self.allowed, end) - 1
        if i >= 0 and self.allowed[i] > start:
            return self.allowed[i]
        return self.hard_cut(start, end)

    def next_break(self, start: int, room: int) -> int:
        """Where a part starting at ``start`` with ``room`` characters of text should end.

        The last allowed offset that fits, or an earlier one after whitespace or
        punctuation if there is one within the last ``_BREAK_WINDOW`` characters. A cluster
        longer than ``room`` (dozens of stacked marks) is cut, since it cannot be sent whole.
        """
        end = start + room
        i = bisect_right(self.allowed, end) - 1
        if i < 0 or self.allowed[i] <= start:
            return self.hard_cut(start, end)
        for j in range(i, -1, -1):
            offset = self.allowed[j]
            if offset <= start or offset < end - _BREAK_WINDOW:
                break
            if offset in self.preferred:
                return offset
        return self.allowed[i]

    def bodies(self, room: int, max_bodies: int | None = None) -> list[str]:
        """Greedily cut the text into pieces of at most ``room`` characters.

        With ``max_bodies``, stops after ``max_bodies - 1`` pieces and returns the rest of
        the text as the last piece, whatever its length.
        """
        text = self.text
        out: list[str] = []
        start = 0
        while len(text) - start > room and (max_bodies is None or len(out) < max_bodies - 1):
            end = self.next_break(start, room)
            out.append(text[start:end])
            start = end
        out.append(text[start:])
        return out


def _marker_width(parts: int) -> int:
    return 2 * len(str(parts)) + len("(/)")


def _assemble(bodies: list[str], prefix: str, suffix: str) -> list[str]:
    """The parts for these bodies, with ``(i/n)`` markers when there is more than one."""
    if len(bodies) == 1:
        return [f"{prefix}{bodies[0]}{suffix}"]
    n = len(bodies)
    return [f"{prefix}{body}({i}/{n}){suffix}" for i, body in enumerate(bodies, 1)]


def split_parts(
    text: str, *, limit: int = SMS_LIMIT, prefix: str = "", suffix: str = ""
) -> list[str]:
    """Split ``text`` into SMS parts of at most ``limit`` characters each.

    Every part is ``prefix + body + marker + suffix``; the marker ``(i/n)`` is only added
    when there is more than one part, and room is kept for the widest one (``(1/12)`` is
    as wide as ``(12/12)``). The marker goes before the suffix so that a signature given
    as suffix stays at the very end of each part. A text that fits in one part is
    returned as that one part.

    Parts end at cluster boundaries (never inside a surrogate pair or after a lone high
    surrogate, before a combining mark or variation selector, or next to a ZWJ); only a
    cluster longer than a whole part is cut. Parts end preferably right after whitespace or
    punctuation when one is within the last 15 characters. Nothing is dropped: removing
    prefix, marker and suffix from the parts and joining the bodies gives ``text`` back.

    Raises ValueError when ``prefix``, ``suffix`` and a marker leave no room for text,
    or, for a very long text, when the wider markers it needs leave none.
    """
    fixed = len(prefix) + len(suffix)
    if fixed + _NARROWEST_MARKER >= limit:
        raise ValueError(
            f"limit {limit} leaves no room for text after prefix, suffix and part marker"
        )
    if len(text) <= limit - fixed:
        return [f"{prefix}{text}{suffix}"]
    breaks = _Breaks.of(text)
    digits = 1
    while True:
        room = limit - fixed - _marker_width(10**digits - 1)
        if room < 1:
            raise ValueError(f"limit {limit} leaves no room for a part marker with {digits} digits")
        bodies = breaks.bodies(room)
        if len(bodies) < 10**digits:
            return _assemble(bodies, prefix, suffix)
        digits += 1


def fit_parts(
    text: str,
    *,
    max_parts: int,
    limit: int = SMS_LIMIT,
    prefix: str = "",
    suffix: str = "",
    ellipsis: str = "…",
) -> tuple[list[str], bool]:
    """Split like :func:`split_parts`, but into at most ``max_parts`` parts.

    Returns ``(parts, truncated)``. When split_parts would need more than ``max_parts``
    parts, the text is cut at a cluster boundary so that it fills exactly ``max_parts``
    parts, the last body ending with ``ellipsis``; the bodies then join to a prefix of
    ``text`` followed by ``ellipsis``, and ``truncated`` is True.

    Raises ValueError when ``max_parts`` < 1 or the limit leaves no room (as split_parts,
    or for the ellipsis).
    """
    if max_parts < 1:
        raise ValueError(f"max_parts must be at least 1, not {max_parts}")
    parts = split_parts(text, limit=limit, prefix=prefix, suffix=suffix)
    if len(parts) <= max_parts:
        return parts, False
    room = limit - len(prefix) - len(suffix)
    if max_parts > 1:
        room -= _marker_width(max_parts)
    if room < max(1, len(ellipsis)):
        raise ValueError(f"limit {limit} leaves no room for {max_parts} parts and the ellipsis")
    breaks = _Breaks.of(text)
    bodies = breaks.bodies(room, max_bodies=max_parts)
    start = len(text) - len(bodies[-1])
    end = breaks.last_allowed(start, start + room - len(ellipsis))
    bodies[-1] = text[start:end] + ellipsis
    return _assemble(bodies, prefix, suffix), True
