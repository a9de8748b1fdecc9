"""Planted personal data reaches nothing downstream: the real pipeline, every output checked.

About 2,000 values of every supported kind and format (tests/unit/pii_corpus.py), plain and
encoded, are planted in every field of events sent two ways: Avro batches written straight to
events.raw (event name, project id, user id, property keys and values, the context's ip, user
agent and library), some of them cut short or with a wrong magic byte so they cannot be decoded;
and JSON to the collector (properties, user id, library, the User-Agent header). Event names
the validator refuses go to the dead-letter queue with a reason that quotes them.

Then nothing planted may be readable (plain, encoded, or as its run of digits) in:
* every ClickHouse table and view of the pipeline's database, cell by cell;
* every Kafka topic of the pipeline (events.clean, events.dlq, any changelog or internal topic
  the worker creates): keys, values and headers, except the values of events.raw and events.dlq, which are the
  producers' original bytes, kept unchanged by design for redrive;
* the log files of the worker and the API.
"""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

import schemas
from agents.codec import BatchWriter, writer_schema
from agents.records import SourceMeta
from agents.schema_registry import register
from agents.sink import decode_block
from agents.validate import Validator
from tests.integration.conftest import Pipeline, wait_for
from tests.unit.pii_corpus import ENCODINGS, Haystack, PiiMaker, Planted, embed, encode

pytestmark = pytest.mark.integration

KAFKA_MESSAGES = 60
EVENTS_PER_MESSAGE = 25
HTTP_BATCHES = 6
EVENTS_PER_BATCH = 50


def _now_ms() -> int:
    return int(time.time() * 1000)


def _kafka_event(rng: random.Random, maker: PiiMaker, planted: list[Planted]) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "project_id": "default", "event_name": "signup", "user_id": f"u{rng.randint(1, 500)}",
        "timestamp": _now_ms() - rng.randint(0, 3_600_000),
        "properties": {"country": "DE", "device_type": "desktop"},
        "context": {"ip": "198.51.100.23", "user_agent": "Mozilla/5.0", "library": "sdk/1.0",
                    "received_at": None},
    }
    for where in rng.sample(["event_name", "project_id", "user_id", "key", "value", "ip",
                             "user_agent", "library"], 2):
        p = maker.any()
        text = embed(rng, encode(p.value, rng.choice(ENCODINGS), rng))
        planted.append(p)
        if where == "key":
            ev["properties"][text] = "1"
        elif where == "value":
            ev["properties"]["note"] = text
        elif where in ("ip", "user_agent", "library"):
            ev["context"][where] = text
        else:
            ev[where] = text
    return ev


def _http_event(rng: random.Random, maker: PiiMaker, planted: list[Planted]) -> dict[str, Any]:
    ev: dict[str, Any] = {"event": "button_click", "user_id": f"u{rng.randint(1, 500)}",
                          "properties": {"country": "FR"}}
    for where in rng.sample(["user_id", "key", "value", "library"], 2):
        p = maker.any()
        encoded = encode(p.value, rng.choice(ENCODINGS), rng)
        text = embed(rng, encoded)
        if len(text) > 120:  # the collector refuses keys over 128 characters
            text = encoded
            if len(text) > 120:
                continue
        planted.append(p)
        if where == "key":
            ev["properties"][text] = "1"
        elif where == "value":
            ev["properties"]["note"] = text
        elif where == "library":
            ev["context"] = {"library": text}
        else:
            ev["user_id"] = text
    return ev


def _topics_of(pipeline: Pipeline) -> list[str]:
    tag = pipeline.settings.kafka.topics.raw.split(".")[0]
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka.bootstrap_servers})
    names = admin.list_topics(timeout=10).topics
    return sorted(t for t in names if tag in t and t != pipeline.settings.kafka.topics.raw)


def _read_topic(pipeline: Pipeline, topic: str) -> list[Any]:
    consumer = Consumer({
        "bootstrap.servers": pipeline.settings.kafka.bootstrap_servers,
        "group.id": f"pii-reader-{uuid.uuid4()}", "auto.offset.reset": "earliest",
        "enable.auto.commit": False, "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
    })
    consumer.subscribe([topic])
    out: list[Any] = []
    quiet_until = time.monotonic() + 8  # the group join takes a few seconds on the embedded broker
    try:
        while time.monotonic() < quiet_until:
            got = [m for m in consumer.consume(500, 0.5) if m.error() is None]
            out.extend(got)
            if got:
                quiet_until = time.monotonic() + 1.5
    finally:
        consumer.close()
    return out


def _text(raw: bytes | str | None) -> str:
    if raw is None:
        return ""
    return raw if isinstance(raw, str) else raw.decode("utf-8", "replace")


def test_planted_pii_reaches_no_table_topic_or_log(pipeline: Pipeline) -> None:
    s = pipeline.settings
    raw = s.kafka.topics.raw
    batch_id = register(s.registry.url, raw, schemas.EVENT_BATCH)
    writer = BatchWriter(schemas.EVENT_BATCH, batch_id)
    rng = random.Random(8)
    maker = PiiMaker(rng)
    planted: list[Planted] = []

    # What the worker will make of each message, to know when it is done (the validator is
    # pure; the leak checks below do not rely on it).
    validator = Validator()
    known = {batch_id: writer_schema(batch_id, schemas.schema_str(schemas.EVENT_BATCH))}
    messages: list[bytes] = []
    expect_clean = expect_letters = 0
    for m in range(KAFKA_MESSAGES):
        value = writer.encode([_kafka_event(rng, maker, planted) for _ in range(EVENTS_PER_MESSAGE)])
        if m % 10 == 3:
            value = value[: rng.randint(6, len(value) - 1)]  # cut short: undecodable
        elif m % 10 == 7:
            value = b"\x05" + value[1:]  # not Confluent framing
        now = _now_ms()
        result = validator.validate_message(value, None, SourceMeta(raw, 0, 0, now), known, now)
        expect_clean += len(result.clean)
        expect_letters += len(result.invalid)
        messages.append(value)

    pipeline.start_worker()
    api = pipeline.start_api()
    producer = pipeline.producer()
    for value in messages:
        producer.produce(raw, value=value)
    assert producer.flush(30) == 0
    http_accepted = 0
    for _ in range(HTTP_BATCHES):
        events = [_http_event(rng, maker, planted) for _ in range(EVENTS_PER_BATCH)]
        agent = maker.any()
        while not agent.value.isascii():  # an HTTP header
            agent = maker.any()
        planted.append(agent)
        ua = f"MyApp/2.1 ({agent.value})"
        resp = httpx.post(f"{api}/v1/batch", json={"events": events}, headers={"User-Agent": ua},
                          timeout=30)
        assert resp.status_code == 202, resp.text
        http_accepted += resp.json()["accepted"]
    assert len(planted) >= 1_500 and expect_letters > 0

    wait_for(lambda: pipeline.stored() >= expect_clean + http_accepted, 120, "the clean events")
    wait_for(lambda: pipeline.scalar("SELECT count() FROM dlq FINAL") >= expect_letters, 60,
             "the dead letters' rows")
    time.sleep(2)  # the rollup flush (every 0.5 s) and the last changelog writes

    outputs: dict[str, Haystack] = {}
    ch = pipeline.ch
    tables = [r[0] for r in ch.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows]
    assert {"events", "dlq"} <= set(tables) and any(t.startswith("rollup_") for t in tables)
    for table in tables:
        hay = outputs[f"clickhouse:{table}"] = Haystack()
        for row in ch.query(f"SELECT * FROM `{table}`").result_rows:
            for cell in row:
                hay.add(_text(cell) if isinstance(cell, bytes | str | None) else str(cell))

    topics = _topics_of(pipeline)
    assert s.kafka.topics.clean in topics and s.kafka.topics.dlq in topics, topics
    for topic in topics:
        hay = outputs[f"kafka:{topic}"] = Haystack()
        for msg in _read_topic(pipeline, topic):
            hay.add(_text(msg.key()))
            for name, value in msg.headers() or []:
                hay.add(f"{name}={_text(value)}")
            if topic == s.kafka.topics.clean:
                for row in decode_block(msg.value()).to_pylist():
                    for cell in row.values():
                        hay.add(str(cell))
            elif topic != s.kafka.topics.dlq:  # a letter's value: the producer's original bytes
                hay.add(_text(msg.value()))

    logs = outputs["logs"] = Haystack()
    for path in pipeline.tmp.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            logs.add(line)

    print(f"\n{len(planted):,} planted values searched for in "
          + ", ".join(f"{name} ({len(hay):,} texts)" for name, hay in outputs.items()))
    leaks = [
        (p.kind, p.fmt, p.value, where, found[:200])
        for p in planted for where, hay in outputs.items() if (found := hay.find(p)) is not None
    ]
    assert not leaks, f"{len(leaks)} leaks, e.g. {leaks[:5]}"
    # The checks looked where the data is: redacted values did arrive everywhere.
    assert "[card]" in str(ch.query("SELECT groupArray(toString(properties)) FROM events").result_rows)
    previews = ch.query("SELECT preview FROM dlq WHERE preview LIKE '%undecodable%'").result_rows
    assert previews, "no undecodable letter was previewed"
