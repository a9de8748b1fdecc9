""""Online now": live figures of one project from the rollups the worker upserts every second.

- active users over the last 1, 5 and 15 minutes: the union of the per-minute HLL sketches of
  the live rollup (the project's partials of every partition and event name) whose windows
  overlap the period;
- events in the current minute, and the top events over the last 5 minutes, from its counts.

Minute windows are aligned to the clock, so "the last minute" is the current minute window and
the one before it (up to two minutes of events); windows after the current minute (clients
with clocks ahead) are not "now". The SQL views `live_now_by_project` and
`top_events_now_by_project` use the very same windows over the raw events, so both give the
same figures for a project (uniques within HLL error); `live_now` and `top_events_now` are
every project together. Freshness is the worker's flush interval plus the insert: about 1-2 s
behind the collector.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client

from core.exceptions import ConfigurationError
from tables import hll
from tables.rollup_tables import table_name
from tables.rollups import RollupSpec

PERIODS_MIN = (1, 5, 15)


def live_rollup(specs: list[RollupSpec]) -> RollupSpec:
    """The per-minute rollup with uniques that feeds the live figures."""
    for spec in specs:
        if spec.granularity == "minute" and spec.uniques:
            return spec
    raise ConfigurationError("live figures need a per-minute rollup with uniques enabled")


@dataclass(frozen=True)
class Live:
    active_users: dict[str, float]
    events_this_minute: int
    top_events: list[dict[str, Any]]
    as_of: str


def live(client: Client, spec: RollupSpec, project_id: str) -> Live:
    """The live figures of *project_id* (events of other projects are not seen)."""
    table = table_name(spec)
    rows = client.query(
        "SELECT dateDiff('minute', window_start, toStartOfMinute(now())) AS age, `event_name`,"
        f" sum(count), groupArray(base64Encode(sketch)) FROM `{table}` FINAL"
        " WHERE project_id = {project:String}"
        " AND window_start >= toStartOfMinute(now()) - INTERVAL {n:UInt32} MINUTE"
        " AND window_start <= toStartOfMinute(now())"
        " GROUP BY age, `event_name`",
        parameters={"n": max(PERIODS_MIN), "project": project_id},
    ).result_rows
    as_of = client.query("SELECT toString(now64(3))").result_rows[0][0]
    active: dict[str, float] = {}
    for minutes in PERIODS_MIN:
        sketches = [base64.b64decode(s) for age, _, _, arr in rows if age <= minutes for s in arr if s]
        active[f"{minutes}m"] = round(hll.merge(sketches, spec.lg_k)) if sketches else 0
    this_minute = sum(int(c) for age, _, c, _ in rows if age == 0)
    totals: dict[str, int] = {}
    for age, name, count, _ in rows:
        if age <= 5:
            totals[name] = totals.get(name, 0) + int(count)
    top = [{"event_name": n, "count": c} for n, c in sorted(totals.items(), key=lambda x: (-x[1], x[0]))[:10]]
    return Live(active, this_minute, top, str(as_of))
