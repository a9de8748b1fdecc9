"""Time series and breakdowns: counts, distinct users, sums and averages by time and dimension.

A time series has one line per series (an event with its own filters); an event matching two
series counts in both. Every bucket of the range is in the answer, empty ones with zero
(``null`` for an average of nothing).

A breakdown groups by one to three dimensions. Groups are ranked by ``order_by`` (ties by
their values), the first ``limit`` are returned, and every group past the limit is summed into
one ``$other`` row, always present (zeros when nothing is past the limit), so the rows always
add up to the total: nothing is silently truncated. ``$none`` is the value of a dimension an
event does not have. With an ``interval``, a breakdown is a time series per group (the groups
ranked over the whole range).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.query.errors import BadQuery
from app.query.execute import Reader
from app.query.request import MAX_ROWS, Breakdown, Common, Timeseries
from app.query.sources import Source, choose, events_source, rollup_source
from app.query.sql import NONE, OTHER, Dimension, Metric, Params, finish, width
from app.query.timerange import RangeError, bucket_sql, buckets, from_epoch_s
from tables.rollups import RollupSpec


@dataclass
class Answer:
    """What a query kind returns: uniform rows, the source that answered and extra meta."""

    columns: list[str]
    rows: list[dict[str, Any]]
    source: str
    meta: dict[str, Any] = field(default_factory=dict)


def _buckets(common: Common, interval: Any, series: int) -> list[datetime]:
    try:
        return buckets(common.range.start, common.range.end, interval, common.tz,
                       max(1, MAX_ROWS // max(series, 1)))
    except RangeError as exc:
        raise BadQuery("interval", f"{exc} (at most {MAX_ROWS} rows an answer)") from None


def _source(specs: list[RollupSpec], common: Common, dims: Any, metrics: tuple[Metric, ...],
            boundaries: list[datetime], params: Params) -> tuple[Source, str]:
    spec, why = choose(specs, common, dims, metrics, boundaries)
    if spec is not None:
        return rollup_source(spec, common, params), ""
    return events_source(common, params), why


def _aggregates(src: Source, metrics: tuple[Metric, ...]) -> list[str]:
    return [expr for m in metrics for expr in src.aggregates(m)]


def _values(metrics: tuple[Metric, ...], row: tuple[Any, ...] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    for m in metrics:
        n = width(m)
        out[m.name] = finish(m, list(row[i:i + n])) if row is not None else finish(m, [0] * n)
        i += n
    return out


def _meta(why: str) -> dict[str, Any]:
    return {"approximate": False, **({"rollup_not_used": why} if why else {})}


def timeseries(reader: Reader, specs: list[RollupSpec], q: Timeseries) -> Answer:
    common = q.common
    starts = _buckets(common, q.interval, len(q.series))
    dims = common.dimensions().union(*(s.dimensions() for s in q.series))
    params = Params()
    src, why = _source(specs, common, dims, q.metrics, starts, params)
    conditions = []
    for s in q.series:
        parts = []
        if s.event is not None:
            parts.append(f"`event_name` = {params.bind(s.event, 'String')}")
        if s.filters is not None:
            parts.append(f"({s.filters.sql(src.column, params)})")
        conditions.append(" AND ".join(parts) or "1")
    where = list(src.where)
    if common.filters is not None:
        where.append(f"({common.filters.sql(src.column, params)})")
    if len(q.series) == 1:
        series_expr = "0"
        where.append(conditions[0])
    else:
        picks = ", ".join(f"if({c}, {i}, -1)" for i, c in enumerate(conditions))
        series_expr = f"arrayJoin(arrayFilter(x -> x >= 0, [{picks}]))"
        where.append("(" + " OR ".join(f"({c})" for c in conditions) + ")")
    tz = params.bind(common.timezone, "String")
    sql = (f"SELECT {bucket_sql(src.time_column, q.interval, tz)} AS b,"
           f" {series_expr} AS s, {', '.join(_aggregates(src, q.metrics))}"
           f" FROM {src.table} WHERE {' AND '.join(where)} GROUP BY b, s")
    found: dict[tuple[int, int], tuple[Any, ...]] = {}
    for row in reader.rows(sql, params.values):
        found[(int(row[0]), int(row[1]))] = row[2:]
    # Buckets ClickHouse found that the calendar walk did not (there should be none) are kept.
    all_starts = sorted({int(b.timestamp()) for b in starts} | {b for b, _ in found})
    rows = []
    for si, s in enumerate(q.series):
        for b in all_starts:
            rows.append({"bucket": from_epoch_s(b, common.tz).isoformat(), "series": s.label,
                         **_values(q.metrics, found.get((b, si)))})
    return Answer(["bucket", "series", *(m.name for m in q.metrics)], rows, src.name, _meta(why))


def _group_exprs(q: Breakdown, src: Source) -> list[str]:
    return [f"if({src.column(d)} = '', '{NONE}', {src.column(d)})" for d in q.dimensions]


def _order_expr(q: Breakdown, metric_index: int, metrics: tuple[Metric, ...]) -> str:
    i = sum(width(m) for m in metrics[:metric_index])
    m = metrics[metric_index]
    key = f"a{i}" if m.kind != "avg" else f"a{i} / nullIf(a{i + 1}, 0)"
    return f"{key} {'DESC' if q.descending else 'ASC'} NULLS LAST"


def breakdown(reader: Reader, specs: list[RollupSpec], q: Breakdown) -> Answer:
    common = q.common
    starts = _buckets(common, q.interval, q.limit + 1) if q.interval else []
    dims = common.dimensions() | set(q.dimensions)
    if q.events:
        dims.add(Dimension("event_name"))
    params = Params()
    src, why = _source(specs, common, dims, q.metrics, starts, params)
    where = list(src.where)
    if q.events:
        where.append(f"`event_name` IN {params.bind(list(q.events), 'Array(String)')}")
    if common.filters is not None:
        where.append(f"({common.filters.sql(src.column, params)})")
    groups = _group_exprs(q, src)
    names = [f"d{i}" for i in range(len(groups))]
    aggs = _aggregates(src, q.metrics)
    alias = ", ".join(f"{a} AS a{i}" for i, a in enumerate(aggs))
    inner = (f"SELECT {', '.join(f'{g} AS {n}' for g, n in zip(groups, names, strict=True))}, {alias}"
             f" FROM {src.table} WHERE {' AND '.join(where)} GROUP BY {', '.join(names)}")
    order = _order_expr(q, q.metrics.index(q.order_by), q.metrics)
    rank_sql = (f"SELECT {', '.join(names)}, {', '.join(f'a{i}' for i in range(len(aggs)))},"
                f" count() OVER () AS total FROM ({inner})"
                f" ORDER BY {order}, {', '.join(names)} LIMIT {params.bind(q.limit, 'UInt32')}")
    ranked = reader.rows(rank_sql, params.values)
    total_groups = int(ranked[0][-1]) if ranked else 0
    truncated = total_groups > q.limit
    top = [tuple(str(v) for v in row[:len(names)]) for row in ranked]
    n = len(names)
    columns = [*(["bucket"] if q.interval else []), *(d.name for d in q.dimensions),
               *(m.name for m in q.metrics)]
    meta = {**_meta(why), "total_groups": total_groups, "truncated": truncated}
    other = (OTHER,) * n
    if not q.interval and not truncated:
        rows = [{**dict(zip((d.name for d in q.dimensions), g, strict=True)),
                 **_values(q.metrics, row[n:-1])} for g, row in zip(top, ranked, strict=True)]
        rows.append({**{d.name: OTHER for d in q.dimensions}, **_values(q.metrics, None)})
        return Answer(columns, rows, src.name, meta)

    # Second pass: the groups past the limit folded into $other (and the buckets, if any).
    if truncated:
        key = f"tuple({', '.join(groups)})" if n > 1 else groups[0]
        kind = f"Array(Tuple({', '.join(['String'] * n)}))" if n > 1 else "Array(String)"
        in_top = f"{key} IN {params.bind([t if n > 1 else t[0] for t in top], kind)}"
        mapped = [f"if({in_top}, {g}, '{OTHER}')" for g in groups]
    else:
        mapped = groups
    bucket = bucket_sql(src.time_column, q.interval, params.bind(common.timezone, "String")) \
        if q.interval else "0"
    sql = (f"SELECT {bucket} AS b, {', '.join(f'{m} AS m{i}' for i, m in enumerate(mapped))},"
           f" {', '.join(aggs)} FROM {src.table} WHERE {' AND '.join(where)}"
           f" GROUP BY b, {', '.join(f'm{i}' for i in range(n))}")
    found: dict[tuple[int, tuple[str, ...]], tuple[Any, ...]] = {}
    for record in reader.rows(sql, params.values):
        found[(int(record[0]), tuple(str(v) for v in record[1:1 + n]))] = record[1 + n:]
    groups_out = [*top, other]
    if q.interval:
        all_starts = sorted({int(b.timestamp()) for b in starts} | {b for b, _ in found})
    else:
        all_starts = [0]
    rows = []
    for g in groups_out:
        for b in all_starts:
            out: dict[str, Any] = {"bucket": from_epoch_s(b, common.tz).isoformat()} if q.interval else {}
            out.update(zip((d.name for d in q.dimensions), g, strict=True))
            out.update(_values(q.metrics, found.get((b, g))))
            rows.append(out)
    if len(rows) > MAX_ROWS:
        raise BadQuery("limit", f"the answer would have {len(rows)} rows, more than {MAX_ROWS}:"
                                " lower the limit or use a longer interval")
    return Answer(columns, rows, src.name, meta)

