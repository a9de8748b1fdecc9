"""ClickHouse tables of the rollups: one per rollup definition, full-state upserts.

Rollups are defined in configuration, so their tables are derived from the definitions rather
than written as numbered migrations: `rearview migrate` runs the migrations, then creates each
configured rollup's table if it is missing and checks that an existing one still has the
definition's columns (a changed definition under the same name is refused: give it a new name,
and rebuild it by replay).

Each row is one partial aggregate: (window, dimensions, events.clean partition) with its full state
and a version. The version is the state's ``applied_through`` position packed into one integer:
it only grows, so ReplacingMergeTree keeps the newest state of a partial, and a re-upsert of the
same state after a crash converges. Queries merge partials across partitions: ``sum(count)``,
and HLL sketches (DataSketches bytes in ``sketch``) unioned by the query layer. The ``state``
column is the only durable copy of the worker's rollup state: a worker beginning a partition
reads its recent states (`recent_states`), and older ones when a late event needs them
(`load_states`). ``late`` is always 0 (kept so the table keeps its columns).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
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


def columns(spec: RollupSpec) -> list[tuple[str, str]]:
    """(name, ClickHouse type) of the rollup's table, in insert order."""
    cols = [("window_start", "DateTime('UTC')")]
    cols += [(d, "LowCardinality(String)") for d in dimension_columns(spec)]
    cols += [("partition", "UInt32"), ("count", "UInt64"), ("late", "UInt64")]
    cols += [(sum_column(k), "Float64") for k in spec.sums]
    cols += [("sum_errors", "UInt64"), ("sketch", "String"), ("version", "UInt64")]
    # The partial's exact state (PartialState.to_bytes(): exact sums, watermarks), from which
    # a worker restores the partition it is assigned.
    cols += [("state", "String")]
    return cols


def create_statement(spec: RollupSpec) -> str:
    body = ",\n    ".join(f"`{name}` {kind}" for name, kind in columns(spec))
    order = ", ".join(["window_start", *(f"`{d}`" for d in dimension_columns(spec)), "partition"])
    return (
        f"CREATE TABLE IF NOT EXISTS `{table_name(spec)}`\n(\n    {body},\n"
        f"    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)\n)\n"
        f"ENGINE = ReplacingMergeTree(version)\nPARTITION BY toYYYYMM(window_start)\n"
        f"ORDER BY ({order})"
    )


def ensure_tables(client: Client, specs: Iterable[RollupSpec]) -> list[str]:
    """Create missing rollup tables; refuse a table whose columns no longer match its spec."""
    created = []
    for spec in specs:
        name = table_name(spec)
        existing = client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}"
            " ORDER BY position",
            parameters={"t": name},
        ).result_rows
        if not existing:
            client.command(create_statement(spec))
            created.append(name)
            continue
        have = [(str(n), str(t)) for n, t in existing if n != "updated_at"]
        if have != columns(spec):
            raise RollupTableError(
                f"table {name} does not match rollup {spec.name!r} as configured; a rollup's"
                " definition cannot change under the same name: define a new rollup name"
            )
    return created


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
                datetime.fromtimestamp(key.window_start_ms / 1000, tz=timezone.utc),
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
        f"SELECT toUnixTimestamp(window_start), {dims}, base64Encode(state)"
        f" FROM `{table_name(spec)}` FINAL WHERE partition = {{p:UInt32}} AND {where}",
        parameters={"p": partition, **parameters},
    ).result_rows
    n = len(spec.dimensions)
    return [
        (StateKey(partition, spec.name, int(row[0]) * 1000, tuple(str(v) for v in row[1 : 1 + n])),
         base64.b64decode(row[1 + n]))
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
    """The stored states of *keys* (all of *spec* and *partition*); absent keys are absent."""
    wanted = set(keys)
    windows = sorted({k.window_start_ms // 1000 for k in wanted})
    if not windows:
        return {}
    found = _states(client, spec, partition, "toUnixTimestamp(window_start) IN {w:Array(Int64)}",
                    {"w": windows})
    return {key: data for key, data in found if key in wanted}
