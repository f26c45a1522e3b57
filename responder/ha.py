"""Several instances on one PostgreSQL store: each account read by one of them at a time.

Every instance registers itself in ``ha_instances`` and heartbeats every ``lease / 3``
seconds. In the same transaction it renews its accounts' leases (``ha_leases``: holder,
fencing token, expiry), takes free or expired ones up to its fair share (the accounts
divided by the live instances, rounded up) and gives back the ones over it once their
work in flight has ended, so that accounts spread when instances come and go. Every
time in these tables is the database's (``clock_timestamp()``): no decision rests on
two hosts' clocks agreeing.

A read of an account goes through its fence (``AccountFence``, installed in the read
gate): one conditional UPDATE checks that this instance still holds the lease with the
same token, that the lease has not run out, and that the interval since the account's
last read (whoever made it: the read's start and end are kept in the lease row) has
passed; it records the read's start and stretches the lease to cover the gateway's
timeout. When it changes no row, no request leaves. Right before the request, the
local monotonic clock must show that the statement came back within ``CONFIRM_WITHIN``
seconds, or the read is given up. See docs/ha.md.

A SQLite store is one host's: ``LocalLeases`` holds every account, with no fence (the
store's file lock already keeps one daemon per file). Both offer ``Leases``, so the
daemon has one code path.
"""

from __future__ import annotations

import math
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

if TYPE_CHECKING:
    from responder.config import Table
    from responder.store import StoreBackend

log = structlog.get_logger("responder.ha")

CONFIRM_WITHIN: Final = 2.0
"""Seconds at most between sending the fence statement and the read's request leaving.
The fence stretches the lease to at least the gateway's timeout plus this, so a read
that leaves in time ends before anyone else may take the lease."""
LEASE_MIN: Final = 1.0
LEASE_MAX: Final = 600.0
FORGET_AFTER: Final = 20
EXPIRY_MARGIN: Final = 0.05
"""Seconds after another instance's lease runs out that a heartbeat looks again."""
"""An instance silent for this many leases is removed from the registry."""
OWNER: Final = "responder.ha"
"""The owner of the tables in ``plugin_schema``."""

SCHEMA: Final = (
    {
        "sqlite": "",
        "postgresql": """
            CREATE TABLE ha_instances (
                id TEXT PRIMARY KEY,
                session TEXT NOT NULL,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                started_at TIMESTAMPTZ NOT NULL,
                heartbeat_at TIMESTAMPTZ NOT NULL
            );
            CREATE TABLE ha_leases (
                account TEXT PRIMARY KEY,
                holder TEXT NOT NULL DEFAULT '',
                token BIGINT NOT NULL DEFAULT 0,
                acquired_at TIMESTAMPTZ,
                expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
                last_read_start TIMESTAMPTZ,
                last_read_end TIMESTAMPTZ
            );
        """,
    },
)


@dataclass(frozen=True)
class HaSettings:
    """``[ha]``: instances sharing a PostgreSQL store."""

    lease: float = 15.0
    """Seconds an account's lease lasts without a heartbeat: an instance that dies has its
    accounts taken over within this (plus the read interval)."""
    instance: str = ""
    """This instance's name in the cluster; "" = ``host:pid``."""


def parse_ha(table: Table) -> HaSettings:
    settings = HaSettings(
        lease=table.get_float(
            "lease", HaSettings.lease, min=LEASE_MIN, max=LEASE_MAX, unit="seconds"
        ),
        instance=table.get_str("instance", HaSettings.instance),
    )
    name = settings.instance
    if name and (len(name) > 100 or not name.isprintable() or name != name.strip()):
        table.error(
            "instance",
            "must be a printable name of at most 100 characters without surrounding "
            f"spaces (e.g. the host's name), got {name!r}",
        )
    table.finish()
    return settings


def instance_name(settings: HaSettings) -> str:
    return settings.instance or f"{socket.gethostname()}:{os.getpid()}"


class ReadFenced(Exception):
    """No read now: the lease is not held (or no longer), or the read interval since the
    account's last read (by any instance) has not passed. ``retry_in``: seconds until
    trying again makes sense."""

    def __init__(self, reason: str, *, retry_in: float, lost: bool = False) -> None:
        super().__init__(reason)
        self.retry_in = retry_in
        self.lost = lost


class ReadFence(Protocol):
    """What the read gate calls around a read (``ReadGate.fence``)."""

    def enter(self) -> None:
        """Before anything else: ReadFenced when this read must not happen."""

    def confirm(self) -> None:
        """Right before the request leaves: ReadFenced when too late."""

    def leave(self) -> None:
        """After the request, whatever its outcome."""


class Leases(Protocol):
    """Which accounts this instance may read, process and send now."""

    instance: str
    late_reads: int

    def start(self, accounts: Iterable[str]) -> None: ...

    def set_accounts(self, accounts: Iterable[str]) -> None: ...

    def holds(self, account: str) -> bool: ...

    def held(self) -> list[str]: ...

    def use(self, account: str) -> Any:
        """A context manager yielding whether work on ``account`` may go on now; a lease
        is given back to the others only once no such work is in flight."""

    def fence(self, account: str, *, interval: float, timeout: float) -> ReadFence | None: ...

    def take_acquired(self) -> list[str]:
        """Accounts acquired since the last call (their unfinished sends may be a dead
        instance's)."""

    def describe(self) -> str: ...

    def stop(self) -> None: ...


class LocalLeases:
    """One host, one daemon per store file: every account is this instance's."""

    def __init__(self, instance: str = "") -> None:
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.late_reads = 0
        self._accounts: list[str] = []

    def start(self, accounts: Iterable[str]) -> None:
        self._accounts = sorted(accounts)

    def set_accounts(self, accounts: Iterable[str]) -> None:
        self._accounts = sorted(accounts)

    def holds(self, account: str) -> bool:
        return True

    def held(self) -> list[str]:
        return list(self._accounts)

    @contextmanager
    def use(self, account: str) -> Iterator[bool]:
        yield True

    def fence(self, account: str, *, interval: float, timeout: float) -> ReadFence | None:
        return None

    def take_acquired(self) -> list[str]:
        return []

    def describe(self) -> str:
        return "every account (one host: SQLite store)"

    def stop(self) -> None:
        pass


@dataclass
class _Held:
    token: int
    deadline: float
    """Monotonic time past which the lease may have run out (no renewal seen since)."""
    busy: int = 0
    releasing: bool = False


def _seconds(value: float) -> Any:
    return f"{value:.6f} seconds"


class PgLeases:
    """The leases of one instance on a PostgreSQL store; ``start`` begins heartbeating."""

    def __init__(
        self,
        url: str,
        connect_kwargs: dict[str, Any],
        settings: HaSettings,
        *,
        store: StoreBackend | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.url = url
        self.settings = settings
        self.lease = settings.lease
        self.instance = instance_name(settings)
        self.session = secrets.token_hex(8)
        self.late_reads = 0
        self.lost = 0
        self._kwargs = {
            **connect_kwargs,
            "application_name": f"responder ha {self.instance}"[:63],
            # A request the network swallowed fails within a lease, not after minutes.
            "tcp_user_timeout": int(max(self.lease / 3, 1.0) * 1000),
            "connect_timeout": max(2, int(self.lease / 3)),
            # A heartbeat never waits on a lock longer than a third of the lease, and the
            # server ends one left open by an instance cut off mid-transaction before its
            # leases could run out, so the rows it locked are free for the others.
            "options": (
                f"-c lock_timeout={int(max(self.lease / 3, 1.0) * 1000)}"
                f" -c idle_in_transaction_session_timeout={int(max(self.lease / 2, 1.0) * 1000)}"
                " -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3"
            ),
        }
        self._store = store
        self._on_change = on_change
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}
        self._accounts: list[str] = []
        self._acquired: list[str] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._registered = False
        self.last_heartbeat_ok: float | None = None
        self._next_expiry = math.inf
        """Seconds from the last heartbeat until another instance's lease runs out."""
        self.last_error = ""

    # -- connection ------------------------------------------------------------------

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=False, **self._kwargs)
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
        self._conn = None

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """One transaction on this instance's own connection (not the store's pool: a
        heartbeat must not wait behind the pipeline's work)."""
        import psycopg

        with self._conn_lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    yield conn
            except psycopg.Error:
                self._drop_connection()
                raise

    # -- life cycle ------------------------------------------------------------------

    def setup(self) -> None:
        """Create the tables when missing, and register this instance; StoreError (from
        psycopg's errors) when another live instance has the same name."""
        if self._store is not None:
            self._store.migrate(OWNER, SCHEMA)
        with self._tx() as conn:
            row = conn.execute(
                "SELECT session, heartbeat_at > clock_timestamp() - %s::interval"
                " FROM ha_instances WHERE id = %s FOR UPDATE",
                (_seconds(self.lease), self.instance),
            ).fetchone()
            if row is not None and row[1] and row[0] != self.session:
                raise InstanceTaken(
                    f"another instance named {self.instance!r} is running on this store:"
                    " give each its own [ha] instance (or leave it empty: host:pid)"
                )
            conn.execute(
                "INSERT INTO ha_instances (id, session, host, pid, started_at, heartbeat_at)"
                " VALUES (%s, %s, %s, %s, clock_timestamp(), clock_timestamp())"
                " ON CONFLICT (id) DO UPDATE SET session = excluded.session,"
                " host = excluded.host, pid = excluded.pid, started_at = excluded.started_at,"
                " heartbeat_at = excluded.heartbeat_at",
                (self.instance, self.session, socket.gethostname(), os.getpid()),
            )
        self._registered = True

    def start(self, accounts: Iterable[str]) -> None:
        """Register and take a first share of the accounts; StoreError when the store
        cannot be reached or another live instance has this one's name."""
        import psycopg

        from responder.store.interface import StoreError

        self._accounts = sorted(set(accounts))
        try:
            if not self._registered:
                self.setup()
        except InstanceTaken as err:
            raise StoreError(str(err)) from None
        except psycopg.Error as err:
            reason = " ".join(str(err).split())
            raise StoreError(f"cannot register this instance in the store: {reason}") from None
        self.heartbeat()
        self._thread = threading.Thread(
            target=self._beat, name="responder-ha-heartbeat", daemon=True
        )
        self._thread.start()

    def set_accounts(self, accounts: Iterable[str]) -> None:
        """The accounts of the configuration changed (SIGHUP): give back the ones gone."""
        with self._lock:
            self._accounts = sorted(set(accounts))
            for account, held in self._held.items():
                if account not in self._accounts:
                    held.releasing = True

    def stop(self) -> None:
        """Give every lease back (once work in flight ended: the daemon stopped it) and
        leave the registry, so that the others take over at once."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.lease)
        with self._lock:
            held = {a: h.token for a, h in self._held.items()}
            self._held.clear()
        try:
            with self._tx() as conn:
                if held:
                    conn.execute(
                        "UPDATE ha_leases SET holder = '', expires_at = clock_timestamp()"
                        " WHERE holder = %s AND account = ANY(%s::text[])",
                        (self.instance, list(held)),
                    )
                conn.execute(
                    "DELETE FROM ha_instances WHERE id = %s AND session = %s",
                    (self.instance, self.session),
                )
            log.info("leases_released", accounts=len(held), instance=self.instance)
        except Exception as err:  # the others take over when the leases run out
            log.warning("leases_not_released", error=str(err), instance=self.instance)
        self._drop_connection()

    def _beat(self) -> None:
        period = self.lease / 3
        while not self._stopping.wait(min(period, self._next_expiry + EXPIRY_MARGIN)):
            try:
                self.heartbeat()
            except Exception:
                log.exception("heartbeat_failed_unexpectedly")

    # -- the heartbeat -----------------------------------------------------------------

    def heartbeat(self) -> None:
        """One round: register, renew, give back extras, take up to the fair share."""
        import psycopg

        sent = time.monotonic()
        with self._lock:
            mine = {a: h.token for a, h in self._held.items()}
            giving = [a for a, h in self._held.items() if h.releasing and h.busy == 0]
            accounts = sorted(self._accounts)  # every instance locks rows in one order
        lease = _seconds(self.lease)
        try:
            with self._tx() as conn:
                alive = conn.execute(
                    "UPDATE ha_instances SET heartbeat_at = clock_timestamp()"
                    " WHERE id = %s AND session = %s RETURNING 1",
                    (self.instance, self.session),
                ).fetchone()
                if alive is None:  # forgotten after a long pause: register again
                    conn.execute(
                        "INSERT INTO ha_instances"
                        " (id, session, host, pid, started_at, heartbeat_at) VALUES"
                        " (%s, %s, %s, %s, clock_timestamp(), clock_timestamp())"
                        " ON CONFLICT (id) DO UPDATE SET session = excluded.session,"
                        " heartbeat_at = excluded.heartbeat_at",
                        (self.instance, self.session, socket.gethostname(), os.getpid()),
                    )
                if giving:
                    conn.execute(
                        "UPDATE ha_leases SET holder = '', expires_at = clock_timestamp()"
                        " WHERE holder = %s AND account = ANY(%s::text[])",
                        (self.instance, giving),
                    )
                renewed = dict(
                    conn.execute(
                        "UPDATE ha_leases SET expires_at ="
                        " GREATEST(expires_at, clock_timestamp() + %s::interval)"
                        " WHERE holder = %s AND account = ANY(%s::text[])"
                        " AND expires_at > clock_timestamp() RETURNING account, token",
                        (lease, self.instance, [a for a in mine if a not in giving]),
                    ).fetchall()
                )
                renewed = {a: t for a, t in renewed.items() if mine.get(a) == t}
                conn.execute(
                    "INSERT INTO ha_leases (account) SELECT unnest(%s::text[])"
                    " ON CONFLICT (account) DO NOTHING",
                    (accounts,),
                )
                live = conn.execute(
                    "SELECT count(*) FROM ha_instances"
                    " WHERE heartbeat_at > clock_timestamp() - %s::interval",
                    (lease,),
                ).fetchone()[0]
                share = math.ceil(len(accounts) / max(int(live), 1))
                keeping = [a for a in renewed if a in accounts]
                want = share - len(keeping)
                acquired: dict[str, int] = {}
                if want > 0 and len(keeping) < len(accounts):
                    candidates = [a for a in accounts if a not in renewed and a not in giving]
                    random.shuffle(candidates)
                    acquired = dict(
                        conn.execute(
                            "UPDATE ha_leases SET holder = %s, token = token + 1,"
                            " acquired_at = clock_timestamp(),"
                            " expires_at = clock_timestamp() + %s::interval"
                            " WHERE account IN (SELECT account FROM ha_leases"
                            "  WHERE account = ANY(%s::text[])"
                            "  AND (holder = '' OR holder = %s"
                            "   OR expires_at <= clock_timestamp())"
                            "  ORDER BY array_position(%s::text[], account) LIMIT %s"
                            "  FOR UPDATE SKIP LOCKED)"
                            " RETURNING account, token",
                            (self.instance, lease, candidates, self.instance, candidates, want),
                        ).fetchall()
                    )
                conn.execute(
                    "DELETE FROM ha_instances"
                    " WHERE heartbeat_at < clock_timestamp() - %s::interval",
                    (_seconds(self.lease * FORGET_AFTER),),
                )
                # When the first lease held by another instance runs out unrenewed
                # (that instance died): the next round comes then, not up to a third of
                # the lease later.
                soonest = conn.execute(
                    "SELECT EXTRACT(EPOCH FROM min(expires_at) - clock_timestamp())"
                    " FROM ha_leases WHERE account = ANY(%s::text[])"
                    " AND holder NOT IN ('', %s) AND expires_at > clock_timestamp()",
                    (accounts, self.instance),
                ).fetchone()
        except psycopg.Error as err:
            self.last_error = " ".join(str(err).split()) or type(err).__name__
            log.warning(
                "heartbeat_failed",
                error=self.last_error,
                held=len(mine),
                action="reads stop when the leases run out; they resume once the store "
                "answers and the leases are taken again",
            )
            self._expire_overdue()
            return
        self.last_heartbeat_ok = time.monotonic()
        self.last_error = ""
        ahead = soonest[0] if soonest is not None else None
        self._next_expiry = math.inf if ahead is None else max(float(ahead), 0.0)
        self._apply(sent, mine, giving, renewed, acquired, share)

    def _apply(
        self,
        sent: float,
        mine: dict[str, int],
        giving: Sequence[str],
        renewed: dict[str, int],
        acquired: dict[str, int],
        share: int,
    ) -> None:
        changed = False
        with self._lock:
            for account in giving:
                self._held.pop(account, None)
                changed = True
            if giving:
                log.info("leases_given_back", accounts=sorted(giving), share=share)
            for account in mine:
                if account in giving:
                    continue
                held = self._held.get(account)
                if held is None:
                    continue
                if account in renewed:
                    held.deadline = sent + self.lease
                else:
                    self._held.pop(account, None)
                    self.lost += 1
                    changed = True
                    log.warning("lease_lost", account=account, token=mine[account])
            for account, token in acquired.items():
                self._held[account] = _Held(token=int(token), deadline=sent + self.lease)
                self._acquired.append(account)
                changed = True
            if acquired:
                log.info("leases_acquired", accounts=sorted(acquired), share=share)
            active = [a for a, h in self._held.items() if not h.releasing]
            extra = len(active) - share
            if extra > 0:
                for account in sorted(active, key=lambda a: self._held[a].busy)[:extra]:
                    self._held[account].releasing = True
        if changed and self._on_change is not None:
            self._on_change()

    def _expire_overdue(self) -> None:
        now = time.monotonic()
        with self._lock:
            for account, held in list(self._held.items()):
                if now >= held.deadline:
                    self._held.pop(account)
                    self.lost += 1
                    log.warning("lease_expired", account=account, token=held.token)

    # -- what the daemon asks ----------------------------------------------------------

    def holds(self, account: str) -> bool:
        with self._lock:
            held = self._held.get(account)
            return held is not None and not held.releasing and time.monotonic() < held.deadline

    def held(self) -> list[str]:
        with self._lock:
            now = time.monotonic()
            return sorted(a for a, h in self._held.items() if now < h.deadline)

    def token(self, account: str) -> int | None:
        with self._lock:
            held = self._held.get(account)
            return held.token if held is not None else None

    @contextmanager
    def use(self, account: str) -> Iterator[bool]:
        with self._lock:
            held = self._held.get(account)
            ok = held is not None and not held.releasing and time.monotonic() < held.deadline
            if ok:
                assert held is not None
                held.busy += 1
        try:
            yield ok
        finally:
            if ok:
                with self._lock:
                    assert held is not None
                    held.busy -= 1

    def take_acquired(self) -> list[str]:
        with self._lock:
            taken, self._acquired = self._acquired, []
            return taken

    def fence(self, account: str, *, interval: float, timeout: float) -> ReadFence | None:
        return AccountFence(self, account, interval=interval, timeout=timeout)

    def describe(self) -> str:
        held = self.held()
        return f"instance {self.instance}: {len(held)} lease(s) ({', '.join(held) or '-'})"

    # -- the fence's statements ----------------------------------------------------------

    def _enter(self, account: str, token: int, interval: float, timeout: float) -> None:
        import psycopg

        margin = timeout + CONFIRM_WITHIN
        try:
            with self._tx() as conn:
                row = conn.execute(
                    "UPDATE ha_leases SET last_read_start = clock_timestamp(),"
                    " expires_at = GREATEST(expires_at, clock_timestamp() + %(margin)s::interval)"
                    " WHERE account = %(account)s AND holder = %(me)s AND token = %(token)s"
                    " AND expires_at > clock_timestamp()"
                    " AND clock_timestamp() >= " + _READ_FROM + " + %(interval)s::interval"
                    " RETURNING token",
                    {
                        "margin": _seconds(margin),
                        "account": account,
                        "me": self.instance,
                        "token": token,
                        "timeout": _seconds(timeout),
                        "interval": _seconds(interval),
                    },
                ).fetchone()
                if row is not None:
                    return
                why = conn.execute(
                    "SELECT holder = %(me)s AND token = %(token)s"
                    " AND expires_at > clock_timestamp(),"
                    " EXTRACT(EPOCH FROM (" + _READ_FROM + " + %(interval)s::interval"
                    " - clock_timestamp()))"
                    " FROM ha_leases WHERE account = %(account)s",
                    {
                        "me": self.instance,
                        "token": token,
                        "account": account,
                        "timeout": _seconds(timeout),
                        "interval": _seconds(interval),
                    },
                ).fetchone()
        except psycopg.Error as err:
            raise ReadFenced(
                f"the lease of {account} cannot be checked: {' '.join(str(err).split())}",
                retry_in=min(self.lease / 3, 5.0),
            ) from None
        if why is None or not why[0]:
            with self._lock:
                held = self._held.get(account)
                if held is not None and held.token == token:
                    self._held.pop(account)
                    self.lost += 1
            log.warning("lease_lost", account=account, token=token, at="read")
            raise ReadFenced(f"the lease of {account} is lost", retry_in=self.lease / 3, lost=True)
        left = max(float(why[1] or 0.0), 0.05)
        raise ReadFenced(
            f"the last read of {account} was {left:.1f} s short of the interval ago",
            retry_in=left,
        )

    def _leave(self, account: str, token: int) -> bool:
        """Record the read's end; whether the lease was still held (else: a late read)."""
        import psycopg

        try:
            with self._tx() as conn:
                row = conn.execute(
                    "UPDATE ha_leases SET last_read_end ="
                    " GREATEST(last_read_end, clock_timestamp()) WHERE account = %s"
                    " RETURNING holder = %s AND token = %s AND expires_at > clock_timestamp()",
                    (account, self.instance, token),
                ).fetchone()
        except psycopg.Error as err:
            # The start stays recorded alone: the next read counts from it plus the timeout.
            log.warning("read_end_not_recorded", account=account, error=str(err))
            return self.holds(account)
        return bool(row and row[0])


_READ_FROM: Final = (
    "COALESCE(CASE"
    " WHEN last_read_start IS NULL THEN last_read_end"
    " WHEN last_read_end IS NOT NULL AND last_read_end >= last_read_start THEN last_read_end"
    " ELSE last_read_start + %(timeout)s::interval END, '2000-01-01'::timestamptz)"
)
"""Where the interval counts from: the last read's end, or its start plus the timeout
when it never ended (the instance died during it)."""


class InstanceTaken(Exception):
    """Another live instance has this instance's name."""


class AccountFence:
    """The fence of one account's reads on a PostgreSQL store (``ReadFence``)."""

    def __init__(self, leases: PgLeases, account: str, *, interval: float, timeout: float):
        self.leases = leases
        self.account = account
        self.interval = interval
        self.timeout = timeout
        self._token: int | None = None
        self._sent_at = 0.0

    def enter(self) -> None:
        token = self.leases.token(self.account)
        if token is None or not self.leases.holds(self.account):
            raise ReadFenced(
                f"this instance does not hold the lease of {self.account}",
                retry_in=self.leases.lease / 3,
                lost=True,
            )
        self._sent_at = time.monotonic()
        self.leases._enter(self.account, token, self.interval, self.timeout)
        self._token = token

    def confirm(self) -> None:
        late = time.monotonic() - self._sent_at
        if late > CONFIRM_WITHIN:
            self.leave()
            raise ReadFenced(
                f"the read of {self.account} could not leave within {CONFIRM_WITHIN} s of"
                f" its lease check ({late:.1f} s): not sent",
                retry_in=0.0,
            )

    def leave(self) -> None:
        token, self._token = self._token, None
        if token is None:
            return
        if not self.leases._leave(self.account, token):
            self.leases.late_reads += 1
            log.warning(
                "read_late",
                account=self.account,
                token=token,
                action="the lease ran out during the read (the process was paused or cut"
                " off): its message, if any, is journaled all the same",
            )


# -- cluster status ---------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseView:
    account: str
    holder: str
    token: int
    held_for: float | None
    """Seconds since it was acquired."""
    expires_in: float
    """Seconds until it runs out (negative: ran out that long ago)."""
    last_read_age: float | None


@dataclass(frozen=True)
class InstanceView:
    id: str
    host: str
    pid: int
    heartbeat_age: float
    live: bool
    uptime: float
    accounts: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class ClusterStatus:
    lease: float
    instances: tuple[InstanceView, ...]
    leases: tuple[LeaseView, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def cluster_status(url: str, connect_kwargs: dict[str, Any], lease: float) -> ClusterStatus:
    """The registry and the leases, as the database sees them now."""
    import psycopg

    with psycopg.connect(url, autocommit=True, **connect_kwargs) as conn:
        found = conn.execute("SELECT to_regclass('ha_leases') IS NOT NULL").fetchone()
        if not found or not found[0]:
            return ClusterStatus(lease=lease, instances=(), leases=())
        leases = tuple(
            LeaseView(
                account=row[0],
                holder=row[1],
                token=int(row[2]),
                held_for=None if row[3] is None else float(row[3]),
                expires_in=float(row[4]) if row[4] is not None else -math.inf,
                last_read_age=None if row[5] is None else float(row[5]),
            )
            for row in conn.execute(
                "SELECT account, holder, token,"
                " EXTRACT(EPOCH FROM clock_timestamp() - acquired_at),"
                " CASE WHEN expires_at = '-infinity' THEN NULL"
                "  ELSE EXTRACT(EPOCH FROM expires_at - clock_timestamp()) END,"
                " EXTRACT(EPOCH FROM clock_timestamp() - GREATEST(last_read_start, last_read_end))"
                " FROM ha_leases ORDER BY account"
            ).fetchall()
        )
        rows = conn.execute(
            "SELECT id, host, pid, EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at),"
            " EXTRACT(EPOCH FROM clock_timestamp() - started_at)"
            " FROM ha_instances ORDER BY id"
        ).fetchall()
    instances = tuple(
        InstanceView(
            id=row[0],
            host=row[1],
            pid=int(row[2]),
            heartbeat_age=float(row[3]),
            live=float(row[3]) < lease,
            uptime=float(row[4]),
            accounts=tuple(
                lv.account for lv in leases if lv.holder == row[0] and lv.expires_in > 0
            ),
        )
        for row in rows
    )
    return ClusterStatus(lease=lease, instances=instances, leases=leases)


def format_cluster(status: ClusterStatus) -> list[str]:
    lines = [f"lease: {status.lease:g} s; instances: {len(status.instances)}"]
    for inst in status.instances:
        state = "live" if inst.live else "silent"
        lines.append(
            f"{inst.id}  host {inst.host} pid {inst.pid}  {state}, heartbeat "
            f"{inst.heartbeat_age:.1f} s ago  accounts {len(inst.accounts)}: "
            f"{', '.join(inst.accounts) or '-'}"
        )
    if status.leases:
        lines.append("")
        lines.append(f"{'account':<20} {'holder':<28} {'token':>6} {'held':>8} {'expires':>8}")
        for lv in status.leases:
            expired = lv.expires_in <= 0
            holder = "-" if not lv.holder or expired else lv.holder
            held = "-" if lv.held_for is None or holder == "-" else f"{lv.held_for:.0f}s"
            expires = "free" if expired else f"{lv.expires_in:.1f}s"
            lines.append(f"{lv.account:<20} {holder:<28} {lv.token:>6} {held:>8} {expires:>8}")
    return lines


def leases_for(
    store: StoreBackend, settings: HaSettings, *, on_change: Callable[[], None] | None = None
) -> Leases:
    """The leases of a daemon on ``store``: shared through PostgreSQL, or all local."""
    if getattr(store, "dialect", "sqlite") != "postgresql":
        return LocalLeases(settings.instance)
    url = store.url  # type: ignore[attr-defined]
    kwargs = store.connect_kwargs()  # type: ignore[attr-defined]
    return PgLeases(url, kwargs, settings, store=store, on_change=on_change)


def lease_line(store: StoreBackend, account: str) -> str:
    """The account's lease as ``responder status`` shows it; "" on a SQLite store."""
    if getattr(store, "dialect", "sqlite") != "postgresql":
        return ""
    rows = store.query(
        "SELECT holder, token, EXTRACT(EPOCH FROM expires_at - clock_timestamp()),"
        " EXTRACT(EPOCH FROM clock_timestamp() - acquired_at)"
        " FROM ha_leases WHERE account = ?",
        (account,),
        missing_ok=True,
    )
    if not rows or not rows[0][0] or rows[0][2] is None or float(rows[0][2]) <= 0:
        return "held by no instance (free: the next heartbeat of one takes it)"
    holder, token, expires, held = rows[0]
    return (
        f"held by {holder} (token {token}, for {float(held or 0):.0f} s,"
        f" renewed: runs out in {float(expires):.1f} s)"
    )


def cluster_command(args: Any) -> int:
    """``responder cluster status``: each instance, its accounts and their leases."""
    import json
    import sys

    from responder.accounts import load_accounts
    from responder.config import redact_url

    config = load_accounts(args.config, need_password=False)
    if config.problems or config.main is None:
        for problem in config.problems:
            print(problem, file=sys.stderr)
        return 2
    store = config.main.store
    lease = config.main.ha.lease
    if not store.url:
        print(
            f"store: {store.path} (SQLite): one daemon on one host reads every account;"
            " instances share accounts only on a PostgreSQL store ([store] url)"
        )
        return 0
    kwargs: dict[str, Any] = {"connect_timeout": 5}
    if store.password:
        kwargs["password"] = store.password
    try:
        status = cluster_status(store.url, kwargs, lease)
    except Exception as err:
        reason = " ".join(str(err).split()).replace(store.url, redact_url(store.url))
        if store.password:
            reason = reason.replace(store.password, "***")
        print(f"{args.config}: store.url: cannot read the cluster: {reason}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status.as_dict(), indent=2, default=str))
    else:
        print(f"store: {redact_url(store.url)}")
        for line in format_cluster(status):
            print(line)
    return 0
