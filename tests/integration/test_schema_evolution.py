"""Schema drift, end to end: the registry refuses an incompatible change, a producer that goes
around it is dead-lettered with the field named, and typed events are read by the pipeline."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import schemas
from agents import dlq
from tests.integration.conftest import Pipeline, wait_for

pytestmark = pytest.mark.integration


def _shop_purchase(price_type: str) -> dict[str, Any]:
    doc = schemas.load(schemas.EVENT)
    doc.update(name="Purchase", namespace="com.shop")
    doc["fields"] = [*doc["fields"], {"name": "price", "type": price_type}]
    return doc


def _record(i: int, price: Any, **extra: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "project_id": "default", "event_name": "purchase",
            "user_id": f"buyer-{i}", "timestamp": int(time.time() * 1000), "properties": {},
            "context": {"ip": None, "user_agent": None, "library": "shop", "received_at": None},
            "price": price, **extra}


def test_price_drift_is_refused_by_the_registry_and_dead_lettered_when_bypassed(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    s = pipeline.settings
    topic = s.kafka.topics.raw
    v1, v2 = tmp_path / "purchase_v1.avsc", tmp_path / "purchase_v2.avsc"
    v1.write_text(json.dumps(_shop_purchase("string")))
    v2.write_text(json.dumps(_shop_purchase("int")))

    first = pipeline.cli("schemas", "register")
    again = pipeline.cli("schemas", "register")
    assert first.returncode == 0 and first.stdout == again.stdout  # idempotent: same ids
    assert f"{topic}-io.rearview.events.Purchase: id" in first.stdout
    assert pipeline.cli("schemas", "register", str(v1)).returncode == 0

    # 1. Under BACKWARD, v2 (price as int) is refused, and the message names the field.
    check = pipeline.cli("schemas", "check", str(v2))
    assert check.returncode == 1
    assert "INCOMPATIBLE" in check.stdout and "price" in check.stdout
    refused = pipeline.cli("schemas", "register", str(v2))
    assert refused.returncode == 1 and "price" in refused.stderr
    assert refused.stderr.startswith("error: ") and len(refused.stderr.strip().splitlines()) == 1

    # 2. A producer that bypasses the check with stock confluent-kafka code (default
    #    TopicNameStrategy subject, auto-registration) writes v2 data anyway.
    registry = SchemaRegistryClient({"url": s.registry.url})
    good = AvroSerializer(registry, v1.read_text(),
                          conf={"subject.name.strategy": lambda ctx, name: f"{ctx.topic}-{name}"})
    rogue = AvroSerializer(registry, v2.read_text())
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = pipeline.producer()
    for i in range(5):
        producer.produce(topic, value=good(_record(i, "100"), ctx))
    rogue_values = [rogue(_record(i, 100), ctx) for i in range(4)]
    for value in rogue_values:
        producer.produce(topic, value=value)
    producer.flush(10)

    pipeline.settings = s = s.model_copy(
        update={"registry": s.registry.model_copy(update={"reader_ttl_s": 1.0})})
    pipeline.start_worker()
    letters = pipeline.consume_all(s.kafka.topics.dlq, expected=4)
    assert sorted(m.value() for m in letters) == sorted(rogue_values)
    for m in letters:
        h = dlq.parse_headers(m.headers())
        assert h["rv.error_class"] == "ResolutionError"
        assert "price" in h["rv.reason"] and "com.shop.Purchase" in h["rv.reason"]
    wait_for(lambda: pipeline.stored() == 5, 60, "the 5 compatible purchases")
    assert pipeline.scalar("SELECT countIf(properties['price'] = '100') FROM events") == 5

    # A redrive before any fix: the letters fail again and come back with attempt 2.
    wait_for(lambda: pipeline.scalar("SELECT count() FROM dlq FINAL") == 4, 30, "the letters in the dlq table")
    early = pipeline.cli("dlq", "redrive", "--reason", "price")
    assert "redrove 4 letters" in early.stdout, early.stderr
    wait_for(lambda: pipeline.scalar("SELECT count() FROM dlq FINAL") == 8, 30, "the failed redrives")
    assert pipeline.scalar(
        "SELECT groupUniqArray(attempt) FROM dlq FINAL WHERE (dlq_partition, dlq_offset)"
        " NOT IN (SELECT dlq_partition, dlq_offset FROM dlq_redrives)") == [2]
    assert pipeline.scalar("SELECT uniqExact(first_failed_at) <= 4 FROM dlq FINAL") == 1  # kept

    # 3. The fix: a compatible evolution that reads both (price as string or int). Then each
    #    dead-lettered event comes in exactly once, even when redrive runs twice.
    v3 = tmp_path / "purchase_v3.avsc"
    v3.write_text(json.dumps(_shop_purchase(["string", "int"])))
    assert pipeline.cli("schemas", "register", str(v3)).returncode == 0
    stats = pipeline.cli("dlq", "stats")
    assert "ResolutionError" in stats.stdout and "8 letters" in stats.stdout  # all, redriven or not
    listed = pipeline.cli("dlq", "list", "--error-class", "ResolutionError")
    assert len(listed.stdout.strip().splitlines()) == 4
    first = listed.stdout.split()[0]
    shown = pipeline.cli("dlq", "show", first)
    assert '"price":100' in shown.stdout  # the redacted preview, as the producer wrote it
    assert "redriven: False" in shown.stdout
    dry = pipeline.cli("dlq", "redrive", "--reason", "price", "--dry-run")
    assert "4 letters would be redriven" in dry.stdout
    time.sleep(1.5)  # the worker re-reads reader schemas every second in this test
    redriven = pipeline.cli("dlq", "redrive", "--reason", "price")
    assert redriven.returncode == 0 and "redrove 4 letters" in redriven.stdout, redriven.stderr
    again = pipeline.cli("dlq", "redrive", "--reason", "price")
    assert "no letters to redrive" in again.stdout
    wait_for(lambda: pipeline.stored() == 9, 60, "the 4 redriven purchases")
    time.sleep(2)
    assert pipeline.stored() == 9
    assert pipeline.scalar("SELECT countIf(properties['price'] = '100') FROM events FINAL") == 9
    from app.verify import verify

    reports = wait_for(lambda: (r := verify(pipeline.ch, s.aggregate.rollups))
                       and all(x.verdict == "exact" for x in r) and r, 30, "rollups equal to raw events")
    assert reports


def test_typed_events_are_resolved_and_their_fields_become_properties(pipeline: Pipeline) -> None:
    s = pipeline.settings
    topic = s.kafka.topics.raw
    assert pipeline.cli("schemas", "register").returncode == 0
    registry = SchemaRegistryClient({"url": s.registry.url})
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = pipeline.producer()
    examples = schemas.avro_examples()
    assert set(examples) == {"page_view", "button_click", "signup", "purchase"}
    for name, record in examples.items():
        full = next(n for n in schemas.TYPED if schemas.TYPED[n] == f"events/{name}.avsc")
        serializer = AvroSerializer(registry, schemas.schema_str(full), conf={
            "auto.register.schemas": False, "use.latest.version": True,
            "subject.name.strategy": lambda c, n: f"{c.topic}-{n}"})
        producer.produce(topic, value=serializer({**record, "timestamp": int(time.time() * 1000)}, ctx))
    producer.flush(10)
    pipeline.start_worker()
    wait_for(lambda: pipeline.stored() == 4, 60, "the four typed examples")
    rows = dict(pipeline.ch.query("SELECT event_name, properties FROM events").result_rows)
    assert rows["purchase"] | {} == {"country": "FR", "device_type": "mobile", "price": "49.9",
                                     "currency": "EUR", "quantity": "2"}
    assert rows["signup"]["plan"] == "pro" and rows["page_view"]["path"] == "/pricing"
    assert "title" not in rows["page_view"]  # null typed fields are absent, not "None"
