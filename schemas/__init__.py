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
# Typed events: the base Event's fields plus typed ones, which the validate stage folds into
# properties as canonical strings. Producers with a typed schema get its checks at the source.
TYPED = {
    f"io.rearview.events.{name}": f"events/{stem}.avsc"
    for name, stem in (("PageView", "page_view"), ("ButtonClick", "button_click"),
                       ("Signup", "signup"), ("Purchase", "purchase"))
}
_FILES.update(TYPED)


def load(full_name: str) -> dict[str, Any]:
    """The schema named *full_name* as a JSON object."""
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / _FILES[full_name]).read_text())
    return schema


def schema_str(full_name: str) -> str:
    """The schema as compact JSON text, as it is registered."""
    return json.dumps(load(full_name), separators=(",", ":"))


def bundled() -> list[str]:
    """Full names of every schema Rearview ships, in registration order."""
    return list(_FILES)


def full_name(schema: Any) -> str:
    """The full name of a record schema (namespace.name), or "" for other schemas."""
    if isinstance(schema, dict) and schema.get("type") == "record":
        name = str(schema.get("name", ""))
        namespace = schema.get("namespace")
        return name if "." in name or not namespace else f"{namespace}.{name}"
    return ""


def subject(topic: str, full_name: str) -> str:
    """TopicRecordNameStrategy subject name."""
    return f"{topic}-{full_name}"


def examples() -> dict[str, Any]:
    """Example payloads by file stem: what the collector accepts."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(EXAMPLES_DIR.glob("*.json"))}


def avro_examples() -> dict[str, Any]:
    """Example records of the typed schemas by event name (schemas/examples/avro/)."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((EXAMPLES_DIR / "avro").glob("*.json"))}
