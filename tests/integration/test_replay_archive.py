"""A broker emptied (the embedded one keeps its log in memory): the archive restores every event."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from agents.archive import Archive
from app import replay as rp
from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.process import ChildProcess, python_module
from app.replay.engine import Stopped
from app.verify import overall, verify
from tables.logs import load_bases
from tests.integration.conftest import Pipeline, Services, make_pipeline, wait_for
from tests.integration.replay_helpers import events_over_days, exact, send
from tests.integration.test_replay import BY_COUNTRY

pytestmark = pytest.mark.integration


@pytest.fixture
def archived(services: Services, tmp_path: Path) -> Iterator[Pipeline]:
    p = make_pipeline(services, tmp_path, archive={"url": str(tmp_path / "archive"), "roll_records": 300,
                                                   "roll_interval_s": 1.0})
    try:
        yield p
    finally:
        p.close()


def _digest(pipeline: Pipeline) -> list[list[object]]:
    """Every stored event (its provenance and receive time are those of whichever copy was
    stored first: live, the copy that reached events.clean first; in a replay, the first read)."""
    rows = pipeline.ch.query(
        "SELECT toString(event_id), project_id, event_name, user_id, ts, toString(properties), schema_id"
        " FROM events ORDER BY event_id").result_rows
    return [list(row) for row in rows]


def _run_and_archive(pipeline: Pipeline, events: int, messages: int) -> tuple[ChildProcess, ChildProcess, Archive]:
    """A worker and an archiver on what was sent: once *events* are stored exactly and every
    one of the *messages* is archived, the two children and the archive."""
    worker = pipeline.start_worker()
    archiver = ChildProcess("archiver", python_module("app.cli", "archive", "run"), ready=lambda: True,
                            env=pipeline.env, log_path=pipeline.tmp / "archiver.log")
    archiver.start()
    pipeline.children.append(archiver)
    wait_for(lambda: exact(pipeline, events), 120, f"{events:,} events stored exactly")
    archive = Archive(pipeline.settings.archive.url)
    topic = pipeline.settings.kafka.topics.raw
    wait_for(lambda: sum(f.records for fs in archive.files(topic).values() for f in fs) == messages, 60,
             "every raw message archived")
    return worker, archiver, archive


def test_an_emptied_broker_is_replayed_from_the_archive_exactly(archived: Pipeline) -> None:
    pipeline = archived
    events = events_over_days(3000, 3)
    messages = send(pipeline, events, corrupt=2) + send(pipeline, events[:400])
    _worker, _archiver, archive = _run_and_archive(pipeline, 3000, messages)
    topic = pipeline.settings.kafka.topics.raw
    before, letters = _digest(pipeline), pipeline.scalar("SELECT count() FROM dlq FINAL")
    for child in pipeline.children:
        child.stop()
    # The broker loses its log: the raw topic starts again empty.
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka.bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(30)
    ensure_topics(pipeline.settings.kafka.bootstrap_servers, pipeline_topics(pipeline.settings.kafka))
    # ... and a rollup was added meanwhile: the events replay builds it too.
    s = pipeline.settings
    pipeline.settings = s.model_copy(update={"aggregate": s.aggregate.model_copy(
        update={"rollups": [*s.aggregate.rollups, BY_COUNTRY]})})

    # A record missing in the middle of the archive: a position an earlier log ended with before
    # it was archived. Events were stored from it, so a rebuild would lose them: refused.
    stored = pipeline.ch.query("SELECT DISTINCT _partition, _offset FROM events").result_rows
    p, lost = next((p, o) for p, o in sorted(stored)
                   if any(f.first_offset < o < f.last_offset for f in archive.partition_files(topic, p)))
    (whole,) = [f for f in archive.partition_files(topic, p) if f.first_offset < lost < f.last_offset]
    records = [r for batch in archive.read(topic, p, whole.first_offset, whole.last_offset + 1) for r in batch]
    aside = Path(whole.path).rename(pipeline.tmp / "aside.parquet")
    parts = [archive.write(topic, p, [r for r in records if r.offset < lost]),
             archive.write(topic, p, [r for r in records if r.offset > lost])]
    with pytest.raises(rp.ReplayError, match=f"partition {p}: positions {lost}..{lost} are in neither"):
        rp.start(pipeline.settings, rp.Request(("events",), source="archive"), dry_run=True,
                 archive=Archive(pipeline.settings.archive.url))
    for part in parts:
        Path(part.path).unlink()
    aside.rename(whole.path)

    plan = rp.start(pipeline.settings, rp.Request(("events",), source="archive"), dry_run=True, archive=archive)
    assert isinstance(plan, rp.Plan) and {p.source for p in plan.partitions} == {"archive"}
    job = rp.start(pipeline.settings, rp.Request(("events",), source="archive"), archive=archive)

    assert isinstance(job, rp.Job)
    assert job.status == "swapped", job.error
    assert job.totals()["events"] == 3400 + 2 and job.totals()["duplicates"] == 400
    assert _digest(pipeline) == before
    assert pipeline.scalar("SELECT count() FROM dlq FINAL") == letters
    assert overall(verify(pipeline.ch, pipeline.settings.aggregate.rollups)) == "exact"


def test_an_auto_replay_stopped_before_a_new_log_resumes_from_the_archive(archived: Pipeline) -> None:
    """A replay reading Kafka is interrupted, then the broker begins a new log (a restart or
    roll of `rearview up`): resumed, it reads what left Kafka from the archive and ends exact."""
    pipeline = archived
    s = pipeline.settings
    pipeline.settings = s.model_copy(update={"replay": s.replay.model_copy(
        update={"checkpoint_s": 0.05, "fetch_messages": 5})})
    events = events_over_days(3000, 2)
    messages = send(pipeline, events, per_message=50, corrupt=1)
    worker, archiver, archive = _run_and_archive(pipeline, 3000, messages)
    topic = pipeline.settings.kafka.topics.raw

    with pytest.raises(Stopped):  # as if killed: everything it read was still in Kafka
        rp.start(pipeline.settings, rp.Request(("events",), source="auto"), archive=archive, stop_after_events=1500)
    job = rp.status(pipeline.settings)[0]
    assert job.status == "running" and {p.source for p in job.partitions.values()} == {"kafka"}
    assert sum(p.committed for p in job.partitions.values()) < messages, "stopped partway"

    # The broker begins a new log, and a new epoch, as `rearview up` does; new traffic follows.
    worker.stop()
    archiver.stop()
    admin = AdminClient({"bootstrap.servers": pipeline.settings.kafka.bootstrap_servers})
    for future in admin.delete_topics([topic], operation_timeout=30).values():
        future.result(30)
    ensure_topics(pipeline.settings.kafka.bootstrap_servers, pipeline_topics(pipeline.settings.kafka))
    # As an operator of a durable Kafka whose topics were created again does it.
    assert "no log epoch" in pipeline.cli("epochs", "status").stdout
    begun = pipeline.cli("epochs", "begin")
    assert begun.returncode == 0 and "began epoch 1" in begun.stdout, begun.stdout + begun.stderr
    bases = load_bases(pipeline.ch)
    assert bases.epoch == 1
    assert any(bases.base(topic, p) for p in range(s.kafka.topics.partitions)), "positions go on past the old log"
    assert len(pipeline.cli("epochs", "status").stdout.splitlines()) == 1
    later = events_over_days(500, 1, seed=11)
    send(pipeline, later, per_message=50)
    pipeline.start_worker("worker-new-log")
    wait_for(lambda: exact(pipeline, 3500), 120, "3,500 events stored exactly")
    before = _digest(pipeline)

    done = rp.resume(pipeline.settings, job.job_id, archive=Archive(pipeline.settings.archive.url))

    assert done.status == "swapped", done.error
    assert done.totals()["events"] == 3500 + 1
    assert _digest(pipeline) == before
    assert overall(verify(pipeline.ch, pipeline.settings.aggregate.rollups)) == "exact"
