"""The Grafana/ClickHouse-plugin expander (tests/grafana_macros.py) against the plugin's rules.

The integration test runs every dashboard's SQL through this expander, so a wrong expansion
would make it test SQL Grafana never sends. These cases pin each rule to what the plugin's
code does (pkg/macros/macros.go, grafana/sqlds macros.go, the frontend's applyConditionalAll
and Grafana's variable formats), for one fixed range.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.grafana_macros import (
    ALL,
    MacroError,
    QueryRange,
    Variable,
    apply_conditional_all,
    check_variable_uses,
    expand,
    format_value,
    macro_args,
)

# 2026-03-01 10:00:00.250 UTC .. 12:30:59.999 UTC: both ends off the second, to see the cut.
RANGE = QueryRange(datetime(2026, 3, 1, 10, 0, 0, 250_000, tzinfo=UTC),
                   datetime(2026, 3, 1, 12, 30, 59, 999_000, tzinfo=UTC), interval_s=30.5)
FROM_S, TO_S = 1_772_359_200, 1_772_368_259
EVENT = Variable("event", [ALL], options=["page_view", "signup"])


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("$__timeFilter(ts)", f"ts >= toDateTime({FROM_S}) AND ts <= toDateTime({TO_S})"),
        ("$__timeFilter_ms(ts)", (f"ts >= fromUnixTimestamp64Milli({FROM_S}250) AND"
                                  f" ts <= fromUnixTimestamp64Milli({TO_S}999)")),
        ("$__fromTime", f"toDateTime({FROM_S})"),
        ("$__toTime", f"toDateTime({TO_S})"),
        ("$__fromTime_ms", f"fromUnixTimestamp64Milli({FROM_S}250)"),
        ("$__toTime_ms", f"fromUnixTimestamp64Milli({TO_S}999)"),
        ("$__dateFilter(d)", "d >= toDate('2026-03-01') AND d <= toDate('2026-03-01')"),
        ("$__timeInterval(ts)", "toStartOfInterval(toDateTime(ts), INTERVAL 30 second)"),
        ("$__timeInterval_ms(ts)",
         "toStartOfInterval(toDateTime64(ts, 3), INTERVAL 30500 millisecond)"),
        ("$__interval_s", "30"),
    ],
)
def test_each_macro_expands_as_the_plugin_does(sql: str, expected: str) -> None:
    """Seconds are cut (not rounded), both ends are inclusive, the interval is cut to whole
    seconds: the plugin's Go code formats t.Unix(), t.UnixMilli() and int(seconds)."""
    assert expand(sql, RANGE) == expected


def test_a_macro_that_is_a_prefix_of_another_does_not_eat_it() -> None:
    """sqlds puts a word boundary after the name: $__timeFilter does not match the start of
    $__timeFilter_ms, nor $__toTime the start of $__toTime_ms."""
    sql = expand("$__timeFilter(a) AND $__timeFilter_ms(b) AND $__toTime_ms > $__toTime", RANGE)
    assert sql == (f"a >= toDateTime({FROM_S}) AND a <= toDateTime({TO_S}) AND"
                   f" b >= fromUnixTimestamp64Milli({FROM_S}250) AND"
                   f" b <= fromUnixTimestamp64Milli({TO_S}999) AND"
                   f" fromUnixTimestamp64Milli({TO_S}999) > toDateTime({TO_S})")


def test_arguments_are_the_balanced_list_right_after_the_name() -> None:
    """A macro takes arguments only from a parenthesis right after its name (SDK: "don't
    consume args after a space"); nested parentheses stay inside one argument."""
    assert expand("$__timeFilter(toDateTime(ts, 'UTC'))", RANGE) == (
        f"toDateTime(ts, 'UTC') >= toDateTime({FROM_S}) AND"
        f" toDateTime(ts, 'UTC') <= toDateTime({TO_S})")
    assert expand("ts <= $__toTime + toIntervalSecond(toUInt32('60'))", RANGE) == (
        f"ts <= toDateTime({TO_S}) + toIntervalSecond(toUInt32('60'))")
    assert expand("count() * 60 / $__interval_s AS x FROM t WHERE f(a)", RANGE) == (
        "count() * 60 / 30 AS x FROM t WHERE f(a)")


def test_the_interval_is_at_least_one_second_and_the_panel_minimum() -> None:
    tiny = QueryRange(RANGE.start, RANGE.end, interval_s=0.2)
    assert expand("$__interval_s", tiny) == "1"
    assert expand("$__timeInterval(ts)", tiny, min_interval_s=60) == (
        "toStartOfInterval(toDateTime(ts), INTERVAL 60 second)")
    assert expand("$__interval_s", RANGE, min_interval_s=10) == "30"  # already above


def test_left_over_or_malformed_macros_raise() -> None:
    """Anything the plugin would send to ClickHouse unexpanded is an error here, and so is a
    column macro without its column (the plugin would send `` >= toDateTime(...)``)."""
    for sql in ("$__timeGroup(ts, 1h)", "$__timeFilterr(ts)", "$__timeFilter", "$__timeFilter()",
                "$__timeFilter(a, b)", "$__timeFilter(ts", "$__conditionalAll(a, b, $event)",
                "$__interval", "$__timeFrom(ts)"):
        with pytest.raises(MacroError):
            expand(sql, RANGE, {"event": EVENT})


def test_conditional_all_is_1_eq_1_for_all_or_nothing_and_the_condition_otherwise() -> None:
    sql = "WHERE $__conditionalAll(event_name IN (${event:singlequote}), $event) AND x"
    assert expand(sql, RANGE, {"event": EVENT}) == "WHERE 1=1 AND x"
    assert expand(sql, RANGE, {"event": Variable("event", "")}) == "WHERE 1=1 AND x"
    picked = Variable("event", ["signup", "page_view"], options=EVENT.options)
    assert expand(sql, RANGE, {"event": picked}) == (
        "WHERE event_name IN ('signup','page_view') AND x")


def test_conditional_all_counts_parentheses_and_handles_several() -> None:
    sql = ("$__conditionalAll(f(a, (b)) IN (${e:singlequote}), $e) OR "
           "$__conditionalAll(g = ${p:singlequote}, $p)")
    variables = {"e": Variable("e", ALL, ["x"]), "p": Variable("p", "v")}
    assert apply_conditional_all(sql, variables) == "1=1 OR g = ${p:singlequote}"
    assert macro_args("(f(a, (b)), $e) tail", 0) == ["f(a, (b))", " $e"]
    assert macro_args("(never closed", 0) == []


def test_conditional_all_guard_must_be_dollar_name() -> None:
    """The plugin finds the variable by dropping the guard's first character: ``${event}``
    names no variable, so the condition stays even when All is selected (here it then
    expands every option)."""
    sql = "$__conditionalAll(event_name IN (${event:singlequote}), ${event})"
    assert expand(sql, RANGE, {"event": EVENT}) == "event_name IN ('page_view','signup')"


def test_variable_formats() -> None:
    one, many = Variable("v", "it's"), Variable("v", ["a", "b'c"])
    assert format_value(one, "singlequote") == "'it\\'s'"
    assert format_value(many, "singlequote") == "'a','b\\'c'"
    assert format_value(many, "sqlstring") == "'a','b''c'"
    assert format_value(many, "csv") == "a,b'c"
    assert format_value(one, None) == "it's"  # the plugin's own formatter: a value raw
    assert format_value(many, None) == "'a','b'c'"  # a list quoted, nothing escaped
    assert format_value(EVENT, "singlequote") == "'page_view','signup'"  # All: every option
    custom_all = Variable("v", ALL, ["a"], all_value=".*")
    assert format_value(custom_all, "singlequote") == ".*"  # inserted unformatted
    with pytest.raises(MacroError):
        format_value(one, "lucene")


def test_every_variable_syntax_is_replaced_and_unknown_names_are_left() -> None:
    variables = {"p": Variable("p", "default")}
    sql = "$p ${p} ${p:singlequote} [[p]] [[p:sqlstring]] $other ${other:singlequote}"
    assert expand(sql, RANGE, variables) == (
        "default default 'default' default 'default' $other ${other:singlequote}")


def test_singlequote_does_not_protect_a_value_with_a_backslash() -> None:
    """Grafana escapes quotes only; ClickHouse reads ``\\'`` inside a string as a quote, so
    ``\\`` + ``\\'`` closes the string early. The integration test shows ClickHouse running
    the injected condition; the dashboards never offer such a value."""
    hostile = Variable("p", "x\\' OR 1=1 --")
    assert expand("project_id = ${p:singlequote}", RANGE, {"p": hostile}) == (
        "project_id = 'x\\\\' OR 1=1 --'")


DEFINED: dict[str, dict[str, object]] = {
    "project": {"includeAll": False},
    "event": {"includeAll": True},
    "loose": {"includeAll": True, "allValue": ".*"},
}


@pytest.mark.parametrize(
    ("sql", "complaint"),
    [
        ("project_id = ${project:singlequote}", None),
        ("$__conditionalAll(event_name IN (${event:singlequote}), $event)", None),
        ("project_id = $project", "is not quoted"),
        ("project_id = ${project}", "is not quoted"),
        ("project_id = '${project:raw}'", "is not quoted"),
        ("project_id = [[project]]", "is not quoted"),
        ("project_id = ${projct:singlequote}", "not a variable of this dashboard"),
        ("event_name IN (${event:singlequote})", "not inside $__conditionalAll"),
        (("$__conditionalAll(event_name IN (${event:singlequote}), $project) AND"
          " ${project:singlequote} = ''"), "not inside $__conditionalAll(..., $event)"),
        ("$__conditionalAll(x IN (${loose:singlequote}), $loose)", "custom allValue"),
        ("$__conditionalAll(x IN (${event:singlequote}), ${event})", "guard must be $name"),
    ],
)
def test_unsafe_variable_uses_are_named(sql: str, complaint: str | None) -> None:
    problems = check_variable_uses(sql, DEFINED, "panel")
    if complaint is None:
        assert problems == []
    else:
        assert any(complaint in p for p in problems), problems
