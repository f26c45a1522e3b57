"""Configuration errors name the file and the dotted key, and say what would be right."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.config import ConfigError, load_settings, settings_from_dict

GOOD = {
    "gateway": {"base_urls": ["http://sms.example.com:8080"], "name": "company", "password": "pw"},
}


def problems_of(data, environ=None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(data, source="config.toml", environ=environ or {})
    return caught.value.problems


def with_gateway(**values):
    return {"gateway": {**GOOD["gateway"], **values}}


def test_a_minimal_config_loads_with_defaults():
    settings = settings_from_dict(GOOD, source="config.toml", environ={})
    assert settings.gateway.encoding == "gbk"
    assert settings.gateway.method == "post"
    assert settings.gateway.poll_interval == 6.0
    assert settings.gateway.max_recipients == 100
    assert settings.gateway.long_sms is False
    assert settings.replies.max_parts == 3


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            with_gateway(poll_interval=2),
            "config.toml: gateway.poll_interval: must be at least 5 seconds "
            "(the platform refuses faster reads), got 2",
        ),
        (with_gateway(method="put"), "config.toml: gateway.method: must be one of 'post', 'get'"),
        (with_gateway(encoding="klingon"), "config.toml: gateway.encoding: must be a known text"),
        (with_gateway(max_recipients=0), "config.toml: gateway.max_recipients: must be at least 1"),
        (with_gateway(timeout="ten"), "config.toml: gateway.timeout: must be a number of seconds"),
        (with_gateway(long_sms="yes"), "config.toml: gateway.long_sms: must be true or false"),
        (with_gateway(sender="8a"), "config.toml: gateway.sender: must be digits only"),
        (with_gateway(base_urls=[]), "config.toml: gateway.base_urls: at least one server"),
        (with_gateway(base_urls=["sms.example.com"]), "gateway.base_urls: must be http://"),
        (
            with_gateway(base_urls=["http://u:p@sms.example.com"]),
            "gateway.base_urls: must be plain addresses without login",
        ),
        (with_gateway(name=""), "config.toml: gateway.name: is required"),
        (
            with_gateway(pollinterval=6),
            "config.toml: gateway.pollinterval: unknown key; did you mean 'poll_interval'?",
        ),
        (
            {**GOOD, "replies": {"max_parts": 20}},
            "config.toml: replies.max_parts: must be at most 10, got 20",
        ),
        ({**GOOD, "log": {"format": "xml"}}, "config.toml: log.format: must be one of"),
        ({**GOOD, "metrics": {"listen": "9108"}}, "config.toml: metrics.listen: must be"),
        ({**GOOD, "gateway": "x"}, "config.toml: gateway: must be a table"),
        ({**GOOD, "stray": 1}, "config.toml: stray: must be a table"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else None,
)
def test_each_error_names_file_key_and_remedy(data, expected):
    assert any(expected in p for p in problems_of(data)), problems_of(data)


def test_every_problem_is_reported_not_only_the_first():
    problems = problems_of(with_gateway(method="put", poll_interval=1, max_recipients=0))
    assert len(problems) == 3


def test_a_missing_password_says_every_way_to_give_one():
    gateway = dict(GOOD["gateway"])
    del gateway["password"]
    [problem] = problems_of({"gateway": gateway})
    for way in (
        "gateway.password",
        "gateway.password_file",
        "gateway-password",
        "RESPONDER_GATEWAY_PASSWORD",
    ):
        assert way in problem


def test_a_password_the_encoding_cannot_carry_is_refused():
    assert any(
        "gateway.password: has characters" in p
        for p in problems_of(with_gateway(password="pässwörd"))
    )


def test_the_environment_password_wins():
    settings = settings_from_dict(GOOD, environ={"RESPONDER_GATEWAY_PASSWORD": "from-env"})
    assert settings.gateway.password == "from-env"


def test_password_file_is_read_relative_to_the_config(tmp_path):
    (tmp_path / "pw.txt").write_text("from-file\n")
    config = tmp_path / "config.toml"
    config.write_text(
        '[gateway]\nbase_urls = ["http://sms.example.com"]\nname = "c"\npassword_file = "pw.txt"\n'
    )
    assert load_settings(config).gateway.password == "from-file"


def test_systemd_credential_is_used_when_nothing_else_is_set(tmp_path):
    (tmp_path / "gateway-password").write_text("from-credential")
    gateway = {k: v for k, v in GOOD["gateway"].items() if k != "password"}
    settings = settings_from_dict(
        {"gateway": gateway}, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)}
    )
    assert settings.gateway.password == "from-credential"


def test_password_and_password_file_together_are_refused(tmp_path):
    problems = problems_of(with_gateway(password_file=str(tmp_path / "pw")))
    assert any("not both" in p for p in problems)


def test_an_unreadable_password_file_is_named(tmp_path):
    gateway = {k: v for k, v in GOOD["gateway"].items() if k != "password"}
    gateway["password_file"] = str(tmp_path / "missing")
    [problem] = problems_of({"gateway": gateway})
    assert problem.startswith("config.toml: gateway.password_file: cannot read")


@pytest.mark.parametrize(
    "base_urls",
    [["http://127.0.0.1:8800"], ["http://localhost:8800"], ["http://[::1]:8800"]],
    ids=["ipv4", "localhost", "ipv6"],
)
def test_a_fast_poll_interval_on_loopback_without_the_simulator_flag_is_refused(base_urls):
    """A local tunnel to a real gateway is on loopback too: the address alone proves nothing."""
    [problem] = problems_of(with_gateway(base_urls=base_urls, poll_interval=1))
    assert problem.startswith("config.toml: gateway.poll_interval: must be at least 5 seconds")
    assert "gateway.simulator = true" in problem


def test_a_fast_poll_interval_is_allowed_for_the_simulator():
    local = with_gateway(base_urls=["http://127.0.0.1:8800"], poll_interval=0, simulator=True)
    gateway = settings_from_dict(local, environ={}).gateway
    assert (gateway.poll_interval, gateway.simulator) == (0, True)


def test_the_simulator_flag_is_off_by_default():
    assert settings_from_dict(GOOD, environ={}).gateway.simulator is False


def test_the_simulator_flag_with_a_remote_address_is_refused_without_echoing_it():
    data = with_gateway(
        base_urls=["http://127.0.0.1:8800", "http://sms.example.com:8080"], simulator=True
    )
    [problem] = problems_of(data)
    assert problem.startswith("config.toml: gateway.simulator: is only for the built-in simulator")
    assert "sms.example.com" not in problem


def test_the_password_is_not_in_the_settings_repr():
    settings = settings_from_dict(with_gateway(password="hunter2-secret"), environ={})
    assert "hunter2-secret" not in repr(settings)


def test_toml_syntax_errors_give_the_line(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[gateway]\nname = "a" "b"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert str(config) in str(caught.value) and "line 2" in str(caught.value)


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_settings(tmp_path / "nope.toml")


def test_the_example_config_names_exactly_what_to_fill_in():
    example = Path(__file__).parent.parent / "config.example.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(example)
    keys = sorted(p.split(": ")[1] for p in caught.value.problems)
    assert keys == ["gateway.base_urls", "gateway.name", "gateway.password"]


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_any_toml_shape_gives_settings_or_a_config_error(tree):
    data = {"gateway": tree} if not isinstance(tree, dict) else {"gateway": tree, **GOOD}
    with contextlib.suppress(ConfigError):
        settings_from_dict(data, environ={})
