"""Matching a message against the compiled rules.

Word, exact and prefix keywords go into hash indexes, so the cost of matching a message
does not grow with their number; regex and contains rules are checked after, best rank
first.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final

from responder import display_form, is_separator
from responder_plugins.keywords.hours import Hours
from responder_plugins.keywords.templates import Template

MODES: Final = ("word", "exact", "prefix", "contains", "regex")
MODE_RANK: Final = {"exact": 4, "word": 3, "prefix": 2, "regex": 1, "contains": 0}

# -- matching helpers ----------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]")
"""Characters that may be separators: every separator is one of them."""


def first_word_end(text: str) -> int:
    """Where the first word of ``text`` ends: its first separator, or its length."""
    for found in _NON_WORD.finditer(text):
        if is_separator(found.group()):
            return found.start()
    return len(text)


def _display_offset(display: str, key_offset: int) -> int:
    """The index in ``display`` matching ``key_offset`` in its case-folded form.

    ``str.casefold`` folds one code point at a time, so lengths add up per character.
    """
    if display.isascii():
        return key_offset
    count = 0
    for index, char in enumerate(display):
        if count >= key_offset:
            return index
        count += len(char.casefold())
    return len(display)


_DELIMITERS: Final = frozenset(",.:;!?~-、。…—")
"""Punctuation that may stand between a keyword and its arguments (after NFKC, so "，" and
"：" are among them): dropped from the front of {args}. Any other punctuation ("#",
brackets, quotes) belongs to the arguments."""


def _rest(text: str, display: str, start: int) -> str:
    """What follows a keyword at ``start`` of ``display``, for {args}.

    Taken from the message in display form but with its trailing punctuation kept
    (``display`` is a prefix of it), without the spaces and delimiters after the keyword.
    Empty when only punctuation follows the keyword ("CX!").
    """
    if all(is_separator(char) for char in display[start:]):
        return ""
    full = " ".join(unicodedata.normalize("NFKC", text).split())
    while start < len(full) and (full[start].isspace() or full[start] in _DELIMITERS):
        start += 1
    return full[start:]


# -- rules and matching --------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Rule:
    """One ``[[keywords.rules]]`` entry, compiled."""

    name: str
    label: str
    """Where it is written: "keywords.rules[3]"."""
    order: int
    match: str
    keywords: tuple[str, ...]
    """As written."""
    keys: tuple[str, ...]
    """Normalised keywords (word, exact, prefix, contains)."""
    patterns: tuple[re.Pattern[str], ...]
    """Compiled keywords (regex)."""
    reply: Template
    dst: str
    hours: Hours | None
    priority: int
    rank: tuple[int, bool, bool, int]
    """What decides between rules that all match, best first (then length, then order):
    priority, limited to a dst, limited to hours or to opening hours, the mode."""
    when: str = ""
    """"open" or "closed": only while the shared opening hours ([hours]) are; "" = always."""


@dataclass(frozen=True)
class Match:
    rule: Rule
    keyword: str
    args: str
    groups: Mapping[str, str]
    why: str


@dataclass(frozen=True)
class MatchResult:
    """What matching found: the normalised text and the winning rule, if any."""

    display: str
    key: str
    match: Match | None


_WHY: Final = {
    "exact": 'the whole message is "{}"',
    "word": 'the first word is "{}"',
    "prefix": 'the message starts with "{}"',
    "contains": 'the message contains "{}"',
}


Entries = tuple[tuple[tuple[Any, ...], Rule], ...]
"""The rules under one index key, as (rank, rule), best first."""


class Matcher:
    """Rules compiled into indexes; ``match`` finds the best rule for a message."""

    def __init__(self, rules: Iterable[Rule], timezone: tzinfo) -> None:
        self.rules = tuple(rules)
        self.timezone = timezone
        lists: dict[str, dict[str, list[tuple[tuple[Any, ...], Rule]]]] = {
            "exact": {},
            "word": {},
            "prefix": {},
        }
        scan = []
        for rule in self.rules:
            index = lists.get(rule.match)
            if index is None:
                scan.append(rule)
                continue
            for key in rule.keys:
                index.setdefault(key, []).append(((*rule.rank, len(key), -rule.order), rule))
        self._exact, self._word, self._prefix = (
            {
                key: (entries[0],) if len(entries) == 1 else tuple(sorted(entries, reverse=True))
                for key, entries in i.items()
            }
            for i in lists.values()
        )
        self._scan = sorted(scan, key=lambda rule: (tuple(-x for x in rule.rank), rule.order))
        # Most word keywords are one word: the message's first word is looked up once.
        # Those with a space or punctuation inside are tried at each of their lengths.
        spaced = {len(key) for key in self._word if first_word_end(key) < len(key)}
        self._spaced_lengths = tuple(sorted(spaced))
        self._prefix_lengths = tuple(sorted({len(key) for key in self._prefix}))

    def _minute(self, moment: float) -> int:
        now = datetime.fromtimestamp(moment, self.timezone)
        return now.hour * 60 + now.minute

    def match(
        self,
        text: str,
        dst: str,
        moment: float,
        is_open: Callable[[float], bool] | None = None,
    ) -> MatchResult:
        """The best rule for a message at ``moment``; ``is_open`` tells whether the shared
        opening hours are open then (for rules with ``when``; None: always open)."""
        opened: list[bool] = []

        def applies(rule: Rule) -> bool:
            if not opened:
                opened.append(True if is_open is None else is_open(moment))
            return opened[0] == (rule.when == "open")

        display = display_form(text)
        key = display.casefold()
        size = len(key)
        hits: list[tuple[Entries, str, int]] = []
        entries = self._exact.get(key)
        if entries:
            hits.append((entries, key, size))
        if self._word:
            end = first_word_end(key)
            entries = self._word.get(key[:end])
            if entries:
                hits.append((entries, key[:end], end))
            for length in self._spaced_lengths:
                if length > size:
                    break
                entries = self._word.get(key[:length])
                if entries and length != end and (length == size or is_separator(key[length])):
                    hits.append((entries, key[:length], length))
        for length in self._prefix_lengths:
            if length > size:
                break
            entries = self._prefix.get(key[:length])
            if entries:
                hits.append((entries, key[:length], length))
        minute = -1
        best_rank: tuple[Any, ...] = ()
        best: tuple[Rule, str, int] | None = None
        for entries, keyword, end in hits:
            for rank, rule in entries:
                if rank <= best_rank:
                    break  # the rest of this list ranks lower still
                if rule.dst and not dst.endswith(rule.dst):
                    continue
                if rule.hours is not None:
                    minute = self._minute(moment) if minute < 0 else minute
                    if not rule.hours.contains(minute):
                        continue
                if rule.when and not applies(rule):
                    continue
                best_rank, best = rank, (rule, keyword, end)
                break
        found: Match | None = None
        if best is not None:
            rule, keyword, end = best
            offset = _display_offset(display, end)
            args = "" if rule.match == "exact" else _rest(text, display, offset)
            found = Match(rule, keyword, args, {}, _WHY[rule.match].format(keyword))
        for rule in self._scan:
            if found is not None and rule.rank < found.rule.rank:
                break  # sorted best first: no later rule can beat the one found
            if rule.dst and not dst.endswith(rule.dst):
                continue
            if rule.hours is not None:
                minute = self._minute(moment) if minute < 0 else minute
                if not rule.hours.contains(minute):
                    continue
            if rule.when and not applies(rule):
                continue
            scanned = self._scan_one(rule, text, display, key)
            if scanned is not None:
                found = scanned
                break
        if found is not None:
            found = _qualified(found)
        return MatchResult(display=display, key=key, match=found)

    @staticmethod
    def _scan_one(rule: Rule, text: str, display: str, key: str) -> Match | None:
        if rule.match == "contains":
            for keyword in rule.keys:
                position = key.find(keyword)
                if position >= 0:
                    end = _display_offset(display, position + len(keyword))
                    why = _WHY["contains"].format(keyword)
                    return Match(rule, keyword, _rest(text, display, end), {}, why)
            return None
        for pattern in rule.patterns:
            found = pattern.search(display)
            if found:
                groups = {name: value or "" for name, value in found.groupdict().items()}
                why = f'the pattern "{pattern.pattern}" found "{found.group(0)}"'
                args = _rest(text, display, found.end())
                return Match(rule, pattern.pattern, args, groups, why)
        return None


def _qualified(found: Match) -> Match:
    rule = found.rule
    extra = []
    if rule.dst:
        extra.append(f"dst {rule.dst}")
    if rule.hours is not None:
        extra.append(f"hours {rule.hours.text}")
    if rule.when:
        extra.append(f"when {rule.when}")
    if rule.priority:
        extra.append(f"priority {rule.priority}")
    if not extra:
        return found
    return Match(rule, found.keyword, found.args, found.groups, f"{found.why} ({', '.join(extra)})")
