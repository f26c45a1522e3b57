"""The systemd notification protocol (sd_notify), without a dependency.

A notification is one datagram of ``KEY=VALUE`` lines sent to the unix socket named by
``$NOTIFY_SOCKET``; a name starting with ``@`` is an abstract socket. Without the
variable (not under systemd, or not ``Type=notify``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Final

import structlog

SOCKET_ENV: Final = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV: Final = "WATCHDOG_USEC"
WATCHDOG_PID_ENV: Final = "WATCHDOG_PID"

log = structlog.get_logger("responder.notify")


def socket_address(name: str) -> str | bytes:
    """The address to send to: a path, or the bytes of an abstract name (``@name``)."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as ``MONOTONIC_USEC`` expects (Python's monotonic
    clock is CLOCK_MONOTONIC on Linux)."""
    return time.monotonic_ns() // 1000


class Notifier:
    """Sends notifications to systemd; callable as ``notifier("READY=1")``."""

    def __init__(self, socket_name: str | None) -> None:
        self.socket_name = socket_name or None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        environ = os.environ if environ is None else environ
        return cls(environ.get(SOCKET_ENV))

    @property
    def enabled(self) -> bool:
        return self.socket_name is not None

    def __call__(self, message: str) -> None:
        self.send(message)

    def send(self, message: str) -> bool:
        """Send one notification; False when there is no socket or it could not be sent.

        A failure is logged once and never raised: systemd's bookkeeping must not stop
        the daemon.
        """
        if self.socket_name is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), socket_address(self.socket_name))
        except OSError as err:
            if not self._warned:
                self._warned = True
                log.warning("notify_failed", socket=self.socket_name, error=str(err))
            return False
        return True


def watchdog_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """The watchdog interval systemd asks for (``WatchdogSec=``), or None when it is off.

    ``WATCHDOG_PID``, when set, names the process that must ping: another process (a
    child that inherited the environment) gets None.
    """
    environ = os.environ if environ is None else environ
    usec = environ.get(WATCHDOG_USEC_ENV, "")
    pid = environ.get(WATCHDOG_PID_ENV, "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000
