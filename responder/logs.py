"""Logging: structlog for our events and the stdlib loggers of httpx and APScheduler alike.

JSON lines for journald, readable lines for people. A redactor removes the configured
secrets, whatever put them there: from each event's values before they are rendered (the
JSON renderer and repr() escape quotes, backslashes and newlines, after which the secret
is no longer there as written), and again from the rendered line. Tracebacks never
include local variables.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from typing import Any, TextIO
from urllib.parse import quote, quote_plus

import structlog

REDACTED = "[REDACTED]"
_NOISY_LOGGERS = {
    # httpx logs every request URL at INFO, and a GET URL carries the password.
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    # APScheduler logs every job run at INFO: once per poll interval.
    "apscheduler": logging.WARNING,
}


_PLAIN = (bool, int, float, type(None))
"""Values rendered as they are, which cannot hold a secret string."""


class Redactor:
    """Replaces secrets, and their percent-encoded and escaped forms, in log output."""

    def __init__(self) -> None:
        self._needles: tuple[str, ...] = ()

    def set_secrets(self, secrets: Iterable[str], encodings: Iterable[str] = ("gbk",)) -> None:
        needles: set[str] = set()
        for secret in secrets:
            if not secret:
                continue
            needles.add(secret)
            # As the renderers escape it, should one reach the line unredacted.
            needles.update(
                form
                for form in (
                    json.dumps(secret, ensure_ascii=False)[1:-1],
                    json.dumps(secret)[1:-1],
                    repr(secret)[1:-1],
                )
                if form
            )
            for encoding in {*encodings, "utf-8"}:
                try:
                    needles.update(
                        {quote(secret, encoding=encoding), quote_plus(secret, encoding=encoding)}
                    )
                except (UnicodeEncodeError, LookupError):
                    continue
        # Longest first, so a secret that contains another is removed whole.
        self._needles = tuple(sorted(needles, key=len, reverse=True))

    def add_secrets(self, secrets: Iterable[str], encodings: Iterable[str] = ("gbk",)) -> None:
        """Redact these too, keeping the secrets already set (``set_secrets`` replaces them)."""
        kept = self._needles
        self.set_secrets(secrets, encodings)
        self._needles = tuple(sorted({*kept, *self._needles}, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            if needle in text:
                text = text.replace(needle, REDACTED)
        return text

    @property
    def active(self) -> bool:
        """Whether there is any secret to remove."""
        return bool(self._needles)

    def value(self, value: Any) -> Any:
        """A log value with the secrets removed before rendering: strings, the keys and
        items of dicts, lists and tuples, and any other object as its repr (which is how
        the renderers would show it)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, _PLAIN):
            return value
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(item) for item in value)
        try:
            return self(repr(value))
        except Exception:  # a broken __repr__ must not lose the log line
            return f"<{type(value).__name__}>"


redactor = Redactor()


def _redact_event(logger: Any, name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Remove the secrets from every value before the renderer escapes them."""
    if not redactor.active:
        return event_dict
    return {
        key: value if key == "exc_info" else redactor.value(value)
        for key, value in event_dict.items()
    }


class _RedactingRenderer:
    """The renderer, with its output redacted once more (a console traceback, say)."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        return redactor(self._renderer(logger, name, event_dict))


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    *,
    format: str = "auto",
    level: str = "info",
    secrets: Iterable[str] = (),
    encodings: Iterable[str] = ("gbk",),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (on reload)."""
    stream = stream or sys.stderr
    redactor.set_secrets(secrets, encodings)
    if format == "auto":
        format = "console" if stream.isatty() else "json"
    if format == "json":
        final: list[Any] = [
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            _redact_event,
            _RedactingRenderer(structlog.processors.JSONRenderer(ensure_ascii=False)),
        ]
    else:
        final = [
            _redact_event,  # the traceback (exc_info) is rendered as text: the final pass
            _RedactingRenderer(
                structlog.dev.ConsoleRenderer(
                    colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
                )
            ),
        ]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, floor in _NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
