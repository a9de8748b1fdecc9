"""Shared by the replay tests: events over days, written straight to events.raw."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Producer

import schemas
from agents.codec import BatchWriter
from agents.schema_registry import register
from app import replay as rp
from app.collector.normalize import to_event
from app.verify import overall, verify
from tests.integration.conftest import Pipeline

DAY_MS = 86_400_000


def events_over_days(n: int, days: float, seed: int = 0, phone_every: int = 0) -> list[dict[str, Any]]:
    """*n* events spread over the last *days* days, a few users and countries."""
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        props = {"country": ["DE", "FR", "US", "BR"][(i + seed) % 4],
                 "device_type": ["desktop", "mobile"][(i // 3) % 2]}
        if phone_every and i % phone_every == 0:
            props["contact"] = f"+49 30 {1_000_000 + i % 97}"
        out.append({"event": ["button_click", "page_view", "purchase"][i % 3], "user_id": f"u{(i * 7 + seed) % 150}",
                    "timestamp": now - int(days * DAY_MS) + i * int(days * DAY_MS) // n,
                    "event_id": str(uuid.UUID(int=(seed << 64) + i + 1)), "properties": props})
    return out


def send(pipeline: Pipeline, events: list[dict[str, Any]], per_message: int = 100,
         corrupt: int = 0) -> int:
    """EventBatch messages of *per_message* events to events.raw, plus *corrupt* messages that
    cannot be decoded (dead letters). Returns the messages written."""
    s = pipeline.settings
    writer = BatchWriter(schemas.EVENT_BATCH, register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH))
    producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "linger.ms": 5})
    failures: list[str] = []
    now = int(time.time() * 1000)
    records = [to_event(e, received_at_ms=now) for e in events]
    sent = 0
    for i in range(0, len(records), per_message):
        producer.produce(s.kafka.topics.raw, value=writer.encode(records[i:i + per_message]),
                         on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
        producer.poll(0)
        sent += 1
    for i in range(corrupt):
        producer.produce(s.kafka.topics.raw, value=b"\x00\x00\x00\x00\x09not avro " + bytes([i]))
        sent += 1
    assert producer.flush(30) == 0 and not failures, failures
    return sent


def exact(pipeline: Pipeline, total: int) -> bool:
    """Every event stored once and every rollup equal to a GROUP BY over them."""
    if pipeline.scalar("SELECT count() FROM events") != total:
        return False
    return overall(verify(pipeline.ch, pipeline.settings.aggregate.rollups)) == "exact"


def replay_jobs(pipeline: Pipeline) -> list[rp.Job]:
    return rp.status(pipeline.settings)
