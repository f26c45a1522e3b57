"""Keyword replies and opt-out end to end: the daemon against the sandbox over loopback."""

from __future__ import annotations

import signal

import pytest

import responder_plugins.optout as optout
from responder.config import settings_from_dict
from responder.daemon import Daemon
from responder.sandbox import Sandbox
from tests.conftest import config_dict, store_rows, wait_for, write_config

RULES = {"rules": [{"keywords": ["CX", "查询"], "reply": "您好，您的查询已受理。"}]}
REPLY = "您好，您的查询已受理。"


def replies_to(sandbox: Sandbox, number: str) -> list[str]:
    return [sms.text for sms in sandbox.sent() if number in sms.numbers]


def outcomes() -> list[tuple[str, str, str, str]]:
    return store_rows("SELECT src, state, reason, decided_by FROM messages ORDER BY id")


@pytest.fixture
def daemon(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
    running = Daemon(settings=settings, configure_logs=False, notify=lambda _line: None)
    running.start()
    yield running
    running.stop()


@pytest.mark.stores("sqlite", "postgresql")
def test_keywords_and_opt_out_through_the_daemon(sandbox, daemon, tmp_path):
    for number, text in [("13800138001", "cx"), ("13800138002", "ＣＸ"), ("13800138003", " 查询 ")]:
        sandbox.inject(number, text)
    for number in ("13800138001", "13800138002", "13800138003"):
        wait_for(lambda n=number: replies_to(sandbox, n))
        assert replies_to(sandbox, number) == [REPLY]
    sandbox.inject("13800138001", "TD")
    wait_for(lambda: len(replies_to(sandbox, "13800138001")) == 2)
    assert replies_to(sandbox, "13800138001")[1] == optout.DEFAULT_CONFIRMATION
    sandbox.inject("13800138001", "CX")
    wait_for(lambda: len(outcomes()) == 5)
    wait_for(lambda: outcomes()[-1][1] != "received")
    assert outcomes()[-1] == (
        "13800138001",
        "ignored",
        "opted out",
        "optout",
    )
    assert len(replies_to(sandbox, "13800138001")) == 2


@pytest.mark.stores("sqlite", "postgresql")
def test_an_opt_out_survives_a_daemon_restart(sandbox, tmp_path, daemons):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path, keywords=RULES))
    first = daemons(config, tmp_path / "first.log")
    sandbox.inject("13800138000", "退订")
    wait_for(lambda: replies_to(sandbox, "13800138000"))
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    second = daemons(config, tmp_path / "second.log")
    sandbox.inject("13800138000", "CX")
    sandbox.inject("13900139000", "CX")
    wait_for(lambda: replies_to(sandbox, "13900139000"))
    wait_for(lambda: all(row[1] != "received" for row in outcomes()))
    assert outcomes()[1] == (
        "13800138000",
        "ignored",
        "opted out",
        "optout",
    )
    assert replies_to(sandbox, "13800138000") == [optout.DEFAULT_CONFIRMATION]
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
