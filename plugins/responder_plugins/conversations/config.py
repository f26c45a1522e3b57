"""``[conversations]``: flows declared in the configuration, and how they meet the
keyword rules.

A flow is a named series of steps (``[[conversations.flows]]`` and
``[[conversations.flows.steps]]``); a step asks, and its answer is checked (``choices``,
``pattern``) and kept as a field named after the step. A choice may lead to another step
or start another flow, so a numbered menu tree needs no code. Every error names the file
and the dotted key (``conversations.flows[0].steps[1].choices.3.next``).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import cached_property
from typing import Final

from responder import Table, is_separator, normalise

PLUGIN: Final = "conversations"
RETRY: Final = "retry"
KEYWORDS: Final = "keywords"
UNMATCHED: Final = (RETRY, KEYWORDS)
STANDARD_OPTOUT_WORDS: Final = ("TD", "T", "N", "R", "退订", "取消", "拒收", "STOP", "UNSUBSCRIBE")
"""The unsubscribe words carriers expect (the opt-out plugin's default ``words``): never a
flow's cancel word, whatever ``[optout]`` says; ``responder check`` compares the words
configured there too."""
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
_FLOW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
DEFAULT_TIMEOUT: Final = 1800.0
DEFAULT_MAX_RETRIES: Final = 3


@dataclass(frozen=True)
class Choice:
    """One answer a step accepts: ``"1" = "上午"`` or ``"1" = { label = ..., next = ... }``."""

    key: str
    """What the customer sends, normalised."""
    label: str
    """What the step's field keeps."""
    next: str = ""
    """The step it leads to ("": the step's own ``next``, or the following step)."""
    flow: str = ""
    """Another flow it starts instead (this one ends)."""
    reply: str = ""
    """An answer that ends the flow (a menu leaf)."""
    handover: bool = False
    """The choice hands the sender to a person ("3 人工客服"): the flow ends, staff are
    told (``handover.requested``) and the bot stays silent for the number, as after a
    hand-over word; ``reply`` (or ``[handover] confirm``) answers."""


@dataclass(frozen=True)
class Step:
    name: str
    """Also the name of the field the answer is kept in."""
    ask: str
    choices: tuple[Choice, ...] = ()
    pattern: re.Pattern[str] | None = None
    retry_reply: str = ""
    """Sent for an answer that is not valid; "": the ``ask`` again."""
    next: str = ""
    """The step after this one ("": the following step; after the last, the flow is done)."""

    def choice(self, key: str) -> Choice | None:
        """The choice a normalised answer picks: its key, or its label."""
        for choice in self.choices:
            if key == choice.key or key == normalise(choice.label):
                return choice
        return None


@dataclass(frozen=True)
class Flow:
    name: str
    steps: tuple[Step, ...]
    start: tuple[str, ...] = ()
    """Normalised words that start the flow (the whole message or its first word)."""
    cancel: tuple[str, ...] = ()
    cancel_reply: str = ""
    timeout: float = DEFAULT_TIMEOUT
    done: str = ""
    relay: str = ""
    max_retries: int = DEFAULT_MAX_RETRIES
    when: str = ""
    """"open" or "closed": the flow starts only then, by the shared opening hours
    (``[hours]``); "" at any time. A flow under way goes on whatever the hours."""

    def step(self, name: str) -> Step | None:
        for step in self.steps:
            if step.name == name:
                return step
        return None

    def after(self, step: Step) -> Step | None:
        """The step that follows ``step`` when its answer names none; None: the end."""
        if step.next:
            return self.step(step.next)
        index = self.steps.index(step)
        return self.steps[index + 1] if index + 1 < len(self.steps) else None


@dataclass(frozen=True)
class ConversationsSettings:
    flows: tuple[Flow, ...] = ()
    unmatched: str = RETRY
    """What an answer a step does not accept gets: "retry" (the step's ``retry_reply``) or
    "keywords" (the keyword rules answer it; the flow waits at the step)."""
    pass_through: tuple[str, ...] = ()
    """Normalised words the keyword rules answer even in a flow (the flow waits)."""

    def flow(self, name: str) -> Flow | None:
        for flow in self.flows:
            if flow.name == name:
                return flow
        return None

    @cached_property
    def _starts(self) -> tuple[dict[str, Flow], tuple[tuple[str, Flow], ...]]:
        """Start words by word (those without a separator: one look-up for the message's
        first word, however many flows), and the others, tried in turn."""
        single: dict[str, Flow] = {}
        other: list[tuple[str, Flow]] = []
        for flow in self.flows:
            for word in flow.start:
                if any(is_separator(char) for char in word):
                    other.append((word, flow))
                else:
                    single.setdefault(word, flow)
        return single, tuple(other)

    def started_by(self, key: str) -> tuple[str, Flow] | None:
        """(the start word, its flow) for a normalised text that is a start word or starts
        with one before a separator; None when it starts no flow."""
        single, other = self._starts
        end = next((i for i, char in enumerate(key) if is_separator(char)), len(key))
        flow = single.get(key[:end])
        if flow is not None:
            return key[:end], flow
        for word, flow in other:
            if starts_with_word(key, (word,)) is not None:
                return word, flow
        return None


def starts_with_word(key: str, words: tuple[str, ...]) -> str | None:
    """The word a normalised text is, or starts with before punctuation or a space."""
    for word in words:
        if key == word or (key.startswith(word) and is_separator(key[len(word)])):
            return word
    return None


def _words(table: Table, key: str) -> tuple[str, ...]:
    words: list[str] = []
    for word in table.get_str_list(key, []):
        normal = normalise(word)
        if not normal:
            table.error(key, f"must not contain an empty word, got {word!r}")
        elif normal not in words:
            words.append(normal)
    return tuple(words)


def template_fields(template: str) -> list[str] | None:
    """The ``{field}`` names of a template; None when it is not a valid template."""
    try:
        return [name for _text, name, _spec, _conv in string.Formatter().parse(template) if name]
    except ValueError:
        return None


def parse(table: Table) -> ConversationsSettings:
    unmatched = table.get_str("unmatched", RETRY, choices=UNMATCHED)
    pass_through = _words(table, "pass_through")
    flows: list[Flow] = []
    tables = table.get_tables("flows")
    for flow_table in tables:
        flow = _flow(flow_table)
        if flow is not None:
            flows.append(flow)
    names = [flow.name for flow in flows]
    starts: dict[str, str] = {}
    for flow_table, flow in zip(tables, flows, strict=False):
        if names.count(flow.name) > 1:
            flow_table.error("name", f"{flow.name!r} names two flows")
        for word in flow.start:
            if word in starts and starts[word] != flow.name:
                flow_table.error("start", f"{word!r} starts the flow {starts[word]!r} already")
            starts.setdefault(word, flow.name)
    for flow_table in tables:
        flow_table.finish()
    _check_flow_links(tables, flows, set(names))
    return ConversationsSettings(flows=tuple(flows), unmatched=unmatched, pass_through=pass_through)


def _flow(table: Table) -> Flow | None:
    name = table.get_str("name", "")
    if not _FLOW_NAME.fullmatch(name):
        table.error(
            "name",
            f'is required: up to 40 letters, digits, "-" or "_", e.g. "booking"; got {name!r}',
        )
    start = _words(table, "start")
    cancel = _words(table, "cancel")
    standard = {normalise(word) for word in STANDARD_OPTOUT_WORDS}
    for word in cancel:
        if word in standard:
            table.error(
                "cancel",
                f"{word!r} is an opt-out (unsubscribe) word: it must unsubscribe, not cancel a "
                'flow; choose another, e.g. "退出"',
            )
    steps: list[Step] = []
    step_tables = table.get_tables("steps")
    if not step_tables:
        table.error("steps", "is required: at least one [[conversations.flows.steps]]")
    for step_table in step_tables:
        step = _step(step_table)
        step_table.finish()
        if step is not None:
            if any(s.name == step.name for s in steps):
                step_table.error("name", f"{step.name!r} names two steps of the flow")
            steps.append(step)
    flow = Flow(
        name=name,
        steps=tuple(steps),
        start=start,
        cancel=cancel,
        cancel_reply=table.get_str("cancel_reply", ""),
        timeout=table.get_float("timeout", DEFAULT_TIMEOUT, min=10, max=30 * 86400, unit="seconds"),
        done=table.get_str("done", ""),
        relay=table.get_str("relay", ""),
        max_retries=table.get_int("max_retries", DEFAULT_MAX_RETRIES, min=0, max=100),
        when=table.get_str(
            "when", "", choices=("", "open", "closed"), want='"open" or "closed" (the [hours])'
        ),
    )
    fields = template_fields(flow.done)
    if fields is None:
        table.error("done", "is not a valid template: write a brace as {{ or }}")
    else:
        known = {step.name for step in steps}
        for field in fields:
            if field not in known:
                table.error(
                    "done",
                    f"{{{field}}} is not a field of the flow (its steps: "
                    f"{', '.join(sorted(known)) or 'none'})",
                )
    if flow.relay and not _FLOW_NAME.fullmatch(flow.relay):
        table.error("relay", f"must be a webhook target's name, got {flow.relay!r}")
    return flow if name and steps else None


def _step(table: Table) -> Step | None:
    name = table.get_str("name", "")
    if not _NAME.fullmatch(name):
        table.error(
            "name",
            "is required: a letter, then letters, digits or _ (it names the field the "
            f'answer is kept in, e.g. "date"); got {name!r}',
        )
    ask = table.get_str("ask", "")
    if not ask.strip():
        table.error("ask", "is required: the question the step sends")
    pattern_text = table.get_str("pattern", "")
    pattern = None
    if pattern_text:
        try:
            pattern = re.compile(pattern_text)
        except re.error as err:
            table.error("pattern", f"must be a regular expression: {err}")
    choices = _choices(table)
    if choices and pattern is not None:
        table.error("pattern", "a step has choices or a pattern, not both")
    step = Step(
        name=name,
        ask=ask,
        choices=choices,
        pattern=pattern,
        retry_reply=table.get_str("retry_reply", ""),
        next=table.get_str("next", ""),
    )
    return step if _NAME.fullmatch(name) and ask.strip() else None


def _choices(table: Table) -> tuple[Choice, ...]:
    if "choices" not in table:
        table.get_raw("choices")
        return ()
    choices_table = table.get_table("choices")
    choices: list[Choice] = []
    for key in list(choices_table.data):
        normal = normalise(key)
        raw = choices_table.data[key]
        if isinstance(raw, str):
            choices_table.get_raw(key)
            choice = Choice(key=normal, label=raw)
        elif isinstance(raw, dict):
            sub = choices_table.get_table(key)
            choice = Choice(
                key=normal,
                label=sub.get_str("label", ""),
                next=sub.get_str("next", ""),
                flow=sub.get_str("flow", ""),
                reply=sub.get_str("reply", ""),
                handover=sub.get_bool("handover", False),
            )
            sub.finish()
            if not choice.label:
                sub.error("label", "is required: what the step's field keeps")
            if sum(bool(x) for x in (choice.next, choice.flow, choice.reply)) > 1:
                sub.error("next", "a choice has at most one of next, flow and reply")
            if choice.handover and (choice.next or choice.flow):
                sub.error("handover", "a choice that hands over has no next or flow")
        else:
            choices_table.get_raw(key)
            choices_table.error(
                key,
                f'must be a label or a table {{ label = "...", next = "..." }}, '
                f"{choices_table.got(key, raw)}",
            )
            continue
        if not normal:
            choices_table.error(key, "must not be empty (or punctuation only)")
            continue
        if any(c.key == normal for c in choices):
            choices_table.error(key, f"is the same answer as another choice ({normal!r})")
            continue
        choices.append(choice)
    if not choices:
        table.error("choices", "must not be empty")
    return tuple(choices)


def _check_flow_links(tables: list[Table], flows: list[Flow], names: set[str]) -> None:
    """Every ``next`` names a step of its flow, every ``flow`` a flow."""
    by_name: dict[str, Table] = {}
    for flow_table in tables:
        name = flow_table.data.get("name")
        if isinstance(name, str):
            by_name.setdefault(name, flow_table)
    for flow in flows:
        flow_table = by_name[flow.name]
        step_tables = flow_table.get_tables("steps")
        steps = {step.name for step in flow.steps}
        for step_table in step_tables:
            step = flow.step(str(step_table.data.get("name", "")))
            if step is None:
                continue
            if step.next and step.next not in steps:
                step_table.error("next", f"{step.next!r} is not a step of the flow {flow.name!r}")
            if not step.choices:
                continue
            choices_table = step_table.get_table("choices")
            for key in choices_table.data:
                choice = step.choice(normalise(key))
                if choice is None or choice.key != normalise(key):
                    continue
                sub = (
                    choices_table.get_table(key)
                    if isinstance(choices_table.data[key], dict)
                    else None
                )
                if sub is None:
                    continue
                if choice.next and choice.next not in steps:
                    sub.error("next", f"{choice.next!r} is not a step of the flow {flow.name!r}")
                if choice.flow and choice.flow not in names:
                    sub.error(
                        "flow",
                        f"{choice.flow!r} is not a flow (flows: {', '.join(sorted(names))})",
                    )
