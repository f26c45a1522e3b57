"""The webhook plugin's hooks and its command.

The observe hook only queues one relay per (message, target) (``queue``); a periodic job
hands due ones to a small thread pool, so a slow target never delays reading,
processing, sending or another target. A ``mode = "reply"`` target answers the sender:
the reply hook holds the message for it (``Deferred``), and the target's answer (or, if
the target fails for good, the other plugins' answer) comes later through
``app.reply_later``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Final

from responder import (
    App,
    CommandRegistry,
    ConfigSection,
    Deferred,
    Event,
    Message,
    Reply,
    StashKey,
    StatusSection,
    hookimpl,
)
from responder_plugins.webhook.config import (
    PLUGIN,
    WebhookSettings,
    answering_target,
    matches,
    parse,
)
from responder_plugins.webhook.queue import (
    Relayer,
    enqueue,
    enqueue_event,
    prepare,
    requeue_dead,
    status_figures,
)

TICK: Final = 1.0
"""Seconds between looks for due relays."""
ENGINE: Final = StashKey[Relayer]()
"""The relay engine of a started App (none under dry_run); removed at shutdown."""


def _settings(app: App) -> WebhookSettings:
    return app.plugin_config(PLUGIN) or WebhookSettings()


# -- hooks ---------------------------------------------------------------------------------


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


@hookimpl(trylast=True)
def responder_startup(app: App) -> None:
    settings = _settings(app)
    app.redact(*settings.secrets())
    if not settings.targets or app.dry_run:
        return
    prepare(app, settings)
    engine = Relayer(app, settings)
    engine.recover()
    app.stash[ENGINE] = engine
    app.every(TICK, engine.tick, name=PLUGIN)


@hookimpl(trylast=True)
def responder_shutdown(app: App) -> None:
    engine = app.stash.pop(ENGINE, None)
    if engine is not None:
        engine.close()


# Neither tryfirst nor trylast, on purpose: tryfirst plugins (optout confirms an
# unsubscribe word) and user plugins (registered later) answer before it; the trylast
# built-ins (keywords) only after it, so a reply target's messages are held from them.
@hookimpl
def responder_reply(app: App, message: Message) -> Deferred | None:
    """Hold a message that a reply-mode target will answer: the plugins after this one
    are not asked, and the target's answer comes later through ``app.reply_later``."""
    target = answering_target(_settings(app), message)
    if target is None:
        return None
    return Deferred(f"{PLUGIN}:{target.name}")


@hookimpl(trylast=True)
def responder_observe(
    app: App, message: Message, reply: Reply | Deferred | None, dropped: str | None
) -> None:
    settings = _settings(app)
    if app.dry_run or not settings.targets:
        return
    held_for = reply.who if isinstance(reply, Deferred) and reply.plugin == PLUGIN else None
    modes = [
        (target, "reply" if held_for == f"{PLUGIN}:{target.name}" else "relay")
        for target in settings.targets
        if matches(target, message)
    ]
    if modes:
        enqueue(app, settings, message, modes, dropped)


@hookimpl(trylast=True)
def responder_event(app: App, event: Event) -> None:
    """Queue a signed delivery of the event for the target it names, or for every target
    subscribed to its type; durable, and once per ``event.key``."""
    settings = _settings(app)
    if app.dry_run or not settings.targets:
        return
    enqueue_event(app, settings, event)


@hookimpl(trylast=True)
def responder_status(app: App) -> StatusSection | None:
    settings = _settings(app)
    figures = status_figures(app, settings)
    if not settings.targets and not any(value for _name, value in figures):
        return None  # never used: no section
    return StatusSection(title=PLUGIN, figures=figures)


@hookimpl(trylast=True)
def responder_register_commands(commands: CommandRegistry) -> None:
    commands.add(
        PLUGIN,
        help="webhook relays: 'retry' re-queues dead letters",
        setup=_setup_command,
        run=_run_command,
    )


def _setup_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("retry",), help="retry: re-queue dead letters")
    parser.add_argument(
        "--target",
        action="append",
        metavar="NAME",
        help="only this target's dead letters (repeatable; default: every target)",
    )


def _run_command(app: App, args: argparse.Namespace) -> int:
    settings = _settings(app)
    known = {target.name: target for target in settings.targets}
    names = args.target or list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"webhook.targets has no target {unknown[0]!r} (targets: {', '.join(known) or 'none'})",
            file=sys.stderr,
        )
        return 2
    prepare(app, settings)  # a command runs without responder_startup
    counts = requeue_dead(app, settings, [known[name] for name in names])
    for name, count in counts.items():
        print(f"{name}: {count} dead letter(s) re-queued")
    return 0
