"""sms-responder: answers SMS replies read from a 企信通 gateway account.

The names below are the public API, what plugins are written against; everything else
in the package is private, and may change between releases. See docs/plugins.md.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("responder")
"""Marker for plugin hook implementations: ``@hookimpl def responder_reply(...)``."""

# The imports come after __version__ and hookimpl, which the modules below import.
from responder.api.context import ApiError, ApiRoutes  # noqa: E402
from responder.app import App  # noqa: E402
from responder.backoff import Backoff  # noqa: E402
from responder.checks import reply_warnings  # noqa: E402
from responder.commands import CommandRegistry  # noqa: E402
from responder.config import (  # noqa: E402
    ConfigError,
    ConfigSection,
    Table,
    is_loopback_url,
    redact_url,
    resolve_secret,
)
from responder.conversations import (  # noqa: E402
    ACTIVE,
    CONTEXT,
    WITH_PERSON,
    Conversation,
    ConversationHandle,
)
from responder.gateway import error_reason  # noqa: E402
from responder.hours import OpeningDay, OpeningHours  # noqa: E402
from responder.manual import SendReport, send_text  # noqa: E402
from responder.models import (  # noqa: E402
    PLATFORM_TZ,
    Deferred,
    Delivery,
    Event,
    FlowEntry,
    InboundSms,
    Message,
    Reply,
    SendResult,
    StatusSection,
    Veto,
)
from responder.normalise import (  # noqa: E402
    MOBILE_PATTERN,
    canonical_number,
    compact_number,
    display_form,
    is_mobile,
    is_separator,
    normalise,
    number_argument,
)
from responder.queue import DurableQueue, QueueCounts, QueueItem  # noqa: E402
from responder.stash import OPTED_OUT, Stash, StashKey  # noqa: E402
from responder.store import StatementError, StoreBackend, StoreError  # noqa: E402
from responder.store.interface import ExchangeLine  # noqa: E402

__all__ = [
    "ACTIVE",
    "CONTEXT",
    "MOBILE_PATTERN",
    "OPTED_OUT",
    "PLATFORM_TZ",
    "WITH_PERSON",
    "ApiError",
    "ApiRoutes",
    "App",
    "Backoff",
    "CommandRegistry",
    "ConfigError",
    "ConfigSection",
    "Conversation",
    "ConversationHandle",
    "Deferred",
    "Delivery",
    "DurableQueue",
    "Event",
    "ExchangeLine",
    "FlowEntry",
    "InboundSms",
    "Message",
    "OpeningDay",
    "OpeningHours",
    "QueueCounts",
    "QueueItem",
    "Reply",
    "SendReport",
    "SendResult",
    "Stash",
    "StashKey",
    "StatementError",
    "StatusSection",
    "StoreBackend",
    "StoreError",
    "Table",
    "Veto",
    "__version__",
    "canonical_number",
    "compact_number",
    "display_form",
    "error_reason",
    "hookimpl",
    "is_loopback_url",
    "is_mobile",
    "is_separator",
    "normalise",
    "number_argument",
    "redact_url",
    "reply_warnings",
    "resolve_secret",
    "send_text",
]
