"""The PostgreSQL store beyond the shared contract: plugins' SQL on both backends, claims
across processes, the single-daemon lock, its settings and secrets, the daemon on it
(and through a server restart), and ``responder store copy`` from SQLite."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from responder.cli import main
from responder.config import ConfigError, settings_from_dict
from responder.conversations import Conversation
from responder.store import (
    FAILED,
    REPLIED,
    SCHEMA,
    OutgoingSms,
    StatementError,
    Store,
    StoreError,
    open_store,
)
from responder.store.pg_sql import translate
from tests.conftest import config_dict, wait_for, write_config
from tests.pg import PgServer, create_database
from tests.test_store_contract import sms

psycopg = pytest.importorskip("psycopg")

from responder.store.pg_schema import PG_SCHEMA_VERSION  # noqa: E402
from responder.store.postgres import PostgresStore  # noqa: E402

CUSTOMER = "13800138000"


@pytest.fixture
def pg(postgres_database: str) -> Any:
    store = PostgresStore(postgres_database)
    yield store
    store.close()


# -- ``?`` placeholders ----------------------------------------------------------------------

literal_text = st.text(
    alphabet=st.sampled_from(list("ab?%:'\"$-/* \n退订")), min_size=0, max_size=12
)


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.mark.parametrize(
    ("sql", "named", "expected"),
    [
        ("SELECT ?", False, "SELECT %s"),
        ("SELECT '?', ?", False, "SELECT '?', %s"),
        ("SELECT '50%' LIKE ?", False, "SELECT '50%%' LIKE %s"),
        ('SELECT "odd?name" FROM t WHERE x = ?', False, 'SELECT "odd?name" FROM t WHERE x = %s'),
        ("SELECT 1 -- why?\n, ?", False, "SELECT 1 -- why?\n, %s"),
        ("SELECT /* ? */ ?", False, "SELECT /* ? */ %s"),
        ("SELECT $$ ? $$, $q$ ? $q$, ?", False, "SELECT $$ ? $$, $q$ ? $q$, %s"),
        ("SELECT E'it\\'s ?', ?", False, "SELECT E'it\\'s ?', %s"),
        ("SELECT :name, x::text", True, "SELECT %(name)s, x::text"),
        ("SELECT ':name', :n2", True, "SELECT ':name', %(n2)s"),
    ],
)
def test_placeholders_are_translated_outside_literals_only(sql, named, expected):
    assert translate(sql, named) == expected


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(parts=st.lists(st.tuples(literal_text, st.integers(-5, 5)), min_size=1, max_size=4))
def test_literals_keep_their_text_and_each_question_mark_is_a_parameter(pg, parts):
    sql = "SELECT " + ", ".join(f"{sql_literal(text)}, ?" for text, _value in parts)
    params = [value for _text, value in parts]

    row = pg.query(sql, params)[0]

    assert list(row) == [item for text, value in parts for item in (text, value)]


# -- plugins' own tables ---------------------------------------------------------------------


def test_a_migration_step_may_be_given_per_dialect(pg, tmp_path):
    steps = [
        {
            "sqlite": "CREATE TABLE t_x (at REAL)",
            "postgresql": "CREATE TABLE t_x (at DOUBLE PRECISION)",
        }
    ]
    sqlite = Store(tmp_path / "r.db")
    for store in (pg, sqlite):
        store.migrate("x", steps)
        with store.transaction() as tx:
            tx.execute("INSERT INTO t_x (at) VALUES (?)", (1_790_000_000.123456,))
        assert store.query("SELECT at FROM t_x")[0][0] == 1_790_000_000.123456
    sqlite.close()


def test_a_step_without_this_dialect_is_refused_before_anything_applies(pg):
    with pytest.raises(StatementError, match="no 'postgresql' variant"):
        pg.migrate("x", ["CREATE TABLE t_a (n TEXT)", {"sqlite": "CREATE TABLE t_b (n TEXT)"}])
    assert pg.query("SELECT * FROM t_a", missing_ok=True) == []


def test_the_built_in_plugins_schemas_apply_on_postgresql(pg):
    from responder_plugins.keywords.plugin import SCHEMA as KEYWORDS
    from responder_plugins.optout import _SCHEMA as OPTOUT
    from responder_plugins.webhook.queue import SCHEMA as WEBHOOK

    for owner, steps in (("keywords", KEYWORDS), ("optout", OPTOUT), ("webhook", WEBHOOK)):
        pg.migrate(owner, steps)
    with pg.transaction() as tx:
        tx.execute(
            "INSERT INTO optout_numbers (number, opted_out_at, message_id, source, text)"
            " VALUES (?, ?, ?, ?, ?)",
            (CUSTOMER, 1_790_000_000.5, None, "sms", "TD"),
        )
    assert pg.query("SELECT opted_out_at FROM optout_numbers")[0][0] == 1_790_000_000.5


def test_the_postgresql_schema_is_at_the_sqlite_schema_version():
    assert len(SCHEMA) == PG_SCHEMA_VERSION


def test_a_store_with_a_newer_schema_is_refused(pg, postgres_database):
    with pg.transaction() as tx:
        tx.execute("UPDATE store_schema SET version = ?", (len(SCHEMA) + 1,))
    with pytest.raises(StoreError, match="newer than this release"):
        PostgresStore(postgres_database)


# -- concurrency -------------------------------------------------------------------------------

CLAIMER = """
import json, sys
from responder.store.postgres import PostgresStore
store = PostgresStore(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # all start together
claimed = []
while True:
    items = store.queue_claim("work", 2)
    if not items:
        break
    claimed += [item.id for item in items]
print(json.dumps(claimed))
"""


def test_two_processes_never_claim_the_same_queue_item(pg, postgres_database):
    ids = {pg.queue_put("work", {"n": n})[0].id for n in range(300)}

    workers = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, postgres_database],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for worker in workers:
        assert worker.stdout is not None and worker.stdout.readline() == "ready\n"
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    claims = [json.loads(worker.communicate(timeout=120)[0]) for worker in workers]

    every = [item for claimed in claims for item in claimed]
    assert sorted(every) == sorted(ids)  # each claimed once, none left
    assert all(claims), "each process claimed some"


def test_two_rows_of_a_message_settled_at_once_settle_the_message(pg, postgres_database):
    other = PostgresStore(postgres_database)
    try:
        for _ in range(10):
            message = pg.journal(sms())
            out = [OutgoingSms((CUSTOMER,), f"part {n}") for n in (1, 2)]
            pg.finish_message(message.id, outgoing=out)
            first, second = pg.outbox_for(message.id)
            barrier = threading.Barrier(2)

            def settle(
                store: PostgresStore, row_id: int, barrier: threading.Barrier = barrier
            ) -> None:
                store.claim_send(row_id)
                barrier.wait()
                store.record_sent(row_id, raw="num=1", errid=None)

            threads = [
                threading.Thread(target=settle, args=(pg, first.id)),
                threading.Thread(target=settle, args=(other, second.id)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert pg.message_state(message.id)[0] == REPLIED
    finally:
        other.close()


def test_a_second_daemon_on_the_store_is_refused_naming_the_first(pg, postgres_database):
    pg.claim_exclusive()
    second = PostgresStore(postgres_database)
    try:
        with pytest.raises(StoreError, match=r"another responder \(responder pid \d+"):
            second.claim_exclusive()
        pg.close()
        second.claim_exclusive()  # released with the first store
    finally:
        second.close()


def test_a_lost_single_daemon_lock_is_taken_again_before_reading(pg, postgres_server):
    pg.claim_exclusive()
    with psycopg.connect(postgres_server.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name LIKE 'responder pid %'"
        )
    assert pg.journal_problem() == ""
    assert pg._exclusive is not None and not pg._exclusive.closed


# -- settings and secrets ----------------------------------------------------------------------


def store_settings(tmp_path: Path, store: dict[str, Any], environ: dict[str, str] | None = None):
    data = {
        "gateway": {"base_urls": ["http://127.0.0.1:9"], "name": "a", "password": "pw"},
        "store": store,
    }
    return settings_from_dict(data, source=str(tmp_path / "c.toml"), environ=environ or {})


@pytest.mark.parametrize(
    ("store", "environ", "password"),
    [
        ({"url": "postgresql://u@db/x"}, {}, ""),
        ({"url": "postgresql://u@db/x", "password": "inline-pw"}, {}, "inline-pw"),
        ({"url": "postgresql://u@db/x"}, {"RESPONDER_STORE_PASSWORD": "env-pw"}, "env-pw"),
        ({"url": "postgresql://u@db/x", "password_file": "pw.txt"}, {}, "file-pw"),
        ({"url": "postgresql://u@db/x"}, {"CREDENTIALS_DIRECTORY": "creds"}, "cred-pw"),
    ],
    ids=["none", "inline", "environment", "file", "systemd credential"],
)
def test_the_store_password_comes_from_any_of_the_usual_places(tmp_path, store, environ, password):
    (tmp_path / "pw.txt").write_text("file-pw\n")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "store-password").write_text("cred-pw\n")
    environ = {
        k: str(tmp_path / v) if k == "CREDENTIALS_DIRECTORY" else v for k, v in environ.items()
    }

    found = store_settings(tmp_path, store, environ).store

    assert (found.url, found.password) == ("postgresql://u@db/x", password)
    assert password not in repr(found) or not password


@pytest.mark.parametrize(
    ("store", "problem"),
    [
        ({"url": "mysql://u@db/x"}, "store.url: must be a postgresql:// URL"),
        ({"url": "postgresql://u:hunter2@db/x"}, "store.url: must not hold the password"),
        ({"url": "postgresql://u@db/x?password=hunter2"}, "store.url: must not hold the password"),
        ({"url": "postgresql://u@db/x", "path": "r.db"}, "store.path: set either"),
        ({"password": "hunter2"}, "store.password: is for a PostgreSQL store"),
    ],
)
def test_bad_store_settings_are_named_without_the_secret(tmp_path, store, problem):
    with pytest.raises(ConfigError) as raised:
        store_settings(tmp_path, store)
    assert problem in str(raised.value)
    assert "hunter2" not in str(raised.value)


def test_a_server_that_cannot_be_reached_is_a_store_error_without_the_password():
    with pytest.raises(StoreError) as raised:
        PostgresStore("postgresql://someone@127.0.0.1:9/x", password="hunter2")
    assert "127.0.0.1" in str(raised.value) and "hunter2" not in str(raised.value)


def test_the_settings_open_a_postgresql_store(tmp_path, postgres_database):
    store = open_store(store_settings(tmp_path, {"url": postgres_database}).store)
    try:
        assert store.dialect == "postgresql"
    finally:
        store.close()


# -- the daemon on PostgreSQL -----------------------------------------------------------------

RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理"}]}


def pg_config(sandbox, tmp_path: Path, url: str) -> Path:
    data = config_dict(sandbox, tmp_path, keywords=RULES, optout={})
    data["store"] = {"url": url}
    return write_config(tmp_path / "config.toml", data)


def replies(sandbox) -> list[tuple[str, str]]:
    return [(number, s.text) for s in sandbox.sent() for number in s.numbers]


def test_the_daemon_answers_and_keeps_its_opt_outs_on_postgresql(
    sandbox, tmp_path, daemons, postgres_database
):
    daemon = daemons(pg_config(sandbox, tmp_path, postgres_database), tmp_path / "d.log")
    sandbox.inject(CUSTOMER, "CX")
    wait_for(lambda: (CUSTOMER, "已受理") in replies(sandbox), timeout=30)
    sandbox.inject("13900139000", "TD")
    wait_for(lambda: any(n == "13900139000" for n, _t in replies(sandbox)), timeout=30)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0

    store = PostgresStore(postgres_database)
    try:
        states = store.status().messages
        assert sum(states.values()) == 2 and set(states) <= {REPLIED}
        assert [r["number"] for r in store.query("SELECT number FROM optout_numbers")] == [
            "13900139000"
        ]
    finally:
        store.close()


def test_the_daemon_relays_messages_to_a_webhook_on_postgresql(
    sandbox, tmp_path, daemons, postgres_database
):
    from tests.webhook_receiver import Receiver

    with Receiver() as receiver:
        data = config_dict(
            sandbox,
            tmp_path,
            keywords=RULES,
            webhook={
                "targets": [
                    {"name": "crm", "url": receiver.url(), "secret": "whsec-3f9a1c0e5b7d2468-t"}
                ]
            },
        )
        data["store"] = {"url": postgres_database}
        config = write_config(tmp_path / "config.toml", data)
        daemon = daemons(config, tmp_path / "d.log")
        sandbox.inject(CUSTOMER, "CX")
        wait_for(lambda: receiver.received(), timeout=30)
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0
    assert receiver.received()[0].json()["src"] == CUSTOMER


def test_a_second_daemon_on_a_postgresql_store_joins_and_leaves_the_account_to_the_first(
    sandbox, tmp_path, daemons, postgres_database
):
    from responder.ha import cluster_status

    config = pg_config(sandbox, tmp_path, postgres_database)
    first = daemons(config, tmp_path / "first.log")
    first.wait_for_log("daemon_started")

    second = daemons(config, tmp_path / "second.log")
    second.wait_for_log("daemon_started")

    status = cluster_status(postgres_database, {}, 15.0)
    by_pid = {inst.pid: inst.accounts for inst in status.instances}
    assert by_pid == {first.process.pid: ("default",), second.process.pid: ()}
    for daemon in (first, second):
        daemon.signal(signal.SIGTERM)
        assert daemon.wait() == 0


def test_the_daemon_prunes_and_expires_on_postgresql_when_it_starts(
    sandbox, tmp_path, postgres_database
):
    from responder.daemon import Daemon

    then = time.time() - 400 * 86400
    old_store = PostgresStore(postgres_database, clock=lambda: then)
    old = old_store.journal(sms("old"))
    old_store.finish_message(old.id, outgoing=[], reason="no reply")
    old_store.start_conversation(Conversation(CUSTOMER, "booking", "date", expires_at=then))
    old_store.close()
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    data["store"] = {"url": postgres_database}
    settings = settings_from_dict(data, source=str(tmp_path / "c.toml"), environ={})
    daemon = Daemon(settings=settings, notify=lambda _line: None, configure_logs=False)
    daemon.start()
    try:
        assert daemon.store is not None
        store = daemon.store
        wait_for(lambda: store.get_message(old.id) is None)
        wait_for(lambda: store.conversations(account=None) == [])
    finally:
        daemon.stop()


def test_a_postgresql_restart_while_the_daemon_runs_loses_nothing(
    sandbox, tmp_path, daemons, private_postgres: PgServer
):
    _name, postgres_database = create_database(private_postgres)
    daemon = daemons(pg_config(sandbox, tmp_path, postgres_database), tmp_path / "d.log")
    numbers = [f"1390000{n:04d}" for n in range(30)]
    for number in numbers[:10]:
        sandbox.inject(number, "CX")
    wait_for(lambda: len(replies(sandbox)) >= 3, timeout=30)

    private_postgres.restart()
    for number in numbers[10:]:
        sandbox.inject(number, "CX")

    wait_for(lambda: {n for n, _t in replies(sandbox)} >= set(numbers), timeout=90)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0
    store = PostgresStore(postgres_database)
    try:
        journaled = store.journal_since(0, account=None)
        assert sorted(e.message.src for e in journaled) == sorted(numbers)  # none lost, once each
        assert {e.state for e in journaled} == {REPLIED}
    finally:
        store.close()
    assert sandbox.pending() == 0


# -- ``responder store copy`` -----------------------------------------------------------------


def filled_sqlite_store(path: Path) -> Store:
    """A SQLite store with a bit of everything: messages in each state, queue items, an
    opt-out list, conversations, hand-sent SMS, meta."""
    from responder_plugins.optout import _SCHEMA as OPTOUT

    store = Store(path, clock=lambda: 1_790_000_000.25)
    replied = store.journal(sms("CX"))
    store.finish_message(replied.id, outgoing=[OutgoingSms((CUSTOMER,), "已受理", plugin="kw")])
    (row,) = store.outbox_for(replied.id)
    store.claim_send(row.id)
    store.record_sent(row.id, raw="num=1", errid=None)
    failed = store.journal(sms("CX", src="13911112222"))
    store.finish_message(failed.id, outgoing=[OutgoingSms(("13911112222",), "x")])
    (row,) = store.outbox_for(failed.id)
    store.record_dead(row.id, error="refused", errid=-2)
    store.journal(sms("pending"))
    ignored = store.journal(sms("??"))
    store.finish_message(ignored.id, outgoing=[], reason="no rule", decided_by="keywords")
    store.queue_put("webhook:t", {"event": "x", "n": 1.5}, key="k1")
    store.start_conversation(
        Conversation(
            CUSTOMER, "booking", "date", fields={"名": "王"}, started_at=1.0, updated_at=2.0
        )
    )
    store.migrate("optout", OPTOUT)
    with store.transaction() as tx:
        tx.execute(
            "INSERT INTO optout_numbers (number, opted_out_at, message_id, source, text)"
            " VALUES (?, ?, ?, ?, ?)",
            ("13700001111", 1_790_000_000.75, failed.id, "sms", "退订"),
        )
    hand = store.hand_sent_start([CUSTOMER], "客服回复", raw=False)
    store.hand_sent_finish(hand, "sent", reason="")
    store.set_meta("last_read_at", "1790000000.5")
    return store


def snapshot(store) -> dict[str, Any]:
    return {
        "journal": store.journal_since(0, account=None),
        "outbox": [store.outbox_for(e.message.id) for e in store.journal_since(0, account=None)],
        "queue": store.queue_items("webhook:t", state="pending"),
        "conversations": store.conversations(account=None),
        "optout": [tuple(r) for r in store.query("SELECT * FROM optout_numbers ORDER BY number")],
        "sent_by_hand": [tuple(r) for r in store.query("SELECT * FROM sent_by_hand ORDER BY id")],
        "status": store.status(),
        "exchange": store.exchange(CUSTOMER, limit=10),
    }


def test_store_copy_moves_a_sqlite_store_whole_into_postgresql(tmp_path, postgres_database, capsys):
    source = filled_sqlite_store(tmp_path / "r.db")
    before = snapshot(source)
    source.close()
    config = write_config(
        tmp_path / "c.toml",
        {
            "gateway": {"base_urls": ["http://127.0.0.1:9"], "name": "a", "password": "pw"},
            "store": {"path": str(tmp_path / "r.db")},
        },
    )

    assert main(["store", "copy", "-c", str(config), "--to", postgres_database]) == 0

    copied = PostgresStore(postgres_database)
    try:
        assert snapshot(copied) == before
        again = copied.journal(sms("new"))  # ids go on after the copied ones
        assert again is not None and again.id > max(e.message.id for e in before["journal"])
    finally:
        copied.close()
    assert "optout_numbers: 1 rows" in capsys.readouterr().out


def test_store_copy_refuses_a_destination_that_is_not_empty(tmp_path, postgres_database, capsys):
    filled_sqlite_store(tmp_path / "r.db").close()
    first = PostgresStore(postgres_database)
    first.journal(sms("already here"))
    first.close()

    assert main(["store", "copy", "--from", str(tmp_path / "r.db"), "--to", postgres_database]) == 1

    assert "is not empty (messages" in capsys.readouterr().err
    check = PostgresStore(postgres_database)
    try:
        assert [e.message.text for e in check.journal_since(0, account=None)] == ["already here"]
    finally:
        check.close()


def test_a_failed_send_keeps_its_message_failed_after_the_copy(tmp_path, postgres_database):
    filled_sqlite_store(tmp_path / "r.db").close()
    assert main(["store", "copy", "--from", str(tmp_path / "r.db"), "--to", postgres_database]) == 0
    copied = PostgresStore(postgres_database)
    try:
        assert copied.status().messages.get(FAILED) == 1
    finally:
        copied.close()


def test_two_daemons_cannot_copy_while_one_runs(tmp_path, postgres_database):
    store = filled_sqlite_store(tmp_path / "r.db")
    store.claim_exclusive()
    try:
        code = main(["store", "copy", "--from", str(tmp_path / "r.db"), "--to", postgres_database])
    finally:
        store.close()
    assert code == 1
