"""Keyword auto-replies: ``[[keywords.rules]]`` matched against the normalised message.

Rules are compiled when the configuration is loaded: word, exact and prefix keywords go
into hash indexes, so the cost of matching a message does not grow with their number;
regex and contains rules are checked after, best rank first. See docs/keywords.md.
"""

from __future__ import annotations

import gc
import re
import string
import unicodedata
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo

from responder import hookimpl
from responder.config import ConfigSection, Table
from responder.models import Message, Reply, StatusSection
from responder.normalise import display_form, is_separator, normalise

PLUGIN: Final = "keywords"
MODES: Final = ("word", "exact", "prefix", "contains", "regex")
FIELDS: Final = ("src", "dst", "text", "args", "time")
"""Placeholders every reply template may use."""
DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
_MODE_RANK: Final = {"exact": 4, "word": 3, "prefix": 2, "regex": 1, "contains": 0}
_SCHEMA: Final = (
    "CREATE TABLE keywords_fallback ("
    " number TEXT PRIMARY KEY, message_id INTEGER NOT NULL, at REAL NOT NULL)",
)

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


# -- templates -----------------------------------------------------------------------------

_FORMAT = string.Formatter()


@dataclass(frozen=True)
class Template:
    """A reply with ``{name}`` placeholders, filled by plain substitution (never re-parsed)."""

    source: str
    pieces: tuple[tuple[str, str], ...]
    """(literal text, placeholder name or "") pairs."""
    names: frozenset[str] = frozenset()

    def render(self, values: Mapping[str, str]) -> str:
        return "".join(literal + (values[name] if name else "") for literal, name in self.pieces)


def parse_template(source: str) -> Template:
    """Split a template into pieces; raise ValueError on a brace that is not a placeholder.

    The syntax is str.format's, but only plain names are allowed: no attributes, indexes,
    conversions or format specs. ``{{`` and ``}}`` are literal braces.
    """
    if "{" not in source and "}" not in source:
        return Template(source=source, pieces=((source, ""),))
    pieces: list[tuple[str, str]] = []
    literal = ""
    try:
        parsed = list(_FORMAT.parse(source))
    except ValueError as err:
        if "Single '}'" in str(err):
            raise ValueError("unbalanced '}': write '}}' for a literal brace") from None
        if "Single '{'" in str(err) or "expected '}'" in str(err):
            raise ValueError("unbalanced '{': write '{{' for a literal brace") from None
        raise ValueError(f"a brace that is not a placeholder ({err})") from None
    for text, name, spec, conversion in parsed:
        literal += text
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion is not None:
            written = "{" + name + (f"!{conversion}" if conversion else "")
            written += (f":{spec}" if spec else "") + "}"
            raise ValueError(
                f"{written!r} is not a placeholder: use a name such as {{src}}, "
                "or write {{ and }} for literal braces"
            )
        pieces.append((literal, name))
        literal = ""
    pieces.append((literal, ""))
    names = frozenset(name for _literal, name in pieces if name)
    return Template(source=source, pieces=tuple(pieces), names=names)


# -- hours ---------------------------------------------------------------------------------

_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_DAY: Final = 24 * 60


@dataclass(frozen=True)
class Hours:
    """Active windows in a day, as minutes [start, end); a window may wrap past midnight."""

    text: str
    spans: tuple[tuple[int, int], ...]

    def contains(self, minute: int) -> bool:
        return any(start <= minute < end for start, end in self.spans)

    def overlaps(self, other: Hours) -> bool:
        return any(a < d and c < b for a, b in self.spans for c, d in other.spans)


def _minute(text: str) -> int:
    found = _CLOCK.fullmatch(text.strip())
    if not found or int(found.group(1)) > 24 or int(found.group(2)) > 59:
        raise ValueError(f"{text.strip()!r} is not a time of day HH:MM")
    minute = int(found.group(1)) * 60 + int(found.group(2))
    if minute > _DAY:
        raise ValueError(f"{text.strip()!r} is after 24:00")
    return minute


def parse_hours(text: str) -> Hours:
    """Parse "09:00-18:00" or "09:00-12:00, 14:00-18:00" ("22:00-06:00" wraps midnight)."""
    spans: list[tuple[int, int]] = []
    for window in text.split(","):
        start_text, dash, end_text = window.partition("-")
        if not dash:
            raise ValueError(f'{window.strip()!r} is not a window such as "09:00-18:00"')
        start, end = _minute(start_text), _minute(end_text)
        if start == _DAY:
            raise ValueError(f"{window.strip()!r} starts at 24:00: write 00:00")
        if start == end:
            raise ValueError(f"{window.strip()!r} is empty: start and end are the same time")
        if start < end:
            spans.append((start, end))
        else:
            spans.extend(span for span in ((start, _DAY), (0, end)) if span[0] < span[1])
    return Hours(text=text.strip(), spans=tuple(spans))


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
    priority, limited to a dst, limited to hours, the mode."""


@dataclass(frozen=True)
class Match:
    rule: Rule
    keyword: str
    args: str
    groups: Mapping[str, str]
    why: str


@dataclass(frozen=True)
class Outcome:
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

    def match(self, text: str, dst: str, moment: float) -> Outcome:
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
            scanned = self._scan_one(rule, text, display, key)
            if scanned is not None:
                found = scanned
                break
        if found is not None:
            found = _qualified(found)
        return Outcome(display=display, key=key, match=found)

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
    if rule.priority:
        extra.append(f"priority {rule.priority}")
    if not extra:
        return found
    return Match(rule, found.keyword, found.args, found.groups, f"{found.why} ({', '.join(extra)})")


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class KeywordSettings:
    matcher: Matcher
    fallback: Template | None
    fallback_interval: float
    """Seconds between two fallback replies to one number; 0 = no limit."""
    timezone: tzinfo

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.matcher.rules


def _template(table: Table, key: str, source: str, allowed: tuple[str, ...]) -> Template | None:
    try:
        template = parse_template(source)
    except ValueError as err:
        table.error(key, str(err))
        return None
    unknown = sorted(template.names.difference(allowed))
    if unknown:
        known = ", ".join(f"{{{name}}}" for name in allowed)
        table.error(key, f"unknown placeholder {{{unknown[0]}}}: known are {known}")
        return None
    return template


def _timezone(table: Table) -> tzinfo:
    name = table.get_str("timezone", DEFAULT_TIMEZONE)
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        table.error("timezone", f'must be a time zone name such as "Asia/Shanghai", got {name!r}')
        return ZoneInfo(DEFAULT_TIMEZONE)


def _patterns(table: Table, name: str, keywords: tuple[str, ...]) -> list[re.Pattern[str]]:
    patterns = []
    for keyword in keywords:
        try:
            patterns.append(re.compile(keyword, re.IGNORECASE))
        except re.error as err:
            table.error("keywords", f"rule {name!r}: invalid regular expression {keyword!r}: {err}")
    return patterns


def _rule(table: Table, order: int) -> Rule | None:
    problems = len(table.problems)
    keywords = table.get_str_list("keywords")
    match = table.get_str("match", "word", choices=MODES)
    name = table.get_str("name", "") or f"{keywords[0] if keywords else '?'} (rules[{order}])"
    reply_source = table.get_str("reply")
    dst = table.get_str("dst", "")
    hours_text = table.get_str("hours", "")
    priority = table.get_int("priority", 0)
    if not keywords and "keywords" in table:
        table.error("keywords", 'must list at least one keyword, e.g. keywords = ["CX", "查询"]')
    if dst and not dst.isdigit():
        table.error("dst", f'must be digits (the number or extension, e.g. "01"), got {dst!r}')
    hours = None
    if hours_text:
        try:
            hours = parse_hours(hours_text)
        except ValueError as err:
            table.error("hours", f'must be like "09:00-18:00": {err}')
    keys: list[str] = []
    patterns: list[re.Pattern[str]] = []
    allowed: tuple[str, ...] = FIELDS
    if match == "regex":
        patterns = _patterns(table, name, keywords)
        groups = [set(pattern.groupindex) for pattern in patterns]
        common = set.intersection(*groups) if groups else set()
        for clash in sorted(set().union(*groups) & set(FIELDS)):
            table.error("keywords", f"rule {name!r}: the group name {clash!r} is a placeholder")
        allowed = FIELDS + tuple(sorted(common - set(FIELDS)))
    else:
        for keyword in keywords:
            key = normalise(keyword)
            if not key:
                table.error("keywords", f"rule {name!r}: a keyword is empty: {keyword!r}")
            elif key not in keys:
                keys.append(key)
    reply = _template(table, "reply", reply_source or "", allowed)
    if reply is None or len(table.problems) > problems or not keywords:
        return None
    return Rule(
        name=name,
        label=table.prefix,
        order=order,
        match=match,
        keywords=keywords,
        keys=tuple(keys),
        patterns=tuple(patterns),
        reply=reply,
        dst=dst,
        hours=hours,
        priority=priority,
        rank=(priority, bool(dst), hours is not None, _MODE_RANK[match]),
    )


def _check_conflicts(rules: list[tuple[Rule, Table]]) -> None:
    """The same keyword, match and dst in two rules active at the same time is an error."""
    seen: dict[tuple[str, str, str], list[Rule]] = {}
    for rule, table in rules:
        keys = (
            [pattern.pattern for pattern in rule.patterns] if rule.match == "regex" else rule.keys
        )
        for key in keys:
            bucket = seen.setdefault((rule.match, key, rule.dst), [])
            for other in bucket:
                if rule.hours and other.hours and not rule.hours.overlaps(other.hours):
                    continue
                table.error(
                    "keywords",
                    f"rule {rule.name!r} and rule {other.name!r} ({other.label}) both answer "
                    f'"{key}" (match = "{rule.match}", the same dst, overlapping hours): keep '
                    "it in one rule, or give them different dst or non-overlapping hours",
                )
                break
            bucket.append(rule)


@contextmanager
def _without_gc() -> Iterator[None]:
    """Compile without the cycle collector: the rules make no cycles, and with 100,000 of
    them its passes over the new objects would cost more than the compilation."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse(table: Table) -> KeywordSettings:
    timezone = _timezone(table)
    fallback = _template(table, "fallback", table.get_str("fallback", ""), FIELDS)
    interval = table.get_float("fallback_interval", 3600.0, min=0, unit="seconds")
    with _without_gc():
        compiled = []
        for order, rule_table in enumerate(table.get_tables("rules")):
            rule = _rule(rule_table, order)
            rule_table.finish()
            if rule is not None:
                compiled.append((rule, rule_table))
        _check_conflicts(compiled)
        matcher = Matcher((rule for rule, _table in compiled), timezone)
    return KeywordSettings(
        matcher=matcher,
        fallback=fallback if fallback is not None and fallback.source.strip() else None,
        fallback_interval=interval,
        timezone=timezone,
    )


# -- store ---------------------------------------------------------------------------------
# The table is created by responder_startup. A dry run (simulate, replay) on a store the
# daemon never prepared has no table: reads take that as empty, and dry runs write nothing.

_dry_fallbacks: weakref.WeakKeyDictionary[Any, dict[str, float]] = weakref.WeakKeyDictionary()
"""Fallbacks given under dry_run, per App: a simulated conversation remembers them."""


def _fallback_given(app: Any, message: Message, interval: float) -> bool:
    """Whether a fallback went to this number within ``interval`` before now."""
    now = app.time()
    simulated = _dry_fallbacks.get(app, {}).get(message.src) if app.dry_run else None
    if simulated is not None and now - simulated < interval:
        return True
    rows = app.store.query(
        "SELECT 1 FROM keywords_fallback"
        " WHERE number = ? AND at > ? AND at <= ? AND message_id != ?",
        (message.src, now - interval, now, message.id),
        missing_ok=True,
    )
    return bool(rows)


# -- hooks ---------------------------------------------------------------------------------


def values_for(message: Message, moment: float, timezone: tzinfo, args: str) -> dict[str, str]:
    """The standard placeholders' values for a message."""
    return {
        "src": message.src,
        "dst": message.dst,
        "text": message.text.strip(),
        "args": args,
        "time": datetime.fromtimestamp(moment, timezone).strftime("%Y-%m-%d %H:%M"),
    }


def describe(app: Any, message: Message) -> tuple[tuple[str, str], ...]:
    """What the rules make of a message, for ``simulate``: the normalised text, the rule
    that matches ("none" when none does) and why. Changes nothing; no fallback."""
    settings: KeywordSettings = app.plugin_config(PLUGIN)
    outcome = settings.matcher.match(message.text, message.dst, app.time())
    found = outcome.match
    if found is None:
        return (("normalised", outcome.key), ("rule", "none"), ("why", "no rule matched"))
    return (("normalised", outcome.key), ("rule", found.rule.name), ("why", found.why))


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


@hookimpl(trylast=True)
def responder_startup(app: Any) -> None:
    if not app.dry_run:
        app.store.migrate(PLUGIN, _SCHEMA)


@hookimpl(trylast=True)
def responder_reply(app: Any, message: Message) -> Reply | None:
    settings: KeywordSettings = app.plugin_config(PLUGIN)
    now = app.time()
    outcome = settings.matcher.match(message.text, message.dst, now)
    normalised = ("normalised", outcome.key)
    found = outcome.match
    if found is not None:
        values = values_for(message, now, settings.timezone, found.args) | dict(found.groups)
        meta = (normalised, ("rule", found.rule.name), ("why", found.why))
        return Reply(text=found.rule.reply.render(values), meta=meta)
    if settings.fallback is None:
        return None
    interval = settings.fallback_interval
    if interval and _fallback_given(app, message, interval):
        why = f"no rule matched; a fallback went to this number less than {interval:g} s ago"
        return Reply(text="", meta=(normalised, ("rule", "fallback"), ("why", why)))
    if app.dry_run:
        _dry_fallbacks.setdefault(app, {})[message.src] = now
    text = settings.fallback.render(values_for(message, now, settings.timezone, ""))
    return Reply(text=text, meta=(normalised, ("rule", "fallback"), ("why", "no rule matched")))


@hookimpl(trylast=True)
def responder_observe(app: Any, message: Message, reply: Reply | None) -> None:
    if app.dry_run or reply is None or reply.plugin != PLUGIN or not reply.text.strip():
        return
    if ("rule", "fallback") not in reply.meta:
        return
    with app.store.transaction() as tx:
        tx.execute(
            "INSERT INTO keywords_fallback (number, message_id, at) VALUES (?, ?, ?)"
            " ON CONFLICT (number) DO UPDATE"
            " SET message_id = excluded.message_id, at = excluded.at",
            (message.src, message.id, app.time()),
        )


@hookimpl(trylast=True)
def responder_status(app: Any) -> StatusSection | None:
    settings: KeywordSettings | None = app.plugin_config(PLUGIN)
    if settings is None:
        return None
    modes = {mode: 0 for mode in MODES}
    for rule in settings.rules:
        modes[rule.match] += 1
    figures: list[tuple[str, int | float | str | None]] = [("rules", len(settings.rules))]
    figures += [(f"{mode} rules", count) for mode, count in modes.items() if count]
    figures.append(("fallback", "on" if settings.fallback else "off"))
    return StatusSection(title=PLUGIN, figures=tuple(figures))


@hookimpl(trylast=True)
def responder_check(app: Any) -> list[str]:
    """``responder check`` warnings about each rule's reply and the fallback."""
    from responder.checks import reply_warnings

    settings: KeywordSettings | None = app.plugin_config(PLUGIN)
    if settings is None:
        return []
    warnings = []
    for rule in settings.rules:
        warnings += reply_warnings(app, f"{rule.label}.reply", rule.reply.source)
    if settings.fallback is not None:
        warnings += reply_warnings(app, f"{PLUGIN}.fallback", settings.fallback.source)
    return warnings
