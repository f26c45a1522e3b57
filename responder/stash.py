"""Per-app plugin state: ``app.stash[key]``, typed by its ``StashKey`` (pytest's stash).

A plugin that keeps something for the life of one ``App`` (a worker it started, what a
simulated conversation has seen so far) makes a key at module level and stores the value
in ``app.stash``, rather than in a module-level dict keyed by the app. The stash goes away
with the app: a SIGHUP reload builds a new app with an empty stash.

    ENGINE = StashKey[Engine]()

    @hookimpl
    def responder_startup(app):
        app.stash[ENGINE] = Engine(app)

    @hookimpl
    def responder_shutdown(app):
        engine = app.stash.pop(ENGINE, None)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar, cast

T = TypeVar("T")
D = TypeVar("D")

__all__ = ["OPTED_OUT", "Stash", "StashKey"]


class StashKey(Generic[T]):
    """A key of a ``Stash``, for values of type ``T``: ``KEY = StashKey[int]()``.

    Every key is unique: two plugins' keys never clash, whatever they are called.
    """

    __slots__ = ()


class Stash:
    """A typed mapping from ``StashKey`` to values, safe to use from several threads.

    ``stash[key] = value``, ``stash[key]`` (KeyError when unset), ``stash.get(key,
    default)``, ``stash.setdefault(key, default)``, ``stash.pop(key, default)``,
    ``del stash[key]``, ``key in stash``.
    """

    __slots__ = ("_lock", "_storage")

    def __init__(self) -> None:
        self._storage: dict[StashKey[Any], object] = {}
        self._lock = threading.Lock()

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        with self._lock:
            self._storage[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._storage[key])

    def get(self, key: StashKey[T], default: D) -> T | D:
        """The value for ``key``, or ``default`` when it was never set."""
        try:
            return self[key]
        except KeyError:
            return default

    def setdefault(self, key: StashKey[T], default: T) -> T:
        """The value for ``key``; set to ``default`` first when it was never set (atomic)."""
        with self._lock:
            return cast(T, self._storage.setdefault(key, default))

    def pop(self, key: StashKey[T], default: D) -> T | D:
        """Remove ``key`` and return its value, or ``default`` when it was not set."""
        with self._lock:
            return cast("T | D", self._storage.pop(key, default))

    def __delitem__(self, key: StashKey[T]) -> None:
        with self._lock:
            del self._storage[key]

    def __contains__(self, key: StashKey[T]) -> bool:
        return key in self._storage

    def __len__(self) -> int:
        return len(self._storage)


# -- well-known keys: one plugin provides, any plugin asks ---------------------------------

OPTED_OUT: Final = StashKey[Callable[[str], bool]]()
"""Whether a number is on the opt-out (退订) list: ``app.stash.get(OPTED_OUT, None)``.

Set by the plugin that keeps the list (the built-in ``optout``, from its
``responder_startup``, which runs before the other built-ins'), for the plugins that
need to know without importing it (the webhook marks such messages ``opted_out``). Absent
when no such plugin is loaded: then nobody has opted out. The function reads the store,
so any thread may call it.
"""
