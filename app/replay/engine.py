"""The replay engine: reads a source, rebuilds a generation, verifies it, hands over, swaps.

One process, one loop, synchronous I/O (see app/replay/writers.py). The work of a job:

1. restore: the dedup state from the generation's rows, the rollup states from the
   generation's rollup tables (both empty for a new job);
2. bulk pass: read each partition from its committed position, process (app/replay/process.py),
   write; every `checkpoint_s`, flush the changed rollup states and only then commit each
   partition's position in the job row. A SIGKILL at any point loses nothing: the next
   `resume` restores and re-reads from the commit, and every write is idempotent;
3. caught up (no new record for `quiet_s`): verify the generation (app/verify.py); a
   difference refuses the swap and says why;
4. the hand-over: request the fence (tables/fence.py), wait for every live store that owns an
   events.clean partition to pause, flush and commit; final catch-up under the fence (raw
   records seen since, or the events rows inserted since); checkpoint; verify again on the
   final state; `generations.swap`; release the fence with ``rebegin=True`` so the live stores
   begin again from the new tables. Any failure releases the fence without rebegin: the live
   stores continue unchanged on the old tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import structlog
from clickhouse_connect.driver.client import Client

from agents.archive import Archive, RawRecord
from agents.codec import FramingError, split_frame
from agents.pii import Redactor
from agents.schema_registry import SchemaCache
from agents.validate import Validator
from app import clickhouse
from app import verify as verify_mod
from app.replay import jobs
from app.replay.jobs import Job, PartitionProgress, ReplayError
from app.replay.plan import EVENTS, refuse_lost_positions, target_specs
from app.replay.process import DEDUP_PARTITION, EventsProcessor, raw_position
from app.replay.sources import ArchiveSource, KafkaSource, Quiet, low_watermarks
from app.replay.writers import GenerationTables, Letters
from app.settings import Settings
from tables import generations
from tables.aggregate import Aggregator
from tables.dedup import INDEX_BITS, REPLAYED_OFFSET, Deduper
from tables.fence import Fence
from tables.logs import load_bases
from tables.state import replay_partition

log = structlog.get_logger(__name__)

Advance = Callable[[int], None]


@dataclass
class Runtime:
    """What a run needs besides the job: settings, a ClickHouse client factory, the archive,
    and a progress callback (events done)."""

    settings: Settings
    archive: Archive | None = None
    advance: Advance = field(default=lambda n: None)
    stop_after_events: int | None = None  # tests and benches: stop (as if killed) after this many

    def client(self) -> Client:
        return clickhouse.connect(self.settings.clickhouse,
                                  send_receive_timeout=self.settings.clickhouse.insert_timeout_s)


class Stopped(Exception):
    """`stop_after_events` reached: the run ends where a crash would."""


class _Pacer:
    """--rate: at most *rate* events per second, on average since the start."""

    def __init__(self, rate: float) -> None:
        self.rate, self.t0, self.n = rate, time.monotonic(), 0

    def after(self, n: int) -> None:
        if self.rate <= 0:
            return
        self.n += n
        ahead = self.n / self.rate - (time.monotonic() - self.t0)
        if ahead > 0:
            time.sleep(ahead)


class _Checkpoints:
    """Flush the rollup states, then commit the positions reached, then save the job."""

    def __init__(self, rt: Runtime, job: Job, client: Client, tables: GenerationTables,
                 aggregator: Aggregator | None) -> None:
        self.rt, self.job, self.client, self.tables, self.aggregator = rt, job, client, tables, aggregator
        self.reached: dict[str, int] = {}
        self.last = time.monotonic()
        self.events_at_last = job.totals().get("events", 0)

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.rt.settings.replay.checkpoint_s

    def commit(self, status: str | None = None) -> None:
        if self.aggregator is not None:
            dirty = self.aggregator.dirty()
            if dirty:
                self.tables.upsert_states((k, s.to_bytes()) for k, s in dirty.items())
            self.aggregator.mark_flushed()
        for key, position in self.reached.items():
            self.job.partitions[key].committed = position
        now = time.monotonic()
        events = self.job.totals().get("events", 0)
        if now > self.last:
            self.job.rate = round((events - self.events_at_last) / (now - self.last), 1)
        self.last, self.events_at_last = now, events
        if status is not None:
            self.job.status = status
        jobs.save(self.client, self.job)


def run(rt: Runtime, job: Job) -> Job:
    """Run (or resume) *job* to its end: swapped, or refused with the reason in ``job.error``."""
    client = rt.client()
    try:
        gen = generations.get(client, job.generation)
        specs = target_specs(job.targets, rt.settings.aggregate.rollups)
        tables = GenerationTables(rt.client, gen.tables, specs)
        job.status, job.error = "running", ""
        jobs.save(client, job)
        if job.targets == (EVENTS,):
            runner: _EventsRun | _RollupsRun = _EventsRun(rt, job, client, tables, specs)
        else:
            runner = _RollupsRun(rt, job, client, tables, specs)
        try:
            runner.pump()
            if _verified(rt, job, client, gen.tables, specs, final=False):
                _hand_over(rt, job, client, runner, gen.tables, specs)
        finally:
            runner.close()
        return job
    finally:
        client.close()


def _verified(rt: Runtime, job: Job, client: Client, tables: dict[str, str], specs: tuple,
              final: bool) -> bool:
    diffs = verify_mod.verify_generation(
        client, job.targets, tables, list(specs), rt.settings.kafka.topics.raw,
        {k: (p.start, p.committed, p.events, p.duplicates + p.skipped + p.letters_elsewhere)
         for k, p in job.partitions.items()},
        hll_tolerance=rt.settings.replay.hll_tolerance, complete=final or job.targets == (EVENTS,),
        final=final)
    if diffs:
        job.status = "refused"
        job.error = "; ".join(diffs[:5]) + (f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else "")
        jobs.save(client, job)
        log.error("replay_refused", job=job.job_id, differences=len(diffs), first=diffs[0])
        return False
    job.notes.append(f"verified{' (final)' if final else ''}: 0 differences")
    jobs.save(client, job)
    return True


def _hand_over(rt: Runtime, job: Job, client: Client, runner: _EventsRun | _RollupsRun,
               tables: dict[str, str], specs: tuple) -> None:
    r = rt.settings.replay
    fence = Fence(client, owner=f"replay:{job.job_id}")
    job.status = "fencing"
    jobs.save(client, job)
    fence_id = fence.request(f"replay {job.job_id}: swap of generation {job.generation}", ttl_s=r.fence_ttl_s)
    released = False
    try:
        fence.wait(fence_id, r.fence_timeout_s)
        fence.renew(fence_id, r.fence_ttl_s)
        runner.renew = lambda: fence.renew(fence_id, r.fence_ttl_s)
        runner.pump()  # the final catch-up: everything the live stores had made durable
        fence.renew(fence_id, r.fence_ttl_s)
        if not _verified(rt, job, client, tables, specs, final=True):
            return
        generations.mark(client, job.generation, "verified")
        generations.swap(client, job.generation)
        job.status = "swapped"
        job.notes.append(f"generation {job.generation} swapped in")
        jobs.save(client, job)
        fence.release(fence_id, rebegin=True)
        released = True
    finally:
        if not released:
            fence.release(fence_id, rebegin=False)


class _EventsRun:
    """The events target: raw records -> generation rows, replay-space rollups, letters."""

    def __init__(self, rt: Runtime, job: Job, client: Client, tables: GenerationTables, specs: tuple) -> None:
        s = rt.settings
        self.rt, self.job, self.client, self.tables = rt, job, client, tables
        self.renew: Callable[[], None] = lambda: None
        from app.worker import (
            redaction_config,  # the live worker's PII configuration, secret included
        )

        self.redactor = Redactor(redaction_config(s))
        self.deduper = Deduper(s.replay.dedup_horizon_s * 1000)
        now_ms = int(time.time() * 1000)
        ids, parts, offsets, index = tables.first_copies()
        self.deduper.restore(DEDUP_PARTITION, ids, raw_position(parts, offsets, index), now_ms)
        self.aggregator = Aggregator(specs) if specs else None
        if self.aggregator is not None:
            for partition, states in tables.stored_states().items():
                self.aggregator.restore(partition, states, {})
        self.processor = EventsProcessor(Validator(s.validation.rules()), self.redactor, self.deduper,
                                         s.kafka.topics.raw)
        self.schemas = SchemaCache(s.registry.url, topic=s.kafka.topics.raw,
                                   reader_ttl_s=s.registry.reader_ttl_s)
        self.loop = asyncio.new_event_loop()
        self.bases = load_bases(client)
        self.letters = Letters(rt.client, s.kafka.bootstrap_servers, s.kafka.topics.dlq,
                               self.schemas.get, self.redactor, s.kafka.producer_config, self.bases)
        self.checkpoints = _Checkpoints(rt, job, client, tables, self.aggregator)
        self.pacer = _Pacer(job.limit_rate)
        self._kafka: Iterator[list[RawRecord]] | None = None
        log.info("replay_restored", job=job.job_id, first_copies=len(ids),
                 rollup_states=len(self.aggregator.states()) if self.aggregator else 0)

    def _batches(self) -> Iterator[list[RawRecord]]:
        """The archive parts first (bounded), then Kafka (open-ended, kept across pumps)."""
        s = self.rt.settings
        archive_ranges: dict[int, tuple[int, int | None]] = {}
        kafka_ranges: dict[int, tuple[int, int | None]] = {}
        for key, part in self.job.partitions.items():
            p = int(key)
            if part.source == "archive":
                archive_ranges[p] = (part.committed, part.stop)
            elif part.source == "archive+kafka":
                assert part.switch_at is not None
                if part.committed < part.switch_at:
                    archive_ranges[p] = (part.committed, part.switch_at)
                kafka_ranges[p] = (max(part.committed, part.switch_at), part.stop)
            else:
                kafka_ranges[p] = (part.committed, part.stop)
        if kafka_ranges and self.job.source == "auto":
            self._reach_back(kafka_ranges, archive_ranges)
        if archive_ranges:
            if self.rt.archive is None:
                raise ReplayError("this job reads the archive, and no archive is configured")
            yield from ArchiveSource(self.rt.archive, s.kafka.topics.raw).read(archive_ranges)
        if kafka_ranges:
            yield from KafkaSource(s.kafka.bootstrap_servers, s.kafka.topics.raw,
                                   s.replay.fetch_messages, bases=self.bases).read(kafka_ranges)

    def _reach_back(self, kafka_ranges: dict[int, tuple[int, int | None]],
                    archive_ranges: dict[int, tuple[int, int | None]]) -> None:
        """An `auto` job resumed after the broker began a new log (a restart, or a roll, of
        `rearview up`: tables/logs.py) reads the positions below where Kafka's log now begins
        from the archive, as its plan would have, instead of failing on them."""
        s = self.rt.settings
        topic = s.kafka.topics.raw
        low = low_watermarks(s.kafka.bootstrap_servers, topic, sorted(kafka_ranges), self.bases)
        for p, (start, stop) in sorted(kafka_ranges.items()):
            if start >= low[p]:
                continue
            end = low[p] if stop is None else min(stop, low[p])
            archive = self.rt.archive
            held = 0 if archive is None else archive.next_offset(topic, p)
            if archive is None or held < end:
                raise ReplayError(f"partition {p}: positions {max(start, held)}..{end - 1} are neither in the"
                                  f" archive nor in Kafka (its log now begins at {low[p]})")
            refuse_lost_positions(archive, self.client, topic, p, start, end)
            earlier = archive_ranges.get(p)
            archive_ranges[p] = (earlier[0] if earlier else start, end)
            if stop is not None and stop <= low[p]:
                del kafka_ranges[p]
            else:
                kafka_ranges[p] = (low[p], stop)
            log.info("replay_reads_earlier_log_from_archive", job=self.job.job_id, partition=p,
                     start=start, stop=end)

    def pump(self) -> None:
        """Read and process until caught up (Kafka quiet for `quiet_s`, or every bounded
        range read), then checkpoint. Called again under the fence for the final catch-up."""
        if self._kafka is None:
            self._kafka = self._batches()
        quiet = Quiet(self.rt.settings.replay.quiet_s)
        cp = self.checkpoints
        # A quiet period alone may end too early (a fetch the broker answers late): never stop
        # before the offsets the live tables already hold (under the fence, they are final).
        floors = verify_mod.stored_offsets(self.client, self.rt.settings.kafka.topics.raw)
        # Under steady traffic there is never a quiet period: once past the floors, read for
        # `quiet_s` more at most. Stopping anywhere past them is exact: what the live tables
        # do not hold yet, the live pipeline stores after the swap (a record the replay also
        # read is then a duplicate of the generation's row, and dropped).
        past_floors_at: float | None = None
        for batch in self._kafka:
            if batch:
                self._process(batch)
            quiet.saw(len(batch))  # after processing: a long batch is not a quiet period
            if cp.due():
                cp.commit()
                self.renew()
            if past_floors_at is None and self._reached(floors):
                past_floors_at = time.monotonic()
            if past_floors_at is not None and (
                    quiet.caught_up or time.monotonic() - past_floors_at >= self.rt.settings.replay.quiet_s):
                break
        cp.commit("caught_up")

    def _reached(self, floors: dict[int, int]) -> bool:
        """Every bounded range read to its stop, every other partition past its floor."""
        reached = self.checkpoints.reached
        for key, part in self.job.partitions.items():
            at = reached.get(key, part.committed)
            if part.stop is not None:
                if at < part.stop:
                    return False
            elif at <= floors.get(int(key), -1):
                return False
        return True

    def close(self) -> None:
        if self._kafka is not None:  # its consumer, mid-read when the run stopped early
            self._kafka.close()
            self._kafka = None
        self.letters.close()
        self.tables.close()
        self.loop.run_until_complete(self.schemas.close())
        self.loop.close()

    def _process(self, batch: list[RawRecord]) -> None:
        now_ms = int(time.time() * 1000)
        ids = set()
        for r in batch:
            with contextlib.suppress(FramingError):
                ids.add(split_frame(r.value or b"")[0])
        if ids - set(self.schemas.known):
            self.loop.run_until_complete(self.schemas.ensure(ids))
        done = self.processor.process(batch, self.schemas.known, now_ms)
        self.letters.write(done.letters, now_ms)
        if done.rows is not None:
            self.tables.insert_rows(done.rows)
        if self.aggregator is not None:
            for block, partition, offset, index in done.applies:
                self.aggregator.apply(block, partition, offset, index)
        part = self.job.partitions[str(done.partition)]
        c = done.counts
        part.messages += c.messages
        part.events += c.events
        part.rows += c.rows
        part.duplicates += c.duplicates
        part.letters += c.letters
        part.letters_elsewhere += c.letters_elsewhere
        part.skipped += c.skipped
        self.checkpoints.reached[str(done.partition)] = done.next_offset
        self.rt.advance(c.events)
        self.pacer.after(c.events)
        stop = self.rt.stop_after_events
        if stop is not None and self.job.totals()["events"] >= stop:
            raise Stopped()


# Columns of the events table a rollup needs, as the Aggregator reads them (strings as strings).
_ROW_COLUMNS = ("toString(event_id) AS event_id, toString(project_id) AS project_id,"
                " toString(event_name) AS event_name, user_id, ts, received_at, properties,"
                " _partition, _offset, _index, _clean_offset, _clean_index")


class _RollupsRun:
    """Rollup targets: the events table, read in position order per partition, applied as the
    live store applied it (live space) or as a replay did (replay space)."""

    def __init__(self, rt: Runtime, job: Job, client: Client, tables: GenerationTables, specs: tuple) -> None:
        self.rt, self.job, self.client, self.tables = rt, job, client, tables
        self.renew: Callable[[], None] = lambda: None
        self.aggregator = Aggregator(specs)
        for partition, states in tables.stored_states().items():
            self.aggregator.restore(partition, states, {})
        self.checkpoints = _Checkpoints(rt, job, client, tables, self.aggregator)
        self.pacer = _Pacer(job.limit_rate)
        self.n = rt.settings.kafka.topics.partitions

    def _partitions(self) -> None:
        """live:<p> per events.clean partition, replay:<p> per raw partition that replayed rows
        came from (a generation swapped in earlier)."""
        for p in range(self.n):
            self.job.partitions.setdefault(f"live:{p}", PartitionProgress("events", 0, None, 0))
        rows = self.client.query(
            "SELECT DISTINCT _partition FROM events WHERE _clean_offset = {r:UInt64}",
            parameters={"r": REPLAYED_OFFSET}).result_rows
        for (p,) in rows:
            self.job.partitions.setdefault(f"replay:{int(p)}", PartitionProgress("events", 0, None, 0))

    def close(self) -> None:
        self.tables.close()

    def _read(self, key: str, committed: int, limit: int) -> pa.Table:
        space, p = key.split(":")
        offset, index = committed >> INDEX_BITS, committed & ((1 << INDEX_BITS) - 1)
        if space == "live":
            where = ("_clean_offset != {r:UInt64} AND CRC32(toString(event_id)) % {n:UInt32} = {p:UInt32}"
                     " AND (_clean_offset, _clean_index) >= ({o:UInt64}, {i:UInt32})")
            order = "_clean_offset, _clean_index"
        else:
            where = ("_clean_offset = {r:UInt64} AND _partition = {p:UInt32}"
                     " AND (_offset, _index) >= ({o:UInt64}, {i:UInt32})")
            order = "_offset, _index"
        return self.client.query_arrow(
            f"SELECT {_ROW_COLUMNS} FROM events WHERE {where} ORDER BY {order} LIMIT 1 BY {order} LIMIT {{k:UInt32}}",
            parameters={"r": REPLAYED_OFFSET, "n": self.n, "p": int(p), "o": offset, "i": index, "k": limit},
            settings={"output_format_arrow_string_as_string": 1})

    def pump(self) -> None:
        self._partitions()
        limit = self.rt.settings.replay.fetch_messages * 50
        cp = self.checkpoints
        while True:
            got = 0
            for key, part in self.job.partitions.items():
                committed = cp.reached.get(key, part.committed)
                rows = self._read(key, committed, limit)
                if rows.num_rows == 0:
                    continue
                got += rows.num_rows
                cp.reached[key] = self._apply(key, rows)
                part.events += rows.num_rows
                part.rows += rows.num_rows
                self.rt.advance(rows.num_rows)
                self.pacer.after(rows.num_rows)
                if cp.due():
                    cp.commit()
                    self.renew()
                stop = self.rt.stop_after_events
                if stop is not None and self.job.totals()["events"] >= stop:
                    raise Stopped()
            if not got:
                break
        cp.commit("caught_up")

    def _apply(self, key: str, rows: pa.Table) -> int:
        """Apply rows (one partition, position order) message by message; the next position."""
        space, p = key.split(":")
        if space == "live":
            offsets = rows.column("_clean_offset").to_numpy().astype(np.int64)
            index = rows.column("_clean_index").to_numpy().astype(np.int64)
            partition = int(p)
        else:
            offsets = rows.column("_offset").to_numpy().astype(np.int64)
            index = rows.column("_index").to_numpy().astype(np.int64)
            partition = replay_partition(int(p))
        block = rows.select(["event_id", "project_id", "event_name", "user_id", "ts", "received_at", "properties"])
        block = block.set_column(0, "event_id", pc.cast(block.column("event_id"), pa.string()))
        bounds = np.flatnonzero(offsets[1:] != offsets[:-1]) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(offsets)]
        for s, e in zip(starts, ends, strict=True):
            self.aggregator.apply(block.slice(s, e - s), partition, int(offsets[s]), index[s:e])
        return (int(offsets[-1]) << INDEX_BITS | int(index[-1])) + 1
