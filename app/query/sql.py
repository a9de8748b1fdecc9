"""SQL building blocks: bound parameters, dimensions, filter trees and metrics.

Nothing the user sends is ever spliced into SQL text. Values, property keys and regular
expressions become bound parameters (`{p3:String}`); the only identifiers in the SQL are the
hot columns of the events table and the columns of configured rollups, both from fixed lists,
quoted all the same. A dimension is a hot column (``event_name``, ``country``, ``device_type``,
``browser``) or a property (``prop:<key>``), read as ``properties[{p:String}]``.

An event without a property has the empty string there (ClickHouse's Map lookup, and the
hot columns' defaults), so "not set" and "set to an empty string" are the same thing: the
breakdown value ``$none``, the ``is_not_set`` filter. A rollup groups an absent key as ``""``
too, so both sources agree.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from app.query.errors import BadQuery
from tables.columns import MAX_SUMMED_ABS, MICROS, NUMBER_PATTERN

HOT_COLUMNS = ("event_name", "country", "device_type", "browser")
PROPERTY_KEY = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_$.:/-]{0,127}$")
NONE = "$none"
OTHER = "$other"

LEAF_OPS = ("is", "is_not", "contains", "not_contains", "regex",
            "gt", "gte", "lt", "lte", "is_set", "is_not_set")
NUMERIC_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
MAX_FILTER_VALUES = 1000
MAX_FILTER_NODES = 200


class Params:
    """Collects bound parameters; each `bind` returns the placeholder to put in the SQL."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def bind(self, value: Any, kind: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{kind}}}"


@dataclass(frozen=True)
class Dimension:
    """A hot column or a property key, by the name the user gives (``country``, ``prop:plan``)."""

    name: str

    @property
    def key(self) -> str:
        """The property key behind the dimension (a hot column is also a property key)."""
        return self.name.removeprefix("prop:")

    @property
    def is_event_name(self) -> bool:
        return self.name == "event_name"

    def raw(self, params: Params) -> str:
        """Expression over the events table."""
        if self.name in HOT_COLUMNS:
            return f"`{self.name}`"
        return f"properties[{params.bind(self.key, 'String')}]"

    def rollup_column(self, columns: tuple[str, ...]) -> str | None:
        """The rollup column holding this dimension, if the rollup has one. A hot column's value
        is its property's (the events table copies it out of the map), so ``country`` and
        ``prop:country`` are both the rollup dimension ``country``."""
        return self.key if self.key in columns else None


def parse_dimension(value: object, where: str) -> Dimension:
    if not isinstance(value, str):
        raise BadQuery(where, "a dimension is a string: event_name, country, device_type, browser"
                              " or prop:<key>")
    if value in HOT_COLUMNS:
        return Dimension(value)
    if value.startswith("prop:") and PROPERTY_KEY.match(value[5:]):
        key = value[5:]
        return Dimension(key if key in HOT_COLUMNS[1:] else value)
    raise BadQuery(where, f"unknown dimension {value[:80]!r}: use event_name, country, device_type,"
                          " browser or prop:<key> (letters, digits, _ $ . : / -, at most 128)")


@dataclass(frozen=True)
class Filter:
    """A filter tree node: a leaf ``[op, dimension, values]`` or ``and``/``or``/``not``."""

    op: str
    dimension: Dimension | None = None
    values: tuple[Any, ...] = ()
    children: tuple[Filter, ...] = field(default_factory=tuple)

    def to_json(self) -> list[Any]:
        if self.op in ("and", "or"):
            return [self.op, [c.to_json() for c in self.children]]
        if self.op == "not":
            return ["not", self.children[0].to_json()]
        assert self.dimension is not None
        if self.op in ("is_set", "is_not_set"):
            return [self.op, self.dimension.name]
        return [self.op, self.dimension.name, list(self.values)]

    def dimensions(self) -> set[Dimension]:
        found = {self.dimension} if self.dimension else set()
        for child in self.children:
            found |= child.dimensions()
        return found

    def sql(self, column: Any, params: Params) -> str:
        """The condition; *column* maps a Dimension to its SQL expression."""
        if self.op in ("and", "or"):
            joined = f" {self.op.upper()} ".join(f"({c.sql(column, params)})" for c in self.children)
            return joined or ("1" if self.op == "and" else "0")
        if self.op == "not":
            return f"NOT ({self.children[0].sql(column, params)})"
        assert self.dimension is not None
        x = column(self.dimension)
        if self.op == "is_set":
            return f"{x} != ''"
        if self.op == "is_not_set":
            return f"{x} = ''"
        if self.op in NUMERIC_OPS:
            return f"toFloat64OrNull({x}) {NUMERIC_OPS[self.op]} {params.bind(self.values[0], 'Float64')}"
        values = [("" if v == NONE else v) for v in self.values]
        if self.op in ("is", "is_not"):
            neg = "NOT " if self.op == "is_not" else ""
            return f"{x} {neg}IN {params.bind(values, 'Array(String)')}"
        if self.op in ("contains", "not_contains"):
            neg = "NOT " if self.op == "not_contains" else ""
            return f"{neg}multiSearchAny({x}, {params.bind(values, 'Array(String)')})"
        # regex: any of the patterns (RE2 syntax, as ClickHouse's match()).
        return "(" + " OR ".join(f"match({x}, {params.bind(v, 'String')})" for v in values) + ")"


def parse_filter(value: object, where: str, budget: list[int] | None = None) -> Filter:
    """A filter tree from its JSON form; BadQuery names the path of the bad node."""
    budget = budget if budget is not None else [MAX_FILTER_NODES]
    budget[0] -= 1
    if budget[0] < 0:
        raise BadQuery(where, f"a filter tree has at most {MAX_FILTER_NODES} nodes")
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise BadQuery(where, "a filter is [op, dimension, values], [\"and\"|\"or\", [filters]]"
                              " or [\"not\", filter]")
    op = value[0]
    if op in ("and", "or"):
        if len(value) != 2 or not isinstance(value[1], list) or not value[1]:
            raise BadQuery(where, f"[\"{op}\", [filter, ...]] takes a non-empty list of filters")
        return Filter(op, children=tuple(parse_filter(c, f"{where}[1][{i}]", budget)
                                         for i, c in enumerate(value[1])))
    if op == "not":
        if len(value) != 2:
            raise BadQuery(where, "[\"not\", filter] takes exactly one filter")
        return Filter(op, children=(parse_filter(value[1], f"{where}[1]", budget),))
    if op not in LEAF_OPS:
        raise BadQuery(where, f"unknown filter operator {op[:40]!r}: use one of "
                              f"{', '.join(LEAF_OPS)}, and, or, not")
    if len(value) < 2:
        raise BadQuery(where, f"[\"{op}\", dimension, ...] needs a dimension")
    dimension = parse_dimension(value[1], f"{where}[1]")
    if op in ("is_set", "is_not_set"):
        if len(value) != 2:
            raise BadQuery(where, f"{op} takes no values: [\"{op}\", dimension]")
        return Filter(op, dimension)
    if len(value) != 3:
        raise BadQuery(where, f"[\"{op}\", dimension, values] takes exactly three items")
    raw = value[2] if isinstance(value[2], list) else [value[2]]
    if op in NUMERIC_OPS:
        if len(raw) != 1 or isinstance(raw[0], bool) or not isinstance(raw[0], (int, float, str)):
            raise BadQuery(f"{where}[2]", f"{op} compares with exactly one number")
        try:
            number = float(raw[0])
        except (ValueError, OverflowError):
            raise BadQuery(f"{where}[2]", f"{op} compares with a number, got {str(raw[0])[:40]!r}") from None
        if not math.isfinite(number):
            raise BadQuery(f"{where}[2]", f"{op} compares with a finite number")
        return Filter(op, dimension, (number,))
    if not raw or len(raw) > MAX_FILTER_VALUES:
        raise BadQuery(f"{where}[2]", f"{op} takes 1 to {MAX_FILTER_VALUES} values")
    values: list[str] = []
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise BadQuery(f"{where}[2][{i}]", "a filter value is a string or a number")
        text = v if isinstance(v, str) else str(v)
        if len(text) > 8192:
            raise BadQuery(f"{where}[2][{i}]", "a filter value is at most 8192 characters")
        if op == "regex" and not text:
            raise BadQuery(f"{where}[2][{i}]", "an empty regular expression matches everything")
        values.append(text)
    return Filter(op, dimension, tuple(values))


# --- metrics -------------------------------------------------------------------------------

METRIC = re.compile(r"^(events|users|(sum|avg):(.+))$")


@dataclass(frozen=True)
class Metric:
    """``events``, ``users``, ``sum:<key>`` or ``avg:<key>``."""

    name: str

    @property
    def kind(self) -> str:
        return self.name.split(":", 1)[0]

    @property
    def key(self) -> str:
        return self.name.split(":", 1)[1]


def parse_metric(value: object, where: str) -> Metric:
    if isinstance(value, str):
        match = METRIC.match(value)
        if match and (match.group(3) is None or PROPERTY_KEY.match(match.group(3))):
            return Metric(value)
    raise BadQuery(where, f"unknown metric {str(value)[:80]!r}: use events, users, sum:<property>"
                          " or avg:<property>")


def number_sql(value: str, params: Params) -> tuple[str, str]:
    """(micro-units, is-a-number) of a property string, by the rollups' rule (tables/columns.py):
    a plain decimal literal of magnitude at most 1e12, rounded half to even to micro-units."""
    x = f"toFloat64OrZero({value})"
    valid = (f"(match({value}, {params.bind(NUMBER_PATTERN, 'String')}) AND isFinite({x})"
             f" AND abs({x}) <= {params.bind(MAX_SUMMED_ABS, 'Float64')})")
    return f"toInt128(roundBankers({x} * {MICROS}))", valid


def raw_aggregates(metric: Metric, params: Params, users: str = "uniqExact(user_id)") -> list[str]:
    """Aggregate expressions over the events table that `finish` turns into *metric*'s value."""
    if metric.kind == "events":
        return ["count()"]
    if metric.kind == "users":
        return [users]
    micros, valid = number_sql(f"properties[{params.bind(metric.key, 'String')}]", params)
    if metric.kind == "sum":
        return [f"sumIf({micros}, {valid})"]
    return [f"sumIf({micros}, {valid})", f"countIf({valid})"]


def rollup_aggregates(metric: Metric, sum_column: str | None) -> list[str]:
    if metric.kind == "events":
        return ["sum(`count`)"]
    assert metric.kind == "sum" and sum_column is not None
    # A partial's sum is its exact micro-units / 1e6 in a Float64: multiplying back recovers
    # them exactly while a partial's sum stays under 2**53 micro-units (about 9e9).
    return [f"sum(toInt128(roundBankers(`{sum_column}` * {MICROS})))"]


def finish(metric: Metric, values: list[Any]) -> int | float | None:
    """The metric's value from its aggregates (micro-units become plain numbers)."""
    if metric.kind in ("events", "users"):
        return int(values[0])
    if metric.kind == "sum":
        return int(values[0]) / MICROS
    count = int(values[1])
    return int(values[0]) / MICROS / count if count else None


def width(metric: Metric) -> int:
    return 2 if metric.kind == "avg" else 1
