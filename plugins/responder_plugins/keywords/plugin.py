"""The keyword plugin's hooks: answer by the rules, else the fallback (rate-limited per number).

The fallback's last time per number is kept in the plugin's own table, so a customer who
keeps writing what no rule matches gets the fallback once per ``fallback_interval``.
"""

from __future__ import annotations

from typing import Final

from responder import (
    App,
    ConfigSection,
    Message,
    Reply,
    StashKey,
    StatusSection,
    hookimpl,
    reply_warnings,
)
from responder_plugins.keywords.config import KeywordSettings, parse
from responder_plugins.keywords.matcher import MODES
from responder_plugins.keywords.templates import values_for

PLUGIN: Final = "keywords"
SCHEMA: Final = (
    {  # PostgreSQL's REAL is 4 bytes: epoch seconds need DOUBLE PRECISION there
        "sqlite": "CREATE TABLE keywords_fallback ("
        " number TEXT PRIMARY KEY, message_id INTEGER NOT NULL, at REAL NOT NULL)",
        "postgresql": "CREATE TABLE keywords_fallback ("
        " number TEXT PRIMARY KEY, message_id BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL)",
    },
)


# -- store ---------------------------------------------------------------------------------
# The table is created by responder_startup. A dry run (simulate, replay) on a store the
# daemon never prepared has no table: reads take that as empty, and dry runs write nothing.

DRY_FALLBACKS: Final = StashKey[dict[str, float]]()
"""Fallbacks given under dry_run (number: when): a simulated conversation remembers them."""


def _fallback_given(app: App, message: Message, interval: float) -> bool:
    """Whether a fallback went to this number within ``interval`` before now."""
    now = app.time()
    simulated = app.stash.get(DRY_FALLBACKS, {}).get(message.src) if app.dry_run else None
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


def describe(app: App, message: Message) -> tuple[tuple[str, str], ...]:
    """What the rules make of a message, for ``simulate``: the normalised text, the rule
    that matches ("none" when none does) and why. Changes nothing; no fallback."""
    settings: KeywordSettings = app.plugin_config(PLUGIN)
    outcome = settings.matcher.match(message.text, message.dst, app.time(), app.hours.is_open)
    found = outcome.match
    if found is None:
        return (("normalised", outcome.key), ("rule", "none"), ("why", "no rule matched"))
    return (("normalised", outcome.key), ("rule", found.rule.name), ("why", found.why))


@hookimpl(trylast=True)
def responder_describe(app: App, message: Message) -> tuple[tuple[str, str], ...] | None:
    """For ``simulate``: what the text normalised to, and the rule that matches or none."""
    return describe(app, message) if app.plugin_config(PLUGIN) is not None else None


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


@hookimpl(trylast=True)
def responder_startup(app: App) -> None:
    if not app.dry_run:
        app.store.migrate(PLUGIN, SCHEMA)


@hookimpl(trylast=True)
def responder_reply(app: App, message: Message) -> Reply | None:
    settings: KeywordSettings = app.plugin_config(PLUGIN)
    now = app.time()
    outcome = settings.matcher.match(message.text, message.dst, now, app.hours.is_open)
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
        app.stash.setdefault(DRY_FALLBACKS, {})[message.src] = now
    text = settings.fallback.render(values_for(message, now, settings.timezone, ""))
    return Reply(text=text, meta=(normalised, ("rule", "fallback"), ("why", "no rule matched")))


@hookimpl(trylast=True)
def responder_observe(app: App, message: Message, reply: Reply | None) -> None:
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
def responder_status(app: App) -> StatusSection | None:
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
def responder_check(app: App) -> list[str]:
    """``responder check`` warnings about each rule's reply and the fallback."""
    settings: KeywordSettings | None = app.plugin_config(PLUGIN)
    if settings is None:
        return []
    warnings = []
    for rule in settings.rules:
        warnings += reply_warnings(app, f"{rule.label}.reply", rule.reply.source)
    if settings.fallback is not None:
        warnings += reply_warnings(app, f"{PLUGIN}.fallback", settings.fallback.source)
    if not app.hours.configured:
        for rule in settings.rules:
            if rule.when:
                warnings.append(
                    f"{app.settings.source}: {rule.label}.when: there is no [hours] section, "
                    f'so the opening hours are always open and when = "{rule.when}" '
                    + ("never applies" if rule.when == "closed" else "always applies")
                )
    return warnings
