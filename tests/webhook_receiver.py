"""A real HTTP receiver for webhook tests: stdlib http.server on loopback, scripted answers."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))


@dataclass(frozen=True)
class Answer:
    """How the receiver answers one request."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    hang: threading.Event | None = None
    """Wait for this event (or the receiver's stop) before answering."""
    delay: float = 0.0
    stream_bytes: int = 0
    """Send this many bytes of body, chunked, instead of ``body`` (a huge response)."""
    declared_length: bool = True
    """With ``stream_bytes``: announce it in Content-Length (else chunked)."""


def json_answer(document: Any, status: int = 200) -> Answer:
    return Answer(
        status=status,
        body=json.dumps(document, ensure_ascii=False).encode("utf-8"),
        headers=(("Content-Type", "application/json; charset=utf-8"),),
    )


class Receiver:
    """An HTTP server that records every request and answers from a script (then a default)."""

    def __init__(
        self,
        default: Answer | None = None,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.default = default or Answer(status=200)
        self.host = host
        self.scheme = "https" if tls else "http"
        self._script: deque[Answer] = deque()
        self._received: list[Received] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._server = ThreadingHTTPServer((host, 0), _Handler)
        self._server.daemon_threads = True
        self._server.receiver = self  # type: ignore[attr-defined]
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def script(self, *answers: Answer) -> None:
        """Answer the next requests with these, in order, then with the default."""
        with self._lock:
            self._script.extend(answers)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def _next(self, request: Received) -> Answer:
        with self._lock:
            self._received.append(request)
            return self._script.popleft() if self._script else self.default


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        answer = receiver._next(Received(self.path, dict(self.headers.items()), body))
        if answer.hang is not None:
            while not (answer.hang.is_set() or receiver.stopping.is_set()):
                answer.hang.wait(0.05)
        if answer.delay:
            time.sleep(answer.delay)
        try:
            self._answer(answer)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _answer(self, answer: Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        if answer.stream_bytes:
            chunk = b"x" * 65536
            if answer.declared_length:
                self.send_header("Content-Length", str(answer.stream_bytes))
                self.end_headers()
                for _ in range(answer.stream_bytes // len(chunk)):
                    self.wfile.write(chunk)
            else:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(answer.stream_bytes // len(chunk)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            return
        if answer.status not in (204, 304):
            self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body)


class Trickler:
    """A raw TCP server that reads a request, then sends its response one byte at a time.

    For the total deadline of an attempt: every single read the client makes gets a byte
    well within any per-read timeout, so only a deadline over the whole attempt cuts it.
    The trickle stops when the server is stopped (the end of the test).
    """

    def __init__(
        self, response: bytes, *, head: bytes = b"", interval: float = 0.5, host: str = "127.0.0.1"
    ) -> None:
        self.head = head
        """Sent at once, before the trickle."""
        self.response = response
        self.interval = interval
        self.host = host
        self.stopping = threading.Event()
        self.requests = 0
        """Requests read so far."""
        self.cut = threading.Event()
        """Set when the client closed the connection before the response was all sent."""
        self._server = socket.create_server((host, 0))
        self._server.settimeout(0.05)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._thread.join(10)
        self._server.close()

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self._server.getsockname()[1]}{path}"

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _addr = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                self._one(conn)

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        declared = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        length = int(declared[1]) if declared else 0
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return
            body += chunk
        self.requests += 1
        conn.sendall(self.head)
        for byte in self.response:
            if self.stopping.wait(self.interval):
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                self.cut.set()
                return
