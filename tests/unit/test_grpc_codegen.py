"""The committed gRPC code is what schemas/analytics.proto generates, and keeps the seed's wire."""

from __future__ import annotations

from pathlib import Path

from schemas import analytics_pb2, codegen


def test_committed_code_matches_the_proto(tmp_path: Path) -> None:
    for fresh in codegen.generate(tmp_path):
        committed = codegen.SCHEMA_DIR / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"schemas/{fresh.name} is stale: run `python -m schemas.codegen` and commit it")


def test_the_seed_interface_is_unchanged() -> None:
    service = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]
    assert service.full_name == "AnalyticsService"  # no package: the seed's method paths
    track = service.methods_by_name["TrackEvent"]
    assert (track.input_type.full_name, track.output_type.full_name) == ("Event", "Ack")
    fields = {f.name: (f.number, f.type) for f in analytics_pb2.Event.DESCRIPTOR.fields}
    d = analytics_pb2.Event.DESCRIPTOR.fields_by_name
    assert {name: fields[name][0] for name in ("event_name", "user_id", "timestamp", "properties")} == {
        "event_name": 1, "user_id": 2, "timestamp": 3, "properties": 4}
    assert d["timestamp"].type == d["timestamp"].TYPE_INT64
    assert d["properties"].message_type.GetOptions().map_entry


def test_a_seed_message_reads_as_an_event_and_back() -> None:
    """Bytes a seed client writes (fields 1-4) parse; the added fields read as unset."""
    seed = analytics_pb2.Event(event_name="click", user_id="u", timestamp=5, properties={"a": "b"})
    read = analytics_pb2.Event.FromString(seed.SerializeToString())
    assert read == seed and read.event_id == "" and read.library == ""
