"""Rearview's Avro schemas and example payloads, shipped as package data.

Subjects follow Confluent's TopicRecordNameStrategy (``<topic>-<record full name>``): many
event types share ``events.raw``, so one subject per topic (TopicNameStrategy) would force them
into a single schema, while RecordNameStrategy alone would couple topics that evolve separately.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SCHEMA_DIR = Path(__file__).resolve().parent
EXAMPLES_DIR = SCHEMA_DIR / "examples"

EVENT = "io.rearview.Event"
EVENT_BATCH = "io.rearview.EventBatch"

_FILES = {
    EVENT: "event.avsc",
    EVENT_BATCH: "event_batch.avsc",
}


def load(full_name: str) -> dict[str, Any]:
    """The schema named *full_name* as a JSON object."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / _FILES[full_name]).read_text())
    return schema


def schema_str(full_name: str) -> str:
    """The schema as compact JSON text, as it is registered."""
    return json.dumps(load(full_name), separators=(",", ":"))


def subject(topic: str, full_name: str) -> str:
    """TopicRecordNameStrategy subject name."""
    return f"{topic}-{full_name}"


def examples() -> dict[str, Any]:
    """Example payloads by file stem: what the collector accepts."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(EXAMPLES_DIR.glob("*.json"))}
