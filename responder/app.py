"""The application context every hook receives as ``app``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from responder.config import ConfigError, Settings
from responder.gateway import GatewayClient, ReadGate
from responder.models import PLATFORM_TZ, Message, Reply, StatusSection
from responder.plugin_host import PluginHost
from responder.store import Store


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    seconds: float
    function: Callable[[], object]


class App:
    """Settings, store, gateway client, plugins and clock of one running configuration.

    Plugins use: ``settings``, ``store``, ``gateway``, ``log``, ``plugin_config(name)``,
    ``time()`` / ``now()`` (never the system clock directly, so tests can control
    time), ``every(...)`` and ``reply_later(...)``. ``dry_run`` is true under
    ``responder simulate`` and ``replay``: a plugin must then change nothing.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        gateway: GatewayClient,
        plugins: PluginHost,
        configs: Mapping[str, Any],
        clock: Callable[[], float] = time.time,
        dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.gateway = gateway
        self.plugins = plugins
        self.clock = clock
        self.dry_run = dry_run
        self.log = structlog.get_logger("responder")
        self.jobs: list[PeriodicJob] = []
        self.on_queued: Callable[[], None] = lambda: None
        """Called after replies were queued, so the sender can start at once."""
        self._configs = dict(configs)

    def plugin_config(self, name: str) -> Any:
        """The settings object a plugin's ``ConfigSection(name, parse)`` returned."""
        return self._configs.get(name)

    def time(self) -> float:
        """Seconds since the epoch, from the app's clock."""
        return self.clock()

    def now(self) -> datetime:
        """The app's clock as an aware datetime in platform time (Asia/Shanghai)."""
        return datetime.fromtimestamp(self.clock(), PLATFORM_TZ)

    def every(self, seconds: float, function: Callable[[], object], *, name: str) -> None:
        """Run ``function`` every ``seconds`` on the daemon's scheduler (not under simulate)."""
        self.jobs.append(PeriodicJob(name=name, seconds=seconds, function=function))

    def reply_later(self, message: Message, reply: Reply) -> bool:
        """Answer a message after its processing ended (an answer that came later).

        The reply goes through before-send, signature and splitting like any other.
        Returns False when it was vetoed or empty.
        """
        from responder.pipeline import queue_late_reply

        return queue_late_reply(self, message, reply)

    def status_sections(self) -> list[StatusSection]:
        """What the plugins add to ``responder status`` and the metrics."""
        return [s for s in self.plugins.hook.responder_status(app=self) if s is not None]

    def close(self) -> None:
        self.gateway.close()


def build_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
    extra_plugins: tuple[tuple[str, Any], ...] = (),
) -> App:
    """Load plugins and their configuration for ``settings``; raise ConfigError on problems."""
    host = PluginHost(settings, extra=extra_plugins)
    configs, problems = host.parse_configs(settings)
    if host.problems or problems:
        raise ConfigError([*host.problems, *problems])
    for warning in host.warnings:
        structlog.get_logger("responder.plugin_host").warning(
            warning.event, plugin=warning.plugin, detail=warning.text
        )
    store = store or Store(settings.store.path, clock=clock)
    timeout = settings.gateway.timeout
    gate = ReadGate(
        settings.gateway.poll_interval,
        timeout=timeout,
        last_read=ReadGate.resume_from(store.last_read_at(), store.last_read_end(), timeout),
        on_begin=store.set_last_read_at,
        on_end=store.set_last_read_end,
        clock=clock,
    )
    gateway = GatewayClient(settings.gateway, read_gate=gate)
    return App(
        settings,
        store=store,
        gateway=gateway,
        plugins=host,
        configs=configs,
        clock=clock,
        dry_run=dry_run,
    )
