"""Forged, garbled and inconsistent rv.* headers: every event still ends stored or dead-lettered.

Anyone who can write to events.raw can write headers. A message marked as a redrive
(``rv.redrive_of``) whose other headers do not describe a letter exactly is dead-lettered
whole as BadRedrive; rv.* headers without the marker are ignored.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from agents import dlq
from agents.codec import BatchWriter, frame, writer_schema
from agents.records import MAX_TIMESTAMP_MS, SourceMeta
from agents.validate import Validator

NOW = 1_796_116_500_000
META = SourceMeta("events.raw", 1, 500, NOW)
BATCH_ID, EVENT_ID = 10, 11
SCHEMAS = {
    BATCH_ID: writer_schema(BATCH_ID, schemas.schema_str(schemas.EVENT_BATCH)),
    EVENT_ID: writer_schema(EVENT_ID, schemas.schema_str(schemas.EVENT)),
}
validator = Validator()


def event(user: str = "u1", **kw: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "project_id": "default", "event_name": "page_view",
            "user_id": user, "timestamp": NOW - 1000, "properties": {},
            "context": {"ip": None, "user_agent": None, "library": None, "received_at": NOW - 5},
            **kw}


def batch(n: int) -> bytes:
    return BatchWriter(schemas.EVENT_BATCH, BATCH_ID).encode([event(f"u{i}") for i in range(n)])


def letter_headers(**overrides: str) -> dict[str, str]:
    h = {dlq.H_REDRIVE_OF: "0:12", dlq.H_SOURCE_TOPIC: "events.raw", dlq.H_SOURCE_PARTITION: "2",
         dlq.H_SOURCE_OFFSET: "41", dlq.H_EVENT_INDEX: "1", dlq.H_ATTEMPT: "2",
         dlq.H_FIRST_FAILED_AT: str(NOW - 60_000)}
    h.update(overrides)
    return {k: v for k, v in h.items() if v != "<absent>"}


def validate(raw: bytes, headers: dict[str, str]) -> Any:
    return validator.validate_message(raw, None, META, SCHEMAS, NOW,
                                      redrive=dlq.redrive_of(headers, META))


def test_a_well_formed_redrive_is_read_exactly() -> None:
    r = dlq.redrive_of(letter_headers(), META)
    assert r == dlq.Redrive(SourceMeta("events.raw", 2, 41, NOW), 1, 2, NOW - 60_000)


def test_rv_headers_without_the_redrive_marker_are_ignored() -> None:
    headers = letter_headers(**{dlq.H_REDRIVE_OF: "<absent>", dlq.H_EVENT_INDEX: "9"})
    assert dlq.redrive_of(headers, META) is None
    result = validate(batch(3), headers)
    assert len(result.clean) == 3 and not result.invalid


def test_an_event_index_the_message_does_not_hold_is_a_bad_redrive_not_a_vanished_event() -> None:
    raw = batch(3)
    result = validate(raw, letter_headers(**{dlq.H_EVENT_INDEX: "3"}))
    [letter] = result.invalid
    assert result.clean == [] and result.skipped == 0
    assert letter.error_class == "BadRedrive" and letter.index is None and letter.raw == raw
    assert "rv.event_index 3" in letter.reason and "holds 3" in letter.reason


def test_a_redrive_stands_for_its_one_event_and_counts_the_others_as_skipped() -> None:
    result = validate(batch(4), letter_headers(**{dlq.H_EVENT_INDEX: "2"}))
    assert [e["user_id"] for e in result.clean] == ["u2"] and result.skipped == 3


def test_a_single_event_message_has_only_index_zero() -> None:
    single = BatchWriter(schemas.EVENT_BATCH, BATCH_ID).encode([event()])  # batch of one
    assert len(validate(single, letter_headers(**{dlq.H_EVENT_INDEX: "0"})).clean) == 1
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schemas.load(schemas.EVENT)), event())
    result = validate(frame(EVENT_ID, buf.getvalue()), letter_headers(**{dlq.H_EVENT_INDEX: "1"}))
    assert [i.error_class for i in result.invalid] == ["BadRedrive"]


@pytest.mark.parametrize(
    ("header", "value", "named"),
    [
        (dlq.H_EVENT_INDEX, "-1", "rv.event_index"),
        (dlq.H_EVENT_INDEX, " 1", "rv.event_index"),
        (dlq.H_EVENT_INDEX, "1_0", "rv.event_index"),
        (dlq.H_EVENT_INDEX, "\u0663", "rv.event_index"),  # an Arabic-Indic 3: int() takes it
        (dlq.H_EVENT_INDEX, "+1", "rv.event_index"),
        (dlq.H_EVENT_INDEX, str(2**31), "rv.event_index"),
        (dlq.H_SOURCE_OFFSET, "<absent>", "rv.source_offset is missing"),
        (dlq.H_SOURCE_OFFSET, str(2**63), "rv.source_offset"),
        (dlq.H_SOURCE_PARTITION, "x", "rv.source_partition"),
        (dlq.H_SOURCE_TOPIC, "<absent>", "rv.source_topic is missing"),
        (dlq.H_SOURCE_TOPIC, "a topic with spaces", "rv.source_topic"),
        (dlq.H_SOURCE_TOPIC, "t" * 250, "rv.source_topic"),
        (dlq.H_ATTEMPT, "0", "rv.attempt"),
        (dlq.H_ATTEMPT, "99999999999999999999", "rv.attempt"),
        (dlq.H_FIRST_FAILED_AT, str(MAX_TIMESTAMP_MS + 1), "rv.first_failed_at"),
        (dlq.H_FIRST_FAILED_AT, "\ufffd", "rv.first_failed_at"),
        (dlq.H_REDRIVE_OF, "yes", "rv.redrive_of"),
    ],
)
def test_a_garbled_redrive_header_dead_letters_the_message_naming_the_header(
    header: str, value: str, named: str
) -> None:
    raw = batch(2)
    headers = letter_headers(**{header: value})
    r = dlq.redrive_of(headers, META)
    assert r is not None and r.error is not None and named in r.error
    # The new letter is the message's own: its position, attempt 1, failing now.
    assert (r.identity, r.attempt, r.first_failed_at_ms) == (META, 1, None)
    result = validate(raw, headers)
    assert result.clean == []
    [letter] = result.invalid
    assert letter.error_class == "BadRedrive" and named in letter.reason and letter.raw == raw


def test_parse_headers_never_raises_and_keeps_the_last_of_a_repeated_header() -> None:
    raw = [("rv.event_index", b"0"), ("rv.event_index", b"5"), (b"rv.attempt", b"\xff\xfe"),
           ("rv.reason", None), ("other", b"x"), ("rv.stage", "validate"), ("broken",), 7]
    assert dlq.parse_headers(raw) == {"rv.event_index": "5", "rv.attempt": "\ufffd\ufffd",
                                      "rv.reason": "", "rv.stage": "validate"}
    assert dlq.parse_headers(None) == {} and dlq.parse_headers({"rv.x": b"1"}) == {"rv.x": "1"}


def test_an_empty_batch_is_a_dead_letter_not_a_message_that_vanishes() -> None:
    raw = BatchWriter(schemas.EVENT_BATCH, BATCH_ID).encode([])
    result = validator.validate_message(raw, None, META, SCHEMAS, NOW)
    assert result.clean == [] and [i.error_class for i in result.invalid] == ["EmptyBatch"]


_header_values = st.one_of(
    st.integers(-3, 6).map(str), st.text(max_size=6), st.binary(max_size=4).map(
        lambda b: b.decode("utf-8", "replace")), st.just("<absent>"),
)


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(0, 5),
    marked=st.booleans(),
    forged=st.dictionaries(
        st.sampled_from([dlq.H_EVENT_INDEX, dlq.H_SOURCE_OFFSET, dlq.H_SOURCE_PARTITION,
                         dlq.H_SOURCE_TOPIC, dlq.H_ATTEMPT, dlq.H_FIRST_FAILED_AT, dlq.H_REDRIVE_OF]),
        _header_values,
    ),
)
def test_whatever_the_headers_every_event_is_stored_dead_lettered_or_counted_as_skipped(
    n: int, marked: bool, forged: dict[str, str]
) -> None:
    headers = letter_headers(**forged)
    if not marked:
        headers.pop(dlq.H_REDRIVE_OF, None)
    result = validate(batch(n), headers)
    whole = [i for i in result.invalid if i.index is None]
    if whole:  # the message as a whole is one letter, and nothing else came of it
        assert len(result.invalid) == 1 and result.clean == [] and result.skipped == 0
    else:
        assert n > 0
        assert len(result.clean) + len(result.invalid) + result.skipped == n
        assert len(result.clean) + len(result.invalid) >= 1
