"""Dead letters: the original bytes, unchanged, with headers that say what went wrong and where.

One dead letter per invalid event. A batch message with one bad event among good ones yields
one dead letter whose value is the whole original message and whose ``rv.event_index`` header
names the bad event; a message that could not be decoded at all has no index. Redrive (see
`rearview dlq`) decodes the value again and takes the event at that index, so nothing of the
original is lost or rewritten.
"""

from __future__ import annotations

from agents.records import Invalid

H_STAGE = "rv.stage"
H_ERROR_CLASS = "rv.error_class"
H_REASON = "rv.reason"
H_SOURCE_TOPIC = "rv.source_topic"
H_SOURCE_PARTITION = "rv.source_partition"
H_SOURCE_OFFSET = "rv.source_offset"
H_EVENT_INDEX = "rv.event_index"
H_SCHEMA_ID = "rv.schema_id"
H_FIRST_FAILED_AT = "rv.first_failed_at"
H_ATTEMPT = "rv.attempt"

MAX_REASON_BYTES = 1024


def headers(invalid: Invalid, failed_at_ms: int, attempt: int = 1) -> list[tuple[str, bytes]]:
    """Kafka headers of the dead letter for *invalid*."""
    src = invalid.source
    out = [
        (H_STAGE, invalid.stage.encode()),
        (H_ERROR_CLASS, invalid.error_class.encode()),
        (H_REASON, invalid.reason.encode("utf-8", "replace")[:MAX_REASON_BYTES]),
        (H_SOURCE_TOPIC, src.topic.encode()),
        (H_SOURCE_PARTITION, str(src.partition).encode()),
        (H_SOURCE_OFFSET, str(src.offset).encode()),
        (H_FIRST_FAILED_AT, str(failed_at_ms).encode()),
        (H_ATTEMPT, str(attempt).encode()),
    ]
    if invalid.index is not None:
        out.append((H_EVENT_INDEX, str(invalid.index).encode()))
    if invalid.schema_id is not None:
        out.append((H_SCHEMA_ID, str(invalid.schema_id).encode()))
    return out


def parse_headers(raw: list[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Dead-letter headers as text, for listing and redrive."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in (raw or []) if k.startswith("rv.")}


PREVIEW_BYTES = 2048


def letter_row(
    partition: int,
    offset: int,
    timestamp_ms: int,
    value: bytes,
    headers: dict[str, str],
    preview: str,
) -> dict[str, object]:
    """The `dlq` table row of one dead letter (pure: headers already parsed)."""

    def number(name: str, default: int = 0) -> int:
        try:
            return int(headers.get(name, default))
        except ValueError:
            return default

    schema_id = headers.get(H_SCHEMA_ID)
    return {
        "dlq_partition": partition,
        "dlq_offset": offset,
        "source_topic": headers.get(H_SOURCE_TOPIC, ""),
        "source_partition": number(H_SOURCE_PARTITION),
        "source_offset": number(H_SOURCE_OFFSET),
        "event_index": number(H_EVENT_INDEX, -1),
        "stage": headers.get(H_STAGE, "unknown"),
        "error_class": headers.get(H_ERROR_CLASS, "unknown"),
        "reason": headers.get(H_REASON, ""),
        "schema_id": int(schema_id) if schema_id and schema_id.isdigit() else None,
        "first_failed_at": number(H_FIRST_FAILED_AT, timestamp_ms),
        "failed_at": timestamp_ms,
        "attempt": number(H_ATTEMPT, 1),
        "size": len(value),
        "preview": preview[:PREVIEW_BYTES],
    }
