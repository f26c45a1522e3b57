"""The HTTP API and the console with several accounts: what a token may see and use."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from responder.daemon import Daemon
from responder.sandbox import Sandbox
from tests.conftest import wait_for
from tests.test_accounts import CUSTOMER, sandbox, three_accounts

__all__ = ["sandbox"]  # the fixture, shared with tests/test_accounts.py

EVERY = "every-token-0123456789abcdefgh"
PAIR = "pair-token-0123456789abcdefghi"
SCOPES = ["send", "read", "admin", "console"]


@pytest.fixture
def served(tmp_path: Path, sandbox: Sandbox) -> Iterator[Daemon]:
    """acme, beta and gamma; a token for every account and one for beta and gamma."""
    tokens = [
        {"name": "every", "scopes": SCOPES, "token": EVERY},
        {"name": "pair", "scopes": SCOPES, "token": PAIR, "accounts": ["beta", "gamma"]},
    ]
    config = three_accounts(
        tmp_path,
        sandbox.url,
        api={"enabled": True, "listen": "127.0.0.1:0", "tokens": tokens},
        console={"enabled": True},
    )
    running = Daemon(str(config), configure_logs=False)
    running.start()
    yield running
    running.stop()


def call(daemon: Daemon, method: str, path: str, token: str, **kw: Any) -> httpx.Response:
    assert daemon.api is not None
    return httpx.request(
        method,
        f"{daemon.api.url}/v1{path}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=20,
        **kw,
    )


# -- GET /v1/status ----------------------------------------------------------------------


def test_status_reports_every_account_with_the_process_figures(served: Daemon) -> None:
    answer = call(served, "GET", "/status", EVERY)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert sorted(body["accounts"]) == ["acme", "beta", "gamma"]
    assert {"account", "plugins", "healthy"} <= set(body["accounts"]["beta"])
    assert "outbox_depth" in body and isinstance(body["healthy"], bool)


def test_status_of_a_limited_token_shows_its_accounts_only(served: Daemon) -> None:
    body = call(served, "GET", "/status", PAIR).json()

    assert sorted(body["accounts"]) == ["beta", "gamma"]
    assert "outbox_depth" not in body  # the process's figures span the other accounts


@pytest.mark.parametrize(
    ("token", "account", "status"),
    [(EVERY, "gamma", 200), (PAIR, "acme", 403), (EVERY, "zeta", 404)],
    ids=["one account", "not the token's", "not served"],
)
def test_status_of_one_account(served: Daemon, token: str, account: str, status: int) -> None:
    answer = call(served, "GET", "/status", token, params={"account": account})

    assert answer.status_code == status, answer.text
    if status == 200:
        assert "accounts" not in answer.json() and "account" in answer.json()


# -- GET /v1/messages (history) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "params", "status", "says"),
    [
        (EVERY, {}, 422, "one of acme, beta, gamma"),
        (PAIR, {}, 422, "one of beta, gamma"),
        (PAIR, {"account": "acme"}, 403, "may not use the account 'acme'"),
        (EVERY, {"account": "zeta"}, 404, "no account 'zeta'"),
        (PAIR, {"account": "beta"}, 200, ""),
    ],
    ids=["several, none named", "its several", "not the token's", "not served", "its own"],
)
def test_history_is_limited_to_the_named_account_of_the_token(
    served: Daemon, token: str, params: dict[str, str], status: int, says: str
) -> None:
    answer = call(served, "GET", "/messages", token, params=params)

    assert answer.status_code == status, answer.text
    assert says in answer.json().get("message", "")


def test_history_shows_the_named_accounts_sends_only(served: Daemon, sandbox: Sandbox) -> None:
    sent = call(served, "POST", "/messages", EVERY, json={"to": [CUSTOMER], "text": "乙通知"})
    assert sent.status_code == 422  # several accounts: the send names one
    body = {"to": [CUSTOMER], "text": "乙通知", "account": "beta"}
    assert call(served, "POST", "/messages", EVERY, json=body).status_code == 202
    wait_for(lambda: len(sandbox.sent()) == 1)

    def texts(account: str) -> list[str]:
        found = call(served, "GET", "/messages", EVERY, params={"account": account}).json()
        return [line["text"] for line in found["messages"]]

    assert texts("beta") == ["乙通知"]
    assert texts("acme") == []


# -- plugins' routes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "token", "params", "status"),
    [
        ("GET", "/optouts", EVERY, {}, 422),
        ("GET", "/optouts", PAIR, {"account": "acme"}, 403),
        ("GET", "/optouts", EVERY, {"account": "zeta"}, 404),
        ("GET", "/optouts", PAIR, {"account": "gamma"}, 200),
        ("PUT", f"/optouts/{CUSTOMER}", PAIR, {"account": "acme"}, 403),
        ("DELETE", f"/optouts/{CUSTOMER}", PAIR, {}, 422),
        ("GET", "/conversations", PAIR, {"account": "acme"}, 403),
        ("POST", f"/conversations/{CUSTOMER}/release", PAIR, {"account": "acme"}, 403),
        ("POST", f"/conversations/{CUSTOMER}/release", EVERY, {"account": "zeta"}, 404),
    ],
    ids=[
        "list, none named",
        "list, not the token's",
        "list, not served",
        "list, its own",
        "put, not the token's",
        "delete, none named",
        "conversations, not the token's",
        "release, not the token's",
        "release, not served",
    ],
)
def test_plugin_routes_take_the_account_and_the_tokens_limit(
    served: Daemon,
    method: str,
    path: str,
    token: str,
    params: dict[str, str],
    status: int,
) -> None:
    assert call(served, method, path, token, params=params).status_code == status


def test_an_opt_out_put_through_the_api_holds_in_its_account_only(served: Daemon) -> None:
    beta = {"account": "beta"}
    put = call(served, "PUT", f"/optouts/{CUSTOMER}", PAIR, params=beta)
    assert put.status_code == 200, put.text

    assert call(served, "GET", f"/optouts/{CUSTOMER}", PAIR, params=beta).status_code == 200
    gamma = {"account": "gamma"}
    assert call(served, "GET", f"/optouts/{CUSTOMER}", PAIR, params=gamma).status_code == 404
    listed = call(served, "GET", "/optouts", EVERY, params={"account": "acme"}).json()
    assert listed["optouts"] == []


# -- the console's account picker -----------------------------------------------------------


def picker(daemon: Daemon, token: str) -> list[str]:
    """The accounts the inbox's picker offers to a session of ``token``."""
    return re.findall(r'<option value="([^"]+)"', daemon_page(daemon, token))


def daemon_page(daemon: Daemon, token: str) -> str:
    """The inbox as a session of ``token`` sees it."""
    assert daemon.api is not None
    with httpx.Client(base_url=daemon.api.url, timeout=20) as client:
        page = client.get("/console/login")
        nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert nonce, page.text
        signed = client.post("/console/login", data={"csrf": nonce.group(1), "token": token})
        assert signed.status_code in (200, 303), signed.text
        return client.get("/console/inbox").text


@pytest.mark.parametrize(
    ("token", "accounts"),
    [(EVERY, ["acme", "beta", "gamma"]), (PAIR, ["beta", "gamma"])],
    ids=["every account served, none with rows yet", "a token limited to two"],
)
def test_the_console_picker_lists_the_accounts_served_the_session_may_see(
    served: Daemon, token: str, accounts: list[str]
) -> None:
    assert picker(served, token) == accounts


def test_a_limited_console_session_is_not_offered_every_account(served: Daemon) -> None:
    assert daemon_page(served, PAIR).count('<option value=""') == 0
    assert daemon_page(served, EVERY).count('<option value=""') == 1
