"""Shared fixtures: a real simulator on loopback, real config files, the daemon as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from responder.app import App, build_app
from responder.config import settings_from_dict
from responder.daemon import Daemon
from responder.sandbox import Sandbox
from responder.store import Store
from tests.pg import postgres_database, postgres_server, private_postgres  # noqa: F401 - fixtures

PASSWORD = "s3cret-密码+&Pw"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A simulator with no read interval, answering to account "acct" / PASSWORD."""
    with Sandbox(name="acct", password=PASSWORD, min_read_interval=0) as server:
        yield server


def config_dict(sandbox: Sandbox, tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A complete configuration for ``sandbox``; keyword arguments update whole sections."""
    data: dict[str, Any] = {
        "gateway": {
            "base_urls": [sandbox.url],
            "name": "acct",
            "password": PASSWORD,
            "poll_interval": 0.1,
            "simulator": True,
            "timeout": 2,
        },
        "store": {"path": str(tmp_path / "responder.db")},
        "log": {"format": "json", "level": "info"},
        "replies": {"retry_initial": 0.1, "retry_max": 0.5},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def offline_config(tmp_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A valid configuration whose gateway is never called (check, plugins, simulate)."""
    data: dict[str, Any] = {
        "gateway": {
            "base_urls": ["http://127.0.0.1:9"],
            "name": "acct",
            "password": "pw",
            "simulator": True,
            "poll_interval": 0.1,
        },
        "store": {"path": str(tmp_path / "responder.db")},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return data


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[Callable[..., App]]:
    """Build an App (no scheduler) from a config dict; closed after the test."""
    apps: list[App] = []

    def make(data: dict[str, Any], *, clock: Callable[[], float] = time.time, **kwargs: Any) -> App:
        settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
        app = build_app(
            settings, store=Store(settings.store.path, clock=clock), clock=clock, **kwargs
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.store.close()
        app.close()


class Clock:
    """A clock tests move by hand."""

    def __init__(self, start: float = 1_790_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start a daemon in this process from a configuration (``config_dict``) whose store
    is on ``tmp_path``; each one started is stopped after the test. ``before_start`` sees
    the daemon before it starts; other keyword arguments go to ``Daemon``."""
    started: list[Daemon] = []

    def start(
        data: dict[str, Any],
        *,
        notify: Callable[[str], None] = lambda _line: None,
        before_start: Callable[[Daemon], None] = lambda _daemon: None,
        **options: Any,
    ) -> Daemon:
        settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
        daemon = Daemon(settings=settings, notify=notify, configure_logs=False, **options)
        before_start(daemon)
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        if not daemon.stopping.is_set():
            daemon.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {predicate}")


class DaemonProcess:
    """``responder run`` as a real subprocess, its log in a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "responder", "run", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, needle: str, timeout: float = 15.0) -> None:
        wait_for(lambda: needle in self.log() or self.process.poll() is not None, timeout)
        assert needle in self.log(), f"{needle!r} not in the daemon's log:\n{self.log()}"

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 15.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()


@pytest.fixture
def daemons() -> Iterator[Callable[..., DaemonProcess]]:
    """Start daemons as subprocesses; any still running are killed after the test."""
    started: list[DaemonProcess] = []

    def start(config: Path, log: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, log, env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.process.poll() is None:
            daemon.process.kill()
            daemon.wait()
