"""`rearview dlq`: inspect dead letters and send them back through validation.

Listing reads the `dlq` table (one row per letter, with a redacted preview). Redrive reads each
selected letter's original bytes from events.dlq, produces them to events.raw with headers that
carry the letter's origin (source position, event index, attempt, first failure), and records
the letter in `dlq_redrives` once the broker acknowledged it. Letters already recorded are never
sent again, so a second redrive sends nothing twice; redriven events without an event_id derive
it from their original position, so they are stored with the same id whichever way they come.
A redriven letter that fails again becomes a new letter with attempt + 1.

Redrive runs at thousands of letters a second (bench/redrive.py): the letters are read in one
sequential pass per partition, produced without waiting for each other, and recorded with one
insert per chunk. It needs nothing of the worker's cache: the worker re-reads a reader schema
before failing a message on it (agents/schema_registry.py), so a fix registered a second before
the redrive applies. A letter too large for the DLQ topic was written in parts (see
agents/oversize.py); only its head is listed, and redrive joins it whole again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from agents import dlq, oversize
from core.exceptions import RearviewError, ServiceUnavailable
from tables.logs import load_bases

# What redrive's producer accepts on its side: a letter may be as large as the raw topic
# accepted, which is the broker's to say. A letter it refuses is reported, not retried.
MAX_REDRIVE_BYTES = 256 * 1024 * 1024

_EARLIER_LOG = ("its bytes were in an earlier log of the broker, which no longer has them"
                " (the embedded broker keeps its log in memory)")


@dataclass(frozen=True)
class Filters:
    reason: str | None = None  # substring of the reason
    stage: str | None = None
    error_class: str | None = None
    since: datetime | None = None
    # Only letters of these projects ('' is a letter whose project could not be read).
    projects: tuple[str, ...] | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        # Fragments of a letter written in parts are not letters (agents/oversize.py).
        clauses, params = [f"stage != '{oversize.PART_STAGE}'"], dict[str, Any]()
        if self.projects is not None:
            clauses.append("project_id IN {projects:Array(String)}")
            params["projects"] = list(self.projects)
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


@dataclass(frozen=True)
class Letter:
    """One dead letter as read back from the DLQ topic."""

    position: tuple[int, int]  # (partition, offset) in the DLQ topic
    key: bytes | None
    value: bytes | None
    headers: dict[str, str]  # its rv.* headers, as text


class LetterMissing(RearviewError):
    """A letter the `dlq` table lists is no longer in the DLQ topic (retention, compaction)."""


def read_letters(
    bootstrap_servers: str,
    topic: str,
    positions: Iterable[tuple[int, int]],
    timeout_s: float = 30,
    max_gap: int = 1000,
) -> Iterator[Letter]:
    """The letters at *positions*, read in one sequential pass per partition.

    Each partition is read from its lowest wanted offset onwards; where the next wanted letter
    is more than *max_gap* offsets ahead, the reader seeks to it instead of reading the letters
    in between. A partition whose letters are all read is paused. Letters come out in log order
    per partition (not in the order of *positions*). One consumer for the whole pass: assigning
    a partition and waiting for a fetch per letter, as this did before, cost ~0.44 s a letter.
    """
    wanted: dict[int, deque[int]] = {}
    for partition, offset in sorted(set(positions)):
        wanted.setdefault(partition, deque()).append(offset)
    if not wanted:
        return
    consumer = Consumer({
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"rearview-dlq-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "auto.offset.reset": "error",  # a letter below the log start is reported, not skipped
        "fetch.wait.max.ms": 50,
    })
    try:
        consumer.assign([TopicPartition(topic, p, q[0]) for p, q in wanted.items()])
        left = sum(len(q) for q in wanted.values())
        last_progress = time.monotonic()
        while left:
            messages = consumer.consume(1000, 0.5)
            if not messages and time.monotonic() - last_progress > timeout_s:
                p, q = next((p, q) for p, q in wanted.items() if q)
                raise ServiceUnavailable(
                    f"cannot read letter {p}:{q[0]} from {topic}: nothing arrived for {timeout_s:.0f} s")
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError.OFFSET_OUT_OF_RANGE:
                        queue = wanted.get(msg.partition()) or deque([-1])
                        raise LetterMissing(f"letter {msg.partition()}:{queue[0]} is not in {topic}"
                                            " (the topic's retention removed it)")
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise ServiceUnavailable(f"reading {topic} failed: {error}")
                partition, offset = msg.partition(), msg.offset()
                queue = wanted.get(partition)
                if not queue or offset < queue[0]:
                    continue  # between wanted letters, or fetched before a seek
                if offset > queue[0]:
                    raise LetterMissing(f"letter {partition}:{queue[0]} is no longer in {topic}"
                                        " (retention or compaction removed it)")
                queue.popleft()
                left -= 1
                last_progress = time.monotonic()
                yield Letter((partition, offset), msg.key(), msg.value(),
                             dlq.parse_headers(msg.headers()))
                if not queue:
                    consumer.pause([TopicPartition(topic, partition)])
                elif queue[0] - offset > max_gap:
                    consumer.seek(TopicPartition(topic, partition, queue[0]))
    finally:
        consumer.close()


def whole_letters(
    bootstrap_servers: str, topic: str, positions: Iterable[tuple[int, int]],
    unreadable: list[tuple[tuple[int, int], str]], timeout_s: float = 30,
) -> Iterator[Letter]:
    """The letters at *positions* with their original bytes, parted letters joined.

    A letter too large for the DLQ topic was written in parts (agents/oversize.py): its head
    is at the position the `dlq` table lists and names its fragments' offsets. Heads are set
    aside during the pass and joined afterwards, each from its own read of its fragments; one
    whose fragments are gone or do not match is added to *unreadable* instead.
    """
    heads: list[Letter] = []
    for letter in read_letters(bootstrap_servers, topic, positions, timeout_s):
        if oversize.H_PARTS in letter.headers:
            heads.append(letter)
        else:
            yield letter
    for head in heads:
        partition, _ = head.position
        wanted = oversize.fragment_offsets(head.headers)
        try:
            by_offset = {f.position[1]: f for f in read_letters(
                bootstrap_servers, topic, [(partition, o) for o in wanted], timeout_s)}
            value = oversize.join_parts(head.value or b"", head.headers,
                                        [(by_offset[o].value or b"", by_offset[o].headers) for o in wanted])
        except (LetterMissing, ServiceUnavailable, oversize.PartsMismatch, KeyError) as exc:
            unreadable.append((head.position, f"its parts cannot be read back: {exc}"))
            continue
        yield Letter(head.position, head.key, value, head.headers)


@dataclass
class RedriveResult:
    sent: int = 0  # acknowledged by the broker and recorded in dlq_redrives
    refused: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # the raw topic refused them
    unreadable: list[tuple[tuple[int, int], str]] = field(default_factory=list)  # parts missing


def redrive(
    client: Client,
    bootstrap_servers: str,
    dlq_topic: str,
    raw_topic: str,
    letters: list[dict[str, Any]],
    on_progress: Callable[[int], None] = lambda n: None,
    chunk: int = 2000,
    producer_config: dict[str, Any] | None = None,
) -> RedriveResult:
    """Send *letters* back to the raw topic, each once.

    Letters are read in one pass (`read_letters`), produced without waiting for each other, and
    every *chunk* letters the producer is flushed and the acknowledged ones are recorded in
    `dlq_redrives` with one insert. A letter is recorded only once the broker acknowledged it;
    after a failure, the letters acknowledged so far are still recorded before the error is
    raised, so a second run sends only the others. A letter the raw topic refuses as too large
    is reported in the result and left unrecorded; any other delivery failure is an outage.
    """
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5,
                         "enable.idempotence": False, "message.max.bytes": MAX_REDRIVE_BYTES,
                         **(producer_config or {})})
    run_id = str(uuid.uuid4())
    result = RedriveResult()
    acked: list[tuple[int, int]] = []
    failures: list[KafkaError] = []
    in_flight = 0

    def delivered(position: tuple[int, int]) -> Callable[[KafkaError | None, Any], None]:
        def report(err: KafkaError | None, _msg: Any) -> None:
            if err is None:
                acked.append(position)
            elif err.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                result.refused.append((position, str(err)))
            else:
                failures.append(err)
        return report

    def settle() -> None:
        nonlocal in_flight
        unsent = producer.flush(60)
        if acked:
            client.insert("dlq_redrives", [[p, o, run_id] for p, o in acked],
                          column_names=["dlq_partition", "dlq_offset", "run_id"])
            result.sent += len(acked)
            on_progress(len(acked))
            acked.clear()
        in_flight = 0
        if unsent or failures:
            raise ServiceUnavailable(
                f"redrive: Kafka did not acknowledge {unsent + len(failures)} letters ({failures[:1]});"
                " those acknowledged are recorded, run the redrive again for the rest")

    # The table holds positions (tables/logs.py); the broker has only its current log's letters.
    bases = load_bases(client)
    positions = []
    for r in letters:
        p, o = int(r["dlq_partition"]), int(r["dlq_offset"])
        local = bases.local(dlq_topic, p, o)
        if local < 0:
            result.unreadable.append(((p, o), _EARLIER_LOG))
        else:
            positions.append((p, local))
    broker_unreadable: list[tuple[tuple[int, int], str]] = []
    try:
        for read in whole_letters(bootstrap_servers, dlq_topic, positions, broker_unreadable):
            p, o = read.position[0], bases.logical(dlq_topic, *read.position)
            letter = replace(read, position=(p, o))
            kwargs = {"key": letter.key, "value": letter.value,
                      "headers": dlq.redrive_headers(letter.headers, f"{p}:{o}"),
                      "on_delivery": delivered(letter.position)}
            while True:
                try:
                    producer.produce(raw_topic, **kwargs)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    producer.poll(0.1)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                        raise ServiceUnavailable(f"redrive: producing failed: {exc}") from exc
                    result.refused.append((letter.position, str(exc)))
                    break
            producer.poll(0)
            in_flight += 1
            if in_flight >= chunk:
                settle()
    except BaseException:
        with contextlib.suppress(Exception):  # record what was acknowledged, keep the first error
            settle()
        raise
    finally:
        result.unreadable += [((p, bases.logical(dlq_topic, p, o)), why) for (p, o), why in broker_unreadable]
    settle()
    return result
