"""The SQLite store: schema, message and outbox states, recovery after a crash."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from responder import hookimpl, sending
from responder.app import build_app
from responder.config import ConfigError, settings_from_dict
from responder.models import PLATFORM_TZ, InboundSms
from responder.store import (
    DEAD,
    FAILED,
    MIN_FREE_BYTES,
    PENDING,
    PROCESSED,
    RECEIVED,
    REPLIED,
    SCHEMA,
    SENDING,
    SENT,
    UNCERTAIN,
    JournalUnwritable,
    OutgoingSms,
    StatementError,
    Store,
    StoreError,
)
from tests.conftest import config_dict, offline_config
from tests.test_cli import open_files_under


def sms(gateway_id: int = 1, text: str = "CX") -> InboundSms:
    return InboundSms(gateway_id, "13800138000", "0888008", text, None, f"id={gateway_id}")


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path / "responder.db")
    yield opened
    opened.close()


def test_a_new_store_is_in_wal_mode_at_the_current_schema(store):
    assert store.query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.query("PRAGMA user_version")[0][0] == len(SCHEMA)


def test_a_store_from_a_newer_release_is_refused(tmp_path):
    path = tmp_path / "responder.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {len(SCHEMA) + 1}")
    with pytest.raises(StoreError, match="upgrade sms-responder"):
        Store(path)


def test_a_store_in_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "missing" / "responder.db")


def test_plugin_migrations_apply_only_new_steps(store):
    store.migrate("demo", ["CREATE TABLE demo_a (x INTEGER)"])
    store.migrate("demo", ["CREATE TABLE demo_a (x INTEGER)", "CREATE TABLE demo_b (y TEXT)"])
    names = {row[0] for row in store.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"demo_a", "demo_b"} <= names
    assert store.query("SELECT version FROM plugin_schema WHERE owner='demo'")[0][0] == 2


def test_a_message_moves_from_received_to_replied(store):
    message = store.journal(sms())
    assert store.message_state(message.id)[0] == RECEIVED
    store.finish_message(message.id, outgoing=[OutgoingSms(("13800138000",), "ok")])
    assert store.message_state(message.id)[0] == PROCESSED
    [row] = store.due_outbox()
    assert store.claim_send(row.id) == 1
    store.record_sent(row.id, raw="num=1", errid=0)
    assert store.message_state(message.id)[0] == REPLIED
    assert store.outbox_for(message.id)[0].state == SENT


def test_a_message_with_a_dead_reply_is_failed(store):
    message = store.journal(sms())
    store.finish_message(message.id, outgoing=[OutgoingSms(("13800138000",), "ok")])
    [row] = store.due_outbox()
    store.claim_send(row.id)
    store.record_dead(row.id, error="refused")
    assert store.message_state(message.id)[0] == FAILED


def test_a_retry_is_not_due_before_its_time(tmp_path, clock):
    store = Store(tmp_path / "responder.db", clock=clock)
    message = store.journal(sms())
    store.finish_message(message.id, outgoing=[OutgoingSms(("13800138000",), "ok")])
    [row] = store.due_outbox()
    store.claim_send(row.id)
    store.record_retry(row.id, error="500", retry_at=clock.now + 60)
    assert store.due_outbox() == []
    clock.advance(60)
    assert [r.id for r in store.due_outbox()] == [row.id]
    store.close()


def test_processing_is_committed_once_even_if_finished_twice(store):
    message = store.journal(sms())
    store.finish_message(message.id, outgoing=[OutgoingSms(("1",), "a")], reason="")
    store.finish_message(message.id, outgoing=[], reason="second")
    assert store.message_state(message.id) == (PROCESSED, "")


@pytest.mark.parametrize(
    ("policy", "state", "uncertain"), [("resend", PENDING, 1), ("give_up", UNCERTAIN, 1)]
)
def test_sends_left_in_flight_by_a_crash_follow_the_uncertain_policy(
    sandbox, tmp_path, make_app, policy, state, uncertain
):
    app = make_app(config_dict(sandbox, tmp_path, replies={"on_uncertain": policy}))
    message = app.store.journal(sms())
    app.store.finish_message(message.id, outgoing=[OutgoingSms(("13800138000",), "ok")])
    [row] = app.store.due_outbox()
    app.store.claim_send(row.id)  # the process dies here, mid-request
    assert sending.recover_in_flight(app) == 1
    [after] = app.store.outbox_for(message.id)
    assert (after.state, after.uncertain) == (state, uncertain)


def test_status_counts_states_and_reasons(store):
    for number in (1, 2, 3):
        store.journal(sms(number))
    store.finish_message(1, outgoing=[], reason="guard: not a mobile number")
    store.finish_message(2, outgoing=[], reason="guard: not a mobile number")
    status = store.status()
    assert status.messages == {"ignored": 2, "received": 1}
    assert status.reasons == {"guard: not a mobile number": 2}


def test_finishing_a_finished_message_queues_nothing_more(store):
    message = store.journal(sms())
    store.finish_message(message.id, outgoing=[OutgoingSms(("1",), "a")])
    store.finish_message(message.id, outgoing=[OutgoingSms(("1",), "again")])
    assert [row.text for row in store.outbox_for(message.id)] == ["a"]


def test_a_failed_transaction_leaves_the_connection_usable(store):
    with pytest.raises(StatementError), store.transaction() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('k', NULL)")
    store.set_meta("k", "v")
    assert store.get_meta("k") == "v"


@pytest.mark.parametrize(("policy", "status"), [("resend", "uncertain"), ("give_up", "uncertain")])
def test_after_send_hears_about_sends_recovered_after_a_crash(
    sandbox, tmp_path, make_app, policy, status
):
    seen = []

    class Watcher:
        @hookimpl
        def responder_after_send(self, delivery):
            seen.append(delivery.status)

    app = make_app(
        config_dict(sandbox, tmp_path, replies={"on_uncertain": policy}),
        extra_plugins=(("watcher", Watcher()),),
    )
    message = app.store.journal(sms())
    app.store.finish_message(message.id, outgoing=[OutgoingSms(("13800138000",), "ok")])
    app.store.claim_send(app.store.due_outbox()[0].id)
    sending.recover_in_flight(app)
    assert seen == [status]


# -- dedupe on content (a platform that reuses ids) ---------------------------------------


def test_a_reused_gateway_id_with_new_content_is_journaled(store):
    first = store.journal(sms(7, "CX"))
    again = store.journal(sms(7, "退订"))
    assert again is not None and again.id != first.id
    assert [m.text for m in store.messages_since(0)] == ["CX", "退订"]


@pytest.mark.parametrize(
    "received_at",
    [None, datetime(2026, 11, 26, 9, 0, tzinfo=PLATFORM_TZ)],
    ids=["no-platform-time", "platform-time"],
)
def test_the_same_message_read_twice_is_dropped_and_counted(store, received_at):
    message = InboundSms(7, "13800138000", "0888008", "CX", received_at, "id=7")
    assert store.journal(message) is not None
    assert store.journal(message) is None
    assert store.journal(message) is None
    assert len(store.messages_since(0)) == 1
    assert store.status().duplicates_dropped == 2


@pytest.mark.parametrize(
    "field", ["src", "dst", "received_at"], ids=["other-src", "other-dst", "other-time"]
)
def test_an_old_id_from_another_number_or_time_is_a_new_message(store, field):
    old = InboundSms(7, "13800138000", "0888008", "CX", None, "id=7")
    changed = {
        "src": "13900139000",
        "dst": "088800802",
        "received_at": datetime(2026, 11, 26, 9, 0, tzinfo=PLATFORM_TZ),
    }[field]
    store.journal(old)
    assert store.journal(dataclasses.replace(old, **{field: changed})) is not None
    assert store.status().duplicates_dropped == 0


def version_2_store(path):
    """A store as the previous release left it: the schema text of versions 1 and 2."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(SCHEMA[:2], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute(
        "INSERT INTO messages (id, gateway_id, src, dst, text, received_at, raw, journaled_at,"
        " state, reason, plugin, processed_at, attempts) VALUES (41, 7, '13800138000',"
        " '0888008', 'CX', '2026-11-26T09:00:00+08:00', 'id=7', 1.5, 'processed', '',"
        " 'keywords', 2.5, 1)"
    )
    conn.execute(
        "INSERT INTO outbox (message_id, recipients, text, next_attempt_at, created_at)"
        " VALUES (41, '13800138000', '已受理', 2.5, 2.5)"
    )
    conn.close()


def test_a_version_2_store_migrates_keeping_ids_columns_and_replies(tmp_path):
    version_2_store(tmp_path / "responder.db")
    store = Store(tmp_path / "responder.db")
    try:
        assert store.query("PRAGMA user_version")[0][0] == len(SCHEMA)
        [row] = store.query("SELECT * FROM messages")
        assert tuple(row) == (
            41, 7, "13800138000", "0888008", "CX", "2026-11-26T09:00:00+08:00", "id=7", 1.5,
            "processed", "", "keywords", 2.5, 1, "default", "",
        )  # fmt: skip
        [reply] = store.outbox_for(41)
        assert (reply.text, reply.sender) == ("已受理", "")
        assert store.query("PRAGMA foreign_key_check") == []
        assert store.query("PRAGMA integrity_check")[0][0] == "ok"
    finally:
        store.close()


def test_foreign_keys_still_hold_after_the_migration(tmp_path):
    version_2_store(tmp_path / "responder.db")
    store = Store(tmp_path / "responder.db")
    try:
        with (
            pytest.raises(StatementError, match="FOREIGN KEY"),
            store.transaction() as tx,
        ):
            tx.execute(
                "INSERT INTO queue_items (queue, payload, message_id, next_attempt_at,"
                " created_at) VALUES ('outbox', '{}', 999, 0, 0)"
            )
    finally:
        store.close()


ODD_NUMBERS = '13800138000,+86 "138",a\\b'
"""Recipients as a plugin may have given them: a quote or a backslash must survive the move."""


def version_4_store(path: Path) -> None:
    """A store as schema 4 left it: one message answered by an outbox row in each state."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    for number, script in enumerate(SCHEMA[:4], start=1):
        conn.executescript(script)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute(
        "INSERT INTO messages (id, gateway_id, src, dst, text, raw, journaled_at, state,"
        " account) VALUES (41, 7, '13800138000', '0888008', 'CX', 'id=7', 1.5, 'processed',"
        " 'main')"
    )
    conn.executemany(
        "INSERT INTO outbox (id, message_id, recipients, text, part, parts, plugin, state,"
        " attempts, uncertain, next_attempt_at, last_error, result, errid, created_at, sent_at,"
        " sender, account) VALUES (?, 41, ?, ?, ?, 5, 'keywords', ?, ?, ?, ?, ?, ?, ?, 2.5, ?,"
        " '01', 'main')",
        [
            (1, "13800138000", "待发", 1, "pending", 1, 0, 9.0, "timed out", "", None, None),
            (2, "13800138000,13900139000", "发送中", 2, "sending", 2, 1, 3.0, "", "", None, None),
            (3, "13800138000", "已发", 3, "sent", 1, 0, 2.5, "", "num=1", 0, 4.0),
            (4, "", "死信", 4, "dead", 3, 0, 2.5, "refused", "err", 6008, None),
            (5, ODD_NUMBERS, "不确定", 5, "uncertain", 2, 2, 2.5, "gave up", "", None, None),
        ],
    )
    conn.close()


@pytest.mark.parametrize(
    ("old_id", "state", "recipients", "item"),
    [  # item: (queue state, attempts, uncertain, next_attempt_at, last_error, result,
        # errid, finished_at)
        (1, PENDING, ("13800138000",), ("pending", 1, 0, 9.0, "timed out", "", None, None)),
        (2, SENDING, ("13800138000", "13900139000"), ("claimed", 2, 1, 3.0, "", "", None, None)),
        (3, SENT, ("13800138000",), ("done", 1, 0, 2.5, "", "num=1", 0, 4.0)),
        (4, DEAD, (), ("dead", 3, 0, 2.5, "refused", "err", 6008, None)),
        (
            5,
            UNCERTAIN,
            tuple(ODD_NUMBERS.split(",")),
            ("uncertain", 2, 2, 2.5, "gave up", "", None, None),
        ),
    ],
)
def test_a_version_4_outbox_row_moves_onto_the_outbox_queue_in_its_state(
    tmp_path, old_id, state, recipients, item
):
    version_4_store(tmp_path / "responder.db")
    store = Store(tmp_path / "responder.db")
    try:
        rows = store.outbox_for(41)
        row = rows[old_id - 1]  # moved in the order of their ids
        assert (row.state, row.recipients, row.part, row.parts) == (state, recipients, old_id, 5)
        assert (row.plugin, row.sender, row.account, row.created_at) == (
            "keywords",
            "01",
            "main",
            2.5,
        )
        [stored] = store.query(
            "SELECT state, attempts, uncertain, next_attempt_at, last_error, result, errid,"
            " finished_at FROM queue_items WHERE queue = 'outbox' AND id = ?",
            (row.id,),
        )
        assert tuple(stored) == item
    finally:
        store.close()


def test_a_version_4_store_loses_its_outbox_table_and_keeps_its_keys(tmp_path):
    version_4_store(tmp_path / "responder.db")
    store = Store(tmp_path / "responder.db")
    try:
        assert store.query("PRAGMA user_version")[0][0] == len(SCHEMA)
        tables = {row[0] for row in store.query("SELECT name FROM sqlite_master")}
        assert "outbox" not in tables and "queue_items" in tables
        assert len(store.outbox_for(41)) == 5
        assert store.query("PRAGMA foreign_key_check") == []
        assert store.query("PRAGMA integrity_check")[0][0] == "ok"
    finally:
        store.close()


def test_a_migrated_sending_row_is_in_flight_and_settles_its_message(tmp_path):
    version_4_store(tmp_path / "responder.db")
    store = Store(tmp_path / "responder.db")
    try:
        [row] = store.in_flight(account="main")
        assert row.text == "发送中"
        store.record_uncertain(row.id, error="gave up")
        [pending] = store.due_outbox(account="main")
        store.claim_send(pending.id)
        store.record_sent(pending.id, raw="num=1", errid=0)
        assert store.message_state(41)[0] == FAILED  # one of its rows is a dead letter
    finally:
        store.close()


def test_a_migrated_store_journals_a_new_message_with_an_old_id(tmp_path):
    version_2_store(tmp_path / "responder.db")
    store = Store(tmp_path / "responder.db")
    try:
        message = store.journal(sms(7, "新的一条"))
        assert message is not None and message.id == 42
    finally:
        store.close()


# -- one daemon per store, whatever the path ----------------------------------------------


@pytest.mark.parametrize("link", ["file", "folder"])
def test_a_second_claim_through_a_symlink_is_refused(tmp_path, link):
    real = tmp_path / "real"
    real.mkdir()
    first = Store(real / "responder.db")
    first.claim_exclusive()
    if link == "file":
        (tmp_path / "alias.db").symlink_to(real / "responder.db")
        other_path = tmp_path / "alias.db"
    else:
        (tmp_path / "alias").symlink_to(real)
        other_path = tmp_path / "alias" / "responder.db"
    second = Store(other_path)
    try:
        with pytest.raises(StoreError, match=f"another responder \\(pid {os.getpid()}\\)"):
            second.claim_exclusive()
    finally:
        second.close()
        first.close()


def test_the_claim_is_free_again_once_the_holder_closes(tmp_path):
    first = Store(tmp_path / "responder.db")
    first.claim_exclusive()
    first.close()
    (tmp_path / "alias.db").symlink_to(tmp_path / "responder.db")
    second = Store(tmp_path / "alias.db")
    second.claim_exclusive()
    second.close()


# -- files that are not a store are refused, never made new --------------------------------


def test_an_empty_store_file_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "responder.db"
    path.write_bytes(b"")
    with pytest.raises(StoreError, match="is an empty file \\(0 bytes\\), not a store"):
        Store(path)
    assert path.stat().st_size == 0


def test_a_file_that_is_not_an_sqlite_database_is_refused(tmp_path):
    path = tmp_path / "responder.db"
    path.write_bytes(b"id,src,text\n1,13800138000,CX\n" * 200)
    with pytest.raises(StoreError, match="is not an SQLite database"):
        Store(path)


def test_a_missing_store_is_created_whole_with_nothing_left_beside_it(tmp_path):
    Store(tmp_path / "responder.db").close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["responder.db"]
    assert (tmp_path / "responder.db").read_bytes()[:16] == b"SQLite format 3\x00"


def damage_pages(path, first_page: int = 2) -> None:
    """Overwrite every page from ``first_page`` on with garbage (page 1 keeps the header)."""
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.seek(4096 * (first_page - 1))
        handle.write(b"\xa5" * (size - 4096 * (first_page - 1)))


def filled_store(path, messages: int = 300) -> None:
    store = Store(path)
    for number in range(messages):
        store.journal(sms(number, "查询" * 20))
    store.close()


def test_damaged_pages_are_a_store_error_naming_the_damage(tmp_path):
    path = tmp_path / "responder.db"
    filled_store(path)
    damage_pages(path)
    with pytest.raises(StoreError, match=r"is damaged .*restore a backup") as caught:
        store = Store(path)
        try:
            store.verify()
        finally:
            store.close()
    assert "\n" not in str(caught.value)


# -- retention -----------------------------------------------------------------------------

DAY = 86400.0


def aged_store(tmp_path, clock) -> dict[str, int]:
    """One message in each finishing state, a year and a day old; returns their ids."""
    store = Store(tmp_path / "responder.db", clock=clock)
    ids = {}
    for number, kind in enumerate(
        ["replied", "ignored", "failed", "dead", "processed", "received", "late reply"], start=1
    ):
        message = store.journal(sms(number, kind))
        ids[kind] = message.id
        if kind == "received":
            continue
        replies = [] if kind in ("ignored", "failed") else [OutgoingSms(("13800138000",), "ok")]
        store.finish_message(
            message.id, outgoing=replies, state=FAILED if kind == "failed" else None
        )
        for row in store.due_outbox():
            store.claim_send(row.id)
            if kind == "dead":
                store.record_dead(row.id, error="refused")
            elif kind != "processed":
                store.record_sent(row.id, raw="num=1", errid=0)
    clock.advance(366 * DAY)
    store.add_replies(ids["late reply"], [OutgoingSms(("13800138000",), "later")])
    [late] = store.due_outbox()
    store.claim_send(late.id)
    store.record_sent(late.id, raw="num=1", errid=0)
    store.close()
    return ids


@pytest.mark.parametrize(
    ("kind", "pruned"),
    [
        ("replied", True),
        ("ignored", True),
        ("failed", False),  # set aside: someone should look at it
        ("dead", False),  # a dead letter
        ("processed", False),  # its reply is still pending
        ("received", False),  # not processed yet
        ("late reply", False),  # a reply sent within keep_days
    ],
)
def test_retention_prunes_only_finished_messages_older_than_keep_days(
    tmp_path, clock, kind, pruned
):
    ids = aged_store(tmp_path, clock)
    store = Store(tmp_path / "responder.db", clock=clock)
    try:
        replies = len(store.outbox_for(ids[kind]))
        store.prune(365)
        assert (store.get_message(ids[kind]) is None) == pruned
        assert len(store.outbox_for(ids[kind])) == (0 if pruned else replies)
    finally:
        store.close()


def test_retention_keeps_messages_younger_than_keep_days(tmp_path, clock):
    aged_store(tmp_path, clock)
    store = Store(tmp_path / "responder.db", clock=clock)
    try:
        assert store.prune(367) == (0, 0)
        assert len(store.messages_since(0)) == 7
    finally:
        store.close()


def test_keep_days_0_keeps_everything(tmp_path, clock):
    aged_store(tmp_path, clock)
    store = Store(tmp_path / "responder.db", clock=clock)
    try:
        clock.advance(3650 * DAY)
        assert store.prune(0) == (0, 0)
        assert len(store.messages_since(0)) == 7
    finally:
        store.close()


def test_retention_works_through_many_batches(tmp_path, clock):
    store = Store(tmp_path / "responder.db", clock=clock)
    try:
        for number in range(25):
            message = store.journal(sms(number, f"m{number}"))
            store.finish_message(message.id, outgoing=[])
        clock.advance(2 * DAY)
        assert store.prune(1, batch=4) == (25, 0)
        assert store.messages_since(0) == []
    finally:
        store.close()


# -- a journal that cannot take a message holds reading ------------------------------------


@pytest.mark.parametrize(
    ("room", "held"), [(MIN_FREE_BYTES - 1, True), (MIN_FREE_BYTES, False), (-5, True)]
)
def test_reading_is_held_when_the_store_has_too_little_room(tmp_path, room, held):
    store = Store(tmp_path / "responder.db", room=lambda _path: room)
    try:
        assert bool(store.journal_problem()) == held
    finally:
        store.close()


def test_a_read_start_mark_the_store_refuses_is_journal_unwritable(store):
    store.query("PRAGMA query_only = 1")  # SQLite refuses every write on this connection
    with pytest.raises(JournalUnwritable, match="readonly"):
        store.set_last_read_at(1.0)
    assert store.probe_write() != ""


def test_the_room_counts_the_process_file_size_limit(tmp_path):
    Store(tmp_path / "responder.db").close()
    size = (tmp_path / "responder.db").stat().st_size
    script = (
        "import resource, sys; from pathlib import Path; from responder.store import store_room;"
        " resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY));"
        " print(store_room(Path(sys.argv[1])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "responder.db")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(result.stdout) == 1_000_000 - size


@pytest.mark.parametrize(("value", "problem"), [(-1, "must be at least 0"), ("1y", "an integer")])
def test_a_bad_keep_days_is_a_config_error_naming_the_key(sandbox, tmp_path, value, problem):
    data = config_dict(sandbox, tmp_path, store={"keep_days": value})
    with pytest.raises(ConfigError, match=rf"store\.keep_days: .*{problem}"):
        settings_from_dict(data, environ={})


# -- whoever opens the store closes it -----------------------------------------------------


def test_an_app_closes_the_store_build_app_opened(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    settings = settings_from_dict(
        offline_config(tmp_path, store={"path": str(folder / "responder.db")}), environ={}
    )
    app = build_app(settings, dry_run=True)
    app.store.set_meta("touched", "1")  # a connection, and the -wal and -shm files, open

    app.close()

    assert open_files_under(folder) == []


def test_an_app_leaves_open_a_store_passed_in_for_its_opener_to_close(tmp_path):
    folder = tmp_path / "state"
    folder.mkdir()
    settings = settings_from_dict(
        offline_config(tmp_path, store={"path": str(folder / "responder.db")}), environ={}
    )
    store = Store(settings.store.path)
    app = build_app(settings, store=store, dry_run=True)
    app.close()

    store.set_meta("still", "open")
    assert store.get_meta("still") == "open"
    store.close()
    assert open_files_under(folder) == []


def test_no_code_outside_the_store_uses_sqlite3():
    """The store wraps SQLite's errors in StoreError: nothing else imports or catches them,
    so a second backend needs no change outside responder/store/."""
    root = Path(__file__).parent.parent
    sources = [*(root / "responder").rglob("*.py"), *(root / "plugins").rglob("*.py")]
    using = [
        str(path.relative_to(root))
        for path in sources
        if "store" not in path.relative_to(root).parts[1:2]
        and "sqlite3" in path.read_text(encoding="utf-8")
    ]
    assert using == []
