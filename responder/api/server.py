"""The API server: uvicorn on a thread of its own, started and stopped by the daemon.

The socket is bound before the thread starts, so an address in use or not allowed is an
error of ``start``, naming ``api.listen``, not a line lost in a thread. uvicorn installs no
signal handlers off the main thread (the daemon keeps its own), its access log is off
(``responder.api.app.AccessLog`` logs each request with the token's name only) and it
leaves the logging configuration alone.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from typing import Final

import structlog
import uvicorn

from responder.api.app import build_api
from responder.api.context import ApiContext
from responder.api.settings import ApiSettings

START_TIMEOUT: Final = 10.0
SWITCH_INTERVAL: Final = 0.001
"""Seconds a thread holding the interpreter lock keeps it while another waits (Python's
default is 0.005). A send hops from the request's thread to the processing thread and
back, and while the sender is busy each hop could wait the whole interval: with the API
on, the daemon hands the lock over sooner (``benchmarks/api.py`` measures it)."""
STOP_TIMEOUT: Final = 5

log = structlog.get_logger("responder.api")


class ApiBindError(OSError):
    """The server could not listen where ``api.listen`` says."""


def bind(settings: ApiSettings) -> socket.socket:
    host, port = settings.host, settings.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as err:
        raise ApiBindError(f"cannot listen on {settings.listen}: {err.strerror or err}") from None
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise ApiBindError(f"cannot listen on {settings.listen}: {err.strerror or err}") from None
    sock.set_inheritable(True)
    return sock


class ApiServer:
    """uvicorn serving ``build_api(ctx)`` on its own thread."""

    def __init__(self, ctx: ApiContext, settings: ApiSettings | None = None) -> None:
        self.ctx = ctx
        self.settings = settings or ctx.settings
        self.socket: socket.socket | None = None
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.failed: BaseException | None = None

    @property
    def port(self) -> int:
        assert self.socket is not None
        port: int = self.socket.getsockname()[1]
        return port

    @property
    def url(self) -> str:
        host = self.settings.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    def start(self) -> ApiServer:
        """Bind, serve on a thread, and return once it answers; raises ApiBindError."""
        app = build_api(self.ctx)
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self.socket = bind(self.settings)
        config = uvicorn.Config(
            app,
            access_log=False,
            log_config=None,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=STOP_TIMEOUT,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self.server.started and self.thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not self.server.started:
            self.stop()
            raise ApiBindError(f"the API server on {self.settings.listen} did not start")
        log.info("api_started", listen=self.settings.listen, url=self.url)
        return self

    def _serve(self) -> None:
        assert self.server is not None and self.socket is not None
        try:
            self.server.run(sockets=[self.socket])
        except BaseException as err:  # SystemExit from uvicorn included: the thread ends
            self.failed = err
            log.error("api_failed", error=f"{type(err).__name__}: {err}")

    def stop(self, timeout: float = STOP_TIMEOUT + 1) -> bool:
        """Stop accepting, finish the requests in hand (up to ``timeout``); whether the
        thread ended."""
        if self.server is not None:
            self.server.should_exit = True
        ended = True
        if self.thread is not None:
            self.thread.join(timeout)
            ended = not self.thread.is_alive()
        if self.socket is not None:
            with contextlib.suppress(OSError):
                self.socket.close()
        log.info("api_stopped", clean=ended)
        return ended


def start_api(ctx: ApiContext, settings: ApiSettings | None = None) -> ApiServer:
    return ApiServer(ctx, settings).start()
