"""`rearview verify`: rollups against a GROUP BY over the deduplicated raw events, per project.

Every rollup is kept per project (the project is an implicit leading dimension), so each
project is compared on its own: for every configured rollup, project and cell (window,
dimension values), the rollup's count (summed over partitions) must equal the number of
distinct raw events of that project in that cell. A cell is:

- **exact** when both agree;
- **incomplete** when the rollup has fewer: events not applied yet (the worker is behind, or
  a window was lost and must be rebuilt by replay). The report says how many each window misses;
- **differs** when the rollup has more, or counts a cell with no raw event: a bug (an event
  counted twice, or under another project).

There is one report per (project, rollup), for every project that has raw events or rollup
rows (or for the one project asked for). The verdict of a run is the worst of its cells:
``exact`` (exit 0), ``incomplete`` (exit 2), ``differs`` (exit 1). Unique users are HLL
estimates: their error against ``uniqExact`` is reported only for cells whose merged sketch is
in estimation mode (below that the sketch holds the distinct hashes, and the count is exact).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from clickhouse_connect.driver.client import Client

from tables import hll
from tables.rollup_tables import table_name
from tables.rollups import RollupSpec

Cell = tuple[datetime, tuple[str, ...]]  # within one project
Verdict = Literal["exact", "incomplete", "differs"]
EXIT_CODES: dict[Verdict, int] = {"exact": 0, "differs": 1, "incomplete": 2}


@dataclass(frozen=True)
class Difference:
    rollup: str
    project_id: str
    window_start: datetime
    dims: tuple[str, ...]
    rollup_count: int
    raw_count: int

    @property
    def missing(self) -> int:
        return max(0, self.raw_count - self.rollup_count)


@dataclass
class RollupReport:
    rollup: str
    project_id: str
    cells: int = 0
    raw_events: int = 0
    rollup_events: int = 0
    missing: list[Difference] = field(default_factory=list)  # rollup below raw
    excess: list[Difference] = field(default_factory=list)  # rollup above raw
    estimating_cells: int = 0
    max_uniques_error: float | None = None  # over estimating cells only

    @property
    def verdict(self) -> Verdict:
        if self.excess:
            return "differs"
        return "incomplete" if self.missing else "exact"

    @property
    def missing_events(self) -> int:
        return sum(d.missing for d in self.missing)


def overall(reports: list[RollupReport]) -> Verdict:
    verdicts = {r.verdict for r in reports}
    for worst in ("differs", "incomplete"):
        if worst in verdicts:
            return worst  # type: ignore[return-value]
    return "exact"


def _window_expr(spec: RollupSpec) -> str:
    return "toStartOfMinute(ts)" if spec.granularity == "minute" else "toStartOfHour(ts)"


def _raw_dims(spec: RollupSpec) -> list[str]:
    return ["event_name", *(f"properties[{_quote(k)}]" for k in spec.dimensions[1:])]


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def verify_rollup(client: Client, spec: RollupSpec, project_id: str | None = None) -> list[RollupReport]:
    """One report per project (only *project_id*'s when given), in project order."""
    dims = ", ".join(f"`{d}`" for d in spec.dimensions)
    only = " WHERE project_id = {project:String}" if project_id is not None else ""
    params = {"project": project_id} if project_id is not None else {}
    # Sketches are binary: base64 keeps them intact through the client's String decoding.
    sketch = ", groupArray(base64Encode(sketch))" if spec.uniques else ""
    rollup_rows = client.query(
        f"SELECT project_id, window_start, {dims}, sum(count){sketch}"
        f" FROM `{table_name(spec)}` FINAL{only} GROUP BY project_id, window_start, {dims}",
        parameters=params,
    ).result_rows
    n = len(spec.dimensions)
    rollups: dict[str, dict[Cell, tuple[int, list[bytes]]]] = {}
    for row in rollup_rows:
        cell = (row[1], tuple(str(v) for v in row[2 : 2 + n]))
        sketches = [base64.b64decode(b) for b in row[3 + n] if b] if spec.uniques else []
        rollups.setdefault(str(row[0]), {})[cell] = (int(row[2 + n]), sketches)
    raw_dims = ", ".join(_raw_dims(spec))
    uniq = ", uniqExact(user_id)" if spec.uniques else ""
    raw_rows = client.query(
        f"SELECT project_id, {_window_expr(spec)} AS w, {raw_dims}, count(){uniq} FROM events FINAL{only}"
        f" GROUP BY project_id, w, {raw_dims}",
        parameters=params,
    ).result_rows
    raw: dict[str, dict[Cell, tuple[int, int]]] = {}
    for row in raw_rows:
        cell = (row[1], tuple(str(v) for v in row[2 : 2 + n]))
        raw.setdefault(str(row[0]), {})[cell] = (int(row[2 + n]), int(row[3 + n]) if spec.uniques else 0)
    projects = sorted(set(rollups) | set(raw) | ({project_id} if project_id is not None else set()))
    return [_compare(spec, p, rollups.get(p, {}), raw.get(p, {})) for p in projects]


def _compare(spec: RollupSpec, project_id: str, rollups: dict[Cell, tuple[int, list[bytes]]],
             raw: dict[Cell, tuple[int, int]]) -> RollupReport:
    report = RollupReport(spec.name, project_id)
    worst = None
    for cell in sorted(set(rollups) | set(raw)):
        count, sketches = rollups.get(cell, (0, []))
        raw_count, exact_users = raw.get(cell, (0, 0))
        report.cells += 1
        report.raw_events += raw_count
        report.rollup_events += count
        if count != raw_count:
            diff = Difference(spec.name, project_id, cell[0], cell[1], count, raw_count)
            (report.missing if count < raw_count else report.excess).append(diff)
        if spec.uniques and exact_users and sketches:
            union = hll.union((hll.from_bytes(s) for s in sketches), spec.lg_k)
            if hll.estimating(union):
                report.estimating_cells += 1
                error = abs(hll.estimate(union) - exact_users) / exact_users
                worst = error if worst is None else max(worst, error)
    report.max_uniques_error = worst
    return report


def verify(client: Client, specs: list[RollupSpec], project_id: str | None = None) -> list[RollupReport]:
    """Reports of every project (or of *project_id* only), by project, then in *specs* order."""
    reports = [r for spec in specs for r in verify_rollup(client, spec, project_id)]
    order = {spec.name: i for i, spec in enumerate(specs)}
    return sorted(reports, key=lambda r: (r.project_id, order[r.rollup]))


def projects(reports: list[RollupReport]) -> list[str]:
    """The projects the reports cover, in order."""
    return sorted({r.project_id for r in reports})
