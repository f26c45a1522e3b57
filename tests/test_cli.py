"""The command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from responder import __version__
from responder.cli import main
from responder.store import Store
from tests.conftest import PASSWORD, config_dict, write_config

ROOT = Path(__file__).parent.parent
RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理"}]}


def responder(*args: str, env: dict[str, str] | None = None, input: str | None = None):
    return subprocess.run(
        [sys.executable, "-m", "responder", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        input=input,
    )


def test_version():
    result = responder("--version")
    assert result.stdout.strip() == f"sms-responder {__version__}"


def test_check_prints_ok_for_a_valid_config(sandbox, tmp_path):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    result = responder("check", "-c", str(config))
    assert (result.returncode, result.stdout) == (0, "ok\n")


def test_check_prints_every_problem_and_exits_2(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path)
    data["gateway"] |= {"method": "put", "max_recipients": 0}
    data["keywords"] = {"rulez": []}
    config = write_config(tmp_path / "config.toml", data)
    result = responder("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}: gateway.method: must be one of" in result.stderr
    assert f"{config}: gateway.max_recipients: must be at least 1" in result.stderr


def test_check_reports_plugin_section_errors(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path, keywords={"rulez": []})
    config = write_config(tmp_path / "config.toml", data)
    result = responder("check", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}: keywords.rulez: unknown key" in result.stderr


def test_check_on_the_example_lists_what_to_fill_in():
    result = responder("check", "-c", str(ROOT / "config.example.toml"))
    assert result.returncode == 2
    keys = sorted(line.split(": ")[1] for line in result.stderr.splitlines())
    assert keys == ["gateway.base_urls", "gateway.name", "gateway.password"]


def test_the_example_with_the_account_filled_in_is_valid(tmp_path):
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    text = text.replace("base_urls = []", 'base_urls = ["http://sms.example.com:8080"]', 1)
    text = text.replace('name = ""', 'name = "company"', 1)
    config = tmp_path / "config.toml"
    config.write_text(text, encoding="utf-8")
    env = {"RESPONDER_GATEWAY_PASSWORD": "pw", "PATH": "/usr/bin:/bin"}
    result = responder("check", "-c", str(config), env=env)
    assert (result.returncode, result.stderr) == (0, "")


def test_send_delivers_chinese_and_prints_the_parsed_answer(sandbox, tmp_path):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    result = responder("send", "-c", str(config), "13800138000", "-m", "你好，世界")
    assert result.returncode == 0, result.stderr
    assert "ok:       True" in result.stdout
    assert "accepted: 13800138000" in result.stdout
    assert sandbox.sent()[0].text == "你好，世界"
    assert PASSWORD not in result.stdout + result.stderr


def test_send_exits_1_when_the_gateway_refuses(sandbox, tmp_path):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    result = responder("send", "-c", str(config), "10086", "-m", "hi")
    assert result.returncode == 1
    assert "refused:  10086" in result.stdout


def test_simulate_json_shows_the_reply_and_the_plugin(sandbox, tmp_path):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path, keywords=RULES))
    result = responder("simulate", "-c", str(config), "--json", "CX")
    record = json.loads(result.stdout)
    assert (record["reply"], record["plugin"], record["parts"]) == (
        "已受理",
        "keywords",
        ["已受理"],
    )
    assert sandbox.sent() == [] and sandbox.stats().requests == 0


def test_simulate_reads_texts_from_stdin(sandbox, tmp_path):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path, keywords=RULES))
    result = responder("simulate", "-c", str(config), "--json", input="CX\nnothing\n")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["reply"] for r in records] == ["已受理", None]


def test_plugins_lists_built_ins_and_their_hooks(sandbox, tmp_path):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    result = responder("plugins", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "keywords  (built-in: responder_plugins.keywords)" in result.stdout
    assert "    responder_reply" in result.stdout


def config_with_drop_in(sandbox, tmp_path, name: str, code: str):
    """A configuration loading one drop-in plugin file; returns (config, plugin file)."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / f"{name}.py").write_text(code)
    data = config_dict(sandbox, tmp_path, plugins={"paths": [str(folder)]})
    return write_config(tmp_path / "config.toml", data), folder / f"{name}.py"


def test_plugins_shows_a_drop_in_file_as_coming_from_a_path(sandbox, tmp_path):
    code = "from responder import hookimpl\n\n@hookimpl\ndef responder_reply(message):\n    pass\n"
    config, file = config_with_drop_in(sandbox, tmp_path, "hello", code)
    result = responder("plugins", "-c", str(config))
    assert f"hello  (path: {file})" in result.stdout


def test_a_misspelled_hook_is_reported_at_start_up(sandbox, tmp_path):
    code = "from responder import hookimpl\n\n@hookimpl\ndef responder_replly(message):\n    pass\n"
    config, _ = config_with_drop_in(sandbox, tmp_path, "typo", code)
    result = responder("check", "-c", str(config))
    assert result.returncode == 2
    assert "plugin 'typo'" in result.stderr and "responder_replly" in result.stderr


def test_a_plugin_that_fails_to_import_is_named(sandbox, tmp_path):
    code = "raise ImportError('missing dependency')\n"
    config, _ = config_with_drop_in(sandbox, tmp_path, "broken", code)
    result = responder("check", "-c", str(config))
    assert result.returncode == 2
    assert "plugin 'broken'" in result.stderr and "missing dependency" in result.stderr


def test_demo_runs_the_pipeline_and_exits_0():
    result = responder("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "→ 13800138000: CX" in result.stdout
    assert "0 too fast" in result.stdout


def test_commands_that_never_call_the_gateway_need_no_password(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    del data["gateway"]["password"]
    config = write_config(tmp_path / "config.toml", data)
    assert responder("simulate", "-c", str(config), "--json", "CX").returncode == 0
    assert responder("plugins", "-c", str(config)).returncode == 0
    assert responder("check", "-c", str(config)).returncode == 2


def test_send_to_no_number_is_a_clear_error(sandbox, tmp_path):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    result = responder("send", "-c", str(config), " ", "-m", "hi")
    assert result.returncode == 2
    assert "no recipient numbers" in result.stderr and "Traceback" not in result.stderr


def test_an_unknown_built_in_in_plugins_enabled_names_the_file(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path, plugins={"enabled": ["keywords", "nope"]})
    config = write_config(tmp_path / "config.toml", data)
    result = responder("check", "-c", str(config))
    assert f"{config}: plugins.enabled: no built-in plugin 'nope'" in result.stderr


def test_a_plugin_command_cannot_take_a_core_command_name():
    from responder.commands import CommandRegistry

    registry = CommandRegistry(reserved=("status",))
    with pytest.raises(ValueError, match="already taken"):
        registry.add("status", help="mine", run=lambda app, args: 0)


def open_files_under(folder: Path) -> list[str]:
    """What this process holds open in ``folder`` (the store, its -wal and -shm files)."""
    found = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["simulate", "CX"],
        ["replay", "--since", "2020-01-01"],
        ["send", "13800138000", "-m", "hi"],
        ["optout", "list"],  # a plugin's command
    ],
    ids=lambda command: command[0],
)
def test_each_command_closes_the_store_it_opened(sandbox, tmp_path, command, capsys):
    store_folder = tmp_path / "state"
    store_folder.mkdir()
    data = config_dict(sandbox, tmp_path, keywords=RULES)
    data["store"] = {"path": str(store_folder / "responder.db")}
    config = write_config(tmp_path / "config.toml", data)
    main(["send", "-c", str(config), "13800138000", "-m", "first"])  # makes the store

    main([command[0], "-c", str(config), *command[1:]])

    assert open_files_under(store_folder) == []


def test_a_command_whose_plugin_config_is_bad_closes_the_store_too(sandbox, tmp_path, capsys):
    store_folder = tmp_path / "state"
    store_folder.mkdir()
    data = config_dict(sandbox, tmp_path, keywords={"rules": "not a list"})
    data["store"] = {"path": str(store_folder / "responder.db")}
    Store(store_folder / "responder.db").close()
    config = write_config(tmp_path / "config.toml", data)

    assert main(["status", "-c", str(config)]) == 2

    assert "keywords.rules" in capsys.readouterr().err
    assert open_files_under(store_folder) == []
