"""The dedup state against "the first copy of each event_id in the partition's log"."""

from __future__ import annotations

import uuid

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tables.dedup import Deduper, event_partition, ids_from_strings, pack_position

HOUR = 3_600_000
NOW = 1_796_116_500_000


def uid(n: int) -> str:
    return str(uuid.UUID(int=n * 0x9E3779B97F4A7C15 % (1 << 128)))


def check(d: Deduper, ids: list[str], offset: int, now: int = NOW, partition: int = 0) -> list[bool]:
    positions = pack_position(offset, np.arange(len(ids)))
    return d.check(partition, ids_from_strings(ids), positions, now).keep.tolist()


def test_a_resent_block_is_dropped_and_a_redelivered_one_is_kept() -> None:
    d = Deduper(HOUR)
    ids = [uid(i) for i in range(5)]
    assert check(d, ids, offset=10) == [True] * 5
    assert check(d, ids, offset=11) == [False] * 5, "a resend is a new message: every row is a duplicate"
    assert check(d, ids, offset=10) == [True] * 5, "the same message again is the same copy"


def test_duplicates_inside_one_block_keep_the_first_row() -> None:
    d = Deduper(HOUR)
    a, b = uid(1), uid(2)
    assert check(d, [a, b, a, a, b], offset=0) == [True, True, False, False, False]
    assert check(d, [a, b, a, a, b], offset=0) == [True, True, False, False, False]


def test_ids_sharing_their_high_half_are_told_apart() -> None:
    d = Deduper(HOUR)
    crafted = [str(uuid.UUID(int=(7 << 64) | n)) for n in range(50)]
    assert check(d, crafted[:25], offset=0) == [True] * 25
    assert check(d, crafted, offset=1) == [False] * 25 + [True] * 25


def test_ids_are_forgotten_after_the_horizon_and_not_before() -> None:
    d = Deduper(HOUR)
    a = uid(1)
    assert check(d, [a], offset=0, now=NOW) == [True]
    assert check(d, [a], offset=1, now=NOW + HOUR) == [False], "still inside the horizon"
    assert check(d, [a], offset=2, now=NOW + HOUR + HOUR // 4 + 1) == [True], "beyond horizon + a slice"
    assert d.entries() == 1


def test_memory_is_bounded_by_the_horizon() -> None:
    d = Deduper(HOUR)
    for minute in range(240):  # four hours of traffic, 1,000 new ids a minute, a message each
        check(d, [uid(minute * 1000 + i) for i in range(1000)], offset=minute, now=NOW + minute * 60_000)
    # at most a horizon plus one slice of ids (60 + 7.5 minutes), at least a horizon
    assert 60_000 <= d.entries() <= 68_000
    assert d.nbytes() == d.entries() * 24


def test_restored_first_copies_are_known_stored_and_their_duplicates_dropped() -> None:
    d = Deduper(HOUR)
    ids = [uid(i) for i in range(4)]
    d.restore(0, ids_from_strings(ids[:2]), pack_position(5, np.arange(2)), NOW)
    verdict = d.check(0, ids_from_strings(ids), pack_position(5, np.arange(4)), NOW)
    assert verdict.keep.tolist() == [True] * 4
    assert verdict.stored.tolist() == [True, True, False, False]
    assert check(d, ids, offset=9) == [False] * 4


def test_partitions_are_independent() -> None:
    d = Deduper(HOUR)
    a = uid(1)
    assert check(d, [a], offset=0, partition=0) == [True]
    assert check(d, [a], offset=0, partition=1) == [True]
    d.drop_partition(0)
    assert not d.has_partition(0) and d.has_partition(1)


def test_event_partition_matches_clickhouse_crc32() -> None:
    # As ClickHouse 26.9 computes CRC32(toString(toUUID(...))) for these two ids.
    assert event_partition("00000000-0000-0000-0000-000000000000", 1 << 32) == 2169625225
    assert event_partition("6f1c1a8e-8f43-4c1e-9a36-3d8f2b0c9e51", 1 << 32) == 3228468644
    counts = np.bincount([event_partition(uid(i), 4) for i in range(4000)], minlength=4)
    assert counts.min() > 850, "ids spread evenly over the partitions"


# A log of one partition: messages (offset, ids); a run delivers a prefix of the log from a
# committed offset, possibly twice, crashing and restoring from what was stored.
@settings(max_examples=300, deadline=None)
@given(st.data())
def test_every_order_of_delivery_keeps_exactly_the_first_copy_of_each_id(data: st.DataObject) -> None:
    n_ids = data.draw(st.integers(1, 12))
    log = [[uid(i) for i in data.draw(st.lists(st.integers(0, n_ids - 1), min_size=1, max_size=6))]
           for _ in range(data.draw(st.integers(1, 12)))]
    first: dict[str, tuple[int, int]] = {}
    for offset, ids in enumerate(log):
        for index, event_id in enumerate(ids):
            first.setdefault(event_id, (offset, index))

    stored: dict[str, tuple[int, int]] = {}  # the events table: first copies inserted
    d = Deduper(HOUR)
    committed = 0
    for _ in range(data.draw(st.integers(1, 4))):
        end = data.draw(st.integers(committed, len(log)))
        for offset in range(committed, end):
            ids = log[offset]
            verdict = d.check(0, ids_from_strings(ids), pack_position(offset, np.arange(len(ids))), NOW)
            for index, (event_id, keep) in enumerate(zip(ids, verdict.keep.tolist(), strict=True)):
                assert keep == (first[event_id] == (offset, index)), (offset, index, event_id)
                if keep:
                    stored[event_id] = (offset, index)
        committed = data.draw(st.integers(committed, end))
        # crash: memory lost, restored from the events table, replay from the commit
        d = Deduper(HOUR)
        if stored:
            ids = list(stored)
            d.restore(0, ids_from_strings(ids),
                      np.array([int(pack_position(*stored[i])) for i in ids], dtype=np.uint64), NOW)
