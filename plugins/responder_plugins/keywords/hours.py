"""Active hours of a rule: "09:00-18:00", several windows, or one wrapping midnight."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")
_DAY: Final = 24 * 60


@dataclass(frozen=True)
class Hours:
    """Active windows in a day, as minutes [start, end); a window may wrap past midnight."""

    text: str
    spans: tuple[tuple[int, int], ...]

    def contains(self, minute: int) -> bool:
        return any(start <= minute < end for start, end in self.spans)

    def overlaps(self, other: Hours) -> bool:
        return any(a < d and c < b for a, b in self.spans for c, d in other.spans)


def _minute(text: str) -> int:
    found = _CLOCK.fullmatch(text.strip())
    if not found or int(found.group(1)) > 24 or int(found.group(2)) > 59:
        raise ValueError(f"{text.strip()!r} is not a time of day HH:MM")
    minute = int(found.group(1)) * 60 + int(found.group(2))
    if minute > _DAY:
        raise ValueError(f"{text.strip()!r} is after 24:00")
    return minute


def parse_hours(text: str) -> Hours:
    """Parse "09:00-18:00" or "09:00-12:00, 14:00-18:00" ("22:00-06:00" wraps midnight)."""
    spans: list[tuple[int, int]] = []
    for window in text.split(","):
        start_text, dash, end_text = window.partition("-")
        if not dash:
            raise ValueError(f'{window.strip()!r} is not a window such as "09:00-18:00"')
        start, end = _minute(start_text), _minute(end_text)
        if start == _DAY:
            raise ValueError(f"{window.strip()!r} starts at 24:00: write 00:00")
        if start == end:
            raise ValueError(f"{window.strip()!r} is empty: start and end are the same time")
        if start < end:
            spans.append((start, end))
        else:
            spans.extend(span for span in ((start, _DAY), (0, end)) if span[0] < span[1])
    return Hours(text=text.strip(), spans=tuple(spans))
