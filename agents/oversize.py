"""Records too large for their topic: clean blocks split by rows, dead letters split in parts.

A record the producer or the broker refuses as too large is data, not an outage: retrying it
can never succeed, and the batch behind it would never be committed. So (pure functions here,
the sending in agents/produce.py):

- a clean block (Arrow rows) is split in halves until each part fits; a single row that still
  does not fit becomes a dead letter (error class `MessageTooLarge`) holding that row;
- a dead letter (the original raw bytes, which may be as large as the raw topic allows, plus
  headers) is split into parts rather than cut: losing nothing of it matters more than keeping
  it in one record. The parts after the first are sent first, as *fragments* (stage `part`,
  each naming its letter's id), all to one DLQ partition; then the *head* goes to the same
  partition, carrying every header of the letter, the first part of the bytes, the letter's
  total size and the offsets of its fragments in order (`rv.parts`). Only the head is a letter
  for `rearview dlq` (fragments are never listed or redriven on their own); redrive reads the
  head, then its fragments by position, checks them and joins the bytes (`join_parts`).

Why parts and not a letter without its value pointing at the raw message: the DLQ is kept for
redriving long after the raw topic's retention may have dropped the original, so it must hold
the bytes itself. A crash between the fragments and the head leaves orphan fragments (never
listed) and the batch is redone, which sends the whole letter again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyarrow as pa

from agents.sink import EVENTS_ARROW_SCHEMA, decode_block

H_LETTER_ID = "rv.letter_id"
H_PARTS = "rv.parts"  # head: offsets of the fragments in its partition, comma-separated, in order
H_PART = "rv.part"  # fragment: "i/n", 2 <= i <= n (the head is part 1)
H_SIZE = "rv.size"  # head: the letter's total size in bytes
PART_STAGE = "part"
TOO_LARGE = "MessageTooLarge"

# What a record costs beyond its key, value and header bytes (batch header, varints): generous.
RECORD_OVERHEAD = 256


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] | None) -> int:
    """An upper bound of a record's size on the wire, as producers count it against their limit."""
    return (RECORD_OVERHEAD + len(key or b"") + len(value or b"")
            + sum(len(k) + len(v or b"") + 10 for k, v in headers or ()))


def split_block(value: bytes) -> list[bytes] | None:
    """A clean block's rows as two blocks, or None when it holds a single row (or is no block)."""
    try:
        table = decode_block(value)
    except ValueError:
        return None
    if table.num_rows < 2:
        return None
    mid = table.num_rows // 2
    return [_encode(table.slice(0, mid)), _encode(table.slice(mid))]


def _encode(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, EVENTS_ARROW_SCHEMA) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def block_provenance(value: bytes) -> tuple[int, int, int, int] | None:
    """(source partition, source offset, index, schema id) of a single-row clean block."""
    try:
        table = decode_block(value)
    except ValueError:
        return None
    if table.num_rows != 1:
        return None
    row = table.to_pylist()[0]
    return int(row["_partition"]), int(row["_offset"]), int(row["_index"]), int(row["schema_id"] or 0)


def cut(value: bytes, part_bytes: int) -> list[bytes]:
    """*value* in consecutive parts of at most *part_bytes* (at least two parts)."""
    n = max(2, math.ceil(len(value) / max(1, part_bytes)))
    size = math.ceil(len(value) / n)
    return [value[i * size:(i + 1) * size] for i in range(n)]


def fragment_headers(letter_headers: Sequence[tuple[str, bytes]], letter_id: str, index: int, total: int
                     ) -> list[tuple[str, bytes]]:
    """Headers of fragment *index* (2-based: the head is part 1) of *total*."""
    keep = {"rv.source_topic", "rv.source_partition", "rv.source_offset", "rv.event_index",
            "rv.first_failed_at", "rv.attempt"}
    return [
        ("rv.stage", PART_STAGE.encode()),
        ("rv.error_class", b"LetterPart"),
        ("rv.reason", f"part {index} of {total} of dead letter {letter_id}".encode()),
        *[(k, v) for k, v in letter_headers if k in keep],
        (H_LETTER_ID, letter_id.encode()),
        (H_PART, f"{index}/{total}".encode()),
    ]


def head_headers(letter_headers: Sequence[tuple[str, bytes]], letter_id: str, size: int,
                 fragment_offsets: Sequence[int]) -> list[tuple[str, bytes]]:
    return [
        *letter_headers,
        (H_LETTER_ID, letter_id.encode()),
        (H_SIZE, str(size).encode()),
        (H_PARTS, ",".join(str(o) for o in fragment_offsets).encode()),
    ]


def fragment_offsets(headers: dict[str, str]) -> list[int]:
    """The fragment offsets a head names ([] for a letter in one record)."""
    text = headers.get(H_PARTS, "")
    return [int(o) for o in text.split(",") if o.strip().isdigit()]


class PartsMismatch(ValueError):
    """The fragments read back do not belong to the head, or do not add up to its size."""


def join_parts(head_value: bytes, head_headers_: dict[str, str],
               fragments: Sequence[tuple[bytes, dict[str, str]]]) -> bytes:
    """The letter's original bytes from its head and its fragments (in the head's order)."""
    letter_id = head_headers_.get(H_LETTER_ID)
    total = len(fragments) + 1
    for i, (_, headers) in enumerate(fragments, start=2):
        if headers.get(H_LETTER_ID) != letter_id or headers.get(H_PART) != f"{i}/{total}":
            raise PartsMismatch(f"part {i} of letter {letter_id} is not where its head says")
    value = head_value + b"".join(v for v, _ in fragments)
    if str(len(value)) != head_headers_.get(H_SIZE):
        raise PartsMismatch(f"letter {letter_id}: parts add up to {len(value)} bytes,"
                            f" not {head_headers_.get(H_SIZE)}")
    return value
