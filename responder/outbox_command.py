"""``responder outbox show ID`` and ``responder outbox cancel ID``: a send no message asked
for (``responder.outbound``: the API, a broadcast), by the id it was answered with."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime

from responder import outbound
from responder.models import PLATFORM_TZ


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show", "cancel"))
    parser.add_argument("id", type=int, help="the send's id (what the API or broadcast answered)")
    parser.add_argument("--json", action="store_true", help="show: one JSON document")


def _when(moment: float | None) -> str:
    if moment is None:
        return "now"
    return datetime.fromtimestamp(moment, PLATFORM_TZ).strftime("%Y-%m-%d %H:%M")


def command(args: argparse.Namespace) -> int:
    from responder.cli import NoStore, opened_app

    with opened_app(
        args, dry_run=args.action == "show", no_store=NoStore.REFUSE, needs_store="no sends"
    ) as app:
        if args.action == "cancel":
            cancelled = outbound.cancel(app, args.id, account=None)
            if cancelled is None:
                print(f"outbox cancel: there is no send {args.id}", file=sys.stderr)
                return 1
            if cancelled:
                print(f"send {args.id}: cancelled {cancelled} recipient(s)")
            else:
                print(
                    f"send {args.id}: nothing left to cancel: what was not suppressed or"
                    " cancelled is handed to the gateway already (see outbox show)"
                )
            return 0
        found = outbound.status(app, args.id, account=None)
        if found is None:
            print(f"outbox show: there is no send {args.id}", file=sys.stderr)
            return 1
        if args.json:
            document = asdict(found)
            document["context"] = dict(found.context)
            print(json.dumps(document, ensure_ascii=False, indent=2))
            return 0
        print(f"send {found.id}: {found.state}, from {found.source or '-'}, at {_when(found.at)}")
        if found.flow:
            print(f"flow: {found.flow}")
        if found.context:
            print(f"context: {json.dumps(dict(found.context), ensure_ascii=False)}")
        print(f"text: {found.text}")
        counts: dict[str, int] = {}
        for recipient in found.recipients:
            counts[recipient.status] = counts.get(recipient.status, 0) + 1
            extra = f"  errid {recipient.errid}" if recipient.errid is not None else ""
            reason = f"  {recipient.reason}" if recipient.reason else ""
            print(f"{recipient.number}  {recipient.status}{extra}{reason}")
        print(", ".join(f"{state} {count}" for state, count in sorted(counts.items())) or "none")
        return 0
