"""Outbound sends in a running daemon: work handed to the processing worker
(``Daemon.on_processor``), scheduled sends released on their own, and the reminder of
the appointment flow answered through the simulator to a real local HTTP receiver."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from responder import outbound
from responder.app import App, build_app
from responder.config import load_settings
from responder.daemon import Daemon, ProcessorUnavailable
from responder.outbound import SendRequest
from responder.sandbox import Sandbox
from tests.conftest import config_dict, wait_for, write_config
from tests.webhook_receiver import Receiver

PROCESS = "responder-process"
ANNA = "13900139000"
SECRET = "whsec-outbound-daemon-0123456789"
REMINDER: dict[str, Any] = {
    "name": "reminder",
    "done": "谢谢，已记录：{answer}",
    "relay": "clinic",
    "steps": [{"name": "answer", "ask": "回复1确认 2改期", "choices": {"1": "确认", "2": "改期"}}],
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture
def run_daemon(
    tmp_path: Path, receiver: Receiver, start_daemon: Callable[..., Daemon]
) -> Callable[..., Daemon]:
    def run(sandbox: Sandbox, **sections: dict[str, Any]) -> Daemon:
        data = config_dict(
            sandbox,
            tmp_path,
            conversations={"flows": [REMINDER]},
            webhook={"targets": [{"name": "clinic", "url": receiver.url(), "secret": SECRET}]},
            **sections,
        )
        return start_daemon(data)

    return run


def test_work_handed_over_runs_on_the_processing_worker_and_answers(sandbox, run_daemon):
    daemon = run_daemon(sandbox)

    def where(app: App) -> tuple[str, bool]:
        return threading.current_thread().name, app is daemon.app

    assert daemon.on_processor(where, timeout=10) == (PROCESS, True)


def test_an_exception_of_the_work_is_raised_to_the_caller(sandbox, run_daemon):
    daemon = run_daemon(sandbox)

    def broken(_app: App) -> None:
        raise ValueError("unknown flow 'x'")

    with pytest.raises(ValueError, match="unknown flow"):
        daemon.on_processor(broken, timeout=10)
    assert daemon.on_processor(lambda _app: 7, timeout=10) == 7  # the worker goes on


def test_work_not_taken_in_time_is_refused_and_never_runs(sandbox, run_daemon):
    daemon = run_daemon(sandbox)
    release = threading.Event()
    ran: list[str] = []
    blocker = threading.Thread(
        target=lambda: daemon.on_processor(lambda _app: release.wait(30), timeout=30)
    )
    blocker.start()
    wait_for(lambda: daemon.workers["process"].busy)
    try:
        with pytest.raises(ProcessorUnavailable, match=r"did not take the work within 0\.2 s"):
            daemon.on_processor(lambda _app: ran.append("late"), timeout=0.2)
    finally:
        release.set()
        blocker.join(10)
    assert daemon.on_processor(lambda _app: "next", timeout=10) == "next"
    assert ran == []


def test_a_stopping_daemon_refuses_work(sandbox, run_daemon):
    daemon = run_daemon(sandbox)
    daemon.stop()
    with pytest.raises(ProcessorUnavailable, match="stopping"):
        daemon.on_processor(lambda _app: None, timeout=5)


def test_work_waiting_when_the_daemon_stops_is_answered_with_an_error(sandbox, run_daemon):
    daemon = run_daemon(sandbox)
    release = threading.Event()
    errors: list[BaseException] = []

    def waiting() -> None:
        try:
            daemon.on_processor(lambda _app: None, timeout=30)
        except ProcessorUnavailable as err:
            errors.append(err)

    blocker = threading.Thread(
        target=lambda: daemon.on_processor(lambda _app: release.wait(30), timeout=30)
    )
    blocker.start()
    wait_for(lambda: daemon.workers["process"].busy)
    second = threading.Thread(target=waiting)
    second.start()
    wait_for(lambda: len(daemon._tasks) == 1)
    stopper = threading.Thread(target=daemon.stop)
    stopper.start()
    release.set()
    for thread in (blocker, second, stopper):
        thread.join(15)
    assert [str(e) for e in errors] == ["the daemon is stopping"]


@pytest.mark.stores("sqlite", "postgresql")
def test_a_scheduled_send_is_released_by_the_daemon_at_its_time(sandbox, run_daemon):
    daemon = run_daemon(sandbox)
    at = time.time() + 1.5
    receipt = daemon.on_processor(
        lambda app: outbound.submit(app, SendRequest(to=(ANNA,), text="明天见", at=at)),
        timeout=10,
    )
    assert [r.status for r in receipt.recipients] == [outbound.SCHEDULED]
    wait_for(lambda: sandbox.sent())
    assert sandbox.sent()[0].at >= at
    assert daemon.app is not None
    found = outbound.status(daemon.app, receipt.id)
    assert found is not None and found.state == "queued"


@pytest.mark.stores("sqlite", "postgresql")
def test_a_reminder_answered_through_the_gateway_reaches_the_clinic_with_its_context(
    sandbox, run_daemon, receiver
):
    daemon = run_daemon(sandbox)
    request = SendRequest(
        to=(ANNA,),
        text="您预约了明天上午10点的门诊，回复1确认 2改期",
        flow="reminder",
        context={"appointment": 42},
        key="appointment-42",
        source="api:clinic",
    )
    daemon.on_processor(lambda app: outbound.submit(app, request), timeout=10)
    wait_for(lambda: sandbox.sent())
    sandbox.inject(ANNA, "1")

    def completed() -> list[Any]:
        return [
            r.json()
            for r in receiver.received()
            if r.json().get("type") == "conversation.completed"
        ]

    [event] = wait_for(completed)
    assert event["number"] == ANNA and event["data"]["context"] == {"appointment": 42}
    assert event["data"]["fields"]["answer"] == "确认"
    wait_for(lambda: any("谢谢，已记录：确认" in s.text for s in sandbox.sent()))


@pytest.mark.stores("sqlite", "postgresql")
def test_a_scheduled_send_survives_a_kill_and_goes_out_after_the_restart(
    sandbox, tmp_path, daemons
):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    first = daemons(config, tmp_path / "first.log")
    first.wait_for_log("daemon_started")
    app = build_app(load_settings(str(config)))
    try:
        receipt = outbound.submit(
            app, SendRequest(to=(ANNA,), text="明天见", at=time.time() + 2, key="k")
        )
    finally:
        app.close()
    first.kill9()
    assert sandbox.sent() == []
    second = daemons(config, tmp_path / "second.log")
    wait_for(lambda: sandbox.sent())
    assert [s.numbers for s in sandbox.sent()] == [(ANNA,)]
    second.signal(signal.SIGTERM)
    assert second.wait() == 0
    app = build_app(load_settings(str(config)))
    try:
        assert [r.status for r in outbound.status(app, receipt.id).recipients] == ["sent"]
    finally:
        app.close()
