"""Consumer lag per topic and partition, on the worker's /metrics and /health.

The embedded broker's high watermark is stale (the last batch's base offset + 1), so a lag
taken from it would be wrong; the worker's figure comes from the log as it sees it (the
consumer's position, the offsets delivered) and the offsets it committed.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

import schemas
from agents.schema_registry import register
from tests.integration.conftest import Pipeline, wait_for
from tests.integration.test_outages import (
    _fast_retries,
    _own_service,
    _restart,
    _send_batches,
    _single_events,
)

pytestmark = pytest.mark.integration


def _lag_metrics(url: str) -> dict[tuple[str, int], int]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    out = {}
    for m in re.finditer(r'^rearview_consumer_lag\{partition="(\d+)",topic="([^"]+)"\} (\d+)$', text, re.M):
        out[(m.group(2), int(m.group(1)))] = int(m.group(3))
    return out


def _lag_health(url: str) -> dict[str, dict[str, int]]:
    return httpx.get(f"{url}/health", timeout=5).json()["consumer_lag"]


def test_lag_counts_the_messages_not_yet_durable_per_partition(pipeline: Pipeline) -> None:
    registry, url = _own_service(pipeline, "registry-2", "registry", "/health")
    s = pipeline.settings
    _fast_retries(pipeline, registry=s.registry.model_copy(update={"url": url}))
    raw, clean = s.kafka.topics.raw, s.kafka.topics.clean
    batch_id = register(url, raw, schemas.EVENT_BATCH)
    single_id = register(url, raw, schemas.EVENT)  # the worker looks it up only when it sees it

    _send_batches(pipeline, batch_id, 1_000, seed=51)
    pipeline.start_worker()
    worker = pipeline.urls["worker"]
    wait_for(lambda: pipeline.stored() == 1_000, 60, "the first 1,000 events")
    partitions = range(s.kafka.topics.partitions)
    wait_for(lambda: (lag := _lag_metrics(worker))
             and all(lag.get((t, p)) == 0 for t in (raw, clean) for p in partitions),
             30, "zero lag on every raw and clean partition once all is committed")

    # The registry goes down; messages with a schema id the worker has not cached must wait
    # (never dead-lettered), so they stay uncommitted: 30 on partition 0, 12 on partition 2.
    registry.stop()
    producer = pipeline.producer()
    values = _single_events(single_id, 42, "lagging")
    for i, value in enumerate(values):
        producer.produce(raw, value=value, partition=0 if i < 30 else 2)
    assert producer.flush(30) == 0
    expected = {(raw, p): {0: 30, 2: 12}.get(p, 0) for p in partitions}
    wait_for(lambda: {k: v for k, v in _lag_metrics(worker).items() if k[0] == raw} == expected,
             30, f"raw lag {expected}")
    assert _lag_health(worker)[raw] == {str(p): n for (_, p), n in expected.items()}

    _restart(registry)
    wait_for(lambda: pipeline.stored() == 1_042, 60, "the 42 waiting events stored")
    wait_for(lambda: all(n == 0 for n in _lag_metrics(worker).values()), 30, "no lag left")
    time.sleep(0.5)
    assert set(_lag_health(worker)) >= {raw, clean}
