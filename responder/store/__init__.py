"""The durable store: the journal, the durable queues (the outbox is one) and plugins' own tables.

``Store`` is the SQLite store (``responder.store.sqlite``), the default;
``PostgresStore`` (``responder.store.postgres``, the ``postgresql`` extra) the other
backend; ``open_store`` opens the one the settings name. ``StoreBackend``
(``responder.store.backend``) is what any backend provides, and all the core and plugins
may call on ``app.store``. The states of messages and outbox rows are in
``responder.store.schema``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from responder.store.backend import StoreBackend
from responder.store.interface import (
    DEFAULT_ACCOUNT,
    JournalEntry,
    JournalUnwritable,
    NewOutbound,
    NotClaimed,
    OutboundItem,
    OutboundRecipient,
    OutboundRow,
    OutboxRow,
    OutgoingSms,
    SenderSummary,
    StatementError,
    StoreError,
    StoreStatus,
    TrafficHour,
    is_storage_failure,
)
from responder.store.schema import (
    DEAD,
    FAILED,
    IGNORED,
    OUTBOX,
    PENDING,
    PROCESSED,
    RECEIVED,
    REPLIED,
    SCHEMA,
    SENDING,
    SENT,
    UNCERTAIN,
)
from responder.store.sqlite import (
    MIN_FREE_BYTES,
    PRUNE_BATCH,
    SQLITE_HEADER,
    Store,
    store_room,
)

if TYPE_CHECKING:
    from responder.config import StoreSettings


def open_store(settings: StoreSettings, *, clock: Callable[[], float] = time.time) -> StoreBackend:
    """The store ``[store]`` names: PostgreSQL at ``url``, else the SQLite file at
    ``path``. StoreError when it cannot be opened (psycopg missing, too)."""
    if settings.url:
        try:
            from responder.store.postgres import PostgresStore
        except ImportError as err:
            raise StoreError(
                f"store.url is a PostgreSQL store, but psycopg is missing ({err}): "
                "pip install 'sms-responder[postgresql]'"
            ) from None
        return PostgresStore(settings.url, password=settings.password, clock=clock)
    return Store(settings.path, clock=clock)


def store_name(settings: StoreSettings) -> str:
    """The store as messages show it: its path, or its URL without secrets."""
    from responder.config import redact_url

    return redact_url(settings.url) if settings.url else str(settings.path)


__all__ = [
    "DEAD",
    "DEFAULT_ACCOUNT",
    "FAILED",
    "IGNORED",
    "MIN_FREE_BYTES",
    "OUTBOX",
    "PENDING",
    "PROCESSED",
    "PRUNE_BATCH",
    "RECEIVED",
    "REPLIED",
    "SCHEMA",
    "SENDING",
    "SENT",
    "SQLITE_HEADER",
    "UNCERTAIN",
    "JournalEntry",
    "JournalUnwritable",
    "NewOutbound",
    "NotClaimed",
    "OutboundItem",
    "OutboundRecipient",
    "OutboundRow",
    "OutboxRow",
    "OutgoingSms",
    "SenderSummary",
    "StatementError",
    "Store",
    "StoreBackend",
    "StoreError",
    "StoreStatus",
    "TrafficHour",
    "is_storage_failure",
    "open_store",
    "store_name",
    "store_room",
]
