"""Loading plugins: a failed import is one line, a plugin found twice loads once, a plugin
without a hook implementation is warned about."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from responder.app import build_app
from responder.logs import configure_logging
from responder.plugin_host import PluginHost
from responder.testing import make_settings
from tests.conftest import offline_config, write_config

HELLO = """
from responder import hookimpl


@hookimpl
def responder_check(app):
    return ["hello checked"]
"""


def settings_with(tmp_path: Path, plugins: dict[str, Any]):
    return make_settings(
        {"plugins": plugins}, gateway_url="http://127.0.0.1:9", store_path=tmp_path / "s.db"
    )


def folder_with(tmp_path: Path, files: dict[str, str]) -> Path:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    for name, code in files.items():
        (folder / name).write_text(code, encoding="utf-8")
    return folder


def responder(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "responder", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def config_file(tmp_path: Path, plugins: dict[str, Any]) -> Path:
    return write_config(tmp_path / "config.toml", offline_config(tmp_path, plugins=plugins))


# -- a plugin that fails to import --------------------------------------------------------

BROKEN = "import os\n\nimport lunardate_not_installed  # noqa\n"


def test_a_failed_import_is_one_line_naming_the_plugin_the_error_and_the_line(tmp_path):
    folder = folder_with(tmp_path, {"holiday.py": BROKEN})
    config = config_file(tmp_path, {"paths": [str(folder)]})

    result = responder("check", "-c", str(config))

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"plugin 'holiday' (path {folder / 'holiday.py'}) failed to load: ModuleNotFoundError: "
        f"No module named 'lunardate_not_installed' (at {folder / 'holiday.py'} line 3)"
    ]


def test_the_traceback_of_a_failed_import_is_logged_at_debug_level(tmp_path):
    folder = folder_with(tmp_path, {"holiday.py": BROKEN})
    stream = io.StringIO()
    configure_logging(format="json", level="debug", stream=stream)
    try:
        host = PluginHost(settings_with(tmp_path, {"paths": [str(folder)]}))
    finally:
        configure_logging(format="console", level="warning")

    [record] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert (record["event"], record["level"], record["plugin"]) == (
        "plugin_load_failed",
        "debug",
        "holiday",
    )
    assert "lunardate_not_installed" in json.dumps(record["exception"])
    assert len(host.problems) == 1


def test_a_plugin_whose_parse_raises_is_one_line_too(tmp_path):
    code = (
        "from responder import hookimpl\nfrom responder.config import ConfigSection\n\n"
        "def parse(table):\n    return 1 / 0\n\n"
        "@hookimpl\ndef responder_config_section():\n    return ConfigSection('odd', parse)\n"
    )
    folder = folder_with(tmp_path, {"odd.py": code})
    settings = settings_with(tmp_path, {"paths": [str(folder)]})

    _configs, problems = PluginHost(settings).parse_configs(settings)

    assert problems == [
        "<responder_config>: [odd]: the plugin 'odd' failed to read it: ZeroDivisionError: "
        f"division by zero (at {folder / 'odd.py'} line 5)"
    ]


# -- a plugin found twice -----------------------------------------------------------------


@pytest.fixture
def installed_hello(tmp_path: Path) -> Path:
    """A folder holding the module responder_hello and a distribution that declares it as
    the entry point "hello", as ``pip install`` would leave them in site-packages."""
    site = tmp_path / "site"
    dist = site / "responder_hello-1.0.dist-info"
    dist.mkdir(parents=True)
    (site / "responder_hello.py").write_text(HELLO, encoding="utf-8")
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: responder-hello\nVersion: 1.0\n", encoding="utf-8"
    )
    (dist / "entry_points.txt").write_text(
        "[responder]\nhello = responder_hello\n", encoding="utf-8"
    )
    return site


def test_an_entry_point_also_listed_in_modules_loads_once_with_a_warning(tmp_path, installed_hello):
    config = config_file(tmp_path, {"modules": ["responder_hello"]})

    result = responder("check", "-c", str(config), pythonpath=installed_hello)

    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    warnings = result.stderr.splitlines()
    assert warnings.count("warning: hello checked") == 1  # its hook ran once
    [twice] = [w for w in warnings if "loaded already" in w]
    assert twice == (
        "warning: plugin 'responder_hello' (module responder_hello) is plugin 'hello' "
        "(entry point responder-hello), loaded already: it is loaded once; "
        "list it in one place only"
    )


def test_responder_plugins_lists_a_plugin_found_twice_once(tmp_path, installed_hello):
    config = config_file(tmp_path, {"modules": ["responder_hello"]})

    result = responder("plugins", "-c", str(config), pythonpath=installed_hello)

    assert result.returncode == 0
    assert "hello  (entry point: responder-hello)" in result.stdout
    assert "responder_hello  (" not in result.stdout
    assert "loaded already" in result.stderr


@pytest.mark.parametrize(
    ("plugins", "twice"),
    [
        ({"modules": ["responder_plugins.keywords"]}, 1),
        ({"paths": ["plugins", "plugins/hello.py"]}, 1),
        ({"paths": ["plugins"]}, 0),
    ],
    ids=["built-in as a module", "file and its folder", "folder once"],
)
def test_a_plugin_found_twice_is_registered_once(tmp_path, plugins, twice):
    folder_with(tmp_path, {"hello.py": HELLO})
    paths = [str(tmp_path / path) for path in plugins.get("paths", [])]

    host = PluginHost(settings_with(tmp_path, {**plugins, "paths": paths}))

    assert host.problems == []
    assert [w.event for w in host.warnings] == ["plugin_loaded_twice"] * twice
    assert len(host.names()) == len(set(host.names()))
    assert [name for name, _ in host.implementations("responder_reply")].count("keywords") == 1
    checks = [name for name, _ in host.implementations("responder_check")]
    assert checks.count("hello") == (1 if paths else 0)


# -- a plugin without a hook implementation ------------------------------------------------


@pytest.mark.parametrize(
    ("code", "event", "expected"),
    [
        ("X = 1\n", "plugin_without_hooks", "has no hook implementation, so it does nothing"),
        (
            "def responder_reply(message):\n    return None\n",
            "plugin_without_hooks",
            "mark each hook function with @responder.hookimpl (responder_reply lacks it)",
        ),
        (
            "from responder import hookimpl\n\n@hookimpl\ndef responder_filter(message):\n"
            "    return None\n\ndef responder_observe(message):\n    pass\n",
            "plugin_hook_not_marked",
            "responder_observe is not marked @responder.hookimpl, so it is never called",
        ),
    ],
    ids=["nothing", "unmarked hook only", "one hook unmarked"],
)
def test_a_plugin_that_does_nothing_is_warned_about(tmp_path, code, event, expected):
    folder = folder_with(tmp_path, {"lazy.py": code})

    host = PluginHost(settings_with(tmp_path, {"paths": [str(folder)]}))

    [warning] = host.warnings
    assert (warning.event, warning.plugin) == (event, "lazy")
    assert warning.text.startswith(f"plugin 'lazy' (path {folder / 'lazy.py'})")
    assert expected in warning.text
    assert host.problems == [] and "lazy" in host.names()


def test_check_prints_the_warning_about_a_plugin_without_hooks(tmp_path):
    folder = folder_with(tmp_path, {"lazy.py": "X = 1\n"})
    config = config_file(tmp_path, {"paths": [str(folder)]})

    result = responder("check", "-c", str(config))

    assert (result.returncode, result.stdout) == (0, "ok\n")
    assert result.stderr.startswith("warning: plugin 'lazy' (path ")
    assert "has no hook implementation" in result.stderr


def test_the_daemon_logs_the_warning_once_when_it_loads_the_plugins(tmp_path):
    folder = folder_with(tmp_path, {"lazy.py": "X = 1\n"})
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)
    try:
        app = build_app(settings_with(tmp_path, {"paths": [str(folder)]}), dry_run=True)
        app.store.close()
        app.close()
    finally:
        configure_logging(format="console", level="warning")

    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    [record] = [r for r in records if r["event"] == "plugin_without_hooks"]
    assert (record["level"], record["plugin"]) == ("warning", "lazy")
