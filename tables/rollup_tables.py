"""ClickHouse tables of the rollups: one per rollup definition, full-state upserts.

Rollups are defined in configuration, so their tables are derived from the definitions rather
than written as numbered migrations: `rearview migrate` runs the migrations, then creates each
configured rollup's table if it is missing and checks that an existing one still has the
definition's columns (a changed definition under the same name is refused: give it a new name,
and rebuild it by replay).

Each row is one partial aggregate: (project, window, dimensions, events.clean partition) with
its full state and a version. The version is the state's ``applied_through`` position packed
into one integer: it only grows, so ReplacingMergeTree keeps the newest state of a partial, and
a re-upsert of the same state after a crash converges. Every column of the partial's identity
is in the sorting key, ``project_id`` included: otherwise two projects' partials of one window,
dims and partition would collapse into one. Queries filter one project and merge partials
across partitions: ``sum(count)``, and HLL sketches (DataSketches bytes in ``sketch``) unioned
by the query layer. The ``state`` column is the only durable copy of the worker's rollup state:
a worker beginning a partition reads its recent states (`recent_states`), and older ones when a
late event needs them (`load_states`). ``late`` is always 0 (kept so the table keeps its
columns).

Tables created before projects
------------------------------
They have no ``project_id`` and are upgraded in place by `ensure_tables`, without copying a row:

1. ``ADD COLUMN project_id LowCardinality(String) FIRST, MODIFY ORDER BY (window_start, dims...,
   partition, project_id)``. ClickHouse lets the sorting key grow only by a column added in the
   same ALTER, and only one *without* a default expression ("Newly added column has a default
   expression, so adding expressions that use it to the sorting key is forbidden"): the rows
   already stored read ``''`` at this point.
2. ``MODIFY COLUMN project_id DEFAULT <legacy project>``: parts written before step 1 have no
   ``project_id`` data, and ClickHouse computes a missing column from its current default, so
   every old row now reads the legacy project (merges write it into the parts over time). The
   default is a constant and is never changed again, so the sort order of old parts holds.

The legacy project is the deployment's ``project_id`` setting (``default`` unless configured),
the project the collector stamped on every event it took before this change. The states in the
old rows therefore continue exactly: the worker restores them as that project's partials and
skips what they already applied. If services had written other projects straight to Kafka,
the old rows mixed those projects' events and cannot be split: `rearview verify` then shows the
windows written before the upgrade as ``differs`` (legacy project) and ``incomplete`` (the
others), and only a rebuild by replay fixes them. An upgraded table keeps ``project_id`` last
in its sorting key; a table created now has it first (reads filter one project).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from core.exceptions import RearviewError
from tables import hll
from tables.rollups import RollupSpec
from tables.state import PartialState, StateKey

INDEX_BITS = 24


class RollupTableError(RearviewError):
    pass


def table_name(spec: RollupSpec) -> str:
    return f"rollup_{spec.name}"


def dimension_columns(spec: RollupSpec) -> list[str]:
    return list(spec.dimensions)


def sum_column(key: str) -> str:
    return f"sum_{key}"


PROJECT_COLUMN = ("project_id", "LowCardinality(String)")


def columns(spec: RollupSpec) -> list[tuple[str, str]]:
    """(name, ClickHouse type) of the rollup's table, in insert order."""
    cols = [PROJECT_COLUMN, ("window_start", "DateTime('UTC')")]
    cols += [(d, "LowCardinality(String)") for d in dimension_columns(spec)]
    cols += [("partition", "UInt32"), ("count", "UInt64"), ("late", "UInt64")]
    cols += [(sum_column(k), "Float64") for k in spec.sums]
    cols += [("sum_errors", "UInt64"), ("sketch", "String"), ("version", "UInt64")]
    # The partial's exact state (PartialState.to_bytes(): exact sums, watermarks), from which
    # a worker restores the partition it is assigned.
    cols += [("state", "String")]
    return cols


def _partial_key(spec: RollupSpec) -> list[str]:
    """The partial's identity but its project: (window, dims..., partition)."""
    return ["window_start", *(f"`{d}`" for d in dimension_columns(spec)), "partition"]


def sorting_key(spec: RollupSpec) -> str:
    """The ORDER BY of a table created now: the project first, as every read filters one."""
    return ", ".join(["project_id", *_partial_key(spec)])


def upgraded_sorting_key(spec: RollupSpec) -> str:
    """The ORDER BY of a table created before projects and upgraded: ClickHouse can only
    append the new column."""
    return ", ".join([*_partial_key(spec), "project_id"])


def create_statement(spec: RollupSpec) -> str:
    body = ",\n    ".join(f"`{name}` {kind}" for name, kind in columns(spec))
    return (
        f"CREATE TABLE IF NOT EXISTS `{table_name(spec)}`\n(\n    {body},\n"
        f"    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)\n)\n"
        f"ENGINE = ReplacingMergeTree(version)\nPARTITION BY toYYYYMM(window_start)\n"
        f"ORDER BY ({sorting_key(spec)})"
    )


def upgrade_statements(spec: RollupSpec, legacy_project: str) -> list[str]:
    """The two ALTERs that give a table created before projects its ``project_id`` (see the
    module docstring): the rows already stored read *legacy_project*."""
    table = f"`{table_name(spec)}`"
    return [
        (f"ALTER TABLE {table} ADD COLUMN `project_id` LowCardinality(String) FIRST,"
         f" MODIFY ORDER BY ({upgraded_sorting_key(spec)})"),
        f"ALTER TABLE {table} MODIFY COLUMN `project_id` DEFAULT {_literal(legacy_project)}",
    ]


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _normalized(key: str) -> str:
    return key.replace("`", "").replace(" ", "")


@dataclass(frozen=True)
class Ensured:
    """What `ensure_tables` did: tables created, tables upgraded from before projects."""

    created: list[str] = field(default_factory=list)
    upgraded: list[str] = field(default_factory=list)


def ensure_tables(client: Client, specs: Iterable[RollupSpec], legacy_project: str = "default") -> Ensured:
    """Create missing rollup tables; upgrade in place a table created before projects (its
    rows become *legacy_project*'s: pass the deployment's ``project_id``); refuse a table whose
    columns or sorting key no longer match its spec."""
    done = Ensured()
    for spec in specs:
        name = table_name(spec)
        have, defaults, key = _describe(client, name)
        if not have:
            client.command(create_statement(spec))
            done.created.append(name)
            continue
        if have == columns(spec)[1:] and _normalized(key) == _normalized(", ".join(_partial_key(spec))):
            for statement in upgrade_statements(spec, legacy_project):
                client.command(statement)
            done.upgraded.append(name)
            have, defaults, key = _describe(client, name)
        elif (have == columns(spec) and _normalized(key) == _normalized(upgraded_sorting_key(spec))
              and not defaults.get("project_id")):
            # Interrupted between the two ALTERs: finish the upgrade.
            client.command(upgrade_statements(spec, legacy_project)[1])
            done.upgraded.append(name)
            have, defaults, key = _describe(client, name)
        if have != columns(spec):
            raise RollupTableError(
                f"table {name} does not match rollup {spec.name!r} as configured; a rollup's"
                " definition cannot change under the same name: define a new rollup name"
            )
        if _normalized(key) not in (_normalized(sorting_key(spec)), _normalized(upgraded_sorting_key(spec))):
            raise RollupTableError(
                f"table {name} is ordered by ({key}), not by its partials' identity"
                f" ({sorting_key(spec)}): its partials would collapse into each other"
            )
    return done


def _describe(client: Client, name: str) -> tuple[list[tuple[str, str]], dict[str, str], str]:
    """(columns but updated_at, each column's default kind, sorting key) of table *name*."""
    rows = client.query(
        "SELECT name, type, default_kind FROM system.columns"
        " WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
        parameters={"t": name},
    ).result_rows
    if not rows:
        return [], {}, ""
    key = client.query(
        "SELECT sorting_key FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": name},
    ).result_rows[0][0]
    have = [(str(n), str(t)) for n, t, _ in rows if n != "updated_at"]
    return have, {str(n): str(k) for n, _, k in rows}, str(key)


def version(state: PartialState) -> int:
    offset, index = state.applied_through
    return (offset << INDEX_BITS) | index if offset >= 0 else 0


def upsert_rows(
    spec: RollupSpec, items: Sequence[tuple[StateKey, PartialState]]
) -> tuple[list[str], list[list[Any]]]:
    """Column names and rows for an insert of the given partials of *spec*."""
    names = [n for n, _ in columns(spec)]
    rows = []
    for key, state in items:
        sums = state.sums
        rows.append(
            [
                key.project_id,
                datetime.fromtimestamp(key.window_start_ms / 1000, tz=UTC),
                *key.dims,
                key.partition,
                state.count,
                state.late,
                *(sums.get(k, 0.0) for k in spec.sums),
                state.sum_errors,
                hll.to_bytes(state.sketch) if state.sketch is not None else b"",
                version(state),
                state.to_bytes(),
            ]
        )
    return names, rows


def _states(client: Client, spec: RollupSpec, partition: int, where: str,
            parameters: dict[str, Any]) -> list[tuple[StateKey, bytes]]:
    dims = ", ".join(f"`{d}`" for d in dimension_columns(spec))
    rows = client.query(
        f"SELECT project_id, toUnixTimestamp(window_start), {dims}, base64Encode(state)"
        f" FROM `{table_name(spec)}` FINAL WHERE partition = {{p:UInt32}} AND {where}",
        parameters={"p": partition, **parameters},
    ).result_rows
    n = len(spec.dimensions)
    return [
        (StateKey(partition, str(row[0]), spec.name, int(row[1]) * 1000,
                  tuple(str(v) for v in row[2 : 2 + n])),
         base64.b64decode(row[2 + n]))
        for row in rows
    ]


def recent_states(client: Client, spec: RollupSpec,
                  partition: int) -> tuple[int | None, list[tuple[StateKey, bytes]]]:
    """(resident bound, states) to begin *partition* with: every stored state whose window
    starts at or after the bound, which is the newest stored window minus the granularity and
    the allowed lateness (older states are loaded on demand). (None, []) when nothing is
    stored for the partition."""
    newest = client.query(
        f"SELECT max(toUnixTimestamp(window_start)), count() FROM `{table_name(spec)}`"
        " WHERE partition = {p:UInt32}",
        parameters={"p": partition},
    ).result_rows[0]
    if not newest[1]:
        return None, []
    bound_ms = int(newest[0]) * 1000 - spec.granularity_ms - spec.allowed_lateness_ms
    states = _states(client, spec, partition, "window_start >= fromUnixTimestamp({w:Int64})",
                     {"w": max(0, bound_ms // 1000)})
    return bound_ms, states


def load_states(client: Client, spec: RollupSpec, partition: int,
                keys: Iterable[StateKey]) -> dict[StateKey, bytes]:
    """The stored states of *keys* (all of *spec* and *partition*, of any projects); absent
    keys are absent."""
    wanted = set(keys)
    windows = sorted({k.window_start_ms // 1000 for k in wanted})
    if not windows:
        return {}
    projects = sorted({k.project_id for k in wanted})
    found = _states(client, spec, partition,
                    "toUnixTimestamp(window_start) IN {w:Array(Int64)} AND project_id IN {pr:Array(String)}",
                    {"w": windows, "pr": projects})
    return {key: data for key, data in found if key in wanted}
