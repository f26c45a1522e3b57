"""What happens to one journaled message: filter → reply → observe → before-send → outbox.

``decide`` runs the plugins and composes the SMS without changing anything (it is what
``responder simulate`` shows); ``process`` does the same and commits the outcome, with
the conversation changes the plugins staged meanwhile (``app.conversation``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import structlog

from responder.app import App
from responder.config import GatewaySettings
from responder.conversations import Staging, overlay, staged
from responder.gateway import LONG_SMS_LIMIT
from responder.models import Deferred, Message, Reply, Veto
from responder.queue import DurableQueue, QueueItem
from responder.store import FAILED, OutgoingSms, StoreError, is_storage_failure
from responder.text import SMS_LIMIT, clean_control, fit_parts, make_encodable

log = structlog.get_logger("responder.pipeline")

NO_RECIPIENT = "no number to reply to (the message has no sender number)"
MAX_ATTEMPTS = 3
"""Times processing a message may begin before it is set aside."""
MAX_EXTENSION = 6
"""A ``dst`` this short (in digits) is an extension, not a whole number."""


@dataclass(frozen=True)
class Composed:
    """A reply turned into the SMS texts that will be sent."""

    parts: tuple[str, ...]
    truncated: bool
    replaced: int
    """Characters the gateway encoding cannot carry, replaced by a placeholder."""


@dataclass(frozen=True)
class Decision:
    """Everything the plugins decided about one message."""

    message: Message
    dropped: str | None = None
    """The reason of the filter that dropped it (the reason alone: see ``decided_by``)."""
    reply: Reply | None = None
    """The winning reply, as the reply hook gave it (``plugin`` filled in)."""
    deferred: Deferred | None = None
    """What the reply hook returned instead of a Reply, when someone answers later."""
    final: Reply | None = None
    """The reply after before-send; None when vetoed or there was none."""
    vetoed: str | None = None
    """The reason of the Veto that cancelled the reply, or NO_RECIPIENT."""
    decided_by: str = ""
    """The plugin that dropped or vetoed it (``messages.decided_by``); "" otherwise, and
    when the core did (NO_RECIPIENT)."""
    composed: Composed | None = None

    @property
    def reason(self) -> str:
        """Why nothing is sent, or "" when something is."""
        if self.dropped:
            return self.dropped
        if self.vetoed:
            return self.vetoed
        if self.deferred is not None:
            return f"awaiting {self.deferred.who}"
        if self.reply is None:
            return "no reply"
        if not self.composed or not self.composed.parts:
            return "empty reply"
        return ""

    @property
    def answer(self) -> Reply | Deferred | None:
        """The reply hook's winner, as observers see it."""
        return self.deferred if self.deferred is not None else self.reply


def compose(app: App, text: str) -> Composed:
    """Apply the reply rules: clean, make encodable, add the signature, split, cap parts.

    The signature is never added twice: a text that starts or ends with it loses it there
    and gets it back at ``signature_position`` on every part; a text holding it anywhere
    else is sent as written, without another.
    """
    settings = app.settings.replies
    text, replaced = make_encodable(clean_control(text), app.settings.gateway.encoding)
    signature = settings.signature
    text = _without_signature_at_ends(text.strip(), signature)
    if not text:
        return Composed(parts=(), truncated=False, replaced=replaced)
    if signature and signature in text:
        signature = ""
    prefix = signature if settings.signature_position == "prefix" else ""
    suffix = signature if settings.signature_position == "suffix" else ""
    if app.settings.gateway.long_sms:
        parts, truncated = fit_parts(
            text, max_parts=1, limit=LONG_SMS_LIMIT, prefix=prefix, suffix=suffix
        )
    else:
        parts, truncated = fit_parts(
            text, max_parts=settings.max_parts, limit=SMS_LIMIT, prefix=prefix, suffix=suffix
        )
    return Composed(parts=tuple(parts), truncated=truncated, replaced=replaced)


def _without_signature_at_ends(text: str, signature: str) -> str:
    """``text`` without ``signature`` at its start or end (a reply written with it)."""
    if not signature:
        return text
    if text.startswith(signature):
        text = text[len(signature) :].strip()
    if text.endswith(signature):
        text = text[: -len(signature)].strip()
    return text


def before_send(app: App, message: Message, reply: Reply) -> Reply | Veto:
    """Run the before-send hooks through pluggy: the reply as they changed it, or the Veto
    that stopped them (``Veto.plugin`` names who vetoed).

    The implementations form a chain: each isolating proxy hands its implementation the
    reply as changed so far (``CallState.chain``) and keeps the change; the core's
    ``trylast`` implementation returns the result, so wrappers see (and may replace) the
    final Reply or the Veto. A wrapper that returns None keeps the chain's reply.
    """
    state = app.plugins.calls.state
    outer = state.chain  # a before-send call made from inside another one
    state.chain = reply
    try:
        result = app.plugins.hook.responder_before_send(app=app, message=message, reply=reply)
        changed = state.chain
    finally:
        state.chain = outer
    return changed if result is None else result


def before_send_each(
    app: App,
    message: Message,
    numbers: Iterable[str],
    text: str,
    *,
    sender: str | None,
    plugin: str,
) -> Iterator[tuple[str, Reply | str]]:
    """Each number through the before-send hooks, as ``text`` to it alone would be: the
    reply they left, or why they vetoed it ("reason (by plugin)")."""
    for number in numbers:
        reply = Reply(text=text, to=(number,), plugin=plugin, sender=sender)
        result = before_send(app, message, reply)
        if isinstance(result, Veto):
            by = f" (by {result.plugin})" if result.plugin else ""
            yield number, f"{result.reason}{by}"
        else:
            yield number, result


def answer(app: App, message: Message) -> Reply | Deferred | None:
    """The reply hook's winner, through pluggy: the first Reply or Deferred in call order
    (its ``plugin`` filled in), or None."""
    return app.plugins.hook.responder_reply(app=app, message=message)


def _first_drop(app: App, message: Message) -> tuple[str, str] | None:
    """The first filter reason, through pluggy, and the plugin that gave it; None when
    the message passes."""
    state = app.plugins.calls.state
    state.dropped_by = ""
    reason = app.plugins.hook.responder_filter(app=app, message=message)
    return (reason, state.dropped_by) if reason else None


def decide(app: App, message: Message) -> Decision:
    """Ask the plugins about a message and compose the answer; commits nothing."""
    dropped = _first_drop(app, message)
    if dropped:
        return Decision(message=message, dropped=dropped[0], decided_by=dropped[1])
    won = answer(app, message)
    if isinstance(won, Deferred):
        return Decision(message=message, deferred=won)
    if won is None or not won.text.strip():
        return Decision(message=message, reply=won)
    checked = before_send(app, message, won)
    if isinstance(checked, Veto):
        return Decision(
            message=message, reply=won, vetoed=checked.reason, decided_by=checked.plugin
        )
    if not recipients(message, checked):
        return Decision(message=message, reply=won, vetoed=NO_RECIPIENT)
    return Decision(message=message, reply=won, final=checked, composed=compose(app, checked.text))


def recipients(message: Message, reply: Reply) -> tuple[str, ...]:
    """The numbers a reply goes to: its own, or the message's sender; blanks left out."""
    return tuple(n.strip() for n in reply.to or (message.src,) if n.strip())


def reply_extension(gateway: GatewaySettings, dst: str) -> str:
    """The extension a message was written to, to answer from it; "" for ``gateway.sender``.

    With ``service_number`` set, a ``dst`` starting with it carries the extension after
    it; otherwise a ``dst`` of at most 6 digits is the extension itself (some platforms
    report only that). Anything else gives no extension.
    """
    dst = dst.strip()
    service = gateway.service_number
    if service and dst.startswith(service):
        extension = dst[len(service) :]
    elif len(dst) <= MAX_EXTENSION:
        extension = dst
    else:
        extension = ""
    return extension if extension.isdigit() else ""


def outgoing(app: App, message: Message, reply: Reply, composed: Composed) -> list[OutgoingSms]:
    """One outbox row per SMS part and per request's worth of numbers (max_recipients).

    A row is one gateway request, so a retry resends exactly what failed. Each goes out
    from the reply's sender, else from the extension the customer wrote to.
    """
    to = recipients(message, reply)
    size = app.settings.gateway.max_recipients
    count = len(composed.parts)
    if reply.sender is not None:
        sender = reply.sender
    else:
        sender = reply_extension(app.settings.gateway, message.dst)
    return [
        OutgoingSms(
            recipients=to[start : start + size],
            text=part,
            part=index,
            parts=count,
            plugin=reply.plugin,
            sender=sender,
        )
        for index, part in enumerate(composed.parts, start=1)
        for start in range(0, len(to), size)
    ]


def process(app: App, message: Message) -> Decision:
    """Run a journaled message through the plugins and commit the outcome with its replies.

    A message whose processing began MAX_ATTEMPTS times without finishing (a plugin that
    hangs or kills the process on it, and the daemon was restarted each time) is set
    aside, so the messages behind it are answered. An attempt that a store failure ends
    (a full disk, even inside a plugin) is taken back: only a plugin's failure counts.
    """
    bound = log.bind(message_id=message.id, src=message.src)
    attempt = app.store.begin_processing(message.id)
    if attempt > MAX_ATTEMPTS:
        reason = f"set aside: processing did not finish in {MAX_ATTEMPTS} attempts"
        bound.error("message_set_aside", reason=reason, action="see the log of the attempts")
        app.store.finish_message(message.id, outgoing=[], reason=reason, state=FAILED)
        return Decision(message=message)
    with staged(app, message) as staging:
        return _process(app, message, bound, staging)


def _process(
    app: App, message: Message, bound: structlog.typing.FilteringBoundLogger, staging: Staging
) -> Decision:
    """``process`` once the attempt is counted: the conversation changes the plugins make
    meanwhile are staged in ``staging`` and committed with the outcome (never under
    ``dry_run``: they go to the run's overlay)."""
    try:
        decision = decide(app, message)
    except StoreError as err:
        _uncount_store_failure(app, message, err)
        raise  # the message stays unprocessed; the daemon stops on a store failure
    except Exception as err:  # a bug in the core must not stop the queue behind this message
        bound.exception("message_failed")
        app.store.finish_message(
            message.id, outgoing=[], reason=f"error: {type(err).__name__}", state=FAILED
        )
        return Decision(message=message)
    queued = []
    try:
        app.plugins.hook.responder_observe(
            app=app, message=message, reply=decision.answer, dropped=decision.dropped
        )
        if decision.final is not None and decision.composed is not None:
            queued = outgoing(app, message, decision.final, decision.composed)
            _warn_composition(bound, decision.composed)
        won = decision.answer
        changes = list(staging.changes)
        if app.dry_run:
            overlay(app, changes)
            changes = []
        app.store.finish_message(
            message.id,
            outgoing=queued,
            reason=decision.reason,
            plugin=won.plugin if won is not None else "",
            decided_by=decision.decided_by,
            conversations=changes,
        )
    except StoreError as err:
        _uncount_store_failure(app, message, err)
        raise
    if queued and decision.final is not None:
        bound.info("reply_queued", plugin=decision.final.plugin, parts=len(queued))
        app.on_queued()
    else:
        bound.info(
            "message_unanswered", reason=decision.reason, decided_by=decision.decided_by or None
        )
    return decision


def _uncount_store_failure(app: App, message: Message, err: BaseException) -> None:
    """Take back the attempt when the store failed, not a plugin (a malformed query in a
    plugin is the plugin's failure and counts). Best effort: a store that cannot take even
    this write keeps the count, and the daemon stops anyway."""
    if not is_storage_failure(err):
        return
    try:
        app.store.uncount_attempt(message.id)
    except StoreError as again:
        log.warning(
            "attempt_not_uncounted", message_id=message.id, error=f"{type(again).__name__}: {again}"
        )


def queue_late_reply(
    app: App, message: Message, reply: Reply | None, *, skip: str = "", key: str | None = None
) -> bool:
    """Queue an answer that arrived after the message was processed, or a request for the
    other plugins' answer (``reply=None``, ``skip`` set), durably (``App.reply_later``).

    Safe from any thread: nothing but the queue is touched here; the processing thread
    applies it (``apply_late_replies``)."""
    if app.dry_run:
        return False
    if reply is None:
        if not skip:
            raise ValueError("reply_later(message, None) needs skip=<the plugin not to ask>")
        payload: dict[str, object] = {"message_id": message.id, "reply": None, "skip": skip}
    elif not reply.text.strip():
        return False
    else:
        payload = {"message_id": message.id, "reply": _reply_payload(reply), "skip": skip}
    item = app.late_replies.enqueue(payload, key=key)
    log.info(
        "late_reply_queued",
        message_id=message.id,
        item=item.id,
        fallback_for=skip if reply is None else None,
        plugin=reply.plugin if reply is not None else None,
    )
    return True


def apply_late_replies(app: App, limit: int = 1) -> int:
    """Apply up to ``limit`` due late replies, on the processing thread; returns how many
    were taken (0: none is due).

    Each goes through before-send, signature and splitting, and its SMS are queued in the
    same transaction that marks it done; a fallback request asks the other plugins first.
    A failure of the core retries it with backoff (a dead letter after a few attempts); a
    store failure propagates (the daemon stops; the item is recovered at the next start).
    """
    queue = app.late_replies
    items = queue.claim(limit)
    for item in items:
        try:
            _apply_late_reply(app, queue, item)
        except StoreError:
            raise
        except Exception as err:
            log.exception("late_reply_failed", item=item.id)
            queue.retry(item, f"{type(err).__name__}: {err}")
    return len(items)


def _apply_late_reply(app: App, queue: DurableQueue, item: QueueItem) -> None:
    try:
        message_id = int(item.payload["message_id"])
        skip = str(item.payload.get("skip") or "")
        reply = _reply_from_payload(item.payload.get("reply"))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        queue.dead(item, f"not a late reply ({type(err).__name__}: {err})")
        return
    message = app.store.get_message(message_id)
    if message is None:
        queue.dead(item, f"message {message_id} is no longer in the store")
        return
    bound = log.bind(message_id=message.id, src=message.src, item=item.id)
    if reply is None:
        reply = app.fallback_reply(message, skip=skip)
        if reply is None or not reply.text.strip():
            bound.info("fallback_unanswered", fallback_for=skip)
            app.store.note_reason(message.id, f"no reply from the other plugins (after {skip})")
            queue.done(item)
            return
    checked = before_send(app, message, reply)
    bound = bound.bind(plugin=reply.plugin)
    if isinstance(checked, Veto):
        bound.info("reply_vetoed", reason=checked.reason)
        app.store.note_reason(message.id, checked.reason, decided_by=checked.plugin)
        queue.done(item)
        return
    if not recipients(message, checked):
        bound.info("reply_vetoed", reason=NO_RECIPIENT)
        app.store.note_reason(message.id, NO_RECIPIENT)
        queue.done(item)
        return
    composed = compose(app, checked.text)
    if not composed.parts:
        bound.info("message_unanswered", reason="empty reply")
        queue.done(item)
        return
    _warn_composition(bound, composed)
    queue.done_with_replies(item, message.id, outgoing(app, message, checked, composed))
    bound.info("reply_queued", parts=len(composed.parts), late=True)
    app.on_queued()


def _reply_payload(reply: Reply) -> dict[str, object]:
    return {
        "text": reply.text,
        "to": list(reply.to),
        "plugin": reply.plugin,
        "meta": [list(pair) for pair in reply.meta],
        "sender": reply.sender,
    }


def _reply_from_payload(data: object) -> Reply | None:
    """The Reply a late-reply item carries, or None for a fallback request."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise TypeError(f"reply is a {type(data).__name__}")
    sender = data.get("sender")
    return Reply(
        text=str(data["text"]),
        to=tuple(str(n) for n in data.get("to") or ()),
        plugin=str(data.get("plugin") or ""),
        meta=tuple((str(k), str(v)) for k, v in data.get("meta") or ()),
        sender=None if sender is None else str(sender),
    )


def _warn_composition(bound: structlog.typing.FilteringBoundLogger, composed: Composed) -> None:
    if composed.truncated:
        bound.warning(
            "reply_truncated", parts=len(composed.parts), reason="longer than replies.max_parts SMS"
        )
    if composed.replaced:
        bound.warning(
            "characters_replaced",
            count=composed.replaced,
            reason="the gateway encoding cannot carry them",
        )
