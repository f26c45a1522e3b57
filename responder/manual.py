"""An SMS sent by hand (``responder send``): through the same rules as a reply.

Each number goes through the before-send hooks (opt-out, the guard, your plugins) as a
reply to it would; what is left gets the signature and is split like a reply, then goes
to the gateway at once. Every request, and every number a hook suppressed, is kept in the
store's ``sent_by_hand`` table. ``raw`` skips the hooks, the signature and the splitting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import structlog

from responder.app import App
from responder.gateway import GatewayError, OutcomeUnknown
from responder.models import Message, Reply, SendResult, Veto
from responder.pipeline import before_send, compose, recipients

log = structlog.get_logger("responder.send")

PLUGIN: Final = "send"
"""The ``Reply.plugin`` of a hand-sent SMS, as before-send hooks see it."""
_OWNER: Final = "responder.send"
_SCHEMA: Final = (
    "CREATE TABLE sent_by_hand ("
    " id INTEGER PRIMARY KEY,"
    " at REAL NOT NULL,"
    " recipients TEXT NOT NULL,"
    " text TEXT NOT NULL,"
    " part INTEGER NOT NULL DEFAULT 1,"
    " parts INTEGER NOT NULL DEFAULT 1,"
    " raw INTEGER NOT NULL DEFAULT 0,"
    " state TEXT NOT NULL,"
    " reason TEXT NOT NULL DEFAULT '',"
    " errid INTEGER,"
    " result TEXT NOT NULL DEFAULT '')",
)
# States: "sending" (the request is under way, or the command died during it), "sent",
# "refused" (the gateway answered num=0), "failed", "uncertain" (the answer was lost: it
# may have gone out) and "suppressed" (a before-send hook kept the number out; reason).


@dataclass(frozen=True)
class Suppressed:
    number: str
    reason: str
    """As stored for a vetoed reply: "optout: opted out"."""


@dataclass(frozen=True)
class Request:
    """One gateway request: one SMS part to some numbers."""

    numbers: tuple[str, ...]
    text: str
    part: int = 1
    parts: int = 1
    sender: str | None = None


@dataclass(frozen=True)
class Plan:
    """What a hand-sent SMS becomes: the requests to make, and the numbers left out."""

    requests: tuple[Request, ...]
    suppressed: tuple[Suppressed, ...]
    truncated: bool = False
    replaced: int = 0


@dataclass(frozen=True)
class Outcome:
    """One request's fate: the gateway's answer, or the error that stopped it."""

    request: Request
    result: SendResult | None
    error: str = ""


def plan(app: App, numbers: Sequence[str], text: str, *, sender: str | None) -> Plan:
    """Run each number through the before-send hooks, then compose what is left.

    A hook may change the text for some numbers: numbers with the same final text (and
    sender) share requests.
    """
    message = Message(
        id=0, gateway_id=0, src="", dst=sender or "", text=text, received_at=app.now(), raw=""
    )
    suppressed: list[Suppressed] = []
    groups: dict[tuple[str, str | None], list[str]] = {}
    for number in numbers:
        reply = Reply(text=text, to=(number,), plugin=PLUGIN, sender=sender)
        checked = before_send(app, message, reply)
        if isinstance(checked, Veto):
            suppressed.append(Suppressed(number, checked.reason))
            continue
        to = recipients(message, checked)
        if number not in to:
            suppressed.append(Suppressed(number, "removed by a before-send hook"))
        group = groups.setdefault((checked.text, checked.sender), [])
        group.extend(n for n in to if n not in group)
    requests: list[Request] = []
    truncated, replaced = False, 0
    size = app.settings.gateway.max_recipients
    for (final_text, final_sender), group in groups.items():
        composed = compose(app, final_text)
        truncated |= composed.truncated
        replaced += composed.replaced
        for index, part in enumerate(composed.parts, start=1):
            for start in range(0, len(group), size):
                chunk = tuple(group[start : start + size])
                requests.append(Request(chunk, part, index, len(composed.parts), final_sender))
    return Plan(tuple(requests), tuple(suppressed), truncated, replaced)


def raw_plan(app: App, numbers: Sequence[str], text: str, *, sender: str | None) -> Plan:
    """The text exactly as given, to every number: no hooks, no signature, no splitting."""
    log.warning(
        "send_raw",
        numbers=len(numbers),
        reason="--raw: no before-send hooks (opt-out list, guard), no signature, no splitting",
    )
    return Plan(requests=(Request(tuple(numbers), text, sender=sender),), suppressed=())


def record_suppressed(app: App, plan: Plan, text: str) -> None:
    """Keep the numbers a hook left out, with the reason."""
    _create_table(app)
    with app.store.transaction() as tx:
        tx.executemany(
            "INSERT INTO sent_by_hand (at, recipients, text, state, reason)"
            " VALUES (?, ?, ?, 'suppressed', ?)",
            [(app.time(), item.number, text, item.reason) for item in plan.suppressed],
        )


def send(
    app: App, request: Request, *, raw: bool = False, schedule: datetime | None = None
) -> Outcome:
    """Make one request, recorded before it leaves and updated with its outcome."""
    _create_table(app)
    with app.store.transaction() as tx:
        row_id = tx.execute(
            "INSERT INTO sent_by_hand (at, recipients, text, part, parts, raw, state)"
            " VALUES (?, ?, ?, ?, ?, ?, 'sending')",
            (
                app.time(),
                ",".join(request.numbers),
                request.text,
                request.part,
                request.parts,
                int(raw),
            ),
        ).lastrowid
    try:
        result = app.gateway.send(
            request.numbers, request.text, schedule=schedule, sender=request.sender
        )
    except GatewayError as err:
        state = "uncertain" if isinstance(err, OutcomeUnknown) else "failed"
        _update(app, row_id, state, reason=str(err))
        log.warning("manual_send_failed", numbers=len(request.numbers), error=str(err))
        return Outcome(request, None, str(err))
    state = "sent" if result.ok else "refused"
    _update(app, row_id, state, reason=result.err, errid=result.errid, result=result.raw)
    log.info("manual_sent", numbers=len(request.numbers), num=result.num, raw=raw)
    return Outcome(request, result)


def _create_table(app: App) -> None:
    app.store.migrate(_OWNER, _SCHEMA)


def _update(
    app: App,
    row_id: int | None,
    state: str,
    *,
    reason: str,
    errid: int | None = None,
    result: str = "",
) -> None:
    with app.store.transaction() as tx:
        tx.execute(
            "UPDATE sent_by_hand SET state = ?, reason = ?, errid = ?, result = ? WHERE id = ?",
            (state, reason, errid, result, row_id),
        )
