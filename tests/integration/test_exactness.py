"""Each event counted once, whatever the path, the copies and the order it arrives in.

Real services: the collector over HTTP, producers straight to Kafka, the worker, ClickHouse.
"""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.generate import EventGenerator
from app.verify import RollupReport, verify
from tests.integration.conftest import Pipeline, send_event_batches, wait_for

pytestmark = pytest.mark.integration


def _dataset(n: int, seed: int, span_ms: int, users: int = 200) -> list[dict[str, Any]]:
    """*n* collector-format events with distinct ids, spread over the last *span_ms*."""
    gen = EventGenerator(users=users, seed=seed)
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        for e in gen.session(now - rng.randint(60_000, span_ms)):
            e["timestamp"] = min(e["timestamp"], now - 1_000)
            out.append(e)
    return out[:n]


def _send_kafka(pipeline: Pipeline, events: list[dict[str, Any]], library: str | None = None) -> None:
    """EventBatch messages of 100 events straight to events.raw, as a service would write them."""
    send_event_batches(pipeline, events, library=library)


def _exact(pipeline: Pipeline, total: int) -> list[RollupReport] | None:
    if pipeline.stored() < total:
        return None
    reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
    return reports if all(r.verdict == "exact" for r in reports) else None


def _health(pipeline: Pipeline) -> dict[str, Any]:
    return httpx.get(f"{pipeline.urls['worker']}/health", timeout=10).json()


def _rollup_cells(pipeline: Pipeline, table: str, dims: str) -> dict[tuple[Any, ...], int]:
    rows = pipeline.ch.query(
        f"SELECT window_start, {dims}, sum(count) FROM {table} FINAL GROUP BY window_start, {dims}"
    ).result_rows
    return {tuple(r[:-1]): int(r[-1]) for r in rows}


def _live_and_views(pipeline: Pipeline, api: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """/v1/live and the live_now / top_events_now views, read within one clock minute."""
    before = time.time()
    live = httpx.get(f"{api}/v1/live", timeout=10).json()
    now_row = pipeline.ch.query(
        "SELECT active_users_1m, active_users_5m, active_users_15m, events_this_minute FROM live_now"
    ).result_rows[0]
    top = pipeline.ch.query("SELECT event_name, events FROM top_events_now").result_rows
    if before // 60 != time.time() // 60:
        return None
    views = {"active_users": dict(zip(("1m", "5m", "15m"), map(int, now_row[:3]), strict=True)),
             "events_this_minute": int(now_row[3]),
             "top_events": [{"event_name": n, "count": int(c)} for n, c in top]}
    return live, views


def test_a_resent_batch_and_the_same_events_over_kafka_change_nothing(pipeline: Pipeline) -> None:
    """A client's retry (the same batch twice over HTTP) and the same events sent by a service
    straight to Kafka: every rollup, every live figure and a plain count() stay as they were."""
    pipeline.start_worker()
    api = pipeline.start_api()
    events = _dataset(600, seed=21, span_ms=4 * 60_000)
    events[:200] = [{**e, "timestamp": int(time.time() * 1000) - 500} for e in events[:200]]  # this minute
    n = len(events)
    assert httpx.post(f"{api}/v1/batch", json={"events": events}, timeout=30).status_code == 202
    wait_for(lambda: _exact(pipeline, n), 90, "the first copies stored and rolled up")
    first = {t: _rollup_cells(pipeline, t, d) for t, d in (
        ("rollup_events_by_name_1m", "event_name"),
        ("rollup_events_by_name_country_device_1m", "event_name, country, device_type"),
        ("rollup_uniques_by_name_1h", "event_name"))}
    provenance = pipeline.ch.query(
        "SELECT toString(event_id), _partition, _offset, _index, received_at FROM events ORDER BY 1"
    ).result_rows

    assert httpx.post(f"{api}/v1/batch", json={"events": events}, timeout=30).status_code == 202
    _send_kafka(pipeline, events, library="kafka-copy")
    wait_for(lambda: _health(pipeline)["dedup"]["duplicates_dropped"] >= 2 * n, 60,
             "both copies of every event seen and dropped")
    time.sleep(2)  # a flush interval or four: anything wrongly applied would be upserted by now

    assert pipeline.scalar("SELECT count() FROM events") == n, "duplicates must not reach the table"
    assert pipeline.scalar("SELECT count() FROM events WHERE library = 'kafka-copy'") == 0
    assert pipeline.ch.query(
        "SELECT toString(event_id), _partition, _offset, _index, received_at FROM events ORDER BY 1"
    ).result_rows == provenance, "the first copy keeps its provenance"
    reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
    assert [r.verdict for r in reports] == ["exact"] * 3
    for table, cells in first.items():
        dims = "event_name" if "country" not in table else "event_name, country, device_type"
        assert _rollup_cells(pipeline, table, dims) == cells, table
    assert sum(first["rollup_events_by_name_1m"].values()) == n
    live, views = wait_for(lambda: _live_and_views(pipeline, api), 30, "live figures within a minute")
    assert live["events_this_minute"] == views["events_this_minute"]
    assert live["top_events"] == views["top_events"]
    for period in ("1m", "5m", "15m"):  # both exact at these sizes (HLL below estimation mode)
        assert live["active_users"][period] == views["active_users"][period], period


def _arrive(pipeline: Pipeline, order: str, events: list[dict[str, Any]]) -> None:
    if order == "time":
        _send_kafka(pipeline, sorted(events, key=lambda e: e["timestamp"]))
    elif order == "user":  # an export, user by user, in chunks: windows leave and come back
        ordered = sorted(events, key=lambda e: (e["user_id"], e["timestamp"]))
        for i in range(0, len(ordered), 1000):
            _send_kafka(pipeline, ordered[i:i + 1000])
            wait_for(lambda i=i: pipeline.stored() >= min(i + 1000, len(ordered)), 60, "the chunk stored")
            time.sleep(2.5)  # two eviction passes: the chunk's windows leave memory
    else:  # two services, each with half the users in time order, at the same time
        halves = [[e for e in events if int(e["user_id"].split("-")[1]) % 2 == k] for k in (0, 1)]
        threads = [threading.Thread(target=_send_kafka, args=(pipeline, sorted(h, key=lambda e: e["timestamp"])))
                   for h in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_every_arrival_order_gives_identical_exact_rollups(new_pipeline: Callable[[], Pipeline]) -> None:
    """The same events over the last three hours, in time order, user by user, and interleaved
    from two producers: identical rollups, each equal to a GROUP BY over the raw events. Most
    events are hours behind the newest ones: they are counted, not set aside as late. Evicting
    every second makes windows leave memory and come back for the late events."""
    events = _dataset(4000, seed=5, span_ms=3 * 3_600_000)
    pipelines = {}
    for order in ("time", "user", "interleaved"):
        p = new_pipeline()
        p.settings = p.settings.model_copy(update={
            "aggregate": p.settings.aggregate.model_copy(update={"evict_interval_s": 1.0})})
        p.start_worker()
        _arrive(p, order, events)
        pipelines[order] = p
    cells = {}
    for order, p in pipelines.items():
        reports = wait_for(lambda p=p: _exact(p, len(events)), 120, f"{order}: rollups exact")
        errors = [r.max_uniques_error for r in reports if r.max_uniques_error is not None]
        assert all(e < 0.05 for e in errors)
        cells[order] = (_rollup_cells(p, "rollup_events_by_name_country_device_1m",
                                      "event_name, country, device_type"),
                        _rollup_cells(p, "rollup_uniques_by_name_1h", "event_name"))
        assert sum(cells[order][0].values()) == len(events)
    assert cells["time"] == cells["user"] == cells["interleaved"]
    health = _health(pipelines["user"])["rollups"]
    assert health["states_evicted"] > 0 and health["states_loaded"] > 0, health


def test_verify_tells_exact_incomplete_and_differs_apart(pipeline: Pipeline) -> None:
    """Exit 0 and "exact" when the rollups match; 2 and how many events each window misses
    when raw events never reached a rollup; 1 when a rollup counts more than the raw events."""
    pipeline.start_worker()
    events = _dataset(300, seed=9, span_ms=30 * 60_000)
    _send_kafka(pipeline, events)
    wait_for(lambda: _exact(pipeline, len(events)), 90, "rollups exact")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "verify"], env={**pipeline.env, "PATH": ""},
                              capture_output=True, text=True, timeout=120, check=False)

    exact = run()
    assert exact.returncode == 0 and exact.stdout.strip().endswith("exact"), exact.stdout + exact.stderr
    # Three events stored behind the pipeline's back: no rollup has them.
    pipeline.ch.command(
        "INSERT INTO events (event_id, event_name, user_id, ts, received_at, project_id)"
        " SELECT generateUUIDv4(), 'never_rolled_up', 'u', toDateTime64('2026-01-01 10:00:30', 3, 'UTC'),"
        " now64(3), 'default' FROM numbers(3)")
    incomplete = run()
    assert incomplete.returncode == 2, incomplete.stdout + incomplete.stderr
    assert "incomplete" in incomplete.stdout
    assert "2026-01-01 10:00 never_rolled_up: rollup 0, raw 3" in incomplete.stdout
    assert "1 cells miss 3 events" in incomplete.stdout
    # A partial counted twice (a bug): the rollup has more than the raw events.
    pipeline.ch.command(
        "INSERT INTO rollup_events_by_name_1m (project_id, window_start, event_name, partition, count,"
        " late, sum_errors, sketch, version, state)"
        " SELECT project_id, window_start, event_name, partition + 100, count, 0, 0, '', 1, ''"
        " FROM rollup_events_by_name_1m FINAL LIMIT 1")
    differs = run()
    assert differs.returncode == 1 and differs.stdout.strip().endswith("differs"), differs.stdout
    by_rollup = {r.rollup: r for r in verify(pipeline.ch, pipeline.settings.aggregate.rollups)}
    assert by_rollup["events_by_name_1m"].verdict == "differs"
    assert by_rollup["uniques_by_name_1h"].verdict == "incomplete"
    assert by_rollup["uniques_by_name_1h"].missing_events == 3


def test_a_year_of_history_in_one_batch_is_stored_and_rolled_up(pipeline: Pipeline) -> None:
    """An import whose events span 300 days (300 day partitions in one insert block) is stored
    and counted, not refused by ClickHouse and retried forever."""
    pipeline.start_worker()
    now = int(time.time() * 1000)
    events = _dataset(600, seed=17, span_ms=60_000)
    for i, e in enumerate(events):
        e["timestamp"] = now - (i % 300) * 86_400_000 - 3_600_000
    _send_kafka(pipeline, events)
    reports = wait_for(lambda: _exact(pipeline, len(events)), 120, "a year of history stored and rolled up")
    assert pipeline.scalar("SELECT uniqExact(toDate(ts)) FROM events") == 300
    assert all(r.cells > 0 for r in reports)


def test_a_backfill_of_events_stored_beyond_the_dedup_horizon_is_dropped_too(pipeline: Pipeline) -> None:
    """Events tracked live, then sent again by a nightly backfill long after the dedup state
    forgot them: their copies are found in the events table and change nothing."""
    pipeline.settings = pipeline.settings.model_copy(update={
        "worker": pipeline.settings.worker.model_copy(update={"dedup_horizon_s": 2})})
    pipeline.start_worker()
    events = _dataset(400, seed=23, span_ms=2 * 3_600_000)
    _send_kafka(pipeline, events)
    wait_for(lambda: _exact(pipeline, len(events)), 90, "the live copies stored and rolled up")
    cells = _rollup_cells(pipeline, "rollup_events_by_name_1m", "event_name")
    time.sleep(3)  # the horizon (2 s) and a slice of it pass: the ids leave the dedup state
    _send_kafka(pipeline, events, library="backfill")
    wait_for(lambda: _health(pipeline)["dedup"]["found_in_events_table"] >= len(events), 60,
             "the backfill's copies found in the events table")
    time.sleep(2)
    assert pipeline.scalar("SELECT count() FROM events") == len(events)
    assert pipeline.scalar("SELECT count() FROM events WHERE library = 'backfill'") == 0
    assert _rollup_cells(pipeline, "rollup_events_by_name_1m", "event_name") == cells
    assert all(r.verdict == "exact" for r in verify(pipeline.ch, pipeline.settings.aggregate.rollups))
