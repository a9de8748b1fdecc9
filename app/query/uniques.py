"""Distinct users over a range: exact, or estimated from HLL sketches.

``exact`` counts with `uniqExact` over the events. ``hll`` unions the DataSketches HLL sketches
of a rollup with uniques (the request's project's partials) when one covers the request (its dimensions hold the filters, the
range falls on its windows) and the union reads at most `MAX_SKETCHES` sketches; otherwise
it asks ClickHouse's `uniqCombined` over the events. `meta` names the method and its
standard error (about 1.04 / sqrt(2**lg_k)).
"""

from __future__ import annotations

import base64
import math

from app.query.execute import Reader
from app.query.insights import Answer
from app.query.request import Uniques
from app.query.sources import events_source
from app.query.sql import Dimension, Params
from app.query.timerange import epoch_s
from tables import hll
from tables.rollup_tables import table_name
from tables.rollups import RollupSpec

MAX_SKETCHES = 20_000
UNIQ_COMBINED_LG_K = 17


def _standard_error(lg_k: int) -> float:
    return round(1.04 / math.sqrt(2**lg_k), 5)


def _covering(specs: list[RollupSpec], q: Uniques) -> RollupSpec | None:
    common = q.common
    dims = common.dimensions() | ({Dimension("event_name")} if q.events else set())
    for spec in sorted(specs, key=lambda s: (-s.granularity_ms, len(s.dimensions))):
        step = spec.granularity_ms // 1000
        if (spec.uniques and common.source != "events"
                and all(d.rollup_column(spec.dimensions) for d in dims)
                and epoch_s(common.range.start) % step == 0 and epoch_s(common.range.end) % step == 0):
            return spec
    return None


def uniques(reader: Reader, specs: list[RollupSpec], q: Uniques) -> Answer:
    common = q.common
    if q.method == "hll":
        spec = _covering(specs, q)
        if spec is not None:
            answer = _from_sketches(reader, spec, q)
            if answer is not None:
                return answer
    params = Params()
    src = events_source(common, params, final=False)  # distinct users: copies change nothing
    where = list(src.where)
    if q.events:
        where.append(f"`event_name` IN {params.bind(list(q.events), 'Array(String)')}")
    if common.filters is not None:
        where.append(f"({common.filters.sql(src.column, params)})")
    if q.method == "exact":
        aggregate = "uniqExact(user_id)"
        meta = {"approximate": False, "method": "exact", "method_detail": "uniqExact(user_id) over events"}
    else:
        aggregate = f"uniqCombined({UNIQ_COMBINED_LG_K})(user_id)"
        meta = {"approximate": True, "method": "hll",
                "method_detail": f"ClickHouse uniqCombined({UNIQ_COMBINED_LG_K}) over events",
                "lg_k": UNIQ_COMBINED_LG_K, "standard_error": _standard_error(UNIQ_COMBINED_LG_K)}
    users = reader.rows(f"SELECT {aggregate} FROM {src.table} WHERE {' AND '.join(where)}",
                        params.values)[0][0]
    return Answer(["users"], [{"users": int(users)}], "events", meta)


def _from_sketches(reader: Reader, spec: RollupSpec, q: Uniques) -> Answer | None:
    common = q.common
    params = Params()

    def column(d: Dimension) -> str:
        return f"`{d.rollup_column(spec.dimensions)}`"

    where = [
        f"project_id = {params.bind(common.project_id, 'String')}",
        f"window_start >= toDateTime({params.bind(epoch_s(common.range.start), 'Int64')}, 'UTC')",
        f"window_start < toDateTime({params.bind(epoch_s(common.range.end), 'Int64')}, 'UTC')",
        "sketch != ''",
    ]
    if q.events:
        where.append(f"`event_name` IN {params.bind(list(q.events), 'Array(String)')}")
    if common.filters is not None:
        where.append(f"({common.filters.sql(column, params)})")
    table = f"`{table_name(spec)}` FINAL"
    count = reader.rows(f"SELECT count() FROM {table} WHERE {' AND '.join(where)}", params.values)[0][0]
    if count > MAX_SKETCHES:
        return None
    rows = reader.rows(f"SELECT base64Encode(sketch) FROM {table} WHERE {' AND '.join(where)}",
                       params.values)
    parts = [base64.b64decode(r[0]) for r in rows]
    users = round(hll.merge(parts, spec.lg_k)) if parts else 0
    meta = {"approximate": True, "sketches": len(parts), "lg_k": spec.lg_k,
            "method": "hll",
            "method_detail": f"union of the DataSketches HLL sketches of rollup {spec.name}",
            "standard_error": _standard_error(spec.lg_k)}
    return Answer(["users"], [{"users": users}], f"rollup:{spec.name}", meta)
