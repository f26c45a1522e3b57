"""The daemon as a real subprocess: replies, crashes, restarts, signals, the read interval."""

from __future__ import annotations

import signal

import pytest

from responder.config import settings_from_dict
from responder.daemon import STOP_TIMEOUT, read_stop_wait
from responder.sandbox import Sandbox
from tests.conftest import PASSWORD, config_dict, store_rows, wait_for, write_config

RULES = {"rules": [{"keywords": ["CX", "查询"], "reply": "您好，已受理"}]}


def replies_to(sandbox: Sandbox, number: str) -> list[str]:
    return [s.text for s in sandbox.sent() if number in s.numbers]


def message_states() -> dict[str, int]:
    return dict(store_rows("SELECT state, COUNT(*) FROM messages GROUP BY state"))


@pytest.fixture
def config(sandbox, tmp_path):
    return write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path, keywords=RULES))


@pytest.mark.stores("sqlite", "postgresql")
def test_an_injected_message_gets_its_reply_gbk_intact(sandbox, config, tmp_path, daemons):
    daemon = daemons(config, tmp_path / "daemon.log")
    sandbox.inject("13800138000", "查询")
    wait_for(lambda: replies_to(sandbox, "13800138000"))
    assert replies_to(sandbox, "13800138000") == ["您好，已受理"]
    assert sandbox.sent()[0].raw_msg == "您好，已受理".encode("gbk")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


@pytest.mark.stores("sqlite", "postgresql")
def test_sigterm_stops_cleanly_within_ten_seconds(sandbox, config, tmp_path, daemons):
    daemon = daemons(config, tmp_path / "daemon.log")
    daemon.wait_for_log("daemon_started")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert "daemon_stopped" in daemon.log()


def test_sigterm_during_a_hung_send_still_exits_within_ten_seconds(
    sandbox, config, tmp_path, daemons
):
    sandbox.set_fault("hang", endpoint="send", delay=60)
    daemon = daemons(config, tmp_path / "daemon.log")
    sandbox.inject("13800138000", "CX")
    wait_for(lambda: sandbox.stats().sends >= 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0


@pytest.mark.stores("sqlite", "postgresql")
def test_sigterm_during_a_slow_read_journals_its_message_then_exits_0(sandbox, tmp_path, daemons):
    """The read outlasts the old fixed stop wait (STOP_TIMEOUT) but not gateway.timeout:
    the platform hands the message out when it answers, so the stop must wait for it."""
    slow = STOP_TIMEOUT + 1.5
    data = config_dict(sandbox, tmp_path, keywords=RULES, gateway={"timeout": slow + 3})
    config = write_config(tmp_path / "config.toml", data)
    sandbox.inject("13800138000", "CX")
    sandbox.set_fault("slow", endpoint="read", count=1, delay=slow)
    daemon = daemons(config, tmp_path / "daemon.log")
    wait_for(lambda: sandbox.stats().reads >= 1)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=read_stop_wait(settings_from_dict(data).gateway) + 5) == 0
    assert message_states() == {"received": 1}
    assert sandbox.pending() == 0
    assert "stop_waits_for_read" in daemon.log()
    assert "stopped_with_work_in_flight" not in daemon.log()


@pytest.mark.parametrize(
    ("timeout", "addresses", "wait"),
    [(10, 1, 5 + 10 + 5), (10, 3, 3 * 5 + 10 + 5), (2, 2, 2 * 2 + 2 + 5), (120, 1, 130)],
)
def test_a_stop_waits_for_a_read_over_every_address_plus_a_margin(timeout, addresses, wait):
    """A read moves to the next address only when it could not connect (at most 5 s, or
    the timeout if shorter); the last address may take the whole timeout."""
    urls = [f"http://127.0.0.{n + 1}:8800" for n in range(addresses)]
    gateway = {"base_urls": urls, "name": "acct", "password": "pw", "timeout": timeout}
    settings = settings_from_dict({"gateway": gateway}, environ={})
    assert read_stop_wait(settings.gateway) == wait


@pytest.mark.stores("sqlite", "postgresql")
def test_kill9_during_a_hung_send_then_restart_sends_exactly_once(
    sandbox, config, tmp_path, daemons
):
    sandbox.set_fault("hang", endpoint="send", count=1, delay=30)
    first = daemons(config, tmp_path / "first.log")
    sandbox.inject("13800138000", "CX")
    wait_for(lambda: sandbox.stats().sends >= 1)
    first.kill9()
    second = daemons(config, tmp_path / "second.log")
    wait_for(lambda: replies_to(sandbox, "13800138000"))
    wait_for(lambda: message_states() == {"replied": 1})
    assert replies_to(sandbox, "13800138000") == ["您好，已受理"]
    assert "send_outcome_unknown" in second.log()
    second.signal(signal.SIGTERM)
    second.wait()


@pytest.mark.stores("sqlite", "postgresql")
def test_the_read_interval_holds_across_restarts(tmp_path, daemons):
    with Sandbox(name="acct", password=PASSWORD, min_read_interval=1.0) as sandbox:
        data = config_dict(sandbox, tmp_path, keywords=RULES)
        data["gateway"]["poll_interval"] = 1.0
        config = write_config(tmp_path / "config.toml", data)
        for round_number in range(3):
            daemon = daemons(config, tmp_path / f"run{round_number}.log")
            reads_before = sandbox.stats().reads
            wait_for(lambda before=reads_before: sandbox.stats().reads > before)
            if round_number % 2:
                daemon.signal(signal.SIGTERM)
                daemon.wait()
            else:
                daemon.kill9()
        daemon = daemons(config, tmp_path / "last.log")
        sandbox.inject("13800138000", "CX")
        wait_for(lambda: replies_to(sandbox, "13800138000"))
        daemon.signal(signal.SIGTERM)
        daemon.wait()
        assert sandbox.stats().too_fast_reads == 0


def test_sighup_with_a_broken_config_keeps_the_old_one_running(sandbox, config, tmp_path, daemons):
    daemon = daemons(config, tmp_path / "daemon.log")
    daemon.wait_for_log("daemon_started")
    good = config.read_text(encoding="utf-8")
    config.write_text(good + "\nbroken = [\n", encoding="utf-8")
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log("reload_rejected")
    sandbox.inject("13800138000", "CX")
    wait_for(lambda: replies_to(sandbox, "13800138000"))
    assert replies_to(sandbox, "13800138000") == ["您好，已受理"]
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0


def test_sighup_with_a_good_config_applies_it(sandbox, config, tmp_path, daemons):
    daemon = daemons(config, tmp_path / "daemon.log")
    daemon.wait_for_log("daemon_started")
    config.write_text(config.read_text(encoding="utf-8").replace("您好，已受理", "新的回复"))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for_log('"event": "reloaded"')
    sandbox.inject("13800138000", "CX")
    wait_for(lambda: replies_to(sandbox, "13800138000"))
    assert replies_to(sandbox, "13800138000") == ["新的回复"]
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def test_a_login_failure_stops_polling_with_one_clear_error(sandbox, tmp_path, daemons):
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    data["gateway"]["password"] = "wrong"
    daemon = daemons(write_config(tmp_path / "config.toml", data), tmp_path / "daemon.log")
    daemon.wait_for_log("login_refused")
    reads = sandbox.stats().reads
    with pytest.raises(AssertionError):
        wait_for(lambda: sandbox.stats().reads > reads, timeout=1.0)
    assert daemon.log().count("login_refused") == 1
    assert PASSWORD not in daemon.log()
    daemon.signal(signal.SIGTERM)
    daemon.wait()


def test_gateway_errors_back_off_and_recover(sandbox, config, tmp_path, daemons):
    sandbox.set_fault("status500", endpoint="read", count=2)
    daemon = daemons(config, tmp_path / "daemon.log")
    sandbox.inject("13800138000", "CX")
    wait_for(lambda: replies_to(sandbox, "13800138000"))
    assert daemon.log().count('"read_failed"') == 2
    daemon.signal(signal.SIGTERM)
    daemon.wait()


class TooSoonRecorder(Sandbox):
    """A simulator that records, read by read, whether it refused the read as too soon."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.refused: list[bool] = []

    def _read(self, too_fast: bool) -> dict:
        self.refused.append(too_fast)
        return super()._read(too_fast)


@pytest.mark.stores("sqlite")  # about the gateway's read interval, not the store
def test_a_read_refused_as_too_frequent_backs_off_a_further_interval(tmp_path, daemons):
    """The platform counts reads arrival to arrival, the daemon end to start: with the
    platform's interval at 1.5 × poll_interval it refuses reads (读取过于频繁). Taken for
    "nothing unread", every read is refused and the message never comes; backing off one
    more interval, the read after each refusal gets through."""
    poll = 0.5
    with TooSoonRecorder(name="acct", password=PASSWORD, min_read_interval=poll * 1.5) as gateway:
        data = config_dict(gateway, tmp_path, keywords=RULES)
        data["gateway"]["poll_interval"] = poll
        daemon = daemons(write_config(tmp_path / "config.toml", data), tmp_path / "daemon.log")
        wait_for(lambda: True in gateway.refused)
        gateway.inject("13800138000", "CX")
        wait_for(lambda: message_states())
        wait_for(lambda: len(gateway.refused) >= 8)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    pairs = list(zip(gateway.refused, gateway.refused[1:], strict=False))
    assert (True, True) not in pairs, gateway.refused
    assert daemon.log().count('"read_too_soon"') == gateway.refused.count(True)


def test_an_unwritable_store_is_one_clear_fatal_error(sandbox, tmp_path, daemons):
    data = config_dict(sandbox, tmp_path)
    data["store"]["path"] = str(tmp_path / "missing-folder" / "responder.db")
    daemon = daemons(write_config(tmp_path / "config.toml", data), tmp_path / "daemon.log")
    assert daemon.wait() == 1
    assert "missing-folder" in daemon.log()
    assert "Traceback" not in daemon.log()


def test_a_broken_config_exits_2_naming_the_key(sandbox, tmp_path, daemons):
    data = config_dict(sandbox, tmp_path)
    data["gateway"]["method"] = "put"
    daemon = daemons(write_config(tmp_path / "config.toml", data), tmp_path / "daemon.log")
    assert daemon.wait() == 2
    assert "gateway.method: must be one of" in daemon.log()


def test_a_second_daemon_on_the_same_store_refuses_to_start(sandbox, config, tmp_path, daemons):
    """Two daemons would read the account twice as often as the interval allows."""
    first = daemons(config, tmp_path / "first.log")
    first.wait_for_log("daemon_started")
    second = daemons(config, tmp_path / "second.log")
    assert second.wait() == 1
    assert f"another responder (pid {first.process.pid})" in second.log()
    first.signal(signal.SIGTERM)
    assert first.wait() == 0


def test_a_message_that_kills_the_daemon_every_time_is_set_aside(sandbox, tmp_path, daemons):
    """Under systemd a crash loop on one message would otherwise stop every reply."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "crash.py").write_text(
        "import os\nfrom responder import hookimpl\n\n"
        "@hookimpl\ndef responder_reply(message):\n"
        "    if message.text == 'BOOM':\n        os._exit(3)\n"
    )
    data = config_dict(sandbox, tmp_path, keywords=RULES, plugins={"paths": [str(folder)]})
    config = write_config(tmp_path / "config.toml", data)
    sandbox.inject("13900139000", "BOOM")
    for attempt in range(3):
        assert daemons(config, tmp_path / f"crash{attempt}.log").wait() == 3
    sandbox.inject("13800138000", "CX")
    daemon = daemons(config, tmp_path / "last.log")
    wait_for(lambda: replies_to(sandbox, "13800138000"))
    assert "message_set_aside" in daemon.log()
    assert replies_to(sandbox, "13900139000") == []
    daemon.signal(signal.SIGTERM)
    daemon.wait()
