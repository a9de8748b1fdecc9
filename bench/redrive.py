"""Redrive throughput: letters per second from `dlq` table to events.raw, new path vs old.

    .venv/bin/python bench/redrive.py [--letters 5000] [--old-letters 60] [--runs 3]

Starts the embedded broker and ClickHouse endpoint (free ports, a temporary data dir) and
applies the migrations. For each run it writes N dead letters to a fresh DLQ topic (a realistic
mix: batch messages of ~1-3 KB with an event index, spread over 4 partitions) and their rows to
the `dlq` table, as the worker does, then times what `rearview dlq redrive` does: select the
pending letters (`app.dlq.pending`), read them from the DLQ topic, produce them to the raw
topic, and record them in `dlq_redrives` once acknowledged (`app.dlq.redrive`).

The baseline is the previous implementation, kept below verbatim in spirit
(`redrive_one_by_one`): one consumer assign + poll per letter, then a flush and a marker insert
per 500 letters. It is measured on fewer letters (it runs at a few letters a second). Prints
letters/s per run and the median of the runs for both paths, and their ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import dlq  # noqa: E402
from agents.records import Invalid, SourceMeta  # noqa: E402
from app import clickhouse  # noqa: E402
from app.dlq import Filters, pending, redrive  # noqa: E402
from app.embedded.broker import TopicSpec, ensure_topics  # noqa: E402
from app.embedded.process import ChildProcess, free_port, http_ready, python_module, tcp_ready  # noqa: E402
from app.settings import Settings, to_env  # noqa: E402
from core.exceptions import ServiceUnavailable  # noqa: E402
from tables.migrate import migrate  # noqa: E402

HOST = "127.0.0.1"
PARTITIONS = 4


# -- the previous implementation, the baseline -----------------------------------------------

def _read_one_by_one(
    bootstrap_servers: str, topic: str, positions: list[tuple[int, int]], timeout_s: float = 30
) -> Iterator[tuple[tuple[int, int], bytes | None, bytes, dict[str, str]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap_servers, "group.id": f"rearview-dlq-{uuid.uuid4()}",
                         "enable.auto.commit": False, "session.timeout.ms": 6000})
    try:
        for partition, offset in positions:
            consumer.assign([TopicPartition(topic, partition, offset)])
            msg = consumer.poll(timeout_s)
            if msg is None or msg.error() or msg.offset() != offset:
                raise ServiceUnavailable(f"cannot read letter {partition}:{offset}")
            yield (partition, offset), msg.key(), msg.value(), dlq.parse_headers(msg.headers())
    finally:
        consumer.close()


def redrive_one_by_one(client: Any, bootstrap_servers: str, dlq_topic: str, raw_topic: str,
                       letters: list[dict[str, Any]], chunk: int = 500) -> int:
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5,
                         "enable.idempotence": False})
    run_id = str(uuid.uuid4())
    sent = 0
    positions = [(int(r["dlq_partition"]), int(r["dlq_offset"])) for r in letters]
    for start in range(0, len(positions), chunk):
        part = positions[start:start + chunk]
        failures: list[KafkaError] = []
        for (p, o), key, value, headers in _read_one_by_one(bootstrap_servers, dlq_topic, part):
            producer.produce(raw_topic, key=key, value=value, headers=dlq.redrive_headers(headers, f"{p}:{o}"),
                             on_delivery=lambda err, _m: failures.append(err) if err else None)
            producer.poll(0)
        if producer.flush(60) or failures:
            raise ServiceUnavailable(f"redrive: Kafka did not acknowledge every message ({failures[:1]})")
        client.insert("dlq_redrives", [[p, o, run_id] for p, o in part],
                      column_names=["dlq_partition", "dlq_offset", "run_id"])
        sent += len(part)
    return sent


# -- set-up ------------------------------------------------------------------------------------

def start(name: str, argv: list[str], ready: Callable[[], bool], tmp: Path, env: dict[str, str]) -> ChildProcess:
    child = ChildProcess(name, argv, ready, env=env, log_path=tmp / f"{name}.log")
    child.start()
    child.wait_ready(90)
    return child


def write_letters(settings: Settings, client: Any, topic: str, n: int, tag: str) -> None:
    """*n* letters on *topic* and their rows in `dlq`, each reason carrying *tag*."""
    rng = random.Random(n)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "linger.ms": 5})
    rows: list[dict[str, object]] = []
    now = int(time.time() * 1000)

    def stored(headers: dict[str, str]) -> Callable[[KafkaError | None, Any], None]:
        def report(err: KafkaError | None, msg: Any) -> None:
            assert err is None, err
            rows.append(dlq.letter_row(msg.partition(), msg.offset(), now, msg.value(), headers, "{}"))
        return report

    for i in range(n):
        value = b"\x00\x00\x00\x00\x01" + os.urandom(rng.randint(1000, 3000))
        inv = Invalid("validate", "ResolutionError", f"{tag}: price cannot be read as int",
                      SourceMeta(settings.kafka.topics.raw, i % PARTITIONS, 10_000 + i, now),
                      value, None, rng.randint(0, 199), 1)
        headers = dlq.headers(inv, now)
        while True:
            try:
                producer.produce(topic, value=value, partition=i % PARTITIONS, headers=headers,
                                 on_delivery=stored(dlq.parse_headers(headers)))
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    assert producer.flush(60) == 0
    columns = list(rows[0])
    client.insert("dlq", [[r[c] for c in columns] for r in rows], column_names=columns)


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    t0 = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--letters", type=int, default=5000, help="letters per run, new path")
    parser.add_argument("--old-letters", type=int, default=60, help="letters per run, old path")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        ports = {name: free_port() for name in ("broker", "clickhouse")}
        base = Settings()
        settings = base.model_copy(update={
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": f"{HOST}:{ports['broker']}"}),
            "clickhouse": base.clickhouse.model_copy(update={"url": f"http://{HOST}:{ports['clickhouse']}"}),
        })
        env = to_env(settings)
        children: list[ChildProcess] = []
        results: dict[str, list[float]] = {"old": [], "new": []}
        try:
            children.append(start("broker", python_module("app.cli", "broker", "--host", HOST, "--port",
                                                          str(ports["broker"])),
                                  tcp_ready(HOST, ports["broker"]), tmp, env))
            children.append(start("clickhouse", python_module("app.cli", "clickhouse", "--host", HOST, "--port",
                                                              str(ports["clickhouse"]), "--data-dir",
                                                              str(tmp / "chdb")),
                                  http_ready(f"http://{HOST}:{ports['clickhouse']}/ping"), tmp, env))
            bootstrap = settings.kafka.bootstrap_servers
            for run in range(args.runs):
                for path, n in (("old", args.old_letters), ("new", args.letters)):
                    tag = f"run{run}-{path}"
                    # A database per measurement: dlq_redrives is keyed by position in one DLQ topic.
                    ch_settings = settings.clickhouse.model_copy(update={"database": f"bench_{run}_{path}"})
                    clickhouse.ensure_database(ch_settings)
                    client = clickhouse.connect(ch_settings)
                    migrate(client)
                    dlq_topic, raw_topic = f"bench.{tag}.dlq", f"bench.{tag}.raw"
                    ensure_topics(bootstrap, [TopicSpec(dlq_topic, PARTITIONS), TopicSpec(raw_topic, PARTITIONS)])
                    write_letters(settings, client, dlq_topic, n, tag)

                    def old(tag: str = tag, dlq_topic: str = dlq_topic, raw_topic: str = raw_topic) -> int:
                        letters = pending(client, Filters(reason=tag))
                        return redrive_one_by_one(client, bootstrap, dlq_topic, raw_topic, letters)

                    def new(tag: str = tag, dlq_topic: str = dlq_topic, raw_topic: str = raw_topic) -> int:
                        letters = pending(client, Filters(reason=tag))
                        return redrive(client, bootstrap, dlq_topic, raw_topic, letters).sent

                    sent, seconds = timed(old if path == "old" else new)
                    assert sent == n, f"{path}: redrove {sent} of {n}"
                    assert pending(client, Filters(reason=tag)) == [], f"{path}: letters left pending"
                    results[path].append(n / seconds)
                    print(f"run {run + 1} {path}: {n:>6} letters in {seconds:7.2f} s = {n / seconds:9,.1f} letters/s",
                          flush=True)
                    client.close()
        finally:
            for child in reversed(children):
                child.stop()

    print()
    print(f"{'path':<34}{'letters/run':>12}{'letters/s':>12}   (median of {args.runs})")
    old_rate, new_rate = statistics.median(results["old"]), statistics.median(results["new"])
    print(f"{'old: one assign+poll per letter':<34}{args.old_letters:>12}{old_rate:>12,.1f}")
    print(f"{'new: one pass, batched markers':<34}{args.letters:>12}{new_rate:>12,.1f}")
    print(f"new / old: {new_rate / old_rate:,.0f}x letters/s")


if __name__ == "__main__":
    main()
