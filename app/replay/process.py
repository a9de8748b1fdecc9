"""The replay's processing: the live pipeline's own pure stages, wired for a rebuild. No I/O here.

Events target, per raw message (in offset order per partition):

1. validate + redact: `agents.worker.validate_record`, the very function the live validate
   agent calls, with a Validator built from the same rules and a Redactor from the same PII
   configuration and secret (hashes, and so uniques, match the live ones);
2. dedup: `tables.dedup.Deduper`, over every event of the replay, whatever raw partition it
   came from (live, copies meet in one events.clean partition; here they meet in one state).
   A copy's dedup position is its raw position (partition, offset, index) packed into one
   integer (`raw_position`), so a resumed job, its state restored from the generation's rows,
   judges a re-read copy exactly as before: the same copy again (kept, already stored), or
   another one (a duplicate);
3. first copies not yet stored become generation rows with ``_clean_offset = REPLAYED_OFFSET``
   and ``_clean_index = 0`` (after the swap, the live store treats any events.clean copy of
   them as a duplicate);
4. first copies (stored or not) are applied to REPLAY-SPACE rollup partials:
   ``StateKey.partition = replay_partition(raw partition)``, position (raw offset, index in
   the message). `tables.aggregate.Aggregator` skips what its restored states already applied,
   so its exactness argument holds as it does live (a raw partition is read in order, from the
   committed offset, prefix-closed).

Rollup targets apply the events table's rows instead (`apply_event_rows`): rows with a real
``_clean_offset`` to LIVE-SPACE partials (partition = the events.clean partition of the
event_id, position = (``_clean_offset``, ``_clean_index``)), so that the live store, restoring
them after the swap, continues exactly; rows with ``_clean_offset = REPLAYED_OFFSET`` to
replay-space partials at their raw position.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from agents.archive import RawRecord
from agents.codec import WriterSchema
from agents.pii import Redactor
from agents.records import CleanEvent, Invalid, SourceMeta
from agents.sink import to_arrow
from agents.validate import Validator
from agents.worker import validate_record
from tables.dedup import INDEX_BITS, REPLAYED_OFFSET, Deduper, ids_from_strings, pack_position
from tables.state import replay_partition

# The replay's dedup position packs (raw partition, raw offset) into the offset part of
# `pack_position` (43 bits once the index's 20 and the stored flag are taken).
PARTITION_BITS = 10
OFFSET_BITS = 63 - INDEX_BITS - PARTITION_BITS  # 33: 8.6 billion offsets per partition
DEDUP_PARTITION = 0  # one dedup state for the whole replay


def raw_position(partition: int | np.ndarray, offset: int | np.ndarray, index: int | np.ndarray) -> np.ndarray:
    """A raw event's position as one uint64, unique per (partition, offset, index)."""
    p = np.asarray(partition, dtype=np.uint64)
    o = np.asarray(offset, dtype=np.uint64)
    if (p >= (1 << PARTITION_BITS)).any() or (o >= (1 << OFFSET_BITS)).any():
        raise ValueError(f"raw positions beyond {1 << PARTITION_BITS} partitions or"
                         f" {1 << OFFSET_BITS} offsets cannot be replayed")
    return pack_position((p << np.uint64(OFFSET_BITS)) | o, index)


@dataclass
class Counts:
    messages: int = 0
    events: int = 0
    rows: int = 0
    duplicates: int = 0
    letters: int = 0
    letters_elsewhere: int = 0
    skipped: int = 0
    redactions: Counter[str] = field(default_factory=Counter)


@dataclass
class Processed:
    """One batch of one raw partition: what to write and apply, and what it counted."""

    partition: int
    next_offset: int  # the offset after the batch's last message
    rows: pa.Table | None  # new generation rows (with _clean_offset, _clean_index)
    applies: list[tuple[pa.Table, int, int, np.ndarray]]  # (block, state partition, offset, index)
    letters: list[Invalid]
    counts: Counts


GENERATION_ROW_SCHEMA_EXTRA = (("_clean_offset", pa.uint64()), ("_clean_index", pa.uint32()))


class EventsProcessor:
    """validate + redact + dedup for the events target; see the module docstring."""

    def __init__(self, validator: Validator, redactor: Redactor, deduper: Deduper, raw_topic: str) -> None:
        self.validator, self.redactor, self.deduper = validator, redactor, deduper
        self.raw_topic = raw_topic

    def process(self, batch: Sequence[RawRecord], schemas: Mapping[int, WriterSchema | None],
                now_ms: int) -> Processed:
        counts = Counts()
        partition = batch[0].partition
        kept_events: list[CleanEvent] = []
        new_mask: list[np.ndarray] = []
        applies: list[tuple[pa.Table, int, int, np.ndarray]] = []
        letters: list[Invalid] = []
        spans: list[tuple[int, int, int, int, np.ndarray]] = []  # (first row, rows, state partition, offset, index)
        for record in batch:
            meta = SourceMeta(self.raw_topic, record.partition, record.offset, record.timestamp_ms)
            clean, invalid = validate_record(record.value, record.key, record.headers, meta,
                                             self.validator, self.redactor, schemas, now_ms,
                                             counts.redactions)
            counts.messages += 1
            counts.events += len(clean) + len(invalid)
            for inv in invalid:
                if inv.source.partition == record.partition and inv.source.offset == record.offset:
                    counts.letters += 1
                else:
                    counts.letters_elsewhere += 1
            letters.extend(invalid)
            if not clean:
                continue
            ids = ids_from_strings([e["event_id"] for e in clean])
            index = np.array([e["source_index"] for e in clean], dtype=np.int64)
            positions = raw_position(record.partition, record.offset, index)
            verdict = self.deduper.check(DEDUP_PARTITION, ids, positions, now_ms)
            kept = np.flatnonzero(verdict.keep)
            counts.duplicates += len(clean) - len(kept)
            if not len(kept):
                continue
            spans.append((len(kept_events), len(kept), replay_partition(record.partition), record.offset,
                          index[kept]))
            kept_events.extend(clean[i] for i in kept.tolist())
            new_mask.append(~verdict.stored[kept])
        rows = None
        if kept_events:
            # One Arrow table for the whole batch: the rollups apply a slice of it per message.
            table = to_arrow(kept_events)
            applies = [(table.slice(start, n), part, offset, idx) for start, n, part, offset, idx in spans]
            fresh = np.concatenate(new_mask)
            counts.rows = int(fresh.sum())
            if counts.rows:
                if counts.rows < len(kept_events):
                    table = table.take(pa.array(np.flatnonzero(fresh)))
                rows = with_clean_position(table)
        return Processed(partition, batch[-1].offset + 1, rows, applies, letters, counts)


def with_clean_position(table: pa.Table) -> pa.Table:
    """Generation rows: the replay's sentinel events.clean position on every row."""
    n = table.num_rows
    table = table.append_column("_clean_offset", pa.array(np.full(n, REPLAYED_OFFSET, dtype=np.uint64)))
    return table.append_column("_clean_index", pa.array(np.zeros(n, dtype=np.uint32)))
