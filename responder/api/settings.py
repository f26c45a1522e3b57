"""``[api]``: the HTTP API's settings and tokens (standard library only).

Read by ``responder.config`` like the other core sections; the web framework is only
imported when the server starts, so a configuration can be checked without the extra.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from responder.config import Table

SEND: Final = "send"
READ: Final = "read"
ADMIN: Final = "admin"
CONSOLE: Final = "console"
SCOPES: Final = (SEND, READ, ADMIN, CONSOLE)
"""send: POST/DELETE messages, staff replies; read: history, status, opt-outs, sends;
admin: change the opt-out list; console: the web console."""

DEFAULT_LISTEN: Final = "127.0.0.1:8090"
DEFAULT_RATE_LIMIT: Final = "20/second;600/minute"
MIN_TOKEN_LENGTH: Final = 24
TOKEN_ADVICE: Final = "make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
TOKEN_ENV_PREFIX: Final = "RESPONDER_API_TOKEN_"
TOKEN_CREDENTIAL_PREFIX: Final = "api-token-"
EXTRA_INSTALL: Final = "pip install 'sms-responder[api]'"
EXTRA_MODULES: Final = ("fastapi", "uvicorn", "limits")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_RATE = re.compile(r"^\s*\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ApiToken:
    """One ``[[api.tokens]]``: who presents it (``name``) and what it may do."""

    name: str
    scopes: frozenset[str]
    token: str = field(repr=False)
    rate_limit: str = ""
    """Its own rate limit; "" = ``api.rate_limit``."""
    accounts: frozenset[str] | None = None
    """The accounts it may use (``accounts = [...]``); None = every account."""


@dataclass(frozen=True)
class ApiSettings:
    enabled: bool = False
    listen: str = DEFAULT_LISTEN
    """host:port the server binds to; loopback unless a TLS proxy is in front."""
    rate_limit: str = DEFAULT_RATE_LIMIT
    """Requests per token, in the ``limits`` notation: "20/second;600/minute"."""
    tokens: tuple[ApiToken, ...] = ()
    max_recipients: int = 1000
    """The most numbers one POST /v1/messages may name (a broadcast takes a list)."""
    max_text: int = 1000
    """The most characters of a message's text."""
    tls_in_front: bool = False
    """A TLS-terminating proxy (nginx) is in front: no warning for a non-loopback listen."""
    docs: bool = False
    """Serve the interactive documentation pages under /v1/docs."""

    @property
    def host(self) -> str:
        host = self.listen.rpartition(":")[0]
        return host.strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def is_loopback(self) -> bool:
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def env_name(token_name: str) -> str:
    """``RESPONDER_API_TOKEN_<NAME>``: the name upper-cased, "-" as "_"."""
    return TOKEN_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", token_name.upper())


def missing_modules() -> list[str]:
    """The modules of the ``api`` extra that are not installed."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def parse_api(table: Table, environ: Mapping[str, str], need_secrets: bool) -> ApiSettings:
    """``[api]`` and its ``[[api.tokens]]``; problems go to ``table``."""
    from responder.config import resolve_secret

    enabled = table.get_bool("enabled", ApiSettings.enabled)
    listen = table.get_str("listen", ApiSettings.listen)
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        table.error(
            "listen",
            f'must be "host:port" such as "{DEFAULT_LISTEN}" (port 0: any free one), '
            f"got {listen!r}",
        )
        listen = DEFAULT_LISTEN
    rate_limit = _rate(table, "rate_limit", ApiSettings.rate_limit)
    tokens: list[ApiToken] = []
    seen: set[str] = set()
    for item in table.get_tables("tokens"):
        name: str | None = item.get_str(
            "name", want='a short name such as "crm" (a-z, 0-9, "-", "_")'
        )
        if name is not None and not _NAME.match(name):
            item.error(
                "name", f'must be lower-case letters, digits, "-" or "_" (at most 32), got {name!r}'
            )
            name = None
        elif name in seen:
            item.error("name", f"{name!r} is declared twice: token names must be unique")
        scopes = item.get_str_list("scopes", [])
        unknown = [scope for scope in scopes if scope not in SCOPES]
        if unknown:
            item.error(
                "scopes",
                f"must be some of {', '.join(map(repr, SCOPES))}, got {unknown[0]!r}",
            )
        if not scopes:
            item.error("scopes", f'is required: a list such as ["{SEND}", "{READ}"]')
        own_rate = _rate(item, "rate_limit", "")
        accounts = frozenset(item.get_str_list("accounts")) if "accounts" in item else None
        if accounts is not None and not accounts:
            item.error("accounts", 'lists no account: name some (["acme"]), or remove it')
        secret = ""
        if name:
            secret = resolve_secret(
                item,
                "token",
                env=env_name(name),
                credential=TOKEN_CREDENTIAL_PREFIX + name,
                environ=environ,
                needed=need_secrets,
                min_length=MIN_TOKEN_LENGTH,
                advice=TOKEN_ADVICE,
            )
            if secret and any(secret == other.token for other in tokens):
                item.error("token", "is the same as another token's: give each its own")
        item.finish()
        if name:
            seen.add(name)
            tokens.append(
                ApiToken(
                    name=name,
                    scopes=frozenset(s for s in scopes if s in SCOPES),
                    token=secret,
                    rate_limit=own_rate,
                    accounts=accounts,
                )
            )
    settings = ApiSettings(
        enabled=enabled,
        listen=listen,
        rate_limit=rate_limit,
        tokens=tuple(tokens),
        max_recipients=table.get_int(
            "max_recipients", ApiSettings.max_recipients, min=1, max=100_000
        ),
        max_text=table.get_int("max_text", ApiSettings.max_text, min=1, max=10_000),
        tls_in_front=table.get_bool("tls_in_front", ApiSettings.tls_in_front),
        docs=table.get_bool("docs", ApiSettings.docs),
    )
    if enabled:
        missing = missing_modules()
        if missing:
            table.error(
                "enabled",
                f"the HTTP API needs the api extra (not installed: {', '.join(missing)}): "
                f"{EXTRA_INSTALL}",
            )
        if not tokens:
            table.error(
                "tokens",
                'the HTTP API is enabled without any token: add [[api.tokens]] name = "crm" '
                'scopes = ["send", "read"] token_file = "..."',
            )
    table.finish()
    return settings


def _rate(table: Table, key: str, default: str) -> str:
    value = table.get_str(key, default)
    if not value:
        return value
    try:
        from limits import parse_many

        parse_many(value)
        good = True
    except ImportError:
        good = all(_RATE.match(part) for part in value.split(";"))
    except ValueError:
        good = False
    if not good:
        table.error(
            key,
            f'must be rates such as "20/second;600/minute" (per second, minute, hour or day), '
            f"got {value!r}",
        )
        return default
    return value
