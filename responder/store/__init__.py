"""The durable store: the journal, the durable queues (the outbox is one) and plugins' own tables.

``Store`` is the SQLite store (``responder.store.sqlite``), the one backend today;
``StoreBackend`` (``responder.store.backend``) is what any backend provides, and all
the core and plugins may call on ``app.store``. The states of messages and outbox rows are in
``responder.store.schema``.
"""

from responder.store.backend import StoreBackend
from responder.store.interface import (
    DEFAULT_ACCOUNT,
    JournalEntry,
    JournalUnwritable,
    OutboxRow,
    OutgoingSms,
    StatementError,
    StoreError,
    StoreStatus,
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
    "OutboxRow",
    "OutgoingSms",
    "StatementError",
    "Store",
    "StoreBackend",
    "StoreError",
    "StoreStatus",
    "is_storage_failure",
    "store_room",
]
