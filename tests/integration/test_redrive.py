"""`rearview dlq redrive`: every selected letter back to events.raw once, fast, and never stale.

Speed itself is measured by bench/redrive.py; these tests check what the faster path must keep:
each letter read from its exact position (across partitions, over gaps it seeks across), sent
once, recorded once, and a schema fix registered a moment before the redrive applied to it.
"""

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
from app.dlq import Filters, LetterMissing, pending, read_letters, redrive
from core.exceptions import ServiceUnavailable
from tests.integration.conftest import Pipeline, wait_for

pytestmark = pytest.mark.integration


def _letters(pipeline: Pipeline, n: int, partitions: int) -> dict[tuple[int, int], bytes]:
    """*n* messages on the DLQ topic, spread over *partitions*: position -> value."""
    topic = pipeline.settings.kafka.topics.dlq
    producer = pipeline.producer()
    out: dict[tuple[int, int], bytes] = {}

    def stored(value: bytes) -> Any:
        def report(err: Any, msg: Any) -> None:
            assert err is None, err
            out[(msg.partition(), msg.offset())] = value
        return report

    for i in range(n):
        value = f"letter-{i}-{uuid.uuid4()}".encode()
        producer.produce(topic, value=value, partition=i % partitions,
                         headers=[(dlq.H_STAGE, b"decode"), (dlq.H_SOURCE_OFFSET, str(i).encode())],
                         on_delivery=stored(value))
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    return out


def test_letters_are_read_from_their_exact_positions_across_partitions_and_gaps(
    pipeline: Pipeline,
) -> None:
    written = _letters(pipeline, 4_000, partitions=2)
    # Dense runs, single letters, and jumps far longer than max_gap in both partitions.
    wanted = [pos for pos in sorted(written)
              if pos[1] < 40 or pos[1] % 997 == 0 or 1_500 <= pos[1] < 1_520 or pos[1] == 1_999]
    s = pipeline.settings
    got = list(read_letters(s.kafka.bootstrap_servers, s.kafka.topics.dlq, reversed(wanted), max_gap=100))
    assert sorted(letter.position for letter in got) == sorted(wanted)
    assert all(letter.value == written[letter.position] for letter in got)
    assert all(letter.headers[dlq.H_STAGE] == "decode" for letter in got)


def test_a_letter_not_in_the_log_is_reported_not_waited_for_forever(pipeline: Pipeline) -> None:
    written = _letters(pipeline, 10, partitions=1)
    s = pipeline.settings
    missing = max(o for _, o in written) + 50
    got: list[tuple[int, int]] = []
    # Real Kafka answers OFFSET_OUT_OF_RANGE (LetterMissing); the embedded broker sends nothing
    # (ServiceUnavailable after the timeout). Either way the letter is named, and the letters
    # before it were delivered.
    with pytest.raises((LetterMissing, ServiceUnavailable), match=f"0:{missing}"):
        for letter in read_letters(s.kafka.bootstrap_servers, s.kafka.topics.dlq,
                                   [(0, 2), (0, missing)], timeout_s=3):
            got.append(letter.position)
    assert got == [(0, 2)]


def test_redrive_sends_each_letter_once_and_records_it(pipeline: Pipeline) -> None:
    s = pipeline.settings
    written = _letters(pipeline, 1_200, partitions=3)
    letters = [{"dlq_partition": p, "dlq_offset": o} for p, o in written]
    result = redrive(pipeline.ch, s.kafka.bootstrap_servers, s.kafka.topics.dlq, s.kafka.topics.raw,
                     letters, chunk=500)
    assert result.sent == 1_200 and result.refused == []
    raw = pipeline.consume_all(s.kafka.topics.raw, expected=1_200)
    assert sorted(m.value() for m in raw) == sorted(written.values())
    origins = {dlq.parse_headers(m.headers())[dlq.H_REDRIVE_OF] for m in raw}
    assert origins == {f"{p}:{o}" for p, o in written}
    assert pipeline.scalar("SELECT count() FROM dlq_redrives FINAL") == 1_200


def _shop_purchase(price_type: Any) -> dict[str, Any]:
    doc = schemas.load(schemas.EVENT)
    doc.update(name="Purchase", namespace="com.shop")
    doc["fields"] = [*doc["fields"], {"name": "price", "type": price_type}]
    return doc


def _record(i: int, price: Any) -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "project_id": "default", "event_name": "purchase",
            "user_id": f"buyer-{i}", "timestamp": int(time.time() * 1000), "properties": {},
            "context": {"ip": None, "user_agent": None, "library": "shop", "received_at": None},
            "price": price}


def test_a_fix_registered_a_moment_before_the_redrive_applies_to_every_letter(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The worker keeps its reader schemas for reader_ttl_s (30 s by default, kept here): the
    letters it dead-lettered seconds ago must still pick up a fix registered just now."""
    s = pipeline.settings
    assert s.registry.reader_ttl_s >= 30
    topic = s.kafka.topics.raw
    v1, v3 = tmp_path / "purchase_v1.avsc", tmp_path / "purchase_v3.avsc"
    v1.write_text(json.dumps(_shop_purchase("string")))
    v3.write_text(json.dumps(_shop_purchase(["string", "int"])))
    assert pipeline.cli("schemas", "register", str(v1)).returncode == 0

    registry = SchemaRegistryClient({"url": s.registry.url})
    rogue = AvroSerializer(registry, json.dumps(_shop_purchase("int")))  # bypasses the check
    ctx = SerializationContext(topic, MessageField.VALUE)
    producer = pipeline.producer()
    n = 300
    for i in range(n):
        producer.produce(topic, value=rogue(_record(i, i), ctx))
    assert producer.flush(30) == 0
    pipeline.start_worker()
    wait_for(lambda: pipeline.scalar("SELECT count() FROM dlq FINAL") == n, 60, f"{n} letters in dlq")
    assert pipeline.stored() == 0

    assert pipeline.cli("schemas", "register", str(v3)).returncode == 0
    redriven = pipeline.cli("dlq", "redrive", "--error-class", "ResolutionError")
    assert redriven.returncode == 0 and f"redrove {n} letters" in redriven.stdout, redriven.stderr
    wait_for(lambda: pipeline.stored() == n, 60, f"the {n} redriven purchases stored")
    time.sleep(2)
    assert pipeline.stored() == n
    assert pipeline.scalar("SELECT count() FROM dlq FINAL") == n, "redriven letters failed again"
    assert pending(pipeline.ch, Filters()) == []
