"""docs/plugins.md: every hook has a reference entry, and the tutorial's code works."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from responder import hookspecs
from responder.app import build_app
from responder.isolation import MESSAGE_HOOKS
from responder.testing import make_settings

DOC = Path(__file__).parent.parent / "docs" / "plugins.md"
HEADING = re.compile(r"^## (responder_\w+)\s*$", re.MULTILINE)
FILE_BLOCK = re.compile(r"<!-- file: (?P<name>\S+) -->\n```\w*\n(?P<code>.*?)\n```", re.DOTALL)


def hookspec_names() -> set[str]:
    return {name for name, value in vars(hookspecs).items() if hasattr(value, "responder_spec")}


def documented() -> dict[str, str]:
    """Each ``## responder_...`` heading and the text up to the next heading."""
    text = DOC.read_text(encoding="utf-8")
    matches = list(HEADING.finditer(text))
    ends = [m.start() for m in matches[1:]] + [len(text)]
    return {m.group(1): text[m.end() : end] for m, end in zip(matches, ends, strict=True)}


def tutorial_files() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    return {m.group("name"): m.group("code") + "\n" for m in FILE_BLOCK.finditer(text)}


def test_plugin_hooks_are_documented():
    missing = hookspec_names() - set(documented())
    assert not missing, f"hooks missing from docs/plugins.md (add '## <hook>' entries): {missing}"


def test_only_real_hooks_are_documented():
    unknown = set(documented()) - hookspec_names()
    assert not unknown, f"docs/plugins.md documents hooks that do not exist: {unknown}"


@pytest.mark.parametrize("hook", sorted(hookspec_names()))
def test_documented_signature_matches_the_hookspec(hook):
    entry = documented().get(hook, "")
    found = re.search(rf"^def {hook}\((.*?)\)", entry, re.MULTILINE)
    assert found, f"docs/plugins.md: '## {hook}' has no 'def {hook}(...)' signature line"
    names = [part.split(":")[0].strip() for part in found.group(1).split(",") if part.strip()]
    spec = getattr(hookspecs, hook)
    assert names == list(inspect.signature(spec).parameters)


@pytest.mark.parametrize(
    "part", ["**Thread:**", "**Called**", "**Arguments:**", "**Returns**", "**Results:**"]
)
@pytest.mark.parametrize("hook", sorted(hookspec_names()))
def test_every_hook_entry_says_when_what_and_how_results_combine(hook, part):
    entry = documented().get(hook, "")
    assert part in entry, f"docs/plugins.md: '## {hook}' lacks {part}"
    assert "@hookimpl" in entry, f"docs/plugins.md: '## {hook}' has no example"


@pytest.mark.parametrize("hook", sorted(hookspec_names()))
def test_every_hookspec_docstring_says_which_thread_calls_it(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert "Thread: " in doc, f"responder/hookspecs.py: {hook}'s docstring lacks 'Thread: ...'"


def test_the_message_hooks_are_the_processing_thread_hooks():
    on_processing_thread = {
        hook
        for hook in hookspec_names()
        if "Thread: the processing thread only" in (inspect.getdoc(getattr(hookspecs, hook)) or "")
    }
    assert on_processing_thread == set(MESSAGE_HOOKS)


PLUGGY_FEATURES = (
    "wrapper",
    "hookwrapper",
    "specname",
    "order",
    "raising_implementation",
    "raising_wrapper",
)
"""What pluggy does that the message hooks must honour; tests/test_pluggy_semantics.py has
a ``test_<feature>_...`` test parametrized over its ``CASES`` for each."""


def pluggy_feature_coverage() -> dict[str, set[str]]:
    """For each feature, the message hooks its ``test_<feature>_...`` tests cover."""
    module = importlib.import_module("tests.test_pluggy_semantics")
    covered: dict[str, set[str]] = {feature: set() for feature in PLUGGY_FEATURES}
    for name, function in vars(module).items():
        if not name.startswith("test_"):
            continue
        hooks = {
            value.hook
            for mark in getattr(function, "pytestmark", [])
            if mark.name == "parametrize"
            for value in mark.args[1]
            if isinstance(getattr(value, "hook", None), str)
        }
        for feature in PLUGGY_FEATURES:
            if name.startswith(f"test_{feature}_"):
                covered[feature] |= hooks
    return covered


@pytest.mark.parametrize("feature", PLUGGY_FEATURES)
@pytest.mark.parametrize("hook", MESSAGE_HOOKS)
def test_every_message_hook_has_a_test_of_each_pluggy_feature(hook, feature):
    assert hook in pluggy_feature_coverage()[feature], (
        f"tests/test_pluggy_semantics.py: no test_{feature}_... test covers {hook}"
    )


@pytest.fixture
def tutorial(tmp_path) -> Path:
    files = tutorial_files()
    assert {"responder_holiday.py", "holiday.toml", "test_holiday.py"} <= set(files)
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    return tmp_path


def test_the_tutorial_configuration_is_valid_for_the_tutorial_plugin(tutorial):
    spec = importlib.util.spec_from_file_location(
        "tutorial_holiday", tutorial / "responder_holiday.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sections = tomllib.loads((tutorial / "holiday.toml").read_text(encoding="utf-8"))
    settings = make_settings(
        sections, gateway_url="http://127.0.0.1:9", store_path=tutorial / "t.db"
    )

    app = build_app(settings, extra_plugins=(("holiday", module),), dry_run=True)
    try:
        assert app.plugin_config("holiday").notice.startswith("春节放假")
    finally:
        app.store.close()
        app.close()


def test_the_tutorial_tests_pass(tutorial):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tutorial), *sys.path])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_holiday.py"],
        cwd=tutorial,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
