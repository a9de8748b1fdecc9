"""The query layer: slice and dice the events, as a Python function API.

    from app.query import QueryConfig, run
    answer = run(client, {"kind": "breakdown", "dimensions": ["country"]}, QueryConfig.from_settings(settings))

`run` parses the request (`request.py`), plans where to read it (`sources.py`: a rollup that
covers it exactly, else the events table), builds SQL with bound parameters only, and returns
the answer: uniform ``rows``, their ``columns``, the normalized ``query``, the ``source`` that
answered and ``meta`` (elapsed ms, whether figures are approximate and how). The HTTP handler
(`POST /v1/query`) and `rearview query` are thin layers over it. docs/query.md is the reference.

Modules: request (parsing, limits), timerange (ranges, timezone buckets), sql (parameters,
dimensions, filters, metrics), sources (rollup routing), execute (limits, errors), and one
module per kind: insights (timeseries, breakdown), funnel, retention, uniques; discovery
serves the UI's pickers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from clickhouse_connect.driver.client import Client

from app.query.count import CountRequest, CountResponse, count_events, parse_time
from app.query.errors import BadQuery, QueryTimeout, QueryTooExpensive
from app.query.execute import Limits, Reader
from app.query.request import Defaults, parse
from tables.rollups import RollupSpec

if TYPE_CHECKING:
    from app.settings import Settings

__all__ = [
    "BadQuery", "CountRequest", "CountResponse", "QueryConfig", "QueryTimeout",
    "QueryTooExpensive", "count_events", "parse_time", "run",
]


@dataclass(frozen=True)
class QueryConfig:
    """What the query layer needs from the settings."""

    defaults: Defaults = field(default_factory=Defaults)
    limits: Limits = field(default_factory=Limits)
    rollups: tuple[RollupSpec, ...] = ()
    discovery_days: int = 30

    def for_project(self, project_id: str) -> QueryConfig:
        """This configuration, answering for *project_id* only."""
        if project_id == self.defaults.project_id:
            return self
        return replace(self, defaults=replace(self.defaults, project_id=project_id))

    @classmethod
    def from_settings(cls, settings: Settings) -> QueryConfig:
        q = settings.query
        return cls(
            Defaults(q.timezone, q.date_range, settings.project_id),
            Limits(q.max_execution_time_s, q.max_memory_usage_bytes),
            tuple(settings.aggregate.rollups) if settings.aggregate.enabled else (),
            q.discovery_days,
        )


def run(client: Client, body: object, config: QueryConfig, now: datetime | None = None) -> dict[str, Any]:
    """The answer to the query *body* (its JSON form, as a dict), as of *now* (default: the
    clock). Raises BadQuery (400), QueryTimeout (504), QueryTooExpensive (422) or
    ServiceUnavailable (503)."""
    from app.query import insights

    began = time.perf_counter()
    query = parse(body, config.defaults, now or datetime.now(UTC))
    reader = Reader(client, config.limits)
    rollups = list(config.rollups)
    if query.kind == "timeseries":
        answer = insights.timeseries(reader, rollups, query)  # type: ignore[arg-type]
    elif query.kind == "breakdown":
        answer = insights.breakdown(reader, rollups, query)  # type: ignore[arg-type]
    elif query.kind == "funnel":
        from app.query.funnel import funnel
        answer = funnel(reader, query)  # type: ignore[arg-type]
    elif query.kind == "retention":
        from app.query.retention import retention
        answer = retention(reader, query)  # type: ignore[arg-type]
    else:
        from app.query.uniques import uniques
        answer = uniques(reader, rollups, query)  # type: ignore[arg-type]
    meta = {
        "elapsed_ms": round((time.perf_counter() - began) * 1000, 1),
        "queries": reader.queries,
        "rows": len(answer.rows),
        **answer.meta,
    }
    return {"query": query.to_dict(), "columns": answer.columns, "rows": answer.rows,
            "source": answer.source, "meta": meta}
