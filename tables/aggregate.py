"""The aggregate stage as a pure object: Arrow blocks of clean events in, windowed partials out.

No Kafka, no Faust, no clock. The agent that wires it (lead's code) does, per take:
``result = agg.apply(block)`` for each events.clean block; on a ~1 s timer
``for key, state in agg.dirty().items(): table[key.to_str()] = state.to_bytes()``, upserts the
same rows into ClickHouse, waits until both are durable, then ``agg.mark_flushed()`` and acks
the events consumed before the ``dirty()`` call. On partition assignment, after the table
recovered, ``agg.restore(StateKey.parse(k), v)`` for EVERY stored key of the partition before
its first block (the partition watermark is rebuilt from them); on revoke, ``drop_partition``.
Write each key to the changelog partition ``key.partition`` (the source partition), so that
recovering a partition brings back exactly its keys. `apply` raises ValueError for a malformed
block before changing anything; if it raises later (only a `load` callback can), treat it as
a crash of that partition: `drop_partition`, restore, replay from the committed offset.

State is kept per source partition (`StateKey.partition` is the ``_partition`` column) and
merged at query time, so one partition's redelivery never touches another's state.

Exactness under at-least-once delivery
--------------------------------------
A row's position is (``_offset``, ``_index``) within its ``_partition``. Every key K carries
``applied_through`` = the highest position applied to K, and a row is applied to K only if its
position is above it (then ``applied_through`` becomes that position). Applying or skipping
happens per key, so a row can be skipped for one rollup and applied for another.

Input assumption (what Kafka and the validate stage give): per source partition, events.clean
is a sequence of runs of strictly increasing positions; a run may restart lower (validate
re-produced after its own redelivery), but never skips: whenever a position p is delivered,
every clean row below the highest position delivered so far has been delivered before.
Call that "prefix-closed"; events.clean has it because validate produces in raw order and
restarts only from its committed raw offset. (What would break it: a producer reordering
records of one partition on retries, or a zombie validate worker still producing for a
partition that has already moved to another worker.)

Claim: after any sequence of crashes (in-memory state lost, every key restored from its last
flushed bytes, consumption restarting at any events.clean offset at or before the last commit,
commit = offsets consumed before a completed flush), each key holds exactly the distinct rows
of its (rollup, window, dims), each applied once, in increasing position order. Argument:
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
`tests/unit/test_aggregate.py` checks this with hypothesis (replays, duplicate runs, crashes,
partial flushes, interleaved partitions) against applying each distinct event exactly once.

Lateness, and what holds after a crash
--------------------------------------
The partition watermark is the running max of ``min(ts, received_at)`` over the partition's
rows in delivery order (skipped redeliveries included: they add nothing new). A row is late for
a rollup when ``window_start + granularity + allowed_lateness < watermark`` just after it; late
rows are not applied but increment ``late`` on their key, under the same ``applied_through``
rule (so ``late`` is exact too). Each key stores the watermark after its last row; `restore`
sets the partition watermark to the max over its restored keys.
- Always: every distinct event lands exactly once, in ``count`` or in ``late`` of its key.
- Without a crash, and across crashes whose last flush completed (every dirty key durable, the
  normal case since the commit waits for it), the count/late split is the same as in a
  crash-free run: a row is judged against the watermark of exactly the rows below it.
- If a crash interrupts a flush half-written, restored keys may carry a watermark from rows
  that unflushed keys must re-apply; those rows may then be judged late where a crash-free run
  applied them (never the reverse). They stay visible in ``late``.
- Keys must all be restored before a partition's first block: a key missing from memory but
  present in the table would restart from zero. With `evict_closed`, a `load` callback fetches
  evicted keys back on a miss.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

import numpy as np
import pyarrow as pa

from tables import hll
from tables.columns import Properties, encode, int64
from tables.rollups import RollupSpec, check_unique_names
from tables.state import NO_WATERMARK, PartialState, StateKey

Loader = Callable[[StateKey], "bytes | None"]

_CODE_LIMIT = 1 << 62


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What one `apply` did, counted per (row, rollup): applied + skipped + late = rows * rollups."""

    rows: int = 0
    applied: int = 0
    skipped: int = 0  # redelivered: at or below the key's applied_through
    late: int = 0  # beyond allowed lateness: counted in the key's `late`, not applied


class _Block:
    """The columns of one block (or one partition of it) that the rollups need, as numpy."""

    def __init__(self, block: pa.Table, prop_keys: Sequence[str], sum_keys: Sequence[str],
                 users: bool) -> None:
        self.n = block.num_rows
        self.partition = int64(block.column("_partition"), "_partition")
        self.offset = int64(block.column("_offset"), "_offset")
        self.index = int64(block.column("_index"), "_index")
        self.ts = int64(block.column("ts"), "ts")
        received = int64(block.column("received_at"), "received_at")
        # An event's clock may run ahead of the collector's: clamp it for the watermark.
        self.event_time = np.minimum(self.ts, received)
        name = block.column("event_name").combine_chunks()
        if name.null_count:
            raise ValueError(f"clean block has {name.null_count} null event_name values")
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


class Aggregator:
    """Windowed partial aggregates for *specs*, per source partition; see the module docstring."""

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
        self._dirty: dict[StateKey, int] = {}  # key -> generation of its last change
        self._generation = 0
        self._snapshot = 0

    # ----------------------------------------------------------------------------- applying

    def apply(self, block: pa.Table) -> ApplyResult:
        """Apply one block of clean events (EVENTS_ARROW_SCHEMA); ValueError on a malformed one.

        Rows of several partitions may be mixed; each partition's rows are taken in block order.
        """
        if block.num_rows == 0:
            return ApplyResult()
        self._generation += 1
        cols = _Block(block, self._prop_keys, self._sum_keys, self._users)
        totals = [0, 0, 0]
        partitions = np.unique(cols.partition)
        for partition in partitions.tolist():
            rows = None if len(partitions) == 1 else np.flatnonzero(cols.partition == partition)
            self._apply_partition(cols, int(partition), rows, totals)
        return ApplyResult(block.num_rows, *totals)

    def _apply_partition(self, cols: _Block, partition: int, rows: np.ndarray | None,
                         totals: list[int]) -> None:
        def take(a: np.ndarray) -> np.ndarray:
            return a if rows is None else a[rows]

        offset, index = take(cols.offset), take(cols.index)
        ts = take(cols.ts)
        watermark = np.maximum.accumulate(take(cols.event_time))
        previous = self._watermarks.get(partition, NO_WATERMARK)
        np.maximum(watermark, previous, out=watermark)
        self._watermarks[partition] = int(watermark[-1])
        # Split into runs of strictly increasing position (a replay inside the block starts a
        # new run); within a run, each key's already-applied rows form a prefix of its rows.
        down = (offset[1:] < offset[:-1]) | ((offset[1:] == offset[:-1]) & (index[1:] <= index[:-1]))
        bounds = [0, *(np.flatnonzero(down) + 1).tolist(), len(offset)]
        users = cols.users
        for lo, hi in pairwise(bounds):
            run = slice(lo, hi)
            run_users = None
            if users is not None:
                run_users = users[lo:hi] if rows is None else [users[i] for i in rows[run].tolist()]
            ctx = _Run(offset[run], index[run], watermark[run], run_users)
            for spec in self.specs:
                self._apply_run(spec, partition, cols, rows, run, ts[run], ctx, totals)

    def _apply_run(self, spec: RollupSpec, partition: int, cols: _Block, rows: np.ndarray | None,
                   run: slice, ts: np.ndarray, ctx: _Run, totals: list[int]) -> None:
        """Apply one run (rows of one partition, strictly increasing positions) to one rollup.

        Rows are sorted by group (stable: increasing position inside a group), so a group is a
        slice [s, e) of that order. Per group, only its first and last rows are looked at in
        Python; rows already applied (a prefix) or late (a suffix: the watermark only grows)
        are located with numpy in the rare groups that have any.
        """
        g = spec.granularity_ms
        window = ts - ts % g
        columns = [cols.dims[d] for d in spec.dimensions]
        dim_codes = [(c[0] if rows is None else c[0][rows])[run] for c in columns]
        order, bounds = _group(window, g, dim_codes)
        starts, ends = bounds[:-1], bounds[1:]
        firsts, lasts = order[starts], order[ends - 1]
        dim_values = [[values[c] for c in codes[firsts].tolist()]
                      for (_, values), codes in zip(columns, dim_codes, strict=True)]
        keys = [StateKey(partition, spec.name, w, d)
                for w, d in zip(window[firsts].tolist(), zip(*dim_values, strict=True), strict=True)]
        offset, index, watermark = ctx.offset, ctx.index, ctx.watermark
        first_pos = list(zip(offset[firsts].tolist(), index[firsts].tolist(), strict=True))
        last_pos = list(zip(offset[lasts].tolist(), index[lasts].tolist(), strict=True))
        last_wm = watermark[lasts].tolist()
        users_g = None
        if spec.uniques and ctx.users is not None:
            users_l = ctx.users
            users_g = [users_l[r] for r in order.tolist()]
        close = g + spec.allowed_lateness_ms
        sums = []
        for key in spec.sums:
            micros, errors = cols.numbers[key]
            if rows is not None:
                micros, errors = micros[rows], errors[rows]
            sums.append((key, list(accumulate(micros[run][order].tolist(), initial=0)),
                         list(accumulate(errors[run][order].tolist(), initial=0))))
        states, dirty, gen = self._states, self._dirty, self._generation
        applied = skipped = late = 0
        for key, s, e, first, last, wm in zip(keys, starts.tolist(), ends.tolist(), first_pos,
                                              last_pos, last_wm, strict=True):
            state = states.get(key)
            if state is None:
                state = self._new_state(key, spec)
            through = state.applied_through
            if last <= through:
                skipped += e - s
                continue
            k0 = s
            if first <= through:  # a redelivered prefix: skip rows at or below `through`
                rows_g = order[s:e]
                o, i = through
                above = (offset[rows_g] > o) | ((offset[rows_g] == o) & (index[rows_g] > i))
                k0 = s + int(np.argmax(above))
            limit = key.window_start_ms + close
            k1 = e
            if wm > limit:  # a late suffix: the watermark passed the window's close
                k1 = k0 + int(np.searchsorted(watermark[order[k0:e]], limit, side="right"))
            skipped += k0 - s
            applied += k1 - k0
            late += e - k1
            state.count += k1 - k0
            state.late += e - k1
            state.applied_through = last
            if wm > state.watermark_ms:
                state.watermark_ms = wm
            if k1 > k0:
                if users_g is not None and state.sketch is not None:
                    deque(map(state.sketch.update, users_g[k0:k1]), maxlen=0)
                for sum_key, micros_cs, errors_cs in sums:
                    added = micros_cs[k1] - micros_cs[k0]
                    state.sum_micros[sum_key] = state.sum_micros.get(sum_key, 0) + added
                    state.sum_errors += errors_cs[k1] - errors_cs[k0]
            dirty[key] = gen
        totals[0] += applied
        totals[1] += skipped
        totals[2] += late

    def _new_state(self, key: StateKey, spec: RollupSpec) -> PartialState:
        if self._load is not None:
            data = self._load(key)
            if data is not None:
                state = PartialState.from_bytes(data)
                self._states[key] = state
                return state
        state = PartialState(sketch=hll.new(spec.lg_k) if spec.uniques else None,
                             sum_micros={k: 0 for k in spec.sums})
        self._states[key] = state
        return state

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

    def restore(self, key: StateKey, data: bytes, *, rewrite: bool = False) -> bool:
        """Load one durable state (from the table) into memory; False, ignored, if its rollup
        is no longer defined. Raises ValueError on bytes that are not a state.

        *rewrite*: one durable copy of the state is older than this one (a crash between the
        writes of a flush), so it is marked dirty and the next flush writes it everywhere.
        """
        if key.rollup not in self._by_name:
            return False
        state = PartialState.from_bytes(data)
        self._states[key] = state
        if rewrite:
            self._generation += 1
            self._dirty[key] = self._generation
        else:
            self._dirty.pop(key, None)
        if state.watermark_ms > self._watermarks.get(key.partition, NO_WATERMARK):
            self._watermarks[key.partition] = state.watermark_ms
        return True

    def drop_partition(self, partition: int) -> int:
        """Forget a revoked partition: its states (flushed or not), dirty marks and watermark.
        Its next owner restores from the table and replays from the committed offset."""
        gone = [k for k in self._states if k.partition == partition]
        for key in gone:
            del self._states[key]
            self._dirty.pop(key, None)
        self._watermarks.pop(partition, None)
        return len(gone)

    def evict_closed(self) -> int:
        """Drop from memory the flushed states of windows that can only receive late events.

        Needs a `load` callback: a late event for an evicted key reloads it instead of
        starting it from zero (which would overwrite the stored state on the next flush).
        """
        if self._load is None:
            raise ValueError("evict_closed needs a load callback to bring evicted keys back")
        gone = []
        for key in self._states:
            if key in self._dirty:
                continue
            spec = self._by_name[key.rollup]
            close = key.window_start_ms + spec.granularity_ms + spec.allowed_lateness_ms
            if close < self._watermarks.get(key.partition, NO_WATERMARK):
                gone.append(key)
        for key in gone:
            del self._states[key]
        return len(gone)

    def partition_watermarks(self) -> dict[int, int]:
        """Event-time watermark (epoch ms) of each partition seen or restored."""
        return dict(self._watermarks)

    def states(self) -> dict[StateKey, PartialState]:
        """Every state in memory (live objects; read-only for callers)."""
        return self._states

    def get(self, key: StateKey) -> PartialState | None:
        return self._states.get(key)


@dataclass(slots=True)
class _Run:
    """The rows of one run of strictly increasing positions (one partition)."""

    offset: np.ndarray
    index: np.ndarray
    watermark: np.ndarray  # the partition watermark just after each row
    users: list[str] | None


def _group(window: np.ndarray, granularity_ms: int,
           dims: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(order, bounds): rows sorted by (window, dims) keeping row order inside a group, and
    the group boundaries in that order (bounds[0] == 0, bounds[-1] == number of rows)."""
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
