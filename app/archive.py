"""`rearview archive run` and `rearview archive status`: the archiver of events.raw and its report.

The archiver copies every record of the raw topic into the archive (agents/archive.py), one
Parquet file per partition at a time. It is a plain confluent-kafka consumer in its own group
(``<worker.app_id>-archive``), not a Faust agent: it decodes nothing, so it costs the
validation path nothing, and a slow archive never holds validation back.

Per partition, records are buffered until ``roll_records`` records, ``roll_bytes`` bytes or
``roll_interval_s`` after the first one (checked on every poll, so a quiet partition's tail is
archived within the interval too); then the file is written, and only then the offset after it
committed. Correctness does not rest on the commit: on start and after every assignment the
archiver seeks to the archive's own `next_offset` (the files are the truth; the commit serves
lag figures and operators). A crash between writing a file and committing re-reads records the
archive already holds, and the seek skips them, so files never overlap and nothing is missed.

Offsets in the archive are *positions* (tables/logs.py): the broker's offset plus the current log
epoch's base. The embedded broker begins a new log at every start of `rearview up`, which begins
a new epoch whose bases lie past everything archived, so the archive goes on as one sequence
across logs and a replay reads the earlier logs from it. Resuming checks that the log is the one
the archive was filled from: it re-reads the last archived record and compares it. A broker that
lost its log without a new epoch (numbering records from 0 again under the same bases) would
otherwise have its new records mixed under old positions; the archiver stops with an error
instead.

Failures: Kafka unreachable is librdkafka's to retry (the loop keeps polling, and logs the
outage every so often); the archive's filesystem failing is retried with backoff for as long as
it lasts, holding the buffered records, committing nothing. Records below the log's start (a
production topic whose retention deleted them before they were archived) are a gap in the
archive: it is logged, and archiving continues from the log start.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from agents.archive import Archive, RawRecord
from app import clickhouse
from app.settings import ArchiveSettings, Settings
from core.exceptions import RearviewError
from core.retry import Backoff
from tables import logs
from tables.logs import LogBases

log = structlog.get_logger(__name__)


class LogMismatch(RearviewError):
    """The topic's log is not the log the archive was filled from (the broker lost it)."""


def archive_group(settings: Settings) -> str:
    return f"{settings.worker.app_id}-archive"


def open_archive(settings: ArchiveSettings) -> Archive:
    return Archive(settings.url, compression=settings.compression)


@dataclass
class PartitionBuffer:
    """Records of one partition consumed and not yet archived."""

    records: list[RawRecord] = field(default_factory=list)
    bytes: int = 0
    started: float = 0.0  # monotonic time of the first buffered record

    def add(self, record: RawRecord, now: float) -> None:
        if not self.records:
            self.started = now
        self.records.append(record)
        self.bytes += record_size(record)

    def due(self, policy: ArchiveSettings, now: float) -> bool:
        """Whether the buffer must become a file now (any roll threshold reached)."""
        return bool(self.records) and (
            len(self.records) >= policy.roll_records
            or self.bytes >= policy.roll_bytes
            or now - self.started >= policy.roll_interval_s
        )


def record_size(record: RawRecord) -> int:
    size = len(record.value or b"") + len(record.key or b"") + 24
    return size + sum(len(k) + len(v or b"") for k, v in record.headers)


def raw_record(msg: Message, base: int = 0) -> RawRecord:
    """A consumed message as the archive keeps it, at position *base* + its offset."""
    kind, ts = msg.timestamp()
    headers: list[tuple[str, bytes]] = []
    for header in msg.headers() or ():
        name, value = header[0], header[1]
        headers.append((str(name), value.encode() if isinstance(value, str) else value or b""))
    return RawRecord(
        partition=int(msg.partition() or 0),
        offset=base + int(msg.offset() or 0),
        timestamp_ms=int(ts) if kind != 0 else -1,  # 0: TIMESTAMP_NOT_AVAILABLE
        key=msg.key(),
        value=msg.value(),
        headers=tuple(headers),
    )


class Archiver:
    """Consume the raw topic and archive it; `run` returns after `stop` (or raises LogMismatch)."""

    def __init__(self, settings: Settings, archive: Archive | None = None,
                 on_file: Callable[[int, int, int], None] | None = None,
                 bases: LogBases | None = None) -> None:
        self.settings = settings
        self._bases = bases  # None: the current epoch's, read from ClickHouse when run starts
        self.policy = settings.archive
        self.topic = settings.kafka.topics.raw
        self.archive = archive or open_archive(settings.archive)
        self.on_file = on_file  # (partition, first, last): for tests and progress
        self._stop = threading.Event()
        self._buffers: dict[int, PartitionBuffer] = {}
        self._expected: dict[int, int] = {}  # next offset to archive, per assigned partition
        self._verify: dict[int, RawRecord | None] = {}  # last archived record to check on resume
        self._consumer: Consumer | None = None
        self._kafka_backoff = Backoff(settings.archive.retry_initial_s, settings.archive.retry_max_s)

    def stop(self) -> None:
        self._stop.set()

    def _base(self, partition: int) -> int:
        return self._bases.base(self.topic, partition) if self._bases is not None else 0

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> None:
        kafka = self.settings.kafka
        if self._bases is None:
            self._bases = clickhouse.log_bases(self.settings.clickhouse)
        consumer = Consumer({
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": archive_group(self.settings),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # The archiver seeks to the archive's next offset itself; "error" makes a position
            # outside the log visible (a gap, or a log that restarted) instead of a silent jump.
            "auto.offset.reset": "error",
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": kafka.heartbeat_interval_ms,
            "fetch.wait.max.ms": kafka.fetch_max_wait_ms,
            **kafka.producer_config,  # security settings (SASL/TLS) are the same for consumers
        })
        self._consumer = consumer
        consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                           on_lost=self._on_lost)
        log.info("archiver_started", topic=self.topic, archive=self.archive.url,
                 group=archive_group(self.settings))
        try:
            while not self._stop.is_set():
                messages = consumer.consume(1000, 0.2)
                now = time.monotonic()
                for msg in messages:
                    self._take(consumer, msg, now)
                for partition, buffer in list(self._buffers.items()):
                    if buffer.due(self.policy, now):
                        self._flush(consumer, partition)
            for partition in list(self._buffers):
                self._flush(consumer, partition)
        finally:
            consumer.close()
            self._consumer = None
            log.info("archiver_stopped", topic=self.topic)

    def _take(self, consumer: Consumer, msg: Message, now: float) -> None:
        error = msg.error()
        if error is not None:
            self._on_error(consumer, msg, error)
            return
        partition = int(msg.partition() or 0)
        expected = self._expected.get(partition)
        if expected is None:
            return  # a message of a partition no longer assigned
        record = raw_record(msg, self._base(partition))
        if partition in self._verify:
            self._check_resume(partition, record)
        if record.offset < expected:
            return  # already archived (the resume check reads the last archived record again)
        if record.offset > expected:
            log.warning("archive_gap", topic=self.topic, partition=partition, missing_from=expected,
                        missing_to=record.offset - 1)
        self._expected[partition] = record.offset + 1
        buffer = self._buffers.setdefault(partition, PartitionBuffer())
        buffer.add(record, now)
        self._kafka_backoff.reset()
        if len(buffer.records) >= self.policy.roll_records or buffer.bytes >= self.policy.roll_bytes:
            self._flush(consumer, partition)  # a file never holds more than the thresholds

    def _check_resume(self, partition: int, record: RawRecord) -> None:
        last = self._verify.pop(partition)
        if last is None or record.offset != last.offset:
            return  # nothing to compare (the record is gone: retention), or a later one
        if (record.key, record.value, record.headers) != (last.key, last.value, last.headers):
            raise LogMismatch(
                f"{self.topic} partition {partition} holds a different record at offset "
                f"{record.offset} than the archive at {self.archive.url}: the broker lost its log "
                "and numbers records from 0 again; move that archive aside (or point "
                "archive.url elsewhere) to archive the new log")

    def _on_error(self, consumer: Consumer, msg: Message, error: KafkaError) -> None:
        code = error.code()
        if code == KafkaError._PARTITION_EOF:
            return
        if code in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
            self._out_of_range(consumer, int(msg.partition() or 0))
            return
        if self._kafka_backoff.should_log():
            log.warning("archiver_kafka_error", topic=self.topic, error=error.str())

    def _out_of_range(self, consumer: Consumer, partition: int) -> None:
        """The archive's next offset is outside the log: below its start (retention deleted
        records first: a gap) or above its end (the log is not the archived one)."""
        expected = self._expected.get(partition, 0)
        local_low, _high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition), 10)
        low = self._base(partition) + local_low
        if low > expected:
            log.error("archive_gap", topic=self.topic, partition=partition, missing_from=expected,
                      missing_to=low - 1, reason="below the log start (retention)")
            self._expected[partition] = low
            self._verify.pop(partition, None)
            consumer.seek(TopicPartition(self.topic, partition, local_low))
            return
        raise LogMismatch(
            f"{self.topic} partition {partition} ends below the archive's next offset {expected}"
            f" ({self.archive.url}): the log is not the one archived")

    # -- assignment ----------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            partition = tp.partition
            next_offset = self._retry(f"reading the archive of partition {partition}",
                                      partial(self.archive.next_offset, self.topic, partition))
            if next_offset is None:
                return  # stopping
            base = self._base(partition)
            if next_offset < base:  # the earlier logs ended before these were archived
                log.error("archive_gap", topic=self.topic, partition=partition, missing_from=next_offset,
                          missing_to=base - 1, reason="an earlier log ended before they were archived")
            next_offset = max(next_offset, base)
            last: RawRecord | None = None
            if next_offset > base:  # compare the last archived record of this log on resume
                batches = self._retry("reading the last archived record", partial(
                    lambda p, n: list(self.archive.read(self.topic, p, n - 1, n)), partition, next_offset))
                last = batches[0][0] if batches and batches[0] else None
            self._expected[tp.partition] = next_offset
            self._verify[tp.partition] = last
            self._buffers[tp.partition] = PartitionBuffer()
            tp.offset = next_offset - base - (1 if last is not None else 0)
            log.info("archive_resume", topic=self.topic, partition=tp.partition, offset=next_offset,
                     broker_offset=tp.offset)
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Eager rebalance: the next owner is assigned only after this returns, so what this
        # member consumed is archived first, and the next owner resumes after it.
        for tp in partitions:
            if tp.partition in self._buffers:
                self._flush(consumer, tp.partition, wait_forever=False)
            self._forget(tp.partition)

    def _on_lost(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may own these already: drop what is buffered; its owner resumes from
        # the archive, so nothing is lost, and writing now could overlap its files.
        for tp in partitions:
            self._forget(tp.partition)

    def _forget(self, partition: int) -> None:
        self._buffers.pop(partition, None)
        self._expected.pop(partition, None)
        self._verify.pop(partition, None)

    # -- writing -------------------------------------------------------------------------
    def _flush(self, consumer: Consumer, partition: int, wait_forever: bool = True) -> None:
        buffer = self._buffers.get(partition)
        if buffer is None or not buffer.records:
            return
        records = buffer.records
        written = self._retry(f"archiving partition {partition}",
                              lambda: self.archive.write(self.topic, partition, records),
                              None if wait_forever else 10.0)
        if written is None:
            return  # stopping with the archive unreachable: the next start re-reads these
        self._buffers[partition] = PartitionBuffer()
        log.info("archive_file_written", topic=self.topic, partition=partition,
                 first=written.first_offset, last=written.last_offset, records=written.records,
                 bytes=written.bytes)
        if self.on_file is not None:
            self.on_file(partition, written.first_offset, written.last_offset)
        try:
            consumer.commit(offsets=[TopicPartition(self.topic, partition,
                                                    written.last_offset + 1 - self._base(partition))],
                            asynchronous=False)
        except KafkaException as exc:  # the files are the truth; the next commit covers this one
            if self._kafka_backoff.should_log():
                log.warning("archive_commit_failed", topic=self.topic, partition=partition,
                            error=str(exc))

    def _retry(self, what: str, action: Callable[[], Any], patience_s: float | None = None) -> Any:
        """*action*'s result, retried with backoff while it raises OSError (the archive's
        filesystem: pyarrow's I/O errors are OSErrors). Forever while running; once the
        archiver is stopping (or after *patience_s*), for 10 s at most, then None: what was
        not written is still in Kafka, uncommitted, and the next start reads it again."""
        backoff = Backoff(self.policy.retry_initial_s, self.policy.retry_max_s)
        deadline = None if patience_s is None else time.monotonic() + patience_s
        while True:
            try:
                return action()
            except OSError as exc:
                delay = backoff.next()
                if backoff.should_log():
                    log.warning("archive_unavailable", what=what, error=str(exc),
                                retry_in_s=round(delay, 2))
            if self._stop.is_set() and deadline is None:
                deadline = time.monotonic() + 10
            if deadline is not None and time.monotonic() + delay > deadline:
                log.error("archive_write_abandoned", what=what)
                return None
            if not self._stop.wait(delay):
                continue
            time.sleep(min(delay, 1.0))


def run(settings: Settings) -> None:
    """`rearview archive run`: archive until SIGTERM/SIGINT, then write what is buffered."""
    archiver = Archiver(settings)

    def on_signal(_sig: int, _frame: object) -> None:
        archiver.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    archiver.run()


# -- status ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    files: int
    first_offset: int | None
    last_offset: int | None
    records: int
    bytes: int
    next_offset: int
    missing: int  # offsets below next_offset no file covers (gaps)
    committed: int | None  # the highest offset any consumer group committed on the partition
    min_timestamp_ms: int | None
    max_timestamp_ms: int | None

    @property
    def lag(self) -> int | None:
        """Records some consumer has read past that the archive does not hold yet."""
        return None if self.committed is None else max(0, self.committed - self.next_offset)


def archive_status(archive: Archive, topic: str, partitions: int,
                   committed: dict[int, int] | None) -> list[PartitionStatus]:
    """Per partition (0..partitions-1, and any other the archive holds): what is archived."""
    files = archive.files(topic)
    out = []
    for p in sorted(set(range(partitions)) | set(files)):
        fs = files.get(p, [])
        next_offset = max((f.last_offset for f in fs), default=-1) + 1
        covered = 0
        reach = -1
        for f in fs:  # sorted by first offset: the union of [first, last] ranges
            if f.last_offset > reach:
                covered += f.last_offset - max(f.first_offset, reach + 1) + 1
                reach = f.last_offset
        out.append(PartitionStatus(
            partition=p, files=len(fs),
            first_offset=min((f.first_offset for f in fs), default=None),
            last_offset=next_offset - 1 if fs else None,
            records=sum(f.records for f in fs), bytes=sum(f.bytes for f in fs),
            next_offset=next_offset, missing=next_offset - covered,
            committed=None if committed is None else committed.get(p),
            min_timestamp_ms=min((f.min_timestamp_ms for f in fs), default=None),
            max_timestamp_ms=max((f.max_timestamp_ms for f in fs), default=None),
        ))
    return out


def committed_offsets(bootstrap_servers: str, topic: str, partitions: int,
                      config: dict[str, str] | None = None, timeout_s: float = 10) -> dict[int, int]:
    """The highest offset any consumer group has committed, per partition of *topic*.

    Not the broker's high watermark: the embedded broker reports it wrong, and a committed
    offset is a position some consumer really read past, so it can only understate the log.
    """
    from app.embedded.drain import group_commits

    best: dict[int, int] = {}
    for offsets in group_commits(bootstrap_servers, {topic: partitions}, config, timeout_s).values():
        for (_topic, p), offset in offsets.items():
            best[p] = max(best.get(p, 0), offset)
    return best


def print_status(rows: list[PartitionStatus], topic: str, url: str, kafka_error: str | None) -> None:
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    def when(ms: int | None) -> str:
        return "" if ms is None or ms < 0 else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")

    def num(v: int | None) -> str:
        return "" if v is None else f"{v:,}"

    table = Table(title=f"archive of {topic} at {url}")
    for name in ("partition", "files", "offsets", "records", "bytes", "bytes/record", "gaps",
                 "committed", "lag", "newest record"):
        table.add_column(name, justify="left" if name in ("offsets", "newest record") else "right")
    for r in rows:
        offsets = "" if r.first_offset is None else f"{r.first_offset:,} .. {r.last_offset:,}"
        per = f"{r.bytes / r.records:,.0f}" if r.records else ""
        lag = "?" if kafka_error else num(r.lag) if r.committed is not None else "0"
        table.add_row(str(r.partition), num(r.files), offsets, num(r.records), num(r.bytes), per,
                      num(r.missing), "?" if kafka_error else num(r.committed), lag,
                      when(r.max_timestamp_ms))
    console = Console()
    if not console.is_terminal:  # a pipe or a file gets whole rows, however wide
        console = Console(width=200)
    console.print(table)
    total_records = sum(r.records for r in rows)
    total_bytes = sum(r.bytes for r in rows)
    console.print(f"{total_records:,} records in {sum(r.files for r in rows):,} files, "
                  f"{total_bytes:,} bytes", highlight=False)
    if kafka_error:
        console.print(f"lag unknown: {kafka_error}", style="yellow", highlight=False)
    else:
        console.print("lag: offsets committed by a consumer group (the pipeline read them) that "
                      "the archive does not hold yet", style="dim", highlight=False)


def status(settings: Settings, output: str = "table") -> None:
    """`rearview archive status`."""
    import json

    from core.exceptions import ServiceUnavailable

    topic = settings.kafka.topics.raw
    archive = open_archive(settings.archive)
    kafka_error = None
    try:
        committed: dict[int, int] | None = committed_offsets(
            settings.kafka.bootstrap_servers, topic, settings.kafka.topics.partitions,
            settings.kafka.producer_config, timeout_s=5)
    except ServiceUnavailable as exc:
        committed, kafka_error = None, str(exc)
    if committed:  # the broker's offsets, as positions of the current log epoch (tables/logs.py)
        bases = clickhouse.log_bases(settings.clickhouse, wait_s=5)
        committed = {p: bases.logical(topic, p, o) for p, o in committed.items()}
    try:
        rows = archive_status(archive, topic, settings.kafka.topics.partitions, committed)
    except OSError as exc:
        raise RearviewError(f"cannot read the archive at {settings.archive.url}: {exc}") from exc
    if output == "json":
        print(json.dumps({"topic": topic, "url": settings.archive.url, "kafka_error": kafka_error,
                          "partitions": [{**r.__dict__, "lag": r.lag} for r in rows]}))
    else:
        print_status(rows, topic, settings.archive.url, kafka_error)


def begin_log_epoch(settings: Settings) -> LogBases:
    """Begin a new log epoch (tables/logs.py), for a broker whose log is new.

    For `rearview up`: its broker keeps the log in memory, so each start begins a new log whose
    offsets start at 0 again. The new epoch's bases put its positions past everything the
    tables store and the archive holds (when archiving is on), so the archive goes on as one
    sequence of positions across logs and a replay reads the earlier logs from it.
    """
    topics = settings.kafka.topics
    archived: dict[tuple[str, int], int] = {}
    if settings.archive.enabled:
        archive = open_archive(settings.archive)
        archived = {(topics.raw, p): archive.next_offset(topics.raw, p) for p in range(topics.partitions)}
    client = clickhouse.connect(settings.clickhouse)
    try:
        bases = logs.begin_epoch(client, logs.Topics(topics.raw, topics.clean, topics.dlq, topics.partitions),
                                 archived)
    finally:
        client.close()
    log.info("log_epoch_begun", epoch=bases.epoch, bases=bases.describe())
    return bases
