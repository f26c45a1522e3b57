"""One durable queue: work that must survive a crash, retried with backoff, dead-lettered.

Items live in the store's ``queue_items`` table, one queue per name. An item goes
pending → claimed (before the work starts, its attempt counted) → done; or back to
pending with a backoff (``retry``); or dead, a dead letter, after ``max_attempts`` or
when retrying cannot help (``dead``). Each change is one committed transaction, so a
kill -9 at any instant leaves every item in the state it reached; ``recover`` at start
puts back what the previous process had claimed and never finished.

Plugins get a queue with ``app.queue(name)``; the core uses one for late replies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from responder.backoff import Backoff
from responder.store.interface import OutgoingSms
from responder.store.queues import (
    QUEUE_DEAD,
    QUEUE_DONE,
    QUEUE_PENDING,
    QUEUE_STATES,
    QueueCounts,
    QueueItem,
)

if TYPE_CHECKING:
    from responder.store import StoreBackend

__all__ = ["DEFAULT_BACKOFF", "Backoff", "DurableQueue", "QueueCounts", "QueueItem"]

DEFAULT_MAX_ATTEMPTS: Final = 10
DEFAULT_BACKOFF: Final = Backoff(initial=5.0, maximum=900.0, jitter=0.5)
"""A plugin's queue retries after 2.5–5 s, then about twice as long each time, up to
7.5–15 min."""
RECOVERED: Final = "the process stopped during this attempt"


class DurableQueue:
    """A named queue of JSON payloads in the store, safe to use from several threads.

    ``claim`` hands out due items (each claimed in the store before the work begins); the
    worker then calls ``done``, ``retry`` or ``dead`` for each. ``max_attempts`` (None:
    without limit) turns the last failed retry into a dead letter. Items and counts are
    frozen values (``QueueItem``, ``QueueCounts``); the SQL is the store's (``queue_*``).
    """

    def __init__(
        self,
        store: StoreBackend,
        name: str,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock: Callable[[], float] | None = None,
        *,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        account: str = "default",
        on_enqueue: Callable[[], None] | None = None,
    ) -> None:
        if not name:
            raise ValueError("a queue needs a name")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {max_attempts!r}")
        self.store = store
        self.name = name
        self.backoff = backoff
        self.clock: Callable[[], float] = clock or store.clock
        self.max_attempts = max_attempts
        self.account = account
        self.on_enqueue = on_enqueue
        """Called after an item became pending (the daemon wakes the queue's worker)."""

    # -- adding --------------------------------------------------------------------------

    def enqueue(
        self, payload: Any, *, key: str | None = None, at: float | None = None
    ) -> QueueItem:
        """Add an item, due at ``at`` (default: now); returns it.

        With a ``key`` already in this queue (in any state, until the retention job prunes
        it once done), nothing is added and the existing item is returned: enqueueing is
        idempotent on the key. TypeError when the payload cannot be written as JSON.
        """
        item, added = self.store.queue_put(self.name, payload, key=key, at=at, account=self.account)
        if added:
            self._woken()
        return item

    # -- working -------------------------------------------------------------------------

    def claim(self, limit: int = 1) -> list[QueueItem]:
        """Take up to ``limit`` due items, soonest due first: each is marked claimed and its
        attempt counted, committed before this returns (before the work starts)."""
        return self.store.queue_claim(self.name, limit, account=self.account)

    def done(self, item: QueueItem) -> QueueItem:
        """The work of a claimed item is finished."""
        finished = self.store.queue_finish(item.id, state=QUEUE_DONE)
        return replace(item, state=QUEUE_DONE, finished_at=finished)

    def done_with_replies(
        self, item: QueueItem, message_id: int, outgoing: Sequence[OutgoingSms]
    ) -> QueueItem:
        """The work of a claimed item was to queue replies to a message: queued and done in
        one transaction (the core's late replies)."""
        finished = self.store.queue_done_with_replies(item.id, message_id, outgoing)
        return replace(item, state=QUEUE_DONE, finished_at=finished)

    def dead(self, item: QueueItem, error: str) -> QueueItem:
        """Give up on a claimed item: a dead letter (``requeue_dead`` revives it)."""
        finished = self.store.queue_finish(item.id, state=QUEUE_DEAD, error=error)
        return replace(item, state=QUEUE_DEAD, last_error=error, finished_at=finished)

    def retry(self, item: QueueItem, error: str, *, delay: float | None = None) -> QueueItem:
        """A claimed item's attempt failed: pending again after the backoff (or ``delay``
        seconds, such as a server's Retry-After), or dead once it has had ``max_attempts``.
        Returns the item as it now is (check ``state``)."""
        if self.max_attempts is not None and item.attempts >= self.max_attempts:
            return self.dead(item, f"gave up after {item.attempts} attempts: {error}")
        wait = self.backoff.delay(item.attempts) if delay is None else max(delay, 0.0)
        return self._back(item, attempts=item.attempts, error=error, at=self.clock() + wait)

    def release(self, item: QueueItem, *, at: float | None = None, error: str = "") -> QueueItem:
        """Put a claimed item back as if never attempted (its attempt not counted), due at
        ``at`` (default: now): the fault was not the item's (a target paused, a stop)."""
        due = self.clock() if at is None else at
        return self._back(item, attempts=max(item.attempts - 1, 0), error=error, at=due)

    def recover(self) -> int:
        """At start, before any claim: items the previous process claimed and never
        finished go back to pending (their attempt stays counted), or dead when that was
        their last attempt. Returns how many were found."""
        found = self.store.queue_recover(
            self.name, max_attempts=self.max_attempts, error=RECOVERED, account=self.account
        )
        if found:
            self._woken()
        return found

    def requeue_dead(self, ids: Sequence[int] | None = None) -> int:
        """Dead letters (all, or those of ``ids``) back to pending, attempts reset, due now;
        returns how many."""
        count = self.store.queue_requeue_dead(self.name, ids, account=self.account)
        if count:
            self._woken()
        return count

    # -- looking -------------------------------------------------------------------------

    def get(self, item_id: int) -> QueueItem | None:
        item = self.store.queue_get(item_id)
        return item if item is not None and item.queue == self.name else None

    def items(self, state: str = QUEUE_DEAD, limit: int = 100) -> list[QueueItem]:
        """Items in ``state`` (default: the dead letters), oldest first."""
        if state not in QUEUE_STATES:
            raise ValueError(f"state must be one of {', '.join(QUEUE_STATES)}, not {state!r}")
        return self.store.queue_items(self.name, state=state, limit=limit, account=self.account)

    def counts(self) -> QueueCounts:
        """Items by state, for ``responder status`` and the metrics."""
        return self.store.queue_counts(self.name, account=self.account)

    def next_due(self) -> float | None:
        """When the soonest pending item is due (it may be past), or None when none is."""
        return self.store.queue_next_due(self.name, account=self.account)

    # -- internals -----------------------------------------------------------------------

    def _back(self, item: QueueItem, *, attempts: int, error: str, at: float) -> QueueItem:
        self.store.queue_back(item.id, attempts=attempts, error=error, at=at)
        self._woken()
        return replace(
            item, state=QUEUE_PENDING, attempts=attempts, last_error=error, next_attempt_at=at
        )

    def _woken(self) -> None:
        if self.on_enqueue is not None:
            self.on_enqueue()
