"""What `track` makes of its arguments, and what the SDK reports through ``on_error``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypedDict

from agents.properties import canonical

VERSION = "0.1.0"
LIBRARY = f"rearview-python/{VERSION}"


class Event(TypedDict):
    """One event as the SDK queues it: the collector's JSON shape, every value final.

    ``timestamp`` is set when `track` is called (epoch milliseconds), not when the event is
    sent: queueing and retries must not move an event in time. Property values are already the
    canonical strings the pipeline stores (agents/properties.py), so every transport sends
    the same text."""

    event: str
    user_id: str
    event_id: str
    timestamp: int
    properties: dict[str, str]
    context: dict[str, str]


class DeliveryError(Exception):
    """Events that did not reach Rearview; passed to ``on_error``, never raised into the app."""

    def __init__(self, reason: str, events: Sequence[Event | Mapping[str, Any]] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.events = list(events)


class InvalidEvent(DeliveryError):
    """`track` refused the event's arguments (it was never queued)."""


class QueueFull(DeliveryError):
    """The queue was full: the event was dropped (``Client.dropped`` counts them)."""


class EventRejected(DeliveryError):
    """The collector refused the event (a 4xx, or a rejection in a gRPC BatchAck): not retried."""


class DeliveryFailed(DeliveryError):
    """Retries ran out, or shutdown's timeout passed, before the events were acknowledged."""


def _timestamp_ms(timestamp: datetime | int | None) -> int:
    if timestamp is None:
        return time.time_ns() // 1_000_000
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None:
            timestamp = timestamp.replace(tzinfo=UTC)
        return int(timestamp.timestamp() * 1000)
    if isinstance(timestamp, int) and not isinstance(timestamp, bool):
        return timestamp
    raise TypeError("timestamp must be a datetime or epoch milliseconds (int)")


def make_event(
    event: str,
    user_id: str | int,
    properties: Mapping[str, Any] | None = None,
    timestamp: datetime | int | None = None,
    event_id: str | uuid.UUID | None = None,
    library: str = LIBRARY,
) -> Event:
    """The queued form of one `track` call; ValueError/TypeError say what is wrong."""
    if not isinstance(event, str) or not event:
        raise ValueError("event must be a non-empty string (the event name)")
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)) or user_id == "":
        raise ValueError("user_id must be a non-empty string")
    props: dict[str, str] = {}
    for key, value in (properties or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"property key {key!r} is not a string")
        try:
            text = canonical(value)
        except ValueError as exc:
            raise ValueError(f"properties.{key} {exc}") from None
        if text is not None:
            props[key] = text
    return {
        "event": event,
        "user_id": str(user_id),
        "event_id": str(uuid.UUID(str(event_id)) if event_id is not None else uuid.uuid4()),
        "timestamp": _timestamp_ms(timestamp),
        "properties": props,
        "context": {"library": library},
    }
