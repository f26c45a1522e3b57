"""Hand-over to a person: a customer who asks for one ("人工") is put with a person.

The sender's conversation goes to state ``WITH_PERSON`` for ``handover.timeout`` seconds,
a confirmation goes out (saying when a person will answer when the opening hours are
closed), and staff are told by the event ``handover.requested`` (the webhook targets
subscribed to it, or the one ``handover.notify`` names). While it lasts the bot is silent
for that number (its messages are still journaled, observed and shown); opt-out words
still win, and end it. Any plugin may hand a sender over with
``app.conversation(message).hand_over(timeout=...)``.

Commands: ``responder reply NUMBER -m TEXT`` (a staff answer, through the before-send
hooks and the signature like every reply), ``responder handover list|release NUMBER``,
``responder conversation show NUMBER``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from responder import (
    OPTED_OUT,
    PLATFORM_TZ,
    WITH_PERSON,
    ApiError,
    ApiRoutes,
    App,
    CommandRegistry,
    ConfigSection,
    Deferred,
    Event,
    Message,
    Reply,
    StatusSection,
    Table,
    canonical_number,
    hookimpl,
    is_separator,
    normalise,
    number_argument,
    reply_warnings,
    send_text,
)

PLUGIN: Final = "handover"
EVENT: Final = "handover.requested"
DEFAULT_WORDS: Final = ("人工", "客服", "投诉")
DEFAULT_CONFIRM: Final = "已为您转接人工客服，请稍候。"
DEFAULT_CLOSED_CONFIRM: Final = "现在是非工作时间，人工客服将于{opens}回复您。"
DEFAULT_TIMEOUT: Final = 86400.0
SHORT: Final = 30
"""The longest message (normalised characters) in which a non-Latin word counts anywhere."""
REQUESTED: Final = (PLUGIN, "requested")
"""The Reply.meta pair of a confirmation: the observer then tells staff."""
SILENT: Final = (PLUGIN, "with a person")


@dataclass(frozen=True)
class HandoverSettings:
    words: tuple[str, ...]
    """Normalised, longest first: the whole message or its first word; a word that is not
    Latin also anywhere in a message of up to SHORT characters ("我要人工")."""
    confirm: str
    closed_confirm: str
    """Sent instead of ``confirm`` when the opening hours are closed; {opens}: when they
    open next."""
    timeout: float
    notify: str
    """A webhook target's name; "": every target subscribed to handover.requested."""


def parse(table: Table) -> HandoverSettings:
    words: list[str] = []
    for word in table.get_str_list("words", list(DEFAULT_WORDS)):
        normal = normalise(word)
        if not normal:
            table.error("words", f"must not contain an empty word, got {word!r}")
        elif normal not in words:
            words.append(normal)
    closed = table.get_str("closed_confirm", DEFAULT_CLOSED_CONFIRM)
    try:
        closed.format(opens="")
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        table.error("closed_confirm", f"only {{opens}} may be filled in ({err!r})")
    timeout = table.get_float("timeout", DEFAULT_TIMEOUT)
    if timeout <= 0:
        table.error("timeout", f"must be more than 0 seconds, got {timeout}")
    return HandoverSettings(
        words=tuple(sorted(words, key=len, reverse=True)),
        confirm=table.get_str("confirm", DEFAULT_CONFIRM),
        closed_confirm=closed,
        timeout=float(timeout),
        notify=table.get_str("notify", ""),
    )


def default_settings() -> HandoverSettings:
    """The settings without a ``[handover]`` section."""
    return parse(Table({}, file="<defaults>", prefix=PLUGIN, problems=[]))


def asks_for_person(settings: HandoverSettings, text: str) -> str | None:
    """The hand-over word a message is, starts with, or (short, non-Latin) contains."""
    key = normalise(text)
    for word in settings.words:
        if key == word or (key.startswith(word) and is_separator(key[len(word)])):
            return word
    if len(key) <= SHORT:
        for word in settings.words:
            if not word.isascii() and word in key:
                return word
    return None


def opening_text(when: datetime | None) -> str:
    """ "12月3日 09:00" (platform time), or "工作时间" when nothing opens within a year."""
    if when is None:
        return "工作时间"
    local = when.astimezone(PLATFORM_TZ)
    return f"{local.month}月{local.day}日 {local:%H:%M}"


def confirmation(app: App, settings: HandoverSettings) -> tuple[str, bool]:
    """(the text to send, whether the opening hours are open now)."""
    now = app.now()
    if app.hours.is_open(now):
        return settings.confirm, True
    return settings.closed_confirm.format(opens=opening_text(app.hours.next_opening(now))), False


def _opted_out(app: App, number: str) -> bool:
    check = app.stash.get(OPTED_OUT, None)
    return check is not None and check(number)


# -- hooks ---------------------------------------------------------------------------------


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


# tryfirst: a sender with a person gets silence, not a keyword rule's answer. The built-ins
# are registered in a fixed order with this one before optout, so optout's tryfirst
# implementation is asked first: an unsubscribe word is still confirmed (and ends it).
@hookimpl(tryfirst=True)
def responder_reply(app: App, message: Message) -> Reply | None:
    settings: HandoverSettings = app.plugin_config(PLUGIN)
    number = canonical_number(message.src)
    if not number:
        return None
    handle = app.conversation(message)
    if handle.with_person:
        if _opted_out(app, number):  # opted out meanwhile: the hand-over is over
            handle.end()
            return None
        why = "the sender is with a person: the bot does not answer"
        return Reply(text="", meta=(SILENT, ("why", why)))
    word = asks_for_person(settings, message.text)
    if word is None:
        return None
    # Staged: committed with this message's outcome (in memory only under dry_run).
    handle.hand_over(timeout=settings.timeout, who=PLUGIN)
    text, is_open = confirmation(app, settings)
    hours = "open" if is_open else "closed"
    why = f'"{word}" is a hand-over word: the sender is put with a person (hours {hours})'
    return Reply(
        text=text,
        meta=(
            REQUESTED,
            ("normalised", normalise(message.text)),
            ("rule", "handover"),
            ("why", why),
        ),
    )


@hookimpl
def responder_observe(
    app: App, message: Message, reply: Reply | Deferred | None, dropped: str | None
) -> None:
    """Tell staff when our confirmation won (the reply hook handed the sender over); end
    a hand-over when the number opted out (optout's observer, tryfirst, recorded it)."""
    settings: HandoverSettings = app.plugin_config(PLUGIN)
    number = canonical_number(message.src)
    if not number:
        return
    handle = app.conversation(message)
    if isinstance(reply, Reply) and REQUESTED in reply.meta:
        _text, is_open = confirmation(app, settings)
        opens = app.hours.next_opening(app.now())
        app.emit(
            Event(
                type=EVENT,
                account=message.account,
                number=number,
                data={
                    "text": message.text,
                    "message_id": message.id,
                    "open": is_open,
                    "opens": opens.isoformat() if opens is not None else None,
                },
                target=settings.notify,
                key=f"{message.id}:handover",
            )
        )
        app.log.info("handed_over", src=message.src, message_id=message.id, open=is_open)
    elif handle.with_person and _opted_out(app, number):
        handle.end()
        app.log.info("handover_ended", src=message.src, message_id=message.id, why="opted out")


@hookimpl(trylast=True)
def responder_status(app: App) -> StatusSection | None:
    waiting = len(app.store.conversations(state=WITH_PERSON, account=None, limit=100_000))
    return StatusSection(title=PLUGIN, figures=(("waiting for a person", waiting),))


@hookimpl(trylast=True)
def responder_check(app: App) -> list[str]:
    settings: HandoverSettings | None = app.plugin_config(PLUGIN)
    if settings is None:
        return []
    return [
        *reply_warnings(app, f"{PLUGIN}.confirm", settings.confirm),
        *reply_warnings(
            app, f"{PLUGIN}.closed_confirm", settings.closed_confirm.format(opens="12月3日 09:00")
        ),
        *_staff_warnings(app, settings),
    ]


def _staff_warnings(app: App, settings: HandoverSettings) -> list[str]:
    """A ``notify`` that names no webhook target: staff would never be told."""
    webhook: Any = app.plugin_config("webhook")
    names = {target.name for target in getattr(webhook, "targets", ())}
    if not settings.notify or settings.notify in names:
        return []
    return [
        f"{app.settings.source}: {PLUGIN}.notify: {settings.notify!r} is not a "
        "[[webhook.targets]] name: staff are never told of a hand-over"
    ]


# -- command line --------------------------------------------------------------------------


def _when(at: float) -> str:
    return f"{datetime.fromtimestamp(at, PLATFORM_TZ):%Y-%m-%d %H:%M}"


def _settings(app: App) -> HandoverSettings:
    found: HandoverSettings | None = app.plugin_config(PLUGIN)
    return (
        found
        if found is not None
        else parse(Table({}, file="<defaults>", prefix=PLUGIN, problems=[]))
    )


def _setup_reply(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("number", help="the customer's phone number")
    parser.add_argument("-m", "--message", required=True, help="the answer's text")


def _run_reply(app: App, args: argparse.Namespace) -> int:
    number = number_argument(args.number)
    if number is None:
        print(f"reply: give a phone number, got {args.number!r}", file=sys.stderr)
        return 2
    report = send_text(app, [number], args.message)
    for who, why in report.suppressed:
        print(f"not sent: {who} ({why})")
    if report.error:
        print(f"reply: {report.error}", file=sys.stderr)
        return 1
    if not report.results:
        return 1
    handle = app.conversation(number)
    if handle.with_person:  # an answer keeps the hand-over going
        handle.move(timeout=_settings(app).timeout)
    for result in report.results:
        print(f"sent to {number}: ok={result.ok} num={result.num} err={result.err}")
    return 0 if report.ok else 1


def _setup_handover(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "release"))
    parser.add_argument("number", nargs="?", help="the customer's phone number (release)")
    parser.add_argument("--last", type=int, default=3, help="messages shown per customer")


def _run_handover(app: App, args: argparse.Namespace) -> int:
    if args.action == "list":
        waiting = app.store.conversations(state=WITH_PERSON, account=None, limit=1000)
        for conversation in sorted(waiting, key=lambda c: c.started_at):
            until = _when(conversation.expires_at) if conversation.expires_at else "released"
            print(
                f"{conversation.number}  waiting since {_when(conversation.started_at)}"
                f"  (until {until})"
            )
            texts = app.store.texts_from(
                conversation.number,
                since=conversation.started_at - 86400,
                limit=max(args.last, 0),
                account=conversation.account,
            )
            for text in reversed(texts):
                print(f"    > {text}")
        if not waiting:
            print("nobody is waiting for a person")
        return 0
    number = number_argument(args.number)
    if number is None:
        print(f"handover release: give a phone number, got {args.number!r}", file=sys.stderr)
        return 2
    handle = app.conversation(number)
    if not handle.with_person:
        print(f"{number} is not with a person")
        return 1
    handle.end()
    print(f"{number} released: the bot answers again")
    return 0


def _setup_conversation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("show",))
    parser.add_argument("number", help="the customer's phone number")
    parser.add_argument("--last", type=int, default=20, help="SMS shown (both directions)")


def _run_conversation(app: App, args: argparse.Namespace) -> int:
    number = number_argument(args.number)
    if number is None:
        print(f"conversation show: give a phone number, got {args.number!r}", file=sys.stderr)
        return 2
    current = app.conversation(number).current
    if current is None:
        print(f"{number}: no conversation under way")
    else:
        where = "with a person" if current.state == WITH_PERSON else current.state
        if current.flow:
            where += f", flow {current.flow} at step {current.step or '-'}"
        print(f"{number}: {where} since {_when(current.started_at)}")
        for name, value in current.fields.items():
            print(f"    {name} = {value}")
    lines = app.store.exchange(number, limit=max(args.last, 0), account=None)
    for line in lines:
        arrow = "<" if line.direction == "in" else ">"
        via = f" [{line.via}]" if line.via else ""
        print(f"{_when(line.at)} {arrow} {line.text}{via}")
    if not lines:
        print("no messages from or to this number")
    return 0


@hookimpl(trylast=True)
def responder_register_commands(commands: CommandRegistry) -> None:
    commands.add(
        "reply",
        help="answer a customer by hand (signature, opt-out and before-send hooks apply)",
        setup=_setup_reply,
        run=_run_reply,
    )
    commands.add(
        "handover",
        help="list the customers waiting for a person, or release one back to the bot",
        setup=_setup_handover,
        run=_run_handover,
    )
    commands.add(
        "conversation",
        help="show one customer's conversation and recent SMS, both directions",
        setup=_setup_conversation,
        run=_run_conversation,
    )


# -- HTTP API ------------------------------------------------------------------------------

_CONVERSATION: Final = {
    "type": "object",
    "required": ["number", "state", "flow", "step", "started_at", "expires_at", "account"],
    "properties": {
        "number": {"type": "string"},
        "state": {"type": "string", "description": '"with_person" or "active"'},
        "flow": {"type": "string"},
        "step": {"type": "string"},
        "started_at": {"type": "string"},
        "expires_at": {"type": ["string", "null"]},
        "account": {"type": "string"},
        "last": {"type": "array", "items": {"type": "string"}, "description": "latest texts"},
    },
}


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, PLATFORM_TZ).isoformat()


@hookimpl(trylast=True)
def responder_api(api: ApiRoutes) -> None:
    """GET /v1/conversations, POST /v1/conversations/{number}/reply and .../release."""
    from fastapi import Body, Header, Path, Query

    may_read = api.require("read")
    may_send = api.require("send")

    listing = {
        "type": "object",
        "required": ["conversations"],
        "properties": {"conversations": {"type": "array", "items": _CONVERSATION}},
    }

    @api.router.get(
        "/conversations",
        response_model=None,
        responses={
            200: api.answer(listing, "most recently moved first"),
            **api.responses(404, 422),
        },
        summary="Conversations under way: state=with_person lists the customers waiting",
        tags=["conversations"],
    )
    def list_conversations(
        token: Any = may_read,
        state: str = Query(WITH_PERSON, pattern="^(with_person|active|all)$"),
        limit: int = Query(100, ge=1, le=1000),
        last: int = Query(3, ge=0, le=20, description="latest texts shown per customer"),
        account: str | None = Query(
            None, max_length=32, description="one account's; default: every one the token sees"
        ),
    ) -> Any:
        app = api.app() if account is None else api.account(token, account)
        seen = api.accounts(token) if account is None else [app.account]
        found = app.store.conversations(
            state=None if state == "all" else state,
            account=app.account if account is not None else None,
            limit=limit,
        )
        conversations = []
        for conversation in found:
            if conversation.account not in seen:
                continue
            texts = (
                app.store.texts_from(
                    conversation.number,
                    since=conversation.started_at - 86400,
                    limit=last,
                    account=conversation.account,
                )
                if last
                else []
            )
            conversations.append(
                {
                    "number": conversation.number,
                    "state": conversation.state,
                    "flow": conversation.flow,
                    "step": conversation.step,
                    "started_at": _iso(conversation.started_at),
                    "expires_at": _iso(conversation.expires_at),
                    "account": conversation.account,
                    "last": list(reversed(texts)),
                }
            )
        return {"conversations": conversations}

    @api.router.post(
        "/conversations/{number}/reply",
        status_code=202,
        response_model=None,
        responses={
            202: api.answer({"type": "object"}, "accepted: as POST /v1/messages answers"),
            **api.responses(404, 409, 422),
        },
        summary="Answer a customer as staff (opt-out, signature, splitting apply)",
        tags=["conversations"],
    )
    def reply(
        number: str = Path(max_length=40),
        text: str = Body(..., embed=True, min_length=1, max_length=10_000),
        idempotency_key: str | None = Header(None, pattern=r"^[\x21-\x7e]{1,200}$"),
        token: Any = may_send,
        account: str | None = Query(
            None, max_length=32, description="the account; default: the only one"
        ),
    ) -> Any:
        found = api.number(number)
        target = api.account(token, account)
        answer = api.send(token, [found], text, key=idempotency_key or "", account=account)
        timeout = _settings(target).timeout

        def keep(app: App) -> None:
            handle = app.conversation(found)
            if handle.with_person:  # an answer keeps the hand-over going
                handle.move(timeout=timeout)

        api.run(keep, app=target)
        return answer

    released = {
        "type": "object",
        "required": ["number", "released"],
        "properties": {"number": {"type": "string"}, "released": {"type": "boolean"}},
    }

    @api.router.post(
        "/conversations/{number}/release",
        response_model=None,
        responses={200: api.answer(released, "the bot answers again"), **api.responses(404, 422)},
        summary="Hand a customer back to the bot",
        tags=["conversations"],
    )
    def release(
        number: str = Path(max_length=40),
        token: Any = may_send,
        account: str | None = Query(
            None, max_length=32, description="the account; default: the only one"
        ),
    ) -> Any:
        found = api.number(number)
        target = api.account(token, account)

        def end(app: App) -> bool:
            handle = app.conversation(found)
            if not handle.with_person:
                return False
            handle.end()
            return True

        if not api.run(end, app=target):
            raise ApiError(404, "not_found", f"{found} is not with a person")
        return {"number": found, "released": True}
