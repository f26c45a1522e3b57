"""Values that cross module boundaries: inbound messages, replies, send results."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

PLATFORM_TZ = ZoneInfo("Asia/Shanghai")
"""The platform stamps messages in China local time (UTC+8)."""


@dataclass(frozen=True)
class InboundSms:
    """One message as the gateway's readsms returned it."""

    gateway_id: int
    src: str
    dst: str
    text: str
    received_at: datetime | None
    """When the platform received it (aware, Asia/Shanghai); None when the field was unusable."""
    raw: str
    """The response line exactly as decoded, kept with the stored message."""


@dataclass(frozen=True)
class Message:
    """An inbound SMS after it was journaled: what plugins are given."""

    id: int
    """The store's id: stable across restarts, unique in this store."""
    gateway_id: int
    src: str
    dst: str
    text: str
    received_at: datetime | None
    raw: str
    account: str = "default"
    """The gateway account it was read from (one, "default", until several are served)."""


@dataclass(frozen=True)
class Reply:
    """An answer a plugin wants sent.

    ``to`` is empty for "the sender of the message"; a plugin that answers other
    numbers names them. An empty ``text`` means no SMS.
    """

    text: str
    to: tuple[str, ...] = ()
    plugin: str = ""
    """The plugin that produced it; filled in by the pipeline."""
    meta: tuple[tuple[str, str], ...] = ()
    """Free-form labels for logs and ``simulate`` (rule name, match reason)."""
    sender: str | None = None
    """The extension (digits after the service code) it goes out from. None: the one the
    customer wrote to (see ``gateway.service_number``); "": ``gateway.sender``."""


@dataclass(frozen=True)
class Deferred:
    """Returned by a reply hook that will answer later, through ``app.reply_later``.

    It wins like a Reply (no other plugin is asked) and sends nothing now; the message
    is recorded as "awaiting <who>" until the answer comes.
    """

    who: str
    """Who will answer, for status and logs: "webhook:crm"."""
    plugin: str = ""
    """The plugin that returned it; filled in by the core."""


@dataclass(frozen=True)
class Veto:
    """Returned by a before-send hook to cancel an outgoing reply."""

    reason: str
    """Why, as stored with the message (``messages.reason``) and shown by status: the
    reason alone, without the plugin's name."""
    plugin: str = ""
    """The plugin that vetoed (``messages.decided_by``); filled in by the core."""


@dataclass(frozen=True)
class Event:
    """Something that happened, for the services outside: ``app.emit(event)`` hands it to
    every ``responder_event`` implementation (the webhook plugin delivers it, signed, to
    the targets subscribed to its type, or to the one ``target`` names)."""

    type: str
    """What happened, dotted: "conversation.completed", "handover.requested"."""
    account: str
    number: str
    """The customer's number it concerns."""
    data: Mapping[str, Any]
    """The event's own content, written as JSON (plain values, lists and tables only)."""
    target: str = ""
    """A webhook target's name: delivered to it alone; "": to every target whose
    ``events`` lists the type."""
    key: str = ""
    """Idempotency: an event emitted again under the same key (a message processed again
    after a crash) is delivered once. "": every emit is a new delivery."""


@dataclass(frozen=True)
class FlowEntry:
    """Where an outbound send puts a recipient in a flow (``responder_flow_entry``)."""

    step: str
    """The step the recipient's conversation starts at."""
    timeout: float | None
    """Seconds the conversation lasts without an answer; None: until it ends."""
    who: str
    """The plugin that owns the conversation (answers its messages)."""


@dataclass(frozen=True)
class SendResult:
    """The gateway's answer to a send. ``ok`` follows the vendor: ``num > 0``."""

    num: int
    accepted: tuple[str, ...]
    refused: tuple[str, ...]
    errid: int | None
    err: str
    raw: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.num > 0


@dataclass(frozen=True)
class Delivery:
    """What happened to one outgoing SMS (one outbox row) after a send attempt."""

    outbox_id: int
    to: tuple[str, ...]
    text: str
    attempt: int
    status: str
    """"sent", "refused" (num=0), "retrying", "dead" (gave up) or "uncertain" (outcome
    unknown: sent again, or given up on under ``replies.on_uncertain = "give_up"``)."""
    result: SendResult | None
    error: str = ""


@dataclass(frozen=True)
class StatusSection:
    """Figures a plugin adds to ``responder status`` and the metrics endpoint."""

    title: str
    figures: tuple[tuple[str, int | float | str | None], ...]
