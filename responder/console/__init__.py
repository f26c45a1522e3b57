"""The staff console: server-rendered pages for the people who answer customers.

Served under /console on the API's listener when ``[console] enabled = true``, behind the
API's tokens (those with the ``console`` scope sign in). Only ``settings`` is imported
here: the templates (jinja2) and the web framework load when the server starts.
"""

from responder.console.settings import ConsoleSettings

__all__ = ["ConsoleSettings"]
