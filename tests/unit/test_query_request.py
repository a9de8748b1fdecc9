"""Query requests without ClickHouse: parsing, limits, ranges, buckets and the SQL's parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from app.query.errors import BadQuery
from app.query.request import Defaults, parse
from app.query.sql import Params, parse_filter
from app.query.timerange import buckets, resolve

NOW = datetime(2026, 6, 10, 15, 30, tzinfo=UTC)


def _parse(body: dict) -> object:
    return parse(body, Defaults(), NOW)


def _refused(body: object) -> BadQuery:
    with pytest.raises(BadQuery) as info:
        parse(body, Defaults(), NOW)
    return info.value


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "nope"}, "kind"),
        ({"kind": "funnel", "steps": [f"e{i}" for i in range(11)]}, "steps"),
        ({"kind": "funnel", "steps": ["a"]}, "steps"),
        ({"kind": "funnel", "steps": ["a", "b"], "window": "91d"}, "window"),
        ({"kind": "funnel", "steps": ["a", {"event": "b", "filters": ["is", "prop:x y", ["1"]]}]},
         "steps[1].filters[1]"),
        ({"kind": "breakdown", "dimensions": ["country", "browser", "device_type", "prop:plan"]},
         "dimensions"),
        ({"kind": "breakdown", "dimensions": ["country"], "limit": 10_001}, "limit"),
        ({"kind": "breakdown", "dimensions": ["country); DROP TABLE events; --"]}, "dimensions[0]"),
        ({"kind": "breakdown", "dimensions": ["country"], "order_by": ["users", "desc"]}, "order_by[0]"),
        ({"kind": "timeseries", "metrics": ["sum:price) FROM system.tables --"]}, "metrics[0]"),
        ({"kind": "timeseries", "interval": "fortnight"}, "interval"),
        ({"kind": "timeseries", "timezone": "Mars/Olympus"}, "timezone"),
        ({"kind": "timeseries", "timezone": "../../etc/passwd"}, "timezone"),
        ({"kind": "timeseries", "date_range": "7 days"}, "date_range"),
        ({"kind": "timeseries", "date_range": ["2026-02-01", "2026-01-01"]}, "date_range"),
        ({"kind": "timeseries", "events": ["bad'name"]}, "events[0]"),
        ({"kind": "timeseries", "filters": ["like", "country", ["US"]]}, "filters"),
        ({"kind": "timeseries", "filters": ["gt", "prop:price", ["ten"]]}, "filters[2]"),
        ({"kind": "timeseries", "filters": ["and", [["is", "country", ["US"]], ["nope"]]]},
         "filters[1][1]"),
        ({"kind": "timeseries", "surprise": 1}, "surprise"),
        ({"kind": "retention"}, "start_event"),
        ({"kind": "retention", "start_event": "a", "periods": 91}, "periods"),
        ({"kind": "uniques", "method": "guess"}, "method"),
        ({"kind": "timeseries", "source": "cache"}, "source"),
    ],
)
def test_a_bad_request_is_refused_naming_its_field(body: dict, field: str) -> None:
    assert _refused(body).field == field


def test_the_body_must_be_an_object() -> None:
    assert "JSON object" in str(_refused(["kind", "timeseries"]))


def test_the_normalized_query_fills_defaults_and_resolves_the_range() -> None:
    q = _parse({"kind": "breakdown", "dimensions": ["prop:country", "prop:plan"],
                "timezone": "Europe/Berlin"})
    echoed = q.to_dict()  # type: ignore[attr-defined]
    # A hot column given as a property is the hot column.
    assert echoed["dimensions"] == ["country", "prop:plan"]
    assert echoed["metrics"] == ["events"] and echoed["order_by"] == ["events", "desc"]
    assert echoed["limit"] == 100 and echoed["source"] == "auto"
    # "7d" is six whole days and today, in Berlin (UTC+2 in June).
    assert echoed["date_range"] == {"given": "7d", "from": "2026-06-04T00:00:00+02:00",
                                    "to": "2026-06-11T00:00:00+02:00"}


@pytest.mark.parametrize(
    ("given", "start", "end"),
    [
        ("today", "2026-06-10T00:00:00+00:00", "2026-06-11T00:00:00+00:00"),
        ("yesterday", "2026-06-09T00:00:00+00:00", "2026-06-10T00:00:00+00:00"),
        ("30min", "2026-06-10T15:01:00+00:00", "2026-06-10T15:31:00+00:00"),
        ("24h", "2026-06-09T16:00:00+00:00", "2026-06-10T16:00:00+00:00"),
        ("2w", "2026-06-01T00:00:00+00:00", "2026-06-15T00:00:00+00:00"),
        ("3mo", "2026-04-01T00:00:00+00:00", "2026-07-01T00:00:00+00:00"),
        (["2026-03-01", "2026-03-31"], "2026-03-01T00:00:00+00:00", "2026-04-01T00:00:00+00:00"),
        (["2026-03-01T10:00", "2026-03-01T12:00Z"], "2026-03-01T10:00:00+00:00",
         "2026-03-01T12:00:00+00:00"),
    ],
)
def test_relative_and_absolute_ranges(given: object, start: str, end: str) -> None:
    r = resolve(given, ZoneInfo("UTC"), NOW)
    assert (r.start.isoformat(), r.end.isoformat()) == (start, end)


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Europe/Berlin", "2026-03-29", 23),
        ("Europe/Berlin", "2026-10-25", 25),
        ("America/New_York", "2026-03-08", 23),
        ("America/New_York", "2026-11-01", 25),
        ("Europe/Berlin", "2026-06-10", 24),
    ],
)
def test_a_day_bucket_lasts_23_or_25_hours_on_a_clock_change(tz: str, day: str, hours: int) -> None:
    zone = ZoneInfo(tz)
    r = resolve([day, day], zone, NOW)
    days = buckets(r.start, r.end, "day", zone, 100)
    assert len(days) == 1
    # (Aware datetimes of one timezone subtract by wall clock: compare instants.)
    assert r.end.timestamp() - days[0].timestamp() == timedelta(hours=hours).total_seconds()
    # Hours of that day: one bucket per real hour, none repeated although wall clocks repeat.
    hourly = buckets(r.start, r.end, "hour", zone, 100)
    assert len(hourly) == hours == len({h.timestamp() for h in hourly})


def test_days_across_a_clock_change_are_consecutive_and_unique() -> None:
    zone = ZoneInfo("Europe/Berlin")
    r = resolve(["2026-10-20", "2026-10-30"], zone, NOW)
    days = buckets(r.start, r.end, "day", zone, 100)
    assert [d.day for d in days] == list(range(20, 31))
    assert all(d.hour == 0 and d.minute == 0 for d in days)


def test_weeks_start_on_monday_and_months_on_the_first() -> None:
    zone = ZoneInfo("America/New_York")
    r = resolve(["2026-02-04", "2026-03-20"], zone, NOW)
    weeks = buckets(r.start, r.end, "week", zone, 100)
    assert all(w.weekday() == 0 for w in weeks) and weeks[0].date().isoformat() == "2026-02-02"
    months = buckets(r.start, r.end, "month", zone, 100)
    assert [m.date().isoformat() for m in months] == ["2026-02-01", "2026-03-01"]


def test_user_values_reach_the_sql_only_as_parameters() -> None:
    hostile = "x') OR 1=1; DROP TABLE events; --"
    tree = parse_filter(["or", [["is", "prop:plan", [hostile]], ["regex", "country", [hostile]],
                                ["contains", "browser", [hostile]], ["not", ["is_set", "prop:a.b"]]]],
                        "filters")
    params = Params()
    sql = tree.sql(lambda d: d.raw(params), params)
    assert hostile not in sql and "DROP" not in sql
    assert list(params.values.values()).count(hostile) == 1
    assert params.values[next(k for k, v in params.values.items() if v == "plan")] == "plan"
    assert "a.b" in params.values.values()  # a property key is a parameter too


# --- rollup routing ------------------------------------------------------------------------

def _route(body: dict) -> tuple[str | None, str]:
    from app.query.sources import choose
    from app.query.timerange import buckets as bucket_list
    from tables.rollups import DEFAULT_ROLLUPS, RollupSpec

    specs = [*DEFAULT_ROLLUPS, RollupSpec(name="sales_1h", dimensions=("event_name", "country", "plan"),
                                          granularity="hour", sums=("price",))]
    q = _parse(body)
    common = q.common  # type: ignore[attr-defined]
    dims = common.dimensions() | set(getattr(q, "dimensions", ()))
    for s in getattr(q, "series", ()):
        dims |= s.dimensions()
    interval = getattr(q, "interval", None)
    starts = bucket_list(common.range.start, common.range.end, interval, common.tz, 10_000) if interval else []
    spec, why = choose(specs, common, dims, q.metrics, starts)  # type: ignore[attr-defined]
    return (spec.name if spec else None), why


@pytest.mark.parametrize(
    ("body", "rollup"),
    [
        # Coarsest first: an hour rollup serves days in Berlin (whole-hour offsets)...
        ({"kind": "timeseries", "events": ["buy"], "timezone": "Europe/Berlin"}, "uniques_by_name_1h"),
        # ... but not in Kolkata (UTC+5:30): its days start on the half hour.
        ({"kind": "timeseries", "events": ["buy"], "timezone": "Asia/Kolkata"}, "events_by_name_1m"),
        ({"kind": "breakdown", "dimensions": ["country", "device_type"]}, "events_by_name_country_device_1m"),
        ({"kind": "breakdown", "dimensions": ["prop:plan"], "metrics": ["sum:price"]}, "sales_1h"),
        ({"kind": "timeseries", "series": [{"event": "buy", "filters": ["is", "prop:plan", ["pro"]]}]},
         "sales_1h"),
        # Exact users, averages, a property no rollup keeps, a range off the minute: raw events.
        ({"kind": "timeseries", "metrics": ["users"]}, None),
        ({"kind": "breakdown", "dimensions": ["country"], "metrics": ["avg:price"]}, None),
        ({"kind": "breakdown", "dimensions": ["browser"]}, None),
        ({"kind": "timeseries", "interval": "minute",
          "date_range": ["2026-06-10T10:00:30", "2026-06-10T11:00:00"]}, None),
        ({"kind": "timeseries", "source": "events"}, None),
    ],
)
def test_the_planner_takes_the_coarsest_rollup_that_covers_the_query(body: dict, rollup: str | None) -> None:
    chosen, why = _route(body)
    assert chosen == rollup, why
    if rollup is None:
        assert why  # the answer says why no rollup served it


def test_source_rollup_refuses_a_query_no_rollup_covers() -> None:
    with pytest.raises(BadQuery) as info:
        _route({"kind": "breakdown", "dimensions": ["browser"], "source": "rollup"})
    assert info.value.field == "source" and "browser" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "timeseries", "events": ["a", "b"], "metrics": ["events", "sum:price"], "date_range": "7d",
         "timezone": "America/New_York", "filters": ["not", ["is_set", "prop:plan"]]},
        {"kind": "breakdown", "dimensions": ["country", "prop:plan"], "limit": 5, "interval": "day",
         "order_by": ["users", "asc"], "metrics": ["users"]},
        {"kind": "funnel", "steps": ["a", {"event": "b", "filters": ["gt", "prop:n", [3]]}],
         "window": "2h", "order": "strict", "breakdown": "browser"},
        {"kind": "retention", "start_event": "a", "period": "week", "periods": 4, "cohort": "recurring"},
        {"kind": "uniques", "events": ["a"], "method": "hll", "date_range": "24h"},
    ],
)
def test_the_echoed_query_can_be_sent_again_and_means_the_same(body: dict) -> None:
    """An answer's `query` is itself a request for the same answer, whatever the clock then."""
    echoed = _parse(body).to_dict()  # type: ignore[attr-defined]
    later = parse(echoed, Defaults(), NOW + timedelta(days=3))
    assert later.to_dict() == echoed  # type: ignore[attr-defined]
