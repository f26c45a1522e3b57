"""Loop and abuse guard: who gets automatic replies at all, and how many.

The filter drops messages from numbers that must never be answered automatically (no
sender, the account's own numbers, the ignore list, anything that is not a mobile
number). The before-send hook limits replies to a sender (per number per window) and
stops a ping-pong with another auto-responder (the same text again and again, in a row).
The defaults let a customer walk through a menu (20 replies per 10 minutes) and cut a loop
with another auto-responder at its third identical message. Neither limit applies to a
sender in an active conversation (a flow's answers): the flow bounds its own retries. Every drop
is logged and counted in ``responder status``; the store reads it back from the
messages' reasons (``store.counts_by_reason``), so nothing here writes to the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from responder import (
    ACTIVE,
    MOBILE_PATTERN,
    App,
    ConfigSection,
    Message,
    Reply,
    StatusSection,
    Table,
    Veto,
    canonical_number,
    compact_number,
    hookimpl,
    normalise,
)

PLUGIN: Final = "guard"
MOBILE: Final = re.compile(MOBILE_PATTERN)

# Reasons, stored with decided_by = "guard": ``responder status`` groups by them.
NO_SENDER: Final = "no sender number"
OWN_NUMBER: Final = "own number"
ON_IGNORE_LIST: Final = "on the ignore list"
NOT_MOBILE: Final = "not a mobile number"
PING_PONG: Final = "ping-pong"
RATE_LIMIT: Final = "rate limit"
REASONS: Final = (NO_SENDER, OWN_NUMBER, ON_IGNORE_LIST, NOT_MOBILE, PING_PONG, RATE_LIMIT)


@dataclass(frozen=True)
class GuardSettings:
    max_replies: int = 20
    """Replies per sender per ``window``; 0 = no limit."""
    window: float = 600.0
    ignore: tuple[str, ...] = ()
    """Canonical numbers; an entry ending in "*" is a prefix."""
    own_numbers: tuple[str, ...] = ()
    mobile_only: bool = True
    mobile_pattern: re.Pattern[str] = MOBILE
    pingpong_repeats: int = 3
    """The same text this many times in a row (this message included) within
    ``pingpong_window`` stops the replies; 0 = off."""
    pingpong_window: float = 600.0


def _numbers(table: Table, key: str, *, wildcard: bool) -> tuple[str, ...]:
    numbers = []
    for entry in table.get_str_list(key, []):
        star = wildcard and entry.endswith("*")
        digits = entry[:-1] if star else entry
        compact = compact_number(digits)
        if not compact.isdigit():
            hint = ' (a trailing "*" matches every number starting with the digits)'
            table.error(key, f"must be phone numbers{hint * wildcard}, got {entry!r}")
            continue
        numbers.append((compact if star else canonical_number(compact)) + "*" * star)
    return tuple(numbers)


def parse(table: Table) -> GuardSettings:
    pattern_text = table.get_str("mobile_pattern", GuardSettings.mobile_pattern.pattern)
    try:
        pattern = re.compile(pattern_text)
    except re.error as err:
        table.error("mobile_pattern", f"must be a regular expression: {err}")
        pattern = MOBILE
    return GuardSettings(
        max_replies=table.get_int("max_replies", GuardSettings.max_replies, min=0),
        window=table.get_float("window", GuardSettings.window, min=1, unit="seconds"),
        ignore=_numbers(table, "ignore", wildcard=True),
        own_numbers=_numbers(table, "own_numbers", wildcard=False),
        mobile_only=table.get_bool("mobile_only", GuardSettings.mobile_only),
        mobile_pattern=pattern,
        pingpong_repeats=table.get_int("pingpong_repeats", GuardSettings.pingpong_repeats, min=0),
        pingpong_window=table.get_float(
            "pingpong_window", GuardSettings.pingpong_window, min=1, unit="seconds"
        ),
    )


def drop_reason(settings: GuardSettings, message: Message) -> str | None:
    """Why a message must get no automatic reply at all, or None."""
    number = canonical_number(message.src)
    if not number:
        return NO_SENDER
    if number in settings.own_numbers or number == canonical_number(message.dst):
        return OWN_NUMBER
    for entry in settings.ignore:
        if number == entry or (entry.endswith("*") and number.startswith(entry[:-1])):
            return ON_IGNORE_LIST
    if settings.mobile_only and not settings.mobile_pattern.fullmatch(number):
        return NOT_MOBILE
    return None


def replies_to(app: App, message: Message, since: float) -> int:
    """Messages from the sender answered to it between ``since`` and now."""
    return app.store.replies_to(message.src, since, until=app.time(), account=message.account)


def repeats(app: App, message: Message, since: float, limit: int) -> int:
    """How many times in a row, up to this one, the sender sent this (normalised) text
    since ``since``; counts up to ``limit``.

    Only an unbroken run counts: a customer going back to a menu ("0", "1", "0", "2", "0")
    repeats a text without repeating themselves; another auto-responder answering ours
    sends its one text every time.
    """
    texts = app.store.texts_from(
        message.src,
        since=since,
        until=app.time(),
        before_id=message.id if message.id > 0 else None,  # a simulated one is never stored
        limit=max(limit - 1, 0),
        account=message.account,
    )
    text = normalise(message.text)
    count = 1
    for earlier in texts:
        if normalise(earlier) != text:
            break
        count += 1
    return count


def in_conversation(app: App, message: Message, reply: Reply) -> bool:
    """Whether the reply belongs to a conversation: the sender's conversation is active,
    or a flow answered (its replies are labelled ``flow``; the last one ends it)."""
    if any(label == "flow" for label, _value in reply.meta):
        return True
    current = app.conversation(message).current
    return current is not None and current.state == ACTIVE


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


@hookimpl(trylast=True)
def responder_filter(app: App, message: Message) -> str | None:
    reason = drop_reason(app.plugin_config(PLUGIN), message)
    if reason is not None:
        app.log.info("guard_dropped", message_id=message.id, src=message.src, reason=reason)
    return reason


@hookimpl(trylast=True)
def responder_before_send(app: App, message: Message, reply: Reply) -> Veto | None:
    settings: GuardSettings = app.plugin_config(PLUGIN)
    if message.src not in (reply.to or (message.src,)):
        return None  # the limits are about answering the sender, not relaying elsewhere
    if in_conversation(app, message, reply):
        return None  # a customer working through a flow; a flow bounds its own retries
    now = app.time()
    reason = None
    if settings.pingpong_repeats:
        count = repeats(
            app, message, now - settings.pingpong_window, limit=settings.pingpong_repeats
        )
        if count >= settings.pingpong_repeats:
            reason = PING_PONG
            detail = f"the same text {count} times in a row in {settings.pingpong_window:g} s"
    if reason is None and settings.max_replies:
        count = replies_to(app, message, now - settings.window)
        if count >= settings.max_replies:
            reason = RATE_LIMIT
            detail = f"{count} replies to this number in the last {settings.window:g} s"
    if reason is None:
        return None
    app.log.info(
        "guard_vetoed", message_id=message.id, src=message.src, reason=reason, detail=detail
    )
    return Veto(reason)


@hookimpl(trylast=True)
def responder_status(app: App) -> StatusSection:
    found = app.store.counts_by_reason(PLUGIN)
    counts = {kind: found.get(kind, 0) for kind in REASONS}
    figures = tuple((f"dropped: {kind}", count) for kind, count in counts.items())
    return StatusSection(title=PLUGIN, figures=(*figures, ("dropped: total", sum(counts.values()))))
