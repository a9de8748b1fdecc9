"""The aggregate stage as a pure object: Arrow blocks of clean events in, windowed partials out.

No Kafka, no Faust, no clock. The store agent (agents/store.py) wires it: per events.clean
message it calls ``apply(block, partition, offset, index)`` with the rows the dedup stage kept
(``index``: their row numbers in the message); every ~0.5 s it upserts ``dirty()`` into the
rollup tables, then ``mark_flushed()``, ``evict()``, and only then reports the messages done.
When ``apply`` raises `MissingStates`, the states it names are stored but not in memory
(evicted windows that received an event): the agent loads them (``load_stored``) and calls
``apply`` again. `apply` raises ValueError for a malformed block; both exceptions are raised
before anything changes.

State is kept per events.clean partition (`StateKey.partition`) and merged at query time.
events.clean is partitioned by event_id, so each partition is consumed by one worker, in
order, and every copy of an event meets the others there (see tables/dedup.py).

Every rollup is kept per project: the event's ``project_id`` is an implicit leading dimension,
never listed in a spec's ``dimensions``, so a key is (partition, project, rollup, window, dims)
and two projects' events never meet in one partial. Nothing below depends on what the key is
made of, only on each row mapping to one key per rollup, so the argument holds per project.

Exactness under at-least-once delivery
--------------------------------------
A row's position is (events.clean offset, row index in the message) within its partition.
Every key K carries ``applied_through`` = the highest position applied to K, and a row is
applied to K only if its position is above it (then ``applied_through`` becomes that
position). Applying or skipping happens per key, so a row can be skipped for one rollup and
applied for another.

Input assumption: per partition, the rows are delivered as runs of strictly increasing
positions, each run starting at or before the committed offset, never skipping a message
(the offset keeper in agents/offsets.py admits offsets strictly in order from the committed
one). Call that "prefix-closed": whenever a position p is delivered, every position below the
highest one delivered so far has been delivered before. Rows the dedup stage drops are never
given to `apply`, and it drops the same rows on every delivery (its verdict is a function of
the log), so the applied rows are prefix-closed too.

Claim: after any sequence of crashes (in-memory state lost, every key restored from its last
flushed bytes, consumption restarting at any offset at or before the last commit, commit =
offsets consumed before a completed flush), each key holds exactly the distinct rows of its
(project, rollup, window, dims), each applied once. Argument:
1. No double count: a key applies positions in strictly increasing order, so never one twice.
2. No loss without a crash: when row p (of key K) arrives and p <= K.applied_through = q,
   then q was delivered, so by prefix-closedness p was delivered before q and K applied it.
3. Flushed keys are self-consistent: K's bytes hold exactly its rows <= its applied_through
   (by 1-2), whatever other keys were flushed with it: flushes need not be atomic.
4. No loss across a crash: a row of K above K's restored applied_through is not in the restored
   state, so no copy of it was consumed before the last completed flush (K would have been
   dirty then, and flushed with it); every copy came after the commit point, and the replay,
   which starts at or before the commit, delivers it again; being above, it is applied.
5. HLL sketches therefore see the same updates in the same order as a crash-free run, and a
   restored sketch continues exactly (its HIP state is in its bytes): equal estimates. Sums
   are exact integers (micro-units), so block boundaries cannot change them either.
Eviction keeps all this: only flushed states are evicted, and a key that is not in memory is
either known absent (its window is at or above the partition's *resident bound*: every stored
key at or above it is in memory) or loaded from storage before the row is applied.

Lateness bounds memory, not what is counted
-------------------------------------------
Every event is applied to its window, however late. ``allowed_lateness_s`` only says how long
a window stays in memory: a state is evicted once it is flushed, its window ended more than
the allowed lateness before the partition's watermark, and it was not touched since the
previous `evict` call. The watermark is the largest ``received_at`` seen on the partition: the
receive time Rearview stamps, so no producer's clock can move it. Evicting a window raises the
partition's resident bound for that rollup past it; an event for a window below the bound
whose state is not in memory makes `apply` ask for it (`MissingStates`), so an all-late import
costs one batched load per block of windows, never a lost event. ``late`` in `PartialState` is
kept for the format and is always 0. The watermark and the resident bounds are per partition
(and rollup), shared by the projects whose events the partition holds: they only decide what
stays in memory, so sharing them cannot change what is counted.
`tests/unit/test_aggregate.py` checks all this with hypothesis (replays, crashes, partial
flushes, evictions and loads, events of several projects mixed) against applying each
distinct event exactly once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np
import pyarrow as pa

from tables import hll
from tables.columns import Properties, encode, int64
from tables.rollups import RollupSpec, check_unique_names
from tables.state import NO_WATERMARK, PartialState, StateKey

Loader = Callable[[StateKey], "bytes | None"]

_CODE_LIMIT = 1 << 62
NO_BOUND = -(2**63)


class MissingStates(Exception):
    """`apply` needs these stored states in memory first: load them, then apply again."""

    def __init__(self, keys: list[StateKey]) -> None:
        super().__init__(f"{len(keys)} evicted rollup states must be loaded first")
        self.keys = keys


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one `apply` did, counted per (row, rollup): applied + skipped = rows * rollups."""

    rows: int = 0
    applied: int = 0
    skipped: int = 0  # redelivered: at or below the key's applied_through
    loaded: int = 0  # states brought back into memory by the load callback


class _Block:
    """The columns of one block that the rollups need, as numpy."""

    def __init__(self, block: pa.Table, prop_keys: Sequence[str], sum_keys: Sequence[str],
                 users: bool) -> None:
        self.n = block.num_rows
        self.ts = int64(block.column("ts"), "ts")
        self.received = int64(block.column("received_at"), "received_at")
        name = block.column("event_name").combine_chunks()
        if name.null_count:
            raise ValueError(f"clean block has {name.null_count} null event_name values")
        # A null project groups as "", as the events table stores it (its column is not Nullable).
        self.project = encode(block.column("project_id").combine_chunks())
        self.dims: dict[str, tuple[np.ndarray, list[str]]] = {"event_name": encode(name)}
        props = Properties(block.column("properties")) if prop_keys or sum_keys else None
        for key in prop_keys:
            assert props is not None
            self.dims[key] = props.dimension(key)
        self.numbers = {key: props.number(key) for key in sum_keys} if props else {}
        self.users: list[str] | None = None
        if users:
            column = block.column("user_id")
            if column.null_count:
                raise ValueError(f"clean block has {column.null_count} null user_id values")
            self.users = column.to_pylist()


@dataclass(slots=True)
class _Groups:
    """One rollup's view of a block: rows sorted by (window, project, dims), one key per group."""

    spec: RollupSpec
    order: np.ndarray
    starts: list[int]
    ends: list[int]
    keys: list[StateKey]


class Aggregator:
    """Windowed partial aggregates for *specs*, per partition; see the module docstring.

    *load*, if given, is called for a state that must be brought back into memory (tests and
    benchmarks); without it `apply` raises `MissingStates` and the caller loads them.
    """

    def __init__(self, specs: Iterable[RollupSpec], load: Loader | None = None) -> None:
        self.specs: tuple[RollupSpec, ...] = tuple(specs)
        check_unique_names(self.specs)
        self._by_name = {s.name: s for s in self.specs}
        self._prop_keys = sorted({k for s in self.specs for k in s.property_keys})
        self._sum_keys = sorted({k for s in self.specs for k in s.sums})
        self._users = any(s.uniques for s in self.specs)
        self._load = load
        self._states: dict[StateKey, PartialState] = {}
        self._watermarks: dict[int, int] = {}
        self._resident: dict[tuple[int, str], int] = {}  # (partition, rollup) -> resident bound
        self._dirty: dict[StateKey, int] = {}  # key -> generation of its last change
        self._touched: set[StateKey] = set()  # changed since the last `evict`
        self._generation = 0
        self._snapshot = 0

    # ----------------------------------------------------------------------------- applying

    def apply(self, block: pa.Table, partition: int, offset: int,
              index: np.ndarray | Sequence[int] | None = None) -> ApplyResult:
        """Apply the rows of the events.clean message at (*partition*, *offset*).

        *index* gives each row's number in the message (strictly increasing; default 0..n-1):
        with the offset, the row's position. ValueError on a malformed block, `MissingStates`
        when evicted states must be loaded first; nothing changes in either case.
        """
        if block.num_rows == 0:
            return ApplyResult()
        idx = np.arange(block.num_rows, dtype=np.int64) if index is None else np.asarray(index, dtype=np.int64)
        if len(idx) != block.num_rows:
            raise ValueError(f"{len(idx)} row numbers for a block of {block.num_rows} rows")
        if len(idx) > 1 and not (idx[1:] > idx[:-1]).all():
            raise ValueError("row numbers must be strictly increasing")
        cols = _Block(block, self._prop_keys, self._sum_keys, self._users)
        groups = [self._groups(spec, partition, cols) for spec in self.specs]
        loaded = self._ensure_resident(partition, groups)
        self._generation += 1
        watermark = max(self._watermarks.get(partition, NO_WATERMARK), int(cols.received.max()))
        self._watermarks[partition] = watermark
        totals = [0, 0]
        for g in groups:
            self._apply_groups(g, offset, idx, cols, watermark, totals)
        return ApplyResult(block.num_rows, totals[0], totals[1], loaded)

    def _groups(self, spec: RollupSpec, partition: int, cols: _Block) -> _Groups:
        g = spec.granularity_ms
        window = cols.ts - cols.ts % g
        columns = [cols.dims[d] for d in spec.dimensions]
        project_codes, projects = cols.project
        order, bounds = _group(window, g, [project_codes, *(codes for codes, _ in columns)])
        starts, ends = bounds[:-1], bounds[1:]
        firsts = order[starts]
        group_projects = [projects[c] for c in project_codes[firsts].tolist()]
        dim_values = [[values[c] for c in codes[firsts].tolist()] for codes, values in columns]
        keys = [StateKey(partition, project, spec.name, w, d)
                for project, w, d in zip(group_projects, window[firsts].tolist(),
                                         zip(*dim_values, strict=True), strict=True)]
        return _Groups(spec, order, starts.tolist(), ends.tolist(), keys)

    def _ensure_resident(self, partition: int, groups: list[_Groups]) -> int:
        """Bring back evicted states the block touches, or raise MissingStates naming them."""
        missing = []
        states = self._states
        for g in groups:
            bound = self._resident.get((partition, g.spec.name), NO_BOUND)
            for key in g.keys:
                if key not in states and key.window_start_ms < bound:
                    missing.append(key)
        if not missing:
            return 0
        if self._load is None:
            raise MissingStates(missing)
        for key in missing:
            self.load_stored(key, self._load(key))
        return len(missing)

    def _apply_groups(self, groups: _Groups, offset: int, idx: np.ndarray, cols: _Block,
                      watermark: int, totals: list[int]) -> None:
        """Apply one block to one rollup. Rows are sorted by group (stable: increasing position
        inside a group), so a group is a slice [s, e) of that order; rows already applied form
        a prefix of it, located with numpy in the rare groups that have any."""
        spec, order = groups.spec, groups.order
        sums = []
        for sum_name in spec.sums:
            micros, errors = cols.numbers[sum_name]
            sums.append((sum_name, list(accumulate(micros[order].tolist(), initial=0)),
                         list(accumulate(errors[order].tolist(), initial=0))))
        users_g = None
        if spec.uniques and cols.users is not None:
            users = cols.users
            users_g = [users[r] for r in order.tolist()]
        idx_sorted = idx[order]
        states, dirty, touched, gen = self._states, self._dirty, self._touched, self._generation
        applied = skipped = 0
        for key, s, e in zip(groups.keys, groups.starts, groups.ends, strict=True):
            state = states.get(key)
            if state is None:
                state = self._new_state(spec)
                states[key] = state
            t_offset, t_index = state.applied_through
            first, last = int(idx_sorted[s]), int(idx_sorted[e - 1])
            if (offset, last) <= (t_offset, t_index):
                skipped += e - s
                continue
            k0 = s
            if (offset, first) <= (t_offset, t_index):  # a redelivered prefix of this message
                k0 = s + int(np.searchsorted(idx_sorted[s:e], t_index, side="right"))
            skipped += k0 - s
            applied += e - k0
            state.count += e - k0
            state.applied_through = (offset, last)
            state.watermark_ms = max(state.watermark_ms, watermark)
            if users_g is not None and state.sketch is not None:
                deque(map(state.sketch.update, users_g[k0:e]), maxlen=0)
            for sum_key, micros_cs, errors_cs in sums:
                state.sum_micros[sum_key] = state.sum_micros.get(sum_key, 0) + micros_cs[e] - micros_cs[k0]
                state.sum_errors += errors_cs[e] - errors_cs[k0]
            dirty[key] = gen
            touched.add(key)
        totals[0] += applied
        totals[1] += skipped

    @staticmethod
    def _new_state(spec: RollupSpec) -> PartialState:
        return PartialState(sketch=hll.new(spec.lg_k) if spec.uniques else None,
                            sum_micros={k: 0 for k in spec.sums})

    # ------------------------------------------------------------------ flushing, recovery

    def dirty(self) -> dict[StateKey, PartialState]:
        """The live states changed since the last `mark_flushed` (serialize them before the
        next `apply`: they are the live objects)."""
        self._snapshot = self._generation
        states = self._states
        return {key: states[key] for key in self._dirty}

    def mark_flushed(self) -> None:
        """Everything returned by the last `dirty()` is durable. Keys changed by an `apply`
        after that `dirty()` call stay dirty."""
        snapshot = self._snapshot
        self._dirty = {k: g for k, g in self._dirty.items() if g > snapshot}

    def restore(self, partition: int, stored: Iterable[tuple[StateKey, bytes]],
                resident_since: dict[str, int]) -> int:
        """Begin *partition* (assigned after a crash or a rebalance) from its stored states.

        *stored* holds, per rollup, every stored state whose window starts at or after
        ``resident_since[rollup]`` (a rollup missing from the dict has nothing stored); older
        states are loaded on demand. Returns the number of states loaded. States of rollups no
        longer defined are ignored; ValueError on bytes that are not a state.
        """
        self.drop_partition(partition)
        for spec in self.specs:
            self._resident[(partition, spec.name)] = resident_since.get(spec.name, NO_BOUND)
        n = 0
        for key, data in stored:
            if key.partition != partition:
                raise ValueError(f"state {key.to_str()!r} is not of partition {partition}")
            n += self.load_stored(key, data)
        return n

    def load_stored(self, key: StateKey, data: bytes | None) -> bool:
        """Put one stored state in memory (*data* None: nothing is stored for it). False if its
        rollup is no longer defined."""
        if key.rollup not in self._by_name:
            return False
        state = self._new_state(self._by_name[key.rollup]) if data is None else PartialState.from_bytes(data)
        self._states[key] = state
        self._dirty.pop(key, None)
        self._touched.add(key)  # just needed: not evicted before the next pass
        if state.watermark_ms > self._watermarks.get(key.partition, NO_WATERMARK):
            self._watermarks[key.partition] = state.watermark_ms
        return True

    def drop_partition(self, partition: int) -> int:
        """Forget a revoked partition: its states (flushed or not), dirty marks and watermark.
        Its next owner restores from storage and replays from the committed offset."""
        gone = [k for k in self._states if k.partition == partition]
        for key in gone:
            del self._states[key]
            self._dirty.pop(key, None)
            self._touched.discard(key)
        self._watermarks.pop(partition, None)
        for rp in [rp for rp in self._resident if rp[0] == partition]:
            del self._resident[rp]
        return len(gone)

    def evict(self) -> int:
        """Drop from memory the flushed states of closed windows not touched since the last
        call; raise their partition's resident bound past them. Returns how many went."""
        watermarks, touched = self._watermarks, self._touched
        gone = []
        for key in self._states:
            if key in self._dirty or key in touched:
                continue
            spec = self._by_name[key.rollup]
            if key.window_start_ms + spec.granularity_ms + spec.allowed_lateness_ms < watermarks.get(
                    key.partition, NO_WATERMARK):
                gone.append(key)
        for key in gone:
            del self._states[key]
            spec = self._by_name[key.rollup]
            rp = (key.partition, key.rollup)
            self._resident[rp] = max(self._resident.get(rp, NO_BOUND),
                                     key.window_start_ms + spec.granularity_ms)
        touched.clear()
        return len(gone)

    def partition_watermarks(self) -> dict[int, int]:
        """Receive-time watermark (epoch ms) of each partition seen or restored."""
        return dict(self._watermarks)

    def states(self) -> dict[StateKey, PartialState]:
        """Every state in memory (live objects; read-only for callers)."""
        return self._states

    def get(self, key: StateKey) -> PartialState | None:
        return self._states.get(key)


def _group(window: np.ndarray, granularity_ms: int,
           dims: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): rows sorted by (window, *dims* codes) keeping row order inside a group,
    and the group boundaries in that order (bounds[0] == 0, bounds[-1] == number of rows)."""
    code = (window - window.min()) // granularity_ms
    cardinality = int(code.max()) + 1
    for codes in dims:
        width = int(codes.max()) + 1
        if cardinality * width >= _CODE_LIMIT:
            uniques, code = np.unique(code, return_inverse=True)
            cardinality = len(uniques)
        code = code * width + codes
        cardinality *= width
    order = np.argsort(code, kind="stable")
    ordered = code[order]
    bounds = np.flatnonzero(ordered[1:] != ordered[:-1]) + 1
    return order, np.concatenate(([0], bounds, [len(code)]))
