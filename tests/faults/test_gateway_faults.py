"""The daemon (a subprocess) against a gateway that misbehaves: every message is kept,
every reply goes out, and the daemon keeps serving."""

from __future__ import annotations

import signal
import time

import pytest

from responder.sandbox import Sandbox
from tests.conftest import PASSWORD, wait_for
from tests.faults.audit import audit, rows, settled
from tests.faults.conftest import fault_config

MESSAGES = 3


def inject(sandbox: Sandbox, count: int = MESSAGES, first: int = 0) -> list[int]:
    """``count`` keyword messages, each from its own number."""
    return [sandbox.inject(f"1380000{first + i:04d}", "CX") for i in range(count)]


def finish(daemon) -> None:
    assert daemon.process.poll() is None, f"the daemon died:\n{daemon.log()}"
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0, daemon.log()


@pytest.mark.parametrize(
    ("endpoint", "kind", "delay", "logged"),
    [
        ("read", "html", None, '"read_failed"'),
        ("read", "status500", None, '"read_failed"'),
        ("read", "empty", None, '"read_failed"'),
        ("read", "garbled", None, '"read_failed"'),
        ("read", "hang", 1.0, '"read_answer_lost"'),
        ("read", "slow", 0.2, '"message_received"'),
        ("send", "html", None, '"send_outcome_unknown"'),
        ("send", "status500", None, '"send_failed"'),
        ("send", "empty", None, '"send_outcome_unknown"'),
        ("send", "garbled", None, '"send_outcome_unknown"'),
        ("send", "hang", 1.0, '"send_outcome_unknown"'),
        ("send", "slow", 0.2, '"sms_sent"'),
    ],
)
def test_a_faulty_gateway_loses_nothing_and_the_daemon_keeps_serving(
    gateway, tmp_path, daemons, fault_report, endpoint, kind, delay, logged
):
    ids = inject(gateway)
    gateway.set_fault(kind, endpoint=endpoint, count=2, delay=delay)
    daemon = daemons(fault_config(gateway, tmp_path), tmp_path / "daemon.log")
    db = tmp_path / "responder.db"
    wait_for(lambda: settled(gateway, db, MESSAGES))
    finish(daemon)
    assert logged in daemon.log()
    fault_report(audit(f"{endpoint} {kind}", gateway, db, ids, [daemon.log()]))


def test_a_read_whose_answer_is_dropped_loses_only_that_message_and_says_so(
    gateway, tmp_path, daemons, fault_report
):
    ids = inject(gateway)
    gateway.set_fault("drop_after_consume", endpoint="read", count=1)
    daemon = daemons(fault_config(gateway, tmp_path), tmp_path / "daemon.log")
    db = tmp_path / "responder.db"
    wait_for(lambda: settled(gateway, db, MESSAGES - 1))
    finish(daemon)
    result = audit(
        "read drop_after_consume", gateway, db, ids, [daemon.log()], lost_allowed={ids[0]}
    )
    assert (result.lost_on_read, result.read_answer_lost_logged) == (1, 1)
    fault_report(result)


def test_a_send_whose_answer_is_dropped_is_resent_and_counted_as_uncertain(
    gateway, tmp_path, daemons, fault_report
):
    ids = inject(gateway)
    gateway.set_fault("drop_after_consume", endpoint="send", count=2)
    daemon = daemons(fault_config(gateway, tmp_path), tmp_path / "daemon.log")
    db = tmp_path / "responder.db"
    wait_for(lambda: settled(gateway, db, MESSAGES))
    finish(daemon)
    result = audit("send drop_after_consume", gateway, db, ids, [daemon.log()])
    assert result.duplicates == result.uncertain == 2
    fault_report(result)


def test_on_uncertain_give_up_never_sends_twice(gateway, tmp_path, daemons):
    inject(gateway, count=1)
    gateway.set_fault("drop_after_consume", endpoint="send", count=1)
    config = fault_config(gateway, tmp_path, replies={"on_uncertain": "give_up"})
    daemon = daemons(config, tmp_path / "daemon.log")
    db = tmp_path / "responder.db"
    wait_for(lambda: settled(gateway, db, 1))
    finish(daemon)
    assert len(gateway.sent()) == 1
    [row] = rows(db, "SELECT state, last_error FROM queue_items WHERE queue = 'outbox'")
    assert row["state"] == "uncertain" and "gave up" in row["last_error"]
    assert rows(db, "SELECT state FROM messages")[0]["state"] == "uncertain"


def test_one_of_two_addresses_refusing_connections_fails_over(
    gateway, tmp_path, daemons, fault_report
):
    down = Sandbox(name="acct", password=PASSWORD).start()
    down_url = down.url
    down.stop()
    ids = inject(gateway)
    config = fault_config(gateway, tmp_path, gateway={"base_urls": [down_url, gateway.url]})
    daemon = daemons(config, tmp_path / "daemon.log")
    db = tmp_path / "responder.db"
    wait_for(lambda: settled(gateway, db, MESSAGES))
    finish(daemon)
    assert '"gateway_unreachable"' in daemon.log()
    fault_report(audit("one address down", gateway, db, ids, [daemon.log()]))


@pytest.mark.parametrize("endpoint", ["read", "send"])
def test_a_login_failure_stops_the_account_until_a_reload(
    gateway, tmp_path, daemons, fault_report, endpoint
):
    ids = inject(gateway)
    gateway.set_fault("login", endpoint=endpoint)
    daemon = daemons(fault_config(gateway, tmp_path), tmp_path / "daemon.log")
    daemon.wait_for_log('"login_refused"')
    time.sleep(0.2)  # a request the other loop had already started may still arrive
    requests = gateway.stats().requests
    with pytest.raises(AssertionError):
        wait_for(lambda: gateway.stats().requests > requests, timeout=0.5)
    gateway.clear_faults()
    daemon.signal(signal.SIGHUP)
    db = tmp_path / "responder.db"
    wait_for(lambda: settled(gateway, db, MESSAGES))
    finish(daemon)
    assert daemon.log().count('"login_refused"') == 1
    assert PASSWORD not in daemon.log()
    fault_report(audit(f"{endpoint} login refused", gateway, db, ids, [daemon.log()]))
