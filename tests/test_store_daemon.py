"""The store's duties in a running daemon: retention, dedupe across a platform id reset,
one daemon per store file whatever the path."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from responder.conversations import Conversation
from responder.daemon import Daemon
from responder.sandbox import Sandbox
from responder.store import Store
from tests.conftest import PASSWORD, config_dict, wait_for, write_config
from tests.test_store import sms

RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理"}]}
DAY = 86400.0


@pytest.fixture
def run_daemon(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """Start a daemon in this process on ``tmp_path``'s store; stopped after the test."""

    def run(sandbox: Sandbox, **sections: dict[str, Any]) -> Daemon:
        return start_daemon(config_dict(sandbox, tmp_path, keywords=RULES, **sections))

    return run


def finished_message(store: Store, gateway_id: int) -> int:
    message = store.journal(sms(gateway_id, f"m{gateway_id}"))
    store.finish_message(message.id, outgoing=[], reason="no reply")
    return message.id


def test_the_daemon_prunes_old_finished_messages_when_it_starts(sandbox, tmp_path, run_daemon):
    db = tmp_path / "responder.db"
    then = time.time() - 400 * DAY
    old_store = Store(db, clock=lambda: then)
    old = finished_message(old_store, 1)
    old_store.close()
    new_store = Store(db)
    new = finished_message(new_store, 2)
    new_store.close()

    daemon = run_daemon(sandbox)

    wait_for(lambda: daemon.store.get_message(old) is None)
    assert daemon.store.get_message(new) is not None


def test_the_daemon_ends_expired_conversations_when_it_starts(sandbox, tmp_path, run_daemon):
    store = Store(tmp_path / "responder.db")
    now = time.time()
    for number, expires_at in (("13800138000", now - 1), ("13900139000", now + DAY)):
        store.start_conversation(
            Conversation(number, "booking", "date", started_at=now, expires_at=expires_at)
        )
    store.close()

    daemon = run_daemon(sandbox)

    def numbers() -> list[str]:
        rows = daemon.store.query("SELECT number FROM conversations ORDER BY number")
        return [row["number"] for row in rows]

    wait_for(lambda: numbers() == ["13900139000"])


def test_a_new_message_with_a_reused_id_is_answered_after_a_platform_reset(tmp_path, run_daemon):
    for number in ("13800138000", "13900139000"):
        with Sandbox(name="acct", password=PASSWORD, min_read_interval=0, first_id=100) as gateway:
            daemon = run_daemon(gateway)
            assert gateway.inject(number, "CX") == 100  # the platform's ids start over
            wait_for(lambda gateway=gateway: gateway.sent())
            daemon.stop()
        assert [sent.numbers for sent in gateway.sent()] == [(number,)]
    store = Store(tmp_path / "responder.db")
    try:
        assert [m.gateway_id for m in store.messages_since(0)] == [100, 100]
        assert store.status().duplicates_dropped == 0
    finally:
        store.close()


def test_a_second_daemon_through_a_symlink_to_the_store_refuses_to_start(
    sandbox, tmp_path, daemons
):
    """Two daemons on one store read the account twice as often as the interval allows."""
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "responder.db"
    alias = tmp_path / "alias.db"
    alias.symlink_to(real)
    configs = []
    for name, path in (("first", real), ("second", alias)):
        data = config_dict(sandbox, tmp_path, store={"path": str(path)})
        configs.append(write_config(tmp_path / f"{name}.toml", data))
    first = daemons(configs[0], tmp_path / "first.log")
    first.wait_for_log("daemon_started")

    second = daemons(configs[1], tmp_path / "second.log")

    assert second.wait() == 1
    assert f"another responder (pid {first.process.pid})" in second.log()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
