"""The public plugin contract: every hook a plugin may implement.

Each hook's docstring says which thread calls it, when, with what, what it returns and
how the results combine ("first result wins": the call stops at the first implementation
that returns something other than None; "every result": all are called).

Hooks are always called through pluggy, with keyword arguments, so an implementation may
accept any subset of a hook's arguments, by name. Implement them in a module or class and
mark each with ``responder.hookimpl``; ``@hookimpl(specname="responder_reply")`` lets a
function of another name implement a hook.

Isolation: an implementation that raises is logged (``plugin_failed``, with the plugin's
name and traceback) and counts as having returned None; the other plugins and the
daemon carry on. A wrapper that raises, before or after its yield, or that never yields,
is logged the same way and the call goes on as if it were absent: its hook's result is
what it would have been without it. A store error is the exception: it stops the
daemon (no wrapper can turn it into a result), since going on without the store (an
unreadable opt-out list, say) would be worse. A result of the wrong type from a message
hook is logged (``plugin_bad_result``) and counts as None.

Order: pluggy calls implementations last-registered first. Built-in plugins are
registered first and their implementations are mostly marked ``trylast``, so a user's
plugin runs before them and can override them. Two exceptions: optout's reply is
``tryfirst``, so an unsubscribe word is always confirmed, and webhook's reply is
unmarked, so it comes after user plugins but before keywords. ``tryfirst``/``trylast``
on your own implementations move them to either end.

Wrappers (``@hookimpl(wrapper=True)``, or the old style ``hookwrapper=True``) run
around all the plain implementations of a hook, as pluggy documents: the code before
``yield`` sees the arguments, ``yield`` gives the result (new style: the value; old
style: a ``pluggy.Result``), and a new-style wrapper returns the result to use (old
style: ``outcome.force_result(...)``). A replacement of the wrong type is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from responder.api.context import ApiRoutes
    from responder.app import App
    from responder.commands import CommandRegistry
    from responder.config import ConfigSection
    from responder.models import (
        Deferred,
        Delivery,
        Event,
        FlowEntry,
        Message,
        Reply,
        StatusSection,
        Veto,
    )

hookspec = pluggy.HookspecMarker("responder")

# -- configuration and lifecycle: the main thread -----------------------------------------


@hookspec
def responder_config_section() -> ConfigSection | None:
    """Declare the configuration section this plugin reads.

    Thread: the main thread (also for a SIGHUP reload).

    Called once per configuration load (by ``run``, ``check``, ``simulate``, ``status``,
    plugin commands and a SIGHUP reload), before ``responder_startup``. No arguments.
    Return a ``responder.config.ConfigSection(name, parse)``, or None for no section:
    ``parse`` receives the TOML table ``[name]`` (empty when absent) wrapped in a
    ``responder.config.Table``, whose typed getters report errors naming the file and the
    dotted key, and returns the plugin's frozen settings object. Keys the parser never
    read are reported as unknown. The result is available as ``app.plugin_config(name)``.
    Every result is used.
    """


@hookspec
def responder_startup(app: App) -> None:
    """Prepare the plugin: create tables, register periodic work.

    Thread: the main thread, before the read, processing and send threads start; after a
    SIGHUP reload, the main thread again, with the new ``app``.

    Called once the store is open and the configuration is loaded, before the first read;
    again, with a new ``app``, after a SIGHUP reload (after ``responder_shutdown`` on the
    old one). Arguments: ``app``. Use it to create tables (``app.store.migrate``) and
    register periodic work (``app.every``: it runs on the plugin jobs' own executor).
    Return value ignored; every implementation is called.
    """


@hookspec
def responder_shutdown(app: App) -> None:
    """Release what startup acquired.

    Thread: the main thread.

    Called when the daemon stops (after the work in hand finished) and before a reload
    replaces ``app``. Arguments: ``app``. Return value ignored; every implementation is
    called.
    """


# -- messages: the processing thread ------------------------------------------------------


@hookspec(firstresult=True)
def responder_filter(app: App, message: Message) -> str | None:
    """Decide whether an inbound message is handled at all.

    Thread: the processing thread only, one message at a time (under ``simulate`` and
    ``replay``: the thread that simulates).

    Called for every journaled message, before any reply is sought. Arguments: ``app``,
    ``message``. Return a reason (a short string) to drop the message, or None (or "")
    to let it through. First result wins: the first reason stops the remaining filters,
    and no reply hook runs for the message. The reason is stored with the message as it
    is (``messages.reason``), and the plugin that gave it apart (``messages.decided_by``);
    observers still see the message, with the reason.
    """


@hookspec(firstresult=True)
def responder_reply(app: App, message: Message) -> Reply | Deferred | None:
    """Answer a message.

    Thread: the processing thread only, one message at a time (under ``simulate`` and
    ``replay``: the thread that simulates). Also there for a fallback
    (``app.fallback_reply``, ``app.reply_later(message, None, skip=...)``): the plugins
    other than the one skipped are asked, with the same isolation and wrappers.

    Called for each message that passed the filters. Arguments: ``app``, ``message``.
    Return a ``Reply`` to answer it, ``Deferred(who)`` to answer it later through
    ``app.reply_later`` (the message is recorded as "awaiting <who>"), or None to leave it
    to the next plugin. First result wins: the remaining plugins are not asked. A Reply
    with empty text answers with silence (no SMS, and no other plugin is asked). The
    core fills in ``Reply.plugin`` and ``Deferred.plugin``.
    """


@hookspec
def responder_observe(
    app: App, message: Message, reply: Reply | Deferred | None, dropped: str | None
) -> None:
    """See every inbound message, whether or not anyone answers it.

    Thread: the processing thread only, one message at a time. Not called by
    ``simulate`` or ``replay``.

    Called after the filters and the reply hook, before the outcome is committed.
    Arguments: ``app``, ``message``; ``reply``: the reply hook's winner as it gave it (a
    ``Reply``, a ``Deferred``, or None); ``dropped``: the drop reason, or None. For
    relays, metrics and audit logs. A message is observed again if the daemon died
    before its processing was committed, so writes made here should be idempotent
    (keyed on ``message.id``). Return value ignored; every implementation is called.
    """


@hookspec(firstresult=True)
def responder_before_send(app: App, message: Message, reply: Reply) -> Reply | Veto | None:
    """Change or cancel a reply before it enters the outbox.

    Thread: the processing thread only, one reply at a time, also for the replies of
    ``app.reply_later`` and fallbacks, queued and applied there (under ``simulate``,
    ``replay`` and ``responder send``: the thread that calls them).

    Called for every non-empty reply, after the reply hook. Arguments: ``app``,
    ``message``; ``reply``: the reply as changed by the implementations called before
    this one. Return None to keep it, a new Reply to replace it, or ``Veto(reason)`` to
    cancel it. A chain, not first result: each implementation sees the reply as changed
    so far; a Veto stops it (the remaining implementations are not called), and its
    reason is stored with the message as it is (``messages.reason``), the plugin apart
    (``messages.decided_by``, ``Veto.plugin``). Used by opt-out suppression, rate limits
    and quiet hours. The core adds the signature and splits the text afterwards.

    A wrapper sees the ``reply`` the reply hook gave, and as the result the final Reply
    (after every implementation) or the Veto; it may return another Reply or a Veto
    instead (None keeps the implementations' outcome).
    """


@hookspec(firstresult=True)
def responder_flow_entry(app: App, flow: str) -> FlowEntry | None:
    """Where a send no message asked for puts each recipient in a conversation flow.

    Thread: the processing thread (the daemon runs outbound sends there), or the thread
    of a command that sends (``responder broadcast``).

    Called when a send names a ``flow`` (``responder.outbound``): once when the send is
    checked (an unknown flow refuses the send) and again as its recipients are queued.
    Arguments: ``app``, ``flow`` (the flow's name). Return a ``FlowEntry`` (the step the
    recipients' conversations start at, its timeout, the plugin that owns them) for a
    flow you run, or None. First result wins; the conversations plugin answers for its
    ``[[conversations.flows]]``.
    """


# -- events ------------------------------------------------------------------------------


@hookspec
def responder_event(app: App, event: Event) -> None:
    """Hear of an event a plugin emitted (``app.emit(event)``).

    Thread: the caller's, the thread that called ``app.emit``: usually the processing
    thread, while a message is handled; a plugin job's or the main thread's for an event
    emitted there (``responder`` commands). Never under ``dry_run``.

    Called once per ``app.emit``. Arguments: ``app``, ``event`` (a frozen
    ``responder.Event``: ``type``, ``account``, ``number``, ``data``, ``target``, ``key``).
    Do not do slow work here: queue it (``app.queue``). An event emitted again under the
    same ``key`` (a message processed again after a crash) must not be acted on twice:
    key what you queue on ``event.key``. Return value ignored; every implementation is
    called.
    """


# -- sends, status and the command line ---------------------------------------------------


@hookspec
def responder_after_send(app: App, message: Message, reply: Reply, delivery: Delivery) -> None:
    """See the outcome of every send attempt of an outgoing SMS.

    Thread: the send thread (also for sends a previous process left under way: the send
    thread recovers them at start-up, before its first send).

    Called after each attempt of each outbox row (one per part of a long reply).
    Arguments: ``app``, ``message`` (the message the SMS answers; for a send no message
    asked for, ``responder.outbound``, a stand-in with ``id`` 0, no ``src`` and the text
    as asked), ``reply`` (the SMS as
    sent: ``text`` is this part, ``to`` the recipients), ``delivery`` (a ``Delivery``
    whose ``status`` is "sent", "refused", "retrying", "dead" or "uncertain"). Return
    value ignored; every implementation is called.
    """


@hookspec
def responder_register_commands(commands: CommandRegistry) -> None:
    """Add subcommands to the ``responder`` command line.

    Thread: the main thread of the ``responder`` command.

    Called when the CLI starts, for built-in and entry-point plugins. Arguments:
    ``commands``. Call ``commands.add(name, help=..., setup=..., run=...)``:
    ``setup(parser)`` adds arguments to an ``argparse`` parser, ``run(app, args)``
    returns the exit code and receives an ``App`` built from ``-c FILE`` (store open, no
    scheduler running). Return value ignored; every implementation is called.
    """


@hookspec
def responder_api(api: ApiRoutes) -> None:
    """Add endpoints to the HTTP API (``[api]``), under /v1.

    Thread: the daemon's main thread, once, when the API server starts (a SIGHUP reload
    keeps the routes; ``api.app()`` is the App in use at each request). The routes run
    on the server's request threads.

    Arguments: ``api``, a ``responder.ApiRoutes``: ``api.router`` is a FastAPI
    ``APIRouter`` (import ``fastapi`` inside this hook: it is the optional ``api`` extra);
    ``api.require("read")`` is the dependency that admits a token with that scope;
    ``api.app()`` the current App; ``api.run(fn)`` runs ``fn(app)`` on the processing
    thread (for work that calls hooks or emits events); ``api.send(token, to, text)`` sends
    through the compliance path; ``api.responses(404)`` documents error answers; raise
    ``responder.ApiError(status, code, message)`` to answer an error. Return value
    ignored; every implementation is called. See docs/api.md.
    """


@hookspec
def responder_status(app: App) -> StatusSection | None:
    """Contribute figures to ``responder status`` and the metrics endpoint.

    Thread: whichever thread asks: the main thread of ``responder status``, the metrics
    server's thread in the daemon. Read from the store, not from memory shared with the
    processing thread.

    Called whenever status is shown or metrics are scraped. Arguments: ``app`` (under
    ``responder status``, another process than the daemon). Return a ``StatusSection``
    or None. Every result is shown.
    """


@hookspec
def responder_check(app: App) -> Iterable[str] | None:
    """Warn about a configuration that is valid but probably not what was meant.

    Thread: the main thread of ``responder check``.

    Called by ``responder check`` once every section was parsed (also when some had
    errors: a default then stands in for each bad value). Arguments: a dry-run ``app``
    on an empty in-memory store. Return warning sentences, each naming the file and the
    dotted key ("FILE: keywords.rules[2].reply: ..."), or None. For a reply text from
    the configuration, ``responder.checks.reply_warnings(app, key, text)`` gives the
    standard warnings (characters the gateway encoding cannot carry, a text
    ``replies.max_parts`` will cut, the signature written into the text). Every result is
    shown, as "warning: ..." lines; warnings never make the check fail.
    """


# -- explaining a decision (simulate) ---------------------------------------------------


@hookspec
def responder_describe(app: App, message: Message) -> Iterable[tuple[str, str]] | None:
    """Explain what this plugin would do with a message that no plugin answered.

    Thread: the caller of simulate (the main thread of ``responder simulate`` and
    ``responder replay``), under ``app.dry_run``: change nothing.

    Called by ``simulate`` and ``replay`` when no reply won (none was given, or the
    message was dropped), to say why. Return a few ``(label, value)`` pairs, the way
    ``Reply.meta`` labels a reply: ``("rule", "none")``, ``("why", "no rule matched")``,
    ``("normalised", "cx 123")``; or None when the plugin has nothing to say. Every result
    is shown, in call order; a label given by an earlier implementation is not repeated.
    """
