"""Dead letters: the original bytes, unchanged, with headers that say what went wrong and where.

One dead letter per invalid event. A batch message with one bad event among good ones yields
one dead letter whose value is the whole original message and whose ``rv.event_index`` header
names the bad event; a message that could not be decoded at all has no index. Redrive (see
`rearview dlq`) decodes the value again and takes the event at that index, so nothing of the
original is lost or rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agents.records import Invalid, SourceMeta

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


H_REDRIVE_OF = "rv.redrive_of"


def headers(invalid: Invalid, failed_at_ms: int) -> list[tuple[str, bytes]]:
    """Kafka headers of the dead letter for *invalid*."""
    src = invalid.source
    attempt = invalid.attempt
    if invalid.first_failed_at_ms is not None:
        failed_at_ms = invalid.first_failed_at_ms
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


@dataclass(frozen=True, slots=True)
class Redrive:
    """What a redriven message's headers say about the letter it came from."""

    identity: SourceMeta  # the original raw message's position
    only_index: int | None
    attempt: int  # the attempt this redrive is
    first_failed_at_ms: int


def redrive_of(headers: dict[str, str], fallback: SourceMeta) -> Redrive | None:
    """The Redrive described by a raw message's headers, or None for an ordinary message."""
    if H_REDRIVE_OF not in headers:
        return None
    try:
        identity = SourceMeta(headers[H_SOURCE_TOPIC], int(headers[H_SOURCE_PARTITION]),
                              int(headers[H_SOURCE_OFFSET]), fallback.timestamp_ms)
        index = int(headers[H_EVENT_INDEX]) if H_EVENT_INDEX in headers else None
        return Redrive(identity, index, int(headers.get(H_ATTEMPT, "2")),
                       int(headers.get(H_FIRST_FAILED_AT, fallback.timestamp_ms)))
    except (KeyError, ValueError):
        return None


def redrive_headers(letter_headers: dict[str, str], letter: str) -> list[tuple[str, bytes]]:
    """Headers of the raw message that redrives a letter (*letter* is "partition:offset")."""
    keep = (H_SOURCE_TOPIC, H_SOURCE_PARTITION, H_SOURCE_OFFSET, H_EVENT_INDEX, H_FIRST_FAILED_AT)
    out = [(k, letter_headers[k].encode()) for k in keep if k in letter_headers]
    attempt = int(letter_headers.get(H_ATTEMPT, "1")) + 1
    return [*out, (H_ATTEMPT, str(attempt).encode()), (H_REDRIVE_OF, letter.encode())]


def parse_headers(
    raw: list[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None,
) -> dict[str, str]:
    """Dead-letter headers as text, for listing and redrive."""
    items = raw.items() if isinstance(raw, Mapping) else (raw or [])
    return {k: (v or b"").decode("utf-8", "replace") for k, v in items if k.startswith("rv.")}


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
