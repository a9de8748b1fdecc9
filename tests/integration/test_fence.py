"""The replay fence against a real worker: pause, expiry, and the hand-over after a swap."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

import schemas
from agents.schema_registry import register
from app.generate import EventGenerator, send_kafka
from app.verify import verify
from tables import fence as fences
from tables import generations, rollup_tables
from tables.dedup import REPLAYED_OFFSET
from tables.fence import Fence, FenceLost, FenceTimeout
from tables.state import REPLAY_PARTITION_BASE
from tests.integration.conftest import NotYet, Pipeline, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = {0, 1, 2, 3}


def _send(pipeline: Pipeline, count: int, seed: int, rate: float = 0, at: float | None = None) -> int:
    """*count* events of generator *seed*, timed now (or all at epoch seconds *at*: the same
    seed and *at* give the same events again)."""
    s = pipeline.settings
    batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
    events = EventGenerator(users=500, seed=seed).events(*(() if at is None else (lambda: at,)))
    return send_kafka(s.kafka.bootstrap_servers, s.kafka.topics.raw, batch_id, events, count, rate, 100)


def _health(pipeline: Pipeline, worker: str = "worker") -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{pipeline.urls[worker]}/health", timeout=10).json()
    return body


def _rows(pipeline: Pipeline) -> tuple[int, int]:
    """(rows, distinct event_ids) of the events table, without FINAL: a doubled event shows."""
    rows, ids = pipeline.ch.query("SELECT count(), uniqExact(event_id) FROM events").result_rows[0]
    return int(rows), int(ids)


def _exact(pipeline: Pipeline, total: int) -> bool | NotYet:
    ids = _rows(pipeline)[1]
    if ids < total:
        return NotYet(f"{ids} of {total} events stored")
    reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
    wrong = [f"{r.rollup}: {r.verdict} ({r.rollup_events} vs {r.raw_events})" for r in reports
             if r.verdict != "exact"]
    return NotYet(", ".join(wrong)) if wrong else True


def _validated(pipeline: Pipeline, *workers: str) -> int:
    return sum(int(_health(pipeline, w)["clean_events"]) for w in workers or ("worker",))


def test_a_fence_pauses_the_live_store_until_it_is_released(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    assert _send(pipeline, 2_000, seed=1) == 2_000
    wait_for(lambda: _exact(pipeline, 2_000), 90, "the first events stored and rolled up")

    fence = Fence(pipeline.ch, "test")
    fence_id = fence.request("test: pause", ttl_s=60)
    seen: list[tuple[set[int], set[int]]] = []
    fence.wait(fence_id, 30, progress=lambda acked, owned: seen.append((acked, owned)))
    assert fence.owned_partitions() == PARTITIONS
    assert fence.acknowledged(fence_id) == PARTITIONS
    assert seen[-1] == (PARTITIONS, PARTITIONS)

    assert _send(pipeline, 3_000, seed=2) == 3_000
    # The validate stage still runs; the store stores nothing while the fence holds.
    wait_for(lambda: _validated(pipeline) >= 5_000, 60, "the new events validated")
    for _ in range(3):
        fence.renew(fence_id, ttl_s=60)
        assert _rows(pipeline) == (2_000, 2_000)
        threading.Event().wait(0.5)  # a few of the store's polls
    assert _health(pipeline)["replay_fences"]["paused_for"] == 1

    fence.release(fence_id, rebegin=False)
    wait_for(lambda: _exact(pipeline, 5_000), 90, "the events sent during the fence stored")
    assert _rows(pipeline) == (5_000, 5_000)
    with pytest.raises(FenceLost, match="released"):
        fence.renew(fence_id)
    assert _health(pipeline)["replay_fences"] == {"paused_for": 1, "abandoned": 0, "rebegins": 0}


def test_an_expired_fence_is_abandoned_and_the_store_resumes(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    assert _send(pipeline, 500, seed=3) == 500
    wait_for(lambda: _exact(pipeline, 500), 90, "the first events stored")
    fence = Fence(pipeline.ch, "test")
    fence_id = fence.request("test: a replay that dies", ttl_s=4)
    fence.wait(fence_id, 30)
    assert _send(pipeline, 1_500, seed=4) == 1_500
    wait_for(lambda: _validated(pipeline) >= 2_000, 60, "the new events validated")
    assert _rows(pipeline)[1] == 500 or fences.poll(pipeline.ch)[0].expired
    # Nobody renews: once it expires the store resumes on its own.
    wait_for(lambda: _exact(pipeline, 2_000), 90, "the store resuming after the expiry")
    assert _rows(pipeline) == (2_000, 2_000)
    assert _health(pipeline)["replay_fences"]["abandoned"] == 1
    with pytest.raises(FenceLost, match="expired"):
        fence.renew(fence_id)


def _owners(pipeline: Pipeline) -> int:
    """Stores whose latest heartbeat announces partitions."""
    return int(pipeline.scalar(
        "SELECT count() FROM (SELECT worker, argMax(partitions, at) AS p FROM store_heartbeats"
        " GROUP BY worker) WHERE notEmpty(p)"))


def test_a_rebalance_during_a_fence_keeps_every_store_paused(pipeline: Pipeline) -> None:
    """A second worker joins while the fence holds: partitions move, the newcomer pauses
    before it begins any (and acknowledges them), nothing is stored until the release, then
    everything is stored once."""
    pipeline.start_worker("worker-a")
    assert _send(pipeline, 1_000, seed=6) == 1_000
    wait_for(lambda: _exact(pipeline, 1_000), 90, "the first events stored")
    fence = Fence(pipeline.ch, "test")
    fence_id = fence.request("test: rebalance", ttl_s=120)
    fence.wait(fence_id, 30)
    pipeline.start_worker("worker-b")
    wait_for(lambda: _owners(pipeline) == 2, 60, "both workers owning partitions")
    assert _send(pipeline, 3_000, seed=7) == 3_000
    wait_for(lambda: _validated(pipeline, "worker-a", "worker-b") >= 4_000, 60, "the new events validated")
    fence.wait(fence_id, 30)  # the newcomer's partitions are acknowledged too
    assert fence.acknowledged(fence_id) >= fence.owned_partitions() == PARTITIONS
    for _ in range(3):
        assert _rows(pipeline) == (1_000, 1_000)
        threading.Event().wait(0.5)
    assert _health(pipeline, "worker-b")["replay_fences"]["paused_for"] == 1
    fence.release(fence_id, rebegin=False)
    wait_for(lambda: _exact(pipeline, 4_000), 90, "the events sent during the fence stored")
    assert _rows(pipeline) == (4_000, 4_000)


def test_wait_names_the_partitions_that_never_acknowledge(pipeline: Pipeline) -> None:
    """A store that heartbeats but never acknowledges (one that hangs): wait gives up and names
    its partitions. No store at all: nothing needs pausing."""
    fence = Fence(pipeline.ch, "test")
    fence_id = fence.request("test", ttl_s=30)
    fence.wait(fence_id, 5)  # no live store: returns at once
    fences.heartbeat(pipeline.ch, "hung-store", [1, 3])
    with pytest.raises(FenceTimeout, match="partitions 1, 3"):
        fence.wait(fence_id, 1.5)
    fence.release(fence_id, rebegin=False)


def _copy_as_replay(pipeline: Pipeline, gen: generations.Generation) -> None:
    """Fill a generation as an `events` replay would: every stored event with the replayed
    position, every rollup partial in replay space (so nothing of it is a live store's)."""
    ch = pipeline.ch
    events = gen.tables["events"]
    ch.command(f"INSERT INTO `{events}` SELECT * REPLACE (toUInt64({REPLAYED_OFFSET}) AS _clean_offset,"
               " toUInt32(0) AS _clean_index) FROM events FINAL")
    for spec in pipeline.settings.aggregate.rollups:
        live = rollup_tables.table_name(spec)
        ch.command(f"INSERT INTO `{gen.tables[live]}` SELECT * REPLACE (partition + {REPLAY_PARTITION_BASE}"
                   f" AS partition) FROM `{live}` FINAL")


def test_release_with_rebegin_makes_the_store_continue_from_the_swapped_tables(pipeline: Pipeline) -> None:
    """A generation holding every event so far (at the replayed position) and every rollup in
    replay space is swapped in under a fence while events keep coming. After the release the
    store begins again from it: its live partials start from nothing (a store that kept its
    memory would write its old counts beside the replayed ones), copies of replayed events are
    duplicates (found in memory for recent ones, in the table for events older than the dedup
    horizon, which the store does not load), and the rollups equal the events."""
    pipeline.start_worker()
    old_at, historic = time.time() - 3 * 86_400, 300
    assert _send(pipeline, historic, seed=8, at=old_at) == historic
    total = 12_000 + historic
    sender = threading.Thread(target=_send, args=(pipeline, total - historic, 5, 1_500))
    sender.start()
    try:
        wait_for(lambda: _rows(pipeline)[1] >= 3_000, 90, "events flowing")
        ch = pipeline.ch
        fence = Fence(ch, "test")
        fence_id = fence.request("test: swap", ttl_s=60)
        fence.wait(fence_id, 30)
        gen = generations.create(ch, pipeline.settings.aggregate.rollups, [generations.TARGET_EVENTS], "default")
        _copy_as_replay(pipeline, gen)
        stored = _rows(pipeline)[1]
        assert _exact(pipeline, stored)
        generations.mark(ch, gen.number, "verified")
        fence.renew(fence_id)
        generations.swap(ch, gen.number)
        fence.release(fence_id, rebegin=True)
        assert pipeline.scalar("SELECT countIf(_clean_offset = {o:UInt64}) FROM events", o=REPLAYED_OFFSET) == stored
    finally:
        sender.join()
    # The same events again (same ids, new positions in events.clean): duplicates of replayed rows.
    resent = _send(pipeline, 1_000, seed=5) + _send(pipeline, historic, seed=8, at=old_at)
    wait_for(lambda: _exact(pipeline, total), 120, "every event stored once, rollups exact")
    wait_for(lambda: _validated(pipeline) >= total + resent, 60, "the copies validated")
    wait_for(lambda: int(_health(pipeline)["dedup"]["duplicates_dropped"]) >= resent, 60, "the copies dropped")
    assert _health(pipeline)["dedup"]["found_in_events_table"] == historic
    assert _rows(pipeline) == (total, total)
    assert _exact(pipeline, total)
    assert _health(pipeline)["replay_fences"]["rebegins"] == 1
    for spec in pipeline.settings.aggregate.rollups:
        assert pipeline.scalar(f"SELECT sum(count) FROM `{rollup_tables.table_name(spec)}` FINAL") == total
