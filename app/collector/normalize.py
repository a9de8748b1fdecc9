"""JSON track payloads to Avro Event records: pure, with errors that name the field.

Accepted shape (see schemas/examples/):
    {"event" | "event_name": str, "user_id": str | int, "timestamp"?: ISO-8601 | epoch ms,
     "event_id"?: uuid, "properties"?: {str: scalar}, "context"?: {"library"?: str}}

Property values are a map<string,string> in the schema. Scalars are stringified canonically
(agents/properties.py), so nothing is lost and the same number always gives the same text
whatever path it took: a string stays as is, an integer of any size is its decimal digits, an
integral float up to 2^53 is the integer's digits (149.0 -> "149"), any other float its
shortest round-trip repr (19.5 -> "19.5"), true/false become "true"/"false", and null drops the
key. Nested objects and arrays are refused with 400 naming the key: flattening guesses a
structure the producer did not state. NaN and infinity are refused (they are not JSON).

`parse_body` parses a request body so that integers keep their digits: orjson, the fast path,
turns an integer literal beyond 64 bits into a float (12345678901234567890123 becomes
1.2345678901234568e+22), so a body holding such a literal is parsed again with the standard
library, which keeps it an integer.

The receive time is the collector's: ``context.received_at`` is always ``received_at_ms``,
whatever the payload says. The timestamp must fit every column it goes into (1970-01-01 ..
2106-02-07); the time rules relative to the receive time are the validate stage's
(`Validator.check`), which the API applies before answering 202.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from agents.properties import canonical
from agents.records import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, canonical_uuid
from core.exceptions import RearviewError


class BadEvent(RearviewError):
    """A malformed track payload; the message names the field (and the event's index)."""


def _fail(where: str, message: str) -> BadEvent:
    return BadEvent(f"{where}{message}")


# Any integer literal orjson cannot hold (beyond -2^63 .. 2^64-1) has at least 19 digits in a
# row. Such a run may also be inside a string or a fraction: those bodies are merely parsed
# twice. Found by mapping every digit to "0" and anything else to " " and looking for 19 zeros:
# ~1 µs per KB, where the regex [0-9]{19} took ~25 (it retries at every digit of every run).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def _has_long_digits(data: bytes) -> bool:
    return _LONG_RUN in data.translate(_DIGITS_AS_ZERO)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(data: bytes) -> Any:
    """The JSON document in a request body, integers of any size as ints; BadEvent if none."""
    if not data:
        raise BadEvent("the request body is empty; send a JSON object")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BadEvent(f"the request body is not valid JSON: {exc}") from None
    if not _has_long_digits(data):
        return doc
    # orjson accepted it, so it is UTF-8 JSON without NaN or Infinity and at most 1024 levels
    # deep; only the numbers can come out differently.
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadEvent("the request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer beyond sys.get_int_max_str_digits() digits
        raise BadEvent(f"the request body is not valid JSON: {exc}") from None


def _stringify(where: str, key: str, value: Any) -> str | None:
    try:
        return canonical(value)
    except ValueError as exc:
        raise _fail(where, f"properties.{key} {exc}") from None


_RANGE = "1970-01-01 .. 2106-02-07"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_QUOTE_MAX = 64  # an unparsable timestamp string is quoted whole up to this length, else not


def _timestamp_ms(where: str, value: Any, default_ms: int) -> int:
    ms = _parse_timestamp_ms(where, value, default_ms)
    if not MIN_TIMESTAMP_MS <= ms <= MAX_TIMESTAMP_MS:
        raise _fail(where, f"timestamp is outside {_RANGE}")
    return ms


def _parse_timestamp_ms(where: str, value: Any, default_ms: int) -> int:
    if value is None:
        return default_ms
    if isinstance(value, bool):
        raise _fail(where, "timestamp must be an ISO-8601 string or epoch milliseconds")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _fail(where, "timestamp is not a finite number")
        return math.floor(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            quoted = repr(value) if len(value) <= _QUOTE_MAX else f"of {len(value)} characters"
            raise _fail(where, f"timestamp {quoted} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        try:
            # Integer arithmetic: float seconds * 1000 can land a millisecond short.
            return (parsed - _EPOCH) // timedelta(milliseconds=1)
        except OverflowError:
            raise _fail(where, f"timestamp is outside {_RANGE}") from None
    raise _fail(where, "timestamp must be an ISO-8601 string or epoch milliseconds")


def to_event(
    obj: Any,
    *,
    received_at_ms: int,
    project_id: str = "default",
    ip: str | None = None,
    user_agent: str | None = None,
    index: int | None = None,
) -> dict[str, Any]:
    """The Avro Event record for one JSON event, or BadEvent."""
    where = f"events[{index}]: " if index is not None else ""
    if not isinstance(obj, dict):
        raise _fail(where, "an event must be a JSON object")
    name = obj.get("event", obj.get("event_name"))
    if name is None:
        raise _fail(where, "event is required (the event name, e.g. \"button_click\")")
    if not isinstance(name, str) or not name:
        raise _fail(where, "event must be a non-empty string")
    user_id = obj.get("user_id")
    if user_id is None or isinstance(user_id, bool):
        raise _fail(where, "user_id is required")
    if isinstance(user_id, int):
        user_id = str(user_id)
    if not isinstance(user_id, str) or not user_id:
        raise _fail(where, "user_id must be a non-empty string")

    event_id = obj.get("event_id")
    if event_id is None:
        event_id = str(uuid.uuid4())
    else:
        try:
            event_id = canonical_uuid(str(event_id))
        except ValueError:
            raise _fail(where, "event_id must be a UUID") from None

    raw_props = obj.get("properties", {})
    if raw_props is None:
        raw_props = {}
    if not isinstance(raw_props, dict):
        raise _fail(where, "properties must be a JSON object")
    properties: dict[str, str] = {}
    for key, value in raw_props.items():
        if type(value) is str:  # the common case, what canonical() returns as it is
            properties[key] = value
            continue
        text = _stringify(where, key, value)
        if text is not None:
            properties[key] = text

    ctx = obj.get("context")
    if ctx is None:
        ctx = {}
    if not isinstance(ctx, dict):
        raise _fail(where, "context must be a JSON object")
    library = ctx.get("library")
    if library is not None and not isinstance(library, str):
        raise _fail(where, "context.library must be a string")
    return {
        "event_id": event_id,
        "project_id": project_id,
        "event_name": name,
        "user_id": user_id,
        "timestamp": _timestamp_ms(where, obj.get("timestamp"), received_at_ms),
        "properties": properties,
        "context": {
            "ip": ip,
            "user_agent": user_agent,
            "library": library if isinstance(library, str) else None,
            "received_at": received_at_ms,
        },
    }


def to_events(body: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """Events of a /v1/batch body: {"events": [...]} or a bare JSON array."""
    items = body.get("events") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise BadEvent('a batch is {"events": [...]} or a JSON array of events')
    if not items:
        raise BadEvent("the batch holds no events")
    return [to_event(item, index=i, **kwargs) for i, item in enumerate(items)]
