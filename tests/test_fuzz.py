"""Fuzzing the parsers and text rules: random bytes, GBK and UTF-8 text, random TOML.

Nothing may escape but the documented errors: MalformedBody from the response parser,
ConfigError from the configuration loader, ValueError where a function documents it.
Every test is derandomized (the same examples on every run) and kept small, so the
module runs in seconds.
"""

from __future__ import annotations

import contextlib
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from responder.config import ConfigError, load_settings, settings_from_dict
from responder.gateway import GatewayClient, TransientError
from responder.plugin_host import PluginHost
from responder.protocol import (
    MalformedBody,
    decode_form,
    encode_form,
    parse_body,
    parse_platform_time,
    parse_read_result,
    parse_send_result,
)
from responder.sandbox import Sandbox
from responder.text import clean_control, fit_parts, make_encodable, split_parts

PASSWORD = "pw"
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""Seeded and reproducible: hypothesis derives the examples from each test's code."""


def fuzz(examples: int = 150) -> settings:
    return settings(FUZZ, max_examples=examples)


# -- random input ------------------------------------------------------------------------

CHINESE = "你好吗短信查询退订客服谢谢，。！？、；：“”（）【】《》"
gbk_text = st.binary(max_size=200).map(lambda data: data.decode("gbk", errors="replace"))
utf8_text = st.binary(max_size=200).map(lambda data: data.decode("utf-8", errors="replace"))
"""Bytes as the gateway client decodes them: undecodable bytes become U+FFFD."""
any_text = st.text(max_size=200)
"""Any code points, lone surrogates included."""
wire_text = st.text(alphabet=CHINESE + string.printable + "&=,\x00\ufeff", max_size=200)
texts = st.one_of(gbk_text, utf8_text, any_text, wire_text)

FIELD_NAMES = ["id", "err", "src", "msg", "dst", "time", "num", "success", "faile", "errid"]
field_value = st.one_of(
    st.integers(-(10**12), 10**12).map(str), st.text(alphabet=CHINESE + "0123456789,&=\r\n ")
)
gateway_lines = st.lists(
    st.tuples(st.sampled_from([*FIELD_NAMES, "", "x y", "<html>"]), field_value), max_size=8
).map(lambda pairs: "&".join(f"{key}={value}" for key, value in pairs))
"""Lines that look like gateway answers, odd in every way the contract allows and more."""


# -- the response parser -----------------------------------------------------------------


def parse_everything(body: str) -> None:
    """What the gateway client does with a body; raises only MalformedBody."""
    fields = parse_body(body)
    assert fields and all(isinstance(v, str) for v in fields.values())
    send = parse_send_result(fields, body)
    assert send.num >= 0 and send.ok == (send.num > 0)
    sms = parse_read_result(fields, body)
    if sms is not None:
        assert sms.gateway_id > 0 and sms.raw == body


@fuzz(300)
@given(body=st.one_of(texts, gateway_lines))
def test_the_response_parser_parses_or_raises_malformed_body(body):
    with contextlib.suppress(MalformedBody):
        parse_everything(body)


@fuzz()
@given(value=texts)
def test_platform_times_parse_or_are_none(value):
    moment = parse_platform_time(value)
    assert moment is None or moment.tzinfo is not None


@fuzz()
@given(query=texts, encoding=st.sampled_from(["gbk", "utf-8"]))
def test_form_decoding_never_raises(query, encoding):
    assert isinstance(decode_form(query, encoding), dict)


@fuzz()
@given(text=texts)
def test_an_encodable_message_round_trips_through_the_form_encoding(text):
    text, _replaced = make_encodable(text, "gbk")
    assert decode_form(encode_form({"msg": text}, "gbk"), "gbk") == {"msg": text}


@pytest.fixture(scope="module")
def raw_gateway() -> Any:
    with Sandbox(name="acct", password=PASSWORD, min_read_interval=0) as sandbox:
        data = {
            "gateway": {
                "base_urls": [sandbox.url],
                "name": "acct",
                "password": PASSWORD,
                "poll_interval": 0,
                "simulator": True,
            },
            "store": {"path": "unused.db"},
        }
        settings_ = settings_from_dict(data, environ={})
        with GatewayClient(settings_.gateway) as client:
            yield sandbox, client


@fuzz(60)
@given(raw=st.binary(max_size=300))
def test_random_message_bytes_from_the_gateway_are_read_or_a_transient_error(raw_gateway, raw):
    sandbox, client = raw_gateway
    sandbox.inject("13800138000", "", raw_msg=raw)
    try:
        sms = client.read_one()
    except TransientError:
        sandbox.reset()
        return
    assert sms is not None and sms.raw.startswith("id=")
    sms.raw.encode("utf-8")  # storable: no lone surrogates
    sms.text.encode("utf-8")


# -- the configuration -------------------------------------------------------------------

CORE_KEYS = {
    "gateway": [
        "base_urls",
        "name",
        "password",
        "password_file",
        "encoding",
        "method",
        "poll_interval",
        "simulator",
        "timeout",
        "max_recipients",
        "long_sms",
        "sender",
    ],
    "store": ["path"],
    "log": ["format", "level"],
    "plugins": ["enabled", "disabled", "modules", "paths"],
    "replies": [
        "signature",
        "signature_position",
        "max_parts",
        "max_attempts",
        "retry_initial",
        "retry_max",
        "on_uncertain",
    ],
    "metrics": ["listen"],
}
PLUGIN_KEYS = {
    "keywords": ["rules", "fallback", "fallback_interval", "timezone"],
    "rules": ["keywords", "reply", "match", "name", "dst", "hours", "priority"],
    "optout": ["words", "resubscribe_words", "confirmation", "resubscribe_confirmation"],
    "handover": ["words", "confirm", "closed_confirm", "timeout", "notify"],
    "guard": [
        "max_replies",
        "window",
        "ignore",
        "own_numbers",
        "mobile_only",
        "mobile_pattern",
        "pingpong_repeats",
        "pingpong_window",
    ],
    "webhook": ["targets", "retry_initial", "retry_max", "breaker_threshold", "breaker_cooldown"],
    "targets": [
        "name",
        "url",
        "secret",
        "mode",
        "timeout",
        "match",
        "dst",
        "max_age",
        "headers",
        "reply_format",
        "allow_http",
        "on_failure",
        "concurrency",
    ],
}
SAMPLE_STRINGS = [
    "",
    "gbk",
    "utf-8",
    "nope",
    "post",
    "get",
    "http://127.0.0.1:1",
    "https://sms.example.com",
    "ftp://x",
    "127.0.0.1:9108",
    "09:00-18:00",
    "25:00-01:00",
    "word",
    "regex",
    "exact",
    "([",
    "{src}",
    "{nope}",
    "}",
    "CX",
    "查询",
    "Asia/Shanghai",
    "Mars/Base",
    "13800138000",
    "138*",
    "relay",
    "reply",
    "give_up",
    "resend",
]
scalars = st.one_of(
    st.sampled_from(SAMPLE_STRINGS),
    st.text(max_size=30).filter(lambda s: "\x00" not in s),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
"""TOML values (TOML has no NUL in strings, NaN is allowed but not worth the noise)."""


NESTED_KEYS = PLUGIN_KEYS["rules"] + PLUGIN_KEYS["targets"]


def table_of(keys: list[str], *, nested: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    """Tables with known keys (and a typo); values may be arrays of tables ([[...]])."""
    values = [scalars, st.lists(scalars, max_size=4)]
    if nested:
        values.append(st.lists(table_of(NESTED_KEYS, nested=False), max_size=3))
    return st.dictionaries(
        st.sampled_from([*keys, "typo_key"]), st.one_of(values), max_size=len(keys)
    )


config_data = st.fixed_dictionaries(
    {},
    optional={name: table_of(keys) for name, keys in {**CORE_KEYS, **PLUGIN_KEYS}.items()}
    | {"stray": scalars},
)


def load_or_config_error(data: dict[str, Any]) -> None:
    try:
        settings_from_dict(data, source="fuzz.toml", environ={})
    except ConfigError as err:
        assert err.problems and all(p.startswith("fuzz.toml") for p in err.problems)


@fuzz(300)
@given(data=config_data)
def test_settings_from_dict_gives_settings_or_config_error(data):
    load_or_config_error(data)


def gbk_file(data: dict[str, Any]) -> bytes:
    """A configuration saved in GBK, as a Chinese Windows editor may save it."""
    return tomli_w.dumps(data).encode("gbk", errors="replace")


config_files = st.one_of(
    st.binary(max_size=200),
    any_text.map(lambda text: text.encode("utf-8", errors="surrogatepass")),
    config_data.map(lambda data: tomli_w.dumps(data).encode("utf-8")),
    st.fixed_dictionaries({"keywords": st.just({"fallback": "您好"})}).map(gbk_file),
)


@fuzz(150)
@given(content=config_files)
@example(content=gbk_file({"keywords": {"fallback": "您好"}}))
@example(content="\ufeff[gateway]\nname = 'a'\n".encode())
def test_load_settings_on_random_files_gives_settings_or_config_error(content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "config.toml"
        path.write_bytes(content)
        try:
            load_settings(path)
        except ConfigError as err:
            assert all(str(path) in problem for problem in err.problems)


BASE = {
    "gateway": {"base_urls": ["http://127.0.0.1:1"], "name": "acct", "password": PASSWORD},
    "store": {"path": "fuzz.db"},
}


@pytest.fixture(scope="module")
def plugin_host() -> PluginHost:
    return PluginHost(settings_from_dict(BASE, source="fuzz.toml", environ={}))


BUILTIN_SECTIONS = ("keywords", "handover", "optout", "guard", "webhook")


@fuzz(200)
@given(
    sections=st.fixed_dictionaries(
        {}, optional={name: table_of(PLUGIN_KEYS[name]) for name in BUILTIN_SECTIONS}
    )
)
def test_every_built_in_plugin_reads_random_sections_without_crashing(plugin_host, sections):
    settings_ = settings_from_dict({**BASE, **sections}, source="fuzz.toml", environ={})
    _configs, problems = plugin_host.parse_configs(settings_)
    crashed = [problem for problem in problems if "failed to read it" in problem]
    assert not crashed
    assert all(problem.startswith("fuzz.toml") for problem in problems)


# -- the text rules ----------------------------------------------------------------------


@fuzz(300)
@given(
    text=texts,
    limit=st.integers(1, 80),
    prefix=st.text(max_size=12),
    suffix=st.text(max_size=12),
    max_parts=st.integers(1, 5),
)
def test_splitting_gives_parts_within_the_limit_or_a_value_error(
    text, limit, prefix, suffix, max_parts
):
    try:
        parts = split_parts(text, limit=limit, prefix=prefix, suffix=suffix)
    except ValueError:
        parts = None
    if parts is not None:
        assert all(len(part) <= limit for part in parts)
    try:
        fitted, truncated = fit_parts(
            text, max_parts=max_parts, limit=limit, prefix=prefix, suffix=suffix
        )
    except ValueError:
        return
    assert len(fitted) <= max_parts and all(len(part) <= limit for part in fitted)
    assert truncated or fitted == parts


@fuzz(300)
@given(text=texts, encoding=st.sampled_from(["gbk", "gb2312", "gb18030", "utf-8", "ascii"]))
def test_cleaning_and_encoding_any_text_never_raises(text, encoding):
    cleaned = clean_control(text)
    assert not any(ord(c) < 0x20 and c not in "\t\n" for c in cleaned)
    encodable, replaced = make_encodable(cleaned, encoding)
    encodable.encode(encoding)
    assert replaced >= 0


# -- the keyword plugin's normaliser and templates ---------------------------------------

try:
    import responder_plugins.keywords as keywords_plugin
except ImportError:  # pragma: no cover - the plugin ships with the package
    keywords_plugin = None
normalise = getattr(keywords_plugin, "normalise", None)
parse_template = getattr(keywords_plugin, "parse_template", None)


@pytest.mark.skipif(normalise is None, reason="responder_plugins.keywords has no normalise() yet")
@fuzz(300)
@given(text=texts)
def test_the_keyword_normaliser_takes_any_text(text):
    key = normalise(text)
    assert isinstance(key, str)
    assert key == key.strip()
    assert normalise(key) == key  # a keyword and a message normalise to the same form


@pytest.mark.skipif(parse_template is None, reason="the keywords plugin has no parse_template()")
@fuzz(300)
@given(
    source=st.one_of(texts, st.text(alphabet="{}ab_ 查询", max_size=30)),
    value=texts,
)
def test_templates_parse_or_raise_value_error_and_render_any_value(source, value):
    try:
        template = parse_template(source)
    except ValueError:
        return
    rendered = template.render(dict.fromkeys(template.names, value))
    assert isinstance(rendered, str)
    if not template.names:
        assert rendered == source.replace("{{", "{").replace("}}", "}")
