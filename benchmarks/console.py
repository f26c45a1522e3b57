"""The staff console: how fast the inbox renders over a big store, and what it costs in RSS.

Run: ``python benchmarks/console.py`` (``--conversations 10000 --runs 30``).

A store is filled with ``--conversations`` numbers, three messages each (the latest one
at a different moment per number), 1 % of them waiting for a person. Then:

- **inbox over HTTP**: ``responder run`` as a subprocess, the API and the console on, the
  simulator as its gateway; a signed-in client asks for the inbox (first page, and a page
  deep in the list) ``--runs`` times: the median and the p95 of the whole request, as a
  browser gets it, next to
- **bare template render**: the same inbox template rendered in this process with the
  same rows already read (no store, no HTTP): what the page costs without its queries.
- **RSS**: the daemon's VmRSS after the same warm-up (a sign-in and every page loaded
  a few times), with the API alone and with the API and the console; the difference is
  what the console adds (target: under 10 MB).
"""

from __future__ import annotations

import argparse
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from responder.sandbox import Sandbox  # noqa: E402
from responder.store import Store  # noqa: E402

TOKEN = "benchmark-console-token-0123456789abcdef"
PASSWORD = "benchmark-password"


def fill(path: Path, conversations: int) -> None:
    """``conversations`` senders with three messages each; 1 % waiting for a person."""
    Store(path).close()  # the schema
    now = time.time()
    db = sqlite3.connect(path)
    rows = []
    gateway_id = 0
    for round_ in range(3):
        for index in range(conversations):
            gateway_id += 1
            at = now - 86400 + round_ * 3600 + index * 0.5
            rows.append(
                (
                    gateway_id,
                    f"139{index:08d}",
                    "10690",
                    f"第{round_}条 你好 {index}",
                    None,
                    "",
                    at,
                    "replied",
                )
            )
    db.executemany(
        "INSERT INTO messages (gateway_id, src, dst, text, received_at, raw, journaled_at,"
        " state) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    db.executemany(
        "INSERT INTO conversations (account, number, state, started_at, updated_at,"
        " expires_at, who) VALUES ('default', ?, 'with_person', ?, ?, ?, 'handover')",
        [
            (f"139{index:08d}", now - 600, now - 600, now + 86400)
            for index in range(0, conversations, 100)
        ],
    )
    db.commit()
    db.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config(folder: Path, sandbox: Sandbox, store: Path, port: int, console: bool) -> Path:
    data: dict[str, Any] = {
        "gateway": {
            "base_urls": [sandbox.url],
            "name": "bench",
            "password": PASSWORD,
            "simulator": True,
            "poll_interval": 1,
        },
        "store": {"path": str(store)},
        "log": {"format": "json", "level": "warning"},
        "api": {
            "enabled": True,
            "listen": f"127.0.0.1:{port}",
            "rate_limit": "",
            "tokens": [{"name": "staff", "scopes": ["console", "read"], "token": TOKEN}],
        },
        "console": {"enabled": console},
    }
    path = folder / f"config-{'console' if console else 'api'}.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def wait_up(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the daemon ended with {process.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the daemon's API did not answer")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def sign_in(client: httpx.Client, base: str) -> None:
    page = client.get(f"{base}/console/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert nonce is not None
    answer = client.post(f"{base}/console/login", data={"csrf": nonce.group(1), "token": TOKEN})
    assert answer.status_code in (200, 303), answer.status_code


def timed(client: httpx.Client, url: str, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        answer = client.get(url)
        times.append((time.perf_counter() - start) * 1000)
        assert answer.status_code == 200, answer.status_code
    return times


def warm_up(client: httpx.Client, base: str, console: bool) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(3):
        client.get(f"{base}/v1/status", headers=headers)
        if console:
            for page in ("inbox", "inbox?page=50", "health", "optouts", "rules", "c/13900000001"):
                client.get(f"{base}/console/{page}")


def run_daemon(
    folder: Path, sandbox: Sandbox, store: Path, console: bool, runs: int, deep: int
) -> tuple[int, dict[str, list[float]]]:
    port = free_port()
    path = config(folder, sandbox, store, port, console)
    log = open(folder / f"daemon-{console}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "responder", "run", "-c", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    times: dict[str, list[float]] = {}
    try:
        wait_up(f"{base}/v1/openapi.json", process)
        with httpx.Client(timeout=30, follow_redirects=True) as client:
            if console:
                sign_in(client, base)
            warm_up(client, base, console)
            if console:
                times["inbox, page 1"] = timed(client, f"{base}/console/inbox", runs)
                times[f"inbox, page {deep + 1}"] = timed(
                    client, f"{base}/console/inbox?page={deep}", runs
                )
            time.sleep(1)
            rss = rss_kib(process.pid)
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    return rss, times


def bare_render(store_path: Path, runs: int) -> list[float]:
    """The inbox template alone, its rows already read."""
    from responder.app import build_app
    from responder.config import settings_from_dict
    from responder.console import views
    from responder.console.i18n import translate
    from responder.console.web import templates

    settings = settings_from_dict(
        {
            "gateway": {
                "base_urls": ["http://127.0.0.1:9"],
                "name": "b",
                "password": "p",
                "simulator": True,
                "poll_interval": 1,
            },
            "store": {"path": str(store_path)},
        },
        environ={},
    )
    app = build_app(settings, dry_run=True)
    try:
        view = views.inbox(app, account="default", page=0)
    finally:
        app.close()
    template = templates().get_template("inbox.html")
    values = dict(
        t=lambda key, **fill: translate("zh", key, **fill),
        lang="zh",
        other_lang="en",
        base="/console",
        session=None,
        csrf="x" * 43,
        notice=None,
        path="/console/inbox",
        query="",
        view=view,
        accounts=("default",),
        account="default",
        page_name="inbox",
    )
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        template.render(**values)
        times.append((time.perf_counter() - start) * 1000)
    return times


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Sandbox(name="bench", password=PASSWORD, min_read_interval=0) as sandbox,
    ):
        folder = Path(tmp)
        store = folder / "responder.db"
        fill(store, args.conversations)
        bare = bare_render(store, args.runs)
        deep = max(args.conversations // 50 - 1, 0)  # the last page
        rss_api, _ = run_daemon(folder, sandbox, store, False, args.runs, deep)
        rss_console, times = run_daemon(folder, sandbox, store, True, args.runs, deep)
    print(
        f"{args.conversations} conversations ({3 * args.conversations} messages), "
        f"{args.runs} runs, Python {sys.version.split()[0]}\n"
    )
    print("| what | median | p95 | target |")
    print("|---|---|---|---|")
    for name, values in times.items():
        print(
            f"| {name} (HTTP, whole request) | {statistics.median(values):.1f} ms "
            f"| {p95(values):.1f} ms | < 200 ms |"
        )
    print(
        f"| bare template render (rows already read) | {statistics.median(bare):.1f} ms "
        f"| {p95(bare):.1f} ms | |"
    )
    added = (rss_console - rss_api) / 1024
    print(f"| daemon RSS, API only | {rss_api / 1024:.1f} MB | | |")
    print(f"| daemon RSS, API and console | {rss_console / 1024:.1f} MB | | |")
    print(f"| added by the console | {added:.1f} MB | | < 10 MB |")


if __name__ == "__main__":
    main()
