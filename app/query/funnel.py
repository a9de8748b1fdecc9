"""Funnels: how many users go through steps in order, within a conversion window, how fast.

docs/query.md states the rule; this is how ClickHouse computes it, per user, in one pass over
their events sorted by (time, first step matched), with `arrayFold`:

- The state holds, for each step k, one attempt that has reached step k: the chain
  ``[index of its step-1 event, t1, ..., tk]``. Of all attempts at step k it keeps the one
  that started latest: a later start leaves the most of the window for the steps to come, so
  it reaches every step an earlier one could. An event matching step k extends the attempt at
  step k-1 when it is within the window of its start and that attempt started later than the
  one already at step k. Every step is computed from the state before the event, so one event
  never serves two steps of the same attempt. The attempt at the deepest step is the user's;
  its times give the time to convert from step to step.
- In a strict funnel an event that extends no attempt ends them all (other events must not come
  between steps); the deepest attempt seen so far is kept aside, as ``best``.

`windowFunnel` counts the same users per step (checked in the tests) but cannot say when each
step happened, so it cannot give times to convert. This costs more than `windowFunnel` (see
bench/query.py), and it is one definition for counts and times, so they always agree.
"""

from __future__ import annotations

from typing import Any

from app.query.execute import Reader
from app.query.insights import Answer
from app.query.request import Funnel
from app.query.sources import events_source
from app.query.sql import NONE, OTHER, Params


def _conditions(q: Funnel, column: Any, params: Params) -> list[str]:
    out = []
    for step in q.steps:
        parts = [f"`event_name` = {params.bind(step.event, 'String')}"]
        if step.filters is not None:
            parts.append(f"({step.filters.sql(column, params)})")
        out.append(" AND ".join(parts))
    return out


def _per_user_sql(q: Funnel, params: Params) -> str:
    """One row per user who started the funnel: (group, level, step times)."""
    common = q.common
    src = events_source(common, params)
    # Steps after the range end count while within the window of a start inside the range.
    window_ms = q.window_s * 1000
    end_ms = int(common.range.end.timestamp() * 1000)
    where = list(src.where[:2])
    where.append(f"ts < fromUnixTimestamp64Milli({params.bind(end_ms + window_ms, 'Int64')}, 'UTC')")
    if common.filters is not None:
        where.append(f"({common.filters.sql(src.column, params)})")
    conditions = _conditions(q, src.column, params)
    if q.order == "ordered":
        where.append("(" + " OR ".join(f"({c})" for c in conditions) + ")")
    n = len(q.steps)
    mask = " + ".join(f"if({c}, {1 << i}, 0)" for i, c in enumerate(conditions))
    first = "multiIf(" + ", ".join(f"bitTest(mask, {i}), {i + 1}" for i in range(n)) + ", 0)"
    group = "''"
    if q.breakdown is not None:
        column = src.column(q.breakdown)
        group = f"if({column} = '', '{NONE}', {column})"
    win = params.bind(window_ms, "Int64")
    end = params.bind(end_ms, "Int64")
    # evs[i]: (time ms, first step matched, mask of steps matched, group value)
    e = "evs[i]"
    extend = (
        "if(L = 1,"
        f" if(bitTest({e}.3, 0) AND {e}.1 < {end}, [toInt64(i), {e}.1], KEEP),"
        f" if(bitTest({e}.3, L - 1) AND length(acc[L - 1]) > 0"
        f" AND {e}.1 - acc[L - 1][2] <= {win}LATER,"
        f" arrayPushBack(acc[L - 1], {e}.1), KEEP))"
    )
    if q.order == "ordered":
        step = extend.replace("KEEP", "acc[L]").replace(
            "LATER", " AND (length(acc[L]) = 0 OR acc[L - 1][2] > acc[L][2])")
        fold = (f"arrayFold((acc, i) -> arrayMap(L -> {step}, range(1, {n + 1})),"
                " arrayEnumerate(evs), arrayResize([[toInt64(0)]], 0)::Array(Array(Int64)))")
        deepest = "arrayFilter(c -> length(c) > 0, st)[-1]"
    else:
        step = extend.replace("KEEP", "arrayResize([toInt64(0)], 0)").replace("LATER", "")
        # Slot n + 1 keeps the deepest attempt seen so far (deeper, or as deep and later).
        fold = (f"arrayFold((acc, i) -> arrayMap(L -> if(L <= {n}, {step},"
                f" {_better(f'acc[{n + 1}]', _deepest('acc', n))}), range(1, {n + 2})),"
                f" arrayEnumerate(evs), arrayResize([arrayResize([toInt64(0)], 0)], {n + 1}))")
        deepest = _better(f"st[{n + 1}]", _deepest("st", n))
    return (
        f"SELECT if(length(chain) > 0, evs[chain[1]].4, '') AS g, arraySlice(chain, 2) AS times"
        f" FROM (SELECT evs, {fold} AS st, {deepest} AS chain FROM ("
        " SELECT arraySort(groupArray((t, first, mask, grp))) AS evs FROM ("
        f" SELECT user_id, toUnixTimestamp64Milli(ts) AS t, toUInt16({mask}) AS mask,"
        f" {first} AS first, {group} AS grp FROM {src.table} WHERE {' AND '.join(where)})"
        " GROUP BY user_id))"
        " WHERE length(chain) > 0"
    )


def _deepest(state: str, n: int) -> str:
    """The deepest attempt among slots 1..n of *state* (empty when there is none)."""
    return f"arrayFilter(c -> length(c) > 0, arraySlice({state}, 1, {n}))[-1]"


def _better(a: str, b: str) -> str:
    """The deeper of attempts *a* and *b*, or the later started when as deep (*a* on a tie)."""
    return (f"if(length({b}) > length({a}) OR (length({b}) = length({a}) AND length({b}) > 0"
            f" AND {b}[2] > {a}[2]), {b}, {a})")


def funnel(reader: Reader, q: Funnel) -> Answer:
    params = Params()
    per_user = _per_user_sql(q, params)
    group_expr = "g"
    meta: dict[str, Any] = {"approximate": False}
    groups: list[str] = [""]
    if q.breakdown is not None:
        ranked = reader.rows(
            f"SELECT g, count() AS users, count() OVER () AS total FROM ({per_user})"
            f" GROUP BY g ORDER BY users DESC, g LIMIT {params.bind(q.limit, 'UInt32')}", params.values)
        total = int(ranked[0][2]) if ranked else 0
        groups = [str(r[0]) for r in ranked]
        meta |= {"total_groups": total, "truncated": total > q.limit}
        if total > q.limit:
            group_expr = f"if(g IN {params.bind(groups, 'Array(String)')}, g, '{OTHER}')"
        groups.append(OTHER)
    rows = reader.rows(
        f"SELECT {group_expr} AS gg, k, count(),"
        f" quantileExactLow(0.5)(if(k = 1, 0, times[k] - times[k - 1]))"
        f" FROM ({per_user}) ARRAY JOIN arrayEnumerate(times) AS k GROUP BY gg, k", params.values)
    found = {(str(g), int(k)): (int(users), int(median)) for g, k, users, median in rows}
    out = []
    for g in groups:
        first = found.get((g, 1), (0, 0))[0]
        previous = first
        for k, step in enumerate(q.steps, start=1):
            users, median = found.get((g, k), (0, 0))
            row: dict[str, Any] = {"breakdown": g} if q.breakdown is not None else {}
            row |= {
                "step": k, "label": step.label, "event": step.event, "users": users,
                "conversion_from_start": users / first if first else None,
                "conversion_from_previous": users / previous if previous else None,
                "drop_off": previous - users if k > 1 else 0,
                "median_time_to_convert_s": median / 1000 if k > 1 and users else None,
            }
            out.append(row)
            previous = users
    columns = [*(["breakdown"] if q.breakdown is not None else []), "step", "label", "event",
               "users", "conversion_from_start", "conversion_from_previous", "drop_off",
               "median_time_to_convert_s"]
    return Answer(columns, out, "events", meta)
