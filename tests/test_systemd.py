"""What systemd sees: the daemon, run as a subprocess, notifying a socket the test binds."""

from __future__ import annotations

import queue
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import config_dict, write_config

BLOCKER = """
import pathlib, time
from responder import hookimpl

HERE = pathlib.Path(__file__).parent

@hookimpl
def responder_reply(app, message):
    if message.text != "BLOCK":
        return None
    (HERE / "blocked").touch()
    while not (HERE / "release").exists():
        time.sleep(0.05)
    return None
"""


class NotifyListener:
    """An abstract unix datagram socket collecting what the daemon sends."""

    def __init__(self) -> None:
        self.name = f"@responder-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.settimeout(0.2)
        self.received: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self._queue.put(data.decode())

    def next(self, predicate: Callable[[str], bool], timeout: float = 15.0) -> str:
        """The next message that satisfies ``predicate`` (every message is kept in received)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self._queue.get(timeout=left)
            except queue.Empty:
                break
            self.received.append(message)
            if predicate(message):
                return message
        raise AssertionError(f"no matching notification in {timeout} s; got {self.received}")

    def quiet(self, predicate: Callable[[str], bool], seconds: float) -> bool:
        """True when no matching message arrives for ``seconds``."""
        try:
            self.next(predicate, timeout=seconds)
        except AssertionError:
            return True
        return False

    def close(self) -> None:
        self._closed.set()
        self.sock.close()


def has(key: str) -> Callable[[str], bool]:
    return lambda message: key in message.split("\n")


def states(messages: list[str]) -> list[str]:
    keys = ("READY=1", "RELOADING=1", "STOPPING=1")
    return [line for message in messages for line in message.split("\n") if line in keys]


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    notify = NotifyListener()
    yield notify
    notify.close()


def test_start_reload_and_stop_are_notified_in_order(sandbox, tmp_path, daemons, listener):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    daemon = daemons(config, tmp_path / "log", env={"NOTIFY_SOCKET": listener.name})

    ready = listener.next(has("READY=1"))
    assert sandbox.stats().reads >= 1, "READY=1 came before the first gateway read"
    assert re.search(
        r"^STATUS=last read \d+ s ago; 0 messages today; outbox 0(; balance \d+)?$", ready, re.M
    )
    daemon.signal(signal.SIGHUP)
    reloading = listener.next(has("RELOADING=1"))
    listener.next(has("READY=1"))
    daemon.signal(signal.SIGTERM)
    listener.next(has("STOPPING=1"))

    assert daemon.wait() == 0
    assert states(listener.received) == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    usec = dict(line.split("=", 1) for line in reloading.split("\n"))["MONOTONIC_USEC"]
    assert usec.isdigit()
    assert abs(int(usec) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 60_000_000


def test_ready_after_a_refused_login_says_why(sandbox, tmp_path, daemons, listener):
    sandbox.set_fault("login", endpoint="read")
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    daemons(config, tmp_path / "log", env={"NOTIFY_SOCKET": listener.name})

    ready = listener.next(has("READY=1"))

    assert "STATUS=ready, but the first read failed: login refused" in ready


def test_watchdog_pings_stop_while_the_process_loop_is_wedged(sandbox, tmp_path, daemons, listener):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "blocker.py").write_text(BLOCKER, encoding="utf-8")
    data = config_dict(sandbox, tmp_path, plugins={"paths": [str(plugins)]})
    config = write_config(tmp_path / "config.toml", data)
    env = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "1000000"}
    daemon = daemons(config, tmp_path / "log", env=env)
    for _ in range(2):
        listener.next(has("WATCHDOG=1"))

    sandbox.inject("13800138000", "BLOCK")
    wedged = listener.next(lambda m: m.startswith("STATUS=wedged"))
    assert "process" in wedged
    assert listener.quiet(has("WATCHDOG=1"), seconds=2.0), "pinged while wedged"

    (plugins / "release").touch()
    listener.next(has("WATCHDOG=1"))
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert (plugins / "blocked").exists()
    assert '"event": "watchdog_withheld"' in daemon.log()


def test_status_line_shows_live_figures(responder_daemon):
    responder_daemon.inject("hello")
    responder_daemon.wait_idle()

    responder_daemon.daemon.supervisor.send_status()

    status = responder_daemon.notifications[-1]
    assert status.startswith("STATUS=last read ")
    assert "; 1 message today; outbox 0" in status


def test_status_line_leads_with_a_refused_login(responder_daemon):
    responder_daemon.sandbox.set_fault("login")
    responder_daemon.wait_until(
        lambda: responder_daemon.daemon.account.state == "login_refused", what="login failure"
    )

    responder_daemon.daemon.supervisor.send_status()

    assert responder_daemon.notifications[-1].startswith("STATUS=LOGIN REFUSED")


def test_a_wedged_read_loop_is_reported(responder_daemon, monkeypatch):
    supervisor = responder_daemon.daemon.supervisor
    heartbeat = supervisor.heartbeat
    now = heartbeat.clock()
    monkeypatch.setattr(heartbeat, "clock", lambda: now + 3600)

    assert supervisor.stalled() is not None
    assert "read" in (supervisor.stalled() or "")


def test_a_turning_daemon_is_not_stalled(responder_daemon):
    responder_daemon.inject("hello")
    responder_daemon.wait_idle()

    assert responder_daemon.daemon.supervisor.stalled() is None


def test_the_unit_ships_where_responder_unit_finds_it(capsys):
    from responder.cli import main, unit_file

    assert main(["unit"]) == 0
    assert capsys.readouterr().out == unit_file().read_text(encoding="utf-8")
    assert unit_file() == Path(__file__).parent.parent / "systemd" / "responder.service"


def test_the_unit_stop_timeout_fits_a_read_at_the_largest_gateway_timeout():
    """A stop waits for a read in flight; systemd must not kill the daemon before it ends."""
    from responder.config import ConfigError, settings_from_dict
    from responder.daemon import read_stop_wait

    def gateway(timeout: float) -> dict:
        urls = [f"http://127.0.0.{n}:8800" for n in range(1, 12)]
        return {"gateway": {"base_urls": urls, "name": "a", "password": "b", "timeout": timeout}}

    with pytest.raises(ConfigError):
        settings_from_dict(gateway(121), environ={})
    largest = settings_from_dict(gateway(120), environ={}).gateway
    unit = (Path(__file__).parent.parent / "systemd" / "responder.service").read_text()
    [stop] = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert read_stop_wait(largest) <= int(stop)
