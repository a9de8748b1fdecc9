"""The hand-written EventBatch encoder writes exactly fastavro's bytes, or steps aside."""

from __future__ import annotations

import copy
import io
from typing import Any

import fastavro
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from agents import batch_encode
from agents.codec import BatchWriter, _strip_logical_types

PARSED = fastavro.parse_schema(_strip_logical_types(schemas.load(schemas.EVENT_BATCH)))
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=80)
longs = st.integers(-(2**63), 2**63 - 1)
record = st.fixed_dictionaries({
    "event_id": text, "project_id": text, "event_name": text, "user_id": text,
    "timestamp": longs,
    "properties": st.dictionaries(text, text, max_size=8),
    "context": st.fixed_dictionaries({
        "ip": st.none() | text, "user_agent": st.none() | text, "library": st.none() | text,
        "received_at": st.none() | longs}),
})


def _fastavro(records: list[Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED, {"events": records})
    return buf.getvalue()


def test_the_bundled_schema_fits() -> None:
    assert batch_encode.fits(schemas.load(schemas.EVENT_BATCH))


def test_another_layout_does_not_fit() -> None:
    doc = copy.deepcopy(schemas.load(schemas.EVENT_BATCH))
    doc["fields"][0]["type"]["items"]["fields"].append({"name": "extra", "type": "string"})
    assert not batch_encode.fits(doc)
    doc = copy.deepcopy(schemas.load(schemas.EVENT_BATCH))
    doc["fields"][0]["type"]["items"]["fields"][4]["type"] = "int"
    assert not batch_encode.fits(doc)
    assert not batch_encode.fits(schemas.load(schemas.EVENT))


@settings(max_examples=300)
@given(st.lists(record, max_size=5))
def test_bytes_equal_fastavro(records: list[Any]) -> None:
    assert batch_encode.encode_events(records) == _fastavro(records)


def test_records_out_of_shape_fall_back_to_fastavro() -> None:
    writer = BatchWriter(schemas.EVENT_BATCH, 7)
    good = {"event_id": "e", "project_id": "p", "event_name": "n", "user_id": "u",
            "timestamp": 1, "properties": {}, "context": {}}
    missing = {k: v for k, v in good.items() if k not in ("project_id", "context")}
    for odd in (missing, {**good, "timestamp": 1.0}, {**good, "properties": {"k": 1}}):
        try:
            batch_encode.encode_events([odd])
        except batch_encode.Unfit:
            pass
        else:
            raise AssertionError(f"encoded out-of-shape {odd}")
    # fastavro applies the defaults to the missing fields, as before.
    assert writer.encode([missing])[5:] == _fastavro([missing])
    assert writer.encode([good])[5:] == _fastavro([good])
