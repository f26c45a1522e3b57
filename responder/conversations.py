"""Conversation state: one sender's exchange with an account, kept in the store.

A conversation is at most one row per (account, number): its flow and step, the fields
collected so far, when it started, was last moved and expires, what an outbound send
attached (``context``), and the plugin that owns it (``who``). Plugins reach it through
``app.conversation(message)`` (a ``ConversationHandle``):

- while the message is being handled (its hooks, on the processing thread), changes are
  *staged* and committed by the pipeline in the transaction that records the message's
  outcome; a plugin implementation that raises has its staged changes dropped, and a
  message that fails changes nothing;
- outside message handling (a job, a command), a change commits at once;
- under ``dry_run`` (``simulate``, ``replay``) nothing is ever written: changes go to an
  in-memory overlay that lasts for the app, so a recorded exchange shows every step.

A conversation past its ``expires_at`` is absent for every reader, before the daemon's
expiry job ends it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

from responder.models import Message
from responder.normalise import canonical_number

if TYPE_CHECKING:
    from responder.app import App

ACTIVE: Final = "active"
"""In a flow, at a step."""
WITH_PERSON: Final = "with_person"
"""Handed to a person: the bot does not answer the number."""
CONTEXT: Final = "context"
"""Only carries what an outbound send attached (``context``, no flow) until it expires:
nothing answers it, the number is outside any conversation for the guard and the flows
(a flow the number starts keeps the context), and relays and events about the number's
messages carry it."""


class Keep(enum.Enum):
    """``KEEP``: leave a value as it is (an expiry a move does not change)."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(frozen=True)
class Conversation:
    """One sender's conversation with an account, as the store holds it."""

    number: str
    """The sender, as ``canonical_number`` keys it."""
    flow: str = ""
    """The flow it is in; "" for none."""
    step: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    """What was collected so far."""
    state: str = ACTIVE
    """``ACTIVE`` or ``WITH_PERSON`` (any text a plugin needs)."""
    started_at: float = 0.0
    updated_at: float = 0.0
    expires_at: float | None = None
    """When it ends by itself (epoch seconds); None: never."""
    context: Mapping[str, Any] = field(default_factory=dict)
    """What an outbound send attached (JSON values); may be empty."""
    who: str = ""
    """The plugin that owns it."""
    account: str = "default"

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class ConversationChange:
    """One change to a conversation, applied by the store (``change_conversations``, or
    ``finish_message`` with the message's outcome)."""

    kind: str
    """"start" (replaces any), "move" or "end"."""
    account: str
    number: str
    at: float
    """When it was made."""
    started: Conversation | None = None
    """For "start": the new conversation."""
    step: str | None = None
    """For "move": the new step (None: the same)."""
    fields: Mapping[str, str] = field(default_factory=dict)
    """For "move": fields to set, merged into those collected."""
    expires_at: float | Keep | None = KEEP
    """For "move": the new expiry, or ``KEEP``."""
    expect_step: str | None = None
    """For "move": change only when the conversation is at this step."""


def applied(current: Conversation | None, change: ConversationChange) -> Conversation | None:
    """The conversation after ``change``: None when it ended, or when a move found none
    (or not at ``expect_step``; then ``current`` is kept: see ``change_result``)."""
    if change.kind == "start":
        return change.started
    if change.kind == "end" or current is None:
        return None
    if change.expect_step is not None and current.step != change.expect_step:
        return current
    return replace(
        current,
        step=current.step if change.step is None else change.step,
        fields={**current.fields, **change.fields},
        updated_at=change.at,
        expires_at=current.expires_at if change.expires_at is KEEP else change.expires_at,
    )


def change_result(
    current: Conversation | None, change: ConversationChange
) -> tuple[Conversation | None, Conversation | None]:
    """(the conversation after ``change``, what the change returns to its caller): a start
    or move returns the new conversation (None for a move that did not apply), an end
    the conversation it ended."""
    after = applied(current, change)
    if change.kind == "end":
        return None, current
    if change.kind == "move" and (
        current is None or (change.expect_step is not None and current.step != change.expect_step)
    ):
        return current, None
    return after, after


class Staging:
    """Conversation changes made while one message is handled, for the pipeline to commit
    with its outcome (``finish_message(..., conversations=...)``)."""

    def __init__(self, message: Message) -> None:
        self.message_id = message.id
        self.changes: list[ConversationChange] = []
        self.stored: dict[tuple[str, str], Conversation | None] = {}
        """What the store held, read once per number while the message is handled:
        only the pipeline writes conversations meanwhile, with the message's outcome."""

    def mark(self) -> int:
        return len(self.changes)

    def rollback(self, mark: int) -> None:
        """Drop the changes staged after ``mark`` (a plugin implementation that raised)."""
        del self.changes[mark:]


@contextmanager
def staged(app: App, message: Message) -> Iterator[Staging]:
    """Stage the conversation changes made on this thread while ``message`` is handled."""
    state = app.plugins.calls.state
    outer = state.staging
    staging = state.staging = Staging(message)
    try:
        yield staging
    finally:
        state.staging = outer


def overlay(app: App, changes: list[ConversationChange]) -> None:
    """Apply changes to the dry run's in-memory conversations (never to the store)."""
    for change in changes:
        key = (change.account, change.number)
        current = app.dry_conversations.get(key, KEEP)
        if current is KEEP:
            current = _stored(app, change.account, change.number)
        app.dry_conversations[key] = change_result(current, change)[0]


def _stored(app: App, account: str, number: str) -> Conversation | None:
    """The store's conversation, as a dry run starts from it: one started at or after the
    app's clock (``replay`` sets it to each message's time) did not exist before it."""
    found = app.store.get_conversation(number, account=account)
    if found is not None and app.dry_run and found.started_at >= app.time():
        return None
    return found


class ConversationHandle:
    """One sender's conversation with an account, for a plugin: ``app.conversation(...)``.

    Read it with ``current``; ``start``, ``move`` and ``end`` change it: staged with the
    message being handled (committed with its outcome), at once outside message
    handling, and only in memory under ``dry_run``.
    """

    def __init__(self, app: App, number: str, account: str, message_id: int | None) -> None:
        self.app = app
        self.number = canonical_number(number) or number.strip()
        self.account = account
        self._message_id = message_id

    def _staging(self) -> Staging | None:
        staging = self.app.plugins.calls.state.staging
        if staging is None or self._message_id is None:
            return None
        return staging if staging.message_id == self._message_id else None

    def _base(self, staging: Staging | None) -> Conversation | None:
        key = (self.account, self.number)
        if self.app.dry_run and key in self.app.dry_conversations:
            found = self.app.dry_conversations[key]
        elif staging is None:
            found = _stored(self.app, self.account, self.number)
        else:
            if key not in staging.stored:
                staging.stored[key] = _stored(self.app, self.account, self.number)
            found = staging.stored[key]
        return None if found is None or found.expired(self.app.time()) else found

    @property
    def current(self) -> Conversation | None:
        """The conversation as this message's handling left it so far; None when there
        is none (or it expired)."""
        staging = self._staging()
        found = self._base(staging)
        for change in staging.changes if staging is not None else ():
            if (change.account, change.number) == (self.account, self.number):
                found = change_result(found, change)[0]
        return found

    def _expiry(self, timeout: float | None) -> float | None:
        return None if timeout is None else self.app.time() + timeout

    def start(
        self,
        flow: str,
        step: str,
        *,
        fields: Mapping[str, str] | None = None,
        timeout: float | None = None,
        context: Mapping[str, Any] | None = None,
        state: str = ACTIVE,
        who: str = "",
    ) -> Conversation:
        """Start a conversation (replacing one under way); ``timeout``: seconds until it
        ends by itself (None: never); ``who``: your plugin's name."""
        now = self.app.time()
        conversation = Conversation(
            number=self.number,
            flow=flow,
            step=step,
            fields={str(k): str(v) for k, v in (fields or {}).items()},
            state=state,
            started_at=now,
            updated_at=now,
            expires_at=self._expiry(timeout),
            context=dict(context or {}),
            who=who,
            account=self.account,
        )
        change = ConversationChange("start", self.account, self.number, now, started=conversation)
        result = self._change(change)
        assert result is not None
        return result

    def move(
        self,
        step: str | None = None,
        *,
        fields: Mapping[str, str] | None = None,
        timeout: float | Keep | None = KEEP,
        expect_step: str | None = None,
    ) -> Conversation | None:
        """Move to ``step`` (None: stay), adding ``fields``; ``timeout`` restarts the
        expiry (``KEEP``: unchanged). With ``expect_step``, only when the conversation is
        at that step (compare-and-set). None when there is none to move (or it was not
        at ``expect_step``)."""
        change = ConversationChange(
            "move",
            self.account,
            self.number,
            self.app.time(),
            step=step,
            fields={str(k): str(v) for k, v in (fields or {}).items()},
            expires_at=timeout if timeout is KEEP else self._expiry(timeout),
            expect_step=expect_step,
        )
        return self._change(change)

    def end(self) -> Conversation | None:
        """End the conversation; returns the one ended (None: there was none)."""
        return self._change(ConversationChange("end", self.account, self.number, self.app.time()))

    def hand_over(self, *, timeout: float | None, who: str = "") -> Conversation:
        """Put the sender with a person (state ``WITH_PERSON``, replacing any flow under
        way) until ``timeout`` seconds from now (None: until it is ended). While it lasts
        the handover plugin keeps the bot silent for the number; ``end()`` gives it back
        to the bot. Staff are told by the event the caller emits (``handover.requested``)."""
        return self.start("", "", timeout=timeout, state=WITH_PERSON, who=who)

    @property
    def with_person(self) -> bool:
        """Whether the sender is with a person now (see ``hand_over``)."""
        found = self.current
        return found is not None and found.state == WITH_PERSON

    def _change(self, change: ConversationChange) -> Conversation | None:
        staging = self._staging()
        if staging is not None:
            result = change_result(self.current, change)[1]
            staging.changes.append(change)
            return result
        if self.app.dry_run:
            result = change_result(self._base(None), change)[1]
            overlay(self.app, [change])
            return result
        return self.app.store.change_conversations([change])[0]
