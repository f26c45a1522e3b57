"""Sends no message asked for (responder.outbound): the compliance path of a reply, an id
to follow them by, idempotency, scheduled sends, cancels, broadcasts, flows and context,
and the events of their SMS. Real SQLite, the simulator over loopback, a real local HTTP
receiver for the events."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import responder_plugins.webhook as webhook
from responder import Veto, hookimpl, pipeline
from responder.app import App, build_app
from responder.cli import main
from responder.config import load_settings
from responder.conversations import CONTEXT, WITH_PERSON
from responder.models import InboundSms, Message
from responder.outbound import (
    CANCELLED,
    DEAD,
    INVALID,
    INVALID_NUMBER,
    PLUGIN,
    QUEUED,
    REFUSED,
    SCHEDULED,
    SENT,
    SUPPRESSED,
    UNCERTAIN,
    Broadcast,
    IdempotencyConflict,
    SendRequest,
    Totals,
    cancel,
    release_due,
    status,
    submit,
)
from responder.sandbox import Sandbox
from responder.sending import Pacer, send_due
from responder_plugins.optout import add_number
from tests.conftest import Clock, config_dict, write_config
from tests.webhook_receiver import Receiver

SIGNATURE = "【仁心诊所】"
OPTED_OUT = "13800138000"
ANNA = "13900139000"
BORIS = "13700137000"
SECRET = "whsec-outbound-test-0123456789"
REMINDER_TEXT = "您预约了明天上午10点的门诊，回复1确认 2改期"
REMINDER: dict[str, Any] = {
    "name": "reminder",
    "done": "谢谢，已记录：{answer}",
    "relay": "clinic",
    "timeout": 86400,
    "steps": [{"name": "answer", "ask": "回复1确认 2改期", "choices": {"1": "确认", "2": "改期"}}],
}
KEYWORDS: dict[str, Any] = {"rules": [{"keywords": ["营业"], "reply": "营业时间 9:00-18:00"}]}
EVENTS = ["message.sent", "message.failed", "optout.added"]
_ids = itertools.count(9_100_000)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def build(
    make_app: Callable[..., App],
    sandbox: Sandbox,
    tmp_path: Path,
    clock: Clock,
    receiver: Receiver,
) -> Iterator[Callable[..., App]]:
    """A started app: a signature, the reminder flow, a "clinic" target subscribed to the
    send events, and OPTED_OUT on the opt-out list."""
    started: list[App] = []

    def make(*plugins: tuple[str, Any], **sections: dict[str, Any]) -> App:
        data = config_dict(
            sandbox,
            tmp_path,
            replies={"signature": SIGNATURE},
            conversations={"flows": [REMINDER]},
            keywords=KEYWORDS,
            webhook={
                "targets": [
                    {"name": "clinic", "url": receiver.url(), "secret": SECRET, "events": EVENTS}
                ]
            },
        )
        for name, values in sections.items():
            data[name] = {**data.get(name, {}), **values}
        app = make_app(data, clock=clock, extra_plugins=plugins)
        app.plugins.hook.responder_startup(app=app)
        add_number(app, OPTED_OUT, message_id=None, source="manual", text="")
        started.append(app)
        return app

    yield make
    for app in started:
        app.plugins.hook.responder_shutdown(app=app)


@pytest.fixture
def app(build: Callable[..., App]) -> App:
    return build()


def request(*to: str, **fields: Any) -> SendRequest:
    return SendRequest(to=to, text=fields.pop("text", "您的报告已出，请到前台领取"), **fields)


def statuses(app: App, send_id: int) -> dict[str, str]:
    found = status(app, send_id)
    assert found is not None
    return {r.number: r.status for r in found.recipients}


def say(app: App, text: str, src: str) -> Message:
    """One inbound SMS through the pipeline and the send thread."""
    sms = InboundSms(next(_ids), src, "0888008", text, None, "")
    message = app.store.journal(sms)
    assert message is not None
    pipeline.process(app, message)
    send_due(app)
    return message


def deliver(app: App) -> None:
    engine = app.stash[webhook.ENGINE]
    engine.tick()
    assert engine.wait(15)


def events(receiver: Receiver, kind: str) -> list[Any]:
    return [r.json() for r in receiver.received() if r.json().get("type") == kind]


# -- the compliance path ----------------------------------------------------------------


def test_a_send_reaches_the_gateway_as_gbk_with_one_signature_and_suppresses_the_opted_out(
    app, sandbox
):
    receipt = submit(app, request(ANNA, OPTED_OUT, BORIS, text=f"{SIGNATURE}您的报告已出"))
    send_due(app)
    assert {(r.number, r.status, r.reason) for r in receipt.recipients} == {
        (ANNA, QUEUED, ""),
        (BORIS, QUEUED, ""),
        (OPTED_OUT, SUPPRESSED, "opted out (by optout)"),
    }
    assert receipt.parts == 1 and receipt.totals == Totals(queued=2, suppressed=1, sms=2)
    [sent] = sandbox.sent()
    assert set(sent.numbers) == {ANNA, BORIS}
    assert sent.raw_msg.decode("gbk") == f"{SIGNATURE}您的报告已出"


def test_invalid_numbers_are_reported_and_duplicates_dropped_and_counted(app):
    receipt = submit(app, request(ANNA, "139-0013-9000", "+8613900139000", "abc", "12"))
    assert [(r.number, r.status, r.reason) for r in receipt.recipients] == [
        (ANNA, QUEUED, ""),
        ("abc", INVALID, INVALID_NUMBER),
        ("12", INVALID, INVALID_NUMBER),
    ]
    assert (receipt.totals.invalid, receipt.totals.duplicates) == (2, 2)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "the text is empty"), ("  \n ", "the text is empty"), ("长" * 400, "too long")],
)
def test_a_text_that_cannot_be_sent_is_refused_and_nothing_stored(app, text, problem):
    with pytest.raises(ValueError, match=problem):
        submit(app, request(ANNA, text=text, key="k1"))
    assert app.store.outbound_find("k1") is None


def test_an_unknown_flow_is_refused_before_anything_is_stored(app):
    with pytest.raises(ValueError, match="unknown flow 'nosuch'"):
        submit(app, request(ANNA, flow="nosuch", key="k1"))
    assert app.store.outbound_find("k1") is None


def test_every_number_goes_through_the_before_send_hooks_as_the_outbound_plugin(build):
    seen: list[tuple[str, tuple[str, ...], int]] = []

    class Quiet:
        @hookimpl
        def responder_before_send(self, message, reply):
            seen.append((reply.plugin, reply.to, message.id))
            return Veto("quiet hours") if reply.to == (BORIS,) else None

    app = build(("quiet", Quiet()))
    receipt = submit(app, request(ANNA, BORIS))
    assert seen == [(PLUGIN, (ANNA,), 0), (PLUGIN, (BORIS,), 0)]
    assert [(r.number, r.status, r.reason) for r in receipt.recipients][1] == (
        BORIS,
        SUPPRESSED,
        "quiet hours (by quiet)",
    )


def test_a_long_text_is_split_and_batched_by_max_recipients(build, sandbox):
    app = build(gateway={"max_recipients": 2})
    numbers = [f"1390000000{i}" for i in range(5)]
    receipt = submit(app, request(*numbers, text="长" * 100))
    send_due(app)
    assert receipt.parts == 2 and receipt.totals.sms == 10
    requests = sandbox.sent()
    assert len(requests) == 6 and all(len(r.numbers) <= 2 for r in requests)
    assert all(r.text.startswith(SIGNATURE) for r in requests)


def test_a_dry_run_checks_and_counts_but_stores_and_sends_nothing(app, sandbox):
    receipt = submit(app, request(ANNA, OPTED_OUT, dry_run=True, key="dry"))
    assert receipt.id == 0 and receipt.totals == Totals(queued=1, suppressed=1, sms=1)
    assert app.store.outbound_find("dry") is None and app.store.outbox_depth() == 0


def test_the_send_its_recipients_and_its_sms_are_written_in_one_transaction(app, monkeypatch):
    import responder.store.sqlite as sqlite

    def broken(*_args: Any) -> None:
        raise RuntimeError("crash in the middle")

    monkeypatch.setattr(sqlite, "_insert_outbound_items", broken)
    with pytest.raises(RuntimeError):
        submit(app, request(ANNA, key="k1"))
    assert app.store.outbound_find("k1") is None
    assert app.store.query("SELECT COUNT(*) FROM outbound_recipients")[0][0] == 0


# -- idempotency ------------------------------------------------------------------------


def test_the_same_key_twice_gives_the_first_answer_and_sends_once(app, sandbox):
    first = submit(app, request(ANNA, OPTED_OUT, key="order-17"))
    again = submit(app, request(ANNA, OPTED_OUT, key="order-17"))
    send_due(app)
    assert again.replayed and not first.replayed
    assert (again.id, again.recipients, again.totals) == (first.id, first.recipients, first.totals)
    assert len(sandbox.sent()) == 1


def test_the_same_key_for_another_request_is_a_conflict(app):
    submit(app, request(ANNA, key="order-17"))
    with pytest.raises(IdempotencyConflict, match="order-17"):
        submit(app, request(BORIS, key="order-17"))


def test_a_key_is_unique_per_account_only(app):
    first = submit(app, request(ANNA, key="k"))
    other = submit(app, request(BORIS, key="k", account="branch"))
    assert other.id != first.id and not other.replayed


# -- scheduled sends and cancels --------------------------------------------------------


def test_a_scheduled_send_waits_for_its_time_then_goes_out(app, sandbox, clock):
    receipt = submit(app, request(ANNA, OPTED_OUT, at=clock.now + 3600))
    assert {r.number: r.status for r in receipt.recipients} == {
        ANNA: SCHEDULED,
        OPTED_OUT: SUPPRESSED,
    }
    assert release_due(app) == 0
    send_due(app)
    assert sandbox.sent() == [] and statuses(app, receipt.id)[ANNA] == SCHEDULED
    clock.advance(3600)
    assert release_due(app) == 1
    send_due(app)
    assert [s.numbers for s in sandbox.sent()] == [(ANNA,)]
    assert statuses(app, receipt.id) == {ANNA: SENT, OPTED_OUT: SUPPRESSED}


def test_someone_who_opts_out_before_the_time_is_not_sent_to(app, sandbox, clock):
    receipt = submit(app, request(ANNA, BORIS, at=clock.now + 60))
    add_number(app, BORIS, message_id=None, source="manual", text="")
    clock.advance(60)
    release_due(app)
    send_due(app)
    assert [s.numbers for s in sandbox.sent()] == [(ANNA,)]
    found = status(app, receipt.id)
    assert found is not None
    assert [(r.number, r.status, r.reason) for r in found.recipients] == [
        (BORIS, SUPPRESSED, "opted out (by optout)"),
        (ANNA, SENT, ""),
    ]


def test_a_scheduled_send_cancelled_sends_nothing(app, sandbox, clock):
    receipt = submit(app, request(ANNA, BORIS, OPTED_OUT, at=clock.now + 60))
    assert cancel(app, receipt.id) == 2
    clock.advance(60)
    assert release_due(app) == 0
    send_due(app)
    assert sandbox.sent() == []
    assert statuses(app, receipt.id) == {
        ANNA: CANCELLED,
        BORIS: CANCELLED,
        OPTED_OUT: SUPPRESSED,
    }


def test_pending_sms_of_a_send_are_cancelled_before_the_sender_takes_them(app, sandbox):
    receipt = submit(app, request(ANNA, BORIS))
    assert cancel(app, receipt.id) == 2
    send_due(app)
    assert sandbox.sent() == []
    assert set(statuses(app, receipt.id).values()) == {CANCELLED}


def test_a_send_already_handed_to_the_gateway_cancels_nothing(app, sandbox):
    receipt = submit(app, request(ANNA))
    send_due(app)
    assert cancel(app, receipt.id) == 0
    assert statuses(app, receipt.id) == {ANNA: SENT}


def test_an_unknown_send_or_another_accounts_is_none(app):
    receipt = submit(app, request(ANNA))
    assert cancel(app, receipt.id + 1) is None and status(app, receipt.id + 1) is None
    assert cancel(app, receipt.id, account="branch") is None
    assert status(app, receipt.id, account="branch") is None


def test_a_large_scheduled_send_goes_to_the_platform_schedule(build, sandbox, clock):
    app = build(gateway={"platform_schedule_over": 1})
    receipt = submit(app, request(ANNA, BORIS, at=clock.now + 7200))
    send_due(app)
    [sent] = sandbox.sent()
    assert sent.schedule and set(sent.numbers) == {ANNA, BORIS}
    assert cancel(app, receipt.id) == 0


# -- progress ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ({"kind": "errid", "errid": 6009}, REFUSED),
        ({"kind": "status500"}, DEAD),
        ({"kind": "drop_after_consume"}, UNCERTAIN),
    ],
)
def test_a_recipients_state_follows_its_sms(build, sandbox, fault, expected):
    app = build(replies={"max_attempts": 1, "on_uncertain": "give_up"})
    sandbox.set_fault(endpoint="send", **fault)
    receipt = submit(app, request(ANNA))
    send_due(app)
    found = status(app, receipt.id)
    assert found is not None
    [anna] = found.recipients
    assert anna.status == expected
    if expected == REFUSED:
        assert anna.errid == 6009 and anna.reason


def test_a_number_the_gateway_refused_in_an_accepted_request_is_refused(app, sandbox):
    landline = "02088886666"  # the simulator accepts mobile numbers only
    receipt = submit(app, request(ANNA, landline))
    send_due(app)
    [sent] = sandbox.sent()
    assert sent.numbers == (ANNA,)
    found = status(app, receipt.id)
    assert found is not None
    by_number = {r.number: r for r in found.recipients}
    assert by_number[ANNA].status == SENT
    assert by_number[landline].status == REFUSED
    assert "lists the number as failed" in by_number[landline].reason


def test_a_number_with_two_parts_is_sent_only_once_both_are(app, sandbox):
    receipt = submit(app, request(ANNA, text="长" * 100))
    send_due(app, limit=1)
    assert statuses(app, receipt.id) == {ANNA: QUEUED}
    send_due(app)
    assert statuses(app, receipt.id) == {ANNA: SENT}


# -- broadcasts -------------------------------------------------------------------------


def summed(*totals: Totals) -> Totals:
    return Totals(*(sum(getattr(t, f) for t in totals) for f in Totals.__dataclass_fields__))


def test_a_broadcast_checks_each_chunk_and_a_restart_queues_only_the_rest(app, sandbox):
    numbers = [f"1350000{i:04d}" for i in range(30)]
    first = Broadcast(app, request(key="campaign-1"))
    totals = summed(first.add([*numbers[:10], OPTED_OUT, numbers[0], "junk"]), first.finish())
    assert totals == Totals(queued=10, suppressed=1, invalid=1, duplicates=1, sms=10)
    again = Broadcast(app, request(key="campaign-1"))
    assert again.id == first.id
    rest = summed(again.add(numbers), again.finish())
    assert (rest.queued, rest.skipped) == (20, 10)
    send_due(app, limit=100)
    sent = [n for s in sandbox.sent() for n in s.numbers]
    assert sorted(sent) == numbers


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_number_repeated_in_a_later_chunk_is_a_duplicate_sent_once(app, sandbox, dry_run):
    broadcast = Broadcast(app, request(dry_run=dry_run))
    broadcast.add([ANNA, BORIS])
    added = summed(broadcast.add([BORIS, "13600136000"]), broadcast.finish())
    assert added == Totals(queued=1 if dry_run else 3, duplicates=1, sms=1 if dry_run else 3)
    send_due(app)
    assert sorted(n for s in sandbox.sent() for n in s.numbers) == (
        [] if dry_run else sorted([ANNA, BORIS, "13600136000"])
    )


def test_a_chunks_last_partial_batch_goes_out_with_the_next_chunks_numbers(build, sandbox):
    app = build(gateway={"max_recipients": 3})
    numbers = [f"1350000{i:04d}" for i in range(8)]
    broadcast = Broadcast(app, request())
    queued = [broadcast.add(numbers[:4]).queued, broadcast.add(numbers[4:]).queued]
    queued.append(broadcast.finish().queued)
    send_due(app, limit=100)
    assert queued == [3, 3, 2]
    assert [list(s.numbers) for s in sandbox.sent()] == [numbers[:3], numbers[3:6], numbers[6:]]
    assert set(statuses(app, broadcast.id).values()) == {SENT}


def test_numbers_held_back_by_a_run_that_died_are_queued_by_the_run_again(build, sandbox):
    app = build(gateway={"max_recipients": 3})
    numbers = [f"1350000{i:04d}" for i in range(7)]
    died = Broadcast(app, request(key="campaign-1"))
    assert died.add(numbers[:5]).queued == 3  # two held back, then the run dies: no finish
    again = Broadcast(app, request(key="campaign-1"))
    rest = summed(again.add(numbers), again.finish())
    send_due(app, limit=100)
    assert (rest.queued, rest.skipped) == (4, 3)
    assert sorted(n for s in sandbox.sent() for n in s.numbers) == numbers
    assert set(statuses(app, again.id).values()) == {SENT}


def test_a_dry_run_tells_numbers_apart_that_differ_by_leading_zeros(app):
    broadcast = Broadcast(app, request(dry_run=True))
    broadcast.add(["02012345678", "2012345678"])
    assert broadcast.add(["002012345678", "2012345678"]) == Totals(queued=1, duplicates=1, sms=1)


def test_a_broadcast_under_a_key_used_for_another_text_is_a_conflict(app):
    Broadcast(app, request(key="campaign-1"))
    with pytest.raises(IdempotencyConflict):
        Broadcast(app, request(key="campaign-1", text="另一条"))


def test_a_scheduled_broadcast_is_held_until_released(app, sandbox, clock):
    broadcast = Broadcast(app, request(at=clock.now + 60))
    assert broadcast.add([ANNA, BORIS]).queued == 2
    send_due(app)
    assert sandbox.sent() == []
    clock.advance(60)
    release_due(app)
    send_due(app)
    assert {n for s in sandbox.sent() for n in s.numbers} == {ANNA, BORIS}


# -- flows and context ------------------------------------------------------------------


def test_a_reminder_with_a_flow_gets_its_answer_to_the_clinic_with_the_context(
    app, sandbox, receiver
):
    receipt = submit(
        app, request(ANNA, text=REMINDER_TEXT, flow="reminder", context={"appointment": 42})
    )
    send_due(app)
    assert [s.text for s in sandbox.sent()] == [f"{SIGNATURE}{REMINDER_TEXT}"]
    conversation = app.store.get_conversation(ANNA)
    assert conversation is not None
    assert (conversation.flow, conversation.step) == ("reminder", "answer")
    say(app, "1", ANNA)
    deliver(app)
    [completed] = events(receiver, "conversation.completed")
    assert completed["number"] == ANNA
    assert completed["data"]["context"] == {"appointment": 42}
    assert completed["data"]["fields"]["answer"] == "确认"
    assert sandbox.sent()[-1].text == f"{SIGNATURE}谢谢，已记录：确认"
    assert receipt.totals.queued == 1


def test_a_context_without_a_flow_rides_on_the_answer_and_changes_nothing_else(
    app, sandbox, receiver
):
    submit(app, request(ANNA, context={"order": "A-17"}))
    send_due(app)
    conversation = app.store.get_conversation(ANNA)
    assert conversation is not None and conversation.state == CONTEXT
    assert conversation.expires_at == conversation.started_at + 86400
    say(app, "营业", ANNA)
    deliver(app)
    assert sandbox.sent()[-1].text == f"{SIGNATURE}营业时间 9:00-18:00"
    relayed = [r.json() for r in receiver.received() if "message_id" in r.json()]
    assert relayed[-1]["conversation"]["context"] == {"order": "A-17"}


def test_a_context_conversation_lets_the_guard_limit_replies(build, sandbox):
    app = build(guard={"max_replies": 1})
    submit(app, request(ANNA, context={"order": "A-17"}))
    send_due(app)
    say(app, "营业", ANNA)
    second = say(app, "营业", ANNA)
    assert app.store.message_state(second.id)[1] == "rate limit"


@pytest.mark.parametrize(
    "fields", [{"flow": "reminder", "context": {"appointment": 42}}, {"context": {"order": 7}}]
)
def test_a_cancelled_send_ends_its_conversations_except_one_a_person_has(app, sandbox, fields):
    receipt = submit(app, request(ANNA, BORIS, text=REMINDER_TEXT, **fields))
    boris = app.store.get_conversation(BORIS)
    assert boris is not None and app.store.get_conversation(ANNA) is not None
    app.store.start_conversation(replace(boris, state=WITH_PERSON))
    assert cancel(app, receipt.id) == 2
    assert app.store.get_conversation(ANNA) is None
    kept = app.store.get_conversation(BORIS)
    assert kept is not None and kept.state == WITH_PERSON


def test_a_cancel_leaves_a_conversation_another_send_started_since(app, sandbox):
    receipt = submit(app, request(ANNA, flow="reminder", context={"appointment": 42}))
    submit(app, request(ANNA, context={"order": 7}))
    assert cancel(app, receipt.id) == 1
    conversation = app.store.get_conversation(ANNA)
    assert conversation is not None and conversation.context == {"order": 7}


def test_a_flow_started_by_a_number_with_a_context_keeps_the_context(build, receiver):
    flow = {**REMINDER, "name": "menu", "start": ["菜单"]}
    app = build(conversations={"flows": [REMINDER, flow]})
    submit(app, request(ANNA, context={"order": "A-17"}))
    send_due(app)
    say(app, "菜单", ANNA)
    conversation = app.store.get_conversation(ANNA)
    assert conversation is not None and conversation.flow == "menu"
    assert conversation.context == {"order": "A-17"}


# -- events and hooks -------------------------------------------------------------------


def test_each_sms_of_a_send_emits_message_sent_with_the_send_id(build, sandbox, receiver):
    app = build(gateway={"max_recipients": 1})
    receipt = submit(app, request(ANNA, BORIS))
    send_due(app)
    deliver(app)
    sent = events(receiver, "message.sent")
    assert sorted(e["number"] for e in sent) == sorted([ANNA, BORIS])
    assert {e["data"]["id"] for e in sent} == {receipt.id}
    assert all((e["data"]["part"], e["data"]["parts"]) == (1, 1) for e in sent)


def test_a_refused_sms_emits_message_failed_with_the_gateways_code(build, sandbox, receiver):
    app = build()
    sandbox.set_fault("errid", endpoint="send", errid=6009)
    receipt = submit(app, request(ANNA))
    send_due(app)
    deliver(app)
    [failed] = events(receiver, "message.failed")
    assert failed["data"]["id"] == receipt.id and failed["data"]["errid"] == 6009
    assert failed["data"]["status"] == REFUSED and failed["data"]["numbers"] == [ANNA]


def test_a_reply_emits_no_send_event(app, receiver):
    say(app, "营业", ANNA)
    deliver(app)
    assert events(receiver, "message.sent") == []


def test_after_send_hooks_get_a_stand_in_message(build):
    seen: list[tuple[int, str, str]] = []

    class Watcher:
        @hookimpl
        def responder_after_send(self, message, reply, delivery):
            seen.append((message.id, reply.plugin, delivery.status))

    app = build(("watcher", Watcher()))
    submit(app, request(ANNA))
    send_due(app)
    assert seen == [(0, PLUGIN, "sent")]


@pytest.mark.parametrize(("how", "who"), [("sms", ANNA), ("command", "responder optout add")])
def test_an_opt_out_emits_optout_added_with_who(app, receiver, tmp_path, how, who):
    if how == "sms":
        say(app, "退订", ANNA)
    else:
        add_number(app, ANNA, message_id=None, source="manual", text="", who="responder optout add")
    deliver(app)
    added = [e for e in events(receiver, "optout.added") if e["number"] == ANNA]
    assert len(added) == 1 and added[0]["data"]["who"] == who


# -- pacing -----------------------------------------------------------------------------


def test_the_pacer_spaces_requests_by_the_send_rate():
    now = [100.0]
    pacer = Pacer(clock=lambda: now[0])
    assert [pacer.reserve(4.0) for _ in range(3)] == [0.0, 0.25, 0.5]
    now[0] += 10
    assert pacer.reserve(4.0) == 0.0
    assert pacer.reserve(0) == 0.0


def test_the_sender_waits_its_slots_and_a_stop_cuts_the_wait_short(build, sandbox):
    app = build(gateway={"send_rate": 2, "max_recipients": 1})
    submit(app, request(ANNA, BORIS, "13600136000"))
    waits: list[float] = []

    def stop_at_second(seconds: float) -> bool:
        waits.append(seconds)
        return len(waits) == 2

    assert send_due(app, wait=lambda s: waits.append(s) or False) == 3
    assert len(sandbox.sent()) == 3 and len(waits) == 2  # the first goes at once
    assert 0 < waits[0] <= 0.5 < waits[1] <= 1.0  # the wait did not sleep: slots add up
    sandbox.reset()
    waits.clear()
    submit(app, request(ANNA, BORIS, "13600136000", text="第二条"))
    taken = send_due(app, wait=stop_at_second)
    assert taken < 3 and len(sandbox.sent()) == taken


# -- the command line -------------------------------------------------------------------


def test_outbox_show_and_cancel_from_the_command_line(sandbox, tmp_path, capsys):
    data = config_dict(sandbox, tmp_path)
    config = str(write_config(tmp_path / "config.toml", data))
    assert main(["optout", "add", OPTED_OUT, "-c", config]) == 0
    app = build_app(load_settings(config))
    try:
        receipt = submit(app, request(ANNA, OPTED_OUT, at=app.time() + 3600))
    finally:
        app.close()
    capsys.readouterr()
    assert main(["outbox", "show", str(receipt.id), "-c", config]) == 0
    out = capsys.readouterr().out
    assert f"{ANNA}  scheduled" in out and "opted out (by optout)" in out
    assert main(["outbox", "cancel", str(receipt.id), "-c", config]) == 0
    assert "cancelled 1 recipient" in capsys.readouterr().out
    assert main(["outbox", "show", str(receipt.id), "-c", config, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {r["number"]: r["status"] for r in shown["recipients"]} == {
        ANNA: CANCELLED,
        OPTED_OUT: SUPPRESSED,
    }
    assert main(["outbox", "cancel", "999", "-c", config]) == 1
