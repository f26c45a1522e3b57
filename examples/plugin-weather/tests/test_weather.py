"""The weather plugin, tested with sms-responder's fixtures (responder.testing).

The plugin is loaded through its entry point, as in production: install the package
(``pip install --no-deps -e .``) before running these.
"""

from __future__ import annotations

import pytest

from responder import ConfigError
from responder.app import build_app
from responder.plugin_host import PluginHost
from responder.testing import make_settings

FORECASTS = {"北京": "晴，12~25°C，北风3级", "上海": "小雨，18~22°C，东风2级"}


@pytest.fixture
def responder_config():
    return {"weather": {"forecasts": FORECASTS, "default_city": "北京"}}


def test_it_is_loaded_from_its_entry_point():
    infos = {info.name: info for info in PluginHost(None).infos}
    assert infos["weather"].source == "entry point"
    assert infos["weather"].origin == "responder-weather"


@pytest.mark.parametrize(
    ("text", "reply"),
    [
        ("TQ 北京", "北京：晴，12~25°C，北风3级"),
        ("tq上海", "上海：小雨，18~22°C，东风2级"),
        ("ＴＱ　上海", "上海：小雨，18~22°C，东风2级"),  # full-width, as some phones send
        ("TQ", "北京：晴，12~25°C，北风3级"),  # the default city
        ("TQ 拉萨", "暂无拉萨的天气预报。可查询：北京、上海"),
    ],
)
def test_tq_answers_the_forecast(responder_app, text, reply):
    assert responder_app.simulate(text, src="13800138000").text == reply


@pytest.mark.parametrize("text", ["TQX", "hello", "天气", ""])
def test_other_texts_are_left_to_other_plugins(responder_app, text):
    decision = responder_app.decide(text)
    assert decision.reply is None or decision.reply.plugin != "weather"


def test_the_reply_names_the_plugin_and_city(responder_app):
    reply = responder_app.simulate("TQ 上海")
    assert reply.plugin == "weather"
    assert dict(reply.meta) == {"city": "上海", "found": "yes"}


class TestUnconfigured:
    """Installed but not configured, it must change nothing for anyone."""

    @pytest.fixture
    def responder_config(self):
        return {}

    def test_it_answers_nothing(self, responder_app):
        decision = responder_app.decide("TQ 北京")
        assert decision.reply is None or decision.reply.plugin != "weather"

    def test_it_reports_no_status(self, responder_app):
        assert all(s.title != "weather" for s in responder_app.app.status_sections())


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"forecasts": FORECASTS, "default_city": "广州"}, "weather.default_city: must be a city"),
        ({"forecasts": {"北京": 25}}, "weather.forecasts.北京: must be a string"),
        ({"forecasts": FORECASTS, "unknown": "no {town}"}, "weather.unknown: may use only"),
        ({"forecast": FORECASTS}, "weather.forecast: unknown key; did you mean 'forecasts'"),
    ],
)
def test_config_errors_name_the_key(tmp_path, section, problem):
    settings = make_settings(
        {"weather": section}, gateway_url="http://127.0.0.1:9", store_path=tmp_path / "w.db"
    )
    with pytest.raises(ConfigError) as caught:
        build_app(settings, dry_run=True)
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_the_daemon_answers_over_the_gateway_and_counts_queries(responder_daemon):
    responder_daemon.inject("TQ 上海", src="13900139000")
    responder_daemon.inject("TQ 拉萨", src="13900139000")

    sent = responder_daemon.wait_for_sent(2)
    responder_daemon.wait_idle()

    assert [s.text for s in sent] == [
        "上海：小雨，18~22°C，东风2级",
        "暂无拉萨的天气预报。可查询：北京、上海",
    ]
    assert all(s.numbers == ("13900139000",) for s in sent)
    weather = next(s for s in responder_daemon.app.status_sections() if s.title == "weather")
    assert dict(weather.figures) == {"cities": 2, "queries today": 2, "unknown cities today": 1}
