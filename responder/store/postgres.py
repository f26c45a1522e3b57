"""The PostgreSQL store: the journal, the durable queues and plugins' tables in a database.

Same contract as the SQLite store (``StoreBackend``), through psycopg 3 and a small
connection pool. Every method is one transaction at READ COMMITTED; where a read decides
a write, a lock makes that safe across processes: claims take their rows with
``FOR UPDATE SKIP LOCKED`` (two processes never claim one item), a reply settling its
message locks the message row, a conversation change takes a transaction lock on its
(account, number), a migration one on its owner. A transaction that hits a deadlock or a
serialization failure, or loses its connection before its commit was sent, is run again
(for up to ``RETRY_FOR`` seconds); every failure left comes out as ``StoreError`` or
``StatementError``. See docs/store.md.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

import psycopg
import psycopg.errors
import psycopg_pool

from responder.config import redact_url
from responder.conversations import Conversation, ConversationChange, change_result
from responder.models import InboundSms, Message
from responder.store.interface import (
    DEFAULT_ACCOUNT,
    ExchangeLine,
    JournalUnwritable,
    NewOutbound,
    NotClaimed,
    OutboundRecipient,
    OutboundRow,
    OutgoingSms,
    StatementError,
    StoreError,
    StoreStatus,
    TrafficHour,
    read_meta_key,
)
from responder.store.pg_schema import CORE_TABLES, HAND_SENT_SCHEMA, PG_SCHEMA
from responder.store.pg_sql import step_for, translate
from responder.store.queues import (
    QUEUE_CLAIMED,
    QUEUE_DEAD,
    QUEUE_DONE,
    QUEUE_PENDING,
    QUEUE_UNCERTAIN,
    QueueItem,
)
from responder.store.rows import (
    _CONVERSATION,
    _NO_ID_BOUND,
    _OUTBOUND,
    _OUTBOX_STATE,
    _QUEUE_BY_KEY,
    _QUEUE_COLUMNS,
    _REPLY_LOOKBACK,
    StoreQueries,
    _conversation,
    _insert_outbound_items,
    _insert_outbound_recipients,
    _insert_outbox,
    _outbound,
    _outbox_answer,
    _queue_item,
    _queue_json,
)
from responder.store.schema import (
    DEAD,
    FAILED,
    IGNORED,
    OUTBOUND_CANCELLED,
    OUTBOUND_QUEUED,
    OUTBOUND_SCHEDULED,
    OUTBOX,
    PROCESSED,
    RECEIVED,
    REPLIED,
    SCHEMA,
    SENT,
    UNCERTAIN,
)
from responder.store.sqlite import PRUNE_BATCH

T = TypeVar("T")

RETRY_FOR: Final = 15.0
"""Seconds a transaction is tried again after a deadlock, a serialization failure or a
lost connection (a server restart takes a few)."""
POOL_MAX: Final = 8
"""Connections at most: the daemon's threads take one each for one transaction at a time."""
CONNECT_TIMEOUT: Final = 5
IDLE_CHECK: Final = 2.0
"""Seconds a pooled connection may sit idle before it is tried before use."""
LOCK_CLASS: Final = 0x72657370
"""The first key of the store's advisory locks ("resp")."""
_MIGRATION_LOCK: Final = 0
_HAND_SENT_OWNER: Final = "responder.send"

_RETRY_STATES: Final = frozenset({"40001", "40P01"})
"""serialization_failure, deadlock_detected: nothing was committed, run it again."""
_STORAGE_CLASSES: Final = ("08", "53", "57", "58", "XX", "F0", "55", "40", "25006", "42501")
"""SQLSTATEs of the store's own failures (connection, resources such as a full disk, the
server shutting down, I/O, corruption, locks, read-only, privileges); the rest (syntax, a
missing table, a broken constraint, a bad value) are statements it refused."""


class Row:
    """A row read by ``query``: by column name or position, iterable like a tuple."""

    __slots__ = ("_index", "_names", "_values")

    def __init__(self, values: Sequence[Any], names: list[str], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._names = names
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values
        if isinstance(other, tuple):
            return self._values == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = [column.name for column in cursor.description or ()]
    index: dict[str, int] = {}
    for position, name in enumerate(names):
        index.setdefault(name, position)
    return lambda values: Row(values, names, index)


class PgCursor:
    """What ``PgTransaction.execute`` returns (``interface.Cursor``)."""

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        """Always None on PostgreSQL: use ``INSERT ... RETURNING id`` (SQLite has it too)."""
        return None

    def fetchone(self) -> Any:
        return self._cursor.fetchone() if self._cursor.description else None

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall() if self._cursor.description else []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())


def _params(params: Sequence[Any] | Mapping[str, Any] | None) -> Any:
    if params is None:
        return ()
    return params if isinstance(params, Mapping) else tuple(params)


class PgTransaction:
    """SQL in one transaction, with SQLite's placeholders (``pg_sql.translate``)."""

    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self.conn = conn

    def execute(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = (), /) -> PgCursor:
        params = _params(parameters)
        cursor = self.conn.cursor()
        cursor.execute(translate(sql, isinstance(params, Mapping)), params)
        return PgCursor(cursor)

    def executemany(self, sql: str, parameters: Any, /) -> PgCursor:
        rows = [_params(p) for p in parameters]
        cursor = self.conn.cursor()
        if rows:
            named = isinstance(rows[0], Mapping)
            cursor.executemany(translate(sql, named), rows)
        return PgCursor(cursor)

    def one(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self.execute(sql, parameters).fetchone()

    def all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        return self.execute(sql, parameters).fetchall()


def _sqlstate(err: BaseException) -> str:
    return getattr(err, "sqlstate", None) or ""


def _connection_lost(err: BaseException) -> bool:
    state = _sqlstate(err)
    if isinstance(err, psycopg_pool.PoolTimeout):
        return True
    if state.startswith(("08", "57P")):
        return True
    return isinstance(err, psycopg.OperationalError) and not state


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


SESSION_OPTIONS: Final = (
    "-c idle_in_transaction_session_timeout=60000"
    " -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
)
"""Server settings of every session: a transaction left idle for a minute is ended (none
of the store's waits inside one), and a client gone silent is noticed in about 25 s."""


class PostgresStore(StoreQueries):
    """The PostgreSQL store. Safe to use from several threads and several processes."""

    _LIKE = "ILIKE"  # as SQLite's LIKE: any case
    _CONTAINS = "strpos"
    _HAS_RECIPIENT = "(o.payload::jsonb -> 'recipients') @> jsonb_build_array(?::text)"
    _PAYLOAD_TEXT = "(o.payload::jsonb ->> 'text')"

    dialect: Final = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        password: str = "",
        clock: Callable[[], float] = time.time,
        pool_max: int = POOL_MAX,
    ) -> None:
        """Connect (the pool opens one connection at once) and bring the core schema up to
        date; StoreError when the server cannot be reached or the schema is newer."""
        self.url = url
        self.shown = redact_url(url)
        self.path = Path(self.shown.replace("://", "_", 1))
        """Only for display: the store has no file."""
        self.clock = clock
        self._kwargs: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "responder",
            # a server host that vanished (no reset) is noticed in about 25 s, not hours
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            # and the server ends a session whose client vanished mid-transaction, so that
            # its row locks do not hold up the other instances for hours
            "options": SESSION_OPTIONS,
        }
        if password:
            self._kwargs["password"] = password
        self._exclusive: psycopg.Connection[Any] | None = None
        self._exclusive_lock = threading.Lock()
        self._lock_key: int | None = None
        self._history_indexed = False
        self._last_used: dict[int, float] = {}
        try:
            self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] = (
                psycopg_pool.ConnectionPool(
                    url,
                    kwargs={**self._kwargs, "row_factory": _row_factory},
                    min_size=1,
                    max_size=max(pool_max, 1),
                    open=False,
                    check=self._check,
                    timeout=CONNECT_TIMEOUT * 2,
                    reconnect_timeout=RETRY_FOR,
                    name="responder-store",
                )
            )
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT * 2)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
            with suppress(Exception):
                self._pool.close()
            raise StoreError(f"cannot open the store {self.shown}: {self._reason(err)}") from None
        except Exception:
            raise
        try:
            self._migrate_core()
        except BaseException:
            self._pool.close()
            raise

    # -- connections and transactions ------------------------------------------------

    def connect_kwargs(self) -> dict[str, Any]:
        """What a connection of its own to this store needs besides the URL (``copy``)."""
        return dict(self._kwargs)

    def _reason(self, err: BaseException) -> str:
        """The driver's message without anything that may hold the password."""
        text = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, psycopg_pool.PoolTimeout):
            text = f"no connection to the server within {CONNECT_TIMEOUT * 2} s"
        secret = self._kwargs.get("password")
        if secret:
            text = text.replace(secret, "***")
        return text.replace(self.url, self.shown)

    def _wrap(self, err: BaseException) -> StoreError:
        state = _sqlstate(err)
        reason = self._reason(err)
        if _connection_lost(err) or state.startswith(_STORAGE_CLASSES):
            return StoreError(f"the store {self.shown} failed: {reason}", code=state)
        if isinstance(err, psycopg.Error) and not state:
            return StoreError(f"the store {self.shown} failed: {reason}")
        return StatementError(reason, code=state)

    def _check(self, conn: psycopg.Connection[Any]) -> None:
        """The pool's check of a connection it lends: one that sat idle is tried first (the
        server may have closed it meanwhile); one in steady use is not, saving a round
        trip per transaction (a failure then is a lost connection, run again)."""
        if time.monotonic() - self._last_used.get(id(conn), 0.0) > IDLE_CHECK:
            psycopg_pool.ConnectionPool.check_connection(conn)

    def _put(self, conn: psycopg.Connection[Any]) -> None:
        self._last_used[id(conn)] = time.monotonic()
        self._pool.putconn(conn)

    def _run(
        self,
        work: Callable[[PgTransaction], T],
        *,
        idempotent: bool = False,
        unsynced: bool = False,
        read_only: bool = False,
    ) -> T:
        """Run ``work`` in one transaction and commit it; again after a deadlock, a
        serialization failure, or a connection lost before the commit was sent (after it,
        too, when ``idempotent``: the outcome of a commit cut off is unknown).
        ``read_only``: one statement that changes nothing, run outside a transaction
        (no BEGIN and COMMIT round trips)."""
        deadline = time.monotonic() + RETRY_FOR
        pause = 0.05
        idempotent = idempotent or read_only
        while True:
            committing = False
            try:
                conn = self._pool.getconn()
                try:
                    tx = PgTransaction(conn)
                    if read_only:
                        conn.autocommit = True
                    if unsynced:
                        conn.execute("SET LOCAL synchronous_commit = off")
                    result = work(tx)
                    committing = True
                    conn.commit()
                    return result
                except BaseException:
                    if not conn.closed:
                        with suppress(psycopg.Error):
                            conn.rollback()
                    raise
                finally:
                    if read_only and not conn.closed:
                        with suppress(psycopg.Error):
                            conn.autocommit = False
                    self._put(conn)
            except (psycopg.Error, psycopg_pool.PoolTimeout) as err:
                again = _sqlstate(err) in _RETRY_STATES or (
                    _connection_lost(err) and (idempotent or not committing)
                )
                if not again or time.monotonic() + pause > deadline:
                    raise self._wrap(err) from err
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    @contextmanager
    def transaction(self) -> Iterator[PgTransaction]:
        """A write transaction on a plugin's own tables, committed on success and rolled
        back on an exception (the driver's exceptions come out as StoreError or
        StatementError). A statement that fails ends the transaction: don't go on in it."""
        try:
            conn = self._pool.getconn()
        except psycopg_pool.PoolTimeout as err:
            raise self._wrap(err) from err
        try:
            try:
                yield PgTransaction(conn)
                conn.commit()
            except psycopg.Error as err:
                raise self._wrap(err) from err
            except BaseException:
                if not conn.closed:
                    with suppress(psycopg.Error):
                        conn.rollback()
                raise
        finally:
            if (
                not conn.closed
                and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            ):
                with suppress(psycopg.Error):
                    conn.rollback()
            self._put(conn)

    def query(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] = (),
        *,
        missing_ok: bool = False,
    ) -> list[Any]:
        """Rows (``Row``) of a read; ``missing_ok``: a table not created yet reads as empty."""
        try:
            return self._run(
                lambda tx: tx.all(sql, params),  # type: ignore[arg-type]
                read_only=True,
            )
        except StatementError as err:
            if missing_ok and err.code == "42P01":  # undefined_table
                return []
            raise

    def close(self) -> None:
        with self._exclusive_lock:
            if self._exclusive is not None:
                with suppress(psycopg.Error):
                    self._exclusive.close()
                self._exclusive = None
        self._pool.close()

    def _migrate_core(self) -> None:
        newest = len(SCHEMA)

        def migrate(tx: PgTransaction) -> None:
            tx.execute("SELECT pg_advisory_xact_lock(?, ?)", (LOCK_CLASS, _MIGRATION_LOCK))
            tx.execute("CREATE TABLE IF NOT EXISTS store_schema (version INTEGER NOT NULL)")
            found = tx.one("SELECT MAX(version) FROM store_schema")
            version = found[0] or 0
            if version > newest:
                raise StoreError(
                    f"the store {self.shown} has schema version {version}, newer than this "
                    f"release understands ({newest}): upgrade sms-responder"
                )
            for number, script in PG_SCHEMA:
                if number > version:
                    tx.conn.execute(script)  # no parameters: several statements at once
                    version = number
            tx.execute("DELETE FROM store_schema")
            tx.execute("INSERT INTO store_schema (version) VALUES (?)", (version,))

        try:
            self._run(migrate)
        except StatementError as err:
            raise StoreError(f"cannot set up the store {self.shown}: {err}") from None

    def verify(self) -> None:
        """Read one row of every core table; StoreError when one is missing or unreadable."""

        def read(tx: PgTransaction) -> None:
            for table in CORE_TABLES:
                tx.execute(f"SELECT * FROM {table} LIMIT 1")

        try:
            self._run(read)
        except StatementError as err:
            raise StoreError(f"the store {self.shown} is damaged or incomplete: {err}") from None

    def migrate(self, owner: str, steps: Sequence[str | Mapping[str, str]]) -> None:
        """Bring a plugin's tables up to date: apply the steps not applied yet, in one
        transaction. A step is SQL for both backends, or ``{"sqlite": ..., "postgresql":
        ...}`` where they differ."""
        for number, step in enumerate(steps, start=1):
            if not isinstance(step, str) and self.dialect not in step:
                raise StatementError(
                    f"{owner}: schema step {number} has no {self.dialect!r} variant"
                )

        def apply(tx: PgTransaction) -> None:
            tx.execute("SELECT pg_advisory_xact_lock(?, hashtext(?))", (LOCK_CLASS, owner))
            found = tx.one("SELECT version FROM plugin_schema WHERE owner = ?", (owner,))
            version = found[0] if found else 0
            for number, step in enumerate(steps[version:], start=version + 1):
                script = step_for(step, self.dialect)
                if script.strip():
                    tx.conn.execute(script)
                tx.execute(
                    "INSERT INTO plugin_schema (owner, version) VALUES (?, ?)"
                    " ON CONFLICT (owner) DO UPDATE SET version = excluded.version",
                    (owner, number),
                )

        self._run(apply)

    def claim_exclusive(self) -> None:
        """Make sure no other daemon uses this store (database and schema): a session
        advisory lock held by a connection of its own until ``close``. StoreError naming
        the holder (its pid and host) when another daemon holds it.

        The lock goes with its connection: after a server restart ``journal_problem``
        takes it again, and holds reading when another daemon took it meanwhile."""
        with self._exclusive_lock:
            self._take_exclusive()

    def _take_exclusive(self) -> None:
        host = socket.gethostname()
        try:
            conn = psycopg.connect(
                self.url,
                autocommit=True,
                **{**self._kwargs, "application_name": f"responder pid {os.getpid()} on {host}"},
            )
        except psycopg.Error as err:
            raise self._wrap(err) from None
        try:
            key = conn.execute(
                "SELECT hashtext(current_database() || '/' || current_schema()) & 2147483647"
            ).fetchone()
            assert key is not None
            self._lock_key = int(key[0])
            got = conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, self._lock_key)
            ).fetchone()
            if got is None or not got[0]:
                holder = conn.execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a"
                    " USING (pid) WHERE l.locktype = 'advisory' AND l.granted"
                    " AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 2",
                    (LOCK_CLASS, self._lock_key),
                ).fetchone()
                conn.close()
                name = holder[0] if holder else "another process"
                raise StoreError(
                    f"another responder ({name}) is running with the store {self.shown}"
                )
        except psycopg.Error as err:
            conn.close()
            raise self._wrap(err) from None
        self._exclusive = conn

    def _exclusive_problem(self) -> str:
        """Take the exclusive lock again when its connection was lost; why not, or ""."""
        with self._exclusive_lock:
            conn = self._exclusive
            if conn is None:
                return ""
            try:
                conn.execute("SELECT 1")
                return ""
            except psycopg.Error:
                with suppress(psycopg.Error):
                    conn.close()
            try:
                self._take_exclusive()
            except StoreError as err:
                return f"the store's single-daemon lock was lost and cannot be taken again: {err}"
            return ""

    # -- meta ------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        self._set_meta(key, value, unsynced=False)

    def _set_meta(self, key: str, value: str, *, unsynced: bool) -> None:
        self._run(
            lambda tx: tx.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            ),
            idempotent=True,
            unsynced=unsynced,
        )

    def _meta_float(self, key: str) -> float | None:
        value = self.get_meta(key)
        return float(value) if value else None

    def last_read_at(self, *, account: str = DEFAULT_ACCOUNT) -> float | None:
        return self._meta_float(read_meta_key("last_read_at", account))

    def set_last_read_at(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None:
        """When the latest read began; JournalUnwritable when it cannot be written."""
        try:
            self._set_meta(read_meta_key("last_read_at", account), repr(moment), unsynced=True)
        except StoreError as err:
            raise JournalUnwritable(f"the store cannot be written: {err}") from None

    def journal_problem(self) -> str:
        """Why the journal could not take a message now: the server's disk is its own
        business (a write that fails is JournalUnwritable), so only a lost exclusive lock."""
        return self._exclusive_problem()

    def probe_write(self) -> str:
        try:
            self._set_meta("last_read_at", self.get_meta("last_read_at") or "", unsynced=True)
        except StoreError as err:
            return f"the store cannot be written: {err}"
        return ""

    def last_read_end(self, *, account: str = DEFAULT_ACCOUNT) -> float | None:
        return self._meta_float(read_meta_key("last_read_end", account))

    def set_last_read_end(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None:
        self._set_meta(read_meta_key("last_read_end", account), repr(moment), unsynced=True)

    def last_read_ok_at(self, *, account: str = DEFAULT_ACCOUNT) -> float | None:
        return self._meta_float(read_meta_key("last_read_ok_at", account))

    def set_last_read_ok_at(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None:
        self._set_meta(read_meta_key("last_read_ok_at", account), repr(moment), unsynced=True)

    # -- messages --------------------------------------------------------------------

    def journal(self, sms: InboundSms, *, account: str = DEFAULT_ACCOUNT) -> Message | None:
        """Commit an inbound SMS; None when the account journaled it before (counted).

        Run again when the connection is lost, even mid-commit: a commit that went through
        makes the second run find the message (it is then counted as a duplicate, and
        processed as journaled)."""

        def write(tx: PgTransaction) -> int | None:
            row = tx.one(
                "INSERT INTO messages (account, gateway_id, src, dst, text, received_at, raw,"
                " journaled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
                " RETURNING id",
                (
                    account,
                    sms.gateway_id,
                    sms.src,
                    sms.dst,
                    sms.text,
                    sms.received_at.isoformat() if sms.received_at else None,
                    sms.raw,
                    self.clock(),
                ),
            )
            if row is None:
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('duplicates_dropped', '1')"
                    " ON CONFLICT (key) DO UPDATE"
                    " SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)"
                )
                return None
            return int(row[0])

        message_id = self._run(write, idempotent=True)
        if message_id is None:
            return None
        return Message(
            id=message_id,
            gateway_id=sms.gateway_id,
            src=sms.src,
            dst=sms.dst,
            text=sms.text,
            received_at=sms.received_at,
            raw=sms.raw,
            account=account,
        )

    def _count_attempt(self, message_id: int, step: int) -> int:
        row = self._run(
            lambda tx: tx.one(
                "UPDATE messages SET attempts = GREATEST(attempts + ?, 0) WHERE id = ?"
                " RETURNING attempts",
                (step, message_id),
            ),
            unsynced=True,
        )
        return int(row[0]) if row else 0

    def finish_message(
        self,
        message_id: int,
        *,
        outgoing: Sequence[OutgoingSms],
        reason: str = "",
        plugin: str = "",
        state: str | None = None,
        decided_by: str = "",
        conversations: Sequence[ConversationChange] = (),
    ) -> None:
        now = self.clock()
        final = state or (PROCESSED if outgoing else IGNORED)

        def write(tx: PgTransaction) -> None:
            updated = tx.execute(
                "UPDATE messages SET state = ?, reason = ?, decided_by = ?, plugin = ?,"
                " processed_at = ? WHERE id = ? AND state = ?",
                (final, reason, decided_by, plugin, now, message_id, RECEIVED),
            )
            if updated.rowcount == 1:
                _insert_outbox(tx, message_id, outgoing, now)
                for change in conversations:
                    _change_conversation(tx, change, now)

        self._run(write)

    def add_replies(self, message_id: int, outgoing: Sequence[OutgoingSms]) -> None:
        now = self.clock()
        self._run(lambda tx: _add_replies(tx, message_id, outgoing, now))

    def note_reason(self, message_id: int, reason: str, *, decided_by: str = "") -> None:
        self._run(
            lambda tx: tx.execute(
                "UPDATE messages SET reason = ?, decided_by = ? WHERE id = ?",
                (reason, decided_by, message_id),
            )
        )

    # -- outbox ----------------------------------------------------------------------

    def claim_send(self, row_id: int) -> int:
        def claim(tx: PgTransaction) -> int:
            if _queue_claim(tx, [row_id]) != 1:
                raise NotClaimed(
                    f"outbox row {row_id} was not claimed: it is not pending (another sender"
                    " claimed it, or it was settled or cancelled); only a pending row"
                    " can be sent"
                )
            return int(tx.one("SELECT attempts FROM queue_items WHERE id = ?", (row_id,))[0])

        return self._run(claim)

    def release_claim(self, row_id: int, *, error: str, errid: int | None = None) -> None:
        def release(tx: PgTransaction) -> None:
            if _queue_back(tx, row_id, error=error, uncount=True):
                tx.execute("UPDATE queue_items SET errid = ? WHERE id = ?", (errid, row_id))

        self._run(release)

    def record_retry(
        self,
        row_id: int,
        *,
        error: str,
        retry_at: float,
        raw: str = "",
        errid: int | None = None,
        uncertain: bool = False,
    ) -> None:
        def retry(tx: PgTransaction) -> None:
            if _queue_back(tx, row_id, error=error, at=retry_at):
                _outbox_answer(tx, row_id, raw=raw, errid=errid, uncertain=uncertain)

        self._run(retry)

    def _resolve(
        self,
        row_id: int,
        state: str,
        *,
        raw: str,
        errid: int | None,
        error: str,
        uncertain: bool = False,
    ) -> None:
        """A row's final state, and its message's once every row of it is final. The
        message row is locked first, so two rows of one message settled at once by two
        senders count each other's final state."""
        now = self.clock()

        def resolve(tx: PgTransaction) -> None:
            tx.execute(
                "SELECT 1 FROM messages WHERE id ="
                " (SELECT message_id FROM queue_items WHERE id = ?) FOR UPDATE",
                (row_id,),
            )
            if not _queue_finish(tx, row_id, state, error, now, unclaimed=True):
                return
            _outbox_answer(tx, row_id, raw=raw, errid=errid, uncertain=uncertain)
            message_id = tx.one("SELECT message_id FROM queue_items WHERE id = ?", (row_id,))[0]
            open_rows, dead_rows, uncertain_rows = tx.one(
                "SELECT COUNT(*) FILTER (WHERE state IN (?, ?)),"
                " COUNT(*) FILTER (WHERE state = ?), COUNT(*) FILTER (WHERE state = ?)"
                " FROM queue_items WHERE queue = ? AND message_id = ?",
                (QUEUE_PENDING, QUEUE_CLAIMED, QUEUE_DEAD, QUEUE_UNCERTAIN, OUTBOX, message_id),
            )
            if not open_rows:
                settled = FAILED if dead_rows else UNCERTAIN if uncertain_rows else REPLIED
                tx.execute("UPDATE messages SET state = ? WHERE id = ?", (settled, message_id))

        self._run(resolve)

    # -- sent by hand ----------------------------------------------------------------

    def hand_sent_start(
        self, numbers: Sequence[str], text: str, *, part: int = 1, parts: int = 1, raw: bool
    ) -> int:
        self.migrate(_HAND_SENT_OWNER, HAND_SENT_SCHEMA)
        row = self._run(
            lambda tx: tx.one(
                "INSERT INTO sent_by_hand (at, recipients, text, part, parts, raw, state)"
                " VALUES (?, ?, ?, ?, ?, ?, 'sending') RETURNING id",
                (self.clock(), ",".join(numbers), text, part, parts, int(raw)),
            )
        )
        return int(row[0])

    def hand_sent_finish(
        self, row_id: int, state: str, *, reason: str, errid: int | None = None, result: str = ""
    ) -> None:
        self._run(
            lambda tx: tx.execute(
                "UPDATE sent_by_hand SET state = ?, reason = ?, errid = ?, result = ? WHERE id = ?",
                (state, reason, errid, result, row_id),
            )
        )

    def hand_sent_suppressed(self, text: str, numbers: Sequence[tuple[str, str]]) -> None:
        self.migrate(_HAND_SENT_OWNER, HAND_SENT_SCHEMA)
        now = self.clock()
        self._run(
            lambda tx: tx.executemany(
                "INSERT INTO sent_by_hand (at, recipients, text, state, reason)"
                " VALUES (?, ?, ?, 'suppressed', ?)",
                [(now, number, text, reason) for number, reason in numbers],
            )
        )

    # -- retention and status --------------------------------------------------------

    def prune(
        self,
        keep_days: int,
        *,
        batch: int = PRUNE_BATCH,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[int, int]:
        if keep_days <= 0:
            return 0, 0
        cutoff = self.clock() - keep_days * 86400.0
        finished = (
            "state IN (?, ?) AND journaled_at < ? AND COALESCE(processed_at, 0) < ? AND NOT EXISTS"
            " (SELECT 1 FROM queue_items o WHERE o.message_id = messages.id AND (o.state != ?"
            " OR COALESCE(o.finished_at, o.created_at) >= ?))"
        )
        params = (REPLIED, IGNORED, cutoff, cutoff, QUEUE_DONE, cutoff)
        messages, rows = 0, self._prune_outbound(cutoff, batch)
        while True:
            found = self.query(
                f"SELECT id FROM messages WHERE {finished} ORDER BY id LIMIT ?", (*params, batch)
            )
            if not found:
                return messages, rows
            ids = [row[0] for row in found]

            def delete(tx: PgTransaction, ids: list[int] = ids) -> tuple[int, int]:
                locked = [  # checked again: a late reply may have come
                    row[0]
                    for row in tx.all(
                        f"SELECT id FROM messages WHERE id = ANY(?) AND {finished} FOR UPDATE",
                        (ids, *params),
                    )
                ]
                gone_rows = tx.execute(
                    "DELETE FROM queue_items WHERE message_id = ANY(?)", (locked,)
                ).rowcount
                gone = tx.execute("DELETE FROM messages WHERE id = ANY(?)", (locked,)).rowcount
                return gone, gone_rows

            gone, gone_rows = self._run(delete)
            messages += gone
            rows += gone_rows
            if len(found) < batch or stop():
                return messages, rows
            time.sleep(0.01)

    def _prune_outbound(self, cutoff: float, batch: int) -> int:
        """Delete outbound sends made before ``cutoff`` whose every SMS was sent before it,
        with their recipients and SMS; returns how many SMS."""
        old = (
            "state != ? AND created_at < ? AND NOT EXISTS (SELECT 1 FROM queue_items o"
            " WHERE o.outbound_id = outbound.id AND (o.state != ?"
            " OR COALESCE(o.finished_at, o.created_at) >= ?))"
        )
        params = (OUTBOUND_SCHEDULED, cutoff, QUEUE_DONE, cutoff)
        rows = 0
        while True:

            def delete(tx: PgTransaction) -> tuple[int, int]:
                ids = [
                    row[0]
                    for row in tx.all(
                        f"SELECT id FROM outbound WHERE {old} ORDER BY id LIMIT ?"
                        " FOR UPDATE SKIP LOCKED",
                        (*params, batch),
                    )
                ]
                gone = tx.execute(
                    "DELETE FROM queue_items WHERE outbound_id = ANY(?)", (ids,)
                ).rowcount
                tx.execute("DELETE FROM outbound_recipients WHERE outbound_id = ANY(?)", (ids,))
                tx.execute("DELETE FROM outbound WHERE id = ANY(?)", (ids,))
                return len(ids), gone

            found, gone = self._run(delete)
            rows += gone
            if found < batch:
                return rows

    def status(self) -> StoreStatus:
        def read(tx: PgTransaction) -> StoreStatus:
            def grouped(sql: str, params: Sequence[Any] = ()) -> dict[str, int]:
                return {row[0]: int(row[1]) for row in tx.all(sql, params)}

            not_answered = f"reason != '' AND state NOT IN ('{PROCESSED}', '{REPLIED}')"
            sends = tx.all(
                "SELECT CASE state WHEN ? THEN ? WHEN ? THEN ? WHEN ? THEN ? ELSE 'retrying' END"
                " AS send_result, COALESCE(CAST(errid AS TEXT), '') AS last_errid,"
                " COUNT(*) AS n FROM queue_items WHERE queue = ? AND attempts > 0"
                " GROUP BY send_result, last_errid",
                (QUEUE_DONE, SENT, QUEUE_DEAD, DEAD, QUEUE_UNCERTAIN, UNCERTAIN, OUTBOX),
            )
            outbox: dict[str, int] = {}
            for state, count in tx.all(
                "SELECT state, COUNT(*) FROM queue_items WHERE queue = ? GROUP BY state",
                (OUTBOX,),
            ):
                outbox[_OUTBOX_STATE.get(state, state)] = int(count)
            meta = {
                row[0]: row[1]
                for row in tx.all(
                    "SELECT key, value FROM meta WHERE key IN (?, ?, ?, ?)",
                    ("last_read_at", "last_read_ok_at", "duplicates_dropped", "reads_held"),
                )
            }
            return StoreStatus(
                messages=grouped("SELECT state, COUNT(*) FROM messages GROUP BY state"),
                outbox=outbox,
                reasons=grouped(
                    f"SELECT reason, COUNT(*) FROM messages WHERE {not_answered} GROUP BY reason"
                ),
                uncertain_sends=int(
                    tx.one(
                        "SELECT COALESCE(SUM(uncertain), 0) FROM queue_items WHERE queue = ?",
                        (OUTBOX,),
                    )[0]
                ),
                last_read_at=float(meta["last_read_at"]) if meta.get("last_read_at") else None,
                last_message_at=tx.one("SELECT MAX(journaled_at) FROM messages")[0],
                last_sent_at=tx.one(
                    "SELECT MAX(finished_at) FROM queue_items WHERE queue = ? AND state = ?",
                    (OUTBOX, QUEUE_DONE),
                )[0],
                last_read_ok_at=(
                    float(meta["last_read_ok_at"]) if meta.get("last_read_ok_at") else None
                ),
                duplicates_dropped=int(meta.get("duplicates_dropped") or 0),
                reads_held=meta.get("reads_held") or "",
                unanswered=grouped(
                    "SELECT CASE WHEN decided_by != '' THEN decided_by"
                    " WHEN strpos(reason, ':') > 0"
                    " THEN trim(substr(reason, 1, strpos(reason, ':') - 1))"
                    f" ELSE reason END AS who, COUNT(*) FROM messages WHERE {not_answered}"
                    " GROUP BY who"
                ),
                sends={(row["send_result"], row["last_errid"]): int(row["n"]) for row in sends},
            )

        return self._run(read)

    # -- outbound sends --------------------------------------------------------------

    def outbound_create(
        self,
        send: NewOutbound,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> tuple[OutboundRow, bool]:
        """A send, its recipients and its SMS in one transaction; with a key the account
        used before, that send (False). Two processes creating one key at once: the
        second waits for the first (a lock on the key) and returns its send."""
        now = self.clock()

        def create(tx: PgTransaction) -> tuple[Any, int | None]:
            if send.key:
                tx.execute(
                    "SELECT pg_advisory_xact_lock(?, hashtext(? || '/' || ?))",
                    (LOCK_CLASS, send.account, send.key),
                )
                row = tx.one(f"{_OUTBOUND} WHERE account = ? AND key = ?", (send.account, send.key))
                if row is not None:
                    return row, None
            send_id = int(
                tx.one(
                    "INSERT INTO outbound (account, key, fingerprint, source, text, sender, at,"
                    " flow, context, state, parts, created_at, answer)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (
                        send.account,
                        send.key,
                        send.fingerprint,
                        send.source,
                        send.text,
                        send.sender,
                        send.at,
                        send.flow,
                        json.dumps(dict(send.context), ensure_ascii=False, sort_keys=True),
                        send.state,
                        send.parts,
                        now,
                        send.answer,
                    ),
                )[0]
            )
            _insert_outbound_recipients(tx, send_id, recipients)
            _insert_outbound_items(tx, send_id, send.account, outgoing, now)
            for change in conversations:
                _change_conversation(tx, change, now)
            return None, send_id

        found, send_id = self._run(create)
        if send_id is None:
            return _outbound(found), False
        stored = OutboundRow(**{f.name: getattr(send, f.name) for f in dataclass_fields(send)})
        return replace(stored, id=send_id, created_at=now), True

    def outbound_add(
        self,
        send_id: int,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> None:
        now = self.clock()

        def add(tx: PgTransaction) -> None:
            row = tx.one("SELECT account FROM outbound WHERE id = ? FOR UPDATE", (send_id,))
            if row is None:
                raise StatementError(f"there is no outbound send {send_id}")
            _insert_outbound_recipients(tx, send_id, recipients)
            _insert_outbound_items(tx, send_id, row["account"], outgoing, now)
            for change in conversations:
                _change_conversation(tx, change, now)

        self._run(add)

    def outbound_known(self, send_id: int, numbers: Sequence[str]) -> set[str]:
        rows = self.query(
            "SELECT number FROM outbound_recipients WHERE outbound_id = ? AND number = ANY(?)",
            (send_id, list(dict.fromkeys(numbers))),
        )
        return {row[0] for row in rows}

    def outbound_release(
        self,
        send_id: int,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> bool:
        """Release a scheduled send: once, whichever process locks its row first."""
        now = self.clock()

        def release(tx: PgTransaction) -> bool:
            row = tx.one(
                "SELECT account FROM outbound WHERE id = ? AND state = ? FOR UPDATE",
                (send_id, OUTBOUND_SCHEDULED),
            )
            if row is None:
                return False
            tx.execute("UPDATE outbound SET state = ? WHERE id = ?", (OUTBOUND_QUEUED, send_id))
            tx.executemany(
                "UPDATE outbound_recipients SET status = ?, reason = ?, parts = ?"
                " WHERE outbound_id = ? AND number = ?",
                [(r.status, r.reason, r.parts, send_id, r.number) for r in recipients],
            )
            _insert_outbound_items(tx, send_id, row["account"], outgoing, now)
            for change in conversations:
                _change_conversation(tx, change, now)
            return True

        return self._run(release)

    def outbound_cancel(self, send_id: int, *, account: str | None = DEFAULT_ACCOUNT) -> int | None:
        def cancel(tx: PgTransaction) -> int | None:
            row = tx.one(
                "SELECT state FROM outbound WHERE id = ? AND (?::text IS NULL OR account = ?)"
                " FOR UPDATE",
                (send_id, account, account),
            )
            if row is None:
                return None
            cancelled = 0
            if row["state"] == OUTBOUND_SCHEDULED:
                cancelled = tx.execute(
                    "UPDATE outbound_recipients SET status = 'cancelled',"
                    " reason = 'cancelled before its time' WHERE outbound_id = ? AND status = ?",
                    (send_id, OUTBOUND_SCHEDULED),
                ).rowcount
            pending = tx.all(  # locked: no sender claims them meanwhile
                "SELECT id, payload FROM queue_items WHERE queue = ? AND outbound_id = ?"
                " AND state = ? FOR UPDATE",
                (OUTBOX, send_id, QUEUE_PENDING),
            )
            numbers = {n for item in pending for n in json.loads(item["payload"])["recipients"]}
            tx.execute("DELETE FROM queue_items WHERE id = ANY(?)", ([i["id"] for i in pending],))
            handed = {
                n
                for item in tx.all(
                    "SELECT payload FROM queue_items WHERE queue = ? AND outbound_id = ?",
                    (OUTBOX, send_id),
                )
                for n in json.loads(item["payload"])["recipients"]
            }
            tx.executemany(
                "UPDATE outbound_recipients SET status = 'cancelled', reason = ?"
                " WHERE outbound_id = ? AND number = ? AND status IN (?, ?)",
                [
                    (
                        "cancelled after some of its parts were handed to the gateway"
                        if number in handed
                        else "cancelled before it was sent",
                        send_id,
                        number,
                        OUTBOUND_QUEUED,
                        OUTBOUND_SCHEDULED,
                    )
                    for number in sorted(numbers)
                ],
            )
            cancelled += len(numbers)
            if row["state"] == OUTBOUND_SCHEDULED or (numbers and not handed):
                tx.execute(
                    "UPDATE outbound SET state = ? WHERE id = ?", (OUTBOUND_CANCELLED, send_id)
                )
            return cancelled

        return self._run(cancel)

    # -- durable queues --------------------------------------------------------------

    def queue_put(
        self,
        queue: str,
        payload: Any,
        *,
        key: str | None = None,
        at: float | None = None,
        account: str = DEFAULT_ACCOUNT,
    ) -> tuple[QueueItem, bool]:
        text = _queue_json(queue, payload)
        now = self.clock()

        def put(tx: PgTransaction) -> tuple[Any, bool]:
            row = tx.one(
                "INSERT INTO queue_items (queue, account, key, payload, next_attempt_at,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (queue, key) WHERE key IS NOT NULL DO NOTHING"
                f" RETURNING {_QUEUE_COLUMNS}",
                (queue, account, key, text, now if at is None else at, now),
            )
            if row is not None:
                return row, True
            return tx.one(_QUEUE_BY_KEY, (queue, key)), False

        row, added = self._run(put)
        return _queue_item(row), added

    def queue_claim(
        self, queue: str, limit: int, *, account: str = DEFAULT_ACCOUNT
    ) -> list[QueueItem]:
        """Claim up to ``limit`` due pending items: rows another process is claiming are
        skipped (``FOR UPDATE SKIP LOCKED``), so no item is ever claimed twice."""
        now = self.clock()

        def claim(tx: PgTransaction) -> list[Any]:
            return tx.all(
                "UPDATE queue_items SET state = ?, attempts = attempts + 1 WHERE id IN"
                " (SELECT id FROM queue_items WHERE queue = ? AND account = ? AND state = ?"
                " AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
                f" FOR UPDATE SKIP LOCKED) RETURNING {_QUEUE_COLUMNS}",
                (QUEUE_CLAIMED, queue, account, QUEUE_PENDING, now, limit),
            )

        rows = self._run(claim)
        items = [_queue_item(row) for row in rows]
        return sorted(items, key=lambda item: (item.next_attempt_at, item.id))

    def queue_finish(self, item_id: int, *, state: str, error: str = "") -> float:
        now = self.clock()
        self._run(lambda tx: _queue_finish(tx, item_id, state, error, now))
        return now

    def queue_done_with_replies(
        self, item_id: int, message_id: int, outgoing: Sequence[OutgoingSms]
    ) -> float:
        now = self.clock()

        def write(tx: PgTransaction) -> None:
            _add_replies(tx, message_id, outgoing, now)
            _queue_finish(tx, item_id, QUEUE_DONE, "", now)

        self._run(write)
        return now

    def queue_back(self, item_id: int, *, attempts: int, error: str, at: float) -> None:
        self._run(lambda tx: _queue_back(tx, item_id, error=error, at=at, attempts=attempts))

    def queue_recover(
        self, queue: str, *, max_attempts: int | None, error: str, account: str = DEFAULT_ACCOUNT
    ) -> int:
        now = self.clock()
        limit = -1 if max_attempts is None else max_attempts

        def recover(tx: PgTransaction) -> int:
            dead = tx.execute(
                "UPDATE queue_items SET state = ?, last_error = ?, finished_at = ?"
                " WHERE queue = ? AND account = ? AND state = ? AND ?::int >= 0"
                " AND attempts >= ?",
                (
                    QUEUE_DEAD,
                    f"gave up after its last attempt: {error}",
                    now,
                    queue,
                    account,
                    QUEUE_CLAIMED,
                    limit,
                    limit,
                ),
            ).rowcount
            back = tx.execute(
                "UPDATE queue_items SET state = ?, last_error = ?, next_attempt_at = ?"
                " WHERE queue = ? AND account = ? AND state = ?",
                (QUEUE_PENDING, error, now, queue, account, QUEUE_CLAIMED),
            ).rowcount
            return dead + back

        return self._run(recover)

    def queue_requeue_dead(
        self, queue: str, ids: Sequence[int] | None = None, *, account: str = DEFAULT_ACCOUNT
    ) -> int:
        now = self.clock()
        where = "queue = ? AND account = ? AND state = ?"
        params: list[Any] = [QUEUE_PENDING, now, queue, account, QUEUE_DEAD]
        if ids is not None:
            where += " AND id = ANY(?)"
            params.append(list(ids))
        return self._run(
            lambda tx: (
                tx.execute(
                    "UPDATE queue_items SET state = ?, attempts = 0, next_attempt_at = ?,"
                    f" finished_at = NULL WHERE {where}",
                    params,
                ).rowcount
            )
        )

    def queue_prune(self, before: float) -> int:
        return self._run(
            lambda tx: (
                tx.execute(
                    "DELETE FROM queue_items WHERE state = ? AND finished_at < ?"
                    " AND message_id IS NULL AND outbound_id IS NULL",
                    (QUEUE_DONE, before),
                ).rowcount
            )
        )

    # -- conversations ---------------------------------------------------------------

    def change_conversations(
        self, changes: Sequence[ConversationChange]
    ) -> list[Conversation | None]:
        now = self.clock()
        return self._run(lambda tx: [_change_conversation(tx, c, now) for c in changes])

    def expire_conversations(self, *, limit: int = 500) -> list[Conversation]:
        now = self.clock()

        def expire(tx: PgTransaction) -> list[Any]:
            return tx.all(
                "DELETE FROM conversations WHERE (account, number) IN"
                " (SELECT account, number FROM conversations"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?"
                " ORDER BY expires_at LIMIT ? FOR UPDATE SKIP LOCKED)"
                " RETURNING account, number, flow, step, fields, state, started_at,"
                " updated_at, expires_at, context, who",
                (now, limit),
            )

        rows = self._run(expire)
        found = [_conversation(row) for row in rows]
        return sorted(found, key=lambda c: (c.expires_at or 0.0, c.account, c.number))

    # -- what plugins ask of the journal ---------------------------------------------

    def replies_to(
        self,
        number: str,
        since: float,
        *,
        until: float | None = None,
        account: str | None = DEFAULT_ACCOUNT,
    ) -> int:
        until = self.clock() if until is None else until
        rows = self.query(
            "SELECT COUNT(DISTINCT o.message_id) FROM messages m"
            " JOIN queue_items o ON o.message_id = m.id AND o.queue = 'outbox'"
            " WHERE m.src = ? AND m.journaled_at >= ?"
            " AND (o.payload::jsonb -> 'recipients') = jsonb_build_array(?::text)"
            " AND o.created_at >= ? AND o.created_at <= ?"
            " AND (?::text IS NULL OR m.account = ?)",
            (number, since - _REPLY_LOOKBACK, number, since, until, account, account),
        )
        return int(rows[0][0])

    def exchange(
        self, number: str, *, limit: int, account: str | None = DEFAULT_ACCOUNT
    ) -> list[ExchangeLine]:
        limit = max(limit, 0)
        keyed: list[tuple[tuple[float, int, int, int], ExchangeLine]] = []
        for row in self.query(
            "SELECT id, journaled_at, text FROM messages WHERE src = ?"
            " AND (?::text IS NULL OR account = ?) ORDER BY id DESC LIMIT ?",
            (number, account, account, limit),
        ):
            keyed.append(((row[1], row[0], 0, 0), ExchangeLine(row[1], "in", row[2])))
        for row in self.query(
            "SELECT o.id, o.created_at, o.payload::jsonb ->> 'text',"
            " o.payload::jsonb ->> 'plugin', m.id, m.journaled_at"
            " FROM queue_items o LEFT JOIN messages m ON m.id = o.message_id"
            " WHERE o.queue = 'outbox' AND (?::text IS NULL OR o.account = ?) AND EXISTS"
            " (SELECT 1 FROM jsonb_array_elements_text(o.payload::jsonb -> 'recipients') r"
            " WHERE r = ?) ORDER BY o.id DESC LIMIT ?",
            (account, account, number, limit),
        ):
            at = row[5] if row[5] is not None else row[1]
            line = ExchangeLine(row[1], "out", row[2], row[3] or "")
            keyed.append(((at, row[4] or 0, 1, row[0]), line))
        for row in self.query(
            "SELECT id, at, text FROM sent_by_hand"
            " WHERE state IN ('sent', 'sending', 'uncertain')"
            " AND ',' || recipients || ',' LIKE ? ORDER BY id DESC LIMIT ?",
            (f"%,{number},%", limit),
            missing_ok=True,
        ):
            keyed.append(
                ((row[1], _NO_ID_BOUND, 2, row[0]), ExchangeLine(row[1], "out", row[2], "send"))
            )
        keyed.sort(key=lambda pair: pair[0])
        return [line for _key, line in keyed[-limit:]] if limit else []

    # -- the console's lists -----------------------------------------------------------

    def traffic(
        self, since: float, *, hours: int = 24, account: str | None = DEFAULT_ACCOUNT
    ) -> list[TrafficHour]:
        hours = max(hours, 0)
        until = since + hours * 3600.0
        received = [0] * hours
        queued = [0] * hours
        for counts, sql in (
            (
                received,
                "SELECT FLOOR((journaled_at - ?) / 3600)::bigint AS hour, COUNT(*) FROM messages"
                " WHERE journaled_at >= ? AND journaled_at < ?"
                " AND (?::text IS NULL OR account = ?) GROUP BY hour",
            ),
            (
                queued,
                "SELECT FLOOR((created_at - ?) / 3600)::bigint AS hour, COUNT(*)"
                f" FROM queue_items WHERE queue = '{OUTBOX}' AND created_at >= ?"
                " AND created_at < ? AND (?::text IS NULL OR account = ?) GROUP BY hour",
            ),
        ):
            for hour, count in self.query(sql, (since, since, until, account, account)):
                if 0 <= int(hour) < hours:
                    counts[int(hour)] += int(count)
        return [
            TrafficHour(since + hour * 3600.0, received[hour], queued[hour])
            for hour in range(hours)
        ]


# -- helpers: the same transitions as SQLite's, in PostgreSQL's SQL -------------------


def _add_replies(
    tx: PgTransaction, message_id: int, outgoing: Sequence[OutgoingSms], now: float
) -> None:
    plugin = outgoing[0].plugin if outgoing else ""
    _insert_outbox(tx, message_id, outgoing, now)
    tx.execute(
        "UPDATE messages SET state = ?, reason = '', decided_by = '',"
        " plugin = CASE WHEN ?::text = '' THEN plugin ELSE ? END"
        " WHERE id = ? AND state IN (?, ?, ?)",
        (PROCESSED, plugin, plugin, message_id, IGNORED, REPLIED, PROCESSED),
    )


def _change_conversation(
    tx: PgTransaction, change: ConversationChange, now: float
) -> Conversation | None:
    """One change, under a transaction lock on its (account, number): a row not there yet
    cannot be locked, and two processes starting one conversation must not both see none."""
    tx.execute(
        "SELECT pg_advisory_xact_lock(?, hashtext(? || '/' || ?))",
        (LOCK_CLASS, change.account, change.number),
    )
    row = tx.one(
        f"{_CONVERSATION} WHERE account = ? AND number = ?", (change.account, change.number)
    )
    current = _conversation(row) if row is not None else None
    if current is not None and current.expired(now):
        current = None
    after, result = change_result(current, change)
    if after is None:
        tx.execute(
            "DELETE FROM conversations WHERE account = ? AND number = ?",
            (change.account, change.number),
        )
    elif after is not current:
        tx.execute(
            "INSERT INTO conversations (account, number, flow, step, fields, state,"
            " started_at, updated_at, expires_at, context, who)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (account, number) DO UPDATE SET flow = excluded.flow,"
            " step = excluded.step, fields = excluded.fields, state = excluded.state,"
            " started_at = excluded.started_at, updated_at = excluded.updated_at,"
            " expires_at = excluded.expires_at, context = excluded.context, who = excluded.who",
            (
                change.account,
                change.number,
                after.flow,
                after.step,
                json.dumps(dict(after.fields), ensure_ascii=False),
                after.state,
                after.started_at,
                after.updated_at,
                after.expires_at,
                json.dumps(dict(after.context), ensure_ascii=False),
                after.who,
            ),
        )
    return result


def _queue_claim(tx: PgTransaction, ids: Sequence[int]) -> int:
    """pending → claimed, its attempt counted; returns how many rows were claimed."""
    return tx.execute(
        "UPDATE queue_items SET state = ?, attempts = attempts + 1 WHERE id = ANY(?) AND state = ?",
        (QUEUE_CLAIMED, list(ids), QUEUE_PENDING),
    ).rowcount


def _queue_back(
    tx: PgTransaction,
    item_id: int,
    *,
    error: str,
    at: float | None = None,
    attempts: int | None = None,
    uncount: bool = False,
) -> bool:
    return (
        tx.execute(
            "UPDATE queue_items SET state = ?, last_error = ?,"
            " next_attempt_at = COALESCE(?::double precision, next_attempt_at),"
            " attempts = COALESCE(?::int, GREATEST(attempts - ?::int, 0))"
            " WHERE id = ? AND state = ?",
            (QUEUE_PENDING, error, at, attempts, int(uncount), item_id, QUEUE_CLAIMED),
        ).rowcount
        == 1
    )


def _queue_finish(
    tx: PgTransaction,
    item_id: int,
    state: str,
    error: str,
    now: float,
    *,
    unclaimed: bool = False,
) -> bool:
    states = [QUEUE_CLAIMED, QUEUE_PENDING] if unclaimed else [QUEUE_CLAIMED]
    return (
        tx.execute(
            "UPDATE queue_items SET state = ?, last_error = ?, finished_at = ?"
            " WHERE id = ? AND state = ANY(?)",
            (state, error, now, item_id, states),
        ).rowcount
        == 1
    )
