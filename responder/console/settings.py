"""``[console]``: the staff console's settings (standard library only).

Read by ``responder.config`` like the other core sections; the templates and the web
framework are only imported when the API server starts with the console on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from responder.api.settings import CONSOLE

if TYPE_CHECKING:
    from responder.api.settings import ApiSettings
    from responder.config import Table

LANGUAGES: Final = ("zh", "en")
SECURE_COOKIES: Final = ("auto", "true", "false")
DEFAULT_SESSION_TIMEOUT: Final = 8 * 3600.0
EXTRA_MODULES: Final = ("jinja2",)


@dataclass(frozen=True)
class ConsoleSettings:
    enabled: bool = False
    """Serve the console under /console on the API's listener (``[api]`` must be on)."""
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    """Seconds a signed-in session lasts without a request before it ends."""
    secure_cookies: str = "auto"
    """"auto": the session cookie is ``Secure`` when the request came over TLS (directly,
    or through a proxy in ``trusted_proxies`` saying so in X-Forwarded-Proto); "true":
    always; "false": never (plain HTTP on loopback only)."""
    language: str = "zh"
    """The pages' language until someone picks the other one: "zh" or "en"."""
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    """Addresses whose X-Forwarded-Proto and X-Forwarded-For headers are believed."""


def parse_console(table: Table) -> ConsoleSettings:
    """``[console]``; problems go to ``table``."""
    enabled = table.get_bool("enabled", ConsoleSettings.enabled)
    timeout = table.get_float(
        "session_timeout",
        ConsoleSettings.session_timeout,
        min=60,
        max=30 * 86400,
        unit="seconds",
    )
    raw = table.get_raw("secure_cookies", ConsoleSettings.secure_cookies)
    secure = ConsoleSettings.secure_cookies
    if isinstance(raw, bool):
        secure = "true" if raw else "false"
    elif isinstance(raw, str) and raw in SECURE_COOKIES:
        secure = raw
    else:
        # Not a secret, though named like one (cookie): the value is shown.
        table.error("secure_cookies", f'must be "auto", true or false, got {raw!r}')
    language = table.get_str("language", ConsoleSettings.language, choices=LANGUAGES)
    proxies = table.get_str_list("trusted_proxies", list(ConsoleSettings.trusted_proxies))
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            table.error(
                "trusted_proxies",
                f'must be IP addresses or networks such as "127.0.0.1", got {proxy!r}',
            )
            proxies = ConsoleSettings.trusted_proxies
            break
    table.finish()
    return ConsoleSettings(
        enabled=enabled,
        session_timeout=timeout,
        secure_cookies=secure,
        language=language,
        trusted_proxies=tuple(proxies),
    )


def missing_modules() -> list[str]:
    """The modules the console needs beyond the API's that are not installed."""
    import importlib.util

    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def console_problems(console: ConsoleSettings, api: ApiSettings) -> list[tuple[str, str]]:
    """(key, problem) pairs of a console that cannot be served with these API settings."""
    if not console.enabled:
        return []
    problems: list[tuple[str, str]] = []
    if not api.enabled:
        problems.append(
            ("enabled", "the console is served on the API's listener: set [api] enabled = true")
        )
    if api.tokens and not any(CONSOLE in token.scopes for token in api.tokens):
        problems.append(
            (
                "enabled",
                'no [[api.tokens]] has the "console" scope: nobody could sign in; add '
                'scopes = ["console"] to a token',
            )
        )
    missing = missing_modules()
    if missing:
        problems.append(
            (
                "enabled",
                f"the console needs {', '.join(missing)}, which is not installed: "
                "pip install 'sms-responder[api]'",
            )
        )
    return problems
