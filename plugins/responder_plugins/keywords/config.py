"""``[keywords]``: the rules and the fallback, compiled when the configuration is loaded."""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import tzinfo
from typing import Final
from zoneinfo import ZoneInfo

from responder import Table, normalise
from responder_plugins.keywords.hours import parse_hours
from responder_plugins.keywords.matcher import MODE_RANK, MODES, Matcher, Rule
from responder_plugins.keywords.templates import FIELDS, Template, parse_template

WHEN: Final = ("", "open", "closed")
"""A rule's ``when``: always, or only while the opening hours ([hours]) are open or closed."""

DEFAULT_TIMEZONE: Final = "Asia/Shanghai"


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
    when = table.get_str("when", "", choices=WHEN, want='"open" or "closed" (the [hours])')
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
        rank=(priority, bool(dst), hours is not None or bool(when), MODE_RANK[match]),
        when=when,
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
                if rule.when and other.when and rule.when != other.when:
                    continue
                table.error(
                    "keywords",
                    f"rule {rule.name!r} and rule {other.name!r} ({other.label}) both answer "
                    f'"{key}" (match = "{rule.match}", the same dst, overlapping hours): keep '
                    "it in one rule, or give them different dst, non-overlapping hours or "
                    'when = "open" and when = "closed"',
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
