"""``responder demo``: the whole pipeline against the built-in simulator, with a transcript."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from responder.config import settings_from_dict
from responder.daemon import Daemon
from responder.logs import configure_logging
from responder.sandbox import Sandbox
from responder.store import PENDING, PROCESSED, RECEIVED, SENDING

EXAMPLE_RULES: list[dict[str, Any]] = [
    {
        "name": "query",
        "keywords": ["CX", "查询"],
        "reply": "您好，您的查询已受理，客服将在30分钟内回复。",
    },
    {
        "name": "hours",
        "keywords": ["营业时间", "HOURS"],
        "reply": "营业时间：周一至周五 09:00-18:00。Open Mon-Fri 9:00-18:00.",
    },
]

CONVERSATION = [
    ("13800138000", "CX"),
    ("13900139000", "营业时间"),
    ("13700137000", "hours"),
    ("13600136000", "你好😀"),
    ("13800138000", "TD"),
    ("13800138000", "CX"),
]

TIMEOUT = 25.0


def demo_config(base_url: str, store: Path, interval: float) -> dict[str, Any]:
    return {
        "gateway": {
            "base_urls": [base_url],
            "name": "demo",
            "password": "demo",
            "poll_interval": interval,
            "simulator": True,
            "timeout": 5,
        },
        "store": {"path": str(store)},
        "replies": {"signature": "【演示】", "retry_initial": 0.2},
        "keywords": {
            "fallback": "感谢您的短信。回复CX查询，回复TD退订。",
            "rules": EXAMPLE_RULES,
        },
    }


def _settled(daemon: Daemon) -> bool:
    assert daemon.store is not None
    status = daemon.store.status()
    busy = sum(status.messages.get(state, 0) for state in (RECEIVED, PROCESSED))
    busy += sum(status.outbox.get(state, 0) for state in (PENDING, SENDING))
    return sum(status.messages.values()) == len(CONVERSATION) and not busy


def run_demo(interval: float = 0.5) -> int:
    configure_logging(format="console", level="warning")
    with (
        tempfile.TemporaryDirectory(prefix="responder-demo-") as folder,
        Sandbox(min_read_interval=interval) as sandbox,
    ):
        settings = settings_from_dict(
            demo_config(sandbox.url, Path(folder) / "demo.db", interval), source="<demo>"
        )
        daemon = Daemon(settings=settings, configure_logs=False)
        print(f"sms-responder demo: simulator at {sandbox.url}, one read every {interval:g} s")
        print(
            f"rules: {', '.join('/'.join(r['keywords']) for r in EXAMPLE_RULES)}; "
            "anything else gets the fallback\n"
        )
        for src, text in CONVERSATION:
            sandbox.inject(src, text)
        daemon.start()
        started = time.monotonic()
        try:
            while not _settled(daemon) and time.monotonic() - started < TIMEOUT:
                time.sleep(0.1)
            settled = _settled(daemon)
            _print_transcript(daemon)
        finally:
            daemon.stop()
        stats = sandbox.stats()
        print(
            f"\n{stats.reads} reads, {stats.too_fast_reads} too fast; "
            f"{len(sandbox.sent())} SMS sent through the simulator"
        )
        if not settled:
            print("the demo did not finish in time")
            return 1
        return 0


def _print_transcript(daemon: Daemon) -> None:
    store = daemon.store
    assert store is not None
    for entry in store.journal_since(0):
        message = entry.message
        print(f"→ {message.src}: {message.text}")
        rows = store.outbox_for(message.id)
        for row in rows:
            print(f"  ← {row.text}  [{row.plugin}, {row.state}]")
        if not rows:
            who = f" ({entry.decided_by})" if entry.decided_by else ""
            print(f"  (no reply: {entry.reason}{who})")
