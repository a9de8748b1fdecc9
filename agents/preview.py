"""Dead-letter previews: what a person may see of a letter in the `dlq` table.

A preview is built from what could be decoded, and every string in it is redacted *before*
anything is cut; raw bytes are never shown as text.

* A letter that decodes with its writer schema (it broke a rule, or its reader could not read
  it): the event, as JSON, with every string in it (keys, values, context) redacted one by one
  under the worker's PII policy. Numbers stay numbers unless a detector matches their digits.
* A message that does not decode, framed (magic byte 0) or not: its *shape*, ``{"undecodable":
  {"bytes": N, "schema_id": ..., "strings": [...], "unread_bytes": M}}``. The strings are those
  an Avro body holds, recovered by walking length prefixes (a zigzag varint, then that many
  bytes of UTF-8 text), each shown only when it is complete in the message, and each redacted
  with `redact_diagnostic` (masks, and masks fragments: digits, anything at an '@', long
  tokens), since the recovered boundaries are a guess.
* A value that is text (valid UTF-8, no binary bytes), e.g. JSON sent to the wrong topic: parsed
  as JSON and redacted like an event when it parses, else redacted as a whole, then shown.

Pure: the schema lookup and the redactor are passed in. Never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from agents import dlq
from agents.codec import FramingError, Kind, WriterSchema, decode, split_frame
from agents.pii import Redactor
from agents.pii.diagnostic import redact_diagnostic

# Strings are looked for in the first WALK_BYTES of a body (each one read whole, however long),
# until STRINGS_CHARS characters of them are found: the preview is cut at 2 KB anyway.
WALK_BYTES = 16_384
STRINGS_CHARS = 4_096
MIN_STRING = 2
MAX_STRING = 65_536
# Text larger than this is redacted as diagnostic text (fragments masked), since only its start
# is shown and a value may straddle where it is cut.
TEXT_WHOLE_CHARS = 65_536
_WORK_BUDGET = 4_000_000  # bytes examined by the string walk, at most

_TEXT_BYTES = re.compile(rb"[\t\n\r\x20-\x7e\x80-\xff]*")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def letter_preview(
    value: bytes | None,
    headers: Mapping[str, str],
    schema_of: Callable[[int], WriterSchema | None],
    redactor: Redactor,
) -> str:
    """The preview of one dead letter (*headers* parsed, see `dlq.parse_headers`)."""
    if not value:
        return ""

    def redact(text: str) -> str:
        return redactor.redact_text(text)[0]

    try:
        schema_id, body = split_frame(value)
    except FramingError:
        return _unframed(value, redact)
    schema = schema_of(schema_id)
    if schema is not None:
        try:
            # A letter the reader could not read still shows as its writer wrote it.
            decoded = decode(body, replace(schema, reader=None))
            if schema.kind is Kind.BATCH:
                decoded = decoded["events"][int(headers.get(dlq.H_EVENT_INDEX, "0"))]
            return _json(redact_tree(decoded, redact))
        except Exception:  # noqa: BLE001 - corrupted bodies raise many types; shown by shape
            pass
    return shape(value, body, schema_id)


def redact_tree(node: Any, redact: Callable[[str], str]) -> Any:
    """A decoded Avro or JSON value with every string in it redacted, keys included."""
    if isinstance(node, str):
        return redact(node)
    if isinstance(node, dict):
        return {redact(str(k)): redact_tree(v, redact) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [redact_tree(v, redact) for v in node]
    if node is None or isinstance(node, bool):
        return node
    if isinstance(node, int | float):
        text = repr(node)
        out = redact(text)
        return node if out == text else out
    if isinstance(node, bytes | bytearray):
        return f"<{len(node)} bytes>"
    return redact(str(node))


def avro_strings(body: bytes, walk_bytes: int = WALK_BYTES,
                 budget_chars: int = STRINGS_CHARS) -> tuple[list[str], int]:
    """(strings recovered from *body* by their Avro length prefixes, bytes left unread).

    A candidate string is a zigzag varint L >= MIN_STRING followed by L bytes of printable UTF-8
    text holding a letter or digit, wholly inside *body*. Counts, union indexes and longs can
    read as length prefixes too, so the candidates kept are those that together cover the most
    bytes without overlapping (a true string is covered whole; a misread one leaves the rest of
    its neighbours uncovered). Candidates start in the first *walk_bytes*; strings are returned
    in order until *budget_chars* characters are reached.
    """
    n = len(body)
    stop = min(n, walk_bytes)
    work = [0]
    found: dict[int, tuple[str, int]] = {}
    for i in range(stop):
        if work[0] >= _WORK_BUDGET:
            stop = i
            break
        candidate = _string_at(body, i, work)
        if candidate is not None:
            found[i] = candidate
    # best[i]: most bytes covered from offset i on; choice at i: skip a byte, or take found[i].
    best = [0] * (stop + 1)
    for i in range(stop - 1, -1, -1):
        best[i] = best[i + 1]
        if (candidate := found.get(i)) is not None:
            end = candidate[1]
            covered = end - i + (best[end] if end <= stop else 0)
            if covered >= best[i]:
                best[i] = covered
    out: list[str] = []
    chars = 0
    i = 0
    while i < stop and chars < budget_chars:
        candidate = found.get(i)
        if candidate is not None:
            end = candidate[1]
            if end - i + (best[end] if end <= stop else 0) == best[i]:
                out.append(candidate[0])
                chars += len(candidate[0])
                i = end
                continue
        i += 1
    return out, n - i


def _string_at(body: bytes, i: int, work: list[int]) -> tuple[str, int] | None:
    """(text, end offset) of a plausible Avro string whose length prefix starts at *i*."""
    read = _varint(body, i)
    if read is None:
        return None
    length, size = read
    start = i + size
    if not MIN_STRING <= length <= MAX_STRING or start + length > len(body):
        return None
    m = _TEXT_BYTES.match(body, start, start + length)
    work[0] += m.end() - start + 1 if m is not None else 1
    if m is None or m.end() != start + length:
        return None
    try:
        text = body[start : start + length].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not any(c.isalnum() for c in text):
        return None
    return text, start + length


def shape(value: bytes, body: bytes | None = None, schema_id: int | None = None) -> str:
    """The size, schema id and redacted recovered strings of an undecodable message."""
    strings, unread = avro_strings(body if body is not None else value)
    return _json(
        {
            "undecodable": {
                "bytes": len(value),
                "schema_id": schema_id,
                "strings": [redact_diagnostic(_CONTROL.sub(" ", s), everywhere=True)
                            for s in strings],
                "unread_bytes": unread,
            }
        }
    )


def _unframed(value: bytes, redact: Callable[[str], str]) -> str:
    """Not Confluent framing: text (JSON or not) when it all decodes, else its shape."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return shape(value)
    if len(_CONTROL.findall(text)) > len(text) // 100:  # binary that happens to be UTF-8
        return shape(value)
    try:
        return _json(redact_tree(orjson.loads(value), redact))
    except orjson.JSONDecodeError:
        pass
    text = _CONTROL.sub(" ", text)
    if len(text) <= TEXT_WHOLE_CHARS:
        return redact(text)
    return redact_diagnostic(redact(text[:TEXT_WHOLE_CHARS]), everywhere=True)


def _json(node: Any) -> str:
    return orjson.dumps(node, default=str).decode()


def _varint(data: bytes, i: int) -> tuple[int, int] | None:
    """(zigzag-decoded value, bytes read) of the Avro varint at *i*, or None."""
    result = 0
    shift = 0
    for k in range(10):
        if i + k >= len(data):
            return None
        b = data[i + k]
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), k + 1
        shift += 7
    return None
