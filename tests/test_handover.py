"""Hand-over to a person: the words, the silence, the event, the staff commands, expiry."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

import responder_plugins.handover as handover
import responder_plugins.webhook as webhook
from responder import PLATFORM_TZ, WITH_PERSON, App, InboundSms, Message
from responder.cli import main
from responder.config import ConfigError
from responder.pipeline import apply_late_replies, process
from tests.conftest import Clock, config_dict, offline_config, wait_for, write_config
from tests.webhook_receiver import Receiver

RULES = {"rules": [{"keywords": ["CX", "查询"], "reply": "已受理"}]}
CUSTOMER = "13800138000"
OTHER = "13911020005"
SIGNATURE = "【速达快递】"
SECRET = "whsec-handover-test-0123456789"
CONFIRM = handover.DEFAULT_CONFIRM
_ids = itertools.count(1)


def receive(app: App, text: str, src: str = CUSTOMER) -> tuple[Message, tuple[str, ...]]:
    """Journal an SMS and process it as the daemon does: the message, the parts queued."""
    sms = InboundSms(
        gateway_id=next(_ids), src=src, dst="0888008", text=text, received_at=None, raw=""
    )
    message = app.store.journal(sms)
    assert message is not None
    decision = process(app, message)
    return message, decision.composed.parts if decision.composed else ()


@pytest.fixture
def now_clock() -> Clock:
    """A manual clock starting at the real time, so that commands (real clock) agree."""
    return Clock(time.time())


@pytest.fixture
def build(sandbox, tmp_path, make_app, now_clock) -> Iterator[Callable[..., App]]:
    """A started App on the sandbox's config (written to tmp_path/config.toml too)."""
    started: list[App] = []

    def make(**sections: dict[str, Any]) -> App:
        data = config_dict(
            sandbox,
            tmp_path,
            keywords=RULES,
            replies={"signature": SIGNATURE, "retry_initial": 0.1, "retry_max": 0.5},
            **sections,
        )
        write_config(tmp_path / "config.toml", data)
        app = make_app(data, clock=now_clock)
        app.plugins.hook.responder_startup(app=app)
        started.append(app)
        return app

    yield make
    for app in started:
        app.plugins.hook.responder_shutdown(app=app)


@pytest.fixture
def app(build) -> App:
    return build()


@pytest.fixture
def config(tmp_path, app) -> str:
    return str(tmp_path / "config.toml")


def cli(config: str, *argv: str) -> int:
    return main([*argv, "-c", config])


# -- the words -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("人工", "人工"),
        ("人工，谢谢", "人工"),
        ("客服", "客服"),
        ("我要投诉", "投诉"),
        ("转人工客服", "人工"),
        ("CX", None),
        ("你好", None),
        ("这是一条很长的消息，讲了很多事情，最后顺便提到一下投诉的事情但是并不是真的要人", None),
    ],
)
def test_handover_words_match_whole_first_word_or_inside_a_short_message(text, word):
    settings = handover.default_settings()
    assert handover.asks_for_person(settings, text) == word


def test_a_handover_word_puts_the_sender_with_a_person_and_confirms(app, now_clock):
    _message, parts = receive(app, "人工")

    assert parts == (f"{SIGNATURE}{CONFIRM}",)
    conversation = app.conversation(CUSTOMER).current
    assert conversation is not None
    assert conversation.state == WITH_PERSON
    assert conversation.expires_at == now_clock() + handover.DEFAULT_TIMEOUT


def test_the_bot_is_silent_for_that_number_while_others_are_answered(app):
    receive(app, "人工")

    _message, silent = receive(app, "CX")
    _message, answered = receive(app, "CX", src=OTHER)

    assert silent == ()
    assert answered == (f"{SIGNATURE}已受理",)


def test_a_second_handover_word_gets_no_second_confirmation(app):
    receive(app, "人工")
    assert receive(app, "人工")[1] == ()


def test_messages_while_with_a_person_are_still_journaled(app):
    receive(app, "人工")
    message, _parts = receive(app, "我的快递到哪了")
    assert app.store.texts_from(CUSTOMER, since=0, limit=1) == [message.text]


def test_an_optout_word_still_answers_and_ends_the_handover(app):
    receive(app, "人工")

    _message, parts = receive(app, "TD")

    assert len(parts) == 1 and "退订" in parts[0]
    assert app.conversation(CUSTOMER).current is None


def test_the_handover_ends_by_itself_after_the_timeout(build, now_clock):
    app = build(handover={"timeout": 600})
    receive(app, "人工")
    now_clock.advance(599)
    assert receive(app, "CX")[1] == ()

    now_clock.advance(2)

    assert app.conversation(CUSTOMER).current is None
    assert receive(app, "CX")[1] == (f"{SIGNATURE}已受理",)


def test_when_closed_the_confirmation_says_when_a_person_answers(build, now_clock):
    # A Monday 22:00 (platform time); the hours open at 09:00 the next day.
    now_clock.now = datetime(2026, 11, 30, 22, 0, tzinfo=PLATFORM_TZ).timestamp()
    app = build(
        hours={"weekdays": "09:00-18:00"},
        handover={"closed_confirm": "人工客服将于{opens}回复您。"},
    )

    _message, parts = receive(app, "人工")

    assert parts == (f"{SIGNATURE}人工客服将于12月1日 09:00回复您。",)
    assert app.conversation(CUSTOMER).with_person


def test_a_plugin_can_hand_a_sender_over_outside_message_handling(app):
    app.conversation(CUSTOMER).hand_over(timeout=60, who="crm")
    assert receive(app, "CX")[1] == ()


def test_simulate_file_shows_the_silence_while_with_a_person(app, config, tmp_path, capsys):
    recorded = tmp_path / "exchange.csv"
    recorded.write_text(f"src,text\n{CUSTOMER},人工\n{CUSTOMER},CX\n{OTHER},CX\n", encoding="utf-8")
    capsys.readouterr()

    assert cli(config, "simulate", "--file", str(recorded)) == 0

    lines = capsys.readouterr().out.splitlines()
    assert "handover" in lines[2] and CONFIRM in lines[2]
    assert "(none: the sender is with a person" in lines[3]
    assert "已受理" in lines[4]
    assert app.conversation(CUSTOMER).current is None  # nothing written


# -- the event -------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def deliver(app: App) -> None:
    engine = app.stash[webhook.ENGINE]
    engine.tick()
    assert engine.wait(15)
    apply_late_replies(app, limit=100)


def test_the_event_reaches_a_subscribed_webhook_once_signed(build, receiver):
    target = {
        "name": "staff",
        "url": receiver.url(),
        "secret": SECRET,
        "timeout": 2,
        "events": ["handover.requested"],
    }
    app = build(webhook={"targets": [target]})
    receive(app, "人工")
    receive(app, "人工")  # already with a person: no second event

    deliver(app)
    deliver(app)

    events = [r for r in receiver.received() if r.json().get("type") == "handover.requested"]
    [request] = events
    timestamp = request.headers["X-Responder-Timestamp"]
    mac = hmac.new(SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256)
    assert request.headers["X-Responder-Signature"] == "sha256=" + mac.hexdigest()
    document = request.json()
    assert (document["number"], document["data"]["text"]) == (CUSTOMER, "人工")


def test_messages_while_with_a_person_are_still_relayed(build, receiver):
    target = {"name": "crm", "url": receiver.url(), "secret": SECRET, "timeout": 2}
    app = build(webhook={"targets": [target]})
    receive(app, "人工")
    receive(app, "我的快递到哪了")

    deliver(app)

    relayed = [r.json()["text"] for r in receiver.received() if "text" in r.json()]
    assert sorted(relayed) == sorted(["人工", "我的快递到哪了"])


# -- the commands ----------------------------------------------------------------------------


def test_reply_sends_through_the_signature_and_journal(app, config, sandbox, capsys):
    receive(app, "人工")
    sandbox_before = len(sandbox.sent())

    assert cli(config, "reply", CUSTOMER, "-m", "您好，我是客服小王") == 0

    sent = sandbox.sent()[sandbox_before:]
    expected = f"{SIGNATURE}您好，我是客服小王"
    assert [(sms.numbers, sms.text) for sms in sent] == [((CUSTOMER,), expected)]
    assert [line.text for line in app.store.exchange(CUSTOMER, limit=1)] == [
        f"{SIGNATURE}您好，我是客服小王"
    ]


def test_reply_is_refused_for_an_opted_out_number(app, config, sandbox, capsys):
    assert cli(config, "optout", "add", CUSTOMER) == 0
    before = len(sandbox.sent())

    assert cli(config, "reply", CUSTOMER, "-m", "您好") == 1

    assert len(sandbox.sent()) == before
    assert f"not sent: {CUSTOMER} (opted out (by optout))" in capsys.readouterr().out


def test_release_gives_the_number_back_to_the_bot(app, config, capsys):
    receive(app, "人工")

    assert cli(config, "handover", "release", CUSTOMER) == 0

    assert receive(app, "CX")[1] == (f"{SIGNATURE}已受理",)
    assert cli(config, "handover", "release", CUSTOMER) == 1


def test_list_shows_who_waits_since_when_and_their_last_messages(app, config, capsys):
    receive(app, "人工")
    receive(app, "我的快递丢了")
    capsys.readouterr()

    assert cli(config, "handover", "list") == 0

    out = capsys.readouterr().out
    assert f"{CUSTOMER}  waiting since " in out
    assert out.index("> 人工") < out.index("> 我的快递丢了")


def test_list_says_when_nobody_waits(app, config, capsys):
    assert cli(config, "handover", "list") == 0
    assert "nobody is waiting for a person" in capsys.readouterr().out


def test_conversation_show_lists_both_directions_in_order(app, config, capsys):
    receive(app, "CX")
    receive(app, "人工")
    assert cli(config, "reply", CUSTOMER, "-m", "马上为您处理") == 0
    capsys.readouterr()

    assert cli(config, "conversation", "show", CUSTOMER) == 0

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{CUSTOMER}: with a person since ")
    shown = [line.split(" ", 2)[2] for line in lines[1:]]
    assert shown == [
        "< CX",
        f"> {SIGNATURE}已受理 [keywords]",
        "< 人工",
        f"> {SIGNATURE}{CONFIRM} [handover]",
        f"> {SIGNATURE}马上为您处理 [send]",
    ]


def test_status_counts_the_customers_waiting(app):
    receive(app, "人工")
    receive(app, "客服", src=OTHER)
    [section] = [s for s in app.status_sections() if s.title == "handover"]
    assert dict(section.figures) == {"waiting for a person": 2}


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "error"),
    [
        ({"words": [""]}, r"handover\.words: must not contain an empty word"),
        ({"timeout": 0}, r"handover\.timeout: must be more than 0"),
        ({"closed_confirm": "{when}"}, r"handover\.closed_confirm: only \{opens\}"),
        ({"confirm": 1}, r"handover\.confirm"),
    ],
)
def test_bad_settings_are_errors_naming_the_key(sandbox, tmp_path, make_app, section, error):
    with pytest.raises(ConfigError, match=error):
        make_app(config_dict(sandbox, tmp_path, handover=section))


# -- the daemon, as a subprocess ---------------------------------------------------------------


@pytest.mark.stores("sqlite", "postgresql")
def test_the_daemon_pauses_for_that_number_until_release(sandbox, tmp_path, daemons):
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    config = write_config(tmp_path / "config.toml", data)
    daemon = daemons(config, tmp_path / "daemon.log")

    def texts_to(number: str) -> list[str]:
        return [sms.text for sms in sandbox.sent() if number in sms.numbers]

    sandbox.inject(CUSTOMER, "人工")
    sandbox.inject(CUSTOMER, "CX")
    sandbox.inject(OTHER, "CX")  # processed after the customer's "CX"
    wait_for(lambda: texts_to(OTHER))
    assert texts_to(CUSTOMER) == [CONFIRM]

    assert main(["handover", "release", CUSTOMER, "-c", str(config)]) == 0
    sandbox.inject(CUSTOMER, "CX")
    wait_for(lambda: len(texts_to(CUSTOMER)) == 2)

    assert texts_to(CUSTOMER) == [CONFIRM, "已受理"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_check_warns_about_a_notify_that_names_no_webhook_target(tmp_path, capsys):
    data = offline_config(tmp_path, handover={"notify": "staf"})
    config = write_config(tmp_path / "config.toml", data)
    assert main(["check", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    assert "handover.notify: 'staf' is not a [[webhook.targets]] name" in err
