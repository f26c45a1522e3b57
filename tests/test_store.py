"""The SQLite store: schema, message and outbox states, recovery after a crash."""

from __future__ import annotations

import sqlite3

import pytest

from responder import hookimpl, sender
from responder.models import InboundSms
from responder.store import (
    DEAD,
    FAILED,
    PENDING,
    PROCESSED,
    RECEIVED,
    REPLIED,
    SCHEMA,
    SENT,
    OutgoingSms,
    Store,
    StoreError,
)
from tests.conftest import config_dict


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
    ("policy", "state", "uncertain"), [("resend", PENDING, 1), ("give_up", DEAD, 0)]
)
def test_sends_left_in_flight_by_a_crash_follow_the_uncertain_policy(
    sandbox, tmp_path, make_app, policy, state, uncertain
):
    app = make_app(config_dict(sandbox, tmp_path, replies={"on_uncertain": policy}))
    message = app.store.journal(sms())
    app.store.finish_message(message.id, outgoing=[OutgoingSms(("13800138000",), "ok")])
    [row] = app.store.due_outbox()
    app.store.claim_send(row.id)  # the process dies here, mid-request
    assert sender.recover_in_flight(app) == 1
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
    with pytest.raises(sqlite3.IntegrityError), store.transaction() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('k', NULL)")
    store.set_meta("k", "v")
    assert store.get_meta("k") == "v"


@pytest.mark.parametrize(("policy", "status"), [("resend", "uncertain"), ("give_up", "dead")])
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
    sender.recover_in_flight(app)
    assert seen == [status]
