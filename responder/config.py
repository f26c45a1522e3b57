"""Configuration: a TOML file read into frozen settings, with errors that name the key.

Every error names the file and the dotted key, says what was wrong and what would be
right. Errors are collected, not raised one by one, so ``responder check`` shows them all.
Plugins read their own section with the same ``Table`` getters.
"""

from __future__ import annotations

import codecs
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from responder.hours import WEEKDAYS, Span, parse_ranges

if TYPE_CHECKING:
    from responder.accounts import AccountsSettings
    from responder.api.settings import ApiSettings
    from responder.console.settings import ConsoleSettings
    from responder.ha import HaSettings

PASSWORD_ENV: Final = "RESPONDER_GATEWAY_PASSWORD"
CREDENTIAL_NAME: Final = "gateway-password"
MIN_POLL_INTERVAL: Final = 5.0

_MISSING: Any = object()
SECRET_KEY: Final = re.compile(
    r"passw(or)?d|pass$|secret|token|auth|credential|cookie|api_?key|private_?key",
    re.IGNORECASE,
)
"""Key names whose values are never shown in an error: password, secret, token, auth..."""
SECRET_TABLES: Final = re.compile(r"headers", re.IGNORECASE)
"""Tables every value of which is secret (HTTP headers carry credentials)."""
_URL_LOGIN = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?.*@", re.DOTALL)
_URL_QUERY = re.compile(r"[?#].*", re.DOTALL)


def is_secret_key(key: str) -> bool:
    """Whether a key's name says its value is a secret (``password``, ``api_token``, ...)."""
    return bool(SECRET_KEY.search(key))


def redact_url(url: str) -> str:
    """``url`` as an error message may show it: a login (``user:pass@``) and the query or
    fragment, which may carry a password, are replaced by ``***``."""
    url = _URL_LOGIN.sub(lambda m: f"{m.group(1) or ''}***@", url, count=1)
    return _URL_QUERY.sub(lambda m: f"{m.group(0)[0]}***", url, count=1)


class ConfigError(Exception):
    """One or more problems with a configuration; ``problems`` lists each as a sentence."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class ConfigSection:
    """A plugin's configuration section: ``[name]`` parsed by ``parse(table)``."""

    name: str
    parse: Callable[[Table], Any]


def type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


class Table:
    """A TOML table being read.

    Getters return the value, or the default after recording an error. An error about a
    secret-bearing key names the key and what it must be, never the value: a key named
    like a secret (``is_secret_key``), one read with ``secret=True``, and every key of a
    table read with ``get_table(key, secret=True)`` or named ``headers``.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        file: str,
        prefix: str,
        problems: list[str],
        secret: bool = False,
    ) -> None:
        self.data = data
        self.file = file
        self.prefix = prefix
        self.problems = problems
        self.secret = secret
        """Every value in this table is secret."""
        self._read: set[str] = set()

    def dotted(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> None:
        """Record a problem with ``key``: "FILE: DOTTED.KEY: MESSAGE"."""
        self.problems.append(f"{self.file}: {self.dotted(key)}: {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def is_secret(self, key: str, secret: bool = False) -> bool:
        """Whether errors must not show the value of ``key`` (see the class docstring)."""
        return secret or self.secret or is_secret_key(key)

    def got(self, key: str, value: Any, *, secret: bool = False, typed: bool = True) -> str:
        """How an error shows a wrong value: "got an integer 5", or for a secret-bearing key
        only its type, "got an integer". Use it in your own ``table.error`` messages."""
        if self.is_secret(key, secret):
            return f"got {type_name(value)}"
        return f"got {type_name(value)} {value!r}" if typed else f"got {value!r}"

    def _get(
        self, key: str, default: Any, kinds: tuple[type, ...], want: str, secret: bool = False
    ) -> Any:
        self._read.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.error(key, f"is required ({want})")
            return None if default is _MISSING else default
        value = self.data[key]
        if isinstance(value, bool) and bool not in kinds:
            self.error(key, f"must be {want}, {self.got(key, value, secret=secret, typed=False)}")
            return None if default is _MISSING else default
        if not isinstance(value, kinds):
            self.error(key, f"must be {want}, {self.got(key, value, secret=secret)}")
            return None if default is _MISSING else default
        return value

    def get_str(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        choices: tuple[str, ...] = (),
        want: str = "",
        secret: bool = False,
    ) -> str:
        want = want or (f"one of {', '.join(map(repr, choices))}" if choices else "a string")
        value = self._get(key, default, (str,), want, secret)
        if choices and value not in choices and key in self.data:
            self.error(key, f"must be {want}, {self.got(key, value, secret=secret, typed=False)}")
            return default if default is not _MISSING else choices[0]
        return value

    def get_int(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: int | None = None,
        max: int | None = None,
        secret: bool = False,
    ) -> int:
        value = self._get(key, default, (int,), "an integer", secret)
        return self._check_range(key, value, default, min, max, secret=secret)

    def get_float(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
        unit: str = "",
        secret: bool = False,
    ) -> float:
        want = "a number" + (f" of {unit}" if unit else "")
        value = self._get(key, default, (int, float), want, secret)
        value = self._check_range(key, value, default, min, max, unit, secret=secret)
        return float(value) if value is not None else 0.0

    def get_optional_float(
        self, key: str, *, min: float | None = None, max: float | None = None, unit: str = ""
    ) -> float | None:
        """A number, or None when the key is absent (a setting that is off by default)."""
        if key not in self.data:
            self._read.add(key)
            return None
        return self.get_float(key, min=min, max=max, unit=unit)

    def _check_range(
        self,
        key: str,
        value: Any,
        default: Any,
        low: Any,
        high: Any,
        unit: str = "",
        *,
        secret: bool = False,
    ) -> Any:
        if value is None or key not in self.data:
            return value
        suffix = f" {unit}" if unit else ""
        got = "" if self.is_secret(key, secret) else f", got {value}"
        if low is not None and value < low:
            self.error(key, f"must be at least {low}{suffix}{got}")
            return default if default is not _MISSING else low
        if high is not None and value > high:
            self.error(key, f"must be at most {high}{suffix}{got}")
            return default if default is not _MISSING else high
        return value

    def get_bool(self, key: str, default: Any = _MISSING, *, secret: bool = False) -> bool:
        return self._get(key, default, (bool,), "true or false", secret)

    def get_str_list(
        self, key: str, default: Any = _MISSING, *, secret: bool = False
    ) -> tuple[str, ...]:
        value = self._get(key, default, (list, tuple), "a list of strings", secret)
        if value is None:
            return ()
        bad = [item for item in value if not isinstance(item, str)]
        if bad:
            got = self.got(key, bad[0], secret=secret, typed=False)
            self.error(key, f"must be a list of strings, {got} in it")
            return tuple(default) if default is not _MISSING else ()
        return tuple(value)

    def get_path(self, key: str, default: Any = _MISSING) -> Path | None:
        """A path; a relative one is taken relative to the configuration file's folder."""
        value = self._get(key, default, (str,), "a path")
        if value is None or value == "":
            return None
        return self.resolve(value)

    def resolve(self, value: str) -> Path:
        """A path from the configuration: a relative one is relative to the file's folder."""
        path = Path(value).expanduser()
        if path.is_absolute() or self.file.startswith("<"):  # "<config>": not from a file
            return path
        return Path(self.file).parent / path

    def get_table(self, key: str, *, secret: bool = False) -> Table:
        """A sub-table. Its values are all secret with ``secret=True``, when this table's
        are, when ``key`` is named like a secret, and for ``headers``."""
        secret = self.is_secret(key, secret) or bool(SECRET_TABLES.fullmatch(key))
        value = self._get(key, {}, (dict,), "a table", secret)
        return Table(
            value or {},
            file=self.file,
            prefix=self.dotted(key),
            problems=self.problems,
            secret=secret,
        )

    def get_tables(self, key: str, *, secret: bool = False) -> list[Table]:
        """An array of tables (``[[prefix.key]]``), each named ``prefix.key[i]`` in errors."""
        secret = self.is_secret(key, secret)
        value = self._get(key, [], (list,), "an array of tables ([[...]])", secret)
        tables = []
        for index, item in enumerate(value or []):
            name = f"{self.dotted(key)}[{index}]"
            if not isinstance(item, dict):
                # The index names it; the value could be anything (a secret put in the wrong place).
                self.problems.append(f"{self.file}: {name}: must be a table, got {type_name(item)}")
                continue
            tables.append(
                Table(item, file=self.file, prefix=name, problems=self.problems, secret=secret)
            )
        return tables

    def get_raw(self, key: str, default: Any = None) -> Any:
        self._read.add(key)
        return self.data.get(key, default)

    def finish(self) -> None:
        """Report every key that no getter read, with a "did you mean" hint."""
        known = sorted(self._read)
        for key in self.data:
            if key in self._read:
                continue
            hint = difflib.get_close_matches(key, known, n=1)
            advice = f"; did you mean {hint[0]!r}?" if hint else ""
            if known and not hint:
                advice = f"; known keys: {', '.join(known)}"
            self.error(key, f"unknown key{advice}")


@dataclass(frozen=True)
class GatewaySettings:
    base_urls: tuple[str, ...]
    name: str
    password: str = field(repr=False)
    encoding: str = "gbk"
    method: str = "post"
    poll_interval: float = 6.0
    timeout: float = 10.0
    simulator: bool = False
    """The base URLs are the built-in simulator: ``poll_interval`` may be under 5 seconds."""
    max_recipients: int = 100
    long_sms: bool = False
    sender: str = ""
    service_number: str = ""
    """The account's service code (特服号); a message's ``dst`` after it is the extension
    the reply goes out from. "": a ``dst`` of up to 6 digits is taken as the extension."""
    login_retry: float = 600.0
    """Seconds between tries of a refused or suspended account (each try is one read)."""
    balance_check: float = 300.0
    """Seconds between balance queries (getfee.aspx)."""
    balance_scale: float = 1.0
    """The balance is getfee's ``id`` times this (0.1: the provider counts tenths of a yuan)."""
    low_balance: float | None = None
    """Warn, and say so in status, when the balance falls under this; None = off."""
    send_rate: float = 0.0
    """Send requests per second at most, over every SMS the daemon sends; 0 = unlimited."""
    platform_schedule_over: int = 0
    """A scheduled send to more numbers than this goes to the platform at once with its
    ``time`` parameter (it cannot be cancelled then); 0 = never: the daemon holds it."""


@dataclass(frozen=True)
class StoreSettings:
    path: Path
    keep_days: int = 365
    """Finished messages and their sent replies older than this are deleted; 0 = never."""
    url: str = ""
    """A PostgreSQL store (``postgresql://user@host:port/dbname``) instead of the SQLite
    file at ``path``; "" = SQLite. Never holds the password."""
    password: str = field(default="", repr=False)
    """The PostgreSQL password (``password``, ``password_file``, the systemd credential
    ``store-password`` or RESPONDER_STORE_PASSWORD), or "" (trust, peer, .pgpass)."""


@dataclass(frozen=True)
class LogSettings:
    format: str = "auto"
    level: str = "info"


@dataclass(frozen=True)
class PluginSettings:
    enabled: tuple[str, ...] | None = None
    """None: the built-in defaults."""
    disabled: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ReplySettings:
    signature: str = ""
    signature_position: str = "prefix"
    max_parts: int = 3
    max_attempts: int = 10
    retry_initial: float = 5.0
    retry_max: float = 600.0
    on_uncertain: str = "resend"
    """When a send's outcome is unknown: "resend" (at least once) or "give_up" (never twice)."""
    max_age: float = 3600.0
    """Seconds after it was queued that a reply still due is dead-lettered as "stale"."""
    context_timeout: float = 86400.0
    """Seconds an outbound send's ``context`` (without a flow) stays attached to a
    recipient's conversation: their answer within it carries the context."""


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""
    """host:port of the Prometheus endpoint; empty = off."""


@dataclass(frozen=True)
class HoursSettings:
    """``[hours]``: opening hours (platform time), read through ``responder.OpeningHours``."""

    week: tuple[tuple[Span, ...], ...] = ()
    """Opening ranges of Monday..Sunday in minutes; () = no ``[hours]``: always open."""
    workday_spans: tuple[Span, ...] = ()
    """The hours of an adjusted working day (调休) that falls on a weekend."""
    workdays_follow_calendar: bool = True
    """Official holidays closed and 调休 weekend days open, from China's calendar."""
    overrides: tuple[tuple[date, tuple[Span, ...]], ...] = ()
    """Per-date opening ranges (empty: closed), winning over everything else."""
    overrides_by_date: Mapping[date, tuple[Span, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides_by_date", MappingProxyType(dict(self.overrides)))


@dataclass(frozen=True)
class Settings:
    source: str
    gateway: GatewaySettings
    store: StoreSettings
    log: LogSettings = LogSettings()
    plugins: PluginSettings = PluginSettings()
    replies: ReplySettings = ReplySettings()
    metrics: MetricsSettings = MetricsSettings()
    hours: HoursSettings = HoursSettings()
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    """The raw tables not read by the core: plugins' sections."""
    api: ApiSettings = field(default_factory=lambda: _default_api())
    """``[api]``: the HTTP API (off by default)."""
    console: ConsoleSettings = field(default_factory=lambda: _default_console())
    """``[console]``: the staff console on the API's listener (off by default)."""
    account: str = "default"
    """The account these settings are of: "default" for a single-account file, else the
    account file's stem (see responder.accounts)."""
    accounts: AccountsSettings = field(default_factory=lambda: _default_accounts())
    """``[accounts]`` of the main file: where more accounts come from (none by default)."""
    ha: HaSettings = field(default_factory=lambda: _default_ha())
    """``[ha]``: instances sharing a PostgreSQL store (responder.ha)."""

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line."""
        tokens = tuple(token.token for token in self.api.tokens)
        return tuple(s for s in (self.gateway.password, self.store.password, *tokens) if s)


def _default_api() -> ApiSettings:
    from responder.api.settings import ApiSettings

    return ApiSettings()


def _default_console() -> ConsoleSettings:
    from responder.console.settings import ConsoleSettings

    return ConsoleSettings()


def _default_accounts() -> AccountsSettings:
    from responder.accounts import AccountsSettings

    return AccountsSettings()


def _default_ha() -> HaSettings:
    from responder.ha import HaSettings

    return HaSettings()


CORE_SECTIONS: Final = (
    "gateway",
    "store",
    "log",
    "plugins",
    "replies",
    "metrics",
    "hours",
    "api",
    "console",
    "accounts",
    "ha",
)


def load_settings(path: str | os.PathLike[str], *, need_password: bool = True) -> Settings:
    """Read and validate a configuration file; raise ConfigError listing every problem.

    Commands that never call the gateway (status, simulate, replay) pass
    ``need_password=False``: a missing password is then not a problem.
    """
    settings, problems = read_settings(path, need_password=need_password)
    if problems or settings is None:
        raise ConfigError(problems)
    return settings


def read_settings(
    path: str | os.PathLike[str],
    *,
    need_password: bool = True,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings | None, list[str]]:
    """Read a configuration file and return the settings with every problem found.

    The settings are None only when the file is not TOML. Otherwise a default stands in
    for each bad value, so that ``responder check`` can go on to the plugins' sections:
    such settings are for checking, not for running.
    """
    file = str(path)
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        data = tomllib.loads(content.decode("utf-8-sig"))
    except OSError as err:
        return None, [f"{file}: cannot read the file: {err.strerror or err}"]
    except UnicodeDecodeError as err:
        line = content.count(b"\n", 0, err.start) + 1
        return None, [
            f"{file}: line {line}: not UTF-8 text: save the file as UTF-8 (TOML requires it)"
        ]
    except tomllib.TOMLDecodeError as err:
        return None, [f"{file}: not valid TOML: {err}"]
    return collect_settings(data, source=file, environ=environ, need_password=need_password)


def settings_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    need_password: bool = True,
) -> Settings:
    """Settings from parsed TOML; raise ConfigError listing every problem."""
    settings, problems = collect_settings(
        data, source=source, environ=environ, need_password=need_password
    )
    if problems:
        raise ConfigError(problems)
    return settings


def collect_settings(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    need_password: bool = True,
) -> tuple[Settings, list[str]]:
    """Settings from parsed TOML, and every problem (defaults stand in for bad values)."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    root = Table(data, file=source, prefix="", problems=problems)
    gateway = _gateway(root.get_table("gateway"), environ, need_password)
    store = _store(root.get_table("store"), environ)
    log = _log(root.get_table("log"))
    plugins = _plugins(root.get_table("plugins"))
    replies = _replies(root.get_table("replies"))
    metrics = _metrics(root.get_table("metrics"))
    hours_table = root.get_table("hours")
    hours = _hours(hours_table) if isinstance(data.get("hours"), dict) else HoursSettings()
    api = _api(root.get_table("api"), environ, need_password)
    console = _console(root.get_table("console"), api)
    accounts = _accounts(root.get_table("accounts"))
    ha = _ha(root.get_table("ha"))
    sections: dict[str, Mapping[str, Any]] = {}
    for key, value in data.items():
        if key in CORE_SECTIONS:
            continue
        if isinstance(value, dict):
            sections[key] = value
        else:
            root.error(key, f"must be a table ([{key}]), got {type_name(value)}")
    settings = Settings(
        source=source,
        gateway=gateway,
        store=store,
        log=log,
        plugins=plugins,
        replies=replies,
        metrics=metrics,
        hours=hours,
        sections=MappingProxyType(sections),
        api=api,
        console=console,
        accounts=accounts,
        ha=ha,
    )
    return settings, problems


def _ha(table: Table) -> HaSettings:
    from responder.ha import parse_ha

    return parse_ha(table)


def _accounts(table: Table) -> AccountsSettings:
    from responder.accounts import parse_accounts

    return parse_accounts(table)


def _console(table: Table, api: ApiSettings) -> ConsoleSettings:
    from responder.console.settings import console_problems, parse_console

    console = parse_console(table)
    for key, problem in console_problems(console, api):
        table.error(key, problem)
    return console


def _api(table: Table, environ: Mapping[str, str], need_secrets: bool) -> ApiSettings:
    from responder.api.settings import parse_api  # it imports this module: import late

    return parse_api(table, environ, need_secrets)


def is_loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # not an IP address, or not a URL at all
        return False


def _gateway(table: Table, environ: Mapping[str, str], need_password: bool) -> GatewaySettings:
    base_urls = tuple(url.rstrip("/") for url in table.get_str_list("base_urls", []))
    if not base_urls:
        table.error(
            "base_urls",
            "at least one server address is required, "
            'e.g. base_urls = ["http://sms.example.com:8080"] (the part before /send/...)',
        )
    for url in base_urls:
        shown = redact_url(url)  # a login or query may hold the password
        try:
            parts = urlsplit(url)
            hostname = parts.hostname
        except ValueError:  # "http://[::1": not an address at all
            table.error("base_urls", f"must be http:// or https:// addresses, got {shown!r}")
            continue
        if parts.scheme not in ("http", "https") or not hostname:
            table.error("base_urls", f"must be http:// or https:// addresses, got {shown!r}")
        elif parts.username or parts.password or parts.query or parts.fragment:
            table.error(
                "base_urls",
                f"must be plain addresses without login, query or fragment, got {shown!r}",
            )
    name = table.get_str("name", "")
    if not name:
        table.error("name", "is required: the enterprise account's login name")
    password = _password(table, environ, need_password)
    encoding = table.get_str("encoding", GatewaySettings.encoding)
    try:
        codecs.lookup(encoding)
    except LookupError:
        table.error("encoding", f'must be a known text encoding such as "gbk", got {encoding!r}')
        encoding = "gbk"
    for key, value in (("name", name), ("password", password)):
        try:
            value.encode(encoding)
        except UnicodeEncodeError:
            where = key if key == "name" or "password" in table.data else "password_file"
            table.error(where, f"has characters the gateway encoding {encoding!r} cannot carry")
    simulator = _simulator(table, base_urls)
    poll_interval = table.get_float(
        "poll_interval", GatewaySettings.poll_interval, min=0, unit="seconds"
    )
    if poll_interval < MIN_POLL_INTERVAL and not simulator:
        table.error(
            "poll_interval",
            f"must be at least {MIN_POLL_INTERVAL:g} seconds (the platform refuses faster "
            f"reads), got {poll_interval:g}; only the built-in simulator may be read faster, "
            "with gateway.simulator = true",
        )
        poll_interval = MIN_POLL_INTERVAL
    sender = table.get_str("sender", GatewaySettings.sender)
    if sender and not sender.isdigit():
        table.error("sender", f"must be digits only (appended to the service code), got {sender!r}")
    service_number = table.get_str("service_number", GatewaySettings.service_number)
    if service_number and not service_number.isdigit():
        table.error(
            "service_number",
            f'must be digits only (the service code, e.g. "1069012345"), got {service_number!r}',
        )
    settings = GatewaySettings(
        base_urls=base_urls,
        name=name,
        password=password,
        encoding=encoding,
        method=table.get_str("method", GatewaySettings.method, choices=("post", "get")),
        poll_interval=poll_interval,
        simulator=simulator,
        timeout=table.get_float(
            "timeout", GatewaySettings.timeout, min=0.1, max=120, unit="seconds"
        ),
        max_recipients=table.get_int(
            "max_recipients", GatewaySettings.max_recipients, min=1, max=1000
        ),
        long_sms=table.get_bool("long_sms", GatewaySettings.long_sms),
        sender=sender,
        service_number=service_number,
        login_retry=_account_interval(table, "login_retry", simulator),
        balance_check=_account_interval(table, "balance_check", simulator),
        balance_scale=_balance_scale(table),
        low_balance=table.get_optional_float("low_balance", min=0),
        send_rate=table.get_float(
            "send_rate", GatewaySettings.send_rate, min=0, max=1000, unit="requests per second"
        ),
        platform_schedule_over=table.get_int(
            "platform_schedule_over", GatewaySettings.platform_schedule_over, min=0
        ),
    )
    table.finish()
    return settings


MIN_ACCOUNT_INTERVAL: Final = 60.0
"""The least ``login_retry`` and ``balance_check`` for a real gateway: some platforms lock an
account after repeated refused logins."""


def _account_interval(table: Table, key: str, simulator: bool) -> float:
    """``gateway.login_retry`` or ``gateway.balance_check``: at least a minute, except for
    the simulator (tests)."""
    default = getattr(GatewaySettings, key)
    low = 0.1 if simulator else MIN_ACCOUNT_INTERVAL
    value = table.get_float(key, default, min=0, unit="seconds")
    if value < low:
        table.error(
            key,
            f"must be at least {low:g} seconds, got {value:g}"
            + ("" if simulator else " (only gateway.simulator = true allows less)"),
        )
        return default
    return value


def _balance_scale(table: Table) -> float:
    scale = table.get_float("balance_scale", GatewaySettings.balance_scale, min=0)
    if scale <= 0:
        table.error(
            "balance_scale",
            "must be more than 0: what one unit of getfee's balance is worth "
            "(1 for SMS counts, 0.1 for tenths of a yuan), got 0",
        )
        return GatewaySettings.balance_scale
    return scale


def _simulator(table: Table, base_urls: tuple[str, ...]) -> bool:
    """``gateway.simulator``: set by hand for the built-in simulator, never guessed from the
    address (a local tunnel to a real gateway is on loopback too); every base URL must then
    be on this machine, so a simulator config cannot read a real gateway fast by mistake."""
    simulator = table.get_bool("simulator", GatewaySettings.simulator)
    remote = [url for url in base_urls if not is_loopback_url(url)]
    if simulator and remote:
        table.error(
            "simulator",
            "is only for the built-in simulator on this machine (127.0.0.0/8, ::1, localhost), "
            f"but base_urls has {len(remote)} other address(es): remove simulator = true",
        )
        return False
    return simulator


def _password(table: Table, environ: Mapping[str, str], needed: bool) -> str:
    return resolve_secret(
        table,
        "password",
        env=PASSWORD_ENV,
        credential=CREDENTIAL_NAME,
        environ=environ,
        needed=needed,
    )


def resolve_secret(
    table: Table,
    key: str,
    *,
    env: str = "",
    credential: str = "",
    environ: Mapping[str, str],
    needed: bool = True,
    min_length: int = 1,
    advice: str = "",
) -> str:
    """A secret of a configuration table, from (first found) the environment variable
    ``env``, the value of ``key``, the file named by ``<key>_file`` (relative to the
    configuration file), or the systemd credential ``credential`` (``LoadCredential=``: a
    file in $CREDENTIALS_DIRECTORY). The gateway password and webhook secrets are found
    this way; so can a plugin's.

    Problems go to ``table`` (collected with the others), naming the key and where the
    secret came from, never its value: both ``key`` and ``<key>_file`` set, a file that
    cannot be read, no secret anywhere, one shorter than ``min_length`` (``advice`` says
    how to make a good one). ``needed=False`` (commands that never use it): only the
    environment and the inline value are looked at, and a missing secret is no problem.
    Returns "" after a problem.
    """
    file_key = f"{key}_file"
    inline = table.get_str(key, "")
    secret_file = table.get_path(file_key, "")
    if inline and secret_file:
        table.error(key, f"set either {table.dotted(key)} or {table.dotted(file_key)}, not both")
    if not needed:
        return (environ.get(env, "") if env else "") or inline
    if env and environ.get(env):
        secret, where, problem_key = environ[env], f"the environment variable {env}", key
    elif inline:
        secret, where, problem_key = inline, table.dotted(key), key
    else:
        path, where, problem_key = secret_file, f"the file {str(secret_file)!r}", file_key
        if path is None and credential and environ.get("CREDENTIALS_DIRECTORY"):
            found = Path(environ["CREDENTIALS_DIRECTORY"]) / credential
            if found.exists():
                path, where, problem_key = found, f"the systemd credential {credential!r}", key
        if path is None:
            ways = [table.dotted(key), table.dotted(file_key)]
            ways += [f"the systemd credential {credential!r}"] if credential else []
            ways += [f"the environment variable {env}"] if env else []
            listed = f"{', '.join(ways[:-1])} or {ways[-1]}"
            table.error(key, f"no {key.replace('_', ' ')}: set {listed}")
            return ""
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            table.error(problem_key, f"cannot read {str(path)!r}: {err.strerror}")
            return ""
    if not secret:
        table.error(problem_key, f"the {key.replace('_', ' ')} from {where} is empty")
        return ""
    if len(secret) < min_length:
        table.error(
            problem_key,
            f"the {key.replace('_', ' ')} from {where} must be at least {min_length} characters,"
            f" got {len(secret)}" + (f" ({advice})" if advice else ""),
        )
        return ""
    return secret


def _store(table: Table, environ: Mapping[str, str]) -> StoreSettings:
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    default = str(Path(state_dir) / "responder.db") if state_dir else "responder.db"
    path = table.get_path("path", default) or Path(default)
    keep_days = table.get_int("keep_days", StoreSettings.keep_days, min=0, max=100 * 365)
    url = table.get_str("url", "")
    password = ""
    if url:
        url, password = _store_url(table, url, environ)
    elif "password" in table or "password_file" in table:
        table.error("password", "is for a PostgreSQL store: set store.url too, or remove it")
    table.finish()
    return StoreSettings(path=path, keep_days=keep_days, url=url, password=password)


STORE_PASSWORD_ENV: Final = "RESPONDER_STORE_PASSWORD"
STORE_CREDENTIAL: Final = "store-password"


def _store_url(table: Table, url: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """``store.url`` checked (a postgresql:// URL without a password in it) and the
    store's password, if one is given anywhere (PostgreSQL may need none)."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        secret_in_url = bool(parts.password) or "password=" in parts.query.lower()
    except ValueError:
        table.error("url", f"must be a postgresql:// URL, got {shown!r}")
        return "", ""
    if parts.scheme not in ("postgresql", "postgres"):
        table.error(
            "url",
            f"must be a postgresql:// URL (postgresql://user@host:5432/dbname), got {shown!r}",
        )
        return "", ""
    if secret_in_url:
        table.error(
            "url",
            "must not hold the password: set store.password_file, the systemd credential "
            f"{STORE_CREDENTIAL!r} or {STORE_PASSWORD_ENV} instead",
        )
        return "", ""
    if "path" in table:
        table.error("path", "set either store.path (SQLite) or store.url (PostgreSQL), not both")
    credential = Path(environ.get("CREDENTIALS_DIRECTORY", "")) / STORE_CREDENTIAL
    given = (
        "password" in table
        or "password_file" in table
        or bool(environ.get(STORE_PASSWORD_ENV))
        or (bool(environ.get("CREDENTIALS_DIRECTORY")) and credential.exists())
    )
    if not given:
        return url, ""
    password = resolve_secret(
        table, "password", env=STORE_PASSWORD_ENV, credential=STORE_CREDENTIAL, environ=environ
    )
    return url, password


def _log(table: Table) -> LogSettings:
    settings = LogSettings(
        format=table.get_str("format", LogSettings.format, choices=("auto", "json", "console")),
        level=table.get_str(
            "level", LogSettings.level, choices=("debug", "info", "warning", "error")
        ).lower(),
    )
    table.finish()
    return settings


def _plugins(table: Table) -> PluginSettings:
    enabled = table.get_str_list("enabled", []) if "enabled" in table else None
    settings = PluginSettings(
        enabled=enabled,
        disabled=table.get_str_list("disabled", []),
        modules=table.get_str_list("modules", []),
        paths=tuple(table.resolve(p) for p in table.get_str_list("paths", [])),
    )
    table.finish()
    return settings


def _replies(table: Table) -> ReplySettings:
    settings = ReplySettings(
        signature=table.get_str("signature", ReplySettings.signature),
        signature_position=table.get_str(
            "signature_position", ReplySettings.signature_position, choices=("prefix", "suffix")
        ),
        max_parts=table.get_int("max_parts", ReplySettings.max_parts, min=1, max=10),
        max_attempts=table.get_int("max_attempts", ReplySettings.max_attempts, min=1, max=1000),
        retry_initial=table.get_float(
            "retry_initial", ReplySettings.retry_initial, min=0, unit="seconds"
        ),
        retry_max=table.get_float("retry_max", ReplySettings.retry_max, min=0, unit="seconds"),
        on_uncertain=table.get_str(
            "on_uncertain", ReplySettings.on_uncertain, choices=("resend", "give_up")
        ),
        max_age=table.get_float("max_age", ReplySettings.max_age, min=60, unit="seconds"),
        context_timeout=table.get_float(
            "context_timeout",
            ReplySettings.context_timeout,
            min=60,
            max=30 * 86400,
            unit="seconds",
        ),
    )
    if len(settings.signature) > 20:
        table.error("signature", f"must be at most 20 characters, got {len(settings.signature)}")
    table.finish()
    return settings


def _metrics(table: Table) -> MetricsSettings:
    listen = table.get_str("listen", MetricsSettings.listen)
    if listen:
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            table.error("listen", f'must be "host:port" such as "127.0.0.1:9108", got {listen!r}')
    table.finish()
    return MetricsSettings(listen=listen)


def _ranges(table: Table, key: str, text: str) -> tuple[Span, ...] | None:
    try:
        return parse_ranges(text)
    except ValueError as err:
        table.error(key, f'must be opening times such as "09:00-18:00" or "" (closed): {err}')
        return None


def _hours(table: Table) -> HoursSettings:
    week: list[tuple[Span, ...]] = [()] * 7
    given = False
    weekdays_spans: tuple[Span, ...] | None = None
    table.get_raw("weekdays")  # known, for the hint of a misspelt key
    if "weekdays" in table:
        weekdays_spans = _ranges(table, "weekdays", table.get_str("weekdays", ""))
        week[:5] = [weekdays_spans or ()] * 5
        given = True
    for index, key in enumerate(WEEKDAYS):
        if key in table:
            week[index] = _ranges(table, key, table.get_str(key, "")) or ()
            given = True
        else:
            table.get_raw(key)  # known, so an unknown key's hint can suggest it
    follow = table.get_bool("workdays_follow_calendar", HoursSettings.workdays_follow_calendar)
    overrides: dict[date, tuple[Span, ...]] = {}
    for item in table.get_tables("overrides"):
        when = _override_date(item)
        spans: tuple[Span, ...] | None = ()
        if item.get_bool("closed", False):
            if "open" in item:
                item.error("open", 'set either open = "..." or closed = true, not both')
        elif "open" in item:
            spans = _ranges(item, "open", item.get_str("open", ""))
        else:
            item.error("open", 'is required: open = "09:00-12:00", or closed = true')
        item.finish()
        if when is None or spans is None:
            continue
        if when in overrides:
            item.error("date", f"{when.isoformat()} is overridden twice: keep one of them")
        overrides[when] = spans
    if not given:
        table.error(
            "weekdays",
            'opening times are required in [hours]: weekdays = "09:00-18:00" (Monday to '
            'Friday) and/or mon ... sun = "09:00-18:00"; remove [hours] to be always open',
        )
    table.finish()
    if not given:
        return HoursSettings()
    workday = weekdays_spans if weekdays_spans is not None else week[0]
    return HoursSettings(
        week=tuple(week),
        workday_spans=workday,
        workdays_follow_calendar=follow,
        overrides=tuple(sorted(overrides.items())),
    )


def _override_date(table: Table) -> date | None:
    """``date = "2026-12-24"`` or a TOML date, ``date = 2026-12-24``."""
    if "date" not in table:
        table.get_str("date")  # records "is required"
        return None
    value = table.get_raw("date")
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, str) and len(value) == 10:
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    got = table.got("date", value)
    table.error("date", f'must be a date YYYY-MM-DD such as "2026-12-24", {got}')
    return None
