"""The sd_notify protocol, against real unix datagram sockets."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from responder.notify import Notifier, monotonic_usec, socket_address, watchdog_seconds


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a short path (unix paths are limited to 107 bytes)."""
    folder = tempfile.mkdtemp(prefix="notify-", dir="/tmp")
    path = os.path.join(folder, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(folder)


def test_a_notification_is_one_datagram_on_the_socket(listener):
    sock, path = listener
    assert Notifier(path).send("READY=1\nSTATUS=all good")
    assert sock.recv(4096) == b"READY=1\nSTATUS=all good"


def test_an_abstract_socket_name_starting_with_at_is_reached():
    name = f"responder-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        assert Notifier(f"@{name}").send("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_from_environ_reads_notify_socket(listener):
    sock, path = listener
    Notifier.from_environ({"NOTIFY_SOCKET": path})("STOPPING=1")
    assert sock.recv(4096) == b"STOPPING=1"


def test_without_notify_socket_it_is_a_no_op():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.send("READY=1") is False


def test_a_missing_socket_is_reported_as_false_not_raised(tmp_path: Path):
    assert Notifier(str(tmp_path / "gone")).send("READY=1") is False


def test_utf8_status_text_arrives_intact(listener):
    sock, path = listener
    Notifier(path).send("STATUS=今天 3 条短信")
    assert sock.recv(4096).decode() == "STATUS=今天 3 条短信"


def test_socket_address_of_a_path_is_the_path():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract") == b"\0abstract"


def test_monotonic_usec_is_clock_monotonic_in_microseconds():
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    value = monotonic_usec()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= value <= after


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "60000000"}, 60.0),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_seconds_follows_systemds_variables(environ, expected):
    assert watchdog_seconds(environ) == expected
