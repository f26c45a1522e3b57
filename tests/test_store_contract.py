"""The store contract: what every backend (``responder.store.StoreBackend``) must do.

Each test talks to the store through the interface only: no SQL on the core tables, no
SQLite specifics. The ``backend`` fixture runs every test on each entry of BACKENDS:
SQLite, and PostgreSQL (a database of its own per test, tests/pg.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

from responder.conversations import Conversation, ConversationChange
from responder.models import PLATFORM_TZ, InboundSms
from responder.store import (
    DEAD,
    FAILED,
    IGNORED,
    OUTBOX,
    PENDING,
    PROCESSED,
    RECEIVED,
    REPLIED,
    SENDING,
    SENT,
    UNCERTAIN,
    JournalUnwritable,
    NewOutbound,
    NotClaimed,
    OutboundRecipient,
    OutgoingSms,
    StatementError,
    Store,
    StoreBackend,
    StoreError,
    is_storage_failure,
)
from responder.store.queues import QueueCounts
from tests.conftest import Clock
from tests.pg import PgServer, create_database, drop_database
from tests.pg import refuse_writes as pg_refuse_writes

DAY = 86400.0
CUSTOMER = "13800138000"


@dataclass
class Backend:
    """One store backend under test: how to open a store at a fresh location (again, as a
    restarted daemon would), and how to make it refuse writes (a full disk, read-only)."""

    name: str
    location: Path
    """The folder of the SQLite file, or the PostgreSQL database's URL as a Path-like
    string (``str(location)``)."""
    clock: Clock
    open_at: Callable[[Path, Clock], StoreBackend]
    refuse_writes: Callable[[StoreBackend], None]
    opened: list[StoreBackend] = field(default_factory=list)

    def open(self) -> StoreBackend:
        store = self.open_at(self.location, self.clock)
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def _sqlite_refuse_writes(store: StoreBackend) -> None:
    """Every write of this thread's connection fails as on a read-only file (SQLITE_READONLY)."""
    store.query("PRAGMA query_only = ON")


def _postgres_open(location: Path, clock: Clock) -> StoreBackend:
    from responder.store.postgres import PostgresStore

    return PostgresStore(str(location), clock=clock)


def _postgres_refuse_writes(store: StoreBackend) -> None:
    """Every later write fails as on a read-only server (its sessions are ended, new ones
    are read-only)."""
    server, name = _PG_DATABASES[str(store.url)]  # type: ignore[attr-defined]
    pg_refuse_writes(server, name)


_PG_DATABASES: dict[str, tuple[PgServer, str]] = {}

BACKENDS: dict[str, tuple[Callable[[Path, Clock], StoreBackend], Callable[[StoreBackend], None]]]
BACKENDS = {
    "sqlite": (
        lambda path, clock: Store(path / "responder.db", clock=clock),
        _sqlite_refuse_writes,
    ),
    "postgresql": (_postgres_open, _postgres_refuse_writes),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    open_at, refuse_writes = BACKENDS[request.param]
    location = tmp_path
    if request.param == "postgresql":
        server: PgServer = request.getfixturevalue("postgres_server")
        name, url = create_database(server)
        _PG_DATABASES[url] = (server, name)
        request.addfinalizer(lambda: drop_database(server, name))
        location = url  # type: ignore[assignment]
    handle = Backend(request.param, location, Clock(), open_at, refuse_writes)
    try:
        yield handle
    finally:
        handle.close_all()


@pytest.fixture
def store(backend: Backend) -> StoreBackend:
    return backend.open()


_ids = itertools.count(1)


def sms(text: str = "CX", *, src: str = CUSTOMER, gateway_id: int | None = None) -> InboundSms:
    number = next(_ids) if gateway_id is None else gateway_id
    return InboundSms(
        number,
        src,
        "0888008",
        text,
        datetime(2026, 9, 22, 8, 0, tzinfo=PLATFORM_TZ),
        f"id={number}",
    )


def reply(text: str = "已受理", *, to: str = CUSTOMER) -> OutgoingSms:
    return OutgoingSms((to,), text, plugin="keywords")


def journaled(store: StoreBackend, text: str = "CX", **kwargs: str):
    message = store.journal(sms(text), **kwargs)
    assert message is not None
    return message


def queued(store: StoreBackend, *replies: OutgoingSms, account: str = "default"):
    """A message answered with ``replies`` (one by default); returns it and its rows."""
    message = journaled(store, account=account)
    store.finish_message(message.id, outgoing=list(replies or [reply()]), plugin="keywords")
    return message, store.outbox_for(message.id)


# -- journal and dedupe ----------------------------------------------------------------------


def test_a_journaled_message_is_returned_and_read_back_whole(store):
    inbound = sms("查询 余额")

    message = store.journal(inbound)

    assert message is not None and message.account == "default"
    assert store.get_message(message.id) == message
    assert (message.src, message.text, message.received_at) == (
        inbound.src,
        inbound.text,
        inbound.received_at,
    )
    assert store.message_state(message.id) == (RECEIVED, "")
    assert store.next_unprocessed() == message


def test_the_same_message_read_twice_is_dropped_and_counted(store):
    inbound = sms()
    first = store.journal(inbound)

    assert store.journal(inbound) is None
    assert store.messages_since(0) == [first]
    assert store.status().duplicates_dropped == 1


def test_a_reused_gateway_id_with_new_content_is_a_new_message(store):
    store.journal(sms("CX", gateway_id=7))
    assert store.journal(sms("TD", gateway_id=7)) is not None
    assert [m.text for m in store.messages_since(0)] == ["CX", "TD"]


def test_journal_since_tells_when_each_message_came_and_what_became_of_it(backend, store):
    backend.clock.now = 1000.0
    kept = journaled(store, "CX")
    store.finish_message(kept.id, outgoing=[], reason="rate limit", decided_by="guard")
    backend.clock.now = 2000.0
    later = journaled(store, "TD")

    entries = store.journal_since(1500.0)

    assert [(e.message, e.journaled_at, e.state) for e in entries] == [(later, 2000.0, RECEIVED)]
    [entry] = store.journal_since(0.0)[:1]
    assert (entry.state, entry.reason, entry.decided_by) == (IGNORED, "rate limit", "guard")
    assert store.count_journaled(1500.0) == 1


# -- processing attempts ------------------------------------------------------------------


def test_processing_attempts_are_counted_and_can_be_taken_back(store):
    message = journaled(store)

    assert store.begin_processing(message.id) == 1
    assert store.begin_processing(message.id) == 2
    store.uncount_attempt(message.id)
    assert store.begin_processing(message.id) == 2


def test_an_attempt_count_never_goes_below_zero(store):
    message = journaled(store)
    store.uncount_attempt(message.id)
    assert store.begin_processing(message.id) == 1


# -- finishing a message ---------------------------------------------------------------------


def test_finishing_with_replies_queues_one_row_each_in_one_step(store):
    message = journaled(store)
    parts = [OutgoingSms((CUSTOMER,), f"part {n}", part=n, parts=2) for n in (1, 2)]

    store.finish_message(message.id, outgoing=parts, plugin="keywords")

    assert store.message_state(message.id) == (PROCESSED, "")
    rows = store.outbox_for(message.id)
    assert [(r.text, r.part, r.parts, r.state, r.account) for r in rows] == [
        ("part 1", 1, 2, PENDING, "default"),
        ("part 2", 2, 2, PENDING, "default"),
    ]
    assert store.next_unprocessed() is None


def test_finishing_without_replies_records_the_reason_and_who_decided(store):
    message = journaled(store)

    store.finish_message(message.id, outgoing=[], reason="opted out", decided_by="optout")

    assert store.message_state(message.id) == (IGNORED, "opted out")
    assert store.journal_since(0)[0].decided_by == "optout"
    assert store.status().unanswered == {"optout": 1}


def test_finishing_a_finished_message_queues_nothing_more(store):
    message, _rows = queued(store, reply("a"))
    store.finish_message(message.id, outgoing=[reply("again")])
    assert [row.text for row in store.outbox_for(message.id)] == ["a"]


def test_a_late_reply_answers_an_ignored_message(store):
    message = journaled(store)
    store.finish_message(message.id, outgoing=[], reason="awaiting webhook:crm")

    store.add_replies(message.id, [reply("later")])

    assert store.message_state(message.id) == (PROCESSED, "")
    assert [row.text for row in store.outbox_for(message.id)] == ["later"]


def test_a_vetoed_late_reply_notes_its_reason_and_who(store):
    message = journaled(store)
    store.finish_message(message.id, outgoing=[], reason="awaiting webhook:crm")

    store.note_reason(message.id, "opted out", decided_by="optout")

    assert store.message_state(message.id) == (IGNORED, "opted out")
    assert store.journal_since(0)[0].decided_by == "optout"


# -- the outbox --------------------------------------------------------------------------------


def test_a_sent_reply_settles_its_message_as_replied(store):
    message, [row] = queued(store)

    assert store.due_outbox() == [row]
    assert store.claim_send(row.id) == 1
    assert store.due_outbox() == []
    store.record_sent(row.id, raw="num=1&success=13800138000", errid=0)

    assert store.message_state(message.id)[0] == REPLIED
    assert store.outbox_for(message.id)[0].state == SENT
    assert store.status().last_sent_at is not None


def test_a_message_waits_for_all_its_rows_before_it_is_replied(store):
    message, rows = queued(store, reply("1"), reply("2"))
    store.claim_send(rows[0].id)
    store.record_sent(rows[0].id, raw="", errid=0)
    assert store.message_state(message.id)[0] == PROCESSED


def test_a_retry_is_not_due_before_its_time_and_counts_attempts(backend, store):
    _message, [row] = queued(store)
    store.claim_send(row.id)

    store.record_retry(row.id, error="timeout", retry_at=backend.clock.now + 60)

    assert store.due_outbox() == []
    backend.clock.advance(60)
    [due] = store.due_outbox()
    assert (due.id, due.attempts, due.last_error) == (row.id, 1, "timeout")
    assert store.claim_send(row.id) == 2


@pytest.mark.parametrize(
    ("give_up", "row_state", "message_state"),
    [
        (lambda s, i: s.record_dead(i, error="refused", errid=-2), DEAD, FAILED),
        (lambda s, i: s.record_uncertain(i, error="no answer"), UNCERTAIN, UNCERTAIN),
    ],
    ids=["dead", "uncertain"],
)
def test_a_reply_given_up_settles_its_message(store, give_up, row_state, message_state):
    message, [row] = queued(store)
    store.claim_send(row.id)

    give_up(store, row.id)

    assert store.outbox_for(message.id)[0].state == row_state
    assert store.message_state(message.id)[0] == message_state


def test_a_dead_row_fails_its_message_even_if_another_was_uncertain(store):
    message, rows = queued(store, reply("1"), reply("2"))
    for row in rows:
        store.claim_send(row.id)
    store.record_uncertain(rows[0].id, error="no answer")
    store.record_dead(rows[1].id, error="refused")
    assert store.message_state(message.id)[0] == FAILED


def test_a_released_claim_is_pending_again_without_counting_the_attempt(store):
    _message, [row] = queued(store)
    store.claim_send(row.id)

    store.release_claim(row.id, error="held: out of credit", errid=-4)

    [due] = store.due_outbox()
    assert (due.state, due.attempts, due.last_error) == (PENDING, 0, "held: out of credit")


@pytest.mark.parametrize(
    "settle",
    [
        lambda s, i: s.claim_send(i),
        lambda s, i: (s.claim_send(i), s.record_sent(i, raw="num=1", errid=0)),
        lambda s, i: s.record_dead(i, error="stale"),
    ],
    ids=["claimed already", "sent already", "dead already"],
)
def test_a_claim_of_a_row_that_is_not_pending_says_so_and_changes_nothing(store, settle):
    message, [row] = queued(store)
    settle(store, row.id)
    before = store.outbox_for(message.id)

    with pytest.raises(NotClaimed, match=f"outbox row {row.id} was not claimed.*pending"):
        store.claim_send(row.id)

    assert store.outbox_for(message.id) == before
    assert not is_storage_failure(NotClaimed("x"))


def test_uncertain_attempts_are_counted(store):
    _message, [row] = queued(store)
    store.claim_send(row.id)
    store.record_retry(row.id, error="no answer", retry_at=0, uncertain=True)
    assert store.due_outbox()[0].uncertain == 1
    assert store.status().uncertain_sends == 1


# -- the outbox is the durable queue "outbox" ----------------------------------------------------


def test_outbox_rows_are_items_of_the_outbox_queue_in_its_states(store):
    _message, rows = queued(store, reply("1"), reply("2"), reply("3"), reply("4"))
    for row in rows[1:]:
        store.claim_send(row.id)
    store.record_sent(rows[1].id, raw="num=1", errid=0)
    store.record_uncertain(rows[2].id, error="no answer")

    assert store.queue_counts(OUTBOX) == QueueCounts(pending=1, claimed=1, done=1, uncertain=1)
    [claimed] = store.queue_items(OUTBOX, state="claimed")
    assert claimed.id == rows[3].id and claimed.payload["text"] == "4"


def test_a_row_given_up_before_any_attempt_settles_its_message(store):
    message, [row] = queued(store)  # too old to send: dead-lettered without being claimed

    store.record_dead(row.id, error="stale: queued too long ago")

    assert store.outbox_for(message.id)[0].state == DEAD
    assert store.message_state(message.id)[0] == FAILED


def test_a_released_claim_stays_due_when_it_was(backend, store):
    _message, [row] = queued(store)
    store.claim_send(row.id)
    backend.clock.advance(60)

    store.release_claim(row.id, error="held: login refused")

    assert store.due_outbox()[0].next_attempt_at == row.next_attempt_at


def test_sent_rows_outlive_the_queue_pruning_and_go_with_their_message(backend, store):
    message, [row] = queued(store)
    store.claim_send(row.id)
    store.record_sent(row.id, raw="num=1", errid=0)
    backend.clock.advance(DAY)

    assert store.queue_prune(backend.clock.now) == 0
    assert [r.state for r in store.outbox_for(message.id)] == [SENT]


# -- recovery after a crash -------------------------------------------------------------------


def test_rows_left_sending_by_a_crash_are_found_in_flight_after_a_restart(backend, store):
    message, [row] = queued(store)
    store.claim_send(row.id)
    store.close()  # the process dies with the request under way

    again = backend.open()

    [in_flight] = again.in_flight()
    assert (in_flight.id, in_flight.state, in_flight.attempts) == (row.id, SENDING, 1)
    assert again.message_state(message.id)[0] == PROCESSED


def test_a_message_journaled_before_a_crash_is_still_unprocessed_after_it(backend, store):
    message = journaled(store)
    store.close()
    assert backend.open().next_unprocessed() == message


# -- meta -----------------------------------------------------------------------------------


def test_meta_values_are_kept_and_replaced(store):
    assert store.get_meta("k") is None
    store.set_meta("k", "1")
    store.set_meta("k", "2")
    assert store.get_meta("k") == "2"


def test_the_read_marks_are_kept(store):
    store.set_last_read_at(10.5)
    store.set_last_read_end(11.5)
    store.set_last_read_ok_at(12.5)
    assert (store.last_read_at(), store.last_read_end(), store.last_read_ok_at()) == (
        10.5,
        11.5,
        12.5,
    )


def test_reads_held_is_shown_in_the_status_until_cleared(store):
    store.set_reads_held("1.0 MiB left")
    assert store.status().reads_held == "1.0 MiB left"
    store.set_reads_held("")
    assert store.status().reads_held == ""


# -- retention ------------------------------------------------------------------------------


def test_retention_prunes_finished_messages_and_keeps_failed_ones(backend, store):
    replied, [row] = queued(store)
    store.claim_send(row.id)
    store.record_sent(row.id, raw="", errid=0)
    failed = journaled(store)
    store.finish_message(failed.id, outgoing=[], reason="set aside", state=FAILED)
    backend.clock.advance(2 * DAY)
    fresh = journaled(store)

    assert store.prune(1) == (1, 1)

    assert store.get_message(replied.id) is None and store.outbox_for(replied.id) == []
    assert store.get_message(failed.id) is not None
    assert store.get_message(fresh.id) is not None
    assert store.prune(0) == (0, 0)


# -- status figures --------------------------------------------------------------------------


def test_status_counts_messages_rows_reasons_and_sends(store):
    _sent, [sent] = queued(store)
    store.claim_send(sent.id)
    store.record_sent(sent.id, raw="", errid=0)
    _dead, [dead] = queued(store)
    store.claim_send(dead.id)
    store.record_dead(dead.id, error="refused", errid=-2)
    queued(store)  # pending
    for decided_by in ("guard", "guard", ""):
        ignored = journaled(store)
        reason = "rate limit" if decided_by else "no reply"
        store.finish_message(ignored.id, outgoing=[], reason=reason, decided_by=decided_by)
    journaled(store)  # received

    status = store.status()

    assert status.messages == {REPLIED: 1, FAILED: 1, PROCESSED: 1, IGNORED: 3, RECEIVED: 1}
    assert status.outbox == {SENT: 1, DEAD: 1, PENDING: 1}
    assert status.reasons == {"rate limit": 2, "no reply": 1}
    assert status.unanswered == {"guard": 2, "no reply": 1}
    assert status.sends == {(SENT, "0"): 1, (DEAD, "-2"): 1}
    assert store.outbox_depth() == 1
    assert status.last_message_at is not None


# -- accounts ------------------------------------------------------------------------------


def test_two_accounts_identical_messages_are_both_journaled(store):
    inbound = sms()

    first = store.journal(inbound, account="default")
    second = store.journal(inbound, account="branch")

    assert first is not None and second is not None and first.id != second.id
    assert (first.account, second.account) == ("default", "branch")
    assert store.journal(inbound, account="branch") is None


def test_each_account_works_on_its_own_rows_only(store):
    ours, [our_row] = queued(store, account="default")
    theirs, [their_row] = queued(store, account="branch")

    assert store.next_unprocessed() is None
    assert [r.id for r in store.due_outbox()] == [our_row.id]
    assert [r.id for r in store.due_outbox(account="branch")] == [their_row.id]
    assert their_row.account == "branch" and store.get_message(theirs.id).account == "branch"
    assert [m.id for m in store.messages_since(0, account="branch")] == [theirs.id]
    assert [m.id for m in store.messages_since(0, account=None)] == [ours.id, theirs.id]
    assert store.outbox_depth() == 2 and store.outbox_depth(account="branch") == 1


def test_any_accounts_next_message_is_the_oldest_of_all(store):
    theirs = journaled(store, account="branch")
    journaled(store, account="default")

    assert store.next_unprocessed(account=None).id == theirs.id
    assert store.next_unprocessed(account="other") is None


def test_due_rows_of_every_account_leave_out_the_held_ones(store):
    _ours, [our_row] = queued(store, account="default")
    _theirs, [their_row] = queued(store, account="branch")

    assert [r.id for r in store.due_outbox(account=None)] == [our_row.id, their_row.id]
    assert [r.id for r in store.due_outbox(account=None, held=["default"])] == [their_row.id]
    assert store.due_outbox(account=None, held=["default", "branch"]) == []


def test_read_marks_are_kept_per_account(store):
    store.set_last_read_at(10.0)
    store.set_last_read_at(20.0, account="branch")
    store.set_last_read_end(21.0, account="branch")
    store.set_last_read_ok_at(22.0, account="branch")

    assert store.last_read_at() == 10.0 and store.last_read_end() is None
    assert store.last_read_at(account="branch") == 20.0
    assert store.last_read_end(account="branch") == 21.0
    assert store.last_read_ok_at(account="branch") == 22.0
    assert store.last_read_at(account="other") is None
    assert store.get_meta("last_read_at") == repr(10.0)  # "default" keeps its old key


def test_in_flight_rows_of_every_account(store):
    _ours, [our_row] = queued(store, account="default")
    _theirs, [their_row] = queued(store, account="branch")
    store.claim_send(our_row.id)
    store.claim_send(their_row.id)

    assert [r.id for r in store.in_flight(account=None)] == [our_row.id, their_row.id]


def test_in_flight_rows_are_recovered_per_account(store):
    _ours, [our_row] = queued(store, account="default")
    _theirs, [their_row] = queued(store, account="branch")
    store.claim_send(our_row.id)
    store.claim_send(their_row.id)
    assert [r.id for r in store.in_flight()] == [our_row.id]
    assert [r.id for r in store.in_flight(account="branch")] == [their_row.id]


# -- plugins' own tables ---------------------------------------------------------------------

STEPS: list[str | dict[str, str]] = [
    {
        "sqlite": "CREATE TABLE notes_entries"
        " (id INTEGER PRIMARY KEY, number TEXT NOT NULL UNIQUE)",
        "postgresql": "CREATE TABLE notes_entries"
        " (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, number TEXT NOT NULL UNIQUE)",
    },
    "ALTER TABLE notes_entries ADD COLUMN note TEXT NOT NULL DEFAULT ''",
]


def test_plugin_migrations_apply_only_the_steps_not_applied_yet(store):
    store.migrate("notes", STEPS[:1])
    with store.transaction() as tx:
        tx.execute("INSERT INTO notes_entries (number) VALUES (?)", (CUSTOMER,))

    store.migrate("notes", STEPS)
    store.migrate("notes", STEPS)  # nothing more to apply: no error

    rows = store.query("SELECT number, note FROM notes_entries")
    assert [(row["number"], row["note"]) for row in rows] == [(CUSTOMER, "")]


def test_a_plugin_table_not_created_yet_reads_as_empty_when_allowed(store):
    assert store.query("SELECT * FROM notes_entries", missing_ok=True) == []


def test_a_failed_plugin_transaction_changes_nothing(store):
    store.migrate("notes", STEPS)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.execute("INSERT INTO notes_entries (number) VALUES (?)", (CUSTOMER,))
        raise RuntimeError("the plugin changed its mind")
    assert store.query("SELECT * FROM notes_entries") == []


@pytest.mark.parametrize(
    "statement",
    [
        lambda s: s.query("SELECT total FROM no_such_table"),
        lambda s: s.query("SELEKT 1"),
        lambda s: s.migrate("bad", ["CREATE TABLE"]),
    ],
    ids=["missing table", "syntax", "bad migration"],
)
def test_a_statement_the_store_refuses_is_a_statement_error_not_a_storage_failure(store, statement):
    with pytest.raises(StatementError) as raised:
        statement(store)
    assert not is_storage_failure(raised.value)


def test_a_broken_constraint_in_a_transaction_is_a_statement_error(store):
    store.migrate("notes", STEPS)
    with pytest.raises(StatementError), store.transaction() as tx:
        tx.execute("INSERT INTO notes_entries (number) VALUES (?)", (CUSTOMER,))
        tx.execute("INSERT INTO notes_entries (number) VALUES (?)", (CUSTOMER,))
    store.set_meta("still", "usable")
    assert store.get_meta("still") == "usable"


# -- errors: the store's own, never the driver's --------------------------------------------

WRITES: list[tuple[str, Callable[[StoreBackend, int], object]]] = [
    ("journal", lambda s, _m: s.journal(sms("new"))),
    ("begin_processing", lambda s, m: s.begin_processing(m)),
    ("finish_message", lambda s, m: s.finish_message(m, outgoing=[reply()])),
    ("add_replies", lambda s, m: s.add_replies(m, [reply()])),
    ("note_reason", lambda s, m: s.note_reason(m, "x")),
    ("set_meta", lambda s, _m: s.set_meta("k", "v")),
    ("set_last_read_end", lambda s, _m: s.set_last_read_end(1.0)),
    ("set_last_read_ok_at", lambda s, _m: s.set_last_read_ok_at(1.0)),
    ("migrate", lambda s, _m: s.migrate("notes", STEPS)),
    ("prune", lambda s, _m: s.prune(1)),
    ("hand_sent_start", lambda s, _m: s.hand_sent_start([CUSTOMER], "hi", raw=False)),
    ("start_conversation", lambda s, _m: s.start_conversation(Conversation(CUSTOMER))),
]


@pytest.mark.parametrize(("name", "write"), WRITES, ids=[name for name, _ in WRITES])
def test_every_write_the_store_refuses_is_a_store_error(backend, store, name, write):
    message = journaled(store)
    store.finish_message(message.id, outgoing=[])
    backend.clock.advance(2 * DAY)  # so that prune has something to delete
    other = journaled(store)
    backend.refuse_writes(store)

    with pytest.raises(StoreError) as raised:
        write(store, other.id)

    assert is_storage_failure(raised.value)
    assert type(raised.value).__module__.startswith("responder.")  # not the driver's own


def test_a_read_start_mark_the_store_refuses_is_journal_unwritable(backend, store):
    backend.refuse_writes(store)
    with pytest.raises(JournalUnwritable):
        store.set_last_read_at(1.0)
    assert store.probe_write() != ""


# -- conversations ---------------------------------------------------------------------------


def conversation(store: StoreBackend, number: str = CUSTOMER, **kwargs) -> Conversation:
    now = store.clock()
    values = {"flow": "booking", "step": "date", "started_at": now, "updated_at": now}
    return Conversation(number, **{**values, **kwargs})


def test_a_started_conversation_is_read_back_whole(store):
    started = conversation(
        store,
        fields={"name": "王"},
        context={"campaign": "秋季", "n": 2},
        expires_at=store.clock() + 60,
        who="booking-bot",
    )
    store.start_conversation(started)
    assert store.get_conversation(CUSTOMER) == started


def test_starting_a_conversation_replaces_the_one_under_way(store):
    store.start_conversation(conversation(store, fields={"date": "12月3日"}))
    store.start_conversation(conversation(store, flow="survey", step="q1"))
    found = store.get_conversation(CUSTOMER)
    assert (found.flow, found.step, dict(found.fields)) == ("survey", "q1", {})


def test_a_move_changes_the_step_merges_fields_and_keeps_the_expiry(backend, store):
    store.start_conversation(conversation(store, fields={"date": "12月3日"}, expires_at=5e9))
    backend.clock.advance(10)
    moved = store.move_conversation(CUSTOMER, step="slot", fields={"slot": "上午"})
    assert moved == store.get_conversation(CUSTOMER)
    assert (moved.step, dict(moved.fields)) == ("slot", {"date": "12月3日", "slot": "上午"})
    assert (moved.expires_at, moved.updated_at) == (5e9, backend.clock())


def test_a_move_may_set_a_new_expiry_or_none(store):
    store.start_conversation(conversation(store, expires_at=5e9))
    assert store.move_conversation(CUSTOMER, expires_at=6e9).expires_at == 6e9
    assert store.move_conversation(CUSTOMER, expires_at=None).expires_at is None


@pytest.mark.parametrize(
    ("expect_step", "moved"), [("date", True), ("slot", False)], ids=["at-it", "elsewhere"]
)
def test_a_move_with_an_expected_step_applies_only_at_that_step(store, expect_step, moved):
    store.start_conversation(conversation(store, step="date"))
    result = store.move_conversation(CUSTOMER, step="phone", expect_step=expect_step)
    assert (result is not None) == moved
    assert store.get_conversation(CUSTOMER).step == ("phone" if moved else "date")


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.move_conversation(CUSTOMER, step="x"),
        lambda s: s.end_conversation(CUSTOMER),
    ],
    ids=["move", "end"],
)
def test_moving_or_ending_a_conversation_that_is_not_there_returns_none(store, change):
    assert change(store) is None
    assert store.get_conversation(CUSTOMER) is None


def test_ending_a_conversation_returns_it_and_removes_it(store):
    started = store.start_conversation(conversation(store))
    assert store.end_conversation(CUSTOMER) == started
    assert store.get_conversation(CUSTOMER) is None


def test_an_expired_conversation_is_absent_before_it_is_expired(backend, store):
    store.start_conversation(conversation(store, expires_at=store.clock() + 60))
    backend.clock.advance(60)
    assert store.get_conversation(CUSTOMER) is None
    assert store.move_conversation(CUSTOMER, step="slot") is None
    assert store.conversations() == []


def test_expiry_ends_the_conversations_past_their_time_and_returns_them(backend, store):
    now = store.clock()
    late = store.start_conversation(conversation(store, "13900000001", expires_at=now + 10))
    store.start_conversation(conversation(store, "13900000002", expires_at=now + 100))
    store.start_conversation(conversation(store, "13900000003", expires_at=None))
    store.start_conversation(conversation(store, "13900000004", expires_at=now + 5, step="s"))
    backend.clock.advance(10)

    ended = store.expire_conversations()

    assert sorted(c.number for c in ended) == ["13900000001", "13900000004"]
    assert late in ended
    assert store.expire_conversations() == []
    left = sorted(c.number for c in store.conversations())
    assert left == ["13900000002", "13900000003"]


def test_expiry_ends_at_most_the_limit_at_a_time(backend, store):
    for n in range(3):
        store.start_conversation(conversation(store, f"1390000000{n}", expires_at=1.0))
    assert len(store.expire_conversations(limit=2)) == 2
    assert len(store.expire_conversations(limit=2)) == 1


def test_each_account_has_its_own_conversation_with_a_number(store):
    store.start_conversation(conversation(store, step="date"))
    store.start_conversation(conversation(store, step="q1", flow="survey", account="branch"))

    store.move_conversation(CUSTOMER, step="slot", account="branch")
    store.end_conversation(CUSTOMER)

    assert store.get_conversation(CUSTOMER) is None
    theirs = store.get_conversation(CUSTOMER, account="branch")
    assert (theirs.account, theirs.flow, theirs.step) == ("branch", "survey", "slot")
    assert store.conversations() == []
    assert [c.account for c in store.conversations(account=None)] == ["branch"]


def test_conversations_are_listed_by_state_newest_first_and_paged(backend, store):
    for n, state in enumerate(["active", "with_person", "active", "active"]):
        store.start_conversation(conversation(store, f"1390000000{n}", state=state))
        backend.clock.advance(1)
    active = [c.number for c in store.conversations(state="active")]
    assert active == ["13900000003", "13900000002", "13900000000"]
    paged = [c.number for c in store.conversations(state="active", limit=2, offset=1)]
    assert paged == ["13900000002", "13900000000"]
    assert [c.number for c in store.conversations(state="with_person")] == ["13900000001"]


def test_finishing_a_message_applies_its_conversation_changes_with_it(store):
    message = journaled(store)
    start = ConversationChange(
        "start", "default", CUSTOMER, store.clock(), started=conversation(store)
    )
    move = ConversationChange(
        "move", "default", CUSTOMER, store.clock(), step="slot", fields={"date": "明天"}
    )
    store.finish_message(message.id, outgoing=[reply()], conversations=[start, move])
    found = store.get_conversation(CUSTOMER)
    assert (found.step, dict(found.fields)) == ("slot", {"date": "明天"})
    assert store.message_state(message.id)[0] == PROCESSED


def test_finishing_a_finished_message_applies_no_conversation_change(store):
    message = journaled(store)
    store.finish_message(message.id, outgoing=[])
    end = ConversationChange("end", "default", CUSTOMER, store.clock())
    store.start_conversation(conversation(store))
    store.finish_message(message.id, outgoing=[], conversations=[end])
    assert store.get_conversation(CUSTOMER) is not None


def test_a_conversation_outlives_a_restart(backend, store):
    started = store.start_conversation(conversation(store, fields={"date": "明天"}))
    store.close()
    assert backend.open().get_conversation(CUSTOMER) == started


def test_exchange_shows_both_directions_each_reply_after_its_message(store):
    first = journaled(store, "CX")
    other = store.journal(sms("CX", src="13911020005"))
    assert other is not None
    store.finish_message(other.id, outgoing=[reply("给别人", to="13911020005")])
    second = journaled(store, "人工")
    store.finish_message(second.id, outgoing=[reply("已转人工")])
    store.finish_message(first.id, outgoing=[reply("已受理")])
    row_id = store.hand_sent_start([CUSTOMER], "客服回复", raw=False)
    store.hand_sent_finish(row_id, "sent", reason="")

    lines = store.exchange(CUSTOMER, limit=10)

    assert [(line.direction, line.text, line.via) for line in lines] == [
        ("in", "CX", ""),
        ("out", "已受理", "keywords"),
        ("in", "人工", ""),
        ("out", "已转人工", "keywords"),
        ("out", "客服回复", "send"),
    ]
    assert [line.text for line in store.exchange(CUSTOMER, limit=2)] == ["已转人工", "客服回复"]


# -- history -----------------------------------------------------------------------------


def test_history_lists_both_directions_newest_first(backend, store):
    message = journaled(store, "CX")
    backend.clock.advance(1)
    store.finish_message(message.id, outgoing=[reply("已受理")], plugin="keywords")
    backend.clock.advance(1)
    row_id = store.hand_sent_start([CUSTOMER], "客服回复", raw=False)
    store.hand_sent_finish(row_id, "sent", reason="")

    rows = store.history(limit=10)

    assert [(row.kind, row.text, row.numbers) for row in rows] == [
        ("hand", "客服回复", (CUSTOMER,)),
        ("reply", "已受理", (CUSTOMER,)),
        ("in", "CX", (CUSTOMER,)),
    ]
    assert rows[1].message_id == message.id and rows[1].plugin == "keywords"
    assert rows[2].plugin == "keywords" and rows[2].state == PROCESSED


def test_history_pages_after_a_key_without_repeating_or_skipping(backend, store):
    for index in range(7):
        message = journaled(store, f"m{index}")
        store.finish_message(message.id, outgoing=[reply(f"r{index}")])
        if index % 2:
            backend.clock.advance(1)  # some lines share their moment
    seen: list[str] = []
    before = None
    while True:
        rows = store.history(before=before, limit=3)
        if not rows:
            break
        seen += [row.text for row in rows]
        before = rows[-1].key

    assert sorted(seen) == sorted([f"m{i}" for i in range(7)] + [f"r{i}" for i in range(7)])
    assert len(seen) == 14


def test_history_filters_by_number_direction_text_and_time(backend, store):
    journaled(store, "早上好")
    backend.clock.advance(10)
    noon = backend.clock()
    store.journal(sms("查询订单", src="13911020005"))
    message = journaled(store, "查询余额")
    store.finish_message(message.id, outgoing=[reply("余额100")])

    assert [r.text for r in store.history(number="13911020005")] == ["查询订单"]
    assert [r.text for r in store.history(direction="out")] == ["余额100"]
    assert [r.text for r in store.history(grep="查询")] == ["查询余额", "查询订单"]
    assert [r.text for r in store.history(until=noon)] == ["早上好"]
    assert {r.text for r in store.history(since=noon)} == {"查询订单", "查询余额", "余额100"}


def test_history_grep_takes_percent_and_underscore_literally(store):
    journaled(store, "100% ok")
    journaled(store, "100 ok")

    assert [r.text for r in store.history(grep="0%")] == ["100% ok"]
    assert store.history(grep="_") == []


def test_history_shows_one_account_or_all(store):
    journaled(store, "A")
    journaled(store, "B", account="other")

    assert [r.text for r in store.history()] == ["A"]
    assert [r.text for r in store.history(account="other")] == ["B"]
    assert sorted(r.text for r in store.history(account=None)) == ["A", "B"]


# -- outbound sends ---------------------------------------------------------------------


def _send(**fields: object) -> NewOutbound:
    return NewOutbound(text=str(fields.pop("text", "您的报告已出")), **fields)  # type: ignore[arg-type]


def _sms(*numbers: str, part: int = 1, parts: int = 1) -> OutgoingSms:
    return OutgoingSms(numbers, f"part {part}", part=part, parts=parts, plugin="outbound")


def test_an_outbound_send_is_stored_with_its_recipients_sms_and_conversations(backend, store):
    started = Conversation(CUSTOMER, flow="reminder", step="answer", context={"a": 42})
    row, created = store.outbound_create(
        _send(key="k1", fingerprint="f1", context={"a": 42}, parts=1, answer="{}"),
        [OutboundRecipient(CUSTOMER, "queued", parts=1), OutboundRecipient("1", "invalid", "bad")],
        [_sms(CUSTOMER)],
        [ConversationChange("start", "default", CUSTOMER, backend.clock(), started=started)],
    )

    assert created and row.id and row.created_at == backend.clock()
    assert store.outbound_get(row.id) == row == store.outbound_find("k1")
    assert [r.status for r in store.outbound_recipients(row.id)] == ["invalid", "queued"]
    [item] = store.outbound_items(row.id)
    assert (item.recipients, item.state) == ((CUSTOMER,), PENDING)
    [due] = store.due_outbox()
    assert (due.outbound_id, due.message_id) == (row.id, 0)
    conversation = store.get_conversation(CUSTOMER)
    assert conversation is not None and conversation.context == {"a": 42}


def test_an_outbound_key_used_before_writes_nothing_and_gives_the_first_send(store):
    first, _ = store.outbound_create(_send(key="k1", fingerprint="f1"), [], [_sms(CUSTOMER)])
    again, created = store.outbound_create(
        _send(key="k1", fingerprint="f2"), [OutboundRecipient("139", "queued")], [_sms("139")]
    )

    assert not created and again == first
    assert store.outbound_recipients(first.id) == [] and store.outbox_depth() == 1
    other, created = store.outbound_create(_send(key="k1", account="other"), [], [])
    assert created and other.id != first.id
    assert store.outbound_find("k1", account="other") == other


def test_outbound_add_keeps_recipients_already_in_the_send(store):
    row, _ = store.outbound_create(_send(), [OutboundRecipient(CUSTOMER, "queued", parts=1)], [])
    store.outbound_add(
        row.id,
        [OutboundRecipient(CUSTOMER, "suppressed", "x"), OutboundRecipient("139", "queued")],
        [_sms("139")],
    )

    assert store.outbound_known(row.id, [CUSTOMER, "139", "137"]) == {CUSTOMER, "139"}
    assert {(r.number, r.status) for r in store.outbound_recipients(row.id)} == {
        (CUSTOMER, "queued"),
        ("139", "queued"),
    }


def test_an_outbound_item_carries_the_gateways_answer_to_it(store):
    row, _ = store.outbound_create(
        _send(), [OutboundRecipient(CUSTOMER, "queued")], [_sms(CUSTOMER, "1")]
    )
    [due] = store.due_outbox()
    store.claim_send(due.id)
    store.record_sent(due.id, raw="num=1&success=13800138000,&faile=1&errid=0", errid=0)

    [item] = store.outbound_items(row.id)
    assert item.result == "num=1&success=13800138000,&faile=1&errid=0"


def test_a_scheduled_send_falls_due_and_is_released_once(backend, store):
    at = backend.clock() + 60
    row, _ = store.outbound_create(
        _send(state="scheduled", at=at), [OutboundRecipient(CUSTOMER, "scheduled")], []
    )

    assert store.outbound_due() == [] and store.outbound_next_due() == at
    backend.clock.advance(60)
    assert [r.id for r in store.outbound_due()] == [row.id]
    released = [OutboundRecipient(CUSTOMER, "queued", parts=1)]
    assert store.outbound_release(row.id, released, [_sms(CUSTOMER)])
    assert not store.outbound_release(row.id, released, [_sms(CUSTOMER)])
    assert store.outbox_depth() == 1 and store.outbound_next_due() is None
    assert store.outbound_recipients(row.id)[0].status == "queued"


def test_cancel_takes_scheduled_recipients_and_pending_sms_but_not_those_sent(backend, store):
    held, _ = store.outbound_create(
        _send(state="scheduled", at=backend.clock() + 60),
        [OutboundRecipient(CUSTOMER, "scheduled"), OutboundRecipient("1", "invalid")],
        [],
    )
    queued_send, _ = store.outbound_create(
        _send(),
        [OutboundRecipient(CUSTOMER, "queued", parts=1), OutboundRecipient("139", "queued")],
        [_sms(CUSTOMER), _sms("139")],
    )
    first = store.due_outbox(1)[0]
    store.claim_send(first.id)
    store.record_sent(first.id, raw="ok", errid=None)

    assert store.outbound_cancel(held.id) == 1
    assert store.outbound_cancel(queued_send.id) == 1
    assert store.outbound_cancel(queued_send.id) == 0
    assert store.outbound_cancel(9999) is None
    assert store.outbound_cancel(held.id, account="other") is None
    assert store.outbound_next_due() is None and store.outbox_depth() == 0
    assert {(r.number, r.status) for r in store.outbound_recipients(queued_send.id)} == {
        (CUSTOMER, "queued"),
        ("139", "cancelled"),
    }
    assert [i.state for i in store.outbound_items(queued_send.id)] == [SENT]


# -- the console's lists ---------------------------------------------------------------


def test_latest_senders_lists_each_number_once_latest_first_and_pages(backend, store):
    for src, text in (("13900000001", "a1"), ("13900000002", "b1"), ("13900000001", "a2")):
        assert store.journal(sms(text, src=src)) is not None
        backend.clock.advance(1)
    assert store.journal(sms("other", src="13900000003"), account="shop") is not None

    found = store.latest_senders(limit=10)

    assert [(s.number, s.text, s.account) for s in found] == [
        ("13900000001", "a2", "default"),
        ("13900000002", "b1", "default"),
    ]
    assert [s.number for s in store.latest_senders(limit=1, offset=1)] == ["13900000002"]
    assert [s.number for s in store.latest_senders(account=None, limit=1)] == ["13900000003"]


def test_traffic_counts_messages_and_sms_queued_per_hour(backend, store):
    since = backend.clock() - 3600
    message = journaled(store)
    store.finish_message(message.id, outgoing=[reply("一"), reply("二")], plugin="keywords")
    backend.clock.advance(3600)
    journaled(store)

    hours = store.traffic(since, hours=3)

    assert [(h.received, h.queued) for h in hours] == [(0, 0), (1, 2), (1, 0)]
    assert [h.start - since for h in hours] == [0.0, 3600.0, 7200.0]


def test_accounts_lists_every_account_with_rows(store):
    assert store.accounts() == ["default"]
    assert store.journal(sms("hi", src="13900000003"), account="shop") is not None
    assert store.accounts() == ["default", "shop"]


def test_prune_deletes_old_outbound_sends_once_every_sms_was_sent(backend, store):
    sent, _ = store.outbound_create(
        _send(), [OutboundRecipient(CUSTOMER, "queued", parts=1)], [_sms(CUSTOMER)]
    )
    failed, _ = store.outbound_create(
        _send(), [OutboundRecipient("139", "queued", parts=1)], [_sms("139")]
    )
    held, _ = store.outbound_create(
        _send(state="scheduled", at=backend.clock() + 400 * DAY), [], []
    )
    first, second = store.due_outbox(2)
    store.claim_send(first.id)
    store.record_sent(first.id, raw="ok", errid=None)
    store.record_dead(second.id, error="refused")
    backend.clock.advance(31 * DAY)

    assert store.prune(30) == (0, 1)
    assert store.outbound_get(sent.id) is None and store.outbound_items(sent.id) == []
    assert store.outbound_get(failed.id) is not None
    assert store.outbound_get(held.id) is not None


def test_history_grep_ignores_the_case_of_latin_letters(store):
    journaled(store, "Order 12")

    assert [r.text for r in store.history(grep="oRDER")] == ["Order 12"]
