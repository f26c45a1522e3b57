"""RESPONDER_LOAD_PLUGINS (an allow-list) and RESPONDER_TRACE_HOOKS (log every hook call)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from responder.logs import configure_logging
from responder.models import Message
from responder.plugin_host import DEFAULT_ENABLED, PluginHost
from responder.testing import make_settings

DROP_IN = """
from responder import hookimpl

@hookimpl
def responder_filter(message):
    return None
"""


@pytest.fixture
def settings(tmp_path):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "dropin.py").write_text(DROP_IN, encoding="utf-8")
    return make_settings(
        {"plugins": {"paths": [str(folder)]}},
        gateway_url="http://127.0.0.1:9",
        store_path=tmp_path / "s.db",
    )


@pytest.mark.parametrize(
    ("allowed", "loaded"),
    [
        (None, [*DEFAULT_ENABLED, "dropin"]),
        ("keywords", ["keywords"]),
        ("guard, keywords", ["keywords", "guard"]),
        ("dropin", ["dropin"]),
        ("", []),
        ("nosuchplugin", []),
    ],
)
def test_load_plugins_allows_only_the_named_plugins(settings, allowed, loaded):
    environ = {} if allowed is None else {"RESPONDER_LOAD_PLUGINS": allowed}
    host = PluginHost(settings, environ=environ)
    assert [n for n in host.names() if n in {*DEFAULT_ENABLED, "dropin"}] == loaded
    assert not host.problems


def test_load_plugins_applies_to_the_command_line(tmp_path):
    absent = str(tmp_path / "absent.toml")  # no config: built-ins and entry points only
    env = {**os.environ, "RESPONDER_LOAD_PLUGINS": "optout", "RESPONDER_CONFIG": absent}
    result = subprocess.run(
        [sys.executable, "-m", "responder", "plugins"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    names = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert names == ["optout"], result.stdout + result.stderr


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)
    yield stream
    configure_logging(format="json", level="warning")


def hook_calls(stream: io.StringIO) -> list[dict]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == "hook_call"]


def message(text: str) -> Message:
    return Message(
        id=7, gateway_id=7, src="13800138000", dst="", text=text, received_at=None, raw=""
    )


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_trace_hooks_logs_each_call_with_arguments_and_result(settings, log_stream, value):
    host = PluginHost(settings, environ={"RESPONDER_TRACE_HOOKS": value})

    host.hook.responder_filter(app=object(), message=message("你好"))

    calls = hook_calls(log_stream)
    traced = {call["plugin"] for call in calls}
    assert "dropin" in traced
    dropin = next(call for call in calls if call["plugin"] == "dropin")
    assert dropin["hook"] == "responder_filter"
    assert dropin["result"] == "None"
    assert "你好" in dropin["arguments"]["message"]
    assert "app" not in dropin["arguments"]


@pytest.mark.parametrize(
    "environ", [{}, {"RESPONDER_TRACE_HOOKS": "0"}, {"RESPONDER_TRACE_HOOKS": ""}]
)
def test_without_trace_hooks_no_call_is_logged(settings, log_stream, environ):
    host = PluginHost(settings, environ=environ)

    host.hook.responder_filter(app=object(), message=message("hi"))

    assert hook_calls(log_stream) == []
