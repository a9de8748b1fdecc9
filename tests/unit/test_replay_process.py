"""The replay's processing core: the live stages, a dedup state over every raw partition, and a
resume that judges re-read copies exactly as the first run did."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from agents.archive import RawRecord
from agents.pii import Redactor
from agents.pii.policy import RedactionConfig
from agents.validate import Validator
from app.replay.process import DEDUP_PARTITION, EventsProcessor, raw_position
from tables.aggregate import Aggregator
from tables.dedup import REPLAYED_OFFSET, Deduper, ids_from_strings
from tables.rollups import DEFAULT_ROLLUPS
from tables.state import replay_partition
from tests.unit.test_validate import NOW, SCHEMAS, batch, event

EVENTS = [event(event_id=f"00000000-0000-4000-8000-{i:012d}", user_id=f"u{i % 5}") for i in range(6)]


def _processor(deduper: Deduper) -> EventsProcessor:
    return EventsProcessor(Validator(), Redactor(RedactionConfig(secret=b"s" * 32)), deduper, "events.raw")


def _records() -> list[RawRecord]:
    """Partition 0: events 0-3 then a corrupt message; partition 1: events 2-5 (2 and 3 copied)."""
    return [RawRecord(0, 10, NOW, None, batch(*EVENTS[:4]), ()),
            RawRecord(0, 11, NOW, None, b"\x00\x00\x00\x00\x01junk", ()),
            RawRecord(1, 7, NOW, None, batch(*EVENTS[2:]), ())]


def _run(processor: EventsProcessor, records: list[RawRecord], agg: Aggregator) -> tuple[list[pa.Table], dict[str, int]]:
    rows, counts = [], {"events": 0, "rows": 0, "duplicates": 0, "letters": 0}
    for p in (0, 1):
        part = [r for r in records if r.partition == p]
        if not part:
            continue
        done = processor.process(part, SCHEMAS, NOW)
        if done.rows is not None:
            rows.append(done.rows)
        for block, partition, offset, index in done.applies:
            agg.apply(block, partition, offset, index)
        for name in counts:
            counts[name] += getattr(done.counts, name)
    return rows, counts


def test_copies_on_other_partitions_are_dropped_and_every_event_is_accounted_for() -> None:
    agg = Aggregator(DEFAULT_ROLLUPS)
    rows, counts = _run(_processor(Deduper(86_400_000)), _records(), agg)
    table = pa.concat_tables(rows)
    assert sorted(table.column("event_id").to_pylist()) == sorted(e["event_id"] for e in EVENTS)
    assert set(table.column("_clean_offset").to_pylist()) == {REPLAYED_OFFSET}
    assert set(table.column("_clean_index").to_pylist()) == {0}
    assert counts == {"events": 9, "rows": 6, "duplicates": 2, "letters": 1}
    assert counts["rows"] + counts["duplicates"] + counts["letters"] == counts["events"]
    partitions = {k.partition for k in agg.states()}
    assert partitions == {replay_partition(0), replay_partition(1)}
    assert sum(s.count for k, s in agg.states().items() if k.rollup == DEFAULT_ROLLUPS[0].name) == 6


def test_a_resume_restored_from_the_generation_rows_judges_re_read_copies_as_before() -> None:
    first = Deduper(86_400_000)
    rows, _ = _run(_processor(first), _records()[:1], Aggregator(DEFAULT_ROLLUPS))  # crash after partition 0
    stored = pa.concat_tables(rows)
    resumed = Deduper(86_400_000)
    resumed.restore(DEDUP_PARTITION, ids_from_strings(stored.column("event_id").to_pylist()),
                    raw_position(stored.column("_partition").to_numpy(), stored.column("_offset").to_numpy(),
                                 stored.column("_index").to_numpy()), NOW)
    again, counts = _run(_processor(resumed), _records(), Aggregator(DEFAULT_ROLLUPS))
    new_ids = [i for t in again for i in t.column("event_id").to_pylist()]
    assert sorted(new_ids) == sorted(e["event_id"] for e in EVENTS[4:])  # nothing inserted twice
    assert counts["duplicates"] == 2  # events 2 and 3 of partition 1: copies, as in one run


def test_raw_positions_are_unique_per_partition_offset_and_index() -> None:
    a = raw_position(np.array([0, 1, 0]), np.array([5, 5, 6]), np.array([0, 0, 0]))
    assert len(set(a.tolist())) == 3
