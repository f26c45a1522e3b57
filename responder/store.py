"""The durable store: one SQLite file in WAL mode holding the journal and the outbox.

A message read from the gateway is gone from it, so it is committed here before
anything else touches it. Every state change is one committed transaction, so a
kill -9 at any instant loses nothing: a restart finds each message and reply in the
state it reached. Plugins keep their own tables here too (``migrate``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
)
"""Core schema migrations; the database's ``user_version`` counts those applied."""

# Message states.
RECEIVED: Final = "received"  # journaled, not yet through the plugins
PROCESSED: Final = "processed"  # replies in the outbox, not all sent yet
REPLIED: Final = "replied"  # every reply sent
IGNORED: Final = "ignored"  # no reply: dropped, unanswered or vetoed (see reason)
FAILED: Final = "failed"  # a reply was given up on (see the outbox row)

# Outbox states.
PENDING: Final = "pending"
SENDING: Final = "sending"
SENT: Final = "sent"
DEAD: Final = "dead"


class StoreError(Exception):
    """The store cannot be opened or written (permissions, a full disk, a damaged file)."""


@dataclass(frozen=True)
class OutgoingSms:
    """One SMS to queue: a part of a composed reply."""

    recipients: tuple[str, ...]
    text: str
    part: int = 1
    parts: int = 1
    plugin: str = ""


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
    )


def _insert_outbox(
    tx: sqlite3.Connection, message_id: int, outgoing: Sequence[OutgoingSms], now: float
) -> None:
    tx.executemany(
        "INSERT INTO outbox (message_id, recipients, text, part, parts, plugin,"
        " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (message_id, ",".join(o.recipients), o.text, o.part, o.parts, o.plugin, now, now)
            for o in outgoing
        ],
    )


class Store:
    """The SQLite store. Safe to use from several threads: each gets its own connection."""

    def __init__(
        self, path: Path | str, *, synchronous: str = "FULL", clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.clock = clock
        self._synchronous = synchronous
        self._local = threading.local()
        self._exclusive: TextIO | None = None
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        try:
            self._migrate_core()
        except sqlite3.Error as err:
            hint = ""
            if "readonly" in str(err) or "unable to open" in str(err):
                hint = " (its folder must be writable: SQLite creates -wal and -shm files in it)"
            raise StoreError(f"cannot open the store {str(self.path)!r}: {err}{hint}") from None

    # -- connections and transactions ------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.parent.is_dir():
                raise StoreError(f"the folder of the store {str(self.path)!r} does not exist")
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
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
            except BaseException:
                # SQLite may have rolled back already (a full disk): don't hide the cause.
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
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
        for number, script in enumerate(SCHEMA[version:], start=version + 1):
            with self.transaction() as tx:
                for statement in filter(str.strip, script.split(";")):
                    tx.execute(statement)
                tx.execute(f"PRAGMA user_version = {number}")

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
        ``<store>.lock``, released by close() or when the process dies, however it dies.
        """
        lock_path = self.path.with_name(self.path.name + ".lock")
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
        """When the latest read began (before its request left)."""
        self._set_meta_unsynced("last_read_at", repr(moment))

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
        """Commit an inbound SMS; None when that gateway id was journaled before."""
        with self.transaction() as tx:
            cursor = tx.execute(
                "INSERT INTO messages (gateway_id, src, dst, text, received_at, raw, journaled_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO NOTHING",
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
        with self._unsynced(), self.transaction() as tx:
            tx.execute("UPDATE messages SET attempts = attempts + 1 WHERE id = ?", (message_id,))
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
        """Queue further replies to an already processed message (answers that came later)."""
        now = self.clock()
        with self.transaction() as tx:
            _insert_outbox(tx, message_id, outgoing, now)
            tx.execute(
                "UPDATE messages SET state = ? WHERE id = ? AND state IN (?, ?, ?)",
                (PROCESSED, message_id, IGNORED, REPLIED, PROCESSED),
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

    def record_sent(self, row_id: int, *, raw: str, errid: int | None) -> None:
        self._resolve(row_id, SENT, raw=raw, errid=errid, error="")

    def record_dead(
        self, row_id: int, *, error: str, raw: str = "", errid: int | None = None
    ) -> None:
        self._resolve(row_id, DEAD, raw=raw, errid=errid, error=error)

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

    def _resolve(self, row_id: int, state: str, *, raw: str, errid: int | None, error: str) -> None:
        now = self.clock()
        with self.transaction() as tx:
            tx.execute(
                "UPDATE outbox SET state = ?, result = ?, errid = ?, last_error = ?,"
                " sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END WHERE id = ?",
                (state, raw, errid, error, state, now, row_id),
            )
            message_id = tx.execute(
                "SELECT message_id FROM outbox WHERE id = ?", (row_id,)
            ).fetchone()[0]
            open_rows, dead_rows = tx.execute(
                "SELECT SUM(state IN (?, ?)), SUM(state = ?) FROM outbox WHERE message_id = ?",
                (PENDING, SENDING, DEAD, message_id),
            ).fetchone()
            if not open_rows:
                tx.execute(
                    "UPDATE messages SET state = ? WHERE id = ?",
                    (FAILED if dead_rows else REPLIED, message_id),
                )

    def in_flight(self) -> list[OutboxRow]:
        """Rows left in "sending" by a process that died: their outcome is unknown."""
        rows = self.query("SELECT * FROM outbox WHERE state = ? ORDER BY id", (SENDING,))
        return [_outbox(row) for row in rows]

    def outbox_for(self, message_id: int) -> list[OutboxRow]:
        rows = self.query("SELECT * FROM outbox WHERE message_id = ? ORDER BY id", (message_id,))
        return [_outbox(row) for row in rows]

    # -- status ----------------------------------------------------------------------

    def status(self) -> StoreStatus:
        def grouped(sql: str) -> dict[str, int]:
            return {row[0]: row[1] for row in self.query(sql)}

        last_sent = self.query("SELECT MAX(sent_at) FROM outbox")[0][0]
        last_message = self.query("SELECT MAX(journaled_at) FROM messages")[0][0]
        return StoreStatus(
            messages=grouped("SELECT state, COUNT(*) FROM messages GROUP BY state"),
            outbox=grouped("SELECT state, COUNT(*) FROM outbox GROUP BY state"),
            reasons=grouped(
                "SELECT reason, COUNT(*) FROM messages WHERE reason != '' GROUP BY reason"
            ),
            uncertain_sends=self.query("SELECT COALESCE(SUM(uncertain), 0) FROM outbox")[0][0],
            last_read_at=self.last_read_at(),
            last_message_at=last_message,
            last_sent_at=last_sent,
            last_read_ok_at=self.last_read_ok_at(),
        )
