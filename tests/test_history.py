"""The account's history (`responder history`, ``responder.history``): both directions,
newest first, paged, with what answered each message."""

from __future__ import annotations

import csv
import io
from datetime import datetime

import pytest

from responder import outbound
from responder.cli import main
from responder.config import load_settings
from responder.history import decode_cursor, history, iter_history, parse_moment
from responder.models import PLATFORM_TZ, InboundSms
from responder.store import OutgoingSms, Store
from tests.conftest import offline_config, write_config

CUSTOMER = "13800138000"
OTHER = "13911020005"
_ids = iter(range(1, 1_000_000))


def sms(text: str, src: str = CUSTOMER) -> InboundSms:
    number = next(_ids)
    return InboundSms(
        number, src, "0888008", text, datetime(2026, 9, 22, 8, 0, tzinfo=PLATFORM_TZ), "raw"
    )


@pytest.fixture
def config(tmp_path):
    return write_config(tmp_path / "config.toml", offline_config(tmp_path))


@pytest.fixture
def app(make_app, tmp_path, clock):
    return make_app(offline_config(tmp_path), clock=clock)


def answered(app, text: str, reply: str, *, src: str = CUSTOMER, plugin: str = "keywords"):
    message = app.store.journal(sms(text, src))
    assert message is not None
    app.store.finish_message(
        message.id,
        outgoing=[outbound_sms(reply, src, plugin)],
        plugin=plugin,
    )
    return message


def outbound_sms(text: str, to: str, plugin: str) -> OutgoingSms:
    return OutgoingSms((to,), text, plugin=plugin)


def test_each_message_shows_what_answered_it_and_each_reply_who_sent_it(app, clock):
    answered(app, "CX", "已受理")
    clock.advance(1)
    ignored = app.store.journal(sms("广告"))
    assert ignored is not None
    app.store.finish_message(ignored.id, outgoing=[], reason="spam", decided_by="guard")

    lines = history(app).lines

    assert [(line.direction, line.text, line.by, line.reason) for line in lines] == [
        ("in", "广告", "guard", "spam"),
        ("out", "已受理", "reply (keywords)", ""),
        ("in", "CX", "keywords", ""),
    ]
    assert lines[1].state == "pending" and lines[1].number == CUSTOMER


def test_outbound_sends_and_hand_sent_sms_are_in_the_history(app, clock):
    receipt = outbound.submit(
        app, outbound.SendRequest(to=(CUSTOMER, OTHER), text="明天上门", source="api:crm")
    )
    clock.advance(1)
    row_id = app.store.hand_sent_start([CUSTOMER], "客服回复", raw=False)
    app.store.hand_sent_finish(row_id, "sent", reason="")

    lines = history(app, number=CUSTOMER).lines

    assert [(line.kind, line.text, line.number, line.state) for line in lines] == [
        ("hand", "客服回复", CUSTOMER, "sent"),
        ("send", "明天上门", CUSTOMER, "pending"),
    ]
    assert lines[1].send_id == receipt.id and lines[1].by == f"send #{receipt.id} by api:crm"
    assert lines[1].recipients == 2


def test_pages_follow_each_other_without_repeating_or_skipping(app, clock):
    for index in range(125):
        answered(app, f"m{index}", f"r{index}")
        if index % 3 == 0:
            clock.advance(1)  # others share their moment

    first = history(app, limit=100)
    second = history(app, limit=100, cursor=first.next_cursor)
    third = history(app, limit=100, cursor=second.next_cursor)

    texts = [line.text for page in (first, second, third) for line in page.lines]
    assert len(texts) == 250 and len(set(texts)) == 250
    assert third.next_cursor is None and len(third.lines) == 50
    moments = [line.at for line in (*first.lines, *second.lines, *third.lines)]
    assert moments == sorted(moments, reverse=True)


def test_the_last_full_page_has_no_next_cursor(app):
    for index in range(3):
        answered(app, f"m{index}", f"r{index}")

    assert history(app, limit=6).next_cursor is None
    assert history(app, limit=5).next_cursor is not None


@pytest.mark.parametrize(
    ("filters", "texts"),
    [
        ({"grep": "订单"}, ["订单已发货", "查订单"]),
        ({"grep": "ORDER"}, ["order 12"]),
        ({"direction": "in"}, ["order 12", "查订单"]),
        ({"direction": "out"}, ["订单已发货"]),
        ({"number": OTHER}, ["order 12"]),
        ({"number": "+86 139-1102-0005"}, ["order 12"]),
    ],
)
def test_filters_narrow_the_history(app, filters, texts):
    answered(app, "查订单", "订单已发货")
    app.store.journal(sms("order 12", OTHER))

    assert [line.text for line in history(app, **filters).lines] == texts


def test_since_and_until_bound_the_history_in_time(app, clock):
    app.store.journal(sms("old"))
    clock.advance(3600)
    middle = clock()
    app.store.journal(sms("new"))
    clock.advance(3600)
    app.store.journal(sms("newest"))

    assert [line.text for line in history(app, since=middle).lines] == ["newest", "new"]
    assert [line.text for line in history(app, until=middle).lines] == ["old"]
    since = datetime.fromtimestamp(middle, PLATFORM_TZ)
    assert [line.text for line in history(app, since=since, until=middle + 1).lines] == ["new"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"number": "abc"}, "not a phone number"),
        ({"direction": "sideways"}, "direction must be 'in' or 'out'"),
        ({"cursor": "garbage"}, "not a history cursor"),
        ({"limit": 0}, "limit must be 1 to 1000"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(app, arguments, message):
    with pytest.raises(ValueError, match=message):
        history(app, **arguments)


def test_a_cursor_stands_for_the_last_line_of_its_page(app):
    for index in range(3):
        app.store.journal(sms(f"m{index}"))

    page = history(app, limit=2)

    assert page.next_cursor is not None
    assert decode_cursor(page.next_cursor)[0] == page.lines[-1].at


def test_history_reads_through_indexes_newest_first(tmp_path):
    """Over many rows each source is read through an index on its time: no full scan,
    no sort of the whole table."""
    store = Store(tmp_path / "responder.db")
    try:
        store.history(limit=1)  # the indexes are made on first use
        plans: list[str] = []
        statements: list[str] = []
        connection = store._connection()
        connection.set_trace_callback(statements.append)
        store.history(limit=10, before=(2e9, 1, 5))
        store.history(number=CUSTOMER, limit=10)
        connection.set_trace_callback(None)
        for statement in statements:
            if statement.startswith("SELECT") and "LIMIT" in statement:
                rows = connection.execute(f"EXPLAIN QUERY PLAN {statement}").fetchall()
                plans.append(" | ".join(row[-1] for row in rows))
    finally:
        store.close()
    source_plans = [plan for plan in plans if "sent_by_hand" not in plan]
    assert source_plans
    for plan in source_plans:
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
        assert "TEMP B-TREE" not in plan, plan


def test_a_page_of_100000_messages_is_read_without_scanning_them(tmp_path):
    store = Store(tmp_path / "responder.db")
    try:
        with store.transaction() as tx:
            tx.executemany(
                "INSERT INTO messages (gateway_id, src, dst, text, raw, journaled_at)"
                " VALUES (?, ?, '', ?, '', ?)",
                ((i, f"139{i % 5000:08d}", f"m{i}", 1_790_000_000 + i) for i in range(100_000)),
            )
        history(store, limit=1)  # the indexes are made on first use
        steps: list[int] = []
        connection = store._connection()
        connection.set_progress_handler(lambda: steps.append(1) and 0, 1000)
        page = history(store, limit=100)
        later = history(store, limit=100, cursor=page.next_cursor)
        connection.set_progress_handler(None, 0)
    finally:
        store.close()
    assert [line.text for line in later.lines][:2] == ["m99899", "m99898"]
    assert len(steps) < 100  # VM steps / 1000: a scan of 100,000 rows takes far more


# -- the command ---------------------------------------------------------------------------


def filled(config, clock) -> None:
    """A message answered by the keywords plugin, in the store of ``config``."""
    settings = load_settings(str(config), need_password=False)
    store = Store(settings.store.path, clock=clock)
    try:
        message = store.journal(sms("查询 余额"))
        assert message is not None
        store.finish_message(
            message.id,
            outgoing=[outbound_sms("余额100元", CUSTOMER, "keywords")],
            plugin="keywords",
        )
    finally:
        store.close()


def test_the_table_shows_each_message_with_what_answered_it(config, tmp_path, capsys, clock):
    filled(config, clock)

    assert main(["history", "-c", str(config), CUSTOMER]) == 0

    out = capsys.readouterr().out.splitlines()
    assert "余额100元" in out[0] and "(reply (keywords))" in out[0]
    assert "查询 余额" in out[1] and "(keywords)" in out[1] and "processed" in out[1]


def test_csv_has_a_header_and_a_bom_when_asked(config, tmp_path, capsys, clock):
    filled(config, clock)

    assert main(["history", "-c", str(config), "--csv", "--bom"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("\ufefftime,direction,number")
    rows = list(csv.DictReader(io.StringIO(out.lstrip("\ufeff"))))
    assert [(row["direction"], row["text"], row["by"]) for row in rows] == [
        ("out", "余额100元", "reply (keywords)"),
        ("in", "查询 余额", "keywords"),
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--since", "last week"], "--since: not a date: 'last week'"),
        (["--until", "2026-13-01"], "--until: not a date: '2026-13-01'"),
        (["not-a-number"], "not a phone number: 'not-a-number'"),
    ],
)
def test_bad_options_are_refused_clearly(config, tmp_path, capsys, clock, arguments, message):
    filled(config, clock)

    assert main(["history", "-c", str(config), *arguments]) == 2

    assert message in capsys.readouterr().err


def test_since_takes_a_date_in_platform_time():
    assert parse_moment("2026-11-01") == datetime(2026, 11, 1, tzinfo=PLATFORM_TZ).timestamp()


def test_every_line_is_read_through_the_pages(app):
    for index in range(30):
        app.store.journal(sms(f"m{index}"))

    assert len(list(iter_history(app, page=7))) == 30


def test_no_store_yet_is_said_so(config, capsys):
    assert main(["history", "-c", str(config)]) == 1

    assert "no history yet" in capsys.readouterr().err
