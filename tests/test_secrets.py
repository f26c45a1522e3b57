"""Configuration errors about secret-bearing keys name the key and the type, never the value.

Each bad value below is refused by ``responder check``, by ``responder run`` and by a
SIGHUP reload (the ``reload_rejected`` log line), and none of them may print it.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from responder.cli import main
from responder.config import Table, redact_url, resolve_secret, settings_from_dict
from responder.daemon import Daemon
from responder.logs import configure_logging
from tests.conftest import config_dict, write_config

HOOK = {"name": "crm", "url": "https://crm.example.com/sms", "secret": "0123456789abcdef0123"}


def gateway(**values: Any) -> dict[str, Any]:
    return {"gateway": values}


def webhook_target(**values: Any) -> dict[str, Any]:
    return {"webhook": {"targets": [{**HOOK, **values}]}}


# (id, configuration change, the secret that must not appear, the key that must be named)
CASES = [
    ("integer password", gateway(password=918273645), "918273645", "gateway.password"),
    ("list password", gateway(password=["pw-in-a-list"]), "pw-in-a-list", "gateway.password"),
    (
        "table password",
        gateway(password={"x": "pw-in-a-table"}),
        "pw-in-a-table",
        "gateway.password",
    ),
    (
        "login in base_urls",
        gateway(base_urls=["http://acct:url-pw-5521@127.0.0.1:9"]),
        "url-pw-5521",
        "gateway.base_urls",
    ),
    (
        "login in a base_url with a bad scheme",
        gateway(base_urls=["ftp://acct:ftp-pw-7788@sms.example.com"]),
        "ftp-pw-7788",
        "gateway.base_urls",
    ),
    (
        "password in a base_url's query",
        gateway(base_urls=["http://127.0.0.1:9/?pwd=query-pw-3344"]),
        "query-pw-3344",
        "gateway.base_urls",
    ),
    (
        "integer webhook secret",
        webhook_target(secret=8472619304857261),
        "8472619304857261",
        "webhook.targets[0].secret",
    ),
    (
        "list webhook secret",
        webhook_target(secret=["hook-secret-in-a-list"]),
        "hook-secret-in-a-list",
        "webhook.targets[0].secret",
    ),
    (
        "integer Authorization header",
        webhook_target(headers={"Authorization": 5550001112223}),
        "5550001112223",
        "webhook.targets[0].headers.Authorization",
    ),
    (
        "list Authorization header",
        webhook_target(headers={"Authorization": ["Bearer list-token-77"]}),
        "list-token-77",
        "webhook.targets[0].headers.Authorization",
    ),
    (
        "any header value",
        webhook_target(headers={"X-Tenant": 4433221100}),
        "4433221100",
        "webhook.targets[0].headers.X-Tenant",
    ),
    (
        "login in a webhook url with a bad scheme",
        webhook_target(url="ftp://u:hook-url-pw-9911@crm.example.com/sms"),
        "hook-url-pw-9911",
        "webhook.targets[0].url",
    ),
]
IDS = [case[0] for case in CASES]


def bad_config(sandbox, tmp_path: Path, change: dict[str, Any]) -> Path:
    data = config_dict(sandbox, tmp_path)
    for section, values in change.items():
        data[section] = {**data.get(section, {}), **values}
    return write_config(tmp_path / "bad.toml", data)


@pytest.mark.parametrize(("change", "secret", "key"), [case[1:] for case in CASES], ids=IDS)
def test_check_names_the_key_but_never_prints_the_secret(
    sandbox, tmp_path, capsys, change, secret, key
):
    config = bad_config(sandbox, tmp_path, change)

    code = main(["check", "-c", str(config)])

    output = capsys.readouterr()
    assert code == 2
    assert f"{config}: {key}: " in output.err
    assert secret not in output.out + output.err


@pytest.mark.parametrize(("change", "secret", "key"), [case[1:] for case in CASES], ids=IDS)
def test_run_names_the_key_but_never_prints_the_secret(sandbox, tmp_path, change, secret, key):
    config = bad_config(sandbox, tmp_path, change)

    result = subprocess.run(
        [sys.executable, "-m", "responder", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert f"{config}: {key}: " in result.stderr
    assert secret not in result.stdout + result.stderr


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)
    yield stream
    configure_logging(format="console", level="warning")


@pytest.mark.parametrize(("change", "secret", "key"), [case[1:] for case in CASES], ids=IDS)
def test_a_rejected_reload_names_the_key_but_never_logs_the_secret(
    sandbox, tmp_path, log_stream, change, secret, key
):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    daemon = Daemon(str(config), notify=lambda _line: None, configure_logs=False)
    daemon.start()
    try:
        bad = bad_config(sandbox, tmp_path, change)
        config.write_text(bad.read_text(encoding="utf-8"), encoding="utf-8")

        assert daemon.reload() is False
    finally:
        daemon.stop()

    [line] = [line for line in log_stream.getvalue().splitlines() if "reload_rejected" in line]
    assert f"{config}: {key}: " in line
    assert secret not in log_stream.getvalue()


# -- every getter ------------------------------------------------------------------------


def read(data: dict[str, Any], getter: str, key: str, **options: Any) -> list[str]:
    problems: list[str] = []
    table = Table(data, file="c.toml", prefix="plugin", problems=problems)
    getattr(table, getter)(key, **options)
    return problems


@pytest.mark.parametrize(
    ("data", "getter", "key", "options", "expected"),
    [
        ({"password": 1234567}, "get_str", "password", {}, "must be a string, got an integer"),
        ({"api_token": True}, "get_str", "api_token", {}, "must be a string, got a boolean"),
        ({"Secret": 7654321}, "get_str", "Secret", {}, "must be a string, got an integer"),
        ({"auth_mode": "pw-choice"}, "get_str", "auth_mode", {"choices": ("a", "b")}, "'a', 'b'"),
        ({"pin": 1234567}, "get_int", "pin", {"max": 9, "secret": True}, "must be at most 9"),
        ({"token_ttl": 1234567}, "get_int", "token_ttl", {"max": 9}, "must be at most 9"),
        ({"tokens": ["ok", 1234567]}, "get_str_list", "tokens", {}, "got an integer in it"),
        ({"password_file": 1234567}, "get_path", "password_file", {}, "must be a path"),
        ({"value": 1234567}, "get_str", "value", {"secret": True}, "got an integer"),
    ],
)
def test_no_getter_echoes_a_secret_bearing_value(data, getter, key, options, expected):
    problems = read(data, getter, key, **options)

    [problem] = problems
    assert problem.startswith(f"c.toml: plugin.{key}: ") and expected in problem, problem
    assert "1234567" not in problem and "pw-choice" not in problem and "True" not in problem


def test_every_value_of_a_headers_table_is_secret():
    problems: list[str] = []
    root = Table({"headers": {"X-Tenant": 1234567}}, file="c.toml", prefix="p", problems=problems)

    root.get_table("headers").get_str("X-Tenant")

    assert problems == ["c.toml: p.headers.X-Tenant: must be a string, got an integer"]


def test_a_table_marked_secret_hides_every_value_in_it():
    problems: list[str] = []
    root = Table({"creds": {"user": 1234567}}, file="c.toml", prefix="p", problems=problems)

    root.get_table("creds", secret=True).get_str("user")

    assert problems == ["c.toml: p.creds.user: must be a string, got an integer"]


def test_an_array_of_tables_names_the_type_of_a_bad_item_not_its_value():
    problems: list[str] = []
    root = Table({"targets": ["pw-in-an-array"]}, file="c.toml", prefix="p", problems=problems)

    root.get_tables("targets")

    assert problems == ["c.toml: p.targets[0]: must be a table, got a string"]


def test_an_ordinary_key_still_shows_the_value():
    assert read({"mode": "fast"}, "get_str", "mode", choices=("slow",)) == [
        "c.toml: plugin.mode: must be one of 'slow', got 'fast'"
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://u:p@sms.example.com:8080/x", "http://***@sms.example.com:8080/x"),
        ("http://u:p/w@d@sms.example.com", "http://***@sms.example.com"),
        ("u:pw@sms.example.com", "***@sms.example.com"),
        ("http://sms.example.com/?pwd=x#frag", "http://sms.example.com/?***"),
        ("http://sms.example.com:8080", "http://sms.example.com:8080"),
    ],
)
def test_redact_url_hides_the_login_and_the_query(url, shown):
    assert redact_url(url) == shown


# --- one resolver for every secret: resolve_secret ---------------------------------------

SECRET_VALUE = "s3cret-value-0123456789"


def resolved(
    tmp_path: Path, data: dict[str, Any], environ: dict[str, str], **options: Any
) -> tuple[str, list[str]]:
    problems: list[str] = []
    table = Table(data, file=str(tmp_path / "c.toml"), prefix="plugin", problems=problems)
    secret = resolve_secret(
        table, "token", env="PLUGIN_TOKEN", credential="plugin-token", environ=environ, **options
    )
    return secret, problems


@pytest.mark.parametrize(
    ("source", "data", "environ"),
    [
        ("environment", {"token": "inline-value-0123456"}, {"PLUGIN_TOKEN": SECRET_VALUE}),
        ("inline value", {"token": SECRET_VALUE}, {}),
        ("file, relative to the configuration", {"token_file": "token.txt"}, {}),
        ("systemd credential", {}, {"CREDENTIALS_DIRECTORY": "creds"}),
    ],
)
def test_resolve_secret_finds_a_secret_in_each_place_first_found_first(
    tmp_path, source, data, environ
):
    (tmp_path / "token.txt").write_text(SECRET_VALUE + "\n", encoding="utf-8")
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "plugin-token").write_text(SECRET_VALUE + "\n", encoding="utf-8")
    environ = {
        k: str(tmp_path / v) if k == "CREDENTIALS_DIRECTORY" else v for k, v in environ.items()
    }

    assert resolved(tmp_path, data, environ) == (SECRET_VALUE, [])


@pytest.mark.parametrize(
    ("data", "options", "problem"),
    [
        (
            {},
            {},
            "plugin.token: no token: set plugin.token, plugin.token_file, the systemd"
            " credential 'plugin-token' or the environment variable PLUGIN_TOKEN",
        ),
        ({"token": "x", "token_file": "f"}, {}, "set either plugin.token or plugin.token_file"),
        ({"token_file": "missing.txt"}, {}, "plugin.token_file: cannot read"),
        (
            {"token": "short-pw"},
            {"min_length": 16, "advice": "openssl rand -hex 32"},
            "plugin.token: the token from plugin.token must be at least 16 characters, got 8"
            " (openssl rand -hex 32)",
        ),
    ],
)
def test_resolve_secret_names_the_key_and_never_the_value(tmp_path, data, options, problem):
    _secret, problems = resolved(tmp_path, data, {}, **options)

    assert any(problem in p for p in problems), problems
    assert not any("short-pw" in p for p in problems)


def test_resolve_secret_not_needed_reads_no_file_and_misses_nothing(tmp_path):
    assert resolved(tmp_path, {"token_file": "missing.txt"}, {}, needed=False) == ("", [])


def test_the_gateway_password_and_webhook_secrets_share_the_resolver(tmp_path, monkeypatch):
    """Same places, same order, same wording: a credential file for each."""
    (tmp_path / "gateway-password").write_text("from-the-credential\n", encoding="utf-8")
    (tmp_path / "webhook-crm-secret").write_text(SECRET_VALUE + "\n", encoding="utf-8")
    data = config_dict(_NoSandbox(), tmp_path, webhook={"targets": [{**HOOK}]})
    del data["gateway"]["password"]
    del data["webhook"]["targets"][0]["secret"]
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    settings = settings_from_dict(data, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    from responder.app import build_app

    app = build_app(settings, dry_run=True)
    try:
        assert settings.gateway.password == "from-the-credential"
        assert app.plugin_config("webhook").targets[0].secret == SECRET_VALUE
    finally:
        app.close()


class _NoSandbox:
    url = "http://127.0.0.1:9"
