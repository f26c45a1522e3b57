"""One message through the pipeline: journal, plugins, composition, outbox, send."""

from __future__ import annotations

from datetime import datetime

import pytest

from responder import hookimpl, pipeline, sending
from responder.models import PLATFORM_TZ, InboundSms, Reply, Veto
from responder.store import IGNORED, PROCESSED, REPLIED, StoreError
from tests.conftest import config_dict

RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理"}]}


def inbound(text: str, src: str = "13800138000", gateway_id: int = 1) -> InboundSms:
    return InboundSms(
        gateway_id=gateway_id,
        src=src,
        dst="0888008",
        text=text,
        received_at=datetime(2026, 11, 26, 9, 0, tzinfo=PLATFORM_TZ),
        raw=f"id={gateway_id}&msg={text}",
    )


class Answer:
    def __init__(self, text: str) -> None:
        self.text = text

    @hookimpl
    def responder_reply(self, message):
        return Reply(text=self.text)


class Raises:
    @hookimpl
    def responder_filter(self, message):
        raise RuntimeError("filter bug")

    @hookimpl
    def responder_reply(self, message):
        raise RuntimeError("reply bug")

    @hookimpl
    def responder_observe(self, message):
        raise RuntimeError("observer bug")

    @hookimpl
    def responder_before_send(self, reply):
        raise RuntimeError("before-send bug")


def decided_by(app, message_id: int) -> str:
    """Who the store says decided the message's drop or veto."""
    return app.store.query("SELECT decided_by FROM messages WHERE id = ?", (message_id,))[0][0]


class Observer:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    @hookimpl
    def responder_observe(self, message, reply, dropped):
        self.seen.append((message.text, reply.text if reply else None, dropped))


def test_a_journaled_message_gets_its_reply_queued(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    message = app.store.journal(inbound("CX"))
    decision = pipeline.process(app, message)
    assert decision.final.text == "已受理"
    assert app.store.message_state(message.id) == (PROCESSED, "")
    [row] = app.store.outbox_for(message.id)
    assert (row.recipients, row.text, row.plugin) == (("13800138000",), "已受理", "keywords")


def test_the_queued_reply_is_sent_and_the_message_marked_replied(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    message = app.store.journal(inbound("CX"))
    pipeline.process(app, message)
    assert sending.send_due(app) == 1
    assert [(s.numbers, s.text) for s in sandbox.sent()] == [(("13800138000",), "已受理")]
    assert app.store.message_state(message.id)[0] == REPLIED


def test_a_message_is_journaled_only_once_per_gateway_id(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    assert app.store.journal(inbound("CX", gateway_id=9)) is not None
    assert app.store.journal(inbound("CX", gateway_id=9)) is None


def test_messages_are_processed_in_arrival_order(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    for number, text in enumerate(["first", "second", "third"], start=1):
        app.store.journal(inbound(text, gateway_id=number))
    order = []
    while (message := app.store.next_unprocessed()) is not None:
        order.append(message.text)
        pipeline.process(app, message)
    assert order == ["first", "second", "third"]


def test_a_plugin_that_raises_does_not_stop_the_others(sandbox, tmp_path, make_app):
    observer = Observer()
    app = make_app(
        config_dict(sandbox, tmp_path, keywords=RULES),
        extra_plugins=(("raises", Raises()), ("observer", observer)),
    )
    decision = pipeline.process(app, app.store.journal(inbound("CX")))
    assert decision.final.text == "已受理"
    assert observer.seen == [("CX", "已受理", None)]
    assert app.plugins.calls.failures == {"raises": 4}


def test_a_user_plugin_answers_before_the_built_in_keywords(sandbox, tmp_path, make_app):
    app = make_app(
        config_dict(sandbox, tmp_path, keywords=RULES), extra_plugins=(("mine", Answer("mine")),)
    )
    decision = pipeline.process(app, app.store.journal(inbound("CX")))
    assert (decision.final.text, decision.final.plugin) == ("mine", "mine")


def test_an_empty_reply_sends_nothing_and_stops_other_plugins(sandbox, tmp_path, make_app):
    app = make_app(
        config_dict(sandbox, tmp_path, keywords=RULES), extra_plugins=(("quiet", Answer("")),)
    )
    message = app.store.journal(inbound("CX"))
    decision = pipeline.process(app, message)
    assert decision.final is None
    assert app.store.outbox_for(message.id) == []
    assert app.store.message_state(message.id) == (IGNORED, "empty reply")


def test_a_veto_cancels_the_reply_and_records_who_and_why(sandbox, tmp_path, make_app):
    class QuietHours:
        @hookimpl
        def responder_before_send(self, reply):
            return Veto("quiet hours")

    app = make_app(
        config_dict(sandbox, tmp_path, keywords=RULES), extra_plugins=(("quiet", QuietHours()),)
    )
    message = app.store.journal(inbound("CX"))
    pipeline.process(app, message)
    assert app.store.message_state(message.id) == (IGNORED, "quiet hours")
    assert decided_by(app, message.id) == "quiet"


def test_before_send_hooks_see_each_others_changes(sandbox, tmp_path, make_app):
    class Upper:
        @hookimpl
        def responder_before_send(self, reply):
            return Reply(text=reply.text.upper(), plugin=reply.plugin)

    class Exclaim:
        @hookimpl
        def responder_before_send(self, reply):
            return Reply(text=reply.text + "!", plugin=reply.plugin)

    app = make_app(
        config_dict(sandbox, tmp_path),
        extra_plugins=(("answer", Answer("ok")), ("upper", Upper()), ("exclaim", Exclaim())),
    )
    decision = pipeline.process(app, app.store.journal(inbound("hi")))
    assert decision.final.text == "OK!"


def test_a_dropped_message_gets_no_reply_but_observers_see_it(sandbox, tmp_path, make_app):
    class Block:
        @hookimpl
        def responder_filter(self, message):
            return "blocked number"

    observer = Observer()
    app = make_app(
        config_dict(sandbox, tmp_path, keywords=RULES),
        extra_plugins=(("block", Block()), ("observer", observer)),
    )
    message = app.store.journal(inbound("CX"))
    pipeline.process(app, message)
    assert app.store.message_state(message.id) == (IGNORED, "blocked number")
    assert decided_by(app, message.id) == "block"
    assert observer.seen == [("CX", None, "blocked number")]


@pytest.mark.parametrize(
    ("position", "check"),
    [("prefix", str.startswith), ("suffix", str.endswith)],
)
def test_the_signature_is_on_every_part_and_counted_in_its_70(
    sandbox, tmp_path, make_app, position, check
):
    data = config_dict(
        sandbox, tmp_path, replies={"signature": "【某某公司】", "signature_position": position}
    )
    app = make_app(data, extra_plugins=(("long", Answer("长" * 100)),))
    decision = pipeline.process(app, app.store.journal(inbound("hi")))
    parts = decision.composed.parts
    assert len(parts) == 2
    assert all(len(p) <= 70 and check(p, "【某某公司】") for p in parts)


SIGNATURE = "【速达快递】"


@pytest.mark.parametrize(
    ("position", "text", "parts"),
    [
        ("prefix", "退订成功", ("【速达快递】退订成功",)),
        ("prefix", "【速达快递】退订成功", ("【速达快递】退订成功",)),
        ("prefix", " 【速达快递】 退订成功 ", ("【速达快递】退订成功",)),
        ("prefix", "退订成功【速达快递】", ("【速达快递】退订成功",)),
        ("suffix", "【速达快递】退订成功", ("退订成功【速达快递】",)),
        ("suffix", "退订成功【速达快递】", ("退订成功【速达快递】",)),
        ("prefix", "您好，【速达快递】提醒您取件", ("您好，【速达快递】提醒您取件",)),
        ("prefix", "【速达快递】", ()),
        ("prefix", "【某某公司】退订成功", ("【速达快递】【某某公司】退订成功",)),
    ],
)
def test_the_signature_is_never_added_twice(sandbox, tmp_path, make_app, position, text, parts):
    replies = {"signature": SIGNATURE, "signature_position": position}
    app = make_app(config_dict(sandbox, tmp_path, replies=replies))
    assert pipeline.compose(app, text).parts == parts


def test_a_long_reply_holding_the_signature_has_it_once_on_every_part(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, replies={"signature": SIGNATURE}))
    parts = pipeline.compose(app, SIGNATURE + "长" * 100).parts
    assert len(parts) == 2
    assert all(part.startswith(SIGNATURE) and part.count(SIGNATURE) == 1 for part in parts)


def test_a_reply_longer_than_max_parts_is_cut_with_an_ellipsis(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, replies={"max_parts": 2})
    app = make_app(data, extra_plugins=(("long", Answer("长" * 500)),))
    decision = pipeline.process(app, app.store.journal(inbound("hi")))
    assert decision.composed.truncated
    assert len(decision.composed.parts) == 2
    assert "…" in decision.composed.parts[-1]


def test_a_reply_with_only_unsendable_characters_becomes_placeholders(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path), extra_plugins=(("emoji", Answer("👍")),))
    decision = pipeline.process(app, app.store.journal(inbound("hi")))
    assert decision.composed.parts == ("□",)
    assert decision.composed.replaced == 1


def test_a_reply_to_other_numbers_is_queued_to_them(sandbox, tmp_path, make_app):
    class Forward:
        @hookimpl
        def responder_reply(self, message):
            return Reply(text="转接", to=("13900139000", "13700137000"))

    app = make_app(config_dict(sandbox, tmp_path), extra_plugins=(("forward", Forward()),))
    message = app.store.journal(inbound("hi"))
    pipeline.process(app, message)
    [row] = app.store.outbox_for(message.id)
    assert row.recipients == ("13900139000", "13700137000")


def test_reply_later_goes_through_before_send(sandbox, tmp_path, make_app):
    class Veto_:
        @hookimpl
        def responder_before_send(self, reply):
            return Veto("no") if reply.text == "bad" else None

    app = make_app(config_dict(sandbox, tmp_path), extra_plugins=(("veto", Veto_()),))
    message = app.store.journal(inbound("hi"))
    pipeline.process(app, message)
    assert app.reply_later(message, Reply(text="bad")) is True  # queued; judged when applied
    assert app.reply_later(message, Reply(text="good", plugin="late")) is True
    assert app.store.outbox_for(message.id) == []  # nothing until the processing thread
    while pipeline.apply_late_replies(app):
        pass
    assert [r.text for r in app.store.outbox_for(message.id)] == ["good"]


def test_a_store_failure_inside_a_plugin_is_not_swallowed(sandbox, tmp_path, make_app):
    """A suppression list that cannot be read must not let replies through: it stops."""

    class BrokenStore:
        @hookimpl
        def responder_before_send(self, reply):
            raise StoreError("disk I/O error")

    app = make_app(
        config_dict(sandbox, tmp_path, keywords=RULES), extra_plugins=(("broken", BrokenStore()),)
    )
    message = app.store.journal(inbound("CX"))
    with pytest.raises(StoreError):
        pipeline.process(app, message)
    assert app.store.message_state(message.id)[0] == "received"
    assert app.store.outbox_for(message.id) == []


def test_a_reply_to_many_numbers_is_one_outbox_row_per_request(sandbox, tmp_path, make_app):
    numbers = tuple(f"1390013{i:04d}" for i in range(5))

    class Broadcast:
        @hookimpl
        def responder_reply(self, message):
            return Reply(text="通知", to=numbers)

    data = config_dict(sandbox, tmp_path, gateway={"max_recipients": 2})
    app = make_app(data, extra_plugins=(("broadcast", Broadcast()),))
    message = app.store.journal(inbound("hi"))
    pipeline.process(app, message)
    rows = app.store.outbox_for(message.id)
    assert [row.recipients for row in rows] == [numbers[0:2], numbers[2:4], numbers[4:]]
