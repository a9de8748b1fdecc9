"""The first end-to-end path on real services: track -> Kafka -> validate -> ClickHouse -> query."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import schemas
from agents import dlq
from agents.codec import BatchWriter, frame
from agents.schema_registry import register
from app.generate import EventGenerator, send_kafka
from tests.integration.conftest import Pipeline, wait_for

pytestmark = pytest.mark.integration


def _post(url: str, body: Any) -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), timeout=30)


def test_ten_thousand_tracked_events_give_exactly_ten_thousand_rows(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    api = pipeline.start_api()
    events = EventGenerator(users=300, seed=1).events()
    accepted = 0
    for _ in range(20):
        resp = _post(f"{api}/v1/batch", {"events": [next(events) for _ in range(500)]})
        assert resp.status_code == 202, resp.text
        accepted += resp.json()["accepted"]
    assert accepted == 10_000

    wait_for(lambda: pipeline.stored() >= 10_000, 120, "10,000 rows in ClickHouse")
    time.sleep(2)  # anything extra (a double insert) would show up now
    assert pipeline.stored() == 10_000
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == 10_000
    answer = httpx.get(f"{api}/v1/events/count", timeout=30).json()
    assert answer == {"count": 10_000, "source": "events"}
    clicks = pipeline.scalar("SELECT count() FROM events FINAL WHERE event_name = 'button_click'")
    assert httpx.get(f"{api}/v1/events/count", params={"event_name": "button_click"}).json()["count"] == clicks

    api_metrics = httpx.get(f"{api}/metrics").text
    assert "rearview_collector_events_accepted_total 10000" in api_metrics
    assert 'rearview_collector_responses_total{path="/v1/batch",status="202"} 20' in api_metrics
    worker_metrics = httpx.get(f"{pipeline.urls['worker']}/metrics").text
    assert "rearview_rows_inserted_total 10000" in worker_metrics


def test_single_track_is_queryable_with_its_properties(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    api = pipeline.start_api()
    example = schemas.examples()["purchase"]
    resp = _post(f"{api}/v1/track", example)
    assert resp.status_code == 202 and resp.json() == {"accepted": 1}
    wait_for(lambda: pipeline.stored() == 1, 60, "the purchase row")
    row = pipeline.ch.query(
        "SELECT toString(event_id), event_name, user_id, properties['price'], country, ts FROM events"
    ).result_rows[0]
    assert row[:5] == (example["event_id"], "purchase", "user-77", "49.9", "FR")
    assert row[5].isoformat().startswith("2026-11-28T09:20:41")
    frm, to = "2026-11-28T09:00:00Z", "2026-11-28T10:00:00Z"
    assert httpx.get(f"{api}/v1/events/count", params={"from": frm, "to": to}).json()["count"] == 1
    assert httpx.get(f"{api}/v1/events/count", params={"from": to}).json()["count"] == 0


def test_integers_of_any_size_keep_their_digits_over_http(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    api = pipeline.start_api()
    body = (b'{"event": "import", "user_id": "u1", "properties": {"order_no": 123456789012345678901234567890,'
            b' "qty": 149.0, "big": 18446744073709551617}}')
    resp = httpx.post(f"{api}/v1/track", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 202, resp.text
    wait_for(lambda: pipeline.stored() == 1, 60, "the row")
    row = pipeline.ch.query("SELECT properties['order_no'], properties['qty'], properties['big'] FROM events").result_rows
    assert row == [("123456789012345678901234567890", "149", "18446744073709551617")]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "body is empty"),
        (b'{"user_id": "u"}', 400, "event is required"),
        (b'{"event": "x", "user_id": "u", "properties": {"a": {"b": 1}}}', 400, "properties.a is an object"),
        (b'{"event": "x", "user_id": "u", "timestamp": "soon"}', 400, "not ISO-8601"),
    ],
)
def test_malformed_requests_get_a_4xx_that_names_the_problem(
    pipeline: Pipeline, body: bytes, status: int, message: str
) -> None:
    api = pipeline.start_api()
    resp = httpx.post(f"{api}/v1/track", content=body)
    assert resp.status_code == status
    assert message in resp.json()["error"]
    resp = httpx.post(f"{api}/v1/batch", content=b'{"events": [{"event": "a", "user_id": "u"}, {"event": "b"}]}')
    assert resp.status_code == 400 and "events[1]: user_id is required" in resp.json()["error"]
    huge = b'{"event": "x", "user_id": "u", "properties": {"p": "' + b"x" * 6_000_000 + b'"}}'
    resp = httpx.post(f"{api}/v1/track", content=huge)
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]
    resp = httpx.get(f"{api}/v1/events/count", params={"from": "yesterday"})
    assert resp.status_code == 400 and "from: must be ISO-8601" in resp.json()["error"]


def test_malformed_events_land_in_the_dlq_with_reason_and_original_bytes(pipeline: Pipeline) -> None:
    s = pipeline.settings
    topic = s.kafka.topics.raw
    batch_id = register(s.registry.url, topic, schemas.EVENT_BATCH)
    now = int(time.time() * 1000)

    def ev(**kw: Any) -> dict[str, Any]:
        base = {"event_id": str(uuid.uuid4()), "project_id": "default", "event_name": "page_view",
                "user_id": "u1", "timestamp": now, "properties": {},
                "context": {"ip": None, "user_agent": None, "library": None, "received_at": now}}
        return {**base, **kw}

    writer = BatchWriter(schemas.EVENT_BATCH, batch_id)
    mixed = writer.encode([ev(), ev(event_name="no!such#name"), ev()])
    bad = {
        b"not avro at all": "FramingError",
        b"\x01\x00\x00\x00\x01rest": "FramingError",
        frame(987_654, b"\x02\x04"): "UnknownSchema",
        writer.encode([ev()])[:-7]: None,  # truncated Avro: some decode error
    }
    producer = pipeline.producer()
    for value in [*bad, mixed]:
        producer.produce(topic, value=value)
    producer.produce(topic, value=writer.encode([ev() for _ in range(5)]))
    producer.flush(10)

    worker = pipeline.start_worker()
    letters = pipeline.consume_all(s.kafka.topics.dlq, expected=len(bad) + 1)
    by_value: dict[bytes, list[dict[str, str]]] = {}
    for m in letters:
        by_value.setdefault(m.value(), []).append(dlq.parse_headers(m.headers()))
    assert set(by_value) == {*bad, mixed}  # original bytes, unchanged
    for value, error_class in bad.items():
        [h] = by_value[value]
        assert h["rv.stage"] == "decode" and h["rv.reason"]
        assert h["rv.source_topic"] == topic and int(h["rv.source_offset"]) >= 0
        assert h["rv.attempt"] == "1" and int(h["rv.first_failed_at"]) >= now
        if error_class:
            assert h["rv.error_class"] == error_class
    [h] = by_value[mixed]
    assert h["rv.stage"] == "validate" and h["rv.event_index"] == "1"
    assert "event_name" in h["rv.reason"] and h["rv.schema_id"] == str(batch_id)

    wait_for(lambda: pipeline.stored() == 7, 60, "the 7 good events")  # 2 from mixed + 5
    assert worker.alive(), "a malformed event must never stop the worker"
    # The queryable dlq table: one row per letter, with a redacted preview.
    wait_for(lambda: pipeline.scalar("SELECT count() FROM dlq FINAL") == len(bad) + 1, 30, "dlq rows")
    rows = pipeline.ch.query(
        "SELECT stage, error_class, event_index, preview FROM dlq FINAL ORDER BY stage, error_class"
    ).result_rows
    assert ("validate", "InvalidField", 1) in [r[:3] for r in rows]
    [preview] = [r[3] for r in rows if r[0] == "validate"]
    assert '"event_name":"no!such#name"' in preview
    metrics = httpx.get(f"{pipeline.urls['worker']}/metrics").text
    assert 'rearview_dead_letters_total{error_class="FramingError",stage="decode"} 2' in metrics
    assert 'rearview_dead_letters_total{error_class="UnknownSchema",stage="decode"} 1' in metrics


def test_stock_confluent_serializer_events_are_accepted(pipeline: Pipeline) -> None:
    s = pipeline.settings
    registry = SchemaRegistryClient({"url": s.registry.url})
    serializer = AvroSerializer(registry, schemas.schema_str(schemas.EVENT),
                                conf={"subject.name.strategy": lambda ctx, name: f"{ctx.topic}-{name}"})
    producer = pipeline.producer()
    now = int(time.time() * 1000)
    for i in range(25):
        value = serializer(
            {"event_id": str(uuid.uuid4()), "project_id": "default", "event_name": "signup",
             "user_id": f"svc-{i}", "timestamp": now, "properties": {"plan": "pro"},
             "context": {"ip": None, "user_agent": None, "library": "svc", "received_at": None}},
            SerializationContext(s.kafka.topics.raw, MessageField.VALUE),
        )
        producer.produce(s.kafka.topics.raw, value=value)
    producer.flush(10)
    pipeline.start_worker()
    wait_for(lambda: pipeline.stored() == 25, 60, "25 single-event messages")
    assert pipeline.scalar("SELECT countIf(library = 'svc') FROM events") == 25


def test_worker_killed_mid_stream_loses_nothing_and_counts_nothing_twice(pipeline: Pipeline) -> None:
    s = pipeline.settings
    total = 150_000
    batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
    # Traffic keeps arriving at a steady rate while the worker is killed and restarted.
    producer = threading.Thread(
        target=send_kafka,
        args=(s.kafka.bootstrap_servers, s.kafka.topics.raw, batch_id,
              EventGenerator(users=2000, seed=7).events(), total, 15_000, 200),
    )
    producer.start()
    try:
        worker = pipeline.start_worker("worker-a")
        wait_for(lambda: pipeline.scalar("SELECT count() FROM events") > 10_000, 90, "the first inserts")
        worker.kill()  # SIGKILL: no commit, no flush, no goodbye
        before_restart = pipeline.stored()
        assert 0 < before_restart < total, "the kill must land mid-stream for this test to mean anything"
        pipeline.start_worker("worker-b")
    finally:
        producer.join()
    wait_for(lambda: pipeline.stored() >= total, 180, f"{total} rows after the restart")
    time.sleep(2)
    assert pipeline.stored() == total
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == total
    # Every stored event carries its provenance, and (partition, offset, index) is unique.
    assert pipeline.scalar(
        "SELECT count() FROM (SELECT _partition, _offset, _index FROM events FINAL"
        " GROUP BY _partition, _offset, _index HAVING count() > 1)"
    ) == 0


def _committed_and_ends(pipeline: Pipeline, topic: str) -> tuple[list[int], list[int]]:
    """The group's committed offset of each partition of *topic*, and the offset after its last
    message (read from the log: the embedded broker's reported high watermark can lag by one)."""
    s = pipeline.settings
    parts = range(s.kafka.topics.partitions)
    consumer = Consumer({"bootstrap.servers": s.kafka.bootstrap_servers, "group.id": s.worker.app_id,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        committed = [tp.offset for tp in consumer.committed([TopicPartition(topic, p) for p in parts],
                                                           timeout=10)]
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        ends = [-1001] * len(parts)  # librdkafka's "no offset", as committed() reports it
        while batch := consumer.consume(500, 2.0):
            for m in batch:
                if m.error() is None:
                    ends[m.partition()] = max(ends[m.partition()], m.offset() + 1)
        return committed, ends
    finally:
        consumer.close()


def test_processed_offsets_are_committed_so_a_restarted_worker_reads_nothing_again(
    pipeline: Pipeline,
) -> None:
    s = pipeline.settings
    batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
    send_kafka(s.kafka.bootstrap_servers, s.kafka.topics.raw, batch_id,
               EventGenerator(users=50, seed=3).events(), 4_000, 0, 100)
    first = pipeline.start_worker("worker-a")
    wait_for(lambda: pipeline.stored() == 4_000, 60, "4,000 rows")
    for topic in (s.kafka.topics.raw, s.kafka.topics.clean):

        def fully_committed(topic: str = topic) -> list[int] | None:
            committed, ends = _committed_and_ends(pipeline, topic)
            return ends if committed == ends else None

        ends = wait_for(fully_committed, 30, f"{topic}: committed offsets at the end of every partition")
        assert sum(max(0, end) for end in ends) > 0
    first.stop()
    pipeline.start_worker("worker-b")
    time.sleep(3)
    health = httpx.get(f"{pipeline.urls['worker-b']}/health", timeout=10).json()
    assert health["raw_messages"] == 0 and health["inserted_rows"] == 0, health
    assert pipeline.stored() == 4_000
