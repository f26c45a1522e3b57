"""One test (at least) per hook in responder/hookspecs.py, through the plugin author's kit.

Every test of a hook is named ``test_hook_<hookname>_...``; the last test fails when a
hook has none.
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, replace

import httpx
import pytest
import tomli_w

from responder import hookimpl, hookspecs, outbound
from responder.app import build_app
from responder.cli import build_parser
from responder.commands import CommandRegistry
from responder.config import ConfigError, ConfigSection, Table
from responder.models import Deferred, Event, FlowEntry, Reply, StatusSection, Veto
from responder.plugin_host import PluginHost
from responder.testing import make_settings

# -- responder_config_section -----------------------------------------------------------


@dataclass(frozen=True)
class GreetingSettings:
    text: str
    times: int


class Greeting:
    @hookimpl
    def responder_config_section(self):
        return ConfigSection("greeting", self.parse)

    @staticmethod
    def parse(table: Table) -> GreetingSettings:
        return GreetingSettings(text=table.get_str("text", "hi"), times=table.get_int("times", 1))


@pytest.mark.parametrize("responder_plugins", [[("greeting", Greeting())]], indirect=True)
def test_hook_responder_config_section_gives_the_plugin_its_parsed_section(responder_app):
    assert responder_app.app.plugin_config("greeting") == GreetingSettings("hi", 1)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"times": "two"}, "<responder_config>: greeting.times: must be an integer, got"),
        ({"txet": "hello"}, "<responder_config>: greeting.txet: unknown key; did you mean 'text'"),
    ],
)
def test_hook_responder_config_section_errors_name_the_dotted_key(tmp_path, section, problem):
    settings = make_settings(
        {"greeting": section}, gateway_url="http://127.0.0.1:9", store_path=tmp_path / "s.db"
    )
    with pytest.raises(ConfigError) as caught:
        build_app(settings, extra_plugins=(("greeting", Greeting()),), dry_run=True)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


# -- responder_startup / responder_shutdown ---------------------------------------------


class Lifecycle:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.ticked = threading.Event()

    @hookimpl
    def responder_startup(self, app):
        app.store.migrate("lifecycle", ["CREATE TABLE lifecycle_seen (id INTEGER PRIMARY KEY)"])
        app.every(0.05, self.ticked.set, name="lifecycle-tick")
        self.events.append("startup")

    @hookimpl
    def responder_shutdown(self, app):
        self.events.append("shutdown")


LIFECYCLE = Lifecycle()


@pytest.fixture
def responder_plugins(request):
    return getattr(request, "param", [])


@pytest.mark.parametrize("responder_plugins", [[("lifecycle", LIFECYCLE)]], indirect=True)
def test_hook_responder_startup_creates_tables_and_registers_periodic_work(responder_daemon):
    assert "startup" in LIFECYCLE.events
    assert responder_daemon.store.query("SELECT COUNT(*) FROM lifecycle_seen")[0][0] == 0
    assert LIFECYCLE.ticked.wait(10), "the job registered with app.every never ran"


@pytest.mark.parametrize("responder_plugins", [[("lifecycle", LIFECYCLE)]], indirect=True)
def test_hook_responder_shutdown_runs_when_the_daemon_stops(responder_daemon):
    LIFECYCLE.events.clear()
    responder_daemon.stop()
    assert LIFECYCLE.events == ["shutdown"]


# -- responder_filter -------------------------------------------------------------------


class DropAds:
    @hookimpl
    def responder_filter(self, message):
        return "advertising" if message.text.startswith("AD") else None


class DropShort:
    @hookimpl
    def responder_filter(self, message):
        return "too short" if len(message.text) < 3 else None


class Echo:
    @hookimpl
    def responder_reply(self, message):
        return Reply(text=f"echo {message.text}")


@pytest.mark.parametrize(
    "responder_plugins",
    [[("echo", Echo()), ("drop_ads", DropAds()), ("drop_short", DropShort())]],
    indirect=True,
)
@pytest.mark.parametrize(
    ("text", "dropped", "by"),
    [
        ("AD!", "advertising", "drop_ads"),
        ("AD", "too short", "drop_short"),  # registered last, asked first: its reason wins
        ("hello", None, ""),
    ],
)
def test_hook_responder_filter_first_reason_wins_and_stops_the_reply(
    responder_app, text, dropped, by
):
    decision = responder_app.decide(text)
    assert (decision.dropped, decision.decided_by) == (dropped, by)
    assert (decision.reply is None) == (dropped is not None)


# -- responder_reply --------------------------------------------------------------------


class Weekend:
    @hookimpl(tryfirst=True)
    def responder_reply(self, message):
        return Reply(text="closed today") if message.text == "OPEN?" else None


@pytest.fixture
def responder_config():
    return {"keywords": {"rules": [{"keywords": ["OPEN?", "CX"], "reply": "yes, 9 to 5"}]}}


@pytest.mark.parametrize("responder_plugins", [[("weekend", Weekend())]], indirect=True)
@pytest.mark.parametrize(
    ("text", "reply", "plugin"),
    [("OPEN?", "closed today", "weekend"), ("CX", "yes, 9 to 5", "keywords")],
)
def test_hook_responder_reply_first_reply_wins_over_the_built_in(
    responder_app, text, reply, plugin
):
    decision = responder_app.decide(text)
    assert decision.final is not None and decision.final.text == reply
    assert decision.final.plugin == plugin


class Silence:
    @hookimpl
    def responder_reply(self, message):
        return Reply(text="")


@pytest.mark.parametrize("responder_plugins", [[("silence", Silence())]], indirect=True)
def test_hook_responder_reply_empty_text_answers_with_silence(responder_app):
    decision = responder_app.decide("CX")
    assert decision.reply == Reply(text="", plugin="silence")
    assert decision.final is None


class Crm:
    @hookimpl
    def responder_reply(self, message):
        return Deferred("crm:desk") if message.text == "CX" else None


@pytest.mark.parametrize("responder_plugins", [[("crm", Crm())]], indirect=True)
def test_hook_responder_reply_deferred_wins_and_awaits_the_later_answer(responder_app):
    decision = responder_app.decide("CX")
    assert decision.deferred == Deferred("crm:desk", plugin="crm")
    assert (decision.reply, decision.final, decision.reason) == (None, None, "awaiting crm:desk")


# -- responder_observe ------------------------------------------------------------------


class Audit:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None, str | None]] = []

    @hookimpl
    def responder_observe(self, message, reply, dropped):
        self.seen.append((message.text, reply.text if reply else None, dropped))


AUDIT = Audit()


@pytest.mark.parametrize(
    "responder_plugins", [[("audit", AUDIT), ("drop_ads", DropAds())]], indirect=True
)
def test_hook_responder_observe_sees_answered_and_dropped_messages(responder_daemon):
    AUDIT.seen.clear()
    responder_daemon.inject("CX")
    responder_daemon.inject("AD buy now")
    responder_daemon.wait_idle()
    assert AUDIT.seen == [
        ("CX", "yes, 9 to 5", None),
        ("AD buy now", None, "advertising"),
    ]


# -- responder_before_send --------------------------------------------------------------


class Polite:
    @hookimpl(tryfirst=True)
    def responder_before_send(self, reply):
        return replace(reply, text=f"{reply.text}, thank you")


class Shout:
    @hookimpl
    def responder_before_send(self, reply):
        return replace(reply, text=reply.text.upper())


class NightQuiet:
    @hookimpl
    def responder_before_send(self, message):
        return Veto("quiet hours") if message.src.endswith("0") else None


@pytest.mark.parametrize(
    "responder_plugins", [[("shout", Shout()), ("polite", Polite())]], indirect=True
)
def test_hook_responder_before_send_each_sees_the_reply_as_changed_so_far(responder_app):
    assert responder_app.simulate("CX").text == "YES, 9 TO 5, THANK YOU"


@pytest.mark.parametrize(
    "responder_plugins", [[("shout", Shout()), ("quiet", NightQuiet())]], indirect=True
)
def test_hook_responder_before_send_veto_cancels_the_reply(responder_app):
    decision = responder_app.decide("CX", src="13800138000")
    assert (decision.vetoed, decision.decided_by) == ("quiet hours", "quiet")
    assert responder_app.simulate("CX", src="13800138001").text == "YES, 9 TO 5"


# -- responder_after_send ---------------------------------------------------------------


class Receipts:
    def __init__(self) -> None:
        self.deliveries: list[tuple[str, str, int]] = []

    @hookimpl
    def responder_after_send(self, message, reply, delivery):
        self.deliveries.append((message.text, delivery.status, delivery.attempt))


RECEIPTS = Receipts()


@pytest.mark.parametrize("responder_plugins", [[("receipts", RECEIPTS)]], indirect=True)
def test_hook_responder_after_send_sees_every_attempt(responder_daemon):
    RECEIPTS.deliveries.clear()
    responder_daemon.sandbox.set_fault("status500", endpoint="send", count=1)
    responder_daemon.inject("CX")
    responder_daemon.wait_for_sent()
    responder_daemon.wait_idle()
    assert RECEIPTS.deliveries == [("CX", "retrying", 1), ("CX", "sent", 2)]


# -- responder_register_commands --------------------------------------------------------


class Hello:
    @hookimpl
    def responder_register_commands(self, commands):
        commands.add(
            "hello",
            help="say hello",
            setup=lambda parser: parser.add_argument("--name", default="world"),
            run=lambda app, args: print(f"hello {args.name}, store {app.store.path.name}") or 0,
        )


def test_hook_responder_register_commands_adds_a_subcommand(tmp_path, capsys):
    host = PluginHost(None, extra=[("hello", Hello())], include_configured=False)
    registry = CommandRegistry()
    for plugin, function in host.implementations("responder_register_commands"):
        registry.plugin = plugin
        function(commands=registry)
    config = tmp_path / "config.toml"
    settings = {
        "gateway": {"base_urls": ["http://127.0.0.1:9"], "name": "a", "password": "b"},
        "store": {"path": str(tmp_path / "hello.db")},
    }
    config.write_text(tomli_w.dumps(settings), encoding="utf-8")

    args = build_parser(registry).parse_args(["hello", "-c", str(config), "--name", "ops"])

    assert args.handler(args) == 0
    assert capsys.readouterr().out == "hello ops, store hello.db\n"
    assert registry.commands["hello"].plugin == "hello"


# -- responder_event --------------------------------------------------------------------


class Listener:
    def __init__(self) -> None:
        self.heard: list[tuple[str, Event, str]] = []

    @hookimpl
    def responder_event(self, app, event):
        self.heard.append((threading.current_thread().name, event, type(app).__name__))


def test_hook_responder_event_hears_every_emit_on_the_callers_thread(tmp_path):
    listener = Listener()
    settings = make_settings({}, gateway_url="http://127.0.0.1:9", store_path=tmp_path / "s.db")
    app = build_app(settings, extra_plugins=(("listener", listener),))
    event = Event(type="survey.answered", account="default", number="13800138000", data={"q": 1})
    try:
        thread = threading.Thread(target=app.emit, args=(event,), name="emitter")
        thread.start()
        thread.join()
    finally:
        app.close()

    assert listener.heard == [("emitter", event, "App")]


def test_hook_responder_event_is_not_called_under_dry_run(tmp_path):
    listener = Listener()
    settings = make_settings({}, gateway_url="http://127.0.0.1:9", store_path=tmp_path / "s.db")
    app = build_app(settings, extra_plugins=(("listener", listener),), dry_run=True)
    try:
        app.emit(Event(type="survey.answered", account="default", number="13800138000", data={}))
    finally:
        app.close()

    assert listener.heard == []


# -- responder_status -------------------------------------------------------------------


class Tally:
    @hookimpl
    def responder_status(self, app):
        rows = app.store.query("SELECT COUNT(*) FROM messages")
        return StatusSection(title="tally", figures=(("messages", rows[0][0]),))


@pytest.mark.parametrize("responder_plugins", [[("tally", Tally())]], indirect=True)
def test_hook_responder_status_sections_are_collected_from_every_plugin(responder_daemon):
    responder_daemon.inject("CX")
    responder_daemon.wait_idle()
    sections = responder_daemon.app.status_sections()
    assert StatusSection(title="tally", figures=(("messages", 1),)) in sections


# -- responder_check ----------------------------------------------------------------------


class Checker:
    @hookimpl
    def responder_check(self, app):
        return [f"{app.settings.source}: checker.text: looks odd"]


class QuietChecker:
    @hookimpl
    def responder_check(self):
        return None


@pytest.mark.parametrize(
    "responder_plugins", [[("checker", Checker()), ("quiet", QuietChecker())]], indirect=True
)
def test_hook_responder_check_collects_the_warnings_of_every_plugin(responder_app):
    from responder.checks import plugin_warnings

    assert plugin_warnings(responder_app.app) == ["<responder_config>: checker.text: looks odd"]


# -- responder_describe -----------------------------------------------------------------


class Explainer:
    @hookimpl
    def responder_describe(self, message):
        return (("why", f"nothing for {message.text!r}"),)


@pytest.mark.parametrize("responder_plugins", [[("explainer", Explainer())]], indirect=True)
def test_hook_responder_describe_explains_an_unanswered_message_in_simulate(responder_app):
    from responder.simulation import simulate

    outcome = simulate(responder_app.app, responder_app.message("hello"))

    assert outcome.reason == "no reply"
    assert outcome.labels["why"] == "nothing for 'hello'"  # user plugins before built-ins


# -- responder_flow_entry ---------------------------------------------------------------


class Survey:
    @hookimpl
    def responder_flow_entry(self, app, flow):
        return FlowEntry(step="score", timeout=3600, who="survey") if flow == "survey" else None


def test_hook_responder_flow_entry_starts_each_recipient_at_the_step_it_names(tmp_path):
    settings = make_settings({}, gateway_url="http://127.0.0.1:9", store_path=tmp_path / "s.db")
    app = build_app(settings, extra_plugins=(("survey", Survey()),))
    try:
        receipt = outbound.submit(
            app,
            outbound.SendRequest(to=("13800138000",), text="打分 1-5", flow="survey"),
        )
        assert [r.status for r in receipt.recipients] == [outbound.QUEUED]
        started = app.conversation("13800138000").current
        assert started is not None
        assert (started.flow, started.step, started.who) == ("survey", "score", "survey")
    finally:
        app.close()
        app.store.close()


def test_hook_responder_flow_entry_without_an_answer_refuses_the_flow(tmp_path):
    settings = make_settings({}, gateway_url="http://127.0.0.1:9", store_path=tmp_path / "s.db")
    app = build_app(settings, extra_plugins=(("survey", Survey()),))
    try:
        with pytest.raises(ValueError, match="unknown flow 'quiz'"):
            outbound.submit(app, outbound.SendRequest(to=("13800138000",), text="?", flow="quiz"))
    finally:
        app.close()
        app.store.close()


# -- responder_api ----------------------------------------------------------------------

READ_TOKEN = "reader-token-0123456789abcdef"
SEND_TOKEN = "sender-token-0123456789abcdef"


class HelloEndpoint:
    @hookimpl
    def responder_api(self, api):
        may_read = api.require("read")

        @api.router.get("/hello", dependencies=[may_read])
        def hello() -> dict[str, str]:
            return {"account": api.app().account}


def test_hook_responder_api_adds_an_endpoint_behind_a_scope(tmp_path):
    pytest.importorskip("fastapi")
    from responder.api.context import ApiContext
    from responder.api.server import ApiServer

    tokens = [
        {"name": "board", "scopes": ["read"], "token": READ_TOKEN},
        {"name": "crm", "scopes": ["send"], "token": SEND_TOKEN},
    ]
    settings = make_settings(
        {"api": {"enabled": True, "listen": "127.0.0.1:0", "tokens": tokens}},
        gateway_url="http://127.0.0.1:9",
        store_path=tmp_path / "s.db",
    )
    app = build_app(settings, extra_plugins=(("hello", HelloEndpoint()),))
    server = ApiServer(ApiContext.for_app(app)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            reader = client.get("/v1/hello", headers={"Authorization": f"Bearer {READ_TOKEN}"})
            sender = client.get("/v1/hello", headers={"Authorization": f"Bearer {SEND_TOKEN}"})
            schema = client.get("/v1/openapi.json").json()
        assert (reader.status_code, reader.json()) == (200, {"account": "default"})
        assert sender.status_code == 403
        assert "/v1/hello" in schema["paths"]
    finally:
        server.stop()
        app.close()
        app.store.close()


# -- every hook has a test --------------------------------------------------------------


def hook_names() -> set[str]:
    return {name for name, value in vars(hookspecs).items() if hasattr(value, "responder_spec")}


def test_every_hook_has_a_test_of_its_own():
    tests = [name for name in vars(sys.modules[__name__]) if name.startswith("test_hook_")]
    untested = {
        hook for hook in hook_names() if not any(t.startswith(f"test_hook_{hook}_") for t in tests)
    }
    assert hook_names(), "no hookspecs found"
    assert not untested, f"hooks without a test_hook_<name>_... test: {sorted(untested)}"
