"""The account's history: every SMS in and out, newest first, with what became of it.

Both directions: messages that came in (the journal), with the rule, flow, plugin or
person that answered them or why they got no answer; replies (outbox items answering a
message); outbound sends (the API, broadcasts, the console: outbox items of a send, with
its id and who asked); SMS sent by hand (``responder send``). ``history`` reads one page;
``HistoryPage.next_cursor`` reads the next one (an opaque string, also what the web API
hands out).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Final

from responder.app import App
from responder.models import PLATFORM_TZ
from responder.normalise import number_argument
from responder.store.backend import StoreBackend
from responder.store.interface import DEFAULT_ACCOUNT, HISTORY_KINDS, HistoryRow

IN: Final = "in"
OUT: Final = "out"
DIRECTIONS: Final = (IN, OUT)
MAX_LIMIT: Final = 1000
"""The most lines one page holds."""

_CURSOR_VERSION: Final = 1


@dataclass(frozen=True)
class HistoryLine:
    """One SMS of the history."""

    direction: str
    """"in" (from ``number``) or "out" (to it)."""
    at: float
    """Journaled (in), queued (out) or sent by hand, epoch seconds."""
    number: str
    """In: the sender. Out: the number asked for, else the first recipient."""
    text: str
    """The message, or one part as it goes out (signature included)."""
    state: str
    """In: received, processed, replied, ignored, failed, uncertain. Out: pending,
    sending, sent, dead, uncertain (by hand also refused, failed, suppressed)."""
    kind: str
    """"in", "reply", "send" (an outbound send) or "hand" (``responder send``)."""
    recipients: int = 1
    """Out: how many numbers the SMS went to in one request."""
    plugin: str = ""
    """In: what answered it (a rule's plugin, a flow, "handover" for a person); reply: the
    plugin whose reply it is; hand: "send"."""
    decided_by: str = ""
    """In: who decided it gets no reply (a plugin's name), or ""."""
    reason: str = ""
    """In: why it got no reply; hand: why suppressed or failed."""
    message_id: int | None = None
    """Reply: the message it answers."""
    send_id: int | None = None
    """Send: the id of the outbound send (``responder outbox cancel ID``)."""
    source: str = ""
    """Send: who asked for it ("api:crm", "broadcast")."""
    part: int = 1
    parts: int = 1
    errid: int | None = None
    """Out: the gateway's code of the last refusal."""
    error: str = ""
    """Out: the last error of its attempts."""

    @property
    def by(self) -> str:
        """What answered or decided it, or who sent it, for people."""
        if self.kind == "in":
            return self.plugin or self.decided_by
        if self.kind == "send":
            who = f" by {self.source}" if self.source else ""
            return f"send #{self.send_id}{who}"
        if self.kind == "hand":
            return "send (by hand)"
        return f"reply ({self.plugin})" if self.plugin else "reply"


@dataclass(frozen=True)
class HistoryPage:
    lines: tuple[HistoryLine, ...]
    next_cursor: str | None
    """Pass as ``cursor`` for the next page; None when this page is the last."""


def parse_moment(text: str) -> float:
    """A date ("2026-11-01") or date and time ("2026-11-01 08:30", ISO 8601 with an offset)
    as epoch seconds, platform time (Asia/Shanghai) unless it names an offset.

    ValueError with a message for people when it is neither.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a date: {text!r} (give 2026-11-01, 2026-11-01 08:30 or an ISO 8601 time)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=PLATFORM_TZ)
    return moment.timestamp()


def encode_cursor(key: tuple[float, int, int]) -> str:
    raw = json.dumps([_CURSOR_VERSION, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int, int]:
    """The key a cursor stands for; ValueError when it is not one ``history`` handed out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, at, rank, row_id = json.loads(raw)
        if version != _CURSOR_VERSION or not 0 <= int(rank) < len(HISTORY_KINDS):
            raise ValueError
        return (float(at), int(rank), int(row_id))
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValueError(f"not a history cursor: {cursor!r}") from None


def history(
    source: App | StoreBackend,
    *,
    account: str | None = DEFAULT_ACCOUNT,
    number: str | None = None,
    since: float | datetime | None = None,
    until: float | datetime | None = None,
    grep: str | None = None,
    direction: str | None = None,
    cursor: str | None = None,
    limit: int = 100,
) -> HistoryPage:
    """One page of the history of ``account`` (None: every account), newest first.

    ``number``: only SMS from or to it (typed as people do: "+86 138-0013-8000");
    ``since`` (inclusive) and ``until`` (exclusive): epoch seconds or aware datetimes;
    ``grep``: text containing it; ``direction``: "in" or "out"; ``cursor``: the previous
    page's ``next_cursor``; ``limit``: lines per page (1 to ``MAX_LIMIT``).
    ValueError, with a message for people, on a bad number, direction, cursor or limit.
    """
    store = source.store if isinstance(source, App) else source
    canonical = None
    if number is not None:
        canonical = number_argument(number)
        if canonical is None:
            raise ValueError(f"not a phone number: {number!r}")
    if direction is not None and direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1 to {MAX_LIMIT}, got {limit}")
    before = decode_cursor(cursor) if cursor else None
    rows = store.history(
        account=account,
        number=canonical,
        since=_epoch(since),
        until=_epoch(until),
        grep=grep or None,
        direction=direction,
        before=before,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    lines = tuple(_line(row, canonical) for row in rows)
    return HistoryPage(lines, encode_cursor(rows[-1].key) if more and rows else None)


def iter_history(
    source: App | StoreBackend, *, page: int = 500, **filters: object
) -> Iterator[HistoryLine]:
    """Every line ``history`` would page through with these filters, newest first."""
    cursor: str | None = None
    while True:
        result = history(source, cursor=cursor, limit=page, **filters)  # type: ignore[arg-type]
        yield from result.lines
        if result.next_cursor is None:
            return
        cursor = result.next_cursor


def _epoch(moment: float | datetime | None) -> float | None:
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=PLATFORM_TZ)
        return moment.timestamp()
    return moment


def _line(row: HistoryRow, number: str | None) -> HistoryLine:
    if number is not None and row.kind != "in":
        shown = number
    else:
        shown = row.numbers[0] if row.numbers else ""
    return HistoryLine(
        direction=IN if row.kind == "in" else OUT,
        at=row.at,
        number=shown,
        text=row.text,
        state=row.state,
        kind=row.kind,
        recipients=len(row.numbers),
        plugin=row.plugin,
        decided_by=row.decided_by,
        reason=row.reason,
        message_id=row.message_id,
        send_id=row.send_id,
        source=row.source,
        part=row.part,
        parts=row.parts,
        errid=row.errid,
        error=row.error,
    )


# -- the command -------------------------------------------------------------------------

CSV_COLUMNS: Final = (
    "time", "direction", "number", "recipients", "text", "state", "by", "reason",
    "kind", "send_id", "source", "message_id", "part", "parts", "errid", "error",
)  # fmt: skip
TEXT_WIDTH: Final = 40
"""Characters of a text shown in the table (the CSV has all of it)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``responder history``'s arguments (after ``-c``)."""
    parser.add_argument("number", nargs="?", metavar="NUMBER", help="only SMS from or to it")
    parser.add_argument("--since", help="from this date or time (platform time): 2026-11-01")
    parser.add_argument("--until", help="before this date or time (platform time)")
    parser.add_argument("--grep", metavar="TEXT", help="only SMS whose text contains it")
    parser.add_argument("--direction", choices=DIRECTIONS, help="only SMS in, or out")
    parser.add_argument(
        "--limit", type=int, default=100, help="at most this many lines (default 100; 0: all)"
    )
    parser.add_argument("--csv", action="store_true", help="CSV with a header row")
    parser.add_argument(
        "--bom",
        action="store_true",
        help="with --csv: start with a UTF-8 BOM, so that Excel reads the Chinese right",
    )
    parser.add_argument(
        "--all-accounts",
        action="store_true",
        help="every account's SMS, not only the account's (--account)",
    )


def command(args: argparse.Namespace) -> int:
    from responder.cli import EXIT_CONFIG, NoStore, opened_app

    checks: list[tuple[str, Callable[[], object]]] = [
        ("--since", lambda: args.since and parse_moment(args.since)),
        ("--until", lambda: args.until and parse_moment(args.until)),
        ("history", lambda: args.number is None or _number(args.number)),
        ("--limit", lambda: args.limit >= 0 or _fail(f"must be 0 or more, got {args.limit}")),
    ]
    for option, check in checks:
        try:
            check()
        except ValueError as err:
            print(f"{option}: {err}", file=sys.stderr)
            return EXIT_CONFIG
    since = parse_moment(args.since) if args.since else None
    until = parse_moment(args.until) if args.until else None
    with opened_app(args, no_store=NoStore.REFUSE, needs_store="no history yet") as app:
        lines = iter_history(
            app,
            page=min(args.limit or MAX_LIMIT, MAX_LIMIT),
            account=None if args.all_accounts else app.account,
            number=args.number,
            since=since,
            until=until,
            grep=args.grep,
            direction=args.direction,
        )
        if args.limit:
            lines = itertools.islice(lines, args.limit)
        if args.csv:
            write_csv(lines, sys.stdout, bom=args.bom)
        else:
            print_table(lines, sys.stdout)
    return 0


def _number(text: str) -> str:
    number = number_argument(text)
    if number is None:
        raise ValueError(f"not a phone number: {text!r}")
    return number


def _fail(message: str) -> bool:
    raise ValueError(message)


def csv_row(line: HistoryLine) -> list[object]:
    return [
        datetime.fromtimestamp(line.at, PLATFORM_TZ).isoformat(timespec="seconds"),
        line.direction,
        line.number,
        line.recipients,
        line.text,
        line.state,
        line.by,
        line.reason,
        line.kind,
        "" if line.send_id is None else line.send_id,
        line.source,
        "" if line.message_id is None else line.message_id,
        line.part,
        line.parts,
        "" if line.errid is None else line.errid,
        line.error,
    ]


def write_csv(lines: Iterable[HistoryLine], out: IO[str], *, bom: bool = False) -> None:
    if bom:
        out.write("\ufeff")
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        writer.writerow(csv_row(line))


def print_table(lines: Iterable[HistoryLine], out: IO[str]) -> None:
    """Newest first: time, direction, number, state, the text, and what answered an
    inbound message (or why it got no answer) or what sent an outbound one."""
    shown = 0
    for line in lines:
        when = datetime.fromtimestamp(line.at, PLATFORM_TZ)
        arrow = "←" if line.direction == IN else "→"
        number = line.number + (f" +{line.recipients - 1}" if line.recipients > 1 else "")
        text = " ".join(line.text.split())
        if len(text) > TEXT_WIDTH:
            text = text[: TEXT_WIDTH - 1] + "…"
        part = f" [{line.part}/{line.parts}]" if line.parts > 1 else ""
        by = line.by
        if line.reason:
            by = f"{by}: {line.reason}" if by else line.reason
        if line.error and line.state != "sent":
            by += f" ({line.error})"
        out.write(
            f"{when:%Y-%m-%d %H:%M:%S}  {arrow} {line.direction:<3} {number:<15} "
            f"{line.state:<10} {text}{part}"
        )
        out.write(f"  ({by})\n" if by else "\n")
        shown += 1
    if not shown:
        out.write("no SMS match\n")
