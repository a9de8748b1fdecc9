"""What a replay will do: its targets, and per source partition where it reads from and which range.

Targets: ``events`` rebuilds the events table and every configured rollup in one pass over
events.raw; ``rollup:<name>`` (several allowed) or ``rollups`` (all configured) rebuild rollups
from the events table.

Where Kafka's log begins comes from the consumer's low watermarks, which are reliable; the
high watermarks and ``offsets_for_times`` are not used anywhere (the embedded broker reports
end offsets wrong and answers time lookups with its own append time). A replay therefore never
needs the end of a log: it reads until no partition has delivered anything for a quiet period.
A time (``--from``) is mapped to offsets through Rearview's own provenance: the smallest
``_offset`` per ``_partition`` of the events received at or after it, and the source offsets
of the dead letters that failed at or after it, or else the archive's file index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from agents.archive import Archive
from app.replay.jobs import ReplayError
from tables.rollups import RollupSpec

EVENTS = "events"
ROLLUP_PREFIX = "rollup:"
SOURCES = ("kafka", "archive", "auto")


def parse_targets(values: Sequence[str], specs: Sequence[RollupSpec]) -> tuple[str, ...]:
    """Normalized targets: ``events`` alone (it rebuilds every rollup with it), or
    ``rollup:<name>`` of configured rollups, in configuration order."""
    if not values:
        raise ReplayError("name a target: events, rollups or rollup:<name>")
    names = [s.name for s in specs]
    wanted: set[str] = set()
    for value in values:
        if value == EVENTS:
            return (EVENTS,)
        if value == "rollups":
            wanted.update(names)
        elif value.startswith(ROLLUP_PREFIX):
            name = value[len(ROLLUP_PREFIX):]
            if name not in names:
                raise ReplayError(f"rollup {name!r} is not configured (configured: {', '.join(names) or 'none'})")
            wanted.add(name)
        else:
            raise ReplayError(f"unknown target {value!r}: events, rollups or rollup:<name>")
    if not wanted:
        raise ReplayError("no rollups are configured")
    return tuple(f"{ROLLUP_PREFIX}{n}" for n in names if n in wanted)


def generation_targets(targets: tuple[str, ...], specs: Sequence[RollupSpec]) -> tuple[str, ...]:
    """The tables a generation holds: the `events` target rebuilds every rollup with it."""
    if targets == (EVENTS,):
        return (EVENTS, *(f"{ROLLUP_PREFIX}{s.name}" for s in specs))
    return targets


def target_specs(targets: tuple[str, ...], specs: Sequence[RollupSpec]) -> tuple[RollupSpec, ...]:
    if targets == (EVENTS,):
        return tuple(specs)
    names = {t[len(ROLLUP_PREFIX):] for t in targets}
    return tuple(s for s in specs if s.name in names)


def parse_time(text: str) -> int:
    """ISO-8601 (a zone-less time is UTC) or epoch milliseconds, as epoch ms."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReplayError(f"--from {text!r} is neither ISO-8601 nor epoch milliseconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_offsets(text: str) -> dict[int, tuple[int, int | None]]:
    """``p:start-stop,...`` (stop exclusive, may be left out: until caught up)."""
    out: dict[int, tuple[int, int | None]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            partition, span = part.split(":", 1)
            start, _, stop = span.partition("-")
            p, a = int(partition), int(start)
            b = int(stop) if stop.strip() else None
        except ValueError:
            raise ReplayError(f"--offsets {part!r}: expected partition:start-stop") from None
        if p < 0 or a < 0 or (b is not None and b < a):
            raise ReplayError(f"--offsets {part!r}: offsets must satisfy 0 <= start <= stop")
        out[p] = (a, b)
    if not out:
        raise ReplayError("--offsets names no partition")
    return out


@dataclass(frozen=True)
class PartitionPlan:
    partition: int
    source: str  # kafka | archive | archive+kafka | events
    start: int
    stop: int | None
    switch_at: int | None = None  # archive+kafka: Kafka from here
    estimated_events: int = 0


@dataclass(frozen=True)
class Plan:
    targets: tuple[str, ...]
    source: str
    partitions: tuple[PartitionPlan, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def estimated_events(self) -> int:
        return sum(p.estimated_events for p in self.partitions)

    def describe(self) -> list[str]:
        lines = [f"targets: {', '.join(self.targets)}", f"source: {self.source}"]
        for p in self.partitions:
            stop = "caught up" if p.stop is None else str(p.stop)
            via = f" (Kafka from {p.switch_at})" if p.switch_at is not None else ""
            lines.append(f"  partition {p.partition}: {p.source}{via}, offsets {p.start} .. {stop},"
                         f" ~{p.estimated_events:,} events")
        lines.append(f"estimated events: {self.estimated_events:,}")
        lines += [f"note: {n}" for n in self.notes]
        return lines


def offsets_at(client: Client, raw_topic: str, time_ms: int) -> dict[int, int]:
    """Per raw partition, the smallest offset of an event received at or after *time_ms*
    (the events table's provenance) or of a dead letter that failed at or after it."""
    rows = client.query(
        "SELECT _partition, min(_offset) FROM events"
        " WHERE received_at >= fromUnixTimestamp64Milli({t:Int64}, 'UTC') GROUP BY _partition",
        parameters={"t": time_ms}).result_rows
    found = {int(p): int(o) for p, o in rows}
    letters = client.query(
        "SELECT source_partition, min(source_offset) FROM dlq WHERE source_topic = {topic:String}"
        " AND failed_at >= fromUnixTimestamp64Milli({t:Int64}, 'UTC') GROUP BY source_partition",
        parameters={"t": time_ms, "topic": raw_topic}).result_rows
    for p, o in letters:
        found[int(p)] = min(int(o), found.get(int(p), int(o)))
    return found


def stored_counts(client: Client, raw_topic: str, ranges: dict[int, tuple[int, int | None]]) -> dict[int, int]:
    """Events the events table and the dlq table hold per raw partition within *ranges*
    (an estimate of what a replay of them reads: duplicates dropped live are not counted)."""
    out: dict[int, int] = {}
    for p, (start, stop) in ranges.items():
        upper = stop if stop is not None else 2**63 - 1
        n = client.query(
            "SELECT (SELECT count() FROM events WHERE _partition = {p:UInt32} AND _offset >= {a:UInt64}"
            " AND _offset < {b:UInt64}) + (SELECT count() FROM dlq WHERE source_topic = {topic:String}"
            " AND source_partition = {p:UInt32} AND source_offset >= {a:UInt64} AND source_offset < {b:UInt64})",
            parameters={"p": p, "a": start, "b": upper, "topic": raw_topic}).result_rows[0][0]
        out[p] = int(n)
    return out


def refuse_lost_positions(archive: Archive, client: Client, topic: str, partition: int, start: int, stop: int) -> None:
    """Refuse to read [start, stop) of *partition* from the archive when it has a hole that
    events or dead letters were stored from: an earlier log ended before the archiver wrote
    them (tables/logs.py), so a rebuilt table would lack them. A hole nothing was stored from
    loses nothing."""
    for lo, hi in archive.holes(topic, partition, start, stop):
        stored = stored_counts(client, topic, {partition: (lo, hi)})[partition]
        if stored:
            raise ReplayError(
                f"partition {partition}: positions {lo}..{hi - 1} are in neither the archive nor"
                f" Kafka (an earlier log ended before they were archived), yet {stored:,} events and"
                " dead letters were stored from them; a rebuilt table would lose them")


@dataclass(frozen=True)
class Logs:
    """Where each raw partition's records can be read: Kafka from its low watermark, the
    archive below its next offset (None: no archive configured)."""

    kafka_low: dict[int, int]
    archive_next: dict[int, int] | None
    archive_records: Callable[[int, int, int | None], int] | None = None  # (p, start, stop) -> records


def plan_events(partitions: Sequence[int], source: str, logs: Logs,
                ranges: dict[int, tuple[int, int | None]], estimates: dict[int, int]) -> tuple[PartitionPlan, ...]:
    """Per partition: read [start, stop) from Kafka, the archive, or the archive up to where
    Kafka's log begins and Kafka after it. Refuses a range that neither holds."""
    out = []
    for p in partitions:
        start, stop = ranges.get(p, (0, None))
        low = logs.kafka_low.get(p, 0)
        archived = (logs.archive_next or {}).get(p, 0)
        if source == "kafka" or (source == "auto" and start >= low):
            if start < low:
                raise ReplayError(
                    f"partition {p}: offsets {start}..{low - 1} are no longer in Kafka (its log"
                    f" begins at {low}); replay with --source archive or auto")
            out.append(PartitionPlan(p, "kafka", start, stop, None, estimates.get(p, 0)))
            continue
        if logs.archive_next is None:
            raise ReplayError("no archive is configured (set RV_ARCHIVE__URL)")
        if source == "archive":
            end = archived if stop is None else min(stop, archived)
            if stop is not None and stop > archived:
                raise ReplayError(f"partition {p}: the archive holds offsets below {archived} only")
            n = logs.archive_records(p, start, end) if logs.archive_records else estimates.get(p, 0)
            out.append(PartitionPlan(p, "archive", start, end, None, n))
            continue
        if archived < low:
            raise ReplayError(
                f"partition {p}: offsets {archived}..{low - 1} are neither in the archive (it ends at"
                f" {archived}) nor in Kafka (its log begins at {low})")
        n = logs.archive_records(p, start, low) if logs.archive_records else 0
        out.append(PartitionPlan(p, "archive+kafka", start, stop, low, max(n, estimates.get(p, 0))))
    return tuple(out)
