"""SIGTERM is honoured within a few seconds, even while the worker waits out an outage, and
commits nothing that is not durable: what it did not store is processed after a restart.

"down": the service's process is stopped (connections refused; the worker backs off).
"hung": the service's process is frozen with SIGSTOP (connections accepted, never answered): a
ClickHouse call then blocks its thread until the client's timeout (30 s), which is what kept a
worker from exiting until the supervisor's SIGKILL (measured: 28.7 s before the fix, 1.1 s after).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

import schemas
from agents.schema_registry import register
from app import clickhouse
from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.process import ChildProcess, free_port, python_module, tcp_ready
from tables.migrate import migrate
from tables.rollup_tables import ensure_tables
from tests.integration.conftest import HOST, Pipeline, wait_for
from tests.integration.test_outages import (
    _dead_letters,
    _fast_retries,
    _own_service,
    _produce,
    _reconnect,
    _restart,
    _retrying,
    _send_batches,
    _single_events,
)

pytestmark = pytest.mark.integration

EXIT_WITHIN_S = 6.0  # "a few seconds"; the fixtures' grace period before SIGKILL is 15 s


def _sigterm_exit_s(worker: ChildProcess, grace_s: float = 30.0) -> tuple[float, int | None]:
    """Seconds from SIGTERM to exit (up to *grace_s*, then SIGKILL), and the exit code."""
    assert worker.proc is not None
    t0 = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    try:
        code = worker.proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        worker.kill()
        code = None
    return time.monotonic() - t0, code


@pytest.mark.parametrize("service,how", [("clickhouse", "down"), ("clickhouse", "hung"), ("registry", "hung")])
def test_sigterm_during_an_outage_exits_promptly_and_loses_nothing(
    pipeline: Pipeline, service: str, how: str
) -> None:
    s = pipeline.settings
    if service == "clickhouse":
        down, url = _own_service(pipeline, "clickhouse-2", "clickhouse", "/ping")
        _fast_retries(pipeline, clickhouse=s.clickhouse.model_copy(update={"url": url}))
        _reconnect(pipeline)
        clickhouse.ensure_database(pipeline.settings.clickhouse)
        migrate(pipeline.ch)
        ensure_tables(pipeline.ch, pipeline.settings.aggregate.rollups)
        batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
    else:
        down, url = _own_service(pipeline, "registry-2", "registry", "/health")
        _fast_retries(pipeline, registry=s.registry.model_copy(update={"url": url}))
        batch_id = register(url, s.kafka.topics.raw, schemas.EVENT_BATCH)
        single_id = register(url, s.kafka.topics.raw, schemas.EVENT)  # not cached until used

    _send_batches(pipeline, batch_id, 1_000, seed=41)
    worker = pipeline.start_worker()
    wait_for(lambda: pipeline.stored() == 1_000, 60, "the first 1,000 events")
    _reconnect(pipeline)
    if how == "down":
        down.stop()
    else:  # accepts connections and never answers: each call blocks until its timeout
        assert down.pid is not None
        os.killpg(down.pid, signal.SIGSTOP)
    if service == "registry":
        # A schema id the worker has not cached: validation must wait for the registry.
        _produce(pipeline, _single_events(single_id, 20, "during-outage"))
    else:
        _send_batches(pipeline, batch_id, 1_000, seed=42)
    if how == "down":
        wait_for(lambda: _retrying(worker, service), 30, f"the worker retrying {service}")
    time.sleep(2)  # inside a retry: a backoff sleep, or a call blocked on a service that hangs

    seconds, code = _sigterm_exit_s(worker)
    print(f"SIGTERM during a {service} outage ({how}): exit after {seconds:.2f} s, code {code}")
    assert code is not None, f"the worker ignored SIGTERM for {seconds:.0f} s and was killed"
    assert seconds < EXIT_WITHIN_S, f"the worker took {seconds:.1f} s to exit on SIGTERM"

    if how == "down":
        _restart(down)
    else:
        assert down.pid is not None
        os.killpg(down.pid, signal.SIGCONT)
    _reconnect(pipeline)
    pipeline.start_worker("worker-2")
    total = 1_020 if service == "registry" else 2_000
    wait_for(lambda: pipeline.stored() == total, 90, f"all {total} events after the restart")
    time.sleep(2)
    assert pipeline.stored() == total
    assert _dead_letters(pipeline) == []


def test_sigterm_while_the_broker_hangs_exits_promptly_and_loses_nothing(pipeline: Pipeline) -> None:
    """A broker frozen mid-stream: Faust's own stop waits on it (a rollup flush's changelog
    write, the producer's flush), so only the stop deadline gets the worker out in time."""
    port = free_port()
    broker = ChildProcess("broker-2", python_module("app.cli", "broker", "--host", HOST, "--port", str(port)),
                          tcp_ready(HOST, port), env=pipeline.env, log_path=pipeline.tmp / "broker-2.log")
    pipeline.children.append(broker)
    broker.start()
    broker.wait_ready(90)
    s = pipeline.settings
    _fast_retries(pipeline, kafka=s.kafka.model_copy(update={"bootstrap_servers": f"{HOST}:{port}"}))
    ensure_topics(pipeline.settings.kafka.bootstrap_servers, pipeline_topics(pipeline.settings.kafka))
    batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
    _send_batches(pipeline, batch_id, 1_000, seed=43)
    worker = pipeline.start_worker()
    wait_for(lambda: pipeline.stored() == 1_000, 60, "the first 1,000 events")
    assert broker.pid is not None
    os.killpg(broker.pid, signal.SIGSTOP)
    try:
        time.sleep(2)
        seconds, code = _sigterm_exit_s(worker)
    finally:
        os.killpg(broker.pid, signal.SIGCONT)
    print(f"SIGTERM while the broker hangs: exit after {seconds:.2f} s, code {code}")
    assert code is not None, f"the worker ignored SIGTERM for {seconds:.0f} s and was killed"
    assert seconds < EXIT_WITHIN_S, f"the worker took {seconds:.1f} s to exit on SIGTERM"

    _send_batches(pipeline, batch_id, 500, seed=44)
    pipeline.start_worker("worker-2")
    wait_for(lambda: pipeline.stored() == 1_500, 90, "all 1,500 events after the restart")
    assert _dead_letters(pipeline) == []
