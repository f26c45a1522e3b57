"""The 企信通 gateway client: readsms, g70send and longsend over HTTP, with failover.

The contract is ../shared/gateway-protocol.md. Nothing here logs or raises a URL with its
query string, so the password cannot leak through this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, ClassVar, Final

import httpx
import structlog

from responder import __version__
from responder.config import GatewaySettings
from responder.models import InboundSms, SendResult
from responder.protocol import (
    NOTHING_UNREAD,
    TOO_SOON,
    MalformedBody,
    encode_form,
    format_platform_time,
    parse_body,
    parse_int,
    parse_read_result,
    parse_send_result,
)
from responder.text import SMS_LIMIT, make_encodable

if TYPE_CHECKING:
    from responder.ha import ReadFence

LONG_SMS_LIMIT: Final = 500
CONNECT_TIMEOUT: Final = 5.0
"""The longest wait for a connection (or gateway.timeout if shorter)."""
BALANCE_FILE: Final = "getfee.aspx"
_TOO_SOON_WORDS: Final = (TOO_SOON, "频繁", "间隔")
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


class ReadTooSoon(TransientError):
    """readsms answered that the read came too soon (``读取过于频繁``): no message, and the
    platform counted the call, so the next read must wait longer than the interval."""


class AccountState(StrEnum):
    """What the account allows, as judged from the gateway's answers."""

    OK = "ok"
    LOGIN_REFUSED = "login_refused"
    """The name or password was refused (6002, 6010): nothing can be read or sent."""
    OUT_OF_CREDIT = "out_of_credit"
    """No credit left (6013): reading works, sending must wait for a top-up."""
    SUSPENDED = "suspended"
    """The account is suspended (6019) or this machine's IP is not allowed (6012)."""

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")


class Verdict(Enum):
    """Whom a gateway answer concerns: the whole account, this request only, or nobody."""

    OK = "ok"
    LOGIN_REFUSED = "login_refused"
    SUSPENDED = "suspended"
    OUT_OF_CREDIT = "out_of_credit"
    REQUEST = "request"
    """This request, number or sender only (blacklisted, too long, forbidden words, ...):
    sending the same again cannot succeed, other sends can."""
    UNKNOWN = "unknown"
    """No known code and no telling text: judged by the caller as before (``num``)."""

    @property
    def account_state(self) -> AccountState | None:
        """The account's state this answer puts it in; None when it says nothing of it."""
        return _ACCOUNT_STATES.get(self)


_ACCOUNT_STATES: Final[Mapping[Verdict, AccountState]] = {
    Verdict.LOGIN_REFUSED: AccountState.LOGIN_REFUSED,
    Verdict.SUSPENDED: AccountState.SUSPENDED,
    Verdict.OUT_OF_CREDIT: AccountState.OUT_OF_CREDIT,
}

ERRID_VERDICTS: Final[Mapping[int, Verdict]] = {
    0: Verdict.OK,
    6002: Verdict.LOGIN_REFUSED,  # 账号不正确
    6010: Verdict.LOGIN_REFUSED,  # 密码不正确
    6012: Verdict.SUSPENDED,  # IP 限制
    6019: Verdict.SUSPENDED,  # 停机
    6013: Verdict.OUT_OF_CREDIT,  # 余额不足
    6009: Verdict.REQUEST,  # 黑名单: that number
    6011: Verdict.REQUEST,  # 超长
    6015: Verdict.REQUEST,  # 非法字符 / 屏蔽词
    6021: Verdict.REQUEST,  # 扩展号码未备案: that sender
    6023: Verdict.REQUEST,  # 号码太多
    6024: Verdict.REQUEST,  # 定时时间不正确
    6025: Verdict.REQUEST,  # 扩展号码太长
}
"""The codes in section 4 of the protocol note."""

# Used only when errid is missing or unknown, in this order: "账号余额不足" names the
# account but is about credit, "账户已停机" a suspension, not a wrong password.
_TEXT_VERDICTS: Final = (
    (Verdict.OUT_OF_CREDIT, ("余额不足", "欠费", "余额为0", "余额为零", "余额已用完", "credit")),
    (
        Verdict.SUSPENDED,
        ("停机", "停用", "冻结", "禁用", "暂停", "IP限制", "IP 限制", "IP不", "IP地址", "suspend"),
    ),
    (
        Verdict.REQUEST,
        ("黑名单", "超长", "非法字符", "屏蔽词", "敏感词", "未备案", "号码太多", "定时"),
    ),
    (
        Verdict.LOGIN_REFUSED,
        ("密码", "用户名", "帐号", "账号", "账户", "登录", "鉴权", "认证", "password", "login"),
    ),
)


def classify(errid: int | None, err: str) -> Verdict:
    """Judge a gateway answer by its ``errid`` first, by its ``err`` text only when the code
    is missing or not one of the known ones."""
    if errid is not None and errid in ERRID_VERDICTS:
        return ERRID_VERDICTS[errid]
    text = err.lower()
    for verdict, words in _TEXT_VERDICTS:
        if any(word.lower() in text for word in words):
            return verdict
    return Verdict.UNKNOWN


def classify_fields(fields: Mapping[str, str]) -> Verdict:
    return classify(parse_int(fields.get("errid")), fields.get("err", ""))


class AccountError(GatewayError):
    """The gateway refused the account itself, not this request: no call of that kind can
    succeed until the account changes. ``state`` is the account state it means."""

    state: ClassVar[AccountState]

    def __init__(self, message: str, *, errid: int | None = None, err: str = "") -> None:
        super().__init__(message)
        self.errid = errid
        self.err = err

    @property
    def reason(self) -> str:
        """The gateway's own words and code, for status and logs."""
        text = self.err.strip() or "no reason given"
        return text if self.errid is None else f"{text} (errid {self.errid})"


class LoginError(AccountError):
    """The gateway refused the account name or password: retrying at once will not help."""

    state = AccountState.LOGIN_REFUSED


class AccountSuspended(AccountError):
    """The account is suspended, or calls from this IP address are not allowed."""

    state = AccountState.SUSPENDED


class OutOfCredit(AccountError):
    """The account has no credit left: no send can succeed until it is topped up."""

    state = AccountState.OUT_OF_CREDIT


class BalanceNotOffered(GatewayError):
    """The provider has no balance endpoint (HTTP 404, or an error instead of a balance)."""


_ACCOUNT_ERRORS: Final[Mapping[Verdict, tuple[type[AccountError], str]]] = {
    Verdict.LOGIN_REFUSED: (LoginError, "the gateway refused the login"),
    Verdict.SUSPENDED: (AccountSuspended, "the gateway refused the account (suspended or IP)"),
    Verdict.OUT_OF_CREDIT: (OutOfCredit, "the account is out of credit"),
}


def account_error(verdict: Verdict, errid: int | None, err: str) -> AccountError:
    """The exception an account-level answer means (``verdict.account_state`` is set)."""
    kind, what = _ACCOUNT_ERRORS[verdict]
    error = kind(what, errid=errid, err=err)
    error.args = (f"{what}: {error.reason}",)
    return error


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
        self.fence: ReadFence | None = None
        """Several instances on one store: the account's lease check around each call
        (``responder.ha``); it raises ReadFenced when the call must not be made."""

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
        fence = self.fence
        if fence is not None:
            fence.enter()
        self.last_read = self._clock()
        if self._on_begin is not None:
            self._on_begin(self.last_read)
        if fence is not None:
            fence.confirm()

    def end(self) -> None:
        self.last_read = self._clock()
        try:
            if self._on_end is not None:
                self._on_end(self.last_read)
        finally:
            if self.fence is not None:
                self.fence.leave()


def is_too_soon(fields: dict[str, str]) -> bool:
    """A read refused as too frequent; vendors word it differently (频繁, 间隔)."""
    err = fields.get("err", "")
    return any(word in err for word in _TOO_SOON_WORDS)


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
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, CONNECT_TIMEOUT)),
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

        Waits out the read interval first. Raises LoginError or AccountSuspended when the
        gateway refused the account (out of credit does not stop reads), or TransientError; its
        subclass OutcomeUnknown when no answer came back, so the read may have consumed
        a message on the server; its subclass ReadTooSoon when the platform refused the
        read as too frequent.
        """
        self.read_gate.wait()
        self.read_gate.begin()
        try:
            fields, raw = self._call("readsms.aspx", self._auth(), sending=False)
        finally:
            self.read_gate.end()
        verdict = classify_fields(fields)
        refused = verdict in (Verdict.LOGIN_REFUSED, Verdict.SUSPENDED)  # credit: reads go on
        if refused and (parse_int(fields.get("id")) or 0) <= 0:  # never a message's answer
            raise account_error(verdict, parse_int(fields.get("errid")), fields.get("err", ""))
        try:
            sms = parse_read_result(fields, raw)
        except MalformedBody as err:
            raise TransientError(
                f"unusable readsms answer: {err}", excerpt=raw[:_EXCERPT]
            ) from None
        if sms is None and is_too_soon(fields):
            raise ReadTooSoon(f"readsms too soon: {fields.get('err', '')}", excerpt=raw[:_EXCERPT])
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
        """Send one text to some numbers in exactly one request; returns the gateway's answer.

        The caller composes (the pipeline makes one outbox row per part and batch of
        numbers; ``responder send`` plans its requests the same way): at most
        ``max_recipients`` numbers, and a text one request carries (``text_limit()``; a
        text over one SMS goes through longsend when ``long_sms`` is on). ValueError
        otherwise (``request_problem``). Raises an AccountError (LoginError,
        AccountSuspended, OutOfCredit) when the gateway refused the account,
        TransientError or OutcomeUnknown. Any other refusal comes back as a result that is
        not ``ok``: ``classify`` it.
        """
        numbers = [n.strip() for n in numbers if n.strip()]
        problem = self.request_problem(numbers, text)
        if problem:
            raise ValueError(problem)
        text, replaced = make_encodable(text, self.settings.encoding)
        if replaced:
            log.warning(
                "characters_replaced",
                count=replaced,
                encoding=self.settings.encoding,
                reason="the gateway encoding cannot carry them",
            )
        params = self._auth() | {"dst": ",".join(numbers), "msg": text}
        if schedule is not None:
            params["time"] = format_platform_time(schedule)
        if sender or self.settings.sender:
            params["sender"] = sender if sender is not None else self.settings.sender
        endpoint = "longsend.aspx" if len(text) > SMS_LIMIT else "g70send.aspx"
        return self._send_once(endpoint, params)

    def request_problem(self, numbers: Sequence[str], text: str) -> str:
        """Why one request cannot carry ``text`` to ``numbers`` ("" when it can)."""
        numbers = [n for n in numbers if n.strip()]
        if not numbers:
            return "no recipient numbers"
        if len(numbers) > self.settings.max_recipients:
            return (
                f"{len(numbers)} numbers, more than one request takes (gateway.max_recipients ="
                f" {self.settings.max_recipients}): send them in batches"
            )
        if len(text) > self.text_limit():
            return (
                f"the text is {len(text)} characters, more than one request carries"
                f" ({self.text_limit()}): split it into parts first"
            )
        return ""

    def _send_once(self, endpoint: str, params: dict[str, str]) -> SendResult:
        fields, raw = self._call(endpoint, params, sending=True)
        result = parse_send_result(fields, raw)
        if not result.ok:
            verdict = classify(result.errid, result.err)
            if verdict.account_state is not None:
                raise account_error(verdict, result.errid, result.err)
        return result

    # -- getfee ----------------------------------------------------------------------

    def balance(self) -> float:
        """The account's balance from ``getfee.aspx``: the integer in ``id`` times
        ``balance_scale``.

        Raises BalanceNotOffered when the provider has no such endpoint (HTTP 404, or an
        error answer instead of a balance), LoginError or AccountSuspended when it refused
        the account, TransientError when it could not be asked now.
        """
        try:
            fields, raw = self._call(BALANCE_FILE, self._auth(), sending=False)
        except TransientError as err:
            if err.status == 404:
                raise BalanceNotOffered(
                    "no balance endpoint", where=err.where, status=404
                ) from None
            raise
        errid = parse_int(fields.get("errid"))
        value = parse_int(fields.get("id"))
        if value is not None and (errid == 0 or (errid is None and value >= 0)):
            return value * self.settings.balance_scale
        verdict = classify(errid, fields.get("err", ""))
        if verdict is Verdict.OUT_OF_CREDIT:
            return 0.0
        if verdict.account_state is not None:
            raise account_error(verdict, errid, fields.get("err", ""))
        raise BalanceNotOffered(
            f"getfee answered no balance: {fields.get('err', '')}".rstrip(": "),
            excerpt=raw.strip()[:_EXCERPT],
        )

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
