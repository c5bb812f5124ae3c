"""Business hours of a call flow: a weekly timetable in one time zone, holidays, and a spoken description."""

from __future__ import annotations

import itertools
import re
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_INTERVAL = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
Interval = tuple[int, int]  # minutes after midnight, [start, end)


def _day(name: str) -> int:
    name = name.strip().lower()
    for index, day in enumerate(DAYS):
        if len(name) >= 3 and day.startswith(name):
            return index
    raise ValueError(f"unknown day {name!r}: use mon, tue, wed, thu, fri, sat, sun")


def parse_days(spec: str) -> list[int]:
    """``mon-fri``, ``sat,sun``, ``daily`` → weekday numbers (Monday is 0)."""
    if spec.strip().lower() in ("daily", "every day", "all"):
        return list(range(7))
    days: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            first, last = (_day(p) for p in part.split("-", 1))
            if last < first:
                raise ValueError(f"day range {part.strip()!r} runs backwards")
            days.extend(range(first, last + 1))
        else:
            days.append(_day(part))
    return days


def parse_interval(text: str) -> Interval:
    """``09:00-17:30`` → (540, 1050); the end may be 24:00; an interval never crosses midnight."""
    match = _INTERVAL.match(text)
    if not match:
        raise ValueError(f"opening interval {text!r} is not like 09:00-17:30")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60:
        raise ValueError(f"opening interval {text!r} has an impossible time")
    if end <= start:
        raise ValueError(f"opening interval {text!r} ends before it starts (split intervals at midnight)")
    return start, end


def spoken_time(minutes: int) -> str:
    """A time as a person says it: 9 AM, 12:30 PM, noon, midnight."""
    if minutes in (0, 24 * 60):
        return "midnight"
    if minutes == 12 * 60:
        return "noon"
    hour, minute = divmod(minutes, 60)
    suffix = "AM" if hour < 12 else "PM"
    hour = hour % 12 or 12
    return f"{hour} {suffix}" if minute == 0 else f"{hour}:{minute:02d} {suffix}"


class BusinessHours(BaseModel):
    """When people answer. Outside these hours (and on holidays) the call goes to the ``closed`` step."""

    model_config = ConfigDict(extra="forbid")

    timezone: str = Field(description="IANA time zone the timetable is in, e.g. Europe/London.")
    open: dict[str, list[str]] = Field(
        description="Days (mon, mon-fri, sat,sun or daily) → opening intervals like 09:00-17:30; "
        "days not listed are closed."
    )
    holidays: list[date] = Field(default_factory=list, description="Dates (YYYY-MM-DD) closed all day.")
    closed: str = Field(description="Step a call goes to when it arrives outside business hours.")
    _week: dict[int, list[Interval]] = PrivateAttr(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as Europe/Berlin)") from None
        return value

    @field_validator("open", mode="before")
    @classmethod
    def _one_interval(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _timetable(self) -> BusinessHours:
        week: dict[int, list[Interval]] = {}
        for spec, texts in self.open.items():
            intervals = sorted(parse_interval(t) for t in texts)
            for a, b in itertools.pairwise(intervals):
                if b[0] < a[1]:
                    raise ValueError(f"opening intervals of {spec!r} overlap")
            for day in parse_days(spec):
                if day in week:
                    raise ValueError(f"{DAYS[day]} is listed twice in the opening hours")
                week[day] = intervals
        self._week = week
        return self

    def is_open(self, at: datetime) -> bool:
        """Whether ``at`` (an aware datetime) falls inside the opening hours."""
        local = at.astimezone(ZoneInfo(self.timezone))
        if local.date() in self.holidays:
            return False
        minute = local.hour * 60 + local.minute
        return any(start <= minute < end for start, end in self._week.get(local.weekday(), []))

    def describe(self) -> str:
        """The timetable as a sentence fragment for speech: Monday to Friday from 9 AM to 5 PM, and …"""
        groups: list[tuple[int, int, list[Interval]]] = []
        for day in range(7):
            intervals = self._week.get(day)
            if not intervals:
                continue
            if groups and groups[-1][1] == day - 1 and groups[-1][2] == intervals:
                groups[-1] = (groups[-1][0], day, intervals)
            else:
                groups.append((day, day, intervals))
        if not groups:
            return "by appointment only"
        parts = []
        for first, last, intervals in groups:
            days = DAYS[first].title()
            if last > first:
                days += (" and " if last == first + 1 else " to ") + DAYS[last].title()
            times = " and ".join(f"from {spoken_time(s)} to {spoken_time(e)}" for s, e in intervals)
            parts.append(f"{days} {times}")
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + ", and " + parts[-1]
