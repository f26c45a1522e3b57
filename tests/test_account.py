"""The account's state judged by errid: refused logins, credit, per-request codes, balance,
stale replies. Real simulator over loopback, real SQLite, the daemon in this process."""

from __future__ import annotations

import itertools
import json
import time
from datetime import datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from responder.account import Account, AccountStatus
from responder.cli import main
from responder.config import ConfigError, settings_from_dict
from responder.gateway import (
    AccountError,
    AccountState,
    AccountSuspended,
    BalanceNotOffered,
    LoginError,
    OutOfCredit,
    TransientError,
    Verdict,
    classify,
)
from responder.models import PLATFORM_TZ, InboundSms
from responder.sandbox import ERRID_TEXTS
from responder.sending import send_due
from responder.store import OutgoingSms
from tests.conftest import config_dict, write_config

RULES = {"rules": [{"keywords": ["CX"], "reply": "查询已受理"}]}
PER_REQUEST = (6009, 6011, 6015, 6021, 6023, 6024, 6025)
_ids = itertools.count(1)


# -- classification ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errid", "err", "verdict"),
    [
        (6013, "账号余额不足", Verdict.OUT_OF_CREDIT),
        (None, "账号余额不足", Verdict.OUT_OF_CREDIT),
        (-1, "账号余额不足", Verdict.OUT_OF_CREDIT),  # an unknown code: judged by the text
        (None, "账户欠费", Verdict.OUT_OF_CREDIT),
        (6002, "账号不正确", Verdict.LOGIN_REFUSED),
        (6010, "密码不正确", Verdict.LOGIN_REFUSED),
        (6010, "", Verdict.LOGIN_REFUSED),
        (None, "用户名或密码错误", Verdict.LOGIN_REFUSED),
        (-1, "账号不存在", Verdict.LOGIN_REFUSED),
        (6012, "IP限制", Verdict.SUSPENDED),
        (6019, "停机", Verdict.SUSPENDED),
        (None, "账户已停机", Verdict.SUSPENDED),
        (6009, "黑名单", Verdict.REQUEST),
        (6011, "超长", Verdict.REQUEST),
        (6015, "屏蔽词", Verdict.REQUEST),
        (6021, "扩展号码未备案", Verdict.REQUEST),
        (6023, "号码太多", Verdict.REQUEST),
        (6024, "定时时间不正确", Verdict.REQUEST),
        (6025, "扩展号码太长", Verdict.REQUEST),
        (None, "该号码在黑名单中", Verdict.REQUEST),
        (6009, "账号余额不足", Verdict.REQUEST),  # a known code wins over the text
        (6013, "用户名错误", Verdict.OUT_OF_CREDIT),
        (0, "发送成功", Verdict.OK),
        (-4, "发送失败", Verdict.UNKNOWN),
        (None, "", Verdict.UNKNOWN),
        (None, "没有未读取的短信", Verdict.UNKNOWN),
        (None, "读取过于频繁", Verdict.UNKNOWN),
    ],
)
def test_an_answer_is_judged_by_errid_first_then_by_its_text(errid, err, verdict):
    assert classify(errid, err) is verdict


@pytest.mark.parametrize(
    ("errid", "error"), [(6002, LoginError), (6010, LoginError), (6012, AccountSuspended)]
)
def test_a_read_refused_for_the_account_raises_its_error(sandbox, tmp_path, make_app, errid, error):
    app = make_app(config_dict(sandbox, tmp_path))
    sandbox.set_fault("errid", errid=errid, endpoint="read")

    with pytest.raises(error) as caught:
        app.gateway.read_one()

    assert caught.value.errid == errid


def test_a_read_answered_out_of_credit_is_no_refusal(sandbox, tmp_path, make_app):
    app = make_app(config_dict(sandbox, tmp_path))
    sandbox.set_fault("errid", errid=6013, endpoint="read", count=1)

    with pytest.raises(TransientError) as caught:  # no message, but reading goes on
        app.gateway.read_one()

    assert not isinstance(caught.value, AccountError)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ({"errid": 6010}, LoginError),
        ({"errid": 6019}, AccountSuspended),
        ({"err": "接口不存在"}, BalanceNotOffered),
        ({"errid": -3, "err": "未开通"}, BalanceNotOffered),
    ],
)
def test_a_getfee_error_answer_is_a_refusal_or_no_balance(
    sandbox, tmp_path, make_app, fault, error
):
    app = make_app(config_dict(sandbox, tmp_path))
    sandbox.set_fault("errid", endpoint="balance", **fault)

    with pytest.raises(error):
        app.gateway.balance()


# -- sends, one row at a time -------------------------------------------------------------


def queue(app: Any, count: int = 1, *, src: str = "13800138000") -> list[int]:
    """Journal a message and queue ``count`` replies to it; returns their outbox ids."""
    gateway_id = next(_ids)
    message = app.store.journal(
        InboundSms(
            gateway_id=gateway_id,
            src=src,
            dst="0888008",
            text="CX",
            received_at=datetime(2026, 9, 22, 9, 0, tzinfo=PLATFORM_TZ),
            raw=f"id={gateway_id}&msg=CX",
        )
    )
    outgoing = [OutgoingSms((src,), f"reply {n}") for n in range(count)]
    app.store.finish_message(message.id, outgoing=outgoing)
    return [row.id for row in app.store.outbox_for(message.id)]


def rows_of(store: Any) -> list[Any]:
    """The outbox's rows (items of the durable queue "outbox"), states as the outbox says."""
    return store.query(
        "SELECT id, attempts, last_error, errid, CASE state WHEN 'claimed' THEN 'sending'"
        " WHEN 'done' THEN 'sent' ELSE state END AS state"
        " FROM queue_items WHERE queue = 'outbox' ORDER BY id"
    )


def outbox(app: Any) -> dict[int, Any]:
    return {row["id"]: row for row in rows_of(app.store)}


@pytest.mark.parametrize("errid", PER_REQUEST)
def test_a_per_request_code_dead_letters_only_that_row_with_its_reason(
    sandbox, tmp_path, make_app, errid
):
    app = make_app(config_dict(sandbox, tmp_path))
    first, second = queue(app, 2)
    sandbox.set_fault("errid", errid=errid, endpoint="send", count=1)

    assert send_due(app) == 2

    rows = outbox(app)
    assert (rows[first]["state"], rows[first]["errid"]) == ("dead", errid)
    assert f"{ERRID_TEXTS[errid]} (errid {errid})" in rows[first]["last_error"]
    assert rows[second]["state"] == "sent"


def test_a_send_answered_out_of_credit_goes_back_to_the_queue_uncounted(
    sandbox, tmp_path, make_app
):
    app = make_app(config_dict(sandbox, tmp_path))
    first, second = queue(app, 2)
    sandbox.set_balance(0)

    with pytest.raises(OutOfCredit):
        send_due(app)

    rows = outbox(app)
    assert [(rows[i]["state"], rows[i]["attempts"]) for i in (first, second)] == [
        ("pending", 0),
        ("pending", 0),
    ]
    assert "账号余额不足 (errid 6013)" in rows[first]["last_error"]
    assert sandbox.stats().sends == 1


def test_out_of_credit_is_recognised_by_its_text_when_the_code_is_missing(
    sandbox, tmp_path, make_app
):
    app = make_app(config_dict(sandbox, tmp_path))
    [row] = queue(app)
    sandbox.set_fault("errid", err="账号余额不足", endpoint="send")

    with pytest.raises(OutOfCredit):
        send_due(app)

    assert outbox(app)[row]["attempts"] == 0


# -- replies.max_age ----------------------------------------------------------------------


def test_a_reply_queued_longer_than_max_age_is_dead_lettered_as_stale(
    sandbox, tmp_path, make_app, clock
):
    app = make_app(config_dict(sandbox, tmp_path), clock=clock)
    [old] = queue(app)
    clock.advance(3601)
    [fresh] = queue(app, src="13800138001")

    assert send_due(app) == 2

    rows = outbox(app)
    assert rows[old]["state"] == "dead"
    assert rows[old]["last_error"].startswith("stale")
    assert rows[fresh]["state"] == "sent"
    assert [sms.numbers for sms in sandbox.sent()] == [("13800138001",)]


def test_max_age_is_a_setting(sandbox, tmp_path, make_app, clock):
    app = make_app(config_dict(sandbox, tmp_path, replies={"max_age": 60}), clock=clock)
    [row] = queue(app)
    clock.advance(61)

    send_due(app)

    assert outbox(app)[row]["last_error"].startswith("stale")
    assert sandbox.sent() == []


# -- balance ------------------------------------------------------------------------------


def account_for(app: Any, clock: Any) -> Account:
    return Account(app.store, app.settings.gateway, clock=clock)


def test_the_balance_is_getfees_id_times_balance_scale(sandbox, tmp_path, make_app, clock):
    app = make_app(config_dict(sandbox, tmp_path, gateway={"balance_scale": 0.1}), clock=clock)
    sandbox.set_balance(1234)

    assert app.gateway.balance() == pytest.approx(123.4)


def test_a_low_balance_is_logged_once_per_crossing(sandbox, tmp_path, make_app, clock):
    app = make_app(config_dict(sandbox, tmp_path, gateway={"low_balance": 50}), clock=clock)
    account = account_for(app, clock)
    with capture_logs() as events:
        for balance in (40, 30, 20, 100, 10):
            sandbox.set_balance(balance)
            account.check_balance(app.gateway)
            clock.advance(300)

    low = [e for e in events if e["event"] == "balance_low"]
    assert [(e["log_level"], e["balance"]) for e in low] == [("warning", 40), ("warning", 10)]
    assert [e["balance"] for e in events if e["event"] == "balance_recovered"] == [100]
    assert account.status.low_balance is True


def test_the_balance_is_not_asked_before_balance_check_seconds(sandbox, tmp_path, make_app, clock):
    app = make_app(config_dict(sandbox, tmp_path), clock=clock)
    account = account_for(app, clock)
    account.check_balance(app.gateway)
    clock.advance(299)
    account.check_balance(app.gateway)
    clock.advance(1)
    account.check_balance(app.gateway)

    assert sandbox.stats().balance_checks == 2


def test_a_provider_without_getfee_is_noted_once_and_not_asked_again(
    sandbox, tmp_path, make_app, clock
):
    app = make_app(config_dict(sandbox, tmp_path), clock=clock)
    account = account_for(app, clock)
    sandbox.set_balance(offered=False)
    with capture_logs() as events:
        for _ in range(3):
            account.check_balance(app.gateway)
            clock.advance(3600)

    assert sandbox.stats().balance_checks == 1
    noted = [e for e in events if e["event"] == "balance_not_offered"]
    assert [e["log_level"] for e in noted] == ["info"]
    assert account.status.balance_offered is False


def test_responder_balance_prints_the_scaled_balance(sandbox, tmp_path, capsys):
    data = config_dict(sandbox, tmp_path, gateway={"balance_scale": 0.1, "low_balance": 100})
    config = write_config(tmp_path / "config.toml", data)
    sandbox.set_balance(250)

    assert main(["balance", "-c", str(config)]) == 0

    assert capsys.readouterr().out == "balance: 25\nlow: under gateway.low_balance (100)\n"


def test_responder_balance_says_when_the_provider_has_no_balance(sandbox, tmp_path, capsys):
    config = write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path))
    sandbox.set_balance(offered=False)

    assert main(["balance", "-c", str(config)]) == 1

    assert "balance: not offered by the provider" in capsys.readouterr().err


# -- responder status ---------------------------------------------------------------------


def test_status_json_shows_the_account_state_and_balance(
    sandbox, tmp_path, make_app, clock, capsys
):
    data = config_dict(sandbox, tmp_path)
    config = write_config(tmp_path / "config.toml", data)
    app = make_app(data, clock=clock)
    account = account_for(app, clock)
    sandbox.set_balance(0)
    account.check_balance(app.gateway)
    queue(app)
    clock.advance(5)
    with pytest.raises(OutOfCredit) as refused:
        send_due(app)
    account.refused(refused.value)
    app.store.set_last_read_ok_at(time.time())

    assert main(["status", "-c", str(config), "--json"]) == 1

    record = json.loads(capsys.readouterr().out)
    assert record["account"] == {
        "state": "out_of_credit",
        "since": clock.now,
        "reason": "账号余额不足 (errid 6013)",
        "balance": 0,
        "balance_at": clock.now - 5,
        "low_balance": False,
        "balance_offered": True,
    }
    assert record["healthy"] is False


def test_status_text_says_when_the_provider_offers_no_balance(
    sandbox, tmp_path, make_app, clock, capsys
):
    data = config_dict(sandbox, tmp_path)
    config = write_config(tmp_path / "config.toml", data)
    app = make_app(data, clock=clock)
    sandbox.set_balance(offered=False)
    account_for(app, clock).check_balance(app.gateway)
    app.store.set_last_read_ok_at(time.time())

    assert main(["status", "-c", str(config)]) == 0

    out = capsys.readouterr().out
    assert "account:        ok since" in out
    assert "balance:        not offered by the provider" in out


def test_status_of_a_store_without_an_account_record_is_ok(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path)
    app = make_app(data)

    assert AccountStatus.load(app.store) == AccountStatus()


# -- configuration ------------------------------------------------------------------------


def gateway(**keys: Any) -> dict[str, Any]:
    base = {"base_urls": ["http://sms.example.com"], "name": "c", "password": "pw"}
    return {"gateway": base | keys}


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (gateway(login_retry=10), "gateway.login_retry: must be at least 60 seconds, got 10"),
        (gateway(balance_check=0), "gateway.balance_check: must be at least 60 seconds, got 0"),
        (gateway(balance_scale=0), "gateway.balance_scale: must be more than 0"),
        (gateway(balance_scale="x"), "gateway.balance_scale: must be a number"),
        (gateway(low_balance=-1), "gateway.low_balance: must be at least 0, got -1"),
        (gateway() | {"replies": {"max_age": 30}}, "replies.max_age: must be at least 60 seconds"),
    ],
)
def test_account_settings_are_checked(data, problem):
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(data, source="config.toml", environ={})
    assert any(p.startswith(f"config.toml: {problem}") for p in caught.value.problems), (
        caught.value.problems
    )


def test_account_settings_have_their_defaults():
    settings = settings_from_dict(gateway(), environ={})
    assert (
        settings.gateway.login_retry,
        settings.gateway.balance_check,
        settings.gateway.balance_scale,
        settings.gateway.low_balance,
        settings.replies.max_age,
    ) == (600, 300, 1, None, 3600)


# -- the daemon ---------------------------------------------------------------------------


@pytest.fixture
def responder_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Short retries (the simulator allows them); a test may override gateway keys."""
    keys = getattr(request, "param", {})
    return {"gateway": {"login_retry": 0.3, "balance_check": 0.2} | keys, "keywords": RULES}


def outbox_rows(harness: Any) -> list[tuple[str, int]]:
    return [(r["state"], r["attempts"]) for r in rows_of(harness.store)]


def test_out_of_credit_keeps_reading_and_holds_sends_until_the_balance_is_back(responder_daemon):
    daemon = responder_daemon
    daemon.sandbox.set_balance(0)
    with capture_logs() as events:
        daemon.inject("CX")
        daemon.wait_until(lambda: daemon.daemon.account.state == "out_of_credit")
        daemon.inject("CX", src="13800138001")
        daemon.wait_until(lambda: len(outbox_rows(daemon)) == 2, what="the second reply queued")

        assert outbox_rows(daemon) == [("pending", 0), ("pending", 0)]
        assert daemon.sent() == []

        daemon.sandbox.set_balance(10)
        sent = daemon.wait_for_sent(2)

    assert sorted(sms.numbers for sms in sent) == [("13800138000",), ("13800138001",)]
    assert daemon.daemon.account.state == "ok"
    changes = [e["event"] for e in events if e["event"] in ("out_of_credit", "account_ok")]
    assert changes == ["out_of_credit", "account_ok"]


def test_out_of_credit_without_a_balance_endpoint_resumes_on_a_probe_send(responder_daemon):
    daemon = responder_daemon
    daemon.sandbox.set_balance(0, offered=False)
    daemon.inject("CX")
    daemon.wait_until(lambda: daemon.daemon.account.state == "out_of_credit")

    daemon.sandbox.set_balance(10)

    daemon.wait_for_sent(1)
    daemon.wait_until(lambda: daemon.daemon.account.state == "ok")
    assert outbox_rows(daemon) == [("sent", 1)]


def test_the_status_line_leads_with_out_of_credit(responder_daemon):
    daemon = responder_daemon
    daemon.sandbox.set_balance(0)
    daemon.inject("CX")
    daemon.wait_until(lambda: daemon.daemon.account.state == "out_of_credit")

    daemon.daemon.supervisor.send_status()

    assert daemon.notifications[-1].startswith(
        "STATUS=OUT OF CREDIT (账号余额不足 (errid 6013)): replies held, reading goes on"
    )


@pytest.mark.parametrize("responder_config", [{"login_retry": 600}], indirect=True)
def test_a_refused_login_stops_reading_and_sending(responder_daemon):
    daemon = responder_daemon
    daemon.sandbox.set_fault("errid", errid=6010)
    daemon.wait_until(lambda: daemon.daemon.account.state == "login_refused")
    time.sleep(0.3)  # a request another loop had already started may still arrive
    requests = daemon.sandbox.stats().requests

    daemon.inject("CX")

    with pytest.raises(AssertionError):
        daemon.wait_until(lambda: daemon.sandbox.stats().requests > requests, timeout=1.0)
    assert daemon.sandbox.pending() == 1


def test_reading_resumes_by_itself_once_the_login_is_accepted_again(responder_daemon):
    daemon = responder_daemon
    with capture_logs() as events:
        daemon.sandbox.set_fault("errid", errid=6010)
        daemon.wait_until(lambda: daemon.daemon.account.state == "login_refused")
        daemon.inject("CX")
        reads = daemon.sandbox.stats().reads
        daemon.wait_until(lambda: daemon.sandbox.stats().reads >= reads + 2, what="two retries")
        assert daemon.sandbox.pending() == 1

        daemon.sandbox.clear_faults()

        daemon.wait_for_sent(1)
    assert daemon.daemon.account.state == "ok"
    changes = [e["event"] for e in events if e["event"] in ("login_refused", "account_ok")]
    assert changes == ["login_refused", "account_ok"]


def test_a_suspended_account_stops_like_a_refused_login(responder_daemon):
    daemon = responder_daemon
    daemon.sandbox.set_fault("errid", errid=6019)
    daemon.wait_until(lambda: daemon.daemon.account.state == "suspended")

    daemon.daemon.supervisor.send_status()

    assert daemon.notifications[-1].startswith("STATUS=SUSPENDED (账号已停机 (errid 6019))")
    assert AccountStatus.load(daemon.store).state is AccountState.SUSPENDED
