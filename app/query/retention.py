"""Retention: of the users who did the start event in a period, how many came back later.

Periods (day, week from Monday, month) are calendar periods in the request's timezone,
numbered so that ClickHouse and Python agree on them: the day number since 1970-01-01, the
week number of its Monday, the month number since year 0. Per user, ClickHouse lists the
periods of their start events (a `first_time` cohort is the period of the first one ever, read
over all history; `recurring` cohorts are every period of the range with one) and of their
return events; each cohort then counts its users once per later period they returned in.
"""

from __future__ import annotations

from datetime import UTC, date, timedelta
from typing import Any

from app.query.errors import BadQuery
from app.query.execute import Reader
from app.query.insights import Answer
from app.query.request import MAX_ROWS, Retention
from app.query.sources import events_source
from app.query.sql import Params
from app.query.timerange import floor, midnight

MONDAY_SHIFT = 3  # 1970-01-01 was a Thursday: day + 3 is a multiple of 7 on Mondays


def _index_sql(period: str, tz: str) -> str:
    if period == "day":
        return f"toUInt32(toDate(ts, {tz}))"
    if period == "week":
        return f"intDiv(toUInt32(toMonday(ts, {tz})) + {MONDAY_SHIFT}, 7)"
    return f"toYear(ts, {tz}) * 12 + toMonth(ts, {tz}) - 1"


def _index(day: date, period: str) -> int:
    days = (day - date(1970, 1, 1)).days
    if period == "day":
        return days
    if period == "week":
        return (days - day.weekday() + MONDAY_SHIFT) // 7
    return day.year * 12 + day.month - 1


def _start(index: int, period: str) -> date:
    if period == "day":
        return date(1970, 1, 1) + timedelta(days=index)
    if period == "week":
        return date(1970, 1, 1) + timedelta(days=index * 7 - MONDAY_SHIFT)
    return date(index // 12, index % 12 + 1, 1)


def retention(reader: Reader, q: Retention) -> Answer:
    common = q.common
    tz = common.tz
    first_day = floor(common.range.start, q.period, tz)
    last_day = floor(common.range.end.astimezone(UTC) - timedelta(milliseconds=1), q.period, tz)
    lo, hi = _index(first_day.date(), q.period), _index(last_day.date(), q.period)
    if (hi - lo + 1) * q.periods > MAX_ROWS:
        raise BadQuery("periods", f"{hi - lo + 1} cohorts x {q.periods} periods is more than"
                                  f" {MAX_ROWS} rows: shorten the range or use a longer period")
    read_end = midnight(_start(hi + q.periods, q.period), tz)

    params = Params()
    src = events_source(common, params, final=False)  # distinct users: copies change nothing
    index = _index_sql(q.period, params.bind(common.timezone, "String"))

    def condition(event: str | None, filters: Any) -> str:
        parts = [f"`event_name` = {params.bind(event, 'String')}"] if event is not None else []
        if filters is not None:
            parts.append(f"({filters.sql(src.column, params)})")
        return " AND ".join(parts) or "1"

    begin = params.bind(int(first_day.timestamp() * 1000), "Int64")
    where = [src.where[0],
             f"ts < fromUnixTimestamp64Milli({params.bind(int(read_end.timestamp() * 1000), 'Int64')}, 'UTC')"]
    if common.filters is not None:
        where.append(f"({common.filters.sql(src.column, params)})")
    in_range = f"ts >= fromUnixTimestamp64Milli({begin}, 'UTC')"
    is_start = condition(q.start.event, q.start.filters)
    is_return = condition(q.returning.event, q.returning.filters)
    if q.cohort == "recurring":
        where.append(in_range)
    else:  # the first start event ever: read starts over all history
        where.append(f"(({is_start}) OR {in_range})")
    low, high = params.bind(lo, "Int64"), params.bind(hi, "Int64")
    if q.cohort == "first_time":
        cohorts = f"if(minIf(pi, s) BETWEEN {low} AND {high}, [minIf(pi, s)], [])"
    else:
        cohorts = f"arrayDistinct(groupArrayIf(pi, s AND pi BETWEEN {low} AND {high}))"
    n = params.bind(q.periods, "Int64")
    sql = (
        "SELECT c, o, count() FROM ("
        f" SELECT {cohorts} AS cohorts, arrayDistinct(groupArrayIf(pi, r)) AS returns"
        f" FROM (SELECT user_id, toInt64({index}) AS pi, ({is_start}) AS s, ({is_return}) AS r"
        f" FROM {src.table} WHERE {' AND '.join(where)}) GROUP BY user_id)"
        " ARRAY JOIN cohorts AS c"
        f" ARRAY JOIN arrayConcat([0], arrayMap(x -> x - c, arrayFilter(x -> x > c AND x < c + {n},"
        " returns))) AS o GROUP BY c, o"
    )
    found = {(int(c), int(o)): int(users) for c, o, users in reader.rows(sql, params.values)}
    rows: list[dict[str, Any]] = []
    for c in range(lo, hi + 1):
        size = found.get((c, 0), 0)
        label = midnight(_start(c, q.period), tz).isoformat()
        for o in range(q.periods):
            started = midnight(_start(c + o, q.period), tz) <= common.now
            users = found.get((c, o), 0) if started else None
            rows.append({"cohort": label, "period": o, "cohort_size": size, "users": users,
                         "rate": users / size if users is not None and size else None})
    return Answer(["cohort", "period", "cohort_size", "users", "rate"], rows, "events",
                  {"approximate": False, "cohorts": hi - lo + 1})
