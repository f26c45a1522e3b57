"""`responder send`: a hand-sent SMS goes through the same rules as a reply."""

from __future__ import annotations

import pytest

from responder.cli import main
from responder.store import Store
from tests.conftest import config_dict, write_config

SIGNATURE = "【速达快递】"
OPTED_OUT = "13800138000"
CUSTOMER = "13900139000"


@pytest.fixture
def config(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path, replies={"signature": SIGNATURE})
    return str(write_config(tmp_path / "config.toml", data))


@pytest.fixture
def opted_out(config, capsys):
    assert main(["optout", "add", OPTED_OUT, "-c", config]) == 0
    capsys.readouterr()


def recorded(tmp_path) -> list[tuple[str, str, str]]:
    store = Store(tmp_path / "responder.db")
    try:
        rows = store.query("SELECT recipients, state, reason FROM sent_by_hand ORDER BY id")
        return [tuple(row) for row in rows]
    finally:
        store.close()


def test_an_opted_out_number_is_suppressed_and_said_so(sandbox, config, opted_out, capsys):
    assert main(["send", "-c", config, OPTED_OUT, CUSTOMER, "-m", "您的快件已到"]) == 0
    out = capsys.readouterr().out
    assert f"suppressed: {OPTED_OUT} (opted out (by optout))" in out
    assert "accepted: 13900139000" in out
    assert [sms.numbers for sms in sandbox.sent()] == [(CUSTOMER,)]


def test_nothing_is_sent_when_every_number_is_suppressed(sandbox, config, opted_out, capsys):
    assert main(["send", "-c", config, OPTED_OUT, "-m", "您的快件已到"]) == 0
    assert "nothing sent: every number was suppressed" in capsys.readouterr().out
    assert sandbox.sent() == []


@pytest.mark.parametrize(
    "text", ["您的快件已到", f"{SIGNATURE}您的快件已到", f"您的快件已到{SIGNATURE}"]
)
def test_the_text_arrives_with_one_signature(text, sandbox, config):
    assert main(["send", "-c", config, CUSTOMER, "-m", text]) == 0
    assert [sms.text for sms in sandbox.sent()] == [f"{SIGNATURE}您的快件已到"]


def test_a_long_text_is_split_with_the_signature_on_every_part(sandbox, config, capsys):
    assert main(["send", "-c", config, CUSTOMER, "-m", "长" * 100]) == 0
    texts = [sms.text for sms in sandbox.sent()]
    assert len(texts) == 2
    assert all(text.startswith(SIGNATURE) and len(text) <= 70 for text in texts)
    assert "request 2 of 2: part 2/2 to 1 number(s)" in capsys.readouterr().out


def test_raw_skips_the_hooks_and_the_signature_and_logs_it(sandbox, config, opted_out, capsys):
    assert main(["send", "-c", config, OPTED_OUT, "-m", "测试", "--raw"]) == 0
    captured = capsys.readouterr()
    assert "suppressed" not in captured.out
    assert "send_raw" in captured.err and "no before-send hooks" in captured.err
    assert [(sms.numbers, sms.text) for sms in sandbox.sent()] == [((OPTED_OUT,), "测试")]


def test_every_request_and_suppression_is_kept_in_the_store(sandbox, config, opted_out, tmp_path):
    assert main(["send", "-c", config, OPTED_OUT, CUSTOMER, "-m", "您的快件已到"]) == 0
    assert main(["send", "-c", config, "10086", "-m", "hi", "--raw"]) == 1
    assert recorded(tmp_path) == [
        (OPTED_OUT, "suppressed", "opted out (by optout)"),
        (CUSTOMER, "sent", "发送成功"),
        ("10086", "refused", "发送失败"),
    ]


def test_raw_sends_more_numbers_than_max_recipients_in_batches(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path, gateway={"max_recipients": 2})
    config = str(write_config(tmp_path / "batches.toml", data))
    numbers = [f"1390013{i:04d}" for i in range(5)]
    assert main(["send", "-c", config, *numbers, "-m", "通知", "--raw"]) == 0
    assert [sms.numbers for sms in sandbox.sent()] == [
        tuple(numbers[0:2]),
        tuple(numbers[2:4]),
        tuple(numbers[4:]),
    ]


def test_raw_refuses_a_text_longer_than_one_request_and_sends_nothing(sandbox, config, capsys):
    assert main(["send", "-c", config, CUSTOMER, "-m", "长" * 71, "--raw"]) == 2
    assert "more than one SMS request carries (70)" in capsys.readouterr().err
    assert sandbox.sent() == []
