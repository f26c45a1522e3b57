"""Flows declared in the configuration, through the real pipeline: a real store, the
simulator over loopback for the replies, a real local HTTP receiver for the relay."""

from __future__ import annotations

import itertools
import json
import re
import signal
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import responder_plugins.webhook as webhook
from responder import ConfigError, normalise, pipeline
from responder.app import App, build_app
from responder.cli import main
from responder.models import PLATFORM_TZ, InboundSms, Message
from responder.sandbox import Sandbox
from responder.sending import send_due
from responder.simulation import simulate, simulated_message
from responder_plugins.conversations import ConversationsSettings, Flow, Step
from tests.conftest import Clock, config_dict, offline_config, store_rows, wait_for, write_config
from tests.test_webhook import expected_signature
from tests.webhook_receiver import Receiver

PHONE = "13800138000"
OTHER = "13911020005"
SECRET = "whsec-3f9a1c0e5b7d2468-test"
_ids = itertools.count(7_000_000)

BOOKING: dict[str, Any] = {
    "name": "booking",
    "start": ["预约", "YY"],
    "cancel": ["退出", "算了"],
    "cancel_reply": "已取消预约。",
    "timeout": 1800,
    "done": "已为您预约 {date} {slot}，联系电话 {phone}。回复TD退订",
    "relay": "crm",
    "steps": [
        {"name": "date", "ask": "请回复预约日期，例如 12月3日"},
        {
            "name": "slot",
            "ask": "请选择时段：1 上午 2 下午",
            "choices": {"1": "上午", "2": "下午"},
            "retry_reply": "请回复 1 或 2",
        },
        {
            "name": "phone",
            "ask": "请回复联系电话",
            "pattern": r"1[3-9]\d{9}",
            "retry_reply": "请回复11位手机号",
        },
    ],
}
MENU: dict[str, Any] = {
    "name": "menu",
    "start": ["菜单"],
    "done": "已收到订单号 {order}，稍后回复您。",
    "steps": [
        {
            "name": "choice",
            "ask": "请回复数字：1 查询订单 2 退换货 3 营业时间",
            "choices": {
                "1": {"label": "查询订单", "next": "order"},
                "2": {"label": "退换货", "flow": "returns"},
                "3": {"label": "营业时间", "reply": "营业时间 9:00-18:00"},
            },
        },
        {"name": "order", "ask": "请回复订单号", "pattern": r"\d{6,}"},
    ],
}
RETURNS: dict[str, Any] = {
    "name": "returns",
    "done": "已登记退换货：{reason}",
    "steps": [{"name": "reason", "ask": "请说明退换货原因"}],
}
KEYWORDS: dict[str, Any] = {
    "rules": [{"keywords": ["营业"], "reply": "营业时间 9:00-18:00（关键词）"}]
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def flows(
    make_app: Callable[..., App],
    sandbox: Sandbox,
    tmp_path: Path,
    clock: Clock,
    receiver: Receiver,
) -> Iterator[Callable[..., App]]:
    """A started app with the booking, menu and returns flows and a "crm" target."""
    started: list[App] = []

    def build(guard: dict[str, Any] | None = None, **conversations: Any) -> App:
        data = config_dict(
            sandbox,
            tmp_path,
            guard=guard or {},
            conversations={"flows": [BOOKING, MENU, RETURNS], **conversations},
            keywords=KEYWORDS,
            webhook={"targets": [{"name": "crm", "url": receiver.url(), "secret": SECRET}]},
        )
        app = make_app(data, clock=clock)
        app.plugins.hook.responder_startup(app=app)
        started.append(app)
        return app

    yield build
    for app in started:
        app.plugins.hook.responder_shutdown(app=app)


def say(app: App, text: str, src: str = PHONE) -> list[str]:
    """One inbound SMS through the pipeline and the send thread; the texts sent for it."""
    sms = InboundSms(
        gateway_id=next(_ids),
        src=src,
        dst="0888008",
        text=text,
        received_at=datetime(2026, 11, 26, 10, 0, tzinfo=PLATFORM_TZ),
        raw="",
    )
    message = app.store.journal(sms)
    assert message is not None
    pipeline.process(app, message)
    send_due(app)
    return sent_for(app, message)


def sent_for(app: App, message: Message) -> list[str]:
    return [row.text for row in app.store.outbox_for(message.id) if row.state == "sent"]


def deliver(app: App) -> None:
    engine = app.stash[webhook.ENGINE]
    engine.tick()
    assert engine.wait(15)


def events(receiver: Receiver) -> list[Any]:
    """The event deliveries the receiver got (the target relays every message too)."""
    return [r for r in receiver.received() if "type" in r.json()]


def book(app: App) -> list[list[str]]:
    return [say(app, text) for text in ("预约", "12月3日", "1", "13912345678")]


def write_transactions(app: App, monkeypatch: pytest.MonkeyPatch, text: str) -> int:
    """How many write transactions handling one message opens (its processing only)."""
    sms = InboundSms(
        gateway_id=next(_ids), src=PHONE, dst="0888008", text=text, received_at=None, raw=""
    )
    message = app.store.journal(sms)
    assert message is not None
    opened = []
    transaction = app.store.transaction

    def counted() -> Any:
        opened.append(text)
        return transaction()

    monkeypatch.setattr(app.store, "transaction", counted)
    pipeline.process(app, message)
    monkeypatch.undo()
    return len(opened)


def test_handling_a_message_reads_its_conversation_from_the_store_once(flows, monkeypatch):
    app = flows()  # flows, hand-over, guard and the webhook all look at the conversation
    say(app, "预约")
    reads = []
    get_conversation = app.store.get_conversation

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(args)
        return get_conversation(*args, **kwargs)

    monkeypatch.setattr(app.store, "get_conversation", counted)
    assert say(app, "12月3日") == ["请选择时段：1 上午 2 下午"]
    assert len(reads) == 1


def test_a_flow_step_costs_no_write_transaction_more_than_a_keyword_answer(flows, monkeypatch):
    app = flows()
    keyword = write_transactions(app, monkeypatch, "营业")
    assert keyword > 0  # the outcome at least
    assert write_transactions(app, monkeypatch, "预约") == keyword  # starts the booking flow
    assert write_transactions(app, monkeypatch, "12月3日") == keyword  # moves it a step


def test_the_booking_flow_completes_and_the_done_sms_carries_the_fields(flows):
    app = flows()

    answers = book(app)

    assert answers == [
        ["请回复预约日期，例如 12月3日"],
        ["请选择时段：1 上午 2 下午"],
        ["请回复联系电话"],
        ["已为您预约 12月3日 上午，联系电话 13912345678。回复TD退订"],
    ]
    assert app.conversation(PHONE).current is None


def test_a_start_word_starts_the_flow_as_its_first_word_normalised(flows):
    app = flows()
    assert say(app, "ｙｙ！") == ["请回复预约日期，例如 12月3日"]


@pytest.mark.parametrize(("answer", "label"), [("1", "上午"), ("２", "下午"), ("下午", "下午")])
def test_a_choice_keeps_its_label(flows, answer, label):
    app = flows()
    say(app, "预约")
    say(app, "12月3日")
    say(app, answer)
    current = app.conversation(PHONE).current
    assert current is not None and current.fields["slot"] == label


def test_an_answer_the_pattern_refuses_gets_the_retry_reply_and_the_step_waits(flows):
    app = flows()
    for text in ("预约", "12月3日", "1"):
        say(app, text)

    assert say(app, "12345") == ["请回复11位手机号"]
    assert say(app, "13912345678") == ["已为您预约 12月3日 上午，联系电话 13912345678。回复TD退订"]


def test_too_many_refused_answers_in_a_row_end_the_flow(flows):
    app = flows()
    say(app, "预约")
    say(app, "12月3日")
    answers = [say(app, "9") for _ in range(4)]
    assert answers == [["请回复 1 或 2"]] * 3 + [["已取消预约。"]]
    assert app.conversation(PHONE).current is None


@pytest.mark.parametrize(
    ("choice", "answer", "then"),
    [
        ("1", ["请回复订单号"], ("menu", "order")),
        ("2", ["请说明退换货原因"], ("returns", "reason")),
        ("3", ["营业时间 9:00-18:00"], None),
    ],
)
def test_a_menu_choice_leads_to_its_branch(flows, choice, answer, then):
    app = flows()
    assert say(app, "菜单") == ["请回复数字：1 查询订单 2 退换货 3 营业时间"]

    assert say(app, choice) == answer
    current = app.conversation(PHONE).current
    assert ((current.flow, current.step) if current else None) == then


def test_a_menu_branch_into_another_flow_completes_that_flow(flows):
    app = flows()
    say(app, "菜单")
    say(app, "2")
    assert say(app, "尺码不合适") == ["已登记退换货：尺码不合适"]


def test_a_cancel_word_leaves_the_flow_with_the_cancel_reply(flows):
    app = flows()
    say(app, "预约")
    assert say(app, "算了") == ["已取消预约。"]
    assert app.conversation(PHONE).current is None


def test_a_flow_times_out_and_the_next_message_starts_fresh(flows, clock):
    app = flows()
    say(app, "预约")
    say(app, "12月3日")

    clock.advance(1801)

    assert app.conversation(PHONE).current is None
    assert say(app, "营业") == ["营业时间 9:00-18:00（关键词）"]  # not taken as a slot


def test_each_answer_restarts_the_timeout(flows, clock):
    app = flows()
    say(app, "预约")
    clock.advance(1000)
    say(app, "12月3日")
    clock.advance(1000)
    assert say(app, "2") == ["请回复联系电话"]


@pytest.mark.parametrize(
    ("when", "at", "starts"),
    [
        ("open", datetime(2026, 11, 26, 10, 0, tzinfo=PLATFORM_TZ), True),  # a Thursday
        ("open", datetime(2026, 11, 26, 20, 0, tzinfo=PLATFORM_TZ), False),
        ("closed", datetime(2026, 11, 26, 20, 0, tzinfo=PLATFORM_TZ), True),
        ("closed", datetime(2026, 10, 1, 10, 0, tzinfo=PLATFORM_TZ), True),  # National Day
        ("", datetime(2026, 11, 26, 20, 0, tzinfo=PLATFORM_TZ), True),
    ],
)
def test_a_flow_with_when_starts_only_in_those_opening_hours(
    make_app, sandbox, tmp_path, when, at, starts
):
    data = config_dict(
        sandbox,
        tmp_path,
        hours={"weekdays": "09:00-18:00"},
        conversations={"flows": [{**BOOKING, "relay": "", "when": when}]},
    )
    app = make_app(data, clock=lambda: at.timestamp())
    app.plugins.hook.responder_startup(app=app)
    try:
        assert (say(app, "预约") == ["请回复预约日期，例如 12月3日"]) is starts
    finally:
        app.plugins.hook.responder_shutdown(app=app)


def test_a_flow_when_is_a_choice(make_app, sandbox, tmp_path):
    flow = {**BOOKING, "relay": "", "when": "sometimes"}
    data = config_dict(sandbox, tmp_path, conversations={"flows": [flow]})
    with pytest.raises(ConfigError, match=r"conversations\.flows\[0\]\.when: must be"):
        make_app(data)


HELP_MENU: dict[str, Any] = {
    "name": "help",
    "start": ["帮助"],
    "steps": [
        {
            "name": "choice",
            "ask": "请回复数字：1 营业时间 3 人工客服",
            "choices": {
                "1": {"label": "营业时间", "reply": "营业时间 9:00-18:00"},
                "3": {"label": "人工客服", "handover": True},
            },
        }
    ],
}


def test_a_menu_choice_hands_the_sender_to_a_person_and_tells_staff(
    make_app, sandbox, tmp_path, clock, receiver
):
    target = {"name": "staff", "url": receiver.url(), "secret": SECRET}
    data = config_dict(
        sandbox,
        tmp_path,
        conversations={"flows": [HELP_MENU]},
        keywords=KEYWORDS,
        webhook={"targets": [{**target, "events": ["handover.requested"]}]},
    )
    app = make_app(data, clock=clock)
    app.plugins.hook.responder_startup(app=app)
    try:
        say(app, "帮助")
        confirmation = say(app, "3")
        silence = say(app, "营业")
        deliver(app)
    finally:
        app.plugins.hook.responder_shutdown(app=app)

    assert confirmation == ["已为您转接人工客服，请稍候。"]
    assert silence == []  # the bot stays silent: a person answers now
    assert app.conversation(PHONE).with_person
    [event] = events(receiver)
    assert event.json()["type"] == "handover.requested"
    assert event.json()["data"]["fields"] == {"choice": "人工客服"}


def test_a_choice_that_hands_over_has_no_next_step(make_app, sandbox, tmp_path):
    choices = {"3": {"label": "人工", "handover": True, "next": "choice"}}
    flow = {**HELP_MENU, "steps": [{**HELP_MENU["steps"][0], "choices": choices}]}
    data = config_dict(sandbox, tmp_path, conversations={"flows": [flow]})
    with pytest.raises(ConfigError, match=r"choices\.3\.handover: a choice that hands over"):
        make_app(data)


def test_opt_out_in_the_middle_of_a_flow_ends_it_and_nothing_more_is_sent(flows, sandbox):
    app = flows()
    say(app, "预约")
    say(app, "12月3日")

    confirmation = say(app, "TD")
    after = [say(app, text) for text in ("1", "预约")]

    assert confirmation and "退订" in confirmation[0]
    assert after == [[], []]
    assert app.conversation(PHONE).current is None


@pytest.mark.parametrize(
    ("options", "answer"),
    [
        ({}, ["请回复 1 或 2"]),  # every message answers the step
        ({"pass_through": ["营业"]}, ["营业时间 9:00-18:00（关键词）"]),
        ({"unmatched": "keywords"}, ["营业时间 9:00-18:00（关键词）"]),
    ],
)
def test_what_a_flow_does_not_take_goes_to_the_keyword_rules_when_configured(
    flows, options, answer
):
    app = flows(**options)
    say(app, "预约")
    say(app, "12月3日")

    assert say(app, "营业") == answer
    assert app.conversation(PHONE).current.step == "slot"  # the flow waits


def test_the_completed_form_reaches_the_relay_target_once_signed(flows, receiver):
    app = flows()
    book(app)

    deliver(app)
    deliver(app)

    [request] = events(receiver)
    assert request.headers["X-Responder-Signature"] == expected_signature(
        SECRET, request.headers["X-Responder-Timestamp"], request.body
    )
    document = request.json()
    assert (document["type"], document["number"]) == ("conversation.completed", PHONE)
    assert document["data"]["flow"] == "booking"
    assert document["data"]["fields"] == {"date": "12月3日", "slot": "上午", "phone": "13912345678"}


def test_each_sender_has_their_own_flow(flows):
    app = flows()
    say(app, "预约")
    assert say(app, "菜单", src=OTHER) == ["请回复数字：1 查询订单 2 退换货 3 营业时间"]
    assert say(app, "12月3日") == ["请选择时段：1 上午 2 下午"]


# -- the loop guard ------------------------------------------------------------------------

STRICT_GUARD = {"max_replies": 2, "pingpong_repeats": 2}


def test_a_customer_in_a_flow_is_not_cut_by_the_reply_limit(flows):
    app = flows(guard=STRICT_GUARD)

    answers = book(app)

    assert answers[-1] == ["已为您预约 12月3日 上午，联系电话 13912345678。回复TD退订"]


def test_a_customer_in_a_flow_repeating_a_refused_answer_is_not_cut_as_a_loop(flows):
    app = flows(guard=STRICT_GUARD)
    say(app, "预约")
    say(app, "12月3日")

    assert [say(app, "9") for _ in range(3)] == [["请回复 1 或 2"]] * 3


def test_a_loop_with_another_auto_responder_outside_a_flow_is_still_cut(flows):
    app = flows(guard=STRICT_GUARD)

    answers = [say(app, "营业") for _ in range(3)]

    assert answers == [["营业时间 9:00-18:00（关键词）"], [], []]


def test_the_reply_limit_still_applies_outside_a_flow(flows):
    app = flows(guard={"max_replies": 2})
    book(app)  # four replies, none cut

    assert say(app, "营业") == []


# -- the configuration ----------------------------------------------------------------------


def step(**overrides: Any) -> dict[str, Any]:
    return {"name": "s", "ask": "?", **overrides}


@pytest.mark.parametrize(
    ("flow", "problem"),
    [
        (
            {"name": "f", "cancel": ["取消"], "steps": [step()]},
            "flows[0].cancel: '取消' is an opt-out",
        ),
        (
            {"name": "f", "done": "{nope}", "steps": [step()]},
            "flows[0].done: {nope} is not a field",
        ),
        (
            {"name": "f", "steps": [step(pattern="(")]},
            "flows[0].steps[0].pattern: must be a regular",
        ),
        ({"name": "f", "steps": []}, "flows[0].steps: is required"),
        ({"name": "f", "steps": [step(ask="")]}, "flows[0].steps[0].ask: is required"),
        (
            {"name": "f", "steps": [step(choices={"1": {"label": "a", "next": "zz"}})]},
            "flows[0].steps[0].choices.1.next: 'zz' is not a step",
        ),
        (
            {"name": "f", "steps": [step(choices={"1": {"label": "a", "flow": "zz"}})]},
            "flows[0].steps[0].choices.1.flow: 'zz' is not a flow",
        ),
        ({"name": "f", "timeout": 1, "steps": [step()]}, "flows[0].timeout: must be at least"),
        ({"name": "f", "steps": [step(colour="red")]}, "flows[0].steps[0].colour: unknown key"),
    ],
)
def test_configuration_errors_name_the_dotted_key(make_app, sandbox, tmp_path, flow, problem):
    data = config_dict(sandbox, tmp_path, conversations={"flows": [flow]})
    with pytest.raises(ConfigError, match="conversations." + re.escape(problem)):
        make_app(data)


def test_two_flows_cannot_share_a_start_word(make_app, sandbox, tmp_path):
    flows = [{"name": n, "start": ["YY"], "steps": [step()]} for n in ("a", "b")]
    data = config_dict(sandbox, tmp_path, conversations={"flows": flows})
    with pytest.raises(ConfigError, match=r"conversations\.flows\[1\]\.start: 'yy' starts"):
        make_app(data)


# -- the daemon, as a subprocess -------------------------------------------------------------


@pytest.mark.stores("sqlite", "postgresql")
def test_a_booking_survives_a_kill_9_between_two_messages_and_relays_the_form_once(
    sandbox, tmp_path, receiver, daemons
):
    target = {"name": "crm", "url": receiver.url(), "secret": SECRET, "events": []}
    data = config_dict(
        sandbox,
        tmp_path,
        conversations={"flows": [BOOKING]},
        webhook={"retry_initial": 0.1, "retry_max": 0.5, "targets": [target]},
    )
    config = write_config(tmp_path / "config.toml", data)

    def exchange(text: str, replies: int) -> None:
        sandbox.inject(PHONE, text)
        wait_for(lambda: len(replies_to(sandbox, PHONE)) >= replies)

    first = daemons(config, tmp_path / "first.log")
    exchange("预约", 1)
    exchange("12月3日", 2)
    # Killed once the send is recorded: a kill between a send and its record would resend
    # it (at least once, as docs/reliability.md says), which is not what this test is about.
    wait_for(lambda: outbox_settled())
    first.kill9()
    second = daemons(config, tmp_path / "second.log")
    exchange("1", 3)
    exchange("13912345678", 4)
    wait_for(lambda: events(receiver))
    second.signal(signal.SIGTERM)
    assert second.wait() == 0

    assert replies_to(sandbox, PHONE) == [
        "请回复预约日期，例如 12月3日",
        "请选择时段：1 上午 2 下午",
        "请回复联系电话",
        "已为您预约 12月3日 上午，联系电话 13912345678。回复TD退订",
    ]
    [request] = events(receiver)
    assert request.headers["X-Responder-Signature"] == expected_signature(
        SECRET, request.headers["X-Responder-Timestamp"], request.body
    )
    assert request.json()["data"]["fields"]["slot"] == "上午"


def test_a_menu_branch_an_opt_out_and_a_timeout_as_the_daemon_runs(sandbox, tmp_path, daemons):
    third = "13700137000"
    quick = {**BOOKING, "name": "quick", "start": ["KS"], "timeout": 10, "relay": ""}
    data = config_dict(
        sandbox,
        tmp_path,
        conversations={"flows": [MENU, RETURNS, {**BOOKING, "relay": ""}, quick]},
        keywords=KEYWORDS,
    )
    daemon = daemons(write_config(tmp_path / "config.toml", data), tmp_path / "daemon.log")

    def exchange(number: str, text: str, replies: int) -> None:
        sandbox.inject(number, text)
        wait_for(lambda: len(replies_to(sandbox, number)) >= replies, timeout=30)

    exchange(PHONE, "菜单", 1)
    exchange(PHONE, "2", 2)  # 退换货: into the returns flow
    exchange(PHONE, "尺码不合适", 3)
    exchange(OTHER, "预约", 1)
    exchange(OTHER, "TD", 2)  # opt-out in the middle of the booking
    sandbox.inject(OTHER, "1")
    exchange(third, "KS", 1)
    time.sleep(quick["timeout"] + 0.5)  # the flow's silence runs out: a real wait
    exchange(third, "营业", 2)  # after the timeout: a keyword, not the date step
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0

    assert replies_to(sandbox, PHONE) == [
        "请回复数字：1 查询订单 2 退换货 3 营业时间",
        "请说明退换货原因",
        "已登记退换货：尺码不合适",
    ]
    assert len(replies_to(sandbox, OTHER)) == 2  # the ask and the opt-out confirmation
    assert "退订" in replies_to(sandbox, OTHER)[1]
    assert replies_to(sandbox, third) == [
        "请回复预约日期，例如 12月3日",
        "营业时间 9:00-18:00（关键词）",
    ]


def outbox_settled() -> bool:
    """Every reply queued in the test's store has its send recorded."""
    [(open_items,)] = store_rows(
        "SELECT COUNT(*) FROM queue_items WHERE queue = 'outbox' AND state != 'done'"
    )
    return open_items == 0


def replies_to(sandbox: Sandbox, number: str) -> list[str]:
    return [s.text for s in sandbox.sent() if number in s.numbers]


# -- docs/conversations.md: the tutorial runs ------------------------------------------------

DOC = Path(__file__).parent.parent / "docs" / "conversations.md"
BLOCK = re.compile(
    r"<!-- flows-(?P<kind>config|exchange) -->\n```\w*\n(?P<body>.*?)\n```", re.DOTALL
)


def doc_blocks(kind: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [m.group("body") for m in BLOCK.finditer(text) if m.group("kind") == kind]


def exchanges() -> list[list[tuple[str, list[str]]]]:
    """Each exchange of the tutorial: (what the customer sends, the replies it gets)."""
    found = []
    for body in doc_blocks("exchange"):
        turns: list[tuple[str, list[str]]] = []
        for line in body.splitlines():
            if line.startswith("> "):
                turns.append((line[2:], []))
            elif line.startswith("< "):
                turns[-1][1].append(line[2:])
        found.append(turns)
    return found


@pytest.fixture
def tutorial_app(make_app, sandbox, tmp_path, clock) -> App:
    sections = tomllib.loads("\n".join(doc_blocks("config")))
    return make_app(config_dict(sandbox, tmp_path, **sections), clock=clock)


def test_the_tutorial_has_its_configuration_and_exchanges():
    assert len(doc_blocks("config")) == 3
    assert len(exchanges()) == 5


@pytest.mark.parametrize("exchange", range(5))
def test_each_tutorial_exchange_goes_as_the_tutorial_shows(tutorial_app, exchange):
    number = f"1380013{exchange:04d}"
    turns = exchanges()[exchange]

    got = [(text, say(tutorial_app, text, src=number)) for text, _replies in turns]

    assert got == turns


def test_the_tutorial_booking_relays_its_form_to_crm(tutorial_app):
    for text, _replies in exchanges()[0]:
        say(tutorial_app, text)

    [item] = [
        item
        for item in tutorial_app.queue(webhook.queue_name("crm")).items("pending", 100)
        if '"type":"conversation.completed"' in item.payload["body"]
    ]
    fields = json.loads(item.payload["body"])["data"]["fields"]
    assert fields == {"date": "12月3日", "slot": "上午", "phone": "13912345678"}


# -- hand-over, check, simulate -------------------------------------------------------------


def test_a_hand_over_word_in_a_flow_hands_the_sender_over_and_ends_the_flow(flows):
    app = flows()
    say(app, "预约")

    assert say(app, "人工") == ["已为您转接人工客服，请稍候。"]
    assert say(app, "12月3日") == []  # with a person: the flow does not answer
    current = app.conversation(PHONE).current
    assert current is not None and (current.state, current.flow) == ("with_person", "")


@pytest.mark.parametrize(
    ("sections", "warning"),
    [
        (
            {"conversations": {"flows": [{**BOOKING, "relay": "nowhere"}]}},
            "conversations.flows[0].relay: 'nowhere' is not a [[webhook.targets]] name",
        ),
        (
            {
                "conversations": {"flows": [{**BOOKING, "relay": ""}]},
                "optout": {"words": ["TD", "退出"]},
            },
            "conversations.flows[0].cancel: '退出' is an [optout] word",
        ),
    ],
)
def test_check_warns_about_a_relay_without_a_target_and_a_cancel_word_optout_takes(
    tmp_path, capsys, sections, warning
):
    config = write_config(tmp_path / "config.toml", offline_config(tmp_path, **sections))

    code = main(["check", "-c", str(config)])

    assert code == 0
    assert warning in capsys.readouterr().err


def test_simulate_walks_a_flow_in_memory_and_writes_nothing(flows, tmp_path):
    app = flows()
    dry = build_app(app.settings, dry_run=True)
    try:
        replies = [
            simulate(dry, simulated_message(text, PHONE, "0888008")) for text in ("预约", "12月3日")
        ]
    finally:
        dry.close()

    assert [r.reply for r in replies] == [
        "请回复预约日期，例如 12月3日",
        "请选择时段：1 上午 2 下午",
    ]
    assert app.store.get_conversation(PHONE) is None


@pytest.mark.parametrize(
    ("text", "flow"),
    [
        ("YY", "booking"),
        ("ｙｙ 12月3日", "booking"),
        ("预约！", "booking"),
        ("预约明天", None),  # a start word is the message or its first word
        ("yyy", None),
        ("0", "menu2"),
        ("cx 1", "multi"),  # a start word with a space in it
        ("cx 12", None),
    ],
)
def test_a_start_word_is_the_whole_message_or_its_first_word(text, flow):
    settings = ConversationsSettings(
        flows=(
            Flow("booking", (Step("s", "?"),), start=("yy", "预约")),
            Flow("menu2", (Step("s", "?"),), start=("0",)),
            Flow("multi", (Step("s", "?"),), start=("cx 1",)),
        )
    )
    found = settings.started_by(normalise(text))
    assert (found[1].name if found else None) == flow
