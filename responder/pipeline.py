"""What happens to one journaled message: filter → reply → observe → before-send → outbox.

``decide`` runs the plugins and composes the SMS without changing anything (it is what
``responder simulate`` shows); ``process`` does the same and commits the outcome.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass

import structlog

from responder.app import App
from responder.config import GatewaySettings
from responder.gateway import LONG_SMS_LIMIT
from responder.models import Message, Reply, Veto
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
    reply: Reply | None = None
    """The winning reply, as the reply hook gave it."""
    final: Reply | None = None
    """The reply after before-send; None when vetoed or there was none."""
    vetoed: str | None = None
    composed: Composed | None = None

    @property
    def reason(self) -> str:
        """Why nothing is sent, or "" when something is."""
        if self.dropped:
            return self.dropped
        if self.vetoed:
            return self.vetoed
        if self.reply is None:
            return "no reply"
        if not self.composed or not self.composed.parts:
            deferred = dict(self.reply.meta).get("deferred")
            return f"awaiting {deferred}" if deferred else "empty reply"
        return ""


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
    """Run the before-send hooks in order, each seeing the reply as changed so far."""
    for plugin, function in app.plugins.implementations("responder_before_send"):
        result = function(app=app, message=message, reply=reply)
        if isinstance(result, Veto):
            return Veto(f"{plugin}: {result.reason}")
        if isinstance(result, Reply):
            reply = result
        elif result is not None:
            log.warning(
                "plugin_bad_result",
                plugin=plugin,
                hook="responder_before_send",
                got=type(result).__name__,
            )
    return reply


def first_reply(app: App, message: Message, *, skip: str = "") -> Reply | None:
    """The first reply the plugins give, in call order; ``skip`` names a plugin not to ask.

    A plugin that answers later asks the others with ``skip`` set to itself, for a
    fallback answer.
    """
    for plugin, function in app.plugins.implementations("responder_reply"):
        if plugin == skip:
            continue
        result = function(app=app, message=message)
        if result is None:
            continue
        if not isinstance(result, Reply):
            log.warning(
                "plugin_bad_result",
                plugin=plugin,
                hook="responder_reply",
                got=type(result).__name__,
            )
            continue
        return result if result.plugin else dataclasses.replace(result, plugin=plugin)
    return None


def _first_drop(app: App, message: Message) -> str | None:
    for plugin, function in app.plugins.implementations("responder_filter"):
        reason = function(app=app, message=message)
        if reason:
            return f"{plugin}: {reason}"
    return None


def decide(app: App, message: Message) -> Decision:
    """Ask the plugins about a message and compose the answer; commits nothing."""
    dropped = _first_drop(app, message)
    if dropped:
        return Decision(message=message, dropped=dropped)
    reply = first_reply(app, message)
    if reply is None or not reply.text.strip():
        return Decision(message=message, reply=reply)
    checked = before_send(app, message, reply)
    if isinstance(checked, Veto):
        return Decision(message=message, reply=reply, vetoed=checked.reason)
    if not recipients(message, checked):
        return Decision(message=message, reply=reply, vetoed=NO_RECIPIENT)
    return Decision(
        message=message, reply=reply, final=checked, composed=compose(app, checked.text)
    )


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
    try:
        decision = decide(app, message)
    except (StoreError, sqlite3.Error) as err:
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
            app=app, message=message, reply=decision.reply, dropped=decision.dropped
        )
        if decision.final is not None and decision.composed is not None:
            queued = outgoing(app, message, decision.final, decision.composed)
            _warn_composition(bound, decision.composed)
        app.store.finish_message(
            message.id,
            outgoing=queued,
            reason=decision.reason,
            plugin=decision.reply.plugin if decision.reply else "",
        )
    except (StoreError, sqlite3.Error) as err:
        _uncount_store_failure(app, message, err)
        raise
    if queued and decision.final is not None:
        bound.info("reply_queued", plugin=decision.final.plugin, parts=len(queued))
        app.on_queued()
    else:
        bound.info("message_unanswered", reason=decision.reason)
    return decision


def _uncount_store_failure(app: App, message: Message, err: BaseException) -> None:
    """Take back the attempt when the store failed, not a plugin (a malformed query in a
    plugin is the plugin's failure and counts). Best effort: a store that cannot take even
    this write keeps the count, and the daemon stops anyway."""
    if not is_storage_failure(err):
        return
    try:
        app.store.uncount_attempt(message.id)
    except (StoreError, sqlite3.Error) as again:
        log.warning(
            "attempt_not_uncounted", message_id=message.id, error=f"{type(again).__name__}: {again}"
        )


def queue_late_reply(app: App, message: Message, reply: Reply) -> bool:
    """Queue an answer that arrived after the message was processed (``App.reply_later``)."""
    if not reply.text.strip():
        return False
    checked = before_send(app, message, reply)
    bound = log.bind(message_id=message.id, src=message.src, plugin=reply.plugin)
    if isinstance(checked, Veto):
        bound.info("reply_vetoed", reason=checked.reason)
        app.store.note_reason(message.id, checked.reason)
        return False
    if not recipients(message, checked):
        bound.info("reply_vetoed", reason=NO_RECIPIENT)
        app.store.note_reason(message.id, NO_RECIPIENT)
        return False
    composed = compose(app, checked.text)
    if not composed.parts:
        return False
    _warn_composition(bound, composed)
    app.store.add_replies(message.id, outgoing(app, message, checked, composed))
    bound.info("reply_queued", parts=len(composed.parts))
    app.on_queued()
    return True


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
