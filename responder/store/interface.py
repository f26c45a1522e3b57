"""What every store backend provides: its errors, the values it takes and returns, and
the methods the core and plugins call on the journal, outbox, meta and plugins' own
tables (``CoreBackend``; the durable queues' methods are ``QueueBackend`` in queues.py,
and ``StoreBackend`` in backend.py is both).

SQLite (``responder.store.sqlite.Store``) and PostgreSQL
(``responder.store.postgres.PostgresStore``) implement ``StoreBackend``; both pass the
contract tests (tests/test_store_contract.py) without a change to the core or plugins.

Rules every backend keeps:

- Every failure is a ``StoreError``, never the driver's own exception: a failure of the
  store itself (disk full, I/O, permissions, a damaged file, a lock never released) is a
  plain ``StoreError``; a statement the store refused (malformed SQL, a missing table, a
  broken constraint) is a ``StatementError``, the caller's bug (``is_storage_failure``).
- Every change a method makes is one committed transaction: a crash at any instant
  leaves each message and reply in a state it reached.
- Every row that belongs to an account carries it (messages, outbox rows, queue items,
  conversations).
  There is one account, "default", until several are served; methods that pick rows to
  work on take ``account`` and see that account's rows only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from responder.conversations import KEEP, Conversation, ConversationChange, Keep
from responder.models import InboundSms, Message

DEFAULT_ACCOUNT: Final = "default"
"""The account of every row until several accounts are served."""


def read_meta_key(name: str, account: str = DEFAULT_ACCOUNT) -> str:
    """The meta key of an account's read bookkeeping ("last_read_at", "last_read_end",
    "last_read_ok_at") or state ("account"): ``name`` itself for "default" (as a
    single-account store always kept it), ``name@account`` for the others."""
    return name if account == DEFAULT_ACCOUNT else f"{name}@{account}"


class StoreError(Exception):
    """The store failed: it cannot be opened or written (permissions, a full disk, a damaged
    file), or it refused a statement (``StatementError``)."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code
        """The backend's own name for the failure ("SQLITE_FULL"), or ""."""


class StatementError(StoreError):
    """The store refused a statement: malformed SQL, a missing table, a broken constraint.

    The caller's bug (a plugin's query on its own tables), not a failure of the store.
    """


class JournalUnwritable(StoreError):
    """The read-start mark could not be written: a message read now might not be journaled."""


class NotClaimed(StoreError):
    """A claim took nothing: the row was not pending (another sender claimed it, or it
    was settled or cancelled meanwhile). Not a failure of the store: skip the row."""


def is_storage_failure(err: BaseException) -> bool:
    """Whether an error is the store's own failure (disk full, I/O, read-only, damaged), as
    opposed to a statement it refused (a bug in a plugin's SQL) or any other error."""
    return isinstance(err, StoreError) and not isinstance(err, (StatementError, NotClaimed))


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
    schedule: float | None = None
    """Handed to the platform's own schedule (its ``time`` parameter) for this moment
    (epoch seconds); None: sent now."""


@dataclass(frozen=True)
class ExchangeLine:
    """One SMS of a sender's exchange with the account (``StoreBackend.exchange``)."""

    at: float
    """When it was journaled (in) or queued or sent by hand (out), epoch seconds."""
    direction: str
    """"in" (from the number) or "out" (to it)."""
    text: str
    """The message, or one part of a reply as it went out."""
    via: str = ""
    """Out: the plugin whose reply it is ("send" for one sent by hand); in: ""."""


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
    account: str = DEFAULT_ACCOUNT
    """The account it goes out through: the account of the message it answers."""
    outbound_id: int | None = None
    """The outbound send it belongs to (then ``message_id`` is 0), or None."""
    schedule: float | None = None
    """The platform's schedule it is handed to (``OutgoingSms.schedule``), or None."""


@dataclass(frozen=True)
class NewOutbound:
    """A send no message asked for, as ``outbound_create`` stores it."""

    text: str
    account: str = DEFAULT_ACCOUNT
    key: str = ""
    """The idempotency key ("" for none): unique per account."""
    fingerprint: str = ""
    """What identifies the request the key came with."""
    source: str = ""
    sender: str | None = None
    at: float | None = None
    flow: str = ""
    context: Mapping[str, Any] = field(default_factory=dict)
    state: str = "queued"
    """"queued", or "scheduled" (held until ``at``; nothing in the outbox yet)."""
    parts: int = 0
    answer: str = ""
    """The first answer to the request, as JSON (given again to a repeated key)."""


@dataclass(frozen=True)
class OutboundRow(NewOutbound):
    """A stored send."""

    id: int = 0
    created_at: float = 0.0


@dataclass(frozen=True)
class OutboundRecipient:
    """One number of a send and its outcome when queued, released or cancelled."""

    number: str
    status: str
    """"queued", "scheduled", "suppressed", "invalid" or "cancelled"."""
    reason: str = ""
    parts: int = 0


@dataclass(frozen=True)
class OutboundItem:
    """One outbox item of a send: a request to some of its numbers, and how it went."""

    id: int
    recipients: tuple[str, ...]
    part: int
    parts: int
    state: str
    """As the outbox names it: pending, sending, sent, dead or uncertain."""
    errid: int | None
    error: str
    result: str = ""
    """The gateway's answer to its last attempt, as received ("" before one): an accepted
    request's answer lists the numbers it refused (``faile``)."""


@dataclass(frozen=True)
class JournalEntry:
    """A journaled message with what the store knows of it."""

    message: Message
    journaled_at: float
    state: str
    reason: str
    """Why it got no reply ("" when answered)."""
    decided_by: str
    """Who decided a drop or veto (a plugin's name), or ""."""
    plugin: str
    """The plugin that answered, or ""."""


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
    unanswered: dict[str, int] = field(default_factory=dict)
    """Messages not answered, by who decided: a plugin's name (``decided_by``), else the
    reason itself ("no reply", "empty reply")."""
    sends: dict[tuple[str, str], int] = field(default_factory=dict)
    """Outgoing SMS that were attempted, by (result, errid): result is "sent", "dead",
    "uncertain" or "retrying"; errid the gateway's last errid ("" when no answer came)."""


@dataclass(frozen=True)
class SenderSummary:
    """A number that wrote to an account, with its latest message (``latest_senders``)."""

    number: str
    """The sender as journaled."""
    account: str
    message_id: int
    at: float
    """When its latest message was journaled, epoch seconds."""
    text: str
    """Its latest message."""


@dataclass(frozen=True)
class TrafficHour:
    """SMS in and out of an account in one hour (``CoreBackend.traffic``)."""

    start: float
    """The hour's start, epoch seconds (``since`` plus whole hours)."""
    received: int
    """Messages journaled."""
    queued: int
    """SMS parts queued to go out (replies and sends; one item per request)."""


HISTORY_KINDS: Final = ("in", "reply", "send", "hand")
"""The kinds of ``HistoryRow``, in the order lines of the same moment are ranked: a
message, a reply part, a part of an outbound send, an SMS sent by hand."""


@dataclass(frozen=True)
class HistoryRow:
    """One line of the account's history (``CoreBackend.history``): a message that came
    in, or one SMS (a part, to one or more numbers) that went or is to go out."""

    kind: str
    """"in" (a journaled message), "reply" (an outbox item answering a message), "send"
    (an outbox item of an outbound send), "hand" (a request of ``responder send``)."""
    id: int
    """The row's id among those of its kind."""
    at: float
    """Journaled (in), queued (reply, send) or sent by hand, epoch seconds."""
    numbers: tuple[str, ...]
    """In: the sender; out: the recipients."""
    text: str
    state: str
    """In: the message's state; reply and send: the outbox's name of the item's state
    (pending, sending, sent, dead, uncertain); hand: the request's state."""
    plugin: str = ""
    """In: the plugin that answered; reply: the plugin whose reply it is."""
    decided_by: str = ""
    reason: str = ""
    """In: why it got no reply; hand: why suppressed or failed."""
    message_id: int | None = None
    """Reply: the message it answers."""
    send_id: int | None = None
    """Send: the outbound send's id."""
    source: str = ""
    """Send: who asked for it ("api:crm", "broadcast")."""
    part: int = 1
    parts: int = 1
    errid: int | None = None
    error: str = ""
    """Out: the last error of its attempts."""

    @property
    def key(self) -> tuple[float, int, int]:
        """Where it stands in the history: lines are ordered by this, newest first."""
        return (self.at, HISTORY_KINDS.index(self.kind), self.id)


class Row(Protocol):
    """A row read by ``query``: by column name or position."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What ``Transaction.execute`` returns."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Transaction(Protocol):
    """The handle ``CoreBackend.transaction()`` yields: SQL on a plugin's own tables."""

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...


class CoreBackend(Protocol):
    """The store as the core and plugins use it, but for the durable queues.

    Plugins call the message, outbox and status methods, and keep their own tables
    with ``migrate``, ``query`` and ``transaction`` (SQL on the plugin's OWN tables only,
    never on the core's: messages, outbox, meta, queue_items, conversations,
    plugin_schema; the SQL is the portable subset both backends run, with ``?``
    placeholders: docs/store.md).
    """

    path: Path
    clock: Callable[[], float]
    """The store's clock (epoch seconds): the time it stamps rows with."""

    @property
    def dialect(self) -> str:
        """The SQL dialect of ``query``, ``transaction`` and ``migrate``: "sqlite" or
        "postgresql" (docs/store.md: the SQL that works on both)."""
        ...

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        """Release every connection and the exclusive claim. Whoever opened it closes it."""

    def claim_exclusive(self) -> None:
        """StoreError naming the holder when another daemon uses this store."""

    def verify(self) -> None:
        """StoreError when the store is damaged."""

    # -- plugins' own tables -------------------------------------------------------------

    def migrate(self, owner: str, steps: Sequence[str | Mapping[str, str]]) -> None:
        """Apply the steps of ``owner``'s schema it has not applied yet, in one transaction.
        A step is SQL for every backend, or ``{dialect: sql}`` where their DDL differs."""

    def query(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = (), *, missing_ok: bool = False
    ) -> list[Any]:
        """Rows (``Row``) of a read on the caller's own tables; ``missing_ok``: a table not
        created yet reads as empty."""
        ...

    def transaction(self) -> AbstractContextManager[Transaction]:
        """A write transaction on the caller's own tables, committed on success and rolled
        back on an exception."""
        ...

    # -- meta ------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    # The read bookkeeping is per account (meta keys ``read_meta_key``).

    def last_read_at(self, *, account: str = DEFAULT_ACCOUNT) -> float | None: ...

    def set_last_read_at(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None:
        """JournalUnwritable when it cannot be written: the read must not go out."""

    def last_read_end(self, *, account: str = DEFAULT_ACCOUNT) -> float | None: ...

    def set_last_read_end(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None: ...

    def last_read_ok_at(self, *, account: str = DEFAULT_ACCOUNT) -> float | None: ...

    def set_last_read_ok_at(self, moment: float, *, account: str = DEFAULT_ACCOUNT) -> None: ...

    def journal_problem(self) -> str:
        """Why the journal could not take a message now ("" when it can)."""
        ...

    def probe_write(self) -> str:
        """Try a small write; "" or why it failed."""
        ...

    def set_reads_held(self, reason: str) -> None:
        """Best effort: record why reading is held ("" once it resumes)."""

    # -- messages --------------------------------------------------------------------------

    def journal(self, sms: InboundSms, *, account: str = DEFAULT_ACCOUNT) -> Message | None:
        """Commit an inbound SMS; None (and counted) when the account journaled it before."""
        ...

    def get_message(self, message_id: int) -> Message | None: ...

    def message_state(self, message_id: int) -> tuple[str, str]:
        """(state, reason) of a message."""
        ...

    def next_unprocessed(self, *, account: str | None = DEFAULT_ACCOUNT) -> Message | None:
        """The oldest message not processed yet, of ``account`` (None: of any account)."""
        ...

    def begin_processing(self, message_id: int) -> int:
        """Count an attempt to process a message; returns the count."""
        ...

    def uncount_attempt(self, message_id: int) -> None: ...

    def messages_since(
        self, moment: float, *, account: str | None = DEFAULT_ACCOUNT
    ) -> list[Message]:
        """Messages journaled at or after ``moment``, oldest first (``account`` None: all)."""
        ...

    def journal_since(
        self, moment: float, *, account: str | None = DEFAULT_ACCOUNT
    ) -> list[JournalEntry]:
        """As ``messages_since``, with when each was journaled and what became of it."""
        ...

    def count_journaled(self, since: float, *, account: str | None = None) -> int:
        """How many messages were journaled at or after ``since``."""
        ...

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
        changes made while it was handled, in one transaction; nothing for a message
        already finished."""

    def add_replies(self, message_id: int, outgoing: Sequence[OutgoingSms]) -> None:
        """Queue further replies to an already processed message."""

    def note_reason(self, message_id: int, reason: str, *, decided_by: str = "") -> None: ...

    # -- outbox ----------------------------------------------------------------------------
    # The outbox is the durable queue "outbox" (``OUTBOX``; QueueBackend's items): these name
    # its states as the outbox does (claimed is "sending", done is "sent") and make the
    # queue's transitions, keeping the gateway's answer, and settle a message once every
    # row of it is final, in the transaction of that row's final state.

    def due_outbox(
        self,
        limit: int = 20,
        *,
        account: str | None = DEFAULT_ACCOUNT,
        held: Sequence[str] = (),
    ) -> list[OutboxRow]:
        """Rows due for a send attempt, oldest first, of ``account`` (None: of any account
        but those in ``held``, whose sends wait)."""
        ...

    def claim_send(self, row_id: int) -> int:
        """Mark a row as being sent before the request leaves; returns the attempt number.
        NotClaimed when the row is not pending (claimed by another sender, settled or
        cancelled): nothing was changed and it must not be sent."""
        ...

    def release_claim(self, row_id: int, *, error: str, errid: int | None = None) -> None: ...

    def record_sent(self, row_id: int, *, raw: str, errid: int | None) -> None: ...

    def record_dead(
        self, row_id: int, *, error: str, raw: str = "", errid: int | None = None
    ) -> None: ...

    def record_uncertain(self, row_id: int, *, error: str) -> None: ...

    def record_retry(
        self,
        row_id: int,
        *,
        error: str,
        retry_at: float,
        raw: str = "",
        errid: int | None = None,
        uncertain: bool = False,
    ) -> None: ...

    def in_flight(self, *, account: str | None = DEFAULT_ACCOUNT) -> list[OutboxRow]:
        """Rows left "sending" by a process that died (``account`` None: of every one)."""
        ...

    def outbox_for(self, message_id: int) -> list[OutboxRow]: ...

    def outbox_depth(self, *, account: str | None = None) -> int:
        """SMS waiting to be sent (pending or sending)."""
        ...

    # -- sent by hand (``responder send``) ---------------------------------------------------

    def hand_sent_start(
        self, numbers: Sequence[str], text: str, *, part: int = 1, parts: int = 1, raw: bool
    ) -> int:
        """Record a request sent by hand before it leaves; returns its id."""
        ...

    def hand_sent_finish(
        self, row_id: int, state: str, *, reason: str, errid: int | None = None, result: str = ""
    ) -> None: ...

    def hand_sent_suppressed(self, text: str, numbers: Sequence[tuple[str, str]]) -> None: ...

    # -- outbound sends (responder.outbound) -------------------------------------------------
    # A send's row, its recipients, their outbox items (``queue_items.outbound_id``, with
    # no message) and the conversations it starts are written in one transaction.

    def outbound_create(
        self,
        send: NewOutbound,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> tuple[OutboundRow, bool]:
        """Store a send with its recipients, queue its SMS and start its conversations, in
        one transaction; (the send, True). With a key the account used before, nothing is
        written: (the send stored under it, False)."""
        ...

    def outbound_add(
        self,
        send_id: int,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> None:
        """Add recipients (numbers already in the send are left as they are), their SMS and
        conversations to a send, in one transaction."""

    def outbound_known(self, send_id: int, numbers: Sequence[str]) -> set[str]:
        """Which of ``numbers`` the send has already."""
        ...

    def outbound_find(self, key: str, *, account: str = DEFAULT_ACCOUNT) -> OutboundRow | None:
        """The send stored under an idempotency key."""
        ...

    def outbound_get(
        self, send_id: int, *, account: str | None = DEFAULT_ACCOUNT
    ) -> OutboundRow | None:
        """A send by id (``account`` None: in any account)."""
        ...

    def outbound_recipients(
        self, send_id: int, *, status: str | None = None
    ) -> list[OutboundRecipient]:
        """A send's recipients (of ``status``), by number."""
        ...

    def outbound_items(self, send_id: int) -> list[OutboundItem]:
        """A send's outbox items, oldest first."""
        ...

    def outbound_due(self, *, limit: int = 1) -> list[OutboundRow]:
        """Scheduled sends whose time has come (every account), soonest first."""
        ...

    def outbound_next_due(self) -> float | None:
        """When the soonest scheduled send falls due, or None."""
        ...

    def outbound_release(
        self,
        send_id: int,
        recipients: Sequence[OutboundRecipient],
        outgoing: Sequence[OutgoingSms],
        conversations: Sequence[ConversationChange] = (),
    ) -> bool:
        """Release a scheduled send: its recipients' new outcomes, its SMS queued and its
        conversations started, in one transaction; False (nothing written) when it is no
        longer scheduled (cancelled, or released by another process)."""
        ...

    def outbound_cancel(self, send_id: int, *, account: str | None = DEFAULT_ACCOUNT) -> int | None:
        """Cancel what of a send is not handed to the gateway yet (scheduled recipients and
        pending outbox items), in one transaction; the recipients cancelled, or None when
        there is no such send."""
        ...

    # -- retention and status ----------------------------------------------------------------

    def prune(
        self, keep_days: int, *, batch: int = ..., stop: Callable[[], bool] = ...
    ) -> tuple[int, int]:
        """Delete finished messages older than ``keep_days``; (messages, outbox rows)."""
        ...

    def status(self) -> StoreStatus:
        """The figures of ``responder status`` and the metrics, over every account."""
        ...

    # -- conversations -----------------------------------------------------------------
    # One row per (account, number) in a conversation. A conversation past its expires_at
    # is absent for every method before ``expire_conversations`` ends it. Plugins use
    # ``app.conversation(...)``, which stages changes made while a message is handled.

    def get_conversation(
        self, number: str, *, account: str = DEFAULT_ACCOUNT
    ) -> Conversation | None: ...

    def start_conversation(self, conversation: Conversation) -> Conversation:
        """Commit a conversation, replacing the number's one under way in its account."""
        ...

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
        """Move a conversation to ``step``, merging ``fields`` into those collected; with
        ``expect_step``, only when it is at that step. None when none was moved."""
        ...

    def end_conversation(
        self, number: str, *, account: str = DEFAULT_ACCOUNT
    ) -> Conversation | None:
        """End a conversation; the one ended, or None."""
        ...

    def change_conversations(
        self, changes: Sequence[ConversationChange]
    ) -> list[Conversation | None]:
        """Apply changes in order, in one transaction; each one's result as the methods
        above return it."""
        ...

    def expire_conversations(self, *, limit: int = 500) -> list[Conversation]:
        """End up to ``limit`` conversations past their expires_at (every account), in one
        transaction; returns them, for the caller to log or notify."""
        ...

    def conversations(
        self,
        *,
        state: str | None = None,
        account: str | None = DEFAULT_ACCOUNT,
        limit: int = 50,
        offset: int = 0,
    ) -> list[Conversation]:
        """Conversations under way (of ``state``; ``account`` None: all), the most recently
        moved first."""
        ...

    # -- what plugins ask of the journal ------------------------------------

    def replies_to(
        self,
        number: str,
        since: float,
        *,
        until: float | None = None,
        account: str | None = DEFAULT_ACCOUNT,
    ) -> int:
        """Messages from ``number`` answered to it by replies queued in [since, until]."""
        ...

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
        """Texts of the latest messages from ``number`` in [since, until], newest first."""
        ...

    def exchange(
        self, number: str, *, limit: int, account: str | None = DEFAULT_ACCOUNT
    ) -> list[ExchangeLine]:
        """The latest ``limit`` SMS between the account and ``number``, both directions
        (messages from it; replies and hand-sent SMS to it), oldest first."""
        ...

    def counts_by_reason(self, decided_by: str, *, account: str | None = None) -> dict[str, int]:
        """Messages whose drop or veto ``decided_by`` decided, counted by reason."""
        ...

    def latest_senders(
        self, *, account: str | None = DEFAULT_ACCOUNT, limit: int = 50, offset: int = 0
    ) -> list[SenderSummary]:
        """The numbers that wrote to the account (``account`` None: to any), the one whose
        latest message came last first, each with that message. Must page fast over
        10,000s of senders."""
        ...

    def traffic(
        self, since: float, *, hours: int = 24, account: str | None = DEFAULT_ACCOUNT
    ) -> list[TrafficHour]:
        """Messages journaled and SMS queued in each of ``hours`` hours from ``since``,
        oldest first (every hour, also those with nothing)."""
        ...

    def accounts(self) -> list[str]:
        """Every account the store holds messages, SMS to send or conversations of, sorted
        (``DEFAULT_ACCOUNT`` alone for an empty store)."""
        ...

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
        """The account's history, both directions, newest first (by ``HistoryRow.key``):
        messages from ``number`` (any number when None), outbox items and requests sent by
        hand to it, at or after ``since`` and before ``until``, whose text contains
        ``grep`` (case-insensitive for ASCII), "in" or "out" only (``direction``), after
        ``before`` (the key of the last line of the previous page), at most ``limit``.
        Sent by hand: those of every account. Must page fast over 100,000s of rows."""
        ...
