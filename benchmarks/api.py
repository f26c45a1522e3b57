"""POST /v1/messages for one recipient, next to a bare FastAPI endpoint on the same server.

Run: ``python benchmarks/api.py`` (``--requests 400 --runs 3 --threads 4``).

Each run starts a fresh sandbox gateway (in this process) and ``responder run`` as a
subprocess with the API on a free loopback port. A plugin written to the run's folder
adds the bare endpoint through the ``responder_api`` hook: ``POST /v1/bench/bare``, no
token, no work, answering 202 with a small JSON body, so both endpoints share the
server, its thread, the access log and the process. Per endpoint, alternately:

- **latency**: ``--requests`` requests one after another on one keep-alive connection
  (after a warm-up), p50 and p99;
- **throughput**: ``--threads`` clients with their own connections, ``--requests`` each,
  requests per second over the whole batch.

Every POST /v1/messages is a real send: a token checked, the rate limit counted, an
idempotency key, the hop to the processing thread (opt-out, signature, splitting, one
transaction into the outbox) and back; the sender sends them to the sandbox meanwhile.
A third row sends the same request with ``dry_run``: everything but the durable write
(the transaction into the outbox, committed with ``synchronous=FULL``), which shows what
the API itself costs. It prints each run, then the medians over the runs and the ratio
API / bare of the p50s (target: the API adds at most 2× the bare endpoint's latency, a
ratio of at most 3).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pipeline import ACCOUNT, PASSWORD, Started, machine, percentile, toml_value, wait_until

from responder.sandbox import Sandbox

TOKEN = "bench-token-0123456789abcdefgh"
TARGET = 3.0
BARE_PLUGIN = '''
"""The bare endpoint the API is measured against."""
from responder import hookimpl


@hookimpl
def responder_api(api):
    @api.router.post("/bench/bare", status_code=202)
    def bare(body: dict) -> dict:
        return {"ok": True}
'''


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_config(folder: Path, url: str, port: int) -> Path:
    plugins = folder / "plugins"
    plugins.mkdir()
    (plugins / "benchbare.py").write_text(BARE_PLUGIN, encoding="utf-8")
    lines = [
        "[gateway]",
        f"base_urls = {toml_value([url])}",
        f"name = {toml_value(ACCOUNT)}",
        f"password = {toml_value(PASSWORD)}",
        "poll_interval = 1",
        "simulator = true",
        "[store]",
        f"path = {toml_value(str(folder / 'responder.db'))}",
        "[log]",
        'format = "json"',
        'level = "info"',
        "[replies]",
        'signature = "【好店】"',
        "[plugins]",
        f"paths = {toml_value([str(plugins)])}",
        "[api]",
        "enabled = true",
        f'listen = "127.0.0.1:{port}"',
        'rate_limit = "1000000/second"',
        "[[api.tokens]]",
        'name = "bench"',
        'scopes = ["send"]',
        f"token = {toml_value(TOKEN)}",
    ]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


Request = Callable[[httpx.Client, int], httpx.Response]
_keys = itertools.count()


def bare(client: httpx.Client, index: int) -> httpx.Response:
    return client.post("/v1/bench/bare", json={"to": [f"139{index:08d}"], "text": "您好"})


def api(client: httpx.Client, index: int) -> httpx.Response:
    key = next(_keys)
    return client.post(
        "/v1/messages",
        json={"to": [f"139{key % 100_000_000:08d}"], "text": "您的订单已发货"},
        headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": f"bench-{key}"},
    )


def dry(client: httpx.Client, index: int) -> httpx.Response:
    return client.post(
        "/v1/messages",
        json={"to": [f"139{index:08d}"], "text": "您的订单已发货", "dry_run": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )


ENDPOINTS: dict[str, Request] = {"bare": bare, "api": api, "dry": dry}
LABELS = {
    "bare": "bare FastAPI endpoint",
    "api": "POST /v1/messages, one recipient",
    "dry": "the same, dry_run (nothing stored)",
}


def latencies(base: str, request: Request, count: int) -> list[float]:
    with httpx.Client(base_url=base, timeout=30) as client:
        for index in range(20):  # warm-up: connection, first imports, caches
            request(client, index)
        seconds = []
        for index in range(count):
            start = time.perf_counter()
            answer = request(client, index)
            seconds.append(time.perf_counter() - start)
            if answer.status_code != 202:
                raise SystemExit(f"unexpected answer {answer.status_code}: {answer.text}")
    return seconds


def throughput(base: str, request: Request, threads: int, count: int) -> float:
    barrier = threading.Barrier(threads + 1)
    failures: list[str] = []

    def client_loop() -> None:
        with httpx.Client(base_url=base, timeout=30) as client:
            request(client, 0)
            barrier.wait()
            for index in range(count):
                answer = request(client, index)
                if answer.status_code != 202:
                    failures.append(f"{answer.status_code}: {answer.text}")

    workers = [threading.Thread(target=client_loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"unexpected answers, the first: {failures[0]}")
    return threads * count / elapsed


def one_run(folder: Path, count: int, threads: int) -> dict[str, tuple[float, float, float]]:
    """(p50 ms, p99 ms, requests/s) by endpoint."""
    port = free_port()
    results: dict[str, tuple[float, float, float]] = {}
    with Sandbox(name=ACCOUNT, password=PASSWORD, min_read_interval=0) as sandbox:
        sandbox.set_balance(10**9)
        daemon = Started(write_config(folder, sandbox.url, port), folder)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: _answers(base), 20, "the API server")
            measured = {
                name: latencies(base, request, count) for name, request in ENDPOINTS.items()
            }
            rates = {
                name: throughput(base, request, threads, count // threads or 1)
                for name, request in ENDPOINTS.items()
            }
            for name, seconds in measured.items():
                results[name] = (
                    percentile(seconds, 0.50) * 1000,
                    percentile(seconds, 0.99) * 1000,
                    rates[name],
                )
        finally:
            daemon.stop()
    return results


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/v1/openapi.json", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per endpoint and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=4, help="clients of the throughput part")
    args = parser.parse_args(argv)
    runs = []
    for number in range(1, args.runs + 1):
        folder = Path(tempfile.mkdtemp(prefix="responder-api-bench-"))
        try:
            result = one_run(folder, args.requests, args.threads)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        runs.append(result)
        print(
            f"run {number}: "
            + "; ".join(
                f"{name} p50 {p50:.2f} ms, p99 {p99:.2f} ms, {rate:.0f} req/s"
                for name, (p50, p99, rate) in result.items()
            ),
            flush=True,
        )

    def median(name: str, index: int) -> float:
        return statistics.median(run[name][index] for run in runs)

    print(f"\n{machine()}")
    print(
        f"{args.runs} runs of {args.requests} requests per endpoint; throughput with "
        f"{args.threads} clients; medians over the runs\n"
    )
    print("| endpoint | p50 | p99 | requests/s |")
    print("|---|---|---|---|")
    for name in ENDPOINTS:
        print(
            f"| {LABELS[name]} | {median(name, 0):.2f} ms | {median(name, 1):.2f} ms "
            f"| {median(name, 2):.0f} |"
        )
    ratio = median("api", 0) / median("bare", 0)
    verdict = "met" if ratio <= TARGET else "NOT met"
    print(
        f"\nAPI / bare, p50: {ratio:.2f} (the API adds {ratio - 1:.2f}× the bare latency; "
        f"target ≤ 2×, a ratio ≤ {TARGET:.0f}: {verdict})"
    )
    dry_ratio = median("dry", 0) / median("bare", 0)
    print(
        f"dry run / bare, p50: {dry_ratio:.2f} (the API without the durable write: tokens, "
        "validation, the hop to the processing thread, the checks and the answer)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
