"""Draining the outbox: each queued SMS is sent, retried with backoff, or given up on.

Requests are paced by ``gateway.send_rate`` (at most that many per second over every SMS
the daemon sends; 0: no pacing). An SMS of a send no message asked for
(``responder.outbound``) emits ``message.sent`` once it went out and ``message.failed``
once it was given up on (refused, dead or uncertain): one event per outbox item, that
is per SMS part and batch of numbers (``data.numbers``; the event's ``number`` is the
first of them), emitted before its final state is recorded, under a key per item and
outcome, so that a crash in between emits it again and it is delivered once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Final

import structlog

from responder.app import App
from responder.backoff import Backoff
from responder.gateway import AccountError, OutcomeUnknown, TransientError, Verdict, classify
from responder.models import PLATFORM_TZ, Delivery, Event, Message, Reply, SendResult
from responder.stash import StashKey
from responder.store import NotClaimed, OutboxRow

if TYPE_CHECKING:
    from responder.account import Account

BATCH: Final = 20
"""Rows one send step takes at most."""
STALE: Final = "stale"
"""The reason a reply older than ``replies.max_age`` was dead-lettered with (it starts it)."""

SENT_EVENT: Final = "message.sent"
FAILED_EVENT: Final = "message.failed"
"""The events of an outbound send's SMS (see the module docstring)."""

log = structlog.get_logger("responder.sending")


class Pacer:
    """Spaces send requests ``1 / gateway.send_rate`` seconds apart, across threads."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._next = -float("inf")
        self._lock = threading.Lock()

    def reserve(self, rate: float) -> float:
        """Take the next slot; returns how long to wait for it (0: go now)."""
        if rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + 1.0 / rate
            return start - now


PACER: Final = StashKey[Pacer]()


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def pace(app: App, wait: Callable[[float], bool] = _sleep) -> bool:
    """Wait for the next send slot of ``gateway.send_rate``; True when ``wait`` was
    interrupted (the daemon passes its stop event's ``wait``: a stop never waits for it)."""
    delay = app.stash.setdefault(PACER, Pacer()).reserve(app.settings.gateway.send_rate)
    return delay > 0 and wait(delay)


JITTER: Final = 0.1
"""The share of a send's backoff taken off at random (``Backoff.jitter``)."""


def backoff(app: App) -> Backoff:
    """The outbox's backoff: from ``replies.retry_initial``, doubling, at most ``retry_max``."""
    settings = app.settings.replies
    return Backoff(initial=settings.retry_initial, maximum=settings.retry_max, jitter=JITTER)


def recover_in_flight(app: App) -> int:
    """Deal with sends a previous process started but never finished; returns how many.

    Their outcome is unknown: the SMS may have gone out. By default they are sent again
    (at least once); with ``replies.on_uncertain = "give_up"`` they are given up on as
    "uncertain" (not as dead letters: most of them went out).
    """
    rows = app.store.in_flight(account=app.account)
    for row in rows:
        error = "outcome unknown: the daemon stopped during the send"
        if app.settings.replies.on_uncertain == "resend":
            log.warning("send_outcome_unknown", outbox_id=row.id, action="resend")
            app.store.record_retry(row.id, error=error, retry_at=app.time(), uncertain=True)
            _after_send(app, row, _delivery(row, row.attempts, "uncertain", None, error))
        else:
            log.warning("send_outcome_unknown", outbox_id=row.id, action="give_up")
            error += " (gave up: replies.on_uncertain)"
            _outcome_event(app, row, "uncertain", None, error)
            app.store.record_uncertain(row.id, error=error)
            _after_send(app, row, _delivery(row, row.attempts, "uncertain", None, error))
    return len(rows)


def send_due(
    app: App,
    limit: int = BATCH,
    *,
    account: Account | None = None,
    wait: Callable[[float], bool] = _sleep,
) -> int:
    """Send every due row (up to ``limit``); returns how many were taken.

    A reply queued more than ``replies.max_age`` ago is dead-lettered as stale instead: an
    answer that comes hours late (after the account could not send) confuses more than
    it helps (an outbound send's SMS is not a reply: it never goes stale). Each outcome
    is reported to ``account``. Each request waits for its ``gateway.send_rate`` slot
    (``pace``); when ``wait`` is interrupted the rest are left for later. Raises
    AccountError (the gateway refused the account: the row it was sending is back in
    the queue, its attempt not counted, and the rest wait).
    """
    rows = app.store.due_outbox(limit, account=app.account)
    for taken, row in enumerate(rows):
        age = app.time() - row.created_at
        if row.outbound_id is None and age > app.settings.replies.max_age:
            _expire(app, row, age)
            continue
        if pace(app, wait):
            return taken
        try:
            delivery = send_row(app, row)
        except NotClaimed as err:  # taken or settled meanwhile: nothing to send here
            log.warning("send_not_claimed", outbox_id=row.id, error=str(err))
            continue
        if account is not None:
            account.delivered(delivery)
    return len(rows)


def _expire(app: App, row: OutboxRow, age: float) -> None:
    error = (
        f"{STALE}: queued {age:.0f} s ago, more than replies.max_age "
        f"({app.settings.replies.max_age:g} s)"
    )
    log.warning("send_stale", outbox_id=row.id, message_id=row.message_id, age=round(age))
    if row.uncertain:  # an earlier attempt may have gone out: not a dead letter
        _after_send(app, row, _give_up_uncertain(app, row, row.attempts, error))
    else:
        _after_send(app, row, _dead(app, row, row.attempts, error, None))


def send_row(app: App, row: OutboxRow) -> Delivery:
    attempt = app.store.claim_send(row.id)
    bound = log.bind(outbox_id=row.id, message_id=row.message_id, attempt=attempt)
    result: SendResult | None = None
    try:
        result = app.gateway.send(
            row.recipients, row.text, sender=row.sender or None, schedule=_schedule(app, row)
        )
    except AccountError as err:
        _hold(app, row, err)
        _after_send(app, row, _delivery(row, attempt, "retrying", None, str(err)))
        raise
    except OutcomeUnknown as err:
        if app.settings.replies.on_uncertain == "give_up":
            delivery = _give_up_uncertain(app, row, attempt, f"outcome unknown, gave up: {err}")
        else:
            delivery = _retry(app, row, attempt, f"outcome unknown: {err}", None, uncertain=True)
        bound.warning("send_outcome_unknown", error=str(err), status=delivery.status)
    except TransientError as err:
        delivery = _retry(app, row, attempt, str(err), None)
        bound.warning("send_failed", error=str(err), status=delivery.status)
    except ValueError as err:  # nothing to send (no recipient): retrying cannot help
        delivery = _dead(app, row, attempt, f"cannot be sent: {err}", None)
        bound.error("send_impossible", error=str(err))
    else:
        if result.ok:
            _outcome_event(app, row, "sent", result.errid, "")
            app.store.record_sent(row.id, raw=result.raw, errid=result.errid)
            delivery = _delivery(row, attempt, "sent", result)
            bound.info("sms_sent", num=result.num, refused=list(result.refused) or None)
        elif (row.recipients and set(row.recipients) <= set(result.refused)) or classify(
            result.errid, result.err
        ) is Verdict.REQUEST:  # that number, text or sender: the same again cannot succeed
            error = f"refused by the gateway: {result.err} (errid {result.errid})"
            delivery = _dead(app, row, attempt, error, result, status="refused")
            bound.warning("send_refused", err=result.err, errid=result.errid)
        else:
            error = f"not accepted: {result.err} (errid {result.errid})"
            delivery = _retry(app, row, attempt, error, result)
            bound.warning(
                "send_not_accepted", err=result.err, errid=result.errid, status=delivery.status
            )
    _after_send(app, row, delivery)
    return delivery


def _hold(app: App, row: OutboxRow, err: AccountError) -> None:
    """Put a row refused with its account back in the queue, as if never attempted: the
    fault is the account's (login, credit), not this SMS's."""
    app.store.release_claim(row.id, error=f"held: {err}", errid=err.errid)


def _schedule(app: App, row: OutboxRow) -> datetime | None:
    """The platform schedule a row is handed to (``gateway.platform_schedule_over``); None
    for one sent now, or whose time has passed meanwhile."""
    if row.schedule is None or row.schedule <= app.time():
        return None
    return datetime.fromtimestamp(row.schedule, PLATFORM_TZ)


def _outcome_event(app: App, row: OutboxRow, status: str, errid: int | None, error: str) -> None:
    """``message.sent`` or ``message.failed`` for an outbound send's SMS (not a reply's)."""
    if row.outbound_id is None:
        return
    kind = SENT_EVENT if status == "sent" else FAILED_EVENT
    app.emit(
        Event(
            type=kind,
            account=row.account,
            number=row.recipients[0] if row.recipients else "",
            data={
                "id": row.outbound_id,
                "part": row.part,
                "parts": row.parts,
                "numbers": list(row.recipients),
                "status": status,
                "errid": errid,
                "error": error,
            },
            key=f"outbox:{row.id}:{kind}",
        )
    )


def _stand_in(app: App, row: OutboxRow) -> Message:
    """The message after-send hooks get for an outbound send's SMS: id 0, no sender."""
    return Message(
        id=0,
        gateway_id=0,
        src="",
        dst=row.sender,
        text=row.text,
        received_at=app.now(),
        raw="",
        account=row.account,
    )


def _after_send(app: App, row: OutboxRow, delivery: Delivery) -> None:
    if row.outbound_id is not None:
        message: Message | None = _stand_in(app, row)
    else:
        message = app.store.get_message(row.message_id)
    reply = Reply(text=row.text, to=row.recipients, plugin=row.plugin, sender=row.sender)
    app.plugins.hook.responder_after_send(app=app, message=message, reply=reply, delivery=delivery)


def _delivery(
    row: OutboxRow, attempt: int, status: str, result: SendResult | None, error: str = ""
) -> Delivery:
    return Delivery(
        outbox_id=row.id,
        to=row.recipients,
        text=row.text,
        attempt=attempt,
        status=status,
        result=result,
        error=error,
    )


def _dead(
    app: App,
    row: OutboxRow,
    attempt: int,
    error: str,
    result: SendResult | None,
    *,
    status: str = "dead",
) -> Delivery:
    _outcome_event(app, row, status, result.errid if result else None, error)
    app.store.record_dead(
        row.id,
        error=error,
        raw=result.raw if result else "",
        errid=result.errid if result else None,
    )
    return _delivery(row, attempt, status, result, error)


def _give_up_uncertain(app: App, row: OutboxRow, attempt: int, error: str) -> Delivery:
    """Stop sending an SMS an attempt of which may have gone out: state "uncertain"."""
    _outcome_event(app, row, "uncertain", None, error)
    app.store.record_uncertain(row.id, error=error)
    return _delivery(row, attempt, "uncertain", None, error)


def _retry(
    app: App,
    row: OutboxRow,
    attempt: int,
    error: str,
    result: SendResult | None,
    *,
    uncertain: bool = False,
) -> Delivery:
    if attempt >= app.settings.replies.max_attempts:
        log.error("send_gave_up", outbox_id=row.id, attempts=attempt, error=error)
        error = f"gave up after {attempt} attempts: {error}"
        if uncertain or row.uncertain:  # an attempt may have gone out: not a dead letter
            return _give_up_uncertain(app, row, attempt, error)
        return _dead(app, row, attempt, error, result)
    app.store.record_retry(
        row.id,
        error=error,
        retry_at=app.time() + backoff(app).delay(attempt),
        raw=result.raw if result else "",
        errid=result.errid if result else None,
        uncertain=uncertain,
    )
    return _delivery(row, attempt, "uncertain" if uncertain else "retrying", result, error)
