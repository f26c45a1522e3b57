"""Checking a fault run: what the sandbox was given and did, against what the store holds."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from responder.sandbox import Sandbox

FINAL_MESSAGE_STATES = ("replied", "ignored", "failed", "uncertain")
BAD_LOG_MARKERS = ("Traceback", '"job_failed"', '"plugin_failed"', '"message_failed"')
"""A fault must be handled, never surface as an unexpected exception."""


class RecordingSandbox(Sandbox):
    """A Sandbox that also notes which message each read handed out, and when."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handed: list[tuple[float, int]] = []
        self._handed_lock = threading.Lock()

    def _read(self, too_fast: bool) -> dict[str, Any]:
        fields = super()._read(too_fast)
        with self._handed_lock:
            self._handed.append((time.monotonic(), int(fields["id"])))
        return fields

    def handed_out(self) -> list[tuple[float, int]]:
        """(monotonic time, message id or 0) for every read answered, oldest first."""
        with self._handed_lock:
            return list(self._handed)


@dataclass
class Audit:
    """The figures of one fault run; ``problems`` lists every broken guarantee."""

    name: str
    injected: int = 0
    journaled: int = 0
    lost_on_read: int = 0
    """Consumed by a read whose answer never arrived (platform-side loss, by definition)."""
    read_answer_lost_logged: int = 0
    lost_to_kills: int = 0
    """Handed out by the read just before a kill -9, so never journaled (the same loss)."""
    replies_due: int = 0
    replies_sent: int = 0
    duplicates: int = 0
    uncertain: int = 0
    too_fast_reads: int = 0
    webhook_repeats: int | None = None
    """Webhook deliveries received more than once (at least once); None: no webhook."""
    restarts: int = 0
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        webhook = (
            "" if self.webhook_repeats is None else f", webhook repeats {self.webhook_repeats}"
        )
        return (
            f"{self.name}: injected {self.injected}, journaled {self.journaled}, "
            f"lost on read {self.lost_on_read} (read_answer_lost logged "
            f"{self.read_answer_lost_logged}), lost to a kill mid-read {self.lost_to_kills}, "
            f"replies due {self.replies_due}, sent "
            f"{self.replies_sent}, duplicates {self.duplicates} (uncertain sends "
            f"{self.uncertain}), too-fast reads {self.too_fast_reads}, restarts {self.restarts}"
            f"{webhook}"
        )


def rows(db: Path, sql: str) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql).fetchall()


def settled(sandbox: RecordingSandbox, db: Path, expected: int = 0) -> bool:
    """All injected messages read, journaled ones finished and their replies sent or dead.

    A read that found nothing must have followed the last message handed out: reads are
    sequential, so by then that message was journaled (or its reader was killed).
    """
    handed = sandbox.handed_out()
    if sandbox.pending() or not handed or handed[-1][1] != 0 or not db.exists():
        return False
    try:
        messages = rows(db, "SELECT state FROM messages")
        open_rows = rows(
            db,
            "SELECT id FROM queue_items WHERE queue = 'outbox' AND state IN ('pending', 'claimed')",
        )
    except sqlite3.OperationalError:  # the daemon is creating the schema
        return False
    done = all(row["state"] in FINAL_MESSAGE_STATES for row in messages)
    return len(messages) >= expected and done and not open_rows


def lost_to_kills(sandbox: RecordingSandbox, missing: set[int], kills: list[float]) -> set[int]:
    """The missing messages a kill explains: each was the last one handed out before a kill
    (its reader died before it could journal it and read again)."""
    handed = sandbox.handed_out()
    explained = set()
    for index, (at, message_id) in enumerate(handed):
        if message_id not in missing:
            continue
        following = handed[index + 1][0] if index + 1 < len(handed) else float("inf")
        if any(at < kill < following for kill in kills):
            explained.add(message_id)
    return explained


def audit(
    name: str,
    sandbox: Sandbox,
    db: Path,
    injected: Iterable[int],
    logs: Iterable[str],
    *,
    lost_allowed: set[int] = frozenset(),  # type: ignore[assignment]
    kills: list[float] = (),  # type: ignore[assignment]
    restarts: int = 0,
) -> Audit:
    """Check the guarantees of reliability.md on a finished run.

    ``lost_allowed``: message ids that a read consumed but whose answer never reached the
    daemon; ``kills``: when (time.monotonic) the daemon was killed, which explains a
    message handed out just before. Any other message missing from the journal is a problem.
    """
    injected = list(injected)
    log_text = "\n".join(logs)
    result = Audit(name=name, injected=len(injected), restarts=restarts)
    journal = Counter(row["gateway_id"] for row in rows(db, "SELECT gateway_id FROM messages"))
    result.journaled = len(journal)
    twice = [gid for gid, n in journal.items() if n > 1]
    if twice:
        result.problems.append(f"journaled more than once: {twice}")
    missing = set(injected) - set(journal)
    result.lost_on_read = len(missing & set(lost_allowed))
    unexplained = missing - set(lost_allowed)
    if kills and isinstance(sandbox, RecordingSandbox):
        killed = lost_to_kills(sandbox, unexplained, list(kills))
        result.lost_to_kills = len(killed)
        unexplained -= killed
    if unexplained:
        result.problems.append(f"injected but never journaled: {sorted(unexplained)}")
    result.read_answer_lost_logged = log_text.count('"read_answer_lost"')

    outbox = rows(  # the outbox is the durable queue "outbox"; its done is "sent"
        db,
        "SELECT id, json_extract(payload, '$.recipients') AS recipients,"
        " json_extract(payload, '$.text') AS text,"
        " CASE state WHEN 'done' THEN 'sent' ELSE state END AS state, uncertain"
        " FROM queue_items WHERE queue = 'outbox'",
    )
    sent = Counter((s.numbers, s.text) for s in sandbox.sent())
    result.replies_due = len(outbox)
    for row in outbox:
        copies = sent[(tuple(json.loads(row["recipients"])), row["text"])]
        result.uncertain += row["uncertain"]
        if row["state"] != "sent":
            result.problems.append(f"outbox row {row['id']} is {row['state']}, not sent")
        if copies == 0:
            result.problems.append(f"outbox row {row['id']} never reached the gateway")
            continue
        result.replies_sent += 1
        result.duplicates += copies - 1
        if copies - 1 > row["uncertain"]:
            result.problems.append(
                f"outbox row {row['id']} sent {copies} times with only "
                f"{row['uncertain']} uncertain attempts"
            )
    result.too_fast_reads = sandbox.stats().too_fast_reads
    if result.too_fast_reads:
        result.problems.append(f"{result.too_fast_reads} reads broke the read interval")
    for marker in BAD_LOG_MARKERS:
        if marker in log_text:
            result.problems.append(f"{marker} in the daemon's log")
    return result
