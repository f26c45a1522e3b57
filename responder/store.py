"""The durable store: one SQLite file in WAL mode holding the journal and the outbox.

A message read from the gateway is gone from it, so it is committed here before
anything else touches it. Every state change is one committed transaction, so a
kill -9 at any instant loses nothing: a restart finds each message and reply in the
state it reached. Plugins keep their own tables here too (``migrate``).
"""

from __future__ import annotations

import fcntl
import os
import resource
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TextIO

from responder.models import InboundSms, Message

SCHEMA: Final = (
    # version 1
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        gateway_id INTEGER NOT NULL UNIQUE,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        text TEXT NOT NULL,
        received_at TEXT,
        raw TEXT NOT NULL,
        journaled_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'received',
        reason TEXT NOT NULL DEFAULT '',
        plugin TEXT NOT NULL DEFAULT '',
        processed_at REAL
    );
    CREATE INDEX messages_by_state ON messages (state, id);
    CREATE INDEX messages_by_src ON messages (src, journaled_at);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages (id),
        recipients TEXT NOT NULL,
        text TEXT NOT NULL,
        part INTEGER NOT NULL DEFAULT 1,
        parts INTEGER NOT NULL DEFAULT 1,
        plugin TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        uncertain INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        result TEXT NOT NULL DEFAULT '',
        errid INTEGER,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
    CREATE INDEX outbox_by_message ON outbox (message_id);
    CREATE TABLE plugin_schema (owner TEXT PRIMARY KEY, version INTEGER NOT NULL);
    """,
    # version 2: how often processing a message began, to set aside one that never finishes
    """
    ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    """,
    # version 3: dedupe on a message's content, not its gateway id alone (the platform reuses
    # ids after a reset); the extension a reply goes out from. SQLite cannot drop a column's
    # UNIQUE, so messages is rebuilt (ids kept; foreign keys are off during migrations).
    """
    CREATE TABLE messages_v3 (
        id INTEGER PRIMARY KEY,
        gateway_id INTEGER NOT NULL,
        src TEXT NOT NULL,
        dst TEXT NOT NULL,
        text TEXT NOT NULL,
        received_at TEXT,
        raw TEXT NOT NULL,
        journaled_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'received',
        reason TEXT NOT NULL DEFAULT '',
        plugin TEXT NOT NULL DEFAULT '',
        processed_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO messages_v3 (id, gateway_id, src, dst, text, received_at, raw, journaled_at,
        state, reason, plugin, processed_at, attempts)
        SELECT id, gateway_id, src, dst, text, received_at, raw, journaled_at,
        state, reason, plugin, processed_at, attempts FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v3 RENAME TO messages;
    CREATE INDEX messages_by_state ON messages (state, id);
    CREATE INDEX messages_by_src ON messages (src, journaled_at);
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (gateway_id, src, dst, IFNULL(received_at, ''), text);
    ALTER TABLE outbox ADD COLUMN sender TEXT NOT NULL DEFAULT '';
    """,
    # version 4: every row belongs to an account (one, "default", until several are
    # served); who decided a drop or veto, apart from its reason; the durable queues.
    """
    ALTER TABLE messages ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
    ALTER TABLE messages ADD COLUMN decided_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE outbox ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
    DROP INDEX messages_dedupe;
    CREATE UNIQUE INDEX messages_dedupe
        ON messages (account, gateway_id, src, dst, IFNULL(received_at, ''), text);
    CREATE TABLE queue_items (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        account TEXT NOT NULL DEFAULT 'default',
        key TEXT,
        payload TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE UNIQUE INDEX queue_items_key ON queue_items (queue, key) WHERE key IS NOT NULL;
    CREATE INDEX queue_items_due ON queue_items (queue, state, next_attempt_at);
    """,
)
"""Core schema migrations; the database's ``user_version`` counts those applied."""

# Message states.
RECEIVED: Final = "received"  # journaled, not yet through the plugins
PROCESSED: Final = "processed"  # replies in the outbox, not all sent yet
REPLIED: Final = "replied"  # every reply sent
IGNORED: Final = "ignored"  # no reply: dropped, unanswered or vetoed (see reason)
FAILED: Final = "failed"  # a reply was given up on (see the outbox row)
# UNCERTAIN (below): every reply settled, at least one given up with an unknown outcome

# Outbox states.
PENDING: Final = "pending"
SENDING: Final = "sending"
SENT: Final = "sent"
DEAD: Final = "dead"
UNCERTAIN: Final = "uncertain"
"""An SMS whose outcome was unknown, given up on (``replies.on_uncertain = "give_up"``):
never sent again, it may well have gone out. Also the state of a message none of whose
replies failed for sure, but one of them is uncertain."""


MIN_FREE_BYTES: Final = 16 * 1024 * 1024
"""Room the store's files must have left before a read: far more than one message needs."""
PRUNE_BATCH: Final = 500
"""Messages deleted per transaction by ``prune``, so it never holds the write lock long."""
SQLITE_HEADER: Final = b"SQLite format 3\x00"
_STORAGE_FAILURES: Final = (
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


class StoreError(Exception):
    """The store cannot be opened or written (permissions, a full disk, a damaged file)."""


class JournalUnwritable(StoreError):
    """The read-start mark could not be written: a message read now might not be journaled."""


def is_storage_failure(err: BaseException) -> bool:
    """Whether an error is the store's (disk full, I/O, read-only, damaged), not a bug in SQL.

    A plugin's malformed query raises sqlite3 errors too; those are the plugin's failures.
    """
    if isinstance(err, StoreError):
        return True
    name = getattr(err, "sqlite_errorname", None) or ""
    return isinstance(err, sqlite3.Error) and name.startswith(_STORAGE_FAILURES)


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


@dataclass(frozen=True)
class OutgoingSms:
    """One SMS to queue: a part of a composed reply."""

    recipients: tuple[str, ...]
    text: str
    part: int = 1
    parts: int = 1
    plugin: str = ""
    sender: str = ""
    """The extension it goes out from; "" for ``gateway.sender``."""


@dataclass(frozen=True)
class OutboxRow:
    id: int
    message_id: int
    recipients: tuple[str, ...]
    text: str
    part: int
    parts: int
    plugin: str
    state: str
    attempts: int
    uncertain: int
    next_attempt_at: float
    last_error: str
    sender: str = ""
    """The extension it goes out from; "" for ``gateway.sender``."""
    created_at: float = 0.0
    """When it was queued."""


@dataclass(frozen=True)
class StoreStatus:
    messages: dict[str, int]
    outbox: dict[str, int]
    reasons: dict[str, int]
    """Why messages were ignored or replies vetoed, with counts."""
    uncertain_sends: int
    last_read_at: float | None
    last_message_at: float | None
    last_sent_at: float | None
    last_read_ok_at: float | None = None
    """When a read last got an answer; ``last_read_at`` counts failed attempts too."""
    duplicates_dropped: int = 0
    """Messages read again with the same content (gateway id, numbers, time, text), dropped."""
    reads_held: str = ""
    """Why the daemon holds reading (the store cannot take a message), or ""."""


def _is_damage(err: BaseException) -> bool:
    name = getattr(err, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))


def _message(row: sqlite3.Row) -> Message:
    return Message(
        id=row["id"],
        gateway_id=row["gateway_id"],
        src=row["src"],
        dst=row["dst"],
        text=row["text"],
        received_at=datetime.fromisoformat(row["received_at"]) if row["received_at"] else None,
        raw=row["raw"],
    )


def _outbox(row: sqlite3.Row) -> OutboxRow:
    return OutboxRow(
        id=row["id"],
        message_id=row["message_id"],
        recipients=tuple(filter(None, row["recipients"].split(","))),
        text=row["text"],
        part=row["part"],
        parts=row["parts"],
        plugin=row["plugin"],
        state=row["state"],
        attempts=row["attempts"],
        uncertain=row["uncertain"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        sender=row["sender"],
        created_at=row["created_at"],
    )


def _insert_outbox(
    tx: sqlite3.Connection, message_id: int, outgoing: Sequence[OutgoingSms], now: float
) -> None:
    tx.executemany(
        "INSERT INTO outbox (message_id, recipients, text, part, parts, plugin, sender,"
        " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                message_id,
                ",".join(o.recipients),
                o.text,
                o.part,
                o.parts,
                o.plugin,
                o.sender,
                now,
                now,
            )
            for o in outgoing
        ],
    )


class Store:
    """The SQLite store. Safe to use from several threads: each gets its own connection."""

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
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction, committed on success and rolled back on an exception."""
        conn = self._connection()
        # Threads of this process queue here rather than in SQLite's busy handler, which
        # sleeps in steps of milliseconds while another thread holds the write lock.
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as err:
                # SQLite may have rolled back already (a full disk): don't hide the cause.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if _is_damage(err):
                    raise self._damaged(err) from None
                raise

    def query(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] = (),
        *,
        missing_ok: bool = False,
    ) -> list[sqlite3.Row]:
        """Rows of a read. ``missing_ok``: a table not created yet reads as empty (a plugin's
        table under ``simulate``, where its startup never ran)."""
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as err:
            if missing_ok and "no such table" in str(err):
                return []
            raise
        except sqlite3.DatabaseError as err:
            if _is_damage(err):
                raise self._damaged(err) from None
            raise

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

    def migrate(self, owner: str, steps: Sequence[str]) -> None:
        """Bring a plugin's tables up to date: apply ``steps`` it has not applied yet.

        Each step is one SQL script; the steps due are applied together in one
        transaction. Append new steps, never change old ones. Name tables after the
        plugin to avoid clashes.
        """
        with self.transaction() as tx:
            row = tx.execute("SELECT version FROM plugin_schema WHERE owner = ?", (owner,))
            found = row.fetchone()
            version = found["version"] if found else 0
            for number, script in enumerate(steps[version:], start=version + 1):
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

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def last_read_at(self) -> float | None:
        value = self.get_meta("last_read_at")
        return float(value) if value else None

    def set_last_read_at(self, moment: float) -> None:
        """When the latest read began (before its request left).

        Raises JournalUnwritable when it cannot be written: the read must not go out, as
        the message it may bring could not be journaled either.
        """
        try:
            self._set_meta_unsynced("last_read_at", repr(moment))
        except (StoreError, sqlite3.Error) as err:
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
        except (StoreError, sqlite3.Error) as err:
            return f"the store cannot be written: {err}"
        return ""

    def set_reads_held(self, reason: str) -> None:
        """Record why the daemon holds reading ("" once it reads again), for ``status``.

        Best effort: the store may be what cannot be written.
        """
        with suppress(StoreError, sqlite3.Error):
            self.set_meta("reads_held", reason)

    def last_read_end(self) -> float | None:
        value = self.get_meta("last_read_end")
        return float(value) if value else None

    def set_last_read_end(self, moment: float) -> None:
        """When the latest read's answer came (or the call failed)."""
        self._set_meta_unsynced("last_read_end", repr(moment))

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
        conn = self._connection()
        conn.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA synchronous={self._synchronous}")

    def last_read_ok_at(self) -> float | None:
        """When a read last got an answer (a message or "nothing unread")."""
        value = self.get_meta("last_read_ok_at")
        return float(value) if value else None

    def set_last_read_ok_at(self, moment: float) -> None:
        self._set_meta_unsynced("last_read_ok_at", repr(moment))

    # -- messages --------------------------------------------------------------------

    def journal(self, sms: InboundSms) -> Message | None:
        """Commit an inbound SMS; None when it was journaled before, and counted.

        A message is the same when its gateway id, numbers, platform time and text all
        are: the platform reuses ids after a reset, so an old id alone proves nothing.
        """
        with self.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO messages (gateway_id, src, dst, text, received_at, raw, journaled_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
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
        )

    def get_message(self, message_id: int) -> Message | None:
        rows = self.query("SELECT * FROM messages WHERE id = ?", (message_id,))
        return _message(rows[0]) if rows else None

    def message_state(self, message_id: int) -> tuple[str, str]:
        row = self.query("SELECT state, reason FROM messages WHERE id = ?", (message_id,))[0]
        return row["state"], row["reason"]

    def next_unprocessed(self) -> Message | None:
        """The oldest message no plugin has finished with."""
        rows = self.query("SELECT * FROM messages WHERE state = ? ORDER BY id LIMIT 1", (RECEIVED,))
        return _message(rows[0]) if rows else None

    def begin_processing(self, message_id: int) -> int:
        """Count an attempt to process a message, before any plugin sees it; returns the count.

        Not flushed: a count lost to a power cut only allows one attempt more.
        """
        return self._count_attempt(message_id, +1)

    def uncount_attempt(self, message_id: int) -> None:
        """Take back an attempt that a store failure ended: only a plugin's failure counts.

        Raises StoreError or sqlite3.Error when the store cannot take even this write.
        """
        self._count_attempt(message_id, -1)

    def _count_attempt(self, message_id: int, step: int) -> int:
        with self._unsynced(), self.transaction() as tx:
            tx.execute(
                "UPDATE messages SET attempts = MAX(attempts + ?, 0) WHERE id = ?",
                (step, message_id),
            )
            row = tx.execute("SELECT attempts FROM messages WHERE id = ?", (message_id,))
            return row.fetchone()[0]

    def messages_since(self, moment: float) -> list[Message]:
        rows = self.query("SELECT * FROM messages WHERE journaled_at >= ? ORDER BY id", (moment,))
        return [_message(row) for row in rows]

    def finish_message(
        self,
        message_id: int,
        *,
        outgoing: Sequence[OutgoingSms],
        reason: str = "",
        plugin: str = "",
        state: str | None = None,
    ) -> None:
        """Queue a message's replies and record its outcome, in one transaction.

        Does nothing for a message already finished: its replies were queued then.
        """
        now = self.clock()
        state = state or (PROCESSED if outgoing else IGNORED)
        with self.transaction() as tx:
            updated = tx.execute(
                "UPDATE messages SET state = ?, reason = ?, plugin = ?, processed_at = ?"
                " WHERE id = ? AND state = ?",
                (state, reason, plugin, now, message_id, RECEIVED),
            )
            if updated.rowcount == 1:
                _insert_outbox(tx, message_id, outgoing, now)

    def add_replies(self, message_id: int, outgoing: Sequence[OutgoingSms]) -> None:
        """Queue further replies to an already processed message (answers that came later).

        The message is answered from then on: no reason ("awaiting ..."), and the plugin
        that answered.
        """
        now = self.clock()
        plugin = outgoing[0].plugin if outgoing else ""
        with self.transaction() as tx:
            _insert_outbox(tx, message_id, outgoing, now)
            tx.execute(
                "UPDATE messages SET state = ?, reason = '',"
                " plugin = CASE WHEN ? = '' THEN plugin ELSE ? END"
                " WHERE id = ? AND state IN (?, ?, ?)",
                (PROCESSED, plugin, plugin, message_id, IGNORED, REPLIED, PROCESSED),
            )

    def note_reason(self, message_id: int, reason: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE messages SET reason = ? WHERE id = ?", (reason, message_id))

    # -- outbox ----------------------------------------------------------------------

    def due_outbox(self, limit: int = 20) -> list[OutboxRow]:
        rows = self.query(
            "SELECT * FROM outbox WHERE state = ? AND next_attempt_at <= ? ORDER BY id LIMIT ?",
            (PENDING, self.clock(), limit),
        )
        return [_outbox(row) for row in rows]

    def claim_send(self, row_id: int) -> int:
        """Mark a row as being sent, before the request leaves; returns the attempt number.

        A row found in this state after a restart is a send whose outcome is unknown.
        """
        with self.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET state = ?, attempts = attempts + 1 WHERE id = ?",
                (SENDING, row_id),
            )
            return tx.execute("SELECT attempts FROM outbox WHERE id = ?", (row_id,)).fetchone()[0]

    def release_claim(self, row_id: int, *, error: str, errid: int | None = None) -> None:
        """Put a row being sent back in the queue as if it had not been attempted: the
        gateway refused the account (login, credit), not this SMS."""
        with self.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET state = ?, attempts = MAX(attempts - 1, 0), last_error = ?,"
                " errid = ? WHERE id = ? AND state = ?",
                (PENDING, error, errid, row_id, SENDING),
            )

    def record_sent(self, row_id: int, *, raw: str, errid: int | None) -> None:
        self._resolve(row_id, SENT, raw=raw, errid=errid, error="")

    def record_dead(
        self, row_id: int, *, error: str, raw: str = "", errid: int | None = None
    ) -> None:
        self._resolve(row_id, DEAD, raw=raw, errid=errid, error=error)

    def record_uncertain(self, row_id: int, *, error: str) -> None:
        """Give up on a send whose outcome is unknown: never sent again (it may have gone
        out); counted as an uncertain attempt."""
        self._resolve(row_id, UNCERTAIN, raw="", errid=None, error=error, uncertain=True)

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
            tx.execute(
                "UPDATE outbox SET state = ?, next_attempt_at = ?, last_error = ?, result = ?,"
                " errid = ?, uncertain = uncertain + ? WHERE id = ?",
                (PENDING, retry_at, error, raw, errid, int(uncertain), row_id),
            )

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
        now = self.clock()
        with self.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET state = ?, result = ?, errid = ?, last_error = ?,"
                " uncertain = uncertain + ?,"
                " sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE id = ?",
                (state, raw, errid, error, int(uncertain), state, now, row_id),
            )
            message_id = tx.execute(
                "SELECT message_id FROM outbox WHERE id = ?", (row_id,)
            ).fetchone()[0]
            open_rows, dead_rows, uncertain_rows = tx.execute(
                "SELECT SUM(state IN (?, ?)), SUM(state = ?), SUM(state = ?)"
                " FROM outbox WHERE message_id = ?",
                (PENDING, SENDING, DEAD, UNCERTAIN, message_id),
            ).fetchone()
            if not open_rows:
                settled = FAILED if dead_rows else UNCERTAIN if uncertain_rows else REPLIED
                tx.execute("UPDATE messages SET state = ? WHERE id = ?", (settled, message_id))

    def in_flight(self) -> list[OutboxRow]:
        """Rows left in "sending" by a process that died: their outcome is unknown."""
        rows = self.query("SELECT * FROM outbox WHERE state = ? ORDER BY id", (SENDING,))
        return [_outbox(row) for row in rows]

    def outbox_for(self, message_id: int) -> list[OutboxRow]:
        rows = self.query("SELECT * FROM outbox WHERE message_id = ? ORDER BY id", (message_id,))
        return [_outbox(row) for row in rows]

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
            " (SELECT 1 FROM outbox o WHERE o.message_id = messages.id AND (o.state != ?"
            " OR COALESCE(o.sent_at, o.created_at) >= ?))"
        )
        params = (REPLIED, IGNORED, cutoff, cutoff, SENT, cutoff)
        messages = rows = 0
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
                    f"DELETE FROM outbox WHERE message_id IN ({marks})", ids
                ).rowcount
                messages += tx.execute(f"DELETE FROM messages WHERE id IN ({marks})", ids).rowcount
            if len(found) < batch or stop():
                return messages, rows
            time.sleep(0.01)  # let the daemon's other writers in between batches

    # -- status ----------------------------------------------------------------------

    def status(self) -> StoreStatus:
        def grouped(sql: str) -> dict[str, int]:
            return {row[0]: row[1] for row in self.query(sql)}

        last_sent = self.query("SELECT MAX(sent_at) FROM outbox")[0][0]
        last_message = self.query("SELECT MAX(journaled_at) FROM messages")[0][0]
        return StoreStatus(
            messages=grouped("SELECT state, COUNT(*) FROM messages GROUP BY state"),
            outbox=grouped("SELECT state, COUNT(*) FROM outbox GROUP BY state"),
            reasons=grouped(  # answered messages have none (older stores may still show one)
                "SELECT reason, COUNT(*) FROM messages WHERE reason != ''"
                f" AND state NOT IN ('{PROCESSED}', '{REPLIED}') GROUP BY reason"
            ),
            uncertain_sends=self.query("SELECT COALESCE(SUM(uncertain), 0) FROM outbox")[0][0],
            last_read_at=self.last_read_at(),
            last_message_at=last_message,
            last_sent_at=last_sent,
            last_read_ok_at=self.last_read_ok_at(),
            duplicates_dropped=int(self.get_meta("duplicates_dropped") or 0),
            reads_held=self.get_meta("reads_held") or "",
        )
