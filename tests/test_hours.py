"""Opening hours: the week, China's holidays and 调休, overrides, next opening, [hours] errors."""

from __future__ import annotations

import itertools
from datetime import date, datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

import responder_plugins.keywords as kw
from responder import PLATFORM_TZ, OpeningHours
from responder.checks import check_configuration, core_warnings
from responder.config import ConfigError, HoursSettings, Table, settings_from_dict
from responder.hours import calendar_covers, parse_ranges
from responder.models import InboundSms, Message
from responder.pipeline import process
from responder.testing import ManualClock
from tests.conftest import config_dict, offline_config, write_config

GATEWAY = {"base_urls": ["http://sms.example.com:8080"], "name": "company", "password": "pw"}
OFFICE = {"weekdays": "09:00-12:00, 13:30-18:00"}
UNKNOWN_YEAR = 2099


def hours_of(section: dict[str, Any]) -> OpeningHours:
    settings = settings_from_dict({"gateway": GATEWAY, "hours": section}, environ={})
    return OpeningHours(settings.hours)


def problems_of(section: Any) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict({"gateway": GATEWAY, "hours": section}, source="config.toml")
    return caught.value.problems


def at(day: str, clock: str) -> datetime:
    """A fixed moment in platform time: at("2026-10-01", "10:00")."""
    return datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=PLATFORM_TZ)


# -- is_open: the week and China's calendar ------------------------------------------------


@pytest.mark.parametrize(
    ("day", "clock", "expected"),
    [
        ("2026-11-02", "10:00", True),  # Monday, morning
        ("2026-11-02", "12:30", False),  # Monday, lunch break
        ("2026-11-02", "13:30", True),  # start inclusive
        ("2026-11-02", "18:00", False),  # end exclusive
        ("2026-11-07", "10:00", False),  # an ordinary Saturday
        ("2026-11-08", "10:00", False),  # an ordinary Sunday
        ("2026-10-01", "10:00", False),  # National Day (Thursday)
        ("2026-10-05", "10:00", False),  # National Day week (Monday)
        ("2026-02-17", "10:00", False),  # Spring Festival (Tuesday)
        ("2026-10-10", "10:00", True),  # 调休: a Saturday worked for National Day
        ("2026-02-14", "10:00", True),  # 调休: a Saturday worked for Spring Festival
        ("2026-09-20", "10:00", True),  # 调休: a Sunday worked
        ("2026-10-10", "12:30", False),  # 调休 days keep the weekday's lunch break
    ],
    ids=lambda value: str(value),
)
def test_the_office_follows_the_week_and_china_s_calendar(day, clock, expected):
    assert hours_of(OFFICE).is_open(at(day, clock)) is expected


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        ("2026-11-02", "weekday"),
        ("2026-11-07", "weekend"),
        ("2026-10-01", "holiday National Day"),
        ("2026-02-17", "holiday Spring Festival"),
        ("2026-10-10", "adjusted working day"),
    ],
)
def test_each_day_says_why_it_is_open_or_closed(day, reason):
    assert hours_of(OFFICE).day(date.fromisoformat(day)).reason == reason


def test_saturday_hours_apply_to_ordinary_saturdays_but_not_to_holidays():
    hours = hours_of({**OFFICE, "sat": "10:00-16:00"})
    assert hours.is_open(at("2026-11-07", "11:00"))
    assert not hours.is_open(at("2026-10-03", "11:00"))  # a Saturday in National Day week


def test_without_the_calendar_holidays_are_ordinary_days():
    hours = hours_of({**OFFICE, "workdays_follow_calendar": False})
    assert hours.is_open(at("2026-10-01", "10:00"))
    assert not hours.is_open(at("2026-10-10", "10:00"))


def test_a_day_key_wins_over_weekdays():
    hours = hours_of({**OFFICE, "fri": "09:00-15:00"})
    assert not hours.is_open(at("2026-11-06", "16:00"))
    assert hours.is_open(at("2026-11-05", "16:00"))


def test_without_an_hours_section_it_is_always_open():
    hours = OpeningHours(HoursSettings())
    assert not hours.configured
    assert hours.is_open(at("2026-10-01", "03:00"))
    assert hours.next_opening(at("2026-10-01", "03:00")) == at("2026-10-01", "03:00")


def test_epoch_seconds_are_platform_time():
    assert hours_of(OFFICE).is_open(at("2026-11-02", "10:00").timestamp())


# -- overrides -----------------------------------------------------------------------------

OVERRIDES = {
    **OFFICE,
    "overrides": [
        {"date": "2026-12-24", "closed": True},
        {"date": "2026-12-31", "open": "09:00-12:00"},
        {"date": "2026-11-08", "open": "10:00-16:00"},  # a Sunday
        {"date": date(2026, 10, 2), "open": "10:00-12:00"},  # a TOML date, on a holiday
        {"date": f"{UNKNOWN_YEAR}-01-05", "open": ""},  # "" is closed too
    ],
}


@pytest.mark.parametrize(
    ("day", "clock", "expected"),
    [
        ("2026-12-24", "10:00", False),  # closed on a weekday
        ("2026-12-31", "10:00", True),  # other hours: open in the morning
        ("2026-12-31", "14:00", False),  # ... and closed in the afternoon
        ("2026-11-08", "15:00", True),  # open on a Sunday
        ("2026-10-02", "11:00", True),  # open on a national holiday
        (f"{UNKNOWN_YEAR}-01-05", "10:00", False),  # applies in a year the calendar lacks
        ("2026-12-23", "10:00", True),  # the day before is untouched
    ],
)
def test_an_override_wins_over_the_week_and_the_calendar(day, clock, expected):
    assert hours_of(OVERRIDES).is_open(at(day, clock)) is expected


# -- next_opening --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (("2026-11-02", "10:00"), ("2026-11-02", "10:00")),  # open: now
        (("2026-11-02", "07:00"), ("2026-11-02", "09:00")),  # before opening: today
        (("2026-11-02", "12:10"), ("2026-11-02", "13:30")),  # lunch break: this afternoon
        (("2026-11-02", "22:00"), ("2026-11-03", "09:00")),  # evening: tomorrow
        (("2026-11-06", "19:00"), ("2026-11-09", "09:00")),  # Friday evening: Monday
        (("2026-09-30", "19:00"), ("2026-10-08", "09:00")),  # before National Day week
        (("2026-10-03", "10:00"), ("2026-10-08", "09:00")),  # inside it
        (("2026-10-09", "19:00"), ("2026-10-10", "09:00")),  # Friday before a 调休 Saturday
        (("2026-02-13", "19:00"), ("2026-02-14", "09:00")),  # Friday before Spring Festival 调休
    ],
)
def test_next_opening_skips_nights_weekends_and_holidays(now, expected):
    assert hours_of(OFFICE).next_opening(at(*now)) == at(*expected)


def test_next_opening_of_an_hours_that_never_open_is_none():
    hours = hours_of({"weekdays": "", "sat": "", "sun": ""})
    assert hours.next_opening(at("2026-11-02", "10:00")) is None


def test_a_range_until_midnight_reopens_at_midnight_the_next_day():
    hours = hours_of({"weekdays": "00:00-24:00"})
    assert hours.next_opening(at("2026-11-06", "23:00")) == at("2026-11-06", "23:00")
    assert hours.next_opening(at("2026-11-07", "23:00")) == at("2026-11-09", "00:00")


# -- a year the calendar does not know -----------------------------------------------------


def test_the_calendar_covers_this_package_s_years_only():
    assert calendar_covers(2026)
    assert not calendar_covers(UNKNOWN_YEAR)


def test_an_unknown_year_falls_back_to_the_plain_week_with_one_warning():
    hours = hours_of(OFFICE)
    monday, saturday = date(UNKNOWN_YEAR, 1, 5), date(UNKNOWN_YEAR, 1, 3)
    with capture_logs() as events:
        assert hours.is_open(at(monday.isoformat(), "10:00"))
        assert not hours.is_open(at(saturday.isoformat(), "10:00"))
        assert hours.next_opening(at(saturday.isoformat(), "10:00")) == at("2099-01-05", "09:00")
    assert not hours.day(monday).calendar_known
    warnings = [e for e in events if e["event"] == "hours_calendar_unknown_year"]
    assert [w["year"] for w in warnings] == [UNKNOWN_YEAR]
    assert "update the package" in warnings[0]["detail"]


def test_check_warns_when_this_year_is_not_in_the_calendar(tmp_path, make_app):
    data = {"gateway": GATEWAY, "store": {"path": str(tmp_path / "r.db")}, "hours": OFFICE}
    moment = at(f"{UNKNOWN_YEAR}-03-02", "10:00").timestamp()
    app = make_app(data, clock=lambda: moment)
    [warning] = [w for w in core_warnings(app) if "hours" in w]
    assert "hours.workdays_follow_calendar: the chinesecalendar package does not know" in warning
    assert str(UNKNOWN_YEAR) in warning


def test_check_is_quiet_in_a_year_the_calendar_knows(tmp_path, make_app):
    data = {"gateway": GATEWAY, "store": {"path": str(tmp_path / "r.db")}, "hours": OFFICE}
    moment = at("2026-03-02", "10:00").timestamp()
    app = make_app(data, clock=lambda: moment)
    assert [w for w in core_warnings(app) if "hours" in w] == []


# -- [hours] errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"weekdays": "9am-6pm"}, "hours.weekdays: must be opening times such as"),
        ({"weekdays": "09:00-25:00"}, "hours.weekdays: must be opening times"),
        ({"mon": "18:00-09:00"}, "hours.mon: must be opening times"),
        ({"tue": "09:00-12:00, 11:00-14:00"}, "overlap"),
        ({"weekdays": 9}, "hours.weekdays: must be a string"),
        ({"sat": "09:00-12:00,"}, "hours.sat: must be opening times"),
        ({"workdays_follow_calendar": "yes"}, "hours.workdays_follow_calendar: must be true"),
        ({}, "hours.weekdays: opening times are required"),
        ({"weekday": "09:00-18:00"}, "hours.weekday: unknown key; did you mean 'weekdays'?"),
        ({**OFFICE, "overrides": [{"date": "2026-13-01", "closed": True}]}, "overrides[0].date"),
        ({**OFFICE, "overrides": [{"date": "2026/12/24", "closed": True}]}, "must be a date"),
        ({**OFFICE, "overrides": [{"closed": True}]}, "hours.overrides[0].date: is required"),
        ({**OFFICE, "overrides": [{"date": "2026-12-24"}]}, "overrides[0].open: is required"),
        (
            {
                **OFFICE,
                "overrides": [{"date": "2026-12-24", "closed": True, "open": "09:00-10:00"}],
            },
            "hours.overrides[0].open: set either",
        ),
        (
            {**OFFICE, "overrides": [{"date": "2026-12-24", "open": "10:00-09:00"}]},
            "hours.overrides[0].open: must be opening times",
        ),
        (
            {
                **OFFICE,
                "overrides": [
                    {"date": "2026-12-24", "closed": True},
                    {"date": "2026-12-24", "open": "09:00-10:00"},
                ],
            },
            "hours.overrides[1].date: 2026-12-24 is overridden twice",
        ),
        ({**OFFICE, "overrides": [{"date": "2026-12-24", "shut": True}]}, "overrides[0].shut"),
        ("09:00-18:00", "hours: must be a table"),
    ],
)
def test_hours_errors_name_the_key(section, expected):
    problems = problems_of(section)
    assert any(expected in problem for problem in problems), problems
    assert all(problem.startswith("config.toml: hours") for problem in problems), problems


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("", ()),
        ("09:00-18:00", ((540, 1080),)),
        ("14:00-18:00, 09:00-12:00", ((540, 720), (840, 1080))),
        ("12:00-24:00", ((720, 1440),)),
    ],
)
def test_ranges_are_parsed_sorted(text, spans):
    assert parse_ranges(text) == spans


# -- keyword rules and the opening hours, through the pipeline -----------------------------

_ids = itertools.count(1)


def _journal(app, text: str) -> Message:
    sms = InboundSms(
        gateway_id=next(_ids), src="13800138000", dst="0888008", text=text, received_at=None, raw=""
    )
    journaled = app.store.journal(sms)
    assert journaled is not None
    return journaled


MENU = {
    "rules": [
        {"name": "menu-open", "keywords": ["菜单"], "when": "open", "reply": "请回复数字：1 查询"},
        {"name": "menu-closed", "keywords": ["菜单"], "when": "closed", "reply": "已下班"},
    ]
}


def test_a_keyword_rule_answers_differently_inside_and_outside_opening_hours(
    sandbox, tmp_path, make_app
):
    clock = ManualClock(at("2026-11-02", "10:00").timestamp())  # a Monday morning
    app = make_app(config_dict(sandbox, tmp_path, keywords=MENU, hours=OFFICE), clock=clock)
    replies = []
    for moment in (
        at("2026-11-02", "10:00"),  # open
        at("2026-11-02", "22:00"),  # the same weekday, at night
        at("2026-10-01", "10:00"),  # National Day
        at("2026-10-10", "10:00"),  # a 调休 Saturday
    ):
        clock.set(moment)
        decision = process(app, _journal(app, "菜单"))
        assert decision.composed is not None
        replies.append(decision.composed.parts)
    assert replies == [("请回复数字：1 查询",), ("已下班",), ("已下班",), ("请回复数字：1 查询",)]


def test_a_rule_with_when_says_so_in_simulate(sandbox, tmp_path, make_app):
    clock = ManualClock(at("2026-11-02", "22:00").timestamp())
    app = make_app(config_dict(sandbox, tmp_path, keywords=MENU, hours=OFFICE), clock=clock)
    decision = process(app, _journal(app, "菜单"))
    assert dict(decision.reply.meta)["why"] == 'the first word is "菜单" (when closed)'


def keyword_problems(rules: list[dict[str, Any]]) -> list[str]:
    problems: list[str] = []
    table = Table({"rules": rules}, file="config.toml", prefix="keywords", problems=problems)
    kw.parse(table)
    table.finish()
    return problems


def test_when_open_and_when_closed_rules_may_share_a_keyword():
    assert keyword_problems(MENU["rules"]) == []


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            [{"keywords": ["cx"], "when": "night", "reply": "r"}],
            """keywords.rules[0].when: must be "open" or "closed" (the [hours]), got 'night'""",
        ),
        (
            [
                {"name": "a", "keywords": ["cx"], "when": "open", "reply": "a"},
                {"name": "b", "keywords": ["cx"], "reply": "b"},
            ],
            "keywords.rules[1].keywords: rule 'b' and rule 'a'",
        ),
    ],
)
def test_when_errors_name_the_key(rules, expected):
    first, *_ = keyword_problems(rules)
    assert first.removeprefix("config.toml: ").startswith(expected), first


def test_check_warns_about_when_without_an_hours_section(tmp_path, capsys):
    path = write_config(tmp_path / "config.toml", offline_config(tmp_path, keywords=MENU))
    report = check_configuration(path, environ={})
    assert report.problems == ()
    assert any(
        "keywords.rules[1].when: there is no [hours] section, so the opening hours are always "
        'open and when = "closed" never applies' in warning
        for warning in report.warnings
    ), report.warnings
