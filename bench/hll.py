"""HLL sketch size and accuracy by lg_k, for choosing a rollup's precision.

    .venv/bin/python bench/hll.py [--users 1000000] [--seeds 3] [--partitions 4] [--no-chdb]

For each lg_k from 10 to 16 and each seed, --users distinct user ids (``s{seed}-user-{i}``)
go into one DataSketches sketch (the type `tables/hll.py` uses, HLL_4), and, split across
--partitions partitions, into per-partition sketches merged from their bytes the way rollups
are merged at query time. Prints the compact serialized size (HLL_4, and HLL_8 for
comparison), the relative error against the exact distinct count (median and max over seeds,
single sketch and merged partitions), and the update cost from Python.

With chdb installed (the default), the same ids are also counted in-process by ClickHouse:
`uniqExact` (must equal the exact count: it checks the data is the same), and ClickHouse's
own approximate functions `uniqHLL12` (2**12 registers, like lg_k 12) and `uniqCombined`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasketches import HLL_8, hll_sketch  # noqa: E402

from tables import hll  # noqa: E402

LG_KS = range(10, 17)


def ids(seed: int, n: int) -> list[str]:
    return [f"s{seed}-user-{i}" for i in range(n)]


def chdb_counts(seed: int, n: int) -> dict[str, float] | None:
    try:
        import chdb
    except ImportError:
        return None
    value = f"concat('s{seed}-user-', toString(number))"
    sql = (f"SELECT uniqExact({value}), uniqHLL12({value}), uniqCombined({value}) "
           f"FROM numbers({n})")
    exact, hll12, combined = (float(x) for x in str(chdb.query(sql, "CSV")).strip().split(","))
    return {"uniqExact": exact, "uniqHLL12": hll12, "uniqCombined": combined}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--no-chdb", action="store_true")
    args = ap.parse_args()

    n, parts = args.users, args.partitions
    single: dict[int, list[float]] = {k: [] for k in LG_KS}
    merged: dict[int, list[float]] = {k: [] for k in LG_KS}
    sizes: dict[int, tuple[int, int]] = {}
    update_ns: dict[int, list[float]] = {k: [] for k in LG_KS}
    clickhouse: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        values = ids(seed, n)
        for lg_k in LG_KS:
            sketch = hll.new(lg_k)
            start = time.perf_counter()
            hll.update_many(sketch, values)
            update_ns[lg_k].append((time.perf_counter() - start) / n * 1e9)
            single[lg_k].append(hll.estimate(sketch) / n - 1)
            partials = [hll.new(lg_k) for _ in range(parts)]
            for p in range(parts):
                hll.update_many(partials[p], values[p::parts])
            merged[lg_k].append(hll.merge([hll.to_bytes(s) for s in partials], lg_k) / n - 1)
            if seed == 0:
                hll8 = hll_sketch(lg_k, HLL_8)
                hll.update_many(hll8, values[: 64 << lg_k])  # enough to fill every register
                sizes[lg_k] = (len(hll.to_bytes(sketch)), len(hll8.serialize_compact()))
        if not args.no_chdb:
            counts = chdb_counts(seed, n)
            if counts is None:
                print("chdb is not installed: ClickHouse comparison skipped")
                args.no_chdb = True
            else:
                assert counts["uniqExact"] == n, counts
                for name, value in counts.items():
                    clickhouse.setdefault(name, []).append(value / n - 1)

    def stat(errors: list[float]) -> str:
        abs_errors = [abs(e) for e in errors]
        return f"{statistics.median(abs_errors):>11.3%}{max(abs_errors):>8.3%}"

    print(f"{n:,} distinct ids, {args.seeds} seeds; merged = {parts} per-partition sketches "
          f"(disjoint slices of the ids) unioned from bytes")
    print()
    print(f"{'lg_k':>4}{'HLL_4 B':>9}{'HLL_8 B':>9}{'HIP se':>8}{'union se':>9}"
          f"{'single med':>11}{'max':>8}{'merged med':>11}{'max':>8}{'ns/update':>11}")
    for lg_k in LG_KS:
        k = 1 << lg_k
        s4, s8 = sizes[lg_k]
        print(f"{lg_k:>4}{s4:>9,}{s8:>9,}{0.836 / k ** 0.5:>8.2%}{1.04 / k ** 0.5:>9.2%}"
              f"{stat(single[lg_k])}{stat(merged[lg_k])}{statistics.median(update_ns[lg_k]):>11.0f}")
    print()
    print("se = one relative standard error: 0.836/sqrt(k) for a single sketch (HIP estimator),")
    print("1.04/sqrt(k) for a union; med/max are |relative error| over the seeds. A bound of 2%")
    print("at lg_k 12 is only ~1.5 (single) / ~1.2 (union) standard errors: some data sets miss it.")
    if clickhouse:
        print()
        print("ClickHouse (chdb, in-process) on the same ids, |relative error| median / max:")
        for name, errors in clickhouse.items():
            print(f"  {name:<14}{stat(errors)}")


if __name__ == "__main__":
    main()
