"""A built-in plugin's defaults are its settings dataclass's: a section left empty parses to
exactly the dataclass's defaults, so the two can never drift apart."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import responder_plugins.guard as guard
import responder_plugins.webhook as webhook
from responder.config import Table

SECRET = "0123456789abcdef0123"


def parsed(parse: Any, data: dict[str, Any], **kwargs: Any) -> Any:
    problems: list[str] = []
    table = Table(data, file="c.toml", prefix="section", problems=problems)
    settings = parse(table, **kwargs)
    table.finish()
    assert problems == []
    return settings


def defaulted(cls: type) -> list[str]:
    """The fields of a dataclass that have a default."""
    return [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    ]


@pytest.mark.parametrize(
    ("parse", "cls", "kwargs"),
    [
        (guard.parse, guard.GuardSettings, {}),
        (webhook.parse, webhook.WebhookSettings, {"environ": {}}),
    ],
    ids=["guard", "webhook"],
)
def test_an_empty_section_parses_to_the_dataclass_defaults(parse, cls, kwargs):
    assert parsed(parse, {}, **kwargs) == cls()


def test_a_minimal_webhook_target_gets_the_target_dataclass_defaults():
    target = {"name": "crm", "url": "https://crm.example.com/sms", "secret": SECRET}
    [parsed_target] = parsed(webhook.parse, {"targets": [target]}, environ={}).targets
    expected = webhook.Target(name="crm", url=target["url"], secret=SECRET)
    for name in defaulted(webhook.Target):
        assert getattr(parsed_target, name) == getattr(expected, name), name
