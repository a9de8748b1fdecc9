"""JSON track payloads to Avro Event records: pure, with errors that name the field.

Accepted shape (see schemas/examples/):
    {"event" | "event_name": str, "user_id": str | int, "timestamp"?: ISO-8601 | epoch ms,
     "event_id"?: uuid, "properties"?: {str: scalar}, "context"?: {"library"?: str}}

Property values are a map<string,string> in the schema. Scalars are stringified canonically,
so nothing is lost and the same value always gives the same text: a string stays as is, an
integer is its decimal digits, a float its shortest round-trip repr (100.0 -> "100.0"),
true/false become "true"/"false", and null drops the key. Nested objects and arrays are
refused with 400 naming the key: flattening guesses a structure the producer did not state.
NaN and infinity are refused (they are not JSON).
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timezone
from typing import Any

from agents.properties import canonical
from app.exceptions import RearviewError


class BadEvent(RearviewError):
    """A malformed track payload; the message names the field (and the event's index)."""


def _fail(where: str, message: str) -> BadEvent:
    return BadEvent(f"{where}{message}")


def _stringify(where: str, key: str, value: Any) -> str | None:
    try:
        return canonical(value)
    except ValueError as exc:
        raise _fail(where, f"properties.{key} {exc}") from None


# Epoch milliseconds from 1970 to the end of year 9999: what DateTime64(3) and Avro's long hold.
MAX_TIMESTAMP_MS = 253_402_300_799_999


def _timestamp_ms(where: str, value: Any, default_ms: int) -> int:
    ms = _parse_timestamp_ms(where, value, default_ms)
    if not 0 <= ms <= MAX_TIMESTAMP_MS:
        raise _fail(where, "timestamp is outside 1970-01-01 .. 9999-12-31")
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
        return int(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            raise _fail(where, f"timestamp {value[:40]!r} is not ISO-8601") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        try:
            return int(parsed.timestamp() * 1000)
        except (OverflowError, ValueError, OSError):
            raise _fail(where, "timestamp is outside 1970-01-01 .. 9999-12-31") from None
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
            event_id = str(uuid.UUID(str(event_id)))
        except ValueError:
            raise _fail(where, "event_id must be a UUID") from None

    raw_props = obj.get("properties", {})
    if raw_props is None:
        raw_props = {}
    if not isinstance(raw_props, dict):
        raise _fail(where, "properties must be a JSON object")
    properties: dict[str, str] = {}
    for key, value in raw_props.items():
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
