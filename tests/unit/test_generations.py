"""Pure parts of the replay hand-over: the replayed position in the dedup state, replay-space
partition numbers, and which tables a generation target covers."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from tables import generations, rollup_tables
from tables.dedup import INDEX_BITS, REPLAYED_OFFSET, Deduper, ids_from_strings, pack_position
from tables.generations import GenerationError, rollup_target
from tables.rollups import DEFAULT_ROLLUPS
from tables.state import REPLAY_PARTITION_BASE, PartialState, replay_partition

NOW = 1_796_116_500_000
HOUR = 3_600_000


def test_the_replayed_offset_packs_into_a_dedup_position_and_a_rollup_version() -> None:
    packed = int(pack_position(REPLAYED_OFFSET, 0))
    assert packed >> INDEX_BITS == REPLAYED_OFFSET and packed < 2**63  # under the stored flag
    top = rollup_tables.version(PartialState(applied_through=(REPLAYED_OFFSET, 2**rollup_tables.INDEX_BITS - 1)))
    assert top == 2**63 - 1  # the largest non-negative Int64: the largest offset that fits both


def test_a_live_copy_of_a_replayed_event_is_a_duplicate() -> None:
    """After a swap the store restores first copies at the replayed position: any copy read
    from events.clean is at another position, so it is neither inserted nor applied."""
    ids = [str(uuid.UUID(int=i + 1)) for i in range(4)]
    d = Deduper(HOUR)
    d.restore(2, ids_from_strings(ids[:3]), pack_position(REPLAYED_OFFSET, np.zeros(3, dtype=np.uint64)), NOW)
    verdict = d.check(2, ids_from_strings(ids), pack_position(17, np.arange(4)), NOW)
    assert verdict.keep.tolist() == [False, False, False, True]
    assert verdict.stored.tolist() == [False] * 4
    assert verdict.duplicates == 3
    # The replayed copy and a live copy of the same event, both stored (an event stored twice
    # beyond the horizon): the live one, earlier, is the first copy, and its redelivery is kept.
    d.restore(3, ids_from_strings([ids[0], ids[0]]),
              np.array([int(pack_position(REPLAYED_OFFSET, 0)), int(pack_position(5, 1))], dtype=np.uint64), NOW)
    again = d.check(3, ids_from_strings([ids[0]]), pack_position(5, np.array([1])), NOW)
    assert again.keep.tolist() == [True] and again.stored.tolist() == [True]


def test_replay_partitions_are_out_of_any_live_partition_range() -> None:
    assert replay_partition(0) == REPLAY_PARTITION_BASE
    assert replay_partition(7) == REPLAY_PARTITION_BASE + 7 < 2**32  # the rollup column is UInt32
    with pytest.raises(ValueError):
        replay_partition(-1)


def test_targets_name_their_tables() -> None:
    rollups = list(DEFAULT_ROLLUPS)
    names = [rollup_tables.table_name(s) for s in rollups]
    assert [t for t, _ in generations._tables_of(rollups, ["events"])] == ["events", *names]
    one = rollups[1]
    assert generations._tables_of(rollups, [rollup_target(one.name), "events"])[0] == (names[1], one)
    assert generations.generation_table("events", 12) == "events__gen12"
    with pytest.raises(GenerationError, match="unknown target 'rollups'"):
        generations._tables_of(rollups, ["rollups"])
    with pytest.raises(GenerationError, match="at least one target"):
        generations._tables_of(rollups, [])
