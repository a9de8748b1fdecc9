"""The dedup state at a billion events a day: memory over time, and cost per event.

    .venv/bin/python bench/dedup.py [--rate 11600] [--minutes 90] [--horizon-min 60] [--runs 3]

Simulates --rate events/s (11.6k/s is a billion a day) for --minutes of processing time,
in events.clean messages of 2,000 rows spread over 4 partitions, through one
`tables.dedup.Deduper` with a --horizon-min horizon. 1% of the rows are copies of an event
seen up to 10 minutes earlier (client retries). Prints, every 10 simulated minutes, the ids
remembered and their bytes, and the process RSS; then the check cost per event (median of
--runs timed passes over one simulated minute at the end, when the state is full) against a
baseline measured in the same run: a Python set of the same ids (`in` + `add` per event).
Memory should rise for one horizon and then stay flat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tables.dedup import ENTRY_BYTES, Deduper, pack_position  # noqa: E402

BLOCK = 2000
PARTITIONS = 4


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=11_600)
    parser.add_argument("--minutes", type=float, default=90)
    parser.add_argument("--horizon-min", type=float, default=60)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    d = Deduper(int(args.horizon_min * 60_000))
    blocks_per_s = args.rate / BLOCK
    total_blocks = int(args.minutes * 60 * blocks_per_s)
    offsets = [0] * PARTITIONS
    recent: list[np.ndarray] = []  # ids of the last ~10 simulated minutes, for retries
    dropped = checked = 0
    t0_ms = 1_796_000_000_000
    check_s = 0.0
    print(f"{args.rate:,.0f} events/s for {args.minutes:g} min, horizon {args.horizon_min:g} min, "
          f"blocks of {BLOCK} over {PARTITIONS} partitions")
    print(f"{'sim min':>8}{'ids':>14}{'state MB':>10}{'RSS MB':>9}{'us/event':>10}")
    report_every = int(600 * blocks_per_s)
    for b in range(total_blocks):
        now_ms = t0_ms + int(b / blocks_per_s * 1000)
        ids = rng.integers(0, 2**63, size=(BLOCK, 2), dtype=np.uint64)
        if recent:
            n_copy = BLOCK // 100
            pool = recent[int(rng.integers(0, len(recent)))]
            ids[:n_copy] = pool[rng.integers(0, len(pool), n_copy)]
        p = b % PARTITIONS
        start = time.perf_counter()
        verdict = d.check(p, ids, pack_position(offsets[p], np.arange(BLOCK)), now_ms)
        check_s += time.perf_counter() - start
        offsets[p] += 1
        dropped += verdict.duplicates
        checked += BLOCK
        recent.append(ids)
        if len(recent) > int(600 * blocks_per_s):
            recent.pop(0)
        if (b + 1) % report_every == 0:
            print(f"{(b + 1) / blocks_per_s / 60:>8.0f}{d.entries():>14,}{d.nbytes() / 1e6:>10.0f}"
                  f"{rss_mb():>9.0f}{check_s / checked * 1e6:>10.2f}", flush=True)
    print(f"checked {checked:,} events, dropped {dropped:,} copies "
          f"({ENTRY_BYTES} bytes an id: {ENTRY_BYTES * 1e6 / 1e6:.0f} MB per million ids remembered)")

    # Cost per event with the state full: one more simulated minute, --runs times (the ids of
    # each pass are fresh), against a Python set of the same size doing `in` + `add`.
    minute = [rng.integers(0, 2**63, size=(BLOCK, 2), dtype=np.uint64) for _ in range(int(60 * blocks_per_s))]
    costs = []
    for run in range(args.runs):
        now_ms = t0_ms + int(args.minutes * 60_000) + run * 60_000
        start = time.perf_counter()
        for i, ids in enumerate(minute):
            p = i % PARTITIONS
            d.check(p, ids ^ np.uint64(run + 1), pack_position(offsets[p], np.arange(BLOCK)), now_ms)
            offsets[p] += 1
        costs.append((time.perf_counter() - start) / (len(minute) * BLOCK))
    seen: set[tuple[int, int]] = set()
    keys = [tuple(map(int, row)) for ids in minute for row in ids]
    base = []
    for _ in range(args.runs):
        seen.clear()
        start = time.perf_counter()
        for k in keys:
            if k not in seen:
                seen.add(k)
        base.append((time.perf_counter() - start) / len(keys))
    med, med_base = statistics.median(costs), statistics.median(base)
    print(f"full state: {statistics.median(costs) * 1e6:.2f} us/event = {1 / med:,.0f} events/s per core"
          f" (median of {args.runs}); Python set baseline (empty to one minute): {med_base * 1e6:.2f} us/event;"
          f" ratio {med / med_base:.1f}x")


if __name__ == "__main__":
    main()
