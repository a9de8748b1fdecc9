"""Avro with Confluent framing: a thin, cached reader and the batch writers.

Wire format (Confluent): magic byte 0, the writer schema's registry id as a 4-byte big-endian
int, then the Avro binary body. Decoding uses fastavro's ``schemaless_reader`` with the writer
schema parsed once per id. Logical types are stripped from the parsed writer schema: their
binary encoding is the plain type (a uuid is a string, a timestamp-millis a long), and skipping
the conversion to ``datetime``/``UUID`` objects saves most of the per-event decode cost.

Numbers come out as the producer wrote them (see agents/properties.py for their spelling):
- an int or long field read through a reader schema that promotes it to float or double is
  read as a long instead (`_keep_integers`), so ``149`` stays ``149`` rather than becoming
  ``149.0``, and a long beyond 2^53 keeps all its digits;
- a 32-bit float is widened to the double of the shortest decimal that reads back as the same
  float32 (`_float32_decimal`): a producer that wrote ``19.99`` into a ``float`` field gets
  19.99, not 19.989999771118164, the same value the collector stores for JSON ``19.99``.
Both apply to the top-level fields of a record schema: typed event fields, the only numbers
that become properties (nested records and arrays are refused as property values).
"""

from __future__ import annotations

import io
import json
import math
import struct
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import fastavro

import schemas
from agents import batch_encode

MAGIC = 0
HEADER = struct.Struct(">bI")


class FramingError(ValueError):
    """The bytes are not a Confluent-framed Avro message."""


class Kind(Enum):
    EVENT = "event"  # one event per message (any producer with a stock serializer)
    BATCH = "batch"  # io.rearview.EventBatch: many events per message


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A writer schema by registry id, and how its data is read.

    ``reader`` is the pipeline's reader schema for the same record name (the latest version
    registered under the topic's TopicRecordNameStrategy subject), when there is one: decoding
    then follows Avro schema resolution (fields the writer lacks take the reader's defaults).
    ``resolution_error`` says, naming the field, why the reader cannot read this writer's data;
    every message written with it is invalid.
    """

    schema_id: int
    full_name: str
    kind: Kind
    parsed: Any  # fastavro parsed schema, logical types stripped
    text: str = ""
    reader: Any = None
    reader_id: int | None = None
    resolution_error: str | None = None
    # Top-level fields the writer holds as 32-bit floats (see `_float32_decimal`).
    float32_fields: tuple[str, ...] = ()


def frame(schema_id: int, body: bytes) -> bytes:
    return HEADER.pack(MAGIC, schema_id) + body


def split_frame(raw: bytes) -> tuple[int, bytes]:
    """(schema id, body) of a framed message, or FramingError naming what is wrong."""
    if raw is None:
        raise FramingError("message has no value (a tombstone)")
    if len(raw) < HEADER.size:
        raise FramingError(f"message is {len(raw)} bytes, shorter than the 5-byte Avro header")
    magic, schema_id = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise FramingError(f"magic byte is {magic & 0xFF}, expected 0 (Confluent Avro framing)")
    return schema_id, raw[HEADER.size :]


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def writer_schema(schema_id: int, schema_text: str) -> WriterSchema:
    """Parse a registry schema once; raises ValueError for text that is not an Avro schema."""
    try:
        doc = json.loads(schema_text)
        parsed = fastavro.parse_schema(_strip_logical_types(doc))
    except Exception as exc:  # fastavro raises several types for bad schemas
        raise ValueError(f"schema {schema_id} is not a valid Avro schema: {exc}") from exc
    name = schemas.full_name(doc)
    kind = Kind.BATCH if name == schemas.EVENT_BATCH else Kind.EVENT
    return WriterSchema(schema_id, name, kind, parsed, schema_text,
                        float32_fields=_float32_fields(doc))


_INTEGERS = ("int", "long")
_FLOATS = ("float", "double")
_F32 = struct.Struct("<f")


def _type_name(node: Any) -> Any:
    return node.get("type") if isinstance(node, dict) else node


def _branches(node: Any) -> list[Any]:
    return node if isinstance(node, list) else [node]


def _record_fields(doc: Any) -> list[dict[str, Any]]:
    if not isinstance(doc, dict) or doc.get("type") != "record":
        return []
    return [f for f in doc.get("fields", []) if isinstance(f, dict)]


def _float32_fields(doc: Any) -> tuple[str, ...]:
    """Top-level fields whose only floating-point type is "float" (a union with "double" could
    hold either, and a double must not be rounded to 32 bits)."""
    out = []
    for f in _record_fields(doc):
        names = [_type_name(b) for b in _branches(f.get("type"))]
        if "float" in names and "double" not in names and isinstance(f.get("name"), str):
            out.append(f["name"])
    return tuple(out)


def _float32_decimal(value: float) -> float:
    """The double of the shortest decimal that reads back as the float32 *value*."""
    if not math.isfinite(value):
        return value
    packed = _F32.pack(value)
    for digits in range(1, 10):  # 9 significant digits always identify a float32
        candidate = float(f"{value:.{digits}g}")
        try:
            if _F32.pack(candidate) == packed:
                return candidate
        except OverflowError:  # rounded past the largest float32
            continue
    return value


def _integers_first(node: Any) -> Any:
    """A reader type that reads an int or long as a long rather than a float or double."""
    if isinstance(node, list):
        if not any(_type_name(b) in _FLOATS for b in node):
            return node
        rest = [b for b in node if _type_name(b) not in _INTEGERS]
        first_float = next(i for i, b in enumerate(rest) if _type_name(b) in _FLOATS)
        return [*rest[:first_float], "long", *rest[first_float:]]
    return "long" if _type_name(node) in _FLOATS else node


def _keep_integers(reader_doc: Any, writer_doc: Any) -> Any:
    """*reader_doc* where each top-level field the writer may hold as an int or long, and the
    reader would promote to float or double, reads it as a long instead. Avro's resolution rules
    promote int/long to float/double; for properties stored as text that promotion only changes
    the spelling (``149.0``) or loses digits (longs beyond 2^53)."""
    writer_types = {f.get("name"): f.get("type") for f in _record_fields(writer_doc)}
    fields = []
    changed = False
    for f in _record_fields(reader_doc):
        names = [f.get("name"), *(f.get("aliases") or [])]
        written = next((writer_types[n] for n in names if n in writer_types), None)
        if written is not None and any(_type_name(b) in _INTEGERS for b in _branches(written)):
            kept = _integers_first(f.get("type"))
            if kept is not f.get("type"):
                f = {**f, "type": kept}
                changed = True
        fields.append(f)
    return {**reader_doc, "fields": fields} if changed else reader_doc


def with_reader(writer: WriterSchema, reader_id: int | None, reader_text: str | None) -> WriterSchema:
    """*writer* resolved against the reader schema *reader_text* (None: no reader known)."""
    if reader_id is None or reader_text is None or reader_id == writer.schema_id:
        return replace(writer, reader=None, reader_id=reader_id, resolution_error=None)
    from avro.schema import parse as avro_parse

    from core.avro_compatibility import read_problems

    try:
        problems = read_problems(avro_parse(reader_text), avro_parse(writer.text))
        reader = fastavro.parse_schema(
            _keep_integers(_strip_logical_types(json.loads(reader_text)), json.loads(writer.text))
        )
    except Exception as exc:  # noqa: BLE001 - a schema the registry accepted but we cannot use
        return replace(writer, reader=None, reader_id=reader_id,
                       resolution_error=f"reader schema {reader_id} is unusable: {exc}")
    if problems:
        detail = "; ".join(str(p) for p in problems[:5])
        error = (f"{writer.full_name} schema {writer.schema_id} cannot be read as the pipeline's"
                 f" schema {reader_id}: {detail}")
        return replace(writer, reader=None, reader_id=reader_id, resolution_error=error)
    return replace(writer, reader=reader, reader_id=reader_id, resolution_error=None)


def decode(body: bytes, schema: WriterSchema) -> Any:
    """Decode an Avro body; raises on truncated or corrupted bytes (several exception types)."""
    buf = io.BytesIO(body)
    value = fastavro.schemaless_reader(buf, schema.parsed, schema.reader)
    if buf.tell() != len(body):
        raise ValueError(f"{len(body) - buf.tell()} trailing bytes after the Avro record")
    if schema.float32_fields and isinstance(value, dict):
        for name in schema.float32_fields:
            number = value.get(name)
            if type(number) is float:
                value[name] = _float32_decimal(number)
    return value


class BatchWriter:
    """Encodes a list of events as one framed EventBatch message."""

    def __init__(self, full_name: str, schema_id: int) -> None:
        self.schema_id = schema_id
        doc = schemas.load(full_name)
        self._parsed = fastavro.parse_schema(_strip_logical_types(doc))
        self._header = HEADER.pack(MAGIC, schema_id)
        # The hand-written encoder for this exact layout (agents/batch_encode.py), else fastavro.
        self._fast = batch_encode.fits(doc)

    def encode(self, records: list[Any]) -> bytes:
        if self._fast:
            try:
                return self._header + batch_encode.encode_events(records)
            except batch_encode.Unfit:
                pass  # fastavro applies the schema's defaults, or refuses as it always did
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self._parsed, {"events": records})
        return buf.getvalue()

    def encode_chunks(self, records: list[Any], max_bytes: int) -> list[bytes]:
        """Encode *records* into as few messages as fit under *max_bytes* each."""
        if not records:
            return []
        data = self.encode(records)
        if len(data) <= max_bytes or len(records) == 1:
            return [data]
        mid = len(records) // 2
        return self.encode_chunks(records[:mid], max_bytes) + self.encode_chunks(
            records[mid:], max_bytes
        )
