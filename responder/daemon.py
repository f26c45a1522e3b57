"""The daemon: one App per account, one store, shared threads.

Every configuration runs here: a single-account file is one account, "default"; a file
with ``[accounts] include`` adds one account per included file. ``Daemon(config_path)``
builds it (``Daemon(settings=...)`` for tests and ``responder demo``). Each account has
its own App (settings, gateway client, read gate, stash, opening hours, plugin
configurations) and its own state machine (``responder.account``); they share the store,
the loaded plugins (one host per distinct ``[plugins]`` table) and one HTTP transport
(one connection pool, one TLS context). The threads:

- read scheduler: a heap of each account's next due read; it hands each due account
  to a small pool of reader threads (``min(8, n)``), so that one account's slow gateway,
  refused login or backoff never holds another's read;
- process: the only thread that calls the message hooks: work handed over
  (``on_processor``), scheduled sends falling due, late replies, then the next journaled
  message of the accounts that have some, in turn;
- send: the due outbox rows of every account whose state lets it send; an account whose
  gateway refuses it is held without stopping the others;
- timed jobs (APScheduler): plugin jobs per account, retention, conversation expiry,
  STATUS= and the watchdog (``responder.supervision``).

The process worker first marks pending again the late replies a previous process had
claimed; the send worker first deals with the sends a previous process left in flight.

SIGHUP reads the files again: new accounts start, removed ones stop once their read in
flight ended, changed ones are rebuilt; an account whose file is now broken keeps
running as it was (or stays absent when new); the others are not touched.
"""

from __future__ import annotations

import heapq
import itertools
import math
import signal
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import httpx
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from responder import outbound, pipeline, sending
from responder.account import Account, AccountStatus
from responder.accounts import AccountsConfig, load_accounts
from responder.app import LATE_REPLIES, App, build_app
from responder.backoff import Backoff
from responder.config import ConfigError, GatewaySettings, PluginSettings, Settings
from responder.gateway import (
    CONNECT_TIMEOUT,
    AccountError,
    AccountState,
    OutcomeUnknown,
    ReadTooSoon,
    TransientError,
)
from responder.ha import Leases, LocalLeases, ReadFenced, leases_for
from responder.logs import configure_logging, redactor
from responder.models import Message
from responder.notify import Notifier, monotonic_usec
from responder.plugin_host import PluginHost
from responder.store import (
    RECEIVED,
    JournalUnwritable,
    StoreBackend,
    StoreError,
    is_storage_failure,
    open_store,
    store_name,
)
from responder.supervision import Supervisor
from responder.supervision import summary_line as summary_line
from responder.workers import JobThreads, Worker

if TYPE_CHECKING:
    from responder.api.server import ApiServer
    from responder.metrics import MetricsServer

MAX_READ_BACKOFF: Final = 300.0
WORK_TICK: Final = 1.0
"""Seconds an idle process or send worker waits before it looks again unwoken (the send
worker's retries fall due without a wake-up)."""
ROOM_CHECK_INTERVAL: Final = 1.0
"""Seconds between two looks at the store's free room while reads are not held."""
READ_TICK_MIN: Final = 0.2
"""The shortest time between two read steps that found nothing (a 0 s interval)."""
STOP_TIMEOUT: Final = 8.0
"""Seconds a stop waits for the message or send in hand (a read in flight gets longer)."""
JOB_STOP_TIMEOUT: Final = 2.0
"""Seconds a stop waits for timed jobs under way (plugin jobs, retention) before it leaves
them: their threads end with the process."""
RETENTION_INTERVAL: Final = 3600.0
"""Seconds between two runs of the retention job (``store.keep_days``); one runs at start."""
EXPIRY_INTERVAL: Final = 30.0
"""Seconds between two runs of the job that ends expired conversations; one runs at start
(an expired conversation reads as absent before it runs)."""
EXPIRY_BATCH: Final = 500
"""Conversations ended per transaction by the expiry job."""
STOP_MARGIN: Final = 5.0
"""Seconds beyond a read's longest request for a stop to journal what the read brought."""
CORE: Final = "default"
PLUGINS: Final = "plugins"
"""The scheduler's executors: the core's timed jobs (APScheduler's "default", so that no
job can land on a pool of APScheduler's own), and the plugins' (``app.every``)."""

Notify = Callable[[str], None]


class ProcessorUnavailable(TimeoutError):
    """Work handed to the processing worker (``Daemon.on_processor``) did not run, or its
    answer did not come in time: the daemon is stopping, or the worker is busy. A
    TimeoutError, so that callers may catch either."""


def read_stop_wait(gateway: GatewaySettings) -> float:
    """The longest a stop waits for a read in flight: a failed connection to each server
    address but the last (a read moves on only when it could not connect), the whole
    request on the last one, and a margin to journal what it brought."""
    connect = min(gateway.timeout, CONNECT_TIMEOUT)
    return max(len(gateway.base_urls), 1) * connect + gateway.timeout + STOP_MARGIN


def read_backoff(gateway: GatewaySettings) -> Backoff:
    """After failed reads: 2 × poll_interval, then doubling, at most MAX_READ_BACKOFF.

    At least one interval beyond the normal one: after 读取过于频繁 the platform counted the
    refused call too. No jitter: the read gate spaces reads anyway."""
    return Backoff(initial=2 * gateway.poll_interval, maximum=MAX_READ_BACKOFF, jitter=0.0)


READERS: Final = 8
"""Reader threads at most (fewer for fewer accounts)."""
LEASE_CHECK: Final = 0.5
"""Seconds between two looks at an account another instance reads (a lease taken
over is read from within this)."""
SWEEP_INTERVAL: Final = 10.0
"""Seconds between two looks for journaled messages of held accounts nobody processes
(shared leases only)."""
RETIRED_CLOSE_AFTER: Final = 60.0
"""Seconds a replaced App's gateway client stays open for a send still using it."""

log = structlog.get_logger("responder.daemon")
T = TypeVar("T")


class SharedTransport(httpx.BaseTransport):
    """One HTTP transport (connection pool, TLS context) lent to every gateway client:
    a client's ``close`` leaves it open; the daemon closes it when it stops."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=32))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        """A client closing: the transport stays (``shutdown`` closes it)."""

    def shutdown(self) -> None:
        self.inner.close()


@dataclass(eq=False)
class Served:
    """One account being served: its App, its state, its read bookkeeping."""

    id: str
    app: App
    state: Account
    generation: int = 0
    failures: int = 0
    backoff_until: float = 0.0
    reading: bool = False
    retired: bool = False
    reads: Counter[str] = field(default_factory=Counter)
    read_errors: int = 0
    """Failed reads in a row (refused, failed, too soon), for STATUS=."""
    last_error: str = ""
    last_read_ok: float | None = None
    read_ok_saved_at: float = -math.inf


@dataclass(frozen=True)
class AccountSummary:
    """One account in ``summary``: its state and its reads since start."""

    account: str
    state: AccountState
    reads: Mapping[str, int]
    last_read_ok: float | None


def plugin_job_id(account: str, name: str) -> str:
    """A plugin job's id (and its thread's name): "plugin:<name>" for the account
    "default", "plugin:<account>:<name>" for the others."""
    return f"plugin:{name}" if account == "default" else f"plugin:{account}:{name}"


class Daemon:
    """The accounts of one configuration: start(), then stop(); run() does both.

    ``config_path``: the main file (reloaded on SIGHUP); or ``settings``: one account's
    settings, "default", without a file (tests, the demo; no reload)."""

    def __init__(
        self,
        config_path: str | None = None,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
        notify: Notify | None = None,
        configure_logs: bool = True,
        extra_plugins: tuple[tuple[str, Any], ...] = (),
    ) -> None:
        if settings is None and config_path is None:
            raise ValueError("a daemon needs a configuration file or settings")
        self.config_path = config_path
        self._initial_settings = settings
        self.clock = clock
        self.notify: Notify = notify or Notifier.from_environ()
        self.configure_logs = configure_logs
        self.extra_plugins = extra_plugins
        self.stopping = threading.Event()
        self.exit_code = 0
        self.main: Settings | None = None
        self.store: StoreBackend | None = None
        self.served: dict[str, Served] = {}
        self.rejected: dict[str, tuple[str, ...]] = {}
        self.transport = SharedTransport()
        self._hosts: dict[PluginSettings, PluginHost] = {}
        self._generations = itertools.count(1)
        self._heap: list[tuple[float, int, str, int]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._pool: ThreadPoolExecutor | None = None
        self._scheduler_thread: threading.Thread | None = None
        self._scheduler: BackgroundScheduler | None = None
        self._executors: dict[str, JobThreads] = {}
        self.workers: dict[str, Worker] = {}
        self._paused = threading.Event()
        self._requests: list[str] = []
        self._wake = threading.Event()
        self._tasks: deque[tuple[Callable[[App], Any], Future[Any], str | None]] = deque()
        self._tasks_lock = threading.Lock()
        self._inbox: OrderedDict[str, None] = OrderedDict()
        """Accounts that may have journaled messages not processed yet, in turn."""
        self._inbox_lock = threading.Lock()
        self._late_due: dict[str, float] = {}
        """Accounts whose late replies may be due, with when (app time)."""
        self._outbound_due_at = 0.0
        self._outbound_checked_at = -math.inf
        self._unserved: set[str] = set()
        """Accounts with outbox rows but not served (removed): their rows wait."""
        self.read_hold: str | None = None
        """Why reading is held (the journal could not take a message), "" when it is not;
        None before the first check."""
        self._room_checked_at = -math.inf
        self._inbox_checked_at = -math.inf
        self.supervisor = Supervisor(self)
        self.lateness: deque[float] = deque(maxlen=100_000)
        """Seconds each read step began after it was due (the benchmark reads them)."""
        self.metrics: MetricsServer | None = None
        self.api: ApiServer | None = None
        self._retired: list[tuple[float, App]] = []
        self.leases: Leases = LocalLeases()
        self._swept_at = -math.inf
        self.reloaded: dict[str, list[str]] = {}
        """What the last reload added, removed, changed, kept as it was and rejected."""
        """The accounts this instance may read, process and send (responder.ha)."""

    # -- configuration ---------------------------------------------------------------

    def _load(self) -> AccountsConfig:
        if self.config_path is None:
            assert self._initial_settings is not None
            settings = self._initial_settings
            return AccountsConfig(main=settings, accounts={settings.account: settings})
        config = load_accounts(self.config_path)
        if config.problems or config.main is None:
            raise ConfigError(list(config.problems))
        return config

    def _configure_logs(self, main: Settings) -> None:
        if self.configure_logs:
            configure_logging(
                format=main.log.format,
                level=main.log.level,
                secrets=main.secrets(),
                encodings=(main.gateway.encoding,),
            )

    def _redact(self, settings: Settings) -> None:
        redactor.add_secrets(settings.secrets(), (settings.gateway.encoding,))

    def _host(self, settings: Settings) -> PluginHost:
        """The plugins of ``settings``: loaded once per distinct [plugins] table."""
        host = self._hosts.get(settings.plugins)
        if host is None:
            host = PluginHost(settings, extra=self.extra_plugins)
            self._hosts[settings.plugins] = host
        return host

    def _build(self, settings: Settings) -> App:
        assert self.store is not None
        app = build_app(
            settings,
            store=self.store,
            clock=self.clock,
            host=self._host(settings),
            transport=self.transport,
        )
        if settings.account != "default":
            app.log = app.log.bind(account=settings.account)
        app.gateway.read_gate.fence = self.leases.fence(
            settings.account,
            interval=settings.gateway.poll_interval,
            timeout=settings.gateway.timeout,
        )
        return app

    def _single(self) -> bool:
        """Whether this is a single-account configuration (no ``[accounts] include``):
        its one account's problems are the configuration's."""
        return self.main is None or not self.main.accounts.include

    def _reject(self, account: str, problems: tuple[str, ...] | list[str], *, kept: bool) -> None:
        self.rejected[account] = tuple(problems)
        if self._single():  # not one account among others: the configuration is rejected
            if kept:
                log.error("reload_rejected", problems=list(problems), keeping="the running config")
            return
        log.error(
            "account_rejected",
            account=account,
            problems=list(problems),
            keeping="the running configuration" if kept else "not served",
        )

    # -- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, start every good account and the threads. ConfigError when the
        main file is broken; StoreError when the store is."""
        config = self._load()
        main = config.main
        assert main is not None
        self.main = main
        self._configure_logs(main)
        self.store = open_store(main.store, clock=self.clock)
        self.leases = leases_for(self.store, main.ha)
        if isinstance(self.leases, LocalLeases):
            self.store.claim_exclusive()  # else: the leases share the accounts
        self.store.verify()
        for account, problems in config.rejected.items():
            self._reject(account, problems, kept=False)
        count = len(config.accounts)
        for index, (account, settings) in enumerate(config.accounts.items()):
            # The first reads spread over one interval: a thousand accounts do not all
            # read in the first second, and then again together at every interval.
            self._add(account, settings, first_read=settings.gateway.poll_interval * index / count)
        if self._single() and self.rejected:  # its one account cannot run: nothing can
            self.store.close()
            raise ConfigError([p for problems in self.rejected.values() for p in problems])
        self.leases.start(self.served)
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, min(READERS, len(self.served) or 1)),
            thread_name_prefix="responder-read",
        )
        if main.metrics.listen:
            from responder.metrics import start_metrics

            several = bool(main.accounts.include)  # else the one account's, unlabelled
            self.metrics = start_metrics(
                main,
                self._default_app,
                self.supervisor.reads,
                collector=AccountsCollector(self) if several else None,
            )
        if main.api.enabled:
            self._start_api(main)
        self.workers = {
            "process": self._worker(
                "process", self._process_step, self._process_idle, self._recover_late_replies
            ),
            "send": self._worker("send", self._send_step, lambda: WORK_TICK, self._recover),
        }
        self._executors = {CORE: JobThreads("core"), PLUGINS: JobThreads("plugins")}
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors=dict(self._executors),
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        for served in self.served.values():
            self._schedule_plugin_jobs(served)
        self._core_jobs()
        self._scheduler.start()
        for worker in self.workers.values():
            worker.start()
        self._scheduler_thread = threading.Thread(
            target=self._read_loop, name="responder-read-scheduler", daemon=True
        )
        self._scheduler_thread.start()
        log.info(
            "daemon_started",
            accounts=len(self.served),
            rejected=sorted(self.rejected) or None,
            readers=self._pool._max_workers,
            store=store_name(main.store),
            **self._started_detail(),
        )
        if not self.served:
            self.supervisor.became_ready()

    def _started_detail(self) -> dict[str, Any]:
        """For ``daemon_started`` with one account: its plugins, interval and first read."""
        if len(self.served) != 1:
            return {}
        app = next(iter(self.served.values())).app
        return {
            "plugins": app.plugins.names(),
            "poll_interval": app.settings.gateway.poll_interval,
            "first_read_in": round(app.gateway.read_gate.seconds_left(), 3),
        }

    def _core_jobs(self) -> None:
        assert self._scheduler is not None
        soon = self._utc_in(0)
        for job_id, seconds, step in (
            ("retention", RETENTION_INTERVAL, self._retention_step),
            ("conversation-expiry", EXPIRY_INTERVAL, self._expiry_step),
        ):
            self._scheduler.add_job(
                lambda n=job_id, s=step: self.guarded(n, s),
                IntervalTrigger(seconds=seconds),
                id=job_id,
                next_run_time=soon,
                executor=CORE,
            )
        self.supervisor.schedule(self._scheduler, executor=CORE)

    def _add(self, account: str, settings: Settings, *, first_read: float = 0.0) -> Served | None:
        """Build and start one account; None (rejected alone) when its plugins' sections
        are wrong."""
        assert self.store is not None
        try:
            app = self._build(settings)
        except ConfigError as err:
            self._reject(account, err.problems, kept=False)
            return None
        self._redact(settings)
        state = Account(
            self.store,
            settings.gateway,
            clock=self.clock,
            on_change=self._account_changed,
            account=account,
        )
        served = Served(id=account, app=app, state=state, generation=next(self._generations))
        self._install(served)
        self.served[account] = served
        self.rejected.pop(account, None)
        self._push(served, self.clock() + first_read if first_read else 0.0)
        with self._inbox_lock:
            self._inbox[account] = None
        self._late_due[account] = 0.0
        return served

    def _install(self, served: Served) -> None:
        app, account = served.app, served.id
        app.on_queued = lambda: self.kick("send")
        app.on_enqueued = lambda queue: self._enqueued(account, queue)
        with structlog.contextvars.bound_contextvars(account=account):
            app.plugins.hook.responder_startup(app=app)

    def _enqueued(self, account: str, queue: str) -> None:
        if queue == LATE_REPLIES:
            self._late_due[account] = 0.0
            self.kick("process")

    def _schedule_plugin_jobs(self, served: Served) -> None:
        if self._scheduler is None:
            return
        for job in served.app.jobs:
            self._scheduler.add_job(
                self._plugin_job(served.id, job.name, job.function),
                IntervalTrigger(seconds=job.seconds),
                id=plugin_job_id(served.id, job.name),
                replace_existing=True,
                next_run_time=self._utc_in(0),
                executor=PLUGINS,
            )

    def _unschedule_plugin_jobs(self, served: Served) -> None:
        if self._scheduler is None:
            return
        for job in served.app.jobs:
            job_id = plugin_job_id(served.id, job.name)
            if self._scheduler.get_job(job_id) is not None:
                self._scheduler.remove_job(job_id)

    def _plugin_job(
        self, account: str, name: str, function: Callable[[], object]
    ) -> Callable[[], bool]:
        def step() -> bool:
            with structlog.contextvars.bound_contextvars(account=account):
                function()
            return False

        return lambda: self.guarded(plugin_job_id(account, name), step)

    def _worker(
        self,
        name: str,
        step: Callable[[], bool],
        idle: Callable[[], float],
        first: Callable[[], bool] | None = None,
    ) -> Worker:
        return Worker(
            name,
            self.supervisor.wrap(name, step),
            guard=self.guarded,
            idle=idle,
            stopping=self.stopping,
            paused=self._paused,
            first=first,
        )

    def _start_api(self, main: Settings) -> None:
        from responder.api.context import ApiContext, ApiUnavailable
        from responder.api.server import ApiBindError, start_api

        def on_processor(fn: Callable[[App], T], timeout: float) -> T:
            try:
                return self.on_processor(fn, timeout)
            except ProcessorUnavailable as err:
                raise ApiUnavailable(str(err)) from None

        context = ApiContext(
            app=self._default_app,
            on_processor=on_processor,
            app_for=self.app_for,
            accounts=lambda: sorted(self.served),
        )
        try:
            self.api = start_api(context, main.api)
        except ApiBindError as err:
            raise ConfigError([f"{main.source}: api.listen: {err}"]) from None

    def app_for(self, account: str) -> App | None:
        """The App of a served account, or None."""
        served = self.served.get(account)
        return served.app if served is not None else None

    def _default_app(self) -> App | None:
        """The App of "default", else of the first account (what needs one App: the
        store's figures, the console)."""
        served = self.served.get("default") or next(iter(self.served.values()), None)
        return served.app if served is not None else None

    @property
    def app(self) -> App | None:
        """The App of "default" (the one account of a single-account file), else of the
        first account; None before the start."""
        return self._default_app()

    @property
    def account(self) -> Account | None:
        """The state of that same account (refused, out of credit)."""
        served = self.served.get("default") or next(iter(self.served.values()), None)
        return served.state if served is not None else None

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Finish the work in hand (each read in flight: up to its longest request) and stop."""
        self.notify("STOPPING=1")
        if self.api is not None:
            self.api.stop()
        self.stopping.set()
        with self._cond:
            self._cond.notify_all()
        for worker in self.workers.values():
            worker.wake()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        read_wait = max(
            (read_stop_wait(s.app.settings.gateway) for s in self.served.values()), default=0.0
        )
        start = time.monotonic()
        if self._pool is not None:
            reading = [s.id for s in self.served.values() if s.reading]
            if reading:
                log.info("stop_waits_for_reads", accounts=len(reading), up_to=round(read_wait, 1))
                self.notify(f"EXTEND_TIMEOUT_USEC={int(read_wait * 1_000_000)}")
            self._pool.shutdown(wait=False, cancel_futures=True)
            while any(s.reading for s in self.served.values()):
                if time.monotonic() - start > read_wait:
                    break
                time.sleep(0.02)
        busy = [
            name
            for name, worker in self.workers.items()
            if not worker.join(start + timeout - time.monotonic())
        ]
        busy += [s.id for s in self.served.values() if s.reading]
        self._fail_tasks("the daemon is stopping")
        jobs = [job for ex in self._executors.values() for job in ex.join(JOB_STOP_TIMEOUT)]
        if busy or jobs:
            log.warning("stopped_with_work_in_flight", workers=busy or None, jobs=jobs or None)
        if self.metrics is not None:
            self.metrics.stop()
        finished = not busy
        self.leases.stop()
        for served in self.served.values():
            self._shutdown_app(served, close=finished)
        for _at, app in self._retired:
            app.close()
        if finished:
            self.transport.shutdown()
        if self.store is not None and finished and not jobs:
            self.store.close()
        log.info("daemon_stopped", clean=finished)
        return finished

    def _shutdown_app(self, served: Served, *, close: bool) -> None:
        with structlog.contextvars.bound_contextvars(account=served.id):
            try:
                served.app.plugins.hook.responder_shutdown(app=served.app)
            except Exception:
                log.exception("shutdown_failed", account=served.id)
        if close:
            served.app.close()

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), stop; the exit code."""
        for signum, request in (
            (signal.SIGTERM, "stop"),
            (signal.SIGINT, "stop"),
            (signal.SIGHUP, "reload"),
        ):
            signal.signal(signum, lambda *_args, r=request: self.request(r))
        self.start()
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._requests:
                if self._requests.pop(0) == "reload":
                    self.reload()
                else:
                    self.stop()
                    return self.exit_code

    def request(self, what: str) -> None:
        self._requests.append(what)
        self._wake.set()

    # -- reload ----------------------------------------------------------------------

    def reload(self) -> bool:
        """Read the files again and apply the difference, account by account (what was
        added, removed, changed, kept as it was and rejected is logged, and kept in
        ``reloaded``); False when the main file is broken (every account runs on as it
        was). An unchanged account that is refused or out of credit is tried again at
        once."""
        if self.config_path is None:
            log.warning("reload_unsupported", reason="no configuration file")
            return False
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
        done: dict[str, list[str]] = {
            "added": [],
            "removed": [],
            "changed": [],
            "kept": [],
            "rejected": [],
        }
        try:
            try:
                config = self._load()
            except ConfigError as err:
                keeping = "the running config" if self._single() else "every account"
                log.error("reload_rejected", problems=err.problems, keeping=keeping)
                return False
            main = config.main
            assert main is not None and self.main is not None
            self._process_wide_changed(self.main, main)
            if not main.accounts.include:  # one account: no step runs on the App replaced
                self._paused.set()
                self._wait_idle(STOP_TIMEOUT)
            self.main = main
            self._configure_logs(main)
            for served in self.served.values():
                self._redact(served.app.settings)
            for account in list(self.served):
                if account in config.accounts:
                    continue
                if account in config.rejected:
                    self._reject(account, config.rejected[account], kept=True)
                    done["kept"].append(account)
                    continue
                self._remove(account)
                done["removed"].append(account)
            for account, problems in config.rejected.items():
                if account not in self.served:
                    self._reject(account, problems, kept=False)
                    done["rejected"].append(account)
            for account, settings in config.accounts.items():
                current = self.served.get(account)
                if current is None:
                    if self._add(account, settings) is not None:
                        served = self.served[account]
                        self._schedule_plugin_jobs(served)
                        done["added"].append(account)
                    else:
                        done["rejected"].append(account)
                elif current.app.settings != settings:
                    if self._replace(current, settings):
                        done["changed"].append(account)
                    else:
                        done["kept"].append(account)
                else:
                    self._retry(current)
            self._grow_pool()
            self.leases.set_accounts(self.served)
            self.kick("process")
            self.kick("send")
            self.reloaded = done
            if self._single() and done["kept"]:  # logged as reload_rejected
                return False
            log.info("reloaded", **{k: v for k, v in done.items() if v})
            self._status_step()
            return True
        finally:
            if self._paused.is_set():
                self._paused.clear()
                for worker in self.workers.values():
                    worker.wake()
            self.notify("READY=1")

    def _wait_idle(self, timeout: float) -> bool:
        """Wait until no worker is in a step (they take none while paused)."""
        deadline = time.monotonic() + timeout
        while any(worker.busy for worker in self.workers.values()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _retry(self, served: Served) -> None:
        """An unchanged account: a refused login or a lack of credit is tried again at
        once (fixed on the platform, then reloaded); read backoff ends."""
        if served.state.state is not AccountState.OK or served.backoff_until:
            served.state.configure(served.app.settings.gateway)
            served.backoff_until = 0.0
            served.generation = next(self._generations)  # drops its queued read
            self._push(served, 0.0)

    def _process_wide_changed(self, old: Settings, new: Settings) -> None:
        changed = [
            name for name in ("store", "metrics") if getattr(old, name) != getattr(new, name)
        ]
        if (old.api.enabled, old.api.listen) != (new.api.enabled, new.api.listen):
            changed.append("api")
        if changed:
            log.warning(
                "restart_needed",
                sections=changed,
                detail="the store, metrics and API listeners change at the next start",
            )

    def _grow_pool(self) -> None:
        pool = self._pool
        if pool is not None and pool._max_workers < min(READERS, len(self.served)):
            pool._max_workers = min(READERS, len(self.served))  # grows on the next submit

    def _wait_read(self, served: Served, limit: float) -> None:
        deadline = time.monotonic() + limit
        while served.reading and time.monotonic() < deadline:
            time.sleep(0.01)

    def _remove(self, account: str) -> None:
        """Stop serving an account: no new read; the one in flight is journaled first."""
        served = self.served[account]
        served.retired = True
        self._wait_read(served, read_stop_wait(served.app.settings.gateway))
        self._unschedule_plugin_jobs(served)
        del self.served[account]
        self._late_due.pop(account, None)
        self._shutdown_app(served, close=False)
        self._retire(served.app)
        log.info("account_removed", account=account)

    def _replace(self, current: Served, settings: Settings) -> bool:
        """Rebuild a changed account; False (kept as it was) when the new one is broken."""
        try:
            app = self._build(settings)
        except ConfigError as err:
            self._reject(current.id, err.problems, kept=True)
            return False
        self._redact(settings)
        current.retired = True  # its read in flight ends; no new one is taken
        self._wait_read(current, read_stop_wait(current.app.settings.gateway))
        self._unschedule_plugin_jobs(current)
        self._shutdown_app(current, close=False)
        self._retire(current.app)
        state = current.state
        state.configure(settings.gateway)
        served = Served(
            id=current.id,
            app=app,
            state=state,
            generation=next(self._generations),
            reads=current.reads,
            last_read_ok=current.last_read_ok,
        )
        self._install(served)
        self.served[current.id] = served
        self.rejected.pop(current.id, None)
        self._schedule_plugin_jobs(served)
        self._late_due[current.id] = 0.0
        self._push(served, 0.0)
        log.info("account_changed", account=current.id)
        return True

    def _retire(self, app: App) -> None:
        """Close a replaced App's client later: a send may still be using it."""
        now = time.monotonic()
        keep = []
        for at, old in self._retired:
            if now - at > RETIRED_CLOSE_AFTER:
                old.close()
            else:
                keep.append((at, old))
        self._retired = [*keep, (now, app)]

    # -- reads -----------------------------------------------------------------------

    def _push(self, served: Served, due: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), served.id, served.generation))
            if self._heap[0][2] == served.id:
                self._cond.notify()

    def _read_loop(self) -> None:
        """Hand each account to a reader thread when its read falls due."""
        while True:
            with self._cond:
                while True:
                    if self.stopping.is_set():
                        return
                    now = self.clock()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                due, _seq, account, generation = heapq.heappop(self._heap)
            served = self.served.get(account)
            if served is None or served.generation != generation or served.retired:
                continue
            if served.reading:  # its read under way queues its own next one
                continue
            served.reading = True
            assert self._pool is not None
            try:
                self._pool.submit(self._read_task, served, due)
            except RuntimeError:  # shut down: stopping
                served.reading = False
                return

    def _read_task(self, served: Served, due: float) -> None:
        next_due = served.app.time() + READ_TICK_MIN
        try:
            if served.retired or self.stopping.is_set():
                return
            self.lateness.append(max(served.app.time() - due, 0.0))
            with (
                structlog.contextvars.bound_contextvars(account=served.id),
                self.supervisor.heartbeat.step(f"read:{served.id}"),
            ):
                next_due = self._read_step(served)
            # A step at least once an interval, however long a backoff: the watchdog
            # sees reads turn, and a reload's retry is taken within one.
            tick = max(served.app.settings.gateway.poll_interval, READ_TICK_MIN)
            next_due = min(next_due, served.app.time() + tick)
        except StoreError as err:
            self._store_failed(f"read:{served.id}", err)
        except Exception as err:
            self.supervisor.read_answered(served, "error", f"unexpected {type(err).__name__}")
            log.exception("job_failed", job="read", account=served.id)
            next_due = served.app.time() + max(served.app.settings.gateway.poll_interval, 1.0)
        finally:
            served.reading = False
            if not served.retired and not self.stopping.is_set():
                self._push(served, next_due)

    def _read_step(self, served: Served) -> float:
        """One read of an account; returns when its next read step is due (app time)."""
        app, state = served.app, served.state
        gateway = app.settings.gateway
        now = app.time()
        tick = max(gateway.poll_interval, READ_TICK_MIN)
        if now < served.backoff_until:
            return served.backoff_until
        if not self.leases.holds(served.id):  # another instance reads it
            return now + LEASE_CHECK
        if self._journal_held(app):
            return now + ROOM_CHECK_INTERVAL
        left = app.gateway.read_gate.seconds_left()
        if left > 0:
            return now + left
        if not state.may_read():
            return now + tick
        try:
            with self.leases.use(served.id) as ours:
                if not ours:
                    return now + LEASE_CHECK
                sms = app.gateway.read_one()
        except ReadFenced as err:
            log.info("read_fenced", reason=str(err), retry_in=round(err.retry_in, 2))
            return app.time() + max(err.retry_in, READ_TICK_MIN if err.lost else 0.0)
        except JournalUnwritable as err:
            self._hold_reads(app, str(err))
            return app.time() + ROOM_CHECK_INTERVAL
        except AccountError as err:
            self.supervisor.read_answered(served, "error", f"{err.state.label}: {err}")
            state.refused(err)
            return app.time() + tick
        except TransientError as err:
            served.failures += 1
            delay = read_backoff(gateway).delay(served.failures)
            served.backoff_until = app.time() + delay
            result = "too_soon" if isinstance(err, ReadTooSoon) else "error"
            self.supervisor.read_answered(served, result, str(err))
            event = "read_answer_lost" if isinstance(err, OutcomeUnknown) else "read_failed"
            event = "read_too_soon" if isinstance(err, ReadTooSoon) else event
            log.warning(event, error=str(err), retry_in=round(delay, 1), failures=served.failures)
            return served.backoff_until
        served.failures = 0
        state.read_worked()
        if sms is None:
            self.supervisor.read_answered(served, "empty")
        else:
            self._journal(served, sms)  # first: the server will not hand it out again
            self.supervisor.read_answered(served, "message")
        state.check_balance(app.gateway)
        return app.time() + app.gateway.read_gate.seconds_left()

    def _journal(self, served: Served, sms: Any) -> None:
        app = served.app
        try:
            message = app.store.journal(sms, account=served.id)
        except StoreError:
            log.critical(
                "message_not_journaled",
                gateway_id=sms.gateway_id,
                src=sms.src,
                raw=sms.raw,
                action="the store cannot be written: re-enter this message by hand",
            )
            raise
        if message is None:
            log.warning("message_duplicate", gateway_id=sms.gateway_id, src=sms.src)
            return
        log.info(
            "message_received",
            message_id=message.id,
            gateway_id=sms.gateway_id,
            src=sms.src,
            dst=sms.dst,
            chars=len(sms.text),
        )
        with self._inbox_lock:
            self._inbox[served.id] = None
        self.kick("process")

    def _journal_held(self, app: App) -> bool:
        """Whether reading must wait: too little room for the store, or (while held) the
        store still refuses a write. Holds or resumes reading accordingly.

        While reads are not held the room is looked at once per ROOM_CHECK_INTERVAL at
        most: at a read every 5 s that is every read, and a stream of reads (a backlog, the
        benchmark) cannot fill the MIN_FREE_BYTES kept in reserve within a second."""
        now = time.monotonic()
        if self.read_hold == "" and now - self._room_checked_at < ROOM_CHECK_INTERVAL:
            return False
        self._room_checked_at = now
        problem = app.store.journal_problem()
        if not problem and self.read_hold:
            problem = app.store.probe_write()
        self._hold_reads(app, problem)
        return bool(problem)

    def _hold_reads(self, app: App, reason: str) -> None:
        """Hold reading for ``reason``, or resume it for ""; logged and shown once per change."""
        if reason == (self.read_hold or ""):
            if self.read_hold is None:  # the first check: clear what a previous run left
                self.read_hold = reason
                if app.store.get_meta("reads_held"):
                    app.store.set_reads_held(reason)
            return
        if reason:
            log.error(
                "reads_held",
                reason=reason,
                action="messages stay on the gateway; reading resumes by itself once the "
                "store can take them",
            )
        else:
            log.info("reads_resumed", was=self.read_hold)
        self.read_hold = reason
        app.store.set_reads_held(reason)
        self.supervisor.send_status()

    # -- processing ------------------------------------------------------------------

    def _recover_late_replies(self) -> bool:
        """Late replies a previous process had claimed and not applied: pending again."""
        for account, served in list(self.served.items()):
            if not self.leases.holds(account):
                continue  # another live instance's
            with structlog.contextvars.bound_contextvars(account=account):
                recovered = served.app.late_replies.recover()
            if recovered:
                log.info("late_replies_recovered", count=recovered, account=account)
        return False

    def _process_idle(self) -> float:
        if self._tasks:
            return 0.0
        now = self.clock()
        due = min([self._outbound_due_at, *self._late_due.values()], default=math.inf)
        return min(WORK_TICK, max(due - now, 0.0))

    def _process_step(self) -> bool:
        if self._run_task():
            return True
        if self._release_outbound():
            return True
        if self._apply_late_reply():
            return True
        self._sweep_unprocessed()
        found = self._next_message()
        if found is None:
            return False
        served, message = found
        with self.leases.use(served.id) as ours:
            if ours:
                with structlog.contextvars.bound_contextvars(account=served.id):
                    pipeline.process(served.app, message)
        return True

    def _sweep_unprocessed(self) -> None:
        """With shared leases, now and then: the held accounts with journaled messages
        not processed yet (another instance journaled them: a read that came back after
        its lease ran out, or one it journaled before it died) back in turn."""
        if isinstance(self.leases, LocalLeases):
            return
        now = time.monotonic()
        if now - self._swept_at < SWEEP_INTERVAL:
            return
        self._swept_at = now
        assert self.store is not None
        rows = self.store.query(
            "SELECT DISTINCT account FROM messages WHERE state = ?", (RECEIVED,)
        )
        waiting = [row[0] for row in rows if self.leases.holds(row[0])]
        with self._inbox_lock:
            for account in waiting:
                self._inbox.setdefault(account, None)

    def _next_message(self) -> tuple[Served, Message] | None:
        """The next journaled message of the accounts that may have one, in turn (and,
        once per WORK_TICK, of whichever account the store holds one for: a message
        journaled by a command, or left by a step that failed)."""
        assert self.store is not None
        now = time.monotonic()
        if now - self._inbox_checked_at >= WORK_TICK:
            self._inbox_checked_at = now
            waiting = self.store.next_unprocessed(account=None)
            if waiting is not None:
                with self._inbox_lock:
                    self._inbox[waiting.account] = None
        while True:
            with self._inbox_lock:
                if not self._inbox:
                    return None
                account, _ = self._inbox.popitem(last=False)
            served = self.served.get(account)
            if served is None or not self.leases.holds(account):
                continue  # another instance's: back in turn when this one takes it
            message = self.store.next_unprocessed(account=account)
            if message is None:
                continue
            with self._inbox_lock:
                self._inbox[account] = None  # its next one after the others' turn
            return served, message

    def _apply_late_reply(self) -> bool:
        now = self.clock()
        for account, due in list(self._late_due.items()):
            if due > now:
                continue
            served = self.served.get(account)
            if served is None:
                self._late_due.pop(account, None)
                continue
            if not self.leases.holds(account):  # the holder applies them
                self._late_due[account] = now + WORK_TICK
                continue
            app = served.app
            self._late_due[account] = now + WORK_TICK  # a failure looks again then
            with structlog.contextvars.bound_contextvars(account=account):
                if pipeline.apply_late_replies(app, limit=1):
                    self._late_due[account] = 0.0
                    return True
            next_due = app.late_replies.next_due()
            if next_due is None:
                self._late_due.pop(account, None)
            else:
                self._late_due[account] = next_due
        return False

    def _release_outbound(self) -> bool:
        assert self.store is not None
        now = time.monotonic()
        if self.clock() < self._outbound_due_at and now - self._outbound_checked_at < WORK_TICK:
            return False
        self._outbound_checked_at = now
        self._outbound_due_at = self.clock() + WORK_TICK
        due = self.store.outbound_due(limit=1)
        if due:
            served = self.served.get(due[0].account)
            if served is not None:
                with structlog.contextvars.bound_contextvars(account=served.id):
                    if outbound.release_due(served.app, limit=1):
                        return True
            return False
        nxt = self.store.outbound_next_due()
        self._outbound_due_at = math.inf if nxt is None else nxt
        return False

    def on_processor(
        self, fn: Callable[[App], T], timeout: float, *, account: str | None = None
    ) -> T:
        """Run ``fn(app)`` on the processing thread (``app``: the account's, else the
        default one) and wait for its result; see ``Daemon.on_processor``."""
        worker = self.workers.get("process")
        if worker is not None and threading.current_thread() is worker.thread:
            return fn(self._task_app(account))
        if self.stopping.is_set():
            raise ProcessorUnavailable("the daemon is stopping: nothing more is processed")
        if worker is None or not worker.thread.is_alive():
            raise ProcessorUnavailable("the processing worker is not running (yet)")
        future: Future[T] = Future()
        with self._tasks_lock:
            self._tasks.append((fn, future, account))
        worker.wake()
        if not wait_futures([future], timeout).done:
            if future.cancel():
                raise ProcessorUnavailable(
                    f"the processing worker did not take the work within {timeout:g} s:"
                    " it was not done"
                )
            raise ProcessorUnavailable(
                f"the processing worker did not finish the work within {timeout:g} s:"
                " it may still complete"
            )
        return future.result()

    def _task_app(self, account: str | None) -> App:
        app = self.app_for(account) if account is not None else self._default_app()
        if app is None:
            raise ProcessorUnavailable(f"no account {account!r} is served")
        return app

    def _run_task(self) -> bool:
        with self._tasks_lock:
            if not self._tasks:
                return False
            fn, future, account = self._tasks.popleft()
        if not future.set_running_or_notify_cancel():
            return True
        try:
            result = fn(self._task_app(account))
        except BaseException as err:
            future.set_exception(err)
            if isinstance(err, StoreError) and is_storage_failure(err):
                raise
            if not isinstance(err, Exception):
                raise
        else:
            future.set_result(result)
        self._outbound_due_at = 0.0
        return True

    def _fail_tasks(self, reason: str) -> None:
        with self._tasks_lock:
            waiting = list(self._tasks)
            self._tasks.clear()
        for _fn, future, _account in waiting:
            if future.set_running_or_notify_cancel():
                future.set_exception(ProcessorUnavailable(reason))

    # -- sending ---------------------------------------------------------------------

    def _recover(self) -> bool:
        """Sends a previous process left in flight, per account, before the first send."""
        assert self.store is not None
        for account in sorted({row.account for row in self.store.in_flight(account=None)}):
            served = self.served.get(account)
            if served is None or not self.leases.holds(account):
                continue  # another live instance's sends: not ours to recover
            with structlog.contextvars.bound_contextvars(account=account):
                recovered = sending.recover_in_flight(served.app)
            if recovered:
                log.info("sends_recovered", count=recovered, account=account)
        return False

    def _send_step(self) -> bool:
        """Send the due rows of the accounts that may send, oldest first; one account's
        refusal holds its own rows only."""
        assert self.store is not None
        self._took_over()
        serving = list(self.served)
        if len(serving) == 1 and not self._unserved:
            # One account: its own send_due finds its rows (no look across accounts).
            accounts, more = serving, True
        else:
            held = [
                a
                for a, s in list(self.served.items())
                if not s.state.send_batch(1) or not self.leases.holds(a)
            ]
            rows = self.store.due_outbox(
                sending.BATCH, account=None, held=[*held, *sorted(self._unserved)]
            )
            accounts = list(dict.fromkeys(row.account for row in rows))
            more = len(rows) >= sending.BATCH  # fewer: every due row was taken
        took = 0
        for account in accounts:
            if self.stopping.is_set():
                break
            served = self.served.get(account)
            if served is None:
                self._unserved.add(account)
                continue
            batch = served.state.send_batch(sending.BATCH)
            if not batch:
                continue
            with self.leases.use(account) as ours:
                if not ours:
                    continue
                with structlog.contextvars.bound_contextvars(account=account):
                    try:
                        taken = sending.send_due(
                            served.app, batch, account=served.state, wait=self.stopping.wait
                        )
                    except AccountError as err:
                        served.state.refused(err)
                        continue
                took += taken
                if len(accounts) == 1:
                    more = more and taken >= batch
        # Rows queued meanwhile woke this worker, and retries fall due at the next WORK_TICK.
        return more and took > 0

    def _took_over(self) -> None:
        """Accounts whose lease this instance just took: the sends the previous holder
        left in flight (its outcome unknown), the late replies it had claimed, and its
        messages not processed yet."""
        acquired = self.leases.take_acquired()
        if not acquired:
            return
        assert self.store is not None
        in_flight = {row.account for row in self.store.in_flight(account=None)}
        for account in acquired:
            served = self.served.get(account)
            if served is None:
                continue
            with (
                self.leases.use(account) as ours,
                structlog.contextvars.bound_contextvars(account=account),
            ):
                if not ours:
                    continue
                if account in in_flight:
                    recovered = sending.recover_in_flight(served.app)
                    if recovered:
                        log.info("sends_recovered", count=recovered, account=account)
                late = served.app.late_replies.recover()
                if late:
                    log.info("late_replies_recovered", count=late, account=account)
            with self._inbox_lock:
                self._inbox[account] = None
            self._late_due[account] = 0.0
        self.kick("process")

    # -- timed jobs ------------------------------------------------------------------

    @staticmethod
    def _utc_in(seconds: float) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=seconds)

    def kick(self, name: str) -> None:
        worker = self.workers.get(name)
        if worker is not None:
            worker.wake()

    def guarded(self, name: str, step: Callable[[], bool]) -> bool:
        if self._paused.is_set():
            return False
        try:
            return step()
        except StoreError as err:
            self._store_failed(name, err)
        except Exception:
            log.exception("job_failed", job=name)
        return False

    def _store_failed(self, name: str, err: StoreError) -> None:
        log.critical(
            "store_failed",
            job=name,
            error=str(err),
            action="stopping: fix the store's folder (permissions, free space)",
        )
        self.exit_code = 1
        self.request("stop")

    def _retention_step(self) -> bool:
        assert self.store is not None and self.main is not None
        keep_days = self.main.store.keep_days
        messages, rows = self.store.prune(keep_days, stop=self.stopping.is_set)
        items = self.store.queue_prune(self.clock() - keep_days * 86400.0) if keep_days > 0 else 0
        if messages or items:
            log.info(
                "store_pruned",
                messages=messages,
                outbox_rows=rows,
                queue_items=items,
                keep_days=keep_days,
            )
        return False

    def _expiry_step(self) -> bool:
        assert self.store is not None
        while not self.stopping.is_set():
            ended = self.store.expire_conversations(limit=EXPIRY_BATCH)
            for conversation in ended:
                log.info(
                    "conversation_expired",
                    account=conversation.account,
                    number=conversation.number,
                    flow=conversation.flow,
                    step=conversation.step,
                    state=conversation.state,
                    who=conversation.who or None,
                )
            if len(ended) < EXPIRY_BATCH:
                break
        return False

    def status_line(self) -> str:
        """The STATUS= line (``Supervisor.status_line``)."""
        return self.supervisor.status_line()

    def leases_line(self) -> str:
        """How many accounts this instance holds the lease of ("" without shared leases)."""
        if isinstance(self.leases, LocalLeases):
            return ""
        return f"leases {len(self.leases.held())} of {len(self.served)}"

    def threads_alive(self) -> bool:
        """Whether the workers and the read scheduler still run."""
        alive = all(w.thread.is_alive() for w in self.workers.values())
        return alive and (self._scheduler_thread is None or self._scheduler_thread.is_alive())

    def _account_changed(self, status: AccountStatus) -> None:
        self.supervisor.account_changed(status)

    def _status_step(self) -> bool:
        self.supervisor.send_status()
        return False

    def summary(self) -> list[AccountSummary]:
        """Each served account's state and reads since start."""
        return [
            AccountSummary(
                account=a,
                state=s.state.state,
                reads=dict(s.reads),
                last_read_ok=s.last_read_ok,
            )
            for a, s in sorted(self.served.items())
        ]


class AccountsCollector:
    """The metrics of every account, labelled ``account``."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from responder import __version__
        from responder.metrics import PREFIX

        def gauge(name: str, doc: str, labels: tuple[str, ...]) -> Any:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))

        daemon = self._daemon
        served = list(daemon.served.values())
        reads = CounterMetricFamily(
            f"{PREFIX}_reads",
            "readsms calls since the daemon started, by account and result",
            labels=["account", "result"],
        )
        for s in served:
            for result, count in sorted(s.reads.items()):
                reads.add_metric([s.id, result], count)
        yield reads
        info = gauge("info", "the running release", ("version",))
        info.add_metric([__version__], 1)
        yield info
        states = gauge(
            "account_state",
            "1 for each account's current state: ok, login_refused, out_of_credit, suspended",
            ("account", "state"),
        )
        balance = gauge(
            "balance", "each account's balance (getfee, times gateway.balance_scale)", ("account",)
        )
        for s in served:
            status: AccountStatus = s.state.status
            for each in AccountState:
                states.add_metric([s.id, each.value], 1 if each is status.state else 0)
            if status.balance is not None:
                balance.add_metric([s.id], status.balance)
        yield states
        yield balance
        last = gauge(
            "last_read_success_timestamp_seconds",
            "when a read of the account last got an answer (epoch seconds)",
            ("account",),
        )
        for s in served:
            if s.last_read_ok is not None:
                last.add_metric([s.id], s.last_read_ok)
        yield last
        rejected = gauge("accounts_rejected", "account files rejected as broken", ())
        rejected.add_metric([], len(daemon.rejected))
        yield rejected
        depth = gauge("outbox_depth", "SMS waiting to be sent, by account", ("account",))
        store = daemon.store
        if store is not None:
            try:
                for s in served:
                    depth.add_metric([s.id], store.outbox_depth(account=s.id))
            except StoreError:
                pass
        yield depth
