"""The relays: one durable queue per target (``app.queue("webhook:<target>")``) and the
workers that drain it.

A message a target wants becomes one item of that target's queue, its payload a
``Relay``: the delivery id and the JSON body, both fixed when it is queued, so every
retry and every restart sends the same bytes under the same id. The queue (the core's
``DurableQueue``) keeps the states, the claims, the retries with the shared ``Backoff``,
the dead letters and the recovery after a crash; this module adds what is the webhook's
own: ``max_age``, Retry-After, the circuit breaker, each target's share of the worker
pool, and the answer of a reply target (``app.reply_later``, idempotent on the delivery
id, so a crash never queues it twice).

Stores written before the queue held the relays in ``webhook_deliveries``: ``prepare``
moves their pending and dead rows into the queues once, then drops the table.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import structlog

from responder import (
    OPTED_OUT,
    App,
    Backoff,
    DurableQueue,
    Event,
    Message,
    QueueItem,
    Reply,
)
from responder_plugins.webhook.breaker import CLOSED, HALF_OPEN, OPEN, PAUSED, Breaker, Circuit
from responder_plugins.webhook.client import RelayAttempt, TargetClient
from responder_plugins.webhook.config import (
    PLUGIN,
    Target,
    WebhookSettings,
    event_targets,
    matches,
)
from responder_plugins.webhook.signing import event_body, request_body, request_headers

log = structlog.get_logger("responder.webhook")

LEGACY_TABLES: Final = """
    CREATE TABLE webhook_deliveries (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL,
        target TEXT NOT NULL,
        delivery_id TEXT NOT NULL UNIQUE,
        mode TEXT NOT NULL,
        dropped TEXT,
        state TEXT NOT NULL DEFAULT 'pending',
        body BLOB,
        attempts INTEGER NOT NULL DEFAULT 0,
        streak INTEGER NOT NULL DEFAULT 0,
        claim TEXT,
        created_at REAL NOT NULL,
        next_attempt_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        last_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT NOT NULL DEFAULT '',
        finished_at REAL,
        answer TEXT,
        answer_state TEXT NOT NULL DEFAULT '',
        outbox_before INTEGER NOT NULL DEFAULT 0,
        UNIQUE (message_id, target)
    );
    CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, target, next_attempt_at);
    CREATE TABLE webhook_circuits (
        target TEXT PRIMARY KEY,
        failures INTEGER NOT NULL DEFAULT 0,
        blocked_until REAL NOT NULL DEFAULT 0
    );
    """
"""Step 1 of the plugin's schema, as releases before the durable queue created it."""

SCHEMA: Final = (
    {
        "sqlite": LEGACY_TABLES,
        # no store on PostgreSQL is older than the durable queue: no deliveries table
        "postgresql": """
        CREATE TABLE webhook_circuits (
            target TEXT PRIMARY KEY,
            failures INTEGER NOT NULL DEFAULT 0,
            blocked_until DOUBLE PRECISION NOT NULL DEFAULT 0
        );
        """,
    },
    # step 2: the relays moved to the durable queues (``prepare`` copies the rows first);
    # a dead letter re-queued by hand gets a fresh max_age, kept here by item.
    {
        "sqlite": """
        DROP TABLE webhook_deliveries;
        CREATE TABLE webhook_requeued (item_id INTEGER PRIMARY KEY, expires_at REAL NOT NULL);
        """,
        "postgresql": """
        CREATE TABLE webhook_requeued (
            item_id BIGINT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL
        );
        """,
    },
)

MAX_POOL: Final = 32
SHUTDOWN_GRACE: Final = 3.0
"""Seconds shutdown waits for requests in flight; the rest are retried after a restart."""
EXPIRE_BATCH: Final = 20
"""Items looked at per tick for max_age while a target's circuit is open."""
ALL: Final = 1_000_000
"""A limit larger than any dead-letter list."""
REDACTED: Final = "[REDACTED]"
_DEAD_ON_ARRIVAL: Final = -1.0
"""When a dead letter moved from an older release is due: before anything else."""


# -- the payload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Relay:
    """One message to relay to one target: the payload of a queue item."""

    message_id: int
    target: str
    delivery_id: str
    """The X-Responder-Delivery id: the same for every attempt, across restarts."""
    mode: str
    """"reply" when this target's answer is the message's answer, else "relay"."""
    body: str
    """The JSON document sent, fixed when the relay was queued."""
    expires_at: float
    number: str = ""
    """An event's number (``mode = "event"``, ``message_id`` 0)."""
    """After this, a failure makes it a dead letter (``max_age``)."""

    def payload(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "target": self.target,
            "delivery_id": self.delivery_id,
            "mode": self.mode,
            "body": self.body,
            "expires_at": self.expires_at,
            "number": self.number,
        }

    @classmethod
    def from_payload(cls, data: Any) -> Relay:
        """ValueError when ``data`` is not a relay's payload."""
        try:
            return cls(
                message_id=int(data["message_id"]),
                target=str(data["target"]),
                delivery_id=str(data["delivery_id"]),
                mode=str(data["mode"]),
                body=str(data["body"]),
                expires_at=float(data["expires_at"]),
                number=str(data.get("number", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a webhook relay ({type(err).__name__}: {err})") from None


def queue_name(target: str) -> str:
    return f"{PLUGIN}:{target}"


def relay_queue(app: App, target: str, backoff: Backoff) -> DurableQueue:
    """The durable queue of one target's relays; no attempt limit (``max_age`` is)."""
    return app.queue(queue_name(target), backoff=backoff, max_attempts=None)


def opted_out(app: App, number: str) -> bool:
    """Whether the sender is on the opt-out list (False when no plugin keeps one)."""
    ask = app.stash.get(OPTED_OUT, None)
    return bool(ask(number)) if ask is not None else False


def enqueue(
    app: App,
    settings: WebhookSettings,
    message: Message,
    modes: Sequence[tuple[Target, str]],
    dropped: str | None,
) -> None:
    """Queue a relay per (target, mode); one a target has already for the message is kept
    as it is (a message observed again after a crash keeps its delivery id)."""
    now = app.time()
    suppressed = opted_out(app, message.src)
    conversation = app.conversation(message).current  # as this message left it
    for target, mode in modes:
        delivery_id = str(uuid.uuid4())
        relay = Relay(
            message_id=message.id,
            target=target.name,
            delivery_id=delivery_id,
            mode=mode,
            body=request_body(
                message,
                delivery_id=delivery_id,
                target=target.name,
                reply_expected=mode == "reply",
                dropped=dropped,
                opted_out=suppressed,
                conversation=conversation,
            ),
            expires_at=now + target.max_age,
        )
        queue = relay_queue(app, target.name, settings.backoff)
        queue.enqueue(relay.payload(), key=str(message.id))


EVENT: Final = "event"
"""The mode of a relay that carries an event (``app.emit``), not a message."""


def event_key(event: Event) -> str | None:
    """The queue key of an event: its own key, apart from the messages' keys (ids)."""
    return f"event:{event.account}:{event.key}" if event.key else None


def enqueue_event(app: App, settings: WebhookSettings, event: Event) -> int:
    """Queue an event for the targets it goes to; returns how many. Idempotent on
    ``event.key``: an event queued already for a target is kept as it is."""
    targets = event_targets(settings, event.type, event.target)
    if event.target and not targets:
        log.warning("webhook_event_unknown_target", type=event.type, target=event.target)
        return 0
    now = app.time()
    conversation = app.conversation(event.number, account=event.account).current
    for target in targets:
        delivery_id = str(uuid.uuid4())
        relay = Relay(
            message_id=0,
            target=target.name,
            delivery_id=delivery_id,
            mode=EVENT,
            body=event_body(
                event, delivery_id=delivery_id, target=target.name, conversation=conversation
            ),
            expires_at=now + target.max_age,
            number=event.number,
        )
        relay_queue(app, target.name, settings.backoff).enqueue(
            relay.payload(), key=event_key(event)
        )
    return len(targets)


def requeue_dead(app: App, settings: WebhookSettings, targets: Sequence[Target]) -> dict[str, int]:
    """Put targets' dead letters back in their queues with a fresh ``max_age``; counts by
    target. Their circuits are closed too: whoever retries believes the target is back."""
    now = app.time()
    counts: dict[str, int] = {}
    for target in targets:
        queue = relay_queue(app, target.name, settings.backoff)
        ids = [item.id for item in queue.items("dead", limit=ALL)]
        with app.store.transaction() as tx:
            tx.executemany(
                "INSERT INTO webhook_requeued (item_id, expires_at) VALUES (?, ?)"
                " ON CONFLICT (item_id) DO UPDATE SET expires_at = excluded.expires_at",
                [(item_id, now + target.max_age) for item_id in ids],
            )
        counts[target.name] = queue.requeue_dead(ids) if ids else 0
    Breaker(app, threshold=settings.breaker_threshold, cooldown=settings.breaker_cooldown).reset(
        *(target.name for target in targets)
    )
    return counts


def scrubbed(text: str, secrets: Sequence[str]) -> str:
    """An error text without the targets' secrets (stored errors, status)."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


# -- moving the rows of older releases -------------------------------------------------------


def prepare(app: App, settings: WebhookSettings) -> int:
    """Bring the plugin's tables up to date, moving what an older release left in
    ``webhook_deliveries`` into the queues first; returns how many relays were moved."""
    moved = move_legacy(app, settings)
    app.store.migrate(PLUGIN, SCHEMA)
    return moved


def move_legacy(app: App, settings: WebhookSettings) -> int:
    """Move the rows an older release left in ``webhook_deliveries`` (if any) into the
    queues; returns how many relays were moved.

    Pending rows (and those an attempt was cut short in) become pending items, due when
    they were; dead letters stay dead letters; an answer recorded but maybe not queued
    is handed to ``reply_later``. Running it again (a crash before the table was dropped)
    moves nothing twice: the items are keyed on the message id, the answers on the
    delivery id.
    """
    rows = app.store.query(
        "SELECT * FROM webhook_deliveries"
        " WHERE state IN ('pending', 'sending', 'dead') OR answer_state = 'queuing'"
        " ORDER BY id",
        missing_ok=True,
    )
    moved = 0
    dead: dict[str, dict[int, str]] = {}
    for row in rows:
        message = app.store.get_message(row["message_id"])
        if message is None:
            continue
        if row["answer_state"] == "queuing" and row["answer"]:
            _queue_legacy_answer(app, message, row)
        if row["state"] not in ("pending", "sending", "dead"):
            continue
        body = bytes(row["body"]).decode("utf-8") if row["body"] else ""
        relay = Relay(
            message_id=message.id,
            target=row["target"],
            delivery_id=row["delivery_id"],
            mode=row["mode"],
            body=body
            or request_body(
                message,
                delivery_id=row["delivery_id"],
                target=row["target"],
                reply_expected=row["mode"] == "reply",
                dropped=row["dropped"],
                opted_out=opted_out(app, message.src),
            ),
            expires_at=row["expires_at"],
        )
        queue = relay_queue(app, row["target"], settings.backoff)
        if row["state"] == "dead":
            due = _DEAD_ON_ARRIVAL  # claimed first, to be made a dead letter again below
        elif row["state"] == "sending":
            due = app.time()  # an attempt cut short: due now
        else:
            due = row["next_attempt_at"]
        item = queue.enqueue(relay.payload(), key=str(message.id), at=due)
        moved += 1
        if row["state"] == "dead" and item.state == "pending" and item.next_attempt_at < 0:
            dead.setdefault(row["target"], {})[item.id] = row["last_error"] or "dead letter"
    for target, errors in dead.items():
        _dead_letter(relay_queue(app, target, settings.backoff), errors)
    if moved:
        log.info("webhook_relays_moved_to_queue", count=moved)
    return moved


def _dead_letter(queue: DurableQueue, errors: Mapping[int, str]) -> None:
    """Make the items just moved (due before the epoch, so claimed first) dead letters
    again; any other item claimed meanwhile is put back as it was."""
    remaining = dict(errors)
    others: list[QueueItem] = []
    while remaining:
        claimed = queue.claim(len(remaining))
        if not claimed:
            break
        for item in claimed:
            if item.id in remaining:
                queue.dead(item, remaining.pop(item.id))
            else:
                others.append(item)
    for item in others:
        queue.release(item, at=item.next_attempt_at, error=item.last_error)


def _queue_legacy_answer(app: App, message: Message, row: Any) -> None:
    """An answer an older release recorded as "queuing": queued unless it reached the
    outbox already."""
    if len(app.store.outbox_for(message.id)) > row["outbox_before"]:
        return
    data = json.loads(row["answer"])
    reply = Reply(
        text=data["text"],
        to=tuple(data["to"]),
        plugin=data["plugin"],
        meta=tuple((str(k), str(v)) for k, v in data["meta"]),
    )
    app.reply_later(message, reply, key=answer_key(row["delivery_id"]))


def answer_key(delivery_id: str) -> str:
    """The ``reply_later`` key of a reply target's answer: queued once per delivery."""
    return f"{PLUGIN}:{delivery_id}"


def fallback_key(delivery_id: str) -> str:
    """The ``reply_later`` key of the fallback after a reply target failed: asked once."""
    return f"{PLUGIN}:{delivery_id}:fallback"


# -- the engine ----------------------------------------------------------------------------


class Relayer:
    """Runs due relays on a small thread pool, off the read and process paths.

    ``tick()`` (the periodic job) only claims due items and hands them to the pool; each
    target has its own share of the pool (``concurrency``), so a slow target cannot hold
    up another. A worker that delivered one goes on with the target's next due item.
    """

    def __init__(self, app: App, settings: WebhookSettings) -> None:
        self.app = app
        self.settings = settings
        self.targets = {target.name: target for target in settings.targets}
        self.queues = {
            target.name: relay_queue(app, target.name, settings.backoff)
            for target in settings.targets
        }
        self.breaker = Breaker(
            app, threshold=settings.breaker_threshold, cooldown=settings.breaker_cooldown
        )
        self.clients = {target.name: TargetClient(target) for target in settings.targets}
        self.secrets = settings.secrets()
        workers = min(MAX_POOL, max(1, sum(t.concurrency for t in settings.targets)))
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="webhook"
        )
        self._lock = threading.RLock()
        self._busy = dict.fromkeys(self.targets, 0)
        self._futures: set[concurrent.futures.Future[None]] = set()
        self._closed = False

    def recover(self) -> int:
        """At start: attempts a previous process left under way are due again."""
        cut = sum(queue.recover() for queue in self.queues.values())
        if cut:
            log.warning("webhook_attempts_cut_short", count=cut, action="retry")
        return cut

    # -- scheduling ----------------------------------------------------------------------

    def tick(self) -> int:
        """Start the relays that are due; returns how many were started. Never blocks on
        a request."""
        return sum(self._fill(target) for target in self.settings.targets)

    def _fill(self, target: Target) -> int:
        with self._lock:
            if self._closed:
                return 0
            now = self.app.time()
            state, circuit = self.breaker.state(target.name, now)
            if state in (OPEN, PAUSED):
                self._hold(target, circuit, now)
                return 0
            room = (1 if state == HALF_OPEN else target.concurrency) - self._busy[target.name]
            if room <= 0:
                return 0
            items = self.queues[target.name].claim(room)
            for started, item in enumerate(items):
                if not self._submit(target, item):  # shut down meanwhile: they wait
                    for waiting in items[started:]:
                        self.queues[target.name].release(waiting, error=waiting.last_error)
                    return started
            return len(items)

    def _hold(self, target: Target, circuit: Circuit, now: float) -> None:
        """No request starts while the circuit is open, but relays past max_age still
        become dead letters; the others wait until the circuit lets one through."""
        queue = self.queues[target.name]
        for item in queue.claim(EXPIRE_BATCH):
            try:
                relay = Relay.from_payload(item.payload)
            except ValueError as err:
                queue.dead(item, str(err))
                continue
            expires = self.expires_at(item, relay)
            if now >= expires:
                error = f"{item.last_error or 'never attempted'} (circuit open at max_age)"
                self._give_up(
                    target, item, relay, self.app.store.get_message(relay.message_id), error
                )
            else:
                due = min(max(circuit.blocked_until, now), expires)
                queue.release(item, at=due, error=item.last_error)

    def _submit(self, target: Target, item: QueueItem) -> bool:
        """Hand a claimed item to the pool; False when the pool was shut down."""
        self._busy[target.name] += 1
        try:
            future = self.executor.submit(self._lane, target, item)
        except RuntimeError:
            self._busy[target.name] -= 1
            return False
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return True

    def _lane(self, target: Target, item: QueueItem | None) -> None:
        while item is not None:
            delivered = self._run(target, item)
            with self._lock:
                self._busy[target.name] -= 1
                item = None
                if delivered and not self._closed:
                    state, _circuit = self.breaker.state(target.name, self.app.time())
                    if state == CLOSED and self._busy[target.name] < target.concurrency:
                        claimed = self.queues[target.name].claim(1)
                        if claimed:
                            item = claimed[0]
                            self._busy[target.name] += 1

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until no relay is running (tests, shutdown); False on timeout."""
        with self._lock:
            futures = list(self._futures)
        _done, running = concurrent.futures.wait(futures, timeout=timeout)
        return not running

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop starting relays, give those in flight ``grace`` seconds, close the clients.

        A relay still running after that stays claimed in the store and is retried after
        the next start (the receiver sees the same delivery id again).
        """
        with self._lock:
            self._closed = True
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.wait(grace)
        for client in self.clients.values():
            client.close()

    # -- one attempt ---------------------------------------------------------------------

    def _run(self, target: Target, item: QueueItem) -> bool:
        """One attempt of a claimed item; True when it was delivered."""
        try:
            return self._attempt(target, item)
        except Exception as err:  # a bug or a store fault: retry later, never lose the item
            log.exception("webhook_internal_error", target=target.name, item=item.id)
            with contextlib.suppress(Exception):
                self.queues[target.name].retry(
                    item,
                    f"internal error: {type(err).__name__}",
                    delay=self.settings.retry_initial,
                )
            return False

    def _attempt(self, target: Target, item: QueueItem) -> bool:
        queue = self.queues[target.name]
        try:
            relay = Relay.from_payload(item.payload)
        except ValueError as err:
            queue.dead(item, str(err))
            return False
        bound = log.bind(
            target=target.name,
            message_id=relay.message_id,
            delivery=relay.delivery_id,
            attempt=item.attempts,
        )
        if relay.mode == EVENT:  # no message: the client needs one only for an answer
            message: Message | None = Message(
                id=0, gateway_id=0, src=relay.number, dst="", text="", received_at=None, raw=""
            )
        else:
            message = self.app.store.get_message(relay.message_id)
        if message is None:
            queue.dead(item, "the message is not in the store")
            return False
        body = relay.body.encode("utf-8")
        now = self.app.time()
        attempt = self.clients[target.name].post(
            body,
            request_headers(target, body, relay.delivery_id, int(now)),
            message,
            want_answer=relay.mode == "reply",
            now=now,
        )
        error = scrubbed(attempt.error, self.secrets)
        now = self.app.time()
        if attempt.kind == "delivered":
            self.breaker.succeeded(target.name)
            self._delivered(target, item, relay, message, attempt)
            bound.info("webhook_delivered", status=attempt.status)
            return True
        if attempt.kind == "permanent":
            self.breaker.succeeded(target.name)  # it answered: it is reachable
            self._give_up(target, item, relay, message, error)
            return False
        retry_after = self.retry_after(attempt)
        self.breaker.failed(target.name, retry_after, now)
        expires = self.expires_at(item, relay)
        if now >= expires:
            error = f"gave up at max_age after {item.attempts} attempt(s): {error}"
            self._give_up(target, item, relay, message, error)
            return False
        delay = self.settings.backoff.delay(item.attempts) if retry_after is None else retry_after
        delay = max(min(now + delay, expires) - now, 0.0)
        queue.retry(item, error, delay=delay)
        bound.warning("webhook_retry", error=error, retry_in=round(delay, 1))
        return False

    def retry_after(self, attempt: RelayAttempt) -> float | None:
        """The Retry-After of an attempt, at most ``retry_max``: a target cannot pause itself
        for days."""
        if attempt.retry_after is None:
            return None
        return min(attempt.retry_after, self.settings.retry_max)

    def expires_at(self, item: QueueItem, relay: Relay) -> float:
        """When the relay gives up: ``max_age`` after it was queued, or after a hand
        re-queued it (``webhook retry``)."""
        rows = self.app.store.query(
            "SELECT expires_at FROM webhook_requeued WHERE item_id = ?",
            (item.id,),
            missing_ok=True,
        )
        return float(rows[0][0]) if rows else relay.expires_at

    def _delivered(
        self,
        target: Target,
        item: QueueItem,
        relay: Relay,
        message: Message,
        attempt: RelayAttempt,
    ) -> None:
        if relay.mode == "reply" and attempt.answer is not None:
            reply = Reply(
                text=attempt.answer.text,
                to=attempt.answer.to,
                plugin=PLUGIN,
                meta=(("webhook", target.name),),
            )
            # Before the item is done: a crash in between sends the request again, and the
            # answer, under the same key, is still queued once.
            self.app.reply_later(message, reply, key=answer_key(relay.delivery_id))
            log.info("webhook_answer_queued", message_id=message.id, target=target.name)
        elif relay.mode == "reply":
            self._unanswered(target, message, "no answer")
        self.queues[target.name].done(item)

    def _give_up(
        self,
        target: Target,
        item: QueueItem,
        relay: Relay,
        message: Message | None,
        error: str,
    ) -> None:
        """Dead-letter an item; for a reply target, apply ``on_failure`` (once per
        delivery: the fallback is queued under a key)."""
        fallback = None
        if relay.mode == "reply" and message is not None:
            if target.on_failure == "fallback":
                fallback = self.app.reply_later(
                    message, None, skip=PLUGIN, key=fallback_key(relay.delivery_id)
                )
            else:
                self._unanswered(target, message, "gave up (on_failure = silent)")
        log.error(
            "webhook_dead_letter",
            target=target.name,
            message_id=relay.message_id,
            delivery=relay.delivery_id,
            attempts=item.attempts,
            error=error,
            fallback=fallback,
        )
        self.queues[target.name].dead(item, error)

    def _unanswered(self, target: Target, message: Message, why: str) -> None:
        """Replace the message's "awaiting webhook:<target>" reason: the target will not
        answer it, and nothing else will ("target <name>: <why>", decided by the plugin)."""
        _state, reason = self.app.store.message_state(message.id)
        if reason == f"awaiting {PLUGIN}:{target.name}":
            self.app.store.note_reason(
                message.id, f"target {target.name}: {why}", decided_by=PLUGIN
            )


# -- status --------------------------------------------------------------------------------


def status_figures(
    app: App, settings: WebhookSettings
) -> tuple[tuple[str, int | float | str | None], ...]:
    """Counts by state, each target's circuit and its latest dead letter (never a secret)."""
    now = app.time()
    breaker = Breaker(app, threshold=settings.breaker_threshold, cooldown=settings.breaker_cooldown)
    circuits = breaker.circuits()
    rows: list[tuple[str, int, int, int, str | None]] = []
    for target in settings.targets:
        queue = relay_queue(app, target.name, settings.backoff)
        counts = queue.counts()
        dead = queue.items("dead", limit=ALL)
        latest = max(dead, key=lambda i: (i.finished_at or 0.0, i.id)) if dead else None
        last = None
        if latest is not None:
            message_id = (
                latest.payload.get("message_id") if isinstance(latest.payload, dict) else "?"
            )
            error = scrubbed(latest.last_error, settings.secrets())
            last = f"message {message_id}, {latest.attempts} attempt(s): {error}"
        rows.append((target.name, counts.pending + counts.claimed, counts.done, counts.dead, last))
    figures: list[tuple[str, int | float | str | None]] = [
        ("pending", sum(row[1] for row in rows)),
        ("delivered", sum(row[2] for row in rows)),
        ("dead letters", sum(row[3] for row in rows)),
    ]
    for name, pending, delivered, dead_letters, last in rows:
        figures += [
            (f"{name}: pending", pending),
            (f"{name}: delivered", delivered),
            (f"{name}: dead letters", dead_letters),
        ]
        circuit = circuits.get(name, Circuit())
        state = circuit.state(now, settings.breaker_threshold)
        if state in (OPEN, PAUSED):
            state += f" for {circuit.blocked_until - now:.0f} s more"
        figures.append((f"{name}: circuit", f"{state} ({circuit.failures} failure(s) in a row)"))
        if last is not None:
            figures.append((f"{name}: last dead letter", last))
    return tuple(figures)


def wanted(settings: WebhookSettings, message: Message) -> list[Target]:
    """The targets whose ``match`` and ``dst`` take a message."""
    return [target for target in settings.targets if matches(target, message)]
