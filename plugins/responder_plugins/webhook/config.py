"""``[webhook]``: the targets, their secrets and headers, and which messages each one sees."""

from __future__ import annotations

import dataclasses
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from responder import (
    Backoff,
    Message,
    Table,
    is_loopback_url,
    normalise,
    redact_url,
    resolve_secret,
)
from responder_plugins.webhook.client import ssl_context

PLUGIN: Final = "webhook"
MIN_SECRET: Final = 16
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
_EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
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
    events: tuple[str, ...] = ()
    """The event types (``app.emit``) delivered to this target besides those naming it."""


@dataclass(frozen=True)
class WebhookSettings:
    targets: tuple[Target, ...] = ()
    retry_initial: float = 5.0
    retry_max: float = 900.0
    breaker_threshold: int = 5
    breaker_cooldown: float = 60.0

    @property
    def backoff(self) -> Backoff:
        """Before retry n: ``retry_initial * 2**(n-1)`` up to ``retry_max``, drawn between
        half and all of it (jitter, so deliveries that failed together do not retry in step)."""
        return Backoff(initial=self.retry_initial, maximum=self.retry_max, jitter=0.5)

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
    default = WebhookSettings
    retry_initial = table.get_float(
        "retry_initial", default.retry_initial, min=0.1, max=3600, unit="seconds"
    )
    settings = WebhookSettings(
        retry_initial=retry_initial,
        retry_max=table.get_float(
            "retry_max", default.retry_max, min=retry_initial, unit="seconds"
        ),
        breaker_threshold=table.get_int(
            "breaker_threshold", default.breaker_threshold, min=1, max=1000
        ),
        breaker_cooldown=table.get_float(
            "breaker_cooldown", default.breaker_cooldown, min=1, unit="seconds"
        ),
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
            ssl_context(str(ca_file))
        except (OSError, ssl.SSLError) as err:
            table.error("ca_file", f"must be a PEM file of CA certificates; {ca_file}: {err}")
    mode = table.get_str("mode", Target.mode, choices=("relay", "reply"))
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
        timeout=table.get_float("timeout", Target.timeout, min=0.1, max=60, unit="seconds"),
        match=tuple(k for k in match if k),
        dst=dst,
        max_age=table.get_float("max_age", Target.max_age, min=1, max=30 * 86400, unit="seconds"),
        ca_file=ca_file,
        headers=_headers(table),
        reply_format=table.get_str("reply_format", Target.reply_format, choices=("json", "text")),
        allow_other_recipients=table.get_bool(
            "allow_other_recipients", Target.allow_other_recipients
        ),
        on_failure=table.get_str("on_failure", Target.on_failure, choices=("fallback", "silent")),
        concurrency=table.get_int("concurrency", Target.concurrency, min=1, max=16),
        events=_events(table),
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
    return resolve_secret(
        table,
        "secret",
        env=secret_env(name) if name else "",
        credential=secret_credential(name) if name else "",
        environ=environ,
        min_length=MIN_SECRET,
        advice="make one with: openssl rand -hex 32",
    )


def _events(table: Table) -> tuple[str, ...]:
    events = table.get_str_list("events", [])
    for event in events:
        if not _EVENT_TYPE.fullmatch(event):
            table.error(
                "events",
                "must list event types: lower-case dotted names such as "
                f'"conversation.completed" or "handover.requested"; got {event!r}',
            )
            return ()
    return tuple(dict.fromkeys(events))


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


def event_targets(settings: WebhookSettings, event_type: str, target: str) -> list[Target]:
    """The targets an event goes to: the one it names, or those subscribed to its type."""
    if target:
        return [t for t in settings.targets if t.name == target]
    return [t for t in settings.targets if event_type in t.events]


def answering_target(settings: WebhookSettings, message: Message) -> Target | None:
    """The first reply-mode target that wants the message: the one whose answer is sent."""
    for target in settings.targets:
        if target.mode == "reply" and matches(target, message):
            return target
    return None
