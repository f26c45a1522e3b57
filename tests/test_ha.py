"""Leases of several instances on one real PostgreSQL store (responder.ha)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from responder.ha import (
    HaSettings,
    InstanceTaken,
    LocalLeases,
    PgLeases,
    ReadFenced,
    cluster_status,
    format_cluster,
    leases_for,
)
from responder.store.postgres import PostgresStore

ACCOUNTS = [f"a{i}" for i in range(10)]


@pytest.fixture
def store(postgres_database: str) -> Iterator[PostgresStore]:
    pg = PostgresStore(postgres_database)
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture
def instances(store: PostgresStore) -> Iterator[Callable[..., PgLeases]]:
    made: list[PgLeases] = []

    def make(name: str, *, lease: float = 3.0) -> PgLeases:
        leases = leases_for(store, HaSettings(lease=lease, instance=name))
        assert isinstance(leases, PgLeases)
        leases.setup()
        leases._accounts = list(ACCOUNTS)
        made.append(leases)
        return leases

    yield make
    for leases in made:
        leases._drop_connection()


def sql(store: PostgresStore, statement: str, params: tuple[object, ...] = ()) -> list[tuple]:
    with psycopg.connect(store.url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def age_leases(store: PostgresStore, holder: str, seconds: float) -> None:
    """Move a holder's leases (and heartbeat) into the past: as if it went silent."""
    sql(
        store,
        "UPDATE ha_leases SET expires_at = expires_at - %s::interval WHERE holder = %s",
        (f"{seconds} seconds", holder),
    )
    sql(
        store,
        "UPDATE ha_instances SET heartbeat_at = heartbeat_at - %s::interval WHERE id = %s",
        (f"{seconds} seconds", holder),
    )


def test_a_sqlite_store_holds_every_account_without_a_fence(tmp_path):
    from responder.store import Store

    store = Store(tmp_path / "responder.db")
    try:
        leases = leases_for(store, HaSettings())
    finally:
        store.close()
    assert isinstance(leases, LocalLeases)
    leases.start(["b", "a"])
    assert leases.holds("a") and leases.held() == ["a", "b"]
    assert leases.fence("a", interval=6, timeout=10) is None


def test_a_lone_instance_takes_every_account(instances):
    one = instances("one")
    one.heartbeat()
    assert one.held() == sorted(ACCOUNTS)


def test_two_instances_split_the_accounts_evenly(instances):
    one, two = instances("one"), instances("two")
    one.heartbeat()
    two.heartbeat()  # sees two live instances: takes nothing yet, all are held
    one.heartbeat()  # marks the five over its share as given back
    one.heartbeat()  # gives them back (nothing in flight)
    two.heartbeat()
    assert len(one.held()) == 5 and len(two.held()) == 5
    assert not set(one.held()) & set(two.held())


def test_an_account_in_use_is_given_back_only_once_its_work_ended(instances, store):
    one = instances("one")
    one.heartbeat()
    holder = "SELECT holder FROM ha_leases WHERE account = 'a0'"
    with one.use("a0") as ok:
        assert ok
        one.set_accounts(ACCOUNTS[1:])  # a0 left the configuration
        assert not one.holds("a0")
        one.heartbeat()
        assert sql(store, holder) == [("one",)]
    one.heartbeat()
    assert sql(store, holder) == [("",)]


def test_the_instance_with_the_most_gives_back_the_idle_ones_first(instances):
    one = instances("one")
    one.heartbeat()
    with one.use("a0"):
        instances("two")
        one.heartbeat()
        assert one.holds("a0")
    assert len([a for a in ACCOUNTS if one.holds(a)]) == 5


def test_the_leases_of_a_silent_instance_are_taken_over_with_a_new_token(instances, store):
    one = instances("one")
    one.heartbeat()
    two = instances("two")
    tokens = {a: one.token(a) for a in ACCOUNTS}
    age_leases(store, "one", 60)
    two.heartbeat()
    assert two.held() == sorted(ACCOUNTS)
    assert all((two.token(a) or 0) > (tokens[a] or 0) for a in ACCOUNTS)


def test_an_instance_that_lost_its_lease_is_fenced_before_reading(instances, store):
    one = instances("one")
    one.heartbeat()
    two = instances("two")
    fence = one.fence("a1", interval=0.1, timeout=1.0)
    assert fence is not None
    age_leases(store, "one", 60)
    two.heartbeat()
    with pytest.raises(ReadFenced) as caught:
        fence.enter()
    assert caught.value.lost
    assert not one.holds("a1")


def test_a_read_that_leaves_too_long_after_its_check_is_not_made(instances, monkeypatch):
    one = instances("one")
    one.heartbeat()
    fence = one.fence("a2", interval=0.1, timeout=1.0)
    assert fence is not None
    fence.enter()
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 60)
    with pytest.raises(ReadFenced, match="could not leave"):
        fence.confirm()


@pytest.mark.parametrize(
    ("ended", "fenced"),
    [(True, True), (False, True)],
    ids=["after-an-ended-read", "after-a-read-that-never-ended"],
)
def test_the_read_interval_holds_across_a_failover(instances, store, ended, fenced):
    one = instances("one")
    one.heartbeat()
    two = instances("two")
    first = one.fence("a3", interval=30.0, timeout=5.0)
    assert first is not None
    first.enter()
    if ended:
        first.leave()
    age_leases(store, "one", 120)  # the lease ran out, the read marks stay
    sql(store, "UPDATE ha_leases SET expires_at = clock_timestamp() - interval '1 second'")
    two.heartbeat()
    assert two.holds("a3")
    second = two.fence("a3", interval=30.0, timeout=5.0)
    assert second is not None
    with pytest.raises(ReadFenced) as caught:
        second.enter()
    assert not caught.value.lost
    assert 20 < caught.value.retry_in <= (30 if ended else 35)


def test_a_read_whose_lease_ran_out_meanwhile_is_counted_late(instances, store):
    one = instances("one")
    one.heartbeat()
    two = instances("two")
    fence = one.fence("a4", interval=0.1, timeout=1.0)
    assert fence is not None
    fence.enter()
    age_leases(store, "one", 60)
    two.heartbeat()
    fence.leave()
    assert one.late_reads == 1


def test_a_second_live_instance_with_the_same_name_is_refused(instances):
    instances("same").heartbeat()
    with pytest.raises(InstanceTaken, match="another instance named 'same'"):
        instances("same")


def test_stopping_gives_every_lease_back_at_once(instances, store):
    one = instances("one")
    one.heartbeat()
    two = instances("two")
    one.stop()
    two.heartbeat()
    assert two.held() == sorted(ACCOUNTS)


def test_cluster_status_shows_each_instance_and_its_leases(instances, store):
    one = instances("one")
    one.heartbeat()
    status = cluster_status(store.url, store.connect_kwargs(), 3.0)
    assert [i.id for i in status.instances] == ["one"]
    assert status.instances[0].accounts == tuple(sorted(ACCOUNTS))
    assert {lease.holder for lease in status.leases} == {"one"}
    text = "\n".join(format_cluster(status))
    assert "one" in text and "a9" in text


def write_config(tmp_path, store_url: str):
    import tomli_w

    path = tmp_path / "config.toml"
    data = {
        "gateway": {"base_urls": ["http://127.0.0.1:9"], "name": "a0", "simulator": True},
        "store": {"url": store_url},
        "ha": {"lease": 3},
    }
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_the_cluster_status_command_lists_instances_and_leases(
    instances, store, tmp_path, capsys, as_json
):
    import json

    from responder.cli import main

    instances("host-a:1").heartbeat()
    config = write_config(tmp_path, store.url)
    code = main(["cluster", "status", "-c", str(config), *(["--json"] if as_json else [])])
    out = capsys.readouterr().out
    assert code == 0
    if as_json:
        data = json.loads(out)
        assert [i["id"] for i in data["instances"]] == ["host-a:1"]
        assert len(data["instances"][0]["accounts"]) == len(ACCOUNTS)
    else:
        assert "host-a:1" in out and "live" in out and "a0" in out


def test_the_cluster_status_of_a_sqlite_store_says_there_is_no_cluster(tmp_path, capsys):
    import tomli_w

    from responder.cli import main

    path = tmp_path / "config.toml"
    data = {
        "gateway": {"base_urls": ["http://127.0.0.1:9"], "name": "a0", "simulator": True},
        "store": {"path": str(tmp_path / "r.db")},
    }
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    assert main(["cluster", "status", "-c", str(path)]) == 0
    assert "SQLite" in capsys.readouterr().out


def test_status_names_the_holder_of_the_account_lease(instances, store):
    from responder.ha import lease_line

    one = instances("host-b:2")
    one.heartbeat()
    assert lease_line(store, "a3").startswith("held by host-b:2 (token 1")
    one.stop()
    assert lease_line(store, "a3").startswith("held by no instance")


def test_a_fenced_read_sends_no_request_and_a_held_one_records_its_start_and_end(
    instances, store, sandbox, tmp_path
):
    from responder.config import settings_from_dict
    from responder.gateway import GatewayClient, ReadGate
    from tests.conftest import config_dict

    gateway = settings_from_dict(config_dict(sandbox, tmp_path), environ={}).gateway
    one = instances("one")
    one.heartbeat()
    two = instances("two")
    client = GatewayClient(gateway, read_gate=ReadGate(0.0, timeout=gateway.timeout))
    client.read_gate.fence = one.fence("a5", interval=0.0, timeout=gateway.timeout)
    try:
        assert client.read_one() is None
        marks = sql(
            store, "SELECT last_read_end >= last_read_start FROM ha_leases WHERE account = 'a5'"
        )
        assert marks == [(True,)]
        age_leases(store, "one", 60)
        two.heartbeat()
        with pytest.raises(ReadFenced):
            client.read_one()
    finally:
        client.close()
    assert sandbox.stats().reads == 1


@pytest.mark.parametrize(
    ("ha", "problem"),
    [
        ({"lease": 0.5}, "c.toml: ha.lease: must be at least 1.0 seconds"),
        ({"lease": "15"}, "c.toml: ha.lease: must be a number of seconds"),
        ({"instance": " a "}, "c.toml: ha.instance: must be a printable name"),
        ({"leases": 15}, "c.toml: ha.leases: unknown key"),
    ],
    ids=["lease-too-short", "lease-not-a-number", "instance-with-spaces", "unknown-key"],
)
def test_bad_ha_settings_name_the_file_and_key(ha, problem):
    from responder.config import ConfigError, settings_from_dict

    data = {
        "gateway": {"base_urls": ["http://127.0.0.1:9"], "name": "a", "password": "p"},
        "store": {"path": "/tmp/x.db"},
        "ha": ha,
    }
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(data, source="c.toml", environ={})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_ha_settings_default_to_a_fifteen_second_lease_named_after_the_host_and_pid():
    import os
    import socket

    from responder.ha import instance_name

    assert HaSettings().lease == 15.0
    assert instance_name(HaSettings()) == f"{socket.gethostname()}:{os.getpid()}"
    assert instance_name(HaSettings(instance="sms-a")) == "sms-a"
