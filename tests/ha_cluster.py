"""A cluster for the failover tests and benchmark: daemon processes on one PostgreSQL
store, the simulator serving ten accounts, steady traffic, and what came of it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import tomli_w

from responder.ha import ClusterStatus, cluster_status
from responder.sandbox import Sandbox

ACCOUNTS: dict[str, str] = {f"acc{i}": f"pw-{i}-密" for i in range(10)}
LEASE = 2.0
INTERVAL = 1.0
"""The simulator's read interval; the daemons poll a little slower."""
POLL = 1.2
REPLY = "已收到"


def write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def cluster_config(folder: Path, store_url: str, gateway_url: str, *, lease: float = LEASE) -> Path:
    """The main file (shared by every instance) and one file per account."""
    for name, password in ACCOUNTS.items():
        write(
            folder / "accounts.d" / f"{name}.toml",
            {"gateway": {"name": name, "password": password}},
        )
    return write(
        folder / "config.toml",
        {
            "gateway": {
                "base_urls": [gateway_url],
                "poll_interval": POLL,
                "simulator": True,
                "timeout": 2,
            },
            "store": {"url": store_url},
            "log": {"format": "json", "level": "info"},
            "replies": {"retry_initial": 0.2, "retry_max": 1.0},
            "accounts": {"include": ["accounts.d/*.toml"]},
            "keywords": {"rules": [{"keywords": ["CX"], "reply": REPLY}]},
            "ha": {"lease": lease},
        },
    )


class Instance:
    """``responder run`` as a subprocess (optionally inside a network namespace)."""

    def __init__(self, config: Path, log: Path, *, netns: str = "") -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in wait()
        command = [sys.executable, "-m", "responder", "run", "-c", str(config)]
        if netns:
            command = ["ip", "netns", "exec", netns, *command]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
        self.name = ""
        """Its instance name in the cluster (host:pid), once known."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 20.0) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.wait()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.wait()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def status(url: str, lease: float = LEASE) -> ClusterStatus:
    return cluster_status(url, {"connect_timeout": 3}, lease)


def holdings(url: str, lease: float = LEASE) -> dict[str, list[str]]:
    """Live instance -> the accounts whose lease it holds now."""
    return {i.id: list(i.accounts) for i in status(url, lease).instances if i.live}


def holder_of(url: str, pid: int) -> str:
    for inst in status(url).instances:
        if inst.pid == pid and inst.live:
            return inst.id
    return ""


def balanced(url: str, instances: int, lease: float = LEASE) -> bool:
    held = holdings(url, lease)
    counts = sorted(len(a) for a in held.values())
    return len(held) == instances and sum(counts) == len(ACCOUNTS) and counts[-1] - counts[0] <= 1


class Traffic:
    """Messages into every account in turn, each from a number of its own, until stopped."""

    def __init__(self, sandbox: Sandbox, every: float = 0.05) -> None:
        self.sandbox = sandbox
        self.every = every
        self.sent: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._numbers = itertools.count(1)

    def _run(self) -> None:
        accounts = itertools.cycle(ACCOUNTS)
        while not self._stop.wait(self.every):
            account = next(accounts)
            src = f"139{next(self._numbers):08d}"
            self.sandbox.inject(src, "CX", account=account)
            self.sent.append((account, src))

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass(frozen=True)
class Report:
    injected: int
    lost: int
    duplicates: int
    uncertain: int
    violations: int
    late_reads: int

    def line(self) -> str:
        return (
            f"injected {self.injected}, lost {self.lost}, duplicates {self.duplicates}"
            f" (uncertain sends {self.uncertain}), read-interval violations"
            f" {self.violations}, late reads {self.late_reads}"
        )


def settle(sandbox: Sandbox, url: str, traffic: Traffic, timeout: float = 30.0) -> None:
    """Wait until every message was read and every journaled one answered."""
    wait_until(lambda: sandbox.pending() == 0, timeout, "every message read")

    def answered() -> bool:
        journaled = _journaled(url)
        replied = {(s.account, n) for s in sandbox.sent() for n in s.numbers}
        return journaled <= replied

    wait_until(answered, timeout, "every journaled message answered")


def _journaled(url: str) -> set[tuple[str, str]]:
    with psycopg.connect(url) as conn:
        return {(a, s) for a, s in conn.execute("SELECT account, src FROM messages").fetchall()}


def report(sandbox: Sandbox, url: str, traffic: Traffic, logs: Sequence[str]) -> Report:
    journaled = _journaled(url)
    sends = Counter((s.account, n) for s in sandbox.sent() for n in s.numbers)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM queue_items WHERE queue = 'outbox' AND uncertain > 0"
        ).fetchone()
        uncertain = int(row[0]) if row else 0
    violations = sum(sandbox.stats(a).too_fast_reads for a in ACCOUNTS)
    late = sum(text.count('"read_late"') for text in logs)
    return Report(
        injected=len(traffic.sent),
        lost=len(set(traffic.sent) - journaled),
        duplicates=sum(n - 1 for n in sends.values() if n > 1),
        uncertain=uncertain,
        violations=violations,
        late_reads=late,
    )
