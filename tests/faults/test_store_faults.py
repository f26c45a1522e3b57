"""A store that cannot be written stops the daemon with one clear error, losing nothing.

Tests run as root in CI, where permission bits do not stop root: the daemon is started
through a launcher that first drops the capabilities that let root ignore them
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), as a service user would not have
them, so a folder with mode 0500 is read-only for it. A full disk is a file-size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored so a write fails with EFBIG instead of killing the
process), which the kernel enforces for root too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from responder.store import Store
from tests.faults.audit import rows
from tests.faults.conftest import fault_config

LAUNCH = """
import ctypes, os, resource, signal, sys
mode, value, *argv = sys.argv[1:]
if mode == "drop-caps" and os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            sys.exit(f"cannot drop capability {cap}: errno {ctypes.get_errno()}")
if mode == "fsize":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), int(value)))
os.execv(sys.executable, [sys.executable, *argv])
"""
FULL_AT = 400_000
"""Bytes a file may grow to: enough for the schema, exceeded once messages flow."""


def launch(mode: str, value: str, argv: list[str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCH, mode, value, *argv], stdout=out, stderr=out
        )


def read_only_works(folder: Path) -> bool:
    """Whether the launcher makes ``folder`` (mode 0500) unwritable for its child."""
    probe = [sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"]
    result = subprocess.run(
        [sys.executable, "-c", LAUNCH, "drop-caps", "", *probe[1:]], capture_output=True
    )
    return result.returncode != 0 and b"PermissionError" in result.stderr


@pytest.mark.parametrize("existing", [False, True], ids=["new-store", "existing-store"])
def test_a_read_only_store_folder_is_one_clear_fatal_error(gateway, tmp_path, existing):
    folder = tmp_path / "state"
    folder.mkdir()
    db = folder / "responder.db"
    if existing:
        Store(db).close()
    config = fault_config(gateway, tmp_path, store={"path": str(db)})
    folder.chmod(0o500)
    try:
        if not read_only_works(folder):
            pytest.skip("cannot make a folder read-only here (root without CAP_SETPCAP)")
        log = tmp_path / "daemon.log"
        daemon = launch("drop-caps", "", ["-m", "responder", "run", "-c", str(config)], log)
        assert daemon.wait(timeout=15) == 1
    finally:
        folder.chmod(0o700)
    text = log.read_text(encoding="utf-8")
    assert f"store.path: cannot open the store {str(db)!r}" in text
    assert "its folder must be writable" in text
    assert "Traceback" not in text
    assert gateway.stats().reads == 0


def test_a_full_disk_stops_the_daemon_once_and_loses_no_message(gateway, tmp_path):
    config = fault_config(gateway, tmp_path)
    log = tmp_path / "daemon.log"
    daemon = launch("fsize", str(FULL_AT), ["-m", "responder", "run", "-c", str(config)], log)
    injected = []
    try:
        for number in range(10_000):
            injected.append(gateway.inject(f"1390000{number:04d}", "CX"))
            if daemon.poll() is not None or wait_for_exit(daemon, 0.02):
                break
        assert daemon.wait(timeout=15) == 1
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    text = log.read_text(encoding="utf-8")
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    failures = [e for e in events if e["event"] == "store_failed"]
    assert 1 <= len(failures) <= 3, "one store_failed per job at most, then a stop"
    assert "stopping" in failures[0]["action"]
    assert "Traceback" not in text and '"job_failed"' not in text
    journaled = {
        row["gateway_id"] for row in rows(tmp_path / "responder.db", "SELECT * FROM messages")
    }
    logged = {e["gateway_id"] for e in events if e["event"] == "message_not_journaled"}
    still_pending = set(injected[len(injected) - gateway.pending() :])
    assert set(injected) == journaled | logged | still_pending
    assert not journaled & logged


def wait_for_exit(process: subprocess.Popen, seconds: float) -> bool:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True
