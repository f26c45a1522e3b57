"""Webhook relay: every inbound SMS is POSTed, signed, to the business's HTTP services.

Configured as ``[[webhook.targets]]`` (see docs/webhooks.md). The observe hook only writes
one delivery row per (message, target); a periodic job hands due rows to a small thread
pool (responder_plugins.webhook_delivery), so a slow target never delays reading, processing,
sending or another target. A ``mode = "reply"`` target answers the sender: this plugin's
reply hook holds the message for it, and the target's answer (or, if the target fails
for good, the other plugins' answer) is queued later with ``app.reply_later``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import ssl
import sys
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import structlog

import responder_plugins.webhook_delivery as delivery
from responder import hookimpl
from responder.commands import CommandRegistry
from responder.config import ConfigSection, Table, is_loopback_url, redact_url
from responder.logs import redactor
from responder.models import Message, Reply, StatusSection
from responder.normalise import normalise

if TYPE_CHECKING:
    from responder.app import App

PLUGIN: Final = "webhook"
DEFERRED: Final = "deferred"
"""The meta key of the reply that holds a message for a reply-mode target."""
TICK: Final = 1.0
"""Seconds between looks for due deliveries."""
MIN_SECRET: Final = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS: Final = frozenset(
    {
        "content-type",
        "content-length",
        "user-agent",
        "host",
        "transfer-encoding",
        "connection",
        "accept-encoding",
    }
)
_SENSITIVE_HEADER = re.compile(r"auth|token|key|secret|cookie|signature|password", re.IGNORECASE)

log = structlog.get_logger("responder.webhook")

_engines: weakref.WeakKeyDictionary[App, delivery.Deliverer] = weakref.WeakKeyDictionary()
"""The delivery engine of each started App (none under dry_run); removed at shutdown."""


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One ``[[webhook.targets]]`` entry."""

    name: str
    url: str
    secret: str = field(repr=False)
    mode: str = "relay"
    """"relay": forward and forget; "reply": the response may carry the answer."""
    timeout: float = 5.0
    match: tuple[str, ...] = ()
    """Normalised keywords; empty = every message."""
    dst: str = ""
    max_age: float = 86400.0
    ca_file: Path | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    reply_format: str = "json"
    allow_other_recipients: bool = False
    on_failure: str = "fallback"
    concurrency: int = 2


@dataclass(frozen=True)
class WebhookSettings:
    targets: tuple[Target, ...] = ()
    retry_initial: float = 5.0
    retry_max: float = 900.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 60.0

    def secrets(self) -> tuple[str, ...]:
        sensitive = (v for t in self.targets for k, v in t.headers if _SENSITIVE_HEADER.search(k))
        return (*(t.secret for t in self.targets), *(v for v in sensitive if len(v) >= 8))


def secret_env(name: str) -> str:
    """``RESPONDER_WEBHOOK_<NAME>_SECRET``: the name upper-cased, other characters as ``_``."""
    return f"RESPONDER_WEBHOOK_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_SECRET"


def secret_credential(name: str) -> str:
    """``webhook-<name>-secret``: the systemd credential (``LoadCredential=``) of a target."""
    return f"webhook-{name}-secret"


def parse(table: Table, environ: Mapping[str, str] | None = None) -> WebhookSettings:
    environ = os.environ if environ is None else environ
    retry_initial = table.get_float("retry_initial", 5.0, min=0.1, max=3600, unit="seconds")
    settings = WebhookSettings(
        retry_initial=retry_initial,
        retry_max=table.get_float("retry_max", 900.0, min=retry_initial, unit="seconds"),
        breaker_threshold=table.get_int("breaker_threshold", 5, min=1, max=1000),
        breaker_cooldown=table.get_float("breaker_cooldown", 60.0, min=1, unit="seconds"),
    )
    targets: list[Target] = []
    seen: dict[str, str] = {}
    for target_table in table.get_tables("targets"):
        target = _target(target_table, environ)
        target_table.finish()
        if target is None:
            continue
        key = secret_env(target.name)
        if key in seen:
            target_table.error(
                "name",
                f"{target.name!r} clashes with the target {seen[key]!r} (names must differ "
                "in more than case and punctuation)",
            )
            continue
        seen[key] = target.name
        targets.append(target)
    return dataclasses.replace(settings, targets=tuple(targets))


def _target(table: Table, environ: Mapping[str, str]) -> Target | None:
    name = table.get_str("name", "")
    if not _NAME.fullmatch(name):
        table.error(
            "name",
            "is required: up to 40 letters, digits, '-' or '_', starting with a letter or "
            f'digit, e.g. "crm"; got {name!r}',
        )
        name = ""
    url = _url(table)
    secret = _secret(table, name, environ)
    ca_file = table.get_path("ca_file", "")
    if ca_file is not None:
        try:
            delivery.ssl_context(str(ca_file))
        except (OSError, ssl.SSLError) as err:
            table.error("ca_file", f"must be a PEM file of CA certificates; {ca_file}: {err}")
    mode = table.get_str("mode", "relay", choices=("relay", "reply"))
    match = tuple(normalise(k) for k in table.get_str_list("match", []))
    if any(not k for k in match):
        table.error("match", "must not contain an empty keyword (or one of punctuation only)")
    dst = table.get_str("dst", "")
    if dst and not dst.isdigit():
        table.error("dst", f"must be digits (the number or its extension), got {dst!r}")
    target = Target(
        name=name,
        url=url,
        secret=secret,
        mode=mode,
        timeout=table.get_float("timeout", 5.0, min=0.1, max=60, unit="seconds"),
        match=tuple(k for k in match if k),
        dst=dst,
        max_age=table.get_float("max_age", 86400.0, min=1, max=30 * 86400, unit="seconds"),
        ca_file=ca_file,
        headers=_headers(table),
        reply_format=table.get_str("reply_format", "json", choices=("json", "text")),
        allow_other_recipients=table.get_bool("allow_other_recipients", False),
        on_failure=table.get_str("on_failure", "fallback", choices=("fallback", "silent")),
        concurrency=table.get_int("concurrency", 2, min=1, max=16),
    )
    if mode == "relay":
        for key in ("reply_format", "allow_other_recipients", "on_failure"):
            if key in table:
                table.error(key, 'only applies to mode = "reply"')
    return target if name and url and secret else None


def _url(table: Table) -> str:
    url = table.get_str("url", "")
    allow_http = table.get_bool("allow_http", False)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        table.error("url", f"is required: an https:// address, got {redact_url(url)!r}")
        return ""
    if parts.username or parts.password or parts.fragment:
        table.error(
            "url",
            "must not carry a login or a fragment (put credentials in headers, "
            "where they stay out of the logs)",
        )
        return ""
    if parts.scheme == "http" and not allow_http and not is_loopback_url(url):
        table.error(
            "url",
            "must be https:// (messages are personal data); for a plain-http service on a "
            "private network set allow_http = true",
        )
        return ""
    return url


def _secret(table: Table, name: str, environ: Mapping[str, str]) -> str:
    """The target's secret, from (first found) the environment variable, ``secret``,
    ``secret_file`` or the systemd credential: as the gateway password is found."""
    inline = table.get_str("secret", "")
    secret_file = table.get_path("secret_file", "")
    env = secret_env(name) if name else ""
    credential = secret_credential(name or "<name>")
    if inline and secret_file:
        table.error("secret", "set either secret or secret_file, not both")
    key = "secret"
    if env and environ.get(env):
        secret, where = environ[env], f"the environment variable {env}"
    elif inline:
        secret, where = inline, "secret"
    else:
        path, key, where = secret_file, "secret_file", f"the file {str(secret_file)!r}"
        if path is None and name and environ.get("CREDENTIALS_DIRECTORY"):
            found = Path(environ["CREDENTIALS_DIRECTORY"]) / credential
            if found.exists():
                path, key, where = found, "secret", f"the systemd credential {credential!r}"
        if path is None:
            table.error(
                "secret",
                f"no secret: set secret, secret_file, the systemd credential {credential!r} "
                f"or the environment variable {env or 'RESPONDER_WEBHOOK_<NAME>_SECRET'}",
            )
            return ""
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except OSError as err:
            table.error(key, f"cannot read {str(path)!r}: {err.strerror}")
            return ""
    if len(secret) < MIN_SECRET:
        table.error(
            key,
            f"the secret from {where} must be at least {MIN_SECRET} characters, got "
            f"{len(secret)} (make one with: openssl rand -hex 32)",
        )
        return ""
    return secret


def _headers(table: Table) -> tuple[tuple[str, str], ...]:
    headers = table.get_table("headers", secret=True)  # errors never show a header's value
    result = []
    for key in list(headers.data):
        value = headers.get_str(key, "")
        if not _HEADER_NAME.fullmatch(key):
            headers.error(key, "is not a valid HTTP header name")
        elif key.lower() in _RESERVED_HEADERS or key.lower().startswith("x-responder-"):
            headers.error(key, "is set by the responder and cannot be changed")
        elif any(c in value for c in "\r\n\0"):
            headers.error(key, "must not contain line breaks")
        else:
            result.append((key, value))
    return tuple(result)


# -- which targets see a message -----------------------------------------------------------


def matches(target: Target, message: Message) -> bool:
    """Whether a target wants a message: its ``dst`` and ``match`` filters, if any."""
    if target.dst and not message.dst.endswith(target.dst):
        return False
    if not target.match:
        return True
    text = normalise(message.text)
    return any(text == keyword or text.startswith(keyword + " ") for keyword in target.match)


def answering_target(settings: WebhookSettings, message: Message) -> Target | None:
    """The first reply-mode target that wants the message: the one whose answer is sent."""
    for target in settings.targets:
        if target.mode == "reply" and matches(target, message):
            return target
    return None


def _settings(app: App) -> WebhookSettings:
    return app.plugin_config(PLUGIN) or WebhookSettings()


# -- hooks ---------------------------------------------------------------------------------


@hookimpl(trylast=True)
def responder_config_section() -> ConfigSection:
    return ConfigSection(PLUGIN, parse)


@hookimpl(trylast=True)
def responder_startup(app: App) -> None:
    settings = _settings(app)
    if not settings.targets or app.dry_run:
        return
    redactor.add_secrets(settings.secrets(), (app.settings.gateway.encoding,))
    delivery.create_tables(app)
    engine = delivery.Deliverer(app, settings, plugin=PLUGIN)
    engine.recover()
    _engines[app] = engine
    app.every(TICK, engine.tick, name=PLUGIN)


@hookimpl(trylast=True)
def responder_shutdown(app: App) -> None:
    engine = _engines.pop(app, None)
    if engine is not None:
        engine.close()


# Neither tryfirst nor trylast, on purpose: tryfirst plugins (optout confirms an
# unsubscribe word) and user plugins (registered later) answer before it; the trylast
# built-ins (keywords) only after it, so a reply target's messages are held from them.
@hookimpl
def responder_reply(app: App, message: Message) -> Reply | None:
    """Hold a message that a reply-mode target will answer: the plugins after this one
    are not asked, and the target's answer comes later through ``app.reply_later``."""
    target = answering_target(_settings(app), message)
    if target is None:
        return None
    return Reply(text="", meta=((DEFERRED, f"{PLUGIN}:{target.name}"),))


@hookimpl(trylast=True)
def responder_observe(app: App, message: Message, reply: Reply | None, dropped: str | None) -> None:
    settings = _settings(app)
    if app.dry_run or not settings.targets:
        return
    held_for = dict(reply.meta).get(DEFERRED) if reply and reply.plugin == PLUGIN else None
    modes = [
        (target, "reply" if held_for == f"{PLUGIN}:{target.name}" else "relay")
        for target in settings.targets
        if matches(target, message)
    ]
    if modes:
        delivery.create_rows(app, message, modes, dropped)


@hookimpl(trylast=True)
def responder_status(app: App) -> StatusSection | None:
    settings = _settings(app)
    figures = delivery.status_figures(app, settings)
    if not settings.targets and not any(value for _name, value in figures):
        return None  # never used: no section
    return StatusSection(title=PLUGIN, figures=figures)


@hookimpl(trylast=True)
def responder_register_commands(commands: CommandRegistry) -> None:
    commands.add(
        PLUGIN,
        help="webhook deliveries: 'retry' re-queues dead letters",
        setup=_setup_command,
        run=_run_command,
    )


def _setup_command(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("retry",), help="retry: re-queue dead letters")
    parser.add_argument(
        "--target",
        action="append",
        metavar="NAME",
        help="only this target's dead letters (repeatable; default: every target)",
    )


def _run_command(app: App, args: argparse.Namespace) -> int:
    settings = _settings(app)
    known = {target.name: target for target in settings.targets}
    names = args.target or list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        print(
            f"webhook.targets has no target {unknown[0]!r} (targets: {', '.join(known) or 'none'})",
            file=sys.stderr,
        )
        return 2
    delivery.create_tables(app)  # a command runs without responder_startup
    counts = delivery.requeue_dead(app, [known[name] for name in names])
    for name, count in counts.items():
        print(f"{name}: {count} dead letter(s) re-queued")
    return 0
