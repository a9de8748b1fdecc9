"""Archive soak: traffic through the embedded stack; broker memory and the archive over time.

    .venv/bin/python bench/archive_soak.py [--minutes 3] [--rate 2000] [--every 15] [--batch 100]
                                           [--log-budget-mb 0]

Starts the whole embedded stack as `rearview up` does (free ports, a temporary data dir, the
archiver with its default settings except a 5 s roll interval), sends generated events to the
collector at --rate events/s in batches of --batch for --minutes, and every --every seconds
prints the RSS of the broker (by pid, with Tansu under it) and of the archiver, and what the
archive holds (messages, events, bytes). After the traffic it waits for the archive to catch
up and checks that everything stays replayable from it: archived messages per partition equal
the offsets the worker committed (it read the whole log), with no gap, and archived events
equal events accepted by the collector.

Last, the archived messages are rewritten with each Parquet codec (median of 3 writes) to show
bytes per event and write cost, and the choice of zstd.

The embedded Tansu broker cannot trim its log (docs/archive.md): DeleteRecords is not
implemented by its memory engine and retention settings are not enforced, so without a budget
its RSS grows with the log; the figures say by how much. With --log-budget-mb N the stack
begins a new log past N MB, as `rearview up` does (Stack.roll_log; checked every --every
seconds here), and the broker's RSS stays near the budget while the archive keeps every event.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastavro

import schemas
from agents.archive import Archive, RawRecord
from agents.codec import split_frame
from app.archive import committed_offsets
from app.embedded.process import tree_rss_mb as rss_mb
from app.generate import EventGenerator, send_http
from app.settings import AuthSettings, Settings
from app.up import Stack

BATCH_SCHEMA = fastavro.parse_schema(schemas.load(schemas.EVENT_BATCH))


def events_in(value: bytes | None) -> int:
    """Events in one raw message (an EventBatch, or one event)."""
    if not value:
        return 0
    import io

    _schema_id, body = split_frame(value)
    try:
        batch = fastavro.schemaless_reader(io.BytesIO(body), BATCH_SCHEMA, None)
        return len(batch["events"])  # type: ignore[index, call-overload]
    except Exception:  # noqa: BLE001 - a single-event message
        return 1


def archive_totals(archive: Archive, topic: str, counted: dict[tuple[int, int], int]) -> tuple[int, int, int]:
    """(messages, events, bytes) archived; *counted* caches events per file."""
    messages = events = size = 0
    for partition, files in archive.files(topic).items():
        for f in files:
            messages += f.records
            size += f.bytes
            key = (partition, f.first_offset)
            if key not in counted:
                counted[key] = sum(events_in(r.value) for batch in archive.read(
                    topic, partition, f.first_offset, f.last_offset + 1) for r in batch)
            events += counted[key]
    return messages, events, size


def codec_table(archive: Archive, topic: str, events: int) -> None:
    records: dict[int, list[RawRecord]] = {}
    for partition in archive.files(topic):
        records[partition] = [r for batch in archive.read(topic, partition, 0) for r in batch]
    raw_bytes = sum(len(r.value or b"") for rs in records.values() for r in rs)
    print(f"\ncodecs on the same {sum(map(len, records.values())):,} messages, {events:,} events "
          f"({raw_bytes / max(events, 1):.1f} bytes/event of Avro values):")
    print(f"{'codec':>10} {'bytes':>12} {'bytes/event':>12} {'vs values':>10} {'write s':>8}")
    for codec in ("zstd", "snappy", "lz4", "gzip", "none"):
        times, size = [], 0
        for _ in range(3):
            with tempfile.TemporaryDirectory() as tmp:
                target = Archive(tmp, compression=codec)
                t0 = time.perf_counter()
                size = sum(target.write(topic, p, rs).bytes for p, rs in records.items() if rs)
                times.append(time.perf_counter() - t0)
        print(f"{codec:>10} {size:>12,} {size / max(events, 1):>12.1f} {size / max(raw_bytes, 1):>10.2f}"
              f" {statistics.median(times):>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--every", type=float, default=15)
    parser.add_argument("--batch", type=int, default=100, help="events per collector request")
    parser.add_argument("--log-budget-mb", type=int, default=0,
                        help="begin a new broker log past this RSS, as `rearview up` does (0: never)")
    args = parser.parse_args()

    base = Settings(auth=AuthSettings(required=False))
    settings = base.model_copy(update={
        "archive": base.archive.model_copy(update={"roll_interval_s": 5.0}),
        "broker": base.broker.model_copy(update={"log_budget_mb": args.log_budget_mb})})
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(settings, "127.0.0.1", Path(tmp), free_ports=True)
        done = threading.Event()
        sent = [0]
        failure: list[BaseException] = []

        def traffic() -> None:
            try:
                total = int(args.rate * args.minutes * 60)
                sent[0] = asyncio.run(send_http(stack.api_url, EventGenerator(users=20_000, seed=1).events(),
                                                total, args.rate, args.batch))
            except BaseException as exc:  # noqa: BLE001 - reported at the end
                failure.append(exc)
            finally:
                done.set()

        try:
            stack.start()
            s = stack.settings
            topic = s.kafka.topics.raw
            archive = Archive(s.archive.url)
            counted: dict[tuple[int, int], int] = {}
            print(f"archive soak: {args.rate:.0f} events/s in batches of {args.batch} for "
                  f"{args.minutes:g} min; archive {s.archive.url}; RSS in MB", flush=True)
            print(f"{'t (s)':>7} {'broker MB':>10} {'archiver MB':>12} {'messages':>10} {'events':>10}"
                  f" {'archive MB':>11} {'bytes/event':>12}", flush=True)
            series: list[tuple[float, float, int]] = []
            rolls = 0
            thread = threading.Thread(target=traffic, daemon=True)
            start = time.monotonic()
            thread.start()
            while True:
                finished = done.wait(args.every)
                over = None if finished else stack.log_over_budget()
                if over is not None:
                    rolls += stack.roll_log(over)
                t = time.monotonic() - start
                messages, events, size = archive_totals(archive, topic, counted)
                pids = {c.name: c.pid or 0 for c in stack.children}
                broker = rss_mb(pids["broker"])
                series.append((t, broker, events))
                print(f"{t:>7.0f} {broker:>10.0f} {rss_mb(pids['archiver']):>12.0f} {messages:>10,}"
                      f" {events:>10,} {size / 1e6:>11.2f} {size / max(events, 1):>12.1f}", flush=True)
                if finished:
                    break
            if failure:
                raise SystemExit(f"traffic failed: {failure[0]!r}")
            # Everything the collector accepted is in the log; wait for the worker to read it all
            # and for the archiver's time roll to file the tails.
            group = s.worker.app_id
            deadline = time.monotonic() + 120
            while True:
                messages, events, size = archive_totals(archive, topic, counted)
                if events >= sent[0] or time.monotonic() > deadline:
                    break
                time.sleep(1)
            committed = committed_offsets(s.kafka.bootstrap_servers, topic, s.kafka.topics.partitions)
            files = archive.files(topic)
            print(f"\nsent {sent[0]:,} events; archived {events:,} events in {messages:,} messages, "
                  f"{size:,} bytes ({size / max(events, 1):.1f} bytes/event, "
                  f"{events / max(messages, 1):.0f} events/message); {rolls} log rolls")
            # A retry after a roll may send a batch the collector had already taken: it is archived
            # twice (the pipeline keeps one copy), so at least every event sent.
            ok = events >= sent[0]
            for p in range(s.kafka.topics.partitions):
                fs = files.get(p, [])
                next_offset = max((f.last_offset for f in fs), default=-1) + 1
                # A roll waits for the archive, so the next log's base is the archive's end: the
                # positions stay contiguous across logs.
                contiguous = all(b.first_offset == a.last_offset + 1 for a, b in itertools.pairwise(fs))
                records = sum(f.records for f in fs)
                position = stack.bases.logical(topic, p, committed.get(p, 0))
                ok &= contiguous and records == next_offset and next_offset >= position
                print(f"  partition {p}: {len(fs)} files, positions up to {next_offset - 1}, {records:,} records,"
                      f" contiguous {contiguous}; highest committed position of any group {position:,}"
                      f" (group {group} and the archiver's)")
            print("replayable from the archive: " + ("yes (every event, every offset once)" if ok else "NO"))
            first_half = [b for t, b, _ in series if t <= series[-1][0] / 2]
            print(f"broker RSS: start {series[0][1]:.0f} MB, end {series[-1][1]:.0f} MB, "
                  f"{(series[-1][1] - series[0][1]) / max(series[-1][0] - series[0][0], 1) * 60:.1f} MB/min, "
                  f"{(series[-1][1] - (first_half[0] if first_half else series[0][1])) * 1024 / max(events, 1):.2f} KB per event")
            if rolls:
                print(f"broker RSS with {rolls} log rolls (budget {args.log_budget_mb} MB): between"
                      f" {min(b for _, b, _ in series):.0f} and {max(b for _, b, _ in series):.0f} MB")
            codec_table(archive, topic, events)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
