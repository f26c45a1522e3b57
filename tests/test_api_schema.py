"""The OpenAPI document fuzzed with schemathesis against a real server: no 500s, every
answer as the document describes it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from responder.api.context import ApiContext
from responder.api.server import ApiServer
from responder.app import build_app
from responder.config import settings_from_dict
from responder.store import Store
from tests.conftest import offline_config

TOKEN = "fuzz-token-0123456789abcdefgh"


@pytest.fixture
def api_schema(tmp_path: Path) -> Iterator[object]:
    tokens = [{"name": "fuzz", "scopes": ["send", "read", "admin"], "token": TOKEN}]
    data = offline_config(
        tmp_path,
        api={"listen": "127.0.0.1:0", "tokens": tokens, "rate_limit": "100000/second"},
    )
    config = settings_from_dict(data, source=str(tmp_path / "config.toml"), environ={})
    app = build_app(config, store=Store(config.store.path))
    app.plugins.hook.responder_startup(app=app)
    server = ApiServer(ApiContext.for_app(app)).start()
    document = httpx.get(f"{server.url}/v1/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=server.url)
    try:
        yield schema
    finally:
        server.stop()
        app.close()
        app.store.close()


def test_the_api_conforms_to_its_openapi_document(api_schema):
    labels = []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case):
            case.call_and_validate(
                headers={"Authorization": f"Bearer {TOKEN}"},
                # Rules the document cannot state (api.max_text, a blank text, a time a
                # year ahead, a phone number's form) refuse some schema-valid requests.
                excluded_checks=[positive_data_acceptance],
            )

        check()
    assert "POST /v1/messages" in labels and "PUT /v1/optouts/{number}" in labels
