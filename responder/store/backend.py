"""``StoreBackend``: everything a store backend implements, and so all the core and
plugins may call on ``app.store``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from responder.store.interface import CoreBackend
from responder.store.queues import QueueBackend


class StoreBackend(CoreBackend, QueueBackend, Protocol):
    """The journal, outbox, meta and plugins' own tables (``CoreBackend``) and the durable
    queues (``QueueBackend``). ``responder.store.Store`` (SQLite) and
    ``responder.store.postgres.PostgresStore`` implement it, held to it by
    tests/test_store_contract.py."""


if TYPE_CHECKING:  # mypy holds the SQLite store to the interface
    from responder.store.sqlite import Store

    _SQLITE_IS_A_BACKEND: type[StoreBackend] = Store
    try:
        from responder.store.postgres import PostgresStore

        _POSTGRES_IS_A_BACKEND: type[StoreBackend] = PostgresStore
    except ImportError:  # the postgresql extra is not installed
        pass
