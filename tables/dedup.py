"""The dedup stage's state: the first copy of every event_id, per partition, over a horizon.

Pure: numpy arrays in, verdicts out; no Kafka, no ClickHouse, no clock it does not receive.

Why here, and why per partition
-------------------------------
A client that lost its 202 resends the batch; an SDK retries; a service sends the same event
over HTTP and straight to Kafka. Each copy is a new message, on any raw partition, so the
offset-based exactness of the later stages cannot see it. The validate stage therefore writes
every clean event to the events.clean partition chosen by its event_id
(`event_partition`): every copy of an event meets the others in one partition, and one
consumer, reading that partition in order, decides which copy is the first. The dedup state
of a partition is then the set of event_ids it has seen, each with the position of its first
copy: (events.clean offset, row index in the block), packed by `pack_position`.

The verdict for a row at position p with event_id e:
- e not seen (within the horizon): the first copy. Keep it, remember (e, p).
- e seen first at p: the same copy again (a redelivery after a crash or a rebalance). Keep it:
  the later stages are idempotent by position (the rollups by ``applied_through``), and
  ``stored`` says whether the events table already holds it (known after a restore), so the
  sink need not insert it twice.
- e seen first at another position: a duplicate. Drop it (counted by the caller).
Within one call rows are taken in order, so a duplicate inside the same block is dropped too.

This is a function of the partition's log alone, so any reader that replays the log from any
committed offset with the state restored (`restore`) decides exactly as a crash-free run did.

Bounded memory
--------------
Ids are kept for ``horizon_ms`` of processing time (the *now_ms* the caller passes), in time
slices of horizon/`SLICES`: a slice is dropped once it ended more than a horizon ago, so an id
is remembered for at least the horizon and at most a horizon plus a slice. A slice holds
sorted numpy segments (hi, lo: the UUID's two 64-bit halves; position), merged like a binary
counter while the slice fills and into one when it closes, so that a lookup searches one
segment per closed slice and O(log n) in the current one. An entry costs 24 bytes: at
11.6k events/s (a billion a day), a 1-hour horizon holds 41.8M ids, ~1.0 GB over all workers;
24 hours would be ~24 GB. Beyond the horizon, the store agent looks copies of old events up in
the events table (agents/store.py), and ReplacingMergeTree with FINAL is the last safety net.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

SLICES = 8
INDEX_BITS = 20  # rows of one events.clean block: at most 2^20 (blocks hold <= 2,000)
_STORED = np.uint64(1 << 63)
_POSITION = np.uint64((1 << 63) - 1)
_NONE = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
ENTRY_BYTES = 24
# The events.clean offset of every row a replay writes into an events generation (with
# ``_clean_index`` 0): no events.clean message ever has it (2^39 offsets is 17 years at a
# million messages a second), so a live copy of a replayed event always finds its first copy
# "at another position" and is a duplicate. 2^39 - 1 is the largest offset whose position
# packs both here (INDEX_BITS: 59 bits, under the stored flag) and into a rollup version
# (tables/rollup_tables.py, 24 index bits: 63 bits, a non-negative Int64 as well as a UInt64).
REPLAYED_OFFSET = 2**39 - 1


def event_partition(event_id: str, partitions: int) -> int:
    """The events.clean partition of an event: CRC-32 of its canonical UUID text, mod the count.

    ClickHouse computes the same: ``CRC32(toString(event_id)) % partitions``.
    """
    return zlib.crc32(event_id.encode()) % partitions


def pack_position(offset: int | np.ndarray, index: int | np.ndarray) -> np.ndarray:
    """(offset, index) as one uint64 that orders like the pair."""
    return (np.asarray(offset, dtype=np.uint64) << np.uint64(INDEX_BITS)) | np.asarray(index, dtype=np.uint64)


def ids_from_strings(ids: Sequence[str]) -> np.ndarray:
    """Canonical UUID strings as an (n, 2) uint64 array (high and low halves)."""
    if not ids:
        return np.empty((0, 2), dtype=np.uint64)
    hexes = "".join(ids).replace("-", "")
    if len(hexes) != 32 * len(ids):
        raise ValueError("event ids must be canonical UUID strings")
    return np.frombuffer(bytes.fromhex(hexes), dtype=">u8").reshape(-1, 2).astype(np.uint64)


@dataclass(slots=True)
class _Segment:
    hi: np.ndarray  # sorted (ids with equal high halves, only crafted ones, in any order)
    lo: np.ndarray
    pos: np.ndarray  # packed position | _STORED

    @classmethod
    def build(cls, hi: np.ndarray, lo: np.ndarray, pos: np.ndarray) -> _Segment:
        # Stable sort: two sorted runs (a merge) are merged in linear time (timsort).
        order = np.argsort(hi, kind="stable")
        return cls(hi[order], lo[order], pos[order])

    def __len__(self) -> int:
        return len(self.hi)

    def lookup(self, hi: np.ndarray, lo: np.ndarray, found: np.ndarray) -> None:
        """Write into *found* the position of every query id present here (others untouched).

        Queries sorted by *hi* make numpy's binary searches start where the previous one ended
        (several times faster on large segments)."""
        n = len(self.hi)
        if n == 0 or len(hi) == 0:
            return
        i = np.searchsorted(self.hi, hi)
        # Equal high halves (only crafted ids share them) form a run: walk it.
        pending = np.ones(len(hi), dtype=bool)
        while True:
            inside = pending & (i < n)
            ic = np.minimum(i, n - 1)
            same_hi = inside & (self.hi[ic] == hi)
            hit = same_hi & (self.lo[ic] == lo)
            found[hit] = self.pos[ic[hit]]
            pending = same_hi & ~hit
            if not pending.any():
                return
            i = i + 1


def _merged(a: _Segment, b: _Segment) -> _Segment:
    return _Segment.build(np.concatenate((a.hi, b.hi)), np.concatenate((a.lo, b.lo)),
                          np.concatenate((a.pos, b.pos)))


@dataclass(slots=True)
class _Partition:
    slices: dict[int, list[_Segment]] = field(default_factory=dict)

    def entries(self) -> int:
        return sum(len(s) for segs in self.slices.values() for s in segs)

    def add(self, slice_no: int, segment: _Segment) -> None:
        segs = self.slices.setdefault(slice_no, [])
        segs.append(segment)
        while len(segs) >= 2 and len(segs[-2]) <= 2 * len(segs[-1]):
            last = segs.pop()
            segs[-1] = _merged(segs[-1], last)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with each row of one `check`."""

    keep: np.ndarray  # bool: the first copy of its event (new, or the same copy again)
    stored: np.ndarray  # bool: kept, and already in the events table (restored state)

    @property
    def duplicates(self) -> int:
        return int(len(self.keep) - np.count_nonzero(self.keep))


class Deduper:
    """First copies of event_ids per partition over a horizon; see the module docstring."""

    def __init__(self, horizon_ms: int) -> None:
        if horizon_ms <= 0:
            raise ValueError("the dedup horizon must be positive")
        self.horizon_ms = horizon_ms
        self.slice_ms = max(1, -(-horizon_ms // SLICES))
        self._partitions: dict[int, _Partition] = {}

    def check(self, partition: int, ids: np.ndarray, positions: np.ndarray, now_ms: int) -> Verdict:
        """Judge the rows of one block (in position order) and remember the new first copies."""
        part = self._partition(partition, now_ms)
        n = len(ids)
        if n == 0:
            empty = np.zeros(0, dtype=bool)
            return Verdict(empty, empty)
        positions = np.asarray(positions, dtype=np.uint64)
        hi, lo = ids[:, 0], ids[:, 1]
        order = np.lexsort((np.arange(n), lo, hi))  # by id, then row
        sh, sl = hi[order], lo[order]
        found_sorted = np.full(n, _NONE, dtype=np.uint64)
        for segs in part.slices.values():
            for seg in segs:
                seg.lookup(sh, sl, found_sorted)
        found = np.empty(n, dtype=np.uint64)
        found[order] = found_sorted
        new = found == _NONE
        # Inside the block: the first row of each unseen id is its first copy; a later row of
        # the same id is a duplicate unless it is the very same position.
        starts = np.ones(n, dtype=bool)
        starts[1:] = (sh[1:] != sh[:-1]) | (sl[1:] != sl[:-1])
        group = np.cumsum(starts) - 1
        first_row = order[np.flatnonzero(starts)][group]  # per sorted row, its group's first row
        first_of = np.empty(n, dtype=np.int64)
        first_of[order] = first_row
        is_first = first_of == np.arange(n)
        known = found & _POSITION
        keep = np.where(new, is_first | (positions == positions[first_of]), known == positions)
        stored = ~new & keep & ((found & _STORED) != 0)
        add = new & is_first
        if add.any():
            part.add(now_ms // self.slice_ms, _Segment.build(hi[add], lo[add], positions[add]))
        return Verdict(keep, stored)

    def restore(self, partition: int, ids: np.ndarray, positions: np.ndarray, now_ms: int) -> None:
        """Load first copies already stored in the events table (after a crash or a rebalance).

        They are filed under the current slice, so they are kept for a full horizon more.
        """
        if len(ids) == 0:
            self._partition(partition, now_ms)
            return
        pos = np.asarray(positions, dtype=np.uint64)
        order = np.lexsort((pos, ids[:, 1], ids[:, 0]))
        hi, lo, pos = ids[order, 0], ids[order, 1], pos[order]
        first = np.ones(len(hi), dtype=bool)  # an id stored twice (beyond a horizon): earliest
        first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        segment = _Segment(hi[first], lo[first], pos[first] | _STORED)
        self._partition(partition, now_ms).add(now_ms // self.slice_ms, segment)

    def drop_partition(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def has_partition(self, partition: int) -> bool:
        return partition in self._partitions

    def entries(self) -> int:
        return sum(p.entries() for p in self._partitions.values())

    def nbytes(self) -> int:
        return self.entries() * ENTRY_BYTES

    def _partition(self, partition: int, now_ms: int) -> _Partition:
        part = self._partitions.get(partition)
        if part is None:
            part = self._partitions[partition] = _Partition()
        oldest = (now_ms - self.horizon_ms) // self.slice_ms  # slices ending before it are gone
        current = now_ms // self.slice_ms
        for slice_no in list(part.slices):
            segs = part.slices[slice_no]
            if slice_no < oldest:
                del part.slices[slice_no]
            elif slice_no < current and len(segs) > 1:  # closed: one segment, one search
                part.slices[slice_no] = [_Segment.build(np.concatenate([g.hi for g in segs]),
                                                        np.concatenate([g.lo for g in segs]),
                                                        np.concatenate([g.pos for g in segs]))]
        return part
