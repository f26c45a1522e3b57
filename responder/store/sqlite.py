"""The durable store: one SQLite file in WAL mode holding the journal and the outbox.

A message read from the gateway is gone from it, so it is committed here before
anything else touches it. Every state change is one committed transaction, so a
kill -9 at any instant loses nothing: a restart finds each message and reply in the
state it reached. Plugins keep their own tables here too (``migrate``).
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TextIO

from responder.conversations import (
    Conversation,
    ConversationChange,
    change_result,
)
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
from responder.store.pg_sql import step_for
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
    _QUEUE_BY_ID,
    _QUEUE_BY_KEY,
    _QUEUE_COLUMNS,
    _REPLY_LOOKBACK,
    StoreQueries,
    _conversation,
    _insert_outbound_items,
    _insert_outbound_recipients,
    _insert_outbox,
    _of_account,
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

MIN_FREE_BYTES: Final = 16 * 1024 * 1024
"""Room the store's files must have left before a read: far more than one message needs."""
PRUNE_BATCH: Final = 500
"""Messages deleted per transaction by ``prune``, so it never holds the write lock long."""
SQLITE_HEADER: Final = b"SQLite format 3\x00"
_STORAGE_FAILURES: Final = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_READONLY",
    "SQLITE_CANTOPEN",
    "SQLITE_CORRUPT",
    "SQLITE_NOTADB",
    "SQLITE_PERM",
    "SQLITE_NOMEM",
    "SQLITE_NOLFS",
    "SQLITE_PROTOCOL",
)


def store_room(path: Path) -> int:
    """Bytes the store's files may still grow by.

    The free space of its filesystem for an unprivileged user (root's reserve is not
    counted), capped by this process's file-size limit (``ulimit -f``, systemd's
    ``LimitFSIZE=``), which a write past it breaks just as a full disk does.
    """
    real = Path(os.path.realpath(path))
    stat = os.statvfs(real.parent)
    room = stat.f_bavail * stat.f_frsize
    limit, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY:
        sizes = [f.stat().st_size for f in (real, _sibling(real, "-wal")) if f.exists()]
        room = min(room, limit - max(sizes, default=0))
    return room


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


_HAND_SENT_OWNER: Final = "responder.send"
_HAND_SENT_SCHEMA: Final = (
    "CREATE TABLE sent_by_hand ("
    " id INTEGER PRIMARY KEY,"
    " at REAL NOT NULL,"
    " recipients TEXT NOT NULL,"
    " text TEXT NOT NULL,"
    " part INTEGER NOT NULL DEFAULT 1,"
    " parts INTEGER NOT NULL DEFAULT 1,"
    " raw INTEGER NOT NULL DEFAULT 0,"
    " state TEXT NOT NULL,"
    " reason TEXT NOT NULL DEFAULT '',"
    " errid INTEGER,"
    " result TEXT NOT NULL DEFAULT '')",
)
"""What ``responder send`` did: each request, and each number a before-send hook kept out.
States: "sending" (under way, or the command died during it), "sent", "refused" (num=0),
"failed", "uncertain" (the answer was lost: it may have gone out), "suppressed" (reason)."""


def _is_damage(err: BaseException) -> bool:
    name = getattr(err, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


class Store(StoreQueries):
    """The SQLite store. Safe to use from several threads: each gets its own connection."""

    dialect: Final = "sqlite"
    """The SQL dialect of ``query``, ``transaction`` and ``migrate`` ("sqlite")."""

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        clock: Callable[[], float] = time.time,
        room: Callable[[Path], int] = store_room,
    ) -> None:
        """Open the store, creating it when the file is missing; StoreError when it cannot be
        opened, or when the file exists but is empty or not a store (never made new over it).

        ``room`` tells how many bytes the store's files may still grow by (``store_room``).
        """
        self.path = Path(path)
        self.clock = clock
        self._room = room
        self._synchronous = synchronous
        self._local = threading.local()
        self._exclusive: TextIO | None = None
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        try:
            if str(path) != ":memory:":
                self._check_file()
            self._migrate_core()
        except sqlite3.Error as err:
            if _is_damage(err):
                raise self._damaged(err) from None
            hint = ""
            if "readonly" in str(err) or "unable to open" in str(err):
                hint = " (its folder must be writable: SQLite creates -wal and -shm files in it)"
            raise StoreError(f"cannot open the store {str(self.path)!r}: {err}{hint}") from None

    def _check_file(self) -> None:
        """Create a missing store; refuse a file that is empty or not an SQLite database.

        SQLite would take a 0-byte file for a new database and silently start afresh,
        losing the history and the opt-out list that file should have held.
        """
        if not self.path.parent.is_dir():
            raise StoreError(f"the folder of the store {str(self.path)!r} does not exist")
        if not self.path.exists():
            self._create()
            return
        try:
            with open(self.path, "rb") as handle:
                head = handle.read(len(SQLITE_HEADER))
        except OSError as err:
            raise StoreError(
                f"cannot open the store {str(self.path)!r}: {err.strerror or err}"
            ) from None
        wal = _sibling(self.path, "-wal")
        if not head and not (wal.exists() and wal.stat().st_size > 0):
            raise StoreError(
                f"the store {str(self.path)!r} is an empty file (0 bytes), not a store: it is "
                "not made new, as its history and opt-out list would be lost; restore it from "
                "a backup, or delete the file to start a new store"
            )
        if head and head != SQLITE_HEADER:
            raise StoreError(
                f"the store {str(self.path)!r} is not an SQLite database (damaged, or another "
                "file): restore it from a backup, or move it away to start a new store"
            )

    def _create(self) -> None:
        """Make a new store under a temporary name and link it into place whole, so a crash
        while it is made never leaves an empty file at the store's path."""
        temp = _sibling(self.path, f".{os.getpid()}.new")
        temp.unlink(missing_ok=True)
        conn = sqlite3.connect(temp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            self._apply_core(conn)
        finally:
            conn.close()  # the last connection: its WAL is checkpointed and removed
        try:
            os.link(temp, self.path)
        except FileExistsError:
            pass  # made meanwhile by another process: that one is used
        except OSError:  # a filesystem without hard links
            if not self.path.exists():
                os.replace(temp, self.path)
        finally:
            temp.unlink(missing_ok=True)

    def _damaged(self, err: BaseException) -> StoreError:
        return StoreError(
            f"the store {str(self.path)!r} is damaged ({err}): with the daemon stopped, move "
            "the file aside and restore a backup (sqlite3's .recover command may save what "
            "it holds)"
        )

    def verify(self) -> None:
        """Read every page of the store (``PRAGMA quick_check``); StoreError when damaged."""
        found = [row[0] for row in self.query("PRAGMA quick_check(3)")]
        if found != ["ok"]:
            raise self._damaged(Exception(" ".join(" ".join(found).split())))

    # -- connections and transactions ------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.parent.is_dir():
                raise StoreError(f"the folder of the store {str(self.path)!r} does not exist")
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            try:
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA synchronous={self._synchronous}")
                conn.execute("PRAGMA foreign_keys=ON")
            except sqlite3.Error as err:
                conn.close()
                if _is_damage(err):
                    raise self._damaged(err) from None
                raise
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's exceptions come out as StoreError (``_wrap``): nothing outside the store
        catches sqlite3.Error."""
        try:
            yield
        except sqlite3.Error as err:
            raise self._wrap(err) from err

    def _wrap(self, err: sqlite3.Error) -> StoreError:
        """A damaged file, a failure of the store (full, I/O, permissions, locked), or a
        statement it refused (StatementError: malformed SQL, a missing table, a constraint)."""
        code = getattr(err, "sqlite_errorname", None) or ""
        if _is_damage(err):
            damaged = self._damaged(err)
            damaged.code = code
            return damaged
        if code.startswith(_STORAGE_FAILURES):
            return StoreError(f"the store {str(self.path)!r} failed: {err}", code=code)
        return StatementError(str(err), code=code)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed on success and rolled back on an exception.

        For a plugin's own tables (and the store's methods): SQLite's exceptions, in the
        statements of the block too, come out as StoreError or StatementError.
        """
        with self._errors():
            conn = self._connection()
            # Threads of this process queue here rather than in SQLite's busy handler, which
            # sleeps in steps of milliseconds while another thread holds the write lock.
            with self._write_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    # SQLite may have rolled back already (a full disk): don't hide the cause.
                    if conn.in_transaction:
                        with suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise

    def query(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] = (),
        *,
        missing_ok: bool = False,
    ) -> list[sqlite3.Row]:
        """Rows of a read, for a plugin's own tables (and the store's methods). ``missing_ok``:
        a table not created yet reads as empty (a plugin's table under ``simulate``, where
        its startup never ran). StoreError or StatementError when it fails."""
        try:  # as ``_errors`` does, without a context manager's cost: a hot path
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as err:
            if missing_ok and "no such table" in str(err):
                return []
            raise self._wrap(err) from err
        except sqlite3.Error as err:
            raise self._wrap(err) from err

    def close(self) -> None:
        if self._exclusive is not None:
            self._exclusive.close()
            self._exclusive = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def _migrate_core(self) -> None:
        conn = self._connection()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(SCHEMA):
            raise StoreError(
                f"the store {str(self.path)!r} has schema version {version}, newer than this "
                f"release understands ({len(SCHEMA)}): upgrade sms-responder"
            )
        if version < len(SCHEMA):
            with self._write_lock:
                self._apply_core(conn)

    @staticmethod
    def _apply_core(conn: sqlite3.Connection) -> None:
        """Apply the core migrations not applied yet, each in one transaction.

        Foreign keys are off meanwhile, as SQLite's procedure for rebuilding a table asks
        (the pragma is ignored inside a transaction), and checked before each commit. The
        version is read again inside each transaction: another process may have migrated.
        """
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for number, script in enumerate(SCHEMA, start=1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if conn.execute("PRAGMA user_version").fetchone()[0] < number:
                        for statement in filter(str.strip, script.split(";")):
                            conn.execute(statement)
                        if conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                            raise StoreError(f"schema version {number}: a foreign key is broken")
                        conn.execute(f"PRAGMA user_version = {number}")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        finally:
            conn.execute("PRAGMA foreign_keys=ON")

    def migrate(self, owner: str, steps: Sequence[str | Mapping[str, str]]) -> None:
        """Bring a plugin's tables up to date: apply ``steps`` it has not applied yet.

        Each step is one SQL script, or a mapping of a script per dialect
        (``{"sqlite": ..., "postgresql": ...}``) where the backends' DDL differs; the steps
        due are applied together in one transaction. Append new steps, never change old
        ones. Name tables after the plugin to avoid clashes.
        """
        for number, step in enumerate(steps, start=1):
            if not isinstance(step, str) and self.dialect not in step:
                raise StatementError(f"{owner}: schema step {number} has no 'sqlite' variant")
        with self.transaction() as tx:
            row = tx.execute("SELECT version FROM plugin_schema WHERE owner = ?", (owner,))
            found = row.fetchone()
            version = found["version"] if found else 0
            for number, step in enumerate(steps[version:], start=version + 1):
                script = step_for(step, self.dialect)
                for statement in filter(str.strip, script.split(";")):
                    tx.execute(statement)
                tx.execute(
                    "INSERT INTO plugin_schema (owner, version) VALUES (?, ?) "
                    "ON CONFLICT (owner) DO UPDATE SET version = excluded.version",
                    (owner, number),
                )

    def claim_exclusive(self) -> None:
        """Make sure no other daemon uses this store; raise StoreError naming its pid if one does.

        Two daemons on one store would each keep their own read interval, and read the
        account twice as often as the platform allows. The lock is an flock on
        ``<store>.lock`` next to the real file, symlinks resolved (two paths to one store
        find one lock), released by close() or when the process dies, however it dies.
        The database file itself is not flocked: SQLite's own POSIX locks on it would be
        dropped when another descriptor of the file is closed.
        """
        lock_path = _sibling(Path(os.path.realpath(self.path)), ".lock")
        handle = open(lock_path, "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StoreError(
                f"another responder (pid {holder}) is running with the store {str(self.path)!r}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._exclusive = handle

    # -- meta ------------------------------------------------------------------------

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def last_read_at(self, *, account: str = DEFAULT_ACCOUNT) -> float | None:
        value = self.get_meta(read_meta_key("last_read_at", account))
        return float(value) if value else None

    def set_last_read_at(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None:
        """When the latest read began (before its request left).

        Raises JournalUnwritable when it cannot be written: the read must not go out, as
        the message it may bring could not be journaled either.
        """
        try:
            self._set_meta_unsynced(read_meta_key("last_read_at", account), repr(moment))
        except StoreError as err:
            raise JournalUnwritable(f"the store cannot be written: {err}") from None

    def journal_problem(self) -> str:
        """Why the journal could not take a message now ("" when it can): too little room
        left for the store's files (MIN_FREE_BYTES)."""
        try:
            room = self._room(self.path)
        except OSError as err:
            return f"cannot tell the free space of the store's folder: {err.strerror or err}"
        if room < MIN_FREE_BYTES:
            mib = 1024 * 1024
            return (
                f"{max(room, 0) / mib:.1f} MiB left for the store, under the "
                f"{MIN_FREE_BYTES // mib} MiB kept in reserve: free disk space (or raise "
                "the process's file-size limit)"
            )
        return ""

    def probe_write(self) -> str:
        """Try a small write (the read-start mark, unchanged); "" or why it failed."""
        try:
            self._set_meta_unsynced("last_read_at", self.get_meta("last_read_at") or "")
        except StoreError as err:
            return f"the store cannot be written: {err}"
        return ""

    def last_read_end(self, *, account: str = DEFAULT_ACCOUNT) -> float | None:
        value = self.get_meta(read_meta_key("last_read_end", account))
        return float(value) if value else None

    def set_last_read_end(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None:
        """When the latest read's answer came (or the call failed)."""
        self._set_meta_unsynced(read_meta_key("last_read_end", account), repr(moment))

    def _set_meta_unsynced(self, key: str, value: str) -> None:
        """Commit read bookkeeping without waiting for the disk (one fsync less per read).

        The commit survives a crash of this process, since the OS holds the write; only a
        power cut can lose it, and the reboot after one outlasts any read interval. A
        later synced commit (a journaled message) makes it durable anyway.
        """
        with self._unsynced():
            self.set_meta(key, value)

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        with self._errors():
            conn = self._connection()
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            with self._errors():
                conn.execute(f"PRAGMA synchronous={self._synchronous}")

    def last_read_ok_at(self, *, account: str = DEFAULT_ACCOUNT) -> float | None:
        """When a read last got an answer (a message or "nothing unread")."""
        value = self.get_meta(read_meta_key("last_read_ok_at", account))
        return float(value) if value else None

    def set_last_read_ok_at(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None:
        self._set_meta_unsynced(read_meta_key("last_read_ok_at", account), repr(moment))

    # -- messages --------------------------------------------------------------------

    def journal(self, sms: InboundSms, *, account: str = DEFAULT_ACCOUNT) -> Message | None:
        """Commit an inbound SMS read from ``account``; None when that account journaled it
        before, and counted.

        A message is the same when its account, gateway id, numbers, platform time and text
        all are: the platform reuses ids after a reset, so an old id alone proves nothing.
        """
        with self.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO messages (account, gateway_id, src, dst, text, received_at, raw,"
                " journaled_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
            if cursor.rowcount == 0:
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('duplicates_dropped', '1') ON CONFLICT"
                    " (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
                )
                return None
            message_id = cursor.lastrowid
        assert message_id is not None
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
        with self._unsynced(), self.transaction() as tx:
            tx.execute(
                "UPDATE messages SET attempts = MAX(attempts + ?, 0) WHERE id = ?",
                (step, message_id),
            )
            row = tx.execute("SELECT attempts FROM messages WHERE id = ?", (message_id,))
            return row.fetchone()[0]

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
        """Queue a message's replies, record its outcome and apply the conversation
        changes made while it was handled, in one transaction.

        ``reason`` is why it got no reply, ``decided_by`` who decided that (a plugin's
        name), each in its own column. Does nothing for a message already finished: its
        replies were queued then.
        """
        now = self.clock()
        state = state or (PROCESSED if outgoing else IGNORED)
        with self.transaction() as tx:
            updated = tx.execute(
                "UPDATE messages SET state = ?, reason = ?, decided_by = ?, plugin = ?,"
                " processed_at = ? WHERE id = ? AND state = ?",
                (state, reason, decided_by, plugin, now, message_id, RECEIVED),
            )
            if updated.rowcount == 1:
                _insert_outbox(tx, message_id, outgoing, now)
                for change in conversations:
                    _change_conversation(tx, change, now)

    def add_replies(self, message_id: int, outgoing: Sequence[OutgoingSms]) -> None:
        """Queue further replies to an already processed message (answers that came later).

        The message is answered from then on: no reason ("awaiting ..."), and the plugin
        that answered.
        """
        with self.transaction() as tx:
            _add_replies(tx, message_id, outgoing, self.clock())

    def note_reason(self, message_id: int, reason: str, *, decided_by: str = "") -> None:
        """Record why a processed message got no reply after all (a late reply vetoed)."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE messages SET reason = ?, decided_by = ? WHERE id = ?",
                (reason, decided_by, message_id),
            )

    # -- outbox ----------------------------------------------------------------------
    # The outbox is the durable queue "outbox" (queue_items): the transitions are the
    # queue's (_queue_claim, _queue_back, _queue_finish); these add the gateway's answer
    # and settle the message once its every SMS is.

    def claim_send(self, row_id: int) -> int:
        """Mark a row as being sent, before the request leaves; returns the attempt number.

        A row found in this state after a restart is a send whose outcome is unknown.
        """
        with self.transaction() as tx:
            if _queue_claim(tx, [row_id]) != 1:
                raise NotClaimed(
                    f"outbox row {row_id} was not claimed: it is not pending (another sender"
                    " claimed it, or it was settled or cancelled); only a pending row"
                    " can be sent"
                )
            return tx.execute(
                "SELECT attempts FROM queue_items WHERE id = ?", (row_id,)
            ).fetchone()[0]

    def release_claim(self, row_id: int, *, error: str, errid: int | None = None) -> None:
        """Put a row being sent back in the queue as if it had not been attempted: the
        gateway refused the account (login, credit), not this SMS."""
        with self.transaction() as tx:
            if _queue_back(tx, row_id, error=error, uncount=True):
                tx.execute("UPDATE queue_items SET errid = ? WHERE id = ?", (errid, row_id))

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
        with self.transaction() as tx:
            if _queue_back(tx, row_id, error=error, at=retry_at):
                _outbox_answer(tx, row_id, raw=raw, errid=errid, uncertain=uncertain)

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
        """A row's final state (claimed, or pending when given up on unsent), and its
        message's once every row of it is final: one transaction."""
        now = self.clock()
        with self.transaction() as tx:
            if not _queue_finish(tx, row_id, state, error, now, unclaimed=True):
                return
            _outbox_answer(tx, row_id, raw=raw, errid=errid, uncertain=uncertain)
            message_id = tx.execute(
                "SELECT message_id FROM queue_items WHERE id = ?", (row_id,)
            ).fetchone()[0]
            open_rows, dead_rows, uncertain_rows = tx.execute(
                "SELECT SUM(state IN (?, ?)), SUM(state = ?), SUM(state = ?)"
                " FROM queue_items WHERE queue = ? AND message_id = ?",
                (QUEUE_PENDING, QUEUE_CLAIMED, QUEUE_DEAD, QUEUE_UNCERTAIN, OUTBOX, message_id),
            ).fetchone()
            if not open_rows:
                settled = FAILED if dead_rows else UNCERTAIN if uncertain_rows else REPLIED
                tx.execute("UPDATE messages SET state = ? WHERE id = ?", (settled, message_id))

    # -- retention -------------------------------------------------------------------

    def prune(
        self,
        keep_days: int,
        *,
        batch: int = PRUNE_BATCH,
        stop: Callable[[], bool] = lambda: False,
    ) -> tuple[int, int]:
        """Delete finished messages older than ``keep_days`` with their outbox rows; returns
        how many messages and rows. ``keep_days`` 0 keeps everything.

        Finished: replied (every reply sent) or ignored (none due), and nothing happened
        to it or its replies within the period. Failed messages and dead letters are kept,
        and so are plugins' tables (the opt-out list). Each batch is its own short
        transaction, so the daemon's other writes never wait long; ``stop`` is asked
        between batches.
        """
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
            marks = ",".join("?" * len(ids))
            with self.transaction() as tx:  # checked again: a late reply may have come
                ids = [
                    row[0]
                    for row in tx.execute(
                        f"SELECT id FROM messages WHERE id IN ({marks}) AND {finished}",
                        (*ids, *params),
                    )
                ]
                marks = ",".join("?" * len(ids))
                rows += tx.execute(
                    f"DELETE FROM queue_items WHERE message_id IN ({marks})", ids
                ).rowcount
                messages += tx.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids).rowcount
            if len(found) < batch or stop():
                return messages, rows
            time.sleep(0.01)  # let the daemon's other writers in between batches

    def _prune_outbound(self, cutoff: float, batch: int) -> int:
        """Delete outbound sends made before ``cutoff`` whose every SMS was sent before it
        (dead letters and uncertain SMS are kept, as for replies; a send still scheduled
        too), with their recipients and SMS; returns how many SMS."""
        old = (
            "state != ? AND created_at < ? AND NOT EXISTS (SELECT 1 FROM queue_items o"
            " WHERE o.outbound_id = outbound.id AND (o.state != ?"
            " OR COALESCE(o.finished_at, o.created_at) >= ?))"
        )
        params = (OUTBOUND_SCHEDULED, cutoff, QUEUE_DONE, cutoff)
        rows = 0
        while True:
            with self.transaction() as tx:
                ids = [
                    (row[0],)
                    for row in tx.execute(
                        f"SELECT id FROM outbound WHERE {old} ORDER BY id LIMIT ?", (*params, batch)
                    )
                ]
                for statement in (
                    "DELETE FROM queue_items WHERE outbound_id = ?",
                    "DELETE FROM outbound_recipients WHERE outbound_id = ?",
                    "DELETE FROM outbound WHERE id = ?",
                ):
                    cursor = tx.executemany(statement, ids)
                    if statement.startswith("DELETE FROM queue_items"):
                        rows += cursor.rowcount
            if len(ids) < batch:
                return rows

    # -- status ----------------------------------------------------------------------

    def status(self) -> StoreStatus:

        def grouped(sql: str) -> dict[str, int]:
            return {row[0]: row[1] for row in self.query(sql)}

        # Answered messages have no reason (older stores may still show one).
        not_answered = f"reason != '' AND state NOT IN ('{PROCESSED}', '{REPLIED}')"
        # Aliases unlike any column: GROUP BY binds a column first (outbox.result is the raw
        # answer, distinct per row), which would give one group per row.
        sends = self.query(
            "SELECT CASE state WHEN ? THEN ? WHEN ? THEN ? WHEN ? THEN ? ELSE 'retrying' END"
            " AS send_result, COALESCE(CAST(errid AS TEXT), '') AS last_errid, COUNT(*) AS n"
            " FROM queue_items WHERE queue = ? AND attempts > 0 GROUP BY send_result, last_errid",
            (QUEUE_DONE, SENT, QUEUE_DEAD, DEAD, QUEUE_UNCERTAIN, UNCERTAIN, OUTBOX),
        )
        outbox: dict[str, int] = {}
        for state, count in self.query(
            "SELECT state, COUNT(*) FROM queue_items WHERE queue = ? GROUP BY state", (OUTBOX,)
        ):
            outbox[_OUTBOX_STATE.get(state, state)] = count
        last_sent = self.query(
            "SELECT MAX(finished_at) FROM queue_items WHERE queue = ? AND state = ?",
            (OUTBOX, QUEUE_DONE),
        )[0][0]
        last_message = self.query("SELECT MAX(journaled_at) FROM messages")[0][0]
        return StoreStatus(
            messages=grouped("SELECT state, COUNT(*) FROM messages GROUP BY state"),
            outbox=outbox,
            reasons=grouped(
                f"SELECT reason, COUNT(*) FROM messages WHERE {not_answered} GROUP BY reason"
            ),
            uncertain_sends=self.query(
                "SELECT COALESCE(SUM(uncertain), 0) FROM queue_items WHERE queue = ?", (OUTBOX,)
            )[0][0],
            last_read_at=self.last_read_at(),
            last_message_at=last_message,
            last_sent_at=last_sent,
            last_read_ok_at=self.last_read_ok_at(),
            duplicates_dropped=int(self.get_meta("duplicates_dropped") or 0),
            reads_held=self.get_meta("reads_held") or "",
            unanswered=grouped(  # rows from before schema 4 said "plugin: reason"
                "SELECT CASE WHEN decided_by != '' THEN decided_by"
                " WHEN instr(reason, ':') > 0 THEN trim(substr(reason, 1, instr(reason, ':') - 1))"
                f" ELSE reason END AS who, COUNT(*) FROM messages WHERE {not_answered} GROUP BY who"
            ),
            sends={(row["send_result"], row["last_errid"]): row["n"] for row in sends},
        )

    # -- sent by hand (``responder send``) -------------------------------------------------
    # Its own table, created on first use (``migrate``, owner "responder.send").

    def hand_sent_start(
        self, numbers: Sequence[str], text: str, *, part: int = 1, parts: int = 1, raw: bool
    ) -> int:
        """Record a request sent by hand before it leaves ("sending"); returns its id."""
        self.migrate(_HAND_SENT_OWNER, _HAND_SENT_SCHEMA)
        with self.transaction() as tx:
            row_id = tx.execute(
                "INSERT INTO sent_by_hand (at, recipients, text, part, parts, raw, state)"
                " VALUES (?, ?, ?, ?, ?, ?, 'sending')",
                (self.clock(), ",".join(numbers), text, part, parts, int(raw)),
            ).lastrowid
        assert row_id is not None
        return row_id

    def hand_sent_finish(
        self, row_id: int, state: str, *, reason: str, errid: int | None = None, result: str = ""
    ) -> None:
        """A request sent by hand ended: "sent", "refused", "failed" or "uncertain"."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE sent_by_hand SET state = ?, reason = ?, errid = ?, result = ? WHERE id = ?",
                (state, reason, errid, result, row_id),
            )

    def hand_sent_suppressed(self, text: str, numbers: Sequence[tuple[str, str]]) -> None:
        """Numbers a before-send hook kept a hand-sent text from: (number, reason) each."""
        self.migrate(_HAND_SENT_OWNER, _HAND_SENT_SCHEMA)
        now = self.clock()
        with self.transaction() as tx:
            tx.executemany(
                "INSERT INTO sent_by_hand (at, recipients, text, state, reason)"
                " VALUES (?, ?, ?, 'suppressed', ?)",
                [(now, number, text, reason) for number, reason in numbers],
            )

    # -- outbound sends ---------------------------------------------------

    def outbound_create(
        self,
        send: NewOutbound,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> tuple[OutboundRow, bool]:
        now = self.clock()
        with self.transaction() as tx:
            if send.key:
                row = tx.execute(
                    f"{_OUTBOUND} WHERE account = ? AND key = ?", (send.account, send.key)
                ).fetchone()
                if row is not None:
                    return _outbound(row), False
            send_id = tx.execute(
                "INSERT INTO outbound (account, key, fingerprint, source, text, sender, at,"
                " flow, context, state, parts, created_at, answer)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ).lastrowid
            assert send_id is not None
            _insert_outbound_recipients(tx, send_id, recipients)
            _insert_outbound_items(tx, send_id, send.account, outgoing, now)
            for change in conversations:
                _change_conversation(tx, change, now)
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
        with self.transaction() as tx:
            row = tx.execute("SELECT account FROM outbound WHERE id = ?", (send_id,)).fetchone()
            if row is None:
                raise StatementError(f"there is no outbound send {send_id}")
            _insert_outbound_recipients(tx, send_id, recipients)
            _insert_outbound_items(tx, send_id, row["account"], outgoing, now)
            for change in conversations:
                _change_conversation(tx, change, now)

    def outbound_known(self, send_id: int, numbers: Sequence[str]) -> set[str]:
        known: set[str] = set()
        unique = list(dict.fromkeys(numbers))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.query(
                "SELECT number FROM outbound_recipients WHERE outbound_id = ?"
                f" AND number IN ({marks})",
                (send_id, *chunk),
            )
            known.update(row[0] for row in rows)
        return known

    def outbound_release(
        self,
        send_id: int,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> bool:
        now = self.clock()
        with self.transaction() as tx:
            row = tx.execute(
                "SELECT account FROM outbound WHERE id = ? AND state = ?",
                (send_id, OUTBOUND_SCHEDULED),
            ).fetchone()
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

    def outbound_cancel(self, send_id: int, *, account: str | None = DEFAULT_ACCOUNT) -> int | None:
        where, params = _of_account(account)
        with self.transaction() as tx:
            row = tx.execute(
                f"SELECT state FROM outbound WHERE id = ? AND {where}", (send_id, *params)
            ).fetchone()
            if row is None:
                return None
            cancelled = 0
            if row["state"] == OUTBOUND_SCHEDULED:  # held: nothing of it in the outbox yet
                cancelled = tx.execute(
                    "UPDATE outbound_recipients SET status = 'cancelled',"
                    " reason = 'cancelled before its time' WHERE outbound_id = ? AND status = ?",
                    (send_id, OUTBOUND_SCHEDULED),
                ).rowcount
            pending = tx.execute(
                "SELECT id, payload FROM queue_items WHERE queue = ? AND outbound_id = ?"
                " AND state = ?",
                (OUTBOX, send_id, QUEUE_PENDING),
            ).fetchall()
            numbers = {n for item in pending for n in json.loads(item["payload"])["recipients"]}
            tx.executemany("DELETE FROM queue_items WHERE id = ?", [(i["id"],) for i in pending])
            handed = {
                n
                for item in tx.execute(
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

    # -- durable queues ---------------------------------------------------
    # Every statement on queue_items; responder.queue.DurableQueue calls these.

    def queue_put(
        self,
        queue: str,
        payload: Any,
        *,
        key: str | None = None,
        at: float | None = None,
        account: str = "default",
    ) -> tuple[QueueItem, bool]:
        """Add an item (``payload`` as JSON), due at ``at`` (default: now); returns it and
        whether it was added: with a ``key`` already in ``queue`` nothing is added and the
        existing item is returned. TypeError when the payload is not JSON."""
        text = _queue_json(queue, payload)
        now = self.clock()
        with self.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO queue_items (queue, account, key, payload, next_attempt_at,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (queue, key) WHERE key IS NOT NULL DO NOTHING",
                (queue, account, key, text, now if at is None else at, now),
            )
            if cursor.rowcount:
                row = tx.execute(_QUEUE_BY_ID, (cursor.lastrowid,)).fetchone()
            else:
                row = tx.execute(_QUEUE_BY_KEY, (queue, key)).fetchone()
        return _queue_item(row), bool(cursor.rowcount)

    def queue_claim(self, queue: str, limit: int, *, account: str = "default") -> list[QueueItem]:
        """Claim up to ``limit`` due pending items, soonest due first, counting an attempt
        of each; committed before this returns."""
        now = self.clock()
        with self.transaction() as tx:
            rows = tx.execute(
                f"SELECT {_QUEUE_COLUMNS} FROM queue_items WHERE queue = ? AND account = ?"
                " AND state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
                (queue, account, QUEUE_PENDING, now, limit),
            ).fetchall()
            _queue_claim(tx, [row["id"] for row in rows])
        return [
            replace(_queue_item(row), state=QUEUE_CLAIMED, attempts=row["attempts"] + 1)
            for row in rows
        ]

    def queue_finish(self, item_id: int, *, state: str, error: str = "") -> float:
        """A claimed item is done or dead; returns when."""
        now = self.clock()
        with self.transaction() as tx:
            _queue_finish(tx, item_id, state, error, now)
        return now

    def queue_done_with_replies(
        self, item_id: int, message_id: int, outgoing: Sequence[OutgoingSms]
    ) -> float:
        """A claimed item's work was to queue replies to a message: both in one transaction
        (``add_replies``), so a crash never queues them twice or loses them."""
        now = self.clock()
        with self.transaction() as tx:
            _add_replies(tx, message_id, outgoing, now)
            _queue_finish(tx, item_id, QUEUE_DONE, "", now)
        return now

    def queue_back(self, item_id: int, *, attempts: int, error: str, at: float) -> None:
        """A claimed item is pending again, due at ``at``, with ``attempts`` counted."""
        with self.transaction() as tx:
            _queue_back(tx, item_id, error=error, at=at, attempts=attempts)

    def queue_recover(
        self, queue: str, *, max_attempts: int | None, error: str, account: str = "default"
    ) -> int:
        """Items left claimed by a previous process: pending again, due now (attempts kept),
        or dead when that was their last attempt. Returns how many."""
        now = self.clock()
        limit = -1 if max_attempts is None else max_attempts
        with self.transaction() as tx:
            dead = tx.execute(
                "UPDATE queue_items SET state = ?, last_error = ?, finished_at = ?"
                " WHERE queue = ? AND account = ? AND state = ? AND ? >= 0 AND attempts >= ?",
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

    def queue_requeue_dead(
        self, queue: str, ids: Sequence[int] | None = None, *, account: str = "default"
    ) -> int:
        """Dead items (all, or those of ``ids``) pending again, due now, attempts reset."""
        now = self.clock()
        where = "queue = ? AND account = ? AND state = ?"
        params: list[Any] = [QUEUE_PENDING, now, queue, account, QUEUE_DEAD]
        if ids is not None:
            where += f" AND id IN ({','.join('?' * len(ids))})"
            params.extend(ids)
        with self.transaction() as tx:
            return tx.execute(
                "UPDATE queue_items SET state = ?, attempts = 0, next_attempt_at = ?,"
                f" finished_at = NULL WHERE {where}",
                params,
            ).rowcount

    def queue_prune(self, before: float) -> int:
        """Delete done items (of every queue) finished before ``before``; dead ones stay, and
        so do the outbox's items (answering a message, or of an outbound send): they go
        with it (``prune``)."""
        with self.transaction() as tx:
            return tx.execute(
                "DELETE FROM queue_items WHERE state = ? AND finished_at < ?"
                " AND message_id IS NULL AND outbound_id IS NULL",
                (QUEUE_DONE, before),
            ).rowcount

    # -- conversations ------------------------------------------------------------
    # One row per (account, number); a row past its expires_at reads as absent.

    def change_conversations(
        self, changes: Sequence[ConversationChange]
    ) -> list[Conversation | None]:
        now = self.clock()
        with self.transaction() as tx:
            return [_change_conversation(tx, change, now) for change in changes]

    def expire_conversations(self, *, limit: int = 500) -> list[Conversation]:
        with self.transaction() as tx:
            rows = tx.execute(
                f"{_CONVERSATION} WHERE expires_at IS NOT NULL AND expires_at <= ?"
                " ORDER BY expires_at LIMIT ?",
                (self.clock(), limit),
            ).fetchall()
            tx.executemany(
                "DELETE FROM conversations WHERE account = ? AND number = ?",
                [(row["account"], row["number"]) for row in rows],
            )
        return [_conversation(row) for row in rows]

    # -- what plugins ask of the journal -----------------------------------
    # The guard's limits and the counts in plugins' status sections, so that no plugin
    # writes SQL on messages or outbox.

    def replies_to(
        self,
        number: str,
        since: float,
        *,
        until: float | None = None,
        account: str | None = DEFAULT_ACCOUNT,
    ) -> int:
        """Messages from ``number`` answered to that same number by replies queued between
        ``since`` and ``until`` (default: now). Messages journaled more than a day before
        ``since`` are not looked at (their late answers are not counted)."""
        until = self.clock() if until is None else until
        rows = self.query(
            "SELECT COUNT(DISTINCT o.message_id) FROM messages m"
            " JOIN queue_items o ON o.message_id = m.id AND o.queue = 'outbox'"
            " WHERE m.src = ? AND m.journaled_at >= ?"
            " AND json_extract(o.payload, '$.recipients') = json_array(?)"
            " AND o.created_at >= ? AND o.created_at <= ?"
            " AND (? IS NULL OR m.account = ?)",
            (number, since - _REPLY_LOOKBACK, number, since, until, account, account),
        )
        return int(rows[0][0])

    def exchange(
        self, number: str, *, limit: int, account: str | None = DEFAULT_ACCOUNT
    ) -> list[ExchangeLine]:
        """The latest ``limit`` SMS between the account and ``number``, both directions:
        messages from it, reply parts queued to it (each right after the message it
        answers), SMS sent to it by hand (those of every account). Oldest first."""
        limit = max(limit, 0)
        keyed: list[tuple[tuple[float, int, int, int], ExchangeLine]] = []
        for row in self.query(
            "SELECT id, journaled_at, text FROM messages WHERE src = ?"
            " AND (? IS NULL OR account = ?) ORDER BY id DESC LIMIT ?",
            (number, account, account, limit),
        ):
            keyed.append(((row[1], row[0], 0, 0), ExchangeLine(row[1], "in", row[2])))
        for row in self.query(
            "SELECT o.id, o.created_at, json_extract(o.payload, '$.text'),"
            " json_extract(o.payload, '$.plugin'), m.id, m.journaled_at"
            " FROM queue_items o LEFT JOIN messages m ON m.id = o.message_id"
            " WHERE o.queue = 'outbox' AND (? IS NULL OR o.account = ?) AND EXISTS"
            " (SELECT 1 FROM json_each(o.payload, '$.recipients') r WHERE r.value = ?)"
            " ORDER BY o.id DESC LIMIT ?",
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

    # -- the console's lists ---------------------------------------------------------------

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
                "SELECT CAST((journaled_at - ?) / 3600 AS INTEGER), COUNT(*) FROM messages"
                " WHERE journaled_at >= ? AND journaled_at < ? AND (? IS NULL OR account = ?)"
                " GROUP BY 1",
            ),
            (
                queued,
                "SELECT CAST((created_at - ?) / 3600 AS INTEGER), COUNT(*) FROM queue_items"
                f" WHERE queue = '{OUTBOX}' AND created_at >= ? AND created_at < ?"
                " AND (? IS NULL OR account = ?) GROUP BY 1",
            ),
        ):
            for hour, count in self.query(sql, (since, since, until, account, account)):
                if 0 <= hour < hours:
                    counts[hour] += count
        return [
            TrafficHour(since + hour * 3600.0, received[hour], queued[hour])
            for hour in range(hours)
        ]


def _add_replies(
    tx: sqlite3.Connection, message_id: int, outgoing: Sequence[OutgoingSms], now: float
) -> None:
    """``Store.add_replies`` inside a transaction (also used by ``queue_done_with_replies``)."""
    plugin = outgoing[0].plugin if outgoing else ""
    _insert_outbox(tx, message_id, outgoing, now)
    tx.execute(
        "UPDATE messages SET state = ?, reason = '', decided_by = '',"
        " plugin = CASE WHEN ? = '' THEN plugin ELSE ? END"
        " WHERE id = ? AND state IN (?, ?, ?)",
        (PROCESSED, plugin, plugin, message_id, IGNORED, REPLIED, PROCESSED),
    )


# -- conversations: helpers -----------------------------------------------------


def _change_conversation(
    tx: sqlite3.Connection, change: ConversationChange, now: float
) -> Conversation | None:
    """Apply one change in ``tx``; its result (``change_result``). An expired row is
    absent: a start replaces it, a move or end finds none (and removes it)."""
    row = tx.execute(
        f"{_CONVERSATION} WHERE account = ? AND number = ?", (change.account, change.number)
    ).fetchone()
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
            "INSERT OR REPLACE INTO conversations (account, number, flow, step, fields, state,"
            " started_at, updated_at, expires_at, context, who)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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


# -- durable queues: helpers ----------------------------------------------------


# The transitions of a queue item: the one state machine of every queue, the outbox's too.


def _queue_claim(tx: sqlite3.Connection, ids: Sequence[int]) -> int:
    """pending → claimed, its attempt counted; returns how many rows were claimed."""
    return tx.executemany(
        "UPDATE queue_items SET state = ?, attempts = attempts + 1 WHERE id = ? AND state = ?",
        [(QUEUE_CLAIMED, item_id, QUEUE_PENDING) for item_id in ids],
    ).rowcount


def _queue_back(
    tx: sqlite3.Connection,
    item_id: int,
    *,
    error: str,
    at: float | None = None,
    attempts: int | None = None,
    uncount: bool = False,
) -> bool:
    """claimed → pending, due at ``at`` (None: when it was due), with ``attempts`` counted
    (None: as claimed, one fewer with ``uncount``). False when it was not claimed."""
    return (
        tx.execute(
            "UPDATE queue_items SET state = ?, last_error = ?,"
            " next_attempt_at = COALESCE(?, next_attempt_at),"
            " attempts = COALESCE(?, MAX(attempts - ?, 0)) WHERE id = ? AND state = ?",
            (QUEUE_PENDING, error, at, attempts, int(uncount), item_id, QUEUE_CLAIMED),
        ).rowcount
        == 1
    )


def _queue_finish(
    tx: sqlite3.Connection,
    item_id: int,
    state: str,
    error: str,
    now: float,
    *,
    unclaimed: bool = False,
) -> bool:
    """claimed (or, with ``unclaimed``, pending: given up on unattempted) → done, dead or
    uncertain. False when it was in neither state."""
    return (
        tx.execute(
            "UPDATE queue_items SET state = ?, last_error = ?, finished_at = ?"
            " WHERE id = ? AND state IN (?, ?)",
            (state, error, now, item_id, QUEUE_CLAIMED, QUEUE_PENDING if unclaimed else None),
        ).rowcount
        == 1
    )
