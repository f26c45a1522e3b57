"""A reply goes out from the extension the customer wrote to (``gateway.service_number``),
unless a plugin names its sender; ``gateway.sender`` when the message shows none."""

from __future__ import annotations

import dataclasses

import pytest

from responder import hookimpl, pipeline, sending
from responder.config import ConfigError, GatewaySettings, settings_from_dict
from responder.models import Reply
from tests.conftest import config_dict
from tests.test_pipeline import inbound

RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理"}]}
SERVICE = "0888008"


@pytest.fixture
def responder_config():
    return {"gateway": {"service_number": SERVICE, "sender": "01"}, "keywords": RULES}


@pytest.mark.parametrize(
    ("service_number", "dst", "extension"),
    [
        ("0888008", "088800802", "02"),
        ("0888008", "0888008", ""),  # the bare service number: gateway.sender
        ("0888008", "05", "05"),  # the platform reported the extension alone
        ("0888008", "1069000102", ""),  # another service code, too long to be an extension
        ("", "02", "02"),
        ("", "123456", "123456"),
        ("", "1234567", ""),
        ("", "088800802", ""),
        ("", "", ""),
        ("", "0a", ""),
    ],
)
def test_the_extension_is_read_from_the_messages_dst(service_number, dst, extension):
    gateway = GatewaySettings(base_urls=("http://x",), name="n", password="p")
    gateway = dataclasses.replace(gateway, service_number=service_number)
    assert pipeline.reply_extension(gateway, dst) == extension


def test_every_row_of_a_reply_carries_the_extension(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path, keywords=RULES, gateway={"service_number": SERVICE})
    app = make_app(data)
    message = app.store.journal(dataclasses.replace(inbound("CX"), dst="088800802"))
    pipeline.process(app, message)
    assert [row.sender for row in app.store.outbox_for(message.id)] == ["02"]


def test_a_plugin_may_name_the_sender_of_its_reply(sandbox, tmp_path, make_app):
    class Named:
        @hookimpl
        def responder_reply(self, message):
            return Reply(text="您好", sender="09")

    data = config_dict(sandbox, tmp_path, gateway={"service_number": SERVICE, "sender": "01"})
    app = make_app(data, extra_plugins=(("named", Named()),))
    message = app.store.journal(dataclasses.replace(inbound("hi"), dst="088800802"))
    pipeline.process(app, message)
    sending.send_due(app)
    assert [s.sender for s in sandbox.sent()] == ["09"]


@pytest.mark.parametrize(
    ("dst", "sent_from"), [("088800802", "02"), (SERVICE, "01")], ids=["extension", "none"]
)
def test_the_reply_is_sent_from_the_extension_written_to(responder_daemon, dst, sent_from):
    responder_daemon.inject("CX", src="13800138000", dst=dst)
    [sent] = responder_daemon.wait_for_sent()
    assert (sent.numbers, sent.text, sent.sender) == (("13800138000",), "已受理", sent_from)


def test_a_service_number_that_is_not_digits_is_a_config_error(sandbox, tmp_path):
    data = config_dict(sandbox, tmp_path, gateway={"service_number": "1069-0123"})
    with pytest.raises(ConfigError, match=r"gateway\.service_number: must be digits only"):
        settings_from_dict(data, environ={})
