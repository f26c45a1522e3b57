"""The loop and abuse guard: who is never answered, reply limits, ping-pong detection."""

from __future__ import annotations

import itertools

import pytest

import responder_plugins.guard as guard
from responder import hookimpl
from responder.config import ConfigError, Table
from responder.models import InboundSms, Message, Reply
from responder.pipeline import decide, process
from responder.sending import send_due
from tests.conftest import config_dict

RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理 {args}"}]}
CUSTOMER = "13800138000"
_ids = itertools.count(1)


def journal(app, text: str, src: str = CUSTOMER, dst: str = "0888008") -> Message:
    sms = InboundSms(gateway_id=next(_ids), src=src, dst=dst, text=text, received_at=None, raw="")
    message = app.store.journal(sms)
    assert message is not None
    return message


def answered(app, text: str, src: str = CUSTOMER) -> bool:
    return bool(process(app, journal(app, text, src)).composed)


def settings(**values) -> guard.GuardSettings:
    problems: list[str] = []
    table = Table(values, file="config.toml", prefix="guard", problems=problems)
    parsed = guard.parse(table)
    table.finish()
    assert problems == []
    return parsed


@pytest.mark.parametrize(
    ("src", "dst", "config", "reason"),
    [
        ("13800138000", "0888008", {}, None),
        ("+8613800138000", "0888008", {}, None),
        ("19912345678", "0888008", {}, None),
        ("", "0888008", {}, guard.NO_SENDER),
        ("10086", "0888008", {}, guard.NOT_MOBILE),
        ("106575000123", "0888008", {}, guard.NOT_MOBILE),
        ("95588", "0888008", {}, guard.NOT_MOBILE),
        ("12345678901", "0888008", {}, guard.NOT_MOBILE),
        ("10086", "0888008", {"mobile_only": False}, None),
        ("0888008", "0888008", {"mobile_only": False}, guard.OWN_NUMBER),
        ("13800138000", "0888008", {"own_numbers": ["+86 13800138000"]}, guard.OWN_NUMBER),
        ("13800138000", "0888008", {"ignore": ["13800138000"]}, guard.ON_IGNORE_LIST),
        ("13800138000", "0888008", {"ignore": ["138*"]}, guard.ON_IGNORE_LIST),
        ("13900138000", "0888008", {"ignore": ["138*"]}, None),
        ("447700900123", "0888008", {"mobile_pattern": r"1[3-9]\d{9}|44\d{10}"}, None),
    ],
)
def test_who_is_never_answered(src, dst, config, reason):
    message = Message(id=1, gateway_id=1, src=src, dst=dst, text="CX", received_at=None, raw="")
    assert guard.drop_reason(settings(**config), message) == reason


def test_a_dropped_message_is_stored_with_its_reason(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    decision = process(app, journal(app, "CX", src="10086"))
    assert (decision.dropped, decision.decided_by) == ("not a mobile number", "guard")
    assert app.store.message_state(decision.message.id) == ("ignored", "not a mobile number")


def test_replies_to_a_sender_are_limited_per_window(sandbox, tmp_path, make_app, clock):
    section = {"max_replies": 5, "pingpong_repeats": 0}
    data = config_dict(sandbox, tmp_path, keywords=RULES, guard=section)
    app = make_app(data, clock=clock)
    for number in range(5):
        assert answered(app, f"CX {number}")
        clock.advance(60)
    decision = process(app, journal(app, "CX 5"))
    assert (decision.vetoed, decision.decided_by) == ("rate limit", "guard")
    assert answered(app, "CX", src="13900139000")  # another sender is not limited
    clock.advance(600 - 4 * 60)  # the first reply leaves the window
    assert answered(app, "CX 6")
    assert not answered(app, "CX 7")


def test_the_limit_is_configurable(sandbox, tmp_path, make_app, clock):
    section = {"max_replies": 1, "window": 3600, "pingpong_repeats": 0}
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES, guard=section), clock=clock)
    assert answered(app, "CX 1")
    clock.advance(3000)
    assert not answered(app, "CX 2")
    clock.advance(601)
    assert answered(app, "CX 3")


def test_a_limit_of_zero_means_no_limit(sandbox, tmp_path, make_app, clock):
    section = {"max_replies": 0, "pingpong_repeats": 0}
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES, guard=section), clock=clock)
    assert all(answered(app, f"CX {n}") for n in range(8))


def test_the_same_text_again_and_again_stops_the_replies(sandbox, tmp_path, make_app, clock):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES), clock=clock)
    assert answered(app, "CX 1")
    clock.advance(5)
    assert answered(app, "cx 1")
    clock.advance(5)
    decision = process(app, journal(app, "ＣＸ 1。"))
    assert (decision.vetoed, decision.decided_by) == ("ping-pong", "guard")
    assert answered(app, "CX 2")  # another text is still answered


def test_a_repeat_outside_the_window_is_answered(sandbox, tmp_path, make_app, clock):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES), clock=clock)
    assert answered(app, "CX 1")
    clock.advance(300)
    assert answered(app, "CX 1")
    clock.advance(301)
    assert answered(app, "CX 1")


MENU = {
    "rules": [
        {
            "name": "menu",
            "keywords": ["菜单", "0"],
            "match": "exact",
            "reply": "1 查询 2 退换 3 人工",
        },
        {"name": "1", "keywords": ["1"], "match": "exact", "reply": "请回复 CX 单号"},
        {"name": "2", "keywords": ["2"], "match": "exact", "reply": "退换货请致电 400"},
        {"name": "3", "keywords": ["3"], "match": "exact", "reply": "已为您转人工客服"},
        {"name": "cx", "keywords": ["CX"], "reply": "订单 {args} 配送中"},
    ]
}
A_MENU_CONVERSATION = (
    "菜单",
    "1",
    "CX 20261101001",
    "0",
    "2",
    "0",
    "1",
    "CX 20261101002",
    "0",
    "3",
)


def test_the_defaults_let_a_ten_step_menu_conversation_through(sandbox, tmp_path, make_app, clock):
    app = make_app(config_dict(sandbox, tmp_path, keywords=MENU), clock=clock)
    for text in A_MENU_CONVERSATION:
        clock.advance(20)
        decision = process(app, journal(app, text))
        assert decision.composed, f"{text!r} was not answered: {decision.reason}"


AUTO_REPLY = "您好，我正在开车，稍后给您回电。"


@pytest.mark.parametrize(
    ("robot_texts", "most_sent", "reason"),
    [
        (itertools.repeat(AUTO_REPLY), 2, "ping-pong"),
        ((f"[自动回复 {n}] {AUTO_REPLY}" for n in itertools.count()), 20, "rate limit"),
    ],
    ids=["the same text", "a changing text"],
)
def test_the_defaults_cut_a_loop_with_another_auto_responder(
    robot_texts, most_sent, reason, sandbox, tmp_path, make_app, clock
):
    """Another auto-responder answers every SMS it gets, and ours answers everything."""
    keywords = {"fallback": "您好！回复“菜单”查看服务。", "fallback_interval": 0}
    app = make_app(config_dict(sandbox, tmp_path, keywords=keywords), clock=clock)
    app.plugins.hook.responder_startup(app=app)
    robot, sent = "13900139000", 0
    for text in robot_texts:  # the first is its answer to some earlier SMS
        clock.advance(5)
        decision = process(app, journal(app, text, src=robot))
        send_due(app)
        now_sent = len([sms for sms in sandbox.sent() if robot in sms.numbers])
        if now_sent == sent:
            break  # ours stayed silent: the robot has nothing left to answer
        sent = now_sent
        assert sent <= most_sent, "the loop was not cut"
    assert (sent, decision.vetoed, decision.decided_by) == (most_sent, reason, "guard")


class Relay:
    @hookimpl
    def responder_reply(self, app, message):
        return Reply(text=f"{message.src}: {message.text}", to=("13900139000",))


def test_replies_to_other_numbers_are_not_limited(sandbox, tmp_path, make_app, clock):
    data = config_dict(sandbox, tmp_path, guard={"max_replies": 1})
    app = make_app(data, clock=clock, extra_plugins=(("relay", Relay()),))
    assert all(answered(app, "same text") for _ in range(4))


def test_a_dry_run_is_limited_by_what_the_store_holds(sandbox, tmp_path, make_app, clock):
    data = config_dict(sandbox, tmp_path, keywords=RULES, guard={"max_replies": 1})
    live = make_app(data, clock=clock)
    dry = make_app(data, clock=clock, dry_run=True)
    simulated = Message(
        id=0, gateway_id=0, src=CUSTOMER, dst="", text="CX", received_at=None, raw=""
    )
    assert decide(dry, simulated).composed is not None
    assert answered(live, "CX 1")
    assert decide(dry, simulated).vetoed == "rate limit"


def test_status_counts_every_drop_by_reason(sandbox, tmp_path, make_app, clock):
    section = {"max_replies": 1, "ignore": ["13700137000"]}
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES, guard=section), clock=clock)
    answered(app, "CX 1")
    answered(app, "CX 2")
    answered(app, "CX", src="10086")
    answered(app, "CX", src="13700137000")
    figures = dict(guard.responder_status(app=app).figures)
    assert figures["dropped: rate limit"] == 1
    assert figures["dropped: not a mobile number"] == 1
    assert figures["dropped: on the ignore list"] == 1
    assert figures["dropped: ping-pong"] == 0
    assert figures["dropped: total"] == 3


def test_status_counts_drops_an_older_release_stored_as_plugin_colon_reason(
    sandbox, tmp_path, make_app
):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    for reason in ("guard: ping-pong", "guard: ping-pong", "other: ping-pong"):
        message = journal(app, "CX", src="10086")
        app.store.finish_message(message.id, outgoing=[], reason=reason)
    figures = dict(guard.responder_status(app=app).figures)
    assert (figures["dropped: ping-pong"], figures["dropped: total"]) == (2, 2)


def test_status_shows_the_guard_section(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    assert "guard" in [section.title for section in app.status_sections()]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"ignore": ["not-a-number"]}, "guard.ignore: must be phone numbers"),
        ({"own_numbers": ["138*"]}, "guard.own_numbers: must be phone numbers, got '138*'"),
        ({"mobile_pattern": "1[3-9"}, "guard.mobile_pattern: must be a regular expression"),
        ({"max_replies": -1}, "guard.max_replies: must be at least 0"),
        ({"window": 0}, "guard.window: must be at least 1 seconds"),
        ({"max_reply": 3}, "guard.max_reply: unknown key; did you mean 'max_replies'?"),
    ],
)
def test_config_errors_name_the_key(section, expected, sandbox, tmp_path, make_app):
    with pytest.raises(ConfigError) as caught:
        make_app(config_dict(sandbox, tmp_path, guard=section))
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems
