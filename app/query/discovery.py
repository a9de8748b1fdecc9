"""Discovery for a UI's pickers: which events, properties and values there are.

Each reads the last `discovery_days` of the project's events. Counts are of stored rows, without
the deduplication pass (FINAL) the query kinds use: a redelivered copy not yet merged away
may count twice for a moment, which a picker can live with, and it keeps these cheap enough
to call on every keystroke. Property keys are read from the map's keys alone
(`properties.keys`), not the whole map.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from app.query.errors import BadQuery
from app.query.execute import Reader
from app.query.request import EVENT_NAME
from app.query.sql import HOT_COLUMNS, PROPERTY_KEY, Params, parse_dimension

if TYPE_CHECKING:
    from clickhouse_connect.driver.client import Client

    from app.query import QueryConfig

MAX_EVENTS = 1000
MAX_PROPERTIES = 500
MAX_VALUES = 1000


def _scope(config: QueryConfig, params: Params, event: str | None) -> str:
    where = [
        f"project_id = {params.bind(config.defaults.project_id, 'String')}",
        f"ts >= now64(3) - toIntervalDay({params.bind(config.discovery_days, 'UInt32')})",
    ]
    if event is not None:
        if not EVENT_NAME.match(event):
            raise BadQuery("event", f"not an event name: {event[:80]!r}")
        where.append(f"event_name = {params.bind(event, 'String')}")
    return " AND ".join(where)


def events(client: Client, config: QueryConfig) -> dict[str, Any]:
    """Event names, most frequent first, with their counts and when each was last seen."""
    params = Params()
    rows = Reader(client, config.limits).rows(
        "SELECT event_name, count() AS n, toUnixTimestamp64Milli(max(ts)) FROM events"
        f" WHERE {_scope(config, params, None)} GROUP BY event_name ORDER BY n DESC, event_name"
        f" LIMIT {MAX_EVENTS}", params.values)
    return {"days": config.discovery_days,
            "events": [{"event": name, "count": int(n),
                        "last_seen": datetime.fromtimestamp(last / 1000, UTC).isoformat(timespec="milliseconds")}
                       for name, n, last in rows]}


def properties(client: Client, config: QueryConfig, event: str | None) -> dict[str, Any]:
    """Property keys (of *event*, or of every event), most frequent first, each with the
    dimension name that queries use for it."""
    params = Params()
    rows = Reader(client, config.limits).rows(
        "SELECT key, count() AS n FROM events ARRAY JOIN properties.keys AS key"
        f" WHERE {_scope(config, params, event)} GROUP BY key ORDER BY n DESC, key"
        f" LIMIT {MAX_PROPERTIES}", params.values)
    return {"days": config.discovery_days, "event": event,
            "properties": [{"property": key, "count": int(n),
                            "dimension": _dimension(key)}
                           for key, n in rows]}


def _dimension(key: str) -> str | None:
    """How queries name property *key*: its hot column, ``prop:<key>``, or None when the key
    cannot be queried (it does not match the property key pattern)."""
    if key in HOT_COLUMNS[1:]:
        return key
    return f"prop:{key}" if PROPERTY_KEY.match(key) else None


def values(client: Client, config: QueryConfig, dimension: str | None, event: str | None,
           q: str, limit: str | int | None) -> dict[str, Any]:
    """The most frequent non-empty values of *dimension* (``country``, ``prop:plan``), those
    containing *q* (case-insensitive) when it is given."""
    if not dimension:
        raise BadQuery("property", "which property: a dimension such as country or prop:plan")
    dim = parse_dimension(dimension, "property")
    try:
        n = int(limit) if limit not in (None, "") else 50
    except ValueError:
        raise BadQuery("limit", "must be an integer") from None
    if not 1 <= n <= MAX_VALUES:
        raise BadQuery("limit", f"must be from 1 to {MAX_VALUES}")
    if len(q) > 200:
        raise BadQuery("q", "at most 200 characters")
    params = Params()
    column = dim.raw(params)
    where = [_scope(config, params, event), f"{column} != ''"]
    if q:
        where.append(f"positionCaseInsensitiveUTF8({column}, {params.bind(q, 'String')}) > 0")
    rows = Reader(client, config.limits).rows(
        f"SELECT {column} AS v, count() AS n FROM events WHERE {' AND '.join(where)}"
        f" GROUP BY v ORDER BY n DESC, v LIMIT {n}", params.values)
    return {"days": config.discovery_days, "property": dim.name, "event": event, "q": q,
            "values": [{"value": v, "count": int(c)} for v, c in rows]}
