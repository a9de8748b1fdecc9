"""Cost of one registry write at 10 and at 100,000 subjects (the store's change log).

    .venv/bin/python bench/registry_store.py [--subjects 10 100000] [--writes 200]

For each registry size, a data directory is seeded with a snapshot holding that many subjects
(one schema each), opened, and then ``--writes`` new subjects are registered, each durable
(appended and fsynced) before the next. Prints the median and p99 time of one registration,
the bytes it appended, the open (replay) time, and the ratio to the smallest registry.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from app.embedded.registry.store import SchemaStore


def schema(i: int) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": "Product",
            "fields": [
                {"name": "id", "type": "string"},
                {"name": "n", "type": "long", "default": i},
            ],
        }
    )


def seed(path: Path, subjects: int) -> None:
    """A snapshot of *subjects* subjects, written directly (registering them would take hours)."""
    probe = SchemaStore()
    template = probe.register("probe", schema(0)).schema
    document = {
        "format": 2,
        "seq": 0,
        "next_id": subjects + 1,
        "configs": {"": {"level": "NONE"}},
        "modes": {},
        "schemas": [
            {
                "id": i + 1,
                "guid": f"guid-{i}",
                "schema_type": "AVRO",
                "schema": schema(i),
                "references": [],
                "identity": template.identity.replace('"default":0', f'"default":{i}'),
            }
            for i in range(subjects)
        ],
        "subjects": {
            f"subject-{i}": [{"version": 1, "id": i + 1, "deleted": False}] for i in range(subjects)
        },
    }
    path.mkdir(parents=True)
    (path / "registry.json").write_text(json.dumps(document))


def measure(subjects: int, writes: int) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        path = Path(tmp) / "data"
        seed(path, subjects)
        started = time.perf_counter()
        store = SchemaStore.open(path)
        opened = time.perf_counter() - started
        log_file = path / "registry.log"
        times = []
        for i in range(writes):
            begin = time.perf_counter()
            store.register(f"new-{i}", schema(subjects + i))
            times.append(time.perf_counter() - begin)
        appended = log_file.stat().st_size / writes
        store.close()
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return statistics.median(times) * 1000, p99 * 1000, appended, opened


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[10, 100_000])
    parser.add_argument("--writes", type=int, default=200)
    args = parser.parse_args()
    rows = [(n, *measure(n, args.writes)) for n in args.subjects]
    base = rows[0][1]
    print(f"\none registration, {args.writes} writes per size (each fsynced)\n")
    print(
        f"{'subjects':>9} {'median ms':>10} {'p99 ms':>8} {'bytes/write':>12} {'open s':>7} {'x smallest':>11}"
    )
    for n, median, p99, appended, opened in rows:
        print(
            f"{n:>9,} {median:>10.2f} {p99:>8.2f} {appended:>12.0f} {opened:>7.2f} {median / base:>11.2f}"
        )


if __name__ == "__main__":
    main()
