"""Keyword auto-replies: a message whose text is a configured keyword gets the rule's reply."""

from __future__ import annotations

from dataclasses import dataclass

from responder import hookimpl
from responder.config import ConfigSection, Table
from responder.models import Message, Reply


@dataclass(frozen=True)
class Rule:
    name: str
    keywords: tuple[str, ...]
    reply: str


@dataclass(frozen=True)
class KeywordSettings:
    fallback: str
    rules: tuple[Rule, ...]
    index: dict[str, Rule]


def parse(table: Table) -> KeywordSettings:
    rules = []
    for number, rule_table in enumerate(table.get_tables("rules"), start=1):
        keywords = rule_table.get_str_list("keywords")
        rules.append(
            Rule(
                name=rule_table.get_str("name", f"rule {number}"),
                keywords=keywords,
                reply=rule_table.get_str("reply"),
            )
        )
        rule_table.finish()
    index = {keyword.strip().casefold(): rule for rule in rules for keyword in rule.keywords}
    return KeywordSettings(fallback=table.get_str("fallback", ""), rules=tuple(rules), index=index)


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection("keywords", parse)


@hookimpl(trylast=True)
def responder_reply(app, message: Message) -> Reply | None:
    settings: KeywordSettings = app.plugin_config("keywords")
    rule = settings.index.get(message.text.strip().casefold())
    if rule is not None:
        return Reply(text=rule.reply, meta=(("rule", rule.name),))
    if settings.fallback:
        return Reply(text=settings.fallback, meta=(("rule", "fallback"),))
    return None
