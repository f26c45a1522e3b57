"""Several accounts in one daemon: the account files, the runtime, reloads, opt-outs."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from responder.account import AccountStatus
from responder.accounts import (
    AccountsSettings,
    account_environ,
    account_settings,
    load_accounts,
    merge_tables,
)
from responder.app import build_app
from responder.config import ConfigError
from responder.daemon import AccountsCollector, Daemon
from responder.gateway import AccountState
from responder.models import InboundSms
from responder.pipeline import process
from responder.sandbox import Sandbox
from responder.store import Store
from responder.supervision import summary_line
from tests.conftest import wait_for

PASSWORDS = {"acme": "pw-acme-1", "beta": "pw-beta-2", "gamma": "pw-gamma-3"}
CUSTOMER = "13800138000"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A simulator serving the three accounts, each with its own password."""
    with Sandbox(
        name="acme", password=PASSWORDS["acme"], accounts=PASSWORDS, min_read_interval=0.2
    ) as server:
        yield server


def write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def rules(reply: str) -> dict[str, Any]:
    return {"rules": [{"keywords": ["CX"], "reply": reply}]}


def account_file(name: str, reply: str, **extra: Any) -> dict[str, Any]:
    return {
        "gateway": {"name": name, "password": PASSWORDS[name]},
        "keywords": rules(reply),
    } | extra


def main_file(tmp_path: Path, sandbox_url: str, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "gateway": {
            "base_urls": [sandbox_url],
            "poll_interval": 0.3,
            "simulator": True,
            "timeout": 2,
        },
        "store": {"path": str(tmp_path / "responder.db")},
        "log": {"format": "json", "level": "info"},
        "replies": {"retry_initial": 0.1, "retry_max": 0.5},
        "accounts": {"include": ["accounts.d/*.toml"]},
        "keywords": rules("默认回复"),
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return write(tmp_path / "config.toml", data)


def three_accounts(tmp_path: Path, url: str, **extra: Any) -> Path:
    config = main_file(tmp_path, url, **extra)
    for name, reply in (("acme", "甲已受理"), ("beta", "乙已受理"), ("gamma", "丙已受理")):
        write(tmp_path / "accounts.d" / f"{name}.toml", account_file(name, reply))
    return config


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("defaults", "override", "merged"),
    [
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"a": 1}, {"a": 2}, {"a": 2}),
        ({"t": {"x": 1, "y": 2}}, {"t": {"y": 3}}, {"t": {"x": 1, "y": 3}}),
        ({"t": {"u": {"x": 1}}}, {"t": {"u": {"z": 2}}}, {"t": {"u": {"x": 1, "z": 2}}}),
        ({"t": {"words": ["TD", "退订"]}}, {"t": {"words": ["STOP"]}}, {"t": {"words": ["STOP"]}}),
        (
            {"k": {"rules": [{"a": 1}, {"b": 2}]}},
            {"k": {"rules": [{"c": 3}]}},
            {"k": {"rules": [{"c": 3}]}},
        ),
        ({"t": {"x": 1}}, {"t": "scalar"}, {"t": "scalar"}),
        ({}, {"t": {"x": 1}}, {"t": {"x": 1}}),
    ],
    ids=[
        "new key",
        "key wins",
        "tables merge",
        "nested tables merge",
        "arrays replace",
        "arrays of tables replace",
        "a value replaces a table",
        "a table of its own",
    ],
)
def test_account_file_merges_over_the_main_file_per_table(
    defaults: dict[str, Any], override: dict[str, Any], merged: dict[str, Any]
) -> None:
    assert merge_tables(defaults, override) == merged


def test_a_single_account_file_is_the_account_default(tmp_path: Path) -> None:
    config = write(
        tmp_path / "config.toml",
        {
            "gateway": {"base_urls": ["http://127.0.0.1:9"], "name": "x", "password": "p"},
            "store": {"path": str(tmp_path / "r.db")},
        },
    )

    loaded = load_accounts(config, environ={})

    assert list(loaded.accounts) == ["default"]
    assert loaded.accounts["default"].account == "default"


def test_account_files_take_the_main_files_sections_as_defaults(tmp_path: Path) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9")

    loaded = load_accounts(config, environ={})

    assert list(loaded.accounts) == ["acme", "beta", "gamma"]
    beta = loaded.accounts["beta"]
    assert (beta.account, beta.gateway.name, beta.gateway.poll_interval) == ("beta", "beta", 0.3)
    assert beta.sections["keywords"]["rules"][0]["reply"] == "乙已受理"
    assert beta.store == loaded.main.store if loaded.main else False


def test_a_process_wide_section_in_an_account_file_names_its_file_and_key(
    tmp_path: Path,
) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9")
    bad = write(
        tmp_path / "accounts.d" / "beta.toml",
        account_file("beta", "乙") | {"store": {"path": "/tmp/other.db"}},
    )

    loaded = load_accounts(config, environ={})

    assert list(loaded.accounts) == ["acme", "gamma"]
    [problem] = loaded.rejected["beta"]
    assert problem.startswith(f"{bad}: store: [store] is the whole process's")


def test_a_broken_account_file_is_rejected_alone(tmp_path: Path) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9")
    bad = tmp_path / "accounts.d" / "gamma.toml"
    bad.write_text('[gateway]\nname = "gamma"\npassword = "x"\npoll_interval = "soon"\n')

    loaded = load_accounts(config, environ={})

    assert list(loaded.accounts) == ["acme", "beta"]
    assert loaded.rejected["gamma"] == (
        f"{bad}: gateway.poll_interval: must be a number of seconds, got a string 'soon'",
    )


def test_responder_check_reports_every_broken_account_file_and_fails(tmp_path: Path) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9")
    (tmp_path / "accounts.d" / "beta.toml").write_text("[gateway\n")
    (tmp_path / "accounts.d" / "gamma.toml").write_text('[gateway]\nname = "gamma"\n')

    done = subprocess.run(
        [sys.executable, "-m", "responder", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )

    assert done.returncode == 2
    assert "beta.toml: not valid TOML" in done.stderr
    assert "gamma.toml: gateway.password: no password" in done.stderr
    assert "acme.toml" not in done.stderr


def test_a_problem_in_a_default_names_the_main_file(tmp_path: Path) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9", replies={"max_parts": 99})

    loaded = load_accounts(config, environ={})

    assert not loaded.accounts
    assert loaded.rejected["acme"][0].startswith(f"{config}: replies.max_parts: must be at most 10")
    assert "(a default of the account file" in loaded.rejected["acme"][0]


@pytest.mark.parametrize("stem", ["Acme", "a.b", "-x", "x" * 33])
def test_an_account_id_must_be_a_short_slug(tmp_path: Path, stem: str) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9")
    write(tmp_path / "accounts.d" / f"{stem}.toml", account_file("acme", "x"))

    loaded = load_accounts(config, environ={})

    assert stem in loaded.rejected
    assert "is not one: 1 to 32 of a-z" in loaded.rejected[stem][0]


def test_the_main_file_may_be_an_account_too(tmp_path: Path) -> None:
    config = three_accounts(
        tmp_path,
        "http://127.0.0.1:9",
        accounts={"main": True},
        gateway={"name": "main", "password": "pw"},
    )

    loaded = load_accounts(config, environ={})

    assert list(loaded.accounts) == ["acme", "beta", "default", "gamma"]


def test_an_account_password_comes_from_its_own_environment_variable() -> None:
    environ = {
        "RESPONDER_GATEWAY_PASSWORD": "single",
        "RESPONDER_GATEWAY_PASSWORD_SHOP_2": "its-own",
    }

    assert account_environ(environ, "shop-2")["RESPONDER_GATEWAY_PASSWORD"] == "its-own"
    assert "RESPONDER_GATEWAY_PASSWORD" not in account_environ(environ, "other")


def test_a_command_names_the_account_it_works_on(tmp_path: Path) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9")

    assert account_settings(config, "beta").gateway.name == "beta"
    with pytest.raises(ConfigError, match="choose one with --account ID"):
        account_settings(config)
    with pytest.raises(ConfigError, match="no account 'zeta'"):
        account_settings(config, "zeta")


# -- opt-outs -------------------------------------------------------------------------


@pytest.mark.parametrize(("shared", "beta_suppressed"), [(False, False), (True, True)])
def test_an_opt_out_holds_in_its_account_or_in_all_when_shared(
    tmp_path: Path, shared: bool, beta_suppressed: bool
) -> None:
    config = three_accounts(tmp_path, "http://127.0.0.1:9", accounts={"shared_optouts": shared})
    loaded = load_accounts(config, environ={})
    store = Store(tmp_path / "responder.db")
    apps = {
        name: build_app(loaded.accounts[name], store=store, dry_run=False)
        for name in ("acme", "beta")
    }
    try:
        for app in apps.values():
            app.plugins.hook.responder_startup(app=app)
        sms = InboundSms(
            gateway_id=1, src=CUSTOMER, dst="0888008", text="TD", received_at=None, raw=""
        )
        message = store.journal(sms, account="acme")
        assert message is not None
        process(apps["acme"], message)
        beta_sms = InboundSms(
            gateway_id=2, src=CUSTOMER, dst="0888008", text="CX", received_at=None, raw=""
        )
        beta_message = store.journal(beta_sms, account="beta")
        assert beta_message is not None
        process(apps["beta"], beta_message)

        from responder_plugins.optout import is_opted_out

        assert is_opted_out(apps["acme"], CUSTOMER)
        assert is_opted_out(apps["beta"], CUSTOMER) is beta_suppressed
        state, reason = store.message_state(beta_message.id)
        assert (reason == "opted out") is beta_suppressed, (state, reason)
    finally:
        for app in apps.values():
            app.close()
        store.close()


# -- the runtime ----------------------------------------------------------------------


def test_status_line_sums_up_the_accounts() -> None:
    states = {
        "a": AccountState.OK,
        "b": AccountState.OK,
        "c": AccountState.OUT_OF_CREDIT,
    }

    assert summary_line(states) == "3 accounts: 2 ok, 1 out of credit"
    assert summary_line(states, rejected=1).endswith("; 1 rejected (see the log)")


@pytest.fixture
def daemon(tmp_path: Path, sandbox: Sandbox) -> Iterator[Daemon]:
    running = Daemon(str(three_accounts(tmp_path, sandbox.url)), configure_logs=False)
    running.start()
    yield running
    running.stop()


def test_one_accounts_refused_login_does_not_delay_the_others_reads(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sandbox.set_fault("login", endpoint="read", account="beta")
    sandbox.set_fault("slow", endpoint="read", account="gamma", delay=1.5)
    running = Daemon(str(three_accounts(tmp_path, sandbox.url)), configure_logs=False)
    running.start()
    try:
        wait_for(lambda: running.served["beta"].state.state is AccountState.LOGIN_REFUSED)
        wait_for(lambda: sandbox.stats("gamma").reads >= 2)
        before = sandbox.stats("acme").reads
        wait_for(lambda: sandbox.stats("gamma").reads >= 4)

        # While gamma's reads each took 1.5 s and beta was refused, acme read at its pace:
        # at least one read per poll_interval (0.3 s) of gamma's two slow reads, halved.
        assert sandbox.stats("acme").reads - before >= 5
        assert sandbox.stats("beta").reads == 1  # tried again only after login_retry
        assert sandbox.stats().too_fast_reads == 0
    finally:
        running.stop()


def test_each_account_answers_with_its_own_rules_in_process(
    daemon: Daemon, sandbox: Sandbox
) -> None:
    for name in ("acme", "beta", "gamma"):
        sandbox.inject(CUSTOMER, "CX", account=name)

    wait_for(lambda: len(sandbox.sent()) == 3)

    assert {(s.account, s.text) for s in sandbox.sent()} == {
        ("acme", "甲已受理"),
        ("beta", "乙已受理"),
        ("gamma", "丙已受理"),
    }


def test_one_accounts_lack_of_credit_holds_its_sends_only(daemon: Daemon, sandbox: Sandbox) -> None:
    sandbox.set_fault("errid", endpoint="send", errid=6013, account="beta")
    for name in ("acme", "beta", "gamma"):
        sandbox.inject(CUSTOMER, "CX", account=name)

    wait_for(lambda: daemon.served["beta"].state.state is AccountState.OUT_OF_CREDIT)
    wait_for(lambda: len(sandbox.sent()) == 2)

    assert {s.account for s in sandbox.sent()} == {"acme", "gamma"}
    assert daemon.store is not None and daemon.store.outbox_depth(account="beta") == 1
    assert daemon.status_line() == "3 accounts: 2 ok, 1 out of credit"


def test_metrics_are_labelled_by_account(daemon: Daemon, sandbox: Sandbox) -> None:
    wait_for(lambda: all(s.reads["empty"] for s in daemon.served.values()))

    families = {f.name: f for f in AccountsCollector(daemon).collect()}

    reads = {(s.labels["account"], s.labels["result"]) for s in families["responder_reads"].samples}
    assert {("acme", "empty"), ("beta", "empty"), ("gamma", "empty")} <= reads
    states = [
        s.labels["account"]
        for s in families["responder_account_state"].samples
        if s.labels["state"] == "ok" and s.value == 1
    ]
    assert states == ["acme", "beta", "gamma"]


# -- the daemon as a process ------------------------------------------------------------


class Running:
    def __init__(self, config: Path, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "responder", "run", "-c", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def has(self, event: str, **fields: Any) -> bool:
        return any(
            e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
            for e in self.events()
        )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        finally:
            self._log.close()


@pytest.fixture
def running(tmp_path: Path, sandbox: Sandbox) -> Iterator[Running]:
    process = Running(three_accounts(tmp_path, sandbox.url), tmp_path / "daemon.log")
    yield process
    if process.process.poll() is None:
        process.process.kill()
    process.stop()


def test_one_daemon_answers_three_accounts_with_their_own_rules_and_credentials(
    running: Running, sandbox: Sandbox
) -> None:
    for name in ("acme", "beta", "gamma"):
        sandbox.inject(CUSTOMER, "CX", account=name)

    wait_for(lambda: len(sandbox.sent()) == 3, timeout=30)

    assert sorted((s.account, s.text) for s in sandbox.sent()) == [
        ("acme", "甲已受理"),
        ("beta", "乙已受理"),
        ("gamma", "丙已受理"),
    ]
    assert sandbox.stats().too_fast_reads == 0
    assert running.stop() == 0


def test_status_shows_each_account(running: Running, sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.set_fault("login", endpoint="read", account="gamma")
    wait_for(lambda: running.has("login_refused", account="gamma"), timeout=30)
    wait_for(lambda: sandbox.stats("beta").reads > 2)
    running.stop()

    done = subprocess.run(
        [sys.executable, "-m", "responder", "status", "-c", str(tmp_path / "config.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line}

    assert done.returncode == 1  # gamma is refused
    assert " ok " in lines["acme"] and " ok " in lines["beta"]
    assert "login_refused" in lines["gamma"]


def test_sighup_adds_removes_and_changes_accounts_leaving_the_others_reading(
    running: Running, sandbox: Sandbox, tmp_path: Path
) -> None:
    accounts = tmp_path / "accounts.d"
    wait_for(lambda: all(sandbox.stats(n).reads >= 3 for n in ("acme", "beta", "gamma")))
    sandbox.accounts["delta"] = "pw-delta"
    write(accounts / "delta.toml", {"gateway": {"name": "delta", "password": "pw-delta"}})
    (accounts / "gamma.toml").unlink()
    write(accounts / "beta.toml", account_file("beta", "乙新回复"))
    gamma_reads = sandbox.stats("gamma").reads
    first_acme = len(sandbox.read_times("acme"))

    running.process.send_signal(signal.SIGHUP)
    wait_for(lambda: running.has("reloaded"), timeout=30)
    wait_for(lambda: sandbox.stats("delta").reads >= 2)
    sandbox.inject(CUSTOMER, "CX", account="beta")
    wait_for(lambda: sandbox.sent("beta"))

    assert sandbox.sent("beta")[0].text == "乙新回复"
    assert sandbox.stats("gamma").reads <= gamma_reads + 1  # the read in flight at most
    reload = next(e for e in running.events() if e["event"] == "reloaded")
    assert (reload["added"], reload["removed"], reload["changed"]) == (
        ["delta"],
        ["gamma"],
        ["beta"],
    )
    assert not running.has("account_changed", account="acme")
    times = sandbox.read_times("acme")[max(first_acme - 1, 0) :]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 3.0, gaps  # acme kept its 0.3 s cadence through the reload
    assert sandbox.stats().too_fast_reads == 0


def test_sighup_with_a_broken_account_file_keeps_that_account_as_it_was(
    running: Running, sandbox: Sandbox, tmp_path: Path
) -> None:
    wait_for(lambda: sandbox.stats("beta").reads >= 2)
    (tmp_path / "accounts.d" / "beta.toml").write_text("[gateway\n")

    running.process.send_signal(signal.SIGHUP)
    wait_for(lambda: running.has("reloaded"), timeout=30)
    reads = sandbox.stats("beta").reads
    sandbox.inject(CUSTOMER, "CX", account="beta")
    wait_for(lambda: sandbox.sent("beta"))

    assert running.has("account_rejected", account="beta", keeping="the running configuration")
    assert sandbox.sent("beta")[0].text == "乙已受理"
    assert sandbox.stats("beta").reads > reads


def test_account_status_is_kept_per_account(tmp_path: Path) -> None:
    store = Store(tmp_path / "r.db")
    try:
        AccountStatus(state=AccountState.OUT_OF_CREDIT, since=1.0).save(store, "beta")
        store.set_last_read_at(5.0, account="beta")

        assert AccountStatus.load(store, "beta").state is AccountState.OUT_OF_CREDIT
        assert AccountStatus.load(store, "acme").state is AccountState.OK
        assert AccountStatus.load(store).state is AccountState.OK
        assert store.last_read_at(account="beta") == 5.0
        assert store.last_read_at() is None
    finally:
        store.close()


def test_accounts_settings_default_to_one_account() -> None:
    assert AccountsSettings() == AccountsSettings(include=(), shared_optouts=False, main=False)


# -- the API ----------------------------------------------------------------------------

FULL_TOKEN = "full-token-0123456789abcdefgh"
BETA_TOKEN = "beta-token-0123456789abcdefgh"


@pytest.fixture
def api_daemon(tmp_path: Path, sandbox: Sandbox) -> Iterator[Daemon]:
    tokens = [
        {"name": "all", "scopes": ["send", "read"], "token": FULL_TOKEN},
        {"name": "reseller", "scopes": ["send", "read"], "token": BETA_TOKEN, "accounts": ["beta"]},
    ]
    config = three_accounts(
        tmp_path, sandbox.url, api={"enabled": True, "listen": "127.0.0.1:0", "tokens": tokens}
    )
    running = Daemon(str(config), configure_logs=False)
    running.start()
    yield running
    running.stop()


def post(daemon: Daemon, token: str, body: dict[str, Any], query: str = "") -> Any:
    import httpx

    assert daemon.api is not None
    return httpx.post(
        f"{daemon.api.url}/v1/messages{query}",
        json={"to": [CUSTOMER], "text": "通知"} | body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
    )


def test_an_api_send_goes_out_through_the_account_it_names(
    api_daemon: Daemon, sandbox: Sandbox
) -> None:
    assert post(api_daemon, FULL_TOKEN, {"account": "gamma"}).status_code == 202
    assert post(api_daemon, FULL_TOKEN, {}, "?account=acme").status_code == 202

    wait_for(lambda: len(sandbox.sent()) == 2)
    assert sorted(s.account for s in sandbox.sent()) == ["acme", "gamma"]


@pytest.mark.parametrize(
    ("token", "body", "status"),
    [
        (BETA_TOKEN, {"account": "beta"}, 202),
        (BETA_TOKEN, {"account": "acme"}, 403),
        (FULL_TOKEN, {"account": "zeta"}, 404),
        (FULL_TOKEN, {}, 422),
    ],
    ids=["its own account", "another account", "no such account", "several, none named"],
)
def test_an_api_token_is_limited_to_its_accounts(
    api_daemon: Daemon, token: str, body: dict[str, Any], status: int
) -> None:
    assert post(api_daemon, token, body).status_code == status
