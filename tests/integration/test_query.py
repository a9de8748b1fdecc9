"""The query API against the real ClickHouse engine: timezones, funnels, safety, limits, discovery.

Events are inserted straight into the events table of a migrated database (the pipeline's path
into that table is tested elsewhere; test_query_oracle.py sends a dataset through it), and
queries go through a real `rearview api` over HTTP, or the function API where a test checks
the SQL's semantics on many cases.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from app import clickhouse
from app.query import QueryConfig, run
from tests.integration.conftest import Pipeline, Services, make_pipeline

pytestmark = pytest.mark.integration

COLUMNS = ["event_id", "project_id", "event_name", "user_id", "ts", "received_at", "properties",
           "schema_id", "_partition", "_offset"]


def insert(p: Pipeline, events: list[tuple[str, str, datetime, dict[str, str]]]) -> None:
    """(event name, user id, time, properties) rows, straight into the events table."""
    rows = [[uuid.uuid4(), "default", name, user, ts, ts, props, 1, 0, i]
            for i, (name, user, ts, props) in enumerate(events)]
    p.ch.insert("events", rows, column_names=COLUMNS)


@dataclass
class Api:
    pipeline: Pipeline
    url: str

    def query(self, body: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/query", json=body, timeout=60)

    def ok(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.query(body)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def api(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    # No rollups: these tests insert straight into the events table, which rollups never see.
    p = make_pipeline(services, tmp_path_factory.mktemp("query"), aggregate={"rollups": []})
    try:
        yield Api(p, p.start_api())
    finally:
        p.close()


# --- timezones -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("tz", "spring", "autumn"),
    [("Europe/Berlin", "2026-03-29", "2026-10-25"), ("America/New_York", "2026-03-08", "2026-11-01")],
)
def test_days_across_clock_changes_are_whole_local_days(api: Api, tz: str, spring: str,
                                                        autumn: str) -> None:
    """One event every UTC hour: a local day holds one event per hour it lasts, so the day
    clocks go forward counts 23 and the day they go back 25, with no day missing or twice."""
    name = f"tick_{tz.split('/')[1].lower()}"
    events = []
    for day in (spring, autumn):
        start = datetime.fromisoformat(day).replace(tzinfo=UTC) - timedelta(days=2)
        events += [(name, "u", start + timedelta(hours=h), {}) for h in range(24 * 5)]
    insert(api.pipeline, events)
    for day, changed in ((spring, 23), (autumn, 25)):
        first = (datetime.fromisoformat(day) - timedelta(days=1)).date().isoformat()
        last = (datetime.fromisoformat(day) + timedelta(days=1)).date().isoformat()
        answer = api.ok({"kind": "timeseries", "events": [name], "interval": "day",
                         "timezone": tz, "date_range": [first, last]})
        assert [(r["bucket"][:10], r["events"]) for r in answer["rows"]] == [
            (first, 24), (day, changed), (last, 24)]
        hourly = api.ok({"kind": "timeseries", "events": [name], "interval": "hour",
                         "timezone": tz, "date_range": [day, day]})
        # Every real hour of the day is its own bucket, even the wall-clock hour that repeats.
        assert len(hourly["rows"]) == changed == len({r["bucket"] for r in hourly["rows"]})
        assert all(r["events"] == 1 for r in hourly["rows"])


# --- funnels against a brute force ---------------------------------------------------------

STEPS = ["view", "cart", "pay", "done"]


def _brute_force_funnel(events: list[tuple[int, str]], end_ms: int, window_ms: int,
                        strict: bool) -> list[int]:
    """docs/query.md's rule by enumeration: the step times of the user's attempt (the one that
    reaches the deepest step and, of those, started latest), [] when none starts."""
    ordered = sorted(events)
    best: list[int] = []
    for i, (t0, name) in enumerate(ordered):
        if name != STEPS[0] or t0 >= end_ms:
            continue
        chain = [t0]
        for t, other in ordered[i + 1:]:
            if len(chain) == len(STEPS) or t - t0 > window_ms:
                break
            if other == STEPS[len(chain)]:
                chain.append(t)
            elif strict:
                break
        if len(chain) > len(best) or (len(chain) == len(best) and chain[0] > best[0]):
            best = chain
    return best


@pytest.mark.parametrize("order", ["ordered", "strict"])
def test_funnel_steps_and_times_match_a_brute_force(api: Api, order: str) -> None:
    rnd = random.Random(7 if order == "ordered" else 8)
    names = [*STEPS, "noise"]
    start = datetime(2025, 5, 1, tzinfo=UTC)
    end = start + timedelta(days=3)
    by_user: dict[str, list[tuple[int, str]]] = {}
    rows = []
    for u in range(400):
        user = f"{order}-{u}"
        times = sorted(rnd.sample(range(4 * 86_400_000), rnd.randint(1, 14)))
        # Some users walk the steps in order (now and then with noise between): random
        # events alone rarely reach the last step of a strict funnel.
        walk = rnd.random() < 0.4
        for j, t in enumerate(times):
            if walk and j < len(STEPS) and rnd.random() < 0.9:
                name = STEPS[j]
            else:
                name = rnd.choices(names, weights=[5, 4, 3, 2, 3])[0]
            by_user.setdefault(user, []).append((int(start.timestamp() * 1000) + t, name))
            rows.append((name, user, start + timedelta(milliseconds=t), {"order": order}))
    insert(api.pipeline, rows)
    window_ms = 12 * 3_600_000
    expected_users = [0] * len(STEPS)
    deltas: list[list[int]] = [[] for _ in STEPS]
    for events in by_user.values():
        chain = _brute_force_funnel(events, int(end.timestamp() * 1000), window_ms, order == "strict")
        for k in range(len(chain)):
            expected_users[k] += 1
            if k:
                deltas[k].append(chain[k] - chain[k - 1])
    answer = run(api.pipeline.ch, {
        "kind": "funnel", "steps": STEPS, "window": "12h", "order": order,
        "filters": ["is", "prop:order", [order]],
        "date_range": [start.isoformat(), end.isoformat()]}, QueryConfig())
    assert [r["users"] for r in answer["rows"]] == expected_users
    assert expected_users[-1] > 0  # the data reaches the last step
    for k, row in enumerate(answer["rows"]):
        if k == 0:
            assert row["median_time_to_convert_s"] is None
        else:
            lower_median = sorted(deltas[k])[(len(deltas[k]) - 1) // 2]
            assert row["median_time_to_convert_s"] == lower_median / 1000
            assert row["drop_off"] == expected_users[k - 1] - expected_users[k]


# --- safety --------------------------------------------------------------------------------

HOSTILE = [
    "x'; DROP TABLE events; --",
    "') OR 1=1 --",
    "`; SELECT * FROM system.users --",
    "{p0:String}",
    "\\'; DROP TABLE canary; --",
    "\u0000\u202e' OR ''='",
]


def _stored(p: Pipeline) -> tuple[int, int]:
    return (int(p.scalar("SELECT count() FROM events")),
            int(p.scalar("SELECT count() FROM system.tables WHERE database = currentDatabase()"
                         " AND name = 'canary'")))


def test_injection_through_every_field_is_refused_or_harmless(api: Api) -> None:
    p = api.pipeline
    p.ch.command("CREATE TABLE IF NOT EXISTS canary (x UInt8) ENGINE = Memory")
    insert(p, [("probe", "u1", datetime(2025, 1, 5, tzinfo=UTC), {"plan": "pro"})])
    before = _stored(p)
    base = {"kind": "breakdown", "dimensions": ["prop:plan"], "date_range": ["2025-01-01", "2025-01-10"]}
    for s in HOSTILE:
        # Where an identifier goes (dimensions, property keys, metrics, events, timezone, kinds,
        # operators, order): a 400 naming the field.
        identifier_fields = [
            ({**base, "kind": s}, "kind"),
            ({**base, "dimensions": [s]}, "dimensions[0]"),
            ({**base, "dimensions": [f"prop:{s}"]}, "dimensions[0]"),
            ({**base, "metrics": [f"sum:{s}"]}, "metrics[0]"),
            ({**base, "events": [s]}, "events[0]"),
            ({**base, "timezone": s}, "timezone"),
            ({**base, "date_range": s}, "date_range"),
            ({**base, "date_range": [s, "2025-01-10"]}, "date_range"),
            ({**base, "filters": [s, "country", ["US"]]}, "filters"),
            ({**base, "filters": ["is", f"prop:{s}", ["US"]]}, "filters[1]"),
            ({**base, "order_by": [s, "desc"]}, "order_by[0]"),
            ({**base, "order_by": ["events", s]}, "order_by"),
            ({**base, "source": s}, "source"),
            ({"kind": "funnel", "steps": ["probe", s]}, "steps[1].event"),
            ({"kind": "funnel", "steps": ["probe", "probe"], "breakdown": s}, "breakdown"),
            ({"kind": "funnel", "steps": ["probe", "probe"], "window": s}, "window"),
            ({"kind": "retention", "start_event": "probe", "period": s}, "period"),
            ({"kind": "uniques", "method": s}, "method"),
        ]
        for body, field in identifier_fields:
            response = api.query(body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["field"] == field, (body, response.json())
        # Where a value goes (filter values, labels): data, compared literally, matching nothing.
        for body in (
            {**base, "filters": ["is", "prop:plan", [s]]},
            {**base, "filters": ["contains", "country", [s]]},
            {**base, "filters": ["not", ["is", "event_name", [s]]]},
            {"kind": "timeseries", "series": [{"event": "probe", "label": s}],
             "date_range": ["2025-01-01", "2025-01-10"]},
        ):
            response = api.query(body)
            assert response.status_code == 200, (body, response.text)
        assert api.ok({**base, "filters": ["is", "prop:plan", [s]]})["rows"] == [
            {"prop:plan": "$other", "events": 0}]
        labelled = api.ok({"kind": "timeseries", "series": [{"event": "probe", "label": s}],
                           "date_range": ["2025-01-01", "2025-01-10"]})
        assert {r["series"] for r in labelled["rows"]} == {s}
    # An invalid regular expression is the user's mistake, not an outage.
    response = api.query({**base, "filters": ["regex", "prop:plan", ["(unclosed"]]})
    assert response.status_code == 400 and response.json()["field"] == "filters"
    assert _stored(p) == before == (before[0], 1)


def test_a_body_that_is_not_json_is_a_400(api: Api) -> None:
    response = httpx.post(f"{api.url}/v1/query", content=b"{kind: timeseries", timeout=30)
    assert response.status_code == 400 and "error" in response.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "funnel", "steps": [f"s{i}" for i in range(11)]}, "steps"),
        ({"kind": "funnel", "steps": ["a", "b"], "window": "91d"}, "window"),
        ({"kind": "breakdown", "dimensions": ["country", "browser", "device_type", "event_name"]},
         "dimensions"),
        ({"kind": "breakdown", "dimensions": ["country"], "limit": 10_001}, "limit"),
        ({"kind": "timeseries", "interval": "minute", "date_range": "30d"}, "interval"),
        ({"kind": "breakdown", "dimensions": ["country"], "interval": "hour", "limit": 500,
          "date_range": "30d"}, "interval"),
        ({"kind": "retention", "start_event": "a", "periods": 90, "date_range": "365d"}, "periods"),
    ],
)
def test_limits_are_a_400_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.query(body)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == field


def test_a_query_past_the_time_or_memory_limit_is_stopped(services: Services,
                                                          tmp_path: Any) -> None:
    """ClickHouse stops the query at the configured limits; the API answers 504 or 422 with a
    message naming the setting, at once, and serves the next request normally."""
    p = make_pipeline(services, tmp_path, aggregate={"rollups": []})
    try:
        p.ch.command(
            "INSERT INTO events (event_id, project_id, event_name, user_id, ts, received_at,"
            " properties, schema_id, _partition, _offset) SELECT generateUUIDv4(), 'default',"
            " 'load', toString(number), toDateTime64('2025-02-01', 3, 'UTC') + number / 100,"
            " now64(3), map('k', toString(number % 1000)), 1, 0, number FROM numbers(3000000)")
        heavy = {"kind": "breakdown", "dimensions": ["prop:k"], "metrics": ["users"],
                 "filters": ["regex", "prop:k", ["^(1|2|3)+$"]], "date_range": ["2025-01-01", "2025-03-01"]}
        slow = p.settings.query.model_copy(update={"max_execution_time_s": 0.05})
        p.settings = p.settings.model_copy(update={"query": slow})
        url = p.start_api()
        response = httpx.post(f"{url}/v1/query", json=heavy, timeout=60)
        assert response.status_code == 504, response.text
        assert "max_execution_time_s" in response.json()["error"]
        small = p.settings.query.model_copy(update={"max_execution_time_s": 60,
                                                     "max_memory_usage_bytes": 1024**2})
        p.settings = p.settings.model_copy(update={"query": small})
        url = p.start_api()
        response = httpx.post(f"{url}/v1/query", json=heavy, timeout=60)
        assert response.status_code == 422, response.text
        assert "max_memory_usage_bytes" in response.json()["error"]
        light = {"kind": "uniques", "events": ["nothing"], "date_range": ["2025-01-01", "2025-01-02"]}
        assert httpx.post(f"{url}/v1/query", json=light, timeout=60).json()["rows"] == [{"users": 0}]
    finally:
        p.close()


# --- discovery -----------------------------------------------------------------------------

def test_discovery_lists_events_properties_and_values(api: Api) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    rows = []
    for i in range(30):
        rows.append(("disc_signup", f"d{i}", now - timedelta(hours=i), {"plan": "pro" if i % 3 else "free",
                                                                       "country": "DE" if i % 2 else "FR"}))
    rows += [("disc_click", "d1", now - timedelta(days=2), {"button": "buy"})]
    rows += [("disc_old", "d1", now - timedelta(days=45), {"plan": "old"})]  # past 30 days
    insert(api.pipeline, rows)
    url = api.url
    events = httpx.get(f"{url}/v1/schema/events", timeout=30).json()["events"]
    by_name = {e["event"]: e for e in events}
    assert by_name["disc_signup"]["count"] == 30 and by_name["disc_click"]["count"] == 1
    assert "disc_old" not in by_name
    assert by_name["disc_signup"]["last_seen"].startswith(now.isoformat(timespec="seconds")[:19])
    props = httpx.get(f"{url}/v1/schema/properties", params={"event": "disc_signup"}, timeout=30).json()
    assert {(p["property"], p["dimension"], p["count"]) for p in props["properties"]} == {
        ("plan", "prop:plan", 30), ("country", "country", 30)}
    values = httpx.get(f"{url}/v1/schema/values", params={"property": "prop:plan", "event": "disc_signup"},
                       timeout=30).json()["values"]
    assert values == [{"value": "pro", "count": 20}, {"value": "free", "count": 10}]
    typed = httpx.get(f"{url}/v1/schema/values", params={"property": "country", "q": "d"}, timeout=30).json()
    assert [v["value"] for v in typed["values"]] == ["DE"]
    bad = httpx.get(f"{url}/v1/schema/values", params={"property": "prop:a b"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["field"] == "property"


def test_the_function_api_and_http_give_the_same_answer(api: Api) -> None:
    day = datetime(2024, 7, 1, tzinfo=UTC)
    insert(api.pipeline, [(name, f"f{i}", day + timedelta(hours=i), {"n": str(i)})
                          for i in range(40) for name in ("fn_a", "fn_b") if i % (2 if name == "fn_b" else 1) == 0])
    body = {"kind": "timeseries", "events": ["fn_a", "fn_b"], "interval": "day",
            "metrics": ["events", "users", "sum:n"], "date_range": ["2024-07-01", "2024-07-03"]}
    client = clickhouse.connect(api.pipeline.settings.clickhouse)
    try:
        direct = run(client, body, QueryConfig.from_settings(api.pipeline.settings))
    finally:
        client.close()
    over_http = api.ok(body)
    assert direct["rows"] == over_http["rows"] and direct["query"] == over_http["query"]


def test_copies_of_stored_rows_change_no_answer(api: Api) -> None:
    """A redelivered row can sit in the events table twice until a merge: counts read it once
    (FINAL), and distinct users (uniques, retention, read without FINAL) cannot change."""
    day = datetime(2024, 3, 4, tzinfo=UTC)
    rows = [[uuid.uuid4(), "default", name, f"c{u}", day + timedelta(days=d, hours=u), day, {}, 1, 0, u]
            for u in range(10) for d in range(3) for name in ("copy_a", "copy_b") if (u + d) % 2 == 0 or name == "copy_a"]
    for _ in range(2):  # the same rows twice: two parts, not merged yet
        api.pipeline.ch.insert("events", rows, column_names=COLUMNS)
    window = ["2024-03-04", "2024-03-06"]
    counted = api.ok({"kind": "breakdown", "dimensions": ["event_name"], "events": ["copy_a", "copy_b"],
                      "metrics": ["events", "users"], "date_range": window})
    assert {r["event_name"]: (r["events"], r["users"]) for r in counted["rows"]} == {
        "copy_a": (30, 10), "copy_b": (15, 10), "$other": (0, 0)}
    assert api.ok({"kind": "uniques", "events": ["copy_b"], "date_range": window})["rows"] == [{"users": 10}]
    retained = api.ok({"kind": "retention", "start_event": "copy_a", "return_event": "copy_b",
                       "period": "day", "periods": 3, "date_range": ["2024-03-04", "2024-03-04"]})
    # Day 0: all 10; day 1: users with (u + 1) even; day 2: users with u even.
    assert [(r["period"], r["users"]) for r in retained["rows"]] == [(0, 10), (1, 5), (2, 5)]
