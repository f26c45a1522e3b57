"""A store file that is empty, not a database or damaged: one clear line and exit 1, from
every command, and never a new store made over it."""

from __future__ import annotations

import pytest

from responder.cli import main
from tests.conftest import config_dict, write_config
from tests.test_store import damage_pages, filled_store

EXPECTED = {
    "empty": "is an empty file (0 bytes), not a store",
    "not-sqlite": "is not an SQLite database",
    "damaged-pages": "is damaged",
}


def spoil(path, kind: str) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not-sqlite":
        path.write_text("this is a backup script, not a store\n" * 300, encoding="utf-8")
    else:
        filled_store(path)
        damage_pages(path)


@pytest.fixture
def config(sandbox, tmp_path):
    return write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_status_on_a_spoiled_store_is_one_line_and_exit_1(config, tmp_path, capsys, kind):
    db = tmp_path / "responder.db"
    spoil(db, kind)
    before = db.read_bytes()

    assert main(["status", "-c", str(config)]) == 1

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and EXPECTED[kind] in err and str(db) in err
    assert db.read_bytes() == before


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_run_on_a_spoiled_store_is_one_line_and_exit_1(config, tmp_path, daemons, kind):
    db = tmp_path / "responder.db"
    spoil(db, kind)
    before = db.read_bytes()

    daemon = daemons(config, tmp_path / "daemon.log")

    assert daemon.wait() == 1
    log = daemon.log()
    assert log.count("\n") == 1 and EXPECTED[kind] in log and "store.path:" in log
    assert db.read_bytes() == before
