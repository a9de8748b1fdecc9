"""One number, one spelling: a property's text does not depend on the path the number took.

The HTTP path is the collector's (`parse_body`, then `to_event`); the Avro path is a typed event
written straight to Kafka, decoded (through a reader schema when one is registered) and
validated. A group-by on the property must never split one value into two strings.
"""

from __future__ import annotations

import io
import json
import struct
import uuid
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from agents.codec import frame, with_reader, writer_schema
from agents.properties import canonical
from agents.records import SourceMeta
from agents.validate import Validator
from app.collector.normalize import BadEvent, parse_body, to_event

NOW = 1_796_116_500_000
META = SourceMeta("events.raw", 0, 1, NOW)
validator = Validator()


def http_price(literal: str) -> str:
    body = ('{"event": "purchase", "user_id": "u", "properties": {"price": ' + literal + "}}")
    return to_event(parse_body(body.encode()), received_at_ms=NOW)["properties"]["price"]


def _typed(price_type: Any) -> str:
    doc = schemas.load(schemas.EVENT)
    doc.update(name="Purchase", namespace="com.shop")
    doc["fields"] = [*doc["fields"], {"name": "price", "type": price_type}]
    return json.dumps(doc)


_READERS: dict[Any, Any] = {}


def avro_price(value: int | float, writer_type: Any, reader_type: Any = "double") -> str:
    """The stored text of *value* written as *writer_type*, read through *reader_type*."""
    key = (json.dumps(writer_type), json.dumps(reader_type))
    if key not in _READERS:
        w_text = _typed(writer_type)
        writer = writer_schema(20, w_text)
        resolved = writer if reader_type is None else with_reader(writer, 21, _typed(reader_type))
        assert resolved.resolution_error is None
        _READERS[key] = (fastavro.parse_schema(json.loads(w_text)), resolved)
    parsed, resolved = _READERS[key]
    record = {"event_id": str(uuid.uuid4()), "project_id": "default", "event_name": "purchase",
              "user_id": "u", "timestamp": NOW - 1, "properties": {},
              "context": {"ip": None, "user_agent": None, "library": None, "received_at": NOW},
              "price": value}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    result = validator.validate_message(frame(20, buf.getvalue()), None, META, {20: resolved}, NOW)
    assert not result.invalid, result.invalid
    return result.clean[0]["properties"]["price"]


def test_an_int_promoted_to_a_double_reader_reads_149_as_http_does() -> None:
    assert http_price("149") == "149"
    assert avro_price(149, "int") == "149"
    assert avro_price(149, "long") == "149"
    assert avro_price(149, ["null", "int"], ["null", "double"]) == "149"
    assert avro_price(149.0, "double", None) == "149"
    assert http_price("149.0") == "149"


def test_integers_of_any_size_keep_their_digits() -> None:
    assert http_price("12345678901234567890123") == "12345678901234567890123"
    assert http_price("-98765432109876543210987654321") == "-98765432109876543210987654321"
    assert avro_price(2**62 + 1, "long") == str(2**62 + 1)  # a double would round it
    assert canonical(10**40) == "1" + "0" * 40


def test_a_huge_integer_user_id_keeps_its_digits() -> None:
    body = b'{"event": "e", "user_id": 123456789012345678901234567890}'
    assert to_event(parse_body(body), received_at_ms=NOW)["user_id"] == "123456789012345678901234567890"


def test_parse_body_still_refuses_what_is_not_json() -> None:
    for body in (b"", b"{", b'{"a": NaN, "b": 12345678901234567890}', b"1e400"):
        with pytest.raises(BadEvent, match="empty|not valid JSON"):
            parse_body(body)
    # Digits inside strings only cost a second parse; the document is the same.
    doc = {"a": "12345678901234567890123", "b": [1.5, -0.0, True, None]}
    assert parse_body(json.dumps(doc).encode()) == doc


def test_canonical_spellings() -> None:
    assert [canonical(v) for v in (149.0, -0.0, 0.1, 19.5, 2.0**53, 1e16, 1e-7)] == [
        "149", "0", "0.1", "19.5", "9007199254740992", "1e+16", "1e-07"]
    assert canonical(True) == "true" and canonical(1) == "1" and canonical(None) is None


def test_a_32_bit_float_is_stored_as_the_decimal_it_was_written_from() -> None:
    assert avro_price(19.99, "float", None) == "19.99" == http_price("19.99")
    assert avro_price(0.1, "float") == "0.1"
    # In a union that may also hold a double, a value may be a double: it is left as it is.
    assert writer_schema(1, _typed(["null", "float"])).float32_fields == ("price",)
    assert writer_schema(1, _typed(["null", "float", "double"])).float32_fields == ()


INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(n=INT64, m=INT32, big=st.integers(2**64, 2**200))
def test_http_and_avro_agree_on_integers(n: int, m: int, big: int) -> None:
    assert http_price(str(n)) == avro_price(n, "long") == str(n)
    assert http_price(str(m)) == avro_price(m, "int") == avro_price(m, "int", "float") == str(m)
    assert http_price(str(big)) == str(big)
    assert http_price(str(-big)) == str(-big)


@settings(max_examples=200, deadline=None)
@given(d=FINITE, n=st.integers(-(2**53), 2**53))
def test_http_and_avro_agree_on_doubles(d: float, n: int) -> None:
    assert http_price(json.dumps(d)) == avro_price(d, "double", None) == canonical(d)
    # An integral double and the integer it is exactly: one spelling.
    assert http_price(str(n)) == http_price(json.dumps(float(n))) == avro_price(float(n), "double", None)


@settings(max_examples=200, deadline=None)
@given(mantissa=st.integers(-999_999, 999_999), exponent=st.integers(-30, 30))
def test_http_and_avro_agree_on_what_a_float_field_was_written_from(mantissa: int, exponent: int) -> None:
    # Up to 6 significant digits survive a round trip through a 32-bit float.
    literal = f"{mantissa}e{exponent}"
    stored32 = struct.unpack("<f", struct.pack("<f", float(literal)))[0]
    assert http_price(literal) == avro_price(stored32, "float") == avro_price(stored32, "float", None)
