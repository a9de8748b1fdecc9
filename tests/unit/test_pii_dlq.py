"""Personal data in dead letters: reasons, headers, previews, and the decoded views behind them.

A reason or a preview is redacted whole before it is cut; a preview is built from what decodes
(or from the strings an Avro body holds), never from raw bytes turned into text.
"""

from __future__ import annotations

import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from agents import dlq
from agents.codec import BatchWriter, frame, writer_schema
from agents.pii import KINDS, RedactionConfig, Redactor
from agents.pii.diagnostic import redact_diagnostic
from agents.pii.views import json_unescaped, url_decoded, views
from agents.preview import avro_strings, letter_preview
from agents.records import Invalid, SourceMeta
from tests.unit.pii_corpus import PiiMaker, leaked

SECRET = b"dlq-test-secret"
REDACTOR = Redactor(RedactionConfig(secret=SECRET))
MASK_ALL = Redactor(RedactionConfig(secret=SECRET, policies=dict.fromkeys(KINDS, "mask")))
SCHEMAS = {1: writer_schema(1, schemas.schema_str(schemas.EVENT_BATCH))}
WRITER = BatchWriter(schemas.EVENT_BATCH, 1)
META = SourceMeta("events.raw", 0, 42, 1_796_116_500_000)
CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@example.com"


def record(**props: str) -> dict[str, object]:
    return {
        "event_id": "0b6f7f3e-0d0c-4a55-9f5e-8d3c2a1b7e10", "project_id": "default",
        "event_name": "signup", "user_id": "u1", "timestamp": 1_796_116_500_000,
        "properties": props,
        "context": {"ip": None, "user_agent": None, "library": None, "received_at": None},
    }


def invalid(reason: str) -> Invalid:
    return Invalid("validate", "InvalidField", reason, META, b"raw", None, 0, 1)


# --- views -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("x%40example.com", "x@example.com"),
        ("a+b", "a b"),
        ("%C3%A9t%C3%A9", "été"),
        ("%E2%82", "\ufffd\ufffd"),  # a cut UTF-8 sequence
        ("100%", None),  # not an escape
    ],
)
def test_url_decoded_maps_every_character_back(text: str, decoded: str | None) -> None:
    view = url_decoded(text, plus=True)
    if decoded is None:
        assert view is None
        return
    assert view is not None and view[0] == decoded
    out, pos = view
    assert len(pos) == len(out) + 1 and pos[-1] == len(text)
    assert pos == sorted(pos)


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("call\\n030", "call\n030"),
        ("jane\\u0040x.com", "jane@x.com"),
        ("\\ud83d\\ude00 ok", "\U0001f600 ok"),
        ("a\\/b \\x40", "a/b @"),
        ("C:\\Users\\q", None),  # no valid escape: nothing decoded
    ],
)
def test_json_unescaped(text: str, decoded: str | None) -> None:
    view = json_unescaped(text)
    assert (view[0] if view else None) == decoded


def test_nested_views_reach_double_encoding() -> None:
    assert "@" in [v for v, _ in views("%2540")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://x.io/?email=jane%40example.com&ref=1", "https://x.io/?email=[email]&ref=1"),
        ("contact=4111+1111+1111+1111&ok=1", "contact=[card]&ok=1"),
        ("tel=%2B49%2030%2012345678", "tel=[phone]"),
        ("u=https%3A%2F%2Fa.io%2F%3Fe%3Djane%2540example.com", "u=https%3A%2F%2Fa.io%2F%3Fe%3D[email]"),
        ('{"note":"call\\n030 1234567"}', '{"note":"call\\n[phone]"}'),
        ("jane\\u002edoe\\u0040example\\u002ecom", "[email]"),
        ("auth=bearer%20abc123DEF456ghi789", "auth=bearer%20[bearer]"),
    ],
)
def test_pii_is_found_in_encoded_text_and_masked_in_place(text: str, expected: str) -> None:
    assert MASK_ALL.redact_text(text)[0] == expected


def test_an_encoded_value_hashes_like_the_plain_one() -> None:
    plain = REDACTOR.redact_text(EMAIL)[0]
    assert REDACTOR.redact_text("jane.doe%40example.com")[0] == plain
    assert REDACTOR.redact_text("jane.doe\\u0040example.com")[0] == plain


# --- reasons -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        "event_name 'call 4111 1111 1111' does not match",  # a card cut to 12 digits
        "property key 'mail jane.doe@exa'... is too long",  # an email cut in its domain
        "property key 'jane.doe%40examp'... is too long",
        "event_name 'x 030/1234' does not match",
    ],
)
def test_a_value_cut_before_it_reached_the_reason_is_still_masked(reason: str) -> None:
    out = redact_diagnostic(reason)
    assert "1111 1111" not in out and "jane.doe" not in out and "1234" not in out, out


def test_reason_header_is_redacted_whole_then_cut_at_a_character_boundary() -> None:
    # The card straddles the 1024-byte cut: cutting first would leave 12 digits.
    reason = "é" * 505 + " call " + CARD + " " + EMAIL + " and more"
    [value] = [v for k, v in dlq.headers(invalid(reason), 0) if k == dlq.H_REASON]
    assert len(value) <= dlq.MAX_REASON_BYTES
    text = value.decode("utf-8")  # strict: never cut inside a character
    assert "1111" not in text and "jane" not in text


def test_letter_row_redacts_a_reason_written_unredacted() -> None:
    row = dlq.letter_row(0, 1, 0, b"x", {dlq.H_REASON: f"event_name '{CARD}' is bad"}, "")
    assert CARD not in str(row["reason"]) and "[card]" in str(row["reason"])


@pytest.mark.parametrize(
    "reason",
    [
        "io.rearview.Event schema 12 cannot be read as the pipeline's schema 3: field 'price'",
        "timestamp is further in the past than allowed: 2025-11-28T10:30:45.123Z is more than"
        " 365 days before its receive time 2026-11-29T10:30:45.000Z",
        "redrive header rv.source_offset 12345678901 is outside 0..9223372036854775807",
    ],
)
def test_reasons_keep_what_helps_fix_a_producer(reason: str) -> None:
    assert redact_diagnostic(reason) == reason


# --- previews ----------------------------------------------------------------------------------


def test_decodable_letter_preview_redacts_each_string_of_the_event() -> None:
    value = WRITER.encode([record(a="ok"), record(note=f"call\n030 1234567 or {CARD}", **{EMAIL: "1"})])
    preview = letter_preview(value, {dlq.H_EVENT_INDEX: "1"}, SCHEMAS.get, MASK_ALL)
    shown = orjson.loads(preview)
    assert shown["properties"] == {"note": "call\n[phone] or [card]", "[email]": "1"}
    assert shown["timestamp"] == 1_796_116_500_000  # numbers stay numbers


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.8, 0.97])
def test_truncated_message_preview_is_shape_and_redacted_strings(cut: float) -> None:
    padding = "x" * 40  # a 40-byte string: its length prefix 'P' is a printable byte
    value = WRITER.encode([record(pad=padding, note=CARD, mail=EMAIL, p="030/12345678")] * 3)
    broken = value[: int(len(value) * cut)]
    preview = letter_preview(broken, {}, SCHEMAS.get, MASK_ALL)
    shown = orjson.loads(preview)["undecodable"]
    assert shown["bytes"] == len(broken) and shown["schema_id"] == 1
    for secret in (CARD, EMAIL, "030/12345678", "1111 1111", "12345678"):
        assert secret not in preview
    assert not any(0x00 <= ord(c) < 0x20 for c in "".join(shown["strings"]))


def test_unknown_schema_and_wrong_magic_byte_show_no_raw_bytes() -> None:
    value = WRITER.encode([record(note=f"{CARD} {EMAIL}")])
    for broken in (frame(999, value[5:]), b"\x07" + value[1:]):
        preview = letter_preview(broken, {}, SCHEMAS.get, MASK_ALL)
        assert "undecodable" in preview
        assert "4111" not in preview and "jane" not in preview
        assert "signup" in preview  # what helps: the strings the body holds


def test_text_sent_to_the_wrong_topic_is_redacted_whole() -> None:
    body = orjson.dumps({"event": "signup", "email": EMAIL, "n": 4111111111111111})
    shown = orjson.loads(letter_preview(body, {}, SCHEMAS.get, MASK_ALL))
    assert shown == {"event": "signup", "email": "[email]", "n": "[card]"}
    text = ("x" * 600 + f" call {CARD}").encode()  # the card lies past the old 512-byte cut
    assert CARD not in letter_preview(text, {}, SCHEMAS.get, MASK_ALL)


def test_avro_strings_recovers_every_string_of_an_event() -> None:
    value = WRITER.encode([record(country="DE", note="a value of more than sixteen chars")])
    strings, unread = avro_strings(value[5:])
    assert strings == ["0b6f7f3e-0d0c-4a55-9f5e-8d3c2a1b7e10", "default", "signup", "u1",
                       "country", "DE", "note", "a value of more than sixteen chars"]
    assert unread == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), cut=st.floats(0.05, 1.0), magic=st.booleans())
def test_no_planted_value_survives_in_an_undecodable_preview(seed: int, cut: float, magic: bool) -> None:
    rng = random.Random(seed)
    maker = PiiMaker(rng)
    planted = [maker.any() for _ in range(6)]
    props = {f"k{i}": f"{rng.choice(['', 'x ', 'see: '])}{p.value}" for i, p in enumerate(planted)}
    value = WRITER.encode([record(**props)])
    broken = value[: max(6, int(len(value) * cut))]
    if magic:
        broken = b"\x01" + broken[1:]
    preview = letter_preview(broken, {}, {}.get, REDACTOR)
    assert not [p.value for p in planted if leaked(p, preview)]


def test_the_leak_check_reads_a_written_number_but_not_neighbouring_json_fields() -> None:
    from tests.unit.pii_corpus import Planted

    ssn = Planted("ssn", "ssn/bare", "017961012", "017961012")
    assert leaked(ssn, "note: 017-96-1012 (call back)")
    assert leaked(ssn, "id 0179 61012")
    assert not leaked(ssn, '{"n": 0,"timestamp":1796101265884}'), "a 0 and a timestamp are two numbers"


def test_a_letter_names_its_project_unless_personal_data_is_in_the_project_id() -> None:
    def project_of(project_id: str | None) -> str:
        letter = Invalid("validate", "InvalidField", "timestamp is too old", META, b"raw",
                         project_id=project_id)
        return dlq.letter_row(0, 1, 0, b"raw", {k: v.decode() for k, v in dlq.headers(letter, 0)},
                              "")["project_id"]  # type: ignore[return-value]

    assert project_of("shop") == "shop"
    assert project_of(None) == ""  # the event could not be read: no project's key sees it
    assert project_of("LI3889110141114289341") == ""  # an IBAN is nobody's project id
