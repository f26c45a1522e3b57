"""A real PostgreSQL server for the tests, and a database per test.

RESPONDER_TEST_POSTGRES names a server (a URL to its maintenance database, whose user may
create databases). Without it, a cluster of its own is started with .ci/postgres for the
session when PostgreSQL is installed; otherwise the tests skip, or fail under CI=true: CI
skips nothing. A test that restarts or stops its server has a cluster of its own
(``private_postgres``): the others share theirs, and may run at the same time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELPER = ROOT / ".ci" / "postgres"


@dataclass(frozen=True)
class PgServer:
    url: str
    """The maintenance database's URL."""
    folder: Path | None
    """The .ci/postgres folder of the cluster, when the tests may restart it."""

    def restart(self) -> None:
        assert self.folder is not None
        subprocess.run([str(HELPER), "restart", str(self.folder)], check=True, timeout=120)

    def stop(self) -> None:
        assert self.folder is not None
        subprocess.run([str(HELPER), "stop", str(self.folder)], check=True, timeout=120)

    def start(self) -> None:
        assert self.folder is not None
        subprocess.run([str(HELPER), "start", str(self.folder)], check=True, timeout=120)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}")
    pytest.skip(f"no PostgreSQL server: {reason}")


def _installed() -> bool:
    return bool(list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))) or bool(
        shutil.which("initdb")
    )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    url = os.environ.get("RESPONDER_TEST_POSTGRES", "")
    if url:
        yield PgServer(url, None)
        return
    yield from _own_cluster()


@pytest.fixture
def private_postgres() -> Iterator[PgServer]:
    """A cluster of this test's own, which it may restart or stop without disturbing the
    tests that share ``postgres_server`` (they may run at the same time)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install -e '.[test]')")
    yield from _own_cluster()


def _own_cluster() -> Iterator[PgServer]:
    if not _installed():
        _unavailable("set RESPONDER_TEST_POSTGRES, or install the Debian package postgresql")
    # Not under pytest's own temporary folder: as root, the server runs as "postgres",
    # which must be able to reach its folder.
    folder = Path(tempfile.mkdtemp(prefix="responder-pg-"))
    done = subprocess.run(
        [str(HELPER), "start", str(folder)], capture_output=True, text=True, timeout=180
    )
    if done.returncode != 0:
        _unavailable(f".ci/postgres could not start a cluster: {done.stderr.strip()}")
    try:
        yield PgServer(done.stdout.strip().splitlines()[-1], folder)
    finally:
        subprocess.run([str(HELPER), "remove", str(folder)], timeout=120)


def database_url(server_url: str, name: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(server_url)
    params["dbname"] = name
    host, port, user = params.get("host", ""), params.get("port", ""), params.get("user", "")
    if host and not str(host).startswith("/"):
        return f"postgresql://{user}@{host}:{port}/{name}"
    return make_conninfo(server_url, dbname=name)


def create_database(server: PgServer) -> tuple[str, str]:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, database_url(server.url, name)


def drop_database(server: PgServer, name: str) -> None:
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def refuse_writes(server: PgServer, name: str) -> None:
    """Every later transaction on database ``name`` is read-only (as a full disk or a
    read-only server refuses writes): its sessions are ended, new ones are read-only."""
    import psycopg

    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )


@pytest.fixture
def postgres_database(postgres_server: PgServer) -> Iterator[str]:
    """A fresh database of its own for one test: its URL."""
    name, url = create_database(postgres_server)
    try:
        yield url
    finally:
        drop_database(postgres_server, name)
