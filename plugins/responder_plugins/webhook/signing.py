"""The signed request: the JSON body a target receives and the headers that sign it.

``X-Responder-Signature`` is ``sha256=`` and the hex HMAC-SHA256, keyed with the target's
secret, of ``"<X-Responder-Timestamp>.<body>"`` (docs/webhooks.md shows how to verify it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final

from responder import PLATFORM_TZ, Conversation, Event, Message, __version__
from responder_plugins.webhook.config import Target

USER_AGENT: Final = f"sms-responder/{__version__}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``, the X-Responder-Signature value."""
    digest = hmac.new(
        secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256
    )
    return f"sha256={digest.hexdigest()}"


def request_headers(
    target: Target, body: bytes, delivery_id: str, timestamp: int
) -> dict[str, str]:
    """The headers of one attempt: the target's own, then ours (signed afresh each time)."""
    return {
        **dict(target.headers),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        # A compressed body could expand past the cap before it is counted.
        "Accept-Encoding": "identity",
        "X-Responder-Timestamp": str(timestamp),
        "X-Responder-Signature": sign(target.secret, timestamp, body),
        "X-Responder-Delivery": delivery_id,
    }


def request_body(
    message: Message,
    *,
    delivery_id: str,
    target: str,
    reply_expected: bool,
    dropped: str | None,
    opted_out: bool,
    conversation: Conversation | None = None,
) -> str:
    """The JSON document sent to a target: built once, when the relay is queued, and kept,
    so every retry sends the same bytes."""
    received = message.received_at
    if received is not None:
        received = (
            received.astimezone(PLATFORM_TZ)
            if received.tzinfo
            else received.replace(tzinfo=PLATFORM_TZ)
        )
    document = {
        "delivery_id": delivery_id,
        "target": target,
        "account": message.account,
        "message_id": message.id,
        "gateway_id": message.gateway_id,
        "src": message.src,
        "dst": message.dst,
        "text": message.text,
        "received_at": received.isoformat() if received else None,
        "opted_out": opted_out,
        "dropped": dropped,
        "reply_expected": reply_expected,
        "conversation": _conversation(conversation),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"))


def event_body(
    event: Event, *, delivery_id: str, target: str, conversation: Conversation | None
) -> str:
    """The JSON document of an event (``app.emit``), fixed when it is queued."""
    document = {
        "delivery_id": delivery_id,
        "target": target,
        "type": event.type,
        "account": event.account,
        "number": event.number,
        "data": dict(event.data),
        "conversation": _conversation(conversation),
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=str)


def _conversation(conversation: Conversation | None) -> dict[str, Any] | None:
    """The sender's conversation as the payload carries it; None when there is none."""
    if conversation is None:
        return None
    return {
        "flow": conversation.flow,
        "step": conversation.step,
        "fields": dict(conversation.fields),
        "state": conversation.state,
        "context": dict(conversation.context),
        "started_at": conversation.started_at,
        "expires_at": conversation.expires_at,
    }
