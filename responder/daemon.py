"""The daemon: three worker threads that read, process and send, timed jobs, and signals.

Plain threads, each woken by an event, run the core's loops, so that plugin work never
delays a read and no scheduler stands between a message and its reply:

- read: reads one message at a time and journals it, at most once per ``poll_interval``
  (the worker waits on the read gate itself, which keeps reads apart across restarts);
- process: applies the late replies queued by ``app.reply_later`` (durably, in the
  "late-replies" queue), then runs the next journaled message through the plugins; the
  only thread that calls the message hooks (filter, reply, observe, before-send);
- send: first deals with the sends a previous process left in flight, then drains the
  outbox; the only thread that calls after-send.

APScheduler keeps the timed work, on two executors of its own threads: "core" (STATUS=,
the watchdog, retention) and "plugins" (``app.every``), so a plugin job that hangs can
neither starve the watchdog nor hold a core worker. SIGTERM and SIGINT finish the work in
hand and stop; SIGHUP reloads the configuration and plugins.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from responder import pipeline, sending
from responder.account import Account
from responder.app import LATE_REPLIES, App, build_app
from responder.backoff import Backoff
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
from responder.models import Message
from responder.notify import Notifier, monotonic_usec
from responder.store import JournalUnwritable, Store, StoreError
from responder.supervision import Supervisor
from responder.workers import JobThreads, Worker

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

log = structlog.get_logger("responder.daemon")

Notify = Callable[[str], None]


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
        self._read_tick_at = 0.0
        """When the read worker's current step began (time.monotonic)."""
        self.read_hold: str | None = None
        """Why reading is held (the journal could not take a message), "" when it is not;
        None before the first check."""
        self._late_dirty = True
        """A late reply may have been queued since the process worker last looked."""
        self._journaled_id = 0
        """The id of the message the read worker journaled last."""
        self._processed_id = -1
        """The id of the message the process worker finished last (-1: look at start)."""
        self._inbox_checked_at = -math.inf
        self._room_checked_at = -math.inf
        self._late_due_at = 0.0
        """When the soonest late reply waiting for a retry is due (app time)."""
        self._requests: list[str] = []
        self._wake = threading.Event()
        self._paused = threading.Event()
        self._scheduler: BackgroundScheduler | None = None
        self._executors: dict[str, JobThreads] = {}
        self.workers: dict[str, Worker] = {}
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
        """Open the store, load plugins, and start the workers and the timed jobs.

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
        self.workers = {
            "read": self._worker("read", self._read_step, self._read_idle),
            "process": self._worker(
                "process", self._process_step, self._process_idle, self._recover_late_replies
            ),
            "send": self._worker("send", self._send_step, lambda: WORK_TICK, self._recover_sends),
        }
        self._executors = {CORE: JobThreads("core"), PLUGINS: JobThreads("plugins")}
        self._scheduler = BackgroundScheduler(
            timezone=UTC,
            executors=dict(self._executors),
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": None,
            },
        )
        self._schedule_plugin_jobs(app)
        self._scheduler.add_job(
            lambda: self.guarded("retention", self._retention_step),
            IntervalTrigger(seconds=RETENTION_INTERVAL),
            id="retention",
            next_run_time=self._utc_in(0),
            executor=CORE,
        )
        self._scheduler.add_job(
            lambda: self.guarded("conversation-expiry", self._expiry_step),
            IntervalTrigger(seconds=EXPIRY_INTERVAL),
            id="conversation-expiry",
            next_run_time=self._utc_in(0),
            executor=CORE,
        )
        self.supervisor.schedule(self._scheduler, executor=CORE)
        self._scheduler.start()
        for worker in self.workers.values():
            worker.start()
        log.info(
            "daemon_started",
            plugins=app.plugins.names(),
            poll_interval=settings.gateway.poll_interval,
            first_read_in=round(app.gateway.read_gate.seconds_left(), 3),
            store=str(settings.store.path),
        )
        # READY=1 follows the first read's answer (Supervisor.read_answered).

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

    def _install(self, app: App) -> None:
        app.on_queued = lambda: self.kick("send")
        app.on_enqueued = self._enqueued
        app.plugins.hook.responder_startup(app=app)
        self.app = app
        self._late_dirty = True  # a startup (or the previous app) may have queued some

    def _enqueued(self, queue: str) -> None:
        if queue == LATE_REPLIES:
            self._late_dirty = True
            self.kick("process")

    def _schedule_plugin_jobs(self, app: App) -> None:
        assert self._scheduler is not None
        for job in app.jobs:
            self._scheduler.add_job(
                self._plugin_job(job.name, job.function),
                IntervalTrigger(seconds=job.seconds),
                id=f"plugin:{job.name}",
                replace_existing=True,
                next_run_time=self._utc_in(0),
                executor=PLUGINS,
            )

    def _plugin_job(self, name: str, function: Callable[[], object]) -> Callable[[], bool]:
        def step() -> bool:
            function()
            return False

        return lambda: self.guarded(f"plugin:{name}", step)

    def _wait_idle(self, timeout: float) -> bool:
        """Wait until no worker is in a step (they take none while paused)."""
        deadline = time.monotonic() + timeout
        while any(worker.busy for worker in self.workers.values()):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def _join_workers(self, timeout: float, read_timeout: float | None) -> list[str]:
        """Wait for the workers to end, the read worker up to ``read_timeout`` if given;
        returns those still running."""
        start = time.monotonic()
        for name, worker in self.workers.items():
            limit = max(timeout, read_timeout) if name == "read" and read_timeout else timeout
            worker.join(start + limit - time.monotonic())
        return [name for name, worker in self.workers.items() if worker.thread.is_alive()]

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Finish the work in hand and stop; False when some was still running at the deadline.

        A read in flight is waited for up to its longest possible request plus a margin
        (``read_stop_wait``), however long that is: the platform has handed out the message
        it brings and will not hand it out again, so it must be journaled before the store
        closes. The process and send workers get ``timeout``, the timed jobs under way
        JOB_STOP_TIMEOUT: what they leave is redone at the next start. A worker or job
        still running then is left to end with the process (their threads are daemon
        threads), and the store is not closed under it.
        """
        self.notify("STOPPING=1")
        self.stopping.set()
        for worker in self.workers.values():
            worker.wake()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        read_wait = read_stop_wait(self.app.settings.gateway) if self.app is not None else None
        if read_wait is not None and self.supervisor.heartbeat.running_for("read") is not None:
            log.info("stop_waits_for_read", up_to=round(read_wait, 1))
            # Never shortens systemd's TimeoutStopSec=; lengthens it if a config needs more.
            self.notify(f"EXTEND_TIMEOUT_USEC={int(read_wait * 1_000_000)}")
        busy = self._join_workers(timeout, read_wait)
        jobs = [job for ex in self._executors.values() for job in ex.join(JOB_STOP_TIMEOUT)]
        finished = not busy
        if busy or jobs:
            log.warning("stopped_with_work_in_flight", workers=busy or None, jobs=jobs or None)
        if self.metrics is not None:
            self.metrics.stop()
        if self.app is not None:
            self.app.plugins.hook.responder_shutdown(app=self.app)
            if finished:  # closing the client under a read would lose the message it brings
                self.app.close()
        if self.store is not None and finished and not jobs:
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
                self._schedule_plugin_jobs(app)
            finally:
                self._paused.clear()
                for worker in self.workers.values():
                    worker.wake()
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

    # -- workers and jobs ------------------------------------------------------------

    @staticmethod
    def _utc_in(seconds: float) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=seconds)

    def kick(self, name: str) -> None:
        """Wake a worker ("read", "process" or "send") to take a step now."""
        worker = self.workers.get(name)
        if worker is not None:
            worker.wake()

    def guarded(self, name: str, step: Callable[[], bool]) -> bool:
        """Run one step of a job; a store failure is fatal, anything else is logged."""
        if self._paused.is_set():
            return False
        try:
            return step()
        except StoreError as err:
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

    def _read_idle(self) -> float:
        """How long the read worker waits after a step that read nothing: until the read
        gate opens, and at least until the next tick of ``poll_interval`` (floored at
        READ_TICK_MIN) after that step began, so that a held or refused account is looked
        at once an interval, not in a busy loop."""
        app = self.app
        assert app is not None
        tick = max(app.settings.gateway.poll_interval, READ_TICK_MIN)
        next_tick = tick - (time.monotonic() - self._read_tick_at)
        return max(app.gateway.read_gate.seconds_left(), next_tick, 0.0)

    def _process_idle(self) -> float:
        """WORK_TICK, or less when a late reply's retry falls due sooner."""
        app = self.app
        assert app is not None
        return min(WORK_TICK, max(self._late_due_at - app.time(), 0.0))

    def _recover_sends(self) -> bool:
        """Sends a previous process left in flight, dealt with on the send worker before its
        first send (so that after-send runs on the send thread only)."""
        app = self.app
        assert app is not None
        recovered = sending.recover_in_flight(app)
        if recovered:
            log.info("sends_recovered", count=recovered)
        return False

    def _recover_late_replies(self) -> bool:
        """Late replies a previous process had claimed and not applied: pending again."""
        app = self.app
        assert app is not None
        recovered = app.late_replies.recover()
        if recovered:
            log.info("late_replies_recovered", count=recovered)
        return False

    def _read_step(self) -> bool:
        app, account = self.app, self.account
        assert app is not None and account is not None
        self._read_tick_at = time.monotonic()
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
            self._read_failures += 1
            delay = read_backoff(app.settings.gateway).delay(self._read_failures)
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
        except StoreError:
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
            self._journaled_id = message.id
            self.kick("process")
        return True

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

    def _retention_step(self) -> bool:
        """Delete what ``store.keep_days`` no longer keeps, in short batches."""
        app = self.app
        assert app is not None
        keep_days = app.settings.store.keep_days
        messages, rows = app.store.prune(keep_days, stop=self.stopping.is_set)
        items = app.store.queue_prune(app.time() - keep_days * 86400.0) if keep_days > 0 else 0
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
        """End the conversations past their expiry, in batches, logging each."""
        app = self.app
        assert app is not None
        while not self.stopping.is_set():
            ended = app.store.expire_conversations(limit=EXPIRY_BATCH)
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

    def _process_step(self) -> bool:
        """Apply a due late reply, else process the next journaled message."""
        app = self.app
        assert app is not None
        if self._apply_late_reply(app):
            return True
        message = self._next_message(app)
        if message is None:
            return False
        pipeline.process(app, message)
        self._processed_id = message.id
        return True

    def _next_message(self, app: App) -> Message | None:
        """The oldest journaled message not processed yet. The store is asked only when the
        read worker journaled one since (``_journaled_id``), or once per WORK_TICK."""
        journaled = self._journaled_id
        now = time.monotonic()
        if self._processed_id >= journaled and now - self._inbox_checked_at < WORK_TICK:
            return None
        self._inbox_checked_at = now
        message = app.store.next_unprocessed()
        if message is None:  # everything journaled up to ``journaled`` is processed
            self._processed_id = max(self._processed_id, journaled)
        return message

    def _send_step(self) -> bool:
        app, account = self.app, self.account
        assert app is not None and account is not None
        account.check_balance(app.gateway)
        batch = account.send_batch(sending.BATCH)  # none while the account cannot send
        if not batch:
            return False
        try:
            # Fewer rows than asked for: every due row was taken. Rows queued meanwhile woke
            # this worker, and retries fall due at the next WORK_TICK.
            return sending.send_due(app, batch, account=account) >= batch
        except AccountError as err:  # the row went back to pending, its attempt not counted
            account.refused(err)
            return False

    def _apply_late_reply(self, app: App) -> bool:
        """Apply one due late reply, if one may be waiting; whether one was taken."""
        if not self._late_dirty and app.time() < self._late_due_at:
            return False
        self._late_dirty = False  # before looking: a reply queued meanwhile sets it again
        if pipeline.apply_late_replies(app, limit=1):
            self._late_dirty = True  # there may be more
            return True
        due = app.late_replies.next_due()
        self._late_due_at = math.inf if due is None else due
        return False
