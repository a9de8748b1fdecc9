"""GET /openapi.json: a valid OpenAPI 3.1 document that describes exactly the app's routes, whose
schemas agree with the parsers they describe."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from app import api, openapi
from app.api import create_app
from app.collector.normalize import BadEvent, to_event, to_events
from app.query import QueryConfig, discovery
from app.query.errors import BadQuery
from app.query.request import MAX_ROWS, Defaults, parse
from app.settings import Settings
from core.exceptions import ServiceUnavailable

NOW = datetime(2026, 3, 18, 12, 30, tzinfo=UTC)
EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document(Settings())


def schema_validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    """A JSON Schema validator for one component schema, its $refs resolved in the document."""
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                 "components": doc["components"]})


def test_the_document_is_valid_openapi_3_1(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)
    # JSON round trip: what the endpoint serves is the same document.
    assert json.loads(json.dumps(doc)) == doc


def test_the_validator_would_catch_a_dangling_reference(doc: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(doc))
    broken["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"] = {
        "schema": {"$ref": "#/components/schemas/NoSuchSchema"}}
    with pytest.raises(Exception, match="NoSuchSchema"):
        validate(broken, cls=OpenAPIV31SpecValidator)


async def test_the_endpoint_serves_the_document(doc: dict[str, Any]) -> None:
    from aiohttp.test_utils import make_mocked_request

    response = await api.openapi(make_mocked_request("GET", "/openapi.json", app=create_app(Settings())))
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes) and json.loads(response.body) == doc


def test_every_route_is_documented_and_every_documented_operation_is_a_route(
        doc: dict[str, Any]) -> None:
    app = create_app(Settings())  # builds the routes; starts nothing
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.resource is not None}
    # aiohttp answers HEAD for every GET route; OpenAPI implies it too.
    routes = {(m, p) for m, p in routes if not (m == "head" and ("get", p) in routes)}
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m in METHODS}
    assert routes - documented == set(), "routes of app.api missing from app/openapi.py"
    assert documented - routes == set(), "app/openapi.py describes routes app.api does not have"


def test_every_operation_has_an_id_a_success_and_error_bodies(doc: dict[str, Any]) -> None:
    ids = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ids.append(op["operationId"])
            statuses = set(op["responses"])
            assert any(s.startswith("2") for s in statuses), (method, path)
            for status, response in op["responses"].items():
                if status[0] in "45":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
            if "requestBody" in op:
                assert "413" in statuses, (method, path)
    assert len(ids) == len(set(ids))


def test_the_query_endpoint_documents_every_status_the_query_layer_maps(
        doc: dict[str, Any]) -> None:
    responses = doc["paths"]["/v1/query"]["post"]["responses"]
    assert {"200", "400", "413", "422", "503", "504"} <= set(responses)
    request = doc["components"]["schemas"]["QueryRequest"]
    assert request["discriminator"]["propertyName"] == "kind"
    assert set(request["discriminator"]["mapping"]) == {
        "timeseries", "breakdown", "funnel", "retention", "uniques"}


# --- the query request schema agrees with app.query.request.parse ------------------------------

VALID_QUERIES: list[dict[str, Any]] = [
    {"kind": "breakdown", "events": ["button_click"], "dimensions": ["country", "device_type"],
     "date_range": "7d", "timezone": "Europe/Berlin"},
    {"kind": "breakdown", "dimensions": "prop:plan", "metrics": ["users", "sum:price"],
     "order_by": ["sum:price", "asc"], "limit": MAX_ROWS, "interval": "day", "source": "events"},
    {"kind": "breakdown", "dimensions": ["browser"], "order_by": "events", "interval": None},
    {"kind": "timeseries", "events": ["signup", "purchase"], "interval": "hour",
     "date_range": ["2026-03-01", "2026-03-02"]},
    {"kind": "timeseries", "series": [
        {"event": "purchase", "filters": ["gt", "prop:price", 10], "label": "big"},
        {"event": None}, "signup", None,
    ], "metrics": "avg:price", "date_range": ["2026-03-01T10:00", "2026-03-01T12:00+01:00"]},
    {"kind": "timeseries", "filters": ["and", [
        ["is", "country", ["DE", "$none"]],
        ["or", [["contains", "prop:path", "/pricing"], ["regex", "browser", ["^fire"]]]],
        ["not", ["is_set", "prop:coupon"]],
        ["lte", "prop:quantity", ["3"]],
    ]]},
    {"kind": "timeseries", "filters": []},
    {"kind": "funnel", "steps": ["page_view", {"event": "signup", "filters": [
        "is_not", "device_type", "bot"]}, "purchase"], "window": "24h", "order": "strict",
     "breakdown": "prop:plan", "limit": 5},
    {"kind": "funnel", "steps": ["a", "b"], "window": 3600},
    {"kind": "retention", "start_event": {"event": "signup"}, "return_event": "purchase",
     "period": "week", "periods": 12, "cohort": "recurring"},
    {"kind": "retention", "start_event": "signup"},
    {"kind": "uniques", "events": "purchase", "method": "hll", "date_range": "all"},
    {"kind": "uniques", "date_range": "30min", "source": "rollup"},
]

INVALID_QUERIES: list[dict[str, Any]] = [
    {"kind": "histogram"},
    {"dimensions": ["country"]},
    {"kind": "breakdown"},
    {"kind": "breakdown", "dimensions": ["cuntry"]},
    {"kind": "breakdown", "dimensions": ["country", "browser", "device_type", "event_name"]},
    {"kind": "breakdown", "dimensions": ["country"], "limit": MAX_ROWS + 1},
    {"kind": "breakdown", "dimensions": ["country"], "limit": 0},
    {"kind": "breakdown", "dimensions": ["country"], "metrics": ["median"]},
    {"kind": "breakdown", "dimensions": ["country"], "order_by": ["events", "up"]},
    {"kind": "breakdown", "dimensions": ["country"], "interval": "year"},
    {"kind": "timeseries", "colour": "red"},
    {"kind": "timeseries", "series": []},
    {"kind": "timeseries", "series": [f"e{i}" for i in range(11)]},
    {"kind": "timeseries", "metrics": []},
    {"kind": "timeseries", "date_range": "fortnight"},
    {"kind": "timeseries", "date_range": ["2026-03-01"]},
    {"kind": "timeseries", "source": "cache"},
    {"kind": "timeseries", "filters": ["is_set", "country", ["x"]]},
    {"kind": "timeseries", "filters": ["is", "country"]},
    {"kind": "timeseries", "filters": ["like", "country", ["x"]]},
    {"kind": "timeseries", "filters": ["and", []]},
    {"kind": "timeseries", "filters": ["gt", "prop:price", [1, 2]]},
    {"kind": "timeseries", "filters": ["is", "country", [["DE"]]]},
    {"kind": "timeseries", "events": ["not an event!"]},
    {"kind": "funnel", "steps": ["only_one"]},
    {"kind": "funnel", "steps": ["a", {"filters": ["is_set", "country"]}]},
    {"kind": "funnel", "steps": ["a", "b"], "window": "fortnight"},
    {"kind": "funnel", "steps": ["a", "b"], "order": "any"},
    {"kind": "retention"},
    {"kind": "retention", "start_event": "signup", "periods": 0},
    {"kind": "retention", "start_event": "signup", "period": "hour"},
    {"kind": "retention", "start_event": "signup", "cohort": "all"},
    {"kind": "uniques", "method": "guess"},
]


def _parses(body: Any) -> bool:
    try:
        parse(body, Defaults(), NOW)
    except BadQuery:
        return False
    return True


@pytest.mark.parametrize("body", VALID_QUERIES)
def test_requests_parse_accepts_the_schema_accepts(doc: dict[str, Any], body: Any) -> None:
    assert _parses(body)
    errors = [e.message for e in schema_validator(doc, "QueryRequest").iter_errors(body)]
    assert errors == []


@pytest.mark.parametrize("body", INVALID_QUERIES)
def test_requests_parse_refuses_the_schema_refuses(doc: dict[str, Any], body: Any) -> None:
    assert not _parses(body)
    assert not schema_validator(doc, "QueryRequest").is_valid(body)


def test_the_examples_of_docs_query_md_are_valid_requests(doc: dict[str, Any]) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "query.md").read_text()
    body = json.loads(text.split("-d '", 1)[1].split("'", 1)[0])
    assert schema_validator(doc, "QueryRequest").is_valid(body)
    assert _parses(body)


def test_stated_defaults_are_the_parsers(doc: dict[str, Any]) -> None:
    minimal: dict[str, dict[str, Any]] = {"timeseries": {}, "breakdown": {"dimensions": ["country"]},
               "funnel": {"steps": ["a", "b"]}, "retention": {"start_event": "a"}, "uniques": {}}
    schemas = doc["components"]["schemas"]
    checked = 0
    for kind, fields in minimal.items():
        normalized = parse({"kind": kind, **fields}, Defaults(), NOW).to_dict()
        for name, prop in schemas[f"{kind.capitalize()}Query"]["properties"].items():
            if "default" in prop:
                assert normalized[name] == prop["default"], (kind, name)
                checked += 1
    assert checked >= 10


def _refused(body: dict[str, Any], field: str) -> str | None:
    """The message of the BadQuery naming *field*, None when *body* parses."""
    try:
        parse(body, Defaults(), NOW)
    except BadQuery as exc:
        assert exc.field == field, exc
        return exc.reason
    return None


def test_bounds_the_parser_keeps_as_literals_are_the_documents() -> None:
    events = [f"e{i}" for i in range(openapi.MAX_EVENTS + 1)]
    assert _refused({"kind": "uniques", "events": events[:-1]}, "events") is None
    assert _refused({"kind": "uniques", "events": events}, "events")

    metrics = [f"sum:p{i}" for i in range(openapi.MAX_METRICS + 1)]
    assert _refused({"kind": "timeseries", "metrics": metrics[:-1]}, "metrics") is None
    assert _refused({"kind": "timeseries", "metrics": metrics}, "metrics")

    label = "x" * openapi.MAX_LABEL
    assert _refused({"kind": "timeseries", "series": [{"label": label}]}, "") is None
    assert _refused({"kind": "timeseries", "series": [{"label": label + "x"}]}, "series[0].label")

    value = "v" * openapi.MAX_FILTER_VALUE_CHARS
    assert _refused({"kind": "uniques", "filters": ["is", "country", [value]]}, "") is None
    assert _refused({"kind": "uniques", "filters": ["is", "country", [value + "v"]]},
                    "filters[2][0]")

    # Past the length the name is not looked up at all; at it, it is (and is unknown).
    zone = "Europe/" + "X" * (openapi.MAX_TIMEZONE_CHARS - len("Europe/"))
    at_limit = _refused({"kind": "uniques", "timezone": zone}, "timezone")
    past_limit = _refused({"kind": "uniques", "timezone": zone + "X"}, "timezone")
    assert at_limit is not None and at_limit.startswith("unknown timezone")
    assert past_limit is not None and not past_limit.startswith("unknown timezone")

    # Likewise an end of a range: parsed up to the length, refused unread past it.
    point = "2026-03-01T10:00" + "0" * (openapi.MAX_RANGE_POINT_CHARS - 16)
    at_limit = _refused({"kind": "uniques", "date_range": [point, point]}, "date_range")
    past_limit = _refused({"kind": "uniques", "date_range": [point + "0", point]}, "date_range")
    assert at_limit is not None and ", got" in at_limit
    assert past_limit is not None and ", got" not in past_limit


# --- the collector's schemas agree with app.collector.normalize --------------------------------

def test_the_shipped_example_events_are_valid(doc: dict[str, Any]) -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        body = json.loads(path.read_text())
        name = "Batch" if path.name == "batch.json" else "TrackEvent"
        errors = [e.message for e in schema_validator(doc, name).iter_errors(body)]
        assert errors == [], path.name
        (to_events if name == "Batch" else to_event)(body, received_at_ms=1_796_116_500_000)


@pytest.mark.parametrize("body", [
    {"user_id": "u"},
    {"event": "x"},
    {"event": "x", "user_id": ""},
    {"event": "x", "user_id": True},
    {"event": "x", "user_id": "u", "properties": {"a": {"b": 1}}},
    {"event": "x", "user_id": "u", "properties": {"a": [1]}},
    {"event": "x", "user_id": "u", "properties": []},
    {"event": "x", "user_id": "u", "context": {"library": 3}},
    {"event": "x", "user_id": "u", "timestamp": True},
])
def test_events_normalize_refuses_the_schema_refuses(doc: dict[str, Any], body: Any) -> None:
    with pytest.raises(BadEvent):
        to_event(body, received_at_ms=1_796_116_500_000)
    assert not schema_validator(doc, "TrackEvent").is_valid(body)


def test_collector_limits_come_from_the_settings() -> None:
    settings = Settings().model_copy(update={
        "api": Settings().api.model_copy(update={"max_batch_events": 7, "max_body_bytes": 1234}),
        "validation": Settings().validation.model_copy(update={"max_properties": 3}),
    })
    doc = openapi.document(settings)
    schemas = doc["components"]["schemas"]
    assert schemas["TrackEvent"]["properties"]["properties"]["maxProperties"] == 3
    assert schemas["Batch"]["anyOf"][1]["maxItems"] == 7
    assert "1234 bytes" in doc["paths"]["/v1/track"]["post"]["responses"]["413"]["description"]


# --- discovery ---------------------------------------------------------------------------------

class NoClickHouse:
    """Records the SQL it is asked to run, then fails as an unreachable server would."""

    def __init__(self) -> None:
        self.sql: list[str] = []

    def query(self, sql: str, **_kwargs: Any) -> Any:
        self.sql.append(sql)
        raise ConnectionRefusedError("no ClickHouse here")


def test_discovery_bounds_and_default_are_the_documents(doc: dict[str, Any]) -> None:
    params = {p["name"]: p["schema"] for p in
              doc["paths"]["/v1/schema/values"]["get"]["parameters"]}
    client, config = NoClickHouse(), QueryConfig()
    q = "x" * params["q"]["maxLength"]
    with pytest.raises(BadQuery) as refused:
        discovery.values(client, config, "country", None, q + "x", None)  # type: ignore[arg-type]
    assert refused.value.field == "q" and client.sql == []
    with pytest.raises(ServiceUnavailable):  # past the checks, to ClickHouse
        discovery.values(client, config, "country", None, q, None)  # type: ignore[arg-type]
    assert f"LIMIT {params['limit']['default']}" in client.sql[-1]
    with pytest.raises(BadQuery) as refused:
        discovery.values(client, config, "country", None, "",  # type: ignore[arg-type]
                         params["limit"]["maximum"] + 1)
    assert refused.value.field == "limit"
