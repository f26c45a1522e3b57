"""Shared fixtures: a real simulator on loopback, real config files, the daemon as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from responder.app import App, build_app
from responder.config import StoreSettings, settings_from_dict
from responder.daemon import Daemon
from responder.sandbox import Sandbox
from responder.store import Store, StoreBackend, open_store
from tests.pg import postgres_database, postgres_server, private_postgres  # noqa: F401 - fixtures

PASSWORD = "s3cret-密码+&Pw"

# Which store a test's daemons use. A test marked ``@pytest.mark.stores("sqlite",
# "postgresql")`` runs once per store named: ``store_backend`` (autouse, so it is set up
# before the test's own fixtures) makes ``config_dict`` and ``offline_config`` write that
# store's ``[store]`` section (and short ``[ha]`` leases on PostgreSQL), and ``store_rows``
# / ``open_test_store`` read the results back through the store interface. Unmarked tests
# stay on SQLite. Left there on purpose: the tests about the SQLite file itself (a damaged
# or unwritable file, a full disk, WAL, file permissions: tests/faults/test_store_faults.py,
# test_an_unwritable_store_is_one_clear_fatal_error), its single-host lock
# (test_a_second_daemon_on_the_same_store_refuses_to_start; PostgreSQL shares accounts by
# leases: tests/test_ha.py, tests/test_ha_cluster.py), and those reaching the file with
# sqlite3 (legacy schemas). For time only: the kill -9 loop (its audit reads
# the file with sqlite3, and each of its 24 restarts would wait out a lease) and the crash
# loop set-aside test (three crashes, a lease wait each); the menu/timeout flow test (a real
# 10 s wait) and the API token and reload tests, which do not depend on the store.
STORE_NAMES = ("sqlite", "postgresql")
PG_LEASE = 3.0
"""Seconds of ``[ha] lease`` in the tests' configurations on PostgreSQL."""


@dataclass(frozen=True)
class StoreChoice:
    """The store of one test: its name, and its PostgreSQL URL or SQLite file."""

    name: str
    url: str = ""
    path: Path | None = None

    def section(self, tmp_path: Path) -> dict[str, Any]:
        """The ``[store]`` section of a configuration made in ``tmp_path``."""
        if self.url:
            return {"url": self.url}
        return {"path": str(tmp_path / "responder.db")}

    def settings(self) -> StoreSettings:
        return StoreSettings(path=self.path or Path("responder.db"), url=self.url)


_current: list[StoreChoice] = []
"""The running test's store, while ``store_backend`` is set up (one test at a time per
process: xdist workers are processes)."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "stores(*names): run the test once per store named (sqlite, postgresql)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker("stores")
    if marker is None:
        return
    names = marker.args or STORE_NAMES
    unknown = set(names) - set(STORE_NAMES)
    assert not unknown, f"unknown stores {sorted(unknown)}: choose from {STORE_NAMES}"
    metafunc.parametrize("store_backend", names, indirect=True, ids=[f"store-{n}" for n in names])


@pytest.fixture(autouse=True)
def store_backend(request: pytest.FixtureRequest) -> Iterator[StoreChoice | None]:
    """The store of a test marked ``stores``: SQLite in its ``tmp_path``, or a fresh
    PostgreSQL database of its own. None (and SQLite) for unmarked tests."""
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return
    if name == "postgresql":
        choice = StoreChoice(name, url=request.getfixturevalue("postgres_database"))
    else:
        choice = StoreChoice(name, path=request.getfixturevalue("tmp_path") / "responder.db")
    _current.append(choice)
    try:
        yield choice
    finally:
        _current.remove(choice)


def _store_section(tmp_path: Path) -> dict[str, Any]:
    if _current:
        return _current[-1].section(tmp_path)
    return {"path": str(tmp_path / "responder.db")}


def open_test_store() -> StoreBackend:
    """The running test's store (of a test marked ``stores``), opened; the caller closes it."""
    assert _current, "only a test marked stores has a store of its own"
    return open_store(_current[-1].settings())


def store_rows(sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read (SQLite placeholders) from the running test's store, through the store
    interface, so the same assertion holds on every store; a table not made yet is empty."""
    store = open_test_store()
    try:
        return [tuple(row) for row in store.query(sql, params, missing_ok=True)]
    finally:
        store.close()


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
        "store": _store_section(tmp_path),
        "log": {"format": "json", "level": "info"},
        "replies": {"retry_initial": 0.1, "retry_max": 0.5},
    }
    if _current and _current[-1].url:
        # A daemon killed with -9 keeps its accounts' leases until they expire: short
        # leases let the next one take over within a test's patience.
        data["ha"] = {"lease": PG_LEASE}
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
        "store": _store_section(tmp_path),
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
