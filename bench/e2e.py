"""End-to-end throughput and freshness of the embedded pipeline.

    .venv/bin/python bench/e2e.py [--events 200000] [--single-events 50000] [--runs 3]

Starts the whole embedded stack (`rearview up` machinery, free ports, a temporary data dir),
then for each run:
  * batch path: N events as EventBatch messages (500 events each) straight to events.raw;
  * single path: M events as one-Event messages (what a stock Confluent serializer writes);
and times produce-start -> every row in ClickHouse. It also reads the worker's CPU time, so
events per worker CPU-second ("per core") is reported beside wall-clock events/s. Freshness:
events tracked through the collector at a steady rate under no other load; each row's
ClickHouse insert time minus the moment its request was sent gives track-to-queryable latency.
Prints medians over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import fastavro
from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import schemas  # noqa: E402
from agents.codec import frame  # noqa: E402
from agents.schema_registry import register  # noqa: E402
from app import clickhouse  # noqa: E402
from app.collector.normalize import to_event  # noqa: E402
from app.generate import EventGenerator, send_kafka  # noqa: E402
from app.settings import AuthSettings, Settings  # noqa: E402
from app.up import Stack  # noqa: E402

# The API without keys: these figures are the pipeline's; a key costs the collector a few
# microseconds a request (bench/ingest.py measures it).
KEYS_OFF = AuthSettings(required=False)

FRESHNESS_LIBRARY = "bench-freshness"


def cpu_seconds(pid: int) -> float:
    """utime+stime of *pid* and its threads (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_rows(ch: object, target: int, timeout_s: float = 900) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = ch.query("SELECT count() FROM events").result_rows[0][0]  # type: ignore[attr-defined]
        if n >= target:
            return time.monotonic()
        time.sleep(0.1)
    raise SystemExit(f"timed out: {n} of {target} rows")


def produce_single(settings: Settings, n: int, gen: EventGenerator) -> None:
    topic = settings.kafka.topics.raw
    schema_id = register(settings.registry.url, topic, schemas.EVENT)
    parsed = fastavro.parse_schema(schemas.load(schemas.EVENT))
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 5,
                         "compression.type": "lz4"})
    events = gen.events()
    now = int(time.time() * 1000)
    for i in range(n):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, to_event(next(events), received_at_ms=now))
        while True:
            try:
                producer.produce(topic, value=frame(schema_id, buf.getvalue()))
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    producer.flush(60)


async def freshness(api: str, seconds: float, rate: float, per_request: int) -> dict[str, float]:
    gen = EventGenerator(users=500, seed=10_000).events()
    sent: dict[str, float] = {}
    interval = per_request / rate
    async with aiohttp.ClientSession() as http:
        start = time.monotonic()
        i = 0
        while time.monotonic() - start < seconds:
            batch = [{**next(gen), "context": {"library": FRESHNESS_LIBRARY}} for _ in range(per_request)]
            t = time.time()
            async with http.post(f"{api}/v1/batch", json={"events": batch}) as resp:
                assert resp.status == 202, await resp.text()
            for e in batch:
                sent[e["event_id"]] = t
            i += 1
            await asyncio.sleep(max(0.0, start + i * interval - time.monotonic()))
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--single-events", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fresh-seconds", type=float, default=20)
    parser.add_argument("--fresh-rate", type=float, default=2000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Settings(auth=KEYS_OFF), "127.0.0.1", Path(tmp), free_ports=True)
        try:
            stack.start()
            s = stack.settings
            worker = next(c for c in stack.children if c.name == "worker")
            assert worker.pid is not None
            ch = clickhouse.connect(s.clickhouse)
            batch_id = register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH)
            results: dict[str, list[tuple[float, float, float]]] = {"batch": [], "single": []}
            stored = 0
            for run in range(args.runs):
                for path, n in (("batch", args.events), ("single", args.single_events)):
                    if n <= 0:
                        continue
                    # Distinct seeds, so distinct event ids: a repeated id is a duplicate and dropped.
                    gen = EventGenerator(users=5000, seed=2 * run + (path == "single"))
                    cpu0, t0 = cpu_seconds(worker.pid), time.monotonic()
                    if path == "batch":
                        send_kafka(s.kafka.bootstrap_servers, s.kafka.topics.raw, batch_id,
                                   gen.events(), n, 0, 500)
                    else:
                        produce_single(s, n, gen)
                    produced = time.monotonic()
                    stored += n
                    done = wait_rows(ch, stored)
                    cpu = cpu_seconds(worker.pid) - cpu0
                    results[path].append((done - t0, n / (done - t0), n / cpu))
                    print(f"run {run + 1} {path:<6} {n:>8} events  produce {produced - t0:6.2f}s"
                          f"  end-to-end {done - t0:6.2f}s  {n / (done - t0):9,.0f} ev/s"
                          f"  worker CPU {cpu:6.2f}s = {n / cpu:9,.0f} ev/CPU-s", flush=True)

            sent = asyncio.run(freshness(stack.api_url, args.fresh_seconds, args.fresh_rate, 20))
            wait_rows(ch, stored + len(sent))
            time.sleep(1)
            rows = ch.query(
                "SELECT toString(event_id), toUnixTimestamp64Milli(_inserted_at) FROM events"
                " WHERE library = {lib:String}", parameters={"lib": FRESHNESS_LIBRARY},
            ).result_rows
            lat = sorted(ins / 1000 - sent[eid] for eid, ins in rows)
            ch.close()
        finally:
            stack.stop()

    print()
    print(f"{'path':<8}{'events':>10}{'median s':>10}{'events/s':>12}{'events/CPU-s':>14}   (median of {args.runs})")
    for path, rs in results.items():
        if rs:
            n = args.events if path == "batch" else args.single_events
            print(f"{path:<8}{n:>10}{statistics.median(r[0] for r in rs):>10.2f}"
                  f"{statistics.median(r[1] for r in rs):>12,.0f}{statistics.median(r[2] for r in rs):>14,.0f}")
    if results["batch"] and results["single"]:
        ratio = statistics.median(r[1] for r in results["batch"]) / statistics.median(r[1] for r in results["single"])
        print(f"batch messages / one-event messages: {ratio:.1f}x events/s")
    if lat:
        q = statistics.quantiles(lat, n=100)
        print(f"freshness over {len(lat)} events tracked at {args.fresh_rate:.0f}/s:"
              f" p50 {statistics.median(lat) * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms,"
              f" max {lat[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
