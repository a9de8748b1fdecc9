"""Collector throughput: events/s and events per API CPU-second, HTTP batches vs gRPC.

    .venv/bin/python bench/ingest.py [--events 100000] [--runs 3] [--concurrency 8]
                                     [--e2e-events 300000] [--profile DIR]

Part 1, one API process (`rearview api`) with the embedded broker and registry and no worker:
  * http-json   POST /v1/batch, 100-event JSON bodies
  * http-gzip   the same bodies, Content-Encoding: gzip
  * grpc-batch  AnalyticsService.TrackBatch, 100 events a call
  * http-track and grpc-track, one event a request, for scale (a tenth of the events)
Requests are built before the clock starts (distinct events, generated like `rearview
generate`) and sent by *concurrency* workers in this process. Each answer is checked (202, or
a BatchAck accepting every event): an event counts when Kafka acknowledged it. The API's CPU
time (utime+stime of the process and its threads, from /proc/<pid>/stat) gives events per API
CPU-second, the figure that says how many cores a given rate needs, independent of what else
shares the machine. Medians of --runs.

Part 2, end to end: the whole embedded stack (`rearview up`'s), a second API process, the
worker; gRPC batches spread over both APIs; sustained events/s from the first request to the
moment the last event is queryable in ClickHouse.

--profile DIR records the first run of each part-1 path with py-spy (when installed) into
DIR/<path>.folded (collapsed stacks: speedscope or flamegraph.pl draw them).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import clickhouse
from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.process import (
    ChildProcess,
    free_port,
    http_ready,
    python_module,
    tcp_ready,
)
from app.generate import EventGenerator
from app.settings import AuthSettings, Settings, to_env
from app.up import Stack
from schemas import analytics_pb2

# The API without keys for the throughput runs; `auth_check_us` below measures what a key
# costs a request.
KEYS_OFF = AuthSettings(required=False)

HOST = "127.0.0.1"
BATCH = 100
TRACK_TARGET = "/AnalyticsService/TrackEvent"
BATCH_TARGET = "/AnalyticsService/TrackBatch"


def cpu_seconds(pid: int) -> float:
    """utime+stime of *pid* and its threads (not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def events(n: int, seed: int) -> list[dict[str, Any]]:
    gen = EventGenerator(users=5000, seed=seed).events()
    return [next(gen) for _ in range(n)]


def proto(e: dict[str, Any]) -> analytics_pb2.Event:
    return analytics_pb2.Event(event_name=e["event"], user_id=e["user_id"], timestamp=e["timestamp"],
                               properties=e["properties"], event_id=e["event_id"],
                               library=e["context"]["library"])


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# -- load: each returns (events acknowledged, seconds) ----------------------------------------

async def _drive(requests: list[Any], concurrency: int,
                 send: Callable[[Any], Awaitable[int]]) -> tuple[int, float]:
    it = iter(requests)
    done = 0

    async def worker() -> None:
        nonlocal done
        for req in it:
            n = await send(req)  # not `done += await ...`: that reads done before the await
            done += n

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, time.monotonic() - started


async def drive_http(urls: list[str], path: str, bodies: list[tuple[bytes, int]], gz: bool,
                     concurrency: int) -> tuple[int, float]:
    headers = {"Content-Type": "application/json", **({"Content-Encoding": "gzip"} if gz else {})}
    connector = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        counter = 0

        async def send(req: tuple[bytes, int]) -> int:
            nonlocal counter
            counter += 1
            async with http.post(f"{urls[counter % len(urls)]}{path}", data=req[0],
                                 headers=headers) as resp:
                if resp.status != 202:
                    raise SystemExit(f"HTTP {resp.status}: {await resp.text()}")
                await resp.read()
            return req[1]

        return await _drive(bodies, concurrency, send)


async def drive_grpc(targets: list[str], method: str, requests: list[tuple[bytes, int]],
                     concurrency: int) -> tuple[int, float]:
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    reply = analytics_pb2.BatchAck.FromString if method == BATCH_TARGET else analytics_pb2.Ack.FromString
    # Requests are serialized in advance: the client's own protobuf work stays off the clock.
    calls = [c.unary_unary(method, request_serializer=None, response_deserializer=reply)
             for c in channels]
    counter = 0

    async def send(req: tuple[bytes, int]) -> int:
        nonlocal counter
        counter += 1
        answer = await calls[counter % len(calls)](req[0], timeout=60)
        if method == BATCH_TARGET and (answer.accepted != req[1] or answer.rejections):
            raise SystemExit(f"TrackBatch accepted {answer.accepted} of {req[1]}: {answer.rejections[:3]}")
        return req[1]

    try:
        for c in channels:
            await c.channel_ready()
        return await _drive(requests, concurrency, send)
    finally:
        for c in channels:
            await c.close()


def build(path: str, evs: list[dict[str, Any]]) -> list[tuple[bytes, int]]:
    if path in ("http-json", "http-gzip"):
        bodies = [orjson.dumps({"events": b}) for b in chunks(evs, BATCH)]
        if path == "http-gzip":
            bodies = [gzip.compress(b, 6) for b in bodies]
        return [(b, BATCH) for b in bodies]
    if path == "grpc-batch":
        return [(analytics_pb2.EventBatch(events=[proto(e) for e in b]).SerializeToString(), len(b))
                for b in chunks(evs, BATCH)]
    if path == "http-track":
        return [(orjson.dumps(e), 1) for e in evs]
    if path == "grpc-track":
        return [(proto(e).SerializeToString(), 1) for e in evs]
    raise ValueError(path)


def send(path: str, http_urls: list[str], grpc_targets: list[str], reqs: list[tuple[bytes, int]],
         concurrency: int) -> tuple[int, float]:
    if path.startswith("http"):
        return asyncio.run(drive_http(http_urls, "/v1/track" if path == "http-track" else "/v1/batch",
                                      reqs, path == "http-gzip", concurrency))
    return asyncio.run(drive_grpc(grpc_targets, BATCH_TARGET if path == "grpc-batch" else TRACK_TARGET,
                                  reqs, concurrency))


# -- part 1 ------------------------------------------------------------------------------------

PATHS = ("http-json", "http-gzip", "grpc-batch", "http-track", "grpc-track")


def part1(args: argparse.Namespace, tmp: Path) -> dict[str, list[tuple[float, float, float]]]:
    if not args.paths:
        return {}
    base = Settings(auth=KEYS_OFF)
    bport, rport, aport, gport = (free_port() for _ in range(4))
    settings = base.model_copy(update={
        "kafka": base.kafka.model_copy(update={"bootstrap_servers": f"{HOST}:{bport}"}),
        "registry": base.registry.model_copy(update={"url": f"http://{HOST}:{rport}"}),
    })
    env = {**to_env(settings), "PYTHONUNBUFFERED": "1"}
    children: list[ChildProcess] = []

    def start(name: str, argv: list[str], ready: Callable[[], bool]) -> ChildProcess:
        child = ChildProcess(name, argv, ready, env=env, log_path=tmp / f"{name}.log")
        children.append(child)
        child.start()
        child.wait_ready(90)
        return child

    results: dict[str, list[tuple[float, float, float]]] = {p: [] for p in args.paths.split(",")}
    try:
        start("broker", python_module("app.cli", "broker", "--host", HOST, "--port", str(bport)),
              tcp_ready(HOST, bport))
        ensure_topics(settings.kafka.bootstrap_servers, pipeline_topics(settings.kafka))
        start("registry", python_module("app.cli", "registry", "--host", HOST, "--port", str(rport),
                                        "--data-dir", str(tmp / "registry")),
              http_ready(f"http://{HOST}:{rport}/health"))
        api = start("api", python_module("app.cli", "api", "--host", HOST, "--port", str(aport),
                                         "--grpc-port", str(gport)),
                    http_ready(f"http://{HOST}:{aport}/health"))
        assert api.pid is not None
        urls, targets = [f"http://{HOST}:{aport}"], [f"{HOST}:{gport}"]
        send("http-json", urls, targets, build("http-json", events(2000, 99)), args.concurrency)  # warm-up
        for run in range(args.runs):
            for i, path in enumerate(args.paths.split(",")):
                n = args.events if "batch" in path or "json" in path or "gzip" in path else args.events // 10
                reqs = build(path, events(n, 1000 * run + i))
                spy = _profile(args.profile, path, api.pid) if run == 0 else None
                cpu0 = cpu_seconds(api.pid)
                done, secs = send(path, urls, targets, reqs, args.concurrency)
                cpu = cpu_seconds(api.pid) - cpu0
                if spy is not None:
                    spy.terminate()
                    spy.wait(30)
                results[path].append((done / secs, done / cpu, cpu / secs))
                print(f"run {run + 1} {path:<11}{done:>8} events {secs:6.2f}s {done / secs:>9,.0f} ev/s"
                      f"  API CPU {cpu:6.2f}s = {done / cpu:>9,.0f} ev/CPU-s", flush=True)
    finally:
        for child in reversed(children):
            child.stop()
    return results


def _profile(out: str | None, path: str, pid: int) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not out or not Path(spy).exists():
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([spy, "record", "-p", str(pid), "-o", f"{out}/{path}.folded", "-f", "raw", "-r", "200",
                             "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- part 2 ------------------------------------------------------------------------------------

def part2(args: argparse.Namespace, tmp: Path) -> tuple[int, float, float, dict[str, float]] | None:
    if args.e2e_events <= 0:
        return None
    stack = Stack(Settings(auth=KEYS_OFF), HOST, tmp / "stack", free_ports=True)
    try:
        stack.start()
        port, gport = free_port(), free_port()
        second = ChildProcess("api-2", python_module("app.cli", "api", "--host", HOST, "--port",
                                                     str(port), "--grpc-port", str(gport)),
                              http_ready(f"http://{HOST}:{port}/health"), env=stack.env,
                              log_path=stack.logs / "api-2.log")
        stack.children.append(second)
        second.start()
        second.wait_ready(90)
        ch = clickhouse.connect(stack.settings.clickhouse)
        reqs = build("grpc-batch", events(args.e2e_events, 7))
        procs = {c.name: c.pid for c in stack.children if c.pid is not None and c.alive()}
        cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
        started = time.monotonic()
        done, secs = send("grpc-batch", [], [f"{HOST}:{stack.grpc_port}", f"{HOST}:{gport}"], reqs,
                          args.concurrency)
        deadline = time.monotonic() + 900
        while (stored := ch.query("SELECT count() FROM events").result_rows[0][0]) < done:
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out: {stored} of {done} rows")
            time.sleep(0.1)
        total = time.monotonic() - started
        ch.close()
        cpu = {name: cpu_seconds(pid) - cpu0[name] for name, pid in procs.items()}
        return done, secs, total, cpu
    finally:
        stack.stop()


def auth_check_us(runs: int) -> float:
    """Median over *runs* of the microseconds a request spends on its key: the Keyring's
    constant-time check and the rate limiter's bucket, as the API does them (in process)."""
    from app.auth import ApiKey, Keyring, RateLimiter, digest, new_key

    keys = [new_key("write") for _ in range(1000)]
    ring = Keyring()
    ring.set([ApiKey(key_id, "p", "write", "", datetime.now(UTC), None, digest(key)) for key_id, key in keys])
    limiter = RateLimiter(1e12, 1e12)
    n, medians = 100_000, []
    for _ in range(runs):
        began = time.perf_counter()
        for i in range(n):
            principal = ring.check(keys[i % 1000][1])
            assert principal is not None
            limiter.take(principal.key_id or "", 100)
        medians.append((time.perf_counter() - began) / n * 1e6)
    return statistics.median(medians)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per batched path and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--batch", type=int, default=100, help="events per batched request")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"part 1 paths, of {','.join(PATHS)}; empty skips part 1")
    parser.add_argument("--e2e-events", type=int, default=300_000, help="part 2; 0 skips it")
    parser.add_argument("--profile", default=None, help="directory for py-spy flame graphs")
    args = parser.parse_args()
    global BATCH
    BATCH = args.batch

    with tempfile.TemporaryDirectory() as tmp:
        results = part1(args, Path(tmp))
        e2e = part2(args, Path(tmp))

    print()
    print(f"one API process, median of {args.runs} runs ({args.concurrency} requests in flight,"
          f" {BATCH} events a batch):")
    print(f"{'path':<12}{'events/s':>10}{'events/API CPU-s':>18}{'API cores busy':>16}")
    for path, rs in results.items():
        if rs:
            print(f"{path:<12}{statistics.median(r[0] for r in rs):>10,.0f}"
                  f"{statistics.median(r[1] for r in rs):>18,.0f}{statistics.median(r[2] for r in rs):>16.2f}")
    print(f"\na key costs a request {auth_check_us(args.runs):.1f} µs (check + rate limit, median of"
          f" {args.runs}); the runs above are without keys")
    if e2e:
        done, secs, total, cpu = e2e
        print(f"\nend to end, two API processes + one worker (grpc-batch): {done:,} events sent in"
              f" {secs:.1f}s ({done / secs:,.0f}/s), all queryable after {total:.1f}s:"
              f" {done / total:,.0f} events/s sustained")
        print("CPU seconds meanwhile: " + ", ".join(f"{name} {s:.1f}" for name, s in cpu.items()
                                                     if name != "migrate"))


if __name__ == "__main__":
    main()
