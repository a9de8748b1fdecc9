import pyarrow as pa
import pytest

from agents.records import CleanEvent
from agents.sink import EVENTS_ARROW_SCHEMA, decode_block, encode_blocks


def clean(i: int) -> CleanEvent:
    return CleanEvent(
        event_id=f"00000000-0000-4000-8000-{i:012d}", project_id="default", event_name="page_view",
        user_id=f"u{i}", timestamp=1_796_116_500_000 + i, properties={"country": "DE", "path": "/" * (i % 7)},
        ip=None, user_agent="ua" if i % 2 else None, library=None, received_at=1_796_116_500_000,
        schema_id=3, source_partition=i % 4, source_offset=100 + i, source_index=i,
    )


def test_blocks_round_trip_every_row_with_provenance_under_the_size_limit() -> None:
    events = [clean(i) for i in range(5000)]
    blocks = encode_blocks(events, max_bytes=200_000, rows_per_block=2000)
    assert len(blocks) >= 3 and all(len(b) <= 200_000 for b in blocks)
    table = pa.concat_tables([decode_block(b) for b in blocks])
    assert table.schema.equals(EVENTS_ARROW_SCHEMA)
    assert table.column("user_id").to_pylist() == [e["user_id"] for e in events]
    assert table.column("_offset").to_pylist() == [e["source_offset"] for e in events]
    assert dict(table.column("properties")[8].as_py()) == {"country": "DE", "path": "/"}
    assert table.column("ts")[1].as_py().timestamp() == 1_796_116_500.001


def test_a_block_that_is_not_clean_arrow_is_refused() -> None:
    with pytest.raises(ValueError, match="not an Arrow IPC stream"):
        decode_block(b"\x00\x00\x00\x01garbage")
    other = pa.table({"x": [1]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, other.schema) as w:
        w.write_table(other)
    with pytest.raises(ValueError, match="clean-events schema"):
        decode_block(sink.getvalue().to_pybytes())
