"""The naive Faust baseline of bench/aggregate.py: one table write per event (per rollup).

Not a module of Rearview: bench/aggregate.py runs it as a child process,

    python bench/_naive_faust.py worker -l warn

configured through environment variables (all required):

    NAIVE_BROKER       host:port of the broker
    NAIVE_APP_ID       Faust app id (consumer group, changelog topic prefix): one per run
    NAIVE_TOPIC        input topic: one JSON clean event per message
    NAIVE_PARTITIONS   partitions of the input topic (the table is co-partitioned)
    NAIVE_N            events to process before writing the result
    NAIVE_ROLLUPS      JSON list of [rollup name, granularity ms, [property keys]]
    NAIVE_OUT          result file (JSON), written once the N-th event's table writes are flushed
    NAIVE_DATADIR      Faust's data directory

The agent is what one writes first with Faust: `async for event in stream`, and for each event
and each rollup, read the key's value from the table, add one, write it back (`table[key] =`,
which sends a changelog record on the current event's partition). Values are small JSON bytes
(`{"count": n}`), keys `rollup|window_start_ms|event_name|dims...`. Configured like
app/faust_app.py for the embedded broker.

Timing, inside the agent: from the moment the first event is processed (group join, table
recovery and start-up excluded) to the N-th processed, then to the producer flushed (every
changelog record acknowledged); CPU time of this process over the same span.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import faust

BROKER = os.environ["NAIVE_BROKER"]
APP_ID = os.environ["NAIVE_APP_ID"]
TOPIC = os.environ["NAIVE_TOPIC"]
PARTITIONS = int(os.environ["NAIVE_PARTITIONS"])
N = int(os.environ["NAIVE_N"])
ROLLUPS: list[tuple[str, int, list[str]]] = [tuple(r) for r in json.loads(os.environ["NAIVE_ROLLUPS"])]
OUT = Path(os.environ["NAIVE_OUT"])
DATADIR = os.environ["NAIVE_DATADIR"]

app = faust.App(
    APP_ID,
    broker=f"kafka://{BROKER}",
    store="memory://",
    datadir=DATADIR,
    processing_guarantee="at_least_once",
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6,
    broker_heartbeat_interval=1,
    broker_commit_interval=1.0,
    topic_partitions=PARTITIONS,
    topic_replication_factor=1,
    web_enabled=False,
)
source = app.topic(TOPIC, key_type=bytes, value_serializer="json", partitions=PARTITIONS)
table = app.Table("naive", partitions=PARTITIONS, key_type=bytes, value_type=bytes)


def _quiet() -> None:
    # Faust's start-up can leave these at DEBUG; a log record per message costs 5-12%.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)


_quiet()


@app.agent(source)
async def naive(stream: faust.StreamT) -> None:
    _quiet()
    n = 0
    t0 = c0 = 0.0
    async for event in stream:
        if n == 0:
            t0, c0 = time.time(), time.process_time()
        ts = event["timestamp"]
        props = event["properties"]
        for name, granularity_ms, keys in ROLLUPS:
            dims = "|".join([event["event_name"], *(props.get(k, "") for k in keys)])
            key = f"{name}|{ts // granularity_ms * granularity_ms}|{dims}".encode()
            old = table.get(key)
            count = json.loads(old)["count"] + 1 if old else 1
            table[key] = json.dumps({"count": count}).encode()
        n += 1
        if n == N:
            t1, c1 = time.time(), time.process_time()
            await app.producer.flush()
            t2, c2 = time.time(), time.process_time()
            tmp = OUT.with_suffix(".tmp")
            tmp.write_text(json.dumps({
                "n": n, "writes": n * len(ROLLUPS), "keys": len(table),
                "processed_s": t1 - t0, "flushed_s": t2 - t0,
                "cpu_processed_s": c1 - c0, "cpu_flushed_s": c2 - c0,
            }))
            tmp.rename(OUT)


if __name__ == "__main__":
    app.main()
