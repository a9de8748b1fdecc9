"""What Grafana and its ClickHouse plugin do to a panel's SQL before ClickHouse sees it.

Grafana cannot run here, so the tests run the SQL it would send. A panel's ``rawSql`` goes
through three steps, reproduced here in the same order:

1. **$__conditionalAll** (the plugin's frontend, ``applyConditionalAll``): from the last
   occurrence backwards, ``$__conditionalAll(condition, $var)`` becomes ``1=1`` when ``var`` is
   set to All (or to nothing), else ``condition``. Its arguments are split at top-level commas
   (parentheses counted); any count other than two leaves the text alone. The variable is
   named ``$var`` (the plugin strips one leading character to find it), never ``${var}``.
2. **Template variables** (Grafana's template service): ``$var``, ``${var}``, ``${var:format}``
   and ``[[var]]``/``[[var:format]]`` of defined variables are replaced; anything else
   (``$__timeFilter``, an undefined ``$name``) is left as it is. All stands for every option,
   unless the variable has a custom ``allValue``, which is inserted *unformatted*. Formats:
   ``singlequote`` (``'v'``, ``'`` escaped as ``\\'``, values joined with ``,``), ``sqlstring``
   (``'v'``, ``'`` doubled), ``doublequote``, ``csv``, ``raw``; without a format the plugin's
   own formatter applies: a list becomes ``'a','b'`` (nothing escaped), a single value is
   inserted raw.
3. **Macros** (the plugin's backend: grafana/sqlds hands the SQL to the plugin SDK's
   ``sqlutil.Interpolate``): macro names are taken longest first (so ``$__toTime`` never eats
   the start of ``$__toTime_ms``); each ``$__name`` followed by a word boundary takes the
   argument list that *immediately* follows it, if any (parentheses balanced, split at
   top-level commas, trimmed; an unclosed list is an error), and every occurrence of that exact
   text is replaced. Expansions, with ``from`` and ``to`` the range's ends in whole seconds
   (or milliseconds for ``_ms``) and ``interval_s`` Grafana's interval for the panel, at
   least 1:

   =====================  ===============================================================
   ``$__timeFilter(c)``     ``c >= toDateTime(from_s) AND c <= toDateTime(to_s)``
   ``$__timeFilter_ms(c)``  ``c >= fromUnixTimestamp64Milli(from_ms) AND c <= ...(to_ms)``
   ``$__fromTime``          ``toDateTime(from_s)`` (``$__toTime`` likewise, ``_ms`` too)
   ``$__dateFilter(c)``     ``c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')``
   ``$__timeInterval(c)``   ``toStartOfInterval(toDateTime(c), INTERVAL interval_s second)``
   ``$__timeInterval_ms``   ``toStartOfInterval(toDateTime64(c, 3), INTERVAL ms millisecond)``
   ``$__interval_s``        ``interval_s``
   =====================  ===============================================================

   Both ends are inclusive and cut to the second: a range is not half-open as the query API's.

A macro left over after expansion (misspelt), and the SDK's generic ones (``$__timeGroup``,
``$__timeFrom``, ``$__table``, ``$__interval``...: not ClickHouse SQL), raise `MacroError`
rather than reaching ClickHouse. (This is the SDK's current behaviour. Older sqlds releases took
arguments up to the first closing parenthesis and applied macros in random map order, and one
intermediate SDK release let an argument-less macro such as ``$__interval_s`` take the next
parenthesised list *anywhere* after it: the dashboards' ``$__interval_s AS ... $__timeFilter(ts)``
would lose text there. Compose installs the current plugin, which has neither problem.)

**Why quoting matters, and its limit.** ClickHouse reads backslash escapes inside quoted
strings, and neither ``singlequote`` nor ``sqlstring`` escapes a backslash: a value ending in
``\\`` turns the closing quote into a literal one, and a value such as ``x\\' OR 1=1 --`` then
closes the string itself. Quoting is therefore safe only for values without a backslash:
the dashboards offer only values their variable queries let through a safe-character filter,
and forbid custom values (see tests/integration/test_grafana.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

ALL = "$__all"

# Grafana's variable syntax (public/app/features/variables/utils.ts, variableRegex).
VARIABLE_RE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}",
    re.ASCII,
)
CONDITIONAL_ALL = "$__conditionalAll("
MACRO_NAME_RE = re.compile(r"\$__(\w+)", re.ASCII)


class MacroError(ValueError):
    """The SQL would not reach ClickHouse as intended: a bad macro or variable use."""


@dataclass(frozen=True)
class Variable:
    """A dashboard variable as Grafana holds it when a panel runs.

    ``value`` is the current selection: a string, a list (multi-value), or ``ALL``/``[ALL]``.
    ``options`` are the values All stands for. ``all_value`` is the variable's custom all
    value, if any (inserted without formatting, as Grafana does).
    """

    name: str
    value: str | Sequence[str]
    options: Sequence[str] = ()
    all_value: str | None = None

    def is_all(self) -> bool:
        return _js_string(self.value) == ALL

    def is_empty_or_all(self) -> bool:
        return _js_string(self.value) in ("", ALL)


@dataclass(frozen=True)
class QueryRange:
    """The time range and interval of one panel's request."""

    start: datetime
    end: datetime
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("range ends must be timezone-aware")


def _js_string(value: str | Sequence[str]) -> str:
    """JavaScript's ``String(value)``: a list joins its items with commas."""
    return value if isinstance(value, str) else ",".join(value)


def macro_args(sql: str, open_index: int) -> list[str]:
    """The plugin's ``getMacroArgs``: arguments of the call whose ``(`` is at *open_index*,
    split at commas at depth one; [] when the parentheses never close."""
    depth = 0
    args: list[str] = []
    start = open_index + 1
    for i in range(open_index, len(sql)):
        char = sql[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
        if depth == 0 and char in "()":
            args.append(sql[start:i])
            return args
    return []


def apply_conditional_all(sql: str, variables: Mapping[str, Variable]) -> str:
    """Step 1: every ``$__conditionalAll(condition, $var)`` becomes ``1=1`` or ``condition``."""
    index = sql.rfind(CONDITIONAL_ALL)
    while index != -1:
        params = macro_args(sql, index + len(CONDITIONAL_ALL) - 1)
        if len(params) != 2:
            return sql
        name = params[1].strip()[1:]
        variable = variables.get(name)
        phrase = params[0]
        if variable is not None and variable.is_empty_or_all():
            phrase = "1=1"
        sql = sql.replace(f"{CONDITIONAL_ALL}{params[0]},{params[1]})", phrase, 1)
        index = sql.rfind(CONDITIONAL_ALL)
    return sql


def _quote_each(values: Sequence[str], quote: Callable[[str], str]) -> str:
    return ",".join(quote(v) for v in values)


FORMATS: dict[str, Callable[[Sequence[str]], str]] = {
    "singlequote": lambda vs: _quote_each(vs, lambda v: "'" + v.replace("'", "\\'") + "'"),
    "sqlstring": lambda vs: _quote_each(vs, lambda v: "'" + v.replace("'", "''") + "'"),
    "doublequote": lambda vs: _quote_each(vs, lambda v: '"' + v.replace('"', '\\"') + '"'),
    "csv": lambda vs: ",".join(vs),
    "raw": lambda vs: ",".join(vs),
}
# Formats whose output keeps a value inside a quoted ClickHouse string (see the module doc).
QUOTING_FORMATS = frozenset({"singlequote", "sqlstring"})


def _plugin_format(values: Sequence[str], multi: bool) -> str:
    """The plugin's default formatter: a list as ``'a','b'`` (unescaped), a value raw."""
    return "'" + "','".join(values) + "'" if multi else values[0]


def format_value(variable: Variable, fmt: str | None) -> str:
    """What Grafana puts in place of one use of *variable* with format *fmt*."""
    value = variable.value
    if variable.is_all():
        if variable.all_value is not None and fmt not in ("text", "percentencode"):
            return variable.all_value
        value = list(variable.options)
    multi = not isinstance(value, str)
    values = [value] if isinstance(value, str) else list(value)
    if fmt is None:
        return _plugin_format(values, multi)
    if fmt not in FORMATS:
        raise MacroError(f"${{{variable.name}:{fmt}}}: format {fmt!r} is not supported here")
    return FORMATS[fmt](values)


@dataclass(frozen=True)
class Use:
    """One use of a variable in SQL: its name, its format, and the exact text."""

    name: str
    fmt: str | None
    text: str
    start: int


def variable_uses(sql: str) -> list[Use]:
    """Every variable reference Grafana's syntax recognizes (``$__`` names excluded)."""
    out = []
    for m in VARIABLE_RE.finditer(sql):
        name = m.group(1) or m.group(2) or m.group(4)
        if name.startswith("__"):
            continue
        out.append(Use(name, m.group(3) or m.group(6), m.group(0), m.start()))
    return out


def replace_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    """Step 2: defined variables replaced, with their formats; the rest left as it is."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        variable = variables.get(name)
        if variable is None:
            return m.group(0)
        return format_value(variable, m.group(3) or m.group(6))

    return VARIABLE_RE.sub(one, sql)


def _seconds(t: datetime) -> int:
    return math.floor(t.timestamp())


def _millis(t: datetime) -> int:
    return math.floor(t.timestamp() * 1000)


def _one_arg(name: str, args: list[str]) -> str:
    """The column argument. Stricter than the plugin, which expands ``$__timeFilter()`` to
    `` >= toDateTime(...)``: an empty column raises here."""
    if len(args) != 1 or not args[0]:
        raise MacroError(f"$__{name}: expected 1 column argument, received {args!r}")
    return args[0]


def _interval_s(r: QueryRange) -> int:
    return int(max(r.interval_s, 1))


MacroFunc = Callable[[QueryRange, list[str]], str]

MACROS: dict[str, MacroFunc] = {
    "fromTime": lambda r, a: f"toDateTime({_seconds(r.start)})",
    "toTime": lambda r, a: f"toDateTime({_seconds(r.end)})",
    "fromTime_ms": lambda r, a: f"fromUnixTimestamp64Milli({_millis(r.start)})",
    "toTime_ms": lambda r, a: f"fromUnixTimestamp64Milli({_millis(r.end)})",
    "timeFilter": lambda r, a: (
        f"{_one_arg('timeFilter', a)} >= toDateTime({_seconds(r.start)}) AND "
        f"{a[0]} <= toDateTime({_seconds(r.end)})"),
    "timeFilter_ms": lambda r, a: (
        f"{_one_arg('timeFilter_ms', a)} >= fromUnixTimestamp64Milli({_millis(r.start)}) AND "
        f"{a[0]} <= fromUnixTimestamp64Milli({_millis(r.end)})"),
    "dateFilter": lambda r, a: (
        f"{_one_arg('dateFilter', a)} >= toDate('{r.start.date().isoformat()}') AND "
        f"{a[0]} <= toDate('{r.end.date().isoformat()}')"),
    "timeInterval": lambda r, a: (
        f"toStartOfInterval(toDateTime({_one_arg('timeInterval', a)}),"
        f" INTERVAL {_interval_s(r)} second)"),
    "timeInterval_ms": lambda r, a: (
        f"toStartOfInterval(toDateTime64({_one_arg('timeInterval_ms', a)}, 3),"
        f" INTERVAL {int(max(r.interval_s * 1000, 1))} millisecond)"),
    "interval_s": lambda r, a: str(_interval_s(r)),
}
# The SDK's own defaults, which the plugin does not override: they write SQL for other
# databases (RFC 3339 strings, datepart) or Grafana's "1m" intervals, never ClickHouse's.
SDK_DEFAULT_MACROS = ("timeFrom", "timeTo", "timeGroup", "table", "column", "interval",
                      "interval_ms")


def _sdk_default(name: str) -> MacroFunc:
    def refuse(r: QueryRange, a: list[str]) -> str:
        raise MacroError(f"$__{name} is the plugin SDK's generic macro, not ClickHouse SQL")
    return refuse


ALL_MACROS: dict[str, MacroFunc] = {
    **{name: _sdk_default(name) for name in SDK_DEFAULT_MACROS}, **MACROS}
# Longest first, as sqlutil.Interpolate sorts them.
MACRO_ORDER = sorted(ALL_MACROS, key=len, reverse=True)


def parse_args(text: str) -> tuple[list[str], int]:
    """sqlutil's ``parseArgs``: the argument list at the very start of *text* and its length;
    ([], 0) when *text* does not start with ``(``; raises when it never closes."""
    if not text.startswith("("):
        return [], 0
    args: list[str] = []
    depth = 0
    arg: list[str] = []
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
            if depth == 1:
                continue
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(arg).strip())
                return args, i + 1
        elif char == "," and depth == 1:
            args.append("".join(arg).strip())
            arg = []
            continue
        arg.append(char)
    raise MacroError(f"failed to parse macro arguments (missing close bracket?): {text[:40]!r}")


def apply_macros(sql: str, time_range: QueryRange) -> str:
    """Step 3: the backend's macros. Raises `MacroError` if a ``$__`` name is left over."""
    for name in MACRO_ORDER:
        pattern = re.compile(rf"\$__{name}\b", re.ASCII)
        matches = []
        for m in pattern.finditer(sql):
            args, length = parse_args(sql[m.end():])
            matches.append((sql[m.start():m.end() + length], args))
        for full, args in matches:
            sql = sql.replace(full, ALL_MACROS[name](time_range, args))
    left = sorted({m.group(0) for m in MACRO_NAME_RE.finditer(sql)})
    if left:
        raise MacroError(f"macros the plugin does not expand: {', '.join(left)}")
    return sql


def expand(sql: str, time_range: QueryRange, variables: Mapping[str, Variable] | None = None,
           min_interval_s: float = 0) -> str:
    """The SQL the plugin sends for *sql*, for *time_range* and the variables' values.

    *min_interval_s* is the panel's minimum interval: Grafana never picks a smaller one."""
    variables = variables or {}
    if min_interval_s > time_range.interval_s:
        time_range = QueryRange(time_range.start, time_range.end, min_interval_s)
    sql = apply_conditional_all(sql, variables)
    sql = replace_variables(sql, variables)
    return apply_macros(sql, time_range)


@dataclass
class Problems:
    """Findings of `check_variable_uses`, one sentence each."""

    items: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.items.append(text)


def check_variable_uses(sql: str, defined: Mapping[str, Mapping[str, object]],
                        where: str) -> list[str]:
    """Why *sql*'s variable uses are unsafe or broken; [] when they are all right.

    *defined* maps each dashboard variable's name to its JSON model. A use is safe when it
    is ``${var:singlequote}`` or ``${var:sqlstring}`` (the value stays inside a quoted string),
    or the guard of a ``$__conditionalAll`` (``$var``, which only selects the condition).
    A variable offering All must be used inside a ``$__conditionalAll`` on itself (else All
    sends every option in the query) and may not have a custom all value (inserted raw).
    """
    problems = Problems()
    guards: set[int] = set()
    index = sql.find(CONDITIONAL_ALL)
    guarded: dict[str, list[tuple[int, int]]] = {}
    while index != -1:
        open_index = index + len(CONDITIONAL_ALL) - 1
        params = macro_args(sql, open_index)
        if len(params) != 2:
            problems.add(f"{where}: $__conditionalAll needs exactly 2 arguments at {index}")
        else:
            guard = params[1].strip()
            guard_at = open_index + 1 + len(params[0]) + 1 + params[1].index(guard)
            if not re.fullmatch(r"\$\w+", guard):
                problems.add(f"{where}: $__conditionalAll's guard must be $name, got {guard!r}")
            else:
                guards.add(guard_at)
                body = (open_index + 1, open_index + 1 + len(params[0]))
                guarded.setdefault(guard[1:], []).append(body)
        index = sql.find(CONDITIONAL_ALL, index + 1)
    for use in variable_uses(sql):
        model = defined.get(use.name)
        if model is None:
            problems.add(f"{where}: {use.text} is not a variable of this dashboard")
            continue
        if use.start in guards:
            continue
        if use.fmt not in QUOTING_FORMATS:
            problems.add(f"{where}: {use.text} is not quoted: use ${{{use.name}:singlequote}}")
        if model.get("includeAll"):
            if model.get("allValue"):
                problems.add(f"{where}: ${use.name} has a custom allValue, which Grafana"
                             " inserts unquoted")
            inside = any(a <= use.start < b for a, b in guarded.get(use.name, []))
            if not inside:
                problems.add(f"{where}: {use.text} offers All but is not inside"
                             f" $__conditionalAll(..., ${use.name})")
    return problems.items
