"""Producing a batch's records, and waiting until the broker acknowledged every one of them.

The agents' only way to write to Kafka (`agents.produce.produce_all`, called by the agents in agents/worker.py). Records are dicts of
`app.producer.send` arguments (topic, key, value, partition, headers). A failure to reach the
broker raises ServiceUnavailable and the caller retries the whole batch; a record too large for
its topic is data and is never retried (agents/oversize.py says what becomes of it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

import faust
import structlog
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from agents import dlq, oversize
from agents.records import Invalid, SourceMeta
from core.exceptions import ServiceUnavailable

log = structlog.get_logger(__name__)

MIN_PART_BYTES = 1024


async def produce_all(
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
