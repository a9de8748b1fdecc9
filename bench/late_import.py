"""What an all-late import costs, against the same events arriving in time order.

    .venv/bin/python bench/late_import.py [--events 100000] [--runs 3] [--hours 6]

Starts the whole embedded stack (free ports, a temporary data dir). Each run sends --events
generated events straight to events.raw as EventBatch messages, twice, with the same receive
time (now):
  * in order: event times within the last minute, in time order (live traffic);
  * all late: event times spread over the last --hours, sent user by user (an export): nearly
    every event is hours behind the partition's watermark, its window long evicted from
    memory and loaded back from the rollup tables.
Each is timed from the first produce until every event is in the events table AND applied to
the per-minute rollup (sum(count) reached), with the worker's CPU time. Prints the median
events/s of each and their ratio, and the worker's count of window states loaded back.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import schemas  # noqa: E402
from agents.codec import BatchWriter  # noqa: E402
from agents.schema_registry import register  # noqa: E402
from app import clickhouse  # noqa: E402
from app.collector.normalize import to_event  # noqa: E402
from app.generate import EventGenerator  # noqa: E402
from app.settings import AuthSettings, Settings  # noqa: E402
from app.up import Stack  # noqa: E402
from bench.e2e import cpu_seconds  # noqa: E402

# The API without keys: these figures are the pipeline's; a key costs the collector a few
# microseconds a request (bench/ingest.py measures it).
KEYS_OFF = AuthSettings(required=False)


def dataset(n: int, seed: int, late: bool, hours: float) -> list[dict[str, Any]]:
    gen = EventGenerator(users=5000, seed=seed)
    now = int(time.time() * 1000)
    span = int(hours * 3_600_000) if late else 60_000
    out: list[dict[str, Any]] = []
    i = 0
    while len(out) < n:
        out.extend(gen.session(now - span + (i * 7919) % span))
        i += 1
    events = out[:n]
    for e in events:
        e["timestamp"] = min(e["timestamp"], now)
    key = (lambda e: (e["user_id"], e["timestamp"])) if late else (lambda e: e["timestamp"])
    return sorted(events, key=key)


def send(bootstrap: str, topic: str, writer: BatchWriter, events: list[dict[str, Any]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    now = int(time.time() * 1000)
    records = [to_event(e, received_at_ms=now) for e in events]
    for i in range(0, len(records), 500):
        while True:
            try:
                producer.produce(topic, value=writer.encode(records[i:i + 500]))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def wait_applied(ch: Any, target: int, timeout_s: float = 900) -> float:
    deadline = time.monotonic() + timeout_s
    rows = applied = 0
    while time.monotonic() < deadline:
        rows = ch.query("SELECT count() FROM events").result_rows[0][0]
        applied = ch.query("SELECT sum(count) FROM rollup_events_by_name_1m FINAL").result_rows[0][0] or 0
        if rows >= target and applied >= target:
            return time.monotonic()
        time.sleep(0.1)
    raise SystemExit(f"timed out: {rows} rows and {applied} applied of {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hours", type=float, default=6)
    args = parser.parse_args()

    results: dict[str, list[tuple[float, float]]] = {"in order": [], "all late": []}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Settings(auth=KEYS_OFF), "127.0.0.1", Path(tmp), free_ports=True)
        try:
            stack.start()
            s = stack.settings
            worker = next(c for c in stack.children if c.name == "worker")
            assert worker.pid is not None
            ch = clickhouse.connect(s.clickhouse)
            writer = BatchWriter(schemas.EVENT_BATCH, register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH))
            total = 0
            for run in range(args.runs):
                for mode in ("in order", "all late"):
                    events = dataset(args.events, seed=100 * run + (mode == "all late"), late=mode == "all late",
                                     hours=args.hours)
                    cpu0, t0 = cpu_seconds(worker.pid), time.monotonic()
                    send(s.kafka.bootstrap_servers, s.kafka.topics.raw, writer, events)
                    total += len(events)
                    done = wait_applied(ch, total)
                    cpu = cpu_seconds(worker.pid) - cpu0
                    results[mode].append((len(events) / (done - t0), len(events) / cpu))
                    print(f"run {run + 1} {mode:<9} {len(events):>8} events  {done - t0:6.2f}s"
                          f"  {len(events) / (done - t0):9,.0f} ev/s  {len(events) / cpu:9,.0f} ev/worker-CPU-s",
                          flush=True)
            health = httpx.get(f"http://127.0.0.1:{stack.worker_port}/health", timeout=10).json()
            ch.close()
        finally:
            stack.stop()
    print()
    print(f"{'arrival':<10}{'events/s':>12}{'events/CPU-s':>14}   (median of {args.runs}, {args.events:,} events)")
    med = {m: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs))
           for m, rs in results.items()}
    for mode, (eps, cps) in med.items():
        print(f"{mode:<10}{eps:>12,.0f}{cps:>14,.0f}")
    print(f"all late / in order: {med['all late'][0] / med['in order'][0]:.2f}x events/s,"
          f" {med['all late'][1] / med['in order'][1]:.2f}x per worker CPU-second")
    print(f"worker: {health['rollups']['states_loaded']:,} window states loaded back,"
          f" {health['rollups']['states_evicted']:,} evicted")


if __name__ == "__main__":
    main()
