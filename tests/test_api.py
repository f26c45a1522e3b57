"""The HTTP API in process: a real uvicorn on a free loopback port, httpx, a real SQLite
store; the processing thread is stood in for by ``ApiContext.for_app``."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from responder import ApiError, ApiRoutes, hookimpl
from responder.api.auth import TokenSet
from responder.api.context import ApiContext
from responder.api.server import ApiBindError, ApiServer, bind
from responder.api.settings import ApiSettings, ApiToken
from responder.app import App, build_app
from responder.checks import check_configuration
from responder.config import collect_settings, settings_from_dict
from responder.store import Store
from tests.conftest import offline_config, write_config

SENDER = "sender-token-0123456789abcdef"
READER = "reader-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdefgh"
TOKENS = [
    {"name": "crm", "scopes": ["send", "read"], "token": SENDER},
    {"name": "dashboard", "scopes": ["read"], "token": READER},
    {"name": "ops", "scopes": ["send", "read", "admin"], "token": ADMIN},
]
A, B, C = "13800138000", "13900139000", "13700137000"


def pending(api: Api) -> int:
    """SMS waiting in the outbox."""
    return api.app.store.status().outbox.get("pending", 0)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    app: App
    server: ApiServer
    client: httpx.Client

    def post(self, body: dict[str, Any], token: str = SENDER, key: str | None = None):
        headers = auth(token) | ({"Idempotency-Key": key} if key else {})
        return self.client.post("/v1/messages", json=body, headers=headers)


def api_config(tmp_path: Path, **api: Any) -> dict[str, Any]:
    section = {"enabled": True, "listen": "127.0.0.1:0", "tokens": TOKENS} | api
    return offline_config(tmp_path, api=section, replies={"signature": "【好店】"})


@pytest.fixture
def make_api(tmp_path: Path) -> Iterator[Any]:
    started: list[Api] = []

    def make(plugins: tuple[tuple[str, Any], ...] = (), **api: Any) -> Api:
        data = api_config(tmp_path, **api)
        settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
        app = build_app(settings, store=Store(settings.store.path), extra_plugins=plugins)
        app.plugins.hook.responder_startup(app=app)
        server = ApiServer(ApiContext.for_app(app)).start()
        client = httpx.Client(base_url=server.url, timeout=10)
        started.append(Api(app, server, client))
        return started[-1]

    yield make
    for api in started:
        api.client.close()
        api.server.stop()
        api.app.close()
        api.app.store.close()


@pytest.fixture
def api(make_api: Any) -> Api:
    result: Api = make_api()
    return result


# -- configuration ---------------------------------------------------------------------


def problems_of(tmp_path: Path, environ: dict[str, str] | None = None, **api: Any) -> list[str]:
    data = offline_config(tmp_path, api=api)
    _settings, problems = collect_settings(data, source="config.toml", environ=environ or {})
    return problems


@pytest.mark.parametrize(
    ("api", "expected"),
    [
        ({"listen": "8090"}, 'config.toml: api.listen: must be "host:port"'),
        ({"rate_limit": "lots"}, "config.toml: api.rate_limit: must be rates such as"),
        ({"enabled": True}, "config.toml: api.tokens: the HTTP API is enabled without any token"),
        (
            {"tokens": [{"name": "crm", "scopes": ["write"], "token": SENDER}]},
            "config.toml: api.tokens[0].scopes: must be some of 'send', 'read'",
        ),
        (
            {"tokens": [{"name": "crm", "scopes": ["send"], "token": "short"}]},
            "config.toml: api.tokens[0].token: the token from api.tokens[0].token must be at "
            "least 24 characters, got 5",
        ),
        (
            {"tokens": [{"name": "CRM!", "scopes": ["send"], "token": SENDER}]},
            "config.toml: api.tokens[0].name: must be lower-case letters",
        ),
        (
            {"tokens": [{"name": "crm", "scopes": ["send"]}]},
            "config.toml: api.tokens[0].token: no token: set api.tokens[0].token, "
            "api.tokens[0].token_file, the systemd credential 'api-token-crm' or the "
            "environment variable RESPONDER_API_TOKEN_CRM",
        ),
        (
            {
                "tokens": [
                    {"name": "crm", "scopes": ["send"], "token": SENDER},
                    {"name": "crm", "scopes": ["read"], "token": READER},
                ]
            },
            "config.toml: api.tokens[1].name: 'crm' is declared twice",
        ),
        ({"tokenz": []}, "config.toml: api.tokenz: unknown key; did you mean 'tokens'?"),
    ],
)
def test_a_bad_api_section_is_a_problem_naming_the_key(tmp_path, api, expected):
    problems = problems_of(tmp_path, **api)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_token_problem_never_shows_the_token(tmp_path):
    problems = problems_of(tmp_path, tokens=[{"name": "crm", "scopes": ["send"], "token": "abc"}])
    assert problems and not any("abc" in problem for problem in problems)


def test_enabled_without_the_extra_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr("responder.api.settings.missing_modules", lambda: ["fastapi"])
    problems = problems_of(tmp_path, enabled=True, tokens=TOKENS[:1])
    assert problems == [
        "config.toml: api.enabled: the HTTP API needs the api extra (not installed: "
        "fastapi): pip install 'sms-responder[api]'"
    ]


def test_a_token_comes_from_the_environment(tmp_path):
    data = offline_config(tmp_path, api={"tokens": [{"name": "crm-2", "scopes": ["read"]}]})
    settings = settings_from_dict(data, environ={"RESPONDER_API_TOKEN_CRM_2": READER})
    assert settings.api.tokens[0].token == READER


def test_a_token_comes_from_a_systemd_credential(tmp_path):
    (tmp_path / "api-token-crm").write_text(READER + "\n")
    data = offline_config(tmp_path, api={"tokens": [{"name": "crm", "scopes": ["read"]}]})
    settings = settings_from_dict(data, environ={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.api.tokens[0].token == READER


def test_a_token_comes_from_a_file_next_to_the_config(tmp_path):
    (tmp_path / "crm.token").write_text(READER + "\n")
    tokens = [{"name": "crm", "scopes": ["read"], "token_file": "crm.token"}]
    data = offline_config(tmp_path, api={"tokens": tokens})
    settings = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
    assert settings.api.tokens[0].token == READER


def test_tokens_are_secrets_hidden_from_logs(tmp_path):
    settings = settings_from_dict(offline_config(tmp_path, api={"tokens": TOKENS}), environ={})
    assert {SENDER, READER, ADMIN} <= set(settings.secrets())
    assert SENDER not in repr(settings)


def test_the_api_is_off_and_on_loopback_by_default(tmp_path):
    settings = settings_from_dict(offline_config(tmp_path), environ={})
    assert not settings.api.enabled
    assert settings.api.listen == "127.0.0.1:8090" and settings.api.is_loopback


# -- tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("presented", "name"),
    [(SENDER, "crm"), (READER, "dashboard"), (SENDER[:-1], None), (SENDER + "x", None), ("", None)],
)
def test_a_token_set_finds_only_an_exact_token(presented, name):
    tokens = TokenSet(
        tuple(ApiToken(t["name"], frozenset(t["scopes"]), t["token"]) for t in TOKENS)
    )
    found = tokens.check(presented)
    assert (found.name if found else None) == name


# -- authentication and scopes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="responder"'),
        (auth("not-a-token-of-ours-at-all"), 'Bearer realm="responder", error="invalid_token"'),
        ({"Authorization": f"Basic {SENDER}"}, 'Bearer realm="responder"'),
    ],
)
def test_a_missing_or_wrong_token_gets_401_with_a_challenge(api, headers, challenge):
    answer = api.client.post("/v1/messages", json={"to": [A], "text": "hi"}, headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == challenge
    assert answer.json()["error"] == "unauthorized"


def test_a_token_without_the_scope_gets_403_naming_it(api):
    answer = api.post({"to": [A], "text": "hi"}, token=READER)
    assert answer.status_code == 403
    assert answer.json()["message"] == "the token 'dashboard' lacks the scope 'send'"
    assert 'scope="send"' in answer.headers["WWW-Authenticate"]


def test_auth_is_checked_before_the_body(api):
    answer = api.client.post("/v1/messages", json={"nonsense": 1})
    assert answer.status_code == 401


def test_a_token_over_its_rate_limit_gets_429_with_retry_after(make_api):
    api = make_api(rate_limit="2/minute")
    codes = [api.client.get("/v1/status", headers=auth(READER)).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    answer = api.client.get("/v1/status", headers=auth(READER))
    assert 1 <= int(answer.headers["Retry-After"]) <= 60
    assert api.client.get("/v1/status", headers=auth(SENDER)).status_code == 200  # per token


def test_no_token_value_reaches_a_log_line(api):
    with capture_logs() as logs:
        api.post({"to": [A], "text": "hi"})
        api.post({"to": [A], "text": "hi"}, token=READER)
        api.client.get("/v1/status", headers=auth("wrong-" + SENDER))
        api.client.get("/v1/status")
    assert any(entry["event"] == "api_request" and entry["token"] == "crm" for entry in logs)
    text = repr(logs)
    for token in (SENDER, READER, "wrong-" + SENDER):
        assert token not in text


# -- POST /v1/messages -----------------------------------------------------------------


def test_a_send_answers_202_with_each_recipients_outcome(api):
    answer = api.post({"to": [A, B, "12"], "text": "您的订单已发货"}, key="order-1")
    assert answer.status_code == 202
    body = answer.json()
    assert answer.headers["Location"] == f"/v1/messages/{body['id']}"
    assert [(r["number"], r["status"]) for r in body["recipients"]] == [
        (A, "queued"),
        (B, "queued"),
        ("12", "invalid"),
    ]
    assert body["totals"]["queued"] == 2 and body["totals"]["invalid"] == 1
    assert body["parts"] == 1


def test_an_opted_out_number_is_reported_suppressed(api):
    assert api.client.put(f"/v1/optouts/{B}", headers=auth(ADMIN)).status_code == 200
    body = api.post({"to": [A, B], "text": "hi"}).json()
    outcome = {r["number"]: r for r in body["recipients"]}
    assert outcome[B]["status"] == "suppressed" and outcome[B]["reason"]
    assert outcome[A]["status"] == "queued"


def test_the_same_idempotency_key_twice_answers_the_first_answer(api):
    first = api.post({"to": [A], "text": "hi"}, key="k-1")
    again = api.post({"to": [A], "text": "hi"}, key="k-1")
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert again.json() == first.json()
    assert pending(api) == 1


def test_the_same_key_with_another_body_is_a_409(api):
    api.post({"to": [A], "text": "hi"}, key="k-2")
    answer = api.post({"to": [A], "text": "something else"}, key="k-2")
    assert answer.status_code == 409 and answer.json()["error"] == "conflict"


def test_idempotency_keys_are_kept_per_token(api):
    first = api.post({"to": [A], "text": "hi"}, key="k-3").json()
    other = api.post({"to": [A], "text": "hi"}, key="k-3", token=ADMIN)
    assert other.status_code == 202 and "Idempotent-Replayed" not in other.headers
    assert other.json()["id"] != first["id"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"to": [], "text": "hi"}, "body.to: List should have at least 1 item"),
        ({"to": [A], "text": ""}, "body.text: String should have at least 1 character"),
        ({"to": [A], "text": "   "}, "body.text: must not be blank"),
        ({"to": [A], "text": "x" * 1001}, "body.text: at most 1000 characters (api.max_text)"),
        ({"to": [A] * 1001, "text": "hi"}, "body.to: at most 1000 numbers per request"),
        ({"to": [A], "text": "hi", "at": "2030-01-01T08:00:00"}, "body.at: Input should have"),
        ({"to": [A], "text": "hi", "extra": 1}, "body.extra: Extra inputs are not permitted"),
        ({"to": A, "text": "hi"}, "body.to: Input should be a valid list"),
        ({"to": [A], "text": "hi", "context": {"x": "y" * 9000}}, "body.context: at most 8192"),
        ({"to": [A], "text": "hi", "at": "2999-01-01T08:00:00+08:00"}, "body.at: at most a year"),
    ],
)
def test_a_bad_send_is_a_422_saying_what_is_wrong(api, body, message):
    answer = api.post(body)
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid"
    assert answer.json()["message"].startswith(message), answer.json()


def test_a_body_that_is_not_json_is_a_400(api):
    headers = auth(SENDER) | {"Content-Type": "application/json"}
    answer = api.client.post("/v1/messages", content=b"\xff{", headers=headers)
    assert answer.status_code == 400 and answer.json()["error"] == "bad_request"


def test_a_body_too_large_is_a_413(api):
    answer = api.post({"to": [A], "text": "x" * (3 * 1024 * 1024)})
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"


def test_a_bad_idempotency_key_is_a_422(api):
    answer = api.post({"to": [A], "text": "hi"}, key="has space")
    assert answer.status_code == 422
    assert answer.json()["message"].startswith("header.idempotency-key")


def test_a_dry_run_counts_and_stores_nothing(api):
    body = api.post({"to": [A, B], "text": "hi", "dry_run": True}).json()
    assert body["id"] == 0 and body["totals"]["queued"] == 2
    assert pending(api) == 0


# -- GET and DELETE /v1/messages/{id} ----------------------------------------------------


def test_a_send_can_be_followed_by_its_id(api):
    sent = api.post({"to": [A, "12"], "text": "hi"}).json()
    answer = api.client.get(f"/v1/messages/{sent['id']}", headers=auth(READER))
    assert answer.status_code == 200
    body = answer.json()
    assert body["source"] == "api:crm" and body["text"] == "hi"
    assert {r["number"]: r["status"] for r in body["recipients"]} == {A: "queued", "12": "invalid"}


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_unknown_send_is_a_404(api, method):
    answer = api.client.request(method, "/v1/messages/999", headers=auth(SENDER))
    assert answer.status_code == 404 and answer.json()["error"] == "not_found"


def test_a_scheduled_send_is_held_and_can_be_cancelled(api):
    at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    sent = api.post({"to": [A, B], "text": "明天见", "at": at}).json()
    assert {r["status"] for r in sent["recipients"]} == {"scheduled"}
    assert pending(api) == 0
    answer = api.client.delete(f"/v1/messages/{sent['id']}", headers=auth(SENDER))
    assert answer.json() == {"id": sent["id"], "cancelled": 2}
    state = api.client.get(f"/v1/messages/{sent['id']}", headers=auth(READER)).json()
    assert {r["status"] for r in state["recipients"]} == {"cancelled"}


def test_cancelling_needs_the_send_scope(api):
    answer = api.client.delete("/v1/messages/1", headers=auth(READER))
    assert answer.status_code == 403


# -- history ---------------------------------------------------------------------------


def test_the_history_pages_with_an_opaque_cursor(api):
    for number in (A, B, C):
        api.post({"to": [number], "text": f"to {number}"})
    first = api.client.get("/v1/messages?limit=2", headers=auth(READER)).json()
    assert len(first["messages"]) == 2 and first["next_cursor"]
    rest = api.client.get(
        "/v1/messages", params={"limit": 2, "cursor": first["next_cursor"]}, headers=auth(READER)
    ).json()
    numbers = [m["number"] for m in first["messages"] + rest["messages"]]
    assert sorted(numbers) == sorted([A, B, C]) and rest["next_cursor"] is None


def test_the_history_filters_by_number_and_text(api):
    api.post({"to": [A], "text": "订单 1"})
    api.post({"to": [B], "text": "预约 2"})
    by_number = api.client.get(f"/v1/messages?number={B}", headers=auth(READER)).json()
    by_text = api.client.get("/v1/messages", params={"q": "订单"}, headers=auth(READER)).json()
    assert [m["text"] for m in by_number["messages"]] == ["【好店】预约 2"]
    assert [m["number"] for m in by_text["messages"]] == [A]


@pytest.mark.parametrize(
    "query", ["cursor=nonsense", "since=yesterday", "number=abc", "direction=sideways"]
)
def test_a_bad_history_query_is_a_422(api, query):
    answer = api.client.get(f"/v1/messages?{query}", headers=auth(READER))
    assert answer.status_code == 422


# -- status, opt-outs, conversations ------------------------------------------------------


def test_status_is_what_responder_status_json_shows(api):
    body = api.client.get("/v1/status", headers=auth(READER)).json()
    assert {"outbox_depth", "dead_letters", "account", "healthy", "plugins"} <= set(body)


def test_the_optout_list_can_be_read_and_changed_by_admin(api):
    assert api.client.put(f"/v1/optouts/{A}", headers=auth(SENDER)).status_code == 403
    added = api.client.put(f"/v1/optouts/+86 {A}", headers=auth(ADMIN)).json()
    assert added == {"number": A, "changed": True}
    entry = api.client.get(f"/v1/optouts/{A}", headers=auth(READER)).json()
    assert entry["number"] == A and entry["source"] == "api:ops"
    listing = api.client.get("/v1/optouts", headers=auth(READER)).json()
    assert [o["number"] for o in listing["optouts"]] == [A]
    assert api.client.delete(f"/v1/optouts/{A}", headers=auth(ADMIN)).status_code == 200
    assert api.client.get(f"/v1/optouts/{A}", headers=auth(READER)).status_code == 404
    assert api.client.delete(f"/v1/optouts/{A}", headers=auth(ADMIN)).status_code == 404


def test_an_optout_of_a_bad_number_is_a_422(api):
    answer = api.client.put("/v1/optouts/abc", headers=auth(ADMIN))
    assert answer.status_code == 422


def test_a_waiting_customer_is_listed_answered_and_released(api):
    api.app.conversation(A).hand_over(timeout=3600, who="handover")
    waiting = api.client.get("/v1/conversations", headers=auth(READER)).json()
    assert [c["number"] for c in waiting["conversations"]] == [A]
    answer = api.client.post(
        f"/v1/conversations/{A}/reply", json={"text": "您好，我是客服"}, headers=auth(SENDER)
    )
    assert answer.status_code == 202
    assert answer.json()["recipients"][0]["status"] == "queued"
    assert api.app.conversation(A).with_person  # an answer keeps it with the person
    released = api.client.post(f"/v1/conversations/{A}/release", headers=auth(SENDER))
    assert released.json() == {"number": A, "released": True}
    assert not api.app.conversation(A).with_person
    again = api.client.post(f"/v1/conversations/{A}/release", headers=auth(SENDER))
    assert again.status_code == 404


def test_a_staff_answer_to_an_opted_out_customer_is_suppressed(api):
    api.client.put(f"/v1/optouts/{A}", headers=auth(ADMIN))
    answer = api.client.post(
        f"/v1/conversations/{A}/reply", json={"text": "您好"}, headers=auth(SENDER)
    )
    assert answer.json()["recipients"][0]["status"] == "suppressed"


# -- the server ------------------------------------------------------------------------


def test_the_openapi_document_is_under_v1_and_the_docs_pages_are_off(api):
    assert api.client.get("/v1/openapi.json").status_code == 200
    assert api.client.get("/docs").status_code == 404
    assert api.client.get("/v1/docs").status_code == 404


def test_the_docs_pages_can_be_turned_on_under_v1(make_api):
    api = make_api(docs=True)
    assert api.client.get("/v1/docs").status_code == 200


def test_an_address_in_use_is_a_clear_bind_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ApiBindError, match=f"cannot listen on 127.0.0.1:{port}: "):
            bind(ApiSettings(listen=f"127.0.0.1:{port}"))


def test_stop_ends_the_server_thread(make_api):
    api = make_api()
    assert api.server.stop()
    assert api.server.thread is not None and not api.server.thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        api.client.get("/v1/openapi.json")


@pytest.mark.parametrize(
    ("listen", "tls_in_front", "warned"),
    [
        ("127.0.0.1:8090", False, False),
        ("[::1]:8090", False, False),
        ("0.0.0.0:8090", False, True),
        ("0.0.0.0:8090", True, False),
    ],
)
def test_check_warns_of_a_plain_http_api_beyond_loopback(tmp_path, listen, tls_in_front, warned):
    section = {"enabled": True, "listen": listen, "tls_in_front": tls_in_front, "tokens": TOKENS}
    path = write_config(tmp_path / "config.toml", offline_config(tmp_path, api=section))
    report = check_configuration(path, environ={})
    assert report.problems == ()
    assert any("api.listen" in warning for warning in report.warnings) == warned


def test_a_chunked_body_too_large_is_a_413(api):
    def chunks():
        for _ in range(40):
            yield b"x" * 65536

    headers = auth(SENDER) | {"Content-Type": "application/json"}
    answer = api.client.post("/v1/messages", content=chunks(), headers=headers)
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"


# -- plugins' endpoints ----------------------------------------------------------------


class Loyalty:
    """A plugin adding GET /v1/loyalty/{number} (scope read) through the hook."""

    @hookimpl
    def responder_api(self, api: ApiRoutes) -> None:
        from fastapi import Path as PathParam

        may_read = api.require("read")

        @api.router.get("/loyalty/{number}")
        def points(number: str = PathParam(max_length=40), token: Any = may_read) -> Any:
            if number != A:
                raise ApiError(404, "not_found", f"no points for {number}")
            return {"number": number, "points": 120, "asked_by": token.name}


class Broken:
    @hookimpl
    def responder_api(self, api: ApiRoutes) -> None:
        raise RuntimeError("this plugin is broken")


def test_a_plugin_adds_an_endpoint_behind_the_same_tokens(make_api):
    api = make_api(plugins=(("loyalty", Loyalty()),))
    answer = api.client.get(f"/v1/loyalty/{A}", headers=auth(READER))
    assert answer.json() == {"number": A, "points": 120, "asked_by": "dashboard"}
    assert api.client.get(f"/v1/loyalty/{A}").status_code == 401
    missing = api.client.get(f"/v1/loyalty/{B}", headers=auth(READER))
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    document = api.client.get("/v1/openapi.json").json()
    assert "/v1/loyalty/{number}" in document["paths"]


def test_a_plugin_failing_in_its_api_hook_leaves_the_other_routes(make_api):
    api = make_api(plugins=(("broken", Broken()),))
    assert api.client.get("/v1/status", headers=auth(READER)).status_code == 200
