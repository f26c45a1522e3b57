"""Rehearsing rules without sending: ``simulate --file`` and ``replay``.

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
from datetime import datetime
from typing import Any

from responder.app import App, build_app
from responder.config import ConfigError, load_settings
from responder.models import PLATFORM_TZ, Message, Reply
from responder.store import Store

CELL_WIDTH = 28
"""Display columns a table cell may take before it is shortened (the last one never is)."""


def simulate_record(app: App, message: Message) -> dict[str, Any]:
    """Decide a message and describe it; a dropped one still shows what would have matched."""
    from responder.cli import decision_record
    from responder.pipeline import decide

    decision = decide(app, message)
    record = decision_record(decision)
    if decision.dropped:
        # The reply hook never ran: ask it anyway (plugins change nothing under dry_run)
        # so that the rule author sees the normalised text and the rule.
        probe = app.plugins.hook.responder_reply(app=app, message=message)
        if isinstance(probe, Reply):
            record["meta"] = dict(probe.meta)
    return record


def answer(record: dict[str, Any]) -> str:
    """A record's outcome in one cell: the SMS parts, or why there is none."""
    if record["parts"]:
        return " | ".join(record["parts"])
    if record["reason"] == "empty reply" and record["meta"].get("why"):
        return f"(none: {record['meta']['why']})"
    return f"(none: {record['reason']})"


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
    messages = []
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
    from responder.cli import simulated_message

    try:
        conversation = read_conversation(args.file)
    except ConversationError as err:
        print(err, file=sys.stderr)
        return 2
    rows = []
    for line, src, text in conversation:
        record = simulate_record(app, simulated_message(text, src, dst))
        if args.json:
            print(json.dumps({"line": line, **record}, ensure_ascii=False))
        rows.append((str(line), src, text, record["meta"].get("rule", "-"), answer(record)))
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


def cmd_replay(args: argparse.Namespace) -> int:
    from responder.cli import _config_path, _problems, _quiet_logs

    try:
        settings = load_settings(_config_path(args), need_password=False)
    except ConfigError as err:
        return _problems(err.problems)
    _quiet_logs(settings)
    try:
        since = parse_since(args.since)
    except ValueError:
        print(f"--since: must be a date such as 2026-11-01, got {args.since!r}", file=sys.stderr)
        return 2
    if not settings.store.path.exists():
        print(f"{settings.store.path}: no store yet: nothing to replay", file=sys.stderr)
        return 1
    store = Store(settings.store.path)
    try:
        app = build_app(settings, store=store, dry_run=True)
    except ConfigError as err:
        store.close()
        return _problems(err.problems)
    try:
        return _replay(app, since, args)
    finally:
        store.close()
        app.close()


def _replay(app: App, since: float, args: argparse.Namespace) -> int:
    arrived = dict(
        app.store.query("SELECT id, journaled_at FROM messages WHERE journaled_at >= ?", (since,))
    )
    rows, differing = [], 0
    for message in app.store.messages_since(since):
        moment = arrived.get(message.id)
        if moment is None:  # journaled by a running daemon after the first query
            continue
        _set_clock(app, moment)
        record = simulate_record(app, message)
        sent = [row.text for row in app.store.outbox_for(message.id)]
        differs = sent != record["parts"]
        differing += differs
        when = datetime.fromtimestamp(moment, PLATFORM_TZ).strftime("%Y-%m-%d %H:%M")
        if args.json:
            print(
                json.dumps(
                    {"id": message.id, "time": when, **record, "sent": sent, "differs": differs},
                    ensure_ascii=False,
                )
            )
        elif differs or args.all:
            was = " | ".join(sent) if sent else "(nothing)"
            rows.append((str(message.id), when, message.src, message.text, was, answer(record)))
    if not args.json:
        if rows:
            print_table(("id", "arrived", "from", "message", "sent", "would send now"), rows)
        total = len(arrived)
        print(f"{total} message(s) since {args.since}: {differing} would be answered differently")
    return 0


def _set_clock(app: App, moment: float) -> None:
    """Replay each message at the moment it arrived: hours, windows and lists as then."""
    app.clock = lambda: moment
    app.store.clock = app.clock
