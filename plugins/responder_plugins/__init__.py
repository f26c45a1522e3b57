"""The built-in plugins: keywords, optout, guard and webhook, installed as this one package.

They are plugins like any other: they use only the names ``responder`` exports
(``responder.__all__``; tests/test_builtins_public_api.py checks), never each other, and
``responder.plugin_host`` loads them by module name (``responder_plugins.keywords``, ...),
as it loads a user's plugin. ``keywords`` and ``webhook`` are packages split by concern;
``optout`` and ``guard`` are one module each.
"""
