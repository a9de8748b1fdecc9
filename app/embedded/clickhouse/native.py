"""ClickHouse's Native format as a client of a given protocol revision expects it.

chdb writes Native as for a client of revision 0: no block info before each block, and a
top-level ``DateTime('Zone')`` column announced as plain ``DateTime`` (ClickHouse drops the
zone for clients older than revision 54337). A client that sends ``client_protocol_version``
(clickhouse-connect sends 54405 once its start-up probe succeeds) expects, as from a server:

- each block to start with the block info (``is_overflows`` and ``bucket_num`` fields, then
  the end marker: 8 bytes), and
- every column's full type name, zone included.

:class:`NativeRewriter` turns chdb's blocks into that. chdb's streaming query yields exactly
one block per fetched chunk, so adding the block info needs no parsing. Naming the zone does:
the column headers after the first are found by skipping the data of the columns before
them, which :func:`skip_column` knows how to do for every type whose layout is fixed by its
name (numbers, strings, dates, UUIDs, IPs, decimals, enums, Nullable, Array, Map, Tuple,
LowCardinality, geo types...). A block whose zone-less column comes after a column it cannot
skip (Variant, Dynamic, JSON, aggregate states) keeps that column's plain name.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# is_overflows (field 1) = 0, bucket_num (field 2) = -1, end of fields: as a server writes it.
BLOCK_INFO: Final = b"\x01\x00\x02\xff\xff\xff\xff\x00"
MIN_REVISION_WITH_BLOCK_INFO: Final = 1
MIN_REVISION_WITH_ZONE_IN_DATETIME: Final = 54337

_U64: Final = struct.Struct("<Q")

_FIXED: Final[dict[str, int]] = {
    "UInt8": 1, "Int8": 1, "Bool": 1, "Enum8": 1, "Nothing": 1,
    "UInt16": 2, "Int16": 2, "Date": 2, "Enum16": 2, "BFloat16": 2,
    "UInt32": 4, "Int32": 4, "Float32": 4, "DateTime": 4, "Date32": 4, "IPv4": 4,
    "Decimal32": 4, "Time": 4,
    "UInt64": 8, "Int64": 8, "Float64": 8, "DateTime64": 8, "Decimal64": 8, "Time64": 8,
    "UInt128": 16, "Int128": 16, "UUID": 16, "IPv6": 16, "Decimal128": 16,
    "UInt256": 32, "Int256": 32, "Decimal256": 32,
}  # fmt: skip
# Geo types are named aliases of tuples and arrays.
_ALIASES: Final[dict[str, str]] = {
    "Point": "Tuple(Float64, Float64)",
    "Ring": "Array(Point)",
    "LineString": "Array(Point)",
    "MultiLineString": "Array(LineString)",
    "Polygon": "Array(Ring)",
    "MultiPolygon": "Array(Polygon)",
}
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class CannotSkip(Exception):
    """A type whose data this module cannot measure (or malformed data)."""


@dataclass(frozen=True)
class DataType:
    name: str
    args: tuple[DataType | str, ...] = ()


def parse_type(text: str) -> DataType:
    """ClickHouse's type name as a tree (arguments that are not types are kept as text)."""
    parsed, end = _parse(text, 0)
    if text[end:].strip():
        raise CannotSkip(f"unexpected {text[end:]!r} after type {text[:end]!r}")
    return parsed


def _parse(text: str, pos: int) -> tuple[DataType, int]:
    pos = _space(text, pos)
    match = _NAME.match(text, pos)
    if match is None:
        raise CannotSkip(f"no type name at {text[pos:]!r}")
    name, pos = match.group(), match.end()
    if pos >= len(text) or text[pos] != "(":
        if name in _ALIASES:
            return parse_type(_ALIASES[name]), pos
        return DataType(name), pos
    args: list[DataType | str] = []
    pos += 1
    while True:
        arg, pos = _argument(text, pos)
        args.append(arg)
        pos = _space(text, pos)
        if pos >= len(text):
            raise CannotSkip(f"unclosed type {text!r}")
        if text[pos] == ")":
            return DataType(name, tuple(args)), pos + 1
        if text[pos] != ",":
            raise CannotSkip(f"unexpected {text[pos]!r} in {text!r}")
        pos += 1


def _argument(text: str, pos: int) -> tuple[DataType | str, int]:
    """One argument: a type, ``name Type`` (named tuple element), or other text (kept raw)."""
    pos = _space(text, pos)
    start, depth = pos, 0
    while pos < len(text):
        ch = text[pos]
        if ch in "'`\"":
            pos = _end_of_quote(text, pos)
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            break
        pos += 1
    raw = text[start:pos].strip()
    first = _NAME.match(raw)
    if first is None or raw[0].isdigit():
        return raw, pos
    rest = raw[first.end() :]
    if rest.startswith(" ") and _NAME.match(rest.strip()):
        raw = rest.strip()  # a named tuple element: "name Type"
    try:
        return parse_type(raw), pos
    except CannotSkip:
        return raw, pos


def _end_of_quote(text: str, pos: int) -> int:
    quote, pos = text[pos], pos + 1
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote:
            return pos + 1
        pos += 1
    raise CannotSkip(f"unclosed quote in {text!r}")


def _space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] == " ":
        pos += 1
    return pos


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= len(buf):
            raise CannotSkip("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _types(t: DataType) -> list[DataType]:
    return [a for a in t.args if isinstance(a, DataType)]


def _fixed_width(t: DataType) -> int | None:
    if t.name in _FIXED:
        return _FIXED[t.name]
    if t.name == "Decimal":
        precision = int(str(t.args[0]))
        return 4 if precision <= 9 else 8 if precision <= 18 else 16 if precision <= 38 else 32
    if t.name == "FixedString":
        return int(str(t.args[0]))
    if t.name.startswith("Interval"):
        return 8
    return None


def _prefix(buf: bytes | memoryview, pos: int, t: DataType) -> int:
    """Skip the serialization state prefix a type tree writes before its data."""
    if t.name == "LowCardinality":
        return pos + 8  # the dictionary keys' version
    for inner in _types(t) if t.name in ("Array", "Map", "Tuple", "Nullable", "Nested") else ():
        pos = _prefix(buf, pos, inner)
    if t.name == "SimpleAggregateFunction":
        pos = _prefix(buf, pos, _types(t)[-1])
    return pos


def _data(buf: bytes | memoryview, pos: int, t: DataType, rows: int) -> int:
    """Skip *rows* values of *t* (after its prefix)."""
    width = _fixed_width(t)
    if width is not None:
        return pos + width * rows
    name = t.name
    if name == "String":
        for _ in range(rows):
            size, pos = read_varint(buf, pos)
            pos += size
        return pos
    if name == "Nullable":
        return _data(buf, pos + rows, _types(t)[0], rows)
    if name in ("Array", "Map", "Nested"):
        if rows == 0:
            return pos
        end = pos + 8 * rows
        if end > len(buf):
            raise CannotSkip("truncated array sizes")
        (count,) = _U64.unpack_from(buf, end - 8)
        inner = _types(t)
        if name == "Array":
            return _data(buf, end, inner[0], count)
        for element in inner:  # Map(K, V) and Nested(...): a tuple of arrays' elements
            end = _data(buf, end, element, count)
        return end
    if name == "Tuple":
        for element in _types(t):
            pos = _data(buf, pos, element, rows)
        return pos
    if name == "LowCardinality":
        return _low_cardinality(buf, pos, _types(t)[0], rows)
    if name == "SimpleAggregateFunction":
        return _data(buf, pos, _types(t)[-1], rows)
    raise CannotSkip(f"cannot measure {name} data")


def _low_cardinality(buf: bytes | memoryview, pos: int, t: DataType, rows: int) -> int:
    """Granules of (flags, [dictionary], indexes) until *rows* indexes were read (a block's
    dictionary is split when it outgrows ``low_cardinality_max_dictionary_size``)."""
    keys_type = _types(t)[0] if t.name == "Nullable" else t
    done = 0
    while done < rows:
        (flags,) = _U64.unpack_from(buf, pos)
        pos += 8
        index_width = (1, 2, 4, 8)[flags & 0xFF]
        if flags & (1 << 9):  # HasAdditionalKeysBit: this granule's dictionary follows
            (keys,) = _U64.unpack_from(buf, pos)
            pos = _data(buf, pos + 8, keys_type, keys)
        (count,) = _U64.unpack_from(buf, pos)
        if count == 0:
            raise CannotSkip("empty LowCardinality granule")
        pos += 8 + index_width * count
        done += count
    return pos


def skip_column(buf: bytes | memoryview, pos: int, t: DataType, rows: int) -> int:
    """The offset just after one column's data (prefix included) starting at *pos*."""
    if rows == 0:
        return pos
    try:
        end = _data(buf, _prefix(buf, pos, t), t, rows)
    except (IndexError, ValueError, struct.error) as exc:
        raise CannotSkip(f"malformed {t.name} column: {exc}") from None
    if end > len(buf):
        raise CannotSkip("column data runs past the block")
    return end


@dataclass(frozen=True)
class ColumnHeader:
    index: int
    name: str
    type_name: str
    type_start: int  # offset of the type name's length prefix
    type_end: int  # offset just after the type name (where the data starts)


def block_headers(buf: bytes | memoryview, wanted: int | None = None) -> list[ColumnHeader]:
    """The column headers of the Native block *buf* (a chdb block: no block info).

    Stops after column index *wanted* when given. Raises :class:`CannotSkip` when a column
    before it cannot be measured.
    """
    columns, pos = read_varint(buf, 0)
    rows, pos = read_varint(buf, pos)
    headers: list[ColumnHeader] = []
    for index in range(columns):
        size, pos = read_varint(buf, pos)
        name = bytes(buf[pos : pos + size]).decode("utf-8", "replace")
        pos += size
        type_start = pos
        size, pos = read_varint(buf, pos)
        type_name = bytes(buf[pos : pos + size]).decode("utf-8", "replace")
        pos += size
        headers.append(ColumnHeader(index, name, type_name, type_start, pos))
        if wanted is not None and index >= wanted:
            break
        if index + 1 < columns:
            pos = skip_column(buf, pos, parse_type(type_name), rows)
    return headers


def zone_stripped_columns(buf: bytes | memoryview) -> list[int]:
    """Indexes of the top-level columns chdb announced as plain ``DateTime``.

    Raises :class:`CannotSkip` when a column before the last one cannot be measured (then
    which later columns are DateTime is unknown).
    """
    return [h.index for h in block_headers(buf) if h.type_name == "DateTime"]


def _encode_string(text: str) -> bytes:
    raw = text.encode()
    out = bytearray()
    size = len(raw)
    while True:
        byte = size & 0x7F
        size >>= 7
        out.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(out) + raw


class NativeRewriter:
    """Makes chdb's Native blocks what a client of *revision* expects (module docs).

    *zones* maps a column index to its full type name (``DateTime('America/Chicago')``), for
    the columns chdb names plain ``DateTime`` although they carry a zone.
    """

    def __init__(self, revision: int, zones: dict[int, str] | None = None) -> None:
        self.revision = revision
        self.zones = dict(zones or {}) if revision >= MIN_REVISION_WITH_ZONE_IN_DATETIME else {}
        self._last = max(self.zones, default=-1)
        self.unfixed_blocks = 0

    def block(self, data: bytes | memoryview) -> bytes:
        """One chdb block (one streamed chunk) as the client expects it."""
        if not data:
            return b""
        prefix = BLOCK_INFO if self.revision >= MIN_REVISION_WITH_BLOCK_INFO else b""
        if not self.zones:
            return prefix + bytes(data)
        try:
            headers = block_headers(data, wanted=self._last)
        except CannotSkip:
            self.unfixed_blocks += 1
            return prefix + bytes(data)
        parts = [prefix]
        pos = 0
        for header in headers:
            zoned = self.zones.get(header.index)
            if zoned is not None and header.type_name == "DateTime":
                parts.append(bytes(data[pos : header.type_start]))
                parts.append(_encode_string(zoned))
                pos = header.type_end
        parts.append(bytes(data[pos:]))
        return b"".join(parts)

    def blocks(self, data: bytes | memoryview) -> bytes:
        """A buffered result (possibly several blocks, one after another) block by block."""
        out: list[bytes] = []
        pos, view = 0, memoryview(data)
        while pos < len(view):
            end = _block_end(view, pos)
            out.append(self.block(view[pos:end]))
            pos = end
        return b"".join(out)


def _block_end(view: memoryview, start: int) -> int:
    """Where the block starting at *start* ends; the whole rest if it cannot be measured."""
    try:
        block = view[start:]
        columns, pos = read_varint(block, 0)
        rows, pos = read_varint(block, pos)
        for _ in range(columns):
            size, pos = read_varint(block, pos)
            pos += size
            size, pos = read_varint(block, pos)
            type_name = bytes(block[pos : pos + size]).decode()
            pos += size
            pos = skip_column(block, pos, parse_type(type_name), rows)
        return start + pos
    except (CannotSkip, UnicodeDecodeError):
        return len(view)


def zoned_types(described: Sequence[tuple[str, str]], stripped: Sequence[int]) -> dict[int, str]:
    """From ``DESCRIBE``'s (name, type) rows: the full type of each stripped column index."""
    zones: dict[int, str] = {}
    for index in stripped:
        if index < len(described) and described[index][1].startswith("DateTime("):
            zones[index] = described[index][1]
    return zones
