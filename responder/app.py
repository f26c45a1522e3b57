"""The application context every hook receives as ``app``."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import structlog

from responder.config import ConfigError, Settings
from responder.conversations import Conversation, ConversationHandle
from responder.gateway import GatewayClient, ReadGate
from responder.hours import OpeningHours
from responder.logs import redactor
from responder.models import PLATFORM_TZ, Event, Message, Reply, StatusSection
from responder.plugin_host import PluginHost
from responder.queue import DEFAULT_BACKOFF, DEFAULT_MAX_ATTEMPTS, Backoff, DurableQueue
from responder.stash import Stash
from responder.store import OUTBOX, StoreBackend, open_store

LATE_REPLIES = "late-replies"
"""The core's durable queue of late replies (``App.reply_later``)."""
LATE_REPLY_BACKOFF = Backoff(initial=1.0, maximum=60.0, jitter=0.5)
LATE_REPLY_ATTEMPTS = 5
"""Tries to apply a late reply (a core bug, not a plugin's failure) before it is dead."""


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    seconds: float
    function: Callable[[], object]


class App:
    """Settings, store, gateway client, plugins and clock of one running configuration.

    Plugins use: ``settings``, ``store``, ``gateway``, ``log``, ``plugin_config(name)``,
    ``hours`` (opening hours), ``time()`` / ``now()`` (never the system clock directly, so
    tests can control time), ``every(...)``, ``queue(...)``, ``reply_later(...)``,
    ``fallback_reply(...)``, ``conversation(...)`` and ``emit(...)``. ``dry_run`` is true under
    ``responder simulate`` and ``replay``: a plugin must then change nothing.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: StoreBackend,
        gateway: GatewayClient,
        plugins: PluginHost,
        configs: Mapping[str, Any],
        clock: Callable[[], float] = time.time,
        dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.account: str = settings.account
        """The account this app serves ("default" unless several are configured)."""
        self.store = store
        self.gateway = gateway
        self.plugins = plugins
        self.clock = clock
        self.dry_run = dry_run
        self.log = structlog.get_logger("responder")
        self.jobs: list[PeriodicJob] = []
        self.on_queued: Callable[[], None] = lambda: None
        """Called after replies were queued, so the sender can start at once."""
        self.on_enqueued: Callable[[str], None] = lambda name: None
        """Called with a durable queue's name after an item became pending in it (the
        daemon wakes the processing worker for "late-replies")."""
        self._configs = dict(configs)
        self.stash = Stash()
        self.dry_conversations: dict[tuple[str, str], Conversation | None] = {}
        """Under ``dry_run``: conversations as this run changed them, by (account, number)
        (None: ended); never written."""
        """Plugins' state for the life of this app, by ``StashKey`` (see responder.stash)."""
        self.hours = OpeningHours(settings.hours)
        """The opening hours of ``[hours]`` (always open without it): ``is_open(app.now())``,
        ``next_opening(app.now())``; see responder.hours."""

    # -- conversations (see "Conversation state" in docs/plugins.md) ---------------------

    def conversation(
        self, message: Message | str, *, account: str | None = None
    ) -> ConversationHandle:
        """The conversation of a message's sender with its account (or of a number, in
        ``account``, this app's unless named): read it (``current``), ``start``, ``move``
        or ``end`` it. Changes made while the message is handled are committed with its
        outcome (dropped when the plugin raises); otherwise at once; never under
        ``dry_run`` (they last in memory for the run)."""
        if isinstance(message, Message):
            return ConversationHandle(self, message.src, account or message.account, message.id)
        return ConversationHandle(self, message, account or self.account, None)

    def emit(self, event: Event) -> None:
        """Tell the plugins something happened: every ``responder_event`` implementation
        is called with it, on the calling thread (the webhook plugin queues a signed
        delivery durably). Under ``dry_run`` nothing is called. Give the event a ``key``
        when the same call may be repeated after a crash: it is delivered once."""
        if self.dry_run:
            return
        self.plugins.hook.responder_event(app=self, event=event)

    def redact(self, *secrets: str) -> None:
        """Hide these values (and their escaped and percent-encoded forms) in every log line.

        For a plugin's own secrets (tokens, passwords, signing keys), from its startup; the
        gateway password is hidden already. Empty values are ignored.
        """
        redactor.add_secrets([s for s in secrets if s], (self.settings.gateway.encoding,))

    def plugin_config(self, name: str) -> Any:
        """The settings object a plugin's ``ConfigSection(name, parse)`` returned."""
        return self._configs.get(name)

    def time(self) -> float:
        """Seconds since the epoch, from the app's clock."""
        return self.clock()

    def now(self) -> datetime:
        """The app's clock as an aware datetime in platform time (Asia/Shanghai)."""
        return datetime.fromtimestamp(self.clock(), PLATFORM_TZ)

    # -- threads and queues (see "Threads" in docs/plugins.md) ---------------------------

    def every(self, seconds: float, function: Callable[[], object], *, name: str) -> None:
        """Run ``function`` every ``seconds`` on the daemon's plugin executor (its own
        threads, never the read, process or send worker's); not under simulate. A run that
        is still going when the next is due makes that one skip."""
        self.jobs.append(PeriodicJob(name=name, seconds=seconds, function=function))

    def queue(
        self,
        name: str,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
    ) -> DurableQueue:
        """A durable queue of JSON payloads in the store, by name (use your plugin's name as
        a prefix: "crm-sync"). Work it from an ``app.every`` job: ``claim``, then ``done``,
        ``retry`` or ``dead`` for each item; see responder.queue. The core's queue
        "late-replies" is not open to plugins (use ``reply_later``), nor is "outbox" (the
        send thread's: replies go there through the pipeline)."""
        if name == LATE_REPLIES:
            raise ValueError(f"the queue {LATE_REPLIES!r} is the core's: use app.reply_later")
        if name == OUTBOX:
            raise ValueError(
                f"the queue {OUTBOX!r} is the core's: read it with app.store.outbox_for"
            )
        return self._queue(name, backoff, max_attempts)

    def _queue(self, name: str, backoff: Backoff, max_attempts: int | None) -> DurableQueue:
        return DurableQueue(
            self.store,
            name,
            backoff,
            self.clock,
            max_attempts=max_attempts,
            on_enqueue=lambda: self.on_enqueued(name),
            account=self.account,
        )

    @property
    def late_replies(self) -> DurableQueue:
        """The core's queue of late replies and fallback requests (``reply_later``)."""
        return self._queue(LATE_REPLIES, LATE_REPLY_BACKOFF, LATE_REPLY_ATTEMPTS)

    def reply_later(
        self,
        message: Message,
        reply: Reply | None,
        *,
        skip: str = "",
        key: str | None = None,
    ) -> bool:
        """Answer a message after its processing ended: an answer that came later, from any
        thread. Returns True once it is queued durably (or was already, under ``key``).

        The processing thread applies it before it takes the next message: before-send,
        signature, splitting and the outbox, as for any reply; a veto or an empty answer is
        recorded as the message's reason. ``reply=None`` with ``skip="<your plugin>"``
        asks for a fallback instead: the other plugins' answer (``fallback_reply``), asked
        on the processing thread. ``key`` makes the call idempotent (a plugin that may
        repeat it after a crash passes the same key: it is queued once). Returns False,
        queueing nothing, for an empty reply, a fallback without ``skip``, or under
        ``dry_run``.
        """
        from responder.pipeline import queue_late_reply

        return queue_late_reply(self, message, reply, skip=skip, key=key)

    def fallback_reply(self, message: Message, *, skip: str) -> Reply | None:
        """What the plugins other than ``skip`` answer to ``message`` (the first reply, in
        call order), or None. For the processing thread (a reply hook, or a late reply's
        fallback applied there); from another thread use ``reply_later(message, None,
        skip=...)``."""
        pm = self.plugins.pm
        skipped = pm.get_plugin(skip)
        caller = pm.subset_hook_caller(
            "responder_reply", remove_plugins=[skipped] if skipped is not None else []
        )
        result = caller(app=self, message=message)
        return result if isinstance(result, Reply) else None

    def status_sections(self) -> list[StatusSection]:
        """What the plugins add to ``responder status`` and the metrics."""
        return [s for s in self.plugins.hook.responder_status(app=self) if s is not None]

    owns_store: bool = False
    """Whether ``close`` closes the store too: ``build_app`` opened it. A store passed to
    ``build_app`` is closed by whoever opened it."""

    def close(self) -> None:
        self.gateway.close()
        if self.owns_store:
            self.store.close()


def build_app(
    settings: Settings,
    *,
    store: StoreBackend | None = None,
    clock: Callable[[], float] = time.time,
    dry_run: bool = False,
    extra_plugins: tuple[tuple[str, Any], ...] = (),
    host: PluginHost | None = None,
    transport: httpx.BaseTransport | None = None,
) -> App:
    """Load plugins and their configuration for ``settings``; raise ConfigError on problems.

    Several accounts share one ``host`` (the plugins loaded once; each account's
    configuration parsed from its own settings) and one HTTP ``transport`` (one
    connection pool and TLS context for every gateway client)."""
    host = host or PluginHost(settings, extra=extra_plugins)
    configs, problems = host.parse_configs(settings)
    if host.problems or problems:
        raise ConfigError([*host.problems, *problems])
    for warning in host.warnings:
        structlog.get_logger("responder.plugin_host").warning(
            warning.event, plugin=warning.plugin, detail=warning.text
        )
    owns_store = store is None
    store = store or open_store(settings.store, clock=clock)
    timeout = settings.gateway.timeout
    account = settings.account
    gate = ReadGate(
        settings.gateway.poll_interval,
        timeout=timeout,
        last_read=ReadGate.resume_from(
            store.last_read_at(account=account), store.last_read_end(account=account), timeout
        ),
        on_begin=functools.partial(_mark_begin, store, account),
        on_end=functools.partial(_mark_end, store, account),
        clock=clock,
    )
    gateway = GatewayClient(settings.gateway, read_gate=gate, transport=transport)
    app = App(
        settings,
        store=store,
        gateway=gateway,
        plugins=host,
        configs=configs,
        clock=clock,
        dry_run=dry_run,
    )
    app.owns_store = owns_store
    return app


def _mark_begin(store: StoreBackend, account: str, moment: float) -> None:
    store.set_last_read_at(moment, account=account)


def _mark_end(store: StoreBackend, account: str, moment: float) -> None:
    store.set_last_read_end(moment, account=account)
