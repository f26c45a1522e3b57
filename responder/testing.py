"""pytest fixtures for plugin authors (a pytest plugin, active once sms-responder is installed).

::

    @pytest.fixture
    def responder_config():
        return {"weather": {"forecasts": {"北京": "晴"}}}

    def test_reply(responder_app):
        assert responder_app.simulate("TQ 北京").text == "北京：晴"

    def test_sent(responder_daemon):
        responder_daemon.inject("TQ 北京", src="13800138000")
        assert responder_daemon.wait_for_sent()[0].text.endswith("北京：晴")

Override ``responder_config`` (configuration sections, merged into a working test
configuration) and ``responder_plugins`` (extra plugin objects) in a test module or a
conftest.py. Installed entry-point plugins and the built-ins load as in production.
"""

from __future__ import annotations

import itertools
import time
import types
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

if TYPE_CHECKING:
    from responder.app import App
    from responder.config import Settings
    from responder.daemon import Daemon
    from responder.models import Message, Reply
    from responder.pipeline import Decision
    from responder.sandbox import Sandbox, SentSms
    from responder.store import StoreBackend

DEFAULT_SRC: Final = "13800138000"
TEST_ACCOUNT: Final = ("test", "test-password")
START_TIME: Final = 1_790_000_000.0
"""Where ``responder_clock`` starts: 2026-09-22 00:53 in platform time."""


class ManualClock:
    """A clock the test moves by hand; the app under test reads it through app.time()."""

    def __init__(self, start: float = START_TIME) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, moment: datetime | float) -> None:
        """Jump to a moment (an aware datetime or epoch seconds)."""
        self.now = moment.timestamp() if isinstance(moment, datetime) else float(moment)


def make_settings(
    sections: Mapping[str, Mapping[str, Any]], *, gateway_url: str, store_path: Path
) -> Settings:
    """A valid configuration for tests: ``sections`` merged over a working base.

    The core sections (gateway, store, log, replies, ...) are merged key by key; a
    plugin's section is taken as given.
    """
    from responder.config import CORE_SECTIONS, settings_from_dict

    name, password = TEST_ACCOUNT
    data: dict[str, Any] = {
        "gateway": {
            "base_urls": [gateway_url],
            "name": name,
            "password": password,
            "poll_interval": 0.05,
            "simulator": True,
            "timeout": 2,
        },
        "store": {"path": str(store_path)},
        "replies": {"retry_initial": 0.1, "retry_max": 0.5},
    }
    for section, values in sections.items():
        if section in CORE_SECTIONS:
            data[section] = {**data.get(section, {}), **values}
        else:
            data[section] = dict(values)
    return settings_from_dict(data, source="<responder_config>", environ={})


def _named(plugins: list[Any]) -> tuple[tuple[str, Any], ...]:
    """Name each plugin; a module already loaded through its entry point is left out, so a
    plugin's tests pass the same whether or not it is installed."""
    import importlib.metadata

    installed = {ep.module for ep in importlib.metadata.entry_points(group="responder")}
    named = []
    for plugin in plugins:
        if isinstance(plugin, tuple):
            named.append(plugin)
        elif isinstance(plugin, types.ModuleType):
            if plugin.__name__ not in installed:
                short = plugin.__name__.rsplit(".", 1)[-1]
                named.append((short.removeprefix("responder_"), plugin))
        else:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
            named.append((name.lower(), plugin))
    return tuple(named)


class ResponderApp:
    """An app in dry-run mode: runs messages through the plugins and sends nothing."""

    def __init__(self, app: App, clock: ManualClock) -> None:
        self.app = app
        self.clock = clock
        self._ids = itertools.count(1)

    @property
    def store(self) -> StoreBackend:
        return self.app.store

    def message(self, text: str, *, src: str = DEFAULT_SRC, dst: str = "") -> Message:
        """An inbound message as the daemon would hand it to the plugins."""
        from responder.models import Message

        number = next(self._ids)
        return Message(
            id=number,
            gateway_id=number,
            src=src,
            dst=dst or self.app.settings.gateway.sender,
            text=text,
            received_at=self.app.now(),
            raw="",
        )

    def decide(self, text: str, *, src: str = DEFAULT_SRC, dst: str = "") -> Decision:
        """Everything the plugins decided: drop reason, reply, veto, composed SMS."""
        from responder.pipeline import decide

        return decide(self.app, self.message(text, src=src, dst=dst))

    def simulate(self, text: str, *, src: str = DEFAULT_SRC, dst: str = "") -> Reply | None:
        """The reply that would be sent (after before-send), or None (dropped, vetoed, none)."""
        return self.decide(text, src=src, dst=dst).final


class DaemonHarness:
    """A daemon running in this process against a sandbox gateway."""

    def __init__(self, daemon: Daemon, sandbox: Sandbox, notifications: list[str]) -> None:
        self.daemon = daemon
        self.sandbox = sandbox
        self.notifications = notifications
        """Every sd_notify line the daemon sent (READY=1, STATUS=..., ...)."""
        self.injected = 0
        """Messages injected through ``inject``."""

    @property
    def app(self) -> App:
        assert self.daemon.app is not None, "the daemon is not running"
        return self.daemon.app

    @property
    def store(self) -> StoreBackend:
        return self.app.store

    def inject(self, text: str, *, src: str = DEFAULT_SRC, dst: str | None = None) -> int:
        """A customer sends an SMS: queued on the gateway for the daemon to read."""
        message_id = self.sandbox.inject(src, text, dst=dst)
        self.injected += 1
        return message_id

    def sent(self) -> list[SentSms]:
        """Every SMS the gateway accepted, oldest first."""
        return self.sandbox.sent()

    def wait_for_sent(self, count: int = 1, timeout: float = 10.0) -> list[SentSms]:
        """Wait until at least ``count`` SMS were sent; returns them all."""
        self.wait_until(lambda: len(self.sent()) >= count, timeout, f"{count} SMS sent")
        return self.sent()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every message injected here was journaled and handled, and the outbox
        is empty (a message lost to a gateway fault makes this time out)."""
        from responder.store import PENDING, PROCESSED, RECEIVED, SENDING

        def idle() -> bool:
            status = self.store.status()
            busy = sum(status.messages.get(state, 0) for state in (RECEIVED, PROCESSED))
            busy += sum(status.outbox.get(state, 0) for state in (PENDING, SENDING))
            journaled = sum(status.messages.values())
            return not self.sandbox.pending() and journaled >= self.injected and not busy

        self.wait_until(idle, timeout, "the daemon to be idle")

    @staticmethod
    def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")

    def stop(self) -> None:
        if not self.daemon.stopping.is_set():
            self.daemon.stop()


@pytest.fixture
def responder_config() -> dict[str, dict[str, Any]]:
    """Configuration sections for the app under test; override this fixture."""
    return {}


@pytest.fixture
def responder_plugins() -> list[Any]:
    """Extra plugins to register (modules, classes or ``(name, plugin)`` pairs); override it."""
    return []


@pytest.fixture
def responder_clock() -> ManualClock:
    """The clock of ``responder_app`` (the daemon uses real time)."""
    return ManualClock()


@pytest.fixture
def responder_app(
    responder_config: dict[str, dict[str, Any]],
    responder_plugins: list[Any],
    responder_clock: ManualClock,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ResponderApp]:
    """A dry-run app: ``responder_app.simulate(text, src=...)`` returns the final Reply.

    The plugins' ``responder_startup`` runs (on a throwaway store), their periodic jobs
    do not.
    """
    from responder.app import build_app
    from responder.store import Store

    folder = tmp_path_factory.mktemp("responder-app")
    settings = make_settings(
        responder_config, gateway_url="http://127.0.0.1:9", store_path=folder / "app.db"
    )
    store = Store(settings.store.path, clock=responder_clock)
    app = build_app(
        settings,
        store=store,
        clock=responder_clock,
        dry_run=True,
        extra_plugins=_named(responder_plugins),
    )
    app.plugins.hook.responder_startup(app=app)
    try:
        yield ResponderApp(app, responder_clock)
    finally:
        app.plugins.hook.responder_shutdown(app=app)
        app.close()
        store.close()


@pytest.fixture
def responder_sandbox() -> Iterator[Sandbox]:
    """The gateway simulator ``responder_daemon`` talks to (no read interval)."""
    from responder.sandbox import Sandbox

    name, password = TEST_ACCOUNT
    with Sandbox(name=name, password=password, min_read_interval=0) as sandbox:
        yield sandbox


@pytest.fixture
def responder_daemon(
    responder_config: dict[str, dict[str, Any]],
    responder_plugins: list[Any],
    responder_sandbox: Sandbox,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DaemonHarness]:
    """The whole daemon, started in this process against ``responder_sandbox``."""
    from responder.daemon import Daemon

    folder = tmp_path_factory.mktemp("responder-daemon")
    settings = make_settings(
        responder_config, gateway_url=responder_sandbox.url, store_path=folder / "daemon.db"
    )
    notifications: list[str] = []
    daemon = Daemon(
        settings=settings,
        extra_plugins=_named(responder_plugins),
        notify=notifications.append,
        configure_logs=False,
    )
    daemon.start()
    harness = DaemonHarness(daemon, responder_sandbox, notifications)
    try:
        yield harness
    finally:
        harness.stop()
