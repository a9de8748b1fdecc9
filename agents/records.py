"""Typed records passed between the stages: what a raw message was, what came out of it."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Literal, TypedDict

# Every stored timestamp goes into events.ts / events.received_at (DateTime64(3, 'UTC'),
# 1900-01-01 .. 2299-12-31) and, through its window, into a rollup's window_start
# (DateTime('UTC'), 1970-01-01 00:00:00 .. 2106-02-07 06:28:15). Epoch milliseconds in this
# closed range fit all of them (a window starts at or before its events).
MIN_TIMESTAMP_MS = 0
MAX_TIMESTAMP_MS = (2**32 - 1) * 1000 + 999

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def canonical_uuid(value: str) -> str:
    """``str(uuid.UUID(value))``: the lowercase hyphenated text of a UUID, or the same
    exceptions. Text already in that form (what SDKs and generators send) is returned as it
    is, without building a UUID object: a tenth of the cost, paid per event."""
    if type(value) is str and _CANONICAL_UUID.fullmatch(value):
        return value
    return str(uuid.UUID(value))


@dataclass(frozen=True, slots=True)
class SourceMeta:
    """Where a raw message came from. With an event's index inside it, its identity."""

    topic: str
    partition: int
    offset: int
    # The Kafka message timestamp (CreateTime unless the topic uses LogAppendTime; -1: none).
    # Producer-set data: the validate stage only uses it as the message's entry time, bounded
    # by its own clock (see agents/validate.py).
    timestamp_ms: int


class CleanEvent(TypedDict):
    """A validated event, flat: one row of the Arrow blocks written to events.clean."""

    event_id: str
    project_id: str
    event_name: str
    user_id: str
    timestamp: int  # epoch milliseconds, UTC
    properties: dict[str, str]
    ip: str | None
    user_agent: str | None
    library: str | None
    received_at: int  # epoch milliseconds, UTC
    schema_id: int
    source_partition: int
    source_offset: int
    source_index: int


Stage = Literal["decode", "validate", "redact", "sink"]


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message, or one event inside a message, that cannot enter the pipeline.

    ``raw`` is always the original message bytes, unchanged; ``index`` says which event inside
    a batch message is meant (None when the message as a whole could not be decoded).
    """

    stage: Stage
    error_class: str
    reason: str
    source: SourceMeta
    raw: bytes
    key: bytes | None = None
    index: int | None = None
    schema_id: int | None = None
    # A redriven letter that fails again keeps its first failure time and counts attempts.
    attempt: int = 1
    first_failed_at_ms: int | None = None
    # The event's project, when the event could be read and names a well-formed one: the
    # letter is listed to that project's keys only (None: to operators only).
    project_id: str | None = None


@dataclass(slots=True)
class MessageResult:
    """The outcome of validating one raw message: every event in exactly one of the two lists,
    except the ``skipped`` ones, dropped on purpose: the other events of a batch whose redriven
    letter stands for one event only (they were stored when the message was first read)."""

    clean: list[CleanEvent] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
    skipped: int = 0
