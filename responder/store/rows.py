"""What both store backends share: the row converters, the SQL both dialects read alike,
and the methods whose statements are the same on SQLite and PostgreSQL (``StoreQueries``).

A backend keeps its own SQL where the dialects differ (upserts, locks, ``ANY``); its
``query`` and ``transaction`` take ``?`` placeholders on both.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeAlias

from responder.conversations import (
    KEEP,
    Conversation,
    ConversationChange,
    Keep,
)
from responder.models import Message
from responder.store.interface import (
    DEFAULT_ACCOUNT,
    HISTORY_KINDS,
    HistoryRow,
    JournalEntry,
    OutboundItem,
    OutboundRecipient,
    OutboundRow,
    OutboxRow,
    OutgoingSms,
    SenderSummary,
    StoreError,
)
from responder.store.queues import (
    QUEUE_CLAIMED,
    QUEUE_DEAD,
    QUEUE_DONE,
    QUEUE_PENDING,
    QUEUE_STATES,
    QUEUE_UNCERTAIN,
    QueueCounts,
    QueueItem,
)
from responder.store.schema import (
    OUTBOUND_SCHEDULED,
    OUTBOX,
    RECEIVED,
    SENDING,
    SENT,
)

Record: TypeAlias = Any
"""A fetched row, read by column name (``sqlite3.Row`` or the PostgreSQL store's ``Row``)."""


class Tx(Protocol):
    """The statements of one open transaction (``sqlite3.Connection`` or ``PgTransaction``)."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


def _message(row: Record) -> Message:
    return Message(
        id=row["id"],
        gateway_id=row["gateway_id"],
        src=row["src"],
        dst=row["dst"],
        text=row["text"],
        received_at=datetime.fromisoformat(row["received_at"]) if row["received_at"] else None,
        raw=row["raw"],
        account=row["account"],
    )


def _entry(row: Record) -> JournalEntry:
    return JournalEntry(
        message=_message(row),
        journaled_at=row["journaled_at"],
        state=row["state"],
        reason=row["reason"],
        decided_by=row["decided_by"],
        plugin=row["plugin"],
    )


def _of_account(account: str | None) -> tuple[str, tuple[str, ...]]:
    """A WHERE condition (and its parameters) for one account's rows, or every row."""
    return ("account = ?", (account,)) if account is not None else ("TRUE", ())


_OUTBOX_STATE: Final = {QUEUE_CLAIMED: SENDING, QUEUE_DONE: SENT}
"""The outbox's names for the states of its queue's items (the others are the same)."""


def _outbox(row: Record) -> OutboxRow:
    payload = json.loads(row["payload"])
    return OutboxRow(
        id=row["id"],
        message_id=row["message_id"] or 0,
        recipients=tuple(filter(None, payload["recipients"])),
        text=payload["text"],
        part=payload["part"],
        parts=payload["parts"],
        plugin=payload["plugin"],
        state=_OUTBOX_STATE.get(row["state"], row["state"]),
        attempts=row["attempts"],
        uncertain=row["uncertain"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        sender=payload["sender"],
        created_at=row["created_at"],
        account=row["account"],
        outbound_id=row["outbound_id"],
        schedule=payload.get("schedule"),
    )


def _outbox_payload(o: OutgoingSms) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "recipients": list(o.recipients),
        "text": o.text,
        "part": o.part,
        "parts": o.parts,
        "plugin": o.plugin,
        "sender": o.sender,
    }
    if o.schedule is not None:
        payload["schedule"] = o.schedule
    return payload


def _insert_outbound_items(
    tx: Tx,
    send_id: int,
    account: str,
    outgoing: Sequence[OutgoingSms],
    now: float,
) -> None:
    """Queue a send's SMS on the "outbox" queue (no message: ``outbound_id``)."""
    tx.executemany(
        "INSERT INTO queue_items (queue, account, payload, outbound_id, next_attempt_at,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?)",
        [
            (OUTBOX, account, _queue_json(OUTBOX, _outbox_payload(o)), send_id, now, now)
            for o in outgoing
        ],
    )


def _insert_outbound_recipients(
    tx: Tx, send_id: int, recipients: Sequence[OutboundRecipient]
) -> None:
    tx.executemany(
        "INSERT INTO outbound_recipients (outbound_id, number, status, reason, parts)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (outbound_id, number) DO NOTHING",
        [(send_id, r.number, r.status, r.reason, r.parts) for r in recipients],
    )


_OUTBOUND: Final = (
    "SELECT id, account, key, fingerprint, source, text, sender, at, flow, context, state,"
    " parts, created_at, answer FROM outbound"
)


def _outbound(row: Record) -> OutboundRow:
    return OutboundRow(
        id=row["id"],
        account=row["account"],
        key=row["key"],
        fingerprint=row["fingerprint"],
        source=row["source"],
        text=row["text"],
        sender=row["sender"],
        at=row["at"],
        flow=row["flow"],
        context=json.loads(row["context"]),
        state=row["state"],
        parts=row["parts"],
        created_at=row["created_at"],
        answer=row["answer"],
    )


def _insert_outbox(tx: Tx, message_id: int, outgoing: Sequence[OutgoingSms], now: float) -> None:
    """Queue SMS on the "outbox" queue, each answering ``message_id`` and going out through
    that message's account."""
    tx.executemany(
        "INSERT INTO queue_items (queue, account, payload, message_id, next_attempt_at,"
        " created_at) SELECT ?, account, ?, id, ?, ? FROM messages WHERE id = ?",
        [
            (
                OUTBOX,
                _queue_json(OUTBOX, _outbox_payload(o)),
                now,
                now,
                message_id,
            )
            for o in outgoing
        ],
    )


_OUTBOX_ITEM: Final = "SELECT * FROM queue_items WHERE queue = 'outbox'"
"""The outbox's items (every column: ``_outbox`` reads them)."""


_REPLY_LOOKBACK: Final = 86400.0
"""``replies_to``: how long before the window a message may have come and still count."""


_NO_ID_BOUND: Final = 2**63 - 1
"""``texts_from`` without ``before_id``: above every id."""


_CONVERSATION: Final = (
    "SELECT account, number, flow, step, fields, state, started_at, updated_at, expires_at,"
    " context, who FROM conversations"
)


def _conversation(row: Record) -> Conversation:
    return Conversation(
        number=row["number"],
        flow=row["flow"],
        step=row["step"],
        fields=json.loads(row["fields"]),
        state=row["state"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        expires_at=row["expires_at"],
        context=json.loads(row["context"]),
        who=row["who"],
        account=row["account"],
    )


_QUEUE_COLUMNS: Final = (
    "id, queue, account, key, payload, state, attempts, next_attempt_at, last_error,"
    " created_at, finished_at"
)


_QUEUE_BY_ID: Final = f"SELECT {_QUEUE_COLUMNS} FROM queue_items WHERE id = ?"


_QUEUE_BY_KEY: Final = f"SELECT {_QUEUE_COLUMNS} FROM queue_items WHERE queue = ? AND key = ?"


def _queue_json(queue: str, payload: Any) -> str:
    try:
        return json.dumps(payload, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"queue {queue!r}: the payload cannot be written as JSON: {err}") from None


def _queue_item(row: Record) -> QueueItem:
    return QueueItem(
        id=row["id"],
        queue=row["queue"],
        key=row["key"],
        payload=json.loads(row["payload"]),
        state=row["state"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        account=row["account"],
    )


def _outbox_answer(tx: Tx, item_id: int, *, raw: str, errid: int | None, uncertain: bool) -> None:
    """What the gateway answered an outbox item's attempt (and whether its outcome was
    unknown)."""
    tx.execute(
        "UPDATE queue_items SET result = ?, errid = ?, uncertain = uncertain + ? WHERE id = ?",
        (raw, errid, int(uncertain), item_id),
    )


_HISTORY_OWNER: Final = "responder.history"


_HISTORY_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS messages_by_time ON messages (account, journaled_at);"
    " CREATE INDEX IF NOT EXISTS queue_items_by_time"
    " ON queue_items (queue, account, created_at)",
)
"""The indexes ``Store.history`` reads newest first through (created on its first use)."""


def _like(text: str) -> str:
    """A LIKE pattern (``ESCAPE '\\'``) matching text that contains ``text``."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _history_window(
    at: str,
    row_id: str,
    rank: int,
    since: float | None,
    until: float | None,
    before: tuple[float, int, int] | None,
) -> tuple[list[str], list[Any]]:
    """The conditions (and their parameters) of a history source whose lines are ranked
    ``rank`` among those of the same moment: in [since, until) and before ``before``."""
    where: list[str] = []
    params: list[Any] = []
    if since is not None:
        where.append(f"{at} >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{at} < ?")
        params.append(until)
    if before is not None:
        before_at, before_rank, before_id = before
        if rank < before_rank:
            where.append(f"{at} <= ?")
            params.append(before_at)
        elif rank > before_rank:
            where.append(f"{at} < ?")
            params.append(before_at)
        else:
            where.append(f"({at}, {row_id}) < (?, ?)")
            params += [before_at, before_id]
    return where, params


class StoreQueries:
    """The store methods that read and write through ``query``, ``transaction`` and the
    backend's other methods alone, in SQL both dialects take."""

    clock: Callable[[], float]
    _history_indexed = False
    """Whether ``history`` has made sure of its indexes (``migrate``) in this process."""
    _LIKE: str = "LIKE"
    """The operator ``history`` matches text with: one that ignores case (for ASCII), as
    SQLite's LIKE does."""
    _CONTAINS: str = "instr"
    """The function giving where a text is in another (0: nowhere)."""
    _HAS_RECIPIENT: str = (
        "EXISTS (SELECT 1 FROM json_each(o.payload, '$.recipients') r WHERE r.value = ?)"
    )
    """Whether an outbox item's JSON payload lists the number bound to its placeholder."""
    _PAYLOAD_TEXT: str = "json_extract(o.payload, '$.text')"
    """An outbox item's text, from its JSON payload."""

    if TYPE_CHECKING:

        def query(
            self,
            sql: str,
            params: Sequence[Any] | dict[str, Any] = (),
            *,
            missing_ok: bool = False,
        ) -> list[Any]: ...

        def set_meta(self, key: str, value: str) -> None: ...

        def migrate(self, owner: str, steps: Sequence[str | Mapping[str, str]]) -> None: ...

        def _count_attempt(self, message_id: int, step: int) -> int: ...

        def _resolve(
            self,
            row_id: int,
            state: str,
            *,
            raw: str,
            errid: int | None,
            error: str,
            uncertain: bool = False,
        ) -> None: ...

        def change_conversations(
            self, changes: Sequence[ConversationChange]
        ) -> list[Conversation | None]: ...

    def get_meta(self, key: str) -> str | None:
        rows = self.query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_reads_held(self, reason: str) -> None:
        """Record why the daemon holds reading ("" once it reads again), for ``status``.

        Best effort: the store may be what cannot be written.
        """
        with suppress(StoreError):
            self.set_meta("reads_held", reason)

    def get_message(self, message_id: int) -> Message | None:
        rows = self.query("SELECT * FROM messages WHERE id = ?", (message_id,))
        return _message(rows[0]) if rows else None

    def message_state(self, message_id: int) -> tuple[str, str]:
        row = self.query("SELECT state, reason FROM messages WHERE id = ?", (message_id,))[0]
        return row["state"], row["reason"]

    def next_unprocessed(self, *, account: str | None = DEFAULT_ACCOUNT) -> Message | None:
        """The account's (None: any account's) oldest message no plugin has finished with."""
        where, params = _of_account(account)
        rows = self.query(
            f"SELECT * FROM messages WHERE state = ? AND {where} ORDER BY id LIMIT 1",
            (RECEIVED, *params),
        )
        return _message(rows[0]) if rows else None

    def begin_processing(self, message_id: int) -> int:
        """Count an attempt to process a message, before any plugin sees it; returns the count.

        Not flushed: a count lost to a power cut only allows one attempt more.
        """
        return self._count_attempt(message_id, +1)

    def uncount_attempt(self, message_id: int) -> None:
        """Take back an attempt that a store failure ended: only a plugin's failure counts.

        Raises StoreError when the store cannot take even this write.
        """
        self._count_attempt(message_id, -1)

    def messages_since(
        self, moment: float, *, account: str | None = DEFAULT_ACCOUNT
    ) -> list[Message]:
        return [entry.message for entry in self.journal_since(moment, account=account)]

    def due_outbox(
        self,
        limit: int = 20,
        *,
        account: str | None = DEFAULT_ACCOUNT,
        held: Sequence[str] = (),
    ) -> list[OutboxRow]:
        """Rows due for a send attempt, oldest first: the account's, or (None) any
        account's but those ``held``."""
        where, params = _of_account(account)
        if held:
            where += f" AND account NOT IN ({', '.join('?' * len(held))})"
            params = (*params, *held)
        rows = self.query(
            f"{_OUTBOX_ITEM} AND state = ? AND next_attempt_at <= ? AND {where}"
            " ORDER BY id LIMIT ?",
            (QUEUE_PENDING, self.clock(), *params, limit),
        )
        return [_outbox(row) for row in rows]

    def record_sent(self, row_id: int, *, raw: str, errid: int | None) -> None:
        self._resolve(row_id, QUEUE_DONE, raw=raw, errid=errid, error="")

    def record_dead(
        self, row_id: int, *, error: str, raw: str = "", errid: int | None = None
    ) -> None:
        self._resolve(row_id, QUEUE_DEAD, raw=raw, errid=errid, error=error)

    def record_uncertain(self, row_id: int, *, error: str) -> None:
        """Give up on a send whose outcome is unknown: never sent again (it may have gone
        out); counted as an uncertain attempt."""
        self._resolve(row_id, QUEUE_UNCERTAIN, raw="", errid=None, error=error, uncertain=True)

    def in_flight(self, *, account: str | None = DEFAULT_ACCOUNT) -> list[OutboxRow]:
        """Rows left "sending" by a process that died (their outcome is unknown): the
        account's, or every account's (None)."""
        where, params = _of_account(account)
        rows = self.query(
            f"{_OUTBOX_ITEM} AND state = ? AND {where} ORDER BY id", (QUEUE_CLAIMED, *params)
        )
        return [_outbox(row) for row in rows]

    def outbox_for(self, message_id: int) -> list[OutboxRow]:
        rows = self.query(f"{_OUTBOX_ITEM} AND message_id = ? ORDER BY id", (message_id,))
        return [_outbox(row) for row in rows]

    def outbound_find(self, key: str, *, account: str = DEFAULT_ACCOUNT) -> OutboundRow | None:
        rows = self.query(f"{_OUTBOUND} WHERE account = ? AND key = ?", (account, key))
        return _outbound(rows[0]) if rows and key else None

    def outbound_items(self, send_id: int) -> list[OutboundItem]:
        rows = self.query(f"{_OUTBOX_ITEM} AND outbound_id = ? ORDER BY id", (send_id,))
        items = []
        for row in rows:
            outbox = _outbox(row)
            items.append(
                OutboundItem(
                    id=outbox.id,
                    recipients=outbox.recipients,
                    part=outbox.part,
                    parts=outbox.parts,
                    state=outbox.state,
                    errid=row["errid"],
                    error=row["last_error"],
                    result=row["result"] or "",
                )
            )
        return items

    def outbound_due(self, *, limit: int = 1) -> list[OutboundRow]:
        rows = self.query(
            f"{_OUTBOUND} WHERE state = ? AND at <= ? ORDER BY at, id LIMIT ?",
            (OUTBOUND_SCHEDULED, self.clock(), limit),
        )
        return [_outbound(row) for row in rows]

    def outbound_next_due(self) -> float | None:
        rows = self.query("SELECT MIN(at) FROM outbound WHERE state = ?", (OUTBOUND_SCHEDULED,))
        return rows[0][0] if rows else None

    def queue_get(self, item_id: int) -> QueueItem | None:
        rows = self.query(_QUEUE_BY_ID, (item_id,))
        return _queue_item(rows[0]) if rows else None

    def queue_items(
        self, queue: str, *, state: str, limit: int = 100, account: str = "default"
    ) -> list[QueueItem]:
        """Items of ``queue`` in ``state``, oldest first."""
        rows = self.query(
            f"SELECT {_QUEUE_COLUMNS} FROM queue_items WHERE queue = ? AND account = ?"
            " AND state = ? ORDER BY id LIMIT ?",
            (queue, account, state, limit),
        )
        return [_queue_item(row) for row in rows]

    def queue_next_due(self, queue: str, *, account: str = "default") -> float | None:
        """When the soonest pending item of ``queue`` is due (maybe past), or None."""
        rows = self.query(
            "SELECT MIN(next_attempt_at) FROM queue_items WHERE queue = ? AND account = ?"
            " AND state = ?",
            (queue, account, QUEUE_PENDING),
        )
        return rows[0][0] if rows else None

    def get_conversation(
        self, number: str, *, account: str = DEFAULT_ACCOUNT
    ) -> Conversation | None:
        rows = self.query(
            f"{_CONVERSATION} WHERE account = ? AND number = ?"
            " AND (expires_at IS NULL OR expires_at > ?)",
            (account, number, self.clock()),
        )
        return _conversation(rows[0]) if rows else None

    def start_conversation(self, conversation: Conversation) -> Conversation:
        change = ConversationChange(
            "start",
            conversation.account,
            conversation.number,
            conversation.updated_at,
            started=conversation,
        )
        result = self.change_conversations([change])[0]
        assert result is not None
        return result

    def move_conversation(
        self,
        number: str,
        *,
        step: str | None = None,
        fields: Mapping[str, str] | None = None,
        expires_at: float | Keep | None = KEEP,
        expect_step: str | None = None,
        account: str = DEFAULT_ACCOUNT,
    ) -> Conversation | None:
        change = ConversationChange(
            "move",
            account,
            number,
            self.clock(),
            step=step,
            fields=dict(fields or {}),
            expires_at=expires_at,
            expect_step=expect_step,
        )
        return self.change_conversations([change])[0]

    def end_conversation(
        self, number: str, *, account: str = DEFAULT_ACCOUNT
    ) -> Conversation | None:
        change = ConversationChange("end", account, number, self.clock())
        return self.change_conversations([change])[0]

    def conversations(
        self,
        *,
        state: str | None = None,
        account: str | None = DEFAULT_ACCOUNT,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Conversation]:
        where = ["(expires_at IS NULL OR expires_at > ?)"]
        params: list[object] = [self.clock()]
        if state is not None:
            where.append("state = ?")
            params.append(state)
        if account is not None:
            where.append("account = ?")
            params.append(account)
        rows = self.query(
            f"{_CONVERSATION} WHERE {' AND '.join(where)}"
            " ORDER BY updated_at DESC, number LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_conversation(row) for row in rows]

    def accounts(self) -> list[str]:
        rows = self.query(
            "SELECT account FROM messages UNION SELECT account FROM queue_items"
            " UNION SELECT account FROM conversations"
        )
        return sorted({row[0] for row in rows} | {DEFAULT_ACCOUNT})

    def journal_since(
        self, moment: float, *, account: str | None = DEFAULT_ACCOUNT
    ) -> list[JournalEntry]:
        where, params = _of_account(account)
        rows = self.query(
            f"SELECT * FROM messages WHERE journaled_at >= ? AND {where} ORDER BY id",
            (moment, *params),
        )
        return [_entry(row) for row in rows]

    def count_journaled(self, since: float, *, account: str | None = None) -> int:
        """How many messages were journaled at or after ``since`` (``account`` None: all)."""
        where, params = _of_account(account)
        rows = self.query(
            f"SELECT COUNT(*) FROM messages WHERE journaled_at >= ? AND {where}",
            (since, *params),
        )
        return int(rows[0][0])

    def outbox_depth(self, *, account: str | None = None) -> int:
        """SMS waiting to be sent: pending or being sent (``account`` None: every account)."""
        where, params = _of_account(account)
        rows = self.query(
            f"SELECT COUNT(*) FROM queue_items WHERE queue = ? AND state IN (?, ?) AND {where}",
            (OUTBOX, QUEUE_PENDING, QUEUE_CLAIMED, *params),
        )
        return int(rows[0][0])

    def outbound_get(
        self, send_id: int, *, account: str | None = DEFAULT_ACCOUNT
    ) -> OutboundRow | None:
        where, params = _of_account(account)
        rows = self.query(f"{_OUTBOUND} WHERE id = ? AND {where}", (send_id, *params))
        return _outbound(rows[0]) if rows else None

    def outbound_recipients(
        self, send_id: int, *, status: str | None = None
    ) -> list[OutboundRecipient]:
        rows = self.query(
            "SELECT number, status, reason, parts FROM outbound_recipients"
            " WHERE outbound_id = ? AND (CAST(? AS TEXT) IS NULL OR status = ?) ORDER BY number",
            (send_id, status, status),
        )
        return [OutboundRecipient(r["number"], r["status"], r["reason"], r["parts"]) for r in rows]

    def queue_counts(self, queue: str, *, account: str = "default") -> QueueCounts:
        rows = self.query(
            "SELECT state, COUNT(*) FROM queue_items WHERE queue = ? AND account = ?"
            " GROUP BY state",
            (queue, account),
        )
        return QueueCounts(**{row[0]: int(row[1]) for row in rows if row[0] in QUEUE_STATES})

    def texts_from(
        self,
        number: str,
        *,
        since: float,
        until: float | None = None,
        before_id: int | None = None,
        limit: int,
        account: str | None = DEFAULT_ACCOUNT,
    ) -> list[str]:
        """The texts of the latest messages from ``number`` journaled between ``since`` and
        ``until`` (default: now), newest first, at most ``limit``; with ``before_id`` only
        those journaled before that message (a smaller id)."""
        until = self.clock() if until is None else until
        before = _NO_ID_BOUND if before_id is None else before_id
        rows = self.query(
            "SELECT text FROM messages"
            " WHERE src = ? AND journaled_at >= ? AND journaled_at <= ? AND id < ?"
            " AND (CAST(? AS TEXT) IS NULL OR account = ?) ORDER BY id DESC LIMIT ?",
            (number, since, until, before, account, account, max(limit, 0)),
        )
        return [row[0] for row in rows]

    def counts_by_reason(self, decided_by: str, *, account: str | None = None) -> dict[str, int]:
        """Messages whose drop or veto ``decided_by`` decided, counted by reason (whatever
        became of them later). Rows of older stores, whose reason was written
        "<decided_by>: <reason>", are counted under their reason too."""
        prefix = f"{decided_by}: "
        counts: dict[str, int] = {}
        for reason, count in self.query(
            "SELECT reason, COUNT(*) FROM messages WHERE decided_by = ? AND reason != ''"
            " AND (CAST(? AS TEXT) IS NULL OR account = ?) GROUP BY reason",
            (decided_by, account, account),
        ):
            counts[reason] = counts.get(reason, 0) + int(count)
        for reason, count in self.query(
            "SELECT reason, COUNT(*) FROM messages WHERE decided_by = ''"
            " AND substr(reason, 1, ?) = ? AND (CAST(? AS TEXT) IS NULL OR account = ?)"
            " GROUP BY reason",
            (len(prefix), prefix, account, account),
        ):
            kind = reason[len(prefix) :]
            counts[kind] = counts.get(kind, 0) + int(count)
        return counts

    def latest_senders(
        self, *, account: str | None = DEFAULT_ACCOUNT, limit: int = 50, offset: int = 0
    ) -> list[SenderSummary]:
        rows = self.query(
            "SELECT m.src, m.account, m.id, m.journaled_at, m.text FROM messages m JOIN"
            " (SELECT MAX(id) AS id FROM messages WHERE (CAST(? AS TEXT) IS NULL OR account = ?)"
            "  GROUP BY account, src ORDER BY 1 DESC LIMIT ? OFFSET ?) AS latest"
            " ON m.id = latest.id ORDER BY m.id DESC",
            (account, account, max(limit, 0), max(offset, 0)),
        )
        return [SenderSummary(row[0], row[1], int(row[2]), float(row[3]), row[4]) for row in rows]

    def history(
        self,
        *,
        account: str | None = DEFAULT_ACCOUNT,
        number: str | None = None,
        since: float | None = None,
        until: float | None = None,
        grep: str | None = None,
        direction: str | None = None,
        before: tuple[float, int, int] | None = None,
        limit: int = 100,
    ) -> list[HistoryRow]:
        """The account's history, newest first: each source (messages, outbox items, sent
        by hand) is read in key order through an index on its time, at most ``limit`` rows
        each, and the three merged."""
        limit = max(limit, 0)
        if not limit:
            return []
        if not self._history_indexed:
            self.migrate(_HISTORY_OWNER, _HISTORY_INDEXES)
            self._history_indexed = True
        rows: list[HistoryRow] = []
        if direction in (None, "in"):
            rows += self._history_in(account, number, since, until, grep, before, limit)
        if direction in (None, "out"):
            rows += self._history_outbox(account, number, since, until, grep, before, limit)
            rows += self._history_hand(number, since, until, grep, before, limit)
        rows.sort(key=lambda row: row.key, reverse=True)
        return rows[:limit]

    def _history_in(
        self,
        account: str | None,
        number: str | None,
        since: float | None,
        until: float | None,
        grep: str | None,
        before: tuple[float, int, int] | None,
        limit: int,
    ) -> list[HistoryRow]:
        where, params = _history_window("journaled_at", "id", 0, since, until, before)
        if account is not None:
            where.append("account = ?")
            params.append(account)
        if number is not None:
            where.append("src = ?")
            params.append(number)
        if grep:
            where.append(f"text {self._LIKE} ? ESCAPE '\\'")
            params.append(_like(grep))
        sql = (
            "SELECT id, journaled_at, src, text, state, plugin, decided_by, reason FROM messages"
            f" WHERE {' AND '.join(where) or 'TRUE'} ORDER BY journaled_at DESC, id DESC LIMIT ?"
        )
        return [
            HistoryRow(
                kind="in",
                id=row[0],
                at=row[1],
                numbers=(row[2],),
                text=row[3],
                state=row[4],
                plugin=row[5],
                decided_by=row[6],
                reason=row[7],
            )
            for row in self.query(sql, (*params, limit))
        ]

    def _history_outbox(
        self,
        account: str | None,
        number: str | None,
        since: float | None,
        until: float | None,
        grep: str | None,
        before: tuple[float, int, int] | None,
        limit: int,
    ) -> list[HistoryRow]:
        found: list[HistoryRow] = []
        for kind in ("reply", "send"):
            where, params = _history_window(
                "o.created_at", "o.id", HISTORY_KINDS.index(kind), since, until, before
            )
            where.append("o.queue = 'outbox'")
            where.append(
                "o.outbound_id IS NULL" if kind == "reply" else "o.outbound_id IS NOT NULL"
            )
            if account is not None:
                where.append("o.account = ?")
                params.append(account)
            if number is not None:
                # a cheap look for the quoted number in the JSON first, then the exact test
                where.append(f"{self._CONTAINS}(o.payload, ?) > 0 AND {self._HAS_RECIPIENT}")
                params += [json.dumps(number), number]
            if grep:
                where.append(f"{self._PAYLOAD_TEXT} {self._LIKE} ? ESCAPE '\\'")
                params.append(_like(grep))
            send_columns = "o.outbound_id, s.source" if kind == "send" else "NULL, ''"
            join = " LEFT JOIN outbound s ON s.id = o.outbound_id" if kind == "send" else ""
            sql = (
                f"SELECT o.id, o.created_at, o.payload, o.state, o.message_id, o.errid,"
                f" o.last_error, {send_columns} FROM queue_items o{join}"
                f" WHERE {' AND '.join(where)} ORDER BY o.created_at DESC, o.id DESC LIMIT ?"
            )
            for row in self.query(sql, (*params, limit)):
                payload = json.loads(row[2])
                found.append(
                    HistoryRow(
                        kind=kind,
                        id=row[0],
                        at=row[1],
                        numbers=tuple(filter(None, payload.get("recipients", ()))),
                        text=payload.get("text", ""),
                        state=_OUTBOX_STATE.get(row[3], row[3]),
                        plugin=payload.get("plugin", ""),
                        message_id=row[4],
                        send_id=row[7],
                        source=row[8] or "",
                        part=payload.get("part", 1),
                        parts=payload.get("parts", 1),
                        errid=row[5],
                        error=row[6],
                    )
                )
        return found

    def _history_hand(
        self,
        number: str | None,
        since: float | None,
        until: float | None,
        grep: str | None,
        before: tuple[float, int, int] | None,
        limit: int,
    ) -> list[HistoryRow]:
        where, params = _history_window(
            "at", "id", HISTORY_KINDS.index("hand"), since, until, before
        )
        if number is not None:
            where.append("',' || recipients || ',' LIKE ? ESCAPE '\\'")
            params.append(f"%,{_like(number)[1:-1]},%")
        if grep:
            where.append(f"text {self._LIKE} ? ESCAPE '\\'")
            params.append(_like(grep))
        sql = (
            "SELECT id, at, recipients, text, state, reason, errid, part, parts"
            f" FROM sent_by_hand WHERE {' AND '.join(where) or 'TRUE'}"
            " ORDER BY at DESC, id DESC LIMIT ?"
        )
        return [
            HistoryRow(
                kind="hand",
                id=row[0],
                at=row[1],
                numbers=tuple(filter(None, row[2].split(","))),
                text=row[3],
                state=row[4],
                plugin="send",
                reason=row[5],
                errid=row[6],
                part=row[7],
                parts=row[8],
            )
            for row in self.query(sql, (*params, limit), missing_ok=True)
        ]
