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

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import faust
import orjson
import pyarrow as pa
import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from agents import dlq, oversize
from agents.codec import FramingError, Kind, decode, split_frame
from agents.offsets import OffsetKeeper, bytes_topic
from agents.pii import Redactor
from agents.records import CleanEvent, Invalid, SourceMeta
from agents.sink import BlockWriter, RowsWriter, decode_block, encode_blocks
from agents.validate import Validator
from app.exceptions import ServiceUnavailable
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
    """Send records and wait until the broker acknowledged every one of them.

    A record refused as too large, by the producer's own limit (`producer_max_request_size`,
    checked before sending) or by the broker's limit for the topic (the error it answers), is
    data, not an outage, and is never retried as one (agents/oversize.py): a clean block is
    split by rows until each part fits, a single clean row that still does not fit becomes a
    dead letter on *dlq_topic* (by default the topic of the batch's other dead letters), and a
    dead letter is sent in parts. Any other failure raises ServiceUnavailable: the caller
    retries the whole call, and a retry re-sends records the broker may already hold (every
    effect downstream is idempotent).
    """
    limit = int(app.conf.producer_max_request_size)
    dlq_topic = dlq_topic or next((r["topic"] for r in records if _is_letter(r)), None)
    pending = list(records)
    while pending:
        fits: list[dict[str, Any]] = []
        too_large: list[dict[str, Any]] = []
        for r in pending:
            fitting = oversize.record_size(r["key"], r["value"], r["headers"]) <= limit
            (fits if fitting else too_large).append(r)
        outcomes = await _send_each(app, fits)
        errors = [o for o in outcomes if isinstance(o, BaseException) and not _too_large(o)]
        if errors:
            raise ServiceUnavailable(
                f"producing {len(records)} records failed ({len(errors)} errors): {errors[0]!r}"
            ) from errors[0]
        too_large += [r for r, o in zip(fits, outcomes, strict=True) if isinstance(o, BaseException)]
        pending = []
        for record in too_large:
            if _is_letter(record):
                await _send_letter_in_parts(app, record, limit)
            else:
                pending.extend(_smaller(record, dlq_topic))


def _is_letter(record: dict[str, Any]) -> bool:
    return any(k == dlq.H_STAGE for k, _ in record.get("headers") or ())


def _too_large(exc: BaseException) -> bool:
    """Whether *exc* (or what caused it: Faust wraps the producer's error) says "too large"."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _send_each(app: faust.App, records: Sequence[dict[str, Any]]) -> list[Any]:
    """Send every record; per record, in order, its RecordMetadata or the exception it met."""
    outcomes: list[Any] = [None] * len(records)
    futures: list[tuple[int, Awaitable[Any]]] = []
    for i, r in enumerate(records):
        try:
            futures.append((i, await app.producer.send(**r, timestamp=None)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - sorted by the caller: too large, or an outage
            outcomes[i] = exc
    results = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
    for (i, _), result in zip(futures, results, strict=True):
        outcomes[i] = result
    return outcomes


def _smaller(record: dict[str, Any], dlq_topic: str | None) -> list[dict[str, Any]]:
    """A clean record too large for its topic, as records that may fit."""
    halves = oversize.split_block(record["value"])
    if halves is not None:
        return [{**record, "value": half} for half in halves]
    origin = oversize.block_provenance(record["value"])
    if dlq_topic is None or origin is None:
        log.error("clean_record_too_large", topic=record["topic"], bytes=len(record["value"] or b""))
        raise ServiceUnavailable(f"a {len(record['value'] or b'')}-byte record for {record['topic']}"
                                 " is too large and there is no dead-letter topic to put it in")
    partition, offset, index, schema_id = origin
    now_ms = int(time.time() * 1000)
    letter = Invalid("sink", oversize.TOO_LARGE,
                     f"a clean event of {len(record['value'])} bytes is larger than {record['topic']} accepts",
                     SourceMeta(record["topic"], partition, offset, now_ms), record["value"], None,
                     index, schema_id or None)
    log.warning("clean_event_dead_lettered_too_large", partition=partition, offset=offset, index=index,
                bytes=len(record["value"]))
    return [{"topic": dlq_topic, "key": None, "value": record["value"], "partition": None,
             "headers": dlq.headers(letter, now_ms)}]


MIN_PART_BYTES = 1024


async def _send_letter_in_parts(app: faust.App, record: dict[str, Any], limit: int) -> None:
    """A dead letter too large for the DLQ topic, as fragments then a head (agents/oversize.py)."""
    value: bytes = record["value"] or b""
    headers: list[tuple[str, bytes]] = list(record["headers"] or [])
    # Room for the head's own headers: the letter's, plus its id, size and fragment offsets.
    room = limit - oversize.record_size(record["key"], b"", headers) - 512
    part_bytes = min(max(room, MIN_PART_BYTES), len(value) // 2 + 1)
    while part_bytes >= MIN_PART_BYTES:
        parts = oversize.cut(value, part_bytes)
        letter_id = uuid.uuid4().hex
        partition = record["partition"]
        offsets: list[int] = []
        try:
            for i, part in enumerate(parts[1:], start=2):
                meta = await _send_one(app, {
                    "topic": record["topic"], "key": record["key"], "value": part, "partition": partition,
                    "headers": oversize.fragment_headers(headers, letter_id, i, len(parts))})
                partition = meta.partition
                offsets.append(meta.offset)
            await _send_one(app, {
                "topic": record["topic"], "key": record["key"], "value": parts[0], "partition": partition,
                "headers": oversize.head_headers(headers, letter_id, len(value), offsets)})
        except _PartTooLarge:
            part_bytes //= 2
            continue
        log.warning("dead_letter_sent_in_parts", topic=record["topic"], bytes=len(value), parts=len(parts))
        return
    raise ServiceUnavailable(f"{record['topic']} refuses even {MIN_PART_BYTES}-byte parts of a dead letter")


class _PartTooLarge(Exception):
    pass


async def _send_one(app: faust.App, record: dict[str, Any]) -> Any:
    """Send one record and return its RecordMetadata; _PartTooLarge if it is refused as such."""
    if oversize.record_size(record["key"], record["value"], record["headers"]) > int(
            app.conf.producer_max_request_size):
        raise _PartTooLarge()
    (outcome,) = await _send_each(app, [record])
    if isinstance(outcome, BaseException):
        if _too_large(outcome):
            raise _PartTooLarge() from outcome
        raise ServiceUnavailable(f"producing a dead letter's part failed: {outcome!r}") from outcome
    return outcome


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
