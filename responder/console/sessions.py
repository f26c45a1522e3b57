"""Signed-in sessions, kept in memory: a random id in an HttpOnly cookie, a CSRF token
per session, an idle timeout. A restart signs everybody out, which is fine for a console.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

MAX_SESSIONS: Final = 1000
"""Sessions kept at most: the oldest is ended to make room for a new one."""
SIGN_IN_FAILURES: Final = 10
"""Failed sign-ins from one address within SIGN_IN_WINDOW before it is refused for a while."""
SIGN_IN_WINDOW: Final = 300.0


@dataclass(frozen=True)
class Session:
    id: str
    name: str
    """The name of the token that signed in (``[[api.tokens]] name``)."""
    csrf: str
    created_at: float
    expires_at: float


def same(presented: str, expected: str) -> bool:
    """Constant-time comparison of two tokens; False for an empty one."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


class Sessions:
    """The signed-in sessions, safe to use from the server's threads."""

    def __init__(self, timeout: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, name: str) -> Session:
        now = self.clock()
        session = Session(
            id=secrets.token_urlsafe(32),
            name=name,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + self.timeout,
        )
        with self._lock:
            self._prune(now)
            while len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions.values(), key=lambda s: s.created_at)
                del self._sessions[oldest.id]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The session under this id, its idle timeout started again; None when there is
        none or it expired."""
        if not session_id:
            return None
        now = self.clock()
        with self._lock:
            found = self._sessions.get(session_id)
            if found is None:
                return None
            if found.expires_at <= now:
                del self._sessions[session_id]
                return None
            found = replace(found, expires_at=now + self.timeout)
            self._sessions[session_id] = found
            return found

    def end(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        with self._lock:
            self._prune(self.clock())
            return len(self._sessions)

    def _prune(self, now: float) -> None:
        for key in [key for key, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[key]


class SignInLimiter:
    """Failed sign-ins per client address over a moving window."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, address: str) -> bool:
        with self._lock:
            return len(self._recent(address)) >= SIGN_IN_FAILURES

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self.clock())
            if len(self._failures) > 10_000:  # many addresses: forget the quiet ones
                for key in [k for k, v in self._failures.items() if not v]:
                    del self._failures[key]

    def _recent(self, address: str) -> deque[float]:
        times = self._failures.setdefault(address, deque())
        while times and times[0] <= self.clock() - SIGN_IN_WINDOW:
            times.popleft()
        return times
