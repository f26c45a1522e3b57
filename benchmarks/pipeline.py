"""The whole daemon path against a naive loop: throughput, CPU, overhead, memory, start-up.

Run: ``python benchmarks/pipeline.py`` (``--messages 5000 --runs 3 --idle-seconds 30``).

Each run starts a fresh sandbox gateway (in this process, no read interval) holding
``--messages`` inbound messages, each from its own number with a keyword text, and then:

- **daemon**: ``responder run`` as a subprocess with ``poll_interval = 0`` and the default
  built-in plugins (keywords with a few rules, optout, guard, webhook without targets).
  Every message goes the whole way: read, journal (SQLite, WAL, synchronous=FULL), the
  filters, the keyword reply, opt-out and guard checks, the outbox and the send.
  Throughput is messages / (last reply sent: ``finished_at`` of the "outbox" queue's items
  − first ``messages.journaled_at``);
  the per-message overhead is ``finished_at − journaled_at`` of each message (p50, p99);
  peak RSS is the daemon's ``VmHWM``; start-up is the time from exec to the
  ``daemon_started`` log line and to the ``READY=1`` sd_notify message. CPU per message
  is the daemon's user + system time (``/proc/<pid>/stat``) from READY=1 to the last
  send, over the messages sent meanwhile.
- **naive**: a subprocess running a plain httpx loop: read, parse, dict lookup, send,
  nothing stored. Its throughput is measured the same way (first read to last send), its
  CPU per message with ``time.process_time()`` over the same span.

With ``--store postgresql`` (or ``both``) the daemon runs are made again on a PostgreSQL
store (a fresh database per run on ``--postgres URL``, else $RESPONDER_TEST_POSTGRES,
else a throwaway cluster started with .ci/postgres), reported next to SQLite's.

Then, once, the daemon idles against a gateway with a 6 s read interval and its CPU time
is read from ``/proc/<pid>/stat`` over ``--idle-seconds``.

Medians over the runs are printed as a Markdown table with the targets. The latency with
slow plugin jobs running is measured by ``benchmarks/latency.py``. Each message gets
its own sender number, so the guard's per-sender reply limit never applies.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from responder.sandbox import Sandbox

ACCOUNT, PASSWORD = "bench", "bench-password"
KEYWORDS = ["CX", "查询", "YE", "余额", "KD 1234567", "快递 SF100200", "cx!", "HELP"]
"""Message texts, cycled: each one matches a rule."""
RULES = [
    {"keywords": ["CX", "查询"], "reply": "您好，您的查询已受理，稍后短信通知结果。"},
    {"keywords": ["YE", "余额"], "reply": "您的账户余额请登录官网查看。"},
    {"keywords": ["KD", "快递"], "match": "prefix", "reply": "快递查询：{args}"},
    {"keywords": ["HELP"], "match": "exact", "reply": "回复CX查询，回复TD退订。"},
]
TARGETS = {"throughput": 0.5, "cpu_ms": 2.0, "rss_mb": 60.0, "ready_s": 0.5, "idle_cpu": 0.5}

NAIVE = r"""
import sys, time, httpx
from urllib.parse import urlencode
base, name, pwd, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
replies = {"CX": "r1", "查询": "r1", "YE": "r2", "余额": "r2", "HELP": "r3"}
done = 0
first = last = cpu = None
with httpx.Client(timeout=10) as client:
    while done < total:
        body = client.post(base + "/send/readsms.aspx",
                           content=urlencode({"name": name, "pwd": pwd}, encoding="gbk"),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        if first is None:
            first, cpu = time.perf_counter(), time.process_time()
        fields = dict(p.partition("=")[::2] for p in body.content.decode("gbk").split("&"))
        if fields.get("id", "0") == "0":
            continue
        text = replies.get(fields["msg"].strip(), "fallback")
        client.post(base + "/send/g70send.aspx",
                    content=urlencode({"name": name, "pwd": pwd, "dst": fields["src"],
                                       "msg": text}, encoding="gbk"),
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        done += 1
        last = time.perf_counter()
print(done / (last - first), (time.process_time() - cpu) / done)
"""


@dataclass
class Run:
    daemon_rate: float
    naive_rate: float
    daemon_cpu_ms: float
    """CPU time (user + system) per message, from READY=1 to the last send."""
    naive_cpu_ms: float
    p50_ms: float
    p99_ms: float
    rss_mb: float
    started_s: float
    ready_s: float | None


def toml_value(value: Any) -> str:
    """A TOML value for the simple types used here (a JSON string is a TOML basic string)."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def write_config(
    folder: Path,
    url: str,
    poll_interval: float,
    extra: tuple[str, ...] = (),
    store_url: str = "",
) -> Path:
    """The benchmark's config in ``folder``; ``extra`` lines are appended (more tables);
    ``store_url``: a PostgreSQL store instead of SQLite's file."""
    lines = [
        "[gateway]",
        f"base_urls = {toml_value([url])}",
        f"name = {toml_value(ACCOUNT)}",
        f"password = {toml_value(PASSWORD)}",
        f"poll_interval = {poll_interval}",
        "simulator = true",
        "[store]",
        f"url = {toml_value(store_url)}"
        if store_url
        else f"path = {toml_value(str(folder / 'responder.db'))}",
        "[log]",
        'format = "json"',
        'level = "info"',
        "[keywords]",
        'fallback = "您好，请回复CX查询。"',
    ]
    for rule in RULES:
        lines.append("[[keywords.rules]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in rule.items())
    lines.extend(extra)
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def inject(sandbox: Sandbox, count: int) -> None:
    for index in range(count):
        sandbox.inject(f"13{index:09d}", KEYWORDS[index % len(KEYWORDS)])


class Started:
    """``responder run`` as a subprocess; notes when it logged daemon_started and READY=1."""

    def __init__(self, config: Path, folder: Path) -> None:
        self.notify_path = folder / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.started_at: float | None = None
        self.ready_at: float | None = None
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        self.t0 = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "responder", "run", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._threads = [
            threading.Thread(target=self._read_log, daemon=True),
            threading.Thread(target=self._read_notify, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read_log(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if self.started_at is None and b'"daemon_started"' in line:
                self.started_at = time.perf_counter() - self.t0

    def _read_notify(self) -> None:
        while self.ready_at is None:
            try:
                data = self.notify.recv(4096)
            except OSError:
                return
            if b"READY=1" in data:
                self.ready_at = time.perf_counter() - self.t0

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.notify.close()


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def daemon_run(
    messages: int, folder: Path, store_url: str = ""
) -> tuple[float, float, float, float, float, Any, float]:
    with Sandbox(name=ACCOUNT, password=PASSWORD, min_read_interval=0) as sandbox:
        inject(sandbox, messages)
        config = write_config(folder, sandbox.url, poll_interval=0, store_url=store_url)
        daemon = Started(config, folder)
        try:
            wait_until(lambda: daemon.ready_at is not None, 10, "READY=1")
            cpu, sent = daemon.cpu_seconds(), len(sandbox.sent())
            wait_until(lambda: len(sandbox.sent()) >= messages, 60 + messages / 20, "the sends")
            cpu_ms = (daemon.cpu_seconds() - cpu) * 1000 / max(messages - sent, 1)
            rss = daemon.peak_rss_mb()
        finally:
            daemon.stop()
    answered = (
        "SELECT m.journaled_at, MAX(o.finished_at) FROM messages m"
        " JOIN queue_items o ON o.message_id = m.id AND o.queue = 'outbox'"
        " WHERE o.state = 'done' GROUP BY m.id"
    )
    if store_url:
        import psycopg

        with psycopg.connect(store_url) as pg:
            pairs = pg.execute(answered).fetchall()
    else:
        with sqlite3.connect(folder / "responder.db") as conn:
            pairs = conn.execute(answered).fetchall()
    assert len(pairs) == messages, f"{len(pairs)} of {messages} messages were answered"
    span = max(sent for _, sent in pairs) - min(journaled for journaled, _ in pairs)
    overhead = [sent - journaled for journaled, sent in pairs]
    return (
        messages / span,
        percentile(overhead, 0.5) * 1000,
        percentile(overhead, 0.99) * 1000,
        rss,
        daemon.started_at or float("nan"),
        daemon.ready_at,
        cpu_ms,
    )


def naive_run(messages: int) -> tuple[float, float]:
    """The naive loop's throughput and CPU milliseconds per message."""
    with Sandbox(name=ACCOUNT, password=PASSWORD, min_read_interval=0) as sandbox:
        inject(sandbox, messages)
        output = subprocess.run(
            [sys.executable, "-c", NAIVE, sandbox.url, ACCOUNT, PASSWORD, str(messages)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60 + messages / 20,
        )
    rate, cpu = output.stdout.split()
    return float(rate), float(cpu) * 1000


def idle_cpu(seconds: float, folder: Path) -> float:
    """Percent of one core the daemon uses while idle with a 6 s read interval."""
    with Sandbox(name=ACCOUNT, password=PASSWORD, min_read_interval=5.0) as sandbox:
        config = write_config(folder, sandbox.url, poll_interval=6.0)
        daemon = Started(config, folder)
        try:
            wait_until(lambda: daemon.ready_at is not None, 10, "READY=1")
            time.sleep(2)  # let start-up work finish
            cpu, wall = daemon.cpu_seconds(), time.monotonic()
            time.sleep(seconds)
            used = daemon.cpu_seconds() - cpu
            return 100 * used / (time.monotonic() - wall)
        finally:
            daemon.stop()


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    sqlite = sqlite3.sqlite_version
    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, SQLite {sqlite}, "
        f"{platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=5000, help="inbound messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU window")
    parser.add_argument("--json", action="store_true", help="also print the runs as JSON")
    parser.add_argument(
        "--store",
        choices=("sqlite", "postgresql", "both"),
        default="sqlite",
        help="the store(s) the daemon runs on; PostgreSQL's figures are reported next to SQLite's",
    )
    parser.add_argument("--postgres", default="", metavar="URL", help="a server for --store")
    args = parser.parse_args(argv)
    postgres = PostgresRuns(args.postgres) if args.store != "sqlite" else None
    try:
        return _main(args, postgres)
    finally:
        if postgres is not None:
            postgres.close()


class PostgresRuns:
    """A PostgreSQL server for the benchmark: a fresh database per run."""

    def __init__(self, url: str) -> None:
        self.folder: Path | None = None
        url = url or os.environ.get("RESPONDER_TEST_POSTGRES", "")
        if not url:
            self.folder = Path(tempfile.mkdtemp(prefix="responder-bench-pg-"))
            helper = Path(__file__).resolve().parent.parent / ".ci" / "postgres"
            done = subprocess.run(
                [str(helper), "start", str(self.folder)], capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(f".ci/postgres could not start a cluster: {done.stderr}")
            url = done.stdout.split()[-1]
        self.url = url
        self.made: list[str] = []

    def database(self) -> str:
        import psycopg

        name = f"bench_{os.getpid()}_{len(self.made)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.made.append(name)
        return urlunsplit(urlsplit(self.url)._replace(path=f"/{name}"))

    def close(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            for name in self.made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.folder is not None:
            helper = Path(__file__).resolve().parent.parent / ".ci" / "postgres"
            subprocess.run([str(helper), "remove", str(self.folder)], capture_output=True)


def _main(args: argparse.Namespace, postgres: PostgresRuns | None) -> int:

    runs: list[Run] = []
    pg_runs: list[Run] = []
    for number in range(1, args.runs + 1):
        if postgres is not None:
            folder = Path(tempfile.mkdtemp(prefix="responder-bench-"))
            try:
                figures = daemon_run(args.messages, folder, postgres.database())
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            pg_runs.append(Run(figures[0], 0.0, figures[6], 0.0, *figures[1:6]))
            print(
                f"run {number} on PostgreSQL: daemon {figures[0]:.0f} msg/s, CPU/msg "
                f"{figures[6]:.2f} ms, overhead p50 {figures[1]:.1f} ms p99 {figures[2]:.1f} ms,"
                f" peak RSS {figures[3]:.1f} MB",
                flush=True,
            )
        if args.store == "postgresql":
            continue
        folder = Path(tempfile.mkdtemp(prefix="responder-bench-"))
        try:
            rate, p50, p99, rss, started, ready, cpu_ms = daemon_run(args.messages, folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        naive, naive_cpu = naive_run(args.messages)
        runs.append(Run(rate, naive, cpu_ms, naive_cpu, p50, p99, rss, started, ready))
        print(
            f"run {number}: daemon {rate:.0f} msg/s, naive {naive:.0f} msg/s, "
            f"CPU/msg daemon {cpu_ms:.2f} ms naive {naive_cpu:.2f} ms, "
            f"overhead p50 {p50:.1f} ms p99 {p99:.1f} ms, peak RSS {rss:.1f} MB, "
            f"started {started:.3f} s, READY=1 {ready:.3f} s",
            flush=True,
        )
    if pg_runs:
        print("\n| figure (PostgreSQL store) | value |")
        print("|---|---|")
        for label, name, unit in (
            ("daemon throughput", "daemon_rate", "msg/s"),
            ("daemon CPU per message", "daemon_cpu_ms", "ms"),
            ("overhead journal → sent, p50", "p50_ms", "ms"),
            ("overhead journal → sent, p99", "p99_ms", "ms"),
            ("peak RSS", "rss_mb", "MB"),
        ):
            value = statistics.median(getattr(run, name) for run in pg_runs)
            print(f"| {label} | {value:.2f} {unit} |")
    if not runs:
        return 0
    folder = Path(tempfile.mkdtemp(prefix="responder-bench-"))
    try:
        idle = idle_cpu(args.idle_seconds, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    def median(name: str) -> float:
        return statistics.median(getattr(run, name) for run in runs)

    daemon_rate, naive_rate = median("daemon_rate"), median("naive_rate")
    # Per run, so that both rates of a ratio share the machine's load at that moment.
    ratio = statistics.median(run.daemon_rate / run.naive_rate for run in runs)
    rss, ready = median("rss_mb"), median("ready_s")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"\n{machine()}")
    print(f"{args.messages} messages per run, medians of {args.runs} runs\n")
    print("| figure | value | target | |")
    print("|---|---|---|---|")
    print(f"| daemon throughput | {daemon_rate:.0f} msg/s | | |")
    print(f"| naive loop throughput | {naive_rate:.0f} msg/s | | |")
    ok = ratio >= TARGETS["throughput"]
    print(f"| daemon / naive (median of the runs' ratios) | {ratio:.0%} | ≥ 50% | {verdict(ok)} |")
    cpu_ms = median("daemon_cpu_ms")
    cpu_ok = cpu_ms <= TARGETS["cpu_ms"]
    print(f"| daemon CPU per message | {cpu_ms:.2f} ms | ≤ 2 ms | {verdict(cpu_ok)} |")
    print(f"| naive loop CPU per message | {median('naive_cpu_ms'):.2f} ms | | |")
    print(f"| overhead journal → sent, p50 | {median('p50_ms'):.1f} ms | | |")
    print(f"| overhead journal → sent, p99 | {median('p99_ms'):.1f} ms | | |")
    print(f"| peak RSS | {rss:.1f} MB | < 60 MB | {verdict(rss < TARGETS['rss_mb'])} |")
    print(f"| exec → daemon_started | {median('started_s'):.3f} s | | |")
    print(f"| exec → READY=1 | {ready:.3f} s | < 0.5 s | {verdict(ready < TARGETS['ready_s'])} |")
    idle_ok = idle < TARGETS["idle_cpu"]
    print(
        f"| idle CPU, 6 s interval ({args.idle_seconds:.0f} s) | {idle:.3f}% of a core "
        f"| < 0.5% | {verdict(idle_ok)} |"
    )
    if args.json:
        print(json.dumps({"runs": [run.__dict__ for run in runs], "idle_cpu_percent": idle}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
