"""``responder check``: every problem, core and plugins, in one run; warnings never fail it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from responder.cli import main
from tests.conftest import offline_config, write_config

EMOJI = "😀"
LONG = "您好，" * 40  # 120 characters: more than one SMS


def check(tmp_path: Path, capsys, data: dict[str, Any]) -> tuple[int, str, str]:
    config = write_config(tmp_path / "config.toml", data)
    code = main(["check", "-c", str(config)])
    output = capsys.readouterr()
    return code, output.out, output.err


def drop_in(tmp_path: Path, name: str, code: str) -> dict[str, Any]:
    folder = tmp_path / "plugins"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(code, encoding="utf-8")
    return {"paths": [str(folder)]}


def test_core_plugin_loading_and_plugin_section_problems_come_in_one_run(tmp_path, capsys):
    data = offline_config(
        tmp_path,
        gateway={"method": "put"},
        replies={"max_parts": 20},
        plugins=drop_in(tmp_path, "broken", "raise ImportError('missing dependency')\n"),
        keywords={"rulez": []},
        webhook={"targets": [{"name": "crm", "url": "ftp://crm.example.com"}]},
    )

    code, out, err = check(tmp_path, capsys, data)

    assert (code, out) == (2, "")
    config = tmp_path / "config.toml"
    for expected in [
        f"{config}: gateway.method: must be one of",
        f"{config}: replies.max_parts: must be at most 10",
        "plugin 'broken' (path",
        f"{config}: keywords.rulez: unknown key",
        f"{config}: webhook.targets[0].url: is required",
    ]:
        assert expected in err, err


def test_a_valid_configuration_prints_ok_and_nothing_else(tmp_path, capsys):
    assert check(tmp_path, capsys, offline_config(tmp_path)) == (0, "ok\n", "")


RULE = {"keywords": ["CX"], "reply": "已受理"}


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        (
            {"keywords": {"rules": [{**RULE, "reply": f"已受理{EMOJI}"}]}},
            f"keywords.rules[0].reply: has characters the gateway encoding 'gbk' cannot carry: "
            f"'{EMOJI}'",
        ),
        (
            {"keywords": {"fallback": f"请回复CX{EMOJI}"}},
            "keywords.fallback: has characters the gateway encoding 'gbk' cannot carry",
        ),
        (
            {"optout": {"confirmation": f"已退订{EMOJI}"}},
            "optout.confirmation: has characters the gateway encoding 'gbk' cannot carry",
        ),
        (
            {"optout": {"resubscribe_confirmation": f"已恢复{EMOJI}"}},
            "optout.resubscribe_confirmation: has characters",
        ),
        (
            {"replies": {"signature": f"【店{EMOJI}】"}},
            "replies.signature: has characters the gateway encoding 'gbk' cannot carry",
        ),
        (
            {"replies": {"max_parts": 1}, "keywords": {"rules": [{**RULE, "reply": LONG}]}},
            "keywords.rules[0].reply: is 120 characters, more than replies.max_parts = 1 SMS",
        ),
        (
            {
                "replies": {"signature": "【速达快递】"},
                "optout": {"confirmation": "【速达快递】已退订"},
            },
            "optout.confirmation: already contains the signature '【速达快递】'",
        ),
        (
            {
                "replies": {"signature": "【速达快递】"},
                "keywords": {"fallback": "【速达快递】请回复CX"},
            },
            "keywords.fallback: already contains the signature",
        ),
        ({"plugins": {"disabled": ["optout"]}}, "plugins: the optout plugin is not enabled"),
        (
            {"plugins": {"enabled": ["keywords", "guard"]}},
            "plugins: the optout plugin is not enabled",
        ),
    ],
    ids=[
        "rule reply emoji",
        "fallback emoji",
        "confirmation emoji",
        "resubscribed emoji",
        "signature emoji",
        "cut by max_parts",
        "signature in confirmation",
        "signature in fallback",
        "optout disabled",
        "optout not enabled",
    ],
)
def test_a_warning_is_printed_but_the_check_passes(tmp_path, capsys, sections, expected):
    code, out, err = check(tmp_path, capsys, offline_config(tmp_path, **sections))

    assert (code, out) == (0, "ok\n")
    [warning] = err.splitlines()
    assert warning.startswith(f"warning: {tmp_path / 'config.toml'}: {expected}"), warning


def test_a_text_that_fits_max_parts_gives_no_warning(tmp_path, capsys):
    data = offline_config(
        tmp_path, replies={"max_parts": 2}, keywords={"rules": [{**RULE, "reply": LONG}]}
    )

    assert check(tmp_path, capsys, data) == (0, "ok\n", "")


def test_warnings_come_with_the_problems_in_the_same_run(tmp_path, capsys):
    data = offline_config(
        tmp_path,
        gateway={"method": "put"},
        keywords={"rules": [{**RULE, "reply": f"已受理{EMOJI}"}]},
    )

    code, _out, err = check(tmp_path, capsys, data)

    assert code == 2
    assert "gateway.method: must be one of" in err
    assert "warning: " in err and "keywords.rules[0].reply: has characters" in err


CHECKING_PLUGIN = """
from dataclasses import dataclass

from responder import hookimpl
from responder.checks import reply_warnings
from responder.config import ConfigSection


@dataclass(frozen=True)
class Notice:
    text: str


@hookimpl
def responder_config_section():
    return ConfigSection("notice", lambda table: Notice(table.get_str("text", "")))


@hookimpl
def responder_check(app):
    text = app.plugin_config("notice").text
    hello = f"{app.settings.source}: notice: plugin says hi"
    return [hello, *reply_warnings(app, "notice.text", text)]
"""


def test_a_plugin_adds_its_own_warnings_through_responder_check(tmp_path, capsys):
    plugins = drop_in(tmp_path, "notice", CHECKING_PLUGIN)
    data = offline_config(tmp_path, plugins=plugins, notice={"text": f"放假{EMOJI}"})

    code, out, err = check(tmp_path, capsys, data)

    config = tmp_path / "config.toml"
    assert (code, out) == (0, "ok\n")
    assert err.splitlines() == [
        f"warning: {config}: notice: plugin says hi",
        f"warning: {config}: notice.text: has characters the gateway encoding 'gbk' cannot "
        f"carry: '{EMOJI}'; they would be sent as □",
    ]


def test_a_responder_check_returning_the_wrong_type_is_named(tmp_path, capsys):
    code = "from responder import hookimpl\n\n@hookimpl\ndef responder_check():\n    return 5\n"
    data = offline_config(tmp_path, plugins=drop_in(tmp_path, "odd", code))

    exit_code, out, err = check(tmp_path, capsys, data)

    assert (exit_code, out) == (0, "ok\n")
    assert "warning: plugin 'odd': responder_check must return a list of strings" in err
