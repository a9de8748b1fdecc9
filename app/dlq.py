"""`rearview dlq`: inspect dead letters and send them back through validation.

Listing reads the `dlq` table (one row per letter, with a redacted preview). Redrive reads each
selected letter's original bytes from events.dlq, produces them to events.raw with headers that
carry the letter's origin (source position, event index, attempt, first failure), and records
the letter in `dlq_redrives` once the broker acknowledged it. Letters already recorded are never
sent again, so a second redrive sends nothing twice; redriven events without an event_id derive
it from their original position, so they are stored with the same id whichever way they come.
A redriven letter that fails again becomes a new letter with attempt + 1.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from agents import dlq
from app.exceptions import RearviewError, ServiceUnavailable


@dataclass(frozen=True)
class Filters:
    reason: str | None = None  # substring of the reason
    stage: str | None = None
    error_class: str | None = None
    since: datetime | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses, params = ["1"], {}
        if self.reason:
            clauses.append("positionCaseInsensitive(reason, {reason:String}) > 0")
            params["reason"] = self.reason
        if self.stage:
            clauses.append("stage = {stage:String}")
            params["stage"] = self.stage
        if self.error_class:
            clauses.append("error_class = {error_class:String}")
            params["error_class"] = self.error_class
        if self.since:
            clauses.append("failed_at >= {since:DateTime64(3, 'UTC')}")
            params["since"] = self.since
        return " AND ".join(clauses), params


def stats(client: Client, filters: Filters) -> list[tuple[Any, ...]]:
    where, params = filters.where()
    return client.query(
        "SELECT toStartOfHour(failed_at) AS hour, stage, error_class, count() AS letters,"
        " any(reason) AS example FROM dlq FINAL WHERE " + where +
        " GROUP BY hour, stage, error_class ORDER BY hour, letters DESC",
        parameters=params,
    ).result_rows


def pending(client: Client, filters: Filters, limit: int | None = None) -> list[dict[str, Any]]:
    """Letters matching *filters* that were not redriven yet, oldest first."""
    where, params = filters.where()
    sql = (
        "SELECT dlq_partition, dlq_offset, failed_at, stage, error_class, source_partition,"
        " source_offset, event_index, attempt, reason FROM dlq FINAL WHERE " + where +
        " AND (dlq_partition, dlq_offset) NOT IN (SELECT dlq_partition, dlq_offset FROM dlq_redrives)"
        " ORDER BY failed_at, dlq_partition, dlq_offset"
    )
    if limit:
        sql += f" LIMIT {int(limit)}"
    rows = client.query(sql, parameters=params).result_rows
    names = ["dlq_partition", "dlq_offset", "failed_at", "stage", "error_class",
             "source_partition", "source_offset", "event_index", "attempt", "reason"]
    return [dict(zip(names, row, strict=True)) for row in rows]


def show(client: Client, partition: int, offset: int) -> dict[str, Any] | None:
    result = client.query(
        "SELECT *, (dlq_partition, dlq_offset) IN (SELECT dlq_partition, dlq_offset FROM dlq_redrives)"
        " AS redriven FROM dlq FINAL WHERE dlq_partition = {p:UInt32} AND dlq_offset = {o:UInt64}",
        parameters={"p": partition, "o": offset},
    )
    if not result.result_rows:
        return None
    row = dict(zip(result.column_names, result.result_rows[0], strict=True))
    row["redriven"] = bool(row["redriven"])
    return row


def parse_position(text: str) -> tuple[int, int]:
    try:
        partition, offset = text.split(":")
        return int(partition), int(offset)
    except ValueError:
        raise RearviewError(f"a letter is PARTITION:OFFSET in the DLQ topic, got {text!r}") from None


def read_letters(
    bootstrap_servers: str, topic: str, positions: list[tuple[int, int]], timeout_s: float = 30
) -> Iterator[tuple[tuple[int, int], bytes | None, bytes, dict[str, str]]]:
    """(position, key, value, rv.* headers) of each letter, read from Kafka by position."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"rearview-dlq-{uuid.uuid4()}",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        for partition, offset in positions:
            consumer.assign([TopicPartition(topic, partition, offset)])
            msg = consumer.poll(timeout_s)
            if msg is None or msg.error() or msg.offset() != offset:
                error = msg.error() if msg is not None else "timed out"
                raise ServiceUnavailable(
                    f"cannot read letter {partition}:{offset} from {topic} ({error}); "
                    "it may have expired from the topic's retention")
            yield (partition, offset), msg.key(), msg.value(), dlq.parse_headers(msg.headers())
    finally:
        consumer.close()


def redrive(
    client: Client,
    bootstrap_servers: str,
    dlq_topic: str,
    raw_topic: str,
    letters: list[dict[str, Any]],
    on_progress: Callable[[int], None] = lambda n: None,
    chunk: int = 500,
) -> int:
    """Send *letters* back to the raw topic; returns how many were sent."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5,
                         "enable.idempotence": False})
    run_id = str(uuid.uuid4())
    sent = 0
    positions = [(int(r["dlq_partition"]), int(r["dlq_offset"])) for r in letters]
    for start in range(0, len(positions), chunk):
        part = positions[start:start + chunk]
        failures: list[KafkaError] = []
        for (p, o), key, value, headers in read_letters(bootstrap_servers, dlq_topic, part):
            producer.produce(raw_topic, key=key, value=value, headers=dlq.redrive_headers(headers, f"{p}:{o}"),
                             on_delivery=lambda err, _m: failures.append(err) if err else None)
            producer.poll(0)
        if producer.flush(60) or failures:
            raise ServiceUnavailable(f"redrive: Kafka did not acknowledge every message ({failures[:1]})")
        client.insert("dlq_redrives", [[p, o, run_id] for p, o in part],
                      column_names=["dlq_partition", "dlq_offset", "run_id"])
        sent += len(part)
        on_progress(len(part))
    return sent
