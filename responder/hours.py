"""Opening hours that know China's calendar: weekly times, official holidays, 调休, overrides.

One notion of "open" shared by everything that answers differently after hours (keyword
rules with ``when = "open"``, plugins through ``app.hours``). Configured in ``[hours]``
(see docs/configuration.md); times are platform time (Asia/Shanghai).

The official holidays and adjusted working days (调休) come from the ``chinesecalendar``
package, which knows the years up to the State Council's latest announcement (published
each winter for the next year): keep it updated. For a year it does not know, the hours
fall back to the plain week plus the ``[hours]`` overrides, with one warning per year.
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Final

import chinese_calendar
import structlog

from responder.models import PLATFORM_TZ

if TYPE_CHECKING:
    from responder.config import HoursSettings

WEEKDAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
"""The ``[hours]`` keys of the days of the week, Monday first (``date.weekday()`` order)."""
_DAY: Final = 24 * 60
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_SEARCH_DAYS: Final = 400
"""How far ``next_opening`` looks ahead before it says the hours never open."""

Span = tuple[int, int]
"""Minutes of the day [start, end), 0 to 1440."""


def _minute(text: str) -> int:
    found = _CLOCK.fullmatch(text.strip())
    if not found or int(found.group(1)) > 24 or int(found.group(2)) > 59:
        raise ValueError(f"{text.strip()!r} is not a time of day HH:MM")
    minute = int(found.group(1)) * 60 + int(found.group(2))
    if minute > _DAY:
        raise ValueError(f"{text.strip()!r} is after 24:00")
    return minute


def parse_ranges(text: str) -> tuple[Span, ...]:
    """Opening times of one day: "09:00-18:00", "09:00-12:00, 14:00-18:00", or "" (closed).

    Each range starts before it ends (24:00 may end one; none wraps midnight) and ranges
    may not overlap. Raises ValueError saying what is wrong.
    """
    spans: list[Span] = []
    for window in (w.strip() for w in text.split(",")):
        if not window:
            if text.strip():
                raise ValueError(f"{text.strip()!r} has an empty range")
            continue
        start_text, dash, end_text = window.partition("-")
        if not dash:
            raise ValueError(f'{window!r} is not a range such as "09:00-18:00"')
        start, end = _minute(start_text), _minute(end_text)
        if start >= end:
            raise ValueError(
                f"{window!r} does not end after it starts (opening hours do not wrap "
                'midnight: open until "24:00" and from "00:00" the next day)'
            )
        spans.append((start, end))
    spans.sort()
    for (a_start, a_end), (b_start, b_end) in itertools.pairwise(spans):
        if b_start < a_end:
            raise ValueError(
                f"the ranges {_range_text((a_start, a_end))} and "
                f"{_range_text((b_start, b_end))} overlap"
            )
    return tuple(spans)


def _clock_text(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _range_text(span: Span) -> str:
    return f"{_clock_text(span[0])}-{_clock_text(span[1])}"


def ranges_text(spans: tuple[Span, ...]) -> str:
    """``spans`` as written in the configuration: "09:00-12:00, 14:00-18:00"; "" = closed."""
    return ", ".join(_range_text(span) for span in spans)


@dataclass(frozen=True)
class OpeningDay:
    """One date's opening times and why: "weekday", "weekend", "holiday 国庆节",
    "adjusted working day", "override", "not configured" (always open)."""

    day: date
    spans: tuple[Span, ...]
    reason: str
    calendar_known: bool = True
    """False when the calendar package does not know the date's year (plain week used)."""

    @property
    def closed(self) -> bool:
        return not self.spans


@dataclass(frozen=True)
class CalendarDay:
    """What China's official calendar says of a date."""

    workday: bool
    holiday_name: str = ""
    """The official holiday ("National Day") when the date is one; "" otherwise."""


def calendar_day(day: date) -> CalendarDay | None:
    """China's official calendar for ``day`` (holidays and 调休), or None when the calendar
    package does not know the year."""
    try:
        workday = bool(chinese_calendar.is_workday(day))
        _, name = chinese_calendar.get_holiday_detail(day)
    except NotImplementedError:
        return None
    return CalendarDay(workday=workday, holiday_name="" if workday else (name or ""))


def calendar_covers(year: int) -> bool:
    """Whether the calendar package knows the official holidays of ``year``."""
    return calendar_day(date(year, 6, 1)) is not None


@dataclass(eq=False)
class OpeningHours:
    """Opening hours from ``[hours]``; without that section, always open.

    ``is_open(at)``, ``next_opening(at)`` and ``day(date)`` take aware datetimes (or epoch
    seconds), compared in platform time. Safe to share between threads.
    """

    settings: HoursSettings
    _warned: set[int] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def configured(self) -> bool:
        """Whether ``[hours]`` is set; when it is not, every moment is open."""
        return bool(self.settings.week)

    def day(self, day: date) -> OpeningDay:
        """The opening times of a date, after the calendar and the overrides."""
        settings = self.settings
        if not settings.week:
            return OpeningDay(day, ((0, _DAY),), "not configured")
        override = settings.overrides_by_date.get(day)
        if override is not None:
            return OpeningDay(day, override, "override")
        weekday = day.weekday()
        plain = "weekday" if weekday < 5 else "weekend"
        if not settings.workdays_follow_calendar:
            return OpeningDay(day, settings.week[weekday], plain)
        official = calendar_day(day)
        if official is None:
            self._warn_unknown_year(day.year)
            return OpeningDay(day, settings.week[weekday], plain, calendar_known=False)
        if not official.workday and (weekday < 5 or official.holiday_name):
            return OpeningDay(day, (), f"holiday {official.holiday_name}".strip())
        if official.workday and weekday >= 5:
            return OpeningDay(day, settings.workday_spans, "adjusted working day")
        return OpeningDay(day, settings.week[weekday], plain)

    def is_open(self, at: datetime | float) -> bool:
        """Whether the hours are open at this moment."""
        moment = _local(at)
        minute = moment.hour * 60 + moment.minute
        return any(start <= minute < end for start, end in self.day(moment.date()).spans)

    def next_opening(self, at: datetime | float) -> datetime | None:
        """When the hours next open: ``at`` itself (in platform time) when they are open
        then, else the start of the next opening range ("a person will answer from 09:00
        tomorrow"). None when nothing opens within a year (every day closed)."""
        moment = _local(at)
        minute = moment.hour * 60 + moment.minute
        day = moment.date()
        for offset in range(_SEARCH_DAYS):
            current = day + timedelta(days=offset)
            for start, end in self.day(current).spans:
                if offset == 0 and start <= minute < end:
                    return moment
                if offset > 0 or start > minute:
                    return _at(current, start)
        return None

    def _warn_unknown_year(self, year: int) -> None:
        with self._lock:
            if year in self._warned:
                return
            self._warned.add(year)
        structlog.get_logger("responder.hours").warning(
            "hours_calendar_unknown_year",
            year=year,
            detail=(
                f"the chinesecalendar package does not know China's official holidays of "
                f"{year}: opening hours follow the plain week and [hours] overrides; "
                "update the package"
            ),
        )


def _local(at: datetime | float) -> datetime:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise ValueError("opening hours need an aware datetime (or epoch seconds)")
        return at.astimezone(PLATFORM_TZ)
    return datetime.fromtimestamp(at, PLATFORM_TZ)


def _at(day: date, minute: int) -> datetime:
    if minute >= _DAY:
        return datetime.combine(day + timedelta(days=1), time(0), PLATFORM_TZ)
    return datetime.combine(day, time(minute // 60, minute % 60), PLATFORM_TZ)
