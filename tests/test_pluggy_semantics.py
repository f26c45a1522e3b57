"""The message hooks are called through pluggy, so its features behave as pluggy documents.

Every test here is table-driven over the four message hooks (``CASES``): new-style and
old-style wrappers, ``specname``, ``tryfirst``/``trylast`` order, and the isolation of a
raising implementation and of a raising wrapper. ``tests/test_plugin_docs.py`` checks that
each feature has a test covering every message hook, named ``test_<feature>_...``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from structlog.testing import capture_logs

from responder import Deferred, Message, Reply, Veto, hookimpl, pipeline
from responder.app import App
from responder.isolation import BEFORE_SEND, FILTER, MESSAGE_HOOKS, OBSERVE, REPLY
from responder.store import StoreError
from tests.conftest import offline_config

MESSAGE = Message(
    id=1, gateway_id=1, src="13800138000", dst="", text="hi", received_at=None, raw=""
)
GIVEN = Reply(text="hi", plugin="earlier")
"""The reply the before-send hook is called with."""


@dataclass(frozen=True)
class Case:
    """One message hook: what a plain implementation returns, what a wrapper then sees,
    what the core makes of it, and the same for a wrapper's replacement."""

    hook: str
    plain: Callable[[Reply | None], Any]
    """What the plain implementation returns (given the reply, for before-send)."""
    seen: Any
    """The result a wrapper sees when only the plain implementation ("plain") answers."""
    unwrapped: Any
    """The core's outcome then (``outcome``)."""
    replacement: Any
    """What a wrapper returns instead."""
    replaced: Any
    """The core's outcome when the wrapper (plugin "wrapper") replaced the result."""


CASES = [
    Case(
        hook=FILTER,
        plain=lambda reply: "spam",
        seen="spam",
        unwrapped=("spam", "plain"),
        replacement="wrapped",
        replaced=("wrapped", "wrapper"),
    ),
    Case(
        hook=REPLY,
        plain=lambda reply: Reply(text="plain answer"),
        seen=Reply(text="plain answer", plugin="plain"),
        unwrapped=Reply(text="plain answer", plugin="plain"),
        replacement=Reply(text="wrapped"),
        replaced=Reply(text="wrapped", plugin="wrapper"),
    ),
    Case(
        hook=BEFORE_SEND,
        plain=lambda reply: dataclasses.replace(reply, text=f"{reply.text} changed"),
        seen=Reply(text="hi changed", plugin="earlier"),
        unwrapped=Reply(text="hi changed", plugin="earlier"),
        replacement=Veto("wrapped"),
        replaced=Veto("wrapped", plugin="wrapper"),
    ),
    Case(
        hook=OBSERVE,
        plain=lambda reply: "noted",
        seen=["noted"],
        unwrapped=["noted"],
        replacement=["wrapped"],
        replaced=["wrapped"],
    ),
]
EACH_HOOK = pytest.mark.parametrize("case", CASES, ids=[case.hook for case in CASES])


def outcome(app: App, hook: str) -> Any:
    """What the core makes of a message hook's result, asked as the pipeline asks it."""
    if hook == FILTER:
        decision = pipeline.decide(app, MESSAGE)
        return (decision.dropped, decision.decided_by)
    if hook == REPLY:
        return pipeline.answer(app, MESSAGE)
    if hook == BEFORE_SEND:
        return pipeline.before_send(app, MESSAGE, GIVEN)
    return app.plugins.hook.responder_observe(app=app, message=MESSAGE, reply=None, dropped=None)


class Plugin:
    """A plugin made of the given functions, each under its attribute name."""

    def __init__(self, **functions: Callable[..., Any]) -> None:
        self.__dict__.update(functions)


def plain(
    hook: str,
    result: Callable[[Reply | None], Any],
    calls: list[str] | None = None,
    name: str = "",
    **opts: Any,
) -> Callable[..., Any]:
    """A plain implementation of ``hook`` returning ``result(reply)``; it takes the
    arguments the hook has, by position, and notes ``name`` in ``calls``."""
    if hook == BEFORE_SEND:

        def with_reply(message: Message, reply: Reply) -> Any:
            if calls is not None:
                calls.append(name)
            return result(reply)

        return hookimpl(**opts)(with_reply)

    def without_reply(message: Message) -> Any:
        if calls is not None:
            calls.append(name)
        return result(None)

    return hookimpl(**opts)(without_reply)


def answers(case: Case, **opts: Any) -> Plugin:
    return Plugin(**{case.hook: plain(case.hook, case.plain, **opts)})


def raising(hook: str) -> Plugin:
    def fail(reply: Reply | None) -> Any:
        raise RuntimeError("plugin bug")

    return Plugin(**{hook: plain(hook, fail)})


KEEP = object()


def new_style(
    seen: list[Any], replacement: Any = KEEP, fail: str = "", name: str = "", **opts: Any
) -> Callable[..., Any]:
    """A ``wrapper=True`` implementation noting what it sees (for any message hook: its
    ``reply`` has a default, so the hooks without one leave it None)."""

    def wrapper(message: Message, reply: Reply | None = None) -> Iterator[None]:
        seen.append((f"{name}>", message.text, reply))
        if fail == "before":
            raise RuntimeError("wrapper bug before its yield")
        if fail == "no yield":
            return None  # type: ignore[return-value]
        result = yield
        seen.append((f"<{name}", result))
        if fail == "after":
            raise RuntimeError("wrapper bug after its yield")
        if fail == "twice":
            yield
        return result if replacement is KEEP else replacement

    return hookimpl(wrapper=True, **opts)(wrapper)


def old_style(
    seen: list[Any], replacement: Any = KEEP, fail: str = "", name: str = "", **opts: Any
) -> Callable[..., Any]:
    """A ``hookwrapper=True`` implementation noting what it sees."""

    def wrapper(message: Message, reply: Reply | None = None) -> Iterator[None]:
        seen.append((f"{name}>", message.text, reply))
        if fail == "before":
            raise RuntimeError("wrapper bug before its yield")
        if fail == "no yield":
            return
        result = yield
        seen.append((f"<{name}", result.get_result()))
        if replacement is not KEEP:
            result.force_result(replacement)
        if fail == "after":
            raise RuntimeError("wrapper bug after its yield")
        if fail == "twice":
            yield

    return hookimpl(hookwrapper=True, **opts)(wrapper)


@pytest.fixture
def app_with(make_app, tmp_path) -> Callable[..., App]:
    """A dry-run app with only the given plugins, registered in the given order."""

    def make(*plugins: tuple[str, Any]) -> App:
        data = offline_config(tmp_path, plugins={"enabled": []})
        return make_app(data, extra_plugins=plugins, dry_run=True)

    return make


# -- wrappers ------------------------------------------------------------------------------


@EACH_HOOK
@pytest.mark.parametrize("style", [new_style, old_style], ids=["wrapper", "hookwrapper"])
def test_wrapper_sees_the_arguments_and_the_result(app_with, case, style):
    seen: list[Any] = []
    app = app_with(("plain", answers(case)), ("wrapper", Plugin(**{case.hook: style(seen)})))

    assert outcome(app, case.hook) == case.unwrapped
    given = GIVEN if case.hook == BEFORE_SEND else None
    assert seen == [(">", "hi", given), ("<", case.seen)]


@EACH_HOOK
def test_wrapper_may_replace_the_result(app_with, case):
    wrapper = new_style([], replacement=case.replacement)
    app = app_with(("plain", answers(case)), ("wrapper", Plugin(**{case.hook: wrapper})))

    assert outcome(app, case.hook) == case.replaced


@EACH_HOOK
def test_hookwrapper_may_replace_the_result_with_force_result(app_with, case):
    wrapper = old_style([], replacement=case.replacement)
    app = app_with(("plain", answers(case)), ("wrapper", Plugin(**{case.hook: wrapper})))

    assert outcome(app, case.hook) == case.replaced


@EACH_HOOK
def test_wrapper_replacement_of_the_wrong_type_is_ignored(app_with, case):
    if case.hook == OBSERVE:
        pytest.skip("observe's result is ignored by the core: any type goes")
    wrapper = new_style([], replacement=42)
    app = app_with(("plain", answers(case)), ("wrapper", Plugin(**{case.hook: wrapper})))

    with capture_logs() as logs:
        assert outcome(app, case.hook) == case.unwrapped
    assert {"event": "plugin_bad_result", "plugin": "wrapper", "hook": case.hook} in [
        {k: entry.get(k) for k in ("event", "plugin", "hook")} for entry in logs
    ]


# -- specname ------------------------------------------------------------------------------


@EACH_HOOK
def test_specname_implementation_is_called(app_with, case):
    named = Plugin(my_implementation=plain(case.hook, case.plain, specname=case.hook))
    app = app_with(("plain", named))

    assert outcome(app, case.hook) == case.unwrapped
    [info] = app.plugins.infos
    assert info.hooks == (case.hook,)


@EACH_HOOK
def test_specname_wrapper_is_called(app_with, case):
    seen: list[Any] = []
    wrapper = Plugin(around=new_style(seen, specname=case.hook))
    app = app_with(("plain", answers(case)), ("wrapper", wrapper))

    assert outcome(app, case.hook) == case.unwrapped
    assert seen[-1] == ("<", case.seen)


# -- order ---------------------------------------------------------------------------------


@EACH_HOOK
def test_order_tryfirst_trylast_and_last_registered_first(app_with, case):
    calls: list[str] = []
    seen: list[Any] = []

    def noted(name: str, **opts: Any) -> Plugin:
        return Plugin(**{case.hook: plain(case.hook, lambda reply: None, calls, name, **opts)})

    app = app_with(
        ("outer", Plugin(**{case.hook: new_style(seen, name="outer", tryfirst=True)})),
        ("last", noted("last", trylast=True)),
        ("early", noted("early")),
        ("first", noted("first", tryfirst=True)),
        ("inner", Plugin(**{case.hook: old_style(seen, name="inner")})),
        ("late", noted("late")),
    )

    outcome(app, case.hook)

    assert calls == ["first", "late", "early", "last"]
    assert [entry[0] for entry in seen] == ["outer>", "inner>", "<inner", "<outer"]


@EACH_HOOK
def test_order_first_result_wins_among_plain_implementations(app_with, case):
    if case.hook == OBSERVE:
        pytest.skip("observe is not first-result: every implementation is called")
    calls: list[str] = []
    app = app_with(
        ("plain", Plugin(**{case.hook: plain(case.hook, case.plain, calls, "plain")})),
        ("first", Plugin(**{case.hook: plain(case.hook, case.plain, calls, "first")})),
    )

    result = outcome(app, case.hook)

    if case.hook == BEFORE_SEND:  # a chain: both change the reply, in order
        assert (calls, result.text) == (["first", "plain"], "hi changed changed")
    else:
        assert calls == ["first"]
        assert result != case.unwrapped  # signed by "first", not "plain"


# -- isolation -----------------------------------------------------------------------------


def failures(logs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (entry.get("plugin"), entry.get("hook"), entry.get("wrapper"))
        for entry in logs
        if entry["event"] == "plugin_failed"
    ]


@EACH_HOOK
def test_raising_implementation_is_isolated_and_counts_as_none(app_with, case):
    app = app_with(("plain", answers(case)), ("broken", raising(case.hook)))

    with capture_logs() as logs:
        assert outcome(app, case.hook) == case.unwrapped
    assert failures(logs) == [("broken", case.hook, None)]
    assert app.plugins.calls.failures == {"broken": 1}


@EACH_HOOK
@pytest.mark.parametrize("style", [new_style, old_style], ids=["wrapper", "hookwrapper"])
@pytest.mark.parametrize(
    ("fail", "logged"),
    [
        ("before", "before its yield"),
        ("after", "after its yield"),
        ("no yield", "before its yield"),
        ("twice", "yielded twice"),
    ],
)
def test_raising_wrapper_is_isolated_and_the_result_unaffected(app_with, case, style, fail, logged):
    wrapper = style([], replacement=case.replacement, fail=fail)
    app = app_with(("plain", answers(case)), ("broken", Plugin(**{case.hook: wrapper})))

    with capture_logs() as logs:
        assert outcome(app, case.hook) == case.unwrapped
    assert failures(logs) == [("broken", case.hook, logged)]
    assert app.plugins.calls.failures == {"broken": 1}


@EACH_HOOK
def test_raising_wrapper_leaves_the_other_wrappers_their_part(app_with, case):
    seen: list[Any] = []
    app = app_with(
        ("plain", answers(case)),
        ("outer", Plugin(**{case.hook: new_style(seen, name="outer")})),
        ("broken", Plugin(**{case.hook: new_style([], fail="after")})),
    )

    assert outcome(app, case.hook) == case.unwrapped
    assert seen[-1] == ("<outer", case.seen)


def swallowing(case: Case, style: str) -> Callable[..., Any]:
    """A wrapper that turns any exception from inside into its replacement result."""
    if style == "wrapper":

        def new(message: Message) -> Iterator[None]:
            try:
                yield
            except Exception:
                return case.replacement
            return None

        return hookimpl(wrapper=True)(new)

    def old(message: Message) -> Iterator[None]:
        outcome = yield
        outcome.force_result(case.replacement)

    return hookimpl(hookwrapper=True)(old)


@EACH_HOOK
@pytest.mark.parametrize("style", ["wrapper", "hookwrapper"])
def test_raising_implementation_store_error_goes_through_every_wrapper(app_with, case, style):
    def store_fails(reply: Reply | None) -> Any:
        raise StoreError("disk I/O error")

    swallow = swallowing(case, style)
    app = app_with(
        ("wrapper", Plugin(**{case.hook: swallow})),
        ("broken", Plugin(**{case.hook: plain(case.hook, store_fails)})),
    )

    with pytest.raises(StoreError):
        outcome(app, case.hook)


# -- the before-send chain and Deferred, through pluggy ------------------------------------------


def test_before_send_implementation_with_a_default_reply_sees_the_chain(app_with):
    def exclaim(message: Message, reply: Reply | None = None) -> Reply:
        assert reply is not None
        return dataclasses.replace(reply, text=f"{reply.text}!")

    app = app_with(
        ("exclaim", Plugin(responder_before_send=hookimpl(exclaim))),
        (
            "upper",
            Plugin(
                responder_before_send=plain(
                    BEFORE_SEND, lambda r: r and dataclasses.replace(r, text=r.text.upper())
                )
            ),
        ),
    )

    assert pipeline.before_send(app, MESSAGE, GIVEN) == Reply(text="HI!", plugin="earlier")


def test_before_send_veto_stops_the_chain_and_names_its_plugin(app_with):
    calls: list[str] = []
    app = app_with(
        ("after", Plugin(responder_before_send=plain(BEFORE_SEND, lambda r: None, calls, "after"))),
        ("quiet", Plugin(responder_before_send=plain(BEFORE_SEND, lambda r: Veto("quiet hours")))),
    )

    assert pipeline.before_send(app, MESSAGE, GIVEN) == Veto("quiet hours", plugin="quiet")
    assert calls == []


def test_reply_deferred_wins_and_is_signed_with_its_plugin(app_with):
    calls: list[str] = []
    app = app_with(
        ("later", Plugin(responder_reply=plain(REPLY, lambda r: Reply("x"), calls, "later"))),
        ("crm", Plugin(responder_reply=plain(REPLY, lambda r: Deferred("crm:desk")))),
    )

    decision = pipeline.decide(app, MESSAGE)

    assert decision.deferred == Deferred("crm:desk", plugin="crm")
    assert (decision.reply, decision.reason, calls) == (None, "awaiting crm:desk", [])


def test_fallback_reply_skips_the_plugin_and_keeps_isolation(app_with):
    app = app_with(
        ("other", Plugin(responder_reply=plain(REPLY, lambda r: Reply("fallback")))),
        ("broken", raising(REPLY)),
        ("crm", Plugin(responder_reply=plain(REPLY, lambda r: Deferred("crm:desk")))),
    )

    assert app.fallback_reply(MESSAGE, skip="crm") == Reply("fallback", plugin="other")
    assert app.plugins.calls.failures == {"broken": 1}


def test_every_message_hook_has_a_case():
    assert sorted(case.hook for case in CASES) == sorted(MESSAGE_HOOKS)
