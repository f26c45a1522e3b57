"""An embedded 企信通 gateway simulator: the contract's endpoints over real HTTP.

readsms, g70send and longsend, and getfee (the balance; see section 4 of
../shared/gateway-protocol.md). It lets developers and tests run the responder without an
account. Inbound messages are injected from Python or through a small JSON control API
under ``/_sandbox/``; the account's credit can be set, and faults (error codes among them)
can be switched on to drive every failure path of a client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from responder.models import PLATFORM_TZ
from responder.protocol import (
    NOTHING_UNREAD,
    TOO_SOON,
    decode_form,
    format_body,
    format_platform_time,
    split_numbers,
)

log = logging.getLogger(__name__)

FAULT_KINDS = (
    "html",
    "status500",
    "empty",
    "garbled",
    "hang",
    "drop_after_consume",
    "slow",
    "login",
    "too_soon",
    "errid",
)
FAULT_ENDPOINTS = ("read", "send", "balance", "any")
DEFAULT_DELAYS = {"hang": 30.0, "slow": 1.0}
READ_TIMES_KEPT = 1000
"""Arrival times of reads kept per account (``Sandbox.read_times``)."""

LOGIN_FAILED = "用户名或密码错误"
OUT_OF_CREDIT = "账号余额不足"
DEFAULT_BALANCE = 100_000
"""Credit a new sandbox starts with: one unit per SMS accepted (per number)."""
ERRID_TEXTS = {
    6002: "账号不正确",
    6009: "黑名单号码",
    6010: "密码不正确",
    6011: "短信内容超长",
    6012: "IP限制",
    6013: OUT_OF_CREDIT,
    6015: "短信内容含有非法字符",
    6019: "账号已停机",
    6021: "扩展号码未备案",
    6023: "号码太多",
    6024: "定时时间不正确",
    6025: "扩展号码太长",
}
"""The ``err`` an "errid" fault answers with when given none (section 4 of the protocol note)."""
TOO_FAST = TOO_SOON
"""The answer to a read that comes before ``min_read_interval`` (or under the too_soon fault)."""
_ENDPOINTS = {
    "/send/g70send.aspx": "g70send",
    "/send/longsend.aspx": "longsend",
    "/send/readsms.aspx": "readsms",
    "/send/getfee.aspx": "getfee",
}
_MAX_CHARS = {"g70send": 70, "longsend": 500}
_FAULT_ENDPOINT = {"readsms": "read", "getfee": "balance"}
_MOBILE = re.compile(r"1\d{10}")
_MAX_BODY = 1 << 20
_HTML_ERROR = (
    "<html><head><title>Runtime Error</title></head><body>"
    "<h1>Server Error in '/' Application.</h1><p>Runtime Error</p></body></html>"
)
_GARBLED = b"\xff\xfe\xfd\x81 ERR 0x80004005 \xa1\xa1"


@dataclass(frozen=True)
class SentSms:
    """One accepted send request, as the sandbox recorded it."""

    id: int
    numbers: tuple[str, ...]
    """The accepted numbers only."""
    text: str
    """``msg`` decoded in the sandbox's encoding (undecodable bytes become U+FFFD)."""
    sender: str
    schedule: str
    """The ``time`` parameter, verbatim ("" when absent)."""
    endpoint: str
    """"g70send" or "longsend"."""
    method: str
    at: float
    """When it was recorded (epoch seconds)."""
    raw_msg: bytes
    """``msg`` percent-decoded but not charset-decoded: the bytes the client sent."""
    account: str = ""
    """The account (``name``) it was sent through."""


@dataclass(frozen=True)
class SandboxStats:
    """Counters since start (or the last reset)."""

    reads: int
    """readsms requests received, faulted or not."""
    too_fast_reads: int
    sends: int
    """g70send/longsend requests received, whatever their outcome."""
    pending_inbound: int
    requests: int
    """Requests to the gateway endpoints (the control API is not counted)."""
    balance_checks: int = 0
    """getfee requests received (counted in ``requests`` too)."""


@dataclass(frozen=True)
class _Inbound:
    id: int
    src: str
    dst: str
    time: str
    msg: str | bytes
    account: str = ""


@dataclass(frozen=True)
class _Fault:
    kind: str
    endpoint: str
    remaining: int | None
    delay: float
    errid: int | None = None
    err: str = ""
    account: str | None = None
    """Only the requests of this account (None: of every account)."""


@dataclass(frozen=True)
class _Answer:
    status: int
    body: bytes
    content_type: str


class Sandbox:
    """A fake gateway serving one account, or many, over HTTP; thread-safe, one lock
    around the state.

    Several accounts: ``accounts`` maps more names to their passwords (``name`` and
    ``password`` are one account always), or ``any_account=True`` takes any name with any
    password. Each account has its own inbound messages, read interval ("too soon"),
    faults (``set_fault(account=...)``), sends and counters (``stats(account)``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "demo",
        password: str = "demo",
        encoding: str = "gbk",
        min_read_interval: float = 5.0,
        service_code: str = "0888008",
        max_recipients: int = 100,
        first_id: int | None = None,
        balance: int = DEFAULT_BALANCE,
        accounts: Mapping[str, str] | None = None,
        any_account: bool = False,
    ) -> None:
        self.host = host
        self.name = name
        self.password = password
        self.accounts: dict[str, str] = {**(accounts or {}), name: password}
        """Account names and their passwords."""
        self.any_account = any_account
        self.encoding = encoding
        self.min_read_interval = min_read_interval
        self.service_code = service_code
        self.max_recipients = max_recipients
        self.initial_balance = balance
        if first_id is None:
            first_id = int(time.time() * 1000) % 2_000_000_000 + 1
        self._next_id = first_id
        self._port = port
        self._lock = threading.Lock()
        self._request = threading.local()
        """The request being answered on this thread (its account)."""
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._inbound: dict[str, deque[_Inbound]] = {}
        self._account_counts: dict[str, dict[str, int]] = {}
        self._sent: list[SentSms] = []
        self._faults: list[_Fault] = []
        self._last_read: dict[str, float] = {}
        self._read_times: dict[str, deque[float]] = {}
        self._counts = {
            "reads": 0,
            "too_fast_reads": 0,
            "sends": 0,
            "requests": 0,
            "balance_checks": 0,
        }
        self._balance = self.initial_balance
        self._balance_offered = True

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Sandbox:
        """Bind and serve in a daemon thread; returns self."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server((self.host, self._port), _Handler)
            self._server.sandbox = self
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"sandbox-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; hanging or slow requests are cut short."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the sandbox is not running")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL; clients append ``/send/<file>.aspx``."""
        return f"http://{self.host}:{self.port}"

    # -- Python API --------------------------------------------------------------------------

    def inject(
        self,
        src: str,
        text: str,
        *,
        dst: str | None = None,
        time: datetime | str | None = None,
        raw_msg: bytes | None = None,
        account: str | None = None,
    ) -> int:
        """Queue an inbound message for readsms of ``account`` (default: ``name``); returns
        its id.

        ``time`` is a datetime or a verbatim ``YYYYMMDDHHMM`` field (default: now).
        ``raw_msg`` replaces ``text`` in the answer with these exact bytes.
        """
        if time is None:
            time = datetime.now(PLATFORM_TZ)
        stamp = time if isinstance(time, str) else format_platform_time(time)
        with self._lock:
            message = _Inbound(
                id=self._take_id(),
                src=src,
                dst=self.service_code if dst is None else dst,
                time=stamp,
                msg=text if raw_msg is None else raw_msg,
                account=account or self.name,
            )
            self._inbound.setdefault(message.account, deque()).append(message)
        return message.id

    def sent(self, account: str | None = None) -> list[SentSms]:
        """Accepted sends (of ``account``, or of every account), oldest first."""
        with self._lock:
            return [s for s in self._sent if account is None or s.account == account]

    def stats(self, account: str | None = None) -> SandboxStats:
        """Counters of every account, or of ``account``."""
        with self._lock:
            if account is None:
                pending = sum(len(queue) for queue in self._inbound.values())
                return SandboxStats(pending_inbound=pending, **self._counts)
            counts = dict.fromkeys(self._counts, 0) | self._account_counts.get(account, {})
            return SandboxStats(pending_inbound=len(self._inbound.get(account, ())), **counts)

    def pending(self, account: str | None = None) -> int:
        """Injected messages not read yet (of ``account``, or of every account)."""
        with self._lock:
            if account is not None:
                return len(self._inbound.get(account, ()))
            return sum(len(queue) for queue in self._inbound.values())

    def read_times(self, account: str | None = None) -> list[float]:
        """When the latest reads of ``account`` (default: ``name``) arrived
        (time.monotonic), oldest first; the last READ_TIMES_KEPT only."""
        with self._lock:
            return list(self._read_times.get(account or self.name, ()))

    def account_names(self) -> list[str]:
        """The accounts that made a request, sorted."""
        with self._lock:
            return sorted(self._account_counts)

    def set_fault(
        self,
        kind: str,
        *,
        endpoint: str = "any",
        count: int | None = None,
        delay: float | None = None,
        errid: int | None = None,
        err: str | None = None,
        account: str | None = None,
    ) -> None:
        """Make the next ``count`` matching requests (None: all, until cleared) misbehave;
        of ``account`` only when given.

        Faults stack: each request takes the oldest fault that matches its endpoint
        ("read", "send", "balance" for getfee, or "any").
        ``delay`` is for "hang" (default 30 s) and "slow" (default 1 s). "too_soon" makes a
        read answer ``读取过于频繁`` (as a read before ``min_read_interval`` does). "errid"
        answers with ``errid`` and ``err`` (by default the code's text in ERRID_TEXTS; with
        no errid, ``err`` alone, as vendors that send no code do): 6010 refuses the login,
        6013 says out of credit, 6009 refuses the number, and so on.
        """
        if kind == "errid" and errid is None and not err:
            raise ValueError('an "errid" fault needs an errid, an err text or both')
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        if endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"unknown fault endpoint {endpoint!r}; expected {FAULT_ENDPOINTS}")
        if count is not None and count < 1:
            raise ValueError("count must be at least 1, or None")
        delay = DEFAULT_DELAYS.get(kind, 0.0) if delay is None else float(delay)
        text = err if err is not None else ERRID_TEXTS.get(errid or 0, "失败")
        with self._lock:
            self._faults.append(_Fault(kind, endpoint, count, delay, errid, text, account))

    def clear_faults(self, account: str | None = None) -> None:
        """Clear every fault, or those set for ``account``."""
        with self._lock:
            self._faults = [f for f in self._faults if account is not None and f.account != account]

    @property
    def balance(self) -> int:
        """The account's credit: one unit per SMS accepted (per number); at 0 sends are
        refused ``errid=6013&err=账号余额不足``."""
        with self._lock:
            return self._balance

    def set_balance(self, balance: int | None = None, *, offered: bool | None = None) -> None:
        """Top up (or drain) the credit; ``offered=False`` makes getfee.aspx answer 404, as
        on a provider without a balance endpoint."""
        with self._lock:
            if balance is not None:
                self._balance = int(balance)
            if offered is not None:
                self._balance_offered = bool(offered)

    def reset(self) -> None:
        """Forget messages, sends, faults, counters and read times, and restore the balance
        (ids keep counting)."""
        with self._lock:
            self._reset_state()

    # -- the gateway -------------------------------------------------------------------------

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _arrive(self, endpoint: str, account: str) -> tuple[_Fault | None, bool]:
        """Count a gateway request and take its fault; returns (fault, too fast)."""
        kind = _FAULT_ENDPOINT.get(endpoint, "send")
        too_fast = False
        with self._lock:
            own = self._account_counts.setdefault(account, dict.fromkeys(self._counts, 0))
            counted = ["requests"]
            if kind == "read":
                counted.append("reads")
                now = time.monotonic()
                last = self._last_read.get(account)
                self._last_read[account] = now
                times = self._read_times.get(account)
                if times is None:
                    times = self._read_times[account] = deque(maxlen=READ_TIMES_KEPT)
                times.append(now)
                too_fast = last is not None and now - last < self.min_read_interval
                if too_fast:
                    counted.append("too_fast_reads")
            elif kind == "balance":
                counted.append("balance_checks")
            else:
                counted.append("sends")
            for name in counted:
                self._counts[name] += 1
                own[name] += 1
            for index, fault in enumerate(self._faults):
                if fault.endpoint in (kind, "any") and fault.account in (None, account):
                    if fault.remaining == 1:
                        del self._faults[index]
                    elif fault.remaining is not None:
                        self._faults[index] = replace(fault, remaining=fault.remaining - 1)
                    return fault, too_fast
        return None, too_fast

    def _gateway(self, endpoint: str, method: str, form: str) -> _Answer | None:
        """Answer one gateway request; None means close the connection without answering."""
        params = decode_form(form, self.encoding)
        raw_msg = decode_form(form, "latin-1").get("msg", "").encode("latin-1")
        fault, too_fast = self._arrive(endpoint, params.get("name", ""))
        if endpoint == "getfee" and not self._balance_offered:
            return _Answer(404, b"Not Found", "text/plain")
        kind = fault.kind if fault else None
        if fault and kind in ("hang", "slow"):
            self._stopping.wait(fault.delay)
            if kind == "hang" or self._stopping.is_set():
                return None
        if kind == "html":
            return _Answer(200, _HTML_ERROR.encode(self.encoding), "text/html")
        if kind == "status500":
            return _Answer(500, b"Internal Server Error", "text/plain")
        if kind == "empty":
            return _Answer(200, b"", self._plain)
        if kind == "garbled":
            return _Answer(200, _GARBLED, self._plain)
        name = params.get("name", "")
        if kind == "login" or not self._login_ok(name, params.get("pwd")):
            fields = _login_failed(endpoint, params.get("dst", ""))
        elif fault is not None and kind == "errid":
            fields = _error_answer(endpoint, params.get("dst", ""), fault.err, fault.errid)
        elif endpoint == "getfee":
            with self._lock:
                fields = {"id": self._balance, "err": "查询成功", "errid": 0}
        elif endpoint == "readsms":
            self._request.account = name
            fields = self._read(too_fast or kind == "too_soon")
        else:
            fields = self._send(endpoint, method, params, raw_msg, name)
        if kind == "drop_after_consume":
            return None
        return _Answer(200, _encode_line(fields, self.encoding), self._plain)

    @property
    def _plain(self) -> str:
        return f"text/plain; charset={self.encoding}"

    def _login_ok(self, name: str, password: str | None) -> bool:
        if self.any_account and name:
            return True
        return name in self.accounts and password == self.accounts[name]

    def _read(self, too_fast: bool) -> dict[str, Any]:
        if too_fast:
            return {"id": 0, "err": TOO_FAST}
        account = getattr(self._request, "account", self.name)
        with self._lock:
            queue = self._inbound.get(account)
            message = queue.popleft() if queue else None
        if message is None:
            return {"id": 0, "err": NOTHING_UNREAD}
        return {
            "id": message.id,
            "err": "成功",
            "src": message.src,
            "msg": message.msg,
            "dst": message.dst,
            "time": message.time,
        }

    def _send(
        self, endpoint: str, method: str, params: Mapping[str, str], raw_msg: bytes, account: str
    ) -> dict[str, Any]:
        dst = params.get("dst", "")
        text = params.get("msg", "")
        numbers = split_numbers(dst)
        if len(numbers) > self.max_recipients:
            return _send_failed(dst, "号码数量超过限制", 6023)
        if len(text) > _MAX_CHARS[endpoint]:
            return _send_failed(dst, "短信内容超长", 6011)
        if not text:
            return _send_failed(dst, "短信内容不能为空", -5)
        accepted = tuple(number for number in numbers if _MOBILE.fullmatch(number))
        refused = ",".join(number for number in numbers if not _MOBILE.fullmatch(number))
        if not accepted:
            return _send_failed(refused, "发送失败", -4)
        with self._lock:
            if self._balance < len(accepted):
                return _send_failed(dst, OUT_OF_CREDIT, 6013)
            self._balance -= len(accepted)
            self._sent.append(
                SentSms(
                    id=self._take_id(),
                    numbers=accepted,
                    text=text,
                    sender=params.get("sender", ""),
                    schedule=params.get("time", ""),
                    endpoint=endpoint,
                    method=method,
                    at=time.time(),
                    raw_msg=raw_msg,
                    account=account,
                )
            )
        return {
            "num": len(accepted),
            "success": ",".join(accepted) + ",",
            "faile": refused,
            "err": "发送成功",
            "errid": 0,
        }

    # -- the control API ---------------------------------------------------------------------

    def _control(self, method: str, action: str, body: bytes, query: str = "") -> tuple[int, Any]:
        """Serve ``/_sandbox/<action>``: JSON in and out, UTF-8; ``?account=NAME`` limits
        ``sent`` and ``stats`` to one account."""
        account = decode_form(query, "utf-8").get("account") or None
        try:
            data = json.loads(body.decode("utf-8")) if body.strip() else {}
            if not isinstance(data, dict):
                raise ValueError("expected a JSON object")
            route = (method, action)
            if route == ("POST", "inbound"):
                return 200, {"id": self._inject_json(data)}
            if route == ("GET", "sent"):
                return 200, [_sent_json(record) for record in self.sent(account)]
            if route == ("GET", "stats"):
                return 200, asdict(self.stats(account))
            if route == ("GET", "read_times"):  # every account's, or ?account=NAME's
                with self._lock:
                    names = [account] if account else list(self._read_times)
                    return 200, {n: list(self._read_times.get(n, ())) for n in names}
            if route == ("POST", "fault"):
                self.set_fault(
                    str(data.get("kind")),
                    endpoint=str(data.get("endpoint", "any")),
                    count=None if data.get("count") is None else int(data["count"]),
                    delay=None if data.get("delay") is None else float(data["delay"]),
                    errid=None if data.get("errid") is None else int(data["errid"]),
                    err=None if data.get("err") is None else str(data["err"]),
                    account=None if data.get("account") is None else str(data["account"]),
                )
                return 200, {"ok": True}
            if route == ("POST", "balance"):
                self._balance_json(data)
                route = ("GET", "balance")
            if route == ("GET", "balance"):
                with self._lock:
                    return 200, {"balance": self._balance, "offered": self._balance_offered}
            if route == ("DELETE", "fault"):
                self.clear_faults()
                return 200, {"ok": True}
            if route == ("POST", "reset"):
                self.reset()
                return 200, {"ok": True}
        except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            return 400, {"error": str(exc)}
        return 404, {"error": f"no such control call: {method} /_sandbox/{action}"}

    def _balance_json(self, data: Mapping[str, Any]) -> None:
        balance, offered = data.get("balance"), data.get("offered")
        if balance is not None and (isinstance(balance, bool) or not isinstance(balance, int)):
            raise ValueError('"balance" must be an integer')
        if offered is not None and not isinstance(offered, bool):
            raise ValueError('"offered" must be true or false')
        self.set_balance(balance, offered=offered)

    def _inject_json(self, data: Mapping[str, Any]) -> int:
        src, text = data.get("src"), data.get("text")
        if not isinstance(src, str) or not isinstance(text, str):
            raise ValueError('"src" and "text" must be strings')
        dst, stamp, account = data.get("dst"), data.get("time"), data.get("account")
        return self.inject(
            src,
            text,
            dst=None if dst is None else str(dst),
            time=None if stamp is None else str(stamp),
            account=None if account is None else str(account),
        )


def _login_failed(endpoint: str, dst: str) -> dict[str, Any]:
    if endpoint in ("readsms", "getfee"):
        return {"id": -1, "err": LOGIN_FAILED}
    return _send_failed(dst, LOGIN_FAILED, -1)


def _error_answer(endpoint: str, dst: str, err: str, errid: int | None) -> dict[str, Any]:
    """An "errid" fault's answer; without a code, the ``errid`` field is left out."""
    if endpoint in ("readsms", "getfee"):
        fields: dict[str, Any] = {"id": -1, "err": err, "errid": errid}
    else:
        fields = _send_failed(dst, err, errid)
    if errid is None:
        del fields["errid"]
    return fields


def _send_failed(faile: str, err: str, errid: int | None) -> dict[str, Any]:
    return {"num": 0, "success": "", "faile": faile, "err": err, "errid": errid}


def _encode_line(fields: Mapping[str, object], encoding: str) -> bytes:
    """format_body in ``encoding``, except that a bytes value is written as is."""
    return b"&".join(
        key.encode("ascii") + b"=" + value
        if isinstance(value, bytes)
        else format_body({key: value}).encode(encoding, errors="replace")
        for key, value in fields.items()
    )


def _sent_json(record: SentSms) -> dict[str, Any]:
    data = asdict(record)
    data["numbers"] = list(record.numbers)
    data["raw_msg"] = record.raw_msg.hex()
    return data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a hanging request
    sandbox: Sandbox

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Handler errors (mostly clients that went away) go to the debug log, not stderr."""
        log.debug("sandbox request failed", exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: stop() leaves no live ones
    server_version = "sandbox"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: a GET request line carries ``pwd``."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        path, _, query = self.path.partition("?")
        body = b""
        if method != "GET":
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(min(max(length, 0), _MAX_BODY))
        sandbox = self.server.sandbox
        if path.startswith("/_sandbox/"):
            status, payload = sandbox._control(method, path.removeprefix("/_sandbox/"), body, query)
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            self._answer(_Answer(status, data, "application/json; charset=utf-8"))
            return
        endpoint = _ENDPOINTS.get(path.lower())
        if endpoint is None or method == "DELETE":
            self._answer(_Answer(404, b"Not Found", "text/plain"))
            return
        # Parameters may come in the query, the body or both (the body wins), as in ASP.NET.
        form = f"{query}&{body.decode('latin-1')}"
        answer = sandbox._gateway(endpoint, method, form)
        if answer is not None:
            self._answer(answer)

    def _answer(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(answer.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)


def serve(host: str = "127.0.0.1", port: int = 8800, **kwargs: Any) -> None:
    """Run a sandbox in the foreground until Ctrl-C or SIGTERM."""
    done = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        with Sandbox(host, port, **kwargs) as sandbox:
            inject = json.dumps({"src": "13800138000", "text": "你好"}, ensure_ascii=False)
            print(
                f"sandbox gateway listening on {sandbox.url} "
                f"(account {sandbox.name!r}, password {sandbox.password!r}, "
                f"{sandbox.encoding}); inject a reply with: curl -X POST "
                f"{sandbox.url}/_sandbox/inbound -H 'Content-Type: application/json' "
                f"-d '{inject}'",
                flush=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                done.wait()
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
