"""Queuing a broadcast from CSV against a large opt-out list, next to a plain loop.

Run: ``python benchmarks/broadcast.py`` (``--sizes 1000,10000,100000,1000000 --runs 3
--optouts 100000``; ``--profile 100000`` profiles one broadcast of that size in this
process with cProfile instead).

For each size a CSV list is written ("姓名,手机号" header, GBK as Excel writes it on a
Chinese Windows): that many distinct mobile numbers, a tenth of them on the opt-out list.
The store starts each run as a copy of one holding ``--optouts`` opted-out numbers (the
optout plugin's table), then:

- **broadcast**: ``responder broadcast -c CONFIG --to LIST -m TEXT --json`` as a
  subprocess: the list streamed, each number through the before-send hooks (opt-out,
  guard), composed with the signature, recipients and outbox items stored in chunks of
  1,000 (one transaction each, synchronous=FULL). Nothing is sent: no daemon runs.
  With ``--dry-run``: ``responder broadcast --dry-run`` (every number checked and
  counted, nothing stored).
- **baseline**: a subprocess reading the same CSV with the csv module and inserting the
  numbers into a SQLite table with ``executemany`` in one transaction: no checks.

Wall time is from the subprocess's start to its exit (interpreter start-up included);
peak RSS is the subprocess's ``ru_maxrss`` (``os.wait4`` in a small launcher process).
Medians of ``--runs`` runs are printed as a Markdown table with numbers/s and the
ratios to the baseline. The target: 100,000 numbers queued in under 10 s with peak RSS under 100 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TEXT = "【速达快递】双十二大促，全场满200减30，详情见小程序。回复TD退订"
TARGET_SECONDS, TARGET_RSS_MB, TARGET_SIZE = 10.0, 100.0, 100_000

BASELINE = r"""
import csv, sqlite3, sys
path, db = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(db)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE IF NOT EXISTS baseline_numbers (number TEXT NOT NULL)")
with open(path, encoding="gbk", newline="") as file:
    rows = csv.reader(file)
    next(rows)
    with conn:
        conn.executemany(
            "INSERT INTO baseline_numbers (number) VALUES (?)", ((row[1],) for row in rows)
        )
conn.close()
"""


@dataclass(frozen=True)
class Run:
    seconds: float
    rss_mb: float


def numbers(count: int, seed: int) -> list[str]:
    """``count`` distinct mainland mobile numbers."""
    rng = random.Random(seed)
    found: set[int] = set()
    while len(found) < count:
        found.add(rng.randrange(13_000_000_000, 19_999_999_999))
    return [str(n) for n in found]


def write_config(directory: Path, store: Path) -> Path:
    config = directory / "config.toml"
    config.write_text(
        "[gateway]\n"
        'base_urls = ["http://127.0.0.1:9"]\n'
        'name = "bench"\npassword = "bench"\nsimulator = true\npoll_interval = 1\n'
        "max_recipients = 100\n"
        f'[store]\npath = "{store}"\n'
        '[replies]\nsignature = "【速达快递】"\n',
        encoding="utf-8",
    )
    return config


def prepare_store(directory: Path, optouts: list[str]) -> tuple[Path, Path]:
    """A store holding the opt-out list, and a configuration using a copy of it."""
    from responder.cli import main

    template = directory / "template.db"
    config = write_config(directory, template)
    code = main(["optout", "add", optouts[0], "-c", str(config)])  # makes the list's table
    assert code == 0, "optout add failed"
    from responder.store import Store

    store = Store(template)
    try:
        with store.transaction() as tx:
            tx.executemany(
                "INSERT INTO optout_numbers (number, opted_out_at, source, text)"
                " VALUES (?, ?, 'benchmark', '') ON CONFLICT (number) DO NOTHING",
                ((number, time.time()) for number in optouts[1:]),
            )
    finally:
        store.close()
    run_store = directory / "responder.db"
    return template, write_config(directory, run_store)


def write_list(path: Path, listed: list[str]) -> None:
    with open(path, "w", encoding="gbk", newline="") as file:
        file.write("姓名,手机号\r\n")
        for number in listed:
            file.write(f"客户,{number}\r\n")


LAUNCHER = r"""
import json, os, subprocess, sys, time
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
process = subprocess.Popen(command)
_, status, usage = os.wait4(process.pid, 0)
seconds = time.perf_counter() - started
with open(report, "w") as file:
    json.dump({"seconds": seconds, "maxrss_kb": usage.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, file)
"""
"""Runs a command and reports its wall time and peak RSS. The child's ``ru_maxrss`` counts
what the process that forked it held (Linux carries it over the exec), so a small
launcher forks it, not this process with its lists of numbers."""


def measured(command: list[str], directory: Path) -> tuple[Run, str]:
    report = directory / "measured.json"
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, str(report), *command],
        capture_output=True,
        text=True,
        check=False,
    )
    figures = json.loads(report.read_text())
    if figures["code"]:
        raise SystemExit(f"{' '.join(command)} failed ({figures['code']}):\n{done.stderr}")
    return Run(figures["seconds"], figures["maxrss_kb"] / 1024), done.stdout


def fresh_store(template: Path, directory: Path) -> Path:
    target = directory / "responder.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copy(template, target)
    return target


def bench(sizes: list[int], runs: int, optout_count: int, dry_run: bool = False) -> None:
    with tempfile.TemporaryDirectory(prefix="broadcast-bench-") as name:
        directory = Path(name)
        biggest = max(sizes)
        listed_all = numbers(biggest, seed=1)
        optouts = numbers(optout_count, seed=2)
        # A tenth of every list is on the opt-out list.
        shared = listed_all[: biggest // 10]
        optouts = shared[:optout_count] + optouts[: max(0, optout_count - len(shared))]
        template, config = prepare_store(directory, optouts)
        results: list[tuple[int, Run, Run, dict[str, int]]] = []
        for size in sizes:
            listing = directory / f"list-{size}.csv"
            chosen = listed_all[: size // 10] + listed_all[biggest // 10 :][: size - size // 10]
            write_list(listing, chosen)
            ours: list[Run] = []
            base: list[Run] = []
            totals: dict[str, int] = {}
            for _ in range(runs):
                fresh_store(template, directory)
                run, out = measured(
                    [
                        sys.executable,
                        "-m",
                        "responder",
                        "broadcast",
                        "-c",
                        str(config),
                        "--to",
                        str(listing),
                        "-m",
                        TEXT,
                        "--json",
                        *(["--dry-run"] if dry_run else []),
                    ],
                    directory,
                )
                ours.append(run)
                totals = json.loads(out)
                db = directory / "baseline.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
                run, _ = measured(
                    [sys.executable, "-c", BASELINE, str(listing), str(db)], directory
                )
                base.append(run)
            results.append((size, median(ours), median(base), totals))
            print(
                f"{size:>9,}: broadcast {median(ours).seconds:.2f} s,"
                f" baseline {median(base).seconds:.2f} s",
                file=sys.stderr,
            )
        print_table(results, optout_count, runs)


def median(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.seconds for r in runs), statistics.median(r.rss_mb for r in runs)
    )


def print_table(
    results: list[tuple[int, Run, Run, dict[str, int]]], optouts: int, runs: int
) -> None:
    print(f"\nBroadcast from CSV against {optouts:,} opted-out numbers, median of {runs} runs\n")
    print(
        "| numbers | queued | suppressed | broadcast s | numbers/s | peak RSS MB"
        " | baseline s | baseline numbers/s | baseline RSS MB | time × | RSS × |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size, ours, base, totals in results:
        print(
            f"| {size:,} | {totals.get('queued', 0):,} | {totals.get('suppressed', 0):,}"
            f" | {ours.seconds:.2f} | {size / ours.seconds:,.0f} | {ours.rss_mb:.0f}"
            f" | {base.seconds:.2f} | {size / base.seconds:,.0f} | {base.rss_mb:.0f}"
            f" | {ours.seconds / base.seconds:.1f} | {ours.rss_mb / base.rss_mb:.1f} |"
        )
    target = next((r for r in results if r[0] == TARGET_SIZE), None)
    if target is not None:
        ok = target[1].seconds < TARGET_SECONDS and target[1].rss_mb < TARGET_RSS_MB
        print(
            f"\ntarget ({TARGET_SIZE:,} numbers under {TARGET_SECONDS:.0f} s and"
            f" {TARGET_RSS_MB:.0f} MB): {'met' if ok else 'NOT met'}"
        )


def profile(size: int, optout_count: int) -> None:
    """One broadcast of ``size`` numbers in this process under cProfile: where the time
    goes, by cumulative and by own time."""
    import cProfile
    import pstats

    from responder import outbound
    from responder.app import build_app
    from responder.broadcast import broadcast, read_numbers
    from responder.config import load_settings
    from responder.store import Store

    with tempfile.TemporaryDirectory(prefix="broadcast-profile-") as name:
        directory = Path(name)
        listed = numbers(size, seed=1)
        optouts = listed[: size // 10] + numbers(optout_count, seed=2)[: optout_count - size // 10]
        template, config = prepare_store(directory, optouts)
        fresh_store(template, directory)
        listing = directory / "list.csv"
        write_list(listing, listed)
        settings = load_settings(str(config), need_password=False)
        store = Store(settings.store.path)
        app = build_app(settings, store=store)
        request = outbound.SendRequest(to=(), text=TEXT, source="benchmark")
        profiler = cProfile.Profile()
        with open(listing, "rb") as stream:
            profiler.enable()
            result = broadcast(app, request, read_numbers(stream))
            profiler.disable()
        app.close()
        store.close()
        print(json.dumps(result.as_dict()))
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--optouts", type=int, default=100_000)
    parser.add_argument("--profile", type=int, metavar="SIZE", help="profile one broadcast")
    parser.add_argument(
        "--dry-run", action="store_true", help="time `responder broadcast --dry-run` instead"
    )
    args = parser.parse_args()
    if args.profile:
        profile(args.profile, args.optouts)
        return
    bench([int(size) for size in args.sizes.split(",")], args.runs, args.optouts, args.dry_run)


if __name__ == "__main__":
    main()
