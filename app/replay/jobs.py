"""Replay jobs, persisted in ClickHouse: what `rearview replay status` shows and `resume` continues.

A job is one row of the ``replay_jobs`` table (ReplacingMergeTree on ``updated_at``: every save
upserts the whole job, the newest row wins). It holds the targets, the generation being built,
the source, and per source partition the range to read and the *committed* position: the next
position to read, below which every effect (generation rows, dead letters, rollup states) is
durable. A resumed job restores its state from the generation's tables and reads again from
the committed positions, so whatever was written after the last commit is written again, and
the writes are idempotent (see app/replay/process.py).

The table is created here (CREATE TABLE IF NOT EXISTS) rather than by a numbered migration: it
is the replay's own bookkeeping, read by nothing else, and a deployment that never replays
never needs it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from core.exceptions import RearviewError

TABLE = "replay_jobs"

# Jobs in these states are done with: another job may take their targets.
FINISHED = frozenset({"swapped", "cancelled"})

DDL = f"""CREATE TABLE IF NOT EXISTS {TABLE}
(
    job_id     String,
    targets    Array(String),
    generation UInt32,
    source     String,
    status     String,
    state      String,
    error      String,
    created_at DateTime64(3, 'UTC'),
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY job_id"""


class ReplayError(RearviewError):
    """A replay cannot start, resume or swap: the message says why and what to do."""


@dataclass
class PartitionProgress:
    """One source partition of a job. Positions are Kafka offsets of events.raw (events target)
    or packed (offset, index) positions of the events table (rollup targets)."""

    source: str  # kafka | archive | archive+kafka | events
    start: int
    stop: int | None  # None: read until caught up
    committed: int  # the next position to read; everything below is durable
    switch_at: int | None = None  # archive+kafka: the first offset read from Kafka
    messages: int = 0
    events: int = 0  # event slots read (a message that cannot be decoded is one)
    rows: int = 0  # written into the generation (first copies)
    duplicates: int = 0
    letters: int = 0  # dead letters at this partition's positions (new or already recorded)
    letters_elsewhere: int = 0  # letters of redrive messages, filed at their original position
    skipped: int = 0  # other events of a redriven batch letter (stored when first read)


@dataclass
class Job:
    job_id: str
    targets: tuple[str, ...]
    generation: int
    source: str
    status: str = "planned"  # planned | running | caught_up | fencing | verified | swapped | refused | cancelled
    partitions: dict[str, PartitionProgress] = field(default_factory=dict)
    error: str = ""
    rate: float = 0.0  # events/s over the last checkpoint interval
    limit_rate: float = 0.0  # --rate: events/s cap, 0 = none
    pid: int = 0
    host: str = ""
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in self.partitions.values():
            for name in ("messages", "events", "rows", "duplicates", "letters", "letters_elsewhere", "skipped"):
                out[name] = out.get(name, 0) + int(getattr(part, name))
        return out


def new_job_id() -> str:
    return f"r{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def ensure_table(client: Client) -> None:
    client.command(DDL)


def save(client: Client, job: Job) -> None:
    """Upsert the whole job (the newest row wins)."""
    job.updated_at = datetime.now(UTC)
    job.pid, job.host = os.getpid(), socket.gethostname()
    state = {
        "partitions": {k: asdict(v) for k, v in job.partitions.items()},
        "rate": job.rate, "limit_rate": job.limit_rate, "pid": job.pid, "host": job.host,
        "notes": job.notes[-20:],
    }
    client.insert(
        TABLE,
        [[job.job_id, list(job.targets), job.generation, job.source, job.status,
          json.dumps(state), job.error, job.created_at, job.updated_at]],
        column_names=["job_id", "targets", "generation", "source", "status", "state", "error",
                      "created_at", "updated_at"],
    )


def _job(row: Sequence[Any]) -> Job:
    job_id, targets, generation, source, status, state_text, error, created, updated = row
    state = json.loads(state_text or "{}")
    return Job(
        job_id=str(job_id), targets=tuple(str(t) for t in targets), generation=int(generation),
        source=str(source), status=str(status),
        partitions={k: PartitionProgress(**v) for k, v in state.get("partitions", {}).items()},
        error=str(error), rate=float(state.get("rate", 0.0)),
        limit_rate=float(state.get("limit_rate", 0.0)), pid=int(state.get("pid", 0)),
        host=str(state.get("host", "")), created_at=created, updated_at=updated,
        notes=list(state.get("notes", [])),
    )


_COLUMNS = "job_id, targets, generation, source, status, state, error, created_at, updated_at"


def load(client: Client, job_id: str) -> Job:
    ensure_table(client)
    rows = client.query(f"SELECT {_COLUMNS} FROM {TABLE} FINAL WHERE job_id = {{j:String}}",
                        parameters={"j": job_id}).result_rows
    if not rows:
        raise ReplayError(f"no replay job {job_id!r} (`rearview replay status` lists them)")
    return _job(rows[0])


def all_jobs(client: Client) -> list[Job]:
    ensure_table(client)
    rows = client.query(f"SELECT {_COLUMNS} FROM {TABLE} FINAL ORDER BY created_at").result_rows
    return [_job(r) for r in rows]


def unfinished_for(client: Client, targets: tuple[str, ...]) -> Job | None:
    """An unfinished job that rebuilds any of *targets* (the `events` target rebuilds every
    rollup too, so it overlaps every rollup target)."""
    wanted = set(targets)
    for job in all_jobs(client):
        if job.finished:
            continue
        theirs = set(job.targets)
        if wanted & theirs or ("events" in wanted and theirs) or ("events" in theirs and wanted):
            return job
    return None
