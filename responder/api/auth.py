"""Bearer tokens: found in constant time, scopes checked, requests limited per token."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from responder.api.settings import ApiSettings, ApiToken


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class TokenSet:
    """The configured tokens. ``check`` compares the presented value with every token,
    each in constant time, and never stops early: how long it takes says nothing about
    which token (or how much of one) matched."""

    def __init__(self, tokens: tuple[ApiToken, ...]) -> None:
        self._tokens = tuple((_digest(token.token), token) for token in tokens if token.token)

    def check(self, presented: str) -> ApiToken | None:
        wanted = _digest(presented)
        found: ApiToken | None = None
        for digest, token in self._tokens:
            if hmac.compare_digest(wanted, digest) and found is None:
                found = token
        return found

    def __len__(self) -> int:
        return len(self._tokens)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0
    """Whole seconds until a request would be let through (when not allowed)."""


class RateLimits:
    """Each token's rate limit (its own ``rate_limit``, else ``api.rate_limit``), counted
    in memory over a moving window; a reload with other limits starts counting afresh."""

    def __init__(self, settings: ApiSettings) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._items: dict[str, list[RateLimitItem]] = {}
        for token in settings.tokens:
            spec = token.rate_limit or settings.rate_limit
            self._items[token.name] = list(parse_many(spec)) if spec else []

    def hit(self, token: ApiToken) -> Verdict:
        for item in self._items.get(token.name, ()):
            if not self._limiter.hit(item, token.name):
                reset = self._limiter.get_window_stats(item, token.name).reset_time
                return Verdict(False, max(1, int(reset - time.time() + 0.999)))
        return Verdict(True)
