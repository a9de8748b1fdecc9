"""Rejections of TrackBatch name the proto field from the reasons HTTP gives."""

from __future__ import annotations

import pytest

from agents.validate import Validator
from app.collector.normalize import BadEvent, to_event
from app.grpc_server import _peer_ip, field_of

NOW = 1_800_000_000_000


def _reason(obj: dict[str, object]) -> str:
    try:
        record = to_event(obj, received_at_ms=NOW)
    except BadEvent as exc:
        return str(exc)
    reason = Validator().check(record, NOW)
    assert reason is not None, obj
    return reason


@pytest.mark.parametrize(("obj", "field"), [
    ({"user_id": "u"}, "event_name"),
    ({"event": "", "user_id": "u"}, "event_name"),
    ({"event": "bad name!", "user_id": "u"}, "event_name"),
    ({"event": "e"}, "user_id"),
    ({"event": "e", "user_id": "u" * 300}, "user_id"),
    ({"event": "e", "user_id": "u", "event_id": "x"}, "event_id"),
    ({"event": "e", "user_id": "u", "timestamp": 1}, "timestamp"),
    ({"event": "e", "user_id": "u", "timestamp": NOW + 2 * 86_400_000}, "timestamp"),
    ({"event": "e", "user_id": "u", "properties": {"k": "v" * 9000}}, "properties.k"),
    ({"event": "e", "user_id": "u", "properties": {"it's a key": "v" * 9000}},
     "properties.it's a key"),
    ({"event": "e", "user_id": "u", "properties": {"a b": {"nested": 1}}}, "properties.a b"),
    ({"event": "e", "user_id": "u", "properties": {"k" * 200: "v"}}, "properties"),
    ({"event": "e", "user_id": "u", "properties": {str(i): "v" for i in range(300)}}, "properties"),
    ({"event": "e", "user_id": "u", "context": {"library": 1}}, "library"),
])
def test_field_of_names_the_field(obj: dict[str, object], field: str) -> None:
    assert field_of(_reason(obj)) == field


def test_peer_addresses() -> None:
    assert _peer_ip("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert _peer_ip("ipv6:[::1]:5555") == "::1"
    assert _peer_ip("unix:/tmp/sock") is None
