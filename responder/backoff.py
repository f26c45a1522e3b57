"""One backoff policy: how long to wait before the next attempt of something that failed.

Exponential from an initial delay, capped, with jitter taken off the top so that many
items failing together do not all come back at the same instant. The outbox, the durable
queues (``app.queue``), the webhook deliveries and the read loop all use it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_DOUBLINGS = 32
"""Doublings past which the delay is the cap anyway (keeps 2**n a small number)."""


@dataclass(frozen=True)
class Backoff:
    """Seconds before attempt ``n + 1`` after ``n`` failed: ``initial * 2**(n - 1)``, at most
    ``maximum``, of which up to ``jitter`` (a fraction, 0 to 1) is taken off at random.

    The delay is never above ``maximum`` (which wins over ``initial``) nor below
    ``(1 - jitter)`` times the exponential figure: with ``jitter=0.5`` a delay of 10 s
    comes out between 5 and 10 s; with ``jitter=0`` it is exact.
    """

    initial: float
    maximum: float
    jitter: float = 0.1
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)
    """A number in [0, 1): tests pass a fixed one."""

    def __post_init__(self) -> None:
        for name in ("initial", "maximum"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"Backoff.{name} must be 0 or more, not {value!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff.jitter must be between 0 and 1, not {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """The delay after ``attempt`` failed attempts before jitter (attempt 1: initial)."""
        doublings = min(max(attempt - 1, 0), MAX_DOUBLINGS)
        return min(self.initial * 2**doublings, self.maximum)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after ``attempt`` failed attempts (1 for the first failure)."""
        ceiling = self.ceiling(attempt)
        return ceiling * (1 - self.jitter * self.random())
