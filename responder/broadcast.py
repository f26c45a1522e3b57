"""A broadcast: one text to a list of numbers read from a CSV file, as one outbound send.

The list is streamed: rows are read and their numbers handed to ``outbound.Broadcast.add``
in chunks, each one transaction, where duplicates and invalid numbers are dropped (a set
of the numbers seen is all that grows with the list) and every number goes through the
before-send hooks (the opt-out list, the guard, plugins' own). The daemon sends what was
queued, batched by ``gateway.max_recipients`` and paced by ``gateway.send_rate``.

The CSV: the number column is found by its header (number, mobile, phone, 手机, 手机号,
号码, ...), else it is the first column; a file without a header starts with a number.
UTF-8 (with or without a BOM, as Excel writes "CSV UTF-8"), UTF-16 with a BOM and GBK
(Excel's plain "CSV" on a Chinese Windows) are recognised from the file's start.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import IO, Final

from responder import outbound
from responder.app import App
from responder.models import PLATFORM_TZ

CHUNK: Final = 1000
"""Numbers handed to ``Broadcast.add`` at a time (one transaction each)."""
SNIFF_BYTES: Final = 64 * 1024
"""How much of the file's start its encoding and header are recognised from."""

NUMBER_HEADERS: Final = frozenset(
    {
        "number",
        "numbers",
        "mobile",
        "mobilenumber",
        "mobilephone",
        "phone",
        "phonenumber",
        "cell",
        "cellphone",
        "tel",
        "telephone",
        "msisdn",
        "recipient",
        "to",
        "手机",
        "手机号",
        "手机号码",
        "号码",
        "电话",
        "电话号码",
        "联系电话",
        "联系方式",
        "移动电话",
    }
)
"""Header names of the number column, as ``header_key`` makes them."""


class ListError(ValueError):
    """The list cannot be read: its encoding is not recognised, or it has no rows."""


@dataclass(frozen=True)
class BroadcastTotals:
    """What became of the list's numbers."""

    queued: int = 0
    """Queued (or scheduled)."""
    suppressed: int = 0
    """Kept out by a before-send hook (opted out, the guard, a plugin)."""
    invalid: int = 0
    duplicates: int = 0
    sms: int = 0
    """SMS parts in all: parts per number times the numbers queued."""
    skipped: int = 0
    """In the send already (a broadcast started again with its key)."""

    def __add__(self, other: BroadcastTotals) -> BroadcastTotals:
        return BroadcastTotals(
            self.queued + other.queued,
            self.suppressed + other.suppressed,
            self.invalid + other.invalid,
            self.duplicates + other.duplicates,
            self.sms + other.sms,
            self.skipped + other.skipped,
        )

    @property
    def read(self) -> int:
        """Numbers read from the list."""
        return self.queued + self.suppressed + self.invalid + self.duplicates + self.skipped


@dataclass(frozen=True)
class BroadcastResult:
    id: int
    """The send's id (0 for a dry run): ``responder outbox cancel ID`` cancels it."""
    totals: BroadcastTotals
    requests: int
    """Gateway requests the queued numbers take: batches of ``gateway.max_recipients``
    numbers, one per part (a dry run's and a held send's: the least they will take)."""
    seconds: float | None
    """How long sending takes at ``gateway.send_rate``; None when it is unlimited."""
    at: float | None = None
    dry_run: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "dry_run": self.dry_run,
            "at": self.at,
            "queued": self.totals.queued,
            "suppressed": self.totals.suppressed,
            "invalid": self.totals.invalid,
            "duplicates": self.totals.duplicates,
            "sms": self.totals.sms,
            "skipped": self.totals.skipped,
            "requests": self.requests,
            "seconds": self.seconds,
        }


# -- the list ----------------------------------------------------------------------------


def header_key(cell: str) -> str:
    """A header cell as ``NUMBER_HEADERS`` names it: trimmed, case-folded, without spaces,
    dashes, underscores and a trailing colon."""
    key = cell.strip().strip("\ufeff").casefold()
    for char in " -_\u3000:：":
        key = key.replace(char, "")
    return key


def looks_like_number(cell: str) -> bool:
    """Whether a cell could be a phone number (digits with spaces, dashes, "+")."""
    digits = sum(char.isdigit() for char in cell)
    return digits >= 5 and all(char.isdigit() or char in " +-()\t" for char in cell.strip())


def detect_encoding(start: bytes) -> str:
    """The encoding of a list from its first bytes: a BOM's, else UTF-8 when they are
    UTF-8, else GB18030 (a superset of GBK) when they are that; ListError otherwise."""
    if start.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        codecs.getincrementaldecoder("gb18030")().decode(start, final=False)
        return "gb18030"
    except UnicodeDecodeError:
        raise ListError(
            'the list is neither UTF-8 nor GBK: save it as "CSV UTF-8" or name its'
            " encoding with --encoding"
        ) from None


def read_numbers(stream: IO[bytes], *, encoding: str | None = None) -> Iterator[str]:
    """The number column's cells of a CSV list, in order, as written (blank rows skipped).

    The header row (a cell named like ``NUMBER_HEADERS``, or a first row without a
    number) is not yielded. Only the file's start is decoded strictly (that is where the
    encoding and the header are recognised); later bytes that do not decode become U+FFFD,
    which makes only that cell invalid.
    """
    start = stream.read(SNIFF_BYTES)
    if encoding is None:
        encoding = detect_encoding(start)
    else:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ListError(f"unknown encoding {encoding!r}") from None
        try:
            codecs.getincrementaldecoder(encoding)().decode(start, final=False)
        except UnicodeDecodeError:
            raise ListError(f"the list's start is not {encoding}") from None
    text = io.TextIOWrapper(
        io.BufferedReader(_Prepended(start, stream)),
        encoding=encoding,
        errors="replace",
        newline="",
    )
    first = text.readline()
    while first and not first.strip():
        first = text.readline()
    if not first:
        return
    delimiter = next((d for d in ",\t;" if d in first), ",")
    rows = csv.reader(_chain([first], text), delimiter=delimiter)
    header = next(rows)
    column = _number_column(header)
    if column is None:
        column = next((i for i, cell in enumerate(header) if looks_like_number(cell)), None)
        if column is None:
            column = 0  # a header naming no known column: the first one
        else:
            yield header[column]
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        yield row[column] if column < len(row) else ""


def _number_column(header: list[str]) -> int | None:
    for index, cell in enumerate(header):
        if header_key(cell) in NUMBER_HEADERS:
            return index
    return None


def _chain(first: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from first
    yield from rest


class _Prepended(io.RawIOBase):
    """A binary stream that reads ``head`` first, then the rest of ``stream``."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._head:
            count = min(len(buffer), len(self._head))
            buffer[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


# -- the send ----------------------------------------------------------------------------


def parse_at(text: str) -> float:
    """``--at``: an ISO 8601 time, or "YYYY-MM-DD HH:MM" in platform time (Asia/Shanghai)
    when it names no offset; ValueError with a message for people otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--at: not a time: {text!r} (give 2026-12-01 09:30, platform time,"
            " or an ISO 8601 time with an offset)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=PLATFORM_TZ)
    return moment.timestamp()


Progress = Callable[[BroadcastTotals], None]


def broadcast(
    app: App,
    request: outbound.SendRequest,
    cells: Iterable[str],
    *,
    total: int | None = None,
    chunk: int = CHUNK,
    progress: Progress | None = None,
) -> BroadcastResult:
    """Send ``request.text`` to the numbers of ``cells`` (its ``to`` is ignored) as one
    outbound send, ``chunk`` numbers at a time; a dry run (``request.dry_run``) checks
    and counts every number and keeps and sends nothing. ``total``: how many numbers
    there are, when known (a scheduled send that large may go to the platform's own
    schedule: ``gateway.platform_schedule_over``). ValueError when the text or the flow
    cannot be sent; ``outbound.IdempotencyConflict`` when the key was used for another
    request."""
    sender = outbound.Broadcast(app, replace(request, to=()), total=total)
    totals = BroadcastTotals()
    pending: list[str] = []

    def flush(last: bool = False) -> None:
        nonlocal totals
        totals = totals + _totals(sender.add(pending))
        if last:  # queues each group's last partial batch, held back from the chunks
            totals = totals + _totals(sender.finish())
        pending.clear()
        if progress is not None:
            progress(totals)

    for cell in cells:
        pending.append(cell)
        if len(pending) >= chunk:
            flush()
    flush(last=True)
    requests = requests_for(app, totals)
    if not request.dry_run and totals.queued:
        requests = sender.requests or requests  # none yet: held until its time
    rate = app.settings.gateway.send_rate
    return BroadcastResult(
        id=0 if request.dry_run else sender.id,
        totals=totals,
        requests=requests,
        seconds=requests / rate if rate else None,
        at=getattr(sender, "at", request.at),
        dry_run=request.dry_run,
    )


def _totals(added: outbound.Totals) -> BroadcastTotals:
    return BroadcastTotals(
        added.queued, added.suppressed, added.invalid, added.duplicates, added.sms, added.skipped
    )


def requests_for(app: App, totals: BroadcastTotals) -> int:
    """Gateway requests the queued numbers take at the least: a request carries one part
    to at most ``gateway.max_recipients`` numbers."""
    if not totals.queued:
        return 0
    parts = max(1, round(totals.sms / totals.queued))
    return math.ceil(totals.queued / app.settings.gateway.max_recipients) * parts


def describe_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``responder broadcast``'s arguments (after ``-c``)."""
    parser.add_argument(
        "--to",
        required=True,
        metavar="CSV",
        help="the list: a CSV file with a number column ('-': standard input)",
    )
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("-m", "--message", help="the text")
    text.add_argument("--message-file", metavar="FILE", help="read the text from a UTF-8 file")
    parser.add_argument(
        "--at", help="send at this time: 2026-12-01 09:30 (platform time) or ISO 8601"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check every number and print the totals; store and send nothing",
    )
    parser.add_argument(
        "--key",
        default="",
        help="the idempotency key: the same key again resumes the send, queuing only"
        " numbers not in it yet",
    )
    parser.add_argument(
        "--flow", default="", help="start this conversation flow for each recipient"
    )
    parser.add_argument("--sender", help="digits appended to the service code")
    parser.add_argument(
        "--encoding", help="the list's encoding (default: recognised: UTF-8, UTF-16, GBK)"
    )
    parser.add_argument("--json", action="store_true", help="print the totals as JSON")


def command(args: argparse.Namespace) -> int:
    from responder.cli import EXIT_CONFIG, NoStore, opened_app

    try:
        text = _message(args)
        at = parse_at(args.at) if args.at else None
    except ValueError as err:
        print(f"broadcast: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if not text.strip():
        print("broadcast: the text is empty", file=sys.stderr)
        return EXIT_CONFIG
    try:
        stream = sys.stdin.buffer if args.to == "-" else open(args.to, "rb")  # noqa: SIM115
    except OSError as err:
        print(f"broadcast: --to: {args.to}: {err.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    no_store = NoStore.IN_MEMORY if args.dry_run else NoStore.CREATE
    request = outbound.SendRequest(
        to=(),
        text=text,
        at=at,
        flow=args.flow,
        key=args.key,
        source="broadcast",
        sender=args.sender,
        dry_run=args.dry_run,
    )
    show = _ProgressLine(sys.stderr) if sys.stderr.isatty() and not args.json else None
    try:
        with opened_app(args, dry_run=args.dry_run, no_store=no_store) as app:
            request = replace(request, account=app.account)
            try:
                result = broadcast(
                    app,
                    request,
                    read_numbers(stream, encoding=args.encoding),
                    total=_count(stream, args.encoding) if at is not None else None,
                    progress=show,
                )
            except ListError as err:
                if show:
                    show.end()
                print(f"broadcast: {args.to}: {err}", file=sys.stderr)
                return EXIT_CONFIG
            except ValueError as err:  # the text or the flow
                if show:
                    show.end()
                print(f"broadcast: {err}", file=sys.stderr)
                return EXIT_CONFIG
            except outbound.IdempotencyConflict as err:
                if show:
                    show.end()
                print(f"broadcast: --key {args.key!r}: {err}", file=sys.stderr)
                return EXIT_CONFIG
            if show:
                show.end()
            _print_result(app, result, args.json)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return 0


def _count(stream: IO[bytes], encoding: str | None) -> int | None:
    """How many numbers a list has, when it can be read twice (a file, not a pipe)."""
    if not stream.seekable():
        return None
    count = sum(1 for _ in read_numbers(stream, encoding=encoding))
    stream.seek(0)
    return count


def _message(args: argparse.Namespace) -> str:
    if args.message_file is None:
        return str(args.message)
    try:
        with open(args.message_file, encoding="utf-8-sig") as file:
            return file.read().rstrip("\n")
    except OSError as err:
        raise ValueError(f"--message-file: {args.message_file}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"--message-file: {args.message_file}: not UTF-8") from None


class _ProgressLine:
    """One line on a terminal, rewritten as chunks are added."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.width = 0

    def __call__(self, totals: BroadcastTotals) -> None:
        line = (
            f"{totals.read:,} read: {totals.queued:,} queued, {totals.suppressed:,}"
            f" suppressed, {totals.invalid:,} invalid, {totals.duplicates:,} duplicates"
        )
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def end(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _print_result(app: App, result: BroadcastResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.as_dict(), ensure_ascii=False))
        return
    totals = result.totals
    parts = round(totals.sms / totals.queued) if totals.queued else 0
    title = "dry run: nothing stored or sent" if result.dry_run else f"broadcast {result.id}"
    print(title)
    print(f"read:        {totals.read:,} numbers")
    verb = "would be queued" if result.dry_run else "queued"
    if result.at is not None:
        when = datetime.fromtimestamp(result.at, PLATFORM_TZ)
        verb += f" for {when:%Y-%m-%d %H:%M} (platform time)"
    print(f"queued:      {totals.queued:,} {verb}, {totals.sms:,} SMS ({parts} each)")
    print(f"suppressed:  {totals.suppressed:,} (opted out or kept out by a before-send hook)")
    print(f"invalid:     {totals.invalid:,}")
    print(f"duplicates:  {totals.duplicates:,}")
    if totals.skipped:
        print(f"skipped:     {totals.skipped:,} in the send already (--key)")
    batch = app.settings.gateway.max_recipients
    pace = (
        f"about {describe_seconds(result.seconds)} at gateway.send_rate"
        if result.seconds is not None
        else "gateway.send_rate is unlimited"
    )
    print(f"requests:    {result.requests:,} of up to {batch} numbers each; {pace}")
    if not result.dry_run and totals.queued:
        print(
            "the daemon sends them (responder run must be running);"
            f" cancel what is not sent yet with: responder outbox cancel {result.id}"
        )
