"""sms-responder: answers SMS replies read from a 企信通 gateway account."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("responder")
"""Marker for plugin hook implementations: ``@hookimpl def responder_reply(...)``."""

__all__ = ["__version__", "hookimpl"]
