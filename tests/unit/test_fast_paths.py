"""The collector's fast paths give the answers of the slow ones they replace."""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents.records import canonical_uuid
from app.collector.normalize import _has_long_digits


@given(st.binary(max_size=200) | st.text("0123456789ab\" ,", max_size=200).map(str.encode))
def test_long_digit_runs_are_found_as_the_regex_finds_them(data: bytes) -> None:
    assert _has_long_digits(data) == (re.search(rb"[0-9]{19}", data) is not None)


@given(st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())
       | st.uuids().map(lambda u: u.hex) | st.uuids().map(lambda u: "{" + str(u) + "}")
       | st.text(max_size=40))
def test_canonical_uuid_is_str_of_uuid(text: str) -> None:
    try:
        expected: str | type[Exception] = str(uuid.UUID(text))
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            canonical_uuid(text)
    else:
        assert canonical_uuid(text) == expected
