"""The gRPC collector against a real `rearview api`, with real gRPC clients.

A generated client (the seed's TrackEvent, and TrackBatch), a client that knows nothing but what
server reflection tells it (as grpcurl does), and the standard health service.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import httpx
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from app.embedded.process import ChildProcess, free_port, python_module, tcp_ready
from schemas import analytics_pb2, analytics_pb2_grpc
from tests.integration.conftest import HOST, Pipeline, Services, make_pipeline, wait_for

pytestmark = pytest.mark.integration


def _stub(pipeline: Pipeline) -> tuple[grpc.Channel, analytics_pb2_grpc.AnalyticsServiceStub]:
    channel = grpc.insecure_channel(pipeline.urls["api_grpc"])
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel, analytics_pb2_grpc.AnalyticsServiceStub(channel)


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_reflection_lists_the_service_and_health_says_serving(pipeline: Pipeline) -> None:
    pipeline.start_api()
    channel, _ = _stub(pipeline)
    with channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"AnalyticsService", "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection"} <= services
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "AnalyticsService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="NoSuchService"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        # What grpcurl does: build the request type from reflection alone, then call.
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindServiceByName("AnalyticsService").FindMethodByName("TrackEvent")
        event_cls = message_factory.GetMessageClass(method.input_type)
        ack_cls = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary("/AnalyticsService/TrackEvent",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=ack_cls.FromString)
        ack = call(event_cls(event_name="page_view", user_id="u-reflect"), timeout=10)
        assert uuid.UUID(ack.event_id)


def test_seed_track_event_and_track_batch_are_stored_redacted(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    pipeline.start_api()
    channel, stub = _stub(pipeline)
    with channel:
        # The seed's four fields only: the collector generates the id and returns it.
        ack = stub.TrackEvent(analytics_pb2.Event(
            event_name="button_click", user_id="u1", timestamp=_now_ms() - 1000,
            properties={"button_id": "signup", "country": "DE"}), timeout=30)
        seed_id = str(uuid.UUID(ack.event_id))
        given = str(uuid.uuid4())
        batch = stub.TrackBatch(analytics_pb2.EventBatch(events=[
            analytics_pb2.Event(event_name="signup", user_id="u2", event_id=given,
                                properties={"contact": "jane.doe@example.com"},
                                library="test-grpc/1"),
            analytics_pb2.Event(event_name="page_view", user_id="u3"),
        ]), timeout=30)
        assert batch.accepted == 2 and not batch.rejections
        assert batch.event_ids[0] == given and uuid.UUID(batch.event_ids[1])

    wait_for(lambda: pipeline.stored() == 3, 60, "three rows")
    rows = {r[0]: r[1:] for r in pipeline.ch.query(
        "SELECT toString(event_id), event_name, user_id, properties, library FROM events FINAL"
    ).result_rows}
    assert rows.keys() == {seed_id, given, batch.event_ids[1]}
    assert rows[seed_id][:3] == ("button_click", "u1", {"button_id": "signup", "country": "DE"})
    # The PII path of HTTP events: the email is replaced by its keyed hash token.
    contact = rows[given][2]["contact"]
    assert "jane" not in contact and contact.startswith("email:hm_"), contact
    assert rows[given][3] == "test-grpc/1"
    assert "rearview_collector_events_accepted_total 3" in httpx.get(
        f"{pipeline.urls['api']}/metrics").text


def test_bad_events_are_invalid_argument_naming_the_field(pipeline: Pipeline) -> None:
    pipeline.start_api()
    channel, stub = _stub(pipeline)
    with channel:
        for event, field in [
            (analytics_pb2.Event(event_name="click"), "user_id"),
            (analytics_pb2.Event(user_id="u1"), "event"),
            (analytics_pb2.Event(event_name="bad name!", user_id="u1"), "event_name"),
            (analytics_pb2.Event(event_name="click", user_id="u1", event_id="nope"), "event_id"),
            (analytics_pb2.Event(event_name="click", user_id="u1", timestamp=_now_ms() + 3 * 86_400_000),
             "timestamp"),
            (analytics_pb2.Event(event_name="click", user_id="u1", properties={"k": "v" * 9000}),
             "property 'k'"),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.TrackEvent(event, timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details().startswith(field), refused.value.details()

        answer = stub.TrackBatch(analytics_pb2.EventBatch(events=[
            analytics_pb2.Event(event_name="ok", user_id="u1"),
            analytics_pb2.Event(event_name="ok", user_id=""),
            analytics_pb2.Event(event_name="ok", user_id="u1", properties={"price": "9" * 9000}),
            analytics_pb2.Event(event_name="ok", user_id="u2", timestamp=1),
        ]), timeout=10)
        assert answer.accepted == 1
        assert [(r.index, r.field) for r in answer.rejections] == [
            (1, "user_id"), (2, "properties.price"), (3, "timestamp")]
        assert answer.rejections[0].reason == "user_id is required"
        assert "in the past" in answer.rejections[2].reason
        assert len(answer.event_ids) == 4

        for events, words in [([], "no events"),
                              ([analytics_pb2.Event(event_name="e", user_id="u")] * 10_001, "at most")]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.TrackBatch(analytics_pb2.EventBatch(events=events), timeout=10)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in refused.value.details()
    # Only the one good event of the batch went to Kafka.
    assert len(pipeline.consume_all(pipeline.settings.kafka.topics.raw, 1, 10)) == 1


def test_kafka_down_is_unavailable(services: Services, tmp_path: Path) -> None:
    """A broker of its own, stopped by its pid under a running API."""
    port = free_port()
    broker = ChildProcess("own-broker", python_module("app.cli", "broker", "--host", HOST,
                                                      "--port", str(port)),
                          tcp_ready(HOST, port), log_path=tmp_path / "own-broker.log")
    broker.start()
    broker.wait_ready(60)
    pipeline = make_pipeline(services, tmp_path, kafka={
        "bootstrap_servers": f"{HOST}:{port}", "producer_config": {"delivery.timeout.ms": "3000"}})
    try:
        api = pipeline.start_api()
        channel, stub = _stub(pipeline)
        with channel:
            assert stub.TrackEvent(analytics_pb2.Event(event_name="e", user_id="u"), timeout=10)
            broker.stop()
            with pytest.raises(grpc.RpcError) as down:
                stub.TrackBatch(analytics_pb2.EventBatch(
                    events=[analytics_pb2.Event(event_name="e", user_id="u")]), timeout=30)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
            # The same outage over HTTP, for comparison.
            resp = httpx.post(f"{api}/v1/track", json={"event": "e", "user_id": "u"}, timeout=30)
            assert resp.status_code == 503
    finally:
        pipeline.close()
        broker.stop()


def test_a_second_api_on_a_taken_grpc_port_fails_to_start(pipeline: Pipeline) -> None:
    """gRPC's default SO_REUSEPORT would let it start and steal half the calls."""
    pipeline.start_api()
    taken = int(pipeline.urls["api_grpc"].rsplit(":", 1)[1])
    with pytest.raises(Exception, match="exited"):
        pipeline.start_api(grpc_port=taken)
