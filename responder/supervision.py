"""What systemd sees of a running daemon: readiness, STATUS lines and watchdog pings.

READY=1 goes out once the first gateway read of any account has answered (or failed,
with the reason in STATUS=), or at once when no account is served. STATUS= is refreshed
with live figures: the account's own with one account, a summary by state with several.
WATCHDOG=1 pings come from a job on the core's executor of the daemon's scheduler
(plugin jobs have their own, so none can starve it), and only while the reads, the
process and the send workers turn: a step stuck for longer than its budget withholds
them, so systemd restarts a wedged daemon instead of trusting a thread that pings
whatever happens.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

    from responder.daemon import Daemon, Served

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
READ_OK_SAVE_EVERY: Final = 30.0
"""Seconds between two saves of an account's last good read (for ``responder status``)
when several accounts are served; with one, at most once a second."""

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
            with self.step(name):
                return step()

        return timed

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Record one step of ``name`` ("read:<account>" counts as a step of "read" too:
        the reads of several accounts run at the same time, one per account)."""
        started = self.clock()
        self._running[name] = started
        self._last_start[name] = started
        group = name.partition(":")[0]
        if group != name:
            self._last_start[group] = started
        try:
            yield
        finally:
            self._running.pop(name, None)

    def running(self) -> dict[str, float]:
        """Seconds each step under way has run, by name."""
        now = self.clock()
        return {name: now - started for name, started in list(self._running.items())}

    def running_for(self, name: str) -> float | None:
        """Seconds the current step of ``name`` (or, for a group such as "read", its
        longest under way) has run, or None when it is idle."""
        runs = [
            seconds
            for each, seconds in self.running().items()
            if each == name or each.partition(":")[0] == name
        ]
        return max(runs) if runs else None

    def since_start(self, name: str) -> float:
        """Seconds since a step of ``name`` last started (or since this heartbeat began)."""
        return self.clock() - self._last_start.get(name, self.created)


class Supervisor:
    """Readiness, STATUS= and WATCHDOG=1 for the daemon (which calls wrap, schedule,
    read_answered and account_changed)."""

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
        """Reads of every account since the process started, by result."""
        self.ready = False
        self._ready_lock = threading.Lock()
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

    def read_answered(self, served: Served, result: str, reason: str = "") -> None:
        """Count a read's result for its account; the first one makes the daemon ready."""
        self.reads.add(result)
        served.reads[result] += 1
        if result in FAILED_READS:
            served.read_errors += 1
            served.last_error = _one_line(reason)
        else:
            served.read_errors = 0
            served.last_error = ""
            now = served.app.time()
            served.last_read_ok = now
            # Saved for `responder status`, not at every read: a busy stream of reads (or
            # a thousand accounts) must not pay a write each.
            every = 1.0 if len(self.daemon.served) <= 1 else READ_OK_SAVE_EVERY
            if now - served.read_ok_saved_at >= every:
                served.read_ok_saved_at = now
                served.app.store.set_last_read_ok_at(now, account=served.id)
        if not self.ready:
            if result in FAILED_READS:
                self.became_ready(f"ready, but the first read failed: {served.last_error}")
            else:
                self.became_ready()

    def became_ready(self, status: str | None = None) -> None:
        """READY=1, with the status line (or ``status``); once."""
        with self._ready_lock:  # the reads of several accounts answer at once
            if self.ready:
                return
            self.ready = True
        self.daemon.notify(f"READY=1\nSTATUS={status or self.status_line()}")

    def account_changed(self, _status: AccountStatus) -> None:
        """An account's state changed: say so in STATUS= at once. A refused account may
        not read for a long while, so its refusal also makes the daemon ready."""
        if not self.ready:
            self.became_ready()
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

    def _gateways(self) -> list[GatewaySettings]:
        return [served.app.settings.gateway for served in list(self.daemon.served.values())]

    def budgets(self) -> dict[str, float]:
        """How long one step of each loop may run before the daemon counts as wedged.

        Each gets the watchdog interval plus the longest its legitimate work can take
        (the slowest account's): a read waits out the read interval and a request (on
        each server address); a send step sends up to a batch of SMS, each a request on
        each address; plugins must handle a message within the interval itself.
        """
        base = self.watchdog or DEFAULT_STALL
        gateways = self._gateways()
        if not gateways:
            return dict.fromkeys(WATCHED, base)
        request = max(g.timeout * max(len(g.base_urls), 1) for g in gateways)
        interval = max(g.poll_interval for g in gateways)
        return {
            "read": base + interval + request,
            "process": base,
            "send": base + SEND_BATCH * request,
        }

    def stalled(self) -> str | None:
        """Why the daemon is wedged, or None while all its loops turn."""
        budgets = self.budgets()
        running = self.heartbeat.running()
        reads = sorted(name for name in running if name.partition(":")[0] == "read")
        others = sorted(name for name in running if name not in reads)
        # The reads first: the loop that must never stop.
        return (
            self._overrun(reads, running, budgets)
            or self._reads_quiet(budgets)
            or self._overrun(others, running, budgets)
            or (None if self.daemon.threads_alive() else "a core thread ended")
        )

    @staticmethod
    def _overrun(
        names: list[str], running: dict[str, float], budgets: dict[str, float]
    ) -> str | None:
        for name in names:
            group, _, account = name.partition(":")
            budget = budgets.get(group, budgets["process"])
            if running[name] > budget:
                of = f" of account {account}" if account else ""
                took = running[name]
                return f"one {group} step{of} has run for {took:.0f} s (budget {budget:.0f} s)"
        return None

    def _reads_quiet(self, budgets: dict[str, float]) -> str | None:
        """Why no read started for too long (none is due without accounts), or None."""
        gateways = self._gateways()
        if not gateways:
            return None
        interval = max(g.poll_interval for g in gateways)
        quiet = self.heartbeat.since_start("read")
        if quiet > interval + budgets["read"]:
            return f"no read started for {quiet:.0f} s"
        return None

    def status_line(self) -> str:
        """One line for ``systemctl status``: problems first, then live figures; with
        several accounts, how many are in each state."""
        daemon = self.daemon
        served = list(daemon.served.values())
        if daemon.store is None:
            return "starting"
        if len(served) != 1:
            line = summary_line({s.id: s.state.state for s in served}, len(daemon.rejected))
            leases = daemon.leases_line()
            if leases:
                line += f"; {leases}"
            if self._withheld is not None:
                line = f"wedged: {self._withheld}; {line}"
            if daemon.read_hold:
                line = f"READS HELD: {daemon.read_hold}; {line}"
            return line
        return self.account_line(served[0])

    def account_line(self, served: Served) -> str:
        """The one account's problem, read errors, last read, messages today, outbox
        and balance."""
        app = served.app
        parts = []
        account = served.state.status
        problem = account_problem(account, app.settings.gateway)
        if problem:
            parts.append(problem)
        elif served.read_errors:
            parts.append(f"reads failing ({served.read_errors} in a row: {served.last_error})")
        if self._withheld is not None:
            parts.append(f"wedged: {self._withheld}")
        if self.daemon.read_hold:
            parts.append(f"READS HELD: {self.daemon.read_hold}")
        leases = self.daemon.leases_line()
        if leases:
            parts.append(leases)
        last = served.last_read_ok
        parts.append(
            "no successful read yet" if last is None else f"last read {app.time() - last:.0f} s ago"
        )
        today, depth = today_and_depth(app.store, app.now(), served.id)
        parts.append(f"{today} message{'' if today == 1 else 's'} today")
        parts.append(f"outbox {depth}")
        if account.balance is not None:
            parts.append(f"balance {account.balance:g}{' (LOW)' if account.low_balance else ''}")
        return "; ".join(parts)


def summary_line(states: Mapping[str, AccountState], rejected: int = 0) -> str:
    """ "3 accounts: 2 ok, 1 out of credit" (and how many files were rejected)."""
    counts = Counter(state.label for state in states.values())
    ok = counts.pop(AccountState.OK.label, 0)
    parts = [f"{ok} ok", *(f"{n} {label}" for label, n in sorted(counts.items()))]
    line = f"{len(states)} account{'s' if len(states) != 1 else ''}: {', '.join(parts)}"
    if rejected:
        line += f"; {rejected} rejected (see the log)"
    return line


def today_and_depth(
    store: StoreBackend, now: datetime, account: str | None = None
) -> tuple[int, int]:
    """Messages journaled since midnight (platform time) and SMS waiting to be sent, of
    ``account`` (None: every account)."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return store.count_journaled(midnight, account=account), store.outbox_depth(account=account)


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
