"""Real-time rollups on real services: exact after SIGKILL and rebalance; online now."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

import schemas
from agents.schema_registry import register
from app.generate import EventGenerator, send_kafka
from app.verify import RollupReport, verify
from tests.integration.conftest import NotYet, Pipeline, wait_for

pytestmark = pytest.mark.integration


def _converged(pipeline: Pipeline, total: int) -> list[RollupReport] | NotYet:
    """The verify reports once every event is stored and every rollup agrees with them."""
    stored = pipeline.stored()
    if stored < total:
        return NotYet(f"{stored} of {total} events stored")
    reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
    if any(r.verdict != "exact" for r in reports):
        return NotYet(", ".join(f"{r.rollup}: {r.verdict}, e.g. {(r.excess + r.missing)[:2]}"
                                 for r in reports))
    return reports


class _Traffic(threading.Thread):
    """Sends *total* events straight to Kafka at *rate*; join() raises if sending failed."""

    def __init__(self, pipeline: Pipeline, total: int, rate: float, seed: int) -> None:
        super().__init__()
        s = pipeline.settings
        batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
        self._args = (s.kafka.bootstrap_servers, s.kafka.topics.raw, batch_id,
                      EventGenerator(users=3000, seed=seed).events(), total, rate, 200)
        self.total = total
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.sent = send_kafka(*self._args)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        assert self.error is None, f"the test's producer failed: {self.error!r}"
        assert self.sent == self.total, f"the test's producer sent {self.sent} of {self.total}"


def _traffic(pipeline: Pipeline, total: int, rate: float, seed: int) -> _Traffic:
    thread = _Traffic(pipeline, total, rate, seed)
    thread.start()
    return thread


def test_rollups_are_exact_after_a_sigkill_mid_stream(pipeline: Pipeline) -> None:
    total = 120_000
    # Slow enough that traffic still flows when the worker is killed (it stores ~30k events/s).
    traffic = _traffic(pipeline, total, 6_000, seed=11)
    try:
        worker = pipeline.start_worker("worker-a")
        wait_for(lambda: (pipeline.scalar("SELECT sum(count) FROM rollup_events_by_name_1m") or 0) > 0,
                 90, "the first rollup upserts")
        wait_for(lambda: pipeline.stored() > 10_000, 60, "events flowing")
        worker.kill()
        assert pipeline.stored() < total
        pipeline.start_worker("worker-b")
    finally:
        traffic.join()
    reports = wait_for(lambda: _converged(pipeline, total), 180, "rollups equal to raw events")
    for r in reports:
        assert r.verdict == "exact" and r.cells > 0, r.rollup
    errors = [r.max_uniques_error for r in reports if r.max_uniques_error is not None]
    assert errors and all(e < 0.05 for e in errors)
    total_in_rollup = pipeline.scalar("SELECT sum(count) FROM rollup_events_by_name_country_device_1m FINAL")
    assert total_in_rollup == total


def test_rollups_are_exact_across_a_rebalance_between_two_workers(pipeline: Pipeline) -> None:
    total = 200_000
    # 5,000 events/s: the second worker must join while events still flow, even on a busy machine.
    traffic = _traffic(pipeline, total, 5_000, seed=12)
    try:
        pipeline.start_worker("worker-a")
        wait_for(lambda: pipeline.stored() > 5_000, 90, "events flowing through worker a")
        pipeline.start_worker("worker-b")  # joins the group: partitions move mid-stream
        wait_for(lambda: _applied(pipeline, "worker-b") > 0, 60, "worker b to take over partitions")
        assert pipeline.stored() < total, "the rebalance must happen mid-stream"
    finally:
        traffic.join()
    reports = wait_for(lambda: _converged(pipeline, total), 180, "rollups equal to raw events")
    assert all(r.verdict == "exact" for r in reports)
    assert pipeline.scalar("SELECT sum(count) FROM rollup_events_by_name_1m FINAL") == total
    assert _applied(pipeline, "worker-a") > 0 and _applied(pipeline, "worker-b") > 0


def _applied(pipeline: Pipeline, worker: str) -> int:
    health = httpx.get(f"{pipeline.urls[worker]}/health", timeout=10).json()
    return int(health["rollups"]["applied"])


def test_live_endpoint_answers_online_now_from_the_rollups(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    api = pipeline.start_api()
    now = int(time.time() * 1000)
    events = [{"event": "page_view" if i % 3 else "button_click", "user_id": f"live-{i % 40}",
               "timestamp": now} for i in range(300)]
    assert httpx.post(f"{api}/v1/batch", json={"events": events}).status_code == 202

    def answer() -> dict[str, Any] | None:
        before = time.time()
        resp = httpx.get(f"{api}/v1/live", timeout=10)
        after = time.time()
        assert resp.status_code == 200, resp.text
        body = resp.json()
        if before // 60 != after // 60 or sum(t["count"] for t in body["top_events"]) < 300:
            return None  # not all there yet, or the answer straddled a minute boundary
        body["same_minute"] = after // 60 == now // 60_000
        return body

    body = wait_for(answer, 30, "the live figures")
    # "This minute" is the clock's minute: the events' own, or past it if the test ran over.
    assert body["events_this_minute"] == (300 if body["same_minute"] else 0)
    assert body["active_users"]["1m"] == pytest.approx(40, abs=1)
    assert body["active_users"]["15m"] == pytest.approx(40, abs=1)
    assert body["top_events"][0] == {"event_name": "page_view", "count": 200}
    assert body["top_events"][1] == {"event_name": "button_click", "count": 100}
    # Grafana reads the same figures from ClickHouse views.
    assert pipeline.scalar("SELECT active_users_1m FROM live_now") == 40
    top = pipeline.ch.query("SELECT event_name, events FROM top_events_now").result_rows
    assert top[:2] == [("page_view", 200), ("button_click", 100)]
