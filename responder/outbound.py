"""One send that no message asked for: from the API, a broadcast, the console or a command.

Every recipient goes through the compliance path a reply takes: the before-send hooks
(opt-out, the guard where it applies, plugins' own), the signature and the splitting,
then the durable outbox. A send is kept in the store under an id (the ``outbound``
table) with each recipient's outcome, so that its progress can be asked for later
(``status``), a scheduled send cancelled (``cancel``) and a request repeated under the
same idempotency key answered with the first answer instead of sending again.

A scheduled send (``at``) is held by the daemon until its time: its recipients are
checked again against the before-send hooks when it falls due (someone who opted out in
between is not sent to), then queued. ``gateway.platform_schedule_over`` hands very large
scheduled sends to the platform's own ``time`` parameter instead; those cannot be
cancelled once handed over.

Where it runs: ``submit`` calls plugins' before-send hooks, so the daemon runs it on the
processing thread (the API hands a request over and waits for its answer); commands
(``responder broadcast``) run it on their own thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import structlog

from responder.app import App
from responder.conversations import (
    ACTIVE,
    CONTEXT,
    WITH_PERSON,
    Conversation,
    ConversationChange,
)
from responder.models import PLATFORM_TZ, FlowEntry, Message
from responder.normalise import number_argument
from responder.pipeline import before_send_each, compose, recipients
from responder.protocol import parse_body, split_numbers
from responder.store import (
    NewOutbound,
    OutboundItem,
    OutboundRecipient,
    OutboundRow,
    OutgoingSms,
)
from responder.store.schema import OUTBOUND_QUEUED, OUTBOUND_SCHEDULED

PLUGIN: Final = "outbound"
"""The ``Reply.plugin`` of an outbound send, as before-send hooks see it."""

# A recipient's outcome when the send is asked for.
QUEUED: Final = "queued"
SCHEDULED: Final = "scheduled"
"""Held until the send's time; checked against the before-send hooks again then."""
SUPPRESSED: Final = "suppressed"
INVALID: Final = "invalid"

# A recipient's progress afterwards (``status``): QUEUED, SCHEDULED, SUPPRESSED and
# INVALID, and:
SENT: Final = "sent"
REFUSED: Final = "refused"
"""The gateway refused it: ``errid`` and ``error`` say how."""
DEAD: Final = "dead"
"""Given up on after its attempts (or expired)."""
UNCERTAIN: Final = "uncertain"
"""Given up on with an unknown outcome: it may well have gone out."""
CANCELLED: Final = "cancelled"

INVALID_NUMBER: Final = (
    "not a phone number (5 to 20 digits; spaces, dashes and a leading + allowed)"
)
REMOVED: Final = "removed by a before-send hook"

log = structlog.get_logger("responder.outbound")


class IdempotencyConflict(Exception):
    """The idempotency key was used before for a different request."""


@dataclass(frozen=True)
class SendRequest:
    """What to send, to whom, when, and what the recipients' answers belong to."""

    to: tuple[str, ...]
    """Numbers as given; each is normalised (``canonical_number``), duplicates dropped."""
    text: str
    at: float | None = None
    """When to send (epoch seconds); None or a moment already past: now."""
    flow: str = ""
    """A conversation flow each recipient is put in, at its first step: their answer
    within the flow's timeout is handled by that flow."""
    context: Mapping[str, Any] = field(default_factory=dict)
    """Attached to each recipient's conversation: relays and events about their answers
    carry it."""
    key: str = ""
    """The idempotency key: the same key again returns the first answer, sends nothing."""
    source: str = ""
    """Who asked, for history and logs: "api:crm", "broadcast", "console:alice"."""
    sender: str | None = None
    """The extension it goes out from; None: ``gateway.sender``."""
    account: str = "default"
    dry_run: bool = False
    """Check every recipient and count the parts, store and send nothing."""


@dataclass(frozen=True)
class RecipientOutcome:
    number: str
    """In ``canonical_number`` form; as given when invalid."""
    status: str
    """At submission: QUEUED, SCHEDULED, SUPPRESSED or INVALID. In ``status``: also
    SENT, REFUSED, DEAD, UNCERTAIN or CANCELLED."""
    reason: str = ""
    """Why suppressed or invalid, or the error of a refused or dead send."""
    parts: int = 0
    """SMS parts sent or to be sent to this number."""
    errid: int | None = None
    """The gateway's code for a refused send."""


@dataclass(frozen=True)
class Totals:
    queued: int = 0
    """Queued or scheduled."""
    suppressed: int = 0
    invalid: int = 0
    duplicates: int = 0
    sms: int = 0
    """SMS parts in all: parts times the numbers queued."""
    skipped: int = 0
    """Numbers the send had already, when a broadcast is started again under its key
    (there, numbers repeated across chunks count here, not as duplicates)."""


@dataclass(frozen=True)
class SendReceipt:
    """The answer to a send request (also what a repeated idempotency key gets)."""

    id: int
    """The send's id (0 for a dry run)."""
    recipients: tuple[RecipientOutcome, ...]
    parts: int
    """SMS parts per recipient of the composed text."""
    totals: Totals
    at: float | None = None
    replayed: bool = False
    """The idempotency key was seen before: this is the first answer, nothing was sent."""


@dataclass(frozen=True)
class SendStatus:
    """A send's progress: each recipient's state now."""

    id: int
    account: str
    source: str
    text: str
    created_at: float
    at: float | None
    flow: str
    context: Mapping[str, Any]
    recipients: tuple[RecipientOutcome, ...]
    state: str = ""
    """"scheduled" (held until ``at``), "queued" (in the outbox, or done) or
    "cancelled"."""


# -- checking and composing ------------------------------------------------------------


@dataclass(frozen=True)
class _Checked:
    """Numbers run through the before-send hooks: outcomes, and what to queue."""

    outcomes: list[RecipientOutcome]
    outgoing: list[OutgoingSms]
    queued: list[tuple[str, int]]
    """(number, parts) of each number let through."""


def _stand_in(app: App, request: SendRequest) -> Message:
    """The message before-send and after-send hooks are given for a send no message
    asked for: id 0, no sender number, the text as asked."""
    return Message(
        id=0,
        gateway_id=0,
        src="",
        dst=request.sender or "",
        text=request.text,
        received_at=app.now(),
        raw="",
        account=request.account,
    )


def normalised(numbers: Iterable[str]) -> tuple[list[str], list[RecipientOutcome], int]:
    """(valid numbers in ``canonical_number`` form, first occurrence each; the invalid
    ones as INVALID outcomes; how many duplicates were dropped)."""
    valid: dict[str, None] = {}
    invalid: list[RecipientOutcome] = []
    duplicates = 0
    for given in numbers:
        number = number_argument(given)
        if number is None:
            invalid.append(RecipientOutcome(str(given), INVALID, INVALID_NUMBER))
        elif number in valid:
            duplicates += 1
        else:
            valid[number] = None
    return list(valid), invalid, duplicates


def checked_text(app: App, text: str) -> int:
    """The SMS parts ``text`` makes; ValueError when it cannot be sent as asked."""
    if not text.strip():
        raise ValueError("the text is empty")
    composed = compose(app, text)
    if not composed.parts:
        raise ValueError("the text is empty once cleaned (control characters, the signature)")
    if composed.truncated:
        raise ValueError(
            f"the text is too long: it needs more than replies.max_parts "
            f"({app.settings.replies.max_parts}) SMS parts"
        )
    return len(composed.parts)


def flow_entry(app: App, flow: str) -> FlowEntry | None:
    """Where ``flow`` starts (``responder_flow_entry``); ValueError for an unknown flow."""
    if not flow:
        return None
    entry = app.plugins.hook.responder_flow_entry(app=app, flow=flow)
    if not isinstance(entry, FlowEntry):
        raise ValueError(f"unknown flow {flow!r}: no plugin runs a flow of that name")
    return entry


def _screen(
    app: App, request: SendRequest, numbers: Sequence[str]
) -> tuple[list[RecipientOutcome], dict[tuple[str, str], list[str]]]:
    """Run each number through the before-send hooks (as a reply to it would be): the
    numbers kept out as SUPPRESSED outcomes, and the rest grouped by the text and sender
    the hooks left them."""
    message = _stand_in(app, request)
    outcomes: list[RecipientOutcome] = []
    groups: dict[tuple[str, str], list[str]] = {}
    screened = before_send_each(
        app, message, numbers, request.text, sender=request.sender, plugin=PLUGIN
    )
    for number, result in screened:
        if isinstance(result, str):
            outcomes.append(RecipientOutcome(number, SUPPRESSED, result))
            continue
        if number not in recipients(message, result):
            outcomes.append(RecipientOutcome(number, SUPPRESSED, REMOVED))
            continue
        groups.setdefault((result.text, result.sender or ""), []).append(number)
    return outcomes, groups


def _batched(
    app: App,
    groups: Mapping[tuple[str, str], Sequence[str]],
    *,
    schedule: float | None = None,
    hold: bool = False,
) -> tuple[_Checked, dict[tuple[str, str], list[str]]]:
    """Compose each group's text: its numbers share requests of ``gateway.max_recipients``
    numbers, one per SMS part. ``hold``: a group's last partial batch is not queued but
    returned (by group) to be sent with the numbers that follow."""
    size = app.settings.gateway.max_recipients
    outcomes: list[RecipientOutcome] = []
    outgoing: list[OutgoingSms] = []
    queued: list[tuple[str, int]] = []
    held: dict[tuple[str, str], list[str]] = {}
    for (text, sender), numbers in groups.items():
        composed = compose(app, text)
        if not composed.parts:
            outcomes.extend(
                RecipientOutcome(n, SUPPRESSED, "a before-send hook emptied the text")
                for n in numbers
            )
            continue
        group = list(numbers)
        if hold and len(group) % size:
            full = len(group) - len(group) % size
            held[(text, sender)] = group[full:]
            group = group[:full]
        count = len(composed.parts)
        queued.extend((number, count) for number in group)
        for index, part in enumerate(composed.parts, start=1):
            for start in range(0, len(group), size):
                outgoing.append(
                    OutgoingSms(
                        recipients=tuple(group[start : start + size]),
                        text=part,
                        part=index,
                        parts=count,
                        plugin=PLUGIN,
                        sender=sender,
                        schedule=schedule,
                    )
                )
    return _Checked(outcomes, outgoing, queued), held


def _check(
    app: App,
    request: SendRequest,
    numbers: Sequence[str],
    *,
    schedule: float | None = None,
) -> _Checked:
    """Run each number through the before-send hooks (as a reply to it would be) and
    compose what is left: numbers a hook gave the same text and sender share requests of
    ``gateway.max_recipients`` numbers, one per SMS part."""
    suppressed, groups = _screen(app, request, numbers)
    checked, _ = _batched(app, groups, schedule=schedule)
    return replace(checked, outcomes=[*suppressed, *checked.outcomes])


def _conversations(
    app: App,
    request: SendRequest,
    entry: FlowEntry | None,
    numbers: Sequence[str],
    *,
    start: float,
) -> list[ConversationChange]:
    """The conversations a send starts for the numbers queued: at the flow's entry step,
    or (a ``context`` without a flow) state CONTEXT for ``replies.context_timeout``. A
    number with a person (handed over) keeps that conversation."""
    if entry is None and not request.context:
        return []
    now = app.time()
    if entry is not None:
        flow, step, who, state = request.flow, entry.step, entry.who, ACTIVE
        timeout = entry.timeout
    else:
        flow, step, who, state = "", "", PLUGIN, CONTEXT
        timeout = app.settings.replies.context_timeout
    changes = []
    for number in numbers:
        current = app.store.get_conversation(number, account=request.account)
        if current is not None and current.state == WITH_PERSON:
            continue
        started = Conversation(
            number=number,
            flow=flow,
            step=step,
            state=state,
            started_at=now,
            updated_at=now,
            expires_at=None if timeout is None else start + timeout,
            context=dict(request.context),
            who=who,
            account=request.account,
        )
        changes.append(ConversationChange("start", request.account, number, now, started=started))
    return changes


def _fingerprint(request: SendRequest, kind: str) -> str:
    """What identifies a request under its idempotency key."""
    document = {
        "kind": kind,
        "to": list(request.to) if kind == "send" else None,
        "text": request.text,
        "at": request.at,
        "flow": request.flow,
        "context": request.context,
        "sender": request.sender,
    }
    encoded = json.dumps(document, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(encoded.encode()).hexdigest()


def _answer_json(receipt: SendReceipt) -> str:
    return json.dumps(
        {
            "recipients": [
                [r.number, r.status, r.reason, r.parts, r.errid] for r in receipt.recipients
            ],
            "parts": receipt.parts,
            "totals": [
                receipt.totals.queued,
                receipt.totals.suppressed,
                receipt.totals.invalid,
                receipt.totals.duplicates,
                receipt.totals.sms,
            ],
            "at": receipt.at,
        },
        ensure_ascii=False,
    )


def _replayed(row: OutboundRow, fingerprint: str) -> SendReceipt:
    """The first answer stored under a key, or IdempotencyConflict for another request."""
    if row.fingerprint != fingerprint:
        raise IdempotencyConflict(
            f"the idempotency key {row.key!r} was used for a different request (send {row.id})"
        )
    data = json.loads(row.answer) if row.answer else {}
    queued, suppressed, invalid, duplicates, sms = data.get("totals", [0, 0, 0, 0, 0])
    return SendReceipt(
        id=row.id,
        recipients=tuple(
            RecipientOutcome(number, status, reason, parts, errid)
            for number, status, reason, parts, errid in data.get("recipients", [])
        ),
        parts=data.get("parts", row.parts),
        totals=Totals(queued, suppressed, invalid, duplicates, sms),
        at=data.get("at", row.at),
        replayed=True,
    )


def _scheduled(app: App, request: SendRequest) -> float | None:
    """The send's time when it is in the future; None: now."""
    return request.at if request.at is not None and request.at > app.time() else None


def _platform_schedule(app: App, at: float | None, count: int) -> bool:
    """Whether a scheduled send of ``count`` numbers goes to the platform's schedule."""
    over = app.settings.gateway.platform_schedule_over
    return at is not None and over > 0 and count > over


def _totals(outcomes: Sequence[RecipientOutcome], duplicates: int, skipped: int = 0) -> Totals:
    queued = [o for o in outcomes if o.status in (QUEUED, SCHEDULED)]
    return Totals(
        queued=len(queued),
        suppressed=sum(o.status == SUPPRESSED for o in outcomes),
        invalid=sum(o.status == INVALID for o in outcomes),
        duplicates=duplicates,
        sms=sum(o.parts for o in queued),
        skipped=skipped,
    )


def _outcomes(
    checked: _Checked, invalid: Sequence[RecipientOutcome], status: str
) -> list[RecipientOutcome]:
    return [
        *(RecipientOutcome(number, status, parts=parts) for number, parts in checked.queued),
        *checked.outcomes,
        *invalid,
    ]


def _stored(outcomes: Sequence[RecipientOutcome]) -> list[OutboundRecipient]:
    return [OutboundRecipient(o.number, o.status, o.reason, o.parts) for o in outcomes]


# -- sending -------------------------------------------------------------------------


def submit(app: App, request: SendRequest) -> SendReceipt:
    """Check, compose and queue one send (one transaction); raises IdempotencyConflict.

    ValueError (nothing stored) for a text that cannot be sent (empty, too long for
    ``replies.max_parts``) or an unknown flow. A scheduled send (``at`` in the future) is
    checked now and held: its recipients are SCHEDULED, checked again and queued when it
    falls due (``release_due``), unless it goes to the platform's schedule
    (``gateway.platform_schedule_over``).
    """
    fingerprint = _fingerprint(request, "send")
    if request.key and not request.dry_run:
        found = app.store.outbound_find(request.key, account=request.account)
        if found is not None:
            return _replayed(found, fingerprint)
    parts = checked_text(app, request.text)
    entry = flow_entry(app, request.flow)
    valid, invalid, duplicates = normalised(request.to)
    at = _scheduled(app, request)
    platform = _platform_schedule(app, at, len(valid))
    held = at is not None and not platform
    if held:
        checked = _check(app, request, valid)
        checked = replace(checked, outgoing=[])
    else:
        checked = _check(app, request, valid, schedule=at if platform else None)
    status_now = SCHEDULED if at is not None else QUEUED
    outcomes = _outcomes(checked, invalid, status_now)
    receipt = SendReceipt(
        id=0,
        recipients=tuple(outcomes),
        parts=parts,
        totals=_totals(outcomes, duplicates),
        at=at,
    )
    if request.dry_run:
        return receipt
    conversations = (
        []
        if held
        else _conversations(
            app, request, entry, [n for n, _ in checked.queued], start=at or app.time()
        )
    )
    row, created = app.store.outbound_create(
        NewOutbound(
            text=request.text,
            account=request.account,
            key=request.key,
            fingerprint=fingerprint,
            source=request.source,
            sender=request.sender,
            at=at,
            flow=request.flow,
            context=dict(request.context),
            state=OUTBOUND_SCHEDULED if held else OUTBOUND_QUEUED,
            parts=parts,
            answer=_answer_json(receipt),
        ),
        _stored(outcomes),
        checked.outgoing,
        conversations,
    )
    if not created:  # the same key, stored meanwhile by another request
        return _replayed(row, fingerprint)
    log.info(
        "outbound_queued" if not held else "outbound_scheduled",
        send_id=row.id,
        source=request.source or None,
        queued=receipt.totals.queued,
        suppressed=receipt.totals.suppressed,
        invalid=receipt.totals.invalid,
        parts=parts,
        at=_iso(at),
        platform_schedule=platform or None,
    )
    if checked.outgoing:
        app.on_queued()
    return replace(receipt, id=row.id)


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, PLATFORM_TZ).isoformat()


class Broadcast:
    """A send to a stream of numbers, added in chunks (one transaction each) under one
    id: ``add`` runs each chunk through the same checks as ``submit``; numbers already in
    the send are skipped, so a broadcast interrupted and started again with the same
    key queues only the rest.

    A scheduled broadcast is held by the daemon (its recipients SCHEDULED until it falls
    due); it goes to the platform's schedule instead only when ``total`` (the numbers
    expected, if known) is over ``gateway.platform_schedule_over``."""

    def __init__(self, app: App, request: SendRequest, *, total: int | None = None) -> None:
        self.app = app
        self.request = request
        self.parts = checked_text(app, request.text)
        self.entry = flow_entry(app, request.flow)
        self.at = _scheduled(app, request)
        self.platform = total is not None and _platform_schedule(app, self.at, total)
        self.held = self.at is not None and not self.platform
        self._id = 0
        self.resumed = False
        """Started again under a key used before: numbers the send has are ``skipped``."""
        self._seen: set[int | str] = set()
        """A dry run's numbers (``_seen_key``; a real run asks the store)."""
        self.requests = 0
        """Outbox items (gateway requests) this run queued."""
        self._held: dict[tuple[str, str], list[str]] = {}
        """Each (text, sender) group's last partial batch, queued with the next chunk's
        numbers of that group or by ``finish``. Not in the store: a run that dies before
        queuing them leaves them out of the send, so that a run again under the key
        queues them."""
        if request.dry_run:
            return
        fingerprint = _fingerprint(request, "broadcast")
        row, created = app.store.outbound_create(
            NewOutbound(
                text=request.text,
                account=request.account,
                key=request.key,
                fingerprint=fingerprint,
                source=request.source,
                sender=request.sender,
                at=self.at,
                flow=request.flow,
                context=dict(request.context),
                state=OUTBOUND_SCHEDULED if self.held else OUTBOUND_QUEUED,
                parts=self.parts,
            ),
            (),
            (),
        )
        if not created and row.fingerprint != fingerprint:
            raise IdempotencyConflict(
                f"the idempotency key {request.key!r} was used for a different request"
                f" (send {row.id})"
            )
        self._id = row.id
        self.resumed = not created

    @property
    def id(self) -> int:
        return self._id

    def add(self, numbers: Iterable[str]) -> Totals:
        """Add a chunk of numbers (one transaction); returns the totals of what it stored:
        the chunk's numbers, except each group's last partial batch, which is held back
        and queued with the next chunk (one request fewer per chunk) or by ``finish``."""
        valid, invalid, duplicates = normalised(numbers)
        if self._id:  # numbers of earlier chunks, or of the run that was interrupted
            known = self.app.store.outbound_known(self._id, valid)
            if self._held:  # held back from earlier chunks: not in the store yet
                held = {n for group in self._held.values() for n in group}
                known.update(held.intersection(valid))
        else:
            keys = [_seen_key(n) for n in valid]
            known = {n for n, k in zip(valid, keys, strict=True) if k in self._seen}
            self._seen.update(keys)
        fresh = [n for n in valid if n not in known] if known else valid
        skipped = len(known) if self.resumed else 0
        duplicates += 0 if self.resumed else len(known)
        schedule = self.at if self.platform else None
        if self.held or self.request.dry_run:
            checked = _check(self.app, self.request, fresh, schedule=schedule)
            if self.held:
                checked = replace(checked, outgoing=[])
        else:
            suppressed, groups = _screen(self.app, self.request, fresh)
            for key, group in self._held.items():
                groups[key] = [*group, *groups.get(key, ())]
            checked, self._held = _batched(self.app, groups, schedule=schedule, hold=True)
            checked = replace(checked, outcomes=[*suppressed, *checked.outcomes])
        return self._store(checked, invalid, duplicates, skipped)

    def finish(self) -> Totals:
        """Queue the numbers held back (each group's last partial batch); returns their
        totals. A broadcast whose ``finish`` never runs queues them when it is run again
        under its key."""
        if not self._held:
            return Totals()
        schedule = self.at if self.platform else None
        checked, _ = _batched(self.app, self._held, schedule=schedule)
        self._held = {}
        return self._store(checked, (), 0, 0)

    def _store(
        self, checked: _Checked, invalid: Sequence[RecipientOutcome], duplicates: int, skipped: int
    ) -> Totals:
        outcomes = _outcomes(checked, invalid, SCHEDULED if self.at is not None else QUEUED)
        totals = _totals(outcomes, duplicates, skipped)
        if self.request.dry_run:
            return totals
        conversations = (
            []
            if self.held
            else _conversations(
                self.app,
                self.request,
                self.entry,
                [n for n, _ in checked.queued],
                start=self.at or self.app.time(),
            )
        )
        self.app.store.outbound_add(self._id, _stored(outcomes), checked.outgoing, conversations)
        self.requests += len(checked.outgoing)
        if checked.outgoing:
            self.app.on_queued()
        return totals


def _seen_key(number: str) -> int | str:
    """A number in ``canonical_number`` form as a dry run's set of numbers keeps it: ASCII
    digits as an int (a third of a string's memory; the leading 1 keeps leading zeros)."""
    return int("1" + number) if number.isascii() and number.isdigit() else number


# -- afterwards ------------------------------------------------------------------------


def _refused_numbers(item: OutboundItem) -> tuple[frozenset[str], str]:
    """The numbers the gateway's answer to an accepted item lists as refused (``faile``),
    and its ``err``."""
    if item.state != "sent" or not item.result:
        return frozenset(), ""
    fields = parse_body(item.result)
    return frozenset(split_numbers(fields.get("faile", ""))), fields.get("err", "")


def _progress(
    stored: OutboundRecipient,
    items: Sequence[OutboundItem],
    refused_in: Mapping[int, tuple[frozenset[str], str]] | None = None,
) -> RecipientOutcome:
    """A queued recipient's state from its outbox items: SENT once every part is, REFUSED
    when an accepted request's answer lists the number as refused (``refused_in``: by
    item id, ``_refused_numbers``)."""
    outcome = RecipientOutcome(stored.number, stored.status, stored.reason, stored.parts)
    if not items:
        return outcome
    states = {item.state for item in items}
    if states & {"pending", "sending"}:
        return outcome
    if "uncertain" in states:
        failed = next(i for i in items if i.state == "uncertain")
        return replace(outcome, status=UNCERTAIN, reason=failed.error)
    dead = [item for item in items if item.state == "dead"]
    if dead:
        refused = next((i for i in dead if i.error.startswith("refused by the gateway")), None)
        if refused is not None:
            return replace(outcome, status=REFUSED, reason=refused.error, errid=refused.errid)
        return replace(outcome, status=DEAD, reason=dead[0].error, errid=dead[0].errid)
    for item in items:
        numbers, err = (refused_in or {}).get(item.id, (frozenset(), ""))
        if stored.number in numbers:
            reason = "refused by the gateway: its answer lists the number as failed"
            return replace(outcome, status=REFUSED, reason=f"{reason} ({err})" if err else reason)
    parts = {item.part for item in items}
    if len(parts) < (stored.parts or 1):  # a part cancelled, the others went out
        return outcome
    return replace(outcome, status=SENT)


def status(app: App, send_id: int, *, account: str | None = None) -> SendStatus | None:
    """A send's progress, or None when there is no such send (in that account)."""
    row = app.store.outbound_get(send_id, account=account)
    if row is None:
        return None
    by_number: dict[str, list[OutboundItem]] = {}
    refused_in: dict[int, tuple[frozenset[str], str]] = {}
    for item in app.store.outbound_items(send_id):
        refused = _refused_numbers(item)
        if refused[0]:
            refused_in[item.id] = refused
        for number in item.recipients:
            by_number.setdefault(number, []).append(item)
    recipients_now = tuple(
        _progress(r, by_number.get(r.number, ()), refused_in)
        if r.status == QUEUED or (r.status == SCHEDULED and r.number in by_number)
        else RecipientOutcome(r.number, r.status, r.reason, r.parts)
        for r in app.store.outbound_recipients(send_id)
    )
    return SendStatus(
        id=row.id,
        account=row.account,
        source=row.source,
        text=row.text,
        created_at=row.created_at,
        at=row.at,
        flow=row.flow,
        context=row.context,
        recipients=recipients_now,
        state=row.state,
    )


def cancel(app: App, send_id: int, *, account: str | None = None) -> int | None:
    """Cancel what of a send is not yet handed to the gateway; returns how many recipients
    were cancelled, or None when there is no such send."""
    row = app.store.outbound_get(send_id, account=account)
    started = row is not None and row.state == OUTBOUND_QUEUED and bool(row.flow or row.context)
    queued = (
        {r.number for r in app.store.outbound_recipients(send_id, status=QUEUED)}
        if started
        else set()
    )
    cancelled = app.store.outbound_cancel(send_id, account=account)
    if cancelled is None:
        return None
    log.info("outbound_cancelled", send_id=send_id, recipients=cancelled)
    if row is not None and queued and cancelled:
        now_cancelled = [
            r.number
            for r in app.store.outbound_recipients(send_id, status=CANCELLED)
            if r.number in queued
        ]
        _end_conversations(app, row, now_cancelled)
    return cancelled


def _end_conversations(app: App, row: OutboundRow, numbers: Sequence[str]) -> None:
    """End the conversations a send started for ``numbers`` (its flow's, or its context's)
    when they are still the send's (its flow and context) and no person has them."""
    ends = []
    for number in numbers:
        current = app.store.get_conversation(number, account=row.account)
        if (
            current is None
            or current.state == WITH_PERSON
            or current.flow != row.flow
            or dict(current.context) != dict(row.context)
        ):
            continue
        ends.append(ConversationChange("end", row.account, number, app.time()))
    if ends:
        app.store.change_conversations(ends)
        log.info("outbound_conversations_ended", send_id=row.id, conversations=len(ends))


def release_due(app: App, limit: int = 1) -> int:
    """Check and queue scheduled sends whose time has come (the processing thread's
    work); returns how many were released."""
    released = 0
    for row in app.store.outbound_due(limit=limit):
        request = SendRequest(
            to=(),
            text=row.text,
            at=row.at,
            flow=row.flow,
            context=row.context,
            key=row.key,
            source=row.source,
            sender=row.sender,
            account=row.account,
        )
        scheduled = [r.number for r in app.store.outbound_recipients(row.id, status=SCHEDULED)]
        checked = _check(app, request, scheduled)
        try:
            entry = flow_entry(app, row.flow)
        except ValueError:  # the flow is gone from the configuration: sent without it
            log.warning("outbound_flow_gone", send_id=row.id, flow=row.flow)
            entry = None
        queued = [n for n, _ in checked.queued]
        conversations = _conversations(app, request, entry, queued, start=app.time())
        outcomes = [
            *(RecipientOutcome(n, QUEUED, parts=parts) for n, parts in checked.queued),
            *checked.outcomes,
        ]
        if app.store.outbound_release(row.id, _stored(outcomes), checked.outgoing, conversations):
            released += 1
            log.info(
                "outbound_released",
                send_id=row.id,
                queued=len(queued),
                suppressed=len(checked.outcomes),
            )
            if checked.outgoing:
                app.on_queued()
    return released
