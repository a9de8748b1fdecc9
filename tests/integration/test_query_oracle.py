"""The query API against an independent oracle, on the real pipeline.

A seeded dataset (tests/integration/query_dataset.py: ~10k events of 400 users over ten days,
a signup funnel, priced purchases, countries and plans that are sometimes absent) goes through
the collector (`POST /v1/batch`), the worker and ClickHouse exactly as an app's events would.
Once every event is stored and every rollup agrees with the events, each query kind is asked
over HTTP (`POST /v1/query`) and through `rearview query`, and every figure must equal what a
plain-Python reading of docs/query.md computes from the same events: the oracle never looks at
app/query or its SQL.

Requests that a rollup covers are asked twice, ``"source": "auto"`` (answered by a rollup) and
``"source": "events"`` (the raw events): both must give the oracle's rows. Every range is a pair
of absolute dates, so answers do not depend on when the test runs (except retention periods
that have not started yet, which the oracle derives from the clock at the time of the request).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from app.verify import verify
from tables.rollups import DEFAULT_ROLLUPS, RollupSpec
from tests.integration import query_dataset as oracle
from tests.integration.conftest import Pipeline, Services, make_pipeline, wait_for
from tests.integration.query_dataset import Dataset, Range

pytestmark = pytest.mark.integration

UTC_ZONE = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
PRICE_ROLLUP = RollupSpec(name="price_by_name_country_1h", dimensions=("event_name", "country"),
                          granularity="hour", allowed_lateness_s=3600, sums=("price",))
ROLLUPS = [*DEFAULT_ROLLUPS, PRICE_ROLLUP]
FUNNEL_STEPS: list[oracle.Step] = [("signup", None), ("email_verified", None),
                                   ("first_purchase", None)]
FUNNEL_LABELS = ["Signed up", "Verified", "Bought"]
# Purchases count only above 20; every other event passes that branch.
FILTER_TREE: list[Any] = ["and", [
    ["or", [["is", "country", ["DE", "FR", "$none"]], ["contains", "prop:page", ["pricing"]]]],
    ["not", ["is", "device_type", ["tablet"]]],
    ["or", [["gt", "prop:price", [20]],
            ["not", ["is", "event_name", ["purchase", "first_purchase"]]]]],
]]


@dataclass
class Stack:
    """The pipeline holding the dataset, its API's URL and the dataset itself."""

    pipeline: Pipeline
    api: str
    data: Dataset
    http: httpx.Client

    def range(self, first: int, last: int, tz: ZoneInfo = UTC_ZONE) -> Range:
        """The dates day0+first .. day0+last, whole local days of *tz*."""
        return Range(tz, self.data.day(first), self.data.day(last))

    def ask(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(f"{self.api}/v1/query", json=body)
        assert resp.status_code == 200, f"{resp.status_code} {resp.text[:2000]} for {body}"
        answer: dict[str, Any] = resp.json()
        return answer


def _converged(pipeline: Pipeline, total: int) -> bool:
    """Every event stored, and every rollup equal to a GROUP BY over them, holding them all."""
    if pipeline.stored() < total:
        return False
    reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
    return all(r.verdict == "exact" and r.rollup_events == total for r in reports)


@pytest.fixture(scope="module")
def stack(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One pipeline for the whole module, holding the dataset, with the rollups caught up."""
    data = oracle.generate(datetime.now(UTC).date())
    pipeline = make_pipeline(services, tmp_path_factory.mktemp("oracle"),
                             aggregate={"rollups": ROLLUPS})
    http = httpx.Client(timeout=60)
    try:
        pipeline.start_worker()
        api = pipeline.start_api()
        payload = [e.to_json() for e in data.events]
        for i in range(0, len(payload), 2_000):
            resp = http.post(f"{api}/v1/batch", json={"events": payload[i:i + 2_000]})
            assert resp.status_code == 202, resp.text
        total = len(payload)
        wait_for(lambda: pipeline.stored() >= total, 90, f"{total} events stored")
        wait_for(lambda: _converged(pipeline, total), 60, "every rollup equal to the events")
        yield Stack(pipeline, api, data, http)
    finally:
        http.close()
        pipeline.close()


# --- comparing answers ---------------------------------------------------------------------


def expect(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The oracle's rows as the JSON answer must hold them: exact fractions (averages, rates,
    conversions) become floats compared to 1e-12 (a division done elsewhere may round its
    last bit differently), everything else is compared exactly."""
    return [{k: pytest.approx(float(v), rel=1e-12, abs=0) if isinstance(v, Fraction) else v
             for k, v in row.items()} for row in rows]


def by(*keys: str) -> Callable[[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Rows sorted by *keys* (for answers whose row order docs/query.md does not fix)."""
    return lambda rows: sorted(rows, key=lambda r: tuple(str(r[k]) for k in keys))


@dataclass
class Case:
    """A request, the oracle's rows, and what else the answer must say."""

    body: dict[str, Any]
    rows: list[dict[str, Any]]
    order: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None  # None: as is
    source: str | None = None  # "events", or "rollup:" for any rollup
    meta: dict[str, Any] = field(default_factory=dict)

    def check(self, answer: dict[str, Any], how: str) -> None:
        got = answer["rows"]
        want = self.rows
        if self.order is not None:
            got, want = self.order(got), self.order(want)
        assert got == expect(want), f"{how}: rows differ from the oracle for {self.body}"
        assert answer["columns"] == list(self.rows[0]), f"{how}: columns"
        if self.source == "rollup:":
            assert answer["source"].startswith("rollup:"), (how, answer["source"], answer["meta"])
        elif self.source is not None:
            assert answer["source"] == self.source, (how, answer["source"])
        for key, value in self.meta.items():
            assert answer["meta"].get(key) == value, (how, key, answer["meta"])


def _sources(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"auto": {**body, "source": "auto"}, "events": {**body, "source": "events"}}


# --- the requests and their expected answers -----------------------------------------------


def timeseries_cases(s: Stack) -> dict[str, Case]:
    """Counts by day in UTC and in Berlin (a rollup covers both: Berlin midnights are whole
    UTC hours), by week, by day and hour around a clock change (a 23- or 25-hour day; twice
    02:00 or no 02:00), sums of price by day, and users of any event (only the events can
    answer)."""
    cases: dict[str, Case] = {}
    series = [("page_view", None, "views"), ("purchase", None, "purchases")]
    for tz_name, tz in (("UTC", UTC_ZONE), ("Europe/Berlin", BERLIN)):
        r = s.range(1, 8, tz)
        body = {"kind": "timeseries", "timezone": tz_name, "date_range": r.json(),
                "interval": "day", "metrics": ["events"],
                "series": [{"event": e, "label": label} for e, _, label in series]}
        rows = oracle.timeseries(s.data.events, r, series, ["events"])
        for source, b in _sources(body).items():
            cases[f"counts_by_day_{tz_name}_{source}"] = Case(
                b, rows, by("series", "bucket"), "rollup:" if source == "auto" else "events")
    r = s.range(1, 8, BERLIN)
    weekly = {"kind": "timeseries", "timezone": "Europe/Berlin", "date_range": r.json(),
              "interval": "week", "series": [{"event": None, "label": "all"}],
              "filters": ["is", "country", ["DE", "$none"]]}
    rows = oracle.timeseries(s.data.events, r, [(None, None, "all")], ["events"], "week",
                             ["is", "country", ["DE", "$none"]])
    for source, b in _sources(weekly).items():
        cases[f"counts_by_week_{source}"] = Case(b, rows, by("series", "bucket"),
                                                "rollup:" if source == "auto" else "events")
    change = s.data.clock_change  # a Berlin day of 23 or 25 hours
    around = Range(BERLIN, change - timedelta(days=1), change + timedelta(days=1))
    on_the_day = Range(BERLIN, change, change)
    for interval, r_dst in (("day", around), ("hour", on_the_day)):
        body = {"kind": "timeseries", "timezone": "Europe/Berlin", "date_range": r_dst.json(),
                "interval": interval, "series": [{"event": None, "label": "all"}]}
        rows = oracle.timeseries(s.data.events, r_dst, [(None, None, "all")], ["events"], interval)
        for source, b in _sources(body).items():
            cases[f"clock_change_{interval}s_{source}"] = Case(
                b, rows, by("series", "bucket"), "rollup:" if source == "auto" else "events")
    price_series = [("purchase", None, "revenue")]
    body = {"kind": "timeseries", "timezone": "Europe/Berlin", "date_range": r.json(),
            "metrics": ["sum:price", "events"], "series": [{"event": "purchase", "label": "revenue"}]}
    rows = oracle.timeseries(s.data.events, r, price_series, ["sum:price", "events"])
    for source, b in _sources(body).items():
        cases[f"price_by_day_{source}"] = Case(b, rows, by("series", "bucket"),
                                              "rollup:" if source == "auto" else "events")
    mobile: list[Any] = ["is", "device_type", ["mobile"]]
    any_series = [(None, None, "all"), (None, mobile, "mobile"), ("purchase", None, "buyers")]
    cases["users_by_day_berlin"] = Case(
        {"kind": "timeseries", "timezone": "Europe/Berlin", "date_range": r.json(),
         "metrics": ["events", "users", "avg:price"],
         "series": [{"event": e, "filters": f, "label": label} for e, f, label in any_series]},
        oracle.timeseries(s.data.events, r, any_series, ["events", "users", "avg:price"]),
        by("series", "bucket"), "events")
    return cases


def breakdown_cases(s: Stack) -> dict[str, Case]:
    """Breakdowns: ranked groups (descending and ascending), ``$other`` (with its distinct
    users), ``$none``, sums and averages of price, a time series per group, and a filter
    tree."""
    cases: dict[str, Case] = {}
    r = s.range(1, 8)
    events = s.data.events

    def case(body: dict[str, Any], source: str | None = None) -> Case:
        order = body.get("order_by")
        answer = oracle.breakdown(events, r, body["dimensions"], body["metrics"], body["limit"],
                                  body.get("events", ()), body.get("filters"),
                                  tuple(order) if order else None)
        meta = {"total_groups": answer.total_groups, "truncated": answer.truncated}
        return Case(body, answer.rows, None, source, meta)

    base = {"kind": "breakdown", "date_range": r.json()}
    cases["country_device_users_top5"] = case(
        {**base, "dimensions": ["country", "device_type"], "metrics": ["events", "users"],
         "limit": 5}, "events")
    counts = {**base, "dimensions": ["country", "device_type"], "metrics": ["events"], "limit": 7}
    for source, b in _sources(counts).items():
        cases[f"country_device_counts_top7_{source}"] = case(
            b, "rollup:" if source == "auto" else "events")
    revenue = {**base, "dimensions": ["country"], "events": ["purchase", "first_purchase"],
               "metrics": ["sum:price", "events"], "limit": 4}
    for source, b in _sources(revenue).items():
        cases[f"revenue_by_country_{source}"] = case(b, "rollup:" if source == "auto" else "events")
    cases["price_by_country_all_groups"] = case(
        {**base, "dimensions": ["country"], "events": ["purchase", "first_purchase"],
         "metrics": ["avg:price", "sum:price", "users"], "limit": 100}, "events")
    cases["plan_none_group"] = case(
        {**base, "dimensions": ["prop:plan"], "metrics": ["users", "events"], "limit": 10},
        "events")
    cases["browser_ascending"] = case(
        {**base, "dimensions": ["browser"], "metrics": ["users", "events"], "limit": 2,
         "order_by": ["users", "asc"]}, "events")
    daily = {**base, "dimensions": ["country"], "metrics": ["events"], "limit": 3,
             "interval": "day"}
    for source, b in _sources(daily).items():
        cases[f"country_by_day_{source}"] = Case(
            b, oracle.breakdown_by_day(events, r, ["country"], "events", 3), by("country", "bucket"),
            "rollup:" if source == "auto" else "events")
    cases["filter_tree"] = case(
        {**base, "dimensions": ["device_type", "event_name"], "metrics": ["events", "users"],
         "limit": 6, "filters": FILTER_TREE}, "events")
    return cases


def uniques_cases(s: Stack) -> dict[str, Case]:
    r = s.range(1, 8, BERLIN)
    events = s.data.events
    base = {"kind": "uniques", "timezone": "Europe/Berlin", "date_range": r.json()}
    filters: list[Any] = ["or", [["is", "country", ["DE", "US"]], ["is_not_set", "country"]]]
    return {
        "uniques_all": Case({**base}, [{"users": oracle.uniques(events, r)}],
                            meta={"approximate": False, "method": "exact"}),
        "uniques_buyers_filtered": Case(
            {**base, "events": ["purchase", "first_purchase"], "filters": filters},
            [{"users": oracle.uniques(events, r, ["purchase", "first_purchase"], filters)}],
            meta={"approximate": False, "method": "exact"}),
        "uniques_of_filter_tree": Case(
            {**base, "method": "exact", "filters": FILTER_TREE},
            [{"users": oracle.uniques(events, r, (), FILTER_TREE)}],
            meta={"approximate": False, "method": "exact"}),
    }


def funnel_cases(s: Stack) -> dict[str, Case]:
    """The signup funnel: ordered, strict (other kept events break an attempt), with a step
    filter and a breakdown whose smallest groups fold into ``$other``."""
    r = s.range(1, 8)
    events = s.data.events
    steps_json = [{"event": e, "label": label} for (e, _), label in
                  zip(FUNNEL_STEPS, FUNNEL_LABELS, strict=True)]
    base = {"kind": "funnel", "date_range": r.json(), "steps": steps_json, "window": "7d"}
    window = oracle.FUNNEL_WINDOW_S
    cases = {
        "funnel_ordered": Case(
            {**base}, oracle.funnel(events, r, FUNNEL_STEPS, FUNNEL_LABELS, window)),
    }
    kept: list[Any] = ["is", "event_name", ["signup", "email_verified", "first_purchase",
                                            "session_start"]]
    cases["funnel_strict"] = Case(
        {**base, "order": "strict", "filters": kept},
        oracle.funnel(events, r, FUNNEL_STEPS, FUNNEL_LABELS, window, strict=True, filters=kept))
    pricey: list[Any] = ["gte", "prop:price", [15]]
    steps = [*FUNNEL_STEPS[:2], ("first_purchase", pricey)]
    groups = oracle.funnel_group_count(events, r, steps, 3 * 86_400, "country")
    cases["funnel_by_country"] = Case(
        {**base, "steps": [*steps_json[:2], {**steps_json[2], "filters": pricey}],
         "breakdown": "country", "limit": 3, "window": 3 * 86_400},
        oracle.funnel(events, r, steps, FUNNEL_LABELS, 3 * 86_400, breakdown_by="country",
                      limit=3),
        meta={"total_groups": groups, "truncated": groups > 3})
    return cases


def retention_cases(s: Stack, now: datetime) -> dict[str, Case]:
    """First-time day cohorts in UTC (every period started) and in Berlin (the last cohorts'
    late periods have not started: null)."""
    events = s.data.events
    r_utc = s.range(1, 4)
    r_berlin = s.range(2, 8, BERLIN)
    mobile: list[Any] = ["is", "device_type", ["mobile"]]
    order = by("cohort", "period")
    return {
        "retention_signup_utc": Case(
            {"kind": "retention", "date_range": r_utc.json(), "start_event": {"event": "signup"},
             "return_event": {"event": "session_start"}, "period": "day", "periods": 7,
             "cohort": "first_time"},
            oracle.retention_by_day(events, r_utc, ("signup", None), ("session_start", None), 7,
                                    now), order),
        "retention_mobile_berlin": Case(
            {"kind": "retention", "timezone": "Europe/Berlin", "date_range": r_berlin.json(),
             "start_event": {"event": "session_start", "filters": mobile}, "period": "day",
             "periods": 9, "cohort": "first_time"},
            oracle.retention_by_day(events, r_berlin, ("session_start", mobile), (None, None), 9,
                                    now), order),
    }


@pytest.fixture(scope="module")
def cases(stack: Stack) -> dict[str, Case]:
    """Every request but retention's (whose null periods depend on the clock), with the
    oracle's answer, computed once for the module."""
    return {**timeseries_cases(stack), **breakdown_cases(stack), **uniques_cases(stack),
            **funnel_cases(stack)}


TIMESERIES = ["counts_by_day_UTC_auto", "counts_by_day_UTC_events",
              "counts_by_day_Europe/Berlin_auto", "counts_by_day_Europe/Berlin_events",
              "counts_by_week_auto", "counts_by_week_events", "clock_change_days_auto",
              "clock_change_days_events", "clock_change_hours_auto", "clock_change_hours_events",
              "price_by_day_auto", "price_by_day_events", "users_by_day_berlin"]
BREAKDOWNS = ["country_device_users_top5", "country_device_counts_top7_auto",
              "country_device_counts_top7_events", "revenue_by_country_auto",
              "revenue_by_country_events", "price_by_country_all_groups", "plan_none_group",
              "browser_ascending", "country_by_day_auto", "country_by_day_events", "filter_tree"]
UNIQUES = ["uniques_all", "uniques_buyers_filtered", "uniques_of_filter_tree"]
FUNNELS = ["funnel_ordered", "funnel_strict", "funnel_by_country"]
RETENTION = ["retention_signup_utc", "retention_mobile_berlin"]


# --- the tests -----------------------------------------------------------------------------


def test_the_dataset_exercises_what_the_oracle_checks(stack: Stack, cases: dict[str, Case]) -> None:
    """Guards the dataset itself: without these shapes the comparisons below would prove less
    (a breakdown with nothing past its limit, ``$other`` users that a sum would get right, a
    funnel nobody finishes, no absent country, nothing after a range's end that counts)."""
    r = stack.range(1, 8)
    events = stack.data.events
    assert 5_000 < len(events) < 20_000
    assert any(not e.properties.get("country") for e in events)
    top5 = oracle.breakdown(events, r, ["country", "device_type"], ["users"], 5)
    everything = oracle.breakdown(events, r, ["country", "device_type"], ["users"], 10_000)
    assert top5.truncated
    assert top5.rows[-1]["users"] < sum(row["users"] for row in everything.rows[5:])
    rows = oracle.funnel(events, r, FUNNEL_STEPS, FUNNEL_LABELS, oracle.FUNNEL_WINDOW_S)
    assert rows[0]["users"] > rows[1]["users"] > rows[2]["users"] > 0
    end_ms = r.end.timestamp() * 1000
    until_end = [e for e in events if e.ts_ms < end_ms]
    assert oracle.funnel(until_end, r, FUNNEL_STEPS, FUNNEL_LABELS, oracle.FUNNEL_WINDOW_S) != rows
    retention = retention_cases(stack, datetime.now(UTC))["retention_signup_utc"]
    r4_end_ms = stack.range(1, 4).end.timestamp() * 1000
    assert oracle.retention_by_day([e for e in events if e.ts_ms < r4_end_ms], stack.range(1, 4),
                                   ("signup", None), ("session_start", None), 7,
                                   datetime.now(UTC)) != retention.rows
    mobile = retention_cases(stack, datetime.now(UTC))["retention_mobile_berlin"]
    assert any(row["users"] is None for row in mobile.rows)
    recent = [e for e in events if e.ts_ms >= stack.range(-1, 0).start.timestamp() * 1000]
    assert oracle.retention_by_day(recent, stack.range(2, 8, BERLIN),
                                   ("session_start", ["is", "device_type", ["mobile"]]),
                                   (None, None), 9, datetime.now(UTC)) != mobile.rows
    change = stack.data.clock_change
    hours = (oracle.local_midnight(change + timedelta(days=1), BERLIN).timestamp()
             - oracle.local_midnight(change, BERLIN).timestamp()) / 3600
    assert hours in (23, 25)
    assert len(cases["clock_change_hours_auto"].rows) == hours
    strict = cases["funnel_strict"]
    ordered = oracle.funnel(events, r, FUNNEL_STEPS, FUNNEL_LABELS, oracle.FUNNEL_WINDOW_S,
                            filters=strict.body["filters"])
    assert [row["users"] for row in strict.rows] != [row["users"] for row in ordered]
    berlin = oracle.timeseries(events, stack.range(1, 8, BERLIN), [(None, None, "x")], ["events"])
    utc = oracle.timeseries(events, r, [(None, None, "x")], ["events"])
    assert [row["events"] for row in berlin] != [row["events"] for row in utc]


@pytest.mark.parametrize("name", TIMESERIES + BREAKDOWNS + UNIQUES)
def test_http_answer_equals_the_oracle(stack: Stack, cases: dict[str, Case], name: str) -> None:
    """Time series, breakdowns and uniques: every row of the HTTP answer equals the oracle's,
    from the source the request names (a rollup for covered requests asked with source auto)."""
    case = cases[name]
    case.check(stack.ask(case.body), f"HTTP {name}")


@pytest.mark.parametrize("name", FUNNELS)
def test_funnel_equals_the_oracle(stack: Stack, cases: dict[str, Case], name: str) -> None:
    """Users per step, conversions, drop-off and the lower median time to convert."""
    case = cases[name]
    case.check(stack.ask(case.body), f"HTTP {name}")


@pytest.mark.parametrize("name", RETENTION)
def test_retention_equals_the_oracle(stack: Stack, name: str) -> None:
    """First-time cohorts, their sizes, returning users per day and rates; null for periods
    that have not started."""
    case = retention_cases(stack, datetime.now(UTC))[name]
    case.check(stack.ask(case.body), f"HTTP {name}")


@pytest.mark.parametrize("request_name", ["counts_by_day_UTC", "counts_by_day_Europe/Berlin",
                                          "counts_by_week", "clock_change_days",
                                          "clock_change_hours", "price_by_day",
                                          "country_device_counts_top7", "revenue_by_country",
                                          "country_by_day"])
def test_rollup_and_events_give_identical_rows(stack: Stack, cases: dict[str, Case],
                                              request_name: str) -> None:
    """A request a rollup covers gets the very same rows from the rollup and from the events."""
    auto = stack.ask(cases[f"{request_name}_auto"].body)
    raw = stack.ask(cases[f"{request_name}_events"].body)
    assert auto["source"].startswith("rollup:"), auto["meta"]
    assert raw["source"] == "events"
    assert auto["rows"] == raw["rows"]
    assert auto["columns"] == raw["columns"]


def test_the_answer_echoes_the_resolved_range(stack: Stack) -> None:
    """The normalized query gives the absolute range as instants of the request's timezone."""
    r = stack.range(1, 8, BERLIN)
    answer = stack.ask({"kind": "uniques", "timezone": "Europe/Berlin", "date_range": r.json()})
    assert answer["query"]["date_range"]["from"] == r.start.isoformat()
    assert answer["query"]["date_range"]["to"] == r.end.isoformat()
    assert answer["query"]["timezone"] == "Europe/Berlin"


@pytest.mark.parametrize("name", ["counts_by_week_auto", "country_device_users_top5",
                                  "funnel_by_country", "uniques_buyers_filtered"])
def test_an_answers_query_asks_for_the_same_answer(stack: Stack, cases: dict[str, Case],
                                                    name: str) -> None:
    """The normalized ``query`` of an answer, sent again, is a request for the same rows."""
    first = stack.ask(cases[name].body)
    again = stack.ask(first["query"])
    assert again["query"] == first["query"]
    cases[name].check(again, f"{name} sent again")


def test_breakdown_rows_add_up_to_the_total(stack: Stack) -> None:
    """Nothing is silently truncated: the ranked rows and ``$other`` add up to every event."""
    r = stack.range(1, 8)
    answer = stack.ask({"kind": "breakdown", "date_range": r.json(),
                        "dimensions": ["country", "device_type"], "metrics": ["events"],
                        "limit": 3})
    assert sum(row["events"] for row in answer["rows"]) == len(oracle.selected(stack.data.events, r))
    assert answer["rows"][-1]["country"] == "$other"


def test_hll_uniques_are_close_and_say_so(stack: Stack) -> None:
    """``method: hll`` is approximate, says so, and lands within 3% of the exact count."""
    r = stack.range(1, 8)
    answer = stack.ask({"kind": "uniques", "date_range": r.json(), "method": "hll"})
    exact = oracle.uniques(stack.data.events, r)
    assert answer["meta"]["approximate"] is True
    assert answer["meta"]["method"] == "hll"
    assert answer["rows"][0]["users"] == pytest.approx(exact, rel=0.03)


def _cli(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "query", "--format", "json", json.dumps(body)],
        env={**stack.pipeline.env, "PATH": ""}, capture_output=True, text=True, timeout=120,
        check=False)
    assert proc.returncode == 0, f"rearview query failed ({proc.returncode}): {proc.stderr[-2000:]}"
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def test_cli_answers_equal_the_oracle(stack: Stack, cases: dict[str, Case]) -> None:
    """`rearview query --format json` answers as HTTP does (the same normalized query, columns
    and source) with the oracle's rows: every kind, rollup and events sources."""
    names = ["counts_by_day_Europe/Berlin_auto", "counts_by_day_Europe/Berlin_events",
             "price_by_day_auto", "users_by_day_berlin", "country_device_users_top5",
             "revenue_by_country_auto", "filter_tree", "uniques_buyers_filtered",
             "funnel_ordered", "funnel_by_country", "retention_mobile_berlin"]
    asked = {**cases, **retention_cases(stack, datetime.now(UTC))}
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda n: _cli(stack, asked[n].body), names))
    expected = {**cases, **retention_cases(stack, datetime.now(UTC))}
    for name, answer in zip(names, answers, strict=True):
        expected[name].check(answer, f"CLI {name}")
        over_http = stack.ask(asked[name].body)
        for key in ("query", "columns", "source"):
            assert answer[key] == over_http[key], (name, key)


def _ranked(counts: dict[str, int], key: str) -> list[dict[str, Any]]:
    """``[{key, "count"}]`` most frequent first (ties by name, so both sides compare alike)."""
    return [{key: k, "count": n} for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def test_discovery_lists_what_the_events_hold(stack: Stack) -> None:
    """The pickers' endpoints: every event name with its count and last time seen, the
    property keys of an event with their counts and dimension names, and a property's values
    (those containing ``q``, case-insensitive, at most ``limit``), all most frequent first."""
    since_ms = (time.time() - 30 * 86_400) * 1000  # they read the last 30 days
    events = [e for e in stack.data.events if e.ts_ms >= since_ms]
    assert len(events) < len(stack.data.events)  # the clock change's events are older
    names: dict[str, int] = {}
    last_seen: dict[str, int] = {}
    for e in events:
        names[e.name] = names.get(e.name, 0) + 1
        last_seen[e.name] = max(last_seen.get(e.name, 0), e.ts_ms)
    answer = stack.http.get(f"{stack.api}/v1/schema/events").json()["events"]
    assert [{"event": a["event"], "count": a["count"]} for a in answer] == _ranked(names, "event")
    for a in answer:
        seen = datetime.fromisoformat(a["last_seen"])
        assert int(seen.timestamp() * 1000) == last_seen[a["event"]], a

    keys: dict[str, int] = {}
    for e in events:
        if e.name == "purchase":
            for key in e.properties:
                keys[key] = keys.get(key, 0) + 1
    answer = stack.http.get(f"{stack.api}/v1/schema/properties", params={"event": "purchase"})
    got = answer.json()["properties"]
    assert [{"property": p["property"], "count": p["count"]} for p in got] == _ranked(keys, "property")
    assert {p["property"]: p["dimension"] for p in got}["price"] == "prop:price"
    assert {p["property"]: p["dimension"] for p in got}["country"] == "country"

    def values(dimension: str, event: str | None, q: str) -> dict[str, int]:
        found: dict[str, int] = {}
        for e in events:
            v = oracle.value(e, dimension)
            if v and (event is None or e.name == event) and q.lower() in v.lower():
                found[v] = found.get(v, 0) + 1
        return found

    answer = stack.http.get(f"{stack.api}/v1/schema/values", params={"property": "country"})
    assert answer.json()["values"] == _ranked(values("country", None, ""), "value")
    answer = stack.http.get(f"{stack.api}/v1/schema/values",
                            params={"property": "prop:page", "event": "page_view", "q": "PRIC",
                                    "limit": "1"})
    assert answer.json()["values"] == _ranked(values("prop:page", "page_view", "PRIC"), "value")[:1]
