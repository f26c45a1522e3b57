"""``responder status``: the store's figures, and exit 1 when reads are stale."""

from __future__ import annotations

import json
import time

import pytest

from responder.cli import main
from responder.models import InboundSms
from responder.store import OutgoingSms, Store
from tests.conftest import config_dict, write_config

STATUS_PLUGIN = """
from responder import hookimpl
from responder.models import StatusSection

@hookimpl
def responder_status(app):
    return StatusSection(title="counter", figures=(("seen", 3),))
"""


@pytest.fixture
def config(sandbox, tmp_path):
    return write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "responder.db")
    yield store
    store.close()


def status(config, *args: str) -> int:
    return main(["status", "-c", str(config), *args])


def test_no_store_yet_exits_1_and_says_the_daemon_has_not_run(config, capsys):
    assert status(config) == 1
    assert "no store yet" in capsys.readouterr().err


def test_a_store_never_read_into_is_unhealthy(config, store, capsys):
    assert status(config) == 1
    out = capsys.readouterr().out
    assert "last good read: never" in out
    assert "unhealthy: no successful read in the last 300 s" in out


def test_a_recent_successful_read_is_healthy(config, store, capsys):
    store.set_last_read_ok_at(time.time() - 10)

    assert status(config, "--json") == 0
    assert json.loads(capsys.readouterr().out)["healthy"] is True


def test_a_successful_read_older_than_max_age_exits_1(config, store, capsys):
    store.set_last_read_ok_at(time.time() - 120)

    assert status(config, "--max-age", "60") == 1
    assert "unhealthy: no successful read in the last 60 s" in capsys.readouterr().out


def test_failed_read_attempts_do_not_count_as_healthy(config, store, capsys):
    store.set_last_read_at(time.time())  # the read gate marks every attempt
    store.set_last_read_ok_at(time.time() - 3600)

    assert status(config, "--json") == 1
    record = json.loads(capsys.readouterr().out)
    assert record["healthy"] is False
    assert record["last_read_at"] > record["last_read_ok_at"]


def test_json_carries_the_same_figures_as_the_metrics(tmp_path, sandbox, store, capsys):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "counter.py").write_text(STATUS_PLUGIN, encoding="utf-8")
    data = config_dict(sandbox, tmp_path, plugins={"paths": [str(folder)]})
    config = write_config(tmp_path / "config.toml", data)
    store.set_last_read_ok_at(time.time())

    assert status(config, "--json") == 0

    record = json.loads(capsys.readouterr().out)
    assert record["outbox_depth"] == 0
    assert record["dead_letters"] == 0
    assert record["sends"] == []
    assert record["plugins"]["counter"] == {"seen": 3}


def test_the_text_report_shows_plugin_sections_and_sends(tmp_path, sandbox, store, capsys):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "counter.py").write_text(STATUS_PLUGIN, encoding="utf-8")
    data = config_dict(sandbox, tmp_path, plugins={"paths": [str(folder)]})
    config = write_config(tmp_path / "config.toml", data)
    store.set_last_read_ok_at(time.time())

    assert status(config) == 0

    out = capsys.readouterr().out
    assert "counter:\n  seen: 3" in out
    assert "sends:          none" in out
    assert "dead letters:   0" in out


def test_sends_count_every_row_not_one_per_distinct_answer(tmp_path, sandbox, store, capsys):
    """Each sent row keeps its own raw answer: grouping must not split (or collapse) on it."""
    for number in range(1, 4):
        message = store.journal(
            InboundSms(number, "13800138000", "0888008", "CX", None, f"id={number}")
        )
        store.finish_message(message.id, outgoing=[OutgoingSms(("13800138000",), "ok")])
        [row] = store.due_outbox()
        store.claim_send(row.id)
        store.record_sent(row.id, raw=f"num=1&success=13800138000&msgid={number}", errid=0)
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))

    status(config, "--json")

    assert json.loads(capsys.readouterr().out)["sends"] == [
        {"result": "sent", "errid": "0", "count": 3}
    ]


def test_messages_dropped_as_read_twice_are_counted(config, store, capsys):
    message = InboundSms(7, "13800138000", "0888008", "CX", None, "id=7")
    for _read in range(3):
        store.journal(message)

    status(config)

    assert "duplicates:     2 message(s) read twice, dropped" in capsys.readouterr().out
