"""An SMS sent by hand (``responder send``): through the same rules as a reply.

Each number goes through the before-send hooks (opt-out, the guard, your plugins) as a
reply to it would; what is left gets the signature and is split like a reply, then goes
to the gateway at once, one request per part and batch of ``gateway.max_recipients``
numbers, as the pipeline queues replies. Every request, and every number a hook
suppressed, is kept in the store (``hand_sent_*``). ``raw`` skips the hooks, the
signature and the splitting: a text one request cannot carry is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import structlog

from responder.app import App
from responder.gateway import GatewayError, OutcomeUnknown
from responder.models import Message, SendResult
from responder.pipeline import before_send_each, compose, recipients

log = structlog.get_logger("responder.send")

PLUGIN: Final = "send"
"""The ``Reply.plugin`` of a hand-sent SMS, as before-send hooks see it."""


@dataclass(frozen=True)
class Suppressed:
    number: str
    reason: str
    """The veto's reason and who gave it, for people: "opted out (by optout)"."""


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
    problem: str = ""
    """Why nothing can be sent as asked ("" when it can): a raw text too long for one SMS."""


@dataclass(frozen=True)
class RequestOutcome:
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
        id=0,
        gateway_id=0,
        src="",
        dst=sender or "",
        text=text,
        received_at=app.now(),
        raw="",
        account=app.account,
    )
    suppressed: list[Suppressed] = []
    groups: dict[tuple[str, str | None], list[str]] = {}
    for number, checked in before_send_each(
        app, message, numbers, text, sender=sender, plugin=PLUGIN
    ):
        if isinstance(checked, str):
            suppressed.append(Suppressed(number, checked))
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
    limit = app.gateway.text_limit()
    if len(text) > limit:
        problem = (
            f"--raw: the text is {len(text)} characters, more than one SMS request carries"
            f" ({limit}); without --raw it is split into parts"
        )
        return Plan(requests=(), suppressed=(), problem=problem)
    size = app.settings.gateway.max_recipients
    requests = tuple(
        Request(tuple(numbers[start : start + size]), text, sender=sender)
        for start in range(0, len(numbers), size)
    )
    return Plan(requests=requests, suppressed=())


def record_suppressed(app: App, plan: Plan, text: str) -> None:
    """Keep the numbers a hook left out, with the reason."""
    if plan.suppressed:
        app.store.hand_sent_suppressed(text, [(s.number, s.reason) for s in plan.suppressed])


def send(
    app: App, request: Request, *, raw: bool = False, schedule: datetime | None = None
) -> RequestOutcome:
    """Make one request, recorded before it leaves and updated with its outcome."""
    row_id = app.store.hand_sent_start(
        request.numbers, request.text, part=request.part, parts=request.parts, raw=raw
    )
    try:
        result = app.gateway.send(
            request.numbers, request.text, schedule=schedule, sender=request.sender
        )
    except GatewayError as err:
        state = "uncertain" if isinstance(err, OutcomeUnknown) else "failed"
        app.store.hand_sent_finish(row_id, state, reason=str(err))
        log.warning("manual_send_failed", numbers=len(request.numbers), error=str(err))
        return RequestOutcome(request, None, str(err))
    state = "sent" if result.ok else "refused"
    app.store.hand_sent_finish(
        row_id, state, reason=result.err, errid=result.errid, result=result.raw
    )
    log.info("manual_sent", numbers=len(request.numbers), num=result.num, raw=raw)
    return RequestOutcome(request, result)


@dataclass(frozen=True)
class SendReport:
    """What ``send_text`` did: the gateway's answers, and the numbers a hook left out."""

    results: tuple[SendResult, ...]
    """The gateway's answer to each request made (one per part and batch of numbers)."""
    suppressed: tuple[tuple[str, str], ...]
    """(number, why) for each number a before-send hook vetoed or removed."""
    error: str = ""
    """Why sending stopped ("" when every request was answered)."""

    @property
    def ok(self) -> bool:
        """Something was sent, and the gateway accepted every request."""
        return bool(self.results) and not self.error and all(r.ok for r in self.results)


def send_text(
    app: App, numbers: Sequence[str], text: str, *, sender: str | None = None
) -> SendReport:
    """Send ``text`` to ``numbers`` now, as ``responder send`` does: each number through
    the before-send hooks (opt-out, the guard, plugins; ``Reply.plugin`` is "send"), the
    signature and the splitting, every request and suppressed number kept in the store.
    For commands and jobs (a staff member's answer), not for a message's hooks: a reply
    to a message is a ``Reply``."""
    planned = plan(app, numbers, text, sender=sender)
    record_suppressed(app, planned, text)
    suppressed = tuple((s.number, s.reason) for s in planned.suppressed)
    if not planned.requests:
        return SendReport((), suppressed, "" if suppressed else "the text is empty")
    results: list[SendResult] = []
    for request in planned.requests:
        outcome = send(app, request)
        if outcome.result is None:
            return SendReport(tuple(results), suppressed, outcome.error)
        results.append(outcome.result)
    return SendReport(tuple(results), suppressed)
