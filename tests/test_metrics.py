"""The Prometheus endpoint, scraped over real HTTP from a daemon running in the test."""

from __future__ import annotations

import socket
import sys

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from responder import hookimpl
from responder.config import ConfigError
from responder.metrics import start_metrics, store_figures
from responder.models import Reply, StatusSection
from responder.supervision import ReadCounter
from responder.testing import make_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Spam:
    """Drops texts containing "spam", answers "DEAD" to a number the gateway refuses, and
    reports a figure."""

    @hookimpl
    def responder_reply(self, message):
        return Reply(text="unreachable", to=("12345",)) if message.text == "DEAD" else None

    @hookimpl
    def responder_filter(self, message):
        return "looks like spam" if "spam" in message.text else None

    @hookimpl
    def responder_status(self, app):
        return StatusSection(title="spam", figures=(("Caught today", 7), ("note", "text")))


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def responder_config(port):
    return {
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "keywords": {"rules": [{"keywords": ["CX"], "reply": "查询已受理"}]},
    }


@pytest.fixture
def responder_plugins():
    return [("spam", Spam())]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_the_endpoint_serves_reads_messages_sends_and_plugin_figures(responder_daemon, port):
    responder_daemon.inject("CX")
    responder_daemon.inject("buy spam")
    responder_daemon.wait_for_sent()
    responder_daemon.wait_idle()
    empty_reads = ("responder_reads_total", (("result", "empty"),))
    responder_daemon.wait_until(lambda: scrape(port)[empty_reads] >= 1, what="an empty read")

    series = scrape(port)

    assert series[("responder_reads_total", (("result", "message"),))] == 2
    assert series[("responder_reads_total", (("result", "error"),))] == 0
    assert series[("responder_messages", (("state", "replied"),))] == 1
    assert series[("responder_messages", (("state", "ignored"),))] == 1
    assert series[("responder_unanswered_messages", (("by", "spam"),))] == 1
    assert series[("responder_sends", (("errid", "0"), ("result", "sent")))] == 1
    assert series[("responder_outbox_depth", ())] == 0
    assert series[("responder_dead_letters", ())] == 0
    assert series[("responder_store_up", ())] == 1
    assert series[("responder_last_read_success_timestamp_seconds", ())] > 0
    assert series[("responder_plugin_figure", (("figure", "caught_today"), ("section", "spam")))]
    assert not any(labels == (("figure", "note"), ("section", "spam")) for _, labels in series)


def test_read_errors_are_counted(responder_daemon, port):
    responder_daemon.sandbox.set_fault("html", endpoint="read", count=1)
    responder_daemon.wait_until(
        lambda: scrape(port)[("responder_reads_total", (("result", "error"),))] == 1,
        what="a counted read error",
    )


def test_reads_refused_as_too_frequent_are_counted_apart_from_errors(responder_daemon, port):
    responder_daemon.sandbox.set_fault("too_soon", endpoint="read", count=1)
    responder_daemon.wait_until(
        lambda: scrape(port)[("responder_reads_total", (("result", "too_soon"),))] == 1,
        what="a counted too-soon read",
    )
    assert scrape(port)[("responder_reads_total", (("result", "error"),))] == 0


def test_dead_letters_and_refusals_show_with_their_errid(responder_daemon, port):
    responder_daemon.inject("DEAD")
    responder_daemon.wait_idle()

    series = scrape(port)

    assert series[("responder_dead_letters", ())] == 1
    dead = [labels for (name, labels), v in series.items() if name == "responder_sends" and v]
    assert dead and dict(dead[0])["result"] == "dead" and dict(dead[0])["errid"] not in ("", "0")


def test_the_account_state_and_balance_are_gauges(responder_daemon, port):
    responder_daemon.sandbox.set_balance(0)
    responder_daemon.inject("CX")
    responder_daemon.wait_until(lambda: responder_daemon.daemon.account.state == "out_of_credit")

    series = scrape(port)

    states = {
        dict(labels)["state"]: value
        for (name, labels), value in series.items()
        if name == "responder_account_state"
    }
    assert states == {"ok": 0, "login_refused": 0, "out_of_credit": 1, "suspended": 0}
    assert ("responder_balance", ()) in series  # checked before the first send
    assert series[("responder_low_balance", ())] == 0


def test_figures_come_from_the_store_so_they_survive_a_restart(responder_daemon):
    responder_daemon.inject("CX")
    responder_daemon.wait_for_sent()
    responder_daemon.wait_idle()
    path = responder_daemon.store.path
    responder_daemon.stop()

    from responder.store import Store

    store = Store(path)
    try:
        figures = store_figures(store)
    finally:
        store.close()
    assert figures.messages == {"replied": 1}
    assert figures.sends == {("sent", "0"): 1}
    assert figures.last_read_ok_at is not None


def test_a_port_in_use_is_a_config_error_naming_the_key(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        settings = make_settings(
            {"metrics": {"listen": listen}}, gateway_url="http://127.0.0.1:9", store_path=tmp_path
        )
        with pytest.raises(ConfigError) as caught:
            start_metrics(settings, lambda: None, ReadCounter())
    assert "metrics.listen: cannot listen on" in str(caught.value)


def test_missing_prometheus_client_is_a_clear_error(tmp_path, monkeypatch):
    # No real installation lacks it here: hide it from the import system instead.
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    settings = make_settings(
        {"metrics": {"listen": "127.0.0.1:9108"}},
        gateway_url="http://127.0.0.1:9",
        store_path=tmp_path,
    )

    with pytest.raises(ConfigError) as caught:
        start_metrics(settings, lambda: None, ReadCounter())

    assert "pip install 'sms-responder[metrics]'" in str(caught.value)
    assert "metrics.listen" in str(caught.value)
