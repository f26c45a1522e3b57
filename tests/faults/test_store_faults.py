"""A store that cannot be opened stops the daemon with one clear error; a full one holds
reading until there is room again, losing nothing.

Tests run as root in CI, where permission bits do not stop root: the daemon is started
through a launcher that first drops the capabilities that let root ignore them
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER), as a service user would not have
them, so a folder with mode 0500 is read-only for it. A full disk is a file-size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored so a write fails with EFBIG instead of killing the
process), which the kernel enforces for root too; only its soft limit is set, so the test
can raise it on the running daemon (prlimit), as an operator frees disk space.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from responder.store import Store
from tests.conftest import wait_for
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
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(value), resource.RLIM_INFINITY))
os.execv(sys.executable, [sys.executable, *argv])
"""
FULL_AT = 4 * 1024 * 1024
"""Bytes a file may grow to: room for the schema, under the reserve a read needs."""


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


def test_a_full_store_holds_reading_then_resumes_by_itself_losing_nothing(gateway, tmp_path):
    config = fault_config(gateway, tmp_path)
    injected = [gateway.inject(f"1390000{number:04d}", "CX") for number in range(3)]
    log = tmp_path / "daemon.log"
    daemon = launch("fsize", str(FULL_AT), ["-m", "responder", "run", "-c", str(config)], log)
    try:
        wait_for(lambda: '"reads_held"' in log.read_text(encoding="utf-8"))
        assert gateway.stats().reads == 0 and gateway.pending() == len(injected)
        assert "MiB left for the store" in held_in_status(config)

        resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)

        wait_for(lambda: len(gateway.sent()) == len(injected))
        assert held_in_status(config) == ""
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    events = [json.loads(line)["event"] for line in log.read_text("utf-8").splitlines()]
    assert events.count("reads_held") == 1 and events.count("reads_resumed") == 1
    assert not {"store_failed", "message_not_journaled", "job_failed"} & set(events)
    journaled = rows(tmp_path / "responder.db", "SELECT gateway_id FROM messages")
    assert sorted(row["gateway_id"] for row in journaled) == injected


def held_in_status(config: Path) -> str:
    """Why ``responder status`` says reading is held ("" when it is not)."""
    result = subprocess.run(
        [sys.executable, "-m", "responder", "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return json.loads(result.stdout)["reads_held"]
