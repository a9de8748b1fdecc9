"""Where a replay reads events.raw: Kafka (a plain consumer, assigned, no group), the archive, or
the archive up to where Kafka's log begins and Kafka after it.

Every source yields batches of `RawRecord` of ONE partition, in offset order, and an empty
batch when it has nothing new for a while, so that the caller can checkpoint and decide that
it has caught up. "Caught up" is judged on what the consumer delivered (no new record on any
partition for a quiet period), never on the broker's end offsets, which the embedded broker
reports wrong.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from agents.archive import Archive, RawRecord
from app.replay.jobs import ReplayError
from tables.logs import NO_EPOCH, LogBases

Batch = list[RawRecord]


def _consumer(bootstrap: str, extra: dict[str, Any] | None = None) -> Consumer:
    return Consumer({
        "bootstrap.servers": bootstrap,
        # No group membership (assign only, never a commit): the id is only required by
        # librdkafka's configuration.
        "group.id": f"rearview-replay-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 100,
        **(extra or {}),
    })


def low_watermarks(bootstrap: str, topic: str, partitions: list[int], bases: LogBases = NO_EPOCH,
                   timeout_s: float = 10.0) -> dict[int, int]:
    """The position where each partition's log begins (its low watermark, which is reliable,
    unlike the high one, plus the log epoch's base)."""
    consumer = _consumer(bootstrap)
    try:
        out = {}
        for p in partitions:
            low, _high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            out[p] = bases.logical(topic, p, max(0, int(low)))
        return out
    finally:
        consumer.close()


def topic_partitions(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[int]:
    consumer = _consumer(bootstrap)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise KafkaException(f"topic {topic} not found")
        return sorted(info.partitions)
    finally:
        consumer.close()


class KafkaSource:
    """Reads positions [start, stop) of each partition (stop None: until caught up). Positions
    are the broker's offsets plus the log epoch's *bases* (tables/logs.py), in and out."""

    def __init__(self, bootstrap: str, topic: str, fetch_messages: int = 2000,
                 extra: dict[str, Any] | None = None, bases: LogBases = NO_EPOCH) -> None:
        self._bootstrap, self._topic = bootstrap, topic
        self._fetch = fetch_messages
        self._extra = extra
        self._bases = bases

    def read(self, ranges: dict[int, tuple[int, int | None]], idle_s: float = 0.2) -> Iterator[Batch]:
        """Batches until every bounded partition reached its stop; open partitions never end
        here (the caller stops when it judges itself caught up). Yields [] when idle."""
        active = {p: r for p, r in ranges.items() if r[1] is None or r[0] < r[1]}
        if not active:
            return
        base = {p: self._bases.base(self._topic, p) for p in active}
        for p, (start, _) in active.items():
            if start < base[p]:
                raise ReplayError(
                    f"partition {p}: positions {start}..{base[p] - 1} belong to an earlier log, which"
                    f" Kafka no longer has (this log begins at {base[p]}); replay with --source auto")
        consumer = _consumer(self._bootstrap, self._extra)
        try:
            consumer.assign([TopicPartition(self._topic, p, start - base[p]) for p, (start, _) in active.items()])
            stops = {p: stop for p, (_, stop) in active.items()}
            expected = {p: start for p, (start, _) in active.items()}
            done: set[int] = set()
            while len(done) < len(active):
                messages = consumer.consume(self._fetch, idle_s)
                by_partition: dict[int, Batch] = {}
                for m in messages:
                    if m.error() is not None:
                        continue
                    p = int(m.partition() or 0)
                    offset = base.get(p, 0) + int(m.offset() or 0)
                    stop = stops.get(p)
                    if p in done or (stop is not None and offset >= stop):
                        continue
                    if offset > expected[p]:
                        self._check_gap(consumer, p, expected[p])
                    expected[p] = offset + 1
                    _kind, ts = m.timestamp()
                    by_partition.setdefault(p, []).append(
                        RawRecord(p, offset, int(ts), m.key(), m.value(), _headers(m.headers())))
                for p, batch in by_partition.items():
                    yield batch
                    stop = stops.get(p)
                    if stop is not None and batch[-1].offset + 1 >= stop:
                        done.add(p)
                        consumer.pause([TopicPartition(self._topic, p)])
                if not by_partition:
                    yield []
        finally:
            consumer.close()

    def _check_gap(self, consumer: Consumer, partition: int, expected: int) -> None:
        """Offsets may skip (transaction markers); records deleted while the replay read them
        may not: the consumer would jump to the log's new beginning, and the replay would
        silently miss them."""
        low, _high = consumer.get_watermark_offsets(TopicPartition(self._topic, partition), timeout=10,
                                                    cached=False)
        low = self._bases.logical(self._topic, partition, low)
        if low > expected:
            raise ReplayError(f"partition {partition}: offsets {expected}..{low - 1} left Kafka while the"
                              " replay read them; replay with --source auto and the archive")


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    items = raw.items() if isinstance(raw, dict) else (raw or ())
    return tuple((str(k), v if isinstance(v, bytes) else str(v or "").encode()) for k, v in items)


class ArchiveSource:
    """Reads [start, stop) of each partition from the raw archive (stop None: what it holds)."""

    def __init__(self, archive: Archive, topic: str, batch_records: int = 5000) -> None:
        self._archive, self._topic, self._batch = archive, topic, batch_records

    def read(self, ranges: dict[int, tuple[int, int | None]]) -> Iterator[Batch]:
        for p, (start, stop) in sorted(ranges.items()):
            end = stop if stop is not None else self._archive.next_offset(self._topic, p)
            if start < end:
                yield from self._archive.read(self._topic, p, start, end, self._batch)


class Quiet:
    """Caught up: nothing new delivered on any partition for *quiet_s* (by the consumer's own
    deliveries, not the broker's end offsets)."""

    def __init__(self, quiet_s: float, clock: Any = time.monotonic) -> None:
        self._quiet_s, self._clock = quiet_s, clock
        self._last = clock()

    def saw(self, n: int) -> None:
        if n:
            self._last = self._clock()

    def reset(self) -> None:
        self._last = self._clock()

    @property
    def caught_up(self) -> bool:
        return self._clock() - self._last >= self._quiet_s
