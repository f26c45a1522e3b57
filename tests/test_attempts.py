"""Processing attempts: only a plugin's failure counts towards setting a message aside, never
the store's (a full disk), so a healthy message is answered once there is room again."""

from __future__ import annotations

import pytest

from responder import hookimpl, pipeline
from responder.models import Reply
from responder.pipeline import MAX_ATTEMPTS
from responder.store import FAILED, PROCESSED, StatementError, StoreError
from tests.conftest import config_dict
from tests.test_pipeline import inbound

NO_LIMIT = 1_073_741_823
"""SQLite's default max_page_count."""


class Notes:
    """A plugin keeping a sizeable note per message in its own table, then answering."""

    @hookimpl
    def responder_reply(self, app, message):
        with app.store.transaction() as tx:
            tx.execute(
                "INSERT INTO notes (message_id, note) VALUES (?, ?)", (message.id, "n" * 9000)
            )
        return Reply(text="已受理")


class BadQuery:
    """A plugin with a bug in its SQL: its failure, not the store's."""

    @hookimpl
    def responder_reply(self, app, message):
        app.store.query("SELECT total FROM no_such_table")


def fill_the_store(app) -> None:
    """No page more for this connection: the next write that needs one fails SQLITE_FULL,
    as on a full disk. VACUUM first: free pages (a table dropped by a migration) would
    take the next writes."""
    app.store.query("VACUUM")
    pages = app.store.query("PRAGMA page_count")[0][0]
    app.store.query(f"PRAGMA max_page_count = {pages}")


def attempts(app, message_id: int) -> int:
    return app.store.query("SELECT attempts FROM messages WHERE id = ?", (message_id,))[0][0]


def test_a_full_store_during_processing_does_not_count_as_an_attempt(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path), extra_plugins=(("notes", Notes()),))
    app.store.migrate("notes", ["CREATE TABLE notes (message_id INTEGER, note TEXT)"])
    message = app.store.journal(inbound("CX"))
    fill_the_store(app)
    for _restart in range(MAX_ATTEMPTS + 1):  # the daemon stops on each; systemd restarts it
        with pytest.raises(StoreError, match="full") as raised:
            pipeline.process(app, message)
        assert not isinstance(raised.value, StatementError)
    assert attempts(app, message.id) == 0


def test_a_message_held_up_by_a_full_store_is_answered_once_there_is_room(
    sandbox, tmp_path, make_app
):
    app = make_app(config_dict(sandbox, tmp_path), extra_plugins=(("notes", Notes()),))
    app.store.migrate("notes", ["CREATE TABLE notes (message_id INTEGER, note TEXT)"])
    message = app.store.journal(inbound("CX"))
    fill_the_store(app)
    for _restart in range(MAX_ATTEMPTS + 1):
        with pytest.raises(StoreError):
            pipeline.process(app, message)
    app.store.query(f"PRAGMA max_page_count = {NO_LIMIT}")

    decision = pipeline.process(app, message)

    assert decision.final is not None and decision.final.text == "已受理"
    assert app.store.message_state(message.id)[0] == PROCESSED


def test_a_plugin_query_bug_counts_and_the_message_is_set_aside(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path), extra_plugins=(("bad", BadQuery()),))
    message = app.store.journal(inbound("CX"))
    for _restart in range(MAX_ATTEMPTS):
        with pytest.raises(StatementError, match="no such table"):
            pipeline.process(app, message)
    pipeline.process(app, message)
    assert app.store.message_state(message.id)[0] == FAILED
