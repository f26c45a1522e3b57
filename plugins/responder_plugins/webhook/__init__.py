"""Webhook relay: every inbound SMS is POSTed, signed, to the business's HTTP services.

Configured as ``[[webhook.targets]]`` (``config``; see docs/webhooks.md). The request is
signed (``signing``) and sent by one client per target with a deadline over the whole
attempt (``client``); relays wait in one durable queue per target (``queue``), and a
target that keeps failing is left alone for a while (``breaker``). The hooks are in
``plugin``.
"""

from responder_plugins.webhook.breaker import Breaker, Circuit
from responder_plugins.webhook.client import (
    Answer,
    AnswerRefused,
    DeadlineTransport,
    RelayAttempt,
    TargetClient,
    parse_answer,
    parse_retry_after,
    ssl_context,
)
from responder_plugins.webhook.config import (
    PLUGIN,
    Target,
    WebhookSettings,
    answering_target,
    matches,
    parse,
    secret_credential,
    secret_env,
)
from responder_plugins.webhook.plugin import (
    ENGINE,
    TICK,
    responder_config_section,
    responder_event,
    responder_observe,
    responder_register_commands,
    responder_reply,
    responder_shutdown,
    responder_startup,
    responder_status,
)
from responder_plugins.webhook.queue import (
    SCHEMA,
    Relay,
    Relayer,
    answer_key,
    fallback_key,
    move_legacy,
    prepare,
    queue_name,
)
from responder_plugins.webhook.signing import request_body, request_headers, sign

__all__ = [
    "ENGINE",
    "PLUGIN",
    "SCHEMA",
    "TICK",
    "Answer",
    "AnswerRefused",
    "Breaker",
    "Circuit",
    "DeadlineTransport",
    "Relay",
    "RelayAttempt",
    "Relayer",
    "Target",
    "TargetClient",
    "WebhookSettings",
    "answer_key",
    "answering_target",
    "fallback_key",
    "matches",
    "move_legacy",
    "parse",
    "parse_answer",
    "parse_retry_after",
    "prepare",
    "queue_name",
    "request_body",
    "request_headers",
    "responder_config_section",
    "responder_event",
    "responder_observe",
    "responder_register_commands",
    "responder_reply",
    "responder_shutdown",
    "responder_startup",
    "responder_status",
    "secret_credential",
    "secret_env",
    "sign",
    "ssl_context",
]
