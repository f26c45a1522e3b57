"""The flows plugin's hooks.

The reply hook is neither tryfirst nor trylast, on purpose: tryfirst plugins (optout
confirms an unsubscribe word, handover's words) and user plugins answer before it, the
keyword rules (trylast) after it, so a sender in a flow is answered by the flow first.
It is registered after webhook, so a flow is asked before a reply-mode target too.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from responder import (
    ACTIVE,
    CONTEXT,
    OPTED_OUT,
    App,
    ConfigSection,
    ConversationHandle,
    Event,
    FlowEntry,
    Message,
    Reply,
    hookimpl,
    normalise,
    reply_warnings,
)
from responder_plugins.conversations.config import (
    PLUGIN,
    ConversationsSettings,
    Flow,
    parse,
)
from responder_plugins.conversations.engine import (
    CANCEL,
    DONE,
    GIVE_UP,
    HAND_OVER,
    LEAF,
    MOVE,
    RETRY,
    START,
    SWITCH,
    Action,
    answer,
    begin,
    enter,
    visible,
)

COMPLETED = "conversation.completed"
"""The event a completed flow with a ``relay`` emits."""


def _settings(app: App) -> ConversationsSettings:
    return app.plugin_config(PLUGIN) or ConversationsSettings()


def opted_out(app: App, number: str) -> bool:
    """Whether the number is on the opt-out list (False when no plugin keeps one)."""
    ask = app.stash.get(OPTED_OUT, None)
    return bool(ask(number)) if ask is not None else False


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


@hookimpl(trylast=True)
def responder_flow_entry(app: App, flow: str) -> FlowEntry | None:
    """An outbound send's recipients start the flow at its first step."""
    found = _settings(app).flow(flow)
    if found is None:
        return None
    return FlowEntry(step=found.steps[0].name, timeout=found.timeout, who=PLUGIN)


@hookimpl
def responder_reply(app: App, message: Message) -> Reply | None:
    settings = _settings(app)
    if not settings.flows:
        return None
    handle = app.conversation(message)
    current = handle.current
    context: dict[str, Any] = {}
    if current is not None and current.state == CONTEXT:  # a send's context, no flow
        context, current = dict(current.context), None
    if current is not None and (current.state != ACTIVE or current.who != PLUGIN):
        return None  # with a person, or another plugin's conversation
    if current is not None:
        flow = settings.flow(current.flow)
        step = flow.step(current.step) if flow is not None else None
        if flow is None or step is None:  # the configuration changed under it
            handle.end()
        elif opted_out(app, message.src):
            handle.end()
            return None
        else:
            action = answer(settings, flow, step, current.fields, message.text)
            return None if action is None else _apply(app, handle, settings, message, flow, action)
    action = begin(settings, message.text)
    if action is None or opted_out(app, message.src):
        return None
    flow = settings.flow(action.flow)
    assert flow is not None
    if flow.when and (flow.when == "open") != app.hours.is_open(app.now()):
        return None  # not its hours: the keyword rules may answer the word
    return _apply(app, handle, settings, message, flow, action, context)


def _apply(
    app: App,
    handle: ConversationHandle,
    settings: ConversationsSettings,
    message: Message,
    flow: Flow,
    action: Action,
    context: dict[str, Any] | None = None,
) -> Reply:
    """What ``action`` does to the conversation, and the flow's answer; ``context``: what
    a send attached to the number, kept by the flow it starts."""
    if action.kind == SWITCH:
        other = settings.flow(action.flow)
        assert other is not None  # the configuration checked it
        switched = enter(other, action.why)
        handle.start(other.name, switched.step, timeout=other.timeout, who=PLUGIN)
        return _reply(message, other, switched)
    if action.kind == START:
        handle.start(flow.name, action.step, timeout=flow.timeout, context=context, who=PLUGIN)
    elif action.kind in (MOVE, RETRY):
        handle.move(action.step, fields=action.fields, timeout=flow.timeout)
    elif action.kind in (CANCEL, GIVE_UP, LEAF):
        handle.end()
    elif action.kind == HAND_OVER:
        return _hand_over(app, handle, message, flow, action)
    elif action.kind == DONE:
        ended = handle.end()
        if flow.relay:
            context = dict(ended.context) if ended is not None else {}
            app.emit(
                Event(
                    type=COMPLETED,
                    account=message.account,
                    number=message.src,
                    data={"flow": flow.name, "fields": visible(action.fields), "context": context},
                    target=flow.relay,
                    key=f"{message.id}:completed",
                )
            )
    return _reply(message, flow, action)


HANDOVER_REQUESTED = "handover.requested"
HANDOVER_TIMEOUT = 86400.0
HANDOVER_CONFIRM = "已为您转接人工客服，请稍候。"


def _hand_over(
    app: App, handle: ConversationHandle, message: Message, flow: Flow, action: Action
) -> Reply:
    """A menu choice that hands the sender to a person: as a hand-over word does, with the
    ``[handover]`` settings when that plugin runs (its timeout, target and confirmation)."""
    handover: Any = app.plugin_config("handover")
    handle.hand_over(timeout=getattr(handover, "timeout", HANDOVER_TIMEOUT), who="handover")
    app.emit(
        Event(
            type=HANDOVER_REQUESTED,
            account=message.account,
            number=message.src,
            data={
                "text": message.text,
                "message_id": message.id,
                "flow": flow.name,
                "fields": visible(action.fields),
            },
            target=getattr(handover, "notify", ""),
            key=f"{message.id}:handover",
        )
    )
    confirm = action.reply or getattr(handover, "confirm", "") or HANDOVER_CONFIRM
    return _reply(message, flow, dataclasses.replace(action, reply=confirm))


def _reply(message: Message, flow: Flow, action: Action) -> Reply:
    """The flow's answer; labelled ``flow``, which the loop guard lets through."""
    return Reply(
        text=action.reply,
        meta=(
            ("flow", flow.name),
            ("step", action.step or action.kind),
            ("rule", f"flow {flow.name}"),
            ("normalised", normalise(message.text)),
            ("why", action.why),
        ),
    )


# trylast: after optout's observer (tryfirst) put the number on the list.
@hookimpl(trylast=True)
def responder_observe(app: App, message: Message) -> None:
    """An opt-out in the middle of a flow ends it: nothing more is asked."""
    if not _settings(app).flows:
        return
    handle = app.conversation(message)
    current = handle.current
    if current is None or current.who != PLUGIN or current.state != ACTIVE:
        return
    if opted_out(app, message.src):
        handle.end()
        app.log.info("flow_ended_by_optout", message_id=message.id, flow=current.flow)


@hookimpl(trylast=True)
def responder_check(app: App) -> list[str]:
    """Warnings: a relay that is not a webhook target, a cancel word the opt-out plugin
    takes, texts the gateway cannot carry."""
    settings: ConversationsSettings | None = app.plugin_config(PLUGIN)
    if settings is None:
        return []
    source = app.settings.source
    webhook: Any = app.plugin_config("webhook")
    targets = {t.name for t in getattr(webhook, "targets", ())}
    optout: Any = app.plugin_config("optout")
    optout_words = set(getattr(optout, "words", ())) | set(getattr(optout, "anywhere_words", ()))
    warnings: list[str] = []
    for index, flow in enumerate(settings.flows):
        key = f"{PLUGIN}.flows[{index}]"
        if flow.relay and flow.relay not in targets:
            warnings.append(
                f"{source}: {key}.relay: {flow.relay!r} is not a [[webhook.targets]] name: "
                "the completed form goes nowhere"
            )
        for word in flow.cancel:
            if word in optout_words:
                warnings.append(
                    f"{source}: {key}.cancel: {word!r} is an [optout] word: it unsubscribes "
                    "the sender instead of cancelling the flow"
                )
        if flow.when and not app.hours.configured:
            warnings.append(
                f"{source}: {key}.when: there is no [hours] section, so the opening hours "
                f'are always open and when = "{flow.when}" '
                + ("changes nothing" if flow.when == "open" else "never lets the flow start")
            )
        warnings += reply_warnings(app, f"{key}.done", flow.done)
        for step_index, step in enumerate(flow.steps):
            warnings += reply_warnings(app, f"{key}.steps[{step_index}].ask", step.ask)
    return warnings
