"""The staff console in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright against ``responder run`` as a subprocess, with the API and the console on,
reading from and sending to the simulator.

Screenshots of every page (desktop and 375 px wide) are saved in
tests/browser/screenshots/ for a reviewer (docs/console/ holds a copy for the docs).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")

from responder.sandbox import Sandbox  # noqa: E402
from tests.conftest import PASSWORD, DaemonProcess, config_dict, wait_for, write_config  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
STAFF = "staff-browser-token-0123456789abcdefgh"
CUSTOMER = "13800138000"
INTRUDER = "13700137000"
SCRIPT = "<script>alert(1)</script>"
SHOTS = Path(__file__).parent / "screenshots"
WAIT_MS = 15_000

# Under CI nothing skips: .ci/run installs chromium, and its absence fails the tests.
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and os.environ.get("CI", "").lower() != "true",
    reason="needs Debian's chromium (apt-get install chromium)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(name="acct", password=PASSWORD, min_read_interval=0) as server:
        yield server


@pytest.fixture(scope="module")
def console_url(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("daemon")
    port = free_port()
    data = config_dict(
        sandbox,
        folder,
        api={
            "enabled": True,
            "listen": f"127.0.0.1:{port}",
            "tokens": [{"name": "alice", "scopes": ["console"], "token": STAFF}],
        },
        console={"enabled": True},
        replies={"retry_initial": 0.1, "retry_max": 0.5, "signature": "【示例】"},
        gateway={"sender": "10690"},
    )
    daemon = DaemonProcess(write_config(folder / "config.toml", data), folder / "daemon.log")
    try:
        daemon.wait_for_log("api_started")
        yield f"http://127.0.0.1:{port}/console"
    finally:
        daemon.process.terminate()
        daemon.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, console_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    context.set_default_timeout(WAIT_MS)
    tab = context.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    tab.dialogs = dialogs
    yield tab
    context.close()


def sign_in(page: Any, console_url: str) -> None:
    page.goto(f"{console_url}/login")
    page.get_by_label("访问令牌").fill(STAFF)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(f"{console_url}/inbox")


def shoot(page: Any, name: str) -> None:
    """The page at full width and at 375 px."""
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    size = page.viewport_size
    page.set_viewport_size({"width": 375, "height": 812})
    page.screenshot(path=str(SHOTS / f"{name}-375.png"), full_page=True)
    page.set_viewport_size(size)


def test_staff_answer_a_customer_who_asked_for_a_person_and_hand_back(
    page: Any, console_url: str, sandbox: Sandbox
) -> None:
    page.goto(f"{console_url}/login")
    shoot(page, "login")
    sign_in(page, console_url)
    sandbox.inject(CUSTOMER, "人工")
    # No reload: the inbox's polling brings the customer in, among those waiting.
    waiting = page.locator("section[aria-labelledby=waiting-title]")
    waiting.get_by_role("link", name=CUSTOMER).wait_for()
    shoot(page, "inbox")
    waiting.get_by_role("link", name=CUSTOMER).click()
    page.get_by_text("已为您转接人工客服").wait_for()
    box = page.get_by_label("回复内容")
    box.fill("您好，我是客服小王，请问有什么可以帮您？")
    assert "1 条短信" in page.locator("#reply-counter").inner_text()
    shoot(page, "conversation")
    page.get_by_role("button", name="发送").click()
    page.get_by_role("status").filter(has_text="已提交发送").wait_for()
    page.get_by_role("button", name="交还机器人").click()
    page.get_by_role("status").filter(has_text="已交还机器人").wait_for()
    assert page.get_by_role("button", name="转人工接管").is_visible()
    sent = wait_for(
        lambda: [s for s in sandbox.sent() if "客服小王" in s.text and CUSTOMER in s.numbers]
    )
    assert sent[0].text == "【示例】您好，我是客服小王，请问有什么可以帮您？"


def test_a_customer_script_is_shown_as_text(page: Any, console_url: str, sandbox: Sandbox) -> None:
    sign_in(page, console_url)
    sandbox.inject(INTRUDER, SCRIPT)
    row = page.locator("li.row", has_text=INTRUDER)
    row.wait_for()
    assert row.locator(".text").inner_text() == SCRIPT
    row.get_by_role("link", name=INTRUDER).click()
    page.locator(".line.in .text", has_text="alert(1)").first.wait_for()
    assert page.dialogs == []
    assert page.evaluate("document.querySelectorAll('main script').length") == 0


def test_a_form_posted_without_the_csrf_token_is_refused(page: Any, console_url: str) -> None:
    sign_in(page, console_url)
    page.goto(f"{console_url}/optouts")
    page.eval_on_selector("form[action$='/optouts/add'] input[name=csrf]", "e => e.remove()")
    page.get_by_label("添加号码").fill("13600136000")
    with page.expect_response(f"{console_url}/optouts/add") as answer:
        page.get_by_role("button", name="添加").click()
    assert answer.value.status == 403
    assert "CSRF" in page.content()
    page.goto(f"{console_url}/optouts")
    assert "13600136000" not in page.locator("main").inner_text()


def test_every_page_renders_for_screenshots(page: Any, console_url: str) -> None:
    sign_in(page, console_url)
    page.goto(f"{console_url}/rules")
    page.get_by_label("短信内容").fill("退订")
    page.get_by_role("button", name="测试").click()
    page.get_by_text("optout unsubscribe").wait_for()
    shoot(page, "rules")
    page.goto(f"{console_url}/optouts")
    page.get_by_label("添加号码").fill("13500135000")
    page.get_by_role("button", name="添加").click()
    page.get_by_role("status").filter(has_text="13500135000").wait_for()
    shoot(page, "optouts")
    page.goto(f"{console_url}/health")
    page.locator("svg[role=img]").wait_for()
    shoot(page, "health")
    page.get_by_role("link", name="English").click()
    page.get_by_role("heading", name="Health").wait_for()
    shoot(page, "health-en")


COUNTED = [
    "好",
    "您好，我是客服小王，请问有什么可以帮您？",
    "一" * 66,
    "一" * 67,
    "【示例】您好" + "二" * 60,
    "您的订单已发货，预计明天送达。如有问题请回复人工，我们会尽快处理。感谢您的耐心等待，祝您生活愉快！"
    "另外，本周会员日全场八折，欢迎光临。",
    "Your order has shipped and will arrive tomorrow. Reply HELP for a person, STOP to "
    "unsubscribe. Thank you for waiting!",
    "三" * 200,
]


def test_the_reply_counter_counts_as_the_daemon_splits(
    page: Any, console_url: str, tmp_path: Path
) -> None:
    from responder.app import build_app
    from responder.config import settings_from_dict
    from responder.pipeline import compose
    from tests.conftest import offline_config

    data = offline_config(tmp_path, replies={"signature": "【示例】", "max_parts": 3})
    app = build_app(settings_from_dict(data, environ={}), dry_run=True)
    try:
        expected = []
        for text in COUNTED:
            composed = compose(app, text)
            left = None if composed.truncated else 70 - len(composed.parts[-1])
            expected.append([len(composed.parts), left])
    finally:
        app.close()
    sign_in(page, console_url)
    counted = page.evaluate(
        """texts => texts.map(text => {
            const found = window.responderCount(text, 70, "【示例】", "prefix", 3);
            return [found.parts, found.truncated ? null : found.left];
        })""",
        COUNTED,
    )
    assert counted == expected
