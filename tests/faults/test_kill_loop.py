"""kill -9 at seeded random instants while messages flow: nothing is lost that the
platform had not already handed to a process that died, and no reply is sent twice
unless its first attempt's outcome was unknown."""

from __future__ import annotations

import random
import signal
import threading
import time

from tests.conftest import wait_for
from tests.faults.audit import audit, rows, settled
from tests.faults.conftest import fault_config
from tests.faults.receiver import Receiver

SEED = 20260611
KILLS = 24
SEND_FAULTS = [None, None, None, ("slow", 0.05), ("drop_after_consume", None), ("status500", None)]


class Feeder(threading.Thread):
    """Injects keyword messages, each from a new number, at seeded random intervals."""

    def __init__(self, sandbox, seed: int) -> None:
        super().__init__(daemon=True)
        self.sandbox = sandbox
        self.random = random.Random(seed)
        self.injected: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            number = f"1370000{len(self.injected):04d}"
            self.injected.append(self.sandbox.inject(number, "CX"))
            self.done.wait(self.random.uniform(0.08, 0.25))

    def stop(self) -> list[int]:
        self.done.set()
        self.join()
        return self.injected


def webhook_section(url: str) -> dict:
    target = {"name": "crm", "url": url, "secret": "kill-loop-secret-0123456789", "timeout": 1}
    return {"retry_initial": 0.1, "retry_max": 0.5, "targets": [target]}


def webhooks_done(db) -> bool:
    """Every journaled message has its delivery (an item of the queue "webhook:crm", keyed
    on the message id), and none is waiting."""
    try:
        open_rows = rows(
            db, "SELECT COUNT(*) FROM queue_items WHERE queue = 'webhook:crm' AND state != 'done'"
        )
        missing = rows(
            db,
            "SELECT COUNT(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM queue_items q"
            " WHERE q.queue = 'webhook:crm' AND q.key = CAST(m.id AS TEXT))",
        )
    except Exception:  # the store is not created yet
        return False
    return open_rows[0][0] == 0 and missing[0][0] == 0


def test_kill9_at_random_instants_keeps_every_message_reply_and_webhook(
    gateway, tmp_path, daemons, fault_report
):
    with Receiver() as receiver:
        run_kill_loop(gateway, tmp_path, daemons, fault_report, receiver)


def run_kill_loop(gateway, tmp_path, daemons, fault_report, receiver) -> None:
    rng = random.Random(SEED)
    config = fault_config(gateway, tmp_path, webhook=webhook_section(receiver.url))
    db = tmp_path / "responder.db"
    feeder = Feeder(gateway, SEED + 1)
    feeder.start()
    kills: list[float] = []
    logs: list[str] = []
    for run in range(KILLS):
        fault = rng.choice(SEND_FAULTS)
        if fault is not None:
            gateway.set_fault(fault[0], endpoint="send", count=1, delay=fault[1])
        daemon = daemons(config, tmp_path / f"run{run}.log")
        if rng.random() < 0.25:  # during start-up: store recovery, plugin startup
            time.sleep(rng.uniform(0.0, 0.25))
        else:
            daemon.wait_for_log('"daemon_started"')  # it always comes back
            time.sleep(rng.uniform(0.0, 0.5))
        daemon.kill9()  # returns once the process is gone: no read of it comes later
        kills.append(time.monotonic())
        logs.append(daemon.log())
    injected = feeder.stop()
    gateway.clear_faults()
    final = daemons(config, tmp_path / "final.log")
    wait_for(lambda: settled(gateway, db) and webhooks_done(db), timeout=45)
    final.wait_for_log('"daemon_started"')  # its signal handlers are in place from here
    final.signal(signal.SIGTERM)
    assert final.wait() == 0, final.log()
    logs.append(final.log())
    result = audit("kill -9 loop", gateway, db, injected, logs, kills=kills, restarts=KILLS)
    assert result.injected >= 30 and result.replies_sent >= 25, result.line()
    journaled = {row[0] for row in rows(db, "SELECT gateway_id FROM messages")}
    not_relayed = journaled - receiver.gateway_ids()
    if not_relayed:
        result.problems.append(f"journaled but never relayed to the webhook: {not_relayed}")
    result.webhook_repeats = receiver.repeats()
    fault_report(result)
