"""Dead letters: the original bytes, unchanged, with headers that say what went wrong and where.

One dead letter per invalid event. A batch message with one bad event among good ones yields
one dead letter whose value is the whole original message and whose ``rv.event_index`` header
names the bad event; a message that could not be decoded at all has no index. Redrive (see
`rearview dlq`) decodes the value again and takes the event at that index, so nothing of the
original is lost or rewritten.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from agents.pii.diagnostic import redact_diagnostic
from agents.records import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, Invalid, SourceMeta

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
H_PROJECT = "rv.project_id"

MAX_REASON_BYTES = 1024


H_REDRIVE_OF = "rv.redrive_of"


def headers(invalid: Invalid, failed_at_ms: int) -> list[tuple[str, bytes]]:
    """Kafka headers of the dead letter for *invalid*.

    The reason may quote a field value: it is redacted (`redact_diagnostic`) whole, and only
    then cut to MAX_REASON_BYTES, at a character boundary.
    """
    src = invalid.source
    attempt = invalid.attempt
    if invalid.first_failed_at_ms is not None:
        failed_at_ms = invalid.first_failed_at_ms
    out = [
        (H_STAGE, invalid.stage.encode()),
        (H_ERROR_CLASS, invalid.error_class.encode()),
        (H_REASON, _cut(redact_diagnostic(invalid.reason), MAX_REASON_BYTES)),
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
    # A project id that a detector finds personal data in is the producer's mistake, not a
    # project: such a letter stays unattributed rather than carry it.
    if invalid.project_id is not None and redact_diagnostic(invalid.project_id) == invalid.project_id:
        out.append((H_PROJECT, invalid.project_id.encode()))
    return out


def _cut(text: str, max_bytes: int) -> bytes:
    """*text* as UTF-8, at most *max_bytes*, never ending inside a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return raw
    return raw[:max_bytes].decode("utf-8", "ignore").encode()


@dataclass(frozen=True, slots=True)
class Redrive:
    """What a redriven message's headers say about the letter it came from.

    ``error`` is set when the message is marked as a redrive (``rv.redrive_of``) but its other
    rv.* headers are missing, malformed or out of range: the message is then dead-lettered as a
    whole (error class ``BadRedrive``), never guessed at. ``identity`` is then the message's
    own position, ``attempt`` 1 and ``first_failed_at_ms`` None (the new letter fails now).
    """

    identity: SourceMeta  # the original raw message's position
    only_index: int | None
    attempt: int  # the attempt this redrive is
    first_failed_at_ms: int | None  # None: not given, the next failure is the first
    error: str | None = None


# Bounds of what a redrive header may say: the columns of the `dlq` table it ends up in
# (UInt32 partition and attempt, UInt64 offset, Int32 event_index, DateTime64 first_failed_at)
# and Kafka's own limits (topic names, int32 partitions, int64 offsets).
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_LETTER = re.compile(r"[0-9]{1,10}:[0-9]{1,19}")
_DIGITS = re.compile(r"[0-9]{1,19}")
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


class _BadHeader(ValueError):
    pass


def _number(headers: dict[str, str], name: str, low: int, high: int) -> int | None:
    """The header as an integer in [low, high], None when absent; _BadHeader otherwise.

    Only ASCII digits: ``int()`` would also take " 7", "+7", "7_0" and non-ASCII digits."""
    text = headers.get(name)
    if text is None:
        return None
    if not _DIGITS.fullmatch(text):
        raise _BadHeader(f"{name} is not a non-negative integer")
    value = int(text)
    if not low <= value <= high:
        raise _BadHeader(f"{name} {value} is outside {low}..{high}")
    return value


def _required(value: int | None, name: str) -> int:
    if value is None:
        raise _BadHeader(f"{name} is missing")
    return value


def redrive_of(headers: dict[str, str], fallback: SourceMeta) -> Redrive | None:
    """The Redrive described by a raw message's headers, or None for an ordinary message.

    Only ``rv.redrive_of`` makes a message a redrive: other rv.* headers on a message without
    it (a producer copying headers along) are ignored, and its events are validated as usual.
    A redrive whose headers do not describe a letter exactly gives a Redrive with ``error``.
    Whether ``rv.event_index`` names an event of the message is checked when it is decoded.
    """
    if H_REDRIVE_OF not in headers:
        return None
    try:
        if not _LETTER.fullmatch(headers[H_REDRIVE_OF]):
            raise _BadHeader(f"{H_REDRIVE_OF} is not PARTITION:OFFSET")
        topic = headers.get(H_SOURCE_TOPIC)
        if topic is None:
            raise _BadHeader(f"{H_SOURCE_TOPIC} is missing")
        if not _TOPIC.fullmatch(topic):
            raise _BadHeader(f"{H_SOURCE_TOPIC} is not a Kafka topic name")
        partition = _required(_number(headers, H_SOURCE_PARTITION, 0, _INT32_MAX), H_SOURCE_PARTITION)
        offset = _required(_number(headers, H_SOURCE_OFFSET, 0, _INT64_MAX), H_SOURCE_OFFSET)
        index = _number(headers, H_EVENT_INDEX, 0, _INT32_MAX)
        attempt = _number(headers, H_ATTEMPT, 1, _INT32_MAX)
        first_failed_at = _number(headers, H_FIRST_FAILED_AT, MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)
    except _BadHeader as exc:
        return Redrive(fallback, None, 1, None, error=f"redrive header {exc}")
    identity = SourceMeta(topic, partition, offset, fallback.timestamp_ms)
    return Redrive(identity, index, 2 if attempt is None else attempt, first_failed_at)


def redrive_headers(letter_headers: dict[str, str], letter: str) -> list[tuple[str, bytes]]:
    """Headers of the raw message that redrives a letter (*letter* is "partition:offset")."""
    keep = (H_SOURCE_TOPIC, H_SOURCE_PARTITION, H_SOURCE_OFFSET, H_EVENT_INDEX, H_FIRST_FAILED_AT)
    out = [(k, letter_headers[k].encode()) for k in keep if k in letter_headers]
    attempt = int(letter_headers.get(H_ATTEMPT, "1")) + 1
    return [*out, (H_ATTEMPT, str(attempt).encode()), (H_REDRIVE_OF, letter.encode())]


def parse_headers(
    raw: list[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None,
) -> dict[str, str]:
    """The rv.* headers as text, for listing and redrive.

    Any producer can write headers, so nothing here may raise: values that are not UTF-8 are
    decoded with replacement characters (and then fail whatever parses them), a key given as
    bytes is decoded the same way, anything else is skipped. A header repeated with several
    values keeps the last one, as Kafka's ``Headers.lastHeader`` does.
    """
    items = raw.items() if isinstance(raw, Mapping) else (raw or [])
    out: dict[str, str] = {}
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2:
            continue
        key, value = item
        if isinstance(key, (bytes, bytearray)):
            key = bytes(key).decode("utf-8", "replace")
        if not isinstance(key, str) or not key.startswith("rv."):
            continue
        if value is None:
            out[key] = ""
        elif isinstance(value, str):
            out[key] = value
        elif isinstance(value, (bytes, bytearray, memoryview)):
            out[key] = bytes(value).decode("utf-8", "replace")
    return out


PREVIEW_BYTES = 2048


def letter_row(
    partition: int,
    offset: int,
    timestamp_ms: int,
    value: bytes,
    headers: dict[str, str],
    preview: str,
) -> dict[str, object]:
    """The `dlq` table row of one dead letter (pure: headers already parsed).

    *preview* must already be redacted (see agents/preview.py); it is only cut here. The reason
    is redacted again, whole, before anything else: a letter written by another producer or an
    older worker may carry a reason that was cut before it was redacted.
    """

    def number(name: str, default: int = 0) -> int:
        try:
            return int(headers.get(name, default))
        except ValueError:
            return default

    schema_id = headers.get(H_SCHEMA_ID)
    return {
        "dlq_partition": partition,
        "dlq_offset": offset,
        "project_id": headers.get(H_PROJECT, ""),
        "source_topic": headers.get(H_SOURCE_TOPIC, ""),
        "source_partition": number(H_SOURCE_PARTITION),
        "source_offset": number(H_SOURCE_OFFSET),
        "event_index": number(H_EVENT_INDEX, -1),
        "stage": headers.get(H_STAGE, "unknown"),
        "error_class": headers.get(H_ERROR_CLASS, "unknown"),
        "reason": redact_diagnostic(headers.get(H_REASON, "")),
        "schema_id": int(schema_id) if schema_id and schema_id.isdigit() else None,
        "first_failed_at": number(H_FIRST_FAILED_AT, timestamp_ms),
        "failed_at": timestamp_ms,
        "attempt": number(H_ATTEMPT, 1),
        "size": len(value),
        "preview": preview[:PREVIEW_BYTES],
    }
