"""Rehearsing rules without sending: `simulate` (one text or a file) and `replay`.

``simulate --file`` runs a recorded conversation (``src,text`` per line) through the
plugins; ``replay`` re-runs the messages already in the store through the current
configuration, each at the moment it arrived, and shows where the answer would differ
from what the outbox holds. Both use a dry-run App: plugins change nothing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from responder.app import App
from responder.conversations import overlay, staged
from responder.models import PLATFORM_TZ, Message, Reply
from responder.pipeline import Decision, decide

CELL_WIDTH = 28
"""Display columns a table cell may take before it is shortened (the last one never is)."""


@dataclass(frozen=True)
class Simulated:
    """What the plugins decided about one message, as ``simulate`` and ``replay`` show it."""

    text: str
    src: str
    dropped: str | None
    plugin: str | None
    """The plugin whose reply won; None when no plugin answered."""
    meta: tuple[tuple[str, str], ...]
    """The winning reply's labels or, when none won, what would have matched (for display)."""
    reply: str | None
    """The reply text after before-send; None when vetoed or there was none."""
    vetoed: str | None
    parts: tuple[str, ...]
    """The SMS texts that would be sent."""
    truncated: bool
    reason: str
    """Why nothing is sent (as the store records it), or "" when something is."""
    decided_by: str = ""
    """The plugin that dropped or vetoed it (as the store records it), or ""."""

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.meta)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``--json``): field names as keys, ``meta`` an object."""
        return {
            "text": self.text,
            "src": self.src,
            "dropped": self.dropped,
            "plugin": self.plugin,
            "meta": self.labels,
            "reply": self.reply,
            "vetoed": self.vetoed,
            "parts": list(self.parts),
            "truncated": self.truncated,
            "reason": self.reason,
            "decided_by": self.decided_by or None,
        }


def _display_meta(app: App, decision: Decision) -> tuple[tuple[str, str], ...]:
    """The winning reply's labels, or what the plugins would make of the message if none won.

    A dropped message never reached the reply hook: it is asked anyway (plugins change
    nothing under dry_run). When no plugin answers, each plugin's ``responder_describe``
    says what it makes of the message (the keyword rules: what the text normalised to,
    and that no rule matched).
    """
    message = decision.message
    reply = decision.reply
    if reply is None and decision.dropped:
        probe = app.plugins.hook.responder_reply(app=app, message=message)
        reply = probe if isinstance(probe, Reply) else None
    if reply is not None:
        return reply.meta
    return describe(app, message)


def describe(app: App, message: Message) -> tuple[tuple[str, str], ...]:
    """The plugins' ``responder_describe`` pairs, in call order, each label once."""
    labels: dict[str, str] = {}
    for result in app.plugins.hook.responder_describe(app=app, message=message):
        try:
            pairs = [(str(label), str(value)) for label, value in result or ()]
        except (TypeError, ValueError):
            continue  # not (label, value) pairs: nothing to show from that plugin
        for label, value in pairs:
            labels.setdefault(label, value)
    return tuple(labels.items())


def simulate(app: App, message: Message) -> Simulated:
    """Decide a message, commit nothing, and describe the outcome. The conversation
    changes the plugins make go to the run's overlay (``app.dry_conversations``), so the
    next message of the run sees them."""
    with staged(app, message) as staging:
        decision = decide(app, message)
    overlay(app, staging.changes)
    won, composed = decision.answer, decision.composed
    return Simulated(
        text=message.text,
        src=message.src,
        dropped=decision.dropped,
        plugin=won.plugin if won else None,
        meta=_display_meta(app, decision),
        reply=decision.final.text if decision.final else None,
        vetoed=decision.vetoed,
        parts=composed.parts if composed else (),
        truncated=bool(composed and composed.truncated),
        reason=decision.reason,
        decided_by=decision.decided_by,
    )


def simulated_message(text: str, src: str, dst: str, account: str = "default") -> Message:
    """A message as if it had just arrived at ``account``; id 0, since it is never stored."""
    return Message(
        id=0,
        gateway_id=0,
        src=src,
        dst=dst,
        text=text,
        received_at=datetime.now(PLATFORM_TZ),
        raw="",
        account=account,
    )


def print_outcome(outcome: Simulated) -> None:
    print(f"message:  {outcome.text!r} from {outcome.src}")
    for key, value in outcome.meta:
        print(f"{key + ':':<9} {value}")
    if outcome.dropped:
        print(f"dropped:  {outcome.dropped}{_by(outcome)}")
    print(f"plugin:   {outcome.plugin or '-'}")
    if outcome.vetoed:
        print(f"vetoed:   {outcome.vetoed}{_by(outcome)}")
    if outcome.parts:
        print(f"reply:    {outcome.reply}")
        for index, part in enumerate(outcome.parts, start=1):
            print(f"  sms {index}: {part} ({len(part)} characters)")
        if outcome.truncated:
            print("  (cut to replies.max_parts)")
    else:
        print(f"reply:    none ({outcome.reason})")


def _by(outcome: Simulated) -> str:
    return f" (by {outcome.decided_by})" if outcome.decided_by else ""


def answer(outcome: Simulated) -> str:
    """An outcome in one cell: the SMS parts, or why there are none."""
    if outcome.parts:
        return " | ".join(outcome.parts)
    why = outcome.labels.get("why")
    if outcome.reason in ("empty reply", "no reply") and why:
        return f"(none: {why})"
    return f"(none: {outcome.reason}{_by(outcome)})"


def width(text: str) -> int:
    """Terminal columns: East Asian wide and full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)


def _cell(text: str, limit: int | None) -> str:
    text = " ".join(text.split())
    if limit is None or width(text) <= limit:
        return text
    kept = ""
    for char in text:
        if width(kept + char) > limit - 1:
            break
        kept += char
    return kept + "…"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Aligned columns; every cell but the last is cut to ``CELL_WIDTH`` columns."""
    last = len(headers) - 1
    cells = [
        [
            _cell(str(value), None if index == last else CELL_WIDTH)
            for index, value in enumerate(row)
        ]
        for row in [headers, *rows]
    ]
    widths = [max(width(row[index]) for row in cells) for index in range(last)]
    for number, row in enumerate(cells):
        padded = [value + " " * (widths[i] - width(value)) for i, value in enumerate(row[:last])]
        print("  ".join([*padded, row[last]]).rstrip())
        if number == 0:
            print("  ".join(["-" * w for w in widths] + ["-" * max(width(row[last]), 6)]))


# -- simulate --file -----------------------------------------------------------------------


class ConversationError(ValueError):
    """A line of a conversation file that is not ``src,text``."""


def read_conversation(path: str) -> list[tuple[int, str, str]]:
    """(line, src, text) for each message of a CSV file; a first line "src,text" is a header.

    A text with commas may be quoted or not: everything after the first comma is the text.
    """
    messages: list[tuple[int, str, str]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            for fields in reader:
                line = reader.line_num
                if not "".join(fields).strip():
                    continue
                if not messages and [f.strip().lower() for f in fields] == ["src", "text"]:
                    continue
                src = fields[0].strip()
                if len(fields) < 2 or not src:
                    raise ConversationError(
                        f"{path}: line {line}: expected src,text (e.g. 13800138000,CX 123), "
                        f"got {','.join(fields)!r}"
                    )
                messages.append((line, src, ",".join(fields[1:])))
    except OSError as err:
        raise ConversationError(f"{path}: cannot read the file: {err.strerror or err}") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConversationError(f"{path}: not a UTF-8 CSV file: {err}") from None
    return messages


def simulate_file(app: App, args: argparse.Namespace, dst: str) -> int:
    """Run a recorded conversation through the plugins and print a table (or JSON lines)."""
    try:
        conversation = read_conversation(args.file)
    except ConversationError as err:
        print(err, file=sys.stderr)
        return 2
    rows = []
    for line, src, text in conversation:
        outcome = simulate(app, simulated_message(text, src, dst, app.account))
        if args.json:
            print(json.dumps({"line": line, **outcome.as_dict()}, ensure_ascii=False))
        rows.append((str(line), src, text, outcome.labels.get("rule", "-"), answer(outcome)))
    if not args.json:
        print_table(("line", "from", "message", "rule", "answer"), rows)
    return 0


# -- replay --------------------------------------------------------------------------------


def parse_since(text: str) -> float:
    """A date or date-time (platform time unless it names an offset) as epoch seconds."""
    moment = datetime.fromisoformat(text.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=PLATFORM_TZ)
    return moment.timestamp()


def replay(app: App, since: float, args: argparse.Namespace) -> int:
    """Re-run stored messages through the current rules; print where answers would differ."""
    entries = app.store.journal_since(since, account=app.account)
    rows, differing = [], 0
    for entry in entries:
        message, moment = entry.message, entry.journaled_at
        _set_clock(app, moment)
        outcome = simulate(app, message)
        sent = [row.text for row in app.store.outbox_for(message.id)]
        differs = tuple(sent) != outcome.parts
        differing += differs
        when = datetime.fromtimestamp(moment, PLATFORM_TZ).strftime("%Y-%m-%d %H:%M")
        if args.json:
            print(
                json.dumps(
                    {
                        "id": message.id,
                        "time": when,
                        **outcome.as_dict(),
                        "sent": sent,
                        "differs": differs,
                    },
                    ensure_ascii=False,
                )
            )
        elif differs or args.all:
            was = " | ".join(sent) if sent else "(nothing)"
            rows.append((str(message.id), when, message.src, message.text, was, answer(outcome)))
    if not args.json:
        if rows:
            print_table(("id", "arrived", "from", "message", "sent", "would send now"), rows)
        total = len(entries)
        print(f"{total} message(s) since {args.since}: {differing} would be answered differently")
    return 0


def _set_clock(app: App, moment: float) -> None:
    """Replay each message at the moment it arrived: hours, windows and lists as then."""
    app.clock = lambda: moment
    app.store.clock = app.clock
