"""The HTTP API of a real daemon subprocess, sending to the simulator over loopback."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from responder.sandbox import Sandbox
from tests.conftest import DaemonProcess, config_dict, wait_for, write_config

SENDER = "sender-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdefgh"
LATER = "later-token-0123456789abcdefgh"
SIGNATURE = "【好店】"
A, B, C = "13800138000", "13900139000", "13700137000"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def api_config(sandbox: Sandbox, tmp_path: Path, port: int) -> dict[str, Any]:
    (tmp_path / "ops.token").write_text(ADMIN + "\n")
    tokens = [
        {"name": "crm", "scopes": ["send", "read"], "token": SENDER},
        {"name": "dashboard", "scopes": ["read"]},  # from the environment
        {"name": "ops", "scopes": ["send", "read", "admin"], "token_file": "ops.token"},
    ]
    return config_dict(
        sandbox,
        tmp_path,
        replies={"signature": SIGNATURE},
        api={"enabled": True, "listen": f"127.0.0.1:{port}", "tokens": tokens},
    )


class Running:
    def __init__(self, daemon: DaemonProcess, port: int) -> None:
        self.daemon = daemon
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20)

    def post(self, body: dict[str, Any], *, key: str | None = None, token: str = SENDER):
        headers = auth(token) | ({"Idempotency-Key": key} if key else {})
        return self.client.post("/v1/messages", json=body, headers=headers)

    def statuses(self, send_id: int) -> dict[str, str]:
        body = self.client.get(f"/v1/messages/{send_id}", headers=auth(READER)).json()
        return {r["number"]: r["status"] for r in body["recipients"]}


@pytest.fixture
def running(sandbox, tmp_path, daemons) -> Iterator[Running]:
    port = free_port()
    config = write_config(tmp_path / "config.toml", api_config(sandbox, tmp_path, port))
    daemon = daemons(config, tmp_path / "daemon.log", env={"RESPONDER_API_TOKEN_DASHBOARD": READER})
    daemon.wait_for_log("api_started")
    result = Running(daemon, port)
    yield result
    result.client.close()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def sent_with(sandbox: Sandbox, text: str) -> list[Any]:
    return [sms for sms in sandbox.sent() if sms.text == SIGNATURE + text]


@pytest.mark.stores("sqlite", "postgresql")
def test_a_send_to_three_with_one_opted_out_reaches_the_gateway_gbk_signed_once(sandbox, running):
    assert running.client.put(f"/v1/optouts/{C}", headers=auth(ADMIN)).status_code == 200
    answer = running.post({"to": [A, B, C], "text": "您的订单已发货"}, key="order-7")
    assert answer.status_code == 202
    outcome = {r["number"]: r for r in answer.json()["recipients"]}
    assert outcome[C]["status"] == "suppressed" and outcome[C]["reason"]
    assert outcome[A]["status"] == outcome[B]["status"] == "queued"
    wait_for(lambda: sent_with(sandbox, "您的订单已发货"))
    [sms] = sent_with(sandbox, "您的订单已发货")
    assert set(sms.numbers) == {A, B}
    assert sms.raw_msg == (SIGNATURE + "您的订单已发货").encode("gbk")
    assert sms.text.count(SIGNATURE) == 1
    send_id = answer.json()["id"]
    wait_for(lambda: running.statuses(send_id) == {A: "sent", B: "sent", C: "suppressed"})


@pytest.mark.stores("sqlite", "postgresql")
def test_the_same_idempotency_key_twice_sends_once(sandbox, running):
    first = running.post({"to": [A], "text": "提醒一次"}, key="reminder-1")
    again = running.post({"to": [A], "text": "提醒一次"}, key="reminder-1")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    wait_for(lambda: running.statuses(first.json()["id"]) == {A: "sent"})
    assert len(sent_with(sandbox, "提醒一次")) == 1


@pytest.mark.stores("sqlite", "postgresql")
def test_a_scheduled_send_waits_and_a_cancelled_one_never_goes(sandbox, running):
    at = datetime.now(UTC) + timedelta(seconds=2)
    kept = running.post({"to": [A], "text": "准时发送", "at": at.isoformat()}).json()
    dropped = running.post({"to": [B], "text": "已取消", "at": at.isoformat()}).json()
    assert kept["recipients"][0]["status"] == dropped["recipients"][0]["status"] == "scheduled"
    cancel = running.client.delete(f"/v1/messages/{dropped['id']}", headers=auth(SENDER))
    assert cancel.json() == {"id": dropped["id"], "cancelled": 1}
    wait_for(lambda: sent_with(sandbox, "准时发送"))
    assert sent_with(sandbox, "准时发送")[0].at >= at.timestamp()
    assert running.statuses(dropped["id"]) == {B: "cancelled"}
    assert sent_with(sandbox, "已取消") == []


def test_wrong_tokens_are_refused_and_no_token_reaches_the_log(sandbox, running):
    missing = running.client.post("/v1/messages", json={"to": [A], "text": "x"})
    wrong = running.post({"to": [A], "text": "x"}, token="guess-" + SENDER)
    unscoped = running.post({"to": [A], "text": "x"}, token=READER)
    assert (missing.status_code, wrong.status_code, unscoped.status_code) == (401, 401, 403)
    running.post({"to": [A], "text": "记录"})
    running.daemon.wait_for_log('"token": "crm"')
    log = running.daemon.log()
    for token in (SENDER, READER, ADMIN, "guess-" + SENDER):
        assert token not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(line["event"] == "api_unauthorized" for line in lines)


def test_a_reload_keeps_the_server_and_applies_new_tokens(sandbox, running, tmp_path):
    config = tmp_path / "config.toml"
    text = config.read_text(encoding="utf-8")
    added = f'\n[[api.tokens]]\nname = "later"\nscopes = ["read"]\ntoken = "{LATER}"\n'
    config.write_text(text + added, encoding="utf-8")
    assert running.client.get("/v1/status", headers=auth(LATER)).status_code == 401
    running.daemon.signal(signal.SIGHUP)
    running.daemon.wait_for_log('"event": "reloaded"')
    assert running.client.get("/v1/status", headers=auth(LATER)).status_code == 200
    assert LATER not in running.daemon.log()


def test_an_address_in_use_stops_the_start_naming_api_listen(sandbox, tmp_path, daemons):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = api_config(sandbox, tmp_path, port)
        data["api"]["tokens"][1]["token"] = READER
        config = write_config(tmp_path / "config.toml", data)
        daemon = daemons(config, tmp_path / "daemon.log")
        assert daemon.wait() == 2
    assert f"api.listen: cannot listen on 127.0.0.1:{port}" in daemon.log()
