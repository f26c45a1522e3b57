"""Finding and loading plugins.

Plugins come from four places: built-ins (``plugins/`` in the source tree, installed as
the package ``responder_plugins``), distributions with an entry point in the ``responder``
group, dotted module names (``[plugins] modules``) and drop-in ``.py`` files
(``[plugins] paths``). Each is registered with pluggy through an isolating stand-in
(``responder.isolation``), so that no implementation can raise into the core.

A plugin that fails to import is a problem of one line (the traceback is logged at debug
level). A plugin found twice (an entry point and ``[plugins] modules``, say) is loaded
once, and a plugin with no ``@hookimpl`` function does nothing: both are warnings.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import sys
import traceback
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pluggy
import structlog

from responder import hookspecs
from responder.config import ConfigSection, Settings, Table, type_name
from responder.isolation import (
    CORE,
    PROJECT,
    CoreImplementations,
    HookCalls,
    isolating_proxy,
)

BUILTINS: Final = {
    "keywords": "responder_plugins.keywords",
    "handover": "responder_plugins.handover",
    "optout": "responder_plugins.optout",
    "guard": "responder_plugins.guard",
    "webhook": "responder_plugins.webhook",
    "conversations": "responder_plugins.conversations",
}
DEFAULT_ENABLED: Final = ("keywords", "handover", "optout", "guard", "webhook", "conversations")
"""Registered in the order of ``BUILTINS`` whatever the order of ``plugins.enabled``:
handover before optout, so that optout's ``tryfirst`` reply is asked first; conversations
after webhook, so that a flow (unmarked, like webhook's reply) is asked before a
reply-mode target."""
LOAD_PLUGINS_ENV: Final = "RESPONDER_LOAD_PLUGINS"
TRACE_ENV: Final = "RESPONDER_TRACE_HOOKS"

log = structlog.get_logger("responder.plugin_host")


@dataclass(frozen=True)
class PluginInfo:
    """What ``responder plugins`` shows about one plugin."""

    name: str
    source: str
    """"built-in", "entry point", "module" or "path"."""
    origin: str
    """The module, distribution or file it came from."""
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class LoadWarning:
    """Something about loading a plugin that works but is probably not what was meant."""

    event: str
    """The log event: "plugin_loaded_twice", "plugin_without_hooks", "plugin_hook_not_marked"."""
    plugin: str
    text: str
    """The sentence ``responder check`` prints."""


def _unmarked_hooks(plugin: Any) -> list[str]:
    """Functions named after a hook but not marked ``@hookimpl``: never called."""
    names = []
    for attr in dir(plugin):
        if not attr.startswith(f"{PROJECT}_") or not hasattr(
            getattr(hookspecs, attr, None), "responder_spec"
        ):
            continue
        try:
            function = getattr(plugin, attr)
        except Exception:
            continue
        if inspect.isroutine(function) and getattr(function, f"{PROJECT}_impl", None) is None:
            names.append(attr)
    return names


def _identity(plugin: Any) -> object:
    """What makes two loaded plugins the same: a module's file, else the object itself."""
    file = getattr(plugin, "__file__", None) if isinstance(plugin, types.ModuleType) else None
    return Path(file).resolve() if file else id(plugin)


_OWN_FILES: Final = str(Path(__file__).resolve().parent) + os.sep


def _raised_at(err: BaseException) -> str:
    """ " (at FILE line N)": the innermost line of the plugin's own code in the traceback."""
    if isinstance(err, SyntaxError):  # its message names the file and line already
        return ""
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if not frame.filename.startswith(("<", _OWN_FILES)) and "importlib" not in frame.filename:
            return f" (at {frame.filename} line {frame.lineno})"
    return ""


def _one_line(err: BaseException) -> str:
    """An exception as one line: "ImportError: No module named 'x' (at FILE line N)"."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}{': ' + message if message else ''}{_raised_at(err)}"


class PluginHost:
    """The plugin manager for one configuration: which plugins run and in what order."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        extra: Iterable[tuple[str, Any]] = (),
        environ: Mapping[str, str] | None = None,
        include_configured: bool = True,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self.problems: list[str] = []
        self.warnings: list[LoadWarning] = []
        """Shown by ``responder check`` and ``responder plugins``, logged by ``build_app``."""
        self._loaded: dict[object, str] = {}
        """Each registered plugin's identity, and how it was loaded."""
        trace = environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
        self.calls = HookCalls(trace=trace)
        allowed = environ.get(LOAD_PLUGINS_ENV)
        self._allowed = None if allowed is None else {n.strip() for n in allowed.split(",") if n}
        chosen = settings.plugins if settings is not None else None
        enabled = chosen.enabled if chosen and chosen.enabled is not None else DEFAULT_ENABLED
        disabled = set(chosen.disabled) if chosen else set()
        order = list(BUILTINS)
        for name in sorted(enabled, key=lambda n: order.index(n) if n in order else len(order)):
            if name not in BUILTINS:
                self.problems.append(
                    f"{settings.source if settings else '<config>'}: plugins.enabled: "
                    f"no built-in plugin {name!r} "
                    f"(built-ins: {', '.join(BUILTINS)})"
                )
            elif name not in disabled:
                self._load(
                    name, "built-in", BUILTINS[name], functools.partial(_import, BUILTINS[name])
                )
        for entry in importlib.metadata.entry_points(group=PROJECT):
            if entry.name not in disabled:
                dist = entry.dist.name if entry.dist else entry.value
                self._load(entry.name, "entry point", dist, entry.load)
        if include_configured and chosen is not None:
            for module in chosen.modules:
                self._load(module, "module", module, functools.partial(_import, module))
            for path in chosen.paths:
                for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
                    self._load(file.stem, "path", str(file), functools.partial(_import_file, file))
        for name, plugin in extra:
            self._register(name, "test", name, plugin)
        self._core = CoreImplementations(self.calls.state)
        self._place_core()

    def _load(self, name: str, source: str, origin: str, loader: Callable[[], Any]) -> None:
        if self._allowed is not None and name not in self._allowed:
            return
        try:
            plugin = loader()
        except Exception as err:
            self.problems.append(
                f"plugin {name!r} ({source} {origin}) failed to load: {_one_line(err)}"
            )
            log.debug(
                "plugin_load_failed", plugin=name, source=source, origin=origin, exc_info=True
            )
            return
        self._register(name, source, origin, plugin)

    def _warn(self, event: str, plugin: str, text: str) -> None:
        self.warnings.append(LoadWarning(event=event, plugin=plugin, text=text))

    def _register(self, name: str, source: str, origin: str, plugin: Any) -> None:
        described = f"plugin {name!r} ({source} {origin})"
        first = self._loaded.get(_identity(plugin))
        if first is not None:
            self._warn(
                "plugin_loaded_twice",
                name,
                f"{described} is {first}, loaded already: it is loaded once; "
                "list it in one place only",
            )
            return
        if self.pm.has_plugin(name) or name == CORE:
            self.problems.append(f"{described}: that name is taken")
            return
        proxy, hooks = isolating_proxy(name, plugin, self.calls, self.pm)
        try:
            self.pm.register(proxy, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as err:
            if self.pm.is_registered(proxy):
                self.pm.unregister(proxy)
            self.problems.append(f"plugin {name!r} ({source} {origin}) is invalid: {err}")
            return
        self.infos.append(PluginInfo(name=name, source=source, origin=origin, hooks=hooks))
        self._loaded[_identity(plugin)] = described
        unmarked = _unmarked_hooks(plugin)
        if not hooks:
            hint = f" ({', '.join(unmarked)} lacks it)" if unmarked else ""
            self._warn(
                "plugin_without_hooks",
                name,
                f"{described} has no hook implementation, so it does nothing: mark each "
                f"hook function with @responder.hookimpl{hint}",
            )
        elif unmarked:
            self._warn(
                "plugin_hook_not_marked",
                name,
                f"{described}: {', '.join(unmarked)} is not marked @responder.hookimpl, "
                "so it is never called",
            )

    def _place_core(self) -> None:
        """(Re-)register the core's own implementations after every plugin, so that pluggy
        calls its ``trylast`` before-send implementation after all the others."""
        if self.pm.is_registered(self._core):
            self.pm.unregister(self._core)
        self.pm.register(self._core, name=CORE)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def names(self) -> list[str]:
        return [info.name for info in self.infos]

    def implementations(self, hook: str) -> list[tuple[str, Callable[..., Any]]]:
        """A hook's (plugin name, caller) pairs in pluggy's call order, wrappers left out.

        Each caller takes the hook's arguments by keyword and passes on only those the
        implementation asked for, as pluggy does. For the hooks whose every result is
        credited to its plugin (config sections, checks, commands); the message hooks are
        called through pluggy (``self.hook``), wrappers and all.
        """
        caller = getattr(self.pm.hook, hook)
        return [
            (impl.plugin_name, _caller(impl))
            for impl in reversed(caller.get_hookimpls())
            if not (impl.wrapper or impl.hookwrapper or impl.plugin_name == CORE)
        ]

    def parse_configs(self, settings: Settings) -> tuple[dict[str, Any], list[str]]:
        """Parse every plugin's section; returns (configs by section name, problems)."""
        problems: list[str] = []
        configs: dict[str, Any] = {}
        for plugin_name, function in self.implementations("responder_config_section"):
            section = function()
            if section is None:
                continue
            if not isinstance(section, ConfigSection):
                problems.append(
                    f"plugin {plugin_name!r}: responder_config_section must return "
                    f"a ConfigSection, got {type_name(section)}"
                )
                continue
            table = Table(
                settings.sections.get(section.name, {}),
                file=settings.source,
                prefix=section.name,
                problems=problems,
            )
            try:
                configs[section.name] = section.parse(table)
            except Exception as err:
                log.debug(
                    "plugin_config_failed",
                    plugin=plugin_name,
                    section=section.name,
                    exc_info=True,
                )
                problems.append(
                    f"{settings.source}: [{section.name}]: the plugin {plugin_name!r} "
                    f"failed to read it: {_one_line(err)}"
                )
                continue
            table.finish()
        known_builtin_sections = set(BUILTINS)
        for name in settings.sections:
            if name not in configs and name not in known_builtin_sections:
                problems.append(
                    f"{settings.source}: [{name}]: unknown section: no loaded plugin reads it "
                    f"(plugins: {', '.join(self.names()) or 'none'})"
                )
        return configs, problems


def _caller(impl: pluggy.HookImpl) -> Callable[..., Any]:
    def call(**kwargs: Any) -> Any:
        return impl.function(*[kwargs[name] for name in impl.argnames])

    return call


def _import(module: str) -> types.ModuleType:
    return importlib.import_module(module)


def _import_file(path: Path) -> types.ModuleType:
    name = f"responder_dropin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
