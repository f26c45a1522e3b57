"""The gateway simulator, exercised over real loopback HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

import responder
from responder.models import PLATFORM_TZ
from responder.protocol import MalformedBody, encode_form, parse_body
from responder.sandbox import Sandbox, SandboxStats

ACCOUNT = {"name": "demo", "pwd": "demo"}
PHONE = "13800138000"
PHONE2 = "13911020005"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(min_read_interval=0) as box:
        yield box


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5) as http:
        yield http


def call(
    client: httpx.Client,
    endpoint: str,
    method: str = "POST",
    encoding: str = "gbk",
    **params: str,
) -> httpx.Response:
    """Call /send/<endpoint>.aspx with the account and params percent-encoded in ``encoding``."""
    form = encode_form({**ACCOUNT, **params}, encoding)
    url = f"/send/{endpoint}.aspx"
    if method == "GET":
        return client.get(f"{url}?{form}")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    return client.post(url, content=form.encode("ascii"), headers=headers)


def line(response: httpx.Response) -> str:
    assert response.status_code == 200
    return response.content.decode("gbk")


def fields(response: httpx.Response) -> dict[str, str]:
    return parse_body(line(response))


def read(client: httpx.Client) -> dict[str, str]:
    return fields(call(client, "readsms"))


# -- encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_gbk_chinese_message_is_decoded_intact(
    sandbox: Sandbox, client: httpx.Client, method: str
) -> None:
    response = call(client, "g70send", method, dst=PHONE, msg="您好，预约已确认！")

    assert fields(response)["num"] == "1"
    [record] = sandbox.sent()
    assert record.text == "您好，预约已确认！"
    assert record.raw_msg == "您好，预约已确认！".encode("gbk")
    assert record.method == method


def test_utf8_missend_is_not_decoded_as_the_text(sandbox: Sandbox, client: httpx.Client) -> None:
    call(client, "g70send", encoding="utf-8", dst=PHONE, msg="您好")

    [record] = sandbox.sent()
    assert record.text != "您好"
    assert record.raw_msg == "您好".encode()


def test_response_is_gbk_plain_text(client: httpx.Client) -> None:
    response = call(client, "readsms")

    assert response.headers["content-type"] == "text/plain; charset=gbk"
    assert response.content == "id=0&err=没有未读取的短信".encode("gbk")


# -- readsms --------------------------------------------------------------------------------


def test_readsms_hands_out_messages_one_per_call_in_order_then_nothing(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    first = sandbox.inject(PHONE, "好")
    second = sandbox.inject(PHONE2, "不要")

    answers = [read(client) for _ in range(3)]

    assert [(a["id"], a.get("src"), a.get("msg")) for a in answers] == [
        (str(first), PHONE, "好"),
        (str(second), PHONE2, "不要"),
        ("0", None, None),
    ]
    assert answers[2]["err"] == "没有未读取的短信"
    assert sandbox.pending() == 0


def test_injected_message_answer_matches_the_live_shape(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    when = datetime(2015, 8, 31, 15, 58, tzinfo=PLATFORM_TZ)
    message_id = sandbox.inject(PHONE, "好", dst="088800800", time=when)

    assert line(call(client, "readsms")) == (
        f"id={message_id}&err=成功&src={PHONE}&msg=好&dst=088800800&time=201508311558"
    )


def test_injected_message_defaults_to_the_service_code_and_now(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    before = datetime.now(PLATFORM_TZ).strftime("%Y%m%d%H%M")
    sandbox.inject(PHONE, "好")
    after = datetime.now(PLATFORM_TZ).strftime("%Y%m%d%H%M")

    answer = read(client)

    assert answer["dst"] == "0888008"
    assert answer["time"] in {before, after}


def test_raw_msg_bytes_are_answered_verbatim(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(PHONE, "", raw_msg=b"\xff\xfe&x")

    assert b"&msg=\xff\xfe&x&dst=" in call(client, "readsms").content


def test_ids_start_at_first_id() -> None:
    box = Sandbox(first_id=500)

    assert [box.inject(PHONE, "a"), box.inject(PHONE, "b")] == [500, 501]


def test_a_new_sandbox_does_not_repeat_ids() -> None:
    earlier = Sandbox().inject(PHONE, "a")
    time.sleep(0.01)

    assert Sandbox().inject(PHONE, "a") > earlier


def test_too_fast_reads_are_counted_and_hand_out_nothing() -> None:
    with Sandbox(min_read_interval=5) as box, httpx.Client(base_url=box.url) as http:
        box.inject(PHONE, "一")
        box.inject(PHONE, "二")

        first, second = read(http), read(http)

        assert first["msg"] == "一"
        assert second == {"id": "0", "err": "读取过于频繁"}
        assert box.stats().too_fast_reads == 1
        assert box.pending() == 1


def test_the_too_soon_fault_answers_as_a_too_fast_read_and_hands_out_nothing() -> None:
    with Sandbox(min_read_interval=0) as box, httpx.Client(base_url=box.url) as http:
        box.inject(PHONE, "一")
        box.set_fault("too_soon", endpoint="read", count=1)

        refused, answer = read(http), read(http)

        assert refused == {"id": "0", "err": "读取过于频繁"}
        assert answer["msg"] == "一"


# -- sends ----------------------------------------------------------------------------------


def test_send_answer_matches_the_live_sample(client: httpx.Client) -> None:
    response = call(client, "g70send", dst=f"{PHONE},{PHONE2}", msg="你好吗")

    assert line(response) == f"num=2&success={PHONE},{PHONE2},&faile=&err=发送成功&errid=0"


def test_schedule_and_sender_are_recorded(sandbox: Sandbox, client: httpx.Client) -> None:
    call(client, "g70send", dst=PHONE, msg="hi", time="200610102000", sender="00")

    [record] = sandbox.sent()
    assert (record.schedule, record.sender, record.endpoint) == ("200610102000", "00", "g70send")
    assert record.numbers == (PHONE,)


def test_refused_numbers_land_in_faile(sandbox: Sandbox, client: httpx.Client) -> None:
    response = call(client, "g70send", dst=f"{PHONE},12345,+8613800138001", msg="hi")

    answer = fields(response)
    assert (answer["num"], answer["success"], answer["faile"]) == (
        "1",
        f"{PHONE},",
        "12345,+8613800138001",
    )
    assert sandbox.sent()[0].numbers == (PHONE,)


def test_send_with_no_acceptable_number_fails(sandbox: Sandbox, client: httpx.Client) -> None:
    response = call(client, "g70send", dst="12345", msg="hi")

    assert line(response) == "num=0&success=&faile=12345&err=发送失败&errid=-4"
    assert sandbox.sent() == []


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("g70send", f"num=0&success=&faile={PHONE}&err=用户名或密码错误&errid=-1"),
        ("longsend", f"num=0&success=&faile={PHONE}&err=用户名或密码错误&errid=-1"),
        ("readsms", "id=-1&err=用户名或密码错误"),
    ],
)
def test_wrong_password_is_answered_as_login_failure(
    sandbox: Sandbox, client: httpx.Client, endpoint: str, expected: str
) -> None:
    sandbox.inject(PHONE, "好")

    response = call(client, endpoint, pwd="wrong", dst=PHONE, msg="hi")

    assert line(response) == expected
    assert (sandbox.sent(), sandbox.pending()) == ([], 1)


def test_too_many_recipients_are_refused() -> None:
    with Sandbox(max_recipients=2) as box, httpx.Client(base_url=box.url) as http:
        dst = ",".join([PHONE, PHONE2, "13700000000"])

        response = call(http, "g70send", dst=dst, msg="hi")

        assert line(response) == f"num=0&success=&faile={dst}&err=号码数量超过限制&errid=6023"
        assert box.sent() == []


@pytest.mark.parametrize(
    ("endpoint", "length", "accepted"),
    [
        ("g70send", 70, True),
        ("g70send", 71, False),
        ("longsend", 71, True),
        ("longsend", 500, True),
        ("longsend", 501, False),
    ],
)
def test_length_limit_counts_characters_per_endpoint(
    client: httpx.Client, endpoint: str, length: int, accepted: bool
) -> None:
    answer = fields(call(client, endpoint, dst=PHONE, msg="好" * length))

    if accepted:
        assert answer["num"] == "1"
    else:
        assert (answer["num"], answer["errid"], answer["err"]) == ("0", "6011", "短信内容超长")


# -- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["readsms", "g70send"])
@pytest.mark.parametrize(
    ("kind", "status", "content_type"),
    [
        ("html", 200, "text/html"),
        ("status500", 500, "text/plain"),
        ("empty", 200, "text/plain; charset=gbk"),
        ("garbled", 200, "text/plain; charset=gbk"),
    ],
)
def test_fault_answers_something_that_is_not_a_result(
    sandbox: Sandbox,
    client: httpx.Client,
    endpoint: str,
    kind: str,
    status: int,
    content_type: str,
) -> None:
    sandbox.inject(PHONE, "好")
    sandbox.set_fault(kind)

    response = call(client, endpoint, dst=PHONE, msg="hi")

    assert (response.status_code, response.headers["content-type"]) == (status, content_type)
    with pytest.raises(MalformedBody):
        parse_body(response.content.decode("gbk", errors="replace"))
    assert (sandbox.sent(), sandbox.pending()) == ([], 1)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("g70send", f"num=0&success=&faile={PHONE}&err=用户名或密码错误&errid=-1"),
        ("readsms", "id=-1&err=用户名或密码错误"),
    ],
)
def test_login_fault_answers_as_a_wrong_password(
    sandbox: Sandbox, client: httpx.Client, endpoint: str, expected: str
) -> None:
    sandbox.set_fault("login")

    assert line(call(client, endpoint, dst=PHONE, msg="hi")) == expected


def test_fault_count_limits_how_many_requests_it_hits(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_fault("status500", count=2)

    statuses = [call(client, "readsms").status_code for _ in range(3)]

    assert statuses == [500, 500, 200]


def test_fault_endpoint_limits_which_requests_it_hits(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_fault("status500", endpoint="read")

    assert call(client, "g70send", dst=PHONE, msg="hi").status_code == 200
    assert call(client, "readsms").status_code == 500


def test_stacked_faults_apply_in_order(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_fault("status500", count=1)
    sandbox.set_fault("empty", count=1)

    first, second, third = (call(client, "readsms") for _ in range(3))

    assert (first.status_code, second.content, fields(third)["id"]) == (500, b"", "0")


def test_clear_faults_restores_normal_answers(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_fault("status500")
    sandbox.clear_faults()

    assert fields(call(client, "readsms"))["id"] == "0"


def test_unknown_fault_kind_is_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sandbox.set_fault("teapot")


def test_hang_fault_times_the_client_out_without_blocking_others(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.inject(PHONE, "好")
    sandbox.set_fault("hang", endpoint="read", count=1, delay=2.0)

    with pytest.raises(httpx.ReadTimeout):
        client.post("/send/readsms.aspx", data=ACCOUNT, timeout=0.5)
    started = time.monotonic()
    answer = fields(call(client, "g70send", dst=PHONE, msg="hi"))

    assert answer["num"] == "1"
    assert time.monotonic() - started < 0.5
    assert sandbox.pending() == 1


def test_stop_does_not_wait_for_a_hanging_request(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_fault("hang", delay=30.0)
    with pytest.raises(httpx.ReadTimeout):
        client.post("/send/readsms.aspx", data=ACCOUNT, timeout=0.3)

    started = time.monotonic()
    sandbox.stop()

    assert time.monotonic() - started < 1.0


def test_drop_after_consume_on_read_loses_the_message(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.inject(PHONE, "好")
    sandbox.set_fault("drop_after_consume", endpoint="read", count=1)

    with pytest.raises(httpx.RemoteProtocolError):
        call(client, "readsms")

    assert sandbox.pending() == 0
    assert read(client)["id"] == "0"


def test_drop_after_consume_on_send_records_the_send(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_fault("drop_after_consume", endpoint="send", count=1)

    with pytest.raises(httpx.RemoteProtocolError):
        call(client, "g70send", dst=PHONE, msg="hi")

    assert [record.numbers for record in sandbox.sent()] == [(PHONE,)]


def test_slow_fault_delays_a_normal_answer(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(PHONE, "好")
    sandbox.set_fault("slow", count=1, delay=0.3)

    started = time.monotonic()
    answer = read(client)

    assert time.monotonic() - started >= 0.3
    assert answer["msg"] == "好"


def test_faulted_read_counts_toward_the_interval_and_reads() -> None:
    with Sandbox(min_read_interval=5) as box, httpx.Client(base_url=box.url) as http:
        box.inject(PHONE, "好")
        box.set_fault("html", count=1)

        call(http, "readsms")
        answer = read(http)

        assert answer["err"] == "读取过于频繁"
        assert (box.stats().reads, box.stats().too_fast_reads, box.pending()) == (2, 1, 1)


# -- the account: balance and error codes -----------------------------------------------


def test_getfee_answers_the_balance_in_id(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_balance(1234)

    assert line(call(client, "getfee")) == "id=1234&err=查询成功&errid=0"


def test_each_accepted_number_costs_one_unit_of_credit(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_balance(5)

    call(client, "g70send", dst=f"{PHONE},{PHONE2}", msg="hi")

    assert sandbox.balance == 3


def test_sends_without_credit_are_refused_with_6013(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.set_balance(1)

    answer = line(call(client, "g70send", dst=f"{PHONE},{PHONE2}", msg="hi"))

    assert answer == f"num=0&success=&faile={PHONE},{PHONE2}&err=账号余额不足&errid=6013"
    assert (sandbox.sent(), sandbox.balance) == ([], 1)


def test_getfee_can_be_switched_off_like_a_provider_without_it(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    sandbox.set_balance(offered=False)

    assert call(client, "getfee").status_code == 404
    assert sandbox.stats().balance_checks == 1


@pytest.mark.parametrize(
    ("fault", "endpoint", "expected"),
    [
        ({"errid": 6010}, "readsms", "id=-1&err=密码不正确&errid=6010"),
        ({"errid": 6010}, "getfee", "id=-1&err=密码不正确&errid=6010"),
        ({"errid": 6009}, "g70send", f"num=0&success=&faile={PHONE}&err=黑名单号码&errid=6009"),
        (
            {"errid": 6013, "err": "余额不够"},
            "g70send",
            f"num=0&success=&faile={PHONE}&err=余额不够&errid=6013",
        ),
        ({"err": "账号余额不足"}, "g70send", f"num=0&success=&faile={PHONE}&err=账号余额不足"),
    ],
)
def test_an_errid_fault_answers_with_the_code_and_text(
    sandbox: Sandbox, client: httpx.Client, fault: dict, endpoint: str, expected: str
) -> None:
    sandbox.set_fault("errid", **fault)

    assert line(call(client, endpoint, dst=PHONE, msg="hi")) == expected


def test_control_api_sets_the_balance_and_errid_faults(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    set_to = client.post("/_sandbox/balance", json={"balance": 7, "offered": True}).json()
    client.post("/_sandbox/fault", json={"kind": "errid", "errid": 6019, "endpoint": "send"})

    assert set_to == {"balance": 7, "offered": True}
    assert fields(call(client, "g70send", dst=PHONE, msg="hi"))["errid"] == "6019"
    assert fields(call(client, "getfee"))["id"] == "7"
    assert client.post("/_sandbox/balance", json={"balance": "x"}).status_code == 400


# -- lifecycle and control API --------------------------------------------------------------


def test_stop_makes_later_connections_fail() -> None:
    box = Sandbox().start()
    url = box.url
    box.stop()

    with pytest.raises(httpx.ConnectError):
        httpx.post(f"{url}/send/readsms.aspx", data=ACCOUNT, timeout=2)


def test_request_log_stays_silent(client: httpx.Client, capfd: pytest.CaptureFixture[str]) -> None:
    call(client, "readsms", "GET")
    call(client, "nosuch")

    assert capfd.readouterr().err == ""


def test_stats_count_requests(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(PHONE, "好")
    sandbox.inject(PHONE, "好")
    call(client, "readsms")
    call(client, "g70send", dst="1", msg="hi")
    client.get("/_sandbox/stats")

    assert sandbox.stats() == SandboxStats(
        reads=1, too_fast_reads=0, sends=1, pending_inbound=1, requests=2
    )


def test_control_api_injects_a_message_readsms_hands_out(
    sandbox: Sandbox, client: httpx.Client
) -> None:
    created = client.post("/_sandbox/inbound", json={"src": PHONE, "text": "好", "dst": "08880081"})

    answer = read(client)

    assert (answer["id"], answer["msg"], answer["dst"]) == (
        str(created.json()["id"]),
        "好",
        "08880081",
    )


def test_control_api_lists_sends_and_stats(client: httpx.Client) -> None:
    call(client, "g70send", dst=PHONE, msg="您好")

    [record] = client.get("/_sandbox/sent").json()
    stats = client.get("/_sandbox/stats").json()

    assert (record["numbers"], record["text"], record["raw_msg"]) == (
        [PHONE],
        "您好",
        "您好".encode("gbk").hex(),
    )
    assert (stats["sends"], stats["requests"]) == (1, 1)


def test_control_api_sets_and_clears_faults(client: httpx.Client) -> None:
    client.post("/_sandbox/fault", json={"kind": "status500", "endpoint": "read", "count": 5})
    faulted = call(client, "readsms").status_code
    client.delete("/_sandbox/fault")

    assert (faulted, call(client, "readsms").status_code) == (500, 200)


def test_control_api_reset_forgets_everything(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.inject(PHONE, "好")
    sandbox.set_fault("status500", endpoint="send")
    call(client, "g70send", dst=PHONE, msg="hi")

    client.post("/_sandbox/reset")

    assert client.get("/_sandbox/stats").json() == {
        "reads": 0,
        "too_fast_reads": 0,
        "sends": 0,
        "pending_inbound": 0,
        "requests": 0,
        "balance_checks": 0,
    }
    assert fields(call(client, "g70send", dst=PHONE, msg="hi"))["num"] == "1"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/_sandbox/inbound", b'{"src": 1}', 400),
        ("POST", "/_sandbox/inbound", b"not json", 400),
        ("POST", "/_sandbox/fault", b'{"kind": "teapot"}', 400),
        ("GET", "/_sandbox/nosuch", b"", 404),
    ],
)
def test_control_api_rejects_bad_calls(
    client: httpx.Client, method: str, path: str, body: bytes, status: int
) -> None:
    response = client.request(method, path, content=body)

    assert response.status_code == status
    assert "error" in response.json()


def test_serve_says_where_it_listens_and_stops_on_sigterm() -> None:
    code = "from responder.sandbox import serve; serve(port=0, password='s3cret')"
    env = {**os.environ, "PYTHONPATH": str(Path(responder.__file__).parents[1])}
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    ) as process:
        try:
            banner = process.stdout.readline() if process.stdout else ""
            url = banner.split("listening on ")[1].split()[0]
            answer = httpx.post(f"{url}/send/readsms.aspx", data={"name": "demo", "pwd": "s3cret"})
            process.send_signal(signal.SIGTERM)

            assert process.wait(timeout=5) == 0
        finally:
            process.kill()
    assert "'s3cret'" in banner and "/_sandbox/inbound" in banner
    assert answer.content == "id=0&err=没有未读取的短信".encode("gbk")
