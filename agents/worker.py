"""The stream agents: wiring only. Each reads a batch, calls the pure stages, writes, then acks.

validate: events.raw -> (registry lookup, cached) -> Validator -> events.clean | events.dlq
sink:     events.clean (Arrow blocks) -> one concatenated block -> ClickHouse events table

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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import orjson
import pyarrow as pa
import structlog

from agents import dlq
from agents.codec import FramingError, Kind, decode, split_frame
from agents.offsets import OffsetKeeper, bytes_topic
from agents.pii import Redactor
from agents.produce import produce_all
from agents.records import CleanEvent, Invalid, SourceMeta
from agents.sink import BlockWriter, RowsWriter, decode_block, encode_blocks
from agents.validate import Validator
from app.retry import retry_forever
from app.schema_registry import SchemaCache

log = structlog.get_logger(__name__)

# Keep produced messages under Kafka's default 1 MB limit with room for headers.
MAX_MESSAGE_BYTES = 900_000


@dataclass
class Counters:
    read: int = 0
    clean: int = 0
    dead: int = 0
    inserted: int = 0
    by_reason: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    redactions: Counter[str] = field(default_factory=Counter)


@dataclass
class WorkerDeps:
    """Everything the agents talk to, built by the worker entry point (tests build their own)."""

    validator: Validator
    redactor: Redactor
    schemas: SchemaCache
    events_writer: BlockWriter
    raw_topic: str
    clean_topic: str
    dlq_topic: str
    take_max: int
    take_within_s: float
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    dlq_writer: RowsWriter | None = None  # the queryable `dlq` table; None: Kafka only
    counters: Counters = field(default_factory=Counters)


def _schema_ids(values: Sequence[bytes]) -> set[int]:
    ids = set()
    for raw in values:
        try:
            ids.add(split_frame(raw)[0])
        except FramingError:
            pass
    return ids


async def _retry_forever(what: str, action: Callable[[], Awaitable[Any]], deps: WorkerDeps) -> Any:
    return await retry_forever(what, action, deps.retry_initial_s, deps.retry_max_s)


async def _produce_all(
    app: faust.App, records: list[dict[str, Any]], dlq_topic: str | None = None
) -> None:
    """Send records and wait until the broker acknowledged every one of them; a record too
    large for its topic is split or dead-lettered, never retried (agents/produce.py)."""
    await produce_all(app, records, dlq_topic)


def validate_batch(
    events: Sequence[faust.EventT], deps: WorkerDeps, now_ms: int
) -> tuple[list[dict[str, Any]], int, int]:
    """One validate batch: the records to produce, and the clean and dead counts (no I/O)."""
    clean_by_partition: dict[int, list[CleanEvent]] = defaultdict(list)
    dead: list[Invalid] = []
    for event in events:
        msg = event.message
        meta = SourceMeta(msg.topic, msg.partition, msg.offset, int(msg.timestamp * 1000))
        redrive = dlq.redrive_of(dlq.parse_headers(msg.headers), meta) if msg.headers else None
        result = deps.validator.validate_message(
            msg.value, msg.key, meta, deps.schemas.known,
            identity=redrive.identity if redrive else None,
            only_index=redrive.only_index if redrive else None,
        )
        if redrive is not None:
            result.invalid[:] = [
                replace(inv, source=redrive.identity, attempt=redrive.attempt,
                        first_failed_at_ms=redrive.first_failed_at_ms)
                for inv in result.invalid
            ]
        redacted = clean_by_partition[msg.partition]
        for valid in result.clean:
            clean_event, counts = deps.redactor.redact_event(valid)
            redacted.append(clean_event)
            if counts:
                deps.counters.redactions.update(counts)
        dead.extend(result.invalid)
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


def decode_clean(events: Sequence[faust.EventT]) -> tuple[list[pa.Table], list[Invalid]]:
    """Arrow blocks of the clean messages; a message that does not decode becomes an Invalid."""
    blocks: list[pa.Table] = []
    bad: list[Invalid] = []
    for event in events:
        msg = event.message
        try:
            blocks.append(decode_block(msg.value))
        except ValueError as exc:
            meta = SourceMeta(msg.topic, msg.partition, msg.offset, int(msg.timestamp * 1000))
            bad.append(Invalid("sink", "BadCleanBlock", str(exc), meta, msg.value, msg.key))
    return blocks, bad


def dead_letter_records(invalid: Sequence[Invalid], deps: WorkerDeps, now_ms: int) -> list[dict[str, Any]]:
    records = []
    for inv in invalid:
        deps.counters.by_reason[f"{inv.stage}:{inv.error_class}"] += 1
        # A reason may quote a field value: it gets the same redaction as clean events.
        # (The value is the original bytes, kept unchanged for redrive, in Kafka only.)
        reason, _ = deps.redactor.redact_text(inv.reason)
        records.append(
            {"topic": deps.dlq_topic, "key": inv.key, "value": inv.raw,
             "partition": None, "headers": dlq.headers(replace(inv, reason=reason), now_ms)}
        )
    return records


def letter_preview(value: bytes, headers: dict[str, str], deps: WorkerDeps) -> str:
    """The dead letter's event as redacted JSON, or its first bytes as redacted text."""
    try:
        schema_id, body = split_frame(value)
        schema = deps.schemas.get(schema_id)
        if schema is None:
            raise ValueError("unknown schema")
        # A letter the reader could not read still shows as its writer wrote it.
        decoded = decode(body, replace(schema, reader=None))
        if schema.kind is Kind.BATCH:
            index = int(headers.get(dlq.H_EVENT_INDEX, "0"))
            decoded = decoded["events"][index]
        text = orjson.dumps(decoded, default=str).decode()
    except Exception:  # noqa: BLE001 - undecodable letters get a text preview
        text = (value or b"")[:512].decode("utf-8", "replace")
    return deps.redactor.redact_text(text)[0]


def readers(deps: WorkerDeps, rollups: bool) -> dict[str, list[str]]:
    """Which agents read which topic: a partition is committed once all of them are done."""
    return {
        deps.raw_topic: ["validate"],
        deps.clean_topic: ["sink", "aggregate"] if rollups else ["sink"],
        deps.dlq_topic: ["dead_letters"] if deps.dlq_writer is not None else [],
    }


def install(app: faust.App, deps: WorkerDeps, offsets: OffsetKeeper) -> None:
    """Declare the topics and agents on *app*."""
    raw = bytes_topic(app, deps.raw_topic)
    clean = bytes_topic(app, deps.clean_topic)
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
                await _retry_forever("produce", lambda: _produce_all(app, records), deps)
                counters.read += len(events)
                counters.clean += n_clean
                counters.dead += n_dead
            await offsets.done(stream, taken, receipt)

    @app.agent(clean, name="sink")
    async def sink(stream: faust.StreamT) -> None:
        async for taken in stream.noack_take(deps.take_max, within=deps.take_within_s):
            events, receipt = offsets.admit("sink", taken)
            blocks, bad = decode_clean(events)
            if bad:
                records = dead_letter_records(bad, deps, int(time.time() * 1000))
                await _retry_forever("produce", lambda: _produce_all(app, records), deps)
                counters.dead += len(bad)
            if blocks:
                block = pa.concat_tables(blocks)
                await _retry_forever("clickhouse", lambda: deps.events_writer.write(block), deps)
                counters.inserted += block.num_rows
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
                    await _retry_forever("registry", lambda: deps.schemas.ensure(ids), deps)
                    rows = [
                        dlq.letter_row(e.message.partition, e.message.offset,
                                       int(e.message.timestamp * 1000), e.message.value or b"", h,
                                       letter_preview(e.message.value, h, deps))
                        for e, h in zip(events, parsed, strict=True)
                    ]
                    await _retry_forever("clickhouse", lambda: dlq_writer.write(rows), deps)
                await offsets.done(stream, taken, receipt)

        _ = dead_letters

    @app.timer(10.0)
    async def report() -> None:
        log.info(
            "worker_progress",
            raw_messages=counters.read,
            clean_events=counters.clean,
            dead_letters=counters.dead,
            inserted_rows=counters.inserted,
        )

    @app.on_before_shutdown.connect
    async def close_clients(app: faust.App, **kwargs: Any) -> None:
        await deps.schemas.close()

    _ = (validate, sink, report, close_clients)
