"""The aggregate agent: events.clean -> windowed partials -> Faust table + ClickHouse rollups.

Wiring only; the aggregation is `tables.aggregate.Aggregator` (pure). Per take, the batch is
admitted through the offset keeper (in order, each offset once), each Arrow block is applied to
the in-memory partials, and the batch is held. A flush, every
`flush_interval_s` on a timer (and never only when the next event arrives), writes every
dirty partial once: to the Faust table's changelog, on the changelog partition equal to the
partial's source partition, and as a full-state row to its ClickHouse rollup table. Only when
both are durable are the held batches reported done (so their offsets can be committed) and
acked. After a crash, Faust restores the table from the
changelog, the partition's partials are loaded back before its first block, and the replay
from the committed offset is applied exactly once thanks to each partial's position watermark
(see tables/aggregate.py).

The table is written with `send_changelog(partition, ...)` and `table.data[...]` instead of
`table[key] = value`: Faust would pick the changelog partition from "the current event", which
in a batch is whichever event came last, not the partition the partial belongs to.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import faust
import structlog
from clickhouse_connect.driver.client import Client

from agents.ledger import Receipt
from agents.offsets import OffsetKeeper, bytes_topic
from agents.sink import ClickHouseCalls, decode_block
from app.exceptions import ServiceUnavailable
from app.retry import retry_forever
from tables import rollup_tables
from tables.aggregate import Aggregator
from tables.rollups import RollupSpec
from tables.state import PartialState, StateKey, restore_plan

log = structlog.get_logger(__name__)

CHANGELOG_TIMEOUT_S = 30.0


@dataclass
class RollupCounters:
    applied: int = 0
    skipped: int = 0
    late: int = 0
    flushes: int = 0
    keys_written: int = 0
    last_flush_at: float = 0.0


class RollupWriter:
    """Upserts partials into their rollup tables, one insert per rollup."""

    def __init__(self, client_factory: Callable[[], Client], specs: tuple[RollupSpec, ...]) -> None:
        self._calls = ClickHouseCalls(client_factory)
        self._specs = {s.name: s for s in specs}

    async def write(self, items: list[tuple[StateKey, PartialState]]) -> None:
        by_rollup: dict[str, list[tuple[StateKey, PartialState]]] = defaultdict(list)
        for key, state in items:
            by_rollup[key.rollup].append((key, state))
        inserts = []
        for name, part in by_rollup.items():
            spec = self._specs[name]
            columns, rows = rollup_tables.upsert_rows(spec, part)
            inserts.append((rollup_tables.table_name(spec), rows, columns))

        def insert_all(client: Client) -> None:
            for table, rows, columns in inserts:
                client.insert(table, rows, column_names=columns)

        await self._calls.run("rollup upsert", insert_all)

    async def stored(self, partition: int) -> list[tuple[StateKey, bytes]]:
        """The partials stored in ClickHouse for one source partition, all rollups."""
        out: list[tuple[StateKey, bytes]] = []

        def read(client: Client) -> None:
            for spec in self._specs.values():
                out.extend(rollup_tables.stored_states(client, spec, partition))

        await self._calls.run("rollup restore", read)
        return out


@dataclass
class RollupDeps:
    aggregator: Aggregator
    writer: RollupWriter
    clean_topic: str
    partitions: int
    take_max: int
    take_within_s: float
    flush_interval_s: float
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    counters: RollupCounters = field(default_factory=RollupCounters)


def install(app: faust.App, deps: RollupDeps, offsets: OffsetKeeper) -> None:
    clean = bytes_topic(app, deps.clean_topic)
    # bytes keys and values: Faust stores them raw (StateKey.to_str() and PartialState.to_bytes()).
    table = app.Table("rollup-state", partitions=deps.partitions, key_type=bytes, value_type=bytes)
    agg = deps.aggregator
    counters = deps.counters
    lock = asyncio.Lock()
    # Batches taken and applied, reported done (and acked) at the next completed flush.
    held: list[tuple[list[faust.EventT], Receipt]] = []
    restored: set[int] = set()
    stream_ref: list[faust.StreamT] = []

    async def restore_partition(partition: int) -> None:
        """Load every stored partial of *partition* before its first block.

        Two durable copies exist: the table (restored by Faust from its changelog) and the
        rollup tables in ClickHouse; every flush writes both, in that order, before its batches
        are done. Each key is loaded from the newer copy (`restore_plan`): a changelog recovery
        can stop short (Faust trusts the broker's end offsets, which the embedded broker reports
        stale), and a crash between the two writes leaves ClickHouse behind, to be rewritten.
        """
        prefix = f"{partition}|"
        in_table = []
        for key, value in list(table.data.items()):
            text = key.decode() if isinstance(key, bytes) else key
            if text.startswith(prefix):
                in_table.append((StateKey.parse(text), value))
        stored = await retry_forever(
            "rollup_restore", lambda: deps.writer.stored(partition),
            deps.retry_initial_s, deps.retry_max_s)
        plan = restore_plan(in_table, stored)
        for item in plan:
            agg.restore(item.key, item.data, rewrite=item.rewrite)
        restored.add(partition)
        log.info("rollup_partition_restored", partition=partition, partials=len(plan),
                 from_table=len(in_table), in_clickhouse=len(stored),
                 stale_in_clickhouse=sum(item.rewrite for item in plan))

    async def flush() -> None:
        async with lock:
            dirty = agg.dirty()
            # The batches applied so far; they leave `held` only once done, so a flush that
            # fails or is cancelled leaves them for the next one.
            n_held = len(held)
            if dirty:
                items = [(k, v) for k, v in dirty.items()]
                encoded = [(k.to_str().encode(), k.partition, v.to_bytes()) for k, v in items]
                for key_bytes, _, value in encoded:
                    table.data[key_bytes] = value

                async def changelog_durable() -> None:
                    """Send every dirty partial to its partition; a retry sends them again."""
                    try:
                        futures = [
                            await table.changelog_topic.send(
                                key=key_bytes, value=value, partition=partition,
                                key_serializer="raw", value_serializer="raw")
                            for key_bytes, partition, value in encoded
                        ]
                        await asyncio.wait_for(asyncio.gather(*futures), CHANGELOG_TIMEOUT_S)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        raise ServiceUnavailable(f"changelog write failed: {exc!r}") from exc

                await retry_forever("rollup_changelog", changelog_durable,
                                    deps.retry_initial_s, deps.retry_max_s)
                await retry_forever("rollup_clickhouse", lambda: deps.writer.write(items),
                                    deps.retry_initial_s, deps.retry_max_s)
                agg.mark_flushed()
                counters.keys_written += len(items)
            counters.flushes += 1
            counters.last_flush_at = time.time()
            flushed = held[:n_held]
            del held[:n_held]
            if stream_ref:
                for taken, receipt in flushed:
                    await offsets.done(stream_ref[0], taken, receipt)

    @app.agent(clean, name="aggregate")
    async def aggregate(stream: faust.StreamT) -> None:
        stream_ref[:] = [stream]
        async for taken in stream.noack_take(deps.take_max, within=deps.take_within_s):
            async with lock:
                events, receipt = offsets.admit("aggregate", taken)
                for event in events:
                    msg = event.message
                    if msg.partition not in restored:
                        await restore_partition(msg.partition)
                    try:
                        block = decode_block(msg.value)
                    except ValueError:
                        continue  # the sink agent dead-letters undecodable blocks
                    try:
                        result = agg.apply(block)
                    except ValueError as exc:
                        # A block the validate stage could not have written (null provenance);
                        # its events are still stored raw, and `rearview verify` will show them.
                        log.error("rollup_block_rejected", partition=msg.partition,
                                  offset=msg.offset, error=str(exc))
                        continue
                    counters.applied += result.applied
                    counters.skipped += result.skipped
                    counters.late += result.late
                held.append((taken, receipt))

    @app.timer(deps.flush_interval_s)
    async def flush_timer() -> None:
        await flush()

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        async with lock:
            for tp in revoked:
                if tp.topic == deps.clean_topic:
                    agg.drop_partition(tp.partition)
                    restored.discard(tp.partition)
            # Events of revoked partitions will be redelivered to their new owner (the offset
            # keeper ignores their receipts from now on).
            held[:] = [([e for e in taken if e.message.tp not in revoked], receipt)
                       for taken, receipt in held]

    _ = (aggregate, flush_timer, on_revoked)
