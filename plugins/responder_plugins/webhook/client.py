"""One target's HTTP client: the POST, its deadline, and what the response comes to.

Verified TLS, no redirect to another origin, a capped response body, and one deadline,
the target's ``timeout``, for a whole attempt (connect, request, response).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import ssl
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import httpcore
import httpx

from responder import Message, error_reason, is_mobile

if TYPE_CHECKING:
    from responder_plugins.webhook.config import Target

BODY_CAP: Final = 64 * 1024
"""Bytes of a response body read at most; a longer body is refused unread."""
ANSWER_MAX_CHARS: Final = 500
MAX_RECIPIENTS: Final = 10
MAX_REDIRECTS: Final = 3
EXCERPT: Final = 200
RETRYABLE_STATUS: Final = frozenset({408, 429})
WRITE_SLICE: Final = 16 * 1024
"""Bytes written at most per socket write, so a slow reader cannot stretch one past the deadline."""


# -- the response ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A receiver's answer, checked: the text of an SMS and, rarely, other recipients."""

    text: str
    to: tuple[str, ...] = ()


class AnswerRefused(ValueError):
    """A 200 response whose answer cannot become an SMS."""


@dataclass(frozen=True)
class RelayAttempt:
    """What one attempt to relay a message to a target came to."""

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
    ) -> RelayAttempt:
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
                        return RelayAttempt(
                            "permanent",
                            response.status_code,
                            f"HTTP {response.status_code}: redirected to "
                            f"{following.scheme}://{following.host}, not followed "
                            "(only a 307/308 to the same host is): set url to the final address",
                        )
                    return self._outcome(response, message, want_answer=want_answer, now=now)
            return RelayAttempt("permanent", None, f"more than {MAX_REDIRECTS} redirects")
        except httpx.TimeoutException as err:
            return RelayAttempt(
                "retry", None, f"timed out after {self.target.timeout:g} s ({error_reason(err)})"
            )
        except httpx.TransportError as err:
            return RelayAttempt("retry", None, error_reason(err))
        finally:
            _deadline.at = None

    def _outcome(
        self,
        response: httpx.Response,
        message: Message,
        *,
        want_answer: bool,
        now: float,
    ) -> RelayAttempt:
        status = response.status_code
        if 200 <= status < 300:
            if not want_answer:
                return RelayAttempt("delivered", status)
            declared = response.headers.get("content-length", "")
            too_long = declared.isdigit() and int(declared) > BODY_CAP
            body = b"" if too_long else _read_up_to(response, BODY_CAP)
            if too_long or len(body) > BODY_CAP:
                error = f"HTTP {status}: the response body is larger than {BODY_CAP // 1024} KiB"
                return RelayAttempt("permanent", status, error)
            try:
                answer = parse_answer(
                    self.target, message, status, response.headers.get("content-type", ""), body
                )
            except AnswerRefused as err:
                return RelayAttempt("permanent", status, f"HTTP {status}, answer refused: {err}")
            return RelayAttempt("delivered", status, answer=answer)
        try:
            excerpt = _excerpt(_read_up_to(response, EXCERPT))
        except httpx.HTTPError:
            excerpt = ""
        error = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
        if status >= 500 or status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("retry-after"), now)
            return RelayAttempt("retry", status, error, retry_after=retry_after)
        return RelayAttempt("permanent", status, error)


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
