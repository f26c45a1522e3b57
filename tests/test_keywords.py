"""Keyword rules: normalisation, matching modes, ranking, templates, config errors."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import pytest

import responder_plugins.keywords as kw
from responder.config import ConfigError, Table
from responder.models import PLATFORM_TZ, InboundSms, Message
from responder.pipeline import decide, process
from tests.conftest import config_dict


def compiled(section: dict[str, Any]) -> kw.KeywordSettings:
    problems: list[str] = []
    table = Table(section, file="config.toml", prefix="keywords", problems=problems)
    settings = kw.parse(table)
    table.finish()
    assert problems == []
    return settings


def problems_of(section: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    table = Table(section, file="config.toml", prefix="keywords", problems=problems)
    kw.parse(table)
    table.finish()
    return problems


def at(hour: int, minute: int = 0) -> float:
    """A moment on a fixed day, in platform time."""
    return datetime(2026, 11, 2, hour, minute, tzinfo=PLATFORM_TZ).timestamp()


def message(text: str, src: str = "13800138000", dst: str = "0888008", id: int = 0) -> Message:
    return Message(id=id, gateway_id=id, src=src, dst=dst, text=text, received_at=None, raw="")


# -- matching ------------------------------------------------------------------------------

RULES = {
    "rules": [
        {"name": "query", "keywords": ["CX", "查询"], "reply": "query {args}"},
        {"name": "menu-exact", "keywords": ["menu"], "match": "exact", "reply": "m"},
        {"name": "menu-word", "keywords": ["menu"], "reply": "mw {args}"},
        {"name": "order", "keywords": ["订单"], "match": "prefix", "reply": "o {args}"},
        {"name": "order-status", "keywords": ["订单状态"], "match": "prefix", "reply": "s"},
        {"name": "refund", "keywords": ["退款"], "match": "contains", "reply": "r"},
        {
            "name": "tracking",
            "keywords": [r"^(?:单号|DH)\s*(?P<no>\d{6,})$"],
            "match": "regex",
            "reply": "no {no}",
        },
        {"name": "vip", "keywords": ["CX"], "dst": "01", "reply": "vip {args}"},
        {"name": "spaced", "keywords": ["Order  Status", "#1"], "reply": "os"},
        {
            "name": "boss",
            "keywords": ["refund now"],
            "match": "contains",
            "priority": 5,
            "reply": "b",
        },
    ]
}


@pytest.mark.parametrize(
    ("text", "dst", "rule", "args"),
    [
        ("CX", "0888008", "query", ""),
        ("cx", "0888008", "query", ""),
        ("ＣＸ", "0888008", "query", ""),
        (" 查询 ", "0888008", "query", ""),
        ("CX 12345", "0888008", "query", "12345"),
        ("ＣＸ　１２３４５", "0888008", "query", "12345"),
        ("CX,12345", "0888008", "query", "12345"),
        ("cx!", "0888008", "query", ""),
        ("CX。", "0888008", "query", ""),
        ("查询 订单 A1", "0888008", "query", "订单 A1"),
        ("CXX", "0888008", None, None),
        ("CX12345", "0888008", None, None),
        ("MENU", "0888008", "menu-exact", ""),
        ("menu 2", "0888008", "menu-word", "2"),
        ("订单", "0888008", "order", ""),
        ("订单123", "0888008", "order", "123"),
        ("订单状态 A1", "0888008", "order-status", "A1"),
        ("我要退款谢谢", "0888008", "refund", "谢谢"),
        ("单号 123456", "0888008", "tracking", ""),
        ("dh１２３４５６", "0888008", "tracking", ""),
        ("单号 12", "0888008", None, None),
        ("CX 1", "088800801", "vip", "1"),
        ("CX 1", "01", "vip", "1"),
        ("CX 1", "088800802", "query", "1"),
        ("Refund now, please!", "0888008", "boss", "please!"),
        ("order status 9", "0888008", "spaced", "9"),
        ("ORDER STATUS!", "0888008", "spaced", ""),
        ("order statusx", "0888008", None, None),
        ("#1, 2", "0888008", "spaced", "2"),
        ("hello", "0888008", None, None),
        ("", "0888008", None, None),
    ],
)
def test_matching(text, dst, rule, args):
    outcome = compiled(RULES).matcher.match(text, dst, at(12))
    if rule is None:
        assert outcome.match is None
    else:
        assert outcome.match is not None
        assert (outcome.match.rule.name, outcome.match.args) == (rule, args)


ARGS_RULES = {
    "rules": [
        {"name": "query", "keywords": ["CX"], "reply": "[{args}]"},
        {"name": "refund", "keywords": ["退款"], "match": "contains", "reply": "[{args}]"},
        {"name": "note", "keywords": ["留言"], "match": "prefix", "reply": "[{args}]"},
        {"name": "re", "keywords": [r"^DH\s*\d+"], "match": "regex", "reply": "[{args}]"},
    ]
}


@pytest.mark.parametrize(
    ("text", "args"),
    [
        ("CX #123", "#123"),
        ("CX (A1)", "(A1)"),
        ("CX 12345!", "12345!"),
        ("CX 123...", "123..."),
        ("CX 你好！", "你好!"),
        ("CX “A1”。", "“A1”。"),
        ("CX 《快递》？", "《快递》?"),
        ("CX，“A1”", "“A1”"),
        ("CX：12345", "12345"),
        ("CX, 12345", "12345"),
        ("CX ,,, #1", "#1"),
        ("CX#1", "#1"),
        ("CX   a   b  ", "a b"),
        ("ＣＸ　ＡＢ１２！", "AB12!"),
        ("CX!", ""),
        ("CX。", ""),
        ("CX ？！", ""),
        ("我要退款，谢谢！", "谢谢!"),
        ("留言：【急】明天送到？", "【急】明天送到?"),
        ("DH 123 (加急)!", "(加急)!"),
    ],
)
def test_args_keep_their_own_punctuation(text, args):
    outcome = compiled(ARGS_RULES).matcher.match(text, "0888008", at(12))
    assert outcome.match is not None
    assert outcome.match.args == args


def test_regex_named_groups_fill_the_reply(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    decision = decide(app, message("单号 8812345"))
    assert decision.final is not None and decision.final.text == "no 8812345"


@pytest.mark.parametrize(
    ("hour", "rule"),
    [(8, "closed"), (9, "open"), (12, "open"), (17, "open"), (18, "closed"), (23, "closed")],
)
def test_hours_choose_the_rule_for_the_time_of_day(hour, rule, sandbox, tmp_path, make_app, clock):
    rules = {
        "rules": [
            {"name": "open", "keywords": ["menu"], "hours": "09:00-18:00", "reply": "open"},
            {"name": "closed", "keywords": ["menu"], "hours": "18:00-09:00", "reply": "closed"},
        ]
    }
    clock.now = at(hour, 30)
    app = make_app(config_dict(sandbox, tmp_path, keywords=rules), clock=clock)
    assert dict(decide(app, message("menu")).reply.meta)["rule"] == rule


def test_hours_follow_the_configured_time_zone(sandbox, tmp_path, make_app, clock):
    rules = {
        "timezone": "UTC",
        "rules": [{"name": "day", "keywords": ["menu"], "hours": "09:00-18:00", "reply": "d"}],
    }
    clock.now = at(12)  # 04:00 UTC
    app = make_app(config_dict(sandbox, tmp_path, keywords=rules), clock=clock)
    assert decide(app, message("menu")).reply is None
    clock.now = at(20)  # 12:00 UTC
    assert decide(app, message("menu")).final.text == "d"


@pytest.mark.parametrize(
    ("rules", "text", "winner"),
    [
        # Higher priority wins whatever the mode.
        (
            [
                {"name": "a", "keywords": ["cx"], "match": "exact", "reply": "a"},
                {"name": "b", "keywords": ["x"], "match": "contains", "priority": 1, "reply": "b"},
            ],
            "cx",
            "b",
        ),
        # Equal priority: exact > word > prefix > regex > contains.
        (
            [
                {"name": "c", "keywords": ["c"], "match": "contains", "reply": "c"},
                {"name": "r", "keywords": ["^cx"], "match": "regex", "reply": "r"},
                {"name": "p", "keywords": ["cx"], "match": "prefix", "reply": "p"},
                {"name": "w", "keywords": ["cx"], "reply": "w"},
            ],
            "cx 1",
            "w",
        ),
        # The longer keyword wins between prefixes.
        (
            [
                {"name": "short", "keywords": ["订单"], "match": "prefix", "reply": "s"},
                {"name": "long", "keywords": ["订单状态"], "match": "prefix", "reply": "l"},
            ],
            "订单状态查询",
            "long",
        ),
        # The rule written first wins a full tie.
        (
            [
                {"name": "first", "keywords": ["^c"], "match": "regex", "reply": "1"},
                {"name": "second", "keywords": ["^cx"], "match": "regex", "reply": "2"},
            ],
            "cx",
            "first",
        ),
        # A rule limited to hours beats an always-on one, even a more specific one.
        (
            [
                {"name": "always", "keywords": ["cx"], "match": "exact", "reply": "a"},
                {"name": "daytime", "keywords": ["cx"], "hours": "00:00-24:00", "reply": "d"},
            ],
            "cx",
            "daytime",
        ),
    ],
)
def test_overlapping_rules_are_ranked(rules, text, winner):
    outcome = compiled({"rules": rules}).matcher.match(text, "0888008", at(12))
    assert outcome.match is not None and outcome.match.rule.name == winner


def test_the_index_finds_the_right_rule_among_many():
    rules = [{"keywords": [f"K{n}"], "reply": f"r{n}"} for n in range(20_000)]
    rules += [{"keywords": [f"P{n}-"], "match": "prefix", "reply": "p"} for n in range(5_000)]
    matcher = compiled({"rules": rules}).matcher
    assert matcher.match("k12345 go", "", at(12)).match.rule.reply.source == "r12345"
    assert matcher.match("P4999-x", "", at(12)).match.rule.match == "prefix"
    assert matcher.match("K20000", "", at(12)).match is None


# -- templates -----------------------------------------------------------------------------

HOSTILE = [
    "{0.__class__}",
    "{src}",
    "${x}",
    "{text}{{}}",
    "%s %(src)s",
    "{args.__init__.__globals__}",
    "}{",
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_inbound_text_comes_back_literally(hostile, sandbox, tmp_path, make_app):
    rules = {"rules": [{"keywords": ["echo"], "reply": "你说：{text}；参数：{args}"}]}
    app = make_app(config_dict(sandbox, tmp_path, keywords=rules))
    decision = decide(app, message(f"echo {hostile}"))
    assert decision.final.text.startswith(f"你说：echo {hostile}；参数：")


@pytest.mark.parametrize("hostile", HOSTILE)
def test_fallback_takes_the_text_literally(hostile, sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords={"fallback": "收到：{text}"}))
    assert decide(app, message(hostile)).final.text == f"收到：{hostile.strip()}"


def test_placeholders_are_filled(sandbox, tmp_path, make_app, clock):
    rules = {"rules": [{"keywords": ["cx"], "reply": "{src}|{dst}|{text}|{args}|{time}|{{x}}"}]}
    clock.now = at(9, 5)
    app = make_app(config_dict(sandbox, tmp_path, keywords=rules), clock=clock)
    decision = decide(app, message("CX 1 2", src="13800138000", dst="088800801"))
    assert decision.final.text == "13800138000|088800801|CX 1 2|1 2|2026-11-02 09:05|{x}"


def test_reply_meta_says_what_matched_and_why(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    meta = dict(decide(app, message("ＣＸ 123")).reply.meta)
    assert meta == {"normalised": "cx 123", "rule": "query", "why": 'the first word is "cx"'}


# -- fallback ------------------------------------------------------------------------------


_ids = itertools.count(1)


def _journal(app, text: str, src: str = "13800138000") -> Message:
    sms = InboundSms(
        gateway_id=next(_ids),
        src=src,
        dst="0888008",
        text=text,
        received_at=None,
        raw="",
    )
    journaled = app.store.journal(sms)
    assert journaled is not None
    return journaled


def _started(app):
    """Run ``responder_startup`` as the daemon does: it creates the fallback table."""
    app.plugins.hook.responder_startup(app=app)
    return app


def test_fallback_goes_at_most_once_an_hour_to_a_sender(sandbox, tmp_path, make_app, clock):
    data = config_dict(sandbox, tmp_path, keywords={"fallback": "请回复CX"})
    app = _started(make_app(data, clock=clock))
    assert process(app, _journal(app, "hello")).composed.parts == ("请回复CX",)
    clock.advance(600)
    second = process(app, _journal(app, "hello again"))
    assert second.final is None and "fallback" in dict(second.reply.meta)["rule"]
    assert process(app, _journal(app, "hi", src="13900139000")).composed.parts == ("请回复CX",)
    clock.advance(3000)
    assert process(app, _journal(app, "anyone?")).composed.parts == ("请回复CX",)


def test_fallback_limit_can_be_turned_off(sandbox, tmp_path, make_app, clock):
    section = {"fallback": "请回复CX", "fallback_interval": 0}
    app = _started(make_app(config_dict(sandbox, tmp_path, keywords=section), clock=clock))
    process(app, _journal(app, "hello"))
    clock.advance(1)
    assert process(app, _journal(app, "hello 2")).composed.parts == ("请回复CX",)


def test_a_simulated_conversation_remembers_its_fallbacks_and_writes_nothing(
    sandbox, tmp_path, make_app, clock
):
    dry = make_app(config_dict(sandbox, tmp_path, keywords={"fallback": "请回复CX"}), dry_run=True)
    assert decide(dry, message("hello")).composed.parts == ("请回复CX",)
    assert decide(dry, message("hello again")).final is None
    assert not dry.store.query("SELECT 1 FROM sqlite_master WHERE name = 'keywords_fallback'")


@pytest.mark.parametrize("dry_run", [False, True])
def test_no_rule_and_no_fallback_means_no_reply(sandbox, tmp_path, make_app, dry_run):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES), dry_run=dry_run)
    assert decide(app, message("hello")).reply is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ＣＸ 123", {"normalised": "cx 123", "rule": "query", "why": 'the first word is "cx"'}),
        ("ＨＥＬＬＯ！", {"normalised": "hello", "rule": "none", "why": "no rule matched"}),
    ],
)
def test_describe_says_what_the_rules_make_of_a_text(sandbox, tmp_path, make_app, text, expected):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES), dry_run=True)
    assert dict(kw.describe(app, message(text))) == expected


# -- configuration errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"rules": [{"keywords": ["cx"], "reply": "hi {name}"}]},
            "config.toml: keywords.rules[0].reply: unknown placeholder {name}",
        ),
        (
            {"rules": [{"keywords": ["cx"], "reply": "{0.__class__}"}]},
            "keywords.rules[0].reply: '{0.__class__}' is not a placeholder",
        ),
        (
            {"rules": [{"keywords": ["cx"], "reply": "a { b"}]},
            "keywords.rules[0].reply: unbalanced '{'",
        ),
        ({"fallback": "hi {who}"}, "keywords.fallback: unknown placeholder {who}"),
        (
            {"rules": [{"name": "t", "keywords": ["(x"], "match": "regex", "reply": "r"}]},
            "keywords.rules[0].keywords: rule 't': invalid regular expression '(x'",
        ),
        (
            {"rules": [{"keywords": ["(?P<no>x)"], "match": "regex", "reply": "{num}"}]},
            "keywords.rules[0].reply: unknown placeholder {num}",
        ),
        (
            {"rules": [{"keywords": ["(?P<src>x)"], "match": "regex", "reply": "r"}]},
            "the group name 'src' is a placeholder",
        ),
        (
            {"rules": [{"keywords": ["cx"], "match": "fuzzy", "reply": "r"}]},
            "keywords.rules[0].match: must be one of 'word', 'exact'",
        ),
        ({"rules": [{"keywords": ["cx"], "hours": "9am-5pm", "reply": "r"}]}, ".hours: must be"),
        ({"rules": [{"keywords": ["cx"], "hours": "09:00-09:00", "reply": "r"}]}, "is empty"),
        ({"rules": [{"keywords": ["cx"], "dst": "ext1", "reply": "r"}]}, ".dst: must be digits"),
        ({"rules": [{"keywords": [], "reply": "r"}]}, "must list at least one keyword"),
        ({"rules": [{"keywords": ["。"], "reply": "r"}]}, ""),
        ({"rules": [{"keywords": ["  "], "reply": "r"}]}, "a keyword is empty"),
        ({"rules": [{"reply": "r"}]}, "keywords.rules[0].keywords: is required"),
        ({"rules": [{"keywords": ["cx"]}]}, "keywords.rules[0].reply: is required"),
        ({"rules": [{"keywords": ["cx"], "reply": "r", "repyl": 1}]}, "unknown key"),
        ({"timezone": "Beijing"}, "keywords.timezone: must be a time zone name"),
        ({"fallback_interval": -1}, "keywords.fallback_interval: must be at least 0"),
    ],
)
def test_config_errors_name_the_key(section, expected):
    problems = problems_of(section)
    if expected:
        assert any(expected in problem for problem in problems), problems
    else:
        assert problems == []  # a keyword of punctuation only is kept as written


def test_the_same_keyword_in_two_rules_is_refused_naming_both():
    problems = problems_of(
        {
            "rules": [
                {"name": "query", "keywords": ["CX", "查询"], "reply": "a"},
                {"name": "other", "keywords": ["ｃｘ"], "reply": "b"},
            ]
        }
    )
    assert len(problems) == 1
    assert problems[0].startswith("config.toml: keywords.rules[1].keywords: rule 'other' and ")
    assert "rule 'query' (keywords.rules[0])" in problems[0]
    assert '"cx"' in problems[0]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"match": "exact"}, {}),
        ({"dst": "01"}, {}),
        ({"dst": "01"}, {"dst": "02"}),
        ({"hours": "09:00-12:00"}, {"hours": "12:00-18:00"}),
        ({"hours": "22:00-06:00"}, {"hours": "06:00-22:00"}),
    ],
)
def test_the_same_keyword_may_differ_in_match_dst_or_hours(first, second):
    rules = [
        {"keywords": ["cx"], "reply": "a", **first},
        {"keywords": ["cx"], "reply": "b", **second},
    ]
    assert problems_of({"rules": rules}) == []


def test_overlapping_hours_conflict():
    rules = [
        {"keywords": ["cx"], "reply": "a", "hours": "09:00-18:00"},
        {"keywords": ["cx"], "reply": "b", "hours": "17:00-20:00"},
    ]
    assert "overlapping hours" in problems_of({"rules": rules})[0]


def test_a_config_error_stops_the_app_from_building(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, keywords={"rules": [{"keywords": ["x"], "reply": "{y}"}]})
    with pytest.raises(ConfigError, match=r"keywords\.rules\[0\]\.reply"):
        make_app(data)


def test_a_config_with_only_rules_works_with_every_default_plugin(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords={"rules": RULES["rules"][:1]}))
    assert {"keywords", "optout", "guard"} <= set(app.plugins.names())
    assert decide(app, message("cx")).composed.parts == ("query",)
