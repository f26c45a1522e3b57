"""What systemd sees of a running daemon: readiness, STATUS lines and watchdog pings.

READY=1 goes out once the first gateway read has answered (or failed, with the reason
in STATUS=). STATUS= is refreshed with live figures. WATCHDOG=1 pings come from a job
on the core's executor of the daemon's scheduler (plugin jobs have their own, so none can
starve it), and only while the read, process and send workers turn:
a step stuck for longer than its budget withholds them, so systemd restarts a wedged
daemon instead of trusting a thread that pings whatever happens.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import structlog
from apscheduler.triggers.interval import IntervalTrigger

from responder.account import AccountStatus
from responder.config import GatewaySettings
from responder.gateway import AccountState
from responder.logs import redactor
from responder.notify import watchdog_seconds
from responder.store import StoreBackend

if TYPE_CHECKING:
    from collections.abc import Mapping

    from apscheduler.schedulers.base import BaseScheduler

    from responder.daemon import Daemon

STATUS_INTERVAL: Final = 10.0
"""Seconds between STATUS= lines."""
DEFAULT_STALL: Final = 120.0
"""A step's budget beyond its own work when systemd set no watchdog (for STATUS only)."""
SEND_BATCH: Final = 20
"""Rows one send step may attempt (``sending.send_due``'s limit)."""
READ_RESULTS: Final = ("message", "empty", "error", "too_soon")
FAILED_READS: Final = ("error", "too_soon")
"""Results that count as a failed read in STATUS (a too-soon read brought nothing)."""
WATCHED: Final = ("read", "process", "send")

log = structlog.get_logger("responder.supervision")


class ReadCounter:
    """Reads since the process started, by result: "message", "empty", "error" or
    "too_soon" (refused by the platform as too frequent: 读取过于频繁)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(READ_RESULTS, 0)

    def add(self, result: str) -> None:
        with self._lock:
            self._counts[result] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Heartbeat:
    """When each loop's current step started, and when its latest step started."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.created = clock()
        self._running: dict[str, float] = {}
        self._last_start: dict[str, float] = {}

    def wrap(self, name: str, step: Callable[[], bool]) -> Callable[[], bool]:
        """``step`` with its start and end recorded."""

        def timed() -> bool:
            started = self.clock()
            self._running[name] = started
            self._last_start[name] = started
            try:
                return step()
            finally:
                self._running.pop(name, None)

        return timed

    def running_for(self, name: str) -> float | None:
        """Seconds the current step of ``name`` has run, or None when it is idle."""
        started = self._running.get(name)
        return None if started is None else self.clock() - started

    def since_start(self, name: str) -> float:
        """Seconds since a step of ``name`` last started (or since this heartbeat began)."""
        return self.clock() - self._last_start.get(name, self.created)


class Supervisor:
    """Readiness, STATUS= and WATCHDOG=1 for one Daemon (which calls wrap, schedule and
    read_answered)."""

    def __init__(
        self,
        daemon: Daemon,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.daemon = daemon
        self.watchdog = watchdog_seconds(environ)
        self.heartbeat = Heartbeat(clock)
        self.reads = ReadCounter()
        self.ready = False
        self.read_errors = 0
        """Failed reads in a row."""
        self.last_read_ok: float | None = None
        """When a read last got an answer, in this process."""
        self._read_ok_saved_at = float("-inf")
        self.last_error = ""
        self._withheld: str | None = None

    # -- called by the daemon ------------------------------------------------------------

    def wrap(self, name: str, step: Callable[[], bool]) -> Callable[[], bool]:
        return self.heartbeat.wrap(name, step)

    def schedule(self, scheduler: BaseScheduler, *, executor: str = "default") -> None:
        """Add the STATUS= job and, when systemd asked for one, the watchdog job, on the
        scheduler's ``executor`` (the core's, never the plugins')."""
        soon = datetime.now(UTC) + timedelta(seconds=STATUS_INTERVAL)
        scheduler.add_job(
            self.send_status,
            IntervalTrigger(seconds=STATUS_INTERVAL),
            id="supervision:status",
            next_run_time=soon,
            executor=executor,
        )
        if self.watchdog is not None:
            scheduler.add_job(
                self.watchdog_tick,
                IntervalTrigger(seconds=self.watchdog / 2),
                id="supervision:watchdog",
                next_run_time=datetime.now(UTC),
                executor=executor,
            )

    def read_answered(self, result: str, reason: str = "") -> None:
        """Count a read's result; the first one makes the daemon ready."""
        self.reads.add(result)
        app = self.daemon.app
        if result in FAILED_READS:
            self.read_errors += 1
            self.last_error = _one_line(reason)
        else:
            self.read_errors = 0
            self.last_error = ""
            if app is not None:
                self.last_read_ok = app.time()
                # Saved for `responder status` at most once a second: a busy stream of
                # reads must not pay a write each.
                if self.last_read_ok - self._read_ok_saved_at >= 1.0:
                    self._read_ok_saved_at = self.last_read_ok
                    app.store.set_last_read_ok_at(self.last_read_ok)
        if not self.ready:
            self.ready = True
            if result in FAILED_READS:
                status = f"ready, but the first read failed: {self.last_error}"
            else:
                status = self.status_line()
            self.daemon.notify(f"READY=1\nSTATUS={status}")

    def account_changed(self, status: AccountStatus) -> None:
        """The account's state changed: say so in STATUS= at once. A refused account may
        not read for a long while, so its refusal also makes the daemon ready."""
        if not self.ready:
            self.ready = True
            self.daemon.notify(f"READY=1\nSTATUS={self.status_line()}")
        else:
            self.send_status()

    # -- jobs ----------------------------------------------------------------------------

    def send_status(self) -> None:
        try:
            self.daemon.notify(f"STATUS={self.status_line()}")
        except Exception:
            log.exception("status_failed")

    def watchdog_tick(self) -> None:
        """Ping systemd when every loop turns; otherwise say why and let it restart us."""
        try:
            stalled = self.stalled()
        except Exception as err:  # a check that cannot run proves nothing: do not ping
            stalled = f"the health check failed: {type(err).__name__}"
        if stalled is None:
            if self._withheld is not None:
                log.info("watchdog_resumed", was=self._withheld)
                self._withheld = None
            self.daemon.notify("WATCHDOG=1")
            return
        if self._withheld != stalled:
            log.error("watchdog_withheld", reason=stalled, action="systemd will restart us")
            self._withheld = stalled
            self.daemon.notify(f"STATUS=wedged: {stalled}")

    # -- health and figures --------------------------------------------------------------

    def budgets(self) -> dict[str, float]:
        """How long one step of each loop may run before the daemon counts as wedged.

        Each gets the watchdog interval plus the longest its legitimate work can take:
        a read waits out the read interval and a request (on each server address); a
        send step sends up to a batch of SMS, each a request on each address; plugins
        must handle a message within the interval itself.
        """
        base = self.watchdog or DEFAULT_STALL
        app = self.daemon.app
        if app is None:
            return dict.fromkeys(WATCHED, base)
        gateway = app.settings.gateway
        request = gateway.timeout * max(len(gateway.base_urls), 1)
        return {
            "read": base + gateway.poll_interval + request,
            "process": base,
            "send": base + SEND_BATCH * request,
        }

    def stalled(self) -> str | None:
        """Why the daemon is wedged, or None while all its loops turn."""
        budgets = self.budgets()
        for name, budget in budgets.items():
            running = self.heartbeat.running_for(name)
            if running is not None and running > budget:
                return f"one {name} step has run for {running:.0f} s (budget {budget:.0f} s)"
        app = self.daemon.app
        interval = app.settings.gateway.poll_interval if app is not None else 0.0
        quiet = self.heartbeat.since_start("read")
        if quiet > interval + budgets["read"]:
            return f"no read started for {quiet:.0f} s"
        return None

    def status_line(self) -> str:
        """One line for ``systemctl status``: problems first, then live figures."""
        app = self.daemon.app
        if app is None:
            return "starting"
        parts = []
        account = self.daemon.account.status if self.daemon.account is not None else None
        problem = account_problem(account, app.settings.gateway) if account else ""
        if problem:
            parts.append(problem)
        elif self.read_errors:
            parts.append(f"reads failing ({self.read_errors} in a row: {self.last_error})")
        if self._withheld is not None:
            parts.append(f"wedged: {self._withheld}")
        if self.daemon.read_hold:
            parts.append(f"READS HELD: {self.daemon.read_hold}")
        last = self.last_read_ok
        parts.append(
            "no successful read yet" if last is None else f"last read {app.time() - last:.0f} s ago"
        )
        today, depth = today_and_depth(app.store, app.now())
        parts.append(f"{today} message{'' if today == 1 else 's'} today")
        parts.append(f"outbox {depth}")
        if account is not None and account.balance is not None:
            parts.append(f"balance {account.balance:g}{' (LOW)' if account.low_balance else ''}")
        return "; ".join(parts)


def today_and_depth(store: StoreBackend, now: datetime) -> tuple[int, int]:
    """Messages journaled since midnight (platform time) and SMS waiting to be sent."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return store.count_journaled(midnight), store.outbox_depth()


def account_problem(status: AccountStatus, settings: GatewaySettings) -> str:
    """What the account's state means for the daemon, for STATUS=; "" when it is ok."""
    reason = f" ({_one_line(status.reason)})" if status.reason else ""
    if status.state is AccountState.OUT_OF_CREDIT:
        check = (
            f"balance checked every {settings.balance_check:g} s"
            if status.balance_offered
            else f"one send tried every {settings.balance_check:g} s"
        )
        return f"OUT OF CREDIT{reason}: replies held, reading goes on; {check}"
    if status.state in (AccountState.LOGIN_REFUSED, AccountState.SUSPENDED):
        what = "LOGIN REFUSED" if status.state is AccountState.LOGIN_REFUSED else "SUSPENDED"
        return (
            f"{what}{reason}: reading and sending stopped; retried every "
            f"{settings.login_retry:g} s, or fix the account, then reload"
        )
    return ""


def _one_line(text: str) -> str:
    return " ".join(redactor(text).split())[:200]
