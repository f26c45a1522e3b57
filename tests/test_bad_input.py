"""Odd inbound messages: each is journaled, then answered or set aside with a logged reason,
and none stops the daemon.

One daemon (in this process) reads every case from one sandbox; each test then checks
what became of its own message.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import pytest
import structlog

from responder.config import settings_from_dict
from responder.daemon import Daemon
from responder.models import InboundSms
from responder.pipeline import NO_RECIPIENT, process
from responder.sandbox import Sandbox
from responder.sending import send_due
from responder.store import OutgoingSms
from tests.conftest import PASSWORD, config_dict, wait_for

LONG = "CX " + "长" * 9_997
MISSING = "<missing>"
AFTERWARDS = "a plain message afterwards"
RULES = {"rules": [{"keywords": ["CX"], "reply": "您好，已受理"}]}


@dataclass(frozen=True)
class Case:
    name: str
    text: str
    src: str = "13800138000"
    raw_msg: bytes | None = None
    stored: str | None = None
    """The text the store must hold; None when the encoding may change it."""
    answered: bool = True


CASES = [
    Case("10000 characters", LONG, stored=LONG),
    Case("control characters", "CX a\x01b\x1b[31mc\x7fd\x08", stored="CX a\x01b\x1b[31mc\x7fd\x08"),
    Case("NUL", "CX a\x00b", stored="CX a\x00b"),
    Case("line breaks", "CX 第一行\r\n第二行\n第三行", stored="CX 第一行\r\n第二行\n第三行"),
    Case("ampersand", "CX a&b & c", stored="CX a&b & c"),
    # Values are not escaped on the wire: "&b=c" in a text reads as a field b; the text
    # is cut there, the raw line keeps it whole.
    Case("ampersand and equals", "CX a&b=c&d", stored=None),
    Case("emoji", "CX 😀👍🏽🇨🇳"),
    Case("lone surrogates", "CX \ud800 \udfff"),
    Case("invalid GBK bytes", "", raw_msg=b"CX \x81\xff\xfe\xa1 \x80"),
    Case("surrogate bytes", "", raw_msg=b"CX \xed\xa0\x80"),
    Case("empty text", "", stored="", answered=False),
    Case("only spaces and controls", " \x01\x02 ", answered=False),
    Case("empty src", "CX", src="", answered=False),
    Case("missing src", "CX", src=MISSING, answered=False),
]


class OddSandbox(Sandbox):
    """A sandbox that can leave the ``src`` field out of a readsms answer entirely."""

    def _read(self, too_fast: bool) -> dict[str, Any]:
        fields = super()._read(too_fast)
        if fields.get("src") == MISSING:
            del fields["src"]
        return fields


@dataclass(frozen=True)
class Outcome:
    state: str | None
    """None when the message was never journaled."""
    reason: str
    text: str | None
    events: list[dict[str, Any]]
    """Log events about this message."""


def finished(db, expected: int) -> bool:
    with sqlite3.connect(db) as conn:
        states = [row[0] for row in conn.execute("SELECT state FROM messages")]
        open_sends = conn.execute(
            "SELECT COUNT(*) FROM queue_items WHERE queue = 'outbox' AND state != 'done'"
        ).fetchone()
    return len(states) == expected and set(states) <= {"replied", "ignored"} and not open_sends[0]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    tmp_path = tmp_path_factory.mktemp("bad-input")
    db = tmp_path / "responder.db"
    with OddSandbox(name="acct", password=PASSWORD, min_read_interval=0) as sandbox:
        ids = {}
        for number, case in enumerate(CASES):
            src = case.src if case.src in ("", MISSING) else f"1380013{number:04d}"
            ids[case.name] = sandbox.inject(src, case.text, raw_msg=case.raw_msg)
        ids[AFTERWARDS] = sandbox.inject("13900139000", "CX")
        data = config_dict(sandbox, tmp_path, keywords=RULES)
        settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
        daemon = Daemon(settings=settings, configure_logs=False, notify=lambda _message: None)
        with structlog.testing.capture_logs() as events:
            daemon.start()
            try:
                wait_for(lambda: finished(db, len(ids)))
                assert not daemon.stopping.is_set(), "the daemon stopped itself"
            finally:
                daemon.stop()
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = {row["gateway_id"]: row for row in conn.execute("SELECT * FROM messages")}
    outcomes = {}
    for name, gateway_id in ids.items():
        row = rows.get(gateway_id)
        about = [e for e in events if row is not None and e.get("message_id") == row["id"]]
        outcomes[name] = Outcome(
            state=row["state"] if row else None,
            reason=row["reason"] if row else "",
            text=row["text"] if row else None,
            events=about,
        )
    return outcomes


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_an_odd_message_is_journaled(outcomes, case):
    outcome = outcomes[case.name]
    assert outcome.state is not None
    if case.stored is not None:
        assert outcome.text == case.stored


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_an_odd_message_is_answered_or_set_aside_with_a_logged_reason(outcomes, case):
    outcome = outcomes[case.name]
    names = [event["event"] for event in outcome.events]
    if case.answered:
        assert outcome.state == "replied"
        assert "sms_sent" in names
    else:
        assert outcome.state == "ignored" and outcome.reason
        unanswered = [e for e in outcome.events if e["event"] == "message_unanswered"]
        assert [e["reason"] for e in unanswered] == [outcome.reason]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_an_odd_message_raises_nothing(outcomes, case):
    levels = {event["log_level"] for event in outcomes[case.name].events}
    assert not levels & {"error", "critical"}


def test_the_daemon_still_answers_after_every_odd_message(outcomes):
    assert outcomes[AFTERWARDS].state == "replied"


def test_without_the_guard_a_message_with_no_sender_is_set_aside_not_queued(
    sandbox, tmp_path, make_app
):
    data = config_dict(sandbox, tmp_path, keywords=RULES, plugins={"enabled": ["keywords"]})
    app = make_app(data)
    message = app.store.journal(
        InboundSms(gateway_id=7, src="", dst="0888008", text="CX", received_at=None, raw="")
    )
    process(app, message)
    assert app.store.message_state(message.id) == ("ignored", NO_RECIPIENT)
    assert app.store.outbox_for(message.id) == []


def test_an_outbox_row_without_recipients_is_dead_lettered_not_stuck(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES))
    message = app.store.journal(
        InboundSms(gateway_id=8, src="", dst="0888008", text="CX", received_at=None, raw="")
    )
    app.store.finish_message(message.id, outgoing=[OutgoingSms(recipients=(), text="hi")])
    send_due(app)
    [row] = app.store.outbox_for(message.id)
    assert row.state == "dead" and "no recipient" in row.last_error
    assert sandbox.stats().sends == 0
