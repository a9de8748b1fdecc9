"""A dead letter larger than the DLQ topic takes: written in parts, listed once, redriven whole.

The embedded broker enforces no topic size limit, so the limit met here is the worker
producer's own (`producer_max_request_size`, 4 MB): a raw message above it (a producer with a
larger limit wrote it, the raw topic took it) cannot be dead-lettered in one record. Before,
the worker retried that as an outage forever and never committed the partition again.
"""

from __future__ import annotations

import os

import pytest

import schemas
from agents import dlq, oversize
from agents.codec import BatchWriter
from agents.schema_registry import register
from app.faust_app import MAX_MESSAGE_BYTES
from tests.integration.conftest import Pipeline, wait_for
from tests.integration.test_fuzz import avro_event, now_ms

pytestmark = pytest.mark.integration


def test_a_letter_too_large_for_the_dlq_is_kept_whole_in_parts_and_redriven_whole(pipeline: Pipeline) -> None:
    s = pipeline.settings
    raw = s.kafka.topics.raw
    batch_id = register(s.registry.url, raw, schemas.EVENT_BATCH)
    writer = BatchWriter(schemas.EVENT_BATCH, batch_id)
    huge = b"\x01" + os.urandom(MAX_MESSAGE_BYTES + 300_000)  # not Avro: one letter, whole
    after = writer.encode([avro_event(now_ms(), user_id=f"after-{i}") for i in range(10)])
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "message.max.bytes": 16_000_000})
    for value in (huge, after):
        producer.produce(raw, value=value, partition=0)
    assert producer.flush(30) == 0
    pipeline.start_worker()

    wait_for(lambda: pipeline.stored() == 10, 60, "the 10 events after the huge message (not wedged)")
    wait_for(lambda: pipeline.scalar("SELECT count() FROM dlq FINAL WHERE stage != 'part'") == 1, 30,
             "the letter's head in the dlq table")
    stats = pipeline.cli("dlq", "stats")
    assert "1 letters" in stats.stdout, stats.stdout  # fragments are not letters
    listed = pipeline.cli("dlq", "list")
    assert len(listed.stdout.strip().splitlines()) == 1 and "FramingError" in listed.stdout

    redriven = pipeline.cli("dlq", "redrive")
    assert redriven.returncode == 0 and "redrove 1 letters" in redriven.stdout, redriven.stderr
    back = [m for m in pipeline.consume_all(raw, expected=3)
            if dlq.H_REDRIVE_OF in dlq.parse_headers(m.headers())]
    assert [m.value() == huge for m in back] == [True], "the redriven message is the original, whole"
    # It fails again (garbage): a second letter, attempt 2, again in parts, again whole.
    wait_for(lambda: pipeline.scalar("SELECT count() FROM dlq FINAL WHERE stage != 'part'") == 2, 60,
             "the redriven letter failing again")
    assert pipeline.scalar("SELECT max(attempt) FROM dlq FINAL WHERE stage != 'part'") == 2
    heads = [m for m in pipeline.consume_all(s.kafka.topics.dlq, expected=4)
             if oversize.H_PARTS in dlq.parse_headers(m.headers())]
    assert len(heads) == 2 and all(int(dlq.parse_headers(m.headers())[oversize.H_SIZE]) == len(huge)
                                   for m in heads)
    assert pipeline.stored() == 10
