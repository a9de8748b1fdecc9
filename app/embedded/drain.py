"""Whether the embedded broker's log can be dropped: everything in it read and archived.

`rearview up` bounds its broker's memory by beginning a new log (app/up.py, `Stack.roll_log`):
the embedded broker keeps every record in memory and cannot delete any (docs/archive.md,
"Bounding the embedded log"), so the only way to free them is a new broker, with a new log
epoch (tables/logs.py). That loses nothing only once the log is *drained*: with the collector
stopped, every consumer group has committed to the end of every partition of the topics the
pipeline reads, and the archive holds every raw record.

The end of a partition is read from the log itself. The embedded broker's high watermark is
the last batch's *base* offset + 1 (DESIGN.md), so it can fall short of the real end by most
of a batch; reading from just below it to the last record finds the real end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from core.exceptions import ServiceUnavailable

TopicPartitionKey = tuple[str, int]


@contextmanager
def _reader(bootstrap_servers: str, **config: Any) -> Iterator[Consumer]:
    """A consumer that never joins its group or commits (assign() and read only); Kafka's
    errors come out as ServiceUnavailable."""
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": "rearview-log-ends",
                         "enable.auto.commit": False, "log_level": 0, **config})
    try:
        yield consumer
    except KafkaException as exc:
        raise ServiceUnavailable(f"Kafka at {bootstrap_servers} did not answer: {exc}") from exc
    finally:
        consumer.close()


def _high_watermarks(consumer: Consumer, topics: Mapping[str, int], timeout_s: float) -> dict[TopicPartitionKey, int]:
    return {(t, p): max(0, int(consumer.get_watermark_offsets(TopicPartition(t, p), timeout=timeout_s,
                                                              cached=False)[1]))
            for t, n in topics.items() for p in range(n)}


def log_ends(bootstrap_servers: str, topics: Mapping[str, int], timeout_s: float = 10.0,
             idle_s: float = 0.25) -> dict[TopicPartitionKey, int]:
    """One past the last offset of each partition of *topics* (name: partition count), read
    from the log (0: empty)."""
    with _reader(bootstrap_servers, **{"auto.offset.reset": "earliest", "fetch.wait.max.ms": 50}) as consumer:
        ends = _high_watermarks(consumer, topics, timeout_s)
        starts = [TopicPartition(t, p, high - 1) for (t, p), high in ends.items() if high > 0]
        if not starts:
            return ends
        consumer.assign(starts)
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < idle_s:
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"reading the end of {', '.join(topics)} took longer than {timeout_s:g}s")
            messages = consumer.consume(500, 0.05)
            for m in messages:
                if m.error() is None:
                    key = (str(m.topic()), int(m.partition() or 0))
                    ends[key] = max(ends[key], int(m.offset() or 0) + 1)
            if messages:
                quiet_since = time.monotonic()
        return ends


def holds_records(bootstrap_servers: str, topics: Mapping[str, int], timeout_s: float = 10.0) -> bool:
    """Whether any partition of *topics* holds a record (its high watermark is above 0: wrong
    by most of a batch, never by whether there is one)."""
    with _reader(bootstrap_servers) as consumer:
        return any(_high_watermarks(consumer, topics, timeout_s).values())


def group_commits(bootstrap_servers: str, topics: Mapping[str, int], config: Mapping[str, str] | None = None,
                  timeout_s: float = 10.0) -> dict[str, dict[TopicPartitionKey, int]]:
    """Per consumer group, its committed offset of each partition of *topics* it committed."""
    from confluent_kafka import ConsumerGroupTopicPartitions

    # log_level 0: an unreachable broker is reported once by the caller, not per attempt.
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0, **(config or {})})
    wanted = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
    out: dict[str, dict[TopicPartitionKey, int]] = {}
    try:
        groups = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout_s).valid
        for group in groups:
            futures = admin.list_consumer_group_offsets(
                [ConsumerGroupTopicPartitions(group.group_id, wanted)], request_timeout=timeout_s)
            for future in futures.values():
                for tp in future.result(timeout_s).topic_partitions:
                    if tp.error is None and tp.offset >= 0:
                        out.setdefault(group.group_id, {})[(tp.topic, tp.partition)] = tp.offset
    except (KafkaException, TimeoutError) as exc:
        raise ServiceUnavailable(f"Kafka at {bootstrap_servers} did not answer: {str(exc) or 'timed out'}") from exc
    return out


@dataclass(frozen=True)
class Behind:
    """Who has not read (or archived) a partition to its end yet (no topic: what else keeps
    the log, such as Kafka not answering)."""

    who: str
    topic: str
    partition: int
    at: int
    end: int

    def __str__(self) -> str:
        if not self.topic:  # not about one partition
            return self.who
        return f"{self.who} at {self.at:,} of {self.end:,} on {self.topic}[{self.partition}]"


def behind(ends: Mapping[TopicPartitionKey, int], commits: Mapping[str, Mapping[TopicPartitionKey, int]],
           readers: Mapping[str, Iterable[str]] | None = None,
           archived: Mapping[TopicPartitionKey, int] | None = None) -> list[Behind]:
    """What keeps the log from being drained (pure). Every group must have committed the end
    of every partition of the topics it committed on, and of the topics *readers* names for it
    (a group that has not committed yet has not read anything); the archive (broker offsets)
    must reach the ends of the partitions it keeps. Empty: drained."""
    out = []
    for group in sorted(set(commits) | set(readers or {})):
        offsets = commits.get(group, {})
        topics = {t for t, _p in offsets} | set((readers or {}).get(group, ()))
        for (topic, p), end in sorted(ends.items()):
            if topic in topics and offsets.get((topic, p), 0) < end:
                out.append(Behind(f"group {group}", topic, p, offsets.get((topic, p), 0), end))
    for (topic, p), at in sorted((archived or {}).items()):
        end = ends.get((topic, p), 0)
        if at < end:
            out.append(Behind("the archive", topic, p, at, end))
    return out
