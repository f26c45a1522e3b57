"""The gateway's key=value response format, parsed tolerantly."""

from __future__ import annotations

import contextlib
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from responder.models import PLATFORM_TZ
from responder.protocol import (
    MalformedBody,
    decode_form,
    encode_form,
    format_body,
    parse_body,
    parse_read_result,
    parse_send_result,
)

LIVE_SEND = "num=2&success=18916782320,15221520717,&faile=&err=发送成功&errid=0"
LIVE_READ = "id=48522257&err=成功&src=&msg=好&dst=177411835122&time=201508311558"


def test_live_send_sample_is_two_accepted_numbers_without_the_trailing_empty_one():
    result = parse_send_result(parse_body(LIVE_SEND), LIVE_SEND)
    assert result.ok
    assert result.num == 2
    assert result.accepted == ("18916782320", "15221520717")
    assert result.refused == ()
    assert result.errid == 0
    assert result.err == "发送成功"


def test_live_read_sample_with_empty_src_is_a_message():
    sms = parse_read_result(parse_body(LIVE_READ), LIVE_READ)
    assert sms is not None
    assert sms.gateway_id == 48522257
    assert sms.src == ""
    assert sms.dst == "177411835122"
    assert sms.text == "好"
    assert sms.received_at == datetime(2015, 8, 31, 15, 58, tzinfo=PLATFORM_TZ)
    assert sms.raw == LIVE_READ


def test_nothing_unread_is_none_not_an_error():
    body = "id=0&err=没有未读取的短信"
    assert parse_read_result(parse_body(body), body) is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("num=1&errid=0\r\n", {"num": "1", "errid": "0"}),
        ("  num=1&errid=0   ", {"num": "1", "errid": "0"}),
        ("errid=0&num=1", {"num": "1", "errid": "0"}),
        ("num=1&success=&faile=", {"num": "1", "success": "", "faile": ""}),
        ("num=1&balance=99", {"num": "1", "balance": "99"}),
        ("id=5&msg=A&B&dst=1", {"id": "5", "msg": "A&B", "dst": "1"}),
        ("id=5&msg=a=b&dst=1", {"id": "5", "msg": "a=b", "dst": "1"}),
        ("\ufeffnum=1", {"num": "1"}),
    ],
    ids=[
        "trailing-newline",
        "spaces",
        "any-order",
        "empty-fields",
        "unknown-key-kept",
        "ampersand-in-text",
        "equals-in-text",
        "byte-order-mark",
    ],
)
def test_tolerated_bodies(body, expected):
    assert parse_body(body) == expected


@pytest.mark.parametrize(
    "text",
    ["hi&id=0", "x&src=13900000000", "x&dst=1&time=209901010000", "a&msg=b", "&err=&", "=&=&"],
)
def test_a_text_that_looks_like_fields_cannot_replace_them(text):
    body = f"id=7&err=成功&src=13800138000&msg={text}&dst=0888008&time=202611261200"
    sms = parse_read_result(parse_body(body), body)
    assert (sms.gateway_id, sms.src, sms.dst) == (7, "13800138000", "0888008")
    assert sms.text == text


@pytest.mark.parametrize(
    "body",
    ["", "   \n", "<html><body>Server Error</body></html>", "OK", "<!DOCTYPE html>\n<html>"],
    ids=["empty", "blank", "html", "bare-word", "html-multiline"],
)
def test_bodies_that_are_not_results_are_malformed(body):
    with pytest.raises(MalformedBody):
        parse_body(body)


@pytest.mark.parametrize(
    ("fields", "num", "ok"),
    [
        ({"num": "0", "err": "失败"}, 0, False),
        ({"num": "-1"}, 0, False),
        ({"num": "x"}, 0, False),
        ({}, 0, False),
        ({"num": "3"}, 3, True),
    ],
)
def test_success_is_judged_by_num_alone(fields, num, ok):
    result = parse_send_result(fields, "")
    assert (result.num, result.ok) == (num, ok)


@pytest.mark.parametrize("time", ["", "2015", "notatime", "209913991299"])
def test_an_unusable_time_is_none_not_a_crash(time):
    body = f"id=7&src=13800138000&msg=hi&dst=1&time={time}"
    sms = parse_read_result(parse_body(body), body)
    assert sms is not None and sms.received_at is None


def test_a_read_without_numeric_id_is_malformed():
    with pytest.raises(MalformedBody):
        parse_read_result({"err": "?"}, "err=?")


@given(st.binary(max_size=300))
def test_random_bytes_parse_or_raise_malformed_only(data):
    for encoding in ("gbk", "utf-8"):
        text = data.decode(encoding, errors="replace")
        try:
            fields = parse_body(text)
        except MalformedBody:
            continue
        parse_send_result(fields, text)
        with contextlib.suppress(MalformedBody):
            parse_read_result(fields, text)


keys = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
values = st.text(
    alphabet=st.characters(blacklist_characters="&\r\n", blacklist_categories=("Cs",)),
    max_size=20,
).map(str.strip)


@given(st.dictionaries(keys, values.filter(lambda v: "=" not in v), min_size=1, max_size=6))
def test_format_then_parse_round_trips(fields):
    assert parse_body(format_body(fields)) == fields


@given(st.dictionaries(keys, st.text(alphabet="你好吗短信查询ABCabc123 &=%+，。", max_size=30)))
def test_gbk_form_encoding_round_trips(params):
    assert decode_form(encode_form(params, "gbk"), "gbk") == params
