"""Several accounts in one process: the ``[accounts]`` table and the account files.

A configuration without ``[accounts] include`` is one account, "default", as always.
With it, each file the globs find (relative to the main file) is one account, named by
its stem, in the same format as a single-account file; the main file's sections are the
defaults every account starts from (merged per table: the account file's keys win,
arrays replace). The process-wide sections ([store], [log], [metrics], [api], [console],
[accounts]) are the main file's only. ``[accounts] main = true`` makes the main file an
account too ("default"); by default it only holds the defaults.

A broken account file is rejected alone: ``load_accounts`` returns the accounts that are
good, and the problems of the others by account.
"""

from __future__ import annotations

import glob
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from responder.config import (
    PASSWORD_ENV,
    ConfigError,
    Settings,
    Table,
    collect_settings,
)

DEFAULT: Final = "default"
ACCOUNT_ID: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
"""An account id: 1 to 32 of a-z, 0-9, "-" and "_", starting with a letter or digit."""
PROCESS_WIDE: Final = ("store", "log", "metrics", "api", "console", "accounts", "ha")
"""Sections of the main file only: they apply to the whole process."""


@dataclass(frozen=True)
class AccountsSettings:
    """``[accounts]`` of the main file."""

    include: tuple[str, ...] = ()
    """Globs of account files, relative to the main file; () = one account, "default"."""
    shared_optouts: bool = False
    """One opt-out list for every account (True) or one per account (False)."""
    main: bool = False
    """With ``include``: the main file is an account too ("default"), not only defaults."""


def parse_accounts(table: Table) -> AccountsSettings:
    settings = AccountsSettings(
        include=table.get_str_list("include", []),
        shared_optouts=table.get_bool("shared_optouts", AccountsSettings.shared_optouts),
        main=table.get_bool("main", AccountsSettings.main),
    )
    if settings.main and not settings.include:
        table.error("main", "is for a main file with accounts.include: remove it, or add include")
    table.finish()
    return settings


def optout_account(settings: Settings, account: str) -> str:
    """The account an opt-out list is kept under: ``account``, or "*" when shared."""
    return "*" if settings.accounts.shared_optouts else account


def merge_tables(defaults: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` over ``defaults``, table by table: a key of ``override`` wins; tables
    merge key by key; arrays (of tables too) replace, they do not append."""
    merged = dict(defaults)
    for key, value in override.items():
        base = merged.get(key)
        if isinstance(value, dict) and isinstance(base, dict):
            merged[key] = merge_tables(base, value)
        else:
            merged[key] = value
    return merged


def account_environ(environ: Mapping[str, str], account: str) -> dict[str, str]:
    """The environment an account file's secrets are looked up in: its gateway password
    from ``RESPONDER_GATEWAY_PASSWORD_<ID>`` (upper case, "-" as "_"), never from the
    single account's variable or systemd credential."""
    view = {k: v for k, v in environ.items() if k not in (PASSWORD_ENV, "CREDENTIALS_DIRECTORY")}
    own = environ.get(f"{PASSWORD_ENV}_{account.upper().replace('-', '_')}")
    if own:
        view[PASSWORD_ENV] = own
    return view


@dataclass(frozen=True)
class AccountsConfig:
    """What the main file and its account files hold."""

    main: Settings | None
    """The main file's settings (its process-wide sections are every account's); None
    when the main file itself is broken."""
    accounts: Mapping[str, Settings] = field(default_factory=dict)
    """The good accounts, by id, in id order."""
    rejected: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Accounts whose file is broken, by id, with their problems."""
    problems: tuple[str, ...] = ()
    """The main file's own problems: nothing can run."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Each account's file (the main file for "default" of a single-account file)."""

    @property
    def all_problems(self) -> list[str]:
        return [*self.problems, *(p for problems in self.rejected.values() for p in problems)]


def _read_toml(path: str) -> tuple[dict[str, Any] | None, str]:
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        return tomllib.loads(content.decode("utf-8-sig")), ""
    except OSError as err:
        return None, f"{path}: cannot read the file: {err.strerror or err}"
    except UnicodeDecodeError as err:
        line = content.count(b"\n", 0, err.start) + 1
        return None, f"{path}: line {line}: not UTF-8 text: save the file as UTF-8"
    except tomllib.TOMLDecodeError as err:
        return None, f"{path}: not valid TOML: {err}"


_KEY_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _has_key(data: Any, dotted: str) -> bool:
    """Whether ``dotted`` ("gateway.name", "webhook.targets[0].url") is in ``data``."""
    node = data
    for match in _KEY_PART.finditer(dotted):
        name, index = match.group(1), match.group(2)
        if name is not None:
            if not isinstance(node, dict) or name not in node:
                return False
            node = node[name]
        else:
            if not isinstance(node, list) or int(index) >= len(node):
                return False
            node = node[int(index)]
    return True


def _attribute(
    problem: str, file: str, own: Mapping[str, Any], defaults: Mapping[str, Any], main_file: str
) -> str:
    """A problem of an account's merged settings, named after the file its key came
    from: the account file, or the main file for a default it did not override."""
    prefix = f"{file}: "
    if not problem.startswith(prefix):
        return problem
    rest = problem[len(prefix) :]
    key, sep, _message = rest.partition(": ")
    if not sep or " " in key or _has_key(own, key) or not _has_key(defaults, key):
        return problem
    return f"{main_file}: {rest} (a default of the account file {file})"


def _top_key(problem: str, file: str) -> str:
    rest = problem.removeprefix(f"{file}: ")
    return rest.partition(": ")[0].split(".", 1)[0].split("[", 1)[0]


def account_files(main_file: str, include: tuple[str, ...]) -> list[str]:
    """The files the ``include`` globs find (relative to the main file's folder), sorted,
    each once."""
    folder = Path(main_file).parent
    found: set[str] = set()
    for pattern in include:
        path = Path(pattern).expanduser()
        full = str(path if path.is_absolute() else folder / path)
        found.update(p for p in glob.glob(full) if os.path.isfile(p))
    return sorted(found)


def load_accounts(
    path: str | os.PathLike[str],
    *,
    need_password: bool = True,
    environ: Mapping[str, str] | None = None,
) -> AccountsConfig:
    """Read the main file and every account file; never raises for a problem."""
    environ = os.environ if environ is None else environ
    main_file = str(path)
    data, problem = _read_toml(main_file)
    if data is None:
        return AccountsConfig(main=None, problems=(problem,))
    main, problems = collect_settings(
        data, source=main_file, environ=environ, need_password=need_password
    )
    accounts_conf = main.accounts
    if not accounts_conf.include:
        if problems:
            return AccountsConfig(main=None, problems=tuple(problems))
        return AccountsConfig(main=main, accounts={DEFAULT: main}, files={DEFAULT: main_file})
    if not accounts_conf.main:  # its account sections are checked as each account's defaults
        problems = [p for p in problems if _top_key(p, main_file) in PROCESS_WIDE]
    if problems:
        return AccountsConfig(main=None, problems=tuple(problems))
    accounts: dict[str, Settings] = {}
    rejected: dict[str, tuple[str, ...]] = {}
    files: dict[str, str] = {}
    if accounts_conf.main:
        accounts[DEFAULT] = main
        files[DEFAULT] = main_file
    defaults = {k: v for k, v in data.items() if k not in PROCESS_WIDE}
    process_wide = {k: v for k, v in data.items() if k in PROCESS_WIDE}
    for file in account_files(main_file, accounts_conf.include):
        if os.path.abspath(file) == os.path.abspath(main_file):
            continue
        account = Path(file).stem
        if not ACCOUNT_ID.fullmatch(account):
            rejected[account] = (
                f"{file}: the file's name is the account id, and {account!r} is not one: "
                "1 to 32 of a-z, 0-9, '-' and '_', starting with a letter or digit",
            )
            continue
        if account in files:
            where = files[account]
            rejected[account] = (
                f"{file}: the account {account!r} is defined twice (also {where}): "
                "rename one of the files",
            )
            continue
        files[account] = file
        settings, own_problems = _load_account(
            file, account, defaults, process_wide, main, main_file, environ, need_password
        )
        if own_problems:
            rejected[account] = tuple(own_problems)
        elif settings is not None:
            accounts[account] = settings
    return AccountsConfig(
        main=main,
        accounts=dict(sorted(accounts.items())),
        rejected=dict(sorted(rejected.items())),
        files=files,
    )


def _load_account(
    file: str,
    account: str,
    defaults: Mapping[str, Any],
    process_wide: Mapping[str, Any],
    main: Settings,
    main_file: str,
    environ: Mapping[str, str],
    need_password: bool,
) -> tuple[Settings | None, list[str]]:
    own, problem = _read_toml(file)
    if own is None:
        return None, [problem]
    problems = [
        f"{file}: {key}: [{key}] is the whole process's: set it in the main file "
        f"{main_file}, or remove it here"
        for key in own
        if key in PROCESS_WIDE
    ]
    merged = merge_tables(defaults, {k: v for k, v in own.items() if k not in PROCESS_WIDE})
    merged.update(process_wide)
    settings, found = collect_settings(
        merged,
        source=file,
        environ=account_environ(environ, account),
        need_password=need_password,
    )
    problems += [
        _attribute(p, file, own, defaults, main_file)
        for p in found
        if _top_key(p, file) not in PROCESS_WIDE
    ]
    if problems:
        return None, problems
    return (
        replace(
            settings,
            account=account,
            store=main.store,
            log=main.log,
            metrics=main.metrics,
            api=main.api,
            console=main.console,
            accounts=main.accounts,
        ),
        [],
    )


def account_settings(
    path: str | os.PathLike[str], account: str | None = None, *, need_password: bool = True
) -> Settings:
    """The settings of one account of a configuration (``account`` None: the only one, or
    "default"); ConfigError naming the problems otherwise."""
    config = load_accounts(path, need_password=need_password)
    if config.problems:
        raise ConfigError(list(config.problems))
    wanted = account or (next(iter(config.accounts)) if len(config.accounts) == 1 else DEFAULT)
    if wanted in config.rejected:
        raise ConfigError(list(config.rejected[wanted]))
    if wanted not in config.accounts:
        known = ", ".join(config.accounts) or "none"
        advice = "" if account else ": choose one with --account ID"
        raise ConfigError([f"{path}: no account {wanted!r} (accounts: {known}){advice}"])
    return config.accounts[wanted]
