"""The stream agents: wiring only. Each reads a batch, calls the pure stages, writes, then acks.

validate:     events.raw -> (registry lookup, cached) -> Validator -> events.clean | events.dlq
              (events.clean partitioned by event_id: every copy of an event meets the others)
store:        events.clean -> dedup -> events table + rollups (agents/store.py)
dead_letters: events.dlq -> the queryable `dlq` table

Each agent admits its batch through the offset keeper (agents/offsets.py), which drops
redeliveries and out-of-order deliveries, and reports the batch done only after every effect
of it is durable (records acknowledged by the broker, rows acknowledged by ClickHouse); the
keeper commits what is done. The topics have Faust's acks off, so Faust commits nothing of
its own; events are still acked to Faust (`noack_take` then `stream.ack`) to release them.
Infrastructure failures are retried here, forever, with backoff: while they last the agent
stops taking, the stream buffer fills and Faust pauses fetching. Nothing is dead-lettered for
an outage, and an exception never escapes an agent.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import structlog

from agents import dlq, preview
from agents.codec import FramingError, WriterSchema, split_frame
from agents.offsets import OffsetKeeper, bytes_topic
from agents.pii import Redactor
from agents.produce import produce_all
from agents.records import CleanEvent, Invalid, SourceMeta
from agents.schema_registry import SchemaCache
from agents.sink import RowsWriter, encode_blocks
from agents.stages import StageWatch
from agents.validate import Validator
from tables.dedup import event_partition
from tables.logs import NO_EPOCH, LogBases

log = structlog.get_logger(__name__)

# Keep produced messages under Kafka's default 1 MB limit with room for headers.
MAX_MESSAGE_BYTES = 900_000


@dataclass
class Counters:
    read: int = 0
    clean: int = 0
    dead: int = 0
    by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    redactions: Counter[str] = field(default_factory=Counter)


@dataclass
class WorkerDeps:
    """Everything the agents talk to, built by the worker entry point (tests build their own)."""

    validator: Validator
    redactor: Redactor
    schemas: SchemaCache
    raw_topic: str
    clean_topic: str
    dlq_topic: str
    clean_partitions: int  # events.clean's partition count: clean events go by event_id
    take_max: int
    take_within_s: float
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    dlq_writer: RowsWriter | None = None  # the queryable `dlq` table; None: Kafka only
    counters: Counters = field(default_factory=Counters)
    stages: StageWatch = field(default_factory=StageWatch)  # retrying stages, for /health
    log: LogBases = NO_EPOCH  # stored positions are base + offset (tables/logs.py)


def _schema_ids(values: Sequence[bytes]) -> set[int]:
    ids = set()
    for raw in values:
        try:
            ids.add(split_frame(raw)[0])
        except FramingError:
            pass
    return ids


async def _retry_forever(what: str, action: Callable[[], Awaitable[Any]], deps: WorkerDeps) -> Any:
    return await deps.stages.retry(what, action, deps.retry_initial_s, deps.retry_max_s)


async def dead_letter(app: faust.App, deps: WorkerDeps, invalid: Sequence[Invalid]) -> None:
    """Write *invalid* to the DLQ and return once the broker acknowledged them (retried while
    it is unreachable; a record too large is split or kept in parts, see agents/produce.py)."""
    records = dead_letter_records(invalid, deps, int(time.time() * 1000))
    await _retry_forever("dead_letter", lambda: produce_all(app, records, deps.dlq_topic), deps)
    deps.counters.dead += len(invalid)


def validate_record(
    value: bytes | None, key: bytes | None, headers: Any, meta: SourceMeta, validator: Validator,
    redactor: Redactor, schemas: Mapping[int, WriterSchema | None], now_ms: int,
    redactions: Counter[str] | None = None,
) -> tuple[list[CleanEvent], list[Invalid]]:
    """One raw message through the validate stage: its clean events, redacted, and its dead
    letters (no I/O). The live validate agent and `rearview replay` both call this, so a rule,
    a redaction or a redrive header means the same in both. *redactions*, if given, counts the
    redactions by detector."""
    redrive = dlq.redrive_of(dlq.parse_headers(headers), meta) if headers else None
    result = validator.validate_message(value, key, meta, schemas, now_ms, redrive=redrive)
    if redrive is not None:
        result.invalid[:] = [
            replace(inv, source=redrive.identity, attempt=redrive.attempt,
                    first_failed_at_ms=redrive.first_failed_at_ms)
            for inv in result.invalid
        ]
    clean: list[CleanEvent] = []
    for valid in result.clean:
        clean_event, counts = redactor.redact_event(valid)
        clean.append(clean_event)
        if counts and redactions is not None:
            redactions.update(counts)
    return clean, result.invalid


def validate_batch(
    events: Sequence[faust.EventT], deps: WorkerDeps, now_ms: int
) -> tuple[list[dict[str, Any]], int, int]:
    """One validate batch: the records to produce, and the clean and dead counts (no I/O)."""
    clean_by_partition: dict[int, list[CleanEvent]] = defaultdict(list)
    dead: list[Invalid] = []
    for event in events:
        msg = event.message
        meta = SourceMeta(msg.topic, msg.partition, deps.log.logical(msg.topic, msg.partition, msg.offset),
                          int(msg.timestamp * 1000))
        clean, invalid = validate_record(msg.value, msg.key, msg.headers, meta, deps.validator,
                                         deps.redactor, deps.schemas.known, now_ms,
                                         deps.counters.redactions)
        for clean_event in clean:
            clean_by_partition[event_partition(clean_event["event_id"], deps.clean_partitions)].append(
                clean_event)
        dead.extend(invalid)
    records: list[dict[str, Any]] = []
    n_clean = 0
    for partition, clean in clean_by_partition.items():
        n_clean += len(clean)
        for value in encode_blocks(clean, MAX_MESSAGE_BYTES):
            records.append(
                {"topic": deps.clean_topic, "key": None, "value": value, "partition": partition,
                 "headers": None}
            )
    records.extend(dead_letter_records(dead, deps, now_ms))
    return records, n_clean, len(dead)


def dead_letter_records(invalid: Sequence[Invalid], deps: WorkerDeps, now_ms: int) -> list[dict[str, Any]]:
    records = []
    for inv in invalid:
        deps.counters.by_reason[f"{inv.stage}:{inv.error_class}"] += 1
        # dlq.headers redacts the reason whole (it may quote a field value), then cuts it.
        # (The value is the original bytes, kept unchanged for redrive, in Kafka only.)
        records.append(
            {"topic": deps.dlq_topic, "key": inv.key, "value": inv.raw,
             "partition": None, "headers": dlq.headers(inv, now_ms)}
        )
    return records


def letter_preview(value: bytes, headers: dict[str, str], deps: WorkerDeps) -> str:
    """The dead letter's event as redacted JSON, or the redacted shape of what could not be
    decoded (never raw bytes as text): see agents/preview.py."""
    return preview.letter_preview(value, headers, deps.schemas.get, deps.redactor)


def readers(deps: WorkerDeps) -> dict[str, list[str]]:
    """Which agents read which topic: a partition is committed once all of them are done."""
    return {
        deps.raw_topic: ["validate"],
        deps.clean_topic: ["store"],
        deps.dlq_topic: ["dead_letters"] if deps.dlq_writer is not None else [],
    }


def install(app: faust.App, deps: WorkerDeps, offsets: OffsetKeeper) -> None:
    """Declare the topics and agents on *app*."""
    raw = bytes_topic(app, deps.raw_topic)
    counters = deps.counters

    @app.agent(raw, name="validate")
    async def validate(stream: faust.StreamT) -> None:
        async for taken in stream.noack_take(deps.take_max, within=deps.take_within_s):
            events, receipt = offsets.admit("validate", taken)
            if events:
                await _retry_forever(
                    "registry", lambda: deps.schemas.ensure(_schema_ids([e.message.value for e in events])), deps
                )
                records, n_clean, n_dead = validate_batch(events, deps, int(time.time() * 1000))
                await _retry_forever("produce", lambda: produce_all(app, records, deps.dlq_topic), deps)
                counters.read += len(events)
                counters.clean += n_clean
                counters.dead += n_dead
            await offsets.done(stream, taken, receipt)

    if deps.dlq_writer is not None:
        dead_topic = bytes_topic(app, deps.dlq_topic)
        dlq_writer = deps.dlq_writer

        @app.agent(dead_topic, name="dead_letters")
        async def dead_letters(stream: faust.StreamT) -> None:
            async for taken in stream.noack_take(deps.take_max, within=deps.take_within_s):
                events, receipt = offsets.admit("dead_letters", taken)
                if events:
                    parsed = [dlq.parse_headers(e.message.headers) for e in events]
                    ids = {int(h[dlq.H_SCHEMA_ID]) for h in parsed if h.get(dlq.H_SCHEMA_ID, "").isdigit()}
                    await _retry_forever("dlq_registry", lambda: deps.schemas.ensure(ids), deps)
                    rows = [
                        dlq.letter_row(e.message.partition,
                                       deps.log.logical(e.message.topic, e.message.partition, e.message.offset),
                                       int(e.message.timestamp * 1000), e.message.value or b"", h,
                                       letter_preview(e.message.value, h, deps))
                        for e, h in zip(events, parsed, strict=True)
                    ]
                    await _retry_forever("dlq_table", lambda: dlq_writer.write(rows), deps)
                await offsets.done(stream, taken, receipt)

        _ = dead_letters

    @app.timer(10.0)
    async def report() -> None:
        log.info(
            "worker_progress",
            raw_messages=counters.read,
            clean_events=counters.clean,
            dead_letters=counters.dead,
        )

    @app.on_before_shutdown.connect
    async def close_clients(app: faust.App, **kwargs: Any) -> None:
        await deps.schemas.close()

    _ = (validate, report, close_clients)
