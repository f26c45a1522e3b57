"""Which thread runs what: message hooks on the processing worker, after-send on the send
worker, plugin jobs on their own executor; late replies queued durably and applied by the
processing worker; a hung plugin job stops neither the watchdog nor the messages."""

from __future__ import annotations

import re
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from responder import Reply, hookimpl, pipeline
from responder.app import LATE_REPLIES
from responder.config import settings_from_dict
from responder.daemon import Daemon
from responder.models import InboundSms
from responder.queue import DurableQueue
from responder.sandbox import Sandbox
from responder.store import Store
from tests.conftest import config_dict, wait_for, write_config
from tests.webhook_receiver import Answer, Receiver

PHONE = "13800138000"
RULES = {"rules": [{"keywords": ["CX"], "reply": "已受理"}], "fallback": "请回复CX"}
PROCESS, SEND = "responder-process", "responder-send"


class Threads:
    """Records the thread of every call of each hook and job."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def note(self, what: str) -> None:
        with self._lock:
            self.seen.setdefault(what, set()).add(threading.current_thread().name)


@pytest.fixture
def run_daemon(tmp_path: Path, start_daemon: Callable[..., Daemon]) -> Callable[..., Daemon]:
    """Start a daemon in this process on ``tmp_path``'s store; stopped after the test."""

    def run(
        sandbox: Sandbox,
        *plugins: tuple[str, Any],
        watchdog: float | None = None,
        notify: Callable[[str], None] = lambda _line: None,
        **sections: dict[str, Any],
    ) -> Daemon:
        def set_watchdog(daemon: Daemon) -> None:
            daemon.supervisor.watchdog = watchdog

        data = config_dict(sandbox, tmp_path, **{"keywords": RULES, **sections})
        return start_daemon(data, notify=notify, before_start=set_watchdog, extra_plugins=plugins)

    return run


def sms(text: str, gateway_id: int = 1) -> InboundSms:
    return InboundSms(gateway_id, PHONE, "0888", text, None, f"raw {gateway_id}")


def texts_to(sandbox: Sandbox, number: str = PHONE) -> list[str]:
    return [s.text for s in sandbox.sent() if number in s.numbers]


# -- the message hooks and after-send ------------------------------------------------------


def test_message_hooks_run_on_the_processing_worker_and_after_send_on_the_send_worker(
    sandbox, run_daemon
):
    threads = Threads()

    class Recorder:
        @hookimpl
        def responder_filter(self, message):
            threads.note("filter")

        @hookimpl
        def responder_before_send(self, reply):
            threads.note("before_send")

        @hookimpl
        def responder_observe(self, message):
            threads.note("observe")

        @hookimpl
        def responder_after_send(self, delivery):
            threads.note("after_send")

    run_daemon(sandbox, ("recorder", Recorder()))
    sandbox.inject(PHONE, "CX")
    wait_for(lambda: "after_send" in threads.seen)
    assert threads.seen == {
        "filter": {PROCESS},
        "before_send": {PROCESS},
        "observe": {PROCESS},
        "after_send": {SEND},
    }


def test_sends_left_in_flight_are_recovered_on_the_send_worker(sandbox, tmp_path, run_daemon):
    store = Store(tmp_path / "responder.db")
    message = store.journal(sms("CX"))
    from responder.store import OutgoingSms

    store.finish_message(message.id, outgoing=[OutgoingSms(recipients=(PHONE,), text="在途")])
    [row] = store.due_outbox()
    store.claim_send(row.id)  # the previous process died during this send
    store.close()
    threads = Threads()

    class Recorder:
        @hookimpl
        def responder_after_send(self, delivery):
            threads.note(delivery.status)

    run_daemon(sandbox, ("recorder", Recorder()))
    wait_for(lambda: "sent" in threads.seen)
    assert threads.seen == {"uncertain": {SEND}, "sent": {SEND}}
    assert texts_to(sandbox) == ["在途"]


# -- late replies --------------------------------------------------------------------------


class Late:
    """Answers nothing at once; the test answers later through app.reply_later."""

    def __init__(self, threads: Threads) -> None:
        self.threads = threads
        self.app: Any = None
        self.messages: list[Any] = []

    @hookimpl
    def responder_startup(self, app):
        self.app = app

    @hookimpl(tryfirst=True)
    def responder_filter(self, message):
        self.messages.append(message)

    @hookimpl
    def responder_before_send(self, reply):
        self.threads.note(f"before_send:{reply.text}")


def test_a_late_reply_from_another_thread_is_applied_on_the_processing_worker(sandbox, run_daemon):
    threads = Threads()
    late = Late(threads)
    run_daemon(sandbox, ("late", late), keywords={"rules": []})
    sandbox.inject(PHONE, "hello")
    wait_for(lambda: late.messages)
    wait_for(lambda: late.app.store.message_state(late.messages[0].id)[0] != "received")

    queued: list[bool] = []
    caller = threading.Thread(
        target=lambda: queued.append(
            late.app.reply_later(late.messages[0], Reply(text="稍后答复", plugin="late"))
        ),
        name="webhook-worker",
    )
    caller.start()
    caller.join()
    wait_for(lambda: texts_to(sandbox))
    assert queued == [True]
    assert threads.seen["before_send:稍后答复"] == {PROCESS}
    assert texts_to(sandbox) == ["稍后答复"]


def test_a_fallback_request_is_answered_by_another_plugin(sandbox, run_daemon):
    threads = Threads()
    late = Late(threads)
    asked: list[str] = []

    class Silent:
        """The plugin asking for the fallback: it must not be asked itself."""

        @hookimpl(tryfirst=True)
        def responder_reply(self, message):
            asked.append(threading.current_thread().name)

    daemon = run_daemon(sandbox, ("late", late), ("silent", Silent()))
    sandbox.inject(PHONE, "hello")
    wait_for(lambda: texts_to(sandbox))  # keywords' fallback, at once
    asked.clear()
    assert daemon.app is not None
    assert daemon.app.reply_later(late.messages[0], None, skip="silent") is True
    wait_for(lambda: len(texts_to(sandbox)) == 2)
    assert texts_to(sandbox) == ["请回复CX", "请回复CX"]
    assert threads.seen["before_send:请回复CX"] == {PROCESS}
    assert asked == []


def test_a_fallback_nobody_answers_is_recorded_on_the_message(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))  # no keyword rules, no fallback
    message = app.store.journal(sms("hello"))
    pipeline.process(app, message)
    assert app.reply_later(message, None, skip="webhook") is True
    assert pipeline.apply_late_replies(app) == 1
    assert app.store.outbox_for(message.id) == []
    assert "no reply from the other plugins" in app.store.message_state(message.id)[1]
    assert app.late_replies.counts().done == 1


def test_a_late_reply_queued_before_a_restart_is_sent_after_it(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    message = app.store.journal(sms("hello"))
    pipeline.process(app, message)
    app.reply_later(message, Reply(text="重启之后", plugin="late"), key="answer-1")
    app.reply_later(message, Reply(text="重启之后", plugin="late"), key="answer-1")  # repeated
    app.store.close()  # the process ends before the processing thread applied it

    data = config_dict(sandbox, tmp_path, keywords=RULES)
    settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
    daemon = Daemon(settings=settings, notify=lambda _line: None, configure_logs=False)
    daemon.start()
    try:
        wait_for(lambda: "重启之后" in texts_to(sandbox))
    finally:
        daemon.stop()
    assert texts_to(sandbox).count("重启之后") == 1


def test_a_late_reply_claimed_by_a_process_that_died_is_applied_once_after_restart(
    sandbox, tmp_path, make_app
):
    app = make_app(config_dict(sandbox, tmp_path))
    message = app.store.journal(sms("CX"))
    pipeline.process(app, message)
    app.reply_later(message, Reply(text="半途", plugin="late"))
    app.late_replies.claim()  # killed after the claim, before the outbox commit
    app.store.close()

    data = config_dict(sandbox, tmp_path, keywords=RULES)
    settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
    daemon = Daemon(settings=settings, notify=lambda _line: None, configure_logs=False)
    daemon.start()
    try:
        wait_for(lambda: "半途" in texts_to(sandbox))
        assert daemon.app is not None
        wait_for(lambda: daemon.app.late_replies.counts().done == 1)
    finally:
        daemon.stop()
    assert texts_to(sandbox).count("半途") == 1


def test_reply_later_under_dry_run_queues_nothing(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path), dry_run=True)
    message = app.store.journal(sms("hello"))
    assert app.reply_later(message, Reply(text="x")) is False
    assert app.late_replies.counts().pending == 0


def test_an_empty_late_reply_is_not_queued(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    message = app.store.journal(sms("hello"))
    assert app.reply_later(message, Reply(text="  ")) is False


def test_a_fallback_request_must_name_the_plugin_to_skip(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    message = app.store.journal(sms("hello"))
    with pytest.raises(ValueError, match="skip="):
        app.reply_later(message, None)


def test_plugins_cannot_open_the_late_reply_queue(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    with pytest.raises(ValueError, match="reply_later"):
        app.queue(LATE_REPLIES)


def test_plugins_cannot_open_the_outbox_queue(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    with pytest.raises(ValueError, match="outbox_for"):
        app.queue("outbox")


def test_app_queue_is_a_durable_queue_by_name(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    queue = app.queue("crm-sync")
    assert isinstance(queue, DurableQueue)
    queue.enqueue({"id": 7}, key="7")
    assert [item.payload for item in app.queue("crm-sync").claim()] == [{"id": 7}]


# -- plugin jobs ---------------------------------------------------------------------------


class Jobs:
    """Plugin jobs: ``hung`` of them block until released; one records its thread."""

    def __init__(self, hung: int = 0) -> None:
        self.hung = hung
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.threads = Threads()

    @hookimpl
    def responder_startup(self, app):
        for number in range(self.hung):
            app.every(0.05, self._hang, name=f"hung{number}")
        app.every(0.05, lambda: self.threads.note("tick"), name="tick")

    def _hang(self) -> None:
        self.started.release()
        self.release.wait(60)


def test_plugin_jobs_run_on_their_own_executor(sandbox, run_daemon):
    jobs = Jobs()
    run_daemon(sandbox, ("jobs", jobs))
    wait_for(lambda: "tick" in jobs.threads.seen)
    [name] = jobs.threads.seen["tick"]
    assert name.startswith("responder-plugins:")
    assert name not in {"responder-read", PROCESS, SEND}


def test_the_watchdog_runs_on_the_core_executor(sandbox, run_daemon):
    threads = Threads()

    def notify(line: str) -> None:
        if line == "WATCHDOG=1":
            threads.note("watchdog")

    run_daemon(sandbox, watchdog=0.1, notify=notify)
    wait_for(lambda: "watchdog" in threads.seen)
    assert all(name.startswith("responder-core:") for name in threads.seen["watchdog"])


def test_hung_plugin_jobs_stop_neither_the_watchdog_nor_the_messages(sandbox, run_daemon):
    jobs = Jobs(hung=8)
    notes: list[str] = []
    run_daemon(sandbox, ("jobs", jobs), watchdog=0.2, notify=notes.append)
    try:
        for _ in range(8):
            assert jobs.started.acquire(timeout=10), "the plugin jobs did not start"
        pings = notes.count("WATCHDOG=1")
        sandbox.inject(PHONE, "CX")
        wait_for(lambda: texts_to(sandbox) == ["已受理"])
        wait_for(lambda: notes.count("WATCHDOG=1") > pings + 2)
    finally:
        jobs.release.set()


def test_a_stop_leaves_a_hung_plugin_job_behind(sandbox, run_daemon):
    jobs = Jobs(hung=1)
    daemon = run_daemon(sandbox, ("jobs", jobs))
    try:
        assert jobs.started.acquire(timeout=10)
        assert daemon.stop() is True
    finally:
        jobs.release.set()


HUNG_JOB = """
import threading
from responder import hookimpl

@hookimpl
def responder_startup(app):
    app.every(0.05, lambda: threading.Event().wait(), name="forever")
"""


def test_the_daemon_exits_normally_with_a_hung_plugin_job(sandbox, tmp_path, daemons):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hung.py").write_text(HUNG_JOB, encoding="utf-8")
    data = config_dict(sandbox, tmp_path, plugins={"paths": [str(plugins)]})
    daemon = daemons(write_config(tmp_path / "config.toml", data), tmp_path / "log")
    daemon.wait_for_log('"job_overrun"')
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    log = daemon.log()
    assert "maximum number of running instances" not in log
    assert log.count('"job_overrun"') == 1
    assert '"daemon_stopped"' in log


def test_the_durable_queue_example_in_plugins_md_forwards_messages(
    sandbox, tmp_path, run_daemon, monkeypatch
):
    """docs/plugins.md's app.queue example, run: a failed post is retried, then delivered."""
    doc = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- file: responder_crm.py -->\n```python\n(.*?)\n```", doc, re.DOTALL)
    assert block, "docs/plugins.md lost its responder_crm.py example"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "responder_crm.py").write_text(block.group(1), encoding="utf-8")
    with Receiver() as crm:
        crm.script(Answer(status=503))
        monkeypatch.setenv("CRM_URL", crm.url("/messages"))
        daemon = run_daemon(sandbox, plugins={"paths": [str(plugins)]})
        sandbox.inject(PHONE, "CX")
        wait_for(lambda: len(crm.received()) == 2, timeout=40)
        first, second = crm.received()
        assert first.json() == second.json() == {"id": 1, "from": PHONE, "text": "CX"}
        assert daemon.app is not None
        queue = daemon.app.queue("crm-forward")
        # The item is marked done once the answer is back, a moment after the CRM saw it.
        counts = wait_for(lambda: (c := queue.counts()).done == 1 and c)
        assert (counts.done, counts.pending, counts.dead) == (1, 0, 0)
