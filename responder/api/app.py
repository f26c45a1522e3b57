"""``build_api(ctx)``: the FastAPI application: auth, errors, the access log and routes.

Every route is under /v1; the OpenAPI document is /v1/openapi.json and, with
``api.docs = true``, the interactive pages are /v1/docs. Plugins add routes through the
``responder_api`` hook (``ApiRoutes``); the core's are in ``responder.api.routes``.
"""

import threading
import time
from typing import Annotated, Any, Final

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from responder import __version__
from responder.api.auth import RateLimits, TokenSet
from responder.api.context import ApiContext, ApiError, ApiRoutes, ApiUnavailable
from responder.api.settings import ApiSettings, ApiToken

PREFIX: Final = "/v1"
MAX_BODY: Final = 2 * 1024 * 1024
"""The largest request body taken (a send to 1,000 numbers is some 20 KB)."""
REALM: Final = 'Bearer realm="responder"'

log = structlog.get_logger("responder.api")


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str
    """A short code: unauthorized, forbidden, rate_limited, invalid, not_found, conflict,
    unavailable, internal."""
    message: str
    """What was wrong and what would be right, for people."""
    details: list[dict[str, Any]] | None = None


ERRORS: Final = {
    400: "the request could not be read",
    401: "no token, or a token that is not known",
    403: "the token lacks the scope the route needs",
    404: "no such thing",
    409: "a conflict: the idempotency key was used for another request",
    422: "the request's values are not acceptable; the message says which and why",
    429: "the token's rate limit was reached; Retry-After says when to try again",
    503: "the daemon is busy, starting or stopping; try again (with the same idempotency key)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may answer these error codes (401, 403 and 429
    are added to every authenticated route)."""
    return {code: {"model": ErrorBody, "description": ERRORS.get(code, "")} for code in codes}


def error_json(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class _Auth:
    """Tokens and rate limits of the current settings, rebuilt when a reload changes them."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._settings: ApiSettings | None = None
        self.tokens = TokenSet(())
        self.limits: RateLimits | None = None

    def current(self) -> tuple[TokenSet, RateLimits]:
        settings = self.ctx.settings
        if settings is not self._settings:
            with self._lock:
                if settings is not self._settings:
                    self.tokens = TokenSet(settings.tokens)
                    self.limits = RateLimits(settings)
                    self._settings = settings
        assert self.limits is not None
        return self.tokens, self.limits


_bearer = HTTPBearer(auto_error=False, description="a token of [[api.tokens]]")


async def too_large(scope: Scope, receive: Receive, send: Send) -> None:
    message = f"the body is larger than {MAX_BODY} bytes"
    await error_json(413, "too_large", message)(scope, receive, send)


async def receive_nothing() -> Message:
    return {"type": "http.disconnect"}


async def _buffered(receive: Receive) -> Receive | None:
    """The whole body read, as a ``receive`` that hands it on; None when over MAX_BODY."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            return None
        if not message.get("more_body", False):
            break
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        done = True
        return {"type": "http.request", "body": bytes(body), "more_body": False}

    return replay


class AccessLog:
    """One log line per request: method, path (no query: it may hold text), status,
    duration and the token's name, never its value. Plain ASGI, to cost little."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await too_large(scope, receive, send)
            log.info("api_request", method=scope["method"], path=scope["path"], status=413)
            return

        if b"content-length" not in headers and b"transfer-encoding" in headers:
            # A chunked body: read it here, up to MAX_BODY, and hand it on whole.
            buffered = await _buffered(receive)
            if buffered is None:
                await too_large(scope, receive_nothing, send)
                log.info("api_request", method=scope["method"], path=scope["path"], status=413)
                return
            receive = buffered

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            state = scope.get("state") or {}
            log.info(
                "api_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                ms=round((time.perf_counter() - start) * 1000, 1),
                token=state.get("token_name"),
            )


def build_api(ctx: ApiContext, *, plugin_routes: bool = True) -> FastAPI:
    """The API application for ``ctx``; plugins' routes are added from the App in use
    now (``plugin_routes=False``: the core's only)."""
    settings = ctx.settings
    api = FastAPI(
        title="sms-responder",
        version=__version__,
        description="Send SMS through the account's compliance path, follow them, read "
        "the history, and manage opt-outs and conversations. See docs/api.md.",
        openapi_url=f"{PREFIX}/openapi.json",
        docs_url=f"{PREFIX}/docs" if settings.docs else None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
    )
    auth = _Auth(ctx)

    def require(scope: str) -> Any:
        async def dependency(  # async: run on the event loop, no thread hop
            request: Request,
            credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
        ) -> ApiToken:
            tokens, limits = auth.current()
            token = tokens.check(credentials.credentials) if credentials is not None else None
            if token is None:
                challenge = REALM if credentials is None else f'{REALM}, error="invalid_token"'
                log.warning(
                    "api_unauthorized",
                    path=request.url.path,
                    client=request.client.host if request.client else None,
                    reason="no token" if credentials is None else "unknown token",
                )
                raise ApiError(
                    401,
                    "unauthorized",
                    "send a known token as Authorization: Bearer <token>",
                    {"WWW-Authenticate": challenge},
                )
            request.state.token_name = token.name
            if scope not in token.scopes:
                raise ApiError(
                    403,
                    "forbidden",
                    f"the token {token.name!r} lacks the scope {scope!r}",
                    {"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
                )
            verdict = limits.hit(token)
            if not verdict.allowed:
                raise ApiError(
                    429,
                    "rate_limited",
                    f"the token {token.name!r} made too many requests: try again in "
                    f"{verdict.retry_after} s",
                    {"Retry-After": str(verdict.retry_after)},
                )
            return token

        return Depends(dependency)

    _install_errors(api)
    from responder.api import routes

    router = APIRouter(prefix=PREFIX, responses=error_responses(400, 401, 403, 429, 503))
    routes.add_core_routes(router, ctx, require)
    plugin_router = APIRouter(prefix=PREFIX, responses=error_responses(400, 401, 403, 429, 503))
    if plugin_routes:
        hooks = ApiRoutes(
            router=plugin_router,
            require=require,
            app=ctx.current,
            run=lambda fn, timeout=None, app=None: (
                ctx.run(fn, timeout) if app is None else ctx.run_on(fn, app, timeout)
            ),
            send=lambda token, to, text, key="", account=None: routes.send_as(
                ctx, token, to, text, key=key, account=account
            ),
            responses=error_responses,
            account=lambda token, name: ctx.account_app(name, token.accounts),
            accounts=lambda token: ctx.visible(token.accounts),
        )
        ctx.current().plugins.hook.responder_api(api=hooks)
    api.include_router(router)
    api.include_router(plugin_router)
    console = ctx.current().settings.console
    if console.enabled:  # the staff console's pages, behind sessions of console tokens
        from responder.console.web import build_console

        api.mount("/console", build_console(ctx, console))
    api.add_middleware(AccessLog)
    return api


def _install_errors(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(_request: Request, err: ApiError) -> JSONResponse:
        return error_json(err.status, err.code, err.message, err.headers)

    @api.exception_handler(ApiUnavailable)
    async def unavailable(_request: Request, err: ApiUnavailable) -> JSONResponse:
        message = f"{err}; repeat the request (a send under the same Idempotency-Key goes out once)"
        return error_json(503, "unavailable", message, {"Retry-After": "5"})

    @api.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        details = []
        for item in err.errors():
            where = ".".join(str(part) for part in item.get("loc", ()))
            details.append({"field": where, "problem": str(item.get("msg", ""))})
        first = details[0] if details else {"field": "", "problem": "not acceptable"}
        message = f"{first['field']}: {first['problem']}" if first["field"] else first["problem"]
        if len(details) > 1:
            message += f" (and {len(details) - 1} more)"
        body = {"error": "invalid", "message": message, "details": details}
        return JSONResponse(body, status_code=422)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, err: StarletteHTTPException) -> JSONResponse:
        codes = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
        code = codes.get(err.status_code, "error")
        return error_json(err.status_code, code, str(err.detail), dict(err.headers or {}))

    @api.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        log.exception("api_failed", path=request.url.path, error=type(err).__name__)
        return error_json(500, "internal", "the server failed: see its log")
