"""Cost of the aggregate stage's pure core on one core, against naive per-event baselines.

    .venv/bin/python bench/aggregate.py [--events 200000] [--runs 5] [--naive-events N]
                                        [--partitions 4] [--block 2000] [--cpu N]
                                        [--faust-events 20000] [--faust-runs 3] [--faust-rollups 1]

Events come from the traffic generator (5000 users, seed 1) with a simulated clock of ~20k
events/s, go through the collector's `to_event`, and become CleanEvent rows with provenance
(batch messages of 100 events, positions increasing per partition), in events.clean Arrow
blocks of --block rows, each block from one partition, partitions round-robin. Rollups: the
three DEFAULT_ROLLUPS. Pinned to one CPU, each figure is events per CPU-second of this thread,
median of --runs runs (a fresh Aggregator each run):

  * apply: `Aggregator.apply` on every block;
  * apply + flush: the same, plus every 10 blocks (~1 s of traffic at 20k events/s) what the
    lead's flush timer does in-process: `dirty()`, `to_bytes()` of every dirty key (with its
    key string), `mark_flushed()`. No broker, no ClickHouse;
  * decode + apply + flush: the same, starting from the Arrow IPC bytes of each message;
  * per-event dict loop: one Python loop over the rows, updating live states in a dict (what
    "aggregate in plain dicts" costs without vectorisation), no serialization;
  * naive table update per event: for every event and every rollup, read the key's bytes from
    a dict-backed store, deserialize, update, serialize, write back: a model of a Faust agent
    doing `table[key] = ...` per event, where each write serializes the value for the
    changelog. It runs on the first --naive-events events (default: all). It leaves out Faust's
    own per-message and changelog-send costs;
  * Faust, table write per event (real): the naive baseline for real, measured in the same
    invocation. The embedded broker (Tansu) runs as a child process, the first --faust-events
    events are produced to a topic of --partitions partitions as one JSON clean event per
    message (each on its source partition), and bench/_naive_faust.py, a Faust app (faust-
    streaming, configured like app/faust_app.py: memory store, 6 s session, 1 s heartbeat,
    earliest, no web, aiokafka/faust/mode loggers at WARNING) runs in a child process with
    `async for event in stream:` and, per event, for each of the first --faust-rollups
    DEFAULT_ROLLUPS (default 1: a count per minute and event name), reads the key's small JSON
    value from an `app.Table`, adds one and writes it back with `table[key] = value` (one
    changelog record per write). The agent times itself from the first event processed
    (start-up and group join excluded) to the N-th processed and the producer flushed (every
    changelog record acknowledged), and its CPU time over the same span. A fresh app id (group,
    table, changelog) each of --faust-runs runs, median taken. Where the OS allows, the Faust
    process is pinned to the same CPU as this bench and the broker to the other CPUs, so the
    Faust figure is one core's worth too. Its "events/s per core" is events per CPU-second of
    the Faust process (like the other rows); the wall-clock rate is printed beside it.
    Ratios "x Faust" are against that per-CPU-second figure. Note the work differs in the
    naive's favour at the default: one count, no HLL, against the aggregator's three rollups
    with two HLL sketches.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa

from agents.records import CleanEvent
from agents.sink import decode_block, encode_blocks, to_arrow
from app.collector.normalize import to_event
from app.embedded.broker import TopicSpec, ensure_topics
from app.embedded.process import ChildProcess, free_port, python_module, tcp_ready
from app.generate import EventGenerator
from tables import hll
from tables.aggregate import Aggregator
from tables.rollups import DEFAULT_ROLLUPS, RollupSpec
from tables.state import PartialState, StateKey

START_MS = 1_796_116_500_000
EVENTS_PER_MESSAGE = 100
FLUSH_EVERY_BLOCKS = 10


def build(n: int, partitions: int) -> list[CleanEvent]:
    """*n* clean events, round-robin over partitions by message, positions increasing."""
    ticks = itertools.count()
    # ~4.5 events per session: one session every 0.22 ms of event time is ~20k events/s.
    gen = EventGenerator(users=5000, seed=1).events(clock=lambda: (START_MS + next(ticks) * 0.22) / 1000)
    offsets = [0] * partitions
    out: list[CleanEvent] = []
    for message in itertools.count():
        if len(out) >= n:
            break
        p = message % partitions
        for index in range(EVENTS_PER_MESSAGE):
            raw = next(gen)
            received = raw["timestamp"] + 50
            ev = to_event(raw, received_at_ms=received)
            out.append(CleanEvent(
                event_id=ev["event_id"], project_id=ev["project_id"], event_name=ev["event_name"],
                user_id=ev["user_id"], timestamp=ev["timestamp"], properties=ev["properties"],
                ip=None, user_agent=None, library=ev["context"]["library"], received_at=received,
                schema_id=1, source_partition=p, source_offset=offsets[p], source_index=index,
            ))
        offsets[p] += 1
    return out[:n]


def blocks_of(events: list[CleanEvent], partitions: int, size: int) -> list[list[CleanEvent]]:
    """Blocks of *size* rows, each of one partition, the partitions' blocks interleaved."""
    by_partition: list[list[CleanEvent]] = [[] for _ in range(partitions)]
    for e in events:
        by_partition[e["source_partition"]].append(e)
    chunks = [[rows[i:i + size] for i in range(0, len(rows), size)] for rows in by_partition]
    return [c for group in itertools.zip_longest(*chunks) for c in group if c]


def flush(agg: Aggregator) -> int:
    written = 0
    for key, state in agg.dirty().items():
        written += len(key.to_str()) + len(state.to_bytes())
    agg.mark_flushed()
    return written


Message = tuple[pa.Table, int, int]  # an events.clean block, its partition and offset


def positioned(chunks: list[list[CleanEvent]], tables: list[pa.Table]) -> list[Message]:
    """Each block with the partition of its rows and the next offset of that partition."""
    offsets: dict[int, int] = {}
    out = []
    for chunk, table in zip(chunks, tables, strict=True):
        p = chunk[0]["source_partition"]
        out.append((table, p, offsets.get(p, 0)))
        offsets[p] = offsets.get(p, 0) + 1
    return out


def run_apply(tables: list[Message], with_flush: bool) -> int:
    agg = Aggregator(DEFAULT_ROLLUPS)
    n = 0
    for i, (table, p, offset) in enumerate(tables, 1):
        n += agg.apply(table, p, offset).rows
        if with_flush and i % FLUSH_EVERY_BLOCKS == 0:
            flush(agg)
    if with_flush:
        flush(agg)
    return n


def run_decode(messages: list[tuple[bytes, int, int]]) -> int:
    agg = Aggregator(DEFAULT_ROLLUPS)
    n = 0
    for i, (data, p, offset) in enumerate(messages, 1):
        n += agg.apply(decode_block(data), p, offset).rows
        if i % FLUSH_EVERY_BLOCKS == 0:
            flush(agg)
    flush(agg)
    return n


def _keys(spec: RollupSpec, e: CleanEvent) -> StateKey:
    g = spec.granularity_ms
    props = e["properties"]
    return StateKey(e["source_partition"], e["project_id"], spec.name, e["timestamp"] // g * g,
                    (e["event_name"], *(props.get(k, "") for k in spec.property_keys)))


def run_dict_loop(events: list[CleanEvent]) -> int:
    """Per event, per rollup: a dict lookup and an in-place update (no lateness, no bytes)."""
    states: dict[StateKey, PartialState] = {}
    for e in events:
        position = (e["source_offset"], e["source_index"])
        for spec in DEFAULT_ROLLUPS:
            key = _keys(spec, e)
            state = states.get(key)
            if state is None:
                state = states[key] = PartialState(sketch=hll.new(spec.lg_k) if spec.uniques else None)
            if position > state.applied_through:
                state.count += 1
                state.applied_through = position
                if state.sketch is not None:
                    state.sketch.update(e["user_id"])
    return len(events)


def run_naive(events: list[CleanEvent]) -> int:
    """Per event, per rollup: store read, deserialize, update, serialize, store write."""
    store: dict[str, bytes] = {}
    for e in events:
        position = (e["source_offset"], e["source_index"])
        for spec in DEFAULT_ROLLUPS:
            key = _keys(spec, e).to_str()
            data = store.get(key)
            if data is None:
                state = PartialState(sketch=hll.new(spec.lg_k) if spec.uniques else None)
            else:
                state = PartialState.from_bytes(data)
            if position > state.applied_through:
                state.count += 1
                state.applied_through = position
                if state.sketch is not None:
                    state.sketch.update(e["user_id"])
            store[key] = state.to_bytes()
    return len(events)


NAIVE_TOPIC = "bench.naive.events"


def pinned(argv: list[str], cpus: set[int] | None) -> list[str]:
    """*argv* run under `taskset` on *cpus* (all its threads and children), when possible."""
    if not cpus or shutil.which("taskset") is None:
        return argv
    return ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *argv]


def produce_one_per_message(bootstrap: str, events: list[CleanEvent]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "compression.type": "lz4"})
    for i, e in enumerate(events):
        value = json.dumps(e).encode()
        while True:
            try:
                producer.produce(NAIVE_TOPIC, value=value, partition=e["source_partition"])
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise SystemExit("could not produce the naive baseline's events")


def run_faust(events: list[CleanEvent], partitions: int, runs: int, rollups: int,
              faust_cpus: set[int] | None, broker_cpus: set[int] | None) -> list[dict[str, float]]:
    """The real naive baseline: see the module docstring. One result dict per run."""
    specs = [[s.name, s.granularity_ms, list(s.property_keys)] for s in DEFAULT_ROLLUPS[:rollups]]
    results: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        broker = ChildProcess(
            "broker", pinned(python_module("app.cli", "broker", "--host", "127.0.0.1", "--port", str(port)),
                             broker_cpus),
            ready=tcp_ready("127.0.0.1", port), log_path=tmp / "broker.log")
        children = [broker]
        try:
            broker.start()
            broker.wait_ready(60)
            bootstrap = f"127.0.0.1:{port}"
            ensure_topics(bootstrap, [TopicSpec(NAIVE_TOPIC, partitions)])
            produce_one_per_message(bootstrap, events)
            for run in range(runs):
                out = tmp / f"faust-{run}.json"
                child = ChildProcess(
                    f"faust-{run}",
                    pinned([sys.executable, str(ROOT / "bench" / "_naive_faust.py"), "worker", "-l", "warn"],
                           faust_cpus),
                    ready=lambda: True,
                    env={"NAIVE_BROKER": bootstrap, "NAIVE_APP_ID": f"bench-naive-{run}",
                         "NAIVE_TOPIC": NAIVE_TOPIC, "NAIVE_PARTITIONS": str(partitions),
                         "NAIVE_N": str(len(events)), "NAIVE_ROLLUPS": json.dumps(specs),
                         "NAIVE_OUT": str(out), "NAIVE_DATADIR": str(tmp / f"faust-{run}-data"),
                         "PYTHONUNBUFFERED": "1"},
                    log_path=tmp / f"faust-{run}.log")
                children.append(child)
                child.start()
                deadline = time.monotonic() + 120 + len(events) * rollups / 200
                while not out.exists():
                    if not child.alive() or time.monotonic() > deadline:
                        tail = (tmp / f"faust-{run}.log").read_text(errors="replace")[-3000:]
                        raise SystemExit(f"the naive Faust baseline failed (run {run + 1}):\n{tail}")
                    time.sleep(0.1)
                child.stop()
                r = json.loads(out.read_text())
                results.append(r)
                print(f"  Faust run {run + 1}: {r['n']:,} events, {r['writes']:,} table writes "
                      f"({r['keys']:,} keys) in {r['flushed_s']:.2f} s = {r['n'] / r['flushed_s']:,.0f} events/s, "
                      f"{r['n'] / r['cpu_flushed_s']:,.0f} events per CPU-s", flush=True)
        finally:
            for child in reversed(children):
                child.stop()
    return results


def timed(fn: Callable[[], int]) -> float:
    start = time.thread_time()
    n = fn()
    return n / (time.thread_time() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--naive-events", type=int, default=None, help="default: --events")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--block", type=int, default=2000)
    ap.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: the last)")
    ap.add_argument("--faust-events", type=int, default=20_000,
                    help="events for the real Faust baseline (0: skip it)")
    ap.add_argument("--faust-runs", type=int, default=3)
    ap.add_argument("--faust-rollups", type=int, default=1, choices=range(1, len(DEFAULT_ROLLUPS) + 1),
                    help="table writes per event in the Faust baseline (the first N DEFAULT_ROLLUPS)")
    args = ap.parse_args()

    faust_cpus = broker_cpus = None
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        cpu = args.cpu if args.cpu is not None else cpus[-1]
        faust_cpus, broker_cpus = {cpu}, (set(cpus) - {cpu}) or None
        os.sched_setaffinity(0, {cpu})
        print(f"pinned to CPU {cpu}")

    events = build(args.events, args.partitions)
    chunks = blocks_of(events, args.partitions, args.block)
    tables = positioned(chunks, [to_arrow(c) for c in chunks])
    messages = [(encode_blocks(c, max_bytes=10**9, rows_per_block=args.block)[0], p, offset)
                for c, (_, p, offset) in zip(chunks, tables, strict=True)]
    naive_events = events if args.naive_events is None else events[: args.naive_events]

    faust: list[dict[str, float]] = []
    if args.faust_events > 0:
        n_faust = min(args.faust_events, len(events))
        print(f"real Faust baseline: {n_faust:,} one-event messages, {args.faust_rollups} table write(s) "
              f"per event; Faust on CPU {sorted(faust_cpus) if faust_cpus else 'any'}, broker on "
              f"{sorted(broker_cpus) if broker_cpus else 'any'}", flush=True)
        faust = run_faust(events[:n_faust], args.partitions, args.faust_runs, args.faust_rollups,
                          faust_cpus, broker_cpus)

    probe = Aggregator(DEFAULT_ROLLUPS)
    applied = 0
    for table, p, offset in tables:
        applied += probe.apply(table, p, offset).applied
    flushed_bytes = flush(probe)
    span_s = (max(e["timestamp"] for e in events) - min(e["timestamp"] for e in events)) / 1000

    figures: dict[str, list[float]] = {k: [] for k in
                                       ("apply", "apply + flush", "decode + apply + flush",
                                        "per-event dict loop", "naive table update per event")}
    for _ in range(args.runs):
        figures["apply"].append(timed(lambda: run_apply(tables, with_flush=False)))
        figures["apply + flush"].append(timed(lambda: run_apply(tables, with_flush=True)))
        figures["decode + apply + flush"].append(timed(lambda: run_decode(messages)))
        figures["per-event dict loop"].append(timed(lambda: run_dict_loop(events)))
        figures["naive table update per event"].append(timed(lambda: run_naive(naive_events)))

    medians = {k: statistics.median(v) for k, v in figures.items()}
    base = medians["naive table update per event"]
    faust_label = "Faust, table write per event"
    faust_wall = faust_cpu = None
    if faust:
        faust_wall = statistics.median(r["n"] / r["flushed_s"] for r in faust)
        faust_cpu = statistics.median(r["n"] / r["cpu_flushed_s"] for r in faust)
        medians[faust_label] = faust_cpu
    print(
        f"{len(events):,} events ({span_s:,.0f} s of event time), {args.partitions} partitions, "
        f"{len(tables)} blocks of {args.block}; rollups: {', '.join(s.name for s in DEFAULT_ROLLUPS)}; "
        f"median of {args.runs} runs"
    )
    print(f"{len(probe.states()):,} state keys; (row, rollup) applied {applied:,}; "
          f"one full flush writes {flushed_bytes / 1e6:.2f} MB")
    print()
    print(f"{'path':<32}{'events/s per core':>20}{'us/event':>11}{'x naive':>10}{'x Faust':>10}")
    for name, eps in medians.items():
        vs_faust = f"{eps / faust_cpu:>10.1f}" if faust_cpu else f"{'-':>10}"
        print(f"{name:<32}{eps:>20,.0f}{1e6 / eps:>11.2f}{eps / base:>10.1f}{vs_faust}")
    print()
    print(f"naive baseline on the first {len(naive_events):,} events; "
          f"ratio apply / naive = {medians['apply'] / base:.1f}x, "
          f"apply + flush / naive = {medians['apply + flush'] / base:.1f}x")
    if faust_wall and faust_cpu:
        n_faust = int(faust[0]["n"])
        print(f"real Faust baseline on the first {n_faust:,} events ({args.faust_rollups} table write(s) per "
              f"event, median of {len(faust)} runs): {faust_wall:,.0f} events/s wall-clock, "
              f"{faust_cpu:,.0f} events per Faust CPU-second")
        print(f"ratio apply / Faust = {medians['apply'] / faust_cpu:.0f}x per CPU-s "
              f"({medians['apply'] / faust_wall:.0f}x its wall rate), "
              f"apply + flush / Faust = {medians['apply + flush'] / faust_cpu:.0f}x per CPU-s "
              f"({medians['apply + flush'] / faust_wall:.0f}x its wall rate)")


if __name__ == "__main__":
    main()
