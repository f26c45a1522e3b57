"""The ``responder`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from responder import __version__, broadcast, history, outbox_command
from responder.account import AccountStatus
from responder.accounts import account_settings, load_accounts
from responder.app import App, build_app
from responder.commands import CommandRegistry
from responder.config import ConfigError, Settings, load_settings
from responder.gateway import AccountState, BalanceNotOffered, GatewayClient, GatewayError
from responder.logs import configure_logging
from responder.models import PLATFORM_TZ
from responder.plugin_host import PluginHost
from responder.store import Store, StoreBackend, StoreError, open_store, store_name

CONFIG_ENV = "RESPONDER_CONFIG"
DEFAULT_CONFIG = "/etc/responder/config.toml"
EXIT_CONFIG = 2


def _default_config() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV}, then {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--account",
        default=None,
        metavar="ID",
        help="the account (an account file's stem) when the configuration has several",
    )


def _config_path(args: argparse.Namespace) -> str:
    return args.config or _default_config()


def _problems(problems: Sequence[str]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG


def _quiet_logs(settings: Settings | None = None) -> None:
    configure_logging(
        format="console",
        level="warning",
        secrets=settings.secrets() if settings else (),
        encodings=(settings.gateway.encoding,) if settings else ("gbk",),
    )


class CommandExit(Exception):
    """Ends a command with ``code``: what went wrong was printed already."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class NoStore(Enum):
    """What ``opened_app`` does when the configured store file does not exist yet."""

    CREATE = "create"
    """Make it (send, plugin commands)."""
    IN_MEMORY = "in memory"
    """Use an empty one in memory: no opt-outs, no history (simulate)."""
    REFUSE = "refuse"
    """Print why the command needs one, and exit 1 (status, replay)."""


def _settings(args: argparse.Namespace, *, need_password: bool = False) -> Settings:
    """The configuration of ``-c``, with the logs quiet and its secrets redacted from them;
    CommandExit(2) after printing every problem."""
    try:
        settings = account_settings(
            _config_path(args), getattr(args, "account", None), need_password=need_password
        )
    except ConfigError as err:
        raise CommandExit(_problems(err.problems)) from None
    _quiet_logs(settings)
    return settings


@contextmanager
def opened_app(
    args: argparse.Namespace,
    *,
    need_password: bool = False,
    dry_run: bool = True,
    no_store: NoStore = NoStore.CREATE,
    needs_store: str = "",
) -> Iterator[App]:
    """The app of the ``-c`` configuration with its store, both closed on the way out.

    A configuration problem is printed and ends the command (CommandExit, exit 2); so
    does a missing store under ``NoStore.REFUSE`` (exit 1, printing ``needs_store``).
    ``dry_run``: plugins must change nothing (simulate, replay, status).
    """
    settings = _settings(args, need_password=need_password)
    path = settings.store.path
    store: StoreBackend
    if settings.store.url:  # PostgreSQL: the database is there, or opening it fails
        store = open_store(settings.store)
    else:
        if not path.exists() and no_store is NoStore.REFUSE:
            print(f"{path}: no store yet: {needs_store}", file=sys.stderr)
            raise CommandExit(1)
        store = Store(":memory:" if not path.exists() and no_store is NoStore.IN_MEMORY else path)
    try:
        try:
            app = build_app(settings, store=store, dry_run=dry_run)
        except ConfigError as err:
            raise CommandExit(_problems(err.problems)) from None
        try:
            yield app
        finally:
            app.close()
    finally:
        store.close()


# -- commands --------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """Every problem (exit 2), core and plugins, in one run; warnings alone exit 0."""
    from responder.checks import check_configuration

    report = check_configuration(_config_path(args))
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if report.problems:
        return _problems(report.problems)
    print("ok")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from responder.sandbox import serve

    serve(
        args.host,
        args.port,
        name=args.name,
        password=args.password,
        encoding=args.encoding,
        min_read_interval=args.interval,
        accounts=dict(item.partition("=")[::2] for item in args.accounts),
        any_account=args.any_account,
    )
    return 0


def cmd_send(args: argparse.Namespace) -> int:
    """One SMS by hand, through the before-send hooks, signature and splitting of a reply
    (``--raw``: exactly as given); every request is kept in the store (responder.manual)."""
    schedule = None
    if args.schedule:
        try:
            schedule = datetime.strptime(args.schedule, "%Y%m%d%H%M").replace(tzinfo=PLATFORM_TZ)
        except ValueError:
            print(f"--schedule: must be YYYYMMDDHHMM, got {args.schedule!r}", file=sys.stderr)
            return EXIT_CONFIG
    numbers = [number.strip() for number in args.numbers if number.strip()]
    if not numbers:
        print("send: no recipient numbers", file=sys.stderr)
        return EXIT_CONFIG
    with opened_app(args, need_password=True, dry_run=False) as app:
        return _send_by_hand(app, args, numbers, schedule)


def _send_by_hand(
    app: App, args: argparse.Namespace, numbers: list[str], schedule: datetime | None
) -> int:
    from responder import manual

    if args.raw:
        plan = manual.raw_plan(app, numbers, args.message, sender=args.sender)
    else:
        plan = manual.plan(app, numbers, args.message, sender=args.sender)
        manual.record_suppressed(app, plan, args.message)
    if plan.problem:
        print(f"send: {plan.problem}", file=sys.stderr)
        return EXIT_CONFIG
    for item in plan.suppressed:
        print(f"suppressed: {item.number} ({item.reason})")
    if plan.truncated:
        print("warning: the text was cut to replies.max_parts SMS", file=sys.stderr)
    if plan.replaced:
        print(
            f"warning: {plan.replaced} character(s) the gateway encoding cannot carry"
            " were replaced",
            file=sys.stderr,
        )
    if not plan.requests:
        if not plan.suppressed:
            print("send: the text is empty", file=sys.stderr)
            return EXIT_CONFIG
        print("nothing sent: every number was suppressed")
        return 0
    ok = True
    for index, request in enumerate(plan.requests, start=1):
        if len(plan.requests) > 1:
            print(
                f"request {index} of {len(plan.requests)}: part {request.part}/{request.parts}"
                f" to {len(request.numbers)} number(s)"
            )
        outcome = manual.send(app, request, raw=args.raw, schedule=schedule)
        if outcome.result is None:
            print(f"send failed: {outcome.error}", file=sys.stderr)
            return 1
        result = outcome.result
        print(f"ok:       {result.ok}")
        print(f"num:      {result.num}")
        print(f"accepted: {', '.join(result.accepted) or '-'}")
        print(f"refused:  {', '.join(result.refused) or '-'}")
        print(f"errid:    {result.errid}")
        print(f"err:      {result.err}")
        ok = ok and result.ok
    return 0 if ok else 1


def _has_accounts(path: str) -> bool:
    """Whether the configuration at ``path`` names account files (``[accounts] include``)."""
    config = load_accounts(path, need_password=False)
    return config.main is not None and bool(config.main.accounts.include)


def cmd_run(args: argparse.Namespace) -> int:
    from responder.daemon import Daemon

    path = _config_path(args)
    daemon = Daemon(path)  # one account ("default"), or each of [accounts] include
    try:
        code = daemon.run()
    except ConfigError as err:
        return _problems(err.problems)
    except StoreError as err:
        print(f"{path}: store.path: {err}", file=sys.stderr)
        return 1
    # Daemon.stop joined the workers and jobs with their timeouts; a thread still in a hung
    # request is a daemon thread, which does not hold the interpreter open.
    return code


def cmd_cluster_status(args: argparse.Namespace) -> int:
    from responder.ha import cluster_command

    args.config = _config_path(args)
    return cluster_command(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from responder.demo import run_demo

    return run_demo(interval=args.interval)


def cmd_simulate(args: argparse.Namespace) -> int:
    from responder.simulation import print_outcome, simulate, simulate_file, simulated_message

    if args.file and args.text is not None:
        print("simulate: give a text or --file, not both", file=sys.stderr)
        return EXIT_CONFIG
    texts = [args.text] if args.text is not None else None
    # Without a store yet (no opt-outs, no history), an empty one in memory will do.
    with opened_app(args, no_store=NoStore.IN_MEMORY) as app:
        if args.file:
            return simulate_file(app, args, args.dst or _service_dst(app))
        if texts is None:
            if not sys.stdin.isatty():
                texts = [line.rstrip("\n") for line in sys.stdin]
            else:
                return _interactive(app, args)
        for text in texts:
            outcome = simulate(
                app, simulated_message(text, args.src, args.dst or _service_dst(app), app.account)
            )
            if args.json:
                print(json.dumps(outcome.as_dict(), ensure_ascii=False))
            else:
                print_outcome(outcome)
        return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from responder.simulation import parse_since, replay

    try:
        since = parse_since(args.since)
    except ValueError:
        print(f"--since: must be a date such as 2026-11-01, got {args.since!r}", file=sys.stderr)
        return EXIT_CONFIG
    with opened_app(args, no_store=NoStore.REFUSE, needs_store="nothing to replay") as app:
        return replay(app, since, args)


def _service_dst(app: App) -> str:
    return app.settings.gateway.sender or ""


def _interactive(app: App, args: argparse.Namespace) -> int:
    from responder.simulation import print_outcome, simulate, simulated_message

    print("Type a message as a customer would; an empty line or Ctrl-D ends.")
    while True:
        try:
            text = input("> ")
        except EOFError:
            return 0
        if not text:
            return 0
        message = simulated_message(text, args.src, args.dst or _service_dst(app), app.account)
        print_outcome(simulate(app, message))


def _age(moment: float | None, now: float) -> str:
    if moment is None:
        return "never"
    when = datetime.fromtimestamp(moment, PLATFORM_TZ)
    return f"{now - moment:.0f} s ago ({when:%Y-%m-%d %H:%M:%S})"


def cmd_store_copy(args: argparse.Namespace) -> int:
    """Copy a SQLite store into an empty PostgreSQL database (``responder store copy``)."""
    from responder.config import STORE_PASSWORD_ENV, redact_url
    from responder.store.postgres import is_postgres_url

    shown = redact_url(args.to)
    if not is_postgres_url(args.to):
        print(f"--to must be a postgresql:// URL, got {shown!r}", file=sys.stderr)
        return EXIT_CONFIG
    source = args.source
    if source is None:
        settings = _settings(args)
        source = settings.store.path
    if not Path(source).exists():
        print(f"{source}: no store there to copy", file=sys.stderr)
        return 1
    password = os.environ.get(STORE_PASSWORD_ENV, "")
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            print(f"{args.password_file}: cannot read it: {err.strerror}", file=sys.stderr)
            return 1
    from responder.store.copy import copy_store

    copied = copy_store(
        Path(source),
        args.to,
        password=password,
        progress=lambda c: print(
            f"{c.table}: {c.rows} rows" + (" (table created)" if c.created else "")
        ),
    )
    total = sum(c.rows for c in copied)
    print(f"copied {total} rows of {len(copied)} tables from {source} to {shown}")
    print(f'next: set [store] url = "{shown}" in the configuration, then restart')
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if args.account is None and _has_accounts(path):
        return _accounts_status(path, args)
    with opened_app(args, no_store=NoStore.REFUSE, needs_store="the daemon has not run") as app:
        return _print_status(app, args)


def _accounts_status(path: str, args: argparse.Namespace) -> int:
    """One line per account (``--account ID``: everything about one); exit 1 when one is
    unhealthy."""
    import time

    from responder.ha import lease_line

    config = load_accounts(path, need_password=False)
    if config.problems or config.main is None:
        return _problems(config.problems)
    _quiet_logs(config.main)
    settings = config.main.store
    if not settings.url and not settings.path.exists():
        print(f"{settings.path}: no store yet: the daemon has not run", file=sys.stderr)
        return 1
    store = open_store(settings)
    now = time.time()
    records: dict[str, dict[str, Any]] = {}
    try:
        for account in [*config.accounts, *config.rejected]:
            state = AccountStatus.load(store, account)
            last_ok = store.last_read_ok_at(account=account)
            stale = last_ok is None or now - last_ok > args.max_age
            records[account] = {
                "account": state.as_dict(),
                "rejected": list(config.rejected.get(account, ())),
                "last_read_ok_at": last_ok,
                "outbox_depth": store.outbox_depth(account=account),
                "lease": lease_line(store, account),
                "healthy": account in config.accounts
                and not stale
                and state.state is AccountState.OK,
            }
    finally:
        store.close()
    if args.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))
    else:
        print(f"store:    {store_name(settings)}")
        for account, record in records.items():
            state = record["account"]["state"]
            shown = "REJECTED (its file is broken)" if record["rejected"] else state
            print(
                f"{account:<20} {shown:<14} last good read {_age(record['last_read_ok_at'], now)};"
                f" outbox {record['outbox_depth']}"
                + (f"; lease {record['lease']}" if record["lease"] else "")
            )
    healthy = all(record["healthy"] for record in records.values())
    return 0 if healthy else 1


def _print_status(app: App, args: argparse.Namespace) -> int:
    import time

    from responder.ha import lease_line
    from responder.metrics import store_figures

    settings = app.settings
    status = app.store.status()
    figures = store_figures(app.store)
    sections = app.status_sections()
    account = AccountStatus.load(app.store, app.account)
    now = time.time()
    last_ok = app.store.last_read_ok_at(account=app.account)
    stale = last_ok is None or now - last_ok > args.max_age
    refused = account.state is not AccountState.OK
    if args.json:
        record = status_record(app, max_age=args.max_age, now=now)
        print(json.dumps(record, ensure_ascii=False, indent=2))
    else:
        print(f"store:          {store_name(settings.store)}")
        lease = lease_line(app.store, app.account)
        if lease:
            print(f"lease:          {lease}")
        if app.account != "default":
            print(f"account id:     {app.account}")
        for line in _account_lines(account, settings, now):
            print(line)
        print(f"messages:       {_counts(status.messages)}")
        print(f"outbox:         {_counts(status.outbox)} (depth {figures.outbox_depth})")
        print(f"dead letters:   {figures.dead_letters}")
        sends = {f"{res} errid={errid or '-'}": n for (res, errid), n in figures.sends.items()}
        print(f"sends:          {_counts(sends)}")
        print(f"uncertain:      {status.uncertain_sends} send(s) whose outcome was unknown")
        print(f"duplicates:     {status.duplicates_dropped} message(s) read twice, dropped")
        if status.reads_held:
            print(f"READS HELD:     {status.reads_held}")
        print(f"last good read: {_age(last_ok, now)}")
        print(f"last read try:  {_age(app.store.last_read_at(account=app.account), now)}")
        print(f"last message:   {_age(status.last_message_at, now)}")
        print(f"last sent:      {_age(status.last_sent_at, now)}")
        if status.reasons:
            print("not answered, by reason:")
            for reason, count in sorted(status.reasons.items(), key=lambda item: -item[1]):
                print(f"  {count:>6}  {reason}")
        for section in sections:
            print(f"{section.title}:")
            for name, value in section.figures:
                print(f"  {name}: {value}")
        if stale:
            print(f"unhealthy: no successful read in the last {args.max_age:.0f} s")
        if refused:
            print(f"unhealthy: the account is {account.state.label}")
    return 1 if stale or refused else 0


def status_record(app: App, *, max_age: float, now: float) -> dict[str, Any]:
    """What ``responder status --json`` prints (and GET /v1/status answers)."""
    from responder.metrics import store_figures

    status = app.store.status()
    figures = store_figures(app.store)
    account = AccountStatus.load(app.store, app.account)
    last_ok = app.store.last_read_ok_at(account=app.account)
    stale = last_ok is None or now - last_ok > max_age
    refused = account.state is not AccountState.OK
    return asdict(status) | {
        "outbox_depth": figures.outbox_depth,
        "dead_letters": figures.dead_letters,
        "sends": [
            {"result": result, "errid": errid, "count": count}
            for (result, errid), count in sorted(figures.sends.items())
        ],
        "plugins": {s.title: dict(s.figures) for s in app.status_sections()},
        "account": account.as_dict(),
        "healthy": not stale and not refused,
    }


def _account_lines(account: AccountStatus, settings: Settings, now: float) -> list[str]:
    """The account's state and balance, as the daemon last judged them."""
    state = account.state.label if account.state is AccountState.OK else account.state.label.upper()
    line = f"account:        {state} since {_age(account.since, now)}"
    if account.reason:
        line += f": {account.reason}"
    if not account.balance_offered:
        balance = "not offered by the provider"
    elif account.balance is None:
        balance = "not known yet"
    else:
        balance = f"{account.balance:g} (checked {_age(account.balance_at, now)})"
        if account.low_balance:
            threshold = settings.gateway.low_balance
            balance += "; LOW: under gateway.low_balance" + (
                f" ({threshold:g})" if threshold is not None else ""
            )
    return [line, f"balance:        {balance}"]


def cmd_balance(args: argparse.Namespace) -> int:
    """The balance from getfee.aspx, times gateway.balance_scale; exit 1 when unknown."""
    settings = _settings(args, need_password=True)
    with GatewayClient(settings.gateway) as client:
        try:
            balance = client.balance()
        except BalanceNotOffered as err:
            print(f"balance: not offered by the provider ({err})", file=sys.stderr)
            return 1
        except GatewayError as err:
            print(f"balance: cannot be read: {err}", file=sys.stderr)
            return 1
    print(f"balance: {balance:g}")
    threshold = settings.gateway.low_balance
    if threshold is not None and balance < threshold:
        print(f"low: under gateway.low_balance ({threshold:g})")
    return 0


def unit_file() -> Path:
    """The systemd unit shipped in the package (the source tree's copy when run from it)."""
    here = Path(__file__).resolve().parent
    packaged = here / "systemd" / "responder.service"
    return packaged if packaged.exists() else here.parent / "systemd" / "responder.service"


def cmd_unit(args: argparse.Namespace) -> int:
    path = unit_file()
    if not path.exists():
        print(f"{path}: the systemd unit is missing from this installation", file=sys.stderr)
        return 1
    print(path if args.path else path.read_text(encoding="utf-8"), end="\n" if args.path else "")
    return 0


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {count}" for state, count in sorted(counts.items())) or "none"


def cmd_plugins(args: argparse.Namespace) -> int:
    settings = None
    path = _config_path(args)
    if args.config or Path(path).exists():
        try:
            settings = load_settings(path, need_password=False)
        except ConfigError as err:
            return _problems(err.problems)
    host = PluginHost(settings)
    for info in host.infos:
        print(f"{info.name}  ({info.source}: {info.origin})")
        for hook in info.hooks:
            print(f"    {hook}")
    for warning in host.warnings:
        print(f"warning: {warning.text}", file=sys.stderr)
    for problem in host.problems:
        print(problem, file=sys.stderr)
    return EXIT_CONFIG if host.problems else 0


# -- parser ----------------------------------------------------------------------------


def plugin_commands() -> CommandRegistry:
    """Commands added by built-in and entry-point plugins."""
    registry = CommandRegistry(reserved=CORE_COMMANDS)
    host = PluginHost(None, include_configured=False)
    for plugin, function in host.implementations("responder_register_commands"):
        registry.plugin = plugin
        try:
            function(commands=registry)
        except ValueError as err:  # a name already taken: the plugin's command is left out
            print(f"plugin {plugin!r}: {err}", file=sys.stderr)
    return registry


CORE_COMMANDS = (
    "demo", "run", "check", "sandbox", "send", "simulate", "replay", "status", "unit", "plugins",
    "balance", "broadcast", "history", "cluster",
)  # fmt: skip


def build_parser(registry: CommandRegistry | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="responder",
        description="Answer SMS replies read from a 企信通 gateway account, through plugins.",
    )
    parser.add_argument("--version", action="version", version=f"sms-responder {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="run the whole pipeline against the built-in simulator")
    p.add_argument("--interval", type=float, default=0.5, help="read interval in seconds")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("run", help="run the daemon in the foreground")
    _add_config(p)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("check", help="validate a configuration file")
    _add_config(p)
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser("sandbox", help="run the gateway simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8800)
    p.add_argument("--name", default="demo", help="account name it accepts")
    p.add_argument("--password", default="demo", help="password it accepts")
    p.add_argument("--encoding", default="gbk")
    p.add_argument("--interval", type=float, default=5.0, help="minimum read interval")
    p.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="NAME=PASSWORD",
        dest="accounts",
        help="one more account it accepts (repeat for several)",
    )
    p.add_argument(
        "--any-account", action="store_true", help="accept any account name and password"
    )
    p.set_defaults(handler=cmd_sandbox)

    p = sub.add_parser(
        "send", help="send an SMS by hand, as a reply would go, and print the gateway's answer"
    )
    _add_config(p)
    p.add_argument("numbers", nargs="+", metavar="NUMBER")
    p.add_argument("-m", "--message", required=True, help="the text")
    p.add_argument("--schedule", help="send later: YYYYMMDDHHMM, platform time")
    p.add_argument("--sender", help="digits appended to the service code")
    p.add_argument(
        "--raw",
        action="store_true",
        help="send the text exactly as given: no opt-out list, guard or other before-send"
        " hooks, no signature, no splitting (logged as a warning)",
    )
    p.set_defaults(handler=cmd_send)

    p = sub.add_parser("simulate", help="run a text through the plugins, sending nothing")
    _add_config(p)
    p.add_argument("text", nargs="?", help="the message (read from stdin or a prompt if absent)")
    p.add_argument("--from", dest="src", default="13800138000", help="the sender's number")
    p.add_argument("--to", dest="dst", default="", help="the number it was sent to (dst)")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--file", metavar="CSV", help="a recorded conversation: src,text per line")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("replay", help="re-run stored messages through the current rules")
    _add_config(p)
    p.add_argument("--since", required=True, help="from this date (platform time): 2026-11-01")
    p.add_argument("--all", action="store_true", help="list every message, not only changes")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.set_defaults(handler=cmd_replay)

    p = sub.add_parser(
        "status",
        help="counts, outbox, dead letters, the account; exit 1 when reads are stale "
        "or the account cannot send",
    )
    _add_config(p)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--max-age",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="unhealthy when the last successful read is older (default 300)",
    )
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("balance", help="ask the gateway for the account's balance (getfee)")
    _add_config(p)
    p.set_defaults(handler=cmd_balance)

    p = sub.add_parser(
        "broadcast",
        help="queue one text to a CSV list of numbers, through the opt-out list and the"
        " other before-send hooks; the daemon sends it",
    )
    _add_config(p)
    broadcast.add_arguments(p)
    p.set_defaults(handler=broadcast.command)

    p = sub.add_parser(
        "outbox",
        help="show a send's progress per recipient (show ID), or cancel what of it is not"
        " handed to the gateway yet (cancel ID)",
    )
    _add_config(p)
    outbox_command.add_arguments(p)
    p.set_defaults(handler=outbox_command.command)

    p = sub.add_parser(
        "history", help="SMS in and out, newest first, with what answered each message"
    )
    _add_config(p)
    history.add_arguments(p)
    p.set_defaults(handler=history.command)

    p = sub.add_parser("store", help="the store: copy a SQLite store into PostgreSQL")
    store_sub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    q = store_sub.add_parser(
        "copy",
        help="copy the SQLite store (journal, outbox, opt-out list, conversations, plugins'"
        " tables) into an empty PostgreSQL database, whole or not at all",
    )
    _add_config(q)
    q.add_argument("--to", required=True, metavar="URL", help="postgresql://user@host/dbname")
    q.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        metavar="FILE",
        help="the SQLite store to copy (default: the configuration's store.path)",
    )
    q.add_argument(
        "--password-file",
        type=Path,
        default=None,
        metavar="FILE",
        help="the PostgreSQL password (default: $RESPONDER_STORE_PASSWORD, or none)",
    )
    q.set_defaults(handler=cmd_store_copy)

    p = sub.add_parser(
        "cluster", help="instances sharing a PostgreSQL store: who reads which account"
    )
    cluster_sub = p.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    q = cluster_sub.add_parser(
        "status", help="each instance (host, pid, heartbeat), its accounts and their leases"
    )
    _add_config(q)
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(handler=cmd_cluster_status)

    p = sub.add_parser("unit", help="print the systemd unit shipped with this release")
    p.add_argument("--path", action="store_true", help="print where the unit file is instead")
    p.set_defaults(handler=cmd_unit)

    p = sub.add_parser("plugins", help="list plugins, where each came from and its hooks")
    _add_config(p)
    p.set_defaults(handler=cmd_plugins)

    for command in registry.commands.values() if registry else ():
        p = sub.add_parser(command.name, help=f"{command.help} (plugin {command.plugin})")
        _add_config(p)
        if command.setup is not None:
            command.setup(p)
        p.set_defaults(handler=_plugin_handler(command))
    return parser


def _plugin_handler(command: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        with opened_app(args, dry_run=False) as app:
            return command.run(app, args)

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_logs()  # until a command configures its own: loading plugins may already log
    parser = build_parser(plugin_commands())
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return EXIT_CONFIG
    try:
        return args.handler(args)
    except CommandExit as ended:
        return ended.code
    except KeyboardInterrupt:
        return 130
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
