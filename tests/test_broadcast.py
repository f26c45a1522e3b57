"""`responder broadcast`: a CSV list streamed through the opt-out list into one outbound
send, which the daemon sends to the gateway in batches."""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import subprocess
import sys
import tomllib
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from responder.broadcast import (
    ListError,
    detect_encoding,
    header_key,
    parse_at,
    read_numbers,
)
from responder.cli import main
from responder.store import Store
from responder_plugins import optout
from tests.conftest import config_dict, wait_for, write_config

MAX_RECIPIENTS = 100
SIGNATURE = "【速达快递】"


def numbers_of(data: bytes, **kwargs: str) -> list[str]:
    return list(read_numbers(io.BytesIO(data), **kwargs))


def customer(index: int) -> str:
    return f"139{index:08d}"


@pytest.fixture
def config(sandbox, tmp_path):
    data = config_dict(
        sandbox,
        tmp_path,
        gateway={"max_recipients": MAX_RECIPIENTS},
        replies={"signature": SIGNATURE},
    )
    return write_config(tmp_path / "config.toml", data)


def opt_out(config: Path, make_app, numbers: list[str]) -> None:
    """Put numbers on the opt-out list: the first through the optout command (which
    makes the list), the rest as the plugin does."""
    assert main(["optout", "add", numbers[0], "-c", str(config)]) == 0
    app = make_app(tomllib.loads(config.read_text(encoding="utf-8")))
    for number in numbers[1:]:
        optout.add_number(app, number, message_id=None, source="test", text="")


def outbound_rows(tmp_path: Path) -> tuple[int, int, int]:
    store = Store(tmp_path / "responder.db")
    try:
        sends = store.query("SELECT COUNT(*) FROM outbound", missing_ok=True)
        recipients = store.query("SELECT COUNT(*) FROM outbound_recipients", missing_ok=True)
        items = store.query("SELECT COUNT(*) FROM queue_items WHERE queue = 'outbox'")
        return (
            sends[0][0] if sends else 0,
            recipients[0][0] if recipients else 0,
            items[0][0],
        )
    finally:
        store.close()


# -- reading the list ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("number\n13800138000\n", ["13800138000"]),
        ("name,mobile\n张三,13800138000\n", ["13800138000"]),
        ("姓名,手机号\n张三,13800138000\n", ["13800138000"]),
        ("姓名,手机号码,备注\n张三,13800138000,VIP\n", ["13800138000"]),
        ("客户,号码\n李四,13800138000\n", ["13800138000"]),
        ("Name,Phone Number\nLi,13800138000\n", ["13800138000"]),
        ("name;PHONE\nLi;13800138000\n", ["13800138000"]),
        ("name\tphone\nLi\t13800138000\n", ["13800138000"]),
        ("id,cell_phone\n7,13800138000\n", ["13800138000"]),
        ("contact,notes\n13800138000,x\n", ["13800138000"]),  # no header: a number row
        ("张三,13800138000\n", ["13800138000"]),  # no header, the number not first
        ("13800138000\n13900139000\n", ["13800138000", "13900139000"]),
        ("客户,备注\n13800138000,x\n", ["13800138000"]),  # unknown header: first column
        ("number\n\n13800138000\n\n", ["13800138000"]),  # blank rows skipped
        ("name,number\nLi\n", [""]),  # a short row: an empty (invalid) number
        ('number,note\n"13800138000","a, b"\n', ["13800138000"]),
        ("", []),
    ],
)
def test_the_number_column_is_found_by_its_header_or_its_content(csv_text, expected):
    assert numbers_of(csv_text.encode("utf-8")) == expected


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (codecs.BOM_UTF8 + "手机号\n13800138000\n".encode(), "utf-8-sig"),
        ("手机号\n13800138000\n".encode(), "utf-8"),
        ("手机号\n13800138000\n".encode("gbk"), "gb18030"),
        ("手机号\n13800138000\n".encode("utf-16"), "utf-16"),
        (b"number\n13800138000\n", "utf-8"),
    ],
)
def test_the_encoding_is_recognised_from_the_start_of_the_file(data, encoding):
    assert detect_encoding(data) == encoding
    assert numbers_of(data) == ["13800138000"]


def test_a_gbk_list_saved_by_excel_is_read():
    data = "姓名,手机号\r\n张三,13800138000\r\n李四,+86 139-0013-9000\r\n".encode("gbk")

    assert numbers_of(data) == ["13800138000", "+86 139-0013-9000"]


def test_a_list_in_no_known_encoding_is_refused_with_advice():
    with pytest.raises(ListError, match=r"CSV UTF-8.*--encoding"):
        numbers_of(b"number\n\x80\x80\n")


def test_a_named_encoding_that_does_not_fit_the_start_is_refused():
    with pytest.raises(ListError, match="not ascii"):
        numbers_of("手机号\n13800138000\n".encode(), encoding="ascii")


def test_bytes_that_do_not_decode_late_in_the_file_spoil_only_their_cell():
    head = b"number,name\n" + b"13800138000,ok\n" * 5000  # past the recognised start
    data = head + b"13900139000,\xff\xfe\n"

    numbers = numbers_of(data)

    assert numbers[-1] == "13900139000" and len(numbers) == 5001


def test_header_names_ignore_case_spaces_and_marks():
    assert {header_key(" Mobile_Number "), header_key("手机号："), header_key("\ufeffPHONE")} == {
        "mobilenumber",
        "手机号",
        "phone",
    }


header_names = st.sampled_from(["number", "Mobile", "手机号", "号码", "phone", "电话"])
numbers = st.lists(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True), max_size=30)
fillers = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=8).filter(
    lambda text: not any(char.isdigit() for char in text)
)


@settings(max_examples=150, deadline=None)
@given(
    numbers=numbers,
    header=header_names,
    column=st.integers(0, 2),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "gbk", "utf-16"]),
    filler=fillers,
    newline=st.sampled_from(["\n", "\r\n"]),
)
def test_every_number_of_a_list_comes_out_in_order(
    numbers, header, column, encoding, filler, newline
):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=newline)
    names = ["备注", "name"]
    names.insert(column, header)
    writer.writerow(names)
    for number in numbers:
        row = [filler, filler]
        row.insert(column, number)
        writer.writerow(row)
    try:
        data = out.getvalue().encode(encoding)
    except UnicodeEncodeError:
        return  # a filler GBK cannot carry: not a list Excel would write

    assert numbers_of(data) == numbers


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("2026-12-01 09:30", "2026-12-01T09:30:00+08:00"),
        ("2026-12-01T09:30", "2026-12-01T09:30:00+08:00"),
        ("2026-12-01T01:30:00Z", "2026-12-01T09:30:00+08:00"),
        ("2026-12-01T09:30:00+08:00", "2026-12-01T09:30:00+08:00"),
    ],
)
def test_at_takes_iso_times_and_platform_local_times(text, iso):
    assert parse_at(text) == datetime.fromisoformat(iso).timestamp()


# -- the command ---------------------------------------------------------------------------


def test_a_dry_run_prints_the_totals_and_stores_and_sends_nothing(
    sandbox, config, tmp_path, make_app, capsys
):
    opt_out(config, make_app, [customer(1)])
    listing = tmp_path / "list.csv"
    rows = [customer(i) for i in range(5)] + [customer(0), "12", "abc"]
    listing.write_text("手机号\n" + "\n".join(rows) + "\n", encoding="utf-8")
    before = outbound_rows(tmp_path)

    code = main(["broadcast", "-c", str(config), "--to", str(listing), "-m", "上新了", "--dry-run"])

    out = capsys.readouterr().out
    assert code == 0
    assert "dry run: nothing stored or sent" in out
    assert "queued:      4 would be queued, 4 SMS" in out
    assert "suppressed:  1 " in out
    assert "invalid:     2" in out
    assert "duplicates:  1" in out
    assert outbound_rows(tmp_path) == before
    assert sandbox.sent() == []


def test_totals_are_printed_as_json(config, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("13800138000\n13800138000\n13900139000\n", encoding="utf-8")

    main(["broadcast", "-c", str(config), "--to", str(listing), "-m", "hi", "--json"])

    totals = json.loads(capsys.readouterr().out)
    assert (totals["queued"], totals["duplicates"], totals["requests"]) == (2, 1, 1)
    assert totals["id"] > 0


def test_the_list_is_read_from_standard_input(config, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"13800138000\n")))

    assert main(["broadcast", "-c", str(config), "--to", "-", "-m", "hi", "--json"]) == 0

    assert json.loads(capsys.readouterr().out)["queued"] == 1


def test_the_text_may_come_from_a_file(config, tmp_path, capsys):
    text_file = tmp_path / "text.txt"
    text_file.write_text("双十二大促\n", encoding="utf-8")
    listing = tmp_path / "list.csv"
    listing.write_text("13800138000\n", encoding="utf-8")

    main(["broadcast", "-c", str(config), "--to", str(listing), "--message-file", str(text_file)])

    store = Store(tmp_path / "responder.db")
    try:
        assert store.query("SELECT text FROM outbound")[0][0] == "双十二大促"
    finally:
        store.close()


def test_a_broadcast_started_again_with_its_key_queues_only_the_rest(config, tmp_path, capsys):
    first = tmp_path / "first.csv"
    first.write_text("13800138000\n13900139000\n", encoding="utf-8")
    whole = tmp_path / "whole.csv"
    whole.write_text("13800138000\n13900139000\n13700137000\n", encoding="utf-8")
    args = ["broadcast", "-c", str(config), "-m", "hi", "--key", "dec-campaign", "--json"]

    main([*args, "--to", str(first)])
    capsys.readouterr()
    main([*args, "--to", str(whole)])

    totals = json.loads(capsys.readouterr().out)
    assert (totals["queued"], totals["skipped"]) == (1, 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--at", "tomorrow"], "--at: not a time: 'tomorrow'"),
        (["--to", "/nonexistent/list.csv"], "--to: /nonexistent/list.csv: No such file"),
        (["-m", "   "], "the text is empty"),
        (["--flow", "no-such-flow"], "unknown flow 'no-such-flow'"),
    ],
)
def test_a_bad_argument_is_refused_clearly(config, tmp_path, capsys, extra, message):
    listing = tmp_path / "list.csv"
    listing.write_text("13800138000\n", encoding="utf-8")
    args = ["broadcast", "-c", str(config), "--to", str(listing), "-m", "hi", *extra]

    assert main(args) == 2

    assert message in capsys.readouterr().err


def test_an_undecodable_list_is_refused_clearly(config, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_bytes(b"number\n\x80\x80\n")

    assert main(["broadcast", "-c", str(config), "--to", str(listing), "-m", "hi"]) == 2

    assert "neither UTF-8 nor GBK" in capsys.readouterr().err


def test_no_progress_is_written_when_stderr_is_not_a_terminal(config, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(customer(i) for i in range(2500)), encoding="utf-8")

    main(["broadcast", "-c", str(config), "--to", str(listing), "-m", "hi"])

    assert capsys.readouterr().err == ""


# -- sent by the daemon --------------------------------------------------------------------


def test_a_10000_number_broadcast_reaches_the_gateway_in_batches_without_opted_out_numbers(
    sandbox, config, tmp_path, make_app, daemons, capsys
):
    total = 10_000
    opted = [customer(i) for i in range(0, total, 97)]  # 104 opted out
    opt_out(config, make_app, opted)
    rows = [customer(i) for i in range(total)]
    rows += [customer(i) for i in range(0, total, 50)]  # 200 duplicates
    rows += ["12", "1234", "abc"] * 10  # 30 invalid
    listing = tmp_path / "list.csv"
    listing.write_text("姓名,手机号\n" + "".join(f"客户,{n}\n" for n in rows), encoding="gbk")
    text = "长" * 80  # two parts with the signature
    capsys.readouterr()

    assert main(["broadcast", "-c", str(config), "--to", str(listing), "-m", text, "--json"]) == 0
    totals = json.loads(capsys.readouterr().out)
    queued = total - len(opted)
    assert (totals["queued"], totals["suppressed"]) == (queued, len(opted))
    assert (totals["duplicates"], totals["invalid"]) == (200, 30)
    assert totals["sms"] == queued * 2

    daemon = daemons(config, tmp_path / "daemon.log")
    wait_for(lambda: len(sandbox.sent()) >= totals["requests"], timeout=120)
    daemon.signal(15)
    daemon.wait(30)

    sent = sandbox.sent()
    assert len(sent) == totals["requests"]
    assert not set(opted) & {number for sms in sent for number in sms.numbers}
    by_part: dict[str, list[str]] = {}
    for sms in sent:
        assert len(sms.numbers) <= MAX_RECIPIENTS and sms.text.startswith(SIGNATURE)
        by_part.setdefault(sms.text, []).extend(sms.numbers)
    assert [sorted(numbers) for numbers in by_part.values()] == [
        sorted(set(rows[:total]) - set(opted))
    ] * 2


def test_a_broadcast_takes_as_few_requests_as_full_batches_allow(
    config, tmp_path, make_app, capsys
):
    opted = [customer(i) for i in range(0, 2500, 7)]
    opt_out(config, make_app, opted)
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(customer(i) for i in range(2500)), encoding="utf-8")
    capsys.readouterr()

    main(["broadcast", "-c", str(config), "--to", str(listing), "-m", "hi", "--json"])

    totals = json.loads(capsys.readouterr().out)
    assert totals["requests"] == math.ceil((2500 - len(opted)) / MAX_RECIPIENTS)


def stored_count(tmp_path: Path) -> int:
    return outbound_rows(tmp_path)[1]


def queued_numbers(tmp_path: Path) -> list[str]:
    """Every number of every outbox item, as often as items carry it."""
    store = Store(tmp_path / "responder.db")
    try:
        rows = store.query("SELECT payload FROM queue_items WHERE queue = 'outbox'")
        return [n for (payload,) in rows for n in json.loads(payload)["recipients"]]
    finally:
        store.close()


def test_a_broadcast_killed_between_chunks_and_run_again_queues_every_number_once(
    config, tmp_path, make_app, capsys
):
    listed = [customer(i) for i in range(8000)]
    opted = listed[:6000:7]  # chunks of 1,000 leave partial batches of 100
    opt_out(config, make_app, opted)
    queued_early = 6000 - len(opted)
    args = ["broadcast", "-c", str(config), "-m", "hi", "--key", "autumn", "--json"]
    process = subprocess.Popen(
        [sys.executable, "-m", "responder", *args, "--to", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    # Six chunks, and part of a seventh; the pipe stays open: the run waits for the rest.
    process.stdin.write("".join(f"{n}\n" for n in listed[:6800]).encode())
    process.stdin.flush()
    stored_early = queued_early // MAX_RECIPIENTS * MAX_RECIPIENTS + len(opted)
    wait_for(lambda: stored_count(tmp_path) == stored_early, timeout=60)
    process.kill()
    process.wait(15)
    process.stdin.close()
    assert stored_count(tmp_path) == stored_early  # the held-back numbers are not in it
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join(listed) + "\n", encoding="utf-8")
    capsys.readouterr()

    assert main([*args, "--to", str(listing)]) == 0

    totals = json.loads(capsys.readouterr().out)
    assert totals["skipped"] == stored_early
    assert sorted(queued_numbers(tmp_path)) == sorted(set(listed) - set(opted))


def test_progress_on_a_terminal_is_one_line_rewritten_then_cleared():
    from responder.broadcast import BroadcastTotals, _ProgressLine

    screen = io.StringIO()
    line = _ProgressLine(screen)

    line(BroadcastTotals(queued=990, suppressed=10))
    line(BroadcastTotals(queued=1980, suppressed=20))
    line.end()

    written = screen.getvalue()
    assert "\n" not in written
    assert written.count("\r") == 4
    assert "2,000 read: 1,980 queued, 20 suppressed" in written
    assert written.endswith("\r")


def test_a_scheduled_broadcast_is_held_with_nothing_in_the_outbox(config, tmp_path, capsys):
    listing = tmp_path / "list.csv"
    listing.write_text("13800138000\n13900139000\n", encoding="utf-8")

    code = main(
        [
            "broadcast",
            "-c",
            str(config),
            "--to",
            str(listing),
            "-m",
            "hi",
            "--at",
            "2099-01-01 09:30",
        ]
    )

    out = capsys.readouterr().out
    assert code == 0
    assert "queued:      2 queued for 2099-01-01 09:30 (platform time)" in out
    assert outbound_rows(tmp_path) == (1, 2, 0)
