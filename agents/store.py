"""The store agent: events.clean -> dedup -> the events table and the rollups. Wiring only.

events.clean is partitioned by event_id (the validate stage picks `event_partition`), so every
copy of an event (a client's retry, the same event over HTTP and Kafka, validate's own
re-production after a crash) arrives on one partition, read in order by one agent. Per take:

1. the batch is admitted through the offset keeper (in order, each offset once);
2. a partition seen for the first time begins from storage: its dedup state from the events
   table (first copies inserted within the horizon, with their events.clean positions), its
   rollup states from the rollup tables (the recent ones; older ones on demand);
3. each message's rows get a dedup verdict (tables/dedup.py): duplicates are dropped and
   counted, first copies kept. A first copy whose event time is older than the dedup horizon
   may copy an event stored before the horizon began (a backfill of events also tracked
   live): those are looked up in the events table by event_id within their time range, one
   query per message, and dropped if stored at another position;
4. kept rows not already in the events table are inserted, with their events.clean position;
5. kept rows are applied to the rollups (tables/aggregate.py), loading any evicted window
   state a late event needs;
6. the batch is held, and reported done at the next completed flush.

A flush, every `flush_interval_s` on a timer (never only when the next event arrives), upserts
every changed partial into its rollup table, evicts idle closed windows every
`evict_interval_s`, then reports the held batches done, so their offsets can be committed.
One dedup verdict serves both the events table and the rollups: they cannot disagree about
which copy of an event counts.

The replay hand-over (tables/fence.py): the store announces the events.clean partitions it
owns in a heartbeat and polls the replay fences on its flush timer. A fence pauses it: no batch
is admitted, the last one is flushed and reported done, its partitions are acknowledged. A
release with ``rebegin`` (after a generation swap) drops every partition's in-memory state and
bumps its epoch, as a revoke does, so each begins again from the swapped tables; a fence that
expires unreleased is abandoned and the store resumes as it was. After an ``events`` swap the
dedup state holds the replayed rows at ``REPLAYED_OFFSET``, so a copy of a replayed event read
from events.clean is a duplicate, and the store's own partials restore nothing of the
replay-space ones (`recent_states` and `load_states` read its partition number only). ClickHouse unreachable is an outage (retried forever, nothing
acked); an events.clean message that is not a clean block, or rows whose times no column can
hold, are dead-lettered.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from clickhouse_connect.driver.client import Client

from agents.ledger import Receipt
from agents.offsets import OffsetKeeper, bytes_topic
from agents.records import Invalid, SourceMeta
from agents.rollup import RollupWriter
from agents.sink import BlockWriter, ClickHouseCalls, decode_block
from agents.stages import StageWatch
from tables import fence as fences
from tables.aggregate import Aggregator, MissingStates
from tables.columns import int64
from tables.dedup import REPLAYED_OFFSET, Deduper, ids_from_strings, pack_position
from tables.logs import NO_EPOCH, LogBases
from tables.state import StateKey

log = structlog.get_logger(__name__)

# What the events table and the rollup tables can hold: DateTime64(3) and DateTime ranges.
MIN_TIME_MS = 0
MAX_TIME_MS = 4_294_967_295_000  # 2106-02-07, the end of DateTime('UTC') (rollup windows)


@dataclass
class StoreCounters:
    inserted: int = 0
    duplicates: int = 0
    duplicates_beyond_horizon: int = 0  # of which found in the events table, not in memory
    already_stored: int = 0  # redelivered first copies the events table already held
    applied: int = 0
    skipped: int = 0
    states_loaded: int = 0
    states_evicted: int = 0
    flushes: int = 0
    keys_written: int = 0
    last_flush_at: float = 0.0
    fences_paused: int = 0  # fences this store paused, flushed and acknowledged for
    fences_abandoned: int = 0  # of which expired before their release
    rebegins: int = 0  # times every partition began again from the tables (after a swap)


class FirstCopies:
    """Reads back the first copies stored in the events table, to rebuild the dedup state."""

    def __init__(self, calls: ClickHouseCalls, partitions: int, horizon_s: int, table: str = "events") -> None:
        self._calls = calls
        self._partitions = partitions
        self._horizon_s = horizon_s
        self._table = table

    async def read(self, partition: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n, 2) uint64, packed positions) of the partition's rows inserted within the
        horizon (found through the ``_inserted_at`` minmax index).

        Rows a replay wrote (``REPLAYED_OFFSET``) were all inserted recently, whatever their
        age: of those, only events whose time is within the horizon are read. A later copy of
        an older one has an event time older than the horizon, so `store` looks it up in the
        table instead (`lookup`); reading them all would hold the whole replayed history in
        memory."""
        out: list[pa.Table] = []

        def query(client: Client) -> None:
            out.append(client.query_arrow(
                f"SELECT toString(event_id) AS id, _clean_offset, _clean_index FROM `{self._table}`"
                " WHERE _inserted_at >= now64(3) - toIntervalSecond({h:UInt32})"
                " AND CRC32(toString(event_id)) % {n:UInt32} = {p:UInt32}"
                " AND (_clean_offset != {replayed:UInt64} OR ts >= now64(3) - toIntervalSecond({h:UInt32}))",
                parameters={"h": self._horizon_s, "n": self._partitions, "p": partition,
                            "replayed": REPLAYED_OFFSET}))

        await self._calls.run("dedup restore", query)
        table = out[0]
        ids = ids_from_strings([_text(v) for v in table.column("id").to_pylist()])
        offsets = table.column("_clean_offset").to_numpy().astype(np.uint64)
        index = table.column("_clean_index").to_numpy().astype(np.uint64)
        return ids, pack_position(offsets, index)

    async def lookup(self, ids: list[str], ts_min_ms: int, ts_max_ms: int) -> dict[str, int]:
        """The stored first copies (event_id -> packed position) among *ids*, whose time lies
        in [ts_min_ms, ts_max_ms]: for copies older than the horizon (the ``event_id_bloom``
        index and the day partitions keep the read small)."""
        out: list[Any] = []

        def query(client: Client) -> None:
            out.extend(client.query(
                f"SELECT toString(event_id), _clean_offset, _clean_index FROM `{self._table}`"
                " WHERE ts >= fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
                " AND ts <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC') AND event_id IN {ids:Array(UUID)}",
                parameters={"lo": ts_min_ms, "hi": ts_max_ms, "ids": ids}).result_rows)

        await self._calls.run("dedup lookup", query)
        found: dict[str, int] = {}
        for event_id, offset, index in out:
            position = int(pack_position(int(offset), int(index)))
            found[_text(event_id)] = min(position, found.get(_text(event_id), position))
        return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FenceLink:
    """The store's side of the replay fence (tables/fence.py) over one ClickHouse client:
    heartbeats of the partitions it owns, polls of the fences, acknowledgements."""

    def __init__(self, calls: ClickHouseCalls, heartbeat_s: float = 2.0, worker: str | None = None) -> None:
        self._calls = calls
        self.heartbeat_s = heartbeat_s
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def poll(self) -> list[fences.FenceRow]:
        out: list[list[fences.FenceRow]] = []
        await self._calls.run("fence poll", lambda client: out.append(fences.poll(client)))
        return out[0]

    async def heartbeat(self, partitions: set[int]) -> None:
        await self._calls.run("fence heartbeat", lambda client: fences.heartbeat(client, self.worker, partitions))

    async def acknowledge(self, fence_id: str, partitions: set[int]) -> None:
        await self._calls.run("fence acknowledge",
                              lambda client: fences.acknowledge(client, fence_id, self.worker, partitions))


@dataclass
class StoreDeps:
    deduper: Deduper
    first_copies: FirstCopies
    events_writer: BlockWriter
    aggregator: Aggregator | None  # None: rollups disabled
    rollups: RollupWriter | None
    clean_topic: str
    take_max: int
    take_within_s: float
    flush_interval_s: float
    evict_interval_s: float
    dead_letter: Callable[[Sequence[Invalid]], Awaitable[None]]  # produce, acknowledged
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    counters: StoreCounters = field(default_factory=StoreCounters)
    stages: StageWatch = field(default_factory=StageWatch)
    clock: Callable[[], float] = time.time
    fence: FenceLink | None = None  # None: no replay hand-over (nothing polls for fences)
    log: LogBases = NO_EPOCH  # stored positions are base + offset (tables/logs.py)


_CANONICAL_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def implausible_rows(block: pa.Table, ts: np.ndarray) -> np.ndarray:
    """Rows the validate stage never writes: an event_id that is not a canonical UUID, or a
    time no column can hold (*ts*: the block's ``ts`` as epoch ms). Only a producer writing
    events.clean itself can make them."""
    received = int64(block.column("received_at"), "received_at")
    ids = pc.match_substring_regex(block.column("event_id"), _CANONICAL_UUID).fill_null(False)
    bad_id = ~np.asarray(ids.to_numpy(zero_copy_only=False), dtype=bool)
    return (bad_id | (ts < MIN_TIME_MS) | (ts >= MAX_TIME_MS) | (received < MIN_TIME_MS)
            | (received >= MAX_TIME_MS))


def install(app: faust.App, deps: StoreDeps, offsets: OffsetKeeper) -> None:
    clean = bytes_topic(app, deps.clean_topic)
    dedup, agg, counters = deps.deduper, deps.aggregator, deps.counters
    lock = asyncio.Lock()  # the aggregator: applies and flush snapshots never interleave
    held: list[tuple[list[faust.EventT], Receipt]] = []
    begun: set[int] = set()
    # Bumped when a partition is revoked, before anything awaits: a batch compares the epochs
    # it began with, and applies nothing of a partition taken away meanwhile (even if it was
    # assigned back): the next owner restores that partition from the tables, and a stale
    # apply here would flush a state with later offsets over a gap.
    epochs: dict[int, int] = {}
    stream_ref: list[faust.StreamT] = []
    last_evict = [time.monotonic()]
    flushing = asyncio.Lock()  # one flush at a time: each reports the batches its snapshot holds
    # The replay fence (tables/fence.py). A batch holds `gate` from its admission to its last
    # apply, so whoever holds it knows no batch is in flight; `resume` is clear while a fence
    # pauses this store.
    link = deps.fence
    view = fences.StoreFenceView()
    owned: set[int] = set()  # events.clean partitions assigned to this worker
    announced: list[set[int] | None] = [None]  # the partitions of the last heartbeat
    last_heartbeat = [0.0]
    gate = asyncio.Lock()
    resume = asyncio.Event()
    resume.set()
    syncing = asyncio.Lock()

    async def retry(what: str, action: Callable[[], Awaitable[Any]]) -> Any:
        return await deps.stages.retry(what, action, deps.retry_initial_s, deps.retry_max_s)

    async def begin(partition: int) -> None:
        """Restore the partition's dedup and rollup states before its first message (nothing,
        if the partition is revoked while they are read)."""
        epoch = epochs.get(partition, 0)
        ids, positions = await retry("dedup_restore", lambda: deps.first_copies.read(partition))
        loaded = 0
        rollups = deps.rollups
        bounds: dict[str, int] = {}
        states: list[tuple[StateKey, bytes]] = []
        if agg is not None and rollups is not None:
            bounds, states = await retry("rollup_restore", lambda: rollups.recent(partition))
        if epochs.get(partition, 0) != epoch:
            return
        dedup.restore(partition, ids, positions, int(deps.clock() * 1000))
        if agg is not None and rollups is not None:
            async with lock:
                loaded = agg.restore(partition, states, bounds)
        begun.add(partition)
        log.info("store_partition_restored", partition=partition, first_copies=len(ids),
                 rollup_states=loaded)

    async def apply(block: pa.Table, partition: int, offset: int, kept: np.ndarray,
                    epoch: int) -> None:
        rollups = deps.rollups
        assert agg is not None and rollups is not None
        while True:
            if epochs.get(partition, 0) != epoch:
                return  # revoked while this batch was in flight
            try:
                async with lock:
                    result = agg.apply(block, partition, offset, kept)
                counters.applied += result.applied
                counters.skipped += result.skipped
                return
            except MissingStates as missing:
                keys = missing.keys
            found = await retry("rollup_load", functools.partial(rollups.load, keys))
            if epochs.get(partition, 0) != epoch:
                return
            async with lock:
                for key in keys:
                    agg.load_stored(key, found.get(key))
            counters.states_loaded += len(keys)

    async def store(taken: Sequence[faust.EventT]) -> None:
        events, receipt = offsets.admit("store", taken)
        began = {p: epochs.get(p, 0) for p in {e.message.partition for e in events}}

        def current(partition: int) -> bool:
            return epochs.get(partition, 0) == began[partition]

        bad: list[Invalid] = []
        inserts: list[pa.Table] = []
        applies: list[tuple[pa.Table, int, int, np.ndarray, int]] = []
        now_ms = int(deps.clock() * 1000)
        for event in events:
            msg = event.message
            if not current(msg.partition):
                continue  # revoked: its events are the next owner's
            if msg.partition not in begun:
                await begin(msg.partition)
                if not current(msg.partition):
                    continue
            offset = deps.log.logical(msg.topic, msg.partition, msg.offset)
            meta = SourceMeta(msg.topic, msg.partition, offset, int(msg.timestamp * 1000))
            try:
                block = decode_block(msg.value or b"")
                ts = int64(block.column("ts"), "ts")
                wrong = implausible_rows(block, ts)
            except ValueError as exc:
                bad.append(Invalid("sink", "BadCleanBlock", str(exc), meta, msg.value or b"", msg.key))
                continue
            if wrong.any():
                bad.append(Invalid("sink", "ImplausibleRows",
                                   f"{int(wrong.sum())} rows with an event_id that is not a canonical"
                                   " UUID or a time outside 1970..2106", meta, msg.value or b"", msg.key))
                continue
            n = block.num_rows
            id_strings = block.column("event_id").to_pylist()
            positions = pack_position(offset, np.arange(n))
            verdict = dedup.check(msg.partition, ids_from_strings(id_strings), positions, now_ms)
            keep = verdict.keep.copy()
            # A first copy within the horizon may still copy an event stored before it (a
            # backfill of events also tracked live): look up those older than the horizon.
            old = np.flatnonzero(keep & ~verdict.stored & (ts < now_ms - dedup.horizon_ms))
            if len(old):
                wanted = [id_strings[i] for i in old.tolist()]
                lo, hi = int(ts[old].min()), int(ts[old].max())
                stored = await retry("dedup_lookup", functools.partial(deps.first_copies.lookup, wanted, lo, hi))
                for i in old.tolist():
                    if stored.get(id_strings[i], int(positions[i])) != int(positions[i]):
                        keep[i] = False
                        counters.duplicates_beyond_horizon += 1
            kept = np.flatnonzero(keep)
            counters.duplicates += n - len(kept)
            counters.already_stored += int(verdict.stored.sum())
            fresh = np.flatnonzero(keep & ~verdict.stored)
            if len(fresh):
                rows = block.take(pa.array(fresh))
                rows = rows.append_column("_clean_offset", pa.array(np.full(len(fresh), offset), pa.uint64()))
                rows = rows.append_column("_clean_index", pa.array(fresh, pa.uint32()))
                inserts.append(rows)
            if agg is not None and len(kept):
                applies.append((block.take(pa.array(kept)) if len(kept) < n else block,
                                msg.partition, offset, kept, began[msg.partition]))
        if bad:
            await deps.dead_letter(bad)
        if inserts:
            block = pa.concat_tables(inserts)
            await retry("events_insert", lambda: deps.events_writer.write(block))
            counters.inserted += block.num_rows
        for args in applies:
            await apply(*args)
        if agg is None:
            await offsets.done(stream_ref[0], taken, receipt)
        else:
            held.append((list(taken), receipt))

    async def flush() -> None:
        async with flushing:
            await flush_once()

    async def flush_once() -> None:
        rollups = deps.rollups
        assert agg is not None and rollups is not None
        async with lock:
            dirty = agg.dirty()
            n_held = len(held)  # batches applied so far; a failed flush leaves them held
            encoded = [(key, state.to_bytes()) for key, state in dirty.items()]
        if encoded:
            await retry("rollup_flush", lambda: rollups.write(encoded))
        async with lock:
            agg.mark_flushed()
            if time.monotonic() - last_evict[0] >= deps.evict_interval_s:
                counters.states_evicted += agg.evict()
                last_evict[0] = time.monotonic()
        counters.keys_written += len(encoded)
        counters.flushes += 1
        counters.last_flush_at = time.time()
        flushed = held[:n_held]
        del held[:n_held]
        if stream_ref:
            for taken, receipt in flushed:
                await offsets.done(stream_ref[0], taken, receipt)

    async def rebegin() -> None:
        """Begin every partition again from the tables (after a generation swap): drop the
        in-memory dedup and rollup states and bump the epochs, as a revoke does, with no batch
        in flight; each partition begins again at its next batch."""
        async with gate:
            if agg is not None:
                await flush()  # nothing, after a fence's pause flush
            async with lock:
                dropped = sorted(begun)
                for partition in dropped:
                    epochs[partition] = epochs.get(partition, 0) + 1
                    dedup.drop_partition(partition)
                    if agg is not None:
                        agg.drop_partition(partition)
                begun.clear()
        counters.rebegins += 1
        log.info("store_rebegin", partitions=dropped)

    async def fence_sync(beginning: frozenset[int] = frozenset()) -> None:
        """Heartbeat when due (at once for partitions about to begin that no heartbeat
        announced), poll the fences, and act on them: abandon an expired one, begin again after
        a release with rebegin, pause (flush, then acknowledge every owned partition) or resume."""
        assert link is not None
        async with syncing:
            want = owned | beginning
            if announced[0] != want or time.monotonic() - last_heartbeat[0] >= link.heartbeat_s:
                await retry("fence_heartbeat", lambda: link.heartbeat(want))
                announced[0], last_heartbeat[0] = want, time.monotonic()
            decision = view.observe(await retry("fence_poll", link.poll))
            for fence_id in decision.abandoned:
                counters.fences_abandoned += 1
                log.error("fence_abandoned", fence=fence_id,
                          reason="the replay holding it stopped renewing it; resuming unchanged")
            for fence_id in decision.released:
                log.info("fence_released", fence=fence_id)
            if decision.rebegin:
                await rebegin()
            if not decision.paused:
                resume.set()
                return
            resume.clear()
            if decision.newly_paused or view.to_acknowledge(owned):
                async with gate:  # the batch in flight, if any, is applied: flush it too
                    if agg is not None:
                        await flush()
                for fence_id in decision.newly_paused:
                    counters.fences_paused += 1
                    log.info("fence_paused", fence=fence_id, partitions=sorted(owned))
                for fence_id, parts in view.to_acknowledge(owned).items():
                    await retry("fence_acknowledge", functools.partial(link.acknowledge, fence_id, parts))
                    view.acknowledged(fence_id, parts)

    async def admit(taken: Sequence[faust.EventT]) -> None:
        """Wait while a fence pauses this store. Before a partition begins that no heartbeat
        announced, announce it and poll: a replay that did not see it owned when it waited
        for acknowledgements wrote its fence before this poll, so the store pauses here."""
        assert link is not None
        fresh = frozenset(e.message.partition for e in taken) - begun
        if not view.initialized or not fresh <= (announced[0] or set()):
            await fence_sync(fresh)
        await resume.wait()

    @app.agent(clean, name="store")
    async def store_agent(stream: faust.StreamT) -> None:
        stream_ref[:] = [stream]
        take = stream.noack_take  # type: ignore[attr-defined]  # Faust's stubs lack it
        async for taken in take(deps.take_max, within=deps.take_within_s):
            while True:
                if link is not None:
                    await admit(taken)
                async with gate:
                    if not resume.is_set():
                        continue  # a fence came between the admission and the gate
                    await store(taken)
                    break

    if agg is not None or link is not None:
        @app.timer(deps.flush_interval_s)
        async def flush_timer() -> None:
            if link is not None:
                await fence_sync()
            if agg is not None:
                await flush()

        _ = flush_timer

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # Faust's signal stubs
    async def on_assigned(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
        owned.update(tp.partition for tp in assigned if tp.topic == deps.clean_topic)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]  # Faust's signal stubs
    async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
        mine = {tp for tp in revoked if tp.topic == deps.clean_topic}
        for tp in mine:  # first, before anything awaits: batches in flight stop applying
            epochs[tp.partition] = epochs.get(tp.partition, 0) + 1
            owned.discard(tp.partition)
        async with lock:
            for tp in mine:
                dedup.drop_partition(tp.partition)
                if agg is not None:
                    agg.drop_partition(tp.partition)
                begun.discard(tp.partition)
            # Their events go to the next owner (the offset keeper ignores these receipts now).
            held[:] = [([e for e in taken if e.message.tp not in mine], receipt)
                       for taken, receipt in held]

    _ = (store_agent, on_assigned, on_revoked)
