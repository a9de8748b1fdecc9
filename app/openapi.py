"""The OpenAPI 3.1 description of every endpoint of `app.api`, served at ``GET /openapi.json``.

`document(settings)` builds it from the code it describes: patterns and limits are the query
layer's constants (`app.query.request`, `app.query.sql`, `app.query.timerange`), the
collector's limits are the configured validation rules and API settings, and the defaults a
request falls back on are the configured query defaults. tests/unit/test_openapi.py checks
the document against the OpenAPI 3.1 meta-schema, checks that every route of
`app.api.create_app` is described (and nothing else), and probes `app.query.request.parse`
for every bound this module has to state itself because the parser keeps it as a literal.

Schemas are JSON Schema 2020-12, as OpenAPI 3.1 uses. docs/query.md is the prose reference.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from agents.records import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS
from app import dashboard
from app.live import PERIODS_MIN
from app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.query import discovery
from app.query.request import (
    DURATION,
    EVENT_NAME,
    KINDS,
    MAX_DIMENSIONS,
    MAX_FUNNEL_WINDOW_S,
    MAX_RETENTION_PERIODS,
    MAX_ROWS,
    MAX_SERIES,
    MAX_STEPS,
    SOURCES,
)
from app.query.sql import (
    HOT_COLUMNS,
    LEAF_OPS,
    MAX_FILTER_NODES,
    MAX_FILTER_VALUES,
    NONE,
    NUMERIC_OPS,
    OTHER,
    PROPERTY_KEY,
)
from app.query.timerange import INTERVALS, RELATIVE
from app.settings import Settings

JSON = dict[str, Any]

# Bounds the parser states as literals rather than named constants (app/query/request.py,
# app/query/sql.py, app/query/timerange.py). tests/unit/test_openapi.py probes `parse` at each
# of them, so a change there fails the test instead of leaving this document wrong.
MAX_EVENTS = 100  # request._events: an `events` list
MAX_METRICS = 10  # request._metrics
MAX_LABEL = 200  # request._Fields.label
MAX_FILTER_VALUE_CHARS = 8192  # sql.parse_filter: one filter value
MAX_TIMEZONE_CHARS = 64  # timerange.zone
MAX_RANGE_POINT_CHARS = 40  # timerange._parse_point: one end of an absolute range
MAX_DISCOVERY_Q = 200  # discovery.values: the `q` of GET /v1/schema/values

SET_OPS = ("is_set", "is_not_set")
VALUE_OPS = tuple(op for op in LEAF_OPS if op not in NUMERIC_OPS and op not in SET_OPS)
KEY_PATTERN = PROPERTY_KEY.pattern.removeprefix("^")


# --- small builders ----------------------------------------------------------------------------

def ref(name: str) -> JSON:
    return {"$ref": f"#/components/schemas/{name}"}


def string(description: str | None = None, **extra: Any) -> JSON:
    return _described({"type": "string", **extra}, description)


def integer(low: int | None = None, high: int | None = None, description: str | None = None,
            **extra: Any) -> JSON:
    schema: JSON = {"type": "integer", **extra}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    return _described(schema, description)


def array(items: JSON, low: int | None = None, high: int | None = None,
          description: str | None = None, **extra: Any) -> JSON:
    schema: JSON = {"type": "array", "items": items, **extra}
    if low is not None:
        schema["minItems"] = low
    if high is not None:
        schema["maxItems"] = high
    return _described(schema, description)


def tuple_of(*items: JSON, description: str | None = None) -> JSON:
    """A JSON array of exactly these items, in this order."""
    return _described({"type": "array", "prefixItems": list(items), "minItems": len(items),
                       "maxItems": len(items)}, description)


def obj(properties: JSON, required: tuple[str, ...] = (), description: str | None = None,
        additional: bool | JSON = False) -> JSON:
    schema: JSON = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if additional is not True:
        schema["additionalProperties"] = additional
    return _described(schema, description)


def any_of(*schemas: JSON, description: str | None = None, **extra: Any) -> JSON:
    return _described({"anyOf": list(schemas), **extra}, description)


def enum(values: tuple[str, ...], description: str | None = None, **extra: Any) -> JSON:
    return _described({"type": "string", "enum": list(values), **extra}, description)


def one_or_many(item: JSON, low: int, high: int, description: str | None = None,
                unique: bool = False) -> JSON:
    """A list of *item*s, or one item standing for a list of one."""
    listed = array(item, low, high)
    if unique:
        listed["uniqueItems"] = True
    return any_of(item, listed, description=description)


def _described(schema: JSON, description: str | None) -> JSON:
    return {**schema, "description": description} if description else schema


def _english(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


# --- responses and parameters ------------------------------------------------------------------

def json_response(description: str, schema: JSON) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def error(description: str) -> JSON:
    return json_response(description, ref("Error"))


TOO_LARGE = "413"
BAD_REQUEST = "400"
UNAVAILABLE = "503"


def too_large(settings: Settings) -> JSON:
    return error(f"The body is larger than `api.max_body_bytes` ({settings.api.max_body_bytes}"
                 " bytes); refused before it is parsed.")


def unavailable(what: str) -> JSON:
    return error(f"{what} is unreachable or failed: retry later. Never a 500 that blames the"
                 " client.")


def query_limits(settings: Settings) -> JSON:
    """The responses of a request ClickHouse answers under the query layer's limits."""
    limits = settings.query
    return {
        "422": error(f"ClickHouse stopped the query at the memory limit"
                     f" ({limits.max_memory_usage_bytes} bytes, `query.max_memory_usage_bytes`)"
                     " or a size limit."),
        UNAVAILABLE: unavailable("ClickHouse"),
        "504": error(f"ClickHouse stopped the query at the time limit"
                     f" ({limits.max_execution_time_s:g} s, `query.max_execution_time_s`)."),
    }


def query_parameter(name: str, schema: JSON, description: str, required: bool = False) -> JSON:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}


def json_body(schema: JSON, description: str) -> JSON:
    return {"required": True, "description": description,
            "content": {"application/json": {"schema": schema}}}


# --- the collector -----------------------------------------------------------------------------

def collector_schemas(settings: Settings) -> dict[str, JSON]:
    rules = settings.validation
    property_value = any_of(
        string(maxLength=rules.max_value_length),
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        description="A scalar, stored as canonical text: a string as is, an integer of any size"
                    " as its digits, an integral float up to 2^53 as the integer's digits"
                    " (149.0 is \"149\"), any other float as its shortest repr, booleans as"
                    " \"true\"/\"false\"; null drops the key. Objects, arrays, NaN and infinity"
                    f" are refused. At most {rules.max_value_length} characters as text.",
    )
    event_name = string(
        "The event name (\"event\" wins when both are given).", pattern=rules.event_name_pattern,
    )
    track_event = obj(
        {
            "event": event_name,
            "event_name": event_name,
            "user_id": any_of(
                string(minLength=1, maxLength=rules.max_user_id_length),
                {"type": "integer"},
                description=f"Required; an integer is kept as its digits. At most"
                            f" {rules.max_user_id_length} characters.",
            ),
            "timestamp": any_of(
                string("ISO-8601; without an offset it is UTC."),
                integer(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS, "Epoch milliseconds."),
                {"type": "number", "description": "Epoch milliseconds, rounded down."},
                description="When the event happened; default: when the collector received it."
                            f" At most {rules.max_past_s} s before and {rules.max_future_s} s"
                            " after the receive time, within 1970-01-01 .. 2106-02-07.",
            ),
            "event_id": string("Idempotency key: a later copy with the same id is dropped;"
                               " default: a random UUID.", format="uuid"),
            "properties": _described({
                "type": "object",
                "maxProperties": rules.max_properties,
                "propertyNames": {"maxLength": rules.max_key_length},
                "additionalProperties": property_value,
            }, f"At most {rules.max_properties} properties, keys of at most"
               f" {rules.max_key_length} characters. `country`, `device_type` and `browser` are"
               " also the hot columns of the same names."),
            "context": obj({"library": string("The sending library, e.g. rearview-js/0.3.1.")},
                           additional=True,
                           description="Other fields are ignored: the IP address, the user"
                                       " agent and the receive time are the collector's."),
        },
        description="One event. Fields not listed here are ignored.",
        additional=True,
    )
    track_event["anyOf"] = [{"required": ["event", "user_id"]},
                            {"required": ["event_name", "user_id"]}]
    track_event["examples"] = [{
        "event": "button_click", "user_id": "user-1842", "timestamp": "2026-11-28T09:15:02.120Z",
        "properties": {"button_id": "signup-cta", "country": "DE", "device_type": "desktop"},
    }]
    events = array(ref("TrackEvent"), 1, settings.api.max_batch_events)
    return {
        "TrackEvent": track_event,
        "Batch": any_of(
            obj({"events": events}, ("events",), additional=True),
            events,
            description=f"{{\"events\": [...]}} or a bare JSON array: 1 to"
                        f" {settings.api.max_batch_events} events (`api.max_batch_events`)."
                        " One bad event refuses the whole batch, naming `events[i]`.",
        ),
        "Accepted": obj({"accepted": integer(1, description="Events acknowledged by Kafka.")},
                        ("accepted",)),
    }


# --- the query request -------------------------------------------------------------------------

def query_field_schemas(settings: Settings) -> dict[str, JSON]:
    """Building blocks of a query request: names, dimensions, metrics, filters, ranges, steps."""
    dimension_names = (*HOT_COLUMNS, "prop:<key>")
    return {
        "EventName": string(pattern=EVENT_NAME.pattern, examples=["button_click"]),
        "Dimension": any_of(
            enum(HOT_COLUMNS),
            string(pattern=f"^prop:{KEY_PATTERN}"),
            description=f"{_english(list(dimension_names))}. An event without the property (or"
                        f" with it empty) has the value `{NONE}`; `prop:country` is `country`.",
        ),
        "Metric": any_of(
            enum(("events", "users")),
            string(pattern=f"^(sum|avg):{KEY_PATTERN}"),
            description="`events` (count), `users` (distinct user_id, exact), `sum:<key>` and"
                        " `avg:<key>` of a numeric property (plain decimal literals of magnitude"
                        " at most 1e12; anything else is skipped; `avg` of nothing is null).",
        ),
        "Filter": any_of(
            tuple_of(enum(VALUE_OPS), ref("Dimension"),
                     one_or_many(any_of(string(maxLength=MAX_FILTER_VALUE_CHARS),
                                        {"type": "number"}), 1, MAX_FILTER_VALUES),
                     description=f"[op, dimension, values]. `{NONE}` is the absent value;"
                                 " `contains` is case-sensitive; `regex` takes RE2 patterns (one"
                                 " that does not compile is a 400); any value matching is"
                                 " enough."),
            tuple_of(enum(tuple(NUMERIC_OPS)), ref("Dimension"),
                     one_or_many(any_of({"type": "number"}, {"type": "string"}), 1, 1),
                     description="[op, dimension, number]: the value parsed as a number compares"
                                 " so; a value that is not a number never matches."),
            tuple_of(enum(SET_OPS), ref("Dimension"),
                     description="[op, dimension]: present and not empty (or not)."),
            tuple_of(enum(("and", "or")), array(ref("Filter"), 1)),
            tuple_of(enum(("not",)), ref("Filter")),
            description=f"A filter tree of at most {MAX_FILTER_NODES} nodes.",
        ),
        "Filters": any_of(ref("Filter"), array({}, high=0),
                          description="A filter tree; `[]` or null is no filter."),
        "DateRange": any_of(
            enum(("today", "yesterday", "all")),
            string(pattern=RELATIVE.pattern,
                   description="The last N minutes, hours, days, weeks (from Monday) or months,"
                               " the current one included: `7d` is six whole days and today."),
            tuple_of(string(maxLength=MAX_RANGE_POINT_CHARS), string(maxLength=MAX_RANGE_POINT_CHARS),
                     description="[from, to]: dates are whole local days, both included;"
                                 " date-times are instants, the end excluded, in the request's"
                                 " timezone unless they carry an offset."),
            obj({"from": string(format="date-time"), "to": string("Excluded.", format="date-time"),
                 "given": {}}, ("from", "to"),
                "The normalized form an answer echoes: the same instants again."),
            description=f"Default `{settings.query.date_range}` (`query.date_range`).",
            examples=["7d", ["2026-03-01", "2026-03-31"]],
        ),
        "Step": any_of(
            ref("EventName"),
            obj({"event": ref("EventName"), "filters": ref("Filters"), "label": _label()},
                ("event",)),
            description="An event (a name, or an object with its own filters and a label).",
        ),
        "AnyEventStep": any_of(
            ref("EventName"),
            {"type": "null"},
            obj({"event": any_of(ref("EventName"), {"type": "null"}), "filters": ref("Filters"),
                 "label": _label()}),
            description="Like Step, where a missing or null event is any event.",
        ),
    }


def _label() -> JSON:
    return string(f"At most {MAX_LABEL} characters; default: the event name.",
                  maxLength=MAX_LABEL)


def common_fields(settings: Settings) -> JSON:
    return {
        "timezone": string(f"IANA name; buckets, dates and periods are computed in it. Default"
                           f" `{settings.query.timezone}` (`query.timezone`).",
                           maxLength=MAX_TIMEZONE_CHARS, examples=["Europe/Berlin"]),
        "date_range": ref("DateRange"),
        "filters": ref("Filters"),
        "source": enum(SOURCES, "`auto`: the smallest covering rollup, else `events`; `events`:"
                                " always the raw events; `rollup`: a rollup, or a 400 saying why"
                                " none covers.", default="auto"),
    }


def kind_schema(settings: Settings, kind: str, fields: JSON, required: tuple[str, ...] = (),
                description: str = "") -> JSON:
    """A request of one kind: its fields, the common ones, and no others (a 400 names any)."""
    properties = {"kind": {"type": "string", "const": kind}, **fields, **common_fields(settings)}
    return obj(properties, ("kind", *required), description)


def _events_field(high: int) -> JSON:
    return one_or_many(ref("EventName"), 0, high, description="Event names to count; default all.")


def _metrics_field() -> JSON:
    return one_or_many(ref("Metric"), 1, MAX_METRICS, unique=True,
                       description="Default [\"events\"].")


def query_request_schemas(settings: Settings) -> dict[str, JSON]:
    kinds = {
        "TimeseriesQuery": kind_schema(settings, "timeseries", {
            "series": array(ref("AnyEventStep"), 1, MAX_SERIES),
            "events": one_or_many(ref("EventName"), 0, MAX_SERIES,
                                  description="Shorthand for one series per event (not with"
                                              " `series`)."),
            "metrics": _metrics_field(),
            "interval": enum(INTERVALS, default="day"),
        }, description="Rows {bucket, series, <metric>...} for every bucket of the range and every"
                       " series, empty buckets with 0."),
        "BreakdownQuery": kind_schema(settings, "breakdown", {
            "dimensions": one_or_many(ref("Dimension"), 1, MAX_DIMENSIONS, unique=True),
            "events": _events_field(MAX_EVENTS),
            "metrics": _metrics_field(),
            "order_by": any_of(ref("Metric"), tuple_of(ref("Metric"), enum(("desc", "asc"))),
                               description="One of the requested metrics; default the first,"
                                           " descending."),
            "limit": integer(1, MAX_ROWS, "Groups returned; the rest are folded into one"
                                          f" `{OTHER}` row, always present.", default=100),
            "interval": any_of(enum(INTERVALS), {"type": "null"},
                               description="A time series per group."),
        }, ("dimensions",), "Groups ranked by `order_by`, the first `limit`, then `$other`."),
        "FunnelQuery": kind_schema(settings, "funnel", {
            "steps": array(ref("Step"), 2, MAX_STEPS),
            "window": any_of(
                integer(1, MAX_FUNNEL_WINDOW_S, "Seconds."),
                string(pattern=DURATION.pattern, examples=["30min", "24h", "14d", "2w"]),
                description=f"Conversion window, at most {MAX_FUNNEL_WINDOW_S // 86_400} days;"
                            " default `14d`.",
            ),
            "order": enum(("ordered", "strict"), default="ordered"),
            "window_s": integer(1, MAX_FUNNEL_WINDOW_S, "The window in seconds, as answers echo"
                                                        " it (instead of `window`)."),
            "breakdown": ref("Dimension"),
            "limit": integer(1, MAX_ROWS // MAX_STEPS, "Breakdown groups.", default=25),
        }, ("steps",), "One row per step (and breakdown group)."),
        "RetentionQuery": kind_schema(settings, "retention", {
            "start_event": ref("Step"),
            "return_event": ref("AnyEventStep"),
            "period": enum(("day", "week", "month"), default="day"),
            "periods": integer(1, MAX_RETENTION_PERIODS, default=8),
            "cohort": enum(("first_time", "recurring"), default="first_time"),
        }, ("start_event",), "Rows per cohort period and period offset."),
        "UniquesQuery": kind_schema(settings, "uniques", {
            "events": _events_field(MAX_EVENTS),
            "method": enum(("exact", "hll"), default="exact"),
        }, description="Distinct users over the range: one row {users}."),
    }
    names = {kind: f"{kind.capitalize()}Query" for kind in KINDS}
    request = {
        "oneOf": [ref(names[kind]) for kind in KINDS],
        "discriminator": {"propertyName": "kind",
                          "mapping": {k: f"#/components/schemas/{n}" for k, n in names.items()}},
        "description": "A query of one kind. Unknown fields are refused (400 naming them); a"
                       " field given as null takes its default.",
    }
    return {**kinds, "QueryRequest": request}


# --- the answer --------------------------------------------------------------------------------

def answer_schemas() -> dict[str, JSON]:
    cell = any_of(string(), {"type": "number"}, {"type": "null"})
    bucket = string("Start of the bucket in the request's timezone, with its offset.",
                    format="date-time")
    return {
        "QueryAnswer": obj({
            "query": ref("NormalizedQuery"),
            "columns": array(string(), description="The keys of every row, in order."),
            "rows": array(any_of(ref("TimeseriesRow"), ref("BreakdownRow"), ref("FunnelRow"),
                                 ref("RetentionRow"), ref("UniquesRow"))),
            "source": string("The table that answered: `events` or `rollup:<name>`.",
                             pattern="^(events|rollup:.+)$"),
            "meta": ref("QueryMeta"),
        }, ("query", "columns", "rows", "source", "meta"), "Every kind answers in this shape."),
        "NormalizedQuery": obj({
            "kind": enum(KINDS),
            "timezone": string(),
            "date_range": obj({
                "given": any_of(string(), array(string(), 2, 2)),
                "from": string(format="date-time"),
                "to": string("Excluded.", format="date-time"),
            }, ("given", "from", "to")),
            "filters": any_of(ref("Filter"), {"type": "null"}),
            "source": enum(SOURCES),
        }, ("kind", "timezone", "date_range", "filters", "source"),
            "The request with its defaults filled in and its range resolved to instants: steps"
            " are objects {event, filters, label}, dimensions and metrics lists, `order_by` a"
            " pair, a funnel's window `window_s` seconds.", additional=True),
        "QueryMeta": obj({
            "elapsed_ms": {"type": "number"},
            "queries": integer(0, description="ClickHouse queries run."),
            "rows": integer(0),
            "approximate": {"type": "boolean", "description": "True only for HLL sketches."},
            "total_groups": integer(0, description="Breakdowns: groups before the limit."),
            "truncated": {"type": "boolean", "description": "Breakdowns: groups past the limit"
                                                            f" are in `{OTHER}`."},
            "rollup_not_used": string("Why no rollup answered, for each."),
            "method": enum(("exact", "hll"), description="Uniques: how users were counted."),
            "method_detail": string("Uniques: the function or the sketches that counted them."),
            "lg_k": integer(description="Uniques, hll: the sketches' precision."),
            "standard_error": {"type": "number", "description": "Uniques, hll: relative."},
            "sketches": integer(0, description="Uniques from rollup sketches: how many."),
            "cohorts": integer(0, description="Retention: cohort periods in the range."),
        }, ("elapsed_ms", "queries", "rows"), additional=True),
        "TimeseriesRow": obj({"bucket": bucket, "series": string("The series' label.")},
                             ("bucket", "series"), "And one value per metric.", additional=cell),
        "BreakdownRow": obj({"bucket": bucket}, (),
                            f"One value per dimension (`{OTHER}`, `{NONE}` included) and per"
                            " metric; `bucket` first with an interval.", additional=cell),
        "FunnelRow": obj({
            "breakdown": string("With a breakdown: the group's value of the dimension, from the"
                                f" attempt's step-1 event (`{OTHER}`, `{NONE}` included)."),
            "step": integer(1), "label": string(), "event": string(),
            "users": integer(0, description="Users who reached the step."),
            "conversion_from_start": any_of({"type": "number"}, {"type": "null"}),
            "conversion_from_previous": any_of({"type": "number"}, {"type": "null"}),
            "drop_off": integer(0),
            "median_time_to_convert_s": any_of({"type": "number"}, {"type": "null"}),
        }, ("step", "label", "event", "users", "conversion_from_start",
            "conversion_from_previous", "drop_off", "median_time_to_convert_s")),
        "RetentionRow": obj({
            "cohort": string(format="date-time"), "period": integer(0), "cohort_size": integer(0),
            "users": any_of(integer(0), {"type": "null"},
                            description="null for periods that have not started."),
            "rate": any_of({"type": "number"}, {"type": "null"}),
        }, ("cohort", "period", "cohort_size", "users", "rate")),
        "UniquesRow": obj({"users": integer(0)}, ("users",)),
    }


# --- discovery, service endpoints --------------------------------------------------------------

def discovery_schemas() -> dict[str, JSON]:
    days = integer(1, description="The days read (`query.discovery_days`).")
    event = any_of(string(), {"type": "null"}, description="The `event` asked for, if any.")
    return {
        "EventsCatalog": obj({
            "days": days,
            "events": array(obj({
                "event": string(), "count": integer(0),
                "last_seen": string("UTC, to the millisecond.", format="date-time"),
            }, ("event", "count", "last_seen")), high=discovery.MAX_EVENTS,
                description="Most frequent first."),
        }, ("days", "events")),
        "PropertiesCatalog": obj({
            "days": days,
            "event": event,
            "properties": array(obj({
                "property": string("The property key."),
                "dimension": any_of(
                    string(), {"type": "null"},
                    description="The name queries use for it: the key for a hot column, else"
                                " `prop:<key>`; null for a key queries cannot name."),
                "count": integer(0, description="Events that have the key."),
            }, ("property", "dimension", "count")), high=discovery.MAX_PROPERTIES,
                description="Most frequent first."),
        }, ("days", "event", "properties")),
        "ValuesCatalog": obj({
            "days": days,
            "property": ref("Dimension"),
            "event": event,
            "q": string(),
            "values": array(obj({"value": string(), "count": integer(1)}, ("value", "count")),
                            description="Non-empty values, most frequent first."),
        }, ("days", "property", "event", "q", "values")),
    }


def service_schemas() -> dict[str, JSON]:
    return {
        "Error": obj({
            "error": string("What is wrong, naming the field."),
            "field": string("The JSON path of the part of a query at fault (`dimensions[1]`,"
                            " `series[0].filters[1][2]`); empty when the whole request is."),
        }, ("error",), additional=True),
        "EventCount": obj({"count": integer(0), "source": {"const": "events"}},
                          ("count", "source")),
        "Live": obj({
            "active_users": obj({f"{m}m": integer(0) for m in PERIODS_MIN},
                                tuple(f"{m}m" for m in PERIODS_MIN),
                                "Distinct users over the last 1, 5 and 15 minutes (HLL)."),
            "events_this_minute": integer(0),
            "top_events": array(obj({"event_name": string(), "count": integer(0)},
                                    ("event_name", "count")),
                                description="Over the last 5 minutes, most frequent first."),
            "as_of": string("ClickHouse's clock, `YYYY-MM-DD hh:mm:ss.sss` UTC."),
            "source": string(pattern="^rollup:"),
        }, ("active_users", "events_this_minute", "top_events", "as_of", "source")),
        "Health": obj({"status": {"const": "ok"}}, ("status",)),
    }


# --- paths -------------------------------------------------------------------------------------

def operation(summary: str, responses: JSON, tag: str, description: str | None = None,
              **extra: Any) -> JSON:
    op: JSON = {"summary": summary, "tags": [tag], **extra, "responses": responses}
    return _described(op, description)


def collector_paths(settings: Settings) -> JSON:
    refused = error("The event is malformed or breaks a validation rule; the message names the"
                    " field (and `events[i]` in a batch). Nothing was accepted.")
    return {
        "/v1/track": {"post": operation(
            "Send one event", {
                "202": json_response("Acknowledged by Kafka.", ref("Accepted")),
                BAD_REQUEST: refused, TOO_LARGE: too_large(settings),
                UNAVAILABLE: unavailable("Kafka"),
            }, "collector", operationId="track",
            requestBody=json_body(ref("TrackEvent"), "One event."),
        )},
        "/v1/batch": {"post": operation(
            "Send a batch of events", {
                "202": json_response("All acknowledged by Kafka.", ref("Accepted")),
                BAD_REQUEST: refused, TOO_LARGE: too_large(settings),
                UNAVAILABLE: unavailable("Kafka"),
            }, "collector", operationId="batch",
            requestBody=json_body(ref("Batch"), "The events, all or none accepted."),
        )},
    }


def query_paths(settings: Settings) -> JSON:
    limits = settings.query
    discovery_text = (f"Reads the last {limits.discovery_days} days (`query.discovery_days`),"
                      " counting stored rows (a redelivered copy may count twice until merged).")
    event_param = query_parameter("event", ref("EventName"), "Only this event's.")

    def discovery_op(summary: str, schema: str, op_id: str, *params: JSON) -> JSON:
        responses = {"200": json_response(discovery_text, ref(schema))}
        if params:
            responses[BAD_REQUEST] = error("A parameter is malformed; `field` names it.")
        return {"get": operation(summary, {**responses, **query_limits(settings)}, "query",
                                 operationId=op_id, parameters=list(params))}

    return {
        "/v1/query": {"post": operation(
            "Answer a query", {
                "200": json_response("The answer.", ref("QueryAnswer")),
                BAD_REQUEST: error("The request cannot be answered as asked; `field` names the"
                                   " part at fault."),
                TOO_LARGE: too_large(settings),
                **query_limits(settings),
            }, "query", "Time series, breakdowns, funnels, retention and unique users over the"
                        " events; docs/query.md describes every field.",
            operationId="query",
            requestBody=json_body(ref("QueryRequest"), "The query; `kind` says which."),
        )},
        "/v1/schema/events": discovery_op("Event names seen", "EventsCatalog", "schemaEvents"),
        "/v1/schema/properties": discovery_op(
            "Properties seen", "PropertiesCatalog", "schemaProperties", event_param),
        "/v1/schema/values": discovery_op(
            "Values of a property", "ValuesCatalog", "schemaValues",
            query_parameter("property", ref("Dimension"), "A dimension: `country`, `prop:plan`.",
                            required=True),
            event_param,
            query_parameter("q", string(maxLength=MAX_DISCOVERY_Q),
                            "Keep values containing it, case-insensitive."),
            query_parameter("limit", integer(1, discovery.MAX_VALUES, default=50),
                            "Values returned."),
        ),
        "/v1/events/count": {"get": operation(
            "Count events", {
                "200": json_response("Each event counted once.", ref("EventCount")),
                BAD_REQUEST: error("`from` or `to` is malformed, or `from` is not before `to`."),
                UNAVAILABLE: unavailable("ClickHouse"),
            }, "query", operationId="eventsCount", parameters=[
                query_parameter("event_name", string(), "Only events of this name."),
                query_parameter("from", string(), "Inclusive: ISO-8601 (without an offset,"
                                                  " UTC) or epoch milliseconds."),
                query_parameter("to", string(), "Exclusive, as `from`."),
            ],
        )},
        "/v1/live": {"get": operation(
            "Live figures", {
                "200": json_response("From the per-minute rollup, 1-2 s behind.", ref("Live")),
                "500": error("No per-minute rollup with uniques is configured."),
                UNAVAILABLE: unavailable("ClickHouse"),
            }, "query", operationId="live",
        )},
    }


def service_paths() -> JSON:
    return {
        "/health": {"get": operation("Liveness", {
            "200": json_response("The API process is up.", ref("Health")),
        }, "service", operationId="health")},
        "/metrics": {"get": operation("Prometheus counters", {
            "200": {"description": "Accepted events and responses by path and status.",
                    "content": {METRICS_CONTENT_TYPE: {"schema": string()}}},
        }, "service", operationId="metrics")},
        "/openapi.json": {"get": operation("This document", {
            "200": json_response("OpenAPI 3.1.", {"type": "object"}),
        }, "service", operationId="openapi")},
        **dashboard.openapi_paths(),  # the pages, their static files, GET /v1/pipeline
    }


def secured(paths: JSON) -> JSON:
    """*paths* with every /v1/ operation requiring a key: the collector's a write key (or a
    `key` field in the body), the others a read or admin key of one project (app/auth.py)."""
    out: JSON = {}
    for path, item in paths.items():
        if not path.startswith("/v1/"):
            out[path] = item
            continue
        kind = "write" if path in ("/v1/track", "/v1/batch") else "read"
        ops: JSON = {}
        for method, op in item.items():
            responses = {
                **op["responses"],
                "401": error(f"No valid {kind} key: missing, unknown or revoked."),
                "403": error(f"A key of another kind (this endpoint takes a {kind} key"
                             f"{'' if kind == 'write' else ' or an admin key'})."),
                "429": {**error("The key is over its rate; retry after `Retry-After` seconds."),
                        "headers": {"Retry-After": {"schema": integer(1, None),
                                                    "description": "Seconds to wait."}}},
            }
            ops[method] = {**op, "security": [{"key": []}], "responses": responses}
        out[path] = ops
    return out


def _version() -> str:
    try:
        return version("rearview")
    except PackageNotFoundError:
        return "unknown"


def document(settings: Settings | None = None) -> JSON:
    """The OpenAPI 3.1.0 document of the API that *settings* (default: the environment's, as
    `rearview api` reads them) configure."""
    s = settings if settings is not None else Settings()
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "Rearview",
            "version": _version(),
            "summary": "Event analytics: the collector, the query API and the dashboard.",
            "description": "Errors are {\"error\": message} (and `field` for a query), with a 4xx"
                           " for the client's mistakes and a 503 when Kafka or ClickHouse is"
                           " down. docs/query.md is the query API's reference.",
        },
        "tags": [
            {"name": "collector", "description": "Events in."},
            {"name": "query", "description": "Figures out."},
            {"name": "service", "description": "Health, metrics, this document, the dashboard."},
        ],
        "paths": secured({**collector_paths(s), **query_paths(s), **service_paths()})
        if s.auth.required else {**collector_paths(s), **query_paths(s), **service_paths()},
        "components": {
            "securitySchemes": {"key": {
                "type": "http", "scheme": "bearer",
                "description": "An API key of one project: `rearview keys create --project P"
                               " --kind write|read|admin`. The answer covers that project only."}},
            "schemas": {
            **service_schemas(),
            **collector_schemas(s),
            **query_field_schemas(s),
            **query_request_schemas(s),
            **answer_schemas(),
            **discovery_schemas(),
        }},
    }
