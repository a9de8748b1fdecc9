"""Soak: steady traffic through the embedded stack, RSS of every process over time.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 2000] [--every 30] [--dedup-horizon-s 600]

Starts the whole embedded stack (as `rearview up` does, free ports, a temporary data dir),
sends generated events to the collector at --rate events/s for --minutes, and every --every
seconds prints the resident memory of each process (with its children: the broker's is
Tansu's), the events stored, the worker's rollup
states in memory and its dedup state (ids remembered, bytes). Bounded state shows as a flat
worker RSS once warmed up: the dedup state fills for one horizon (24 bytes an id), closed
windows leave memory after their allowed lateness. The embedded broker keeps every message
in memory (Tansu's memory storage), so its RSS grows with the log by design.

At the end it prints the worker's RSS series and its growth over the second half of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import clickhouse  # noqa: E402
from app.embedded.process import tree_rss_mb as rss_mb  # noqa: E402
from app.generate import EventGenerator, send_http  # noqa: E402
from app.settings import AuthSettings, Settings  # noqa: E402
from app.up import Stack  # noqa: E402

# The API without keys: these figures are the pipeline's; a key costs the collector a few
# microseconds a request (bench/ingest.py measures it).
KEYS_OFF = AuthSettings(required=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--every", type=float, default=30)
    parser.add_argument("--dedup-horizon-s", type=int, default=600,
                        help="the worker's dedup horizon (default here 600 s, so that it fills"
                             " within the run; the product default is 3600)")
    args = parser.parse_args()

    base = Settings(auth=KEYS_OFF)
    settings = base.model_copy(update={"worker": base.worker.model_copy(
        update={"dedup_horizon_s": args.dedup_horizon_s})})
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(settings, "127.0.0.1", Path(tmp), free_ports=True)
        stop = threading.Event()
        sent = [0]
        failure: list[BaseException] = []

        def traffic() -> None:
            try:
                total = int(args.rate * args.minutes * 60)
                sent[0] = asyncio.run(send_http(stack.api_url, EventGenerator(users=20_000, seed=1).events(),
                                                total, args.rate, 200))
            except BaseException as exc:  # noqa: BLE001 - reported at the end
                failure.append(exc)
            finally:
                stop.set()

        try:
            stack.start()
            pids = {c.name: c.pid for c in stack.children if c.pid is not None}
            ch = clickhouse.connect(stack.settings.clickhouse)
            worker_url = f"http://127.0.0.1:{stack.worker_port}/health"
            names = list(pids)
            print(f"soak: {args.rate:.0f} events/s for {args.minutes:g} min, dedup horizon "
                  f"{args.dedup_horizon_s} s; RSS in MB", flush=True)
            print(f"{'t (s)':>7} {'stored':>10} " + " ".join(f"{n:>10}" for n in names)
                  + f" {'states':>8} {'dedup ids':>10} {'dedup MB':>9}", flush=True)
            series: list[tuple[float, float]] = []
            thread = threading.Thread(target=traffic, daemon=True)
            start = time.monotonic()
            thread.start()
            while True:
                finished = stop.wait(args.every)
                t = time.monotonic() - start
                health = httpx.get(worker_url, timeout=10).json()
                stored = ch.query("SELECT count() FROM events").result_rows[0][0]
                rss = {n: rss_mb(p) for n, p in pids.items() if os.path.exists(f"/proc/{p}")}
                series.append((t, rss.get("worker", 0.0)))
                print(f"{t:>7.0f} {stored:>10,} " + " ".join(f"{rss.get(n, 0):>10.0f}" for n in names)
                      + f" {health.get('rollups', {}).get('states_in_memory', 0):>8,}"
                      f" {health['dedup']['ids_remembered']:>10,} {health['dedup']['memory_bytes'] / 1e6:>9.1f}",
                      flush=True)
                if finished:
                    break
            ch.close()
        finally:
            stack.stop()
    if failure:
        raise SystemExit(f"traffic failed: {failure[0]!r}")
    half = [r for t, r in series if t >= series[-1][0] / 2]
    print(f"\nsent {sent[0]:,} events; worker RSS: min {min(r for _, r in series):.0f} MB,"
          f" max {max(r for _, r in series):.0f} MB; second half: first {half[0]:.0f} MB,"
          f" last {half[-1]:.0f} MB, median {statistics.median(half):.0f} MB")


if __name__ == "__main__":
    main()
