"""Draining the outbox: each queued SMS is sent, retried with backoff, or given up on."""

from __future__ import annotations

import random

import structlog

from responder.app import App
from responder.gateway import LoginError, OutcomeUnknown, TransientError
from responder.models import Delivery, Reply, SendResult
from responder.store import OutboxRow

log = structlog.get_logger("responder.sender")


def backoff(app: App, attempt: int) -> float:
    """Seconds before the next attempt: exponential from retry_initial, capped, ±10% jitter."""
    settings = app.settings.replies
    delay = min(settings.retry_initial * 2 ** max(attempt - 1, 0), settings.retry_max)
    return delay * random.uniform(0.9, 1.1)


def recover_in_flight(app: App) -> int:
    """Deal with sends a previous process started but never finished; returns how many.

    Their outcome is unknown: the SMS may have gone out. By default they are sent again
    (at least once); with ``replies.on_uncertain = "give_up"`` they are dead-lettered.
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
            app.store.record_dead(row.id, error=error)
            _after_send(app, row, _delivery(row, row.attempts, "dead", None, error))
    return len(rows)


def send_due(app: App, limit: int = 20) -> int:
    """Send every due row (up to ``limit``); returns how many were attempted.

    Raises LoginError: sending stops until the login is fixed.
    """
    rows = app.store.due_outbox(limit)
    for row in rows:
        send_row(app, row)
    return len(rows)


def send_row(app: App, row: OutboxRow) -> Delivery:
    attempt = app.store.claim_send(row.id)
    bound = log.bind(outbox_id=row.id, message_id=row.message_id, attempt=attempt)
    result: SendResult | None = None
    try:
        result = app.gateway.send(row.recipients, row.text)
    except LoginError as err:
        app.store.record_retry(
            row.id, error=str(err), retry_at=app.time() + app.settings.replies.retry_max
        )
        _after_send(app, row, _delivery(row, attempt, "retrying", None, str(err)))
        raise
    except OutcomeUnknown as err:
        if app.settings.replies.on_uncertain == "give_up":
            delivery = _dead(app, row, attempt, f"outcome unknown, gave up: {err}", None)
            status = "dead"
        else:
            delivery = _retry(app, row, attempt, f"outcome unknown: {err}", None, uncertain=True)
            status = "uncertain"
        bound.warning("send_outcome_unknown", error=str(err), status=status)
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
        elif row.recipients and set(row.recipients) <= set(result.refused):
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


def _after_send(app: App, row: OutboxRow, delivery: Delivery) -> None:
    message = app.store.get_message(row.message_id)
    reply = Reply(text=row.text, to=row.recipients, plugin=row.plugin)
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
        return _dead(app, row, attempt, f"gave up after {attempt} attempts: {error}", result)
    app.store.record_retry(
        row.id,
        error=error,
        retry_at=app.time() + backoff(app, attempt),
        raw=result.raw if result else "",
        errid=result.errid if result else None,
        uncertain=uncertain,
    )
    return _delivery(row, attempt, "uncertain" if uncertain else "retrying", result, error)
