"""The public plugin contract: every hook a plugin may implement.

Hooks are always called with keyword arguments, so an implementation may accept any
subset of a hook's arguments, by name. Implement them in a module or class and mark each
with ``responder.hookimpl``. A hook implementation that raises is logged with the
plugin's name and traceback and treated as having returned None; the other plugins and
the daemon carry on. A store error is the exception: it stops the daemon, since going
on without the store (an unreadable opt-out list, say) would be worse.

Order: pluggy calls implementations last-registered first. Built-in plugins are
registered first and their implementations are mostly marked ``trylast``, so a user's
plugin runs before them and can override them. Two exceptions: optout's reply is
``tryfirst``, so an unsubscribe word is always confirmed, and webhook's reply is
unmarked, so it comes after user plugins but before keywords. ``tryfirst``/``trylast``
on your own implementations move them to either end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from responder.app import App
    from responder.commands import CommandRegistry
    from responder.config import ConfigSection
    from responder.models import Delivery, Message, Reply, StatusSection, Veto

hookspec = pluggy.HookspecMarker("responder")


@hookspec
def responder_config_section() -> ConfigSection | None:
    """Declare the configuration section this plugin reads.

    Called once while the configuration is loaded (by ``run``, ``check``, ``simulate``
    and a SIGHUP reload), before ``responder_startup``. Return a
    ``responder.config.ConfigSection(name, parse)``: ``parse`` receives the TOML table
    ``[name]`` (empty when absent) wrapped in a ``responder.config.Table``, whose typed
    getters report errors naming the file and the dotted key, and returns the plugin's
    frozen settings object. Keys the parser never read are reported as unknown. The
    result is available as ``app.plugin_config(name)``. Every result is used.
    """


@hookspec
def responder_startup(app: App) -> None:
    """Called once the store is open and the configuration is loaded, before the first read.

    Use it to create tables (``app.store.migrate``) and register periodic work
    (``app.every``). Also called again, with a new ``app``, after a SIGHUP reload.
    Return value ignored.
    """


@hookspec
def responder_shutdown(app: App) -> None:
    """Called when the daemon stops or before a reload replaces ``app``.

    Release what startup acquired. Return value ignored.
    """


@hookspec(firstresult=True)
def responder_filter(app: App, message: Message) -> str | None:
    """Decide whether an inbound message is handled at all.

    Called for every journaled message, before any reply is sought. Return a reason
    (a short string, logged and stored with the message) to drop it: no reply hook runs
    for it. Return None to let it through. The first reason returned wins and stops
    the remaining filters. Observers still see dropped messages.
    """


@hookspec(firstresult=True)
def responder_reply(app: App, message: Message) -> Reply | None:
    """Answer a message.

    Called for each message that passed the filters. Return a ``Reply`` to answer it, or
    None to leave it to the next plugin. The first Reply returned wins: the remaining
    plugins are not asked. A Reply with empty text answers with silence (no SMS, and no
    other plugin is asked). A plugin that will answer later, through
    ``app.reply_later``, returns ``Reply(text="", meta=(("deferred", "<who>"),))``: the
    message is then recorded as "awaiting <who>".
    """


@hookspec
def responder_observe(app: App, message: Message, reply: Reply | None, dropped: str | None) -> None:
    """See every inbound message, whether or not anyone answers it.

    Called for every plugin, after the filters and the reply hook, with the winning reply
    (or None) and the drop reason (or None). For relays, metrics and audit logs. A
    message is observed again if the daemon died before its processing was committed,
    so writes made here should be idempotent (keyed on ``message.id``). Return value
    ignored.
    """


@hookspec
def responder_before_send(app: App, message: Message, reply: Reply) -> Reply | Veto | None:
    """Change or cancel a reply before it enters the outbox.

    Called for every reply, from any plugin, one implementation after another: each sees
    the reply as changed by the ones before it. Return None to keep it, a new Reply to
    replace it, or ``Veto(reason)`` to cancel it (the remaining implementations are not
    called, and the reason is logged and stored). Used by opt-out suppression, rate
    limits and quiet hours. The core adds the signature and splits the text afterwards.
    """


@hookspec
def responder_after_send(app: App, message: Message, reply: Reply, delivery: Delivery) -> None:
    """See the outcome of every send attempt of an outgoing SMS.

    Called for every plugin after each attempt, with a ``Delivery`` whose ``status`` is
    "sent", "refused", "retrying", "dead" or "uncertain"; also at start-up for each send
    a previous process left under way ("uncertain": resent, or given up on). Return
    value ignored.
    """


@hookspec
def responder_register_commands(commands: CommandRegistry) -> None:
    """Add subcommands to the ``responder`` command line.

    Called when the CLI starts, for built-in and entry-point plugins. Call
    ``commands.add(name, help=..., setup=..., run=...)``: ``setup(parser)`` adds
    arguments to an ``argparse`` parser, ``run(app, args)`` returns the exit code and
    receives an ``App`` built from ``-c FILE`` (store open, no scheduler running).
    Return value ignored.
    """


@hookspec
def responder_status(app: App) -> StatusSection | None:
    """Contribute figures to ``responder status`` and the metrics endpoint.

    Called for every plugin whenever status is shown or metrics are scraped. Return a
    ``StatusSection`` (read it from the store: status runs in another process than the
    daemon) or None. Every result is shown.
    """


@hookspec
def responder_check(app: App) -> Iterable[str] | None:
    """Warn about a configuration that is valid but probably not what was meant.

    Called by ``responder check`` once every section was parsed (also when some had
    errors: a default then stands in for each bad value), with a dry-run ``app`` on an
    empty in-memory store. Return warning sentences, each naming the file and the dotted
    key ("FILE: keywords.rules[2].reply: ..."), or None. For a reply text from the
    configuration, ``responder.checks.reply_warnings(app, key, text)`` gives the standard
    warnings (characters the gateway encoding cannot carry, a text ``replies.max_parts``
    will cut, the signature written into the text). Every result is shown, as
    "warning: ..." lines; warnings never make the check fail.
    """
