"""The console's pages: a FastAPI application the API mounts under /console.

Server-rendered (Jinja2, every value escaped), progressively enhanced with htmx (the
inbox and a conversation refresh themselves); every form works without JavaScript. A
session cookie (HttpOnly, SameSite=Strict, Secure over TLS) follows a sign-in with a
token that has the ``console`` scope; every POST carries the session's CSRF token (a
form field, or the X-CSRF-Token header htmx adds) or is refused with 403.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
from collections.abc import Callable
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from responder.api.auth import TokenSet
from responder.api.context import ApiContext, ApiUnavailable
from responder.api.settings import CONSOLE
from responder.app import App
from responder.console import actions, views
from responder.console.i18n import translate
from responder.console.sessions import Session, Sessions, SignInLimiter, same
from responder.console.settings import LANGUAGES, ConsoleSettings
from responder.normalise import number_argument
from responder.store import DEFAULT_ACCOUNT

SESSION_COOKIE: Final = "responder_console"
LOGIN_COOKIE: Final = "responder_console_login"
LANGUAGE_COOKIE: Final = "responder_console_lang"
CSRF_HEADER: Final = "x-csrf-token"
MAX_FORM: Final = 64 * 1024
"""The largest form body accepted, in bytes."""
MAX_REPLY: Final = 1000
"""The most characters of a staff reply."""
POLL_SECONDS: Final = 5
STATIC: Final = {
    "htmx.min.js": "text/javascript; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Refused(Exception):
    """A request the console answers with an error page."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(key)
        self.status = status
        self.key = key


def templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("responder.console", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        extensions=["jinja2.ext.do"],
    )
    env.globals["poll_seconds"] = POLL_SECONDS
    return env


def _static_files() -> dict[str, bytes]:
    folder = resources.files("responder.console") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


class Console:
    """The console's state: its sessions, templates and the daemon it shows."""

    def __init__(
        self,
        ctx: ApiContext,
        settings: ConsoleSettings,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ctx = ctx
        self.settings = settings
        self.sessions = Sessions(settings.session_timeout, **({"clock": clock} if clock else {}))
        self.limiter = SignInLimiter(**({"clock": clock} if clock else {}))
        self.env = templates()
        self.static = _static_files()
        self.proxies = tuple(
            ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies
        )
        self._flashes: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    # -- requests ----------------------------------------------------------------------

    def base(self, request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def _trusted(self, request: Request) -> bool:
        host = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.proxies)

    def over_tls(self, request: Request) -> bool:
        if request.url.scheme == "https":
            return True
        proto = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return proto == "https" and self._trusted(request)

    def client_address(self, request: Request) -> str:
        host = request.client.host if request.client else ""
        forwarded = request.headers.get("x-forwarded-for", "")
        if forwarded and self._trusted(request):
            return forwarded.split(",")[-1].strip()
        return host

    def secure(self, request: Request) -> bool:
        mode = self.settings.secure_cookies
        return mode == "true" or (mode == "auto" and self.over_tls(request))

    def language(self, request: Request) -> str:
        chosen = request.cookies.get(LANGUAGE_COOKIE, "")
        return chosen if chosen in LANGUAGES else self.settings.language

    def session(self, request: Request) -> Session | None:
        """The request's session; it ends once its token is gone from the configuration
        or lost the ``console`` scope (a reload)."""
        found = self.sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        if found is None:
            return None
        try:
            tokens = self.ctx.current().settings.api.tokens
        except ApiUnavailable:
            return found
        if not any(token.name == found.name and CONSOLE in token.scopes for token in tokens):
            self.sessions.end(found.id)
            return None
        return found

    def allowed(self, session: Session) -> frozenset[str] | None:
        """The accounts the session's token is limited to (``accounts`` of its
        ``[[api.tokens]]``, as configured now); None: every one."""
        try:
            tokens = self.ctx.current().settings.api.tokens
        except ApiUnavailable:
            return frozenset()  # not known now: none rather than every one
        for token in tokens:
            if token.name == session.name:
                return token.accounts
        return frozenset()

    def accounts(self, session: Session) -> tuple[str, ...]:
        """The accounts the session may pick: those the daemon serves (with several; else
        those in the store), less those its token is not limited to."""
        if self.ctx.accounts is not None:
            served = list(self.ctx.accounts())
        else:
            served = list(views.accounts(self.app()))
        allowed = self.allowed(session)
        return tuple(sorted(name for name in served if allowed is None or name in allowed))

    def set_cookie(
        self, response: Response, request: Request, name: str, value: str, *, max_age: int | None
    ) -> None:
        response.set_cookie(
            name,
            value,
            max_age=max_age,
            path=self.base(request) or "/",
            secure=self.secure(request),
            httponly=True,
            samesite="strict",
        )

    def app(self) -> App:
        try:
            return self.ctx.current()
        except ApiUnavailable:
            raise Refused(503, "unavailable") from None

    # -- flashes (one notice shown after a redirect) -------------------------------------

    def flash(self, session: Session, kind: str, text: str) -> None:
        with self._lock:
            self._flashes[session.id] = (kind, text)
            if len(self._flashes) > 2000:
                self._flashes.pop(next(iter(self._flashes)))

    def take_flash(self, session: Session) -> tuple[str, str] | None:
        with self._lock:
            return self._flashes.pop(session.id, None)

    # -- rendering ---------------------------------------------------------------------

    def render(
        self,
        request: Request,
        template: str,
        *,
        session: Session | None,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        language = self.language(request)
        base = self.base(request)

        def t(key: str, **fill: object) -> str:
            return translate(language, key, **fill)

        notice = self.take_flash(session) if session is not None else None
        values.setdefault("page_name", "")
        html = self.env.get_template(template).render(
            t=t,
            lang=language,
            other_lang="en" if language == "zh" else "zh",
            base=base,
            session=session,
            csrf=session.csrf if session else "",
            notice=notice,
            path=request.url.path,
            query=request.url.query,
            **values,
        )
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(self, request: Request, status: int, key: str) -> HTMLResponse:
        session = self.session(request)
        response = self.render(
            request, "error.html", session=session, status=status, message_key=key
        )
        if status == 401 and request.headers.get("hx-request"):
            response.headers["HX-Redirect"] = f"{self.base(request)}/login"
        return response

    def redirect(self, request: Request, path: str, **query: str) -> RedirectResponse:
        query = {k: v for k, v in query.items() if v}
        target = f"{self.base(request)}{path}" + (f"?{urlencode(query)}" if query else "")
        return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


async def read_form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the first value of each)."""
    body = await request.body()
    if len(body) > MAX_FORM:
        raise Refused(413, "too_large")
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


def build_console(ctx: ApiContext, settings: ConsoleSettings) -> FastAPI:
    """The console as an ASGI application, for the API to mount under /console."""
    console = Console(ctx, settings)
    web = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, title="console")
    web.state.console = console

    @web.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> Response:
        return console.error(request, err.status, err.key)

    async def posted(request: Request) -> tuple[Session, dict[str, str]]:
        """The session and form of a POST, its CSRF token checked."""
        session = console.session(request)
        form = await read_form(request)
        presented = request.headers.get(CSRF_HEADER) or form.get("csrf", "")
        if session is None:
            if presented:  # a form from a session that ended
                raise Refused(401, "expired")
            raise Refused(403, "forbidden")
        if not same(presented, session.csrf):
            raise Refused(403, "forbidden")
        return session, form

    def page_or_login(request: Request) -> Session | RedirectResponse:
        session = console.session(request)
        if session is None:
            if request.headers.get("hx-request"):
                raise Refused(401, "expired")
            return console.redirect(request, "/login")
        return session

    def account_of(session: Session, raw: str | None) -> str | None:
        """The account asked for when the session may pick it; else None (every account)
        for a session that may see every one, or the first it may see."""
        known = console.accounts(session)
        if raw and raw in known:
            return raw
        if console.allowed(session) is not None:  # never "every account": only its own
            if not known:
                raise Refused(403, "forbidden")
            return known[0]
        return None if len(known) > 1 else (known[0] if known else DEFAULT_ACCOUNT)

    def number_of(raw: str) -> str:
        number = number_argument(raw)
        if number is None:
            raise Refused(404, "not_found")
        return number

    # -- sign-in -------------------------------------------------------------------------

    @web.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        return console.redirect(request, "/inbox")

    @web.get("/login", include_in_schema=False)
    def login_page(request: Request) -> Response:
        nonce = secrets.token_urlsafe(24)
        response = console.render(request, "login.html", session=None, nonce=nonce, failed="")
        console.set_cookie(response, request, LOGIN_COOKIE, nonce, max_age=3600)
        return response

    @web.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await read_form(request)
        if not same(form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")):
            raise Refused(403, "forbidden")
        address = console.client_address(request)
        if console.limiter.blocked(address):
            return console.render(
                request,
                "login.html",
                session=None,
                status=429,
                nonce=form["csrf"],
                failed="too_many",
            )
        app = console.app()
        token = TokenSet(app.settings.api.tokens).check(form.get("token", "").strip())
        if token is None or CONSOLE not in token.scopes:
            console.limiter.failed(address)
            app.log.warning("console_sign_in_refused", client=address)
            return console.render(
                request,
                "login.html",
                session=None,
                status=401,
                nonce=form["csrf"],
                failed="bad_token",
            )
        session = console.sessions.create(token.name)
        app.log.info("console_signed_in", token=token.name, client=address)
        response = console.redirect(request, "/inbox")
        console.set_cookie(
            response, request, SESSION_COOKIE, session.id, max_age=int(settings.session_timeout)
        )
        response.delete_cookie(LOGIN_COOKIE, path=console.base(request) or "/")
        return response

    @web.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session, _form = await posted(request)
        console.sessions.end(session.id)
        response = console.redirect(request, "/login")
        response.delete_cookie(SESSION_COOKIE, path=console.base(request) or "/")
        return response

    @web.get("/lang/{code}", include_in_schema=False)
    def language(request: Request, code: str, next: str = "") -> Response:
        base = console.base(request)
        target = next if next.startswith(f"{base}/") and "//" not in next else f"{base}/inbox"
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        if code in LANGUAGES:
            console.set_cookie(response, request, LANGUAGE_COOKIE, code, max_age=365 * 86400)
        return response

    @web.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        return Response(
            console.static[name],
            media_type=STATIC[name],
            headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
        )

    # -- inbox -----------------------------------------------------------------------------

    @web.get("/inbox", include_in_schema=False)
    def inbox(request: Request, page: int = 0, account: str = "") -> Response:
        found = page_or_login(request)
        if isinstance(found, Response):
            return found
        app = console.app()
        chosen = account_of(found, account)
        view = views.inbox(app, account=chosen, page=page)
        template = "inbox_lists.html" if request.headers.get("hx-request") else "inbox.html"
        return console.render(
            request,
            template,
            session=found,
            view=view,
            accounts=console.accounts(found),
            every=console.allowed(found) is None,
            account=chosen or "",
            page_name="inbox",
        )

    # -- one conversation ----------------------------------------------------------------

    @web.get("/c/{number}", include_in_schema=False)
    def conversation(request: Request, number: str, account: str = "") -> Response:
        found = page_or_login(request)
        if isinstance(found, Response):
            return found
        app = console.app()
        chosen = account_of(found, account) or DEFAULT_ACCOUNT
        view = views.conversation(app, number_of(number), chosen)
        template = "lines.html" if request.headers.get("hx-request") else "conversation.html"
        return console.render(
            request,
            template,
            session=found,
            view=view,
            page_name="inbox",
            account=chosen,
            reply_key=secrets.token_urlsafe(16),
        )

    async def conversation_action(
        request: Request,
        number: str,
        work: Callable[[App, str, str, Session, dict[str, str]], tuple[str, str]],
    ) -> Response:
        session, form = await posted(request)
        canonical = number_of(number)
        account = form.get("account") or DEFAULT_ACCOUNT

        def run() -> tuple[str, str]:
            app = console.app()
            if account not in console.accounts(session):
                raise Refused(404, "not_found")
            return work(app, canonical, account, session, form)

        try:
            kind, text = await run_in_threadpool(run)
        except (TimeoutError, ApiUnavailable):  # the processing thread is busy or stopping
            kind, text = "error", translate(console.language(request), "busy")
        console.flash(session, kind, text)
        return console.redirect(request, f"/c/{canonical}", account=account)

    @web.post("/c/{number}/reply", include_in_schema=False)
    async def reply(request: Request, number: str) -> Response:
        language = console.language(request)

        def work(
            app: App, canonical: str, account: str, session: Session, form: dict[str, str]
        ) -> tuple[str, str]:
            text = form.get("text", "").strip()
            if not text:
                return "error", translate(language, "empty_text")
            # The form's own key: sent twice (a double click, a retry after "busy"), it
            # goes out once.
            key = form.get("key", "")[:64]
            outcome = ctx.run(
                lambda live: actions.reply(
                    ctx.served(account, live),
                    canonical,
                    account,
                    text[:MAX_REPLY],
                    session.name,
                    key=key,
                )
            )
            if outcome.replayed or outcome.status in ("queued", "scheduled"):
                return "ok", translate(language, "sent", parts=outcome.parts)
            key = "suppressed" if outcome.status == "suppressed" else "invalid"
            return "error", translate(language, key, reason=outcome.reason or outcome.status)

        return await conversation_action(request, number, work)

    @web.post("/c/{number}/takeover", include_in_schema=False)
    async def take_over(request: Request, number: str) -> Response:
        language = console.language(request)

        def work(
            app: App, canonical: str, account: str, session: Session, form: dict[str, str]
        ) -> tuple[str, str]:
            ctx.run(
                lambda live: actions.take_over(
                    ctx.served(account, live), canonical, account, session.name
                )
            )
            return "ok", translate(language, "taken_over")

        return await conversation_action(request, number, work)

    @web.post("/c/{number}/release", include_in_schema=False)
    async def release(request: Request, number: str) -> Response:
        language = console.language(request)

        def work(
            app: App, canonical: str, account: str, session: Session, form: dict[str, str]
        ) -> tuple[str, str]:
            done = ctx.run(
                lambda live: actions.hand_back(
                    ctx.served(account, live), canonical, account, session.name
                )
            )
            if done:
                return "ok", translate(language, "handed_back")
            return "error", translate(language, "not_with_person")

        return await conversation_action(request, number, work)

    # -- rules tester --------------------------------------------------------------------

    @web.get("/rules", include_in_schema=False)
    def rules_page(request: Request) -> Response:
        found = page_or_login(request)
        if isinstance(found, Response):
            return found
        return console.render(
            request,
            "rules.html",
            session=found,
            outcome=None,
            text="",
            src="13800138000",
            page_name="rules",
        )

    @web.post("/rules", include_in_schema=False)
    async def rules(request: Request) -> Response:
        session, form = await posted(request)
        text = form.get("text", "")[:MAX_REPLY]
        src = number_argument(form.get("src", "")) or "13800138000"
        outcome = await run_in_threadpool(lambda: views.try_rules(console.app(), text, src))
        template = "rules_outcome.html" if request.headers.get("hx-request") else "rules.html"
        return console.render(
            request,
            template,
            session=session,
            outcome=outcome,
            text=text,
            src=src,
            page_name="rules",
        )

    # -- opt-outs ------------------------------------------------------------------------

    @web.get("/optouts", include_in_schema=False)
    def optouts(request: Request, q: str = "") -> Response:
        found = page_or_login(request)
        if isinstance(found, Response):
            return found
        app = console.app()
        return console.render(
            request,
            "optouts.html",
            session=found,
            rows=views.optouts(app, q),
            q=q,
            page_name="optouts",
            plugin=actions.optout_plugin(app) is not None,
        )

    async def optout_change(request: Request, add: bool) -> Response:
        session, form = await posted(request)
        language = console.language(request)
        raw = form.get("number", "")
        number = number_argument(raw)
        if number is None:
            console.flash(session, "error", translate(language, "bad_number", number=raw))
            return console.redirect(request, "/optouts")
        change = actions.optout_add if add else actions.optout_remove
        try:
            done = await run_in_threadpool(
                lambda: ctx.run(lambda live: change(live, number, session.name))
            )
        except (TimeoutError, ApiUnavailable):
            console.flash(session, "error", translate(language, "busy"))
            return console.redirect(request, "/optouts")
        if done is None:
            console.flash(session, "error", translate(language, "no_optout_plugin"))
        elif add:
            key = "added" if done else "already"
            console.flash(
                session, "ok" if done else "error", translate(language, key, number=number)
            )
        else:
            key = "removed" if done else "not_on_list"
            console.flash(
                session, "ok" if done else "error", translate(language, key, number=number)
            )
        return console.redirect(request, "/optouts")

    @web.post("/optouts/add", include_in_schema=False)
    async def optout_add(request: Request) -> Response:
        return await optout_change(request, True)

    @web.post("/optouts/remove", include_in_schema=False)
    async def optout_remove(request: Request) -> Response:
        return await optout_change(request, False)

    # -- health --------------------------------------------------------------------------

    @web.get("/health", include_in_schema=False)
    def health(request: Request, account: str = "") -> Response:
        found = page_or_login(request)
        if isinstance(found, Response):
            return found
        app = console.app()
        chosen = account_of(found, account)
        return console.render(
            request,
            "health.html",
            session=found,
            view=views.health(app, chosen),
            accounts=console.accounts(found),
            every=console.allowed(found) is None,
            account=chosen or "",
            page_name="health",
        )

    @web.post("/health/retry", include_in_schema=False)
    async def retry(request: Request) -> Response:
        session, form = await posted(request)
        language = console.language(request)
        account = form.get("account") or None
        if console.allowed(session) is not None and account not in console.accounts(session):
            raise Refused(404, "not_found")  # a limited token names one of its accounts
        try:
            item = int(form.get("item", ""))
        except ValueError:
            raise Refused(404, "not_found") from None
        revived = await run_in_threadpool(
            lambda: actions.retry_dead(console.app(), item, account, session.name)
        )
        console.flash(
            session, "ok" if revived else "error", translate(language, "retried", n=revived)
        )
        return console.redirect(request, "/health", account=account or "")

    return web
