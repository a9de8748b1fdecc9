"""`rearview query`: flags to a request body, reading the body, refusals before any connection,
exit codes and both outputs. No services: ClickHouse is replaced where an answer is needed
(the run against real services is tests/integration's)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

import app.clickhouse
import app.query
from app.cli import cli, format_cell, meta_line, query_body_from_flags, query_body_from_text
from app.query import BadQuery, QueryTimeout
from app.query.request import Defaults, parse
from core.exceptions import ServiceUnavailable

NOW = datetime(2026, 3, 18, 12, 30, tzinfo=UTC)

ANSWER: dict[str, Any] = {
    "query": {"kind": "breakdown", "events": [], "metrics": ["events", "users"],
              "dimensions": ["country"], "limit": 2, "order_by": ["events", "desc"],
              "interval": None, "timezone": "Europe/Berlin",
              "date_range": {"given": "7d", "from": "2026-03-12T00:00:00+01:00",
                             "to": "2026-03-19T00:00:00+01:00"},
              "filters": None, "source": "auto"},
    "columns": ["country", "events", "users"],
    "rows": [{"country": "DE", "events": 1204, "users": 310},
             {"country": "[bold]US", "events": 997, "users": 250},
             {"country": "$other", "events": 12, "users": 7}],
    "source": "rollup:events_by_name_country_device_1m",
    "meta": {"elapsed_ms": 12.4, "queries": 2, "rows": 3, "approximate": False,
             "total_groups": 5, "truncated": True},
}


# --- flags to body -----------------------------------------------------------------------------

def test_without_flags_a_time_series_of_all_events() -> None:
    assert query_body_from_flags() == {"kind": "timeseries"}


def test_by_makes_a_breakdown_and_repeated_or_comma_separated_values_are_lists() -> None:
    body = query_body_from_flags(by=("country", "prop:plan"), metrics=("events,users",),
                                 events=("signup",), limit=10, interval="day")
    assert body == {"kind": "breakdown", "dimensions": ["country", "prop:plan"],
                    "events": ["signup"], "metrics": ["events", "users"], "limit": 10,
                    "interval": "day"}


def test_common_flags() -> None:
    body = query_body_from_flags(events=("a", "b"), date_range="24h", timezone="Asia/Kolkata",
                                 source="events", interval="hour", metrics=("sum:price",))
    assert body == {"kind": "timeseries", "events": ["a", "b"], "metrics": ["sum:price"],
                    "interval": "hour", "date_range": "24h", "timezone": "Asia/Kolkata",
                    "source": "events"}


def test_a_range_from_to_is_an_absolute_range() -> None:
    body = query_body_from_flags(kind="uniques", date_range="2026-03-01, 2026-03-31")
    assert body["date_range"] == ["2026-03-01", "2026-03-31"]


def test_funnel_events_are_its_steps_and_by_its_breakdown() -> None:
    body = query_body_from_flags(kind="funnel", events=("page_view", "signup,purchase"),
                                 by=("prop:plan",), limit=5)
    assert body == {"kind": "funnel", "steps": ["page_view", "signup", "purchase"],
                    "breakdown": "prop:plan", "limit": 5}


def test_retention_events_are_start_then_return_and_interval_is_its_period() -> None:
    assert query_body_from_flags(kind="retention", events=("signup", "purchase"),
                                 interval="week") == {
        "kind": "retention", "start_event": "signup", "return_event": "purchase",
        "period": "week"}
    assert query_body_from_flags(kind="retention", events=("signup",)) == {
        "kind": "retention", "start_event": "signup"}


def test_uniques() -> None:
    assert query_body_from_flags(kind="uniques", events=("purchase",), date_range="all") == {
        "kind": "uniques", "events": ["purchase"], "date_range": "all"}


@pytest.mark.parametrize(("flags", "field"), [
    ({"kind": "histogram"}, "--kind"),
    ({"kind": "timeseries", "by": ("country",)}, "--by"),
    ({"kind": "timeseries", "limit": 3}, "--limit"),
    ({"kind": "funnel", "events": ("a", "b"), "metrics": ("users",)}, "--metric"),
    ({"kind": "funnel", "events": ("a", "b"), "interval": "day"}, "--interval"),
    ({"kind": "funnel", "events": ("a", "b"), "by": ("country", "browser")}, "--by"),
    ({"kind": "retention"}, "--event"),
    ({"kind": "retention", "events": ("a", "b", "c")}, "--event"),
    ({"kind": "retention", "events": ("a",), "by": ("country",)}, "--by"),
    ({"kind": "uniques", "metrics": ("users",)}, "--metric"),
    ({"kind": "breakdown"}, "--by"),
])
def test_flags_a_kind_does_not_take_are_refused_by_name(flags: dict[str, Any], field: str) -> None:
    with pytest.raises(BadQuery) as caught:
        query_body_from_flags(**flags)
    assert caught.value.field == field


@pytest.mark.parametrize("flags", [
    {},
    {"by": ("country", "device_type"), "metrics": ("events", "users"), "limit": 10},
    {"events": ("page_view", "signup"), "interval": "hour", "date_range": "24h"},
    {"kind": "funnel", "events": ("page_view", "signup", "purchase"), "by": ("prop:plan",)},
    {"kind": "retention", "events": ("signup", "purchase"), "interval": "week",
     "date_range": "8w"},
    {"kind": "uniques", "date_range": "2026-03-01,2026-03-10", "timezone": "Europe/Berlin"},
])
def test_bodies_from_flags_are_requests_the_query_layer_accepts(flags: dict[str, Any]) -> None:
    parse(query_body_from_flags(**flags), Defaults(), NOW)


def test_a_body_that_is_not_json_is_a_bad_query_about_the_whole_request() -> None:
    assert query_body_from_text(b'{"kind": "uniques"}') == {"kind": "uniques"}
    with pytest.raises(BadQuery) as caught:
        query_body_from_text('{"kind": ')
    assert caught.value.field == "" and "not valid JSON" in str(caught.value)


# --- the command -------------------------------------------------------------------------------

@pytest.fixture
def no_clickhouse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to connect fails the test: refusals must come before it."""
    def connect(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("rearview query connected to ClickHouse")

    monkeypatch.setattr(app.clickhouse, "connect", connect)


class FakeClient:
    closed = False

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """ClickHouse replaced: `run` records its arguments and answers ANSWER."""
    calls: list[Any] = []
    client = FakeClient()
    monkeypatch.setattr(app.clickhouse, "connect", lambda *_a, **_k: client)

    def run(c: Any, body: Any, config: Any, now: Any = None) -> dict[str, Any]:
        calls.append((c, body, config, now))
        return ANSWER

    monkeypatch.setattr(app.query, "run", run)
    calls.append(client)
    return calls


def invoke(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["query", *args], input=stdin)


@pytest.mark.usefixtures("no_clickhouse")
def test_a_bad_dimension_exits_2_naming_the_field_before_connecting() -> None:
    result = invoke("--by", "cuntry")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: dimensions[0]: unknown dimension 'cuntry'")
    assert result.stdout == ""


@pytest.mark.usefixtures("no_clickhouse")
@pytest.mark.parametrize(("args", "stdin", "prefix"), [
    (['{"kind": "breakdown", "dimensions": ["country", "cuntry"]}'], None,
     "error: dimensions[1]: "),
    (["-"], '{"kind": "funnel", "steps": ["a"]}', "error: steps: "),
    (['{"kind": "uniques", "colour": 1}'], None, "error: colour: unknown field"),
    (["{not json"], None, "error: the query is not valid JSON"),
    (["-k", "funnel", "-e", "a", "-e", "b", "-m", "users"], None, "error: --metric: "),
    (["-r", "fortnight"], None, "error: date_range: "),
])
def test_refused_requests_exit_2_with_one_line(args: list[str], stdin: str | None,
                                               prefix: str) -> None:
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(prefix), result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.usefixtures("no_clickhouse")
def test_a_body_and_flags_together_is_a_usage_error() -> None:
    result = invoke('{"kind": "uniques"}', "--event", "signup")
    assert result.exit_code == 2 and "not both" in result.stderr


def test_an_unreachable_clickhouse_exits_1_with_one_clear_line(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RV_CLICKHOUSE__URL", "http://127.0.0.1:1")  # nothing listens on port 1
    result = invoke("--by", "country")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ClickHouse at http://127.0.0.1:1 is unreachable")
    assert result.stderr.count("\n") == 1


def test_json_output_is_exactly_the_answer(answers: list[Any]) -> None:
    result = invoke('{"kind": "breakdown", "dimensions": ["country"]}', "--format", "json")
    assert result.exit_code == 0, result.output
    assert result.stdout_bytes == orjson.dumps(ANSWER) + b"\n"
    client, (run_client, body, config, now) = answers
    assert run_client is client and client.closed
    assert body == {"kind": "breakdown", "dimensions": ["country"]}
    assert config.defaults.timezone == "UTC" and now is not None


def test_the_table_has_the_kind_source_columns_rows_and_meta(answers: list[Any]) -> None:
    result = invoke("--by", "country", "-n", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "breakdown · source rollup:events_by_name_country_device_1m" in out
    header = next(line for line in out.splitlines() if line.startswith("┃"))
    assert header.index("country") < header.index("events") < header.index("users")
    assert "[bold]US" in out  # values are text, never rich markup
    assert "12.4 ms · 3 rows · 5 groups, the rest in $other · exact" in out
    assert answers[1][1] == {"kind": "breakdown", "dimensions": ["country"], "limit": 2}


def test_a_file_body(answers: list[Any], tmp_path: Path) -> None:
    path = tmp_path / "q.json"
    path.write_text('{"kind": "uniques", "method": "hll"}')
    result = invoke("--file", str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    assert answers[1][1] == {"kind": "uniques", "method": "hll"}


@pytest.mark.parametrize(("error", "code"), [
    (BadQuery("source", "no rollup covers this query"), 2),
    (QueryTimeout("the query ran past the 30 s limit"), 1),
    (ServiceUnavailable("ClickHouse query failed: gone"), 1),
])
def test_errors_while_running_are_one_line_with_their_exit_code(
        monkeypatch: pytest.MonkeyPatch, answers: list[Any], error: Exception, code: int) -> None:
    def run(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(app.query, "run", run)
    result = invoke("-k", "uniques")
    assert result.exit_code == code
    assert result.stderr == f"error: {error}\n"
    assert answers[0].closed


# --- rendering ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "text"), [
    (None, "—"), (True, "true"), (1204, "1204"), (0.0, "0"), (12.5, "12.5"),
    (0.123456, "0.1235"), (1234567.891, "1234567.891"), (0.0000123, "1.23e-05"), ("$none", "$none"),
])
def test_cells(value: Any, text: str) -> None:
    assert format_cell(value) == text


def test_meta_line_of_an_approximate_answer() -> None:
    answer = {"query": {"kind": "uniques", "date_range": {"from": "a", "to": "b"}},
              "meta": {"elapsed_ms": 3.0, "queries": 1, "rows": 1, "approximate": True,
                       "method": "hll: union of sketches", "lg_k": 12,
                       "standard_error": 0.0163}}
    assert meta_line(answer) == ("3 ms · 1 rows · approximate (hll: union of sketches, lg_k 12,"
                                 " ±1.63%) · a → b")
