"""The values of the durable queues (``responder.queue``) and what a backend provides for
them (``QueueBackend``): every statement on ``queue_items`` is the store's.

``Store`` (sqlite.py) implements ``QueueBackend`` in its "durable queues" block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from responder.store.interface import DEFAULT_ACCOUNT, OutgoingSms

QUEUE_PENDING: Final = "pending"
QUEUE_CLAIMED: Final = "claimed"
QUEUE_DONE: Final = "done"
QUEUE_DEAD: Final = "dead"
QUEUE_UNCERTAIN: Final = "uncertain"
QUEUE_STATES: Final = (QUEUE_PENDING, QUEUE_CLAIMED, QUEUE_DONE, QUEUE_DEAD, QUEUE_UNCERTAIN)
"""The states of a queue item: pending → claimed → done, or back to pending, or dead; or
uncertain (given up on, but the work may have happened: the outbox's SMS whose outcome was
unknown). Done, dead and uncertain are final (``requeue_dead`` revives dead ones)."""


@dataclass(frozen=True)
class QueueItem:
    """One item of a durable queue, as it was when read (a value: it does not change)."""

    id: int
    queue: str
    key: str | None
    """The idempotency key it was enqueued with, if any."""
    payload: Any
    """What was enqueued, as JSON gives it back (dicts, lists, str, numbers, bools, None)."""
    state: str
    attempts: int
    """Attempts begun, counted when claimed (so a crash mid-work counts one)."""
    next_attempt_at: float
    last_error: str
    created_at: float
    finished_at: float | None
    account: str = DEFAULT_ACCOUNT


@dataclass(frozen=True)
class QueueCounts:
    """A queue's items by state (done ones are kept until the retention job prunes them)."""

    pending: int = 0
    claimed: int = 0
    done: int = 0
    dead: int = 0
    uncertain: int = 0


class QueueBackend(Protocol):
    """The store methods behind ``DurableQueue``; each change is one committed transaction."""

    def queue_put(
        self,
        queue: str,
        payload: Any,
        *,
        key: str | None = None,
        at: float | None = None,
        account: str = DEFAULT_ACCOUNT,
    ) -> tuple[QueueItem, bool]:
        """Add an item (the item, True), or find the one with ``key`` (it, False)."""
        ...

    def queue_claim(
        self, queue: str, limit: int, *, account: str = DEFAULT_ACCOUNT
    ) -> list[QueueItem]: ...

    def queue_finish(self, item_id: int, *, state: str, error: str = "") -> float: ...

    def queue_done_with_replies(
        self, item_id: int, message_id: int, outgoing: Sequence[OutgoingSms]
    ) -> float: ...

    def queue_back(self, item_id: int, *, attempts: int, error: str, at: float) -> None: ...

    def queue_recover(
        self, queue: str, *, max_attempts: int | None, error: str, account: str = DEFAULT_ACCOUNT
    ) -> int: ...

    def queue_requeue_dead(
        self, queue: str, ids: Sequence[int] | None = None, *, account: str = DEFAULT_ACCOUNT
    ) -> int: ...

    def queue_get(self, item_id: int) -> QueueItem | None: ...

    def queue_items(
        self, queue: str, *, state: str, limit: int = 100, account: str = DEFAULT_ACCOUNT
    ) -> list[QueueItem]: ...

    def queue_counts(self, queue: str, *, account: str = DEFAULT_ACCOUNT) -> QueueCounts: ...

    def queue_next_due(self, queue: str, *, account: str = DEFAULT_ACCOUNT) -> float | None: ...

    def queue_prune(self, before: float) -> int: ...
