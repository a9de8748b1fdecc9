"""The aggregate stage's state: keys, per-partition partial aggregates, and their bytes.

A `StateKey` names one partial aggregate: one project, one rollup, one window, one combination
of dimension values, as seen by ONE events.clean partition (events.clean is partitioned by
event_id, so a partition's partials hold distinct events). The project is an implicit leading
dimension of every rollup: two projects' events never share a partial. Partials of the same
(project, rollup, window, dims) from different partitions are merged at query time
(`merge_partials`, or SQL over the rollup table).

A `PartialState` is small whatever the traffic: a count, exact sums, an HLL sketch, a late
counter, and two watermarks (see `tables/aggregate.py` for why they make redelivery exact).
`to_bytes` is what the rollup table's ``state`` column holds, from which a worker restores.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from datasketches import hll_sketch

from tables import hll

# Sums are kept exactly, as integers of micro-units: float addition is not associative, and a
# replay regroups rows into different batches, so float sums would differ in the last bits.
MICROS = 1_000_000
NO_POSITION = (-1, -1)
NO_WATERMARK = -(2**63)

# Partials a replay builds from the raw topic live in their own partition numbers: a raw
# partition p is REPLAY_PARTITION_BASE + p. No live store ever owns such a number (events.clean
# has far fewer partitions), so it never restores or overwrites them, and queries, which sum
# every partition, count them like any other. The rollup tables' ``partition`` is UInt32.
REPLAY_PARTITION_BASE = 1_000_000

_FORMAT_VERSION = 1
# version, flags, count, late, sum_errors, offset, index, watermark, number of sums
_HEADER = struct.Struct("<BBqqqqqqH")
_FLAG_SKETCH = 1
_SUM_BYTES = 16  # signed 128-bit little-endian micro-units
_INTEGER = re.compile(r"-?[0-9]+")


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace("|", "\\|")


def _split_escaped(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, None)
            if nxt is None:
                raise ValueError("state key ends in a lone backslash")
            current.append(nxt)
        elif ch == "|":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def replay_partition(raw_partition: int) -> int:
    """The partition number of the replay-space partials built from raw partition
    *raw_partition* (see `REPLAY_PARTITION_BASE`)."""
    if not 0 <= raw_partition < REPLAY_PARTITION_BASE:
        raise ValueError(f"raw partition {raw_partition} out of range")
    return REPLAY_PARTITION_BASE + raw_partition


def is_replay_partition(partition: int) -> bool:
    return partition >= REPLAY_PARTITION_BASE


class StateKey(NamedTuple):
    """One partial aggregate: (source partition, project, rollup name, window start, dimension
    values).

    ``project_id`` is the events' own project (the collector stamps it, a service writing to
    Kafka sets it). ``dims`` holds the values of the rollup's dimensions in order (event_name
    first); a property that was absent is ``""``. A NamedTuple: hashing it is a tuple hash.
    """

    partition: int
    project_id: str
    rollup: str
    window_start_ms: int
    dims: tuple[str, ...]

    def to_str(self) -> str:
        """``partition|project|rollup|window_start_ms|dim1|dim2...``, with ``\\`` and ``|``
        inside the project and dimension values escaped by a backslash, so any value
        round-trips through `parse`.

        Nothing durable holds this form (the rollup tables store a key as columns): it is for
        logs, messages and benchmarks. The form before projects,
        ``partition|rollup|window_start_ms|dims...``, is refused by `parse` rather than read
        wrongly: its third field is a number, never a rollup name.
        """
        head = [str(self.partition), _escape(self.project_id), self.rollup, str(self.window_start_ms)]
        return "|".join([*head, *(_escape(d) for d in self.dims)])

    @classmethod
    def parse(cls, text: str) -> StateKey:
        parts = _split_escaped(text)
        if len(parts) >= 4 and _INTEGER.fullmatch(parts[2]):  # a rollup name starts with a letter
            raise ValueError(f"a state key written before projects (no project field): {text[:80]!r}")
        if len(parts) < 5 or not _INTEGER.fullmatch(parts[0]) or not _INTEGER.fullmatch(parts[3]):
            raise ValueError(f"not a state key: {text[:80]!r}")
        return cls(int(parts[0]), parts[1], parts[2], int(parts[3]), tuple(parts[4:]))


@dataclass(slots=True, eq=False)
class PartialState:
    """The aggregate of one StateKey: what a table value holds (never a list of events).

    ``count``            events applied to the window.
    ``late``             always 0 now (late events are applied: their window is loaded back);
                         kept so that states written by earlier versions still parse.
    ``sum_micros``       exact sums of the rollup's numeric properties, in micro-units.
    ``sum_errors``       applied events whose summed property was present but not a number.
    ``sketch``           live HLL sketch of user ids (None when the rollup has no uniques).
    ``applied_through``  highest position (events.clean offset, row index) of this key's
                         partition applied to this key; (-1, -1) before the first. Rows at or
                         below it are redeliveries and are skipped. It only grows, so it also
                         serves as the version of a full-state upsert.
    ``watermark_ms``     the partition's receive-time watermark just after the block that
                         last changed this key; the max over restored keys restores the
                         partition watermark after a crash.
    """

    count: int = 0
    late: int = 0
    sum_micros: dict[str, int] = field(default_factory=dict)
    sum_errors: int = 0
    sketch: hll_sketch | None = None
    applied_through: tuple[int, int] = NO_POSITION
    watermark_ms: int = NO_WATERMARK

    @property
    def sums(self) -> dict[str, float]:
        return {name: micros / MICROS for name, micros in self.sum_micros.items()}

    @property
    def uniques(self) -> float | None:
        return None if self.sketch is None else hll.estimate(self.sketch)

    def to_bytes(self) -> bytes:
        """Compact binary form: a fixed header, the sums, then the compact sketch bytes."""
        flags = _FLAG_SKETCH if self.sketch is not None else 0
        offset, index = self.applied_through
        out = [
            _HEADER.pack(_FORMAT_VERSION, flags, self.count, self.late, self.sum_errors,
                         offset, index, self.watermark_ms, len(self.sum_micros))
        ]
        for name, micros in self.sum_micros.items():
            encoded = name.encode()
            value = micros.to_bytes(_SUM_BYTES, "little", signed=True)
            out.append(bytes([len(encoded)]) + encoded + value)
        if self.sketch is not None:
            out.append(hll.to_bytes(self.sketch))
        return b"".join(out)

    @classmethod
    def from_bytes(cls, data: bytes) -> PartialState:
        """The state `to_bytes` wrote; ValueError for anything else."""
        try:
            version, flags, count, late, errors, offset, index, wm, n_sums = _HEADER.unpack_from(data)
        except struct.error as exc:
            raise ValueError(f"partial state too short: {exc}") from None
        if version != _FORMAT_VERSION:
            raise ValueError(f"unknown partial state format version {version}")
        pos = _HEADER.size
        sums: dict[str, int] = {}
        for _ in range(n_sums):
            if pos >= len(data):
                raise ValueError("partial state truncated in its sums")
            length = data[pos]
            name_end = pos + 1 + length
            value_end = name_end + _SUM_BYTES
            if value_end > len(data):
                raise ValueError("partial state truncated in its sums")
            name = data[pos + 1:name_end].decode()
            sums[name] = int.from_bytes(data[name_end:value_end], "little", signed=True)
            pos = value_end
        sketch = None
        if flags & _FLAG_SKETCH:
            sketch = hll.from_bytes(data[pos:])
        elif pos != len(data):
            raise ValueError("partial state has trailing bytes")
        return cls(count, late, sums, errors, sketch, (offset, index), wm)


@dataclass(frozen=True, slots=True)
class Merged:
    """One (project, rollup, window, dims) cell merged over partitions: what a query reads."""

    count: int
    late: int
    sums: dict[str, float]
    sum_errors: int
    uniques: float | None


Cell = tuple[str, str, int, tuple[str, ...]]  # (project, rollup, window start, dims)


def merge_partials(
    items: Iterable[tuple[StateKey, PartialState]], lg_k: int = hll.MAX_LG_K
) -> dict[Cell, Merged]:
    """Query-time merge of per-partition partials into one cell per (project, rollup, window,
    dims).

    The pure-Python twin of the ClickHouse query (sum counts and sums, union sketches); used by
    tests and by anything that checks the rollup tables. *lg_k* caps the union's precision
    (the default keeps the precision of the inputs).
    """
    groups: dict[Cell, list[PartialState]] = {}
    for key, state in items:
        groups.setdefault((key.project_id, key.rollup, key.window_start_ms, key.dims), []).append(state)
    out = {}
    for cell, states in groups.items():
        sums: dict[str, int] = {}
        for state in states:
            for name, micros in state.sum_micros.items():
                sums[name] = sums.get(name, 0) + micros
        sketches = [s.sketch for s in states if s.sketch is not None]
        uniques = None
        if sketches:
            lg = min(lg_k, max(s.lg_config_k for s in sketches))
            one = sketches[0] if len(sketches) == 1 else hll.union(sketches, lg)
            uniques = hll.estimate(one)
        out[cell] = Merged(
            count=sum(s.count for s in states),
            late=sum(s.late for s in states),
            sums={name: micros / MICROS for name, micros in sums.items()},
            sum_errors=sum(s.sum_errors for s in states),
            uniques=uniques,
        )
    return out
