"""The webhook plugin against real local HTTP receivers, a real store and the sandbox.

Relays are driven by calling the engine's ``tick()`` (what the daemon's periodic job
calls) with the controllable clock, then applying the late replies as the processing
thread does; the daemon runs for real where restart or the whole path is the point. The
relays are read back through the public queue API (``app.queue("webhook:<target>")``).
"""

from __future__ import annotations

import argparse
import email.utils
import hmac
import io
import itertools
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

import responder_plugins.webhook as webhook
from responder import OPTED_OUT, ConfigError, Deferred, Event, __version__, hookimpl, pipeline
from responder.app import App
from responder.commands import CommandRegistry
from responder.logs import configure_logging
from responder.metrics import store_figures
from responder.models import PLATFORM_TZ, InboundSms, Message, Reply
from responder.sandbox import Sandbox
from tests.conftest import Clock, config_dict, open_test_store, wait_for
from tests.webhook_receiver import Answer, Receiver, Trickler, json_answer

SECRET = "whsec-3f9a1c0e5b7d2468-test"
PHONE = "13800138000"
OTHER = "13911020005"
RECEIVED = datetime(2026, 11, 26, 10, 30, tzinfo=PLATFORM_TZ)
DOCS = Path(__file__).parent.parent / "docs" / "webhooks.md"

_gateway_ids = itertools.count(48522257)


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def hook_app(
    make_app: Callable[..., App], sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> Iterator[Callable[..., App]]:
    """Build a started App whose [[webhook.targets]] are the given tables (name "crm" first)."""
    started: list[App] = []

    def build(*targets: dict[str, Any], webhook_options: Any = None, **kwargs: Any) -> App:
        tables = [{"name": "crm", "secret": SECRET, "timeout": 2, **t} for t in targets]
        options = {"retry_initial": 10, "retry_max": 160, "breaker_threshold": 100}
        sections = {k: kwargs.pop(k) for k in list(kwargs) if k in ("keywords", "plugins")}
        data = config_dict(
            sandbox,
            tmp_path,
            webhook={**options, **(webhook_options or {}), "targets": tables},
            **sections,
        )
        app = make_app(data, clock=kwargs.pop("clock", clock), **kwargs)
        app.plugins.hook.responder_startup(app=app)
        started.append(app)
        return app

    yield build
    for app in started:
        app.plugins.hook.responder_shutdown(app=app)


def receive(app: App, text: str = "查询订单", src: str = PHONE, dst: str = "0888008") -> Message:
    """Journal an inbound SMS and run it through the pipeline, as the daemon would."""
    sms = InboundSms(
        gateway_id=next(_gateway_ids), src=src, dst=dst, text=text, received_at=RECEIVED, raw=""
    )
    message = app.store.journal(sms)
    assert message is not None
    pipeline.process(app, message)
    return message


def engine_for(app: App) -> Any:
    """The relay engine ``responder_startup`` started for ``app``."""
    return app.stash[webhook.ENGINE]


def command_run(app: App, argv: list[str]) -> int:
    """Run ``responder webhook ARGV`` against ``app``, as the command line would."""
    registry = CommandRegistry()
    webhook.responder_register_commands(commands=registry)
    command = registry.commands["webhook"]
    parser = argparse.ArgumentParser(prog="responder webhook")
    assert command.setup is not None
    command.setup(parser)
    return command.run(app, parser.parse_args(argv))


def deliver(app: App) -> int:
    """One tick of the relay job, waiting for what it started; then the late replies it
    queued are applied, as the daemon's processing thread does."""
    engine = engine_for(app)
    started = engine.tick()
    assert engine.wait(15)
    pipeline.apply_late_replies(app, limit=100)
    return started


STATES = ("pending", "claimed", "done", "dead")


def items(app: App, target: str = "crm") -> list[Any]:
    """A target's queue items (``QueueItem``), oldest first."""
    queue = app.queue(webhook.queue_name(target))
    return sorted((i for state in STATES for i in queue.items(state, 1000)), key=lambda i: i.id)


def rows(app: App) -> list[dict[str, Any]]:
    """Every configured target's relays, as dicts of what the tests look at."""
    targets = [target.name for target in app.plugin_config("webhook").targets]
    return [
        {
            "target": target,
            "state": item.state,
            "attempts": item.attempts,
            "next_attempt_at": item.next_attempt_at,
            "last_error": item.last_error,
            **item.payload,
        }
        for target in targets
        for item in items(app, target)
    ]


def only_row(app: App) -> dict[str, Any]:
    [row] = rows(app)
    return row


def answers(app: App, message: Message) -> list[tuple[tuple[str, ...], str, str]]:
    return [(r.recipients, r.text, r.plugin) for r in app.store.outbox_for(message.id)]


def status(app: App) -> dict[str, Any]:
    [section] = [s for s in app.status_sections() if s.title == "webhook"]
    return dict(section.figures)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expected_signature(secret: str, timestamp: str, body: bytes) -> str:
    """An independent implementation of the documented signature."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, "sha256")
    return "sha256=" + mac.hexdigest()


# -- the request --------------------------------------------------------------------------


def test_request_carries_the_message_as_utf8_json(hook_app, receiver) -> None:
    app = hook_app({"url": receiver.url()})
    message = receive(app, text="您好，请问订单到哪了？", dst="088800800")

    deliver(app)

    [request] = receiver.received()
    assert request.json() == {
        "delivery_id": only_row(app)["delivery_id"],
        "target": "crm",
        "account": "default",
        "message_id": message.id,
        "gateway_id": message.gateway_id,
        "src": PHONE,
        "dst": "088800800",
        "text": "您好，请问订单到哪了？",
        "received_at": "2026-11-26T10:30:00+08:00",
        "opted_out": False,
        "dropped": None,
        "reply_expected": False,
        "conversation": None,
    }


def test_request_headers_follow_the_contract(hook_app, receiver, clock) -> None:
    app = hook_app({"url": receiver.url(), "headers": {"X-Api-Key": "static-key-123"}})
    receive(app)

    deliver(app)

    headers = receiver.received()[0].headers
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"sms-responder/{__version__}"
    assert headers["X-Responder-Timestamp"] == str(int(clock.now))
    assert headers["X-Responder-Delivery"] == only_row(app)["delivery_id"]
    assert headers["X-Api-Key"] == "static-key-123"


def test_signature_verifies_with_an_independent_hmac(hook_app, receiver) -> None:
    app = hook_app({"url": receiver.url()})
    receive(app)

    deliver(app)

    [request] = receiver.received()
    timestamp = request.headers["X-Responder-Timestamp"]
    assert request.headers["X-Responder-Signature"] == expected_signature(
        SECRET, timestamp, request.body
    )


def test_documented_verification_example_accepts_a_real_request_and_rejects_replays(
    hook_app, receiver, clock
) -> None:
    code = re.search(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.S)
    assert code is not None, "docs/webhooks.md has no Python example"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)
    verify = namespace["verify"]
    app = hook_app({"url": receiver.url()})
    receive(app)
    deliver(app)
    [request] = receiver.received()

    assert verify(SECRET, request.headers, request.body, now=clock.now + 10)
    assert not verify(SECRET, request.headers, request.body, now=clock.now + 3600)
    assert not verify(SECRET, request.headers, request.body + b" ", now=clock.now)
    assert not verify("another-secret-of-16+", request.headers, request.body, now=clock.now)


def test_opted_out_comes_from_the_optout_list(hook_app, receiver) -> None:
    app = hook_app({"url": receiver.url()})
    receive(app, text="TD", src=PHONE)  # the optout plugin puts the number on its list
    assert app.stash[OPTED_OUT](PHONE)
    receive(app, src=PHONE)
    receive(app, src=OTHER)

    deliver(app)

    flags = [
        (r.json()["src"], r.json()["text"], r.json()["opted_out"]) for r in receiver.received()
    ]
    assert sorted(flags) == [
        (PHONE, "TD", True),
        (PHONE, "查询订单", True),
        (OTHER, "查询订单", False),
    ]


def test_opted_out_is_false_when_the_optout_plugin_is_off(hook_app, receiver) -> None:
    app = hook_app({"url": receiver.url()}, plugins={"disabled": ["optout"]})
    receive(app, text="TD")

    deliver(app)

    assert only_row(app)["state"] == "done"
    assert receiver.received()[0].json()["opted_out"] is False


def test_dropped_message_is_relayed_with_the_reason(hook_app, receiver) -> None:
    class Spam:
        @hookimpl
        def responder_filter(self, app, message):
            return "spam"

    app = hook_app({"url": receiver.url()}, extra_plugins=(("spamfilter", Spam()),))
    receive(app)

    deliver(app)

    assert receiver.received()[0].json()["dropped"] == "spam"


@pytest.mark.parametrize(
    ("target", "text", "dst", "relayed"),
    [
        ({"match": ["查询", "CX"]}, "ｃｘ　１２３", "0888008", True),
        ({"match": ["查询", "CX"]}, "查询！", "0888008", True),
        ({"match": ["查询", "CX"]}, "退订", "0888008", False),
        ({"dst": "01"}, "hi", "088800801", True),
        ({"dst": "01"}, "hi", "088800802", False),
        ({"dst": "01", "match": ["cx"]}, "hi", "088800801", False),
    ],
)
def test_match_and_dst_choose_the_messages_a_target_sees(
    hook_app, receiver, target, text, dst, relayed
) -> None:
    app = hook_app({"url": receiver.url(), **target})

    receive(app, text=text, dst=dst)

    assert len(rows(app)) == int(relayed)


def test_observing_a_message_twice_keeps_one_delivery_with_its_id(hook_app, receiver) -> None:
    app = hook_app({"url": receiver.url()})
    message = receive(app)
    first = only_row(app)["delivery_id"]

    app.plugins.hook.responder_observe(app=app, message=message, reply=None, dropped=None)

    assert only_row(app)["delivery_id"] == first


# -- retries ------------------------------------------------------------------------------


def _fail_500() -> Answer:
    return Answer(status=500, body=b"Internal Server Error")


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (lambda r: (r.url(), Answer(status=500, body=b"db down")), "HTTP 500: db down"),
        (lambda r: (r.url(), Answer(status=503)), "HTTP 503"),
        (lambda r: (r.url(), Answer(status=408)), "HTTP 408"),
        (lambda r: (r.url(), Answer(status=429)), "HTTP 429"),
        (lambda r: (r.url(), Answer(delay=1.0)), "timed out"),
        (lambda r: (f"http://127.0.0.1:{free_port()}/hook", None), "ConnectError"),
    ],
    ids=["500", "503", "408", "429", "timeout", "refused"],
)
def test_transient_failure_is_retried_after_a_jittered_backoff(
    hook_app, receiver, clock, failure, error
) -> None:
    url, answer = failure(receiver)
    if answer is not None:
        receiver.script(answer)
    app = hook_app({"url": url, "timeout": 0.3})
    receive(app)

    deliver(app)

    row = only_row(app)
    assert row["state"] == "pending"
    assert error in row["last_error"]
    assert clock.now + 5 <= row["next_attempt_at"] <= clock.now + 10


def test_retry_keeps_the_delivery_id_and_the_body(hook_app, receiver, clock) -> None:
    receiver.script(_fail_500(), _fail_500())
    app = hook_app({"url": receiver.url()})
    receive(app)

    for _ in range(3):
        deliver(app)
        clock.now = only_row(app)["next_attempt_at"]

    first, second, third = receiver.received()
    assert only_row(app)["state"] == "done"
    assert {r.headers["X-Responder-Delivery"] for r in (first, second, third)} == {
        only_row(app)["delivery_id"]
    }
    assert first.body == second.body == third.body


def test_backoff_doubles_up_to_retry_max(hook_app, receiver, clock) -> None:
    receiver.default = _fail_500()
    app = hook_app({"url": receiver.url()})
    receive(app)
    delays = []

    for _ in range(7):
        deliver(app)
        due = only_row(app)["next_attempt_at"]
        delays.append(due - clock.now)
        clock.now = due

    for delay, ceiling in zip(delays, [10, 20, 40, 80, 160, 160, 160], strict=True):
        assert ceiling / 2 <= delay <= ceiling


@pytest.mark.parametrize(
    "retry_after",
    [lambda now: "120", lambda now: email.utils.formatdate(now + 120, usegmt=True)],
    ids=["seconds", "http-date"],
)
def test_retry_after_is_honoured(hook_app, receiver, clock, retry_after) -> None:
    receiver.script(Answer(status=429, headers=(("Retry-After", retry_after(clock.now)),)))
    app = hook_app({"url": receiver.url()})
    receive(app)

    deliver(app)

    assert only_row(app)["next_attempt_at"] == pytest.approx(clock.now + 120, abs=1)


def test_retry_after_pauses_the_whole_target(hook_app, receiver, clock) -> None:
    receiver.script(Answer(status=503, headers=(("Retry-After", "300"),)))
    app = hook_app({"url": receiver.url(), "concurrency": 1})
    receive(app)
    deliver(app)
    receive(app)

    clock.advance(100)
    deliver(app)
    assert len(receiver.received()) == 1

    clock.advance(201)
    deliver(app)
    assert [r["state"] for r in rows(app)] == ["done", "done"]


@pytest.mark.parametrize(
    "retry_after",
    [lambda now: "100000", lambda now: email.utils.formatdate(now + 100000, usegmt=True)],
    ids=["seconds", "http-date"],
)
def test_retry_after_is_capped_at_retry_max(hook_app, receiver, clock, retry_after) -> None:
    receiver.script(Answer(status=503, headers=(("Retry-After", retry_after(clock.now)),)))
    app = hook_app({"url": receiver.url()})  # retry_max = 160
    receive(app)

    deliver(app)
    assert only_row(app)["next_attempt_at"] == pytest.approx(clock.now + 160, abs=1)

    clock.advance(161)
    deliver(app)
    assert only_row(app)["state"] == "done"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_other_4xx_is_a_permanent_failure(hook_app, receiver, status) -> None:
    receiver.script(Answer(status=status, body=b"no such hook"))
    app = hook_app({"url": receiver.url()})
    receive(app)

    deliver(app)

    row = only_row(app)
    assert (row["state"], row["attempts"]) == ("dead", 1)
    assert row["last_error"] == f"HTTP {status}: no such hook"


def test_delivery_id_survives_a_restart(hook_app, receiver, clock) -> None:
    receiver.script(_fail_500())
    app = hook_app({"url": receiver.url()})
    receive(app)
    deliver(app)
    app.plugins.hook.responder_shutdown(app=app)
    app.store.close()

    again = hook_app({"url": receiver.url()})
    clock.now = only_row(again)["next_attempt_at"]
    deliver(again)

    first, second = receiver.received()
    assert first.headers["X-Responder-Delivery"] == second.headers["X-Responder-Delivery"]
    assert first.body == second.body
    assert only_row(again)["state"] == "done"


def test_attempt_cut_short_by_a_crash_is_retried_after_restart(hook_app, receiver) -> None:
    app = hook_app({"url": receiver.url()})
    receive(app)
    app.plugins.hook.responder_shutdown(app=app)
    [claimed] = app.queue(webhook.queue_name("crm")).claim()  # what a kill -9 mid-request leaves

    again = hook_app({"url": receiver.url()})
    deliver(again)

    [request] = receiver.received()
    assert request.headers["X-Responder-Delivery"] == claimed.payload["delivery_id"]
    assert (only_row(again)["state"], only_row(again)["attempts"]) == ("done", 2)


# -- dead letters -------------------------------------------------------------------------


def test_dead_letter_after_max_age_then_retry_command_delivers(
    hook_app, receiver, clock, capsys
) -> None:
    receiver.default = Answer(status=502, body=b"bad gateway")
    app = hook_app({"url": receiver.url(), "max_age": 60})
    receive(app)
    while only_row(app)["state"] == "pending":
        deliver(app)
        clock.now = max(clock.now, only_row(app)["next_attempt_at"])

    row = only_row(app)
    assert row["state"] == "dead"
    assert "gave up at max_age" in row["last_error"] and "HTTP 502" in row["last_error"]
    figures = status(app)
    assert figures["dead letters"] == 1
    assert "HTTP 502: bad gateway" in figures["crm: last dead letter"]

    receiver.default = Answer(status=200)
    assert command_run(app, ["retry", "--target", "crm"]) == 0
    deliver(app)

    assert "crm: 1 dead letter(s) re-queued" in capsys.readouterr().out
    assert only_row(app)["state"] == "done"


def test_a_dead_letter_requeued_by_hand_gets_a_fresh_max_age(
    hook_app, receiver, clock, capsys
) -> None:
    receiver.default = Answer(status=502, body=b"bad gateway")
    app = hook_app({"url": receiver.url(), "max_age": 60})
    receive(app)
    while only_row(app)["state"] == "pending":
        deliver(app)
        clock.now = max(clock.now, only_row(app)["next_attempt_at"])
    clock.advance(3600)  # the target is fixed an hour later... or so its owner thinks

    assert command_run(app, ["retry"]) == 0
    deliver(app)

    row = only_row(app)
    assert (row["state"], row["attempts"]) == ("pending", 1)  # retried, not dead at once
    assert row["next_attempt_at"] <= clock.now + 60


def test_retry_command_names_an_unknown_target(hook_app, receiver, capsys) -> None:
    app = hook_app({"url": receiver.url()})

    assert command_run(app, ["retry", "--target", "nope"]) == 2

    assert "no target 'nope' (targets: crm)" in capsys.readouterr().err


def test_retry_subcommand_through_the_cli(hook_app, receiver, tmp_path, sandbox, capsys) -> None:
    import tomli_w

    from responder.cli import main

    receiver.script(Answer(status=404))
    app = hook_app({"url": receiver.url()})
    receive(app)
    deliver(app)
    assert only_row(app)["state"] == "dead"
    data = config_dict(
        sandbox,
        tmp_path,
        webhook={"targets": [{"name": "crm", "secret": SECRET, "url": receiver.url()}]},
    )
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")

    assert main(["webhook", "retry", "-c", str(config)]) == 0

    assert "crm: 1 dead letter(s) re-queued" in capsys.readouterr().out
    assert only_row(app)["state"] == "pending"


def test_status_of_a_store_the_daemon_never_prepared_shows_nothing_pending(
    make_app, sandbox, tmp_path
) -> None:
    target = {"name": "crm", "url": "http://127.0.0.1:9/hook", "secret": SECRET}
    app = make_app(config_dict(sandbox, tmp_path, webhook={"targets": [target]}), dry_run=True)

    figures = status(app)

    assert (figures["pending"], figures["dead letters"]) == (0, 0)
    assert figures["crm: circuit"] == "closed (0 failure(s) in a row)"
    assert not app.store.query("SELECT 1 FROM sqlite_master WHERE name LIKE 'webhook%'")


def test_no_targets_and_no_deliveries_means_no_status_section(make_app, sandbox, tmp_path):
    app = make_app(config_dict(sandbox, tmp_path), dry_run=True)

    assert [s for s in app.status_sections() if s.title == "webhook"] == []


# -- the circuit breaker ------------------------------------------------------------------


def test_circuit_opens_after_repeated_failures_and_half_opens_with_one_probe(
    hook_app, receiver, clock
) -> None:
    receiver.default = _fail_500()
    app = hook_app(
        {"url": receiver.url(), "concurrency": 1},
        webhook_options={"breaker_threshold": 3, "breaker_cooldown": 600, "retry_max": 20},
    )
    for _ in range(3):
        receive(app)
    for _ in range(3):
        deliver(app)
        clock.advance(30)
    assert len(receiver.received()) == 3
    circuit = status(app)["crm: circuit"]
    assert circuit.startswith("open for")

    clock.advance(100)  # every row due, but the circuit is open
    assert deliver(app) == 0

    clock.advance(600)  # half-open: a single probe, which fails and opens it again
    deliver(app)
    assert len(receiver.received()) == 4
    assert deliver(app) == 0

    receiver.default = Answer(status=200)
    clock.advance(601)  # the probe succeeds: closed, and the backlog flows
    deliver(app)
    assert [r["state"] for r in rows(app)] == ["done"] * 3
    assert status(app)["crm: circuit"].startswith("closed")


def test_open_circuit_still_dead_letters_rows_past_max_age(hook_app, receiver, clock) -> None:
    receiver.default = _fail_500()
    app = hook_app(
        {"url": receiver.url(), "max_age": 120},
        webhook_options={"breaker_threshold": 1, "breaker_cooldown": 3600},
    )
    receive(app)
    deliver(app)

    clock.advance(121)
    deliver(app)

    row = only_row(app)
    assert row["state"] == "dead"
    assert row["last_error"] == "HTTP 500: Internal Server Error (circuit open at max_age)"


def test_slow_target_does_not_hold_up_another(hook_app, receiver) -> None:
    release = threading.Event()
    with Receiver(default=Answer(hang=release)) as slow:
        app = hook_app(
            {"name": "slow", "url": slow.url(), "timeout": 5},
            {"name": "fast", "url": receiver.url()},
        )
        receive(app)
        engine = engine_for(app)
        try:
            engine.tick()
            wait_for(lambda: slow.received() and receiver.received())
            wait_for(lambda: {r["target"]: r["state"] for r in rows(app)}["fast"] == "done")
            assert {r["target"]: r["state"] for r in rows(app)}["slow"] == "claimed"
        finally:
            release.set()
            engine.wait()


_STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
_HEADERS = b"".join(b"X-Padding-%d: %s\r\n" % (n, b"x" * 40) for n in range(8))


@pytest.mark.parametrize(
    ("sent_at_once", "trickled", "mode"),
    [
        (b"", _STATUS_LINE + _HEADERS + b"Content-Length: 0\r\n\r\n", "relay"),
        (_STATUS_LINE, _HEADERS + b"Content-Length: 0\r\n\r\n", "relay"),
        (
            _STATUS_LINE + b"Content-Type: text/plain\r\nContent-Length: 400\r\n\r\n",
            b"x" * 400,
            "reply",
        ),
    ],
    ids=["status-line", "headers", "body"],
)
def test_a_response_trickled_byte_by_byte_is_cut_at_the_timeout(
    hook_app, clock, sent_at_once, trickled, mode
) -> None:
    # A byte every 0.5 s: no single read ever waits 1 s, and the whole response would take
    # minutes (past the test's own timeout): only a deadline over the attempt ends it.
    with Trickler(trickled, head=sent_at_once, interval=0.5) as slow:
        app = hook_app({"url": slow.url(), "timeout": 1, "mode": mode})
        receive(app)

        deliver(app)

        row = only_row(app)
        assert (row["state"], row["attempts"]) == ("pending", 1)
        assert row["last_error"].startswith("timed out after 1 s")
        assert clock.now + 5 <= row["next_attempt_at"] <= clock.now + 10
        wait_for(slow.cut.is_set)  # the connection was closed, not left trickling


# -- reply mode ---------------------------------------------------------------------------


def test_reply_target_holds_the_message_from_other_plugins(hook_app, receiver) -> None:
    app = hook_app({"url": receiver.url(), "mode": "reply"}, keywords={"fallback": "感谢您的短信"})
    decision = pipeline.decide(app, _message(app))

    assert decision.deferred == Deferred("webhook:crm", plugin="webhook")
    assert (decision.reply, decision.final) == (None, None)


def test_unsubscribe_word_is_confirmed_by_optout_not_held_for_a_reply_target(
    hook_app, receiver
) -> None:
    receiver.default = json_answer({"reply": "CRM answer"})
    app = hook_app({"url": receiver.url(), "mode": "reply"})
    message = receive(app, text="TD")

    deliver(app)

    assert only_row(app)["mode"] == "relay"
    [(_to, _text, plugin)] = answers(app, message)
    assert plugin == "optout"
    assert receiver.received()[0].json()["opted_out"] is True


def test_a_user_plugin_answers_before_a_reply_target(hook_app, receiver) -> None:
    class Mine:
        @hookimpl
        def responder_reply(self, app, message):
            return Reply(text="mine")

    app = hook_app({"url": receiver.url(), "mode": "reply"}, extra_plugins=(("mine", Mine()),))
    message = receive(app)

    deliver(app)

    assert answers(app, message) == [((PHONE,), "mine", "mine")]
    assert only_row(app)["mode"] == "relay"


def _message(app: App) -> Message:
    return Message(
        id=0, gateway_id=0, src=PHONE, dst="0888008", text="查询", received_at=None, raw=""
    )


@pytest.mark.parametrize(
    ("answer", "target", "expected"),
    [
        (json_answer({"reply": "您好，订单已发货"}), {}, [((PHONE,), "您好，订单已发货")]),
        (json_answer({"reply": "  多行\r\n回复  "}), {}, [((PHONE,), "多行\n回复")]),
        (json_answer({"reply": None}), {}, []),
        (json_answer({"other": 1}), {}, []),
        (Answer(status=204), {}, []),
        (Answer(status=200, body=b""), {}, []),
        (Answer(status=202, body=b'{"reply": "ignored"}'), {}, []),
        (
            Answer(body="收到".encode(), headers=(("Content-Type", "text/plain"),)),
            {"reply_format": "text"},
            [((PHONE,), "收到")],
        ),
        (
            Answer(
                body="收到".encode("gbk"), headers=(("Content-Type", "text/plain; charset=gbk"),)
            ),
            {"reply_format": "text"},
            [((PHONE,), "收到")],
        ),
        (
            json_answer({"reply": "已转告", "to": [OTHER]}),
            {"allow_other_recipients": True},
            [((OTHER,), "已转告")],
        ),
        (json_answer({"reply": "好", "to": [PHONE]}), {}, [((PHONE,), "好")]),
    ],
    ids=[
        "json",
        "stripped",
        "null",
        "no-reply-key",
        "204",
        "empty",
        "202",
        "text",
        "text-gbk",
        "other-recipient-allowed",
        "to-sender",
    ],
)
def test_reply_target_answer_is_queued_for_the_sender(
    hook_app, receiver, answer, target, expected
) -> None:
    receiver.script(answer)
    app = hook_app({"url": receiver.url(), "mode": "reply", **target})
    message = receive(app)

    deliver(app)

    assert only_row(app)["state"] == "done"
    assert [(to, text) for to, text, _plugin in answers(app, message)] == expected
    assert receiver.received()[0].json()["reply_expected"] is True


@pytest.mark.parametrize(
    ("answer", "target", "reason"),
    [
        (json_answer({"reply": "长" * 501}), {}, "501 characters, more than 500"),
        (json_answer({"reply": "hi\x1b[31m"}), {}, "control character U+001B"),
        (json_answer({"reply": "hi\x85"}), {}, "control character U+0085"),
        (Answer(body=b"<html>ok</html>"), {}, "not JSON"),
        (json_answer(["hi"]), {}, "must be a JSON object"),
        (json_answer({"reply": 5}), {}, '"reply" must be a string or null'),
        (json_answer({"reply": "hi", "to": [OTHER]}), {}, "allow_other_recipients = true"),
        (
            json_answer({"reply": "hi", "to": ["+86 139"]}),
            {"allow_other_recipients": True},
            "invalid mobile number",
        ),
        (
            json_answer({"reply": "hi", "to": "13911020005"}),
            {"allow_other_recipients": True},
            '"to" must be a list',
        ),
        (
            Answer(body=b"\xff\xfe", headers=(("Content-Type", "text/plain"),)),
            {"reply_format": "text"},
            "not valid utf-8 text",
        ),
    ],
    ids=[
        "too-long",
        "escape",
        "c1-control",
        "html",
        "list",
        "not-string",
        "other-recipient",
        "bad-number",
        "to-not-list",
        "bad-encoding",
    ],
)
def test_unusable_answer_is_refused_and_the_fallback_answers(
    hook_app, receiver, answer, target, reason
) -> None:
    receiver.script(answer)
    app = hook_app(
        {"url": receiver.url(), "mode": "reply", **target}, keywords={"fallback": "感谢您的短信"}
    )
    message = receive(app)

    deliver(app)

    row = only_row(app)
    assert row["state"] == "dead"
    assert reason in row["last_error"]
    assert answers(app, message) == [((PHONE,), "感谢您的短信", "keywords")]


@pytest.mark.parametrize(
    ("on_failure", "expected"),
    [("fallback", [((PHONE,), "感谢您的短信", "keywords")]), ("silent", [])],
)
def test_on_failure_decides_what_the_sender_gets_when_the_target_fails(
    hook_app, receiver, on_failure, expected
) -> None:
    receiver.script(Answer(status=404))
    app = hook_app(
        {"url": receiver.url(), "mode": "reply", "on_failure": on_failure},
        keywords={"fallback": "感谢您的短信"},
    )
    message = receive(app)

    deliver(app)

    assert answers(app, message) == expected
    assert only_row(app)["state"] == "dead"


def _outcome(app: App, message: Message) -> tuple[str, str, str, str]:
    """The message's state, reason, who decided and plugin, as the store (and so status)
    has them."""
    [entry] = [e for e in app.store.journal_since(0) if e.message.id == message.id]
    return entry.state, entry.reason, entry.decided_by, entry.plugin


@pytest.mark.parametrize(
    ("answer", "plugin"),
    [(json_answer({"reply": "您好，订单已发货"}), "webhook"), (Answer(status=404), "keywords")],
    ids=["target", "fallback"],
)
def test_a_late_answer_counts_the_message_as_answered(hook_app, receiver, answer, plugin) -> None:
    receiver.script(answer)
    app = hook_app({"url": receiver.url(), "mode": "reply"}, keywords={"fallback": "感谢您的短信"})
    message = receive(app)
    assert store_figures(app.store).unanswered == {"awaiting webhook": 1}

    deliver(app)

    assert _outcome(app, message) == ("processed", "", "", plugin)
    assert app.store.status().reasons == {}
    assert store_figures(app.store).unanswered == {}


@pytest.mark.parametrize(
    ("answer", "target", "reason", "decided_by"),
    [
        (json_answer({"reply": None}), {}, "target crm: no answer", "webhook"),
        (
            Answer(status=404),
            {"on_failure": "silent"},
            "target crm: gave up (on_failure = silent)",
            "webhook",
        ),
    ],
    ids=["no-answer", "on-failure-silent"],
)
def test_a_message_left_unanswered_by_its_target_no_longer_awaits_it(
    hook_app, receiver, answer, target, reason, decided_by
) -> None:
    receiver.script(answer)
    app = hook_app({"url": receiver.url(), "mode": "reply", **target})
    message = receive(app)

    deliver(app)

    assert _outcome(app, message) == ("ignored", reason, decided_by, "webhook")
    assert store_figures(app.store).unanswered == {"webhook": 1}


def test_a_fallback_with_nothing_to_say_leaves_the_message_unanswered(hook_app, receiver):
    receiver.script(Answer(status=404))
    app = hook_app({"url": receiver.url(), "mode": "reply"})  # no keyword fallback
    message = receive(app)

    deliver(app)

    state, reason, _decided_by, _plugin = _outcome(app, message)
    assert (state, reason) == ("ignored", "no reply from the other plugins (after webhook)")
    assert answers(app, message) == []


def test_answered_messages_are_not_counted_unanswered_whatever_their_old_reason(
    hook_app, receiver
) -> None:
    receiver.default = json_answer({"reply": "好的"})
    app = hook_app({"url": receiver.url(), "mode": "reply"})
    message = receive(app)
    deliver(app)
    with app.store.transaction() as tx:  # as a store written before the fix has it
        tx.execute(
            "UPDATE messages SET reason = 'awaiting webhook:crm' WHERE id = ?", (message.id,)
        )

    assert app.store.status().reasons == {}


def test_fallback_is_sent_once_even_if_the_dead_letter_dies_again(
    hook_app, receiver, capsys
) -> None:
    receiver.default = Answer(status=404)
    app = hook_app({"url": receiver.url(), "mode": "reply"}, keywords={"fallback": "感谢您的短信"})
    message = receive(app)
    deliver(app)

    command_run(app, ["retry"])
    deliver(app)

    assert len(receiver.received()) == 2
    assert len(answers(app, message)) == 1


def test_only_the_first_matching_reply_target_answers(hook_app, receiver) -> None:
    receiver.default = json_answer({"reply": "来自CRM"})
    app = hook_app(
        {"url": receiver.url(), "mode": "reply"},
        {"name": "desk", "url": receiver.url("/desk"), "mode": "reply"},
    )
    message = receive(app)

    deliver(app)

    assert {r["target"]: r["mode"] for r in rows(app)} == {"crm": "reply", "desk": "relay"}
    assert answers(app, message) == [((PHONE,), "来自CRM", "webhook")]


def test_answer_queued_before_a_crash_is_queued_exactly_once(hook_app, receiver) -> None:
    receiver.default = json_answer({"reply": "好的"})
    app = hook_app({"url": receiver.url(), "mode": "reply"})
    message = receive(app)
    app.plugins.hook.responder_shutdown(app=app)
    # As if killed after the answer was handed to reply_later, before the item was done:
    [claimed] = app.queue(webhook.queue_name("crm")).claim()
    answer = Reply(text="好的", plugin="webhook", meta=(("webhook", "crm"),))
    app.reply_later(message, answer, key=webhook.answer_key(claimed.payload["delivery_id"]))

    again = hook_app({"url": receiver.url(), "mode": "reply"})
    deliver(again)  # the attempt is made again: the same delivery id, the same answer

    [request] = receiver.received()
    assert request.headers["X-Responder-Delivery"] == claimed.payload["delivery_id"]
    assert answers(again, message) == [((PHONE,), "好的", "webhook")]
    assert only_row(again)["state"] == "done"


# -- stores of older releases -------------------------------------------------------------


def _legacy_row(app: App, message: Message, **columns: Any) -> None:
    """A row of the table older releases kept relays in (``webhook_deliveries``)."""
    values = {
        "message_id": message.id,
        "target": "crm",
        "delivery_id": f"legacy-{message.id}",
        "mode": "relay",
        "created_at": 0.0,
        "next_attempt_at": 0.0,
        "expires_at": 9e9,
        **columns,
    }
    with app.store.transaction() as tx:
        tx.execute(
            f"INSERT INTO webhook_deliveries ({', '.join(values)})"
            f" VALUES ({', '.join('?' * len(values))})",
            tuple(values.values()),
        )


def _journal(app: App, text: str) -> Message:
    sms = InboundSms(
        gateway_id=next(_gateway_ids),
        src=PHONE,
        dst="0888008",
        text=text,
        received_at=RECEIVED,
        raw="",
    )
    message = app.store.journal(sms)
    assert message is not None
    return message


@pytest.fixture
def legacy(make_app, sandbox, tmp_path, clock) -> Callable[..., tuple[App, list[Message]]]:
    """A store as an older release left it: the webhook's relays in webhook_deliveries."""

    def build(*rows: dict[str, Any]) -> tuple[App, list[Message]]:
        target = {"name": "crm", "url": "http://127.0.0.1:9/hook", "secret": SECRET}
        old = make_app(config_dict(sandbox, tmp_path, webhook={"targets": [target]}), clock=clock)
        old.store.migrate("webhook", webhook.SCHEMA[:1])
        messages = []
        for number, columns in enumerate(rows):
            message = _journal(old, f"消息 {number}")
            _legacy_row(old, message, **columns)
            messages.append(message)
        return old, messages

    return build


def test_pending_and_dead_relays_of_an_older_release_move_into_the_queue(
    legacy, hook_app, receiver, clock, capsys
) -> None:
    frozen = json.dumps({"frozen": True}, separators=(",", ":")).encode()
    _old, [pending, cut, dead, _done] = legacy(
        {"state": "pending", "next_attempt_at": clock.now + 30, "attempts": 2, "body": frozen},
        {"state": "sending", "next_attempt_at": clock.now - 5, "attempts": 1},
        {"state": "dead", "last_error": "HTTP 404: no such hook", "attempts": 1},
        {"state": "delivered", "attempts": 1},
    )

    app = hook_app({"url": receiver.url()})

    moved = {r["message_id"]: (r["state"], r["delivery_id"], r["last_error"]) for r in rows(app)}
    assert moved == {
        pending.id: ("pending", f"legacy-{pending.id}", ""),
        cut.id: ("pending", f"legacy-{cut.id}", ""),
        dead.id: ("dead", f"legacy-{dead.id}", "HTTP 404: no such hook"),
    }
    assert not app.store.query("SELECT 1 FROM sqlite_master WHERE name = 'webhook_deliveries'")

    deliver(app)
    clock.advance(30)
    deliver(app)
    command_run(app, ["retry"])
    deliver(app)

    sent = {r.headers["X-Responder-Delivery"]: r for r in receiver.received()}
    assert set(sent) == {f"legacy-{m.id}" for m in (pending, cut, dead)}
    assert sent[f"legacy-{pending.id}"].body == frozen  # a body built before is kept
    assert sent[f"legacy-{cut.id}"].json()["message_id"] == cut.id
    assert [r["state"] for r in rows(app)] == ["done"] * 3


def test_moving_the_relays_again_after_a_crash_moves_nothing_twice(legacy, receiver) -> None:
    old, [pending, dead] = legacy({"state": "pending"}, {"state": "dead", "last_error": "HTTP 410"})
    settings = old.plugin_config("webhook")

    webhook.move_legacy(old, settings)
    webhook.move_legacy(old, settings)  # killed before the old table was dropped: again

    [first, second] = items(old)
    assert (first.state, first.payload["message_id"]) == ("pending", pending.id)
    assert (second.state, second.payload["message_id"], second.last_error) == (
        "dead",
        dead.id,
        "HTTP 410",
    )


def test_an_answer_an_older_release_left_unqueued_is_queued_once(
    legacy, hook_app, receiver
) -> None:
    answer = json.dumps({"text": "好的", "to": [], "plugin": "webhook", "meta": []})
    old, [message] = legacy(
        {"state": "delivered", "mode": "reply", "answer": answer, "answer_state": "queuing"}
    )
    webhook.move_legacy(old, old.plugin_config("webhook"))  # once before a crash, say

    app = hook_app({"url": receiver.url(), "mode": "reply"})
    deliver(app)

    assert answers(app, message) == [((PHONE,), "好的", "webhook")]
    assert receiver.received() == []


# -- safety -------------------------------------------------------------------------------


@pytest.mark.parametrize("declared_length", [True, False], ids=["content-length", "chunked"])
def test_huge_answer_body_is_refused_unread(hook_app, receiver, declared_length) -> None:
    receiver.script(Answer(stream_bytes=10 * 1024 * 1024, declared_length=declared_length))
    app = hook_app({"url": receiver.url(), "mode": "reply", "on_failure": "silent"})
    message = receive(app)

    deliver(app)

    row = only_row(app)
    assert (row["state"], row["last_error"]) == (
        "dead",
        "HTTP 200: the response body is larger than 64 KiB",
    )
    assert answers(app, message) == []


def test_huge_body_of_a_relay_target_is_not_read(hook_app, receiver) -> None:
    receiver.script(Answer(stream_bytes=10 * 1024 * 1024))
    app = hook_app({"url": receiver.url()})
    receive(app)

    deliver(app)

    assert only_row(app)["state"] == "done"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_to_another_host_is_not_followed(hook_app, receiver, status) -> None:
    with Receiver() as elsewhere:
        location = elsewhere.url(host="localhost")
        receiver.script(Answer(status=status, headers=(("Location", location),)))
        app = hook_app({"url": receiver.url()})
        receive(app)

        deliver(app)

        assert elsewhere.received() == []
    row = only_row(app)
    assert row["state"] == "dead"
    assert f"HTTP {status}: redirected to http://localhost, not followed" in row["last_error"]


def test_same_host_307_redirect_is_followed_with_the_same_signed_body(hook_app, receiver) -> None:
    receiver.script(Answer(status=307, headers=(("Location", "/v2/hook"),)))
    app = hook_app({"url": receiver.url()})
    receive(app)

    deliver(app)

    first, second = receiver.received()
    assert second.path == "/v2/hook"
    assert (second.body, second.headers["X-Responder-Signature"]) == (
        first.body,
        first.headers["X-Responder-Signature"],
    )
    assert only_row(app)["state"] == "done"


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory) -> tuple[Path, ssl.SSLContext]:
    """A private CA (its PEM file) and a server context with a certificate it signed."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    folder = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Test Private CA",
    )
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n", encoding="ascii")
    openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return folder / "ca.pem", context


def test_tls_certificate_of_a_private_ca_is_refused_without_ca_file(hook_app, private_ca) -> None:
    _ca, context = private_ca
    with Receiver(tls=context) as server:
        app = hook_app({"url": server.url()})
        receive(app)

        deliver(app)

    row = only_row(app)
    assert row["state"] == "pending"
    assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"]


def test_tls_with_the_private_ca_in_ca_file_is_delivered(hook_app, private_ca) -> None:
    ca, context = private_ca
    with Receiver(tls=context) as server:
        app = hook_app({"url": server.url(), "ca_file": str(ca)})
        receive(app)

        deliver(app)

        assert len(server.received()) == 1
    assert only_row(app)["state"] == "done"


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The logs as JSON lines, for the test; the quiet default again afterwards."""
    stream = io.StringIO()
    configure_logging(format="json", level="debug", stream=stream)
    yield stream
    configure_logging(format="console", level="warning")


def test_secret_never_reaches_logs_errors_or_status(log_stream, hook_app, receiver, clock) -> None:
    stream = log_stream
    receiver.default = Answer(status=500, body=f"bad signature, expected {SECRET}".encode())
    app = hook_app({"url": receiver.url(), "max_age": 30})
    receive(app)
    while only_row(app)["state"] == "pending":
        deliver(app)
        clock.now = max(clock.now, only_row(app)["next_attempt_at"])
    app.log.warning("echo", value=f"a plugin logged {SECRET}")

    assert "[REDACTED]" in only_row(app)["last_error"]
    assert SECRET not in json.dumps(rows(app), default=repr)
    assert SECRET not in repr(app.status_sections())
    assert SECRET not in repr(app.plugin_config("webhook"))
    assert "webhook_dead_letter" in stream.getvalue()
    assert SECRET not in stream.getvalue()


# -- the daemon ---------------------------------------------------------------------------


def test_reply_reaches_the_sender_through_the_sandbox_gbk_intact(
    sandbox, receiver, tmp_path
) -> None:
    from responder.config import settings_from_dict
    from responder.daemon import Daemon

    answer = "您好，您的订单已发货，单号SF123。"
    receiver.default = json_answer({"reply": answer})
    data = config_dict(
        sandbox,
        tmp_path,
        webhook={
            "targets": [{"name": "crm", "url": receiver.url(), "secret": SECRET, "mode": "reply"}]
        },
    )
    daemon = Daemon(settings=settings_from_dict(data, environ={}), configure_logs=False)
    daemon.start()
    try:
        sandbox.inject(PHONE, "订单到哪了？")
        [sms] = wait_for(sandbox.sent)
    finally:
        daemon.stop()

    assert receiver.received()[0].json()["text"] == "订单到哪了？"
    assert sms.numbers == (PHONE,)
    assert sms.text == answer
    assert sms.raw_msg == answer.encode("gbk")


@pytest.mark.stores("sqlite", "postgresql")
def test_kill_9_during_a_hanging_call_then_restart_answers_once(
    sandbox, receiver, tmp_path, daemons
) -> None:
    import tomli_w

    hang = threading.Event()
    receiver.script(Answer(hang=hang))
    receiver.default = json_answer({"reply": "已收到，稍后回复您"})
    data = config_dict(
        sandbox,
        tmp_path,
        webhook={
            "targets": [
                {
                    "name": "crm",
                    "url": receiver.url(),
                    "secret": SECRET,
                    "mode": "reply",
                    "timeout": 30,
                }
            ]
        },
    )
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(data), encoding="utf-8")
    sandbox.inject(PHONE, "在吗")
    try:
        first = daemons(config, tmp_path / "first.log")
        wait_for(receiver.received)
        first.kill9()

        second = daemons(config, tmp_path / "second.log")
        [sms] = wait_for(sandbox.sent)
        store = open_test_store()
        wait_for(lambda: store.outbox_for(1)[0].state == "sent")
        second.signal(15)
        assert second.wait() == 0
    finally:
        hang.set()

    assert sandbox.sent() == [sms]
    assert sms.text == "已收到，稍后回复您"
    ids = {r.headers["X-Responder-Delivery"] for r in receiver.received()}
    assert len(receiver.received()) == 2 and len(ids) == 1
    [relay] = store.queue_items(webhook.queue_name("crm"), state="done")
    assert relay.attempts == 2
    store.close()


# -- events (app.emit) ----------------------------------------------------------------------


def test_an_event_reaches_a_subscribed_target_once_signed_even_when_emitted_twice(
    hook_app, receiver
):
    app = hook_app({"url": receiver.url(), "events": ["conversation.completed"]})
    event = Event(
        type="conversation.completed",
        account="default",
        number=PHONE,
        data={"flow": "booking", "fields": {"slot": "上午"}},
        key="42:completed",
    )
    app.emit(event)
    app.emit(event)

    deliver(app)
    deliver(app)

    [request] = receiver.received()
    assert request.headers["X-Responder-Signature"] == expected_signature(
        SECRET, request.headers["X-Responder-Timestamp"], request.body
    )
    document = request.json()
    assert (document["type"], document["number"], document["data"]) == (
        "conversation.completed",
        PHONE,
        {"flow": "booking", "fields": {"slot": "上午"}},
    )


@pytest.mark.parametrize(
    ("events", "target", "delivered"),
    [
        (["handover.requested"], "", 0),  # subscribed to another type
        ([], "crm", 1),  # named explicitly
        ([], "", 0),  # neither
    ],
)
def test_an_event_goes_to_the_target_it_names_or_to_subscribers_only(
    hook_app, receiver, events, target, delivered
):
    app = hook_app({"url": receiver.url(), "events": events})
    app.emit(
        Event(
            type="conversation.completed",
            account="default",
            number=PHONE,
            data={},
            target=target,
            key="k",
        )
    )

    deliver(app)

    assert len(receiver.received()) == delivered


def test_a_target_events_key_must_list_dotted_event_types(make_app, sandbox, tmp_path):
    data = config_dict(
        sandbox,
        tmp_path,
        webhook={
            "targets": [
                {
                    "name": "crm",
                    "secret": SECRET,
                    "url": "http://127.0.0.1:9/",
                    "events": ["Completed"],
                }
            ]
        },
    )
    with pytest.raises(ConfigError, match=r"webhook\.targets\[0\]\.events: must list event types"):
        make_app(data)
