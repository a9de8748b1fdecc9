"""Typed records passed between the stages: what a raw message was, what came out of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypedDict


@dataclass(frozen=True, slots=True)
class SourceMeta:
    """Where a raw message came from. With an event's index inside it, its identity."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # Kafka message timestamp: the fallback for received_at.


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


@dataclass(slots=True)
class MessageResult:
    """The outcome of validating one raw message: every event in exactly one of the two lists."""

    clean: list[CleanEvent] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)
