import io
import json

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

import schemas
from agents.codec import (
    BatchWriter,
    FramingError,
    Kind,
    decode,
    frame,
    split_frame,
    with_reader,
    writer_schema,
)


def event(i: int = 0) -> dict:
    return {
        "event_id": "0b6f7f3e-0d0c-4a55-9f5e-8d3c2a1b7e10",
        "project_id": "default",
        "event_name": "button_click",
        "user_id": f"user-{i}",
        "timestamp": 1_796_116_500_000 + i,
        "properties": {"country": "DE"},
        "context": {"ip": None, "user_agent": None, "library": None, "received_at": 1},
    }


@given(st.integers(min_value=0, max_value=2**31 - 1), st.binary(max_size=64))
def test_frame_round_trips(schema_id: int, body: bytes) -> None:
    assert split_frame(frame(schema_id, body)) == (schema_id, body)


@pytest.mark.parametrize(
    ("raw", "message"),
    [(b"", "shorter than the 5-byte"), (b"\x00\x00", "shorter"), (b"\x01\x00\x00\x00\x01x", "magic byte is 1")],
)
def test_split_frame_names_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        split_frame(raw)


def test_writer_schema_classifies_batches_and_single_events() -> None:
    assert writer_schema(1, schemas.schema_str(schemas.EVENT_BATCH)).kind is Kind.BATCH
    assert writer_schema(3, schemas.schema_str(schemas.EVENT)).kind is Kind.EVENT
    with pytest.raises(ValueError, match="not a valid Avro schema"):
        writer_schema(4, '{"type": "record"}')


def test_batch_writer_output_decodes_with_the_stock_reader() -> None:
    writer = BatchWriter(schemas.EVENT_BATCH, 7)
    raw = writer.encode([event(i) for i in range(3)])
    schema_id, body = split_frame(raw)
    assert schema_id == 7
    stock = fastavro.schemaless_reader(io.BytesIO(body), fastavro.parse_schema(schemas.load(schemas.EVENT_BATCH)))
    assert [e["user_id"] for e in stock["events"]] == ["user-0", "user-1", "user-2"]
    thin = decode(body, writer_schema(7, schemas.schema_str(schemas.EVENT_BATCH)))
    assert thin["events"][2]["timestamp"] == 1_796_116_500_002  # logical types left as plain longs


def test_encode_chunks_splits_under_the_size_limit_and_keeps_every_record() -> None:
    writer = BatchWriter(schemas.EVENT_BATCH, 7)
    records = [event(i) for i in range(200)]
    chunks = writer.encode_chunks(records, max_bytes=2_000)
    assert len(chunks) > 1
    assert all(len(c) <= 2_000 for c in chunks)
    ws = writer_schema(7, schemas.schema_str(schemas.EVENT_BATCH))
    decoded = [e for c in chunks for e in decode(split_frame(c)[1], ws)["events"]]
    assert [e["user_id"] for e in decoded] == [r["user_id"] for r in records]


def test_trailing_bytes_are_an_error() -> None:
    writer = BatchWriter(schemas.EVENT_BATCH, 7)
    body = split_frame(writer.encode([event()]))[1] + b"\x00\x01"
    with pytest.raises(ValueError, match="trailing bytes"):
        decode(body, writer_schema(7, schemas.schema_str(schemas.EVENT_BATCH)))


def _purchase(price_type: object) -> str:
    doc = schemas.load(schemas.EVENT)
    doc.update(name="Purchase", namespace="com.shop")
    doc["fields"] = [*doc["fields"], {"name": "price", "type": price_type}]
    return json.dumps(doc)


@pytest.mark.parametrize(
    ("writer_type", "reader_type", "value"),
    [
        ("int", "double", 149),
        ("int", "float", 149),
        ("long", "double", 2**62 + 1),
        (["null", "int"], ["null", "double"], 149),
        (["null", "long"], ["null", "int", "double"], 2**40 + 1),  # "int" cannot read a long
        ("int", ["double", "null"], 7),
    ],
)
def test_a_reader_that_promotes_an_int_to_a_double_still_reads_the_int(
    writer_type: object, reader_type: object, value: int
) -> None:
    w_text, r_text = _purchase(writer_type), _purchase(reader_type)
    resolved = with_reader(writer_schema(20, w_text), 21, r_text)
    assert resolved.resolution_error is None
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(w_text)),
                               {**event(), "price": value})
    decoded = decode(buf.getvalue(), resolved)
    assert decoded["price"] == value and type(decoded["price"]) is int


def test_a_double_writer_through_a_double_reader_is_untouched() -> None:
    w_text = _purchase(["null", "double"])
    resolved = with_reader(writer_schema(20, w_text), 21, _purchase(["null", "double", "string"]))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(json.loads(w_text)), {**event(), "price": 0.1})
    assert decode(buf.getvalue(), resolved)["price"] == 0.1
