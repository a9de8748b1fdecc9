"""`rearview replay` on the real embedded stack: rebuild, verify, hand over, swap, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Self

import pytest

from app import clickhouse
from app import replay as rp
from app.verify import overall, verify
from tables.rollup_tables import ensure_tables
from tables.rollups import RollupSpec
from tests.integration.conftest import Pipeline, wait_for
from tests.integration.replay_helpers import events_over_days, exact, send

pytestmark = pytest.mark.integration


def test_events_replay_rebuilds_every_event_once_and_swaps_with_a_live_worker(pipeline: Pipeline) -> None:
    events = events_over_days(3000, 3)
    send(pipeline, events, corrupt=3)
    send(pipeline, events[:500])  # the same events again: duplicates
    pipeline.start_worker()
    wait_for(lambda: exact(pipeline, 3000), 120, "the live pipeline to store 3,000 events exactly")
    letters = pipeline.scalar("SELECT count() FROM dlq")

    job = rp.start(pipeline.settings, rp.Request(("events",), source="kafka"))

    assert isinstance(job, rp.Job)
    assert job.status == "swapped", job.error
    totals = job.totals()
    assert totals["events"] == 3500 + 3 and totals["duplicates"] == 500 and totals["letters"] == 3
    assert pipeline.scalar("SELECT count() FROM events") == 3000
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == 3000
    assert pipeline.scalar("SELECT countIf(_clean_offset = 549755813887) FROM events") == 3000
    assert pipeline.scalar("SELECT count() FROM dlq FINAL") == letters  # not written twice
    assert overall(verify(pipeline.ch, pipeline.settings.aggregate.rollups)) == "exact"


class Traffic:
    """Live events at a steady pace on a thread, until stopped."""

    def __init__(self, pipeline: Pipeline, per_tick: int = 40, seed: int = 7) -> None:
        self.pipeline, self.per_tick, self.seed = pipeline, per_tick, seed
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            batch = events_over_days(self.per_tick, 0.0001, seed=self.seed * 1000 + tick)
            send(self.pipeline, batch, per_message=20)
            self.sent += len(batch)
            tick += 1
            time.sleep(0.1)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


BY_COUNTRY = RollupSpec.model_validate({"name": "by_country_1h", "dimensions": ["event_name", "country"],
                                        "granularity": "hour", "uniques": True})


def test_a_rollup_added_after_three_days_is_backfilled_while_live_traffic_continues(pipeline: Pipeline) -> None:
    send(pipeline, events_over_days(3000, 3))
    first = pipeline.start_worker()
    wait_for(lambda: exact(pipeline, 3000), 120, "3,000 events stored exactly")
    first.stop()
    s = pipeline.settings
    pipeline.settings = s.model_copy(update={"aggregate": s.aggregate.model_copy(
        update={"rollups": [*s.aggregate.rollups, BY_COUNTRY]})})
    ensure_tables(pipeline.ch, pipeline.settings.aggregate.rollups)  # `rearview migrate`
    pipeline.start_worker("worker2")  # the new configuration: new events reach the new rollup

    with Traffic(pipeline) as traffic:
        wait_for(lambda: traffic.sent >= 400, 60, "live traffic")
        plan = rp.start(pipeline.settings, rp.Request(("rollup:by_country_1h",)), dry_run=True)
        assert isinstance(plan, rp.Plan) and plan.estimated_events >= 3000
        job = rp.start(pipeline.settings, rp.Request(("rollup:by_country_1h",)))
        wait_for(lambda: traffic.sent >= 1200, 60, "live traffic after the swap")
    assert isinstance(job, rp.Job)
    assert job.status == "swapped", job.error
    total = 3000 + traffic.sent
    wait_for(lambda: exact(pipeline, total), 120, f"{total} events and every rollup exact",
             describe=lambda: str([(r.rollup, r.verdict, r.rollup_events, r.raw_events) for r in
                                   verify(pipeline.ch, pipeline.settings.aggregate.rollups)]))
    reports = [r for r in verify(pipeline.ch, [BY_COUNTRY])]
    assert sum(r.rollup_events for r in reports) == total


def test_a_changed_pii_policy_is_applied_to_every_stored_event_by_an_events_replay(pipeline: Pipeline) -> None:
    events = events_over_days(2000, 1, phone_every=4)
    send(pipeline, events)
    send(pipeline, events[:300])  # copies: still one row each after the replay
    worker = pipeline.start_worker()
    wait_for(lambda: exact(pipeline, 2000), 120, "2,000 events stored exactly")
    assert pipeline.scalar("SELECT countIf(properties['contact'] = '[phone]') FROM events") == 500
    users_before = pipeline.scalar("SELECT uniqExact(user_id) FROM events")
    worker.stop()
    s = pipeline.settings
    pipeline.settings = s.model_copy(update={"pii": s.pii.model_copy(update={"policies": {"phone": "hash"}})})
    pipeline.start_worker("worker2")  # the live pipeline takes the new policy too

    with Traffic(pipeline) as traffic:  # and keeps receiving events meanwhile
        wait_for(lambda: traffic.sent >= 400, 60, "live traffic")
        job = rp.start(pipeline.settings, rp.Request(("events",)))
        wait_for(lambda: traffic.sent >= 1200, 60, "live traffic after the swap")

    assert isinstance(job, rp.Job)
    assert job.status == "swapped", job.error
    total = 2000 + traffic.sent
    wait_for(lambda: exact(pipeline, total), 120, f"{total} events stored once and every rollup exact",
             describe=lambda: str((pipeline.scalar("SELECT count() FROM events"), [
                 (r.rollup, r.verdict, r.rollup_events, r.raw_events)
                 for r in verify(pipeline.ch, pipeline.settings.aggregate.rollups)])))
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == total
    assert pipeline.scalar("SELECT countIf(properties['contact'] = '[phone]') FROM events") == 0
    hashed = pipeline.scalar("SELECT countIf(startsWith(properties['contact'], 'phone:hm_')) FROM events")
    assert hashed == 500
    # the same secret as live: equal numbers hash equal (97 distinct numbers)
    assert pipeline.scalar("SELECT uniqExact(properties['contact']) FROM events WHERE properties['contact'] != ''") == 97
    assert pipeline.scalar("SELECT uniqExact(user_id) FROM events WHERE _clean_offset = 549755813887") == users_before


def test_queries_running_in_a_loop_across_the_swap_never_fail(pipeline: Pipeline) -> None:
    send(pipeline, events_over_days(3000, 2))
    pipeline.start_worker()
    wait_for(lambda: exact(pipeline, 3000), 120, "3,000 events stored exactly")
    rollup = f"rollup_{pipeline.settings.aggregate.rollups[0].name}"
    errors: list[str] = []
    answers: list[tuple[int, int]] = []
    stop = threading.Event()

    def query_loop() -> None:
        client = clickhouse.connect(pipeline.settings.clickhouse)
        try:
            while not stop.is_set():
                try:
                    n = int(client.query("SELECT count() FROM events").result_rows[0][0])
                    m = int(client.query(f"SELECT sum(count) FROM {rollup} FINAL").result_rows[0][0])
                    answers.append((n, m))
                except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                    errors.append(repr(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=query_loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        job = rp.start(pipeline.settings, rp.Request(("events",)))
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert isinstance(job, rp.Job)
    assert job.status == "swapped", job.error
    assert not errors, errors[:3]
    assert len(answers) > 20
    assert {n for n, _ in answers} == {3000}  # the old table or the new one, each whole
    assert answers[-1] == (3000, 3000)


def test_a_replay_killed_halfway_resumes_from_its_commit_and_ends_exact(pipeline: Pipeline) -> None:
    events = events_over_days(8000, 2)
    send(pipeline, events, per_message=50, corrupt=2)
    send(pipeline, events[:1000], per_message=50)
    pipeline.start_worker()
    wait_for(lambda: exact(pipeline, 8000), 180, "8,000 events stored exactly")
    cli = [sys.executable, "-m", "app.cli", "replay", "start", "events", "--rate", "1500"]
    env = {**os.environ, **pipeline.env}
    log = (pipeline.tmp / "replay-killed.log").open("wb")
    child = subprocess.Popen(cli, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def halfway() -> bool:
            found = rp.status(pipeline.settings)
            return bool(found) and 2000 < sum(p.committed for p in found[0].partitions.values()) * 50
        wait_for(halfway, 60, "the replay to commit a part of events.raw")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
    job = rp.status(pipeline.settings)[0]
    assert job.status == "running" and job.totals()["events"] < 9002
    with pytest.raises(rp.ReplayError, match="resume"):
        rp.start(pipeline.settings, rp.Request(("events",)))

    resumed = subprocess.run([sys.executable, "-m", "app.cli", "replay", "resume", job.job_id], env=env, check=False,
                             capture_output=True, text=True, timeout=300)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done = rp.status(pipeline.settings)[0]
    assert done.status == "swapped" and done.totals()["events"] == 9002
    assert pipeline.scalar("SELECT count() FROM events") == 8000
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == 8000
    assert overall(verify(pipeline.ch, pipeline.settings.aggregate.rollups)) == "exact"
    status = subprocess.run([sys.executable, "-m", "app.cli", "replay", "status"], env=env, check=False,
                            capture_output=True, text=True, timeout=60)
    assert f"{job.job_id}: events, generation" in status.stdout and "swapped" in status.stdout


def test_dry_run_prints_the_plan_and_a_bad_target_is_one_line(pipeline: Pipeline) -> None:
    send(pipeline, events_over_days(1000, 1), corrupt=1)
    pipeline.start_worker()
    wait_for(lambda: exact(pipeline, 1000), 120, "1,000 events stored exactly")
    env = {**os.environ, **pipeline.env}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "replay", *args], env=env, check=False,
                              capture_output=True, text=True, timeout=120)

    plan = cli("start", "events", "--dry-run", "--source", "kafka")
    assert plan.returncode == 0, plan.stderr
    assert "targets: events" in plan.stdout and "partition 0: kafka, offsets 0 .. caught up" in plan.stdout
    assert "estimated events: 1,001" in plan.stdout
    assert pipeline.scalar("SELECT count() FROM generations") == 0  # nothing created
    bad = cli("start", "rollup:nope")
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "not configured" in bad.stderr
    ranged = cli("start", "events", "--offsets", "0:0-5")
    assert ranged.returncode == 1 and "whole table" in ranged.stderr
