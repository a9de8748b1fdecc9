"""The rollup tables as the store agent sees them: full-state upserts, and reading states back.

No Faust here: the store agent (agents/store.py) applies events to the pure
`tables.aggregate.Aggregator` and calls this writer at each flush. The rollup tables are the
only durable copy of the rollup state: a flush upserts every changed partial (its full state,
versioned by its position), a worker beginning a partition reads the recent states back, and
a late event for an evicted window has that window's state loaded back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from clickhouse_connect.driver.client import Client

from agents.sink import ClickHouseCalls
from tables import rollup_tables
from tables.rollups import RollupSpec
from tables.state import PartialState, StateKey


class RollupWriter:
    """Upserts partials into their rollup tables (one insert per rollup) and reads them back."""

    def __init__(self, client_factory: Callable[[], Client], specs: tuple[RollupSpec, ...]) -> None:
        self._calls = ClickHouseCalls(client_factory)
        self._specs = {s.name: s for s in specs}

    async def write(self, items: Iterable[tuple[StateKey, bytes]]) -> None:
        """Upsert the given states (their bytes, taken when the flush began)."""
        by_rollup: dict[str, list[tuple[StateKey, PartialState]]] = defaultdict(list)
        for key, data in items:
            by_rollup[key.rollup].append((key, PartialState.from_bytes(data)))
        inserts = []
        for name, part in by_rollup.items():
            spec = self._specs[name]
            columns, rows = rollup_tables.upsert_rows(spec, part)
            inserts.append((rollup_tables.table_name(spec), rows, columns))

        def insert_all(client: Client) -> None:
            for table, rows, columns in inserts:
                client.insert(table, rows, column_names=columns)

        await self._calls.run("rollup upsert", insert_all)

    async def recent(self, partition: int) -> tuple[dict[str, int], list[tuple[StateKey, bytes]]]:
        """(resident bound per rollup, states) to begin *partition* with; see
        `rollup_tables.recent_states`. A rollup with nothing stored has no bound."""
        bounds: dict[str, int] = {}
        states: list[tuple[StateKey, bytes]] = []

        def read(client: Client) -> None:
            for spec in self._specs.values():
                bound, found = rollup_tables.recent_states(client, spec, partition)
                if bound is not None:
                    bounds[spec.name] = bound
                    states.extend(found)

        await self._calls.run("rollup restore", read)
        return bounds, states

    async def load(self, keys: Iterable[StateKey]) -> dict[StateKey, bytes]:
        """The stored states of *keys* (evicted windows a late event needs); absent: absent."""
        groups: dict[tuple[str, int], list[StateKey]] = defaultdict(list)
        for key in keys:
            groups[(key.rollup, key.partition)].append(key)
        found: dict[StateKey, bytes] = {}

        def read(client: Client) -> None:
            for (rollup, partition), wanted in groups.items():
                found.update(rollup_tables.load_states(client, self._specs[rollup], partition, wanted))

        await self._calls.run("rollup load", read)
        return found
