"""What staff change from the console. Each function takes the App and runs on the
processing thread (the routes hand it over with ``ApiContext.run``), like the hooks it may
call: a staff reply goes through ``outbound.submit`` (the before-send hooks, the signature,
the splitting and the outbox, as every reply), and hand-over changes never race the
message being handled."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from responder import outbound
from responder.app import App
from responder.store import OUTBOX

WHO: Final = "console"
"""The ``who`` of a conversation a person took over from the console."""
DEFAULT_HANDOVER_TIMEOUT: Final = 86400.0


@dataclass(frozen=True)
class ReplyOutcome:
    status: str
    """``outbound``'s recipient status: queued, suppressed or invalid."""
    parts: int
    reason: str = ""
    send_id: int = 0
    replayed: bool = False
    """The form was sent before under the same key: nothing more went out."""


def handover_timeout(app: App) -> float:
    """How long a hand-over lasts: ``[handover] timeout`` (a day without the plugin)."""
    settings: Any = app.plugin_config("handover")
    timeout = getattr(settings, "timeout", None)
    return float(timeout) if timeout else DEFAULT_HANDOVER_TIMEOUT


def reply(
    app: App, number: str, account: str, text: str, who: str, *, key: str = ""
) -> ReplyOutcome:
    """A staff member's answer: one send to ``number``; a hand-over under way lasts on
    from now. ``key``: the reply form's own, so that the form sent twice sends once."""
    request = outbound.SendRequest(
        to=(number,),
        text=text,
        source=f"{WHO}:{who}",
        account=account,
        key=f"{WHO}:{key}" if key else "",
    )
    try:
        receipt = outbound.submit(app, request)
    except outbound.IdempotencyConflict:  # the same form, another text: a new send
        receipt = outbound.submit(app, replace(request, key=""))
    recipient = receipt.recipients[0] if receipt.recipients else None
    if recipient is not None and recipient.status == outbound.QUEUED:
        handle = app.conversation(number, account=account)
        if handle.with_person:
            handle.move(timeout=handover_timeout(app))
    return ReplyOutcome(
        status=recipient.status if recipient else outbound.INVALID,
        parts=recipient.parts if recipient and recipient.parts else receipt.parts,
        reason=recipient.reason if recipient else "",
        send_id=receipt.id,
        replayed=receipt.replayed,
    )


def take_over(app: App, number: str, account: str, who: str) -> None:
    """Put the customer with a person (the bot falls silent for them) for the hand-over's
    timeout, as the handover plugin does when they ask for one."""
    app.conversation(number, account=account).hand_over(
        timeout=handover_timeout(app), who=f"{WHO}:{who}"
    )
    app.log.info("console_took_over", number=number, account=account, by=who)


def hand_back(app: App, number: str, account: str, who: str) -> bool:
    """End a hand-over: the bot answers the customer again. False when they were not with
    a person."""
    handle = app.conversation(number, account=account)
    if not handle.with_person:
        return False
    handle.end()
    app.log.info("console_handed_back", number=number, account=account, by=who)
    return True


def optout_plugin(app: App) -> Any:
    """The built-in optout plugin's module when it is loaded, else None."""
    if app.plugins.pm.get_plugin("optout") is None:
        return None
    try:
        from responder_plugins import optout
    except ImportError:
        return None
    return optout


def optout_add(app: App, number: str, who: str) -> bool | None:
    """Put a number on the opt-out list; whether it was added (None: no optout plugin)."""
    plugin = optout_plugin(app)
    if plugin is None:
        return None
    added: bool = plugin.add_number(app, number, message_id=None, source=f"{WHO}:{who}", text="")
    if added:
        app.log.info("console_opted_out", number=number, by=who)
    return added


def optout_remove(app: App, number: str, who: str) -> bool | None:
    plugin = optout_plugin(app)
    if plugin is None:
        return None
    removed: bool = plugin.remove_number(app, number)
    if removed:
        app.log.info("console_resubscribed", number=number, by=who)
    return removed


def retry_dead(app: App, item_id: int, account: str | None, who: str) -> int:
    """Put a dead letter of the outbox back in line; how many were (0 or 1)."""
    accounts = [account] if account is not None else app.store.accounts()
    revived = 0
    for name in accounts:
        revived += app.store.queue_requeue_dead(OUTBOX, [item_id], account=name)
    if revived:
        app.log.info("console_retried_dead_letter", item=item_id, by=who)
        app.on_queued()
    return revived
