"""The 企信通 gateway client: readsms, g70send and longsend over HTTP, with failover.

The contract is ../shared/gateway-protocol.md. Nothing here logs or raises a URL with its
query string, so the password cannot leak through this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final

import httpx
import structlog

from responder import __version__
from responder.config import GatewaySettings
from responder.models import InboundSms, SendResult
from responder.protocol import (
    NOTHING_UNREAD,
    MalformedBody,
    encode_form,
    format_platform_time,
    parse_body,
    parse_read_result,
    parse_send_result,
)
from responder.text import SMS_LIMIT, make_encodable, split_parts

LONG_SMS_LIMIT: Final = 500
_LOGIN_WORDS: Final = ("密码", "用户名", "帐号", "账号", "账户", "登录", "鉴权", "认证")
_EXCERPT: Final = 120

log = structlog.get_logger("responder.gateway")


class GatewayError(Exception):
    """A gateway call failed. ``where`` is the base URL and path, never the query."""

    def __init__(self, message: str, *, where: str = "", status: int | None = None, excerpt=""):
        detail = []
        if where:
            detail.append(where)
        if status is not None:
            detail.append(f"HTTP {status}")
        if excerpt:
            detail.append(f"body {excerpt!r}")
        super().__init__(f"{message} ({', '.join(detail)})" if detail else message)
        self.where = where
        self.status = status
        self.excerpt = excerpt


class TransientError(GatewayError):
    """Network trouble, a 5xx or a body that is not a result: try again later."""


class OutcomeUnknown(TransientError):
    """The request may have reached the gateway but no usable answer came back.

    For a send, the SMS may or may not have gone out: retrying may deliver it twice.
    """


class LoginError(GatewayError):
    """The gateway refused the account name or password: retrying will not help."""


class ReadGate:
    """Keeps readsms calls at least ``interval`` seconds apart, across restarts.

    The platform counts the interval between the arrivals of two calls. Each call's start
    (before the request leaves) and end are reported through ``on_begin`` and ``on_end``
    for the store to keep; ``resume_from`` turns what was kept into where a restarted
    process must count from.
    """

    def __init__(
        self,
        interval: float,
        *,
        timeout: float = 0.0,
        last_read: float | None = None,
        on_begin: Callable[[float], None] | None = None,
        on_end: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last_read = last_read
        self._on_begin = on_begin
        self._on_end = on_end
        self._clock = clock
        self._sleep = sleep

    @staticmethod
    def resume_from(started: float | None, ended: float | None, timeout: float) -> float | None:
        """Where to count the interval from, given the last call's recorded start and end.

        A call that started but never ended (the process died during it) may have reached
        the server as late as its start plus the timeout.
        """
        if started is None:
            return ended
        if ended is not None and ended >= started:
            return ended
        return started + timeout

    def seconds_left(self) -> float:
        if self.last_read is None:
            return 0.0
        elapsed = self._clock() - self.last_read
        # Never longer than after a call cut short by a crash: a clock that went backwards
        # must not block reads for long.
        return min(max(self.interval - elapsed, 0.0), self.interval + self.timeout)

    def wait(self) -> None:
        while (left := self.seconds_left()) > 0:
            self._sleep(left)

    def begin(self) -> None:
        self.last_read = self._clock()
        if self._on_begin is not None:
            self._on_begin(self.last_read)

    def end(self) -> None:
        self.last_read = self._clock()
        if self._on_end is not None:
            self._on_end(self.last_read)


def is_login_failure(fields: dict[str, str]) -> bool:
    err = fields.get("err", "").lower()
    return any(word in err for word in _LOGIN_WORDS) or "password" in err or "login" in err


class GatewayClient:
    """One account on the gateway. Reuses one HTTP connection pool; close() it when done."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        read_gate: ReadGate | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.read_gate = read_gate or ReadGate(settings.poll_interval, timeout=settings.timeout)
        self._preferred = 0
        self._http = httpx.Client(
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 5.0)),
            follow_redirects=False,
            headers={"User-Agent": f"sms-responder/{__version__}"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- readsms ---------------------------------------------------------------------

    def read_one(self) -> InboundSms | None:
        """Read one unread inbound SMS, or None when there is none.

        Waits out the read interval first. Raises LoginError, or TransientError; its
        subclass OutcomeUnknown when no answer came back, so the read may have consumed
        a message on the server.
        """
        self.read_gate.wait()
        self.read_gate.begin()
        try:
            fields, raw = self._call("readsms.aspx", self._auth(), sending=False)
        finally:
            self.read_gate.end()
        if is_login_failure(fields):
            raise LoginError(f"the gateway refused the login: {fields.get('err', '')}")
        try:
            sms = parse_read_result(fields, raw)
        except MalformedBody as err:
            raise TransientError(
                f"unusable readsms answer: {err}", excerpt=raw[:_EXCERPT]
            ) from None
        if sms is None and fields.get("id", "").strip() not in ("0", ""):
            raise TransientError(
                f"readsms refused: {fields.get('err', '')}", excerpt=raw[:_EXCERPT]
            )
        if sms is None and fields.get("err", NOTHING_UNREAD) != NOTHING_UNREAD:
            log.info("gateway_read_empty", err=fields.get("err", ""))
        return sms

    # -- sends -----------------------------------------------------------------------

    def text_limit(self) -> int:
        return LONG_SMS_LIMIT if self.settings.long_sms else SMS_LIMIT

    def send(
        self,
        numbers: Sequence[str],
        text: str,
        *,
        schedule: datetime | None = None,
        sender: str | None = None,
    ) -> SendResult:
        """Send one text to numbers; returns the merged result of every request made.

        Texts longer than one SMS go through longsend when ``long_sms`` is on, otherwise
        they are split into marked parts. More numbers than ``max_recipients`` go out in
        several requests. Raises LoginError, TransientError or OutcomeUnknown.
        """
        numbers = [n.strip() for n in numbers if n.strip()]
        if not numbers:
            raise ValueError("no recipient numbers")
        text, replaced = make_encodable(text, self.settings.encoding)
        if replaced:
            log.warning(
                "characters_replaced",
                count=replaced,
                encoding=self.settings.encoding,
                reason="the gateway encoding cannot carry them",
            )
        parts = split_parts(text, limit=SMS_LIMIT) if len(text) > self.text_limit() else [text]
        endpoint = "longsend.aspx" if len(text) > SMS_LIMIT and self.settings.long_sms else None
        results = []
        size = self.settings.max_recipients
        for part in parts:
            for start in range(0, len(numbers), size):
                params = self._auth() | {
                    "dst": ",".join(numbers[start : start + size]),
                    "msg": part,
                }
                if schedule is not None:
                    params["time"] = format_platform_time(schedule)
                if sender or self.settings.sender:
                    params["sender"] = sender if sender is not None else self.settings.sender
                results.append(self._send_once(endpoint or "g70send.aspx", params))
        return merge_results(results)

    def _send_once(self, endpoint: str, params: dict[str, str]) -> SendResult:
        fields, raw = self._call(endpoint, params, sending=True)
        result = parse_send_result(fields, raw)
        if not result.ok and is_login_failure(fields):
            raise LoginError(f"the gateway refused the login: {result.err}")
        return result

    # -- transport -------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"name": self.settings.name, "pwd": self.settings.password}

    def _order(self) -> list[int]:
        count = len(self.settings.base_urls)
        return [(self._preferred + step) % count for step in range(count)]

    def _call(self, file: str, params: dict[str, str], *, sending: bool) -> tuple[dict, str]:
        """POST or GET one endpoint, failing over between base URLs.

        Another address is tried when a connection could not be made (the request never
        left), and, for sends, after a 5xx. A read is never retried at once elsewhere:
        that could break the read interval.
        """
        last: GatewayError | None = None
        body = encode_form(params, self.settings.encoding)
        for index in self._order():
            where = f"{self.settings.base_urls[index]}/send/{file}"
            try:
                response = self._request(where, body)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
                last = TransientError(f"cannot connect: {error_reason(err)}", where=where)
                log.warning("gateway_unreachable", where=where, reason=error_reason(err))
                continue
            except httpx.HTTPError as err:
                # The request left: a send may have gone out, a read may have consumed a message.
                self._preferred = (index + 1) % len(self.settings.base_urls)
                raise OutcomeUnknown(f"no answer: {error_reason(err)}", where=where) from None
            if response.status_code != 200:
                excerpt = response.text[:_EXCERPT]
                last = TransientError(
                    "gateway error", where=where, status=response.status_code, excerpt=excerpt
                )
                self._preferred = (index + 1) % len(self.settings.base_urls)
                if sending and response.status_code >= 500:
                    log.warning("gateway_failed_over", where=where, status=response.status_code)
                    continue
                raise last
            self._preferred = index
            raw = response.content.decode(self.settings.encoding, errors="backslashreplace")
            try:
                return parse_body(response.content.decode(self.settings.encoding, "replace")), raw
            except MalformedBody:
                kind = OutcomeUnknown if sending else TransientError
                raise kind(
                    "the answer is not a gateway result",
                    where=where,
                    status=200,
                    excerpt=raw.strip()[:_EXCERPT],
                ) from None
        assert last is not None
        raise last

    def _request(self, where: str, body: str) -> httpx.Response:
        if self.settings.method == "get":
            return self._http.get(f"{where}?{body}")
        return self._http.post(
            where,
            content=body.encode("ascii"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )


def error_reason(err: Exception) -> str:
    """An httpx error's reason without its request (whose URL may carry a secret)."""
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def merge_results(results: Sequence[SendResult]) -> SendResult:
    """Several requests' results as one.

    ``num`` is the total only when every request was accepted, else 0: ``ok`` means
    everything went out. A number counts as accepted only if no request refused it.
    """
    if len(results) == 1:
        return results[0]
    refused = tuple(dict.fromkeys(n for r in results for n in r.refused))
    accepted = tuple(dict.fromkeys(n for r in results for n in r.accepted if n not in set(refused)))
    failed = [r for r in results if not r.ok]
    worst = failed[0] if failed else results[-1]
    return SendResult(
        num=0 if failed else sum(r.num for r in results),
        accepted=accepted,
        refused=refused,
        errid=worst.errid,
        err=worst.err,
        raw="\n".join(r.raw for r in results),
    )
