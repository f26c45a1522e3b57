"""Fixtures for the fault suite: a recording sandbox, fast configs and a summary report."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PASSWORD, config_dict, write_config
from tests.faults.audit import Audit, RecordingSandbox

POLL = 0.05
"""The read interval of every fault run: the sandbox enforces the same one."""
RULES = {"rules": [{"keywords": ["CX"], "reply": "您好，已受理"}]}
REPORT_KEY = pytest.StashKey[list[Audit]]()


@pytest.fixture
def gateway() -> Iterator[RecordingSandbox]:
    """A sandbox whose read interval equals the daemon's poll interval."""
    with RecordingSandbox(name="acct", password=PASSWORD, min_read_interval=POLL) as server:
        yield server


def fault_config(sandbox: RecordingSandbox, tmp_path: Path, **sections: dict[str, Any]) -> Path:
    """A config file with short intervals, timeouts and retries, and one keyword rule."""
    fast: dict[str, dict[str, Any]] = {
        "gateway": {"poll_interval": POLL, "timeout": 0.5},
        "replies": {"retry_initial": 0.05, "retry_max": 0.2},
        "keywords": RULES,
    }
    for name, values in sections.items():
        fast[name] = {**fast.get(name, {}), **values}
    return write_config(tmp_path / "config.toml", config_dict(sandbox, tmp_path, **fast))


@pytest.fixture
def fault_report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Audit], None]:
    """Record a run's audit for the summary at the end of the session, and check it."""

    def report(result: Audit) -> None:
        request.config.stash.setdefault(REPORT_KEY, []).append(result)
        path = tmp_path_factory.getbasetemp() / "fault-summary.txt"
        with path.open("a", encoding="utf-8") as handle:
            handle.write(result.line() + "\n")
        assert not result.problems, f"{result.line()}\n" + "\n".join(result.problems)

    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = config.stash.get(REPORT_KEY, [])
    if not results:
        return
    terminalreporter.section("fault injection summary")
    for result in results:
        mark = "FAILED " if result.problems else ""
        terminalreporter.write_line(mark + result.line())
    totals = (
        f"total: {sum(r.injected for r in results)} injected, "
        f"{sum(r.lost_on_read for r in results)} lost on read (answer dropped), "
        f"{sum(r.lost_to_kills for r in results)} lost to a kill mid-read, "
        f"{sum(r.duplicates for r in results)} duplicate SMS "
        f"({sum(r.uncertain for r in results)} uncertain sends), "
        f"{sum(r.too_fast_reads for r in results)} too-fast reads, "
        f"{sum(r.restarts for r in results)} kill -9 restarts"
    )
    terminalreporter.write_line(totals)
