"""The gateway client against the real simulator over loopback HTTP."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import httpx
import pytest
import structlog

from responder.config import settings_from_dict
from responder.gateway import (
    GatewayClient,
    LoginError,
    OutcomeUnknown,
    ReadGate,
    ReadTooSoon,
    TransientError,
)
from responder.logs import configure_logging
from responder.sandbox import Sandbox
from tests.conftest import PASSWORD, Clock, config_dict


def client_for(sandbox: Sandbox, tmp_path: Path, **gateway) -> GatewayClient:
    data = config_dict(sandbox, tmp_path, gateway=gateway)
    settings = settings_from_dict(data, environ={})
    return GatewayClient(settings.gateway)


@pytest.mark.parametrize("method", ["post", "get"])
def test_chinese_text_arrives_intact_in_gbk(sandbox, tmp_path, method):
    with client_for(sandbox, tmp_path, method=method) as client:
        result = client.send(["13800138000"], "您好，您的订单已发货！")
    assert result.ok
    [sent] = sandbox.sent()
    assert sent.text == "您好，您的订单已发货！"
    assert sent.raw_msg == "您好，您的订单已发货！".encode("gbk")
    assert sent.method == method.upper()


def test_utf8_setting_against_a_gbk_gateway_is_visibly_garbled(tmp_path):
    """The check above would catch a client that sent UTF-8: the simulator decodes GBK."""
    with Sandbox(name="acct", password="ascii-only", min_read_interval=0) as sandbox:
        with client_for(sandbox, tmp_path, encoding="utf-8", password="ascii-only") as client:
            assert client.send(["13800138000"], "您好").ok
        assert sandbox.sent()[0].text != "您好"


def test_read_one_returns_messages_in_order_then_none(sandbox, tmp_path):
    sandbox.inject("13800138000", "查询")
    sandbox.inject("13900139000", "second")
    with client_for(sandbox, tmp_path) as client:
        first, second, empty = client.read_one(), client.read_one(), client.read_one()
    assert (first.src, first.text) == ("13800138000", "查询")
    assert (
        first.received_at is not None and first.received_at.utcoffset().total_seconds() == 8 * 3600
    )
    assert (second.src, second.text) == ("13900139000", "second")
    assert empty is None


def test_invalid_gbk_bytes_in_a_message_are_replaced_and_kept_in_the_raw_line(sandbox, tmp_path):
    sandbox.inject("13800138000", "", raw_msg=b"ok\xff\xfe")
    with client_for(sandbox, tmp_path) as client:
        sms = client.read_one()
    assert sms.text.startswith("ok") and "\ufffd" in sms.text
    assert "\\xff" in sms.raw


def test_a_send_is_exactly_one_request_at_the_limits(sandbox, tmp_path):
    """max_recipients numbers and a full SMS: what the pipeline composes, sent as it is."""
    numbers = [f"1380013{i:04d}" for i in range(3)]
    with client_for(sandbox, tmp_path, max_recipients=3) as client:
        result = client.send(numbers, "中" * 70)
    [sent] = sandbox.sent()
    assert sent.numbers == tuple(numbers) and sent.text == "中" * 70
    assert result.num == 3 and result.accepted == tuple(numbers)


@pytest.mark.parametrize(
    ("numbers", "text", "problem"),
    [
        ([f"1380013{i:04d}" for i in range(4)], "hi", "more than one request takes"),
        (["13800138000"], "长" * 71, "more than one request carries"),
        ([" ", ""], "hi", "no recipient numbers"),
    ],
)
def test_a_send_one_request_cannot_carry_is_refused_before_any_request(
    sandbox, tmp_path, numbers, text, problem
):
    """The client no longer splits texts or batches numbers: the caller composes."""
    with (
        client_for(sandbox, tmp_path, max_recipients=3) as client,
        pytest.raises(ValueError, match=problem),
    ):
        client.send(numbers, text)
    assert sandbox.sent() == []


def test_refused_numbers_are_reported_without_empty_entries(sandbox, tmp_path):
    with client_for(sandbox, tmp_path) as client:
        result = client.send(["13800138000", "10086"], "hi")
    assert result.ok
    assert result.accepted == ("13800138000",)
    assert result.refused == ("10086",)


def test_a_long_text_goes_through_longsend_when_enabled(sandbox, tmp_path):
    with client_for(sandbox, tmp_path, long_sms=True) as client:
        client.send(["13800138000"], "长" * 150)
    [sent] = sandbox.sent()
    assert sent.endpoint == "longsend" and sent.text == "长" * 150


def test_emoji_are_replaced_by_a_placeholder_not_a_crash(sandbox, tmp_path):
    with client_for(sandbox, tmp_path) as client:
        assert client.send(["13800138000"], "好的👍").ok
    assert sandbox.sent()[0].text == "好的□"


def test_wrong_password_is_a_login_error(sandbox, tmp_path):
    with client_for(sandbox, tmp_path, password="wrong") as client:
        with pytest.raises(LoginError):
            client.read_one()
        with pytest.raises(LoginError):
            client.send(["13800138000"], "hi")


@pytest.mark.parametrize("kind", ["html", "status500", "empty", "garbled"])
def test_a_faulty_read_answer_is_transient(sandbox, tmp_path, kind):
    sandbox.set_fault(kind, endpoint="read", count=1)
    with client_for(sandbox, tmp_path) as client, pytest.raises(TransientError) as caught:
        client.read_one()
    assert PASSWORD not in str(caught.value)


def test_a_read_refused_as_too_frequent_is_read_too_soon_not_nothing_unread(sandbox, tmp_path):
    sandbox.inject("13800138000", "一")
    sandbox.set_fault("too_soon", endpoint="read", count=1)
    with client_for(sandbox, tmp_path) as client:
        with pytest.raises(ReadTooSoon, match="读取过于频繁"):
            client.read_one()
        assert sandbox.pending() == 1
        assert client.read_one().text == "一"


@pytest.mark.parametrize(
    "err", ["读取过于频繁", "请求过于频繁，请稍后再试", "两次读取间隔必须大于5秒"], ids=str
)
def test_each_wording_of_a_too_frequent_read_is_read_too_soon(err, tmp_path):
    class Wording(Sandbox):
        def _read(self, too_fast):
            return {"id": 0, "err": err} if too_fast else super()._read(too_fast)

    with (
        Wording(name="acct", password=PASSWORD, min_read_interval=60) as sandbox,
        client_for(sandbox, tmp_path) as client,
    ):
        assert client.read_one() is None
        with pytest.raises(ReadTooSoon):
            client.read_one()


@pytest.mark.parametrize("kind", ["empty", "garbled", "drop_after_consume"])
def test_a_send_whose_answer_is_lost_has_an_unknown_outcome(sandbox, tmp_path, kind):
    sandbox.set_fault(kind, endpoint="send", count=1)
    with client_for(sandbox, tmp_path) as client, pytest.raises(OutcomeUnknown):
        client.send(["13800138000"], "hi")


def test_a_send_that_times_out_has_an_unknown_outcome(sandbox, tmp_path):
    sandbox.set_fault("hang", endpoint="send", count=1, delay=3)
    with client_for(sandbox, tmp_path, timeout=0.3) as client, pytest.raises(OutcomeUnknown):
        client.send(["13800138000"], "hi")


def test_failover_to_the_second_address_when_the_first_is_down(tmp_path):
    with Sandbox(name="acct", password=PASSWORD, min_read_interval=0) as second:
        first = Sandbox(name="acct", password=PASSWORD, min_read_interval=0).start()
        dead_url = first.url
        first.stop()
        data = config_dict(second, tmp_path)
        data["gateway"]["base_urls"] = [dead_url, second.url]
        settings = settings_from_dict(data, environ={})
        with GatewayClient(settings.gateway) as client:
            assert client.send(["13800138000"], "one").ok
            assert client.send(["13800138000"], "two").ok
        assert [s.text for s in second.sent()] == ["one", "two"]


@pytest.fixture
def two_gateways(tmp_path):
    """Two simulators of one account, and a client that has both addresses, a's first."""
    with (
        Sandbox(name="acct", password=PASSWORD, min_read_interval=0) as a,
        Sandbox(name="acct", password=PASSWORD, min_read_interval=0) as b,
    ):
        data = config_dict(a, tmp_path)
        data["gateway"]["base_urls"] = [a.url, b.url]
        with GatewayClient(settings_from_dict(data, environ={}).gateway) as client:
            yield a, b, client


def test_the_address_that_answered_stays_preferred(two_gateways):
    a, b, client = two_gateways
    a.set_fault("status500", endpoint="send", count=1)
    client.send(["13800138000"], "one")
    client.send(["13800138000"], "two")
    assert [s.text for s in b.sent()] == ["one", "two"]
    assert a.sent() == []


def test_a_read_is_not_retried_elsewhere_at_once_after_a_5xx(two_gateways):
    """Reading another address right away could break the account's read interval."""
    a, b, client = two_gateways
    a.set_fault("status500", endpoint="read", count=1)
    with pytest.raises(TransientError):
        client.read_one()
    assert b.stats().reads == 0
    client.read_one()
    assert b.stats().reads == 1


def test_read_gate_waits_out_the_interval_from_the_last_read():
    clock = Clock()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    gate = ReadGate(6.0, last_read=clock.now - 2.0, clock=clock, sleep=sleep)
    gate.wait()
    assert slept == [4.0]


def test_read_gate_waits_no_longer_than_after_a_cut_call_when_the_clock_went_back():
    clock = Clock()
    gate = ReadGate(6.0, timeout=10.0, last_read=clock.now + 3600, clock=clock)
    assert gate.seconds_left() == 16.0


def test_read_gate_reports_each_call_start_and_end_for_persistence():
    clock = Clock()
    begun: list[float] = []
    ended: list[float] = []
    gate = ReadGate(6.0, clock=clock, on_begin=begun.append, on_end=ended.append)
    gate.begin()
    clock.advance(2)
    gate.end()
    assert (begun, ended) == ([clock.now - 2], [clock.now])


def test_read_gate_waits_a_full_interval_after_a_slow_answer():
    clock = Clock()
    gate = ReadGate(6.0, clock=clock)
    gate.begin()
    clock.advance(4)  # the answer took 4 s
    gate.end()
    clock.advance(5)
    assert gate.seconds_left() == 1.0


@pytest.mark.parametrize(
    ("started", "ended", "resume"),
    [
        (None, None, None),
        (100.0, 103.0, 103.0),  # the last call ended: count from its end
        (100.0, 90.0, 110.0),  # died during the call: it may have arrived until the timeout
        (100.0, None, 110.0),
    ],
)
def test_a_restart_counts_the_interval_from_the_latest_possible_arrival(started, ended, resume):
    assert ReadGate.resume_from(started, ended, timeout=10.0) == resume


@pytest.mark.parametrize("method", ["post", "get"])
def test_the_password_never_appears_in_debug_logs(sandbox, tmp_path, method):
    stream = io.StringIO()
    configure_logging(format="json", level="debug", secrets=[PASSWORD], stream=stream)
    try:
        logging.getLogger("httpx").setLevel(logging.DEBUG)  # as a careless operator might
        logging.getLogger("httpcore").setLevel(logging.DEBUG)
        with client_for(sandbox, tmp_path, method=method) as client:
            client.send(["13800138000"], "hi")
            sandbox.set_fault("status500", count=1)
            with pytest.raises(TransientError) as caught:
                client.send(["13800138000"], "hi")
            structlog.get_logger("test").exception("send_failed", error=str(caught.value))
            sandbox.stop()
            with pytest.raises(TransientError) as caught:
                client.read_one()
            structlog.get_logger("test").error("read_failed", error=str(caught.value))
    finally:
        configure_logging(format="console", level="warning")
    output = stream.getvalue()
    assert output
    assert PASSWORD not in output
    assert httpx.QueryParams({"pwd": PASSWORD}).get("pwd") not in output
    for encoding in ("gbk", "utf-8"):
        assert str(httpx.QueryParams({"p": PASSWORD.encode(encoding)})) not in output
