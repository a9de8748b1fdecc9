"""Infrastructure outages mid-stream: the worker waits them out and dead-letters nothing.

The shared services of the session must stay up for the other tests, so each test here starts
its own second registry or ClickHouse endpoint (a real child process, on its own port and data
dir), points the test's pipeline at it, stops it while events are flowing, and starts it again
on the same port and data dir. A slow ClickHouse is not simulated: to the worker it is the same
as a down one (an insert that times out is retried like a refused one), and there is no clean
way to make the real endpoint slow without a mock.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from typing import Any

import fastavro
import httpx
import pytest

import schemas
from agents import dlq
from agents.codec import frame
from agents.schema_registry import register
from app import clickhouse
from app.embedded.process import ChildProcess, free_port, http_ready, python_module
from app.generate import EventGenerator, send_kafka
from app.verify import verify
from tables.migrate import migrate
from tables.rollup_tables import ensure_tables
from tests.integration.conftest import HOST, Pipeline, wait_for

pytestmark = pytest.mark.integration

# The worker's backoff tops out at 10 s by default; 1 s keeps recovery after a restart short
# without changing what is tested (it still retries, forever).
RETRY_MAX_S = 1.0


def _own_service(
    pipeline: Pipeline, name: str, command: str, ready_path: str
) -> tuple[ChildProcess, str]:
    """A second instance of an embedded service for this test only, stopped with the pipeline."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    data_dir = pipeline.tmp / f"{name}-data"
    child = ChildProcess(
        name,
        python_module(
            "app.cli", command, "--host", HOST, "--port", str(port), "--data-dir", str(data_dir)
        ),
        http_ready(url + ready_path),
        env=pipeline.env,
        log_path=pipeline.tmp / f"{name}.log",
    )
    pipeline.children.append(child)  # Pipeline.close() stops it by pid (after the worker)
    child.start()
    child.wait_ready(90)
    return child, url


def _restart(child: ChildProcess) -> None:
    """Start the same command again: same port, same data dir."""
    child.start()
    child.wait_ready(90)


def _fast_retries(pipeline: Pipeline, **sections: Any) -> None:
    s = pipeline.settings
    update: dict[str, Any] = {"worker": s.worker.model_copy(update={"retry_max_s": RETRY_MAX_S})}
    update.update(sections)
    pipeline.settings = s.model_copy(update=update)


def _retrying(worker: ChildProcess, service: str) -> bool:
    """Whether the worker logged that it waits for *service* (throttled warnings)."""
    assert worker.log_path is not None
    return any(
        service.lower() in line.lower() and ("retrying" in line or "unavailable" in line)
        for line in worker.log_path.read_text(errors="replace").splitlines()
    )


def _dead_letters(pipeline: Pipeline) -> list[Any]:
    return pipeline.consume_all(pipeline.settings.kafka.topics.dlq, expected=0, timeout_s=3)


def _describe(letters: list[Any]) -> str:
    reasons = [dlq.parse_headers(m.headers()) for m in letters[:5]]
    return f"{len(letters)} dead letters during an outage, e.g. " + "; ".join(
        f"{h.get('rv.stage')}/{h.get('rv.error_class')}: {h.get('rv.reason')}" for h in reasons
    )


def _single_events(schema_id: int, n: int, library: str) -> list[bytes]:
    """*n* one-event messages framed with *schema_id* (schemas/event.avsc), as a service writes."""
    parsed = fastavro.parse_schema(schemas.load(schemas.EVENT))
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        fastavro.schemaless_writer(
            buf,
            parsed,
            {
                "event_id": str(uuid.uuid4()),
                "project_id": "default",
                "event_name": "signup",
                "user_id": f"svc-{i}",
                "timestamp": now,
                "properties": {"plan": "pro"},
                "context": {"ip": None, "user_agent": None, "library": library, "received_at": now},
            },
        )
        out.append(frame(schema_id, buf.getvalue()))
    return out


def _produce(pipeline: Pipeline, values: list[bytes]) -> None:
    producer = pipeline.producer()
    for value in values:
        producer.produce(pipeline.settings.kafka.topics.raw, value=value)
    assert producer.flush(30) == 0, "Kafka did not take the test's messages"


def _send_batches(pipeline: Pipeline, batch_id: int, count: int, seed: int) -> None:
    s = pipeline.settings
    send_kafka(
        s.kafka.bootstrap_servers,
        s.kafka.topics.raw,
        batch_id,
        EventGenerator(users=500, seed=seed).events(),
        count,
        0,
        200,
    )


def _exactly_once(pipeline: Pipeline, total: int, timeout_s: float, what: str) -> None:
    wait_for(lambda: pipeline.stored() >= total, timeout_s, what)
    time.sleep(2)  # a double insert would show up now
    assert pipeline.stored() == total
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == total


def test_registry_outage_mid_stream_dead_letters_nothing_and_loses_nothing(
    pipeline: Pipeline,
) -> None:
    registry, url = _own_service(pipeline, "registry-2", "registry", "/health")
    s = pipeline.settings
    _fast_retries(pipeline, registry=s.registry.model_copy(update={"url": url}))
    raw = s.kafka.topics.raw
    batch_id = register(url, raw, schemas.EVENT_BATCH)
    # Registered before the outage, but the worker sees its id only during the outage: the
    # lookup must wait for the registry, not dead-letter the messages as an unknown schema.
    single_id = register(url, raw, schemas.EVENT)
    assert single_id != batch_id

    _send_batches(pipeline, batch_id, 2_000, seed=21)
    worker = pipeline.start_worker()
    wait_for(lambda: pipeline.stored() > 0, 60, "the first rows (batch schema id now cached)")

    registry.stop()
    _send_batches(pipeline, batch_id, 2_000, seed=22)  # schema id the worker has cached
    _produce(pipeline, _single_events(single_id, 20, "during-outage"))  # id it must look up
    time.sleep(4)
    assert worker.alive(), "the worker stopped during a registry outage"
    letters = _dead_letters(pipeline)
    assert letters == [], _describe(letters)
    assert pipeline.scalar("SELECT count() FROM events WHERE library = 'during-outage'") == 0, (
        "events whose schema id was never fetched were stored while the registry was down"
    )
    assert _retrying(worker, "registry"), "the worker is not waiting for the registry"
    assert worker.alive()

    _restart(registry)
    total = 4_000 + 20
    _exactly_once(pipeline, total, 60, f"{total} events after the registry came back")
    assert pipeline.scalar("SELECT count() FROM events FINAL WHERE library = 'during-outage'") == 20
    assert _dead_letters(pipeline) == []
    assert worker.alive(), "the worker stopped after the registry came back"


def _converged(pipeline: Pipeline, total: int) -> list[Any] | None:
    if pipeline.stored() < total:
        return None
    reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
    return reports if all(r.verdict == "exact" for r in reports) else None


def _reconnect(pipeline: Pipeline) -> None:
    if pipeline._ch is not None:
        pipeline._ch.close()
    pipeline._ch = None


def test_clickhouse_outage_mid_stream_dead_letters_nothing_and_stays_exact(
    pipeline: Pipeline,
) -> None:
    ch, url = _own_service(pipeline, "clickhouse-2", "clickhouse", "/ping")
    s = pipeline.settings
    _fast_retries(pipeline, clickhouse=s.clickhouse.model_copy(update={"url": url}))
    pipeline.settings = pipeline.settings.model_copy(update={
        "worker": pipeline.settings.worker.model_copy(update={"stall_after_s": 2.0})})
    _reconnect(pipeline)
    cs = pipeline.settings.clickhouse
    clickhouse.ensure_database(cs)
    migrate(pipeline.ch)
    ensure_tables(pipeline.ch, pipeline.settings.aggregate.rollups)
    batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)

    total = 12_000
    errors: list[BaseException] = []

    def traffic() -> None:  # a steady stream that spans the stop and the restart
        try:
            send_kafka(
                s.kafka.bootstrap_servers,
                s.kafka.topics.raw,
                batch_id,
                EventGenerator(users=1000, seed=31).events(),
                total,
                1_200,
                100,
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    producer = threading.Thread(target=traffic)
    worker = pipeline.start_worker()
    producer.start()
    try:
        wait_for(lambda: pipeline.stored() > 500, 60, "the first inserts")
        before = pipeline.stored()
        _reconnect(pipeline)
        ch.stop()  # inserts and rollup upserts are in flight, traffic keeps coming
        assert before < total and producer.is_alive(), "the outage must land mid-stream"
        time.sleep(4)
        assert worker.alive(), "the worker stopped during a ClickHouse outage"
        letters = _dead_letters(pipeline)
        assert letters == [], _describe(letters)
        assert _retrying(worker, "clickhouse"), "the worker is not retrying ClickHouse writes"
        health = httpx.get(f"{pipeline.urls['worker']}/health", timeout=10)
        assert health.status_code == 503 and health.json()["status"] == "failing", health.text
        assert {"events_insert", "rollup_flush"} & set(health.json()["stalled_stages"]), health.text
        _restart(ch)
    finally:
        producer.join(60)
    assert not producer.is_alive() and not errors, f"the test's traffic failed: {errors}"

    reports = wait_for(
        lambda: _converged(pipeline, total),
        60,
        f"{total} events stored and every rollup equal to them",
    )
    assert all(r.cells > 0 and r.verdict == "exact" for r in reports)
    _exactly_once(pipeline, total, 10, f"{total} events after ClickHouse came back")
    assert pipeline.scalar("SELECT sum(count) FROM rollup_events_by_name_1m FINAL") == total
    assert _dead_letters(pipeline) == []
    assert worker.alive(), "the worker stopped after ClickHouse came back"
    health = httpx.get(f"{pipeline.urls['worker']}/health", timeout=10)
    assert health.status_code == 200 and health.json()["stalled_stages"] == {}, health.text
