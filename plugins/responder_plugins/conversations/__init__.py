"""Flows declared in the configuration: bookings, surveys and menu trees over SMS.

``[[conversations.flows]]`` (``config``; see docs/conversations.md) declares the steps;
``engine`` decides what one message does to a sender's flow; ``plugin`` keeps it in the
sender's conversation (``app.conversation``), answers, and emits
``conversation.completed`` to the flow's ``relay`` target when a form is complete.
"""

from responder_plugins.conversations.config import (
    PLUGIN,
    Choice,
    ConversationsSettings,
    Flow,
    Step,
    parse,
)
from responder_plugins.conversations.engine import Action, answer, begin, render
from responder_plugins.conversations.plugin import (
    COMPLETED,
    responder_check,
    responder_config_section,
    responder_flow_entry,
    responder_observe,
    responder_reply,
)

__all__ = [
    "COMPLETED",
    "PLUGIN",
    "Action",
    "Choice",
    "ConversationsSettings",
    "Flow",
    "Step",
    "answer",
    "begin",
    "parse",
    "render",
    "responder_check",
    "responder_config_section",
    "responder_flow_entry",
    "responder_observe",
    "responder_reply",
]
