"""Log epochs: positions that keep increasing when the broker begins a new log.

Why
---
Every exactness argument in Rearview rests on positions: an event's provenance
(``_partition``, ``_offset``) in events.raw, its position (``_clean_offset``, index) in
events.clean that the dedup and rollup states order by, a dead letter's place in events.dlq,
the archive's file names. Within one log they only grow. The embedded broker keeps its log in
memory, so each start of `rearview up` begins a new log whose offsets start at 0 again, while
ClickHouse and the archive keep everything of the earlier logs. Stored as they come, the new
offsets would collide with the old ones: a rollup state whose ``applied_through`` is offset
5,000 of the old log would skip events 0..5,000 of the new one as already applied, a new dead
letter would replace an old one of the same (partition, offset), and a replay could not tell
two logs' records apart.

What
----
An *epoch* is one log. It gives every partition of the pipeline's topics a *base*, and every
position Rearview stores or reads is ``base + the broker's offset`` (`LogBases.logical`); what
it hands back to the broker (a seek, an assignment) is ``logical - base`` (`LogBases.local`).
Offsets committed to consumer groups stay the broker's own: they live and die with its log.

A new epoch's base of a partition is one past the highest position stored anywhere for it
(`begin_epoch`): the events table, the dead letters, the rollup states, the archive. Positions
of the earlier logs that nothing stored or archived are reused, harmlessly: nothing refers to
them. Bases therefore only grow, every later position is above every earlier one, and the
arguments of tables/dedup.py and tables/aggregate.py hold across logs unchanged.

Only `rearview up` begins epochs (its broker is new at every start). A deployment on durable
Kafka has no row in ``log_epochs``: one log, every base 0, positions equal to the broker's
offsets. If such a topic is ever deleted and created again, ``rearview epochs begin`` starts an
epoch by hand, with the workers and the archiver stopped (they read the bases when they start).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from clickhouse_connect.driver.client import Client

from tables.dedup import REPLAYED_OFFSET
from tables.state import REPLAY_PARTITION_BASE

TopicPartition = tuple[str, int]
_VERSION_INDEX_BITS = 24  # tables/rollup_tables.py packs (offset, index) into ``version``


@dataclass(frozen=True)
class LogBases:
    """One epoch's bases: position = base + broker offset, per (topic, partition)."""

    epoch: int = 0
    bases: Mapping[TopicPartition, int] = field(default_factory=dict)

    def base(self, topic: str, partition: int) -> int:
        return self.bases.get((topic, partition), 0)

    def logical(self, topic: str, partition: int, offset: int) -> int:
        """The position Rearview stores for the broker's *offset*."""
        return self.base(topic, partition) + offset

    def local(self, topic: str, partition: int, position: int) -> int:
        """The broker's offset of a stored *position*; negative when it belongs to an
        earlier log (the broker no longer has it)."""
        return position - self.base(topic, partition)

    def describe(self) -> str:
        if not self.bases:
            return f"epoch {self.epoch}: every base 0"
        shifted = {k: v for k, v in self.bases.items() if v}
        return f"epoch {self.epoch}: " + (", ".join(
            f"{t}[{p}]+{b:,}" for (t, p), b in sorted(shifted.items())) or "every base 0")


NO_EPOCH = LogBases()


def load_bases(client: Client) -> LogBases:
    """The current epoch's bases (the newest epoch), or `NO_EPOCH` when none was begun."""
    rows = client.query(
        "SELECT epoch, topic, partition, base FROM log_epochs FINAL"
        " WHERE epoch = (SELECT max(epoch) FROM log_epochs)").result_rows
    if not rows:
        return NO_EPOCH
    return LogBases(int(rows[0][0]), {(str(t), int(p)): int(b) for _e, t, p, b in rows})


def epochs(client: Client) -> list[tuple[LogBases, datetime]]:
    """Every epoch, oldest first, with when it began."""
    rows = client.query("SELECT epoch, topic, partition, base, began_at FROM log_epochs FINAL"
                        " ORDER BY epoch, topic, partition").result_rows
    out: dict[int, tuple[dict[TopicPartition, int], datetime]] = {}
    for epoch, topic, partition, base, began in rows:
        out.setdefault(int(epoch), ({}, began))[0][(str(topic), int(partition))] = int(base)
    return [(LogBases(e, bases), began) for e, (bases, began) in sorted(out.items())]


@dataclass(frozen=True)
class Topics:
    """The pipeline's topics and their (common) partition count."""

    raw: str
    clean: str
    dlq: str
    partitions: int

    def counts(self) -> dict[str, int]:
        return {self.raw: self.partitions, self.clean: self.partitions, self.dlq: self.partitions}


def stored_ends(client: Client, topics: Topics) -> dict[TopicPartition, int]:
    """Per (topic, partition), one past the highest position any table stores (the rollup
    tables of every generation included: a rollup's ``version`` is its applied position)."""
    raw, clean, dlq = topics.raw, topics.clean, topics.dlq
    ends: dict[TopicPartition, int] = {}

    def take(topic: str, sql: str, **parameters: object) -> None:
        for partition, top in client.query(sql, parameters=parameters).result_rows:
            key = (topic, int(partition))
            ends[key] = max(ends.get(key, 0), int(top) + 1)

    take(raw, "SELECT _partition, max(_offset) FROM events GROUP BY _partition")
    take(clean, "SELECT CRC32(toString(event_id)) % {n:UInt32} AS p, max(_clean_offset) FROM events"
         " WHERE _clean_offset < {replayed:UInt64} GROUP BY p", n=topics.partitions, replayed=REPLAYED_OFFSET)
    for topic in (raw, clean):
        take(topic, "SELECT source_partition, max(source_offset) FROM dlq"
             " WHERE source_topic = {t:String} GROUP BY source_partition", t=topic)
    take(dlq, "SELECT dlq_partition, max(dlq_offset) FROM dlq GROUP BY dlq_partition")
    take(dlq, "SELECT dlq_partition, max(dlq_offset) FROM dlq_redrives GROUP BY dlq_partition")
    rollup_tables = client.query(
        "SELECT DISTINCT table FROM system.columns WHERE database = currentDatabase()"
        " AND startsWith(table, 'rollup_') AND name = 'version'").result_rows
    for (table,) in rollup_tables:
        take(clean, f"SELECT partition, bitShiftRight(max(version), {_VERSION_INDEX_BITS}) FROM `{table}`"
             " WHERE partition < {replay:UInt32} GROUP BY partition", replay=REPLAY_PARTITION_BASE)
    return ends


def next_bases(previous: LogBases, partitions: Mapping[str, int],
               *ends: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
    """A new epoch's bases: per partition, the previous base or one past the highest position
    stored or archived, whichever is higher (pure)."""
    out = {}
    for topic, count in partitions.items():
        for p in range(count):
            key = (topic, p)
            out[key] = max([previous.base(topic, p), *(e.get(key, 0) for e in ends)])
    return out


def begin_epoch(client: Client, topics: Topics, archived: Mapping[TopicPartition, int] | None = None) -> LogBases:
    """Record a new epoch for a broker that begins a new log; *archived* is the archive's next
    position per raw partition (it may hold records no table stores yet)."""
    previous = load_bases(client)
    bases = next_bases(previous, topics.counts(),
                       stored_ends(client, topics), archived or {})
    epoch = previous.epoch + 1
    client.insert("log_epochs", [[epoch, t, p, b] for (t, p), b in sorted(bases.items())],
                  column_names=["epoch", "topic", "partition", "base"])
    return LogBases(epoch, bases)

