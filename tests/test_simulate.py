"""Rule authoring: ``simulate`` (one text, --json, --file) and ``replay``."""

from __future__ import annotations

import itertools
import json
import sqlite3
from datetime import datetime

import pytest

from responder import hookimpl
from responder.cli import main
from responder.models import PLATFORM_TZ, InboundSms
from responder.pipeline import process
from responder.simulation import parse_since, read_conversation, simulate, width
from tests.conftest import config_dict, write_config

RULES = {
    "fallback": "请回复 CX 查询",
    "rules": [
        {"name": "query", "keywords": ["CX", "查询"], "reply": "您好，您的查询已受理。{args}"},
        {
            "name": "order",
            "keywords": [r"^单号\s*(?P<no>\d+)$"],
            "match": "regex",
            "reply": "订单 {no} 已发货",
        },
    ],
}
_ids = itertools.count(1)


@pytest.fixture
def config(sandbox, tmp_path):
    return str(
        write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path, keywords=RULES))
    )


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_simulate_shows_normalised_text_rule_why_and_parts(config, capsys):
    code, out = run(capsys, "simulate", "-c", config, "--from", "13800138000", "ＣＸ 123")
    assert code == 0
    assert "normalised: cx 123" in out
    assert "rule:     query" in out
    assert 'why:      the first word is "cx"' in out
    assert "sms 1: 您好，您的查询已受理。123 (14 characters)" in out


def test_simulate_json_is_one_object(config, capsys):
    code, out = run(capsys, "simulate", "-c", config, "--json", "单号 42")
    assert code == 0
    record = json.loads(out)
    assert record["meta"]["rule"] == "order"
    assert record["parts"] == ["订单 42 已发货"]


def test_a_dropped_message_still_shows_the_normalised_text_and_rule(config, capsys):
    code, out = run(capsys, "simulate", "-c", config, "--from", "10086", "--json", "ＣＸ 1")
    assert code == 0
    record = json.loads(out)
    assert (record["dropped"], record["decided_by"]) == ("not a mobile number", "guard")
    assert record["meta"]["normalised"] == "cx 1" and record["meta"]["rule"] == "query"
    assert record["parts"] == []


def test_a_vetoed_message_shows_the_vetoing_plugin_and_the_rule(config, capsys):
    run(capsys, "optout", "add", "13800138000", "-c", config)
    code, out = run(capsys, "simulate", "-c", config, "CX")
    assert code == 0
    assert "vetoed:   opted out (by optout)" in out
    assert "rule:     query" in out and "normalised: cx" in out


def test_an_unmatched_message_shows_its_normalised_text(sandbox, tmp_path, capsys):
    data = config_dict(sandbox, tmp_path, keywords={"rules": RULES["rules"]})
    config = str(write_config(tmp_path / "config.toml", data))
    record = json.loads(run(capsys, "simulate", "-c", config, "--json", "ＨＥＬＬＯ！")[1])
    assert record["meta"] == {"normalised": "hello", "rule": "none", "why": "no rule matched"}
    assert (record["plugin"], record["reason"], record["parts"]) == (None, "no reply", [])


class Explains:
    """A third-party plugin that explains itself in simulate, one label clashing."""

    @hookimpl
    def responder_describe(self, message):
        return (("rule", "explains: nothing for this"), ("explains", f"saw {message.text!r}"))


class Mute:
    @hookimpl
    def responder_describe(self):
        return None


def test_every_plugin_describes_an_unanswered_message_first_label_wins(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, keywords={"rules": RULES["rules"]})
    app = make_app(data, dry_run=True, extra_plugins=(("explains", Explains()), ("mute", Mute())))
    sms = InboundSms(gateway_id=0, src="13800138000", dst="", text="hi", received_at=None, raw="")
    message = app.store.journal(sms)
    assert message is not None

    meta = simulate(app, message).meta

    assert meta == (
        ("rule", "explains: nothing for this"),
        ("explains", "saw 'hi'"),
        ("normalised", "hi"),
        ("why", "no rule matched"),
    )


def test_without_the_keyword_plugin_nothing_describes_the_message(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, plugins={"disabled": ["keywords"]})
    app = make_app(data, dry_run=True)
    sms = InboundSms(gateway_id=0, src="13800138000", dst="", text="hi", received_at=None, raw="")
    message = app.store.journal(sms)
    assert message is not None

    assert simulate(app, message).meta == ()


@pytest.mark.parametrize(
    ("keywords", "text"),
    [
        ({"rules": RULES["rules"]}, "hello"),
        ({"rules": RULES["rules"]}, "CX 1"),
        (RULES, "hello"),
        ({"rules": RULES["rules"]}, "TD"),
    ],
    ids=["no-rule", "rule", "fallback", "optout"],
)
def test_simulate_decides_as_the_daemon_does(sandbox, tmp_path, make_app, keywords, text):
    data = config_dict(sandbox, tmp_path, keywords=keywords)
    live = make_app(data)
    live.plugins.hook.responder_startup(app=live)
    dry = make_app(data, dry_run=True)
    sms = InboundSms(
        gateway_id=next(_ids), src="13800138000", dst="", text=text, received_at=None, raw=""
    )
    message = live.store.journal(sms)

    outcome = simulate(dry, message)
    decision = process(live, message)

    assert outcome.reason == live.store.message_state(message.id)[1] == decision.reason
    assert outcome.plugin == (decision.reply.plugin if decision.reply else None)
    assert outcome.parts == tuple(row.text for row in live.store.outbox_for(message.id))


def test_simulate_file_runs_a_conversation(config, tmp_path, capsys):
    conversation = tmp_path / "conversation.csv"
    conversation.write_text(
        "src,text\n"
        "13800138000,ＣＸ 123\n"
        '13800138000,"退订，谢谢"\n'
        "13800138000,CX\n"
        "13900139000,hello, anyone there?\n"
        "13900139000,hello again\n",
        encoding="utf-8",
    )
    code, out = run(capsys, "simulate", "-c", config, "--file", str(conversation))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["line", "from", "message", "rule", "answer"]
    assert "您好，您的查询已受理。123" in lines[2]
    assert "optout unsubscribe" in lines[3]
    assert "(none: opted out (by optout))" in lines[4]
    assert "hello, anyone there?" in lines[5] and "请回复 CX 查询" in lines[5]
    assert "(none: no rule matched; a fallback went to this number less than 3600 s" in lines[6]


def test_simulate_file_json_gives_one_object_per_line(config, tmp_path, capsys):
    conversation = tmp_path / "c.csv"
    conversation.write_text("13800138000,CX\n13800138000,TD\n", encoding="utf-8")
    code, out = run(capsys, "simulate", "-c", config, "--file", str(conversation), "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["line"], r["meta"]["rule"]) for r in records] == [
        (1, "query"),
        (2, "optout unsubscribe"),
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [("13800138000\n", "line 1: expected src,text"), (",CX\n", "line 1: expected src,text")],
)
def test_a_bad_conversation_file_names_the_line(content, expected, config, tmp_path, capsys):
    conversation = tmp_path / "c.csv"
    conversation.write_text(content, encoding="utf-8")
    code, out = run(capsys, "simulate", "-c", config, "--file", str(conversation))
    assert code == 2 and expected in out


def test_a_missing_conversation_file_is_a_clear_error(config, tmp_path, capsys):
    code, out = run(capsys, "simulate", "-c", config, "--file", str(tmp_path / "none.csv"))
    assert code == 2 and "cannot read the file" in out


def test_read_conversation_keeps_commas_in_unquoted_texts(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('13800138000,a, b,c\n\n13900139000,"x,y"\n', encoding="utf-8")
    assert read_conversation(str(path)) == [(1, "13800138000", "a, b,c"), (3, "13900139000", "x,y")]


def test_table_width_counts_wide_characters_twice():
    assert width("CX 查询") == 7


# -- replay --------------------------------------------------------------------------------


def _history(sandbox, tmp_path, make_app, clock, keywords):
    """Messages processed under ``keywords``; returns the config dict."""
    data = config_dict(sandbox, tmp_path, keywords=keywords)
    app = make_app(data, clock=clock)
    app.plugins.hook.responder_startup(app=app)
    for src, text in [
        ("13800138000", "CX 1"),
        ("13900139000", "hello"),
        ("13700137000", "菜单"),
        ("13700137000", "TD"),
        ("13700137000", "菜单"),
    ]:
        clock.advance(60)
        sms = InboundSms(
            gateway_id=next(_ids), src=src, dst="", text=text, received_at=None, raw=""
        )
        process(app, app.store.journal(sms))
    app.store.close()
    return data


def _counts(db) -> tuple[int, int, int]:
    with sqlite3.connect(db) as conn:
        return tuple(
            conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("messages", "queue_items", "optout_numbers")
        )


def test_replay_shows_where_the_current_rules_answer_differently(
    sandbox, tmp_path, make_app, clock, capsys
):
    clock.now = datetime(2026, 11, 2, 10, 0, tzinfo=PLATFORM_TZ).timestamp()
    data = _history(sandbox, tmp_path, make_app, clock, {"rules": RULES["rules"]})
    before = _counts(tmp_path / "responder.db")
    menu = {"keywords": ["菜单"], "reply": "1 查询 2 人工", "hours": "09:00-18:00"}
    data["keywords"] = {"rules": [*RULES["rules"], menu]}
    config = str(write_config(tmp_path / "config.toml", data))
    code, out = run(capsys, "replay", "-c", config, "--since", "2026-11-02")
    assert code == 0
    changed = [line for line in out.splitlines() if "菜单" in line]
    # The first 菜单 is now answered (at 10:03, inside the hours); the second came after TD.
    assert len(changed) == 1 and "(nothing)" in changed[0] and "1 查询 2 人工" in changed[0]
    assert "5 message(s) since 2026-11-02: 1 would be answered differently" in out
    assert _counts(tmp_path / "responder.db") == before
    assert len(sandbox.sent()) == 0


def test_replay_json_lists_every_message(sandbox, tmp_path, make_app, clock, capsys):
    clock.now = datetime(2026, 11, 2, 10, 0, tzinfo=PLATFORM_TZ).timestamp()
    data = _history(sandbox, tmp_path, make_app, clock, RULES)
    config = str(write_config(tmp_path / "config.toml", data))
    code, out = run(capsys, "replay", "-c", config, "--since", "2026-11-02 10:02", "--json")
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in records] == ["hello", "菜单", "TD", "菜单"]
    assert not any(r["differs"] for r in records)


def test_replay_needs_a_date(config, capsys):
    code, out = run(capsys, "replay", "-c", config, "--since", "last week")
    assert code == 2 and "--since: must be a date" in out


def test_since_is_platform_time_unless_an_offset_is_given():
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=PLATFORM_TZ).timestamp()
    assert parse_since("2026-11-01T00:00+00:00") - parse_since("2026-11-01") == 8 * 3600
