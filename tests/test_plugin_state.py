"""What the public API gives every plugin for its own state and secrets: ``app.stash``
(``responder.StashKey``) and ``app.redact``."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator

import pytest

from responder import Stash, StashKey
from responder.logs import configure_logging
from tests.conftest import config_dict

COUNT = StashKey[int]()
NAMES = StashKey[list[str]]()


def test_a_value_is_found_by_its_key_and_keys_never_clash():
    stash = Stash()
    other = StashKey[int]()
    stash[COUNT] = 1
    stash[other] = 2
    assert (stash[COUNT], stash[other], len(stash)) == (1, 2, 2)


def test_an_unset_key_raises_key_error_or_gives_the_default():
    stash = Stash()
    with pytest.raises(KeyError):
        stash[COUNT]
    assert stash.get(COUNT, None) is None
    assert COUNT not in stash


def test_setdefault_keeps_the_first_value_and_pop_removes_it():
    stash = Stash()
    first = stash.setdefault(NAMES, [])
    first.append("a")
    assert stash.setdefault(NAMES, ["b"]) == ["a"]
    assert stash.pop(NAMES, None) == ["a"]
    assert stash.pop(NAMES, None) is None
    stash[COUNT] = 3
    del stash[COUNT]
    assert COUNT not in stash


def test_setdefault_from_many_threads_gives_them_all_one_value():
    stash = Stash()
    seen: list[list[str]] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        seen.append(stash.setdefault(NAMES, []))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(value) for value in seen}) == 1


def test_every_app_has_its_own_stash(sandbox, tmp_path, make_app):
    data = config_dict(sandbox, tmp_path)
    first, second = make_app(data), make_app(data)  # as after a SIGHUP reload
    first.stash[COUNT] = 1
    assert COUNT not in second.stash


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(format="json", level="info", stream=stream)
    yield stream
    configure_logging(format="console", level="warning")


def test_app_redact_hides_a_plugins_secret_in_every_log_line(
    log_stream, sandbox, tmp_path, make_app
):
    app = make_app(config_dict(sandbox, tmp_path))
    token = "crm-token-5f1e9a77"

    app.redact(token, "")
    app.log.info("crm_called", url=f"https://crm.example/api?token={token}", note=[token])

    line = log_stream.getvalue()
    assert "crm_called" in line and token not in line
    assert line.count("[REDACTED]") == 2
