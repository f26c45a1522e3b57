"""Draining the outbox: each queued SMS is sent, retried with backoff, or given up on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import structlog

from responder.app import App
from responder.backoff import Backoff
from responder.gateway import AccountError, OutcomeUnknown, TransientError, Verdict, classify
from responder.models import Delivery, Reply, SendResult
from responder.store import OutboxRow

if TYPE_CHECKING:
    from responder.account import Account

BATCH: Final = 20
"""Rows one send step takes at most."""
STALE: Final = "stale"
"""The reason a reply older than ``replies.max_age`` was dead-lettered with (it starts it)."""

log = structlog.get_logger("responder.sending")


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
    rows = app.store.in_flight()
    for row in rows:
        error = "outcome unknown: the daemon stopped during the send"
        if app.settings.replies.on_uncertain == "resend":
            log.warning("send_outcome_unknown", outbox_id=row.id, action="resend")
            app.store.record_retry(row.id, error=error, retry_at=app.time(), uncertain=True)
            _after_send(app, row, _delivery(row, row.attempts, "uncertain", None, error))
        else:
            log.warning("send_outcome_unknown", outbox_id=row.id, action="give_up")
            error += " (gave up: replies.on_uncertain)"
            app.store.record_uncertain(row.id, error=error)
            _after_send(app, row, _delivery(row, row.attempts, "uncertain", None, error))
    return len(rows)


def send_due(app: App, limit: int = BATCH, *, account: Account | None = None) -> int:
    """Send every due row (up to ``limit``); returns how many were taken.

    A row queued more than ``replies.max_age`` ago is dead-lettered as stale instead: an
    answer that comes hours late (after the account could not send) confuses more than
    it helps. Each outcome is reported to ``account``. Raises AccountError (the gateway
    refused the account: the row it was sending is back in the queue, its attempt not
    counted, and the rest wait).
    """
    rows = app.store.due_outbox(limit)
    for row in rows:
        age = app.time() - row.created_at
        if age > app.settings.replies.max_age:
            _expire(app, row, age)
            continue
        delivery = send_row(app, row)
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
        result = app.gateway.send(row.recipients, row.text, sender=row.sender or None)
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


def _after_send(app: App, row: OutboxRow, delivery: Delivery) -> None:
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
    app.store.record_dead(
        row.id,
        error=error,
        raw=result.raw if result else "",
        errid=result.errid if result else None,
    )
    return _delivery(row, attempt, status, result, error)


def _give_up_uncertain(app: App, row: OutboxRow, attempt: int, error: str) -> Delivery:
    """Stop sending an SMS an attempt of which may have gone out: state "uncertain"."""
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
