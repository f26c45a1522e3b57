"""Many accounts in one daemon: read cadence, CPU and memory at 10 to 5,000 accounts.

Run: ``python benchmarks/accounts.py`` (``--counts 10,100,1000,5000 --seconds 60
--runs 1``).

For each count N, one simulator process (``responder sandbox --any-account``, a 6 s
minimum read interval, so a read too soon is a violation it counts) and one daemon
process (``responder run`` with ``[accounts] include``: N account files, each its own
login and keyword rule, the main file's defaults, ``poll_interval = 6``). Mostly empty
reads, plus a steady trickle of messages (``--rate`` per second in all, to random
accounts), each answered by its account's rule and sent.

After a warm-up of two intervals, over ``--seconds``:

- **violations**: reads the simulator answered "too soon" (must be 0);
- **lateness**: for each account, the gap between two reads' arrivals minus the 6 s
  interval (the daemon counts the interval from the end of the previous read, so this
  includes that read's duration: an upper bound), p50 and p99 over every gap;
- **CPU**: the daemon's user + system time (``/proc/<pid>/stat``) over the window, as a
  share of one core;
- **peak RSS**: the daemon's ``VmHWM`` at the end;
- **single × N**: the peak RSS of a single-account daemon (the same rules, run alone for
  two intervals) times N: what N processes would take.

Medians over ``--runs``; a Markdown table is printed with the targets (at 1,000 accounts:
0 violations, p99 lateness < 0.5 s, CPU < 50% of one core, peak RSS < 200 MB).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INTERVAL = 6.0
TICKS = os.sysconf("SC_CLK_TCK")
TARGETS = {"violations": 0, "p99": 0.5, "cpu": 50.0, "rss": 200.0}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def write_config(folder: Path, url: str, count: int, *, single: bool = False) -> Path:
    """The main file and ``count`` account files (or one single-account file)."""
    gateway = (
        f'[gateway]\nbase_urls = ["{url}"]\npoll_interval = {INTERVAL}\n'
        "simulator = true\ntimeout = 5\n"
    )
    store = f'[store]\npath = "{folder / "responder.db"}"\n'
    log = '[log]\nformat = "json"\nlevel = "warning"\n'
    rules = '[[keywords.rules]]\nkeywords = ["CX"]\nreply = "已受理"\n'
    if single:
        path = folder / "single.toml"
        path.write_text(
            gateway.replace("[gateway]\n", '[gateway]\nname = "solo"\npassword = "pw"\n')
            + store
            + log
            + rules,
            encoding="utf-8",
        )
        return path
    accounts = folder / "accounts.d"
    accounts.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        name = f"a{index:05d}"
        (accounts / f"{name}.toml").write_text(
            f'[gateway]\nname = "{name}"\npassword = "pw-{name}"\n\n'
            f'[[keywords.rules]]\nkeywords = ["CX"]\nreply = {toml_string(f"{name} 已受理")}\n',
            encoding="utf-8",
        )
    path = folder / "config.toml"
    path.write_text(
        gateway + store + log + '[accounts]\ninclude = ["accounts.d/*.toml"]\n' + rules,
        encoding="utf-8",
    )
    return path


class Simulator:
    """``responder sandbox`` in its own process, and its control API."""

    def __init__(self, interval: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "responder",
                "sandbox",
                "--port",
                str(self.port),
                "--any-account",
                "--interval",
                str(interval),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                self.get("stats")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the simulator did not start")

    def get(self, action: str) -> Any:
        with urllib.request.urlopen(f"{self.url}/_sandbox/{action}", timeout=30) as answer:
            return json.loads(answer.read())

    def inject(self, account: str, text: str) -> None:
        body = json.dumps({"src": "13800138000", "text": text, "account": account}).encode()
        request = urllib.request.Request(
            f"{self.url}/_sandbox/inbound",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "responder", "run", "-c", str(config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class Result:
    accounts: int
    violations: int
    p50: float
    p99: float
    cpu: float
    rss: float
    reads: int
    sent: int
    injected: int


def trickle(sim: Simulator, count: int, rate: float, stop: threading.Event) -> list[int]:
    """Inject ``rate`` messages a second to random accounts until ``stop``."""
    injected = [0]

    def run() -> None:
        rng = random.Random(7)
        while not stop.wait(1.0 / rate):
            sim.inject(f"a{rng.randrange(count):05d}", "CX")
            injected[0] += 1

    threading.Thread(target=run, daemon=True).start()
    return injected


def lateness(read_times: dict[str, list[float]], since: float) -> list[float]:
    late: list[float] = []
    for times in read_times.values():
        kept = [t for t in times if t >= since]
        late += [max(b - a - INTERVAL, 0.0) for a, b in itertools.pairwise(kept)]
    return late


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def one_run(count: int, seconds: float, rate: float) -> Result:
    folder = Path(tempfile.mkdtemp(prefix=f"accounts-{count}-"))
    sim = Simulator(INTERVAL)
    daemon = None
    try:
        config = write_config(folder, sim.url, count)
        daemon = start_daemon(config, folder / "daemon.log")
        time.sleep(2 * INTERVAL + count / 500)  # start-up and the first two intervals
        if daemon.poll() is not None:
            raise RuntimeError((folder / "daemon.log").read_text()[-2000:])
        stop = threading.Event()
        # A trickle: at most a quarter of the reads bring a message (one per read).
        injected = trickle(sim, count, min(rate, count / INTERVAL / 4), stop)
        before = sim.get("stats")
        monotonic_start = time.monotonic()  # CLOCK_MONOTONIC: the simulator's clock too
        cpu_start, wall_start = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(seconds)
        cpu = (cpu_seconds(daemon.pid) - cpu_start) / (time.monotonic() - wall_start) * 100
        stop.set()
        after = sim.get("stats")
        rss = peak_rss_mb(daemon.pid)
        late = lateness(sim.get("read_times"), monotonic_start)
        sent = len(sim.get("sent"))
        return Result(
            accounts=count,
            violations=after["too_fast_reads"],
            p50=percentile(late, 0.5),
            p99=percentile(late, 0.99),
            cpu=cpu,
            rss=rss,
            reads=after["reads"] - before["reads"],
            sent=sent,
            injected=injected[0],
        )
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        sim.stop()
        shutil.rmtree(folder, ignore_errors=True)


def single_rss() -> float:
    """The peak RSS of one single-account daemon reading for two intervals."""
    folder = Path(tempfile.mkdtemp(prefix="accounts-single-"))
    sim = Simulator(INTERVAL)
    try:
        daemon = start_daemon(write_config(folder, sim.url, 1, single=True), folder / "d.log")
        time.sleep(2 * INTERVAL + 1)
        rss = peak_rss_mb(daemon.pid)
        stop_daemon(daemon)
        return rss
    finally:
        sim.stop()
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="10,100,1000,5000")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window per run")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--rate",
        type=float,
        default=2.0,
        help="messages per second in all (at most a quarter of the reads)",
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    single = single_rss()
    print(f"single-account daemon: peak RSS {single:.1f} MB", flush=True)
    rows = []
    for count in counts:
        results = [one_run(count, args.seconds, args.rate) for _ in range(args.runs)]

        def med(name: str, results: list[Result] = results) -> float:
            return statistics.median(getattr(r, name) for r in results)

        row = {
            "accounts": count,
            "violations": int(med("violations")),
            "p50": med("p50"),
            "p99": med("p99"),
            "cpu": med("cpu"),
            "rss": med("rss"),
            "single": single * count,
            "reads": int(med("reads")),
            "sent": int(med("sent")),
            "injected": int(med("injected")),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(
        f"{args.seconds:g} s measured per run, {args.runs} run(s), medians; "
        f"{INTERVAL:g} s interval; {args.rate:g} messages/s; {os.cpu_count()} CPUs"
    )
    print()
    print(
        "| accounts | violations | lateness p50 | lateness p99 | CPU (% of a core) "
        "| peak RSS | single × N | reads | sent / injected |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['accounts']:,} | {row['violations']} | {row['p50']:.3f} s "
            f"| {row['p99']:.3f} s | {row['cpu']:.1f}% | {row['rss']:.0f} MB "
            f"| {row['single']:,.0f} MB | {row['reads']:,} | {row['sent']} / {row['injected']} |"
        )
    print()
    print(
        f"targets at 1,000 accounts: {TARGETS['violations']} violations, p99 < "
        f"{TARGETS['p99']} s, CPU < {TARGETS['cpu']:g}%, peak RSS < {TARGETS['rss']:g} MB"
    )


if __name__ == "__main__":
    main()
