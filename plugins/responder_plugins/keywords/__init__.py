"""Keyword auto-replies: ``[[keywords.rules]]`` matched against the normalised message.

Rules are compiled when the configuration is loaded (``config``): word, exact and prefix
keywords go into hash indexes (``matcher``), so the cost of matching a message does not
grow with their number; regex and contains rules are checked after, best rank first.
Replies are templates (``templates``); a rule may be limited to hours (``hours``) or to the
opening hours of ``[hours]`` (``when``, through ``app.hours``). The
hooks are in ``plugin``. See docs/keywords.md.
"""

from responder import normalise
from responder_plugins.keywords.config import DEFAULT_TIMEZONE, KeywordSettings, parse
from responder_plugins.keywords.hours import Hours, parse_hours
from responder_plugins.keywords.matcher import MODES, Match, Matcher, MatchResult, Rule
from responder_plugins.keywords.plugin import (
    PLUGIN,
    describe,
    responder_check,
    responder_config_section,
    responder_describe,
    responder_observe,
    responder_reply,
    responder_startup,
    responder_status,
)
from responder_plugins.keywords.templates import FIELDS, Template, parse_template, values_for

__all__ = [
    "DEFAULT_TIMEZONE",
    "FIELDS",
    "MODES",
    "PLUGIN",
    "Hours",
    "KeywordSettings",
    "Match",
    "MatchResult",
    "Matcher",
    "Rule",
    "Template",
    "describe",
    "normalise",
    "parse",
    "parse_hours",
    "parse_template",
    "responder_check",
    "responder_config_section",
    "responder_describe",
    "responder_observe",
    "responder_reply",
    "responder_startup",
    "responder_status",
    "values_for",
]
