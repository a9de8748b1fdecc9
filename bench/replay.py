"""Replay speed from Kafka and from the raw archive, against the live worker, per CPU-second.

    .venv/bin/python bench/replay.py [--events 200000] [--runs 3]

Starts the embedded stack (free ports, a temporary data dir), sends N events as EventBatch
messages (500 events each) to events.raw and measures the live worker storing them: events per
worker CPU-second, as bench/e2e.py does. Then stops the worker and, per run, replays the
`events` target (validate, redact, dedup, the rollups, generation inserts, verify, swap)
in this process, once from Kafka and once from an archive of events.raw written beforehand,
reading this process's CPU time (all threads; the ClickHouse endpoint's CPU is not counted,
as it is not for the worker). Prints medians over the runs and the ratio of replay events per
CPU-second to the live worker's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import schemas
from agents.archive import Archive
from agents.schema_registry import register
from app import clickhouse
from app import replay as rp
from app.generate import EventGenerator, send_kafka
from app.replay.sources import KafkaSource, topic_partitions
from app.settings import ArchiveSettings, AuthSettings, Settings
from app.up import Stack
from bench.e2e import cpu_seconds, wait_rows


def archive_all(settings: Settings, archive: Archive, total_messages: int) -> None:
    """Copy every record of events.raw into the archive (what the archiver would have done)."""
    topic = settings.kafka.topics.raw
    ranges: dict[int, tuple[int, int | None]] = {p: (0, None) for p in topic_partitions(
        settings.kafka.bootstrap_servers, topic)}
    seen = 0
    pending: dict[int, list] = {}
    deadline = time.monotonic() + 300
    for batch in KafkaSource(settings.kafka.bootstrap_servers, topic).read(ranges, idle_s=1.0):
        if batch:
            pending.setdefault(batch[0].partition, []).extend(batch)
            seen += len(batch)
        if seen >= total_messages or time.monotonic() > deadline:
            break
    assert seen == total_messages, f"{seen} of {total_messages} raw messages read for the archive"
    for p, records in pending.items():
        for i in range(0, len(records), 2000):
            archive.write(topic, p, records[i:i + 2000])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        # No archiver: the bench writes its own archive of events.raw.
        stack = Stack(Settings(auth=KEYS_OFF, archive=ArchiveSettings(enabled=False)), "127.0.0.1", Path(tmp),
                      free_ports=True)
        try:
            stack.start()
            s = stack.settings
            s = s.model_copy(update={"replay": s.replay.model_copy(update={"quiet_s": 0.5, "checkpoint_s": 5.0})})
            worker = next(c for c in stack.children if c.name == "worker")
            assert worker.pid is not None
            ch = clickhouse.connect(s.clickhouse)
            batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
            cpu0, t0 = cpu_seconds(worker.pid), time.monotonic()
            send_kafka(s.kafka.bootstrap_servers, s.kafka.topics.raw, batch_id,
                       EventGenerator(users=5000, seed=1).events(), args.events, 0, 500)
            done = wait_rows(ch, args.events)
            time.sleep(2)  # the last rollup flush
            live_cpu = cpu_seconds(worker.pid) - cpu0
            live = args.events / live_cpu
            print(f"live worker: {args.events:,} events in {done - t0:.2f}s, worker CPU {live_cpu:.2f}s"
                  f" = {live:,.0f} events/CPU-s", flush=True)
            worker.stop()
            archive = Archive(str(Path(tmp) / "replay-archive"))
            archive_all(s, archive, -(-args.events // 500))
            results: dict[str, list[tuple[float, float]]] = {"kafka": [], "archive": []}
            for run in range(args.runs):
                for source in ("kafka", "archive"):
                    c0, w0 = time.process_time(), time.monotonic()
                    job = rp.start(s, rp.Request(("events",), source=source), archive=archive)
                    wall, cpu = time.monotonic() - w0, time.process_time() - c0
                    assert isinstance(job, rp.Job) and job.status == "swapped", getattr(job, "error", job)
                    n = job.totals()["events"]
                    results[source].append((n / wall, n / cpu))
                    print(f"run {run + 1} {source:<8}{n:>9,} events {wall:7.2f}s {n / wall:>10,.0f} events/s"
                          f"  CPU {cpu:6.2f}s = {n / cpu:>9,.0f} events/CPU-s", flush=True)
                    rp.gc(s)
            ch.close()
        finally:
            stack.stop()

    print()
    print(f"{'source':<10}{'events/s':>12}{'events/CPU-s':>14}{'x live/CPU-s':>14}   (median of {args.runs};"
          " whole jobs: restore, read, write, verify twice, swap)")
    print(f"{'live':<10}{'':>12}{live:>14,.0f}{1.0:>14.2f}")
    for source, rs in results.items():
        per_cpu = statistics.median(r[1] for r in rs)
        print(f"{source:<10}{statistics.median(r[0] for r in rs):>12,.0f}{per_cpu:>14,.0f}{per_cpu / live:>14.2f}")


KEYS_OFF = AuthSettings(required=False)

if __name__ == "__main__":
    main()
