"""The account's state, judged from the gateway's answers, and when to try it again.

A refused login or a suspended account stops reading and sending; the daemon tries again
by itself every ``gateway.login_retry`` seconds, and the try is a read (through the read
gate, so the read interval holds). An account out of credit keeps reading and queuing
replies; its sends wait, unclaimed, until ``getfee.aspx`` shows a balance again (asked
every ``gateway.balance_check`` seconds) or, without that endpoint, until a probe send
goes through. Each change is logged once and saved in the store's meta table, where
``responder status`` and the metrics read it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Final

import structlog

from responder.gateway import (
    AccountError,
    AccountState,
    BalanceNotOffered,
    GatewayClient,
    GatewayError,
)
from responder.store.interface import read_meta_key

if TYPE_CHECKING:
    from responder.config import GatewaySettings
    from responder.models import Delivery
    from responder.store import StoreBackend

META_KEY: Final = "account"
REFUSED: Final = (AccountState.LOGIN_REFUSED, AccountState.SUSPENDED)
"""States in which nothing is read or sent."""
_EVENTS: Final = {
    AccountState.OK: "account_ok",
    AccountState.LOGIN_REFUSED: "login_refused",
    AccountState.SUSPENDED: "account_suspended",
    AccountState.OUT_OF_CREDIT: "out_of_credit",
}

log = structlog.get_logger("responder.account")


@dataclass(frozen=True)
class AccountStatus:
    """The account as last judged, as saved for ``responder status`` and the metrics."""

    state: AccountState = AccountState.OK
    since: float | None = None
    """When it entered this state (epoch seconds)."""
    reason: str = ""
    """The gateway's words and errid that put it there ("" when ok)."""
    balance: float | None = None
    """The last balance read (scaled); None when never read."""
    balance_at: float | None = None
    low_balance: bool = False
    """The balance is under ``gateway.low_balance``."""
    balance_offered: bool = True
    """False once the provider turned out to have no balance endpoint."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"state": self.state.value}

    @classmethod
    def load(cls, store: StoreBackend, account: str = "default") -> AccountStatus:
        """What the store holds of ``account``; ok when nothing was saved yet (or it cannot
        be read)."""
        raw = store.get_meta(read_meta_key(META_KEY, account))
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(
                state=AccountState(data["state"]),
                since=data.get("since"),
                reason=str(data.get("reason", "")),
                balance=data.get("balance"),
                balance_at=data.get("balance_at"),
                low_balance=bool(data.get("low_balance", False)),
                balance_offered=bool(data.get("balance_offered", True)),
            )
        except (ValueError, KeyError, TypeError):
            return cls()

    def save(self, store: StoreBackend, account: str = "default") -> None:
        store.set_meta(
            read_meta_key(META_KEY, account), json.dumps(self.as_dict(), ensure_ascii=False)
        )


class Account:
    """The state machine of one account, shared by the read and send loops (thread-safe).

    The state survives restarts (it is restored from the store), but a restarted or
    reloaded daemon tries the account again at once: the fault may have been fixed.
    """

    def __init__(
        self,
        store: StoreBackend,
        settings: GatewaySettings,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[AccountStatus], None] | None = None,
        account: str = "default",
    ) -> None:
        self.account = account
        self._log = log.bind(account=account) if account != "default" else log
        self._store = store
        self._settings = settings
        self._clock = clock
        self._on_change = on_change
        self._lock = threading.Lock()
        self._next_try = 0.0
        """When a refused account may be tried again, or (out of credit, no balance
        endpoint) when the next probe send may go."""
        self._next_balance = 0.0
        self._probing = False
        """A read granted as the try of a refused account is under way."""
        self._balance_offered = True
        """Per process: a provider without getfee is asked once."""
        self._status = AccountStatus.load(store, account)
        if self._status.since is None:
            self._status = replace(self._status, since=clock())
            self._status.save(store, account)

    @property
    def status(self) -> AccountStatus:
        return self._status

    @property
    def state(self) -> AccountState:
        return self._status.state

    def configure(self, settings: GatewaySettings) -> None:
        """New settings (a reload): try the account and its balance again at once."""
        with self._lock:
            self._settings = settings
            self._next_try = 0.0
            self._next_balance = 0.0

    # -- reads -----------------------------------------------------------------------

    def may_read(self) -> bool:
        """Whether the read loop may call readsms now. While the account is refused, one
        read every ``login_retry`` seconds is the try that shows whether it works again."""
        with self._lock:
            if self._status.state not in REFUSED:
                return True
            now = self._clock()
            if now < self._next_try:
                return False
            self._next_try = now + self._settings.login_retry
            self._probing = True
            return True

    def read_worked(self) -> None:
        """A read got an answer. When it was the try of a refused account (not a read
        that began before the refusal), the refusal is over."""
        with self._lock:
            probing, self._probing = self._probing, False
        if probing and self._status.state in REFUSED:
            self._change(AccountState.OK, "")

    # -- sends -----------------------------------------------------------------------

    def send_batch(self, batch: int) -> int:
        """How many outbox rows the send loop may take now: ``batch``; none while the
        account is refused or out of credit; one, now and then, to probe a provider
        that has no balance endpoint."""
        with self._lock:
            state = self._status.state
            if state is AccountState.OK:
                return batch
            if state is AccountState.OUT_OF_CREDIT and not self._balance_offered:
                return 1 if self._clock() >= self._next_try else 0
            return 0

    def delivered(self, delivery: Delivery) -> None:
        """A send's outcome: one that went out ends an out-of-credit hold (a probe)."""
        if self._status.state is not AccountState.OUT_OF_CREDIT:
            return
        if delivery.status == "sent":
            self._change(AccountState.OK, "")
        else:
            with self._lock:
                self._next_try = self._clock() + self._settings.balance_check

    # -- both ------------------------------------------------------------------------

    def refused(self, error: AccountError) -> None:
        """The gateway refused the account: hold what it cannot do, and say so once."""
        with self._lock:
            wait = (
                self._settings.balance_check
                if error.state is AccountState.OUT_OF_CREDIT
                else self._settings.login_retry
            )
            self._next_try = self._clock() + wait
            self._probing = False
            if error.state is AccountState.OUT_OF_CREDIT:
                self._next_balance = max(self._next_balance, self._next_try)
        self._change(error.state, error.reason)

    # -- balance ---------------------------------------------------------------------

    def check_balance(self, gateway: GatewayClient) -> None:
        """Ask for the balance when it is due (every ``balance_check`` seconds, never while
        the account is refused, never again once the provider showed it has no endpoint)."""
        with self._lock:
            now = self._clock()
            if (
                not self._balance_offered
                or self._status.state in REFUSED
                or now < self._next_balance
            ):
                return
            self._next_balance = now + self._settings.balance_check
        try:
            balance = gateway.balance()
        except BalanceNotOffered as err:
            self._log.info(
                "balance_not_offered",
                reason=str(err),
                action="not asked again; an account out of credit is probed with a send",
            )
            with self._lock:
                self._balance_offered = False
                self._next_try = min(self._next_try, self._clock())
            self._update(balance_offered=False)
            return
        except AccountError as err:
            self.refused(err)
            return
        except GatewayError as err:
            self._log.info(
                "balance_check_failed", error=str(err), retry_in=self._settings.balance_check
            )
            return
        self._balance_known(balance)

    def _balance_known(self, balance: float) -> None:
        threshold = self._settings.low_balance
        low = threshold is not None and balance < threshold
        was_low = self._status.low_balance
        if low and not was_low:
            self._log.warning("balance_low", balance=balance, low_balance=threshold)
        elif was_low and not low:
            self._log.info("balance_recovered", balance=balance, low_balance=threshold)
        self._update(
            balance=balance, balance_at=self._clock(), low_balance=low, balance_offered=True
        )
        if balance > 0 and self._status.state is AccountState.OUT_OF_CREDIT:
            self._change(AccountState.OK, "")

    # -- changes ---------------------------------------------------------------------

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._status = replace(self._status, **changes)
            self._status.save(self._store, self.account)

    def _change(self, state: AccountState, reason: str) -> None:
        """Enter ``state``: logged, saved and reported only when it is a change."""
        with self._lock:
            previous = self._status
            if previous.state is state:
                return
            now = self._clock()
            self._status = replace(previous, state=state, since=now, reason=reason)
            self._status.save(self._store, self.account)
            current = self._status
        event = _EVENTS[state]
        if state is AccountState.OK:
            self._log.info(event, down_for=round(now - (previous.since or now)))
        else:
            self._log.warning(event, reason=reason, action=_action(state, self._settings))
        if self._on_change is not None:
            self._on_change(current)


def _action(state: AccountState, settings: GatewaySettings) -> str:
    if state is AccountState.OUT_OF_CREDIT:
        return (
            "reading goes on; sends wait (their attempts not counted) until the balance is "
            f"back, checked every {settings.balance_check:g} s"
        )
    return (
        f"reading and sending stopped; retried every {settings.login_retry:g} s, "
        "or fix the account and reload (SIGHUP)"
    )
