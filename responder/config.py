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
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

PASSWORD_ENV: Final = "RESPONDER_GATEWAY_PASSWORD"
CREDENTIAL_NAME: Final = "gateway-password"
MIN_POLL_INTERVAL: Final = 5.0

_MISSING: Any = object()


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

    Getters return the value, or the default after recording an error.
    """

    def __init__(
        self, data: Mapping[str, Any], *, file: str, prefix: str, problems: list[str]
    ) -> None:
        self.data = data
        self.file = file
        self.prefix = prefix
        self.problems = problems
        self._read: set[str] = set()

    def dotted(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> None:
        """Record a problem with ``key``: "FILE: DOTTED.KEY: MESSAGE"."""
        self.problems.append(f"{self.file}: {self.dotted(key)}: {message}")

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], want: str) -> Any:
        self._read.add(key)
        if key not in self.data:
            if default is _MISSING:
                self.error(key, f"is required ({want})")
            return None if default is _MISSING else default
        value = self.data[key]
        if isinstance(value, bool) and bool not in kinds:
            self.error(key, f"must be {want}, got {value!r}")
            return None if default is _MISSING else default
        if not isinstance(value, kinds):
            self.error(key, f"must be {want}, got {type_name(value)} {value!r}")
            return None if default is _MISSING else default
        return value

    def get_str(
        self, key: str, default: Any = _MISSING, *, choices: tuple[str, ...] = (), want: str = ""
    ) -> str:
        want = want or (f"one of {', '.join(map(repr, choices))}" if choices else "a string")
        value = self._get(key, default, (str,), want)
        if choices and value not in choices and key in self.data:
            self.error(key, f"must be {want}, got {value!r}")
            return default if default is not _MISSING else choices[0]
        return value

    def get_int(
        self, key: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None
    ) -> int:
        value = self._get(key, default, (int,), "an integer")
        return self._check_range(key, value, default, min, max)

    def get_float(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        min: float | None = None,
        max: float | None = None,
        unit: str = "",
    ) -> float:
        value = self._get(key, default, (int, float), "a number" + (f" of {unit}" if unit else ""))
        value = self._check_range(key, value, default, min, max, unit)
        return float(value) if value is not None else value

    def _check_range(
        self, key: str, value: Any, default: Any, low: Any, high: Any, unit: str = ""
    ) -> Any:
        if value is None or key not in self.data:
            return value
        suffix = f" {unit}" if unit else ""
        if low is not None and value < low:
            self.error(key, f"must be at least {low}{suffix}, got {value}")
            return default if default is not _MISSING else low
        if high is not None and value > high:
            self.error(key, f"must be at most {high}{suffix}, got {value}")
            return default if default is not _MISSING else high
        return value

    def get_bool(self, key: str, default: Any = _MISSING) -> bool:
        return self._get(key, default, (bool,), "true or false")

    def get_str_list(self, key: str, default: Any = _MISSING) -> tuple[str, ...]:
        value = self._get(key, default, (list, tuple), "a list of strings")
        if value is None:
            return ()
        bad = [item for item in value if not isinstance(item, str)]
        if bad:
            self.error(key, f"must be a list of strings, got {bad[0]!r} in it")
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

    def get_table(self, key: str) -> Table:
        value = self._get(key, {}, (dict,), "a table")
        return Table(value or {}, file=self.file, prefix=self.dotted(key), problems=self.problems)

    def get_tables(self, key: str) -> list[Table]:
        """An array of tables (``[[prefix.key]]``), each named ``prefix.key[i]`` in errors."""
        value = self._get(key, [], (list,), "an array of tables ([[...]])")
        tables = []
        for index, item in enumerate(value or []):
            name = f"{self.dotted(key)}[{index}]"
            if not isinstance(item, dict):
                self.problems.append(f"{self.file}: {name}: must be a table, got {item!r}")
                continue
            tables.append(Table(item, file=self.file, prefix=name, problems=self.problems))
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
    max_recipients: int = 100
    long_sms: bool = False
    sender: str = ""


@dataclass(frozen=True)
class StoreSettings:
    path: Path


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


@dataclass(frozen=True)
class MetricsSettings:
    listen: str = ""
    """host:port of the Prometheus endpoint; empty = off."""


@dataclass(frozen=True)
class Settings:
    source: str
    gateway: GatewaySettings
    store: StoreSettings
    log: LogSettings = LogSettings()
    plugins: PluginSettings = PluginSettings()
    replies: ReplySettings = ReplySettings()
    metrics: MetricsSettings = MetricsSettings()
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False)
    """The raw tables not read by the core: plugins' sections."""

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in a log line."""
        return tuple(s for s in (self.gateway.password,) if s)


CORE_SECTIONS: Final = ("gateway", "store", "log", "plugins", "replies", "metrics")


def load_settings(path: str | os.PathLike[str], *, need_password: bool = True) -> Settings:
    """Read and validate a configuration file; raise ConfigError listing every problem.

    Commands that never call the gateway (status, simulate, replay) pass
    ``need_password=False``: a missing password is then not a problem.
    """
    file = str(path)
    try:
        with open(path, "rb") as handle:
            content = handle.read()
        data = tomllib.loads(content.decode("utf-8-sig"))
    except OSError as err:
        raise ConfigError([f"{file}: cannot read the file: {err.strerror or err}"]) from None
    except UnicodeDecodeError as err:
        line = content.count(b"\n", 0, err.start) + 1
        raise ConfigError(
            [f"{file}: line {line}: not UTF-8 text: save the file as UTF-8 (TOML requires it)"]
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{file}: not valid TOML: {err}"]) from None
    return settings_from_dict(data, source=file, need_password=need_password)


def settings_from_dict(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    environ: Mapping[str, str] | None = None,
    need_password: bool = True,
) -> Settings:
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    root = Table(data, file=source, prefix="", problems=problems)
    gateway = _gateway(root.get_table("gateway"), environ, need_password)
    store = _store(root.get_table("store"), environ)
    log = _log(root.get_table("log"))
    plugins = _plugins(root.get_table("plugins"))
    replies = _replies(root.get_table("replies"))
    metrics = _metrics(root.get_table("metrics"))
    sections = {key: value for key, value in data.items() if key not in CORE_SECTIONS}
    for key, value in sections.items():
        if not isinstance(value, dict):
            root.error(key, f"must be a table ([{key}]), got {type_name(value)}")
    if problems:
        raise ConfigError(problems)
    return Settings(
        source=source,
        gateway=gateway,
        store=store,
        log=log,
        plugins=plugins,
        replies=replies,
        metrics=metrics,
        sections=MappingProxyType(sections),
    )


def is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
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
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            table.error("base_urls", f"must be http:// or https:// addresses, got {url!r}")
        elif parts.username or parts.password or parts.query or parts.fragment:
            table.error(
                "base_urls",
                f"must be plain addresses without login, query or fragment, got {url!r}",
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
    local = bool(base_urls) and all(is_loopback_url(url) for url in base_urls)
    poll_interval = table.get_float(
        "poll_interval", GatewaySettings.poll_interval, min=0, unit="seconds"
    )
    if poll_interval < MIN_POLL_INTERVAL and not local:
        table.error(
            "poll_interval",
            f"must be at least {MIN_POLL_INTERVAL:g} seconds (the platform refuses faster "
            f"reads), got {poll_interval:g}",
        )
        poll_interval = MIN_POLL_INTERVAL
    sender = table.get_str("sender", GatewaySettings.sender)
    if sender and not sender.isdigit():
        table.error("sender", f"must be digits only (appended to the service code), got {sender!r}")
    settings = GatewaySettings(
        base_urls=base_urls,
        name=name,
        password=password,
        encoding=encoding,
        method=table.get_str("method", GatewaySettings.method, choices=("post", "get")),
        poll_interval=poll_interval,
        timeout=table.get_float(
            "timeout", GatewaySettings.timeout, min=0.1, max=120, unit="seconds"
        ),
        max_recipients=table.get_int(
            "max_recipients", GatewaySettings.max_recipients, min=1, max=1000
        ),
        long_sms=table.get_bool("long_sms", GatewaySettings.long_sms),
        sender=sender,
    )
    table.finish()
    return settings


def _password(table: Table, environ: Mapping[str, str], needed: bool) -> str:
    inline = table.get_str("password", "")
    password_file = table.get_path("password_file", "")
    if inline and password_file:
        table.error("password", "set either gateway.password or gateway.password_file, not both")
    if not needed:
        return environ.get(PASSWORD_ENV) or inline
    if environ.get(PASSWORD_ENV):
        return environ[PASSWORD_ENV]
    if inline:
        return inline
    if password_file is None and environ.get("CREDENTIALS_DIRECTORY"):
        credential = Path(environ["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if credential.exists():
            password_file = credential
    if password_file is not None:
        try:
            secret = password_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            table.error("password_file", f"cannot read {str(password_file)!r}: {err.strerror}")
            return ""
        if not secret:
            table.error("password_file", f"{str(password_file)!r} is empty")
        return secret
    table.error(
        "password",
        "no password: set gateway.password, gateway.password_file, the systemd credential "
        f"{CREDENTIAL_NAME!r} or the environment variable {PASSWORD_ENV}",
    )
    return ""


def _store(table: Table, environ: Mapping[str, str]) -> StoreSettings:
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    default = str(Path(state_dir) / "responder.db") if state_dir else "responder.db"
    path = table.get_path("path", default) or Path(default)
    table.finish()
    return StoreSettings(path=path)


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
