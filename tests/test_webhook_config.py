"""The webhook plugin's configuration (secrets included) and the log redactor."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import certifi
import pytest

import responder_plugins.webhook as webhook
from responder.config import Table
from responder.logs import Redactor

FILE = "/etc/responder/config.toml"
SECRET = "0123456789abcdef0123"
GOOD = {"name": "crm", "url": "https://crm.example.com/sms", "secret": SECRET}
EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def parse(
    *targets: dict[str, Any], environ: dict[str, str] | None = None, file: str = FILE, **options
) -> tuple[webhook.WebhookSettings, list[str]]:
    problems: list[str] = []
    table = Table(
        {"targets": list(targets), **options}, file=file, prefix="webhook", problems=problems
    )
    settings = webhook.parse(table, environ=environ or {})
    table.finish()
    return settings, problems


def test_a_minimal_target_gets_the_defaults() -> None:
    settings, problems = parse(GOOD)

    assert problems == []
    [target] = settings.targets
    assert (target.mode, target.timeout, target.max_age, target.on_failure) == (
        "relay",
        5.0,
        86400.0,
        "fallback",
    )
    assert (target.match, target.dst, target.headers, target.ca_file) == ((), "", (), None)


def test_no_section_means_no_targets() -> None:
    settings, problems = parse()

    assert (settings.targets, problems) == ((), [])


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        ({"name": None}, "name", "is required"),
        ({"name": "crm system"}, "name", "letters, digits"),
        ({"url": None}, "url", "is required: an https:// address"),
        ({"url": "ftp://crm.example.com/"}, "url", "is required: an https:// address"),
        ({"url": "http://crm.example.com/"}, "url", "must be https://"),
        ({"url": "https://u:pw@crm.example.com/"}, "url", "must not carry a login"),
        ({"secret": None}, "secret", "RESPONDER_WEBHOOK_CRM_SECRET"),
        ({"secret": "short"}, "secret", "at least 16 characters, got 5"),
        (
            {"secret_file": "/x"},
            "secret",
            "either webhook.targets[0].secret or webhook.targets[0].secret_file",
        ),
        ({"mode": "both"}, "mode", "must be one of 'relay', 'reply'"),
        ({"timeout": 0}, "timeout", "must be at least 0.1 seconds"),
        ({"timeout": "5"}, "timeout", "must be a number"),
        ({"max_age": 0}, "max_age", "must be at least 1 seconds"),
        ({"dst": "ext-1"}, "dst", "must be digits"),
        ({"match": ["CX", "  "]}, "match", "must not contain an empty keyword"),
        ({"match": "CX"}, "match", "must be a list of strings"),
        ({"concurrency": 0}, "concurrency", "must be at least 1"),
        ({"reply_format": "text"}, "reply_format", 'only applies to mode = "reply"'),
        ({"mode": "reply", "on_failure": "retry"}, "on_failure", "'fallback', 'silent'"),
        ({"mode": "reply", "reply_format": "xml"}, "reply_format", "'json', 'text'"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ca_file", "must be a PEM file"),
        ({"headers": {"Content-Type": "text/xml"}}, "headers.Content-Type", "set by the"),
        ({"headers": {"X-Responder-Signature": "x"}}, "headers.X-Responder-Signature", "set by"),
        ({"headers": {"Bad Header": "x"}}, "headers.Bad Header", "not a valid HTTP header"),
        ({"headers": {"X-A": "a\r\nX-B: b"}}, "headers.X-A", "must not contain line breaks"),
        ({"headers": {"X-A": 1}}, "headers.X-A", "must be a string"),
        ({"secrte": "x"}, "secrte", "unknown key; did you mean 'secret'?"),
    ],
)
def test_a_bad_target_key_is_named_with_what_would_be_right(change, key, message) -> None:
    target = {k: v for k, v in {**GOOD, **change}.items() if v is not None}

    _settings, problems = parse(target)

    assert any(
        p.startswith(f"{FILE}: webhook.targets[0].{key}: ") and message in p for p in problems
    ), problems


def test_a_short_secret_is_never_echoed_in_the_error() -> None:
    _settings, problems = parse({**GOOD, "secret": "hunter2-pw"})

    assert problems and not any("hunter2" in p for p in problems)


@pytest.mark.parametrize(
    ("options", "key", "message"),
    [
        ({"retry_initial": 60, "retry_max": 30}, "retry_max", "must be at least 60"),
        ({"breaker_threshold": 0}, "breaker_threshold", "must be at least 1"),
        ({"breaker_cooldown": "1m"}, "breaker_cooldown", "must be a number"),
        ({"target": []}, "target", "did you mean 'targets'?"),
    ],
)
def test_a_bad_shared_key_is_named(options, key, message) -> None:
    _settings, problems = parse(GOOD, **options)

    assert any(p.startswith(f"{FILE}: webhook.{key}: ") and message in p for p in problems)


def test_target_names_must_differ_beyond_case_and_punctuation() -> None:
    _settings, problems = parse(GOOD, {**GOOD, "name": "CRM"})

    assert problems == [
        f"{FILE}: webhook.targets[1].name: 'CRM' clashes with the target 'crm' "
        "(names must differ in more than case and punctuation)"
    ]


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("crm", "RESPONDER_WEBHOOK_CRM_SECRET"),
        ("order-svc", "RESPONDER_WEBHOOK_ORDER_SVC_SECRET"),
        ("Desk_2", "RESPONDER_WEBHOOK_DESK_2_SECRET"),
    ],
)
def test_secret_environment_variable_name(name, variable) -> None:
    assert webhook.secret_env(name) == variable


def test_environment_secret_overrides_the_file() -> None:
    target = {**GOOD, "name": "order-svc"}
    del target["secret"]
    environ = {"RESPONDER_WEBHOOK_ORDER_SVC_SECRET": "from-the-environment-1"}

    settings, problems = parse({**target, "secret_file": "/nonexistent"}, environ=environ)

    assert problems == []
    assert settings.targets[0].secret == "from-the-environment-1"


def test_secret_file_is_read_relative_to_the_config_file(tmp_path) -> None:
    (tmp_path / "crm.secret").write_text(SECRET + "\n", encoding="utf-8")
    target = {k: v for k, v in GOOD.items() if k != "secret"}

    settings, problems = parse(
        {**target, "secret_file": "crm.secret"}, file=str(tmp_path / "config.toml")
    )

    assert problems == []
    assert settings.targets[0].secret == SECRET


def test_unreadable_secret_file_is_named(tmp_path) -> None:
    target = {k: v for k, v in GOOD.items() if k != "secret"}

    _settings, problems = parse({**target, "secret_file": str(tmp_path / "missing")})

    assert problems == [
        f"{FILE}: webhook.targets[0].secret_file: cannot read "
        f"{str(tmp_path / 'missing')!r}: No such file or directory"
    ]


def _credentials(folder: Path, secret: str = SECRET, name: str = "crm") -> dict[str, str]:
    """A $CREDENTIALS_DIRECTORY holding the target's credential, as systemd provides it."""
    (folder / f"webhook-{name}-secret").write_text(secret + "\n", encoding="utf-8")
    return {"CREDENTIALS_DIRECTORY": str(folder)}


def test_secret_comes_from_the_systemd_credential(tmp_path) -> None:
    target = {k: v for k, v in GOOD.items() if k != "secret"}

    settings, problems = parse(target, environ=_credentials(tmp_path, "from-the-credential-1"))

    assert problems == []
    assert settings.targets[0].secret == "from-the-credential-1"


@pytest.mark.parametrize(
    ("given", "environ", "expected"),
    [
        ({"secret": SECRET}, {}, SECRET),
        ({"secret_file": "crm.secret"}, {}, "from-the-secret-file"),
        ({}, {"RESPONDER_WEBHOOK_CRM_SECRET": "from-the-environment-1"}, "from-the-environment-1"),
        (
            {"secret": SECRET},
            {"RESPONDER_WEBHOOK_CRM_SECRET": "from-the-environment-1"},
            "from-the-environment-1",
        ),
    ],
    ids=["secret", "secret_file", "environment", "environment-over-secret"],
)
def test_the_credential_is_used_only_when_no_other_source_is_set(
    tmp_path, given, environ, expected
) -> None:
    (tmp_path / "crm.secret").write_text("from-the-secret-file\n", encoding="utf-8")
    target = {"name": "crm", "url": GOOD["url"], **given}
    environ = {**_credentials(tmp_path, "from-the-credential-1"), **environ}

    settings, problems = parse(target, environ=environ, file=str(tmp_path / "config.toml"))

    assert problems == []
    assert settings.targets[0].secret == expected


def test_the_credential_is_named_after_its_target(tmp_path) -> None:
    target = {"name": "order-svc", "url": GOOD["url"]}

    settings, problems = parse(target, environ=_credentials(tmp_path, name="order-svc"))

    assert problems == []
    assert settings.targets[0].secret == SECRET


def test_a_short_credential_is_named_without_echoing_it(tmp_path) -> None:
    target = {k: v for k, v in GOOD.items() if k != "secret"}

    _settings, problems = parse(target, environ=_credentials(tmp_path, "hunter2-pw"))

    assert problems == [
        f"{FILE}: webhook.targets[0].secret: the secret from the systemd credential "
        "'webhook-crm-secret' must be at least 16 characters, got 10 "
        "(make one with: openssl rand -hex 32)"
    ]


def test_no_secret_names_every_place_it_may_come_from(tmp_path) -> None:
    target = {k: v for k, v in GOOD.items() if k != "secret"}

    _settings, problems = parse(target, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert problems == [
        f"{FILE}: webhook.targets[0].secret: no secret: set webhook.targets[0].secret, "
        "webhook.targets[0].secret_file, the systemd credential 'webhook-crm-secret' or the "
        "environment variable RESPONDER_WEBHOOK_CRM_SECRET"
    ]


def test_secret_is_not_in_the_settings_repr() -> None:
    settings, _problems = parse({**GOOD, "headers": {"Authorization": "Bearer tok-123456"}})

    assert SECRET not in repr(settings)
    assert "tok-123456" not in repr(settings)
    assert set(settings.secrets()) == {SECRET, "Bearer tok-123456"}


@pytest.mark.parametrize(
    ("url", "extra"),
    [
        ("http://127.0.0.1:8080/hook", {}),
        ("http://localhost/hook", {}),
        ("http://crm.internal/hook", {"allow_http": True}),
        ("https://crm.example.com/hook?tenant=7", {}),
    ],
)
def test_accepted_urls(url, extra) -> None:
    _settings, problems = parse({**GOOD, "url": url, **extra})

    assert problems == []


def test_a_private_ca_file_is_accepted() -> None:
    settings, problems = parse({**GOOD, "ca_file": certifi.where()})

    assert problems == []
    assert settings.targets[0].ca_file == Path(certifi.where())


def test_match_keywords_are_normalised_once() -> None:
    settings, _problems = parse({**GOOD, "match": ["ＣＸ", " 查询！"]})

    assert settings.targets[0].match == ("cx", "查询")


def test_the_commented_example_targets_are_valid() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    section = text[text.index("\n[webhook]") :]
    lines = [
        re.sub(r"^# ", "", line)
        for line in section.splitlines()
        if not line.startswith("#") or re.match(r"# (\[|[a-z_]+ = )", line)
    ]
    data = tomllib.loads("\n".join(lines).replace("/etc/responder/private-ca.pem", certifi.where()))
    environ = {f"RESPONDER_WEBHOOK_{n}_SECRET": SECRET for n in ("CRM", "ORDERS")}
    problems: list[str] = []
    table = Table(data["webhook"], file=FILE, prefix="webhook", problems=problems)

    settings = webhook.parse(table, environ=environ)
    table.finish()

    assert problems == []
    assert [(t.name, t.mode) for t in settings.targets] == [("crm", "relay"), ("orders", "reply")]


# -- the redactor ---------------------------------------------------------------------------


def test_add_secrets_keeps_the_secrets_already_set() -> None:
    redactor = Redactor()
    redactor.set_secrets(["gateway-password"])

    redactor.add_secrets(["webhook-secret-123"])

    assert redactor("gateway-password webhook-secret-123") == "[REDACTED] [REDACTED]"
