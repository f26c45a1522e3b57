"""The circuit breaker: a target that keeps failing is left alone for a while.

Each target's consecutive failures and the time before which no request may start are
kept in the plugin's own table ``webhook_circuits``, so ``responder status`` (another
process) sees them and a restart keeps them. After ``breaker_threshold`` failures in a
row the circuit opens for ``breaker_cooldown`` seconds; then one probe may go
(half-open). A Retry-After pauses the target without opening it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from responder import App

log = structlog.get_logger("responder.webhook")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"
PAUSED = "paused"


@dataclass(frozen=True)
class Circuit:
    """A target's breaker: consecutive failures and how long no request may start."""

    failures: int = 0
    blocked_until: float = 0.0

    def state(self, now: float, threshold: int) -> str:
        """ "closed", "open", "half-open" (one probe may go) or "paused" (Retry-After)."""
        if self.blocked_until > now:
            return OPEN if self.failures >= threshold else PAUSED
        return HALF_OPEN if self.failures >= threshold else CLOSED


class Breaker:
    """The circuits of every target, in the store."""

    def __init__(self, app: App, *, threshold: int, cooldown: float) -> None:
        self.app = app
        self.threshold = threshold
        self.cooldown = cooldown

    def circuit(self, target: str) -> Circuit:
        rows = self.app.store.query(
            "SELECT failures, blocked_until FROM webhook_circuits WHERE target = ?",
            (target,),
            missing_ok=True,
        )
        return Circuit(rows[0][0], rows[0][1]) if rows else Circuit()

    def circuits(self) -> dict[str, Circuit]:
        rows = self.app.store.query(
            "SELECT target, failures, blocked_until FROM webhook_circuits", missing_ok=True
        )
        return {row[0]: Circuit(row[1], row[2]) for row in rows}

    def state(self, target: str, now: float) -> tuple[str, Circuit]:
        circuit = self.circuit(target)
        return circuit.state(now, self.threshold), circuit

    def failed(self, target: str, retry_after: float | None, now: float) -> None:
        """One more failure in a row; opens the circuit at the threshold, and a Retry-After
        pauses the target until then."""
        with self.app.store.transaction() as tx:
            tx.execute(
                "INSERT INTO webhook_circuits (target) VALUES (?) ON CONFLICT (target) DO NOTHING",
                (target,),
            )
            tx.execute(
                "UPDATE webhook_circuits SET failures = failures + 1 WHERE target = ?", (target,)
            )
            failures, until = tx.execute(
                "SELECT failures, blocked_until FROM webhook_circuits WHERE target = ?",
                (target,),
            ).fetchone()
            if failures >= self.threshold:
                until = max(until, now + self.cooldown)
            if retry_after:
                until = max(until, now + retry_after)
            tx.execute(
                "UPDATE webhook_circuits SET blocked_until = ? WHERE target = ?", (until, target)
            )
        if failures >= self.threshold:
            log.warning(
                "webhook_circuit_open",
                target=target,
                failures=failures,
                retry_in=round(until - now, 1),
            )

    def succeeded(self, target: str) -> None:
        """The target answered: the circuit closes."""
        before = self.circuit(target)
        if before == Circuit():
            return
        self.reset(target)
        if before.failures >= self.threshold:
            log.info("webhook_circuit_closed", target=target)

    def reset(self, *targets: str) -> None:
        """Close these circuits (someone who retries by hand believes the target is back)."""
        with self.app.store.transaction() as tx:
            tx.executemany(
                "UPDATE webhook_circuits SET failures = 0, blocked_until = 0 WHERE target = ?",
                [(target,) for target in targets],
            )
