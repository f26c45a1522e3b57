"""What the console's pages show, read from the running App: frozen values the templates
render, built on the web threads (store reads only; changes go through ``actions``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from responder.account import AccountStatus
from responder.app import App, build_app
from responder.conversations import WITH_PERSON, Conversation
from responder.gateway import LONG_SMS_LIMIT
from responder.history import history
from responder.models import PLATFORM_TZ
from responder.normalise import canonical_number
from responder.simulation import Simulated, simulate, simulated_message
from responder.stash import OPTED_OUT
from responder.store import OUTBOX
from responder.store.queues import QUEUE_DEAD
from responder.text import SMS_LIMIT

PER_PAGE: Final = 50
WAITING_SHOWN: Final = 200
LINES_SHOWN: Final = 100
DEAD_SHOWN: Final = 50
OPTOUTS_SHOWN: Final = 200

# The states a conversation row shows.
FLOW: Final = "flow"
PERSON: Final = "person"
OPTED: Final = "optout"
BOT: Final = "bot"


def when(moment: float | None) -> str:
    """Platform time, as staff read it: "11-30 14:05" (with the year when not this one)."""
    if moment is None:
        return "-"
    local = datetime.fromtimestamp(moment, PLATFORM_TZ)
    now = datetime.now(PLATFORM_TZ)
    return f"{local:%m-%d %H:%M}" if local.year == now.year else f"{local:%Y-%m-%d %H:%M}"


def iso(moment: float | None) -> str:
    return "" if moment is None else datetime.fromtimestamp(moment, PLATFORM_TZ).isoformat()


class Dated:
    """A row with a moment (``at``): ``when`` as staff read it, ``iso`` for machines."""

    at: float

    @property
    def when(self) -> str:
        return when(self.at)

    @property
    def iso(self) -> str:
        return iso(self.at)


def opted_out(app: App, number: str) -> bool:
    check = app.stash.get(OPTED_OUT, None)
    return bool(check is not None and check(number))


def state_of(app: App, conversation: Conversation | None, number: str) -> str:
    if opted_out(app, number):
        return OPTED
    if conversation is None:
        return BOT
    return PERSON if conversation.state == WITH_PERSON else FLOW


# -- inbox ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class InboxRow(Dated):
    number: str
    account: str
    text: str
    at: float
    state: str
    """FLOW, PERSON, OPTED or BOT."""
    waiting_since: float | None = None

    @property
    def since(self) -> str:
        return when(self.waiting_since)

    @property
    def since_iso(self) -> str:
        return iso(self.waiting_since)


@dataclass(frozen=True)
class InboxView:
    account: str | None
    waiting: tuple[InboxRow, ...]
    latest: tuple[InboxRow, ...]
    page: int
    has_next: bool


def inbox(app: App, *, account: str | None, page: int = 0) -> InboxView:
    """The customers waiting for a person (longest waiting first), then one page of the
    numbers that wrote last, each with its latest message and state."""
    store = app.store
    waiting = sorted(
        store.conversations(state=WITH_PERSON, account=account, limit=WAITING_SHOWN),
        key=lambda c: c.started_at,
    )
    waiting_rows = []
    for waiter in waiting:
        texts = store.texts_from(
            waiter.number,
            since=waiter.started_at - 86400,
            limit=1,
            account=waiter.account,
        )
        waiting_rows.append(
            InboxRow(
                number=waiter.number,
                account=waiter.account,
                text=texts[0] if texts else "",
                at=waiter.updated_at,
                state=OPTED if opted_out(app, waiter.number) else PERSON,
                waiting_since=waiter.started_at,
            )
        )
    page = max(page, 0)
    senders = store.latest_senders(account=account, limit=PER_PAGE + 1, offset=page * PER_PAGE)
    latest = []
    for sender in senders[:PER_PAGE]:
        number = canonical_number(sender.number) or sender.number
        conversation = store.get_conversation(number, account=sender.account)
        latest.append(
            InboxRow(
                number=sender.number,
                account=sender.account,
                text=sender.text,
                at=sender.at,
                state=state_of(app, conversation, number),
            )
        )
    return InboxView(
        account=account,
        waiting=tuple(waiting_rows),
        latest=tuple(latest),
        page=page,
        has_next=len(senders) > PER_PAGE,
    )


# -- one conversation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Line(Dated):
    direction: str
    """"in" or "out"."""
    text: str
    at: float
    by: str
    """What answered a message, or whose SMS went out (a rule, a flow, "console:alice")."""
    state: str


@dataclass(frozen=True)
class Composer:
    """What the reply box's counter needs to count as the sender will split."""

    limit: int
    signature: str
    position: str
    """"prefix" or "suffix"."""
    max_parts: int


@dataclass(frozen=True)
class ConversationView:
    number: str
    account: str
    state: str
    conversation: Conversation | None
    lines: tuple[Line, ...]
    composer: Composer

    @property
    def with_person(self) -> bool:
        return self.state == PERSON

    @property
    def until(self) -> str:
        found = self.conversation
        return when(found.expires_at) if found is not None and found.expires_at else ""


def composer(app: App) -> Composer:
    replies = app.settings.replies
    long_sms = app.settings.gateway.long_sms
    return Composer(
        limit=LONG_SMS_LIMIT if long_sms else SMS_LIMIT,
        signature=replies.signature,
        position=replies.signature_position,
        max_parts=1 if long_sms else replies.max_parts,
    )


def lines(app: App, number: str, account: str) -> tuple[Line, ...]:
    """Both directions of the exchange with ``number``, oldest first."""
    page = history(app, account=account, number=number, limit=LINES_SHOWN)
    found = [
        Line(
            direction=line.direction,
            text=line.text,
            at=line.at,
            by=line.by,
            state=line.state,
        )
        for line in page.lines
    ]
    return tuple(reversed(found))


def conversation(app: App, number: str, account: str) -> ConversationView:
    canonical = canonical_number(number) or number
    current = app.conversation(canonical, account=account).current
    return ConversationView(
        number=canonical,
        account=account,
        state=state_of(app, current, canonical),
        conversation=current,
        lines=lines(app, canonical, account),
        composer=composer(app),
    )


# -- rules tester --------------------------------------------------------------------------


def try_rules(app: App, text: str, src: str) -> Simulated:
    """What the plugins would do with ``text`` from ``src``, as ``responder simulate``
    shows it: a dry-run App on the same store and settings, changing nothing."""
    dry = build_app(app.settings, store=app.store, dry_run=True)
    try:
        return simulate(dry, simulated_message(text, src, app.settings.gateway.sender or ""))
    finally:
        dry.close()


# -- opt-outs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptoutRow(Dated):
    number: str
    at: float
    source: str
    """"sms" (the customer's word), "manual" (the command), "console:<name>", "api:<name>"."""
    text: str


def optouts(app: App, search: str = "") -> tuple[OptoutRow, ...]:
    """The opt-out list (the built-in optout plugin's table), the latest first; with
    ``search``, the numbers containing those digits."""
    digits = "".join(char for char in search if char.isdigit())
    rows = app.store.query(
        "SELECT number, opted_out_at, source, text FROM optout_numbers"
        " WHERE instr(number, ?) > 0 ORDER BY opted_out_at DESC, number LIMIT ?",
        (digits, OPTOUTS_SHOWN),
        missing_ok=True,
    )
    return tuple(OptoutRow(row[0], row[1], row[2], row[3]) for row in rows)


# -- health --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    value: int
    label: str


@dataclass(frozen=True)
class Chart:
    """An hourly bar chart as SVG geometry (computed here, drawn by the template)."""

    width: int
    height: int
    top: int
    received: tuple[Bar, ...]
    queued: tuple[Bar, ...]
    ticks: tuple[tuple[float, str], ...]
    """(x, label) under the bars, every 6 hours."""
    bar_width: float
    summary: str
    """The whole chart in words, for screen readers."""


CHART_WIDTH: Final = 720
CHART_HEIGHT: Final = 180
CHART_BOTTOM: Final = 20


def chart(app: App, account: str | None, *, now: float | None = None) -> Chart:
    now = app.time() if now is None else now
    hour_start = now - now % 3600
    since = hour_start - 23 * 3600
    hours = app.store.traffic(since, hours=24, account=account)
    top = max([h.received for h in hours] + [h.queued for h in hours] + [1])
    plot = CHART_HEIGHT - CHART_BOTTOM
    slot = CHART_WIDTH / 24
    bar = slot * 0.4
    received: list[Bar] = []
    queued: list[Bar] = []
    ticks: list[tuple[float, str]] = []
    for index, h in enumerate(hours):
        x = index * slot + slot * 0.1
        label = f"{datetime.fromtimestamp(h.start, PLATFORM_TZ):%H}:00"
        for bars, value, offset in ((received, h.received, 0.0), (queued, h.queued, bar)):
            height = plot * value / top
            bars.append(
                Bar(round(x + offset, 1), round(plot - height, 1), round(height, 1), value, label)
            )
        if index % 6 == 0:
            ticks.append((round(x, 1), label))
    total_in = sum(h.received for h in hours)
    total_out = sum(h.queued for h in hours)
    return Chart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT,
        top=top,
        received=tuple(received),
        queued=tuple(queued),
        ticks=tuple(ticks),
        bar_width=round(bar, 1),
        summary=f"{total_in} / {total_out}",
    )


@dataclass(frozen=True)
class DeadLetter(Dated):
    id: int
    recipients: str
    text: str
    attempts: int
    error: str
    at: float


@dataclass(frozen=True)
class HealthView:
    account: str | None
    status: AccountStatus
    outbox_depth: int
    dead: tuple[DeadLetter, ...]
    dead_count: int
    chart: Chart
    sections: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]

    @property
    def since(self) -> str:
        return when(self.status.since)

    @property
    def balance_at(self) -> str:
        return when(self.status.balance_at)


def health(app: App, account: str | None) -> HealthView:
    store = app.store
    accounts = [account] if account is not None else store.accounts()
    dead: list[DeadLetter] = []
    dead_count = 0
    for name in accounts:
        dead_count += store.queue_counts(OUTBOX, account=name).dead
        for item in store.queue_items(OUTBOX, state=QUEUE_DEAD, limit=DEAD_SHOWN, account=name):
            payload: Any = item.payload if isinstance(item.payload, dict) else {}
            dead.append(
                DeadLetter(
                    id=item.id,
                    recipients=", ".join(str(n) for n in payload.get("recipients", ())),
                    text=str(payload.get("text", "")),
                    attempts=item.attempts,
                    error=item.last_error,
                    at=item.finished_at or item.created_at,
                )
            )
    dead.sort(key=lambda d: -d.at)
    sections = tuple(
        (
            section.title,
            tuple(
                (str(name), "-" if value is None else str(value)) for name, value in section.figures
            ),
        )
        for section in app.status_sections()
    )
    return HealthView(
        account=account,
        status=AccountStatus.load(store, account or app.account),
        outbox_depth=store.outbox_depth(account=account),
        dead=tuple(dead[:DEAD_SHOWN]),
        dead_count=dead_count,
        chart=chart(app, account),
        sections=sections,
    )


def accounts(app: App) -> tuple[str, ...]:
    return tuple(app.store.accounts())
