"""The daemon: an APScheduler loop that reads, processes and sends, and its signals.

Three jobs run on their own threads, so that plugin work never delays a read:

- read: every ``poll_interval``, reads one message at a time and journals it;
- process: runs journaled messages through the plugins, one at a time, in order;
- send: drains the outbox.

The read gate keeps readsms calls apart by the interval, across restarts. SIGTERM and
SIGINT finish the work in hand and stop; SIGHUP reloads the configuration and plugins.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers import SchedulerNotRunningError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from responder import pipeline, sending
from responder.account import Account
from responder.app import App, build_app
from responder.config import ConfigError, GatewaySettings, Settings, load_settings
from responder.gateway import (
    CONNECT_TIMEOUT,
    AccountError,
    OutcomeUnknown,
    ReadTooSoon,
    TransientError,
)
from responder.logs import configure_logging
from responder.metrics import MetricsServer, start_metrics
from responder.notify import Notifier, monotonic_usec
from responder.store import JournalUnwritable, Store, StoreError
from responder.supervision import Supervisor

MAX_READ_BACKOFF: Final = 300.0
WORK_TICK: Final = 1.0
LINGER: Final = 0.2
STOP_TIMEOUT: Final = 8.0
"""Seconds a stop waits for the message or send in hand (a read in flight gets longer)."""
RETENTION_INTERVAL: Final = 3600.0
"""Seconds between two runs of the retention job (``store.keep_days``); one runs at start."""
STOP_MARGIN: Final = 5.0
"""Seconds beyond a read's longest request for a stop to journal what the read brought."""

log = structlog.get_logger("responder.daemon")

Notify = Callable[[str], None]


def read_stop_wait(gateway: GatewaySettings) -> float:
    """The longest a stop waits for a read in flight: a failed connection to each server
    address but the last (a read moves on only when it could not connect), the whole
    request on the last one, and a margin to journal what it brought."""
    connect = min(gateway.timeout, CONNECT_TIMEOUT)
    return max(len(gateway.base_urls), 1) * connect + gateway.timeout + STOP_MARGIN


class LoopJob:
    """A scheduler job that repeats its step while there is work, and can be woken early.

    When it runs out of work it lingers a moment for a kick before it ends: in a steady
    stream of messages that is far cheaper than a scheduler round-trip per message.
    """

    def __init__(self, daemon: Daemon, name: str, step: Callable[[], bool]) -> None:
        self.daemon = daemon
        self.name = name
        self.step = step
        self._lock = threading.Lock()
        self._running = False
        self._kicked = threading.Event()

    def __call__(self) -> None:
        with self._lock:
            self._running = True
        try:
            while not self.daemon.stopping.is_set():
                self._kicked.clear()
                while not self.daemon.stopping.is_set() and self.daemon.guarded(
                    self.name, self.step
                ):
                    pass
                if self._kicked.wait(LINGER):
                    continue
                with self._lock:
                    if not self._kicked.is_set():
                        self._running = False
                        return
        finally:
            with self._lock:
                self._running = False

    def kick(self) -> None:
        """Run now, or once more after the current run, without piling up runs."""
        with self._lock:
            if self._running:
                self._kicked.set()
                return
        self.daemon.run_now(self.name)

    @property
    def busy(self) -> bool:
        return self._running


class Daemon:
    """One running configuration: start(), then stop(); run() does both around signals."""

    def __init__(
        self,
        config_path: str | None = None,
        *,
        settings: Settings | None = None,
        clock: Callable[[], float] = time.time,
        extra_plugins: tuple[tuple[str, Any], ...] = (),
        notify: Notify | None = None,
        configure_logs: bool = True,
    ) -> None:
        if settings is None and config_path is None:
            raise ValueError("a Daemon needs a configuration file or settings")
        self.config_path = config_path
        self._initial_settings = settings
        self.clock = clock
        self.extra_plugins = extra_plugins
        self.notify: Notify = notify or Notifier.from_environ()
        self.configure_logs = configure_logs
        self.stopping = threading.Event()
        self.exit_code = 0
        self.app: App | None = None
        self.store: Store | None = None
        self.account: Account | None = None
        """The account's state (refused, out of credit): gates reads and sends."""
        self._read_failures = 0
        self._read_backoff_until = 0.0
        self.read_hold: str | None = None
        """Why reading is held (the journal could not take a message), "" when it is not;
        None before the first check."""
        self._requests: list[str] = []
        self._wake = threading.Event()
        self._paused = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self.jobs: dict[str, LoopJob] = {}
        self.supervisor = Supervisor(self)
        self.metrics: MetricsServer | None = None

    # -- life cycle ------------------------------------------------------------------

    def _settings(self) -> Settings:
        if self.config_path is not None:
            return load_settings(self.config_path)
        assert self._initial_settings is not None
        return self._initial_settings

    def _configure_logs(self, settings: Settings) -> None:
        if self.configure_logs:
            configure_logging(
                format=settings.log.format,
                level=settings.log.level,
                secrets=settings.secrets(),
                encodings=(settings.gateway.encoding,),
            )

    def start(self) -> None:
        """Open the store, load plugins, recover unfinished sends and start the jobs.

        Raises ConfigError or StoreError.
        """
        settings = self._settings()
        self._configure_logs(settings)
        self.store = Store(settings.store.path, clock=self.clock)
        self.store.claim_exclusive()
        self.store.verify()  # a damaged store stops here, with one line, not mid-work
        self.account = Account(
            self.store,
            settings.gateway,
            clock=self.clock,
            on_change=self.supervisor.account_changed,
        )
        app = build_app(
            settings, store=self.store, clock=self.clock, extra_plugins=self.extra_plugins
        )
        if settings.metrics.listen:
            self.metrics = start_metrics(settings, lambda: self.app, self.supervisor.reads)
        self._install(app)
        recovered = sending.recover_in_flight(app)
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ThreadPoolExecutor(max_workers=8)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )
        wrap = self.supervisor.wrap
        self.jobs = {
            "read": LoopJob(self, "read", wrap("read", self._read_step)),
            "process": LoopJob(self, "process", wrap("process", self._process_step)),
            "send": LoopJob(self, "send", wrap("send", self._send_step)),
        }
        wait = app.gateway.read_gate.seconds_left()
        self._scheduler.add_job(
            self.jobs["read"],
            IntervalTrigger(seconds=max(settings.gateway.poll_interval, 0.2)),
            id="read",
            next_run_time=self._utc_in(wait),
        )
        for name in ("process", "send"):
            self._scheduler.add_job(
                self.jobs[name],
                IntervalTrigger(seconds=WORK_TICK),
                id=name,
                next_run_time=self._utc_in(0),
            )
        self._schedule_plugin_jobs(app)
        self._scheduler.add_job(
            lambda: self.guarded("retention", self._retention_step),
            IntervalTrigger(seconds=RETENTION_INTERVAL),
            id="retention",
            next_run_time=self._utc_in(0),
        )
        self.supervisor.schedule(self._scheduler)
        self._scheduler.start()
        log.info(
            "daemon_started",
            plugins=app.plugins.names(),
            poll_interval=settings.gateway.poll_interval,
            first_read_in=round(wait, 3),
            recovered_sends=recovered,
            store=str(settings.store.path),
        )
        # READY=1 follows the first read's answer (Supervisor.read_answered).

    def _install(self, app: App) -> None:
        app.on_queued = lambda: self.kick("send")
        app.plugins.hook.responder_startup(app=app)
        self.app = app

    def _schedule_plugin_jobs(self, app: App) -> None:
        assert self._scheduler is not None
        for job in app.jobs:
            self._scheduler.add_job(
                self._plugin_job(job.name, job.function),
                IntervalTrigger(seconds=job.seconds),
                id=f"plugin:{job.name}",
                replace_existing=True,
                next_run_time=self._utc_in(0),
            )

    def _plugin_job(self, name: str, function: Callable[[], object]) -> Callable[[], bool]:
        def step() -> bool:
            function()
            return False

        return lambda: self.guarded(f"plugin:{name}", step)

    def _wait_idle(self, timeout: float, *, read_timeout: float | None = None) -> bool:
        """Wait until no job runs; the read job may be given longer (``read_timeout``)."""
        start = time.monotonic()
        deadlines = {name: timeout for name in self.jobs}
        if read_timeout is not None and "read" in deadlines:
            deadlines["read"] = max(timeout, read_timeout)
        while busy := [name for name, job in self.jobs.items() if job.busy]:
            if all(time.monotonic() - start >= deadlines[name] for name in busy):
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Finish the work in hand and stop; False when some was still running at the deadline.

        A read in flight is waited for up to its longest possible request plus a margin
        (``read_stop_wait``), however long that is: the platform has handed out the message
        it brings and will not hand it out again, so it must be journaled before the store
        closes. The other jobs get ``timeout``: what they leave is redone at the next start.
        """
        self.notify("STOPPING=1")
        self.stopping.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        read_wait = read_stop_wait(self.app.settings.gateway) if self.app is not None else None
        if read_wait is not None and self.supervisor.heartbeat.running_for("read") is not None:
            log.info("stop_waits_for_read", up_to=round(read_wait, 1))
            # Never shortens systemd's TimeoutStopSec=; lengthens it if a config needs more.
            self.notify(f"EXTEND_TIMEOUT_USEC={int(read_wait * 1_000_000)}")
        finished = self._wait_idle(timeout, read_timeout=read_wait)
        if not finished:
            busy = [name for name, job in self.jobs.items() if job.busy]
            log.warning("stopped_with_work_in_flight", jobs=busy)
        if self.metrics is not None:
            self.metrics.stop()
        if self.app is not None:
            self.app.plugins.hook.responder_shutdown(app=self.app)
            if finished:  # closing the client under a read would lose the message it brings
                self.app.close()
        if self.store is not None and finished:
            self.store.close()
        log.info("daemon_stopped", clean=finished)
        return finished

    def reload(self) -> bool:
        """Load the configuration and plugins again; keep the old ones if the new are broken."""
        if self.config_path is None:
            log.warning("reload_unsupported", reason="no configuration file")
            return False
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}")
        try:
            try:
                settings = load_settings(self.config_path)
                app = build_app(
                    settings, store=self.store, clock=self.clock, extra_plugins=self.extra_plugins
                )
            except ConfigError as err:
                log.error("reload_rejected", problems=err.problems, keeping="the running config")
                return False
            # No step starts while paused; the ones running finish with the old app. A read
            # takes at most one request once paused, so waiting that long is enough.
            self._paused.set()
            try:
                old = self.app
                assert old is not None and self._scheduler is not None
                idle = self._wait_idle(old.settings.gateway.timeout * 2 + STOP_TIMEOUT)
                old.plugins.hook.responder_shutdown(app=old)
                if idle:  # else a stuck request still uses the old client: leave it open
                    old.close()
                for job in old.jobs:
                    self._scheduler.remove_job(f"plugin:{job.name}")
                self._configure_logs(settings)
                self._install(app)
                assert self.account is not None
                self.account.configure(settings.gateway)  # tries the account again at once
                self._read_backoff_until = 0.0
                self._scheduler.reschedule_job(
                    "read",
                    trigger=IntervalTrigger(seconds=max(settings.gateway.poll_interval, 0.2)),
                )
                self._schedule_plugin_jobs(app)
            finally:
                self._paused.clear()
            log.info("reloaded", plugins=app.plugins.names())
            return True
        finally:
            self.notify("READY=1")

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), stop; returns the exit code."""
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
                request = self._requests.pop(0)
                if request == "reload":
                    self.reload()
                else:
                    self.stop()
                    return self.exit_code

    def request(self, what: str) -> None:
        """Ask the main loop to "stop" or "reload" (safe from a signal handler or a job)."""
        self._requests.append(what)
        self._wake.set()

    # -- jobs ------------------------------------------------------------------------

    @staticmethod
    def _utc_in(seconds: float) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=seconds)

    def run_now(self, name: str) -> None:
        if self._scheduler is not None and not self.stopping.is_set():
            with contextlib.suppress(JobLookupError, SchedulerNotRunningError):
                self._scheduler.modify_job(name, next_run_time=self._utc_in(0))

    def kick(self, name: str) -> None:
        job = self.jobs.get(name)
        if job is not None:
            job.kick()

    def guarded(self, name: str, step: Callable[[], bool]) -> bool:
        """Run one step of a job; a store failure is fatal, anything else is logged."""
        if self._paused.is_set():
            return False
        try:
            return step()
        except (StoreError, sqlite3.Error) as err:
            log.critical(
                "store_failed",
                job=name,
                error=str(err),
                action="stopping: fix the store's folder (permissions, free space)",
            )
            self.exit_code = 1
            self.request("stop")
        except Exception:
            log.exception("job_failed", job=name)
        return False

    def _read_step(self) -> bool:
        app, account = self.app, self.account
        assert app is not None and account is not None
        if app.time() < self._read_backoff_until or not account.may_read():
            return False
        if self._journal_held(app):  # what a read brings could not be journaled
            return False
        left = app.gateway.read_gate.seconds_left()
        if left > 0 and self.stopping.wait(left):
            return False
        if self._paused.is_set() or self.stopping.is_set():  # a reload or stop began meanwhile
            return False
        try:
            sms = app.gateway.read_one()
        except JournalUnwritable as err:  # the read-start mark failed: no request went out
            self._hold_reads(app, str(err))
            return False
        except AccountError as err:  # refused or suspended: tried again every login_retry
            self.supervisor.read_answered("error", f"{err.state.label}: {err}")
            account.refused(err)
            return False
        except TransientError as err:
            # Backs off at least one interval beyond the normal one (2 × poll_interval, then
            # doubling): after 读取过于频繁 the platform counted the refused call too.
            self._read_failures += 1
            delay = min(
                app.settings.gateway.poll_interval * 2 ** min(self._read_failures, 16),
                MAX_READ_BACKOFF,
            )
            self._read_backoff_until = app.time() + delay
            event = "read_answer_lost" if isinstance(err, OutcomeUnknown) else "read_failed"
            event = "read_too_soon" if isinstance(err, ReadTooSoon) else event
            result = "too_soon" if isinstance(err, ReadTooSoon) else "error"
            self.supervisor.read_answered(result, str(err))
            log.warning(
                event, error=str(err), retry_in=round(delay, 1), failures=self._read_failures
            )
            return False
        except Exception as err:
            self.supervisor.read_answered("error", f"unexpected {type(err).__name__}")
            raise
        self._read_failures = 0
        account.read_worked()
        if sms is None:
            self.supervisor.read_answered("empty")
            return False
        try:  # before anything else writes: the server will not return this message again
            message = app.store.journal(sms)
        except (StoreError, sqlite3.Error):
            log.critical(
                "message_not_journaled",
                gateway_id=sms.gateway_id,
                src=sms.src,
                raw=sms.raw,
                action="the store cannot be written: re-enter this message by hand",
            )
            raise
        self.supervisor.read_answered("message")
        if message is None:
            log.warning("message_duplicate", gateway_id=sms.gateway_id, src=sms.src)
        else:
            log.info(
                "message_received",
                message_id=message.id,
                gateway_id=sms.gateway_id,
                src=sms.src,
                dst=sms.dst,
                chars=len(sms.text),
            )
            self.kick("process")
        return True

    def _journal_held(self, app: App) -> bool:
        """Whether reading must wait: too little room for the store, or (while held) the
        store still refuses a write. Holds or resumes reading accordingly."""
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

    def _retention_step(self) -> bool:
        """Delete what ``store.keep_days`` no longer keeps, in short batches."""
        app = self.app
        assert app is not None
        keep_days = app.settings.store.keep_days
        messages, rows = app.store.prune(keep_days, stop=self.stopping.is_set)
        if messages:
            log.info("store_pruned", messages=messages, outbox_rows=rows, keep_days=keep_days)
        return False

    def _process_step(self) -> bool:
        app = self.app
        assert app is not None
        message = app.store.next_unprocessed()
        if message is None:
            return False
        pipeline.process(app, message)
        return True

    def _send_step(self) -> bool:
        app, account = self.app, self.account
        assert app is not None and account is not None
        account.check_balance(app.gateway)
        batch = account.send_batch(sending.BATCH)  # none while the account cannot send
        if not batch:
            return False
        try:
            return sending.send_due(app, batch, account=account) > 0
        except AccountError as err:  # the row went back to pending, its attempt not counted
            account.refused(err)
            return False
