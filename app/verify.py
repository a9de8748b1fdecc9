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


def verify_rollup(client: Client, spec: RollupSpec, project_id: str | None = None,
                  table: str | None = None, events_table: str = "events") -> list[RollupReport]:
    """One report per project (only *project_id*'s when given), in project order. *table* and
    *events_table* point the check at other tables than the live ones (a replay's generation)."""
    dims = ", ".join(f"`{d}`" for d in spec.dimensions)
    only = " WHERE project_id = {project:String}" if project_id is not None else ""
    params = {"project": project_id} if project_id is not None else {}
    # Sketches are binary: base64 keeps them intact through the client's String decoding.
    sketch = ", groupArray(base64Encode(sketch))" if spec.uniques else ""
    rollup_rows = client.query(
        f"SELECT project_id, window_start, {dims}, sum(count){sketch}"
        f" FROM `{table or table_name(spec)}` FINAL{only} GROUP BY project_id, window_start, {dims}",
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
        f"SELECT project_id, {_window_expr(spec)} AS w, {raw_dims}, count(){uniq} FROM `{events_table}` FINAL{only}"
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


def stored_offsets(client: Client, raw_topic: str, events_table: str = "events") -> dict[int, int]:
    """Per raw partition, the highest offset the live tables hold an event or a letter of."""
    rows = client.query(
        f"SELECT _partition, max(_offset) FROM `{events_table}` GROUP BY _partition UNION ALL"
        " SELECT source_partition, max(source_offset) FROM dlq WHERE source_topic = {t:String}"
        " GROUP BY source_partition", parameters={"t": raw_topic}).result_rows
    out: dict[int, int] = {}
    for p, o in rows:
        out[int(p)] = max(int(o), out.get(int(p), -1))
    return out


def verify_generation(
    client: Client, targets: tuple[str, ...], tables: dict[str, str], specs: list[RollupSpec],
    raw_topic: str, partitions: dict[str, tuple[int, int, int, int]], hll_tolerance: float,
    complete: bool, final: bool = True,
) -> list[str]:
    """The differences of a replay's generation, before it may be swapped in ([] = none).

    *tables* maps live table names to the generation's. *partitions* holds, per source
    partition of the replay, (start, committed position, events read, events accounted for
    elsewhere: duplicates dropped, the other events of redriven batch letters, letters filed at
    a redriven letter's original position).

    - events target: every event read from a raw partition's range ends in exactly one place:
      a generation row at its position, a dead letter for its position (in the `dlq` table), or
      the replay's count of duplicates; and no event_id has two rows;
    - *final* (under the fence, the live tables still): the replay read every raw partition at
      least up to the highest offset the live tables (events and dlq) hold, so an end judged by
      a quiet period cannot have come too early;
    - every rebuilt rollup equals a GROUP BY over the events it was built from (the
      generation's events, or the live events table for a rollup target), and its uniques are
      within *hll_tolerance* of the exact count. With *complete* False (a rollup target before
      the hand-over: the live table is still growing), a rollup only needs not to count more.
    """
    diffs: list[str] = []
    events_target = "events" in targets
    events_table = tables["events"] if events_target else "events"
    if events_target:
        for key, (start, committed, read, elsewhere) in sorted(partitions.items()):
            p = int(key)
            rows, letters = client.query(
                f"SELECT (SELECT count() FROM `{events_table}` WHERE _partition = {{p:UInt32}}"
                " AND _offset >= {a:UInt64} AND _offset < {b:UInt64}),"
                " (SELECT count(DISTINCT source_offset, event_index) FROM dlq"
                " WHERE source_topic = {t:String} AND source_partition = {p:UInt32}"
                " AND source_offset >= {a:UInt64} AND source_offset < {b:UInt64}"
                f" AND (source_offset, event_index) NOT IN (SELECT _offset, toInt32(_index) FROM `{events_table}`"
                " WHERE _partition = {p:UInt32}))",
                parameters={"p": p, "a": start, "b": committed, "t": raw_topic}).result_rows[0]
            if int(rows) + int(letters) + elsewhere != read:
                diffs.append(
                    f"raw partition {p} offsets {start}..{committed - 1}: {read} events read, but"
                    f" {rows} rows + {letters} dead letters + {elsewhere} duplicates or redrives"
                    f" = {int(rows) + int(letters) + elsewhere}")
        for p, stored_until in (stored_offsets(client, raw_topic) if final else {}).items():
            read_until = partitions.get(str(p), (0, 0, 0, 0))[1]
            if read_until <= stored_until:
                diffs.append(f"raw partition {p}: the replay read up to offset {read_until - 1}, but the live"
                             f" tables hold events or letters of offset {stored_until}")
        n, distinct = client.query(f"SELECT count(), uniqExact(event_id) FROM `{events_table}`").result_rows[0]
        if n != distinct:
            diffs.append(f"{int(n) - int(distinct)} events have more than one row in {events_table}")
    wanted = specs if events_target else [s for s in specs if f"rollup:{s.name}" in targets]
    for spec in wanted:
        table = tables[table_name(spec)]
        for report in verify_rollup(client, spec, None, table, events_table):
            if report.excess or (complete and report.missing):
                diffs.append(f"rollup {spec.name} (project {report.project_id}): {report.verdict},"
                             f" {report.rollup_events} of {report.raw_events} events"
                             f" in {len(report.excess) + len(report.missing)} windows that differ")
            if report.max_uniques_error is not None and report.max_uniques_error > hll_tolerance:
                diffs.append(f"rollup {spec.name} (project {report.project_id}): uniques off by"
                             f" {report.max_uniques_error:.2%} (tolerance {hll_tolerance:.2%})")
    return diffs
