"""Hook implementations that cannot raise: the stand-ins pluggy calls instead of a plugin's.

Each plugin is registered with pluggy through a ``PluginProxy`` holding every function
pluggy takes for an implementation, whatever its name (``specname``), each wrapped so
that it cannot raise: a plain implementation's exception is logged with the plugin's name
and counts as returning None (pluggy would otherwise stop the remaining
implementations); a wrapper's (new or old style, before or after its yield) is logged and
the call goes on as if the wrapper were absent. A store error is never isolated.
``RESPONDER_TRACE_HOOKS=1`` logs every call with its arguments and result.

The message hooks are called through pluggy (``responder.pipeline``), so wrappers,
``tryfirst``/``trylast`` and ``specname`` work as pluggy documents. Their stand-ins also
check results and sign them with the plugin (``Reply.plugin``, ``Deferred.plugin``,
``Veto.plugin``, ``CallState.dropped_by``), and carry the before-send chain: each
implementation gets the reply as changed so far, and the core's own ``trylast``
implementation (``CORE``, registered after every plugin) returns it, so that wrappers
see the final outcome.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, Final

import pluggy
import structlog

from responder.conversations import Staging
from responder.models import Deferred, Reply, Veto
from responder.store import StoreError

PROJECT: Final = "responder"
CORE: Final = "<core>"
"""The name the core's own implementations are registered under; no plugin can take it."""
_core_impl = pluggy.HookimplMarker(PROJECT)

log = structlog.get_logger("responder.plugin_host")


class CallState(threading.local):
    """What the isolating proxies record about the message hook call under way, per thread.

    Set and read by ``responder.pipeline`` around its hook calls; the class attributes
    are each thread's starting values.
    """

    chain: Reply | None = None
    """The reply as the before-send implementations changed it so far; None when no
    before-send chain is under way (the hook called other than by the pipeline)."""
    dropped_by: str = ""
    """The plugin whose filter reason won the last filter call."""
    staging: Staging | None = None
    """The conversation changes staged while a message is handled (see
    responder.conversations); an implementation that raises has its own dropped."""


class HookCalls:
    """Counts hook exceptions per plugin, traces calls when asked to, and keeps each
    thread's ``CallState``."""

    def __init__(self, trace: bool = False) -> None:
        self.failures: dict[str, int] = {}
        self.trace = trace
        self.state = CallState()

    def record_failure(self, plugin: str) -> None:
        self.failures[plugin] = self.failures.get(plugin, 0) + 1

    def failed(self, plugin: str, hook: str, what: str = "") -> None:
        """Count and log an implementation's exception (call from its ``except`` block)."""
        self.record_failure(plugin)
        if what:
            log.exception("plugin_failed", plugin=plugin, hook=hook, wrapper=what)
        else:
            log.exception("plugin_failed", plugin=plugin, hook=hook)

    def misbehaved(self, plugin: str, hook: str, what: str) -> None:
        """Count and log a wrapper that broke pluggy's protocol without raising."""
        self.record_failure(plugin)
        log.error("plugin_failed", plugin=plugin, hook=hook, wrapper=what)

    def traced(
        self, plugin: str, hook: str, names: Iterable[str], args: Any, kwargs: Any, result: Any
    ) -> None:
        arguments = dict(zip(names, args, strict=False)) | kwargs
        arguments.pop("app", None)
        log.info(
            "hook_call",
            plugin=plugin,
            hook=hook,
            result=_short(result),
            arguments={k: _short(v) for k, v in arguments.items()},
        )


def _short(value: Any) -> str:
    return repr(value)[:200]


_STORE_ERRORS: Final = (StoreError,)
"""The store failing is the daemon's problem, not a plugin's: never isolated."""
FILTER: Final = "responder_filter"
REPLY: Final = "responder_reply"
OBSERVE: Final = "responder_observe"
BEFORE_SEND: Final = "responder_before_send"
MESSAGE_HOOKS: Final = (FILTER, REPLY, OBSERVE, BEFORE_SEND)
"""The hooks called for every message, on the processing thread."""
_RESULT_TYPES: Final[dict[str, tuple[type, ...]]] = {
    FILTER: (str,),
    REPLY: (Reply, Deferred),
    BEFORE_SEND: (Reply, Veto),
}
"""What the firstresult message hooks may return besides None; anything else is ignored."""


def _bad_result(plugin: str, hook: str, result: Any) -> None:
    log.warning("plugin_bad_result", plugin=plugin, hook=hook, got=type(result).__name__)


def _settle(plugin: str, hook: str, result: Any, state: CallState) -> Any:
    """A message hook's result as the call goes on with it: checked, and signed with the
    plugin that gave it (``Reply.plugin``, ``Deferred.plugin``, ``Veto.plugin``, or the
    ``dropped_by`` of a filter reason).

    An empty filter reason counts as None, so the next filter is asked.
    """
    if result is None:
        return None
    if not isinstance(result, _RESULT_TYPES[hook]):
        _bad_result(plugin, hook, result)
        return None
    if hook == FILTER:
        if not result:
            return None
        state.dropped_by = plugin
        return result
    if hook == BEFORE_SEND and isinstance(result, Reply):
        return result  # a changed reply keeps the plugin that answered
    if isinstance(result, (Reply, Deferred, Veto)) and not result.plugin:
        return dataclasses.replace(result, plugin=plugin)
    return result


def _reply_position(function: Callable[..., Any]) -> int | None:
    """Where ``reply`` is among the positional arguments pluggy passes; None when it is
    passed by keyword (it has a default) or not asked for."""
    positional = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    names = [p.name for p in positional]
    return names.index("reply") if "reply" in names else None


def _isolated(plugin: str, hook: str, function: Callable[..., Any], calls: HookCalls):
    """A plain implementation that cannot raise: an exception is logged and counts as None.

    For the message hooks the result is also checked and signed (``_settle``); a
    before-send implementation takes the reply from the chain under way and adds its
    change to it (a Reply), returning None so that the next one is called.
    """
    names = inspect.signature(function).parameters
    state = calls.state
    settles = hook in _RESULT_TYPES
    chained = hook == BEFORE_SEND
    position = _reply_position(function) if chained else None

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        chain = state.chain if chained else None
        if chain is not None:
            if position is not None:
                args = (*args[:position], chain, *args[position + 1 :])
            elif "reply" in kwargs:
                kwargs["reply"] = chain
        staging = state.staging
        mark = staging.mark() if staging is not None else 0
        try:
            result = function(*args, **kwargs)
        except _STORE_ERRORS:
            raise
        except Exception:
            if staging is not None:
                staging.rollback(mark)
            calls.failed(plugin, hook)
            return None
        if calls.trace:
            calls.traced(plugin, hook, names, args, kwargs, result)
        if not settles:
            return result
        result = _settle(plugin, hook, result, state)
        if chain is not None and isinstance(result, Reply):
            state.chain = result
            return None
        return result

    return call


def _wrapped_result(plugin: str, hook: str, given: Any, result: Any, state: CallState) -> Any:
    """What a wrapper returned, checked and signed when it replaced the result it was given;
    the given result when what it returned is of the wrong type."""
    if result is given or hook not in _RESULT_TYPES or result is None:
        return result
    if not isinstance(result, _RESULT_TYPES[hook]):
        _bad_result(plugin, hook, result)
        return given
    return _settle(plugin, hook, result, state)


def _isolated_wrapper(plugin: str, hook: str, function: Callable[..., Any], calls: HookCalls):
    """A new-style wrapper (``wrapper=True``) that cannot raise.

    One that raises (before its yield, after it, or that never yields, or yields twice)
    is logged and the call goes on as if it were absent: the result it was given stands.
    An exception from inside (a store error) is thrown into it, as pluggy does; it may
    handle any other, but a store error always goes on.
    """
    state = calls.state
    names = inspect.signature(function).parameters

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[None, Any, Any]:
        try:
            teardown = function(*args, **kwargs)
            next(teardown)
        except _STORE_ERRORS:
            raise
        except Exception:  # StopIteration too: it did not yield
            calls.failed(plugin, hook, "before its yield")
            return (yield)
        try:
            given = yield
        except BaseException as inner:
            return _thrown(plugin, hook, teardown, inner, calls)
        try:
            teardown.send(given)
        except StopIteration as stop:
            if calls.trace:
                calls.traced(plugin, hook, names, args, kwargs, stop.value)
            return _wrapped_result(plugin, hook, given, stop.value, state)
        except _STORE_ERRORS:
            raise
        except Exception:
            calls.failed(plugin, hook, "after its yield")
            return given
        _close(plugin, hook, teardown, calls)
        return given

    return wrapper


def _thrown(
    plugin: str,
    hook: str,
    teardown: Generator[None, Any, Any],
    inner: BaseException,
    calls: HookCalls,
) -> Any:
    """Throw an exception from inside the call into a wrapper at its yield, as pluggy does.

    The wrapper may turn it into a result, unless it is a store error or an interrupt:
    those always go on. A wrapper that raises another exception is logged, and the one
    from inside goes on as if the wrapper were absent.
    """
    try:
        teardown.throw(inner)
    except StopIteration as stop:
        if not _unstoppable(inner):
            return _wrapped_result(plugin, hook, None, stop.value, calls.state)
    except BaseException as err:
        if err is inner or _unstoppable(err):
            raise
        calls.failed(plugin, hook, "after its yield")
    else:
        _close(plugin, hook, teardown, calls)
    raise inner  # outside the handlers, so that its own context is kept


def _unstoppable(err: BaseException) -> bool:
    """An exception no plugin may turn into a result: a store error, or not an Exception
    (KeyboardInterrupt, SystemExit)."""
    return isinstance(err, _STORE_ERRORS) or not isinstance(err, Exception)


def _close(plugin: str, hook: str, teardown: Generator[None, Any, Any], calls: HookCalls) -> None:
    """A wrapper that yielded twice: logged, and closed."""
    calls.misbehaved(plugin, hook, "yielded twice")
    try:
        teardown.close()
    except _STORE_ERRORS:
        raise
    except Exception:
        calls.failed(plugin, hook, "on close")


def _isolated_hookwrapper(plugin: str, hook: str, function: Callable[..., Any], calls: HookCalls):
    """An old-style wrapper (``hookwrapper=True``) that cannot raise.

    One that raises (or never yields) is logged and the call's outcome is put back as it
    was before the wrapper saw it, so a ``force_result`` before the exception is undone.
    A store error in the outcome always stands.
    """
    state = calls.state
    names = inspect.signature(function).parameters

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[None, Any, None]:
        try:
            teardown = function(*args, **kwargs)
            next(teardown)
        except _STORE_ERRORS:
            raise
        except Exception:
            calls.failed(plugin, hook, "before its yield")
            yield
            return
        outcome: pluggy.Result[Any] = yield
        error = outcome.exception
        given = None if error is not None else outcome.get_result()
        try:
            teardown.send(outcome)
        except StopIteration:
            pass
        except _STORE_ERRORS:
            raise
        except Exception:
            calls.failed(plugin, hook, "after its yield")
            _restore(outcome, given, error)
            return
        else:
            _close(plugin, hook, teardown, calls)
            _restore(outcome, given, error)
            return
        if isinstance(error, _STORE_ERRORS):
            _restore(outcome, given, error)
        elif outcome.exception is None:
            result = outcome.get_result()
            if calls.trace:
                calls.traced(plugin, hook, names, args, kwargs, result)
            checked = _wrapped_result(plugin, hook, given, result, state)
            if checked is not result:
                outcome.force_result(checked)

    return wrapper


def _restore(outcome: pluggy.Result[Any], result: Any, error: BaseException | None) -> None:
    if error is not None:
        outcome.force_exception(error)
    else:
        outcome.force_result(result)


class PluginProxy:
    """A stand-in for a plugin whose hook implementations cannot raise.

    Compared by identity, unlike SimpleNamespace: two plugins with the same hooks differ.
    It holds the plugin's implementations under their own attribute names (pluggy reads
    ``specname`` and the other options from each function, copied by functools.wraps).
    """

    def __init__(self, plugin: Any, hooks: dict[str, Callable[..., Any]]) -> None:
        self.__dict__.update(hooks)
        self.__dict__["_responder_plugin"] = plugin

    @property
    def plugin(self) -> Any:
        """The plugin object it stands in for."""
        return self.__dict__["_responder_plugin"]


def isolating_proxy(
    name: str, plugin: Any, calls: HookCalls, pm: pluggy.PluginManager
) -> tuple[PluginProxy, tuple[str, ...]]:
    """The plugin's isolating stand-in, and the hooks it implements.

    Every attribute pluggy takes for an implementation is kept, whatever its name (one
    with ``specname`` implements the hook it names), with its options; plain
    implementations and both kinds of wrappers are isolated. Like pluggy, this looks
    attributes up statically: a property is not evaluated.
    """
    attributes: dict[str, Callable[..., Any]] = {}
    hooks = set()
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            continue
        function = getattr(plugin, attr)
        hook = opts.get("specname") or attr
        if opts.get("wrapper"):
            isolated = _isolated_wrapper(name, hook, function, calls)
        elif opts.get("hookwrapper"):
            isolated = _isolated_hookwrapper(name, hook, function, calls)
        else:
            isolated = _isolated(name, hook, function, calls)
        setattr(isolated, f"{PROJECT}_impl", opts)
        attributes[attr] = isolated
        hooks.add(hook)
    return PluginProxy(plugin, attributes), tuple(sorted(hooks))


class CoreImplementations:
    """The core's own implementation, registered after every plugin as ``CORE``."""

    def __init__(self, state: CallState) -> None:
        self.state = state

    @_core_impl(trylast=True)
    def responder_before_send(self, reply: Reply) -> Reply:
        """End the before-send chain with the reply as the implementations changed it, so
        that wrappers see (and may replace) the final outcome; without a chain under way,
        the reply given."""
        chain = self.state.chain
        return reply if chain is None else chain
