"""The built-in plugins: keywords, optout, guard and webhook.

They are plugins like any other: they use only the names ``responder`` exports, and
``responder.plugin_host`` loads them by module name, as it loads a user's plugin.
"""
