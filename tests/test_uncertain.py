"""Sends whose outcome is unknown and that are not sent again are "uncertain", not dead."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from responder import pipeline, sending
from responder.cli import main
from responder.metrics import store_figures
from responder.models import PLATFORM_TZ, InboundSms
from responder.store import FAILED, UNCERTAIN, OutgoingSms
from tests.conftest import config_dict, write_config

RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理"}]}


def inbound(gateway_id: int = 1) -> InboundSms:
    return InboundSms(
        gateway_id=gateway_id,
        src="13800138000",
        dst="0888008",
        text="CX",
        received_at=datetime(2026, 11, 26, 9, 0, tzinfo=PLATFORM_TZ),
        raw=f"id={gateway_id}&msg=CX",
    )


@pytest.mark.parametrize(
    "replies",
    [{"on_uncertain": "give_up"}, {"on_uncertain": "resend", "max_attempts": 1}],
    ids=["give_up", "resend out of attempts"],
)
def test_a_send_lost_in_the_answer_and_not_resent_is_uncertain(
    replies, sandbox, tmp_path, make_app
):
    app = make_app(config_dict(sandbox, tmp_path, keywords=RULES, replies=replies))
    message = app.store.journal(inbound())
    pipeline.process(app, message)
    sandbox.set_fault("drop_after_consume", endpoint="send", count=1)
    sending.send_due(app)
    assert len(sandbox.sent()) == 1  # the gateway took it: only the answer was lost
    [row] = app.store.outbox_for(message.id)
    assert (row.state, row.uncertain) == (UNCERTAIN, 1)
    assert app.store.message_state(message.id) == (UNCERTAIN, "")


def test_status_counts_uncertain_sends_apart_from_dead_letters(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, keywords=RULES, replies={"on_uncertain": "give_up"})
    app = make_app(data)
    pipeline.process(app, app.store.journal(inbound()))
    sandbox.set_fault("drop_after_consume", endpoint="send", count=1)
    sending.send_due(app)
    figures = store_figures(app.store)
    assert (figures.dead_letters, figures.uncertain) == (0, 1)
    assert figures.outbox == {UNCERTAIN: 1}
    assert figures.messages == {UNCERTAIN: 1}
    assert figures.sends == {(UNCERTAIN, ""): 1}


def test_responder_status_shows_uncertain_sends(sandbox, tmp_path, make_app, capsys):
    data = config_dict(sandbox, tmp_path, keywords=RULES, replies={"on_uncertain": "give_up"})
    app = make_app(data)
    pipeline.process(app, app.store.journal(inbound()))
    sandbox.set_fault("drop_after_consume", endpoint="send", count=1)
    sending.send_due(app)
    config = write_config(tmp_path / "config.toml", data)
    capsys.readouterr()
    main(["status", "-c", str(config), "--json"])
    record = json.loads(capsys.readouterr().out)
    assert record["outbox"] == {"uncertain": 1}
    assert record["messages"] == {"uncertain": 1}
    assert record["dead_letters"] == 0


def test_a_dead_part_outweighs_an_uncertain_one(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    message = app.store.journal(inbound())
    parts = [OutgoingSms(("13800138000",), text, part, 2) for part, text in ((1, "a"), (2, "b"))]
    app.store.finish_message(message.id, outgoing=parts)
    first, second = app.store.due_outbox()
    app.store.record_uncertain(first.id, error="outcome unknown")
    app.store.record_dead(second.id, error="refused")
    assert app.store.message_state(message.id)[0] == FAILED
