"""What a flow does with one message: pure decisions, applied by the plugin.

``begin`` says whether a message starts a flow; ``answer`` what a message does to the
flow a sender is in. Both return an ``Action``, a frozen value the plugin applies to the
conversation (``app.conversation(message)``) and turns into a reply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from responder import normalise
from responder_plugins.conversations.config import (
    KEYWORDS,
    Choice,
    ConversationsSettings,
    Flow,
    Step,
    starts_with_word,
)

RETRIES: Final = "_retries"
"""The field that counts invalid answers in a row at a step (hidden from templates and
events: fields whose names start with "_" are the plugin's own)."""

START: Final = "start"
MOVE: Final = "move"
RETRY: Final = "retry"
CANCEL: Final = "cancel"
GIVE_UP: Final = "give up"
SWITCH: Final = "switch"
DONE: Final = "done"
LEAF: Final = "leaf"
HAND_OVER: Final = "hand over"


@dataclass(frozen=True)
class Action:
    """What to do: ``kind`` and the reply, and the conversation's next state."""

    kind: str
    reply: str
    flow: str = ""
    """The flow the conversation is in afterwards (START, MOVE, RETRY, SWITCH)."""
    step: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    """Fields to set (MOVE, RETRY), or the completed form (DONE)."""
    why: str = ""


def visible(fields: Mapping[str, str]) -> dict[str, str]:
    """The collected fields without the plugin's own (names starting with "_")."""
    return {name: value for name, value in fields.items() if not name.startswith("_")}


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""  # a field a branch never asked for


def render(template: str, fields: Mapping[str, str]) -> str:
    """The ``done`` text with the fields filled in ("" for one never collected)."""
    return template.format_map(_Blank(visible(fields)))


def begin(settings: ConversationsSettings, text: str) -> Action | None:
    """The flow a message starts (its start word is the message or its first word)."""
    found = settings.started_by(normalise(text))
    if found is None:
        return None
    word, flow = found
    return enter(flow, f"{word!r} starts the flow {flow.name!r}")


def enter(flow: Flow, why: str) -> Action:
    first = flow.steps[0]
    return Action(START, first.ask, flow=flow.name, step=first.name, why=why)


def answer(
    settings: ConversationsSettings, flow: Flow, step: Step, fields: Mapping[str, str], text: str
) -> Action | None:
    """What a message does at ``step`` of ``flow``; None: the flow does not take it (the
    keyword rules answer, the conversation stays as it is)."""
    key = normalise(text)
    word = starts_with_word(key, flow.cancel)
    if word is not None:
        return Action(CANCEL, flow.cancel_reply, why=f"{word!r} cancels the flow")
    if starts_with_word(key, settings.pass_through) is not None:
        return None
    value, choice = _value(step, text, key)
    if value is None:
        if settings.unmatched == KEYWORDS:
            return None
        retries = _int(fields.get(RETRIES, "0")) + 1
        if flow.max_retries and retries > flow.max_retries:
            why = f"{retries} answers in a row the step {step.name!r} does not accept"
            return Action(GIVE_UP, flow.cancel_reply, why=why)
        return Action(
            RETRY,
            step.retry_reply or step.ask,
            flow=flow.name,
            step=step.name,
            fields={RETRIES: str(retries)},
            why=f"not an answer the step {step.name!r} accepts",
        )
    collected = {**visible(fields), step.name: value}
    if choice is not None and choice.handover:
        why = f"the choice {value!r} hands over to a person"
        return Action(HAND_OVER, choice.reply, fields=collected, why=why)
    if choice is not None and choice.reply:
        return Action(LEAF, choice.reply, fields=collected, why=f"the choice {value!r}")
    if choice is not None and choice.flow:
        return Action(
            SWITCH, "", flow=choice.flow, why=f"the choice {value!r} starts {choice.flow!r}"
        )
    choice_next = choice.next if choice is not None else ""
    following = flow.step(choice_next) if choice_next else flow.after(step)
    if following is None:
        return Action(
            DONE, render(flow.done, collected), flow=flow.name, fields=collected, why="complete"
        )
    return Action(
        MOVE,
        following.ask,
        flow=flow.name,
        step=following.name,
        fields={step.name: value, RETRIES: "0"},
        why=f"{step.name} = {value!r}",
    )


def _value(step: Step, text: str, key: str) -> tuple[str | None, Choice | None]:
    """The field's value (None when the answer is not valid) and the choice it was."""
    if step.choices:
        choice = step.choice(key)
        return (None, None) if choice is None else (choice.label, choice)
    stripped = text.strip()
    if not stripped:
        return None, None
    if step.pattern is not None and not (
        step.pattern.fullmatch(stripped) or step.pattern.fullmatch(key)
    ):
        return None, None
    return stripped, None


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0
