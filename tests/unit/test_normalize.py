import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.collector.normalize import BadEvent, to_event, to_events

NOW = 1_796_116_500_000


def test_scalars_are_stringified_canonically_and_null_drops_the_key() -> None:
    ev = to_event(
        {"event": "purchase", "user_id": 42, "properties": {"price": 100, "tax": 19.5, "gift": False,
                                                           "coupon": None, "currency": "EUR"}},
        received_at_ms=NOW,
    )
    assert ev["user_id"] == "42"
    assert ev["properties"] == {"price": "100", "tax": "19.5", "gift": "false", "currency": "EUR"}
    assert ev["timestamp"] == NOW and ev["context"]["received_at"] == NOW


def test_price_as_string_and_as_number_land_as_the_same_text() -> None:
    a = to_event({"event": "p", "user_id": "u", "properties": {"price": "100"}}, received_at_ms=NOW)
    b = to_event({"event": "p", "user_id": "u", "properties": {"price": 100}}, received_at_ms=NOW)
    assert a["properties"] == b["properties"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "must be a JSON object"),
        ({"user_id": "u"}, "event is required"),
        ({"event": "x"}, "user_id is required"),
        ({"event": "x", "user_id": "u", "properties": {"a": {"b": 1}}}, "properties.a is an object"),
        ({"event": "x", "user_id": "u", "properties": {"a": [1]}}, "properties.a is an array"),
        ({"event": "x", "user_id": "u", "properties": {"a": math.inf}}, "not a finite number"),
        ({"event": "x", "user_id": "u", "timestamp": "yesterday"}, "not ISO-8601"),
        ({"event": "x", "user_id": "u", "event_id": "123"}, "event_id must be a UUID"),
    ],
)
def test_bad_payloads_name_the_problem(payload: object, message: str) -> None:
    with pytest.raises(BadEvent, match=message):
        to_event(payload, received_at_ms=NOW)


def test_iso_timestamps_are_utc_milliseconds() -> None:
    ev = to_event({"event": "x", "user_id": "u", "timestamp": "2026-11-28T09:15:02.120Z"}, received_at_ms=NOW)
    assert ev["timestamp"] == 1_795_857_302_120


def test_batch_errors_name_the_event_index() -> None:
    with pytest.raises(BadEvent, match=r"events\[1\]: user_id is required"):
        to_events({"events": [{"event": "a", "user_id": "u"}, {"event": "b"}]}, received_at_ms=NOW)
    with pytest.raises(BadEvent, match="holds no events"):
        to_events({"events": []}, received_at_ms=NOW)


@given(st.dictionaries(st.text(max_size=10), st.one_of(st.text(), st.integers(), st.booleans(),
                                                         st.floats(allow_nan=False, allow_infinity=False))))
def test_any_flat_scalar_properties_are_accepted_as_strings(props: dict) -> None:
    ev = to_event({"event": "x", "user_id": "u", "properties": props}, received_at_ms=NOW)
    assert set(ev["properties"]) == set(props)
    assert all(isinstance(v, str) for v in ev["properties"].values())
