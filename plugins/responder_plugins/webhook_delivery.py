"""Webhook deliveries: the store rows, the signed HTTP request, retries and the circuit breaker.

One row per (message, target) in ``webhook_deliveries``. A row is ``pending`` until a
worker claims it (``sending``), then ``delivered``, back to ``pending`` with a backoff, or
``dead`` (a dead letter: gave up at ``max_age`` or refused for good). The claim carries a
random token: a worker whose row was taken from it (a restart or reload requeued it)
cannot write its late result over the new attempt's.

An answer (reply mode) is handed to ``app.reply_later`` in two steps: first the row
records the answer as ``queuing`` with the number of outbox rows the message had, then
``reply_later`` runs, then the row says ``queued``. A restart that finds ``queuing`` looks
at the outbox to tell whether the answer got there, so it is queued exactly once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import email.utils
import hashlib
import hmac
import json
import random
import ssl
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpcore
import httpx
import structlog

import responder_plugins.optout
from responder import __version__
from responder.gateway import error_reason
from responder.logs import REDACTED, redactor
from responder.models import PLATFORM_TZ, Message, Reply
from responder.normalise import is_mobile
from responder.pipeline import first_reply

if TYPE_CHECKING:
    from responder.app import App
    from responder_plugins.webhook import Target, WebhookSettings

log = structlog.get_logger("responder.webhook")

SCHEMA: Final = (
    """
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
    """,
)

# Row states.
PENDING: Final = "pending"
SENDING: Final = "sending"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"

# What became of a reply-mode row's answer.
QUEUING: Final = "queuing"  # handed to reply_later, not confirmed yet
QUEUED: Final = "queued"
VETOED: Final = "vetoed"  # a before-send hook cancelled it
NONE: Final = "none"  # no answer (the receiver gave none, or the fallback had none)
SILENT: Final = "silent"  # the target failed for good and on_failure = "silent"

BODY_CAP: Final = 64 * 1024
"""Bytes of a response body read at most; a longer body is refused unread."""
ANSWER_MAX_CHARS: Final = 500
MAX_RECIPIENTS: Final = 10
MAX_REDIRECTS: Final = 3
MAX_POOL: Final = 32
SHUTDOWN_GRACE: Final = 3.0
"""Seconds shutdown waits for requests in flight; the rest are retried after a restart."""
EXCERPT: Final = 200
RETRYABLE_STATUS: Final = frozenset({408, 429})
WRITE_SLICE: Final = 16 * 1024
"""Bytes written at most per socket write, so a slow reader cannot stretch one past the deadline."""
USER_AGENT: Final = f"sms-responder/{__version__}"


# The tables are created by responder_startup (when targets are configured) and by the
# webhook command. ``responder status`` on a store the daemon never prepared has none:
# status reads take that as empty.


def create_tables(app: App) -> None:
    app.store.migrate("webhook", SCHEMA)


# -- the request -------------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">``, the X-Responder-Signature value."""
    digest = hmac.new(
        secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256
    )
    return f"sha256={digest.hexdigest()}"


def request_headers(
    target: Target, body: bytes, delivery_id: str, timestamp: int
) -> dict[str, str]:
    return {
        **dict(target.headers),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        # A compressed body could expand past the cap before it is counted.
        "Accept-Encoding": "identity",
        "X-Responder-Timestamp": str(timestamp),
        "X-Responder-Signature": sign(target.secret, timestamp, body),
        "X-Responder-Delivery": delivery_id,
    }


def opted_out(app: App, number: str) -> bool:
    """Whether the sender is on the opt-out list; False when the optout plugin is off."""
    if app.plugin_config("optout") is None:
        return False
    return responder_plugins.optout.is_opted_out(app, number)


def request_body(app: App, message: Message, row: Row, target: Target) -> bytes:
    """The JSON document sent for a row; built once, at its first attempt, then kept."""
    received = message.received_at
    if received is not None:
        received = (
            received.astimezone(PLATFORM_TZ)
            if received.tzinfo
            else received.replace(tzinfo=PLATFORM_TZ)
        )
    document = {
        "delivery_id": row.delivery_id,
        "target": target.name,
        "message_id": message.id,
        "gateway_id": message.gateway_id,
        "src": message.src,
        "dst": message.dst,
        "text": message.text,
        "received_at": received.isoformat() if received else None,
        "opted_out": opted_out(app, message.src),
        "dropped": row.dropped,
        "reply_expected": row.mode == "reply",
    }
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- the response ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A receiver's answer, checked: the text of an SMS and, rarely, other recipients."""

    text: str
    to: tuple[str, ...] = ()


class AnswerRefused(ValueError):
    """A 200 response whose answer cannot become an SMS."""


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    kind: str
    """"delivered", "retry" or "permanent"."""
    status: int | None = None
    error: str = ""
    retry_after: float | None = None
    answer: Answer | None = None


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def check_answer_text(text: str) -> str:
    """The answer stripped; raises AnswerRefused when it is too long or has control characters."""
    text = text.replace("\r\n", "\n")
    for char in text:
        if char != "\n" and unicodedata.category(char) in ("Cc", "Cs"):
            raise AnswerRefused(f"the answer contains the control character U+{ord(char):04X}")
    text = text.strip()
    if len(text) > ANSWER_MAX_CHARS:
        raise AnswerRefused(f"the answer has {len(text)} characters, more than {ANSWER_MAX_CHARS}")
    return text


def _recipients(value: Any, target: Target, message: Message) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AnswerRefused('"to" must be a list of mobile numbers')
    numbers = tuple(dict.fromkeys(v.strip() for v in value))
    for number in numbers:
        if not is_mobile(number):
            raise AnswerRefused(f'"to" has an invalid mobile number: {number[:20]!r}')
    if len(numbers) > MAX_RECIPIENTS:
        raise AnswerRefused(f'"to" names {len(numbers)} numbers, more than {MAX_RECIPIENTS}')
    if set(numbers) - {message.src} and not target.allow_other_recipients:
        raise AnswerRefused(
            '"to" names numbers other than the sender: set allow_other_recipients = true '
            "on the target to allow it"
        )
    return () if numbers in ((), (message.src,)) else numbers


def parse_answer(
    target: Target, message: Message, status: int, content_type: str, body: bytes
) -> Answer | None:
    """The answer carried by a reply-mode response; None for "no answer".

    Raises AnswerRefused when the response carries an answer that cannot be sent.
    """
    if status != 200 or not body.strip():
        return None
    to: tuple[str, ...] = ()
    if target.reply_format == "text":
        charset = _charset(content_type)
        try:
            text = body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            raise AnswerRefused(f"the body is not valid {charset} text") from None
    else:
        try:
            data = json.loads(body.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            raise AnswerRefused(
                'the body is not JSON such as {"reply": "..."} '
                '(a plain-text answer needs reply_format = "text")'
            ) from None
        if not isinstance(data, dict):
            raise AnswerRefused('the body must be a JSON object such as {"reply": "..."}')
        reply = data.get("reply")
        if reply is None:
            return None
        if not isinstance(reply, str):
            raise AnswerRefused('"reply" must be a string or null')
        to = _recipients(data.get("to"), target, message)
        text = reply
    text = check_answer_text(text)
    return Answer(text=text, to=to) if text else None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return max(moment.timestamp() - now, 0.0)


# -- HTTP --------------------------------------------------------------------------------


def ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """Verification always on: the public CAs, plus a private CA when given."""
    context = httpx.create_ssl_context(trust_env=False)
    if ca_file:
        context.load_verify_locations(cafile=ca_file)
    return context


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


def _excerpt(body: bytes) -> str:
    text = body[:EXCERPT].decode("utf-8", errors="replace")
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


# httpx's timeouts bound each socket operation, not a request: a target that sends a byte
# just within each read timeout holds an attempt for ever. So each attempt has a deadline
# (in a thread-local: an attempt runs in one worker thread), and every socket operation of
# the connection pool (connect, TLS handshake, each read and write) gets at most the time
# left until it, or fails as a timeout once it has passed. That covers the status line and
# headers too (which arrive before any response object exists), and connections reused from
# the pool. Not covered: the name lookup, which Python cannot time out.


class _Deadline(threading.local):
    at: float | None = None
    """``time.monotonic()`` by which the attempt in this thread must be done; None = none."""


_deadline = _Deadline()


def _budget(timeout: float | None, error: type[Exception]) -> float | None:
    """Seconds one socket operation may take: its own timeout, never past the deadline."""
    if _deadline.at is None:
        return timeout
    left = _deadline.at - time.monotonic()
    if left <= 0:
        raise error("no complete response by the attempt's deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation keeps to the deadline of the attempt using it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self.stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.stream.read(max_bytes, _budget(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        for start in range(0, len(buffer), WRITE_SLICE):
            budget = _budget(timeout, httpcore.WriteTimeout)
            self.stream.write(buffer[start : start + WRITE_SLICE], budget)

    def close(self) -> None:
        self.stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self.stream.start_tls(ssl_context, server_hostname, budget))

    def get_extra_info(self, info: str) -> Any:
        return self.stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, its connections wrapped in ``_DeadlineStream``."""

    def __init__(self) -> None:
        self.backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        budget = _budget(timeout, httpcore.ConnectTimeout)
        stream = self.backend.connect_tcp(host, port, budget, local_address, socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self.backend.sleep(seconds)


_HTTPX_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore's errors raised as httpx's, as httpx's own transport does."""
    try:
        yield
    except Exception as err:
        for core, mapped in _HTTPX_ERRORS:
            if isinstance(err, core):
                raise mapped(str(err)) from err
        raise


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self.stream

    def close(self) -> None:
        close = getattr(self.stream, "close", None)
        if close is not None:
            close()


class DeadlineTransport(httpx.BaseTransport):
    """httpx's HTTP/1.1 transport on an httpcore pool whose sockets keep to the deadline."""

    def __init__(self, context: ssl.SSLContext, connections: int) -> None:
        self.pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=connections,
            max_keepalive_connections=connections,
            network_backend=_DeadlineBackend(),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        url = httpcore.URL(
            scheme=request.url.raw_scheme,
            host=request.url.raw_host,
            port=request.url.port,
            target=request.url.raw_path,
        )
        core = httpcore.Request(
            request.method,
            url,
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self.pool.handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self.pool.close()


class TargetClient:
    """One target's HTTP client: verified TLS, no redirect to another origin, capped bodies,
    and one deadline, ``timeout``, for a whole attempt (connect, request, response)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        context = ssl_context(str(target.ca_file) if target.ca_file else None)
        self.http = httpx.Client(
            transport=DeadlineTransport(context, target.concurrency),
            timeout=httpx.Timeout(target.timeout),
            follow_redirects=False,
            # The environment's proxies would bypass the deadline transport.
            trust_env=False,
        )

    def close(self) -> None:
        self.http.close()

    def post(
        self,
        body: bytes,
        headers: dict[str, str],
        message: Message,
        *,
        want_answer: bool,
        now: float,
    ) -> Outcome:
        """POST the body once (following a same-origin 307/308); never raises for HTTP faults.

        ``now`` is the app's time, for a Retry-After given as a date.
        """
        url = httpx.URL(self.target.url)
        _deadline.at = time.monotonic() + self.target.timeout  # real time: a network deadline
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                with self.http.stream("POST", url, content=body, headers=headers) as response:
                    location = response.headers.get("location")
                    if 300 <= response.status_code < 400 and location:
                        following = url.join(location)
                        if response.status_code in (307, 308) and _same_origin(url, following):
                            url = following
                            continue
                        return Outcome(
                            "permanent",
                            response.status_code,
                            f"HTTP {response.status_code}: redirected to "
                            f"{following.scheme}://{following.host}, not followed "
                            "(only a 307/308 to the same host is): set url to the final address",
                        )
                    return self._outcome(response, message, want_answer=want_answer, now=now)
            return Outcome("permanent", None, f"more than {MAX_REDIRECTS} redirects")
        except httpx.TimeoutException as err:
            return Outcome(
                "retry", None, f"timed out after {self.target.timeout:g} s ({error_reason(err)})"
            )
        except httpx.TransportError as err:
            return Outcome("retry", None, error_reason(err))
        finally:
            _deadline.at = None

    def _outcome(
        self,
        response: httpx.Response,
        message: Message,
        *,
        want_answer: bool,
        now: float,
    ) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            if not want_answer:
                return Outcome("delivered", status)
            declared = response.headers.get("content-length", "")
            too_long = declared.isdigit() and int(declared) > BODY_CAP
            body = b"" if too_long else _read_up_to(response, BODY_CAP)
            if too_long or len(body) > BODY_CAP:
                error = f"HTTP {status}: the response body is larger than {BODY_CAP // 1024} KiB"
                return Outcome("permanent", status, error)
            try:
                answer = parse_answer(
                    self.target, message, status, response.headers.get("content-type", ""), body
                )
            except AnswerRefused as err:
                return Outcome("permanent", status, f"HTTP {status}, answer refused: {err}")
            return Outcome("delivered", status, answer=answer)
        try:
            excerpt = _excerpt(_read_up_to(response, EXCERPT))
        except httpx.HTTPError:
            excerpt = ""
        error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
        if status >= 500 or status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("retry-after"), now)
            return Outcome("retry", status, error, retry_after=retry_after)
        return Outcome("permanent", status, error)


def _read_up_to(response: httpx.Response, limit: int) -> bytes:
    """The body's first ``limit`` bytes, and one more if it is longer: the rest is not read.

    A body that trickles is cut at the attempt's deadline (a ReadTimeout)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)[: limit + 1]


# -- rows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One delivery row, as a worker sees it when it claims the row."""

    id: int
    message_id: int
    target: str
    delivery_id: str
    mode: str
    dropped: str | None
    state: str
    body: bytes | None
    attempts: int
    streak: int
    expires_at: float
    last_error: str
    answer: str | None
    answer_state: str
    outbox_before: int


_ROW_COLUMNS: Final = ", ".join(Row.__dataclass_fields__)


def _row(record: Any) -> Row:
    return Row(*record)


def create_rows(
    app: App, message: Message, modes: Sequence[tuple[Target, str]], dropped: str | None
) -> None:
    """Add a pending delivery per (target, mode); a row that exists already is kept as it is."""
    now = app.time()
    with app.store.transaction() as tx:
        tx.executemany(
            "INSERT OR IGNORE INTO webhook_deliveries (message_id, target, delivery_id, mode,"
            " dropped, created_at, next_attempt_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    message.id,
                    target.name,
                    str(uuid.uuid4()),
                    mode,
                    dropped,
                    now,
                    now,
                    now + target.max_age,
                )
                for target, mode in modes
            ],
        )


def requeue_dead(app: App, targets: Sequence[Target]) -> dict[str, int]:
    """Put targets' dead letters back in the queue with a fresh ``max_age``; counts by target.

    The targets' circuits are closed too: whoever retries believes the target is back.
    """
    now = app.time()
    counts: dict[str, int] = {}
    with app.store.transaction() as tx:
        for target in targets:
            cursor = tx.execute(
                "UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, expires_at = ?,"
                " streak = 0, claim = NULL, finished_at = NULL WHERE state = ? AND target = ?",
                (PENDING, now, now + target.max_age, DEAD, target.name),
            )
            counts[target.name] = cursor.rowcount
            tx.execute(
                "UPDATE webhook_circuits SET failures = 0, blocked_until = 0 WHERE target = ?",
                (target.name,),
            )
    return counts


def fallback_reply(app: App, message: Message, plugin: str) -> Reply | None:
    """What the other plugins would answer (``plugin`` skipped); None for silence."""
    reply = first_reply(app, message, skip=plugin)
    return reply if reply is not None and reply.text.strip() else None


def scrub(text: str, secret: str) -> str:
    """An error text without the target's secret (nor any other secret the logs know)."""
    return redactor(text.replace(secret, REDACTED) if secret else text)


# -- the circuit breaker -------------------------------------------------------------------


@dataclass(frozen=True)
class Circuit:
    """A target's breaker: consecutive failures and how long no request may start."""

    failures: int = 0
    blocked_until: float = 0.0

    def state(self, now: float, threshold: int) -> str:
        """One of "closed", "open", "half-open" (one probe may go) or "paused" (Retry-After)."""
        if self.blocked_until > now:
            return "open" if self.failures >= threshold else "paused"
        return "half-open" if self.failures >= threshold else "closed"


def circuits(app: App) -> dict[str, Circuit]:
    rows = app.store.query(
        "SELECT target, failures, blocked_until FROM webhook_circuits", missing_ok=True
    )
    return {row[0]: Circuit(row[1], row[2]) for row in rows}


def _circuit(app: App, target: str) -> Circuit:
    rows = app.store.query(
        "SELECT failures, blocked_until FROM webhook_circuits WHERE target = ?", (target,)
    )
    return Circuit(*rows[0]) if rows else Circuit()


# -- the engine ----------------------------------------------------------------------------


class Deliverer:
    """Runs due deliveries on a small thread pool, off the read and process paths.

    ``tick()`` (the periodic job) only looks up due rows and hands them to the pool; each
    target has its own share of the pool (``concurrency``), so a slow target cannot hold
    up another. A worker that delivered a row goes on with the target's next due row.
    """

    def __init__(self, app: App, settings: WebhookSettings, *, plugin: str = "webhook") -> None:
        self.app = app
        self.settings = settings
        self.plugin = plugin
        self.targets = {target.name: target for target in settings.targets}
        self.clients = {target.name: TargetClient(target) for target in settings.targets}
        workers = min(MAX_POOL, max(1, sum(t.concurrency for t in settings.targets)))
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="webhook"
        )
        self.random = random.Random()
        self._lock = threading.RLock()
        self._in_flight: dict[int, str] = {}
        self._futures: set[concurrent.futures.Future[None]] = set()
        self._closed = False

    # -- scheduling ----------------------------------------------------------------------

    def tick(self) -> int:
        """Start the deliveries that are due; returns how many were started. Never blocks."""
        return sum(self._fill(target) for target in self.settings.targets)

    def _fill(self, target: Target) -> int:
        with self._lock:
            if self._closed:
                return 0
            now = self.app.time()
            busy = {rid for rid, name in self._in_flight.items() if name == target.name}
            state = _circuit(self.app, target.name).state(now, self.settings.breaker_threshold)
            if state in ("open", "paused"):
                # No request starts, but rows past max_age still become dead letters.
                ids = self._due_ids(target, "expires_at", now, 20, busy)
                return self._submit(target, ids, expire_only=True)
            room = (1 if state == "half-open" else target.concurrency) - len(busy)
            if room <= 0:
                return 0
            ids = self._due_ids(target, "next_attempt_at", now, room, busy)
            return self._submit(target, ids, expire_only=False)

    def _due_ids(
        self, target: Target, column: str, now: float, limit: int, busy: set[int]
    ) -> list[int]:
        rows = self.app.store.query(
            f"SELECT id FROM webhook_deliveries WHERE state = ? AND target = ? AND {column} <= ?"
            " ORDER BY next_attempt_at, id LIMIT ?",
            (PENDING, target.name, now, limit + len(busy)),
        )
        return [row[0] for row in rows if row[0] not in busy][:limit]

    def _submit(self, target: Target, ids: list[int], *, expire_only: bool) -> int:
        started = 0
        for row_id in ids:
            self._in_flight[row_id] = target.name
            try:
                future = self.executor.submit(self._lane, row_id, target, expire_only)
            except RuntimeError:  # shut down meanwhile
                self._in_flight.pop(row_id, None)
                break
            self._futures.add(future)
            future.add_done_callback(self._futures.discard)
            started += 1
        return started

    def _lane(self, row_id: int | None, target: Target, expire_only: bool) -> None:
        while row_id is not None:
            delivered = self._run(row_id, target, expire_only=expire_only)
            with self._lock:
                self._in_flight.pop(row_id, None)
                row_id = None
                if delivered and not self._closed:
                    now = self.app.time()
                    state = _circuit(self.app, target.name).state(
                        now, self.settings.breaker_threshold
                    )
                    busy = {rid for rid, name in self._in_flight.items() if name == target.name}
                    if state == "closed" and len(busy) < target.concurrency:
                        ids = self._due_ids(target, "next_attempt_at", now, 1, busy)
                        if ids:
                            row_id = ids[0]
                            self._in_flight[row_id] = target.name

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until no delivery is running (tests, shutdown); False on timeout."""
        with self._lock:
            futures = list(self._futures)
        _done, running = concurrent.futures.wait(futures, timeout=timeout)
        return not running

    def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop starting deliveries, give those in flight ``grace`` seconds, close the clients.

        A delivery still running after that stays ``sending`` in the store and is retried
        after the next start (the receiver sees the same delivery id again).
        """
        with self._lock:
            self._closed = True
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.wait(grace)
        for client in self.clients.values():
            client.close()

    # -- one delivery --------------------------------------------------------------------

    def _run(self, row_id: int, target: Target, *, expire_only: bool = False) -> bool:
        """Claim a row and make one attempt; True when it was delivered."""
        token = uuid.uuid4().hex
        try:
            row = self._claim(row_id, token, count_attempt=not expire_only)
        except Exception:
            log.exception("webhook_claim_failed", target=target.name, row=row_id)
            return False
        if row is None:
            return False
        try:
            return self._attempt(row, token, target, expire_only=expire_only)
        except Exception as err:  # a bug or a store fault: retry later, never lose the row
            log.exception("webhook_internal_error", target=target.name, delivery=row.delivery_id)
            with contextlib.suppress(Exception):
                self._update(
                    row,
                    token,
                    state=PENDING,
                    next_attempt_at=self.app.time() + self.settings.retry_initial,
                    last_error=f"internal error: {type(err).__name__}",
                )
            return False

    def _claim(self, row_id: int, token: str, *, count_attempt: bool) -> Row | None:
        with self.app.store.transaction() as tx:
            cursor = tx.execute(
                "UPDATE webhook_deliveries SET state = ?, claim = ?, attempts = attempts + ?,"
                " last_attempt_at = ? WHERE id = ? AND state = ?",
                (SENDING, token, int(count_attempt), self.app.time(), row_id, PENDING),
            )
            if cursor.rowcount != 1:
                return None
            record = tx.execute(
                f"SELECT {_ROW_COLUMNS} FROM webhook_deliveries WHERE id = ?", (row_id,)
            ).fetchone()
        return _row(record)

    def _update(self, row: Row, token: str, **columns: Any) -> bool:
        """Write a claimed row's outcome and release the claim; False if the claim was lost."""
        columns["claim"] = None
        assignments = ", ".join(f"{name} = ?" for name in columns)
        with self.app.store.transaction() as tx:
            cursor = tx.execute(
                f"UPDATE webhook_deliveries SET {assignments} WHERE id = ? AND claim = ?",
                (*columns.values(), row.id, token),
            )
        if cursor.rowcount != 1:
            log.warning("webhook_claim_lost", delivery=row.delivery_id, action="result dropped")
            return False
        return True

    def _attempt(self, row: Row, token: str, target: Target, *, expire_only: bool) -> bool:
        bound = log.bind(
            target=target.name,
            message_id=row.message_id,
            delivery=row.delivery_id,
            attempt=row.attempts,
        )
        message = self.app.store.get_message(row.message_id)
        if message is None:
            self._update(row, token, state=DEAD, last_error="the message is not in the store")
            return False
        if expire_only:
            error = row.last_error or "never attempted"
            self._give_up(row, token, target, message, None, f"{error} (circuit open at max_age)")
            return False
        body = row.body or self._freeze_body(row, token, message, target)
        now = self.app.time()
        outcome = self.clients[target.name].post(
            body,
            request_headers(target, body, row.delivery_id, int(now)),
            message,
            want_answer=row.mode == "reply",
            now=now,
        )
        error = scrub(outcome.error, target.secret)
        now = self.app.time()
        if outcome.kind == "delivered":
            self._circuit_closed(target)
            self._delivered(row, token, target, message, outcome)
            bound.info("webhook_delivered", status=outcome.status)
            return True
        if outcome.kind == "permanent":
            self._circuit_closed(target)  # it answered: it is reachable
            self._give_up(row, token, target, message, outcome.status, error)
            return False
        retry_after = self.retry_after(outcome)
        self._circuit_failed(target, retry_after, now)
        if now >= row.expires_at:
            error = f"gave up at max_age after {row.attempts} attempt(s): {error}"
            self._give_up(row, token, target, message, outcome.status, error)
            return False
        delay = retry_after
        if delay is None:
            delay = self.backoff(row.streak + 1)
        retry_at = min(now + delay, row.expires_at)
        if self._update(
            row,
            token,
            state=PENDING,
            streak=row.streak + 1,
            next_attempt_at=retry_at,
            last_status=outcome.status,
            last_error=error,
        ):
            bound.warning("webhook_retry", error=error, retry_in=round(retry_at - now, 1))
        return False

    def retry_after(self, outcome: Outcome) -> float | None:
        """The Retry-After of an outcome, at most ``retry_max``: a target cannot pause itself
        for days."""
        if outcome.retry_after is None:
            return None
        return min(outcome.retry_after, self.settings.retry_max)

    def backoff(self, streak: int) -> float:
        """Seconds before retry ``streak``: exponential, capped, jittered to 50–100 %."""
        delay = min(self.settings.retry_initial * 2 ** max(streak - 1, 0), self.settings.retry_max)
        return delay / 2 + self.random.uniform(0, delay / 2)

    def _freeze_body(self, row: Row, token: str, message: Message, target: Target) -> bytes:
        body = request_body(self.app, message, row, target)
        with self.app.store.transaction() as tx:
            tx.execute(
                "UPDATE webhook_deliveries SET body = ? WHERE id = ? AND claim = ?",
                (body, row.id, token),
            )
        return body

    def _delivered(
        self, row: Row, token: str, target: Target, message: Message, outcome: Outcome
    ) -> None:
        done = {
            "state": DELIVERED,
            "streak": 0,
            "last_status": outcome.status,
            "last_error": "",
            "finished_at": self.app.time(),
        }
        if row.mode == "reply" and outcome.answer is not None:
            reply = Reply(
                text=outcome.answer.text,
                to=outcome.answer.to,
                plugin=self.plugin,
                meta=(("webhook", target.name),),
            )
            self._hand_over(row, token, message, reply, done)
            return
        if row.mode == "reply" and not row.answer_state:
            done["answer_state"] = NONE
        if self._update(row, token, **done) and "answer_state" in done:
            self._unanswered(row.target, message.id, "no answer")

    def _give_up(
        self,
        row: Row,
        token: str,
        target: Target,
        message: Message,
        status: int | None,
        error: str,
    ) -> None:
        """Dead-letter a row; for a reply-mode row, apply ``on_failure`` (once)."""
        done: dict[str, Any] = {
            "state": DEAD,
            "last_status": status,
            "last_error": error,
            "finished_at": self.app.time(),
        }
        reply = None
        if row.mode == "reply" and not row.answer_state:
            if target.on_failure == "fallback":
                reply = fallback_reply(self.app, message, self.plugin)
                if reply is None:
                    done["answer_state"] = NONE
            else:
                done["answer_state"] = SILENT
        log.error(
            "webhook_dead_letter",
            target=target.name,
            message_id=row.message_id,
            delivery=row.delivery_id,
            attempts=row.attempts,
            error=error,
            fallback=reply.plugin if reply else None,
        )
        if reply is not None:
            self._hand_over(row, token, message, reply, done)
        elif self._update(row, token, **done) and "answer_state" in done:
            silent = done["answer_state"] == SILENT
            why = (
                "gave up (on_failure = silent)"
                if silent
                else "gave up, and no other plugin answered"
            )
            self._unanswered(row.target, message.id, why)

    def _hand_over(
        self, row: Row, token: str, message: Message, reply: Reply, done: dict[str, Any]
    ) -> None:
        """Record the answer as being queued, then queue it (see the module docstring)."""
        answer = {
            "text": reply.text,
            "to": list(reply.to),
            "plugin": reply.plugin,
            "meta": [list(pair) for pair in reply.meta],
        }
        before = len(self.app.store.outbox_for(message.id))
        if self._update(
            row,
            token,
            **done,
            answer=json.dumps(answer, ensure_ascii=False),
            answer_state=QUEUING,
            outbox_before=before,
        ):
            self._queue(row, message, reply)

    def _queue(self, row: Row, message: Message, reply: Reply) -> None:
        """Hand the answer to ``reply_later``, which marks the message answered."""
        queued = self.app.reply_later(message, reply)
        with self.app.store.transaction() as tx:
            tx.execute(
                "UPDATE webhook_deliveries SET answer_state = ? WHERE id = ? AND answer_state = ?",
                (QUEUED if queued else VETOED, row.id, QUEUING),
            )
        if not queued:  # a veto gave its own reason already
            self._unanswered(row.target, message.id, "the answer was not sent")
        log.info(
            "webhook_answer_queued" if queued else "webhook_answer_not_queued",
            message_id=message.id,
            plugin=reply.plugin,
        )

    def _unanswered(self, target: str, message_id: int, why: str) -> None:
        """Replace the message's "awaiting <target>" reason: the target will not answer it.

        Status counts it as unanswered because of the target (``webhook:<target>: why``).
        """
        who = f"{self.plugin}:{target}"
        _state, reason = self.app.store.message_state(message_id)
        if reason == f"awaiting {who}":
            self.app.store.note_reason(message_id, f"{who}: {why}")

    # -- the circuit breaker -------------------------------------------------------------

    def _circuit_failed(self, target: Target, retry_after: float | None, now: float) -> None:
        threshold = self.settings.breaker_threshold
        with self.app.store.transaction() as tx:
            tx.execute(
                "INSERT INTO webhook_circuits (target) VALUES (?) ON CONFLICT (target) DO NOTHING",
                (target.name,),
            )
            tx.execute(
                "UPDATE webhook_circuits SET failures = failures + 1 WHERE target = ?",
                (target.name,),
            )
            failures, until = tx.execute(
                "SELECT failures, blocked_until FROM webhook_circuits WHERE target = ?",
                (target.name,),
            ).fetchone()
            if failures >= threshold:
                until = max(until, now + self.settings.breaker_cooldown)
            if retry_after:
                until = max(until, now + retry_after)
            tx.execute(
                "UPDATE webhook_circuits SET blocked_until = ? WHERE target = ?",
                (until, target.name),
            )
        if failures >= threshold:
            log.warning(
                "webhook_circuit_open",
                target=target.name,
                failures=failures,
                retry_in=round(until - now, 1),
            )

    def _circuit_closed(self, target: Target) -> None:
        before = _circuit(self.app, target.name)
        if before == Circuit():
            return
        with self.app.store.transaction() as tx:
            tx.execute(
                "UPDATE webhook_circuits SET failures = 0, blocked_until = 0 WHERE target = ?",
                (target.name,),
            )
        if before.failures >= self.settings.breaker_threshold:
            log.info("webhook_circuit_closed", target=target.name)

    # -- restart -------------------------------------------------------------------------

    def recover(self) -> int:
        """Finish what a previous process left: attempts cut short, answers half queued."""
        now = self.app.time()
        with self.app.store.transaction() as tx:
            cut = tx.execute(
                "UPDATE webhook_deliveries SET state = ?, claim = NULL, next_attempt_at = ?"
                " WHERE state = ?",
                (PENDING, now, SENDING),
            ).rowcount
        if cut:
            log.warning("webhook_attempts_cut_short", count=cut, action="retry")
        rows = self.app.store.query(
            f"SELECT {_ROW_COLUMNS} FROM webhook_deliveries WHERE answer_state = ?", (QUEUING,)
        )
        for row in map(_row, rows):
            message = self.app.store.get_message(row.message_id)
            if message is None or row.answer is None:
                continue
            if len(self.app.store.outbox_for(message.id)) > row.outbox_before:
                with self.app.store.transaction() as tx:
                    tx.execute(
                        "UPDATE webhook_deliveries SET answer_state = ? WHERE id = ?",
                        (QUEUED, row.id),
                    )
                continue
            answer = json.loads(row.answer)
            reply = Reply(
                text=answer["text"],
                to=tuple(answer["to"]),
                plugin=answer["plugin"],
                meta=tuple(tuple(pair) for pair in answer["meta"]),
            )
            self._queue(row, message, reply)
        return cut


# -- status --------------------------------------------------------------------------------


def status_figures(
    app: App, settings: WebhookSettings
) -> tuple[tuple[str, int | float | str | None], ...]:
    """Counts by state, each target's circuit and its latest dead letter (never a secret)."""
    now = app.time()
    counts: dict[tuple[str, str], int] = {
        (row[0], row[1]): row[2]
        for row in app.store.query(
            "SELECT target, state, COUNT(*) FROM webhook_deliveries GROUP BY target, state",
            missing_ok=True,
        )
    }
    latest_dead: dict[str, Any] = {}
    for row in app.store.query(
        "SELECT target, message_id, attempts, last_error FROM webhook_deliveries"
        " WHERE state = ? ORDER BY finished_at DESC, id DESC",
        (DEAD,),
        missing_ok=True,
    ):
        latest_dead.setdefault(row[0], row)
    breakers = circuits(app)
    configured = [target.name for target in settings.targets]
    names = configured + sorted({name for name, _state in counts} - set(configured))

    def total(*states: str, name: str | None = None) -> int:
        return sum(n for (t, s), n in counts.items() if s in states and name in (None, t))

    figures: list[tuple[str, int | float | str | None]] = [
        ("pending", total(PENDING, SENDING)),
        ("delivered", total(DELIVERED)),
        ("dead letters", total(DEAD)),
    ]
    secrets = {target.name: target.secret for target in settings.targets}
    for name in names:
        label = name if name in configured else f"{name} (not configured)"
        figures += [
            (f"{label}: pending", total(PENDING, SENDING, name=name)),
            (f"{label}: delivered", total(DELIVERED, name=name)),
            (f"{label}: dead letters", total(DEAD, name=name)),
        ]
        circuit = breakers.get(name, Circuit())
        state = circuit.state(now, settings.breaker_threshold)
        if state in ("open", "paused"):
            state += f" for {circuit.blocked_until - now:.0f} s more"
        figures.append((f"{label}: circuit", f"{state} ({circuit.failures} failure(s) in a row)"))
        dead = latest_dead.get(name)
        if dead is not None:
            error = scrub(dead[3], secrets.get(name, ""))
            figures.append(
                (f"{label}: last dead letter", f"message {dead[1]}, {dead[2]} attempt(s): {error}")
            )
    return tuple(figures)
