"""`rearview verify`: rollups against a GROUP BY over the deduplicated raw events.

For every configured rollup and window, the rollup's ``count + late`` (summed over source
partitions) must equal the number of distinct raw events in that window and dimension cell.
``late`` events (beyond the allowed lateness) are stored raw but not applied to the rollup;
their windows are listed as windows to repair (by replay). Uniques are HLL estimates: their
error against ``uniqExact`` is reported, not counted as a difference.
"""

from __future__ import annotations

import base64

from dataclasses import dataclass, field
from datetime import datetime

from clickhouse_connect.driver.client import Client

from tables import hll
from tables.rollup_tables import table_name
from tables.rollups import RollupSpec

Cell = tuple[datetime, tuple[str, ...]]


@dataclass(frozen=True)
class Difference:
    rollup: str
    window_start: datetime
    dims: tuple[str, ...]
    rollup_count: int
    raw_count: int


@dataclass
class RollupReport:
    rollup: str
    cells: int = 0
    differences: list[Difference] = field(default_factory=list)
    late_windows: list[tuple[datetime, tuple[str, ...], int]] = field(default_factory=list)
    max_uniques_error: float | None = None


def _window_expr(spec: RollupSpec) -> str:
    return "toStartOfMinute(ts)" if spec.granularity == "minute" else "toStartOfHour(ts)"


def _raw_dims(spec: RollupSpec) -> list[str]:
    return ["event_name", *(f"properties[{_quote(k)}]" for k in spec.dimensions[1:])]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def verify_rollup(client: Client, spec: RollupSpec) -> RollupReport:
    report = RollupReport(spec.name)
    dims = ", ".join(f"`{d}`" for d in spec.dimensions)
    # Sketches are binary: base64 keeps them intact through the client's String decoding.
    sketch = ", groupArray(base64Encode(sketch))" if spec.uniques else ""
    rollup_rows = client.query(
        f"SELECT window_start, {dims}, sum(count), sum(late){sketch}"
        f" FROM `{table_name(spec)}` FINAL GROUP BY window_start, {dims}"
    ).result_rows
    n = len(spec.dimensions)
    rollups: dict[Cell, tuple[int, int, list[bytes]]] = {}
    for row in rollup_rows:
        cell = (row[0], tuple(str(v) for v in row[1 : 1 + n]))
        sketches = [base64.b64decode(b) for b in row[3 + n] if b] if spec.uniques else []
        rollups[cell] = (int(row[1 + n]), int(row[2 + n]), sketches)
    raw_dims = ", ".join(_raw_dims(spec))
    uniq = ", uniqExact(user_id)" if spec.uniques else ""
    raw_rows = client.query(
        f"SELECT {_window_expr(spec)} AS w, {raw_dims}, count(){uniq} FROM events FINAL"
        f" GROUP BY w, {raw_dims}"
    ).result_rows
    raw: dict[Cell, tuple[int, int]] = {}
    for row in raw_rows:
        cell = (row[0], tuple(str(v) for v in row[1 : 1 + n]))
        raw[cell] = (int(row[1 + n]), int(row[2 + n]) if spec.uniques else 0)
    worst = 0.0
    for cell in sorted(set(rollups) | set(raw)):
        count, late, sketches = rollups.get(cell, (0, 0, []))
        raw_count, exact_users = raw.get(cell, (0, 0))
        report.cells += 1
        if count + late != raw_count:
            report.differences.append(Difference(spec.name, cell[0], cell[1], count + late, raw_count))
        if late:
            report.late_windows.append((cell[0], cell[1], late))
        elif spec.uniques and exact_users and sketches:
            estimate = hll.merge(sketches, spec.lg_k)
            worst = max(worst, abs(estimate - exact_users) / exact_users)
    if spec.uniques:
        report.max_uniques_error = worst
    return report


def verify(client: Client, specs: list[RollupSpec]) -> list[RollupReport]:
    return [verify_rollup(client, spec) for spec in specs]
