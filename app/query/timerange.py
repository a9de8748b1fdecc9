"""Time ranges and buckets in the request's timezone.

A bucket is a calendar interval in the request's IANA timezone: a day is local midnight to the
next local midnight, so on a daylight-saving change day it lasts 23 or 25 hours, and a week
starts on Monday. ClickHouse computes which bucket each event falls in (`bucket_sql`); this
module computes the list of buckets a range covers (`buckets`), so that empty buckets are filled
with zero. Both sides work on instants (epoch seconds of a bucket's start), never on local
wall-clock labels, which repeat when clocks go back.

Relative ranges end with the current bucket of their unit, so they cover whole units and the
current one to date:

    today, yesterday          the local day
    Nmin, Nh, Nd, Nw, Nmo     the last N minutes, hours, days, weeks (from Monday), months,
                              the current one included: "7d" is six whole days and today
    all                       1970-01-01 to the end of today (capped by the data, see below)

An absolute range is two strings, or the normalized form an answer echoes
(``{"from": ..., "to": ...}``, instants with offsets: the same range again, whatever the
clock). Two strings: Dates (``2026-03-01``) are whole local days, both included;
date-times (``2026-03-01T10:00``) are instants, the end excluded, in the request's timezone
unless they carry an offset.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

Interval = Literal["minute", "hour", "day", "week", "month"]
INTERVALS: tuple[Interval, ...] = ("minute", "hour", "day", "week", "month")
INTERVAL_S: dict[str, int] = {"minute": 60, "hour": 3600}

RELATIVE = re.compile(r"^(\d{1,5})(min|h|d|w|mo)$")
_UNIT: dict[str, Interval] = {"min": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class RangeError(ValueError):
    """A timezone or range that cannot be understood; the message says why."""


def zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith(("/", ".")):
        raise RangeError(f"timezone must be an IANA name such as 'Europe/Berlin', got {name!r}")
    try:
        tz = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise RangeError(f"unknown timezone {name!r}: use an IANA name such as 'Europe/Berlin'") from None
    if name not in _known():
        raise RangeError(f"unknown timezone {name!r}: use an IANA name such as 'Europe/Berlin'")
    return tz


_KNOWN: set[str] = set()


def _known() -> set[str]:
    if not _KNOWN:
        _KNOWN.update(available_timezones())
        _KNOWN.add("UTC")
    return _KNOWN


def floor(instant: datetime, interval: Interval, tz: ZoneInfo) -> datetime:
    """The start of the bucket of *interval* holding *instant*, as an aware datetime in *tz*."""
    local = instant.astimezone(tz)
    if interval == "minute":
        return local.replace(second=0, microsecond=0)
    if interval == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.date()
    if interval == "week":
        day -= timedelta(days=day.weekday())
    elif interval == "month":
        day = day.replace(day=1)
    return midnight(day, tz)


def midnight(day: date, tz: ZoneInfo) -> datetime:
    """The first instant of local *day*. Where a clock change skips midnight, a wall time in
    the gap resolves (fold=0) to the instant of the change: the first one of the day, as
    ClickHouse's toStartOfDay has it; where midnight repeats, the first one."""
    local = datetime(day.year, day.month, day.day, tzinfo=tz)
    return local.astimezone(UTC).astimezone(tz)


def step(start: datetime, interval: Interval, tz: ZoneInfo, n: int = 1) -> datetime:
    """The start of the bucket *n* buckets after the one starting at *start*."""
    if interval in INTERVAL_S:
        moved = start.astimezone(UTC) + timedelta(seconds=INTERVAL_S[interval] * n)
        return floor(moved, interval, tz)
    day = start.astimezone(tz).date()
    if interval == "day":
        return midnight(day + timedelta(days=n), tz)
    if interval == "week":
        return midnight(day + timedelta(weeks=n), tz)
    months = day.year * 12 + day.month - 1 + n
    return midnight(date(months // 12, months % 12 + 1, 1), tz)


def buckets(start: datetime, end: datetime, interval: Interval, tz: ZoneInfo,
            limit: int) -> list[datetime]:
    """Starts of the buckets that overlap [start, end), at most *limit* (RangeError past it)."""
    out: list[datetime] = []
    current = floor(start, interval, tz)
    # Aware datetimes of one tzinfo compare (and subtract) by wall clock: compare instants.
    while current.timestamp() < end.timestamp():
        if len(out) >= limit:
            raise RangeError(
                f"the range holds more than {limit} {interval} buckets: choose a longer interval"
                " or a shorter range"
            )
        out.append(current)
        current = step(current, interval, tz)
    return out


@dataclass(frozen=True)
class TimeRange:
    """[start, end) as aware datetimes in the request's timezone, and what the user wrote."""

    start: datetime
    end: datetime
    given: str | list[str]

    def to_dict(self) -> dict[str, object]:
        return {"given": self.given, "from": self.start.isoformat(), "to": self.end.isoformat()}


def _parse_point(text: str, tz: ZoneInfo, field: str, end: bool) -> datetime:
    if not isinstance(text, str) or len(text) > 40:
        raise RangeError(f"{field} must be an ISO-8601 date or date-time string")
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return midnight(day + timedelta(days=1), tz) if end else midnight(day, tz)
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RangeError(f"{field} must be an ISO-8601 date or date-time, got {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(tz)


def resolve(value: object, tz: ZoneInfo, now: datetime, field: str = "date_range") -> TimeRange:
    """The range *value* names, as of *now* (RangeError naming *field* when it is not one)."""
    if isinstance(value, str):
        if value in ("today", "yesterday"):
            today = floor(now, "day", tz)
            start = step(today, "day", tz, -1) if value == "yesterday" else today
            return TimeRange(start, step(start, "day", tz), value)
        if value == "all":
            return TimeRange(EPOCH.astimezone(tz), step(floor(now, "day", tz), "day", tz), value)
        match = RELATIVE.match(value)
        if not match or int(match.group(1)) < 1:
            raise RangeError(
                f"{field} {value!r} is not a range: use today, yesterday, all, a count and a unit"
                " (30min, 24h, 7d, 4w, 3mo) or two ISO dates [from, to]"
            )
        n, unit = int(match.group(1)), _UNIT[match.group(2)]
        current = floor(now, unit, tz)
        try:
            return TimeRange(step(current, unit, tz, -(n - 1)), step(current, unit, tz), value)
        except (OverflowError, ValueError):
            raise RangeError(f"{field} {value!r} reaches before the year 1") from None
    if isinstance(value, dict) and isinstance(value.get("from"), str) and isinstance(value.get("to"), str):
        start = _parse_point(value["from"], tz, f"{field}.from", end=False)
        stop = _parse_point(value["to"], tz, f"{field}.to", end=False)
        if start.timestamp() >= stop.timestamp():
            raise RangeError(f"{field}: from must be before to")
        if start.timestamp() < 0:
            raise RangeError(f"{field}: the start must be in 1970 or later")
        given = value.get("given")
        if not (isinstance(given, str) and len(given) <= 40 or isinstance(given, list)
                and len(given) == 2 and all(isinstance(g, str) and len(g) <= 40 for g in given)):
            given = [value["from"], value["to"]]
        return TimeRange(start, stop, given)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        start = _parse_point(value[0], tz, f"{field}[0]", end=False)
        stop = _parse_point(value[1], tz, f"{field}[1]", end=True)
        if start.timestamp() >= stop.timestamp():
            raise RangeError(f"{field}: the start must be before the end")
        if start.timestamp() < 0:
            raise RangeError(f"{field}: the start must be in 1970 or later")
        return TimeRange(start, stop, [str(value[0]), str(value[1])])
    raise RangeError(
        f"{field} must be a relative range such as '7d', two ISO dates [from, to], or"
        " {\"from\": instant, \"to\": instant}"
    )


def bucket_sql(column: str, interval: Interval, tz: str) -> str:
    """ClickHouse expression: epoch seconds of the start of *column*'s bucket in the timezone
    *tz* (the placeholder of a bound String parameter)."""
    if interval == "minute":
        inner = f"toStartOfMinute({column})"
    elif interval == "hour":
        inner = f"toStartOfHour({column}, {tz})"
    elif interval == "day":
        inner = f"toStartOfDay({column}, {tz})"
    elif interval == "week":
        inner = f"toDateTime(toMonday({column}, {tz}), {tz})"
    else:
        inner = f"toDateTime(toStartOfMonth({column}, {tz}), {tz})"
    return f"toUnixTimestamp({inner})"


def epoch_s(instant: datetime) -> int:
    return int(instant.timestamp())


def from_epoch_s(seconds: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC).astimezone(tz)
