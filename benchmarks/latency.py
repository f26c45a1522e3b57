"""Inbound-to-SMS latency, with and without eight slow plugin jobs running.

Run: ``python benchmarks/latency.py`` (``--messages 100 --runs 3 --poll 0.2``).

Each run starts a fresh sandbox gateway (in this process, no read interval) and
``responder run`` as a subprocess with ``poll_interval = --poll`` and the default built-in
plugins, then sends ``--messages`` messages one at a time: each is injected at a random
moment of the read cadence, and its latency is the time from the injection to the
sandbox recording the reply's send. Two configurations, run alternately:

- **quiet**: nothing else running;
- **busy**: a plugin (``slowjobs``, written to the run's folder) registers eight
  ``app.every(0.5, ...)`` jobs, each of which takes 3 s (sleeping, as a slow HTTP call
  would), so all eight are always running and overrunning their interval.

It prints each run's figures, then a table of the medians (and 90th percentiles) over
the messages of all runs together, and the ratio busy / quiet of the inbound-to-SMS
medians (target: at most 1.10). The journal-to-sent
column is the daemon's own part, without the wait for the next read (on average half
the poll interval), which dominates the inbound-to-SMS figure and its noise.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import (
    ACCOUNT,
    PASSWORD,
    Started,
    machine,
    percentile,
    toml_value,
    wait_until,
    write_config,
)

from responder.sandbox import Sandbox

TARGET = 1.10
SLOW_JOBS = '''
"""Eight plugin jobs that each take 3 s (sleeping, as in a slow HTTP call), every 0.5 s."""
import time

from responder import hookimpl

JOBS = 8


@hookimpl
def responder_startup(app):
    for number in range(JOBS):
        app.every(0.5, lambda: slow(app), name=f"slow{number}")


def slow(app):
    time.sleep(3.0)
    app.log.debug("slow_job_done", at=app.time())
'''


def one_run(
    busy: bool, messages: int, poll: float, folder: Path
) -> tuple[list[float], list[float]]:
    """Latencies (seconds) of ``messages`` messages sent one at a time: from the injection
    to the send, and from the journal to the send (the daemon's part, without the wait
    for the next read)."""
    extra: tuple[str, ...] = ()
    if busy:
        plugins = folder / "plugins"
        plugins.mkdir()
        (plugins / "slowjobs.py").write_text(SLOW_JOBS, encoding="utf-8")
        extra = ("[plugins]", f"paths = {toml_value([str(plugins)])}")
    with Sandbox(name=ACCOUNT, password=PASSWORD, min_read_interval=0) as sandbox:
        config = write_config(folder, sandbox.url, poll_interval=poll, extra=extra)
        daemon = Started(config, folder)
        try:
            wait_until(lambda: daemon.ready_at is not None, 10, "READY=1")
            if busy:
                time.sleep(1.0)  # every slow job under way
            latencies = []
            for index in range(messages):
                time.sleep(random.uniform(0, poll))  # a random moment of the read cadence
                before = len(sandbox.sent())
                injected = time.time()
                sandbox.inject(f"139{index:08d}", "CX")
                wait_until(lambda n=before: len(sandbox.sent()) > n, 30, "the reply")
                latencies.append(sandbox.sent()[before].at - injected)
        finally:
            daemon.stop()
    with sqlite3.connect(folder / "responder.db") as conn:
        inside = [
            sent - journaled
            for journaled, sent in conn.execute(
                "SELECT m.journaled_at, MAX(o.finished_at) FROM messages m"
                " JOIN queue_items o ON o.message_id = m.id AND o.queue = 'outbox'"
                " WHERE o.state = 'done' GROUP BY m.id"
            )
        ]
    return latencies, inside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100, help="messages per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each; medians reported")
    parser.add_argument("--poll", type=float, default=0.2, help="poll_interval, seconds")
    args = parser.parse_args(argv)

    pooled: dict[str, list[float]] = {"quiet": [], "busy": []}
    insides: dict[str, list[float]] = {"quiet": [], "busy": []}
    for number in range(1, args.runs + 1):
        for name in ("quiet", "busy"):
            folder = Path(tempfile.mkdtemp(prefix="responder-latency-"))
            try:
                latencies, inside = one_run(name == "busy", args.messages, args.poll, folder)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
            pooled[name].extend(latencies)
            insides[name].extend(inside)
            print(
                f"run {number} {name}: median {statistics.median(latencies) * 1000:.0f} ms, "
                f"p90 {percentile(latencies, 0.9) * 1000:.0f} ms, "
                f"journal → sent {statistics.median(inside) * 1000:.1f} ms",
                flush=True,
            )

    quiet, busy = statistics.median(pooled["quiet"]), statistics.median(pooled["busy"])
    ratio = busy / quiet
    print(f"\n{machine()}")
    print(
        f"{args.messages} messages per run, poll_interval {args.poll:g} s, "
        f"medians over the {args.runs} runs' messages together\n"
    )
    print("| | inbound → SMS, median | inbound → SMS, p90 | journal → sent, median |")
    print("|---|---|---|---|")
    for name, label in (("quiet", "no plugin jobs"), ("busy", "8 slow plugin jobs")):
        median, p90 = statistics.median(pooled[name]), percentile(pooled[name], 0.9)
        inside = statistics.median(insides[name])
        print(
            f"| {label} | {median * 1000:.0f} ms | {p90 * 1000:.0f} ms | {inside * 1000:.1f} ms |"
        )
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"\nbusy / quiet: {ratio:.2f} (target ≤ {TARGET:.2f}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
