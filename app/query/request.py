"""Query requests: the JSON body of ``POST /v1/query`` parsed into typed, validated objects.

`parse(body, defaults, now)` returns one of `Timeseries`, `Breakdown`, `Funnel`, `Retention`,
`Uniques`, or raises `BadQuery` naming the field at fault. Each request's `to_dict()` is the
normalized query echoed in the answer: defaults filled in, the range resolved to instants.
docs/query.md describes every field; the limits are the constants below.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from app.query.errors import BadQuery
from app.query.sql import (
    Dimension,
    Filter,
    Metric,
    parse_dimension,
    parse_filter,
    parse_metric,
)
from app.query.timerange import INTERVALS, Interval, RangeError, TimeRange, resolve, zone

MAX_SERIES = 10
MAX_STEPS = 10
MAX_DIMENSIONS = 3
MAX_ROWS = 10_000
MAX_FUNNEL_WINDOW_S = 90 * 86_400
MAX_RETENTION_PERIODS = 90
EVENT_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_ .:/$-]{0,127}$")
DURATION = re.compile(r"^(\d{1,7})(s|min|h|d|w)$")
DURATION_S = {"s": 1, "min": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
SOURCES = ("auto", "events", "rollup")

Source = Literal["auto", "events", "rollup"]


@dataclass(frozen=True)
class Defaults:
    """Settings a request falls back on (app.settings.QuerySettings)."""

    timezone: str = "UTC"
    date_range: str = "7d"
    project_id: str = "default"


class _Fields:
    """Reads one JSON object's fields, refusing unknown ones and naming each bad one."""

    def __init__(self, body: object, where: str, known: tuple[str, ...]) -> None:
        if not isinstance(body, dict):
            raise BadQuery(where, "must be a JSON object")
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise BadQuery(f"{where}.{unknown[0]}" if where else unknown[0],
                           f"unknown field; known fields are {', '.join(known)}")
        self.body = body
        self.where = where

    def path(self, name: str) -> str:
        return f"{self.where}.{name}" if self.where else name

    def get(self, name: str, default: Any = None) -> Any:
        value = self.body.get(name)
        return default if value is None else value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(name, default)
        if value not in choices:
            raise BadQuery(self.path(name), f"must be one of {', '.join(choices)}, got {str(value)[:40]!r}")
        return str(value)

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise BadQuery(self.path(name), f"must be an integer from {low} to {high}, got {str(value)[:40]!r}")
        return value

    def event(self, name: str, required: bool) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise BadQuery(self.path(name), "an event name is required")
            return None
        if not isinstance(value, str) or not EVENT_NAME.match(value):
            raise BadQuery(self.path(name), f"not an event name: {str(value)[:80]!r}")
        return value

    def filters(self, name: str = "filters") -> Filter | None:
        value = self.body.get(name)
        if value is None or value == []:
            return None
        return parse_filter(value, self.path(name))

    def label(self, default: str) -> str:
        value = self.get("label", default)
        if not isinstance(value, str) or len(value) > 200:
            raise BadQuery(self.path("label"), "a label is a string of at most 200 characters")
        return value


@dataclass(frozen=True)
class Step:
    """An event (None: any event) with its own filters: a series, a funnel step, a cohort."""

    event: str | None
    filters: Filter | None
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "filters": self.filters.to_json() if self.filters else None,
                "label": self.label}

    def dimensions(self) -> set[Dimension]:
        found = {Dimension("event_name")} if self.event is not None else set()
        return found | (self.filters.dimensions() if self.filters else set())


def _step(value: object, where: str, required: bool = True) -> Step:
    if isinstance(value, str) or value is None:
        value = {"event": value}
    f = _Fields(value, where, ("event", "filters", "label"))
    event = f.event("event", required)
    return Step(event, f.filters(), f.label(event or "any event"))


@dataclass(frozen=True)
class Common:
    """What every kind shares: timezone, range, global filters, source and project."""

    timezone: str
    tz: ZoneInfo
    range: TimeRange
    filters: Filter | None
    source: Source
    project_id: str
    now: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"timezone": self.timezone, "date_range": self.range.to_dict(),
                "filters": self.filters.to_json() if self.filters else None, "source": self.source}

    def dimensions(self) -> set[Dimension]:
        return self.filters.dimensions() if self.filters else set()


def _common(f: _Fields, defaults: Defaults, now: datetime) -> Common:
    name = f.get("timezone", defaults.timezone)
    try:
        tz = zone(name)
    except RangeError as exc:
        raise BadQuery("timezone", str(exc)) from None
    try:
        time_range = resolve(f.get("date_range", defaults.date_range), tz, now)
    except RangeError as exc:
        raise BadQuery("date_range", str(exc)) from None
    return Common(name, tz, time_range, f.filters(), f.choice("source", SOURCES, "auto"),  # type: ignore[arg-type]
                  defaults.project_id, now)


def _metrics(f: _Fields) -> tuple[Metric, ...]:
    value = f.get("metrics", ["events"])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not 1 <= len(value) <= 10:
        raise BadQuery(f.path("metrics"), "a list of 1 to 10 metrics")
    metrics = tuple(parse_metric(m, f"metrics[{i}]") for i, m in enumerate(value))
    if len(set(metrics)) != len(metrics):
        raise BadQuery("metrics", "a metric is listed twice")
    return metrics


def _events(f: _Fields) -> tuple[str, ...]:
    value = f.get("events", [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or len(value) > 100:
        raise BadQuery("events", "a list of at most 100 event names")
    for i, name in enumerate(value):
        if not isinstance(name, str) or not EVENT_NAME.match(name):
            raise BadQuery(f"events[{i}]", f"not an event name: {str(name)[:80]!r}")
    return tuple(dict.fromkeys(value))


def _duration(value: object, where: str, high_s: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and (match := DURATION.match(value)):
        seconds = int(match.group(1)) * DURATION_S[match.group(2)]
    else:
        raise BadQuery(where, f"a duration in seconds or such as '30min', '24h', '14d', got {str(value)[:40]!r}")
    if not 1 <= seconds <= high_s:
        raise BadQuery(where, f"must be from 1 second to {high_s // 86_400} days")
    return seconds


@dataclass(frozen=True)
class Timeseries:
    common: Common
    series: tuple[Step, ...]
    metrics: tuple[Metric, ...]
    interval: Interval
    kind: str = "timeseries"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "series": [s.to_dict() for s in self.series],
                "metrics": [m.name for m in self.metrics], "interval": self.interval,
                **self.common.to_dict()}


@dataclass(frozen=True)
class Breakdown:
    common: Common
    events: tuple[str, ...]
    metrics: tuple[Metric, ...]
    dimensions: tuple[Dimension, ...]
    limit: int
    order_by: Metric
    descending: bool
    interval: Interval | None
    kind: str = "breakdown"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "events": list(self.events), "metrics": [m.name for m in self.metrics],
                "dimensions": [d.name for d in self.dimensions], "limit": self.limit,
                "order_by": [self.order_by.name, "desc" if self.descending else "asc"],
                "interval": self.interval, **self.common.to_dict()}


@dataclass(frozen=True)
class Funnel:
    common: Common
    steps: tuple[Step, ...]
    window_s: int
    order: Literal["ordered", "strict"]
    breakdown: Dimension | None
    limit: int
    kind: str = "funnel"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": [s.to_dict() for s in self.steps],
                "window_s": self.window_s, "order": self.order,
                "breakdown": self.breakdown.name if self.breakdown else None, "limit": self.limit,
                **self.common.to_dict()}


@dataclass(frozen=True)
class Retention:
    common: Common
    start: Step
    returning: Step
    period: Literal["day", "week", "month"]
    periods: int
    cohort: Literal["first_time", "recurring"]
    kind: str = "retention"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start_event": self.start.to_dict(),
                "return_event": self.returning.to_dict(), "period": self.period,
                "periods": self.periods, "cohort": self.cohort, **self.common.to_dict()}


@dataclass(frozen=True)
class Uniques:
    common: Common
    events: tuple[str, ...]
    method: Literal["exact", "hll"]
    kind: str = "uniques"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "events": list(self.events), "method": self.method,
                **self.common.to_dict()}


Query = Timeseries | Breakdown | Funnel | Retention | Uniques
KINDS = ("timeseries", "breakdown", "funnel", "retention", "uniques")
_COMMON_FIELDS = ("kind", "timezone", "date_range", "filters", "source")


def parse(body: object, defaults: Defaults, now: datetime) -> Query:
    """The typed request *body* asks for, as of *now*; BadQuery names the first bad field."""
    if not isinstance(body, dict):
        raise BadQuery("", "the request body must be a JSON object with a \"kind\"")
    kind = body.get("kind")
    if kind not in KINDS:
        raise BadQuery("kind", f"must be one of {', '.join(KINDS)}, got {str(kind)[:40]!r}")
    if kind == "timeseries":
        f = _Fields(body, "", (*_COMMON_FIELDS, "series", "events", "metrics", "interval"))
        series_value = f.get("series")
        if series_value is None:
            events = _events(f)
            if len(events) > MAX_SERIES:
                raise BadQuery("events", f"at most {MAX_SERIES} events, one series each")
            series_value = list(events) or [None]
        elif f.get("events"):
            raise BadQuery("events", "give either series or events, not both")
        if not isinstance(series_value, list) or not 1 <= len(series_value) <= MAX_SERIES:
            raise BadQuery("series", f"a list of 1 to {MAX_SERIES} series")
        series = tuple(_step(s, f"series[{i}]", required=False) for i, s in enumerate(series_value))
        return Timeseries(_common(f, defaults, now), series, _metrics(f),
                          f.choice("interval", INTERVALS, "day"))  # type: ignore[arg-type]
    if kind == "breakdown":
        f = _Fields(body, "", (*_COMMON_FIELDS, "events", "metrics", "dimensions", "limit",
                               "order_by", "interval"))
        metrics = _metrics(f)
        dims_value = f.get("dimensions")
        if isinstance(dims_value, str):
            dims_value = [dims_value]
        if not isinstance(dims_value, list) or not 1 <= len(dims_value) <= MAX_DIMENSIONS:
            raise BadQuery("dimensions", f"a list of 1 to {MAX_DIMENSIONS} dimensions")
        dims = tuple(parse_dimension(d, f"dimensions[{i}]") for i, d in enumerate(dims_value))
        if len(set(dims)) != len(dims):
            raise BadQuery("dimensions", "a dimension is listed twice")
        order = f.get("order_by", [metrics[0].name, "desc"])
        if isinstance(order, str):
            order = [order, "desc"]
        if not isinstance(order, list) or len(order) != 2 or order[1] not in ("asc", "desc"):
            raise BadQuery("order_by", "[metric, \"asc\"|\"desc\"]")
        order_metric = parse_metric(order[0], "order_by[0]")
        if order_metric not in metrics:
            raise BadQuery("order_by[0]", "order by one of the requested metrics")
        interval = f.get("interval")
        if interval is not None and interval not in INTERVALS:
            raise BadQuery("interval", f"must be one of {', '.join(INTERVALS)} or null")
        return Breakdown(_common(f, defaults, now), _events(f), metrics, dims,
                         f.integer("limit", 100, 1, MAX_ROWS), order_metric, order[1] == "desc",
                         interval)
    if kind == "funnel":
        f = _Fields(body, "", (*_COMMON_FIELDS, "steps", "window", "window_s", "order", "breakdown",
                               "limit"))
        if f.get("window") is not None and f.get("window_s") is not None:
            raise BadQuery("window", "give either window or window_s, not both")
        steps_value = f.get("steps")
        if not isinstance(steps_value, list) or not 2 <= len(steps_value) <= MAX_STEPS:
            raise BadQuery("steps", f"a funnel has 2 to {MAX_STEPS} steps")
        steps = tuple(_step(s, f"steps[{i}]") for i, s in enumerate(steps_value))
        breakdown = f.get("breakdown")
        return Funnel(_common(f, defaults, now), steps,
                      _duration(f.get("window", f.get("window_s", "14d")),
                                "window" if f.get("window_s") is None else "window_s",
                                MAX_FUNNEL_WINDOW_S),
                      f.choice("order", ("ordered", "strict"), "ordered"),  # type: ignore[arg-type]
                      parse_dimension(breakdown, "breakdown") if breakdown is not None else None,
                      f.integer("limit", 25, 1, MAX_ROWS // MAX_STEPS))
    if kind == "retention":
        f = _Fields(body, "", (*_COMMON_FIELDS, "start_event", "return_event", "period", "periods",
                               "cohort"))
        if f.get("start_event") is None:
            raise BadQuery("start_event", "the event that puts a user in a cohort is required")
        return Retention(_common(f, defaults, now), _step(f.get("start_event"), "start_event"),
                         _step(f.get("return_event"), "return_event", required=False),
                         f.choice("period", ("day", "week", "month"), "day"),  # type: ignore[arg-type]
                         f.integer("periods", 8, 1, MAX_RETENTION_PERIODS),
                         f.choice("cohort", ("first_time", "recurring"), "first_time"))  # type: ignore[arg-type]
    f = _Fields(body, "", (*_COMMON_FIELDS, "events", "method"))
    return Uniques(_common(f, defaults, now), _events(f),
                   f.choice("method", ("exact", "hll"), "exact"))  # type: ignore[arg-type]
