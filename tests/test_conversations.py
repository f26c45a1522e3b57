"""Conversation state through the pipeline: staged with the message, committed with its
outcome, in memory only under dry run, and carried by webhook payloads."""

from __future__ import annotations

import argparse
import itertools
import json
import types
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import responder_plugins.webhook as webhook
from responder import App, Reply, hookimpl, pipeline
from responder.models import PLATFORM_TZ, InboundSms, Message
from responder.simulation import replay, simulate, simulate_file, simulated_message
from tests.conftest import Clock, config_dict

PHONE = "13800138000"
_ids = itertools.count(1)


class Counter:
    """A tiny flow: answers a number's messages with their count, kept in its conversation."""

    @hookimpl
    def responder_reply(self, app: App, message: Message) -> Reply:
        conversation = app.conversation(message)
        current = conversation.current
        if current is None:
            conversation.start("count", "1", fields={"n": "1"}, timeout=600, who="counter")
            return Reply("1")
        n = int(current.fields["n"]) + 1
        conversation.move(str(n), fields={"n": str(n)}, timeout=600)
        return Reply(str(n))


class StartsThenRaises:
    @hookimpl(tryfirst=True)
    def responder_reply(self, app: App, message: Message) -> None:
        app.conversation(message).start("broken", "first", who="broken")
        raise RuntimeError("plugin bug after staging")


class Peeks:
    """Records what the store and the handle show while the message is handled."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, object]] = []

    @hookimpl
    def responder_observe(self, app: App, message: Message) -> None:
        stored = app.store.get_conversation(PHONE)
        staged = app.conversation(message).current
        self.seen.append((stored, staged.step if staged else None))


def receive(app: App, text: str, src: str = PHONE) -> Message:
    sms = InboundSms(
        gateway_id=next(_ids),
        src=src,
        dst="0888008",
        text=text,
        received_at=datetime(2026, 11, 26, 9, 0, tzinfo=PLATFORM_TZ),
        raw="",
    )
    message = app.store.journal(sms)
    assert message is not None
    pipeline.process(app, message)
    return message


@pytest.fixture
def build(
    make_app: Callable[..., App], sandbox: Any, tmp_path: Path, clock: Clock
) -> Callable[..., App]:
    def make(*plugins: object, dry_run: bool = False, **sections: dict[str, Any]) -> App:
        named = tuple((type(p).__name__.lower(), p) for p in plugins)
        data = config_dict(sandbox, tmp_path, **sections)
        return make_app(data, clock=clock, dry_run=dry_run, extra_plugins=named)

    return make


def sent(app: App, message: Message) -> list[str]:
    return [row.text for row in app.store.outbox_for(message.id)]


def test_a_plugin_keeps_state_across_three_messages_from_one_number(build):
    app = build(Counter())
    answers = [sent(app, receive(app, text)) for text in ("hi", "again", "more")]
    assert answers == [["1"], ["2"], ["3"]]
    kept = app.store.get_conversation(PHONE)
    assert (kept.flow, kept.step, kept.who) == ("count", "3", "counter")
    assert dict(kept.fields) == {"n": "3"}


def test_each_number_has_its_own_conversation(build):
    app = build(Counter())
    receive(app, "hi")
    assert sent(app, receive(app, "hi", src="13900139000")) == ["1"]
    assert sent(app, receive(app, "again")) == ["2"]


def test_a_change_is_staged_until_the_message_outcome_commits(build):
    peeks = Peeks()
    app = build(Counter(), peeks)
    receive(app, "hi")
    assert peeks.seen == [(None, "1")]
    assert app.store.get_conversation(PHONE).step == "1"


def test_a_plugin_that_raises_after_staging_leaves_no_change(build):
    app = build(StartsThenRaises())
    message = receive(app, "hi")
    assert app.store.get_conversation(PHONE) is None
    assert app.store.message_state(message.id)[0] != "received"  # the outcome committed


def test_a_plugin_that_raises_drops_only_its_own_changes(build):
    app = build(Counter(), StartsThenRaises())
    receive(app, "hi")
    assert app.store.get_conversation(PHONE).flow == "count"


def test_outside_message_handling_a_change_commits_at_once(build):
    app = build()
    app.conversation(PHONE).start("survey", "q1", who="job")
    assert app.store.get_conversation(PHONE).flow == "survey"
    assert app.conversation("+86 138 0013 8000").end() is not None
    assert app.store.get_conversation(PHONE) is None


def test_an_expired_conversation_is_absent_and_starts_again(build, clock):
    app = build(Counter())
    receive(app, "hi")
    clock.advance(600)
    assert app.conversation(PHONE).current is None
    assert sent(app, receive(app, "hi")) == ["1"]


def test_a_move_with_the_wrong_expected_step_changes_nothing(build):
    app = build()
    handle = app.conversation(PHONE)
    handle.start("booking", "date")
    assert handle.move("phone", expect_step="slot") is None
    assert handle.current.step == "date"


def test_a_dry_run_carries_state_from_message_to_message_but_writes_nothing(build):
    app = build(Counter(), dry_run=True)
    texts = ("hi", "again", "more")
    answers = [simulate(app, simulated_message(t, PHONE, "0888008")).reply for t in texts]
    assert answers == ["1", "2", "3"]
    assert app.store.get_conversation(PHONE) is None
    assert app.store.conversations(account=None) == []


def test_a_dry_run_processing_a_message_stages_but_never_applies(build):
    app = build(Counter(), dry_run=True)
    receive(app, "hi")
    receive(app, "again")
    assert app.store.get_conversation(PHONE) is None
    assert app.conversation(PHONE).current.step == "2"


def test_simulate_file_shows_every_step_of_a_recorded_exchange(build, tmp_path, capsys):
    app = build(Counter(), dry_run=True)
    recorded = tmp_path / "exchange.csv"
    recorded.write_text(f"src,text\n{PHONE},hi\n{PHONE},again\n{PHONE},more\n", encoding="utf-8")
    args = argparse.Namespace(file=str(recorded), json=True)
    assert simulate_file(app, args, "0888008") == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["reply"] for line in lines] == ["1", "2", "3"]
    assert app.store.get_conversation(PHONE) is None


@pytest.mark.parametrize(("plugins", "expected"), [((), None), ((Counter(),), "1")])
def test_the_webhook_payload_carries_the_senders_conversation(build, plugins, expected):
    target = {"name": "crm", "url": "http://127.0.0.1:9/hook", "secret": "s" * 16}
    app = build(*plugins, webhook={"targets": [target]})
    receive(app, "hi")
    [item] = app.queue(webhook.queue_name("crm")).items("pending", 10)
    body = json.loads(item.payload["body"])
    if expected is None:
        assert body["conversation"] is None
    else:
        carried = body["conversation"]
        assert (carried["flow"], carried["step"], carried["fields"]) == ("count", "1", {"n": "1"})
        assert carried["context"] == {}


def docs_example() -> types.ModuleType:
    """The feedback plugin of "Conversation state" in docs/plugins.md, as a module."""
    text = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text.split("### Conversation state: `app.conversation`", 1)[1]
    code = section.split("```python\n", 1)[1].split("\n```", 1)[0]
    module = types.ModuleType("feedback")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    return module


def test_the_documented_example_runs_a_form_over_three_messages(build):
    app = build(docs_example())
    asked = sent(app, receive(app, "评价"))
    thanked = sent(app, receive(app, "5"))
    assert app.store.get_conversation(PHONE).fields == {"score": "5"}
    done = sent(app, receive(app, "服务很好"))
    assert (asked, thanked) == (["请为本次服务打分，回复1-5"], ["谢谢！还有什么想对我们说的吗？"])
    assert done == ["已收到您的5分评价和留言，谢谢！"]
    assert app.store.get_conversation(PHONE) is None


def test_replay_runs_the_recorded_exchange_in_its_conversation(build, clock, capsys):
    live = build(Counter())
    for text in ("hi", "again", "more"):
        receive(live, text)
        clock.advance(60)
    dry = build(Counter(), dry_run=True)
    args = argparse.Namespace(json=True, all=True, since="")
    capsys.readouterr()
    assert replay(dry, 0.0, args) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [json.loads(line) for line in out if line.startswith("{")]
    assert [line["reply"] for line in lines] == ["1", "2", "3"]
    assert not any(line["differs"] for line in lines)
    assert dry.store.get_conversation(PHONE).step == "3"  # as the live run left it
