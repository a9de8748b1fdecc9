"""Where a time series or breakdown is read: a rollup that covers it exactly, or the events table.

A rollup covers a request when
- every dimension it groups or filters by (the series' event names too) is one of the rollup's
  dimensions: ``event_name``, a hot column or a property it keeps;
- every metric is ``events`` or a ``sum:`` it keeps (``users`` and ``avg:`` need the events:
  a sketch is approximate, and a rollup does not count the values behind a sum);
- the range's ends and every bucket boundary fall on its windows (an hour rollup cannot serve
  days in a timezone half an hour off UTC).
Rollups are exact (see tables/aggregate.py), so a covered request gets the same numbers from
the rollup as from the events table, only faster. Among the rollups that cover a request the
planner takes the coarsest, then the one with the fewest dimensions.

Both sources read the request's project only: the events by their ``project_id``, a rollup by
its partials' ``project_id`` (every rollup is kept per project, see tables/aggregate.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from app.query.errors import BadQuery
from app.query.request import Common
from app.query.sql import Dimension, Metric, Params, raw_aggregates, rollup_aggregates
from app.query.timerange import epoch_s
from tables.rollup_tables import sum_column, table_name
from tables.rollups import RollupSpec


@dataclass
class Source:
    """SQL pieces of one table: how to read a dimension, a metric, the time and the range."""

    name: str  # "events" or "rollup:<name>"
    table: str
    time_column: str
    column: Callable[[Dimension], str]
    aggregates: Callable[[Metric], list[str]]
    where: list[str]


def events_source(common: Common, params: Params, users: str = "uniqExact(user_id)",
                  final: bool = True) -> Source:
    """The events table, each event once (FINAL). *final* False skips that pass where copies
    cannot change the answer: a set of distinct users is the same with a copy of a row in it
    (retention, uniques), and FINAL costs those 40-60% of their CPU at 10M events
    (bench/query.py)."""
    where = [
        f"project_id = {params.bind(common.project_id, 'String')}",
        f"ts >= fromUnixTimestamp64Milli({params.bind(int(common.range.start.timestamp() * 1000), 'Int64')}, 'UTC')",
        f"ts < fromUnixTimestamp64Milli({params.bind(int(common.range.end.timestamp() * 1000), 'Int64')}, 'UTC')",
    ]
    return Source("events", "events FINAL" if final else "events", "ts", lambda d: d.raw(params),
                  lambda m: raw_aggregates(m, params, users), where)


def rollup_source(spec: RollupSpec, common: Common, params: Params) -> Source:
    columns = spec.dimensions

    def column(d: Dimension) -> str:
        name = d.rollup_column(columns)
        assert name is not None, f"{d.name} is not a dimension of rollup {spec.name}"
        return f"`{name}`"

    where = [
        f"project_id = {params.bind(common.project_id, 'String')}",
        f"window_start >= toDateTime({params.bind(epoch_s(common.range.start), 'Int64')}, 'UTC')",
        f"window_start < toDateTime({params.bind(epoch_s(common.range.end), 'Int64')}, 'UTC')",
    ]
    return Source(f"rollup:{spec.name}", f"`{table_name(spec)}` FINAL", "window_start", column,
                  lambda m: rollup_aggregates(m, sum_column(m.key) if m.kind == "sum" else None),
                  where)


def _why_not(spec: RollupSpec, dims: set[Dimension], metrics: Iterable[Metric],
             boundaries: Iterable[datetime]) -> str | None:
    missing = sorted(d.name for d in dims if d.rollup_column(spec.dimensions) is None)
    if missing:
        return f"it does not keep {', '.join(missing)}"
    for metric in metrics:
        if metric.kind == "users":
            return "users are counted exactly from the events (use kind uniques, method hll, for sketches)"
        if metric.kind == "avg":
            return "an average needs the count of values, which rollups do not keep"
        if metric.kind == "sum" and metric.key not in spec.sums:
            return f"it does not sum {metric.key}"
    step = spec.granularity_ms // 1000
    if any(epoch_s(b) % step for b in boundaries):
        return f"the range or buckets do not fall on its {spec.granularity} windows"
    return None


def choose(specs: Iterable[RollupSpec], common: Common, dims: set[Dimension],
           metrics: tuple[Metric, ...], boundaries: list[datetime]) -> tuple[RollupSpec | None, str]:
    """(rollup, "") for the one to read, or (None, why no rollup serves): honours
    ``source`` (``events`` never reads a rollup, ``rollup`` refuses when none covers)."""
    if common.source == "events":
        return None, "source events was asked for"
    reasons = []
    ordered = sorted(specs, key=lambda s: (-s.granularity_ms, len(s.dimensions), s.name))
    for spec in ordered:
        why = _why_not(spec, dims, metrics, [common.range.start, common.range.end, *boundaries])
        if why is None:
            return spec, ""
        reasons.append(f"{spec.name}: {why}")
    reason = "; ".join(reasons) or "no rollups are configured"
    if common.source == "rollup":
        raise BadQuery("source", f"no rollup covers this query ({reason})")
    return None, reason
