"""The staff console against the FastAPI app in-process: sessions, CSRF, escaping, paging."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")

from fastapi.testclient import TestClient

from responder.api.app import build_api
from responder.api.context import ApiContext
from responder.app import App
from responder.config import ConfigError, settings_from_dict
from responder.conversations import WITH_PERSON
from responder.models import PLATFORM_TZ, InboundSms
from responder.sandbox import Sandbox
from tests.conftest import config_dict, offline_config

STAFF = "staff-console-token-0123456789abcdef"
CRM = "crm-send-only-token-0123456789abcdef"
CUSTOMER = "13800138000"
SCRIPT = "<script>alert(1)</script>"


def console_sections(**console: Any) -> dict[str, Any]:
    return {
        "api": {
            "enabled": True,
            "tokens": [
                {"name": "staff", "scopes": ["console"], "token": STAFF},
                {"name": "crm", "scopes": ["send", "read"], "token": CRM},
            ],
        },
        "console": {"enabled": True, **console},
    }


@pytest.fixture
def console_app(
    tmp_path: Path, make_app: Callable[..., App], sandbox: Sandbox
) -> Iterator[tuple[App, TestClient]]:
    app = make_app(config_dict(sandbox, tmp_path, **console_sections()))
    app.plugins.hook.responder_startup(app=app)
    with TestClient(build_api(ApiContext.for_app(app))) as client:
        yield app, client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(client: TestClient, token: str = STAFF) -> str:
    """Sign in; returns the session's CSRF token."""
    page = client.get("/console/login")
    answer = client.post(
        "/console/login", data={"csrf": csrf_of(page.text), "token": token}, follow_redirects=True
    )
    assert answer.status_code == 200, answer.text
    return csrf_of(answer.text)


def journal(app: App, src: str, text: str, gateway_id: int) -> None:
    sms = InboundSms(
        gateway_id=gateway_id,
        src=src,
        dst="10690",
        text=text,
        received_at=datetime.now(PLATFORM_TZ),
        raw="",
    )
    assert app.store.journal(sms) is not None


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"console": {"enabled": True}}, "console.enabled: the console is served on the API"),
        ({"console": {"secure_cookies": "maybe"}}, 'console.secure_cookies: must be "auto"'),
        ({"console": {"language": "fr"}}, "console.language: must be one of 'zh', 'en'"),
        ({"console": {"session_timeout": 5}}, "console.session_timeout: must be at least 60"),
        ({"console": {"trusted_proxies": ["nginx"]}}, "console.trusted_proxies: must be IP"),
        (
            {
                "api": {
                    "enabled": True,
                    "tokens": [{"name": "crm", "scopes": ["send"], "token": CRM}],
                },
                "console": {"enabled": True},
            },
            'no [[api.tokens]] has the "console" scope',
        ),
    ],
)
def test_a_bad_console_section_is_named_with_what_would_be_right(
    tmp_path: Path, sections: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(offline_config(tmp_path, **sections), environ={})
    assert expected in str(caught.value)


def test_the_console_is_off_by_default(tmp_path: Path) -> None:
    settings = settings_from_dict(offline_config(tmp_path), environ={})
    assert not settings.console.enabled
    assert settings.console.secure_cookies == "auto"


# -- sessions ------------------------------------------------------------------------------


def test_pages_send_a_visitor_without_a_session_to_the_sign_in(
    console_app: tuple[App, TestClient],
) -> None:
    _app, client = console_app
    for page in ("/console/inbox", "/console/rules", "/console/optouts", "/console/health"):
        answer = client.get(page, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/console/login"


def test_sign_in_with_a_console_token_sets_a_strict_httponly_session_cookie(
    console_app: tuple[App, TestClient],
) -> None:
    _app, client = console_app
    page = client.get("/console/login")
    answer = client.post(
        "/console/login",
        data={"csrf": csrf_of(page.text), "token": STAFF},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = next(c for c in answer.headers.get_list("set-cookie") if "responder_console=" in c)
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
    assert "Secure" not in cookie  # plain HTTP on loopback, secure_cookies = "auto"
    assert STAFF not in cookie and STAFF not in answer.headers["location"]


@pytest.mark.parametrize("token", [CRM, "wrong-token-0123456789abcdefghij", ""])
def test_a_token_without_the_console_scope_cannot_sign_in(
    console_app: tuple[App, TestClient], token: str
) -> None:
    _app, client = console_app
    page = client.get("/console/login")
    answer = client.post("/console/login", data={"csrf": csrf_of(page.text), "token": token})
    assert answer.status_code == 401
    assert client.get("/console/inbox", follow_redirects=False).status_code == 303


def test_the_cookie_is_secure_behind_a_trusted_tls_proxy(
    console_app: tuple[App, TestClient],
) -> None:
    _app, client = console_app
    page = client.get("/console/login")
    answer = client.post(
        "/console/login",
        data={"csrf": csrf_of(page.text), "token": STAFF},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    # The test client's address ("testclient") is no trusted proxy: not believed.
    assert "Secure" not in answer.headers["set-cookie"]
    over_tls = TestClient(client.app, base_url="https://console.example")
    over_tls.cookies.set("responder_console_login", "x")
    answer = over_tls.post(
        "/console/login", data={"csrf": "x", "token": STAFF}, follow_redirects=False
    )
    assert "Secure" in answer.headers["set-cookie"]


def test_sign_out_ends_the_session(console_app: tuple[App, TestClient]) -> None:
    _app, client = console_app
    csrf = sign_in(client)
    answer = client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False)
    assert answer.status_code == 303
    assert client.get("/console/inbox", follow_redirects=False).status_code == 303


def test_a_session_ends_when_a_reload_removes_its_token(
    console_app: tuple[App, TestClient],
) -> None:
    app, client = console_app
    sign_in(client)
    api = app.settings.api
    kept = tuple(token for token in api.tokens if token.name != "staff")
    app.settings = dataclasses.replace(app.settings, api=dataclasses.replace(api, tokens=kept))
    assert client.get("/console/inbox", follow_redirects=False).status_code == 303


def test_sign_in_is_refused_after_many_failures(console_app: tuple[App, TestClient]) -> None:
    _app, client = console_app
    nonce = csrf_of(client.get("/console/login").text)
    statuses = [
        client.post("/console/login", data={"csrf": nonce, "token": "nope"}).status_code
        for _ in range(11)
    ]
    assert statuses[:10] == [401] * 10
    assert statuses[10] == 429


# -- CSRF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/console/c/{CUSTOMER}/reply",
        f"/console/c/{CUSTOMER}/takeover",
        f"/console/c/{CUSTOMER}/release",
        "/console/optouts/add",
        "/console/optouts/remove",
        "/console/health/retry",
        "/console/rules",
        "/console/logout",
    ],
)
def test_a_form_without_the_csrf_token_is_refused(
    console_app: tuple[App, TestClient], path: str
) -> None:
    app, client = console_app
    sign_in(client)
    answer = client.post(path, data={"text": "hi", "number": CUSTOMER, "item": "1"})
    assert answer.status_code == 403
    wrong = client.post(path, data={"csrf": "forged", "number": CUSTOMER})
    assert wrong.status_code == 403
    assert app.conversation(CUSTOMER).current is None


def test_a_sign_in_form_without_its_nonce_is_refused(console_app: tuple[App, TestClient]) -> None:
    _app, client = console_app
    answer = client.post("/console/login", data={"token": STAFF})
    assert answer.status_code == 403


def test_the_csrf_header_htmx_sends_is_accepted(console_app: tuple[App, TestClient]) -> None:
    app, client = console_app
    csrf = sign_in(client)
    answer = client.post(
        f"/console/c/{CUSTOMER}/takeover",
        data={"account": "default"},
        headers={"X-CSRF-Token": csrf, "HX-Request": "true"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    current = app.conversation(CUSTOMER).current
    assert current is not None and current.state == WITH_PERSON


# -- escaping ------------------------------------------------------------------------------


def test_customer_text_is_escaped_on_every_page_showing_it(
    console_app: tuple[App, TestClient],
) -> None:
    app, client = console_app
    journal(app, CUSTOMER, SCRIPT, 1)
    sign_in(client)
    for page in ("/console/inbox", f"/console/c/{CUSTOMER}"):
        html = client.get(page).text
        assert SCRIPT not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_rules_tester_escapes_the_text_tried(console_app: tuple[App, TestClient]) -> None:
    _app, client = console_app
    csrf = sign_in(client)
    html = client.post("/console/rules", data={"csrf": csrf, "text": SCRIPT}).text
    assert SCRIPT not in html
    assert "&lt;script&gt;" in html


def test_pages_forbid_inline_scripts(console_app: tuple[App, TestClient]) -> None:
    _app, client = console_app
    sign_in(client)
    policy = client.get("/console/inbox").headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


# -- inbox ---------------------------------------------------------------------------------


def test_the_inbox_shows_who_waits_for_a_person_first(console_app: tuple[App, TestClient]) -> None:
    app, client = console_app
    journal(app, "13900000001", "人工", 1)
    journal(app, "13900000002", "later message", 2)
    app.conversation("13900000001").hand_over(timeout=3600, who="handover")
    sign_in(client)
    html = client.get("/console/inbox").text
    waiting = html.index("13900000001")
    assert waiting < html.index("13900000002")
    assert "人工处理中" in html


def test_the_inbox_pages_through_senders_latest_first(console_app: tuple[App, TestClient]) -> None:
    app, client = console_app
    for index in range(60):
        journal(app, f"139{index:08d}", f"message {index}", index + 1)
    sign_in(client)
    first = client.get("/console/inbox").text
    second = client.get("/console/inbox?page=1").text
    assert "13900000059" in first and "13900000010" in first
    assert "13900000009" not in first
    assert "13900000009" in second and "13900000000" in second
    assert 'rel="next"' in first and 'rel="next"' not in second


def test_the_inbox_partial_for_polling_is_the_lists_only(
    console_app: tuple[App, TestClient],
) -> None:
    _app, client = console_app
    sign_in(client)
    partial = client.get("/console/inbox", headers={"HX-Request": "true"})
    assert partial.text.lstrip().startswith('<div id="lists"')
    assert "<html" not in partial.text


def test_polling_after_the_session_ended_sends_htmx_to_the_sign_in(
    console_app: tuple[App, TestClient],
) -> None:
    _app, client = console_app
    answer = client.get("/console/inbox", headers={"HX-Request": "true"})
    assert answer.status_code == 401
    assert answer.headers["hx-redirect"] == "/console/login"


# -- conversation, opt-outs, health -------------------------------------------------------


def test_take_over_and_hand_back_change_the_conversation(
    console_app: tuple[App, TestClient],
) -> None:
    app, client = console_app
    csrf = sign_in(client)
    client.post(f"/console/c/{CUSTOMER}/takeover", data={"csrf": csrf, "account": "default"})
    assert app.conversation(CUSTOMER).with_person
    page = client.post(f"/console/c/{CUSTOMER}/release", data={"csrf": csrf, "account": "default"})
    assert not app.conversation(CUSTOMER).with_person
    assert "已交还机器人" in page.text


def test_a_staff_reply_goes_out_through_the_outbox_with_the_signature(
    tmp_path: Path, make_app: Callable[..., App], sandbox: Sandbox
) -> None:
    data = config_dict(sandbox, tmp_path, **console_sections(), replies={"signature": "【测试】"})
    app = make_app(data)
    app.plugins.hook.responder_startup(app=app)
    with TestClient(build_api(ApiContext.for_app(app))) as client:
        csrf = sign_in(client)
        page = client.post(
            f"/console/c/{CUSTOMER}/reply",
            data={"csrf": csrf, "account": "default", "text": "您好，马上为您处理"},
        )
    assert page.status_code == 200
    assert "1 条短信" in page.text
    texts = [line.text for line in app.store.exchange(CUSTOMER, limit=5)]
    assert texts == ["【测试】您好，马上为您处理"]


def test_the_same_reply_form_sent_twice_sends_once(console_app: tuple[App, TestClient]) -> None:
    app, client = console_app
    csrf = sign_in(client)
    key = re.search(r'name="key" value="([^"]+)"', client.get(f"/console/c/{CUSTOMER}").text)
    assert key is not None
    form = {"csrf": csrf, "account": "default", "text": "马上处理", "key": key.group(1)}
    for _ in range(2):
        assert "1 条短信" in client.post(f"/console/c/{CUSTOMER}/reply", data=form).text
    assert [line.text for line in app.store.exchange(CUSTOMER, limit=5)] == ["马上处理"]


def test_a_reply_to_an_opted_out_number_is_suppressed(
    console_app: tuple[App, TestClient],
) -> None:
    app, client = console_app
    csrf = sign_in(client)
    client.post("/console/optouts/add", data={"csrf": csrf, "number": CUSTOMER})
    page = client.post(
        f"/console/c/{CUSTOMER}/reply", data={"csrf": csrf, "account": "default", "text": "hi"}
    )
    assert "未发送" in page.text
    assert app.store.exchange(CUSTOMER, limit=5) == []


def test_opt_outs_are_added_found_and_removed_with_who_did_it(
    console_app: tuple[App, TestClient],
) -> None:
    _app, client = console_app
    csrf = sign_in(client)
    client.post("/console/optouts/add", data={"csrf": csrf, "number": "+86 139-0000-0001"})
    client.post("/console/optouts/add", data={"csrf": csrf, "number": "13700000002"})
    found = client.get("/console/optouts?q=1390000").text
    assert "13900000001" in found and "console:staff" in found
    assert "13700000002" not in found
    client.post("/console/optouts/remove", data={"csrf": csrf, "number": "13900000001"})
    assert "13900000001" not in client.get("/console/optouts").text


def test_the_rules_tester_says_which_rule_answers(console_app: tuple[App, TestClient]) -> None:
    _app, client = console_app
    csrf = sign_in(client)
    html = client.post("/console/rules", data={"csrf": csrf, "text": "退订"}).text
    assert "optout unsubscribe" in html
    assert "optout" in html


def test_health_shows_the_account_the_chart_and_dead_letters_to_retry(
    console_app: tuple[App, TestClient],
) -> None:
    app, client = console_app
    journal(app, CUSTOMER, "hello", 1)
    item, _new = app.store.queue_put(
        "outbox", {"recipients": [CUSTOMER], "text": "lost", "part": 1, "parts": 1}
    )
    claimed = app.store.queue_claim("outbox", 1)
    app.store.queue_finish(claimed[0].id, state="dead", error="gave up")
    csrf = sign_in(client)
    html = client.get("/console/health").text
    assert "<svg" in html and 'class="in"' in html
    assert "gave up" in html
    client.post("/console/health/retry", data={"csrf": csrf, "item": str(item.id)})
    assert app.store.queue_get(item.id).state == "pending"  # type: ignore[union-attr]


def test_the_language_can_be_switched_to_english(console_app: tuple[App, TestClient]) -> None:
    _app, client = console_app
    sign_in(client)
    client.get("/console/lang/en?next=/console/inbox")
    assert "Waiting for a person" in client.get("/console/inbox").text


def test_the_language_switch_never_redirects_off_the_console(
    console_app: tuple[App, TestClient],
) -> None:
    _app, client = console_app
    answer = client.get("/console/lang/en?next=//evil.example/x", follow_redirects=False)
    assert answer.headers["location"] == "/console/inbox"
