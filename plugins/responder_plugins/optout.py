"""Opt-out (退订): unsubscribe words put a number on a suppression list kept in the store.

A number on the list gets no automatic reply from any plugin: the before-send hook vetoes
every reply to it, except this plugin's own confirmation. Observers still see its
messages; ``is_opted_out(app, number)`` tells them, and other plugins ask
``app.stash[responder.OPTED_OUT]`` (a relay marks such messages) without importing this
one. Resubscribe words take a number off the list. ``responder optout list|add|remove``
edits it by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from responder import (
    OPTED_OUT,
    PLATFORM_TZ,
    ApiError,
    ApiRoutes,
    App,
    CommandRegistry,
    ConfigSection,
    Event,
    Message,
    Reply,
    StashKey,
    StatusSection,
    Table,
    Veto,
    canonical_number,
    hookimpl,
    is_separator,
    normalise,
    number_argument,
    reply_warnings,
)

PLUGIN: Final = "optout"
ADDED: Final = "optout.added"
"""The event emitted when a number is put on the list (by its message, a command or the
API): data ``source`` ("sms", "manual", "api"...), ``who`` asked, ``why`` (the message's
text, or what the caller gave), ``message_id`` (for "sms")."""
DEFAULT_WORDS: Final = ("TD", "T", "N", "R", "退订", "取消", "拒收", "STOP", "UNSUBSCRIBE")
DEFAULT_ANYWHERE: Final = ("退订", "拒收", "取消订阅")
SHORT: Final = 30
"""The longest message (in characters, normalised) in which ``anywhere_words`` count."""
DEFAULT_RESUBSCRIBE: Final = ("订阅", "START")
DEFAULT_CONFIRMATION: Final = "您已退订成功，将不再收到本号码的自动回复。回复“订阅”可恢复。"
DEFAULT_RESUBSCRIBED: Final = "您已恢复订阅，可以继续使用本号码的自动回复服务。"
MARK: Final = ("optout", "confirmation")
"""The Reply.meta pair that lets this plugin's own confirmations through its veto."""
VETO_REASON: Final = "opted out"
_SCHEMA: Final = (
    {  # PostgreSQL's REAL is 4 bytes: epoch seconds need DOUBLE PRECISION there
        "sqlite": "CREATE TABLE optout_numbers ("
        " number TEXT PRIMARY KEY,"
        " opted_out_at REAL NOT NULL,"
        " message_id INTEGER,"
        " source TEXT NOT NULL,"
        " text TEXT NOT NULL DEFAULT '')",
        "postgresql": "CREATE TABLE optout_numbers ("
        " number TEXT PRIMARY KEY,"
        " opted_out_at DOUBLE PRECISION NOT NULL,"
        " message_id BIGINT,"
        " source TEXT NOT NULL,"
        " text TEXT NOT NULL DEFAULT '')",
    },
    # One list per account ("*": the list shared by every account, accounts.shared_optouts).
    {
        "sqlite": "CREATE TABLE optout_numbers_v2 ("
        " account TEXT NOT NULL DEFAULT 'default',"
        " number TEXT NOT NULL,"
        " opted_out_at REAL NOT NULL,"
        " message_id INTEGER,"
        " source TEXT NOT NULL,"
        " text TEXT NOT NULL DEFAULT '',"
        " PRIMARY KEY (account, number));"
        "INSERT INTO optout_numbers_v2 (account, number, opted_out_at, message_id, source, text)"
        " SELECT 'default', number, opted_out_at, message_id, source, text FROM optout_numbers;"
        "DROP TABLE optout_numbers;"
        "ALTER TABLE optout_numbers_v2 RENAME TO optout_numbers;"
        "CREATE INDEX optout_numbers_number ON optout_numbers (number)",
        "postgresql": "ALTER TABLE optout_numbers"
        " ADD COLUMN account TEXT NOT NULL DEFAULT 'default';"
        "ALTER TABLE optout_numbers DROP CONSTRAINT optout_numbers_pkey;"
        "ALTER TABLE optout_numbers ADD PRIMARY KEY (account, number);"
        "CREATE INDEX optout_numbers_number ON optout_numbers (number)",
    },
)
SHARED: Final = "*"
"""The account of the rows of the list every account shares."""


def _scope(app: App, account: str | None) -> str:
    """The account a number goes on the list under: its own, or "*" when shared."""
    if app.settings.accounts.shared_optouts:
        return SHARED
    return account or app.account


def _of(app: App, account: str | None) -> tuple[str, tuple[str, ...]]:
    """Which rows count for ``account``: with a shared list, every row (a number opted out
    anywhere is out everywhere); else the account's and the shared ones."""
    if app.settings.accounts.shared_optouts:
        return "1 = 1", ()
    return "account IN (?, ?)", (account or app.account, SHARED)


@dataclass(frozen=True)
class OptoutSettings:
    words: tuple[str, ...]
    """Unsubscribe words, normalised: the whole message or its first word."""
    anywhere_words: tuple[str, ...]
    """Unsubscribe words, normalised, recognised anywhere in a message of up to SHORT
    characters ("我要退订", "请帮我退订谢谢")."""
    resubscribe_words: tuple[str, ...]
    confirmation: str
    """Sent once when a number opts out; empty = none."""
    resubscribed: str


def starts_with_word(key: str, words: tuple[str, ...]) -> str | None:
    """The word a normalised text is, or starts with before punctuation or a space."""
    for word in words:
        if key == word or (key.startswith(word) and is_separator(key[len(word)])):
            return word
    return None


def _words(table: Table, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    words = []
    for word in table.get_str_list(key, list(default)):
        normal = normalise(word)
        if not normal:
            table.error(key, f"must not contain an empty word, got {word!r}")
        elif normal not in words:
            words.append(normal)
    # Longest first, so that "STOP ALL" is tried before "STOP".
    return tuple(sorted(words, key=len, reverse=True))


def parse(table: Table) -> OptoutSettings:
    words = _words(table, "words", DEFAULT_WORDS)
    anywhere = _words(table, "anywhere_words", DEFAULT_ANYWHERE)
    resubscribe = _words(table, "resubscribe_words", DEFAULT_RESUBSCRIBE)
    for word in anywhere:
        if word.isascii():
            table.error(
                "anywhere_words",
                f"{word!r} would be found inside other words (as 'stop' in 'nonstop'):"
                " put Latin words in optout.words, which match the first word only",
            )
    for word in sorted(set(words) & set(resubscribe)):
        table.error("resubscribe_words", f"{word!r} is also an unsubscribe word (optout.words)")
    for word in resubscribe:
        inside = [other for other in anywhere if other in word]
        if inside:
            table.error(
                "resubscribe_words",
                f"{word!r} contains {inside[0]!r} (optout.anywhere_words): it would unsubscribe",
            )
    return OptoutSettings(
        words=words,
        anywhere_words=anywhere,
        resubscribe_words=resubscribe,
        confirmation=table.get_str("confirmation", DEFAULT_CONFIRMATION),
        resubscribed=table.get_str("resubscribe_confirmation", DEFAULT_RESUBSCRIBED),
    )


# -- the list ------------------------------------------------------------------------------
# The table is created by responder_startup and by the optout command. A dry run
# (simulate, replay, status) on a store the daemon never prepared has no table: reads take
# that as an empty list, and dry runs write nothing.

SIMULATED: Final = StashKey[dict[str, bool]]()
"""Opt-outs (True) and resubscriptions (False) seen under dry_run, so that a simulated
conversation remembers them while the store stays untouched."""


def _create_table(app: App) -> None:
    app.store.migrate(PLUGIN, _SCHEMA)


def _entry(app: App, number: str, account: str | None = None) -> Any:
    """The list's row for a number; under dry_run only one made before the app's now."""
    where, params = _of(app, account)
    if app.dry_run:
        rows = app.store.query(
            f"SELECT * FROM optout_numbers WHERE number = ? AND {where} AND opted_out_at <= ?",
            (number, *params, app.time()),
            missing_ok=True,
        )
    else:
        rows = app.store.query(
            f"SELECT * FROM optout_numbers WHERE number = ? AND {where}",
            (number, *params),
            missing_ok=True,
        )
    return rows[0] if rows else None


def is_opted_out(app: App, number: str, account: str | None = None) -> bool:
    """Whether ``number`` is on the suppression list of ``account`` (default: the app's;
    public: relays mark such messages).

    Under ``app.dry_run`` (simulate, replay) it answers as of ``app.time()`` and counts
    the opt-outs the simulation itself has seen. A store without the list has nobody on it.
    """
    number = canonical_number(number)
    if not number:
        return False
    if not app.dry_run:  # the before-send check of every number sent to: kept lean
        where, params = _of(app, account)
        rows = app.store.query(
            f"SELECT 1 FROM optout_numbers WHERE number = ? AND {where}",
            (number, *params),
            missing_ok=True,
        )
        return bool(rows)
    simulated = app.stash.get(SIMULATED, {}).get(number)
    if simulated is not None:
        return simulated
    return _entry(app, number, account) is not None


def add_number(
    app: App,
    number: str,
    *,
    message_id: int | None,
    source: str,
    text: str,
    who: str = "",
    account: str | None = None,
) -> bool:
    """Put a number on ``account``'s list (default: the app's; the shared list under
    ``accounts.shared_optouts``); False when it was on it already.

    Emits ``optout.added`` when it was not (``who``: who asked, default ``source``)."""
    number = canonical_number(number)
    now = app.time()
    scope = _scope(app, account)
    account = account or app.account
    if _entry(app, number, account) is not None:
        return False
    with app.store.transaction() as tx:
        cursor = tx.execute(
            "INSERT INTO optout_numbers"
            " (account, number, opted_out_at, message_id, source, text)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account, number) DO NOTHING",
            (scope, number, now, message_id, source, text),
        )
        added = cursor.rowcount > 0
    if added:
        app.emit(
            Event(
                type=ADDED,
                account=account,
                number=number,
                data={
                    "source": source,
                    "who": who or source,
                    "why": text,
                    "message_id": message_id,
                },
                key=f"{message_id}:{ADDED}"
                if message_id is not None
                else f"{number}:{now}:{ADDED}",
            )
        )
    return added


def remove_number(app: App, number: str, account: str | None = None) -> bool:
    """Take a number off ``account``'s list (default: the app's; the shared list: off
    every account's); False when it was not on it."""
    where, params = _of(app, account)
    with app.store.transaction() as tx:
        cursor = tx.execute(
            f"DELETE FROM optout_numbers WHERE number = ? AND {where}",
            (canonical_number(number), *params),
        )
        return cursor.rowcount > 0


# -- hooks ---------------------------------------------------------------------------------


def classify(settings: OptoutSettings, text: str) -> tuple[str, str] | None:
    """("unsubscribe" or "resubscribe", the word) when the text is such a word, else None.

    ``words`` count as the whole message or its first word; ``anywhere_words`` anywhere
    in a short message. Doubt counts as an unsubscribe (docs/keywords.md says why).
    """
    key = normalise(text)
    word = starts_with_word(key, settings.words)
    if word is not None:
        return "unsubscribe", word
    if len(key) <= SHORT:
        for word in settings.anywhere_words:
            if word in key:
                return "unsubscribe", word
    word = starts_with_word(key, settings.resubscribe_words)
    if word is not None:
        return "resubscribe", word
    return None


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


# tryfirst: the other plugins' startup may ask the list (app.stash[OPTED_OUT]) already.
@hookimpl(tryfirst=True)
def responder_startup(app: App) -> None:
    if not app.dry_run:
        _create_table(app)

    def opted_out(number: str) -> bool:
        return is_opted_out(app, number)

    app.stash[OPTED_OUT] = opted_out


# tryfirst: an unsubscribe word is answered by the confirmation, not by a keyword rule or a
# user's catch-all plugin. A user plugin can still take over with its own tryfirst
# implementation (user plugins are registered later, so theirs is called first).
@hookimpl(tryfirst=True)
def responder_reply(app: App, message: Message) -> Reply | None:
    settings: OptoutSettings = app.plugin_config(PLUGIN)
    found = classify(settings, message.text)
    number = canonical_number(message.src)
    if found is None or not number:
        return None
    kind, word = found
    meta = (MARK, ("normalised", normalise(message.text)), ("rule", f"optout {kind}"))
    if kind == "unsubscribe":
        simulated = app.stash.get(SIMULATED, {}).get(number) if app.dry_run else None
        entry = _entry(app, number, message.account)
        earlier = entry is not None and entry["message_id"] != message.id
        if simulated is not None:
            earlier = simulated
        if earlier:
            why = f'"{word}" from a number already opted out: no second confirmation'
            return Reply(text="", meta=(*meta, ("why", why)))
        if app.dry_run:
            app.stash.setdefault(SIMULATED, {})[number] = True
        why = f'"{word}" is an unsubscribe word: the number is put on the opt-out list'
        return Reply(text=settings.confirmation, meta=(*meta, ("why", why)))
    if not is_opted_out(app, number, message.account):
        return None  # not opted out: the word may be an ordinary keyword
    if app.dry_run:
        app.stash.setdefault(SIMULATED, {})[number] = False
    why = f'"{word}" is a resubscribe word: the number is taken off the opt-out list'
    return Reply(text=settings.resubscribed, meta=(*meta, ("why", why)))


# tryfirst: the observers after it (a relay) see the list as this message left it.
@hookimpl(tryfirst=True)
def responder_observe(app: App, message: Message) -> None:
    """Record opt-outs for every message, answered or dropped (idempotent per message)."""
    settings: OptoutSettings = app.plugin_config(PLUGIN)
    found = classify(settings, message.text)
    if app.dry_run or found is None or not canonical_number(message.src):
        return
    if found[0] == "unsubscribe":
        if add_number(
            app,
            message.src,
            message_id=message.id,
            source="sms",
            text=message.text,
            who=message.src,
            account=message.account,
        ):
            app.log.info("opted_out", src=message.src, message_id=message.id, word=found[1])
    elif remove_number(app, message.src, message.account):
        app.log.info("resubscribed", src=message.src, message_id=message.id, word=found[1])


@hookimpl(trylast=True)
def responder_before_send(app: App, message: Message, reply: Reply) -> Reply | Veto | None:
    recipients = reply.to or (message.src,)
    if reply.plugin == PLUGIN and MARK in reply.meta and recipients == (message.src,):
        return None
    suppressed = [number for number in recipients if is_opted_out(app, number, message.account)]
    if not suppressed:
        return None
    if len(suppressed) == len(recipients):
        return Veto(VETO_REASON)
    return dataclasses.replace(
        reply, to=tuple(number for number in recipients if number not in suppressed)
    )


@hookimpl(trylast=True)
def responder_status(app: App) -> StatusSection | None:
    counted = app.store.query("SELECT COUNT(*) FROM optout_numbers", missing_ok=True)
    numbers = counted[0][0] if counted else 0
    # Stores before schema 4 have "optout: opted out" as the reason: counted too.
    suppressed = app.store.counts_by_reason(PLUGIN).get(VETO_REASON, 0)
    return StatusSection(
        title=PLUGIN,
        figures=(("opted-out numbers", numbers), ("replies suppressed", suppressed)),
    )


@hookimpl(trylast=True)
def responder_check(app: App) -> list[str]:
    """``responder check`` warnings about the two confirmations."""
    settings: OptoutSettings | None = app.plugin_config(PLUGIN)
    if settings is None:
        return []
    return [
        *reply_warnings(app, f"{PLUGIN}.confirmation", settings.confirmation),
        *reply_warnings(app, f"{PLUGIN}.resubscribe_confirmation", settings.resubscribed),
    ]


# -- command line --------------------------------------------------------------------------


def _setup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "add", "remove"))
    parser.add_argument("number", nargs="?", help="the phone number (add, remove)")


def _run(app: App, args: argparse.Namespace) -> int:
    _create_table(app)  # a command runs without responder_startup
    if args.action == "list":
        rows = app.store.query("SELECT * FROM optout_numbers ORDER BY opted_out_at, number")
        for row in rows:
            when = datetime.fromtimestamp(row["opted_out_at"], PLATFORM_TZ)
            how = "added by hand" if row["source"] == "manual" else f"sms {row['text']!r}"
            print(f"{row['number']}  {when:%Y-%m-%d %H:%M}  {how}")
        if not rows:
            print("no numbers on the opt-out list")
        return 0
    number = number_argument(args.number)
    if number is None:
        print(f"optout {args.action}: give a phone number, got {args.number!r}", file=sys.stderr)
        return 2
    if args.action == "add":
        added = add_number(
            app, number, message_id=None, source="manual", text="", who="responder optout add"
        )
        print(f"{number} {'added to' if added else 'already on'} the opt-out list")
        return 0
    removed = remove_number(app, number)
    print(f"{number} {'removed from' if removed else 'was not on'} the opt-out list")
    return 0 if removed else 1


@hookimpl(trylast=True)
def responder_register_commands(commands: CommandRegistry) -> None:
    commands.add(
        "optout",
        help="list the opt-out (退订) list, or add or remove a number by hand",
        setup=_setup,
        run=_run,
    )


# -- HTTP API ------------------------------------------------------------------------------

_OPTOUT_SCHEMA: Final = {
    "type": "object",
    "required": ["number", "opted_out_at", "source"],
    "properties": {
        "number": {"type": "string"},
        "opted_out_at": {"type": "string", "description": "ISO 8601, platform time"},
        "source": {"type": "string", "description": '"sms", "manual" or "api:<token>"'},
        "text": {"type": "string", "description": "the SMS that opted out"},
    },
}


def _json(row: Any) -> dict[str, Any]:
    when = datetime.fromtimestamp(row["opted_out_at"], PLATFORM_TZ).isoformat(timespec="seconds")
    return {
        "number": row["number"],
        "opted_out_at": when,
        "source": row["source"],
        "text": row["text"],
    }


@hookimpl(trylast=True)
def responder_api(api: ApiRoutes) -> None:
    """GET /v1/optouts, GET, PUT and DELETE /v1/optouts/{number}."""
    from fastapi import Path, Query

    may_read = api.require("read")
    may_admin = api.require("admin")

    listing = {
        "type": "object",
        "required": ["optouts", "next_cursor"],
        "properties": {
            "optouts": {"type": "array", "items": _OPTOUT_SCHEMA},
            "next_cursor": {"type": ["string", "null"]},
        },
    }

    @api.router.get(
        "/optouts",
        response_model=None,
        responses={200: api.answer(listing, "the list, by number"), **api.responses(404, 422)},
        summary="The opt-out (退订) list, paged by number",
        tags=["optouts"],
    )
    def list_optouts(
        token: Any = may_read,
        cursor: str = Query("", max_length=40, description="the previous page's next_cursor"),
        limit: int = Query(100, ge=1, le=1000),
        account: str | None = Query(
            None, max_length=32, description="the account's list; default: the only one"
        ),
    ) -> Any:
        target = api.account(token, account)
        where, params = _of(target, target.account)
        rows = target.store.query(
            f"SELECT * FROM optout_numbers WHERE {where} AND number > ?"
            " ORDER BY number, account LIMIT ?",
            (*params, cursor, limit + 1),
            missing_ok=True,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "optouts": [_json(row) for row in rows],
            "next_cursor": rows[-1]["number"] if more and rows else None,
        }

    @api.router.get(
        "/optouts/{number}",
        response_model=None,
        responses={200: api.answer(_OPTOUT_SCHEMA, "on the list"), **api.responses(404, 422)},
        summary="Whether a number is on the opt-out list",
        tags=["optouts"],
    )
    def get_optout(
        number: str = Path(max_length=40),
        token: Any = may_read,
        account: str | None = Query(
            None, max_length=32, description="the account's list; default: the only one"
        ),
    ) -> Any:
        target = api.account(token, account)
        row = _entry(target, api.number(number), target.account)
        if row is None:
            raise ApiError(404, "not_found", f"{number} is not on the opt-out list")
        return _json(row)

    changed = {
        "type": "object",
        "required": ["number", "changed"],
        "properties": {"number": {"type": "string"}, "changed": {"type": "boolean"}},
    }

    @api.router.put(
        "/optouts/{number}",
        response_model=None,
        responses={200: api.answer(changed, "on the list now"), **api.responses(404, 422)},
        summary="Put a number on the opt-out list",
        tags=["optouts"],
    )
    def put_optout(
        number: str = Path(max_length=40),
        token: Any = may_admin,
        account: str | None = Query(
            None, max_length=32, description="the account's list; default: the only one"
        ),
    ) -> Any:
        found = api.number(number)
        target = api.account(token, account)

        def add(app: App) -> bool:
            _create_table(app)
            return add_number(
                app,
                found,
                message_id=None,
                source=f"api:{token.name}",
                text="",
                account=app.account,
            )

        return {"number": found, "changed": api.run(add, app=target)}

    @api.router.delete(
        "/optouts/{number}",
        response_model=None,
        responses={200: api.answer(changed, "off the list now"), **api.responses(404, 422)},
        summary="Take a number off the opt-out list",
        tags=["optouts"],
    )
    def delete_optout(
        number: str = Path(max_length=40),
        token: Any = may_admin,
        account: str | None = Query(
            None, max_length=32, description="the account's list; default: the only one"
        ),
    ) -> Any:
        found = api.number(number)
        target = api.account(token, account)
        if not api.run(lambda app: remove_number(app, found, app.account), app=target):
            raise ApiError(404, "not_found", f"{found} is not on the opt-out list")
        return {"number": found, "changed": True}
