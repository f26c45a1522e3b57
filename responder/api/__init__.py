"""The HTTP API (``[api]``): JSON under /v1, bearer tokens with scopes, per-token limits.

Only ``settings`` is imported here: the web framework (the ``api`` extra) is imported by
``responder.api.app`` and ``responder.api.server`` when the server starts.
"""

from responder.api.settings import (
    ADMIN,
    CONSOLE,
    READ,
    SCOPES,
    SEND,
    ApiSettings,
    ApiToken,
)

__all__ = ["ADMIN", "CONSOLE", "READ", "SCOPES", "SEND", "ApiSettings", "ApiToken"]
