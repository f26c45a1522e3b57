"""Two instances on one real PostgreSQL store share ten accounts of the simulator, and
survive a kill -9, a pause past the lease, a server restart and a network cut.

Each test reports (and asserts) what was lost (only a read in flight at the failure
may be), what was sent twice (only sends whose outcome was unknown), and the read
interval's violations (none) as the simulator counted them per account.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from responder.sandbox import Sandbox
from tests.ha_cluster import (
    ACCOUNTS,
    INTERVAL,
    LEASE,
    Instance,
    Report,
    Traffic,
    balanced,
    cluster_config,
    holder_of,
    holdings,
    report,
    settle,
    wait_until,
)
from tests.pg import PgServer, create_database


@pytest.fixture
def gateway() -> Iterator[Sandbox]:
    first, password = next(iter(ACCOUNTS.items()))
    with Sandbox(
        name=first, password=password, accounts=ACCOUNTS, min_read_interval=INTERVAL
    ) as server:
        yield server


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    started: list[Instance] = []
    yield started
    for instance in started:
        instance.stop()


def start_pair(
    tmp_path: Path, url: str, sandbox: Sandbox, started: list[Instance]
) -> tuple[Instance, Instance]:
    config = cluster_config(tmp_path, url, sandbox.url)
    first = Instance(config, tmp_path / "first.log")
    second = Instance(config, tmp_path / "second.log")
    started.extend((first, second))
    wait_until(lambda: balanced(url, 2), 30, "the accounts split between two instances")
    return first, second


def one_holds_all(url: str) -> bool:
    return any(len(accounts) == len(ACCOUNTS) for accounts in holdings(url).values())


def check(result: Report, *, may_lose: int) -> None:
    print(result.line())
    assert result.violations == 0, result.line()
    assert result.lost <= may_lose, result.line()
    assert result.duplicates <= result.uncertain, result.line()


def logs(started: list[Instance]) -> list[str]:
    return [instance.log() for instance in started]


def test_kill_9_of_an_instance_hands_its_accounts_to_the_other(
    tmp_path, postgres_database, gateway, instances
):
    first, _second = start_pair(tmp_path, postgres_database, gateway, instances)
    with Traffic(gateway) as traffic:
        time.sleep(1)
        name = holder_of(postgres_database, first.pid)
        theirs = holdings(postgres_database)[name]
        first.kill9()
        wait_until(
            lambda: one_holds_all(postgres_database),
            LEASE * 4 + 10,
            "the other instance holding every account",
        )
        time.sleep(1)
    settle(gateway, postgres_database, traffic)
    check(report(gateway, postgres_database, traffic, logs(instances)), may_lose=len(theirs))


def test_a_paused_instance_does_not_read_again_before_taking_a_lease_back(
    tmp_path, postgres_database, gateway, instances
):
    first, _second = start_pair(tmp_path, postgres_database, gateway, instances)
    with Traffic(gateway) as traffic:
        time.sleep(1)
        first.signal(signal.SIGSTOP)
        paused = time.monotonic()
        wait_until(
            lambda: one_holds_all(postgres_database),
            LEASE * 4 + 10,
            "the other instance holding every account",
        )
        time.sleep(max(0.0, paused + 2 * LEASE - time.monotonic()))
        first.signal(signal.SIGCONT)
        wait_until(lambda: balanced(postgres_database, 2), 30, "the accounts split again")
        time.sleep(1)
    settle(gateway, postgres_database, traffic)
    text = first.log()
    assert '"lease_lost"' in text or '"lease_expired"' in text
    check(report(gateway, postgres_database, traffic, logs(instances)), may_lose=len(ACCOUNTS))


def test_a_postgresql_restart_under_load_loses_nothing(
    tmp_path, private_postgres: PgServer, gateway, instances
):
    _name, url = create_database(private_postgres)
    try:
        start_pair(tmp_path, url, gateway, instances)
        with Traffic(gateway) as traffic:
            time.sleep(1)
            private_postgres.restart()
            time.sleep(2)
        settle(gateway, url, traffic, timeout=45)
        check(report(gateway, url, traffic, logs(instances)), may_lose=0)
    finally:
        for instance in instances:
            instance.stop()


# -- a network cut between one instance and PostgreSQL ----------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _netns_problem() -> str:
    import os

    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2)"
    probe = f"rhaprobe{uuid.uuid4().hex[:4]}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as err:
        return f"ip netns is not available here: {err}"
    return ""


class Partition:
    """A network namespace for one instance, joined to the host by a veth link on which
    the PostgreSQL server listens; the simulator also answers inside it on loopback."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:4]
        self.ns = f"rha{tag}"
        self.host_link, self.ns_link = f"rhp{tag}", f"rhq{tag}"
        net = f"10.231.{int(tag, 16) % 200 + 20}"
        self.pg_address = f"{net}.1"
        _ip("netns", "add", self.ns)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("link", "add", self.host_link, "type", "veth", "peer", "name", self.ns_link)
        _ip("link", "set", self.ns_link, "netns", self.ns)
        _ip("addr", "add", f"{net}.1/24", "dev", self.host_link)
        _ip("-n", self.ns, "addr", "add", f"{net}.2/24", "dev", self.ns_link)
        _ip("link", "set", self.host_link, "up")
        _ip("-n", self.ns, "link", "set", self.ns_link, "up")

    def cut(self) -> None:
        _ip("link", "set", self.host_link, "down")

    def mend(self) -> None:
        _ip("link", "set", self.host_link, "up")

    def serve_inside(self, sandbox: Sandbox) -> Callable[[], None]:
        """The simulator also on loopback inside the namespace (the daemon there takes
        it for the built-in simulator); returns what stops it."""
        import ctypes
        import threading

        from responder.sandbox import _Handler, _Server

        libc = ctypes.CDLL(None, use_errno=True)
        made: list[_Server] = []

        def bind() -> None:
            # setns changes this thread's namespace only: the socket is made inside it
            with open(f"/run/netns/{self.ns}") as inside:
                if libc.setns(inside.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            server = _Server(("127.0.0.1", sandbox.port), _Handler)
            server.sandbox = sandbox
            made.append(server)

        thread = threading.Thread(target=bind)
        thread.start()
        thread.join()
        if not made:
            raise OSError("could not listen inside the namespace")
        server = made[0]
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

        def stop() -> None:
            server.shutdown()
            server.server_close()

        return stop

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_link], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=10)


CLONE_NEWNET = 0x40000000


def _server_on(folder: Path, address: str) -> tuple[str, list[str]]:
    """A throwaway cluster listening on ``address`` too (trusting its network)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    initdb = str(found[-1]) if found else shutil.which("initdb")
    if not initdb:
        pytest.skip("no PostgreSQL server installed (initdb)")
    bin_dir = Path(initdb).parent
    folder.mkdir(parents=True, exist_ok=True)
    shutil.chown(folder, "postgres")
    owner = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    subprocess.run(
        [*owner, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    net = address.rsplit(".", 1)[0]
    with open(data / "pg_hba.conf", "a", encoding="utf-8") as hba:
        hba.write(f"host all all {net}.0/24 trust\n")
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1,{address} -c fsync=off"
        " -c synchronous_commit=off -c max_connections=100 -c shared_buffers=16MB"
    )
    ctl = [*owner, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*ctl, "-l", str(folder / "server.log"), "-w", "-t", "60", "start", "-o", options],
        check=True,
        capture_output=True,
        timeout=90,
    )
    return f"postgresql://postgres@{address}:{port}/postgres", [*ctl, "-m", "immediate", "stop"]


def test_a_network_cut_between_an_instance_and_postgresql(tmp_path, gateway, instances):
    problem = _netns_problem()
    if problem:
        pytest.skip(problem)
    partition = Partition()
    server_folder = Path(f"/tmp/responder-ha-pg-{uuid.uuid4().hex[:6]}")
    stop_server: list[str] = []
    try:
        maintenance, stop_server = _server_on(server_folder, partition.pg_address)
        with psycopg.connect(maintenance, autocommit=True) as conn:
            conn.execute("CREATE DATABASE ha")
        url = maintenance.rsplit("/", 1)[0] + "/ha"
        stop_inside = partition.serve_inside(gateway)
        try:
            # the same files, each instance its own copy (no other difference)
            inside = Instance(
                cluster_config(tmp_path / "inside", url, gateway.url),
                tmp_path / "inside.log",
                netns=partition.ns,
            )
            instances.append(inside)
            outside = Instance(
                cluster_config(tmp_path / "outside", url, gateway.url), tmp_path / "outside.log"
            )
            instances.append(outside)
            wait_until(lambda: balanced(url, 2), 30, "the accounts split between two instances")
            with Traffic(gateway) as traffic:
                time.sleep(1)
                partition.cut()
                wait_until(
                    lambda: one_holds_all(url),
                    LEASE * 4 + 10,
                    "the other instance holding every account",
                )
                time.sleep(LEASE)
                partition.mend()
                wait_until(lambda: balanced(url, 2), 40, "the accounts split again")
                time.sleep(1)
            settle(gateway, url, traffic, timeout=45)
            assert '"heartbeat_failed"' in inside.log()
            check(report(gateway, url, traffic, logs(instances)), may_lose=len(ACCOUNTS))
        finally:
            stop_inside()
    finally:
        for instance in instances:
            instance.stop()
        if stop_server:
            subprocess.run(stop_server, capture_output=True, timeout=60)
        partition.remove()
        shutil.rmtree(server_folder, ignore_errors=True)
