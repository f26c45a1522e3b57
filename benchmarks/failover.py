"""Failover: from the kill -9 of an instance to the first read of its accounts by another.

Run: ``python benchmarks/failover.py`` (``--kills 20 --lease 5 --instances 2``).

Instances (``responder run`` subprocesses, one configuration) share a PostgreSQL store
(a fresh database on ``--postgres URL``, else $RESPONDER_TEST_POSTGRES, else a throwaway
cluster started with .ci/postgres) and the simulator (in this process) serving ten
accounts with a read interval of 1 s (the daemons poll every 1.2 s). Each round waits
until the accounts are spread, kills the instance holding the most with SIGKILL, and
times, for each of its accounts, the first read the simulator receives after the kill
(by construction from another instance: the killed one is gone). A new instance then
takes the dead one's place. Printed: per kill, the time until the first of its accounts
and until the last of them was read again; their median and worst over the kills.

The takeover is bounded by the lease since the dead instance's last heartbeat (the
survivors look again as its leases run out), plus what is left of the read interval
since its last read. Results: docs/ha.md#measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from responder.sandbox import Sandbox  # noqa: E402
from tests.ha_cluster import (  # noqa: E402
    ACCOUNTS,
    INTERVAL,
    Instance,
    balanced,
    cluster_config,
    holdings,
    status,
    wait_until,
)


def _server(url: str) -> tuple[str, Path | None]:
    url = url or os.environ.get("RESPONDER_TEST_POSTGRES", "")
    if url:
        return url, None
    folder = Path(tempfile.mkdtemp(prefix="responder-failover-pg-"))
    done = subprocess.run(
        [str(ROOT / ".ci" / "postgres"), "start", str(folder)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if done.returncode != 0:
        raise SystemExit(f".ci/postgres could not start a cluster: {done.stderr}")
    return done.stdout.strip().splitlines()[-1], folder


def _database(server: str) -> str:
    name = f"failover_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = server.rpartition("/")
    return f"{base}/{name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--lease", type=float, default=5.0, help="[ha] lease, seconds")
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--postgres", default="", metavar="URL", help="a server to use")
    args = parser.parse_args(argv)
    server, folder = _server(args.postgres)
    work = Path(tempfile.mkdtemp(prefix="responder-failover-"))
    url = _database(server)
    first, password = next(iter(ACCOUNTS.items()))
    running: list[Instance] = []
    firsts: list[float] = []
    lasts: list[float] = []
    rows: list[str] = []
    try:
        with Sandbox(
            name=first, password=password, accounts=ACCOUNTS, min_read_interval=INTERVAL
        ) as sandbox:
            config = cluster_config(work, url, sandbox.url, lease=args.lease)
            serial = 0

            def spawn() -> Instance:
                nonlocal serial
                serial += 1
                instance = Instance(config, work / f"instance-{serial}.log")
                running.append(instance)
                return instance

            for _ in range(args.instances):
                spawn()
            for kill in range(1, args.kills + 1):
                wait_until(
                    lambda: balanced(url, args.instances, args.lease), 120, "accounts spread"
                )
                held = holdings(url, args.lease)
                victim_name = max(held, key=lambda name: len(held[name]))
                accounts = held[victim_name]
                pid = next(i.pid for i in status(url, args.lease).instances if i.id == victim_name)
                victim = next(i for i in running if i.pid == pid)
                killed_at = time.monotonic()
                victim.kill9()
                running.remove(victim)
                back: dict[str, float] = {}

                def all_read(
                    accounts: list[str] = accounts,
                    back: dict[str, float] = back,
                    killed_at: float = killed_at,
                ) -> bool:
                    for account in accounts:
                        if account in back:
                            continue
                        after = [t for t in sandbox.read_times(account) if t > killed_at]
                        if after:
                            back[account] = min(after) - killed_at
                    return len(back) == len(accounts)

                wait_until(all_read, args.lease * 4 + 30, "every account read again", 0.02)
                firsts.append(min(back.values()))
                lasts.append(max(back.values()))
                rows.append(
                    f"| {kill:>4} | {len(accounts):>8} | {firsts[-1]:>11.2f} | {lasts[-1]:>10.2f} |"
                )
                print(rows[-1], flush=True)
                spawn()
    finally:
        for instance in running:
            instance.stop()
        if folder is not None:
            subprocess.run([str(ROOT / ".ci" / "postgres"), "remove", str(folder)], timeout=120)
    print()
    print(
        f"Failover over {len(lasts)} kills: {args.instances} instances, ten accounts,"
        f" [ha] lease = {args.lease:g} s, read interval {INTERVAL:g} s (poll 1.2 s)"
    )
    print()
    print("| kill | accounts | first back s | all back s |")
    print("|-----:|---------:|-------------:|-----------:|")
    for row in rows:
        print(row)
    print()
    print("| measure | median s | worst s |")
    print("|---|---:|---:|")
    print(f"| first account read again | {statistics.median(firsts):.2f} | {max(firsts):.2f} |")
    print(f"| all its accounts read again | {statistics.median(lasts):.2f} | {max(lasts):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
