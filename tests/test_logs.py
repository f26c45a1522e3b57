"""Logs: JSON lines for journald, one pipeline for every logger, no secrets."""

from __future__ import annotations

import io
import json
import logging
from urllib.parse import quote

import pytest
import structlog

from responder.logs import REDACTED, configure_logging


@pytest.fixture
def captured():
    stream = io.StringIO()

    def configure(**kwargs):
        configure_logging(format="json", level="info", stream=stream, **kwargs)
        return stream

    yield configure
    configure_logging(format="console", level="warning")


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_events_are_json_lines_with_level_and_timestamp(captured):
    stream = captured()
    structlog.get_logger("responder.test").info("message_received", src="13800138000", text="你好")
    [record] = lines(stream)
    assert record["event"] == "message_received"
    assert record["level"] == "info"
    assert record["text"] == "你好"
    assert record["timestamp"].endswith("Z")


def test_stdlib_loggers_go_through_the_same_renderer(captured):
    stream = captured()
    logging.getLogger("apscheduler.scheduler").error("Scheduler is broken")
    [record] = lines(stream)
    assert (record["event"], record["logger"]) == ("Scheduler is broken", "apscheduler.scheduler")


def test_tracebacks_do_not_include_local_variables(captured):
    stream = captured()

    def failing(password: str) -> None:
        token = "local-secret-value"
        raise RuntimeError(f"boom {len(token)}")

    try:
        failing("argument-secret-value")
    except RuntimeError:
        structlog.get_logger("responder.test").exception("failed")
    output = stream.getvalue()
    assert "RuntimeError" in output
    assert "local-secret-value" not in output
    assert "argument-secret-value" not in output


@pytest.mark.parametrize(
    "leak",
    ["pw-密码", quote("pw-密码", encoding="gbk"), quote("pw-密码", encoding="utf-8")],
    ids=["plain", "gbk-percent-encoded", "utf8-percent-encoded"],
)
def test_secrets_are_redacted_in_every_form(captured, leak):
    stream = captured(secrets=["pw-密码"])
    structlog.get_logger("responder.test").error("oops", url=f"http://x/?pwd={leak}")
    logging.getLogger("other").error("stdlib %s", leak)
    assert "pw-" not in stream.getvalue()
    assert stream.getvalue().count(REDACTED) == 2


def test_httpx_request_lines_are_not_logged_even_at_debug(captured):
    stream = io.StringIO()
    configure_logging(format="json", level="debug", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: GET http://x/?pwd=1")
    assert stream.getvalue() == ""


# Secrets that JSON or repr() escape: the redactor must catch them before the renderer does.
AWKWARD_SECRETS = {
    "double quote": 'q7zx"k3v',
    "backslash": "q7zx\\k3v",
    "newline": "q7zx\nk3v",
    "ampersand": "q7zx&k3v",
    "non-ascii": "q7zx密码k3v",
    "all of them": 'q7zx"\\\n&密码k3v',
}


class Token:
    """An object whose repr carries a secret (as a client object might)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def __repr__(self) -> str:
        return f"Token({self.secret!r})"


def log_everywhere(secret: str) -> None:
    """The secret as a string value, inside nested values, in an object's repr, in an
    exception's message, and through a stdlib logger."""
    logger = structlog.get_logger("responder.test")
    logger.error("in_values", text=f"pw={secret}", nested={"pw": [secret]}, token=Token(secret))
    try:
        raise RuntimeError(f"login refused for {secret}")
    except RuntimeError as err:
        logger.exception("in_exception", error=err)
    logging.getLogger("other").error("stdlib %s", secret)


@pytest.fixture
def rendered():
    def render(format: str, secret: str) -> str:
        stream = io.StringIO()
        configure_logging(format=format, level="info", stream=stream, secrets=[secret])
        log_everywhere(secret)
        return stream.getvalue()

    yield render
    configure_logging(format="console", level="warning")


@pytest.mark.parametrize("format", ["json", "console"])
@pytest.mark.parametrize("secret", AWKWARD_SECRETS.values(), ids=AWKWARD_SECRETS.keys())
def test_a_secret_the_renderer_escapes_is_still_redacted(rendered, format, secret):
    output = rendered(format, secret)

    assert "q7zx" not in output and "k3v" not in output, output
    assert "login refused for" in output and "RuntimeError" in output
    assert output.count(REDACTED) >= 5


@pytest.mark.parametrize("secret", AWKWARD_SECRETS.values(), ids=AWKWARD_SECRETS.keys())
def test_json_lines_stay_valid_json_after_redaction(rendered, secret):
    records = [json.loads(line) for line in rendered("json", secret).splitlines()]

    assert [r["event"] for r in records] == ["in_values", "in_exception", f"stdlib {REDACTED}"]
    assert records[0]["nested"] == {"pw": [REDACTED]}
