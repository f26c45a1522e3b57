"""Opt-out (退订): recognising the words, the suppression list, the veto, the command."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

import responder_plugins.optout as optout
from responder import OPTED_OUT, hookimpl
from responder.cli import main
from responder.config import ConfigError, Table
from responder.models import InboundSms, Message, Reply
from responder.pipeline import apply_late_replies, decide, process
from tests.conftest import config_dict, write_config

RULES = {"rules": [{"keywords": ["CX", "查询"], "reply": "已受理"}]}
CONFIRMATION = optout.DEFAULT_CONFIRMATION
CUSTOMER = "13800138000"
_ids = itertools.count(1)


def journal(app, text: str, src: str = CUSTOMER, dst: str = "0888008") -> Message:
    sms = InboundSms(gateway_id=next(_ids), src=src, dst=dst, text=text, received_at=None, raw=text)
    message = app.store.journal(sms)
    assert message is not None
    return message


def sent(app, text: str, src: str = CUSTOMER) -> tuple[str, ...]:
    """Process a message; the SMS parts queued for it."""
    decision = process(app, journal(app, text, src))
    return decision.composed.parts if decision.composed else ()


@pytest.fixture
def start_app(make_app):
    """``make_app``, then ``responder_startup`` as the daemon runs it (it creates the list)."""

    def make(data: dict[str, Any], **kwargs: Any):
        app = make_app(data, **kwargs)
        app.plugins.hook.responder_startup(app=app)
        return app

    return make


@pytest.fixture
def app(sandbox, tmp_path, start_app, clock):
    return start_app(config_dict(sandbox, tmp_path, keywords=RULES), clock=clock)


LONG = "你好，我想问一下我上周寄的快递到哪里了，顺便说一下我已经退订了你们的广告"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Latin words: the whole message, or its first word before a space or punctuation
        ("TD", "td"),
        ("td", "td"),
        ("ＴＤ", "td"),
        ("T", "t"),
        ("n", "n"),
        ("R", "r"),
        ("STOP", "stop"),
        ("Stop. Thank you", "stop"),
        ("stop!", "stop"),
        ("unsubscribe", "unsubscribe"),
        ("TD 谢谢", "td"),
        ("TDXX", None),
        ("TD123", None),
        ("Stopwatch", None),
        ("Nice", None),
        ("please stop", None),
        ("回复TD", None),
        ("CX", None),
        # Chinese words in optout.words: the whole message or its first word
        ("退订", "退订"),
        (" 退订 ", "退订"),
        ("退订。", "退订"),
        ("退订，谢谢", "退订"),
        ("取消", "取消"),
        ("取消，谢谢", "取消"),
        ("取消订单", None),
        ("我要取消订单", None),
        ("退", None),
        # optout.anywhere_words: anywhere in a message of up to 30 characters
        ("我要退订", "退订"),
        ("我想退订", "退订"),
        ("请帮我退订谢谢", "退订"),
        ("请帮我退订，谢谢！", "退订"),
        ("退订短信", "退订"),
        ("不要退订", "退订"),
        ("我拒收", "拒收"),
        ("取消订阅", "取消订阅"),
        ("我要取消订阅", "取消订阅"),
        ("麻烦取消订阅吧", "取消订阅"),
        (LONG[:30], "退订"),
        (LONG, None),
    ],
)
def test_which_texts_are_unsubscribe_words(text, expected):
    found = optout.classify(optout.parse(_table({})), text)
    assert found == (None if expected is None else ("unsubscribe", expected))


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"anywhere_words": ["STOP"]}, "optout.anywhere_words: 'stop' would be found inside"),
        ({"anywhere_words": [""]}, "optout.anywhere_words: must not contain an empty word"),
        (
            {"anywhere_words": ["订阅"]},
            "optout.resubscribe_words: '订阅' contains '订阅' (optout.anywhere_words)",
        ),
    ],
)
def test_anywhere_words_that_cannot_work_are_config_errors(section, expected):
    problems: list[str] = []
    optout.parse(Table(section, file="config.toml", prefix="optout", problems=problems))
    assert any(expected in problem for problem in problems), problems


def _table(data: dict[str, Any]) -> Table:
    return Table(data, file="config.toml", prefix="optout", problems=[])


def test_an_opt_out_is_confirmed_once_and_suppresses_later_replies(app):
    assert sent(app, "TD") == (CONFIRMATION,)
    assert optout.is_opted_out(app, CUSTOMER)
    decision = process(app, journal(app, "CX"))
    assert decision.final is None
    assert (decision.vetoed, decision.decided_by) == ("opted out", "optout")
    assert app.store.message_state(decision.message.id) == ("ignored", "opted out")
    assert sent(app, "退订") == ()


def test_the_confirmation_wins_over_a_keyword_rule_with_the_same_word(sandbox, tmp_path, start_app):
    rules = {"rules": [{"keywords": ["TD"], "reply": "keyword TD"}]}
    app = start_app(config_dict(sandbox, tmp_path, keywords=rules))
    assert sent(app, "TD") == (CONFIRMATION,)


def test_a_keyword_that_only_starts_like_an_unsubscribe_word_still_works(
    sandbox, tmp_path, start_app
):
    rules = {"rules": [{"keywords": ["TDXX"], "reply": "keyword TDXX"}]}
    app = start_app(config_dict(sandbox, tmp_path, keywords=rules))
    assert sent(app, "tdxx") == ("keyword TDXX",)
    assert not optout.is_opted_out(app, CUSTOMER)


def test_an_empty_confirmation_sends_nothing_but_still_records(sandbox, tmp_path, start_app):
    data = config_dict(sandbox, tmp_path, keywords=RULES, optout={"confirmation": ""})
    app = start_app(data)
    assert sent(app, "TD") == ()
    assert optout.is_opted_out(app, CUSTOMER)


def test_configured_words_replace_the_defaults(sandbox, tmp_path, start_app):
    data = config_dict(sandbox, tmp_path, keywords=RULES, optout={"words": ["不要了"]})
    app = start_app(data)
    assert sent(app, "TD") == ()  # no rule, no fallback: no answer, not an opt-out
    assert not optout.is_opted_out(app, CUSTOMER)
    assert sent(app, "不要了！") == (CONFIRMATION,)


def test_a_resubscribe_word_takes_the_number_off_the_list(app):
    sent(app, "TD")
    assert sent(app, "订阅") == (optout.DEFAULT_RESUBSCRIBED,)
    assert not optout.is_opted_out(app, CUSTOMER)
    assert sent(app, "CX") == ("已受理",)


def test_a_resubscribe_word_from_a_number_not_opted_out_is_left_to_other_rules(
    sandbox, tmp_path, start_app
):
    rules = {"rules": [{"keywords": ["start"], "reply": "开始"}]}
    app = start_app(config_dict(sandbox, tmp_path, keywords=rules))
    assert sent(app, "START") == ("开始",)


def test_numbers_are_compared_without_the_country_code(app):
    sent(app, "TD", src="+86 138 0013 8000")
    assert optout.is_opted_out(app, "13800138000")
    assert optout.is_opted_out(app, "008613800138000")


class ThirdParty:
    """A user plugin answering everything, and relaying to a colleague too."""

    def __init__(self) -> None:
        self.observed: list[tuple[str, bool]] = []

    @hookimpl
    def responder_reply(self, app, message):
        return Reply(text="third-party answer")

    @hookimpl
    def responder_observe(self, app, message):
        self.observed.append((message.text, optout.is_opted_out(app, message.src)))


def test_a_third_party_reply_to_an_opted_out_number_is_vetoed(sandbox, tmp_path, start_app):
    plugin = ThirdParty()
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    app = start_app(data, extra_plugins=(("thirdparty", plugin),))
    assert sent(app, "hello") == ("third-party answer",)
    assert sent(app, "TD") == (CONFIRMATION,)
    decision = process(app, journal(app, "hello again"))
    assert decision.reply.plugin == "thirdparty"
    assert (decision.vetoed, decision.decided_by) == ("opted out", "optout")
    # Observers still see the message, and can tell the number opted out.
    assert plugin.observed[-1] == ("hello again", True)


class Relay:
    @hookimpl
    def responder_reply(self, app, message):
        return Reply(text=f"from {message.src}: {message.text}", to=("13900139000", message.src))


def test_a_reply_to_several_numbers_loses_only_the_opted_out_ones(sandbox, tmp_path, start_app):
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    app = start_app(data, extra_plugins=(("relay", Relay()),))
    optout.add_number(app, CUSTOMER, message_id=None, source="manual", text="")
    decision = process(app, journal(app, "hello"))
    assert decision.final.to == ("13900139000",)
    assert [row.recipients for row in app.store.outbox_for(decision.message.id)] == [
        ("13900139000",)
    ]


def test_a_late_reply_to_an_opted_out_number_is_vetoed(app):
    first = journal(app, "CX")
    process(app, first)
    sent(app, "TD")
    assert app.reply_later(first, Reply(text="later", plugin="webhook"))
    apply_late_replies(app)  # as the processing thread does
    assert [row.text for row in app.store.outbox_for(first.id)] == ["已受理"]
    assert app.store.message_state(first.id)[1] == "opted out"


def test_a_dropped_unsubscribe_message_is_still_recorded(sandbox, tmp_path, start_app):
    data = config_dict(sandbox, tmp_path, keywords=RULES, guard={"ignore": [CUSTOMER]})
    app = start_app(data)
    decision = process(app, journal(app, "TD"))
    assert (decision.dropped, decision.decided_by) == ("on the ignore list", "guard")
    assert optout.is_opted_out(app, CUSTOMER)


def test_reprocessing_the_same_message_confirms_again(app):
    """After a crash between recording and committing, the confirmation is not lost."""
    message = journal(app, "TD")
    app.plugins.hook.responder_observe(app=app, message=message, reply=None, dropped=None)
    assert decide(app, message).composed.parts == (CONFIRMATION,)


def test_a_dry_run_records_nothing_but_remembers_within_the_simulation(
    sandbox, tmp_path, start_app, make_app
):
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    live = start_app(data)
    dry = make_app(data, dry_run=True)
    message = journal(live, "TD")
    assert decide(dry, message).composed.parts == (CONFIRMATION,)
    assert decide(dry, journal(live, "CX")).vetoed == "opted out"
    assert not optout.is_opted_out(live, CUSTOMER)
    assert live.store.query("SELECT COUNT(*) FROM optout_numbers")[0][0] == 0


def test_a_store_the_daemon_never_prepared_has_an_empty_list(sandbox, tmp_path, make_app):
    dry = make_app(config_dict(sandbox, tmp_path, keywords=RULES), dry_run=True)

    assert not optout.is_opted_out(dry, CUSTOMER)
    assert decide(dry, dry_message("CX")).composed.parts == ("已受理",)
    assert dict(optout.responder_status(app=dry).figures)["opted-out numbers"] == 0
    assert not dry.store.query("SELECT 1 FROM sqlite_master WHERE name = 'optout_numbers'")


def test_startup_creates_the_list_except_in_a_dry_run(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path)
    dry = make_app(data, dry_run=True)
    dry.plugins.hook.responder_startup(app=dry)
    assert not dry.store.query("SELECT 1 FROM sqlite_master WHERE name = 'optout_numbers'")

    live = make_app(data)
    live.plugins.hook.responder_startup(app=live)
    assert live.store.query("SELECT 1 FROM sqlite_master WHERE name = 'optout_numbers'")


def dry_message(text: str) -> Message:
    return Message(id=0, gateway_id=0, src=CUSTOMER, dst="", text=text, received_at=None, raw="")


def test_status_counts_numbers_and_suppressed_replies(app):
    sent(app, "TD")
    sent(app, "CX")
    sent(app, "CX 2")
    section = optout.responder_status(app=app)
    assert dict(section.figures) == {"opted-out numbers": 1, "replies suppressed": 2}


def test_other_plugins_ask_the_list_through_the_stash_without_importing_it(app):
    ask = app.stash[OPTED_OUT]
    assert not ask(CUSTOMER)
    sent(app, "TD")
    assert ask("+86 138 0013 8000")
    assert not ask("13900139000")


def test_the_stash_has_no_list_when_the_plugin_is_off(sandbox, tmp_path, start_app):
    app = start_app(config_dict(sandbox, tmp_path, plugins={"disabled": ["optout"]}))
    assert app.stash.get(OPTED_OUT, None) is None


def test_resubscribe_words_may_not_repeat_unsubscribe_words(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, optout={"resubscribe_words": ["TD"]})
    with pytest.raises(ConfigError, match=r"optout\.resubscribe_words: 'td' is also"):
        make_app(data)


def test_an_unknown_key_is_a_config_error(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, optout={"confirm": "x"})
    with pytest.raises(ConfigError, match=r"optout\.confirm: unknown key; did you mean"):
        make_app(data)


# -- the command ---------------------------------------------------------------------------


@pytest.fixture
def config_file(sandbox, tmp_path):
    return str(write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path)))


def test_optout_add_list_remove(config_file, capsys):
    assert main(["optout", "add", "+86 138-0013-8000", "-c", config_file]) == 0
    assert "13800138000 added to the opt-out list" in capsys.readouterr().out
    assert main(["optout", "add", "13800138000", "-c", config_file]) == 0
    assert "already on" in capsys.readouterr().out
    assert main(["optout", "list", "-c", config_file]) == 0
    listed = capsys.readouterr().out
    assert "13800138000" in listed and "added by hand" in listed
    assert main(["optout", "remove", "13800138000", "-c", config_file]) == 0
    assert "removed from" in capsys.readouterr().out
    assert main(["optout", "remove", "13800138000", "-c", config_file]) == 1
    assert main(["optout", "list", "-c", config_file]) == 0
    assert "no numbers" in capsys.readouterr().out


@pytest.mark.parametrize("number", [None, "abc", "12", "138001380001380013800"])
def test_optout_add_needs_a_phone_number(number, config_file, capsys):
    argv = ["optout", "add", *([number] if number else []), "-c", config_file]
    assert main(argv) == 2
    assert "give a phone number" in capsys.readouterr().err


def test_a_number_added_by_hand_gets_no_reply(sandbox, tmp_path, start_app, config_file):
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    write_config(tmp_path / "config.toml", data)
    assert main(["optout", "add", CUSTOMER, "-c", config_file]) == 0
    app = start_app(data)
    assert sent(app, "CX") == ()
