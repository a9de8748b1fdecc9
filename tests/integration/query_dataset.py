"""A seeded event dataset and a pure-Python oracle for the query API (docs/query.md).

The dataset is what `tests/integration/test_query_oracle.py` ingests through the real pipeline;
the oracle computes, from the same list of events and from docs/query.md alone, what every
query kind must answer. Nothing here reads app/query: the oracle is an independent second
implementation of the documented semantics, written for clarity, not speed.

Dataset (deterministic for a seed and a day):
- ~400 users, each with a home country (some without one: ``$none``), a device type and a
  browser; a few events lose their country, so ``$none`` appears inside a user's history too.
- Sessions over ten UTC days (``day0`` .. ``day0 + 9``), at any hour, so many events fall
  before midnight UTC and after midnight in Europe/Berlin.
- A signup funnel ``signup -> email_verified -> first_purchase`` with drop-offs and delays from
  a fraction of a second to past the conversion window, users who sign up twice or verify
  twice, verifications that come before any signup, and signups the day before the ranges the
  tests query.
- Purchases carrying ``price`` as decimal strings (and a few "n/a", which sums must skip), a
  ``plan`` property on some events and a ``page`` property on page views.
Every event has an explicit uuid ``event_id`` and an epoch-ms ``timestamp``; no user has two
events in the same millisecond (the documented tie rules are not what this checks).
"""

from __future__ import annotations

import random
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction
from functools import cached_property
from typing import Any
from zoneinfo import ZoneInfo

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
NONE = "$none"
OTHER = "$other"

COUNTRIES: list[tuple[str | None, int]] = [
    ("US", 28), ("DE", 16), ("FR", 9), ("GB", 9), ("BR", 7), ("IN", 7), ("JP", 5), ("ES", 4),
    ("NL", 3), ("SE", 2), (None, 10),
]
DEVICES = [("mobile", 45), ("desktop", 45), ("tablet", 10)]
BROWSERS = [("Chrome", 55), ("Safari", 30), ("Firefox", 15)]
PAGES = ["/", "/pricing", "/docs", "/docs/pricing-faq", "/blog", "/features", "/about"]
BUTTONS = ["cta", "play", "download", "share"]
PLANS = [("free", 60), ("pro", 30), ("team", 10)]
PRICES = ["0.99", "4.99", "9.99", "19.99", "29", "49.50", "99.95", "120", "7.25", "15.10"]
NOT_A_PRICE = "n/a"


def _pick(rng: random.Random, weighted: Sequence[tuple[Any, int]]) -> Any:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@dataclass(frozen=True)
class Event:
    """One event as the oracle sees it (properties absent when not set)."""

    event_id: str
    name: str
    user_id: str
    ts_ms: int
    properties: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The collector's JSON form (POST /v1/batch)."""
        return {"event_id": self.event_id, "event": self.name, "user_id": self.user_id,
                "timestamp": self.ts_ms, "properties": dict(self.properties)}


@dataclass(frozen=True)
class Dataset:
    day0: date  # the first UTC day with sessions
    events: list[Event]
    clock_change: date  # a Berlin day of 23 or 25 hours, with events the day before and after

    def day(self, n: int) -> date:
        return self.day0 + timedelta(days=n)


def _ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


class _Builder:
    def __init__(self, seed: int, day0: date, last_ms: int) -> None:
        self.rng = random.Random(seed)
        self.day0_ms = _ms(day0)
        self.last_ms = last_ms  # nothing at or after this instant
        self.events: list[Event] = []
        self.taken: dict[str, set[int]] = defaultdict(set)

    def add(self, name: str, user: str, ts_ms: int, props: dict[str, str | None]) -> int | None:
        """Adds the event at *ts_ms*, moved a millisecond on while the user already has one there;
        returns its time, or None when it would fall at or past the end of the dataset."""
        while ts_ms in self.taken[user]:
            ts_ms += 1
        if ts_ms >= self.last_ms:
            return None
        self.taken[user].add(ts_ms)
        event_id = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        clean = {k: v for k, v in props.items() if v is not None}
        self.events.append(Event(event_id, name, user, ts_ms, clean))
        return ts_ms


def generate(today: date, seed: int = 20_260_415, users: int = 400) -> Dataset:
    """The dataset: sessions from ``today - 12`` to ``today - 3`` (UTC days), signups from
    ``today - 13``; nothing at or after ``today - 2`` 00:00 UTC."""
    day0 = today - timedelta(days=12)
    b = _Builder(seed, day0, _ms(day0 + timedelta(days=10)))
    rng = b.rng
    homes: dict[str, dict[str, str | None]] = {}
    for i in range(users):
        user = f"user-{i:04d}"
        country: str | None = _pick(rng, COUNTRIES)
        device: str = _pick(rng, DEVICES)
        browser: str = _pick(rng, BROWSERS)
        plan: str | None = _pick(rng, PLANS) if rng.random() < 0.5 else None
        homes[user] = {"country": country, "device_type": device, "browser": browser}

        def props(extra: dict[str, str | None] | None = None, *, country_: str | None = country,
                  device_: str = device, browser_: str = browser) -> dict[str, str | None]:
            # A few events lose their country (an app that could not geolocate once).
            c = None if rng.random() < 0.05 else country_
            return {"country": c, "device_type": device_, "browser": browser_, **(extra or {})}

        # Sessions: session_start, page views (some with the plan), clicks, sometimes purchases.
        for _ in range(rng.randint(1, 6)):
            ts = b.day0_ms + rng.randrange(10 * DAY_MS)
            if b.add("session_start", user, ts, props()) is None:
                continue
            for _ in range(rng.randint(1, 7)):
                ts += rng.randint(1_000, 600_000)
                extra: dict[str, str | None] = {"page": rng.choice(PAGES)}
                if plan is not None and rng.random() < 0.5:
                    extra["plan"] = plan
                b.add("page_view", user, ts, props(extra))
                if rng.random() < 0.35:
                    ts += rng.randint(200, 30_000)
                    b.add("button_click", user, ts, props({"button": rng.choice(BUTTONS)}))
            if rng.random() < 0.3:
                ts += rng.randint(5_000, 900_000)
                price = NOT_A_PRICE if rng.random() < 0.04 else rng.choice(PRICES)
                b.add("purchase", user, ts, props({"price": price, "plan": plan}))

        # The signup funnel.
        if rng.random() < 0.12:  # verified an address without signing up in this data
            b.add("email_verified", user, b.day0_ms + rng.randrange(10 * DAY_MS), props())
        if rng.random() < 0.3:
            continue
        signups = 2 if rng.random() < 0.12 else 1
        for _ in range(signups):
            # From the day before day0 (outside every range the tests ask for) on.
            t1 = b.day0_ms - DAY_MS + rng.randrange(10 * DAY_MS)
            t1_added = b.add("signup", user, t1, props({"plan": plan}))
            if t1_added is None or rng.random() < 0.25:
                continue
            t2 = t1_added + _delay(rng)
            t2_added = b.add("email_verified", user, t2, props())
            if t2_added is None:
                continue
            if rng.random() < 0.15:  # clicked the link twice: breaks a strict funnel there
                b.add("email_verified", user, t2_added + rng.randint(5_000, 7_200_000), props())
            if rng.random() < 0.4:
                continue
            t3 = t2_added + _delay(rng)
            price = rng.choice(PRICES)
            b.add("first_purchase", user, t3, props({"price": price, "plan": plan or "pro"}))

    # Around Berlin's last clock change at least 35 days back (so past the discovery
    # endpoints' 30 days): sessions of some users, whose first session is then long before
    # any retention range.
    change = last_clock_change(today - timedelta(days=35), BERLIN)
    span_start = int(local_midnight(change - timedelta(days=1), BERLIN).timestamp() * 1000)
    span_end = int(local_midnight(change + timedelta(days=2), BERLIN).timestamp() * 1000)
    for user in rng.sample(sorted(homes), 120):
        for _ in range(rng.randint(2, 8)):
            name = rng.choice(["session_start", "page_view", "page_view", "button_click"])
            b.add(name, user, rng.randrange(span_start, span_end), dict(homes[user]))
    b.events.sort(key=lambda e: (e.ts_ms, e.user_id))
    return Dataset(day0, b.events, change)


BERLIN = ZoneInfo("Europe/Berlin")


def last_clock_change(on_or_before: date, tz: ZoneInfo) -> date:
    """The last local day, on or before the given one, whose length is not 24 hours."""
    day = on_or_before
    while local_midnight(day + timedelta(days=1), tz).utcoffset() == local_midnight(day, tz).utcoffset():
        day -= timedelta(days=1)
    return day


FUNNEL_WINDOW_S = 7 * 86_400


def _delay(rng: random.Random) -> int:
    """Milliseconds between two funnel steps: from a fraction of a second to past the 7-day
    window the tests use, never within a second of the window's edge (the documented "within"
    is not what this checks)."""
    kind = rng.random()
    if kind < 0.05:
        return rng.randint(50, 900)  # sub-second: the next step in the same second
    if kind < 0.55:
        return rng.randint(2, 3_600) * 1000 + rng.randint(0, 999)
    if kind < 0.85:
        return rng.randint(1, 5) * DAY_MS + rng.randint(0, DAY_MS - 1)
    # Near or past the window.
    return (FUNNEL_WINDOW_S + rng.choice([-1, 1]) * rng.randint(2, 3 * 86_400)) * 1000


# --- the oracle ----------------------------------------------------------------------------

Filter = list[Any]
NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
MAX_SUMMED_ABS = Decimal(10) ** 12
MICROS = 1_000_000


def value(event: Event, dimension: str) -> str:
    """The event's value of a dimension; "" when absent (shown as ``$none``)."""
    if dimension == "event_name":
        return event.name
    return event.properties.get(dimension.removeprefix("prop:"), "")


def shown(raw: str) -> str:
    return raw if raw else NONE


def _number(text: str) -> float | None:
    """A property parsed as a number for gt/gte/lt/lte (not a number: None)."""
    return float(text) if NUMBER.match(text) else None


def matches(tree: Filter | None, event: Event) -> bool:
    """Whether *event* passes the filter tree, per the table in docs/query.md."""
    if tree is None:
        return True
    op = tree[0]
    if op == "and":
        return all(matches(child, event) for child in tree[1])
    if op == "or":
        return any(matches(child, event) for child in tree[1])
    if op == "not":
        return not matches(tree[1], event)
    v = value(event, tree[1])
    if op in ("is_set", "is_not_set"):
        return (v != "") == (op == "is_set")
    values = tree[2] if isinstance(tree[2], list) else [tree[2]]
    if op in ("is", "is_not"):
        wanted = {"" if x == NONE else str(x) for x in values}
        return (v in wanted) == (op == "is")
    if op in ("contains", "not_contains"):
        return any(str(x) in v for x in values) == (op == "contains")
    if op == "regex":
        return any(re.search(str(x), v) for x in values)
    number = _number(v)
    if number is None:
        return False
    bound = float(values[0])
    return {"gt": number > bound, "gte": number >= bound, "lt": number < bound,
            "lte": number <= bound}[op]


def micros(text: str) -> int | None:
    """A price's exact micro-units by the documented rule, or None when it is skipped."""
    if not NUMBER.match(text):
        return None
    number = Decimal(text)
    if abs(number) > MAX_SUMMED_ABS:
        return None
    return int((number * MICROS).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def metric(name: str, events: Sequence[Event]) -> int | float | Fraction | None:
    """``events``, ``users``, ``sum:<key>`` (a float of the exact sum) or ``avg:<key>`` (an exact
    Fraction: the test compares it with the float it gets to 1e-12)."""
    if name == "events":
        return len(events)
    if name == "users":
        return len({e.user_id for e in events})
    kind, key = name.split(":", 1)
    counted = [m for e in events if (m := micros(e.properties.get(key, ""))) is not None]
    if kind == "sum":
        return sum(counted) / MICROS
    return Fraction(sum(counted), MICROS * len(counted)) if counted else None


@dataclass(frozen=True)
class Range:
    """[start, end) of an absolute range of dates, whole local days in *tz*."""

    tz: ZoneInfo
    first: date
    last: date

    @property
    def start(self) -> datetime:
        return local_midnight(self.first, self.tz)

    @property
    def end(self) -> datetime:
        return local_midnight(self.last + timedelta(days=1), self.tz)

    @cached_property
    def _bounds_ms(self) -> tuple[int, int]:
        return int(self.start.timestamp() * 1000), int(self.end.timestamp() * 1000)

    def holds(self, ts_ms: int) -> bool:
        start, end = self._bounds_ms
        return start <= ts_ms < end

    def days(self) -> list[date]:
        return [self.first + timedelta(days=n) for n in range((self.last - self.first).days + 1)]

    def json(self) -> list[str]:
        return [self.first.isoformat(), self.last.isoformat()]


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def local_day(ts_ms: int, tz: ZoneInfo) -> date:
    return datetime.fromtimestamp(ts_ms / 1000, tz=tz).date()


def selected(events: Iterable[Event], rng: Range, names: Sequence[str] = (),
             filters: Filter | None = None) -> list[Event]:
    return [e for e in events if rng.holds(e.ts_ms) and (not names or e.name in names)
            and matches(filters, e)]


def bucket_day(day: date, interval: str) -> date:
    """The first local day of the bucket holding *day*: itself, or its week's Monday."""
    return day - timedelta(days=day.weekday()) if interval == "week" else day


def timeseries(events: Sequence[Event], rng: Range,
               series: Sequence[tuple[str | None, Filter | None, str]], metrics: Sequence[str],
               interval: str = "day", filters: Filter | None = None) -> list[dict[str, Any]]:
    """Rows ``{bucket, series, <metric>...}`` for every hour, day or week (from Monday) bucket
    that overlaps the range, and every series; a bucket counts only the events inside the
    range. A bucket is its local start with that instant's offset."""
    # Buckets are keyed by their start's epoch ms: aware datetimes of one zone compare by wall
    # time, so the two 02:00 hours of a night that falls back would be one key.
    def bucket(ts_ms: int) -> int:
        if interval == "hour":  # Berlin's offsets are whole hours: local hours are UTC hours
            return ts_ms // HOUR_MS * HOUR_MS
        start = local_midnight(bucket_day(local_day(ts_ms, rng.tz), interval), rng.tz)
        return int(start.timestamp() * 1000)

    if interval == "hour":
        start_ms, end_ms = (int(t.timestamp() * 1000) for t in (rng.start, rng.end))
        starts = list(range(start_ms, end_ms, HOUR_MS))
    else:
        starts = sorted({int(local_midnight(bucket_day(day, interval), rng.tz).timestamp() * 1000)
                         for day in rng.days()})
    rows = []
    for event_name, series_filters, label in series:
        kept = [e for e in selected(events, rng, filters=filters)
                if (event_name is None or e.name == event_name) and matches(series_filters, e)]
        by_bucket: dict[int, list[Event]] = defaultdict(list)
        for e in kept:
            by_bucket[bucket(e.ts_ms)].append(e)
        for start in starts:
            label_time = datetime.fromtimestamp(start / 1000, tz=rng.tz)
            rows.append({"bucket": label_time.isoformat(), "series": label,
                         **{m: metric(m, by_bucket[start]) for m in metrics}})
    return rows


def breakdown_by_day(events: Sequence[Event], rng: Range, dimensions: Sequence[str],
                     metric_name: str, limit: int) -> list[dict[str, Any]]:
    """A breakdown with a day interval: groups ranked over the whole range (as `breakdown`),
    then one row per group (the top *limit* and ``$other``) and local day."""
    top = [tuple(row[d] for d in dimensions)
           for row in breakdown(events, rng, dimensions, [metric_name], limit).rows[:-1]]
    by_cell: dict[tuple[date, tuple[str, ...]], list[Event]] = defaultdict(list)
    for e in selected(events, rng):
        group = tuple(shown(value(e, d)) for d in dimensions)
        by_cell[local_day(e.ts_ms, rng.tz), group if group in top else (OTHER,) * len(dimensions)
                ].append(e)
    return [{"bucket": local_midnight(day, rng.tz).isoformat(),
             **dict(zip(dimensions, group, strict=True)),
             metric_name: metric(metric_name, by_cell[day, group])}
            for group in [*top, (OTHER,) * len(dimensions)] for day in rng.days()]


@dataclass(frozen=True)
class BreakdownAnswer:
    rows: list[dict[str, Any]]
    total_groups: int
    truncated: bool


def breakdown(events: Sequence[Event], rng: Range, dimensions: Sequence[str],
              metrics: Sequence[str], limit: int, names: Sequence[str] = (),
              filters: Filter | None = None,
              order_by: tuple[str, str] | None = None) -> BreakdownAnswer:
    """Groups ranked by *order_by* (default: the first metric descending; ties by their values
    ascending, no value last), the first *limit* as rows, then the ``$other`` row of everything
    past them."""
    by_metric, direction = order_by or (metrics[0], "desc")
    sign = -1 if direction == "desc" else 1
    groups: dict[tuple[str, ...], list[Event]] = defaultdict(list)
    for e in selected(events, rng, names, filters):
        groups[tuple(shown(value(e, d)) for d in dimensions)].append(e)

    def rank(item: tuple[tuple[str, ...], list[Event]]) -> tuple[Any, ...]:
        figure = metric(by_metric, item[1])
        return (figure is None, sign * (figure or 0), item[0])

    ranked = sorted(groups.items(), key=rank)
    rows = [{**dict(zip(dimensions, key, strict=True)), **{m: metric(m, es) for m in metrics}}
            for key, es in ranked[:limit]]
    rest = [e for _, es in ranked[limit:] for e in es]
    rows.append({**{d: OTHER for d in dimensions}, **{m: metric(m, rest) for m in metrics}})
    return BreakdownAnswer(rows, len(groups), len(groups) > limit)


def uniques(events: Sequence[Event], rng: Range, names: Sequence[str] = (),
            filters: Filter | None = None) -> int:
    return len({e.user_id for e in selected(events, rng, names, filters)})


# --- funnels -------------------------------------------------------------------------------

Step = tuple[str, Filter | None]  # (event name, step filters)


def _by_user(events: Iterable[Event]) -> dict[str, list[Event]]:
    users: dict[str, list[Event]] = defaultdict(list)
    for e in sorted(events, key=lambda e: e.ts_ms):
        users[e.user_id].append(e)
    return users


def _is_step(event: Event, step: Step) -> bool:
    return event.name == step[0] and matches(step[1], event)


def _attempt(history: list[Event], start: int, steps: Sequence[Step], window_ms: int,
             strict: bool) -> list[Event]:
    """The events of the attempt starting at history[start]: each step the first matching
    event after the one before, within the window of the first; in a strict funnel the very
    next event of the user must be the next step."""
    reached = [history[start]]
    for e in history[start + 1:]:
        if len(reached) == len(steps) or e.ts_ms - reached[0].ts_ms > window_ms:
            break
        if _is_step(e, steps[len(reached)]):
            reached.append(e)
        elif strict:
            break
    return reached


def _user_attempt(history: list[Event], rng: Range, steps: Sequence[Step], window_ms: int,
                  strict: bool) -> list[Event] | None:
    """The user's attempt: of those reaching their deepest step, the one that started latest."""
    best: list[Event] | None = None
    for i, e in enumerate(history):
        if rng.holds(e.ts_ms) and _is_step(e, steps[0]):
            attempt = _attempt(history, i, steps, window_ms, strict)
            if best is None or len(attempt) >= len(best):
                best = attempt  # later starts win ties
    return best


def _lower_median(values: list[float]) -> float | None:
    return sorted(values)[(len(values) - 1) // 2] if values else None


def _ratio(a: int, b: int) -> Fraction | None:
    return Fraction(a, b) if b else None


def _funnel_rows(attempts: list[list[Event]], steps: Sequence[Step], labels: Sequence[str],
                 extra: dict[str, str]) -> list[dict[str, Any]]:
    rows = []
    reached = [sum(1 for a in attempts if len(a) > k) for k in range(len(steps))]
    for k, step in enumerate(steps):
        times = [(a[k].ts_ms - a[k - 1].ts_ms) / 1000 for a in attempts if len(a) > k] if k else []
        rows.append({
            **extra,
            "step": k + 1,
            "label": labels[k],
            "event": step[0],
            "users": reached[k],
            "conversion_from_start": _ratio(reached[k], reached[0]),
            "conversion_from_previous": _ratio(reached[k], reached[k - 1]) if k else _ratio(
                reached[0], reached[0]),
            "drop_off": reached[k - 1] - reached[k] if k else 0,
            "median_time_to_convert_s": _lower_median(times) if k else None,
        })
    return rows


def _attempts(events: Sequence[Event], rng: Range, steps: Sequence[Step], window_s: int,
              strict: bool, filters: Filter | None) -> list[list[Event]]:
    """Each user's attempt (users with a step-1 event in the range)."""
    kept = [e for e in events if matches(filters, e)]
    attempts = []
    for history in _by_user(kept).values():
        attempt = _user_attempt(history, rng, steps, window_s * 1000, strict)
        if attempt is not None:
            attempts.append(attempt)
    return attempts


def funnel(events: Sequence[Event], rng: Range, steps: Sequence[Step], labels: Sequence[str],
           window_s: int, strict: bool = False, filters: Filter | None = None,
           breakdown_by: str | None = None, limit: int = 25) -> list[dict[str, Any]]:
    """Rows per step (and per breakdown group, ranked by step-1 users, ties by value, then
    ``$other``, always present); a group's value is the row's ``breakdown``."""
    attempts = _attempts(events, rng, steps, window_s, strict, filters)
    if breakdown_by is None:
        return _funnel_rows(attempts, steps, labels, {})
    ranked = _funnel_groups(attempts, breakdown_by)
    rows = []
    for group, members in ranked[:limit]:
        rows += _funnel_rows(members, steps, labels, {"breakdown": group})
    rest = [a for _, members in ranked[limit:] for a in members]
    rows += _funnel_rows(rest, steps, labels, {"breakdown": OTHER})
    return rows


def _funnel_groups(attempts: list[list[Event]],
                   breakdown_by: str) -> list[tuple[str, list[list[Event]]]]:
    """Attempts by their step-1 event's value, ranked by users (ties by value)."""
    groups: dict[str, list[list[Event]]] = defaultdict(list)
    for a in attempts:
        groups[shown(value(a[0], breakdown_by))].append(a)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def funnel_group_count(events: Sequence[Event], rng: Range, steps: Sequence[Step],
                       window_s: int, breakdown_by: str) -> int:
    """How many breakdown groups an (ordered, unfiltered) funnel has: ``meta.total_groups``."""
    return len(_funnel_groups(_attempts(events, rng, steps, window_s, False, None), breakdown_by))


# --- retention -----------------------------------------------------------------------------


def retention_by_day(events: Sequence[Event], rng: Range, start: Step,
                     returning: tuple[str | None, Filter | None], periods: int, now: datetime,
                     filters: Filter | None = None) -> list[dict[str, Any]]:
    """First-time day cohorts: a user's cohort is the local day of their first start event
    ever; period k counts cohort users with a return event on the k-th day after it. Periods
    starting after *now* are null."""
    kept = [e for e in events if matches(filters, e)]
    first_day: dict[str, date] = {}
    active: dict[str, set[date]] = defaultdict(set)
    for e in sorted(kept, key=lambda e: e.ts_ms):
        if _is_step(e, start) and e.user_id not in first_day:
            first_day[e.user_id] = local_day(e.ts_ms, rng.tz)
        if (returning[0] is None or e.name == returning[0]) and matches(returning[1], e):
            active[e.user_id].add(local_day(e.ts_ms, rng.tz))
    rows = []
    for day in rng.days():
        cohort = [u for u, d in first_day.items() if d == day]
        for k in range(periods):
            period_day = day + timedelta(days=k)
            if local_midnight(period_day, rng.tz) > now:
                users: int | None = None
            elif k == 0:
                users = len(cohort)
            else:
                users = sum(1 for u in cohort if period_day in active[u])
            rows.append({
                "cohort": local_midnight(day, rng.tz).isoformat(),
                "period": k,
                "cohort_size": len(cohort),
                "users": users,
                "rate": _ratio(users, len(cohort)) if users is not None else None,
            })
    return rows


def sorted_rows(rows: Iterable[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: tuple(str(r[k]) for k in keys))

