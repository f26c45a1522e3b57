"""What the API's routes reach the daemon through: the current App and its processing
thread. Standard library only."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from responder.api.settings import ApiSettings
from responder.normalise import number_argument

if TYPE_CHECKING:
    from responder.app import App

T = TypeVar("T")

SUBMIT_TIMEOUT = 15.0
"""Seconds a request waits for the processing thread before it answers 503."""


class ApiUnavailable(Exception):
    """The daemon is not running an App (starting, stopping)."""


class ApiError(Exception):
    """An error answer: ``status`` with ``{"error": code, "message": message}``.

    Raise it from a route (a plugin's too, through ``responder_api``); the message is
    shown to the caller, so it must never hold a secret."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ApiContext:
    """The running configuration as the API sees it.

    ``app`` returns the App in use now (a SIGHUP reload replaces it; the server stays);
    ``on_processor(fn, timeout)`` runs ``fn(app)`` on the processing thread and returns
    its result (raising what it raised, TimeoutError after ``timeout``)."""

    app: Callable[[], App | None]
    on_processor: Callable[[Callable[[App], Any], float], Any]
    submit_timeout: float = SUBMIT_TIMEOUT
    app_for: Callable[[str], App | None] | None = None
    """The App of an account (several accounts), or None when it is not served; None:
    one account, ``app``'s."""
    accounts: Callable[[], list[str]] | None = None
    """The accounts served (several accounts); None: ``app``'s only."""

    def served(self, account: str | None, fallback: App) -> App:
        """The App of ``account`` when several accounts are served and it is one, else
        ``fallback`` (the App handed to ``run``)."""
        if account is None or self.app_for is None:
            return fallback
        return self.app_for(account) or fallback

    def account_app(self, account: str | None, allowed: frozenset[str] | None = None) -> App:
        """The App of ``account`` (None: the default one), for a token limited to
        ``allowed`` accounts (None: every one): ApiError 403 or 404 otherwise."""
        if account is None:
            served = self.accounts() if self.accounts is not None else []
            if allowed is not None and len(served) > 1:  # the token's own, when one
                served = [name for name in served if name in allowed] or served
            if len(served) > 1 and "default" not in served:
                raise ApiError(
                    422,
                    "invalid",
                    "account: several accounts are served: name one (body.account or"
                    f" ?account=), one of {', '.join(served[:10])}"
                    + (", ..." if len(served) > 10 else ""),
                )
            app = self.app_for(served[0]) if self.app_for and len(served) == 1 else None
            app = app or self.current()
            account = app.account
        elif self.app_for is None:
            app = self.current()
            if account != app.account:
                raise ApiError(404, "not_found", f"no account {account!r}")
        else:
            found = self.app_for(account)
            if found is None:
                raise ApiError(404, "not_found", f"no account {account!r}")
            app = found
        if allowed is not None and account not in allowed:
            raise ApiError(403, "forbidden", f"this token may not use the account {account!r}")
        return app

    def visible(self, allowed: frozenset[str] | None = None) -> list[str]:
        """The accounts served that a token limited to ``allowed`` (None: every one) may
        see, sorted."""
        served = self.accounts() if self.accounts is not None else [self.current().account]
        return sorted(name for name in served if allowed is None or name in allowed)

    def run_on(self, fn: Callable[[App], T], app: App, timeout: float | None = None) -> T:
        """``fn(app)`` on the processing thread, for ``app`` (an account's) rather than
        the one the processing thread holds."""
        return self.run(lambda _held: fn(app), timeout)

    @classmethod
    def for_app(cls, app: App) -> ApiContext:
        """A context without a daemon (tests, benchmarks, commands): ``on_processor`` runs
        one function at a time on the calling thread."""
        lock = threading.Lock()

        def run(fn: Callable[[App], Any], timeout: float) -> Any:
            if not lock.acquire(timeout=timeout):
                raise TimeoutError("the processing lock was busy")
            try:
                return fn(app)
            finally:
                lock.release()

        return cls(app=lambda: app, on_processor=run)

    def current(self) -> App:
        app = self.app()
        if app is None:
            raise ApiUnavailable("the daemon is not running")
        return app

    @property
    def settings(self) -> ApiSettings:
        return self.current().settings.api

    def run(self, fn: Callable[[App], T], timeout: float | None = None) -> T:
        """``fn(app)`` on the processing thread."""
        result: T = self.on_processor(fn, self.submit_timeout if timeout is None else timeout)
        return result


@dataclass(frozen=True)
class ApiRoutes:
    """What a plugin's ``responder_api`` hook gets, to add endpoints to the HTTP API.

    ``router``: a FastAPI ``APIRouter`` mounted under /v1; ``require(scope)``: a
    dependency (``Depends``) that lets only a token with that scope in and gives its
    ``ApiToken``; ``app()``: the App in use now; ``account(token, name)``: the App of
    the account ``name`` (a route's ``?account=``; None: the only one) that ``token``
    may use, else ApiError 422 (several served, none named), 403 (not the token's) or
    404 (not served); ``accounts(token)``: the accounts served that ``token`` may see;
    ``run(fn, app=None)``: ``fn(app)`` on the processing thread (for whatever calls
    hooks or writes what a message would), for ``app`` when given (an account's);
    ``send(token, to, text, key=..., account=None)``: a send through the compliance
    path from ``account`` (as ``account(token, account)`` picks it), answered as
    POST /v1/messages; ``responses(404, ...)``: error answers for ``responses=``;
    ``answer(schema, description)``: a JSON answer for ``responses=``; ``number(text)``:
    a path's phone number, canonical; ``ApiError(status, code, message)``: raise it to
    answer an error.
    """

    router: Any
    require: Callable[[str], Any]
    app: Callable[[], Any]
    run: Callable[..., Any]
    send: Callable[..., dict[str, Any]]
    responses: Callable[..., dict[int | str, dict[str, Any]]]
    account: Callable[[Any, str | None], Any] = lambda _token, _name: None
    accounts: Callable[[Any], list[str]] = lambda _token: []

    @staticmethod
    def answer(schema: dict[str, Any], description: str) -> dict[str, Any]:
        """A JSON answer of ``schema`` for a route's ``responses=`` (OpenAPI)."""
        return {"description": description, "content": {"application/json": {"schema": schema}}}

    @staticmethod
    def number(text: str) -> str:
        """``text`` (a path's phone number) canonical; ApiError 422 when it is not one."""
        found = number_argument(text)
        if found is None:
            raise ApiError(422, "invalid", f"not a phone number: {text!r}")
        return found
