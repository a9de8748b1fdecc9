"""`rearview replay`: rebuild a table into a new generation, verify it, and swap it in.

Commands (app/cli.py calls these functions; each takes the settings, nothing else global):

- `start`: plan (targets, source per partition, ranges, estimate), create the generation
  (tables/generations.py), record the job, run it (app/replay/engine.py);
- `resume`: continue a job from its committed positions after a crash or a SIGKILL;
- `status`: every job, its partitions and state;
- `rollback` / `gc`: tables/generations.py, for the swapped generations.

See docs/replay.md for the whole story: targets, sources, the hand-over, resume, verify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from agents.archive import Archive
from app import clickhouse
from app.replay import jobs
from app.replay.engine import Advance, Runtime, run
from app.replay.jobs import Job, PartitionProgress, ReplayError
from app.replay.plan import (
    EVENTS,
    Logs,
    PartitionPlan,
    Plan,
    generation_targets,
    offsets_at,
    parse_offsets,
    parse_targets,
    parse_time,
    plan_events,
    refuse_lost_positions,
    stored_counts,
)
from app.replay.sources import low_watermarks, topic_partitions
from app.settings import Settings
from tables import generations
from tables.logs import load_bases

__all__ = ["Job", "Plan", "ReplayError", "Request", "gc", "make_plan", "resume", "rollback", "start", "status"]


@dataclass(frozen=True)
class Request:
    """What `rearview replay start` was asked."""

    targets: tuple[str, ...]
    source: str = "auto"  # kafka | archive | auto
    from_time: str | None = None
    offsets: str | None = None
    rate: float = 0.0


def archive_of(settings: Settings, url: str | None = None) -> Archive | None:
    """The raw archive: *url*, or the archive settings' url (None: no archive configured)."""
    url = url or getattr(getattr(settings, "archive", None), "url", None)
    return Archive(str(url)) if url else None


def _client(settings: Settings) -> Client:
    return clickhouse.connect(settings.clickhouse)


def make_plan(settings: Settings, request: Request, archive: Archive | None, client: Client) -> Plan:
    specs = settings.aggregate.rollups
    targets = parse_targets(request.targets, specs)
    if request.source not in ("kafka", "archive", "auto"):
        raise ReplayError(f"--source {request.source!r}: kafka, archive or auto")
    if request.from_time and request.offsets:
        raise ReplayError("--from and --offsets cannot be combined")
    topic = settings.kafka.topics.raw
    if targets != (EVENTS,):
        n = int(client.query("SELECT count() FROM events").result_rows[0][0])
        k = settings.kafka.topics.partitions
        parts = tuple(PartitionPlan(p, "events", 0, None, None, n // k + (1 if p < n % k else 0))
                      for p in range(k))
        return Plan(targets, "events", parts,
                    ("rollups are rebuilt from the events table, each events.clean partition in position order",))
    partitions = topic_partitions(settings.kafka.bootstrap_servers, topic)
    ranges: dict[int, tuple[int, int | None]] = {p: (0, None) for p in partitions}
    notes: list[str] = []
    if request.offsets:
        ranges = parse_offsets(request.offsets)
        unknown = sorted(set(ranges) - set(partitions))
        if unknown:
            raise ReplayError(f"--offsets names partitions {unknown} that {topic} does not have")
    elif request.from_time:
        t = parse_time(request.from_time)
        found = offsets_at(client, topic, t)
        if archive is not None:
            for p in partitions:
                at = archive.first_offset_at(topic, p, t)
                if at is not None:
                    found[p] = min(at, found.get(p, at))
        ranges = {p: (found[p], None) for p in partitions if p in found}
        if not ranges:
            raise ReplayError(f"nothing stored was received at or after {request.from_time}")
    low = low_watermarks(settings.kafka.bootstrap_servers, topic, partitions, load_bases(client))
    archive_next = {p: archive.next_offset(topic, p) for p in partitions} if archive is not None else None

    def archived(p: int, start: int, stop: int | None) -> int:
        assert archive is not None
        total = 0
        for f in archive.files(topic).get(p, []):
            lo, hi = max(start, f.first_offset), min(stop if stop is not None else f.last_offset + 1, f.last_offset + 1)
            if hi > lo:
                total += round(f.records * (hi - lo) / max(1, f.last_offset + 1 - f.first_offset))
        return total

    logs = Logs(low, archive_next, archived if archive is not None else None)
    plans = plan_events(sorted(ranges), request.source, logs, ranges, stored_counts(client, topic, ranges))
    if archive is not None:
        _refuse_lost_positions(archive, client, topic, plans)
    if request.source == "auto" and any(p.source != "kafka" for p in plans):
        notes.append("the archive up to where Kafka's log begins, Kafka after it")
    if any(p.estimated_events == 0 for p in plans):
        notes.append("estimates come from the events and dlq tables and the archive index (archived"
                     " records are messages: a batch message holds many events)")
    return Plan(targets, request.source, plans, tuple(notes))


def _refuse_lost_positions(archive: Archive, client: Client, topic: str, plans: tuple[PartitionPlan, ...]) -> None:
    """`refuse_lost_positions` over the archive part of each partition's plan."""
    for plan in plans:
        stop = plan.switch_at if plan.source == "archive+kafka" else plan.stop
        if plan.source != "kafka" and stop is not None:
            refuse_lost_positions(archive, client, topic, plan.partition, plan.start, stop)


def start(settings: Settings, request: Request, *, dry_run: bool = False, archive: Archive | None = None,
          advance: Advance | None = None, stop_after_events: int | None = None,
          on_plan: Callable[[Plan], None] | None = None) -> Plan | Job:
    """Plan, and unless *dry_run*, create the generation and run the job to its end
    (*on_plan* sees the plan first: a progress bar takes its estimate as total)."""
    client = _client(settings)
    try:
        plan = make_plan(settings, request, archive, client)
        if dry_run:
            return plan
        if on_plan is not None:
            on_plan(plan)
        if plan.targets == (EVENTS,) and (request.from_time or request.offsets):
            raise ReplayError("the events target rebuilds the whole table: a range (--from, --offsets)"
                              " would leave the events before it out of the new generation;"
                              " `--dry-run` shows what the range holds")
        jobs.ensure_table(client)
        busy = jobs.unfinished_for(client, plan.targets)
        if busy is not None:
            raise ReplayError(f"job {busy.job_id} ({', '.join(busy.targets)}) is unfinished ({busy.status}):"
                              f" `rearview replay resume {busy.job_id}`, or `rearview replay cancel {busy.job_id}`")
        specs = settings.aggregate.rollups
        gen = generations.create(client, specs, generation_targets(plan.targets, specs), settings.project_id)
        job = Job(jobs.new_job_id(), plan.targets, gen.number, plan.source, limit_rate=request.rate)
        for p in plan.partitions:
            key = str(p.partition) if plan.targets == (EVENTS,) else f"live:{p.partition}"
            job.partitions[key] = PartitionProgress(p.source, p.start, p.stop, p.start, p.switch_at)
        jobs.save(client, job)
    finally:
        client.close()
    rt = Runtime(settings, archive, advance or (lambda n: None), stop_after_events)
    return run(rt, job)


def resume(settings: Settings, job_id: str, *, archive: Archive | None = None, advance: Advance | None = None,
           rate: float | None = None) -> Job:
    client = _client(settings)
    try:
        job = jobs.load(client, job_id)
    finally:
        client.close()
    if job.finished:
        raise ReplayError(f"job {job_id} is {job.status}: nothing to resume")
    if rate is not None:
        job.limit_rate = rate
    return run(Runtime(settings, archive, advance or (lambda n: None)), job)


def cancel(settings: Settings, job_id: str) -> Job:
    client = _client(settings)
    try:
        job = jobs.load(client, job_id)
        if job.finished:
            raise ReplayError(f"job {job_id} is {job.status}: nothing to cancel")
        job.status = "cancelled"
        jobs.save(client, job)
        generations.mark(client, job.generation, "failed", f"job {job_id} cancelled")
        return job
    finally:
        client.close()


def status(settings: Settings) -> list[Job]:
    client = _client(settings)
    try:
        return jobs.all_jobs(client)
    finally:
        client.close()


def rollback(settings: Settings, generation: int) -> None:
    """Exchange a swapped generation back, under a fence like the swap (the live stores begin
    again from the restored tables)."""
    from tables.fence import Fence

    r = settings.replay
    client = _client(settings)
    try:
        fence = Fence(client, owner=f"rollback:{generation}")
        fence_id = fence.request(f"rollback of generation {generation}", ttl_s=r.fence_ttl_s)
        try:
            fence.wait(fence_id, r.fence_timeout_s)
            generations.rollback(client, generation)
        except BaseException:
            fence.release(fence_id, rebegin=False)
            raise
        fence.release(fence_id, rebegin=True)
    finally:
        client.close()


def gc(settings: Settings, keep: int = 0) -> list[str]:
    client = _client(settings)
    try:
        return generations.gc(client, keep)
    finally:
        client.close()
