"""The archiver on the real embedded broker: every record of events.raw archived exactly once,
across a SIGKILL, and `rearview archive status` telling what is archived and what is not yet."""

from __future__ import annotations

import itertools
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from agents.archive import Archive, RawRecord
from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.process import ChildProcess, python_module
from app.settings import Settings, to_env
from tests.integration.conftest import Services, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


def archive_settings(services: Services, tmp_path: Path, **archive: object) -> Settings:
    """Settings of an isolated raw topic and archive on the shared broker."""
    tag = f"a{uuid.uuid4().hex[:8]}"
    s = services.settings
    topics = s.kafka.topics.model_copy(update={"raw": f"{tag}.events.raw", "clean": f"{tag}.events.clean",
                                               "dlq": f"{tag}.events.dlq", "partitions": PARTITIONS})
    settings = s.model_copy(update={
        "kafka": s.kafka.model_copy(update={"topics": topics}),
        "worker": s.worker.model_copy(update={"app_id": f"rearview-{tag}"}),
        "archive": s.archive.model_copy(update={"url": str(tmp_path / "archive"), "roll_records": 300,
                                                "roll_interval_s": 1.0, "retry_initial_s": 0.1,
                                                "retry_max_s": 1.0, **archive}),
    })
    ensure_topics(settings.kafka.bootstrap_servers, pipeline_topics(settings.kafka))
    return settings


def start_archiver(settings: Settings, tmp_path: Path, name: str = "archiver") -> ChildProcess:
    child = ChildProcess(name, python_module("app.cli", "archive", "run"), ready=lambda: True,
                         env=to_env(settings), log_path=tmp_path / f"{name}.log")
    child.start()
    return child


@pytest.fixture
def children() -> Iterator[list[ChildProcess]]:
    started: list[ChildProcess] = []
    try:
        yield started
    finally:
        for child in started:
            child.stop()


class Produced:
    """Every record the broker acknowledged, by (partition, offset)."""

    def __init__(self) -> None:
        self.records: dict[tuple[int, int], RawRecord] = {}
        self.lock = threading.Lock()

    def callback(self, err: object, msg: object, headers: tuple[tuple[str, bytes], ...]) -> None:
        """A delivery report (which carries no headers: the producer passes them)."""
        assert err is None, err
        rec_key, value = msg.key(), msg.value()  # type: ignore[attr-defined]
        with self.lock:
            self.records[(msg.partition(), msg.offset())] = RawRecord(  # type: ignore[attr-defined]
                msg.partition(), msg.offset(), msg.timestamp()[1], rec_key, value, headers)  # type: ignore[attr-defined]

    def count(self) -> int:
        with self.lock:
            return len(self.records)


def produce(settings: Settings, produced: Produced, n: int, start: int = 0, rate: float = 0) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 5})
    t0 = time.monotonic()
    for i in range(start, start + n):
        key = None if i % 5 == 0 else f"user-{i % 37}".encode()
        sent: tuple[tuple[str, bytes], ...] = (("rv.seq", str(i).encode()),) if i % 2 else ()
        producer.produce(settings.kafka.topics.raw, value=b"\x00\x00\x00\x00\x01" + i.to_bytes(4, "big") * 20,
                         key=key, headers=list(sent) or None, partition=i % PARTITIONS,  # type: ignore[arg-type]
                         on_delivery=partial(produced.callback, headers=sent))
        producer.poll(0)
        if rate:
            ahead = (i - start + 1) / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
    assert producer.flush(30) == 0


def archived(settings: Settings) -> dict[tuple[int, int], RawRecord]:
    """Every archived record, asserting that none is read twice."""
    archive = Archive(settings.archive.url)
    out: dict[tuple[int, int], RawRecord] = {}
    for p in range(PARTITIONS):
        for batch in archive.read(settings.kafka.topics.raw, p, 0):
            for r in batch:
                assert (p, r.offset) not in out
                out[(p, r.offset)] = r
    return out


def archived_count(settings: Settings) -> int:
    files = Archive(settings.archive.url).files(settings.kafka.topics.raw)
    return sum(f.records for fs in files.values() for f in fs)


def assert_exactly_once(settings: Settings, produced: Produced) -> None:
    files = Archive(settings.archive.url).files(settings.kafka.topics.raw)
    for p, fs in files.items():
        for before, after in itertools.pairwise(fs):
            assert after.first_offset == before.last_offset + 1, f"partition {p}: {before} then {after}: a gap or an overlap"
        assert fs[0].first_offset == 0
    got = archived(settings)
    assert got.keys() == produced.records.keys()
    for position, record in produced.records.items():
        a = got[position]
        assert (a.key, a.value, a.headers, a.timestamp_ms) == (record.key, record.value, record.headers,
                                                                record.timestamp_ms), position


def status_json(settings: Settings) -> dict[str, Any]:
    out = subprocess.run(python_module("app.cli", "archive", "status", "--format", "json"),
                         env={**to_env(settings), "PATH": "/usr/bin:/bin"}, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_every_record_is_archived_exactly_once_and_quiet_tails_within_the_interval(
        services: Services, tmp_path: Path, children: list[ChildProcess]) -> None:
    settings = archive_settings(services, tmp_path)
    produced = Produced()
    produce(settings, produced, 2_000)  # 500 a partition: one full file (300) and a tail
    children.append(start_archiver(settings, tmp_path))
    wait_for(lambda: archived_count(settings) >= 2_000, 60, "every record archived",
             lambda: f"{archived_count(settings)} of 2000")
    # A quiet partition: three records, far below roll_records, are archived by the interval.
    produce(settings, produced, 3, start=2_000)
    wait_for(lambda: archived_count(settings) >= 2_003, 30, "the tail archived within roll_interval_s",
             lambda: f"{archived_count(settings)} of 2003")
    time.sleep(1.5)  # anything more would be a duplicate
    assert_exactly_once(settings, produced)

    files = Archive(settings.archive.url).files(settings.kafka.topics.raw)
    assert all(len(fs) >= 2 for fs in files.values()), "rolled at 300 records, then by time"
    assert max(f.records for fs in files.values() for f in fs) <= 300


def test_a_sigkilled_archiver_resumes_with_no_gap_and_no_overlap(
        services: Services, tmp_path: Path, children: list[ChildProcess]) -> None:
    settings = archive_settings(services, tmp_path, roll_records=100, roll_interval_s=0.5)
    produced = Produced()
    total = 6_000
    producer = threading.Thread(target=produce, args=(settings, produced, total // 2), kwargs={"rate": 1_500})
    producer.start()
    try:
        first = start_archiver(settings, tmp_path, "archiver-1")
        children.append(first)
        wait_for(lambda: archived_count(settings) >= 1_000, 60, "the first files")
        first.kill()  # SIGKILL: buffered records and maybe a commit are lost with it
        killed_at = archived_count(settings)
    finally:
        producer.join()
    # The second half arrives while no archiver runs: the kill is mid-way whatever the timing.
    produce(settings, produced, total - total // 2, start=total // 2, rate=1_500)
    children.append(start_archiver(settings, tmp_path, "archiver-2"))
    assert killed_at <= total // 2
    wait_for(lambda: archived_count(settings) >= total, 90, "every record archived after the restart",
             lambda: f"{archived_count(settings)} of {total}")
    time.sleep(1.5)
    assert_exactly_once(settings, produced)


def test_status_shows_ranges_files_and_lag_behind_the_consumer_groups(
        services: Services, tmp_path: Path, children: list[ChildProcess]) -> None:
    settings = archive_settings(services, tmp_path, roll_records=1_000)
    produced = Produced()
    produce(settings, produced, 400)  # 100 a partition
    # A pipeline consumer group read (and committed) 100 records a partition; nothing archived.
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers,
                         "group.id": settings.worker.app_id, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(settings.kafka.topics.raw, p, 100) for p in range(PARTITIONS)],
                    asynchronous=False)
    consumer.close()
    before = status_json(settings)
    assert [(r["partition"], r["files"], r["next_offset"], r["lag"]) for r in before["partitions"]] == [
        (p, 0, 0, 100) for p in range(PARTITIONS)]

    children.append(start_archiver(settings, tmp_path))
    wait_for(lambda: archived_count(settings) >= 400, 60, "every record archived")
    after = status_json(settings)
    rows = after["partitions"]
    assert [(r["partition"], r["first_offset"], r["last_offset"], r["records"], r["lag"], r["missing"])
            for r in rows] == [(p, 0, 99, 100, 0, 0) for p in range(PARTITIONS)]
    assert all(r["bytes"] > 0 and r["files"] >= 1 for r in rows)


def test_a_log_that_is_not_the_archived_one_stops_the_archiver(
        services: Services, tmp_path: Path, children: list[ChildProcess]) -> None:
    """The embedded broker loses its log on restart and numbers records from 0 again: the
    archiver must not file the new records under offsets the archive already holds."""
    settings = archive_settings(services, tmp_path)
    # The archive of an earlier log: offsets 0..9 of partition 0, other contents.
    Archive(settings.archive.url).write(settings.kafka.topics.raw, 0, [
        RawRecord(0, o, 1, None, b"an earlier log", ()) for o in range(10)])
    produced = Produced()
    produce(settings, produced, 80)  # 20 a partition: offsets 0..19
    child = start_archiver(settings, tmp_path)
    children.append(child)
    assert child.proc is not None
    code = child.proc.wait(60)
    assert code == 1
    text = (tmp_path / "archiver.log").read_text()
    assert "the broker lost its log" in text
    assert Archive(settings.archive.url).next_offset(settings.kafka.topics.raw, 0) == 10, "nothing mixed in"


def test_a_failing_archive_filesystem_is_retried_until_it_recovers(
        services: Services, tmp_path: Path, children: list[ChildProcess]) -> None:
    settings = archive_settings(services, tmp_path)
    root = Path(settings.archive.url)
    root.mkdir(parents=True)
    blocker = root / settings.kafka.topics.raw
    blocker.write_text("a file where the topic's folder must go: every write fails")
    produced = Produced()
    produce(settings, produced, 400)
    child = start_archiver(settings, tmp_path)
    children.append(child)
    archiver_log = tmp_path / "archiver.log"
    wait_for(lambda: "archive_unavailable" in archiver_log.read_text(), 60,
             "the archiver to fail writing and retry", archiver_log.read_text)
    time.sleep(2)  # more roll intervals and retries
    assert child.alive(), "the archiver must wait for its filesystem, not crash"
    assert blocker.is_file()
    blocker.unlink()  # the filesystem recovers
    wait_for(lambda: archived_count(settings) >= 400, 60, "everything archived after the outage",
             lambda: f"{archived_count(settings)} of 400")
    time.sleep(1.5)
    assert_exactly_once(settings, produced)
