"""Freshness of the real-time tier (rollups and GET /v1/live) at a steady load.

    .venv/bin/python bench/live.py [--rate 5000] [--per-request 100] [--seconds 30] [--runs 3]
                                   [--senders 4] [--probe-every 10] [--poll-ms 100]
                                   [--live-poll-ms 250] [--warmup 5]

Starts the whole embedded stack (`rearview up` machinery, free ports, a temporary data dir, no
demo traffic). Each run sends traffic through the collector, `POST /v1/batch` with --per-request
events from the traffic generator, at a steady --rate (events/s) for --seconds: request i is due
at start + i * per_request / rate, and --senders concurrent aiohttp senders take the next due
request, so a slow answer does not hold the schedule back. The achieved rate (events sent /
sending time) is reported. Every event of a request is stamped with the request's send time
(as a live SDK would), so a request touches exactly one minute window. The bench is the only
traffic source. A short --warmup of the same traffic precedes the first run.

What is measured (each a distribution over one run; the table prints the median over runs):

  * collector ack: time from sending a request to its 202 (the events are in Kafka).
  * rollup freshness: every --probe-every-th request carries one more event whose name is
    unique, `probe_<run>_<i>`. A thread polls `rollup_events_by_name_1m` every --poll-ms
    (`FINAL`, `sum(count)` per event name for the probes not yet seen, with clickhouse-connect,
    as any client would). A probe's freshness is the time from sending its request to the end of
    the first poll that returned `sum(count) >= 1` for its name. The polling resolution (time
    between the start of two polls) is reported beside it; it is included in the figures.
  * raw freshness: the same probes, polled the same way in the `events` table
    (`count()` per event name), for comparison.
  * probe row written (rollup, events): after the run, the server-side insert time of each
    probe's first row (`updated_at` of the rollup row, `_inserted_at` of the event, both
    `DEFAULT now64(3)`, same clock) minus its send time: the pipeline's own latency, without
    the polling resolution and the query.
  * live response: latency of `GET /v1/live`, polled every --live-poll-ms under the load.
  * live age: how old the data of each /v1/live answer is when it arrives. The endpoint shows
    `events_this_minute` (count of the current minute window) and only a top 10 of event names,
    so probes cannot be seen through it; instead each answer's `events_this_minute` is compared
    with what the bench sent in that minute before the request: with the sends of the minute
    in send order, the first request whose events are not all counted is the oldest data
    missing, and the age is the time from its send to the arrival of the answer (if nothing is
    missing, the age is the answer's own latency). This assumes the pipeline makes events
    visible roughly in send order (true per partition; across the 4 partitions the flushes
    are every second for all of them). Answers taken before anything of the current minute is
    visible (the first second or two of each minute) only bound the age from below: they are
    left out and counted ("censored"); so are answers whose request straddles a minute boundary.

Also printed: the CPU each stack process (with its own children) and the bench used while
sending, in cores (CPU-seconds / wall seconds), to tell waiting from working.

Reading the figures: at this load the stack is mostly waiting, not working (see the CPU line),
so freshness is the sum of the pipeline's timers. A probe goes collector (linger 5 ms) ->
events.raw -> validate (`noack_take(..., within=0.5)`) -> events.clean -> aggregate (`within`
0.5 s) -> flush timer (every 1 s) -> ClickHouse; the raw path ends in the sink's take instead
of the flush timer. Each Kafka hop also costs a fetch wait: Faust hard-codes aiokafka's
`fetch_max_wait_ms=1500`, and the embedded broker (Tansu 0.6.0) does not answer a waiting
fetch when data arrives, so a hop took ~0.38 s p50 / ~0.75 s max in an isolated test (aiokafka
and confluent-kafka alike: ~0.13/0.25 s at a 500 ms wait, ~0.03/0.06 s at 100 ms). A real
Kafka broker answers a fetch as soon as data is there.

Targets at 5k events/s (DESIGN): rollups visible within 2 s (p99), live under 5 s (p99). The
figures are printed whether or not they meet them.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import clickhouse  # noqa: E402
from app.generate import EventGenerator  # noqa: E402
from app.settings import AuthSettings, Settings  # noqa: E402
from app.up import Stack  # noqa: E402

# The API without keys: these figures are the pipeline's; a key costs the collector a few
# microseconds a request (bench/ingest.py measures it).
KEYS_OFF = AuthSettings(required=False)

ROLLUP_TABLE = "rollup_events_by_name_1m"
TARGET_ROLLUP_P99_S = 2.0
TARGET_LIVE_P99_S = 5.0


@dataclass
class SendLog:
    """Every request the bench sent (all runs), in send order: the live-age reference."""

    times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def add(self, t: float, n: int) -> None:
        self.times.append(t)
        self.counts.append(n)

    def age_at(self, t_start: float, t_end: float, observed: int) -> float | None:
        """Age of a /v1/live answer asked at t_start, received at t_end; None if censored."""
        minute = t_start // 60 * 60
        lo = bisect.bisect_left(self.times, minute)
        hi = bisect.bisect_left(self.times, t_start)
        if hi == lo:
            return t_end - t_start if observed == 0 else None
        if observed <= 0:
            return None  # nothing of this minute visible yet: a lower bound only
        total = 0
        for i in range(lo, hi):
            total += self.counts[i]
            if total > observed:
                return t_end - self.times[i]
        return t_end - t_start


@dataclass
class Probes:
    """Probe names -> send time, and when each became visible in the rollup and the raw table."""

    sent: dict[str, float] = field(default_factory=dict)
    seen: dict[str, dict[str, float]] = field(default_factory=lambda: {"rollup": {}, "raw": {}})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def pending(self, kind: str) -> list[str]:
        with self.lock:
            seen = self.seen[kind]
            return [n for n in self.sent if n not in seen]

    def mark(self, kind: str, names: list[str], t: float) -> None:
        with self.lock:
            for n in names:
                self.seen[kind].setdefault(n, t)

    def delays(self, kind: str) -> list[float]:
        with self.lock:
            return sorted(self.seen[kind][n] - t for n, t in self.sent.items() if n in self.seen[kind])


def poller(kind: str, settings: Settings, probes: Probes, since: int, period_s: float,
           stop: threading.Event, cycles: list[float]) -> None:
    """Poll one table for the pending probes every *period_s* until *stop*."""
    if kind == "rollup":
        sql = (f"SELECT event_name, sum(count) FROM `{ROLLUP_TABLE}` FINAL"
               " WHERE window_start >= toDateTime({since:UInt32}) AND event_name IN {names:Array(String)}"
               " GROUP BY event_name")
    else:
        sql = ("SELECT event_name, count() FROM events"
               " WHERE ts >= fromUnixTimestamp64Milli(toInt64({since:UInt32}) * 1000)"
               " AND event_name IN {names:Array(String)} GROUP BY event_name")
    ch = clickhouse.connect(settings.clickhouse)
    try:
        last = None
        while not stop.is_set():
            t0 = time.time()
            if last is not None:
                cycles.append(t0 - last)
            last = t0
            names = probes.pending(kind)
            if names:
                rows = ch.query(sql, parameters={"since": since, "names": names}).result_rows
                probes.mark(kind, [name for name, n in rows if int(n) >= 1], time.time())
            stop.wait(max(0.0, period_s - (time.time() - t0)))
    finally:
        ch.close()


def group_cpu_seconds(pgid: int) -> float:
    """utime+stime of every live process in process group *pgid* (a stack child and its own
    children: `ChildProcess` starts each in its own session)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    snap = {c.name: group_cpu_seconds(c.pid) for c in stack.children if c.pid is not None}
    snap["bench"] = sum(os.times()[:2])
    return snap


def insert_times(settings: Settings, names: list[str], since: int) -> dict[str, dict[str, float]]:
    """Server-side time each probe row was written (rollup `updated_at`, events `_inserted_at`,
    both DEFAULT now64(3) on insert), epoch seconds."""
    ch = clickhouse.connect(settings.clickhouse)
    try:
        out = {}
        for kind, sql in (
            ("rollup", f"SELECT event_name, toUnixTimestamp64Milli(min(updated_at)) FROM `{ROLLUP_TABLE}`"
                       " WHERE window_start >= toDateTime({since:UInt32}) AND event_name IN {names:Array(String)}"
                       " GROUP BY event_name"),
            ("raw", "SELECT event_name, toUnixTimestamp64Milli(min(_inserted_at)) FROM events"
                    " WHERE ts >= fromUnixTimestamp64Milli(toInt64({since:UInt32}) * 1000)"
                    " AND event_name IN {names:Array(String)} GROUP BY event_name"),
        ):
            rows = ch.query(sql, parameters={"since": since, "names": names}).result_rows
            out[kind] = {name: ms / 1000 for name, ms in rows}
        return out
    finally:
        ch.close()


def stamped(events: Iterator[dict[str, Any]], n: int, t_ms: int) -> list[dict[str, Any]]:
    out = []
    for _ in range(n):
        e = next(events)
        e["timestamp"] = t_ms
        e["context"] = {"library": "bench-live"}
        out.append(e)
    return out


async def traffic(api: str, *, rate: float, per_request: int, seconds: float, senders: int,
                  probe_every: int, run_tag: str, seed: int, send_log: SendLog,
                  probes: Probes | None, live_period_s: float | None,
                  live_samples: list[tuple[float, float, int]]) -> tuple[int, float, list[float]]:
    """Send for *seconds*; returns (events sent, sending seconds, ack latencies)."""
    events = EventGenerator(users=5000, seed=seed).events()
    interval = per_request / rate
    acks: list[float] = []
    state = {"next": 0, "sent": 0}
    start = time.monotonic()
    end = start + seconds
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=senders + 2)) as http:

        async def sender() -> None:
            while True:
                i = state["next"]
                due = start + i * interval
                if due >= end:
                    return
                state["next"] = i + 1
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                t = time.time()
                batch = stamped(events, per_request, int(t * 1000))
                if probes is not None and i % probe_every == 0:
                    name = f"probe_{run_tag}_{i}"
                    batch.append({"event_id": str(uuid.uuid4()), "event": name, "user_id": "bench-probe",
                                  "timestamp": int(t * 1000), "context": {"library": "bench-live"}})
                    with probes.lock:
                        probes.sent[name] = t
                send_log.add(t, len(batch))
                async with http.post(f"{api}/v1/batch", json={"events": batch}) as resp:
                    if resp.status != 202:
                        raise SystemExit(f"collector answered {resp.status}: {await resp.text()}")
                acks.append(time.time() - t)
                state["sent"] += len(batch)

        async def live_poller() -> None:
            assert live_period_s is not None
            while time.monotonic() < end:
                t0 = time.time()
                async with http.get(f"{api}/v1/live") as resp:
                    body = await resp.json()
                    if resp.status != 200:
                        raise SystemExit(f"/v1/live answered {resp.status}: {body}")
                t1 = time.time()
                live_samples.append((t0, t1, int(body["events_this_minute"])))
                await asyncio.sleep(max(0.0, live_period_s - (t1 - t0)))

        tasks = [asyncio.create_task(sender()) for _ in range(senders)]
        if live_period_s:
            tasks.append(asyncio.create_task(live_poller()))
        await asyncio.gather(*tasks)
    return state["sent"], time.monotonic() - start, acks


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of sorted *values*, nearest rank."""
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q * len(values) + 0.5) - 1))
    return values[k]


def summary(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"p50": pct(v, 0.5), "p95": pct(v, 0.95), "p99": pct(v, 0.99), "max": v[-1] if v else float("nan")}


def one_run(stack: Stack, args: argparse.Namespace, run: int, send_log: SendLog) -> dict[str, Any]:
    probes = Probes()
    stop = threading.Event()
    since = int(time.time()) // 60 * 60 - 60
    cycles: dict[str, list[float]] = {"rollup": [], "raw": []}
    threads = [threading.Thread(target=poller, name=f"poll-{k}", daemon=True,
                                args=(k, stack.settings, probes, since, args.poll_ms / 1000, stop, cycles[k]))
               for k in ("rollup", "raw")]
    for t in threads:
        t.start()
    live_samples: list[tuple[float, float, int]] = []
    cpu0, wall0 = cpu_snapshot(stack), time.monotonic()
    try:
        sent, secs, acks = asyncio.run(traffic(
            stack.api_url, rate=args.rate, per_request=args.per_request, seconds=args.seconds,
            senders=args.senders, probe_every=args.probe_every, run_tag=str(run), seed=100 + run,
            send_log=send_log, probes=probes, live_period_s=args.live_poll_ms / 1000,
            live_samples=live_samples))
        cpu1, wall = cpu_snapshot(stack), time.monotonic() - wall0
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline and (probes.pending("rollup") or probes.pending("raw")):
            time.sleep(0.1)
    finally:
        stop.set()
        for t in threads:
            t.join(10)

    inserted = insert_times(stack.settings, list(probes.sent), since)
    ages, censored = [], 0
    for t0, t1, observed in live_samples:
        if t0 // 60 != t1 // 60:
            censored += 1
            continue
        age = send_log.age_at(t0, t1, observed)
        if age is None:
            censored += 1
        else:
            ages.append(age)
    n_probes = len(probes.sent)
    return {
        "rate": sent / secs,
        "sent": sent,
        "ack": summary(acks),
        "rollup": summary(probes.delays("rollup")),
        "raw": summary(probes.delays("raw")),
        "rollup_missing": n_probes - len(probes.delays("rollup")),
        "raw_missing": n_probes - len(probes.delays("raw")),
        "probes": n_probes,
        "rollup_insert": summary([inserted["rollup"][n] - t for n, t in probes.sent.items()
                                  if n in inserted["rollup"]]),
        "raw_insert": summary([inserted["raw"][n] - t for n, t in probes.sent.items() if n in inserted["raw"]]),
        "cpu": {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0 if k in cpu1},
        "live_latency": summary([t1 - t0 for t0, t1, _ in live_samples]),
        "live_age": summary(ages),
        "live_samples": len(live_samples),
        "live_censored": censored,
        "poll_cycle": {k: statistics.median(v) if v else float("nan") for k, v in cycles.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=5000, help="events/s")
    ap.add_argument("--per-request", type=int, default=100, help="events per POST /v1/batch")
    ap.add_argument("--seconds", type=float, default=30, help="sending time per run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--senders", type=int, default=4, help="concurrent HTTP senders")
    ap.add_argument("--probe-every", type=int, default=10, help="one probe event per this many requests")
    ap.add_argument("--poll-ms", type=float, default=100, help="ClickHouse poll period")
    ap.add_argument("--live-poll-ms", type=float, default=250, help="GET /v1/live period")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of traffic before the first run")
    ap.add_argument("--drain-timeout", type=float, default=30, help="max wait for the last probes")
    args = ap.parse_args()

    send_log = SendLog()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Settings(auth=KEYS_OFF), "127.0.0.1", Path(tmp), free_ports=True)
        try:
            stack.start()
            if args.warmup > 0:
                asyncio.run(traffic(
                    stack.api_url, rate=args.rate, per_request=args.per_request, seconds=args.warmup,
                    senders=args.senders, probe_every=args.probe_every, run_tag="w", seed=99,
                    send_log=send_log, probes=None, live_period_s=None, live_samples=[]))
                time.sleep(2)
            for run in range(args.runs):
                r = one_run(stack, args, run, send_log)
                results.append(r)
                print(f"run {run + 1}: {r['sent']:,} events at {r['rate']:,.0f}/s;"
                      f" rollup p50/p99 {r['rollup']['p50']:.2f}/{r['rollup']['p99']:.2f} s,"
                      f" raw p50/p99 {r['raw']['p50']:.2f}/{r['raw']['p99']:.2f} s,"
                      f" live age p50/p99 {r['live_age']['p50']:.2f}/{r['live_age']['p99']:.2f} s"
                      f" ({r['probes']} probes, {r['rollup_missing']} never seen in the rollup,"
                      f" {r['raw_missing']} in events; {r['live_samples']} live answers,"
                      f" {r['live_censored']} censored)", flush=True)
        finally:
            stack.stop()

    def med(*path: str) -> float:
        vals = []
        for r in results:
            v: Any = r
            for p in path:
                v = v[p]
            vals.append(v)
        return statistics.median(vals)

    print()
    print(f"target {args.rate:,.0f} events/s in requests of {args.per_request} (+1 probe every "
          f"{args.probe_every} requests), {args.senders} senders, {args.seconds:.0f} s per run; "
          f"achieved {med('rate'):,.0f} events/s; median of {args.runs} runs")
    print(f"polling: rollup every {med('poll_cycle', 'rollup') * 1000:.0f} ms, events every "
          f"{med('poll_cycle', 'raw') * 1000:.0f} ms (median cycle), /v1/live every {args.live_poll_ms:.0f} ms")
    print()
    print(f"{'figure (seconds after send)':<44}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}   target")
    rows = [
        ("collector ack (POST -> 202)", "ack", ""),
        ("probe row written, rollup", "rollup_insert", ""),
        (f"probe visible in {ROLLUP_TABLE}", "rollup", f"p99 <= {TARGET_ROLLUP_P99_S:.0f} s"),
        ("probe row written, events", "raw_insert", ""),
        ("probe visible in events (raw)", "raw", ""),
        ("GET /v1/live response", "live_latency", ""),
        ("GET /v1/live data age", "live_age", f"p99 <= {TARGET_LIVE_P99_S:.0f} s"),
    ]
    for label, key, target in rows:
        figs = [med(key, q) for q in ("p50", "p95", "p99", "max")]
        verdict = ""
        if target:
            limit = TARGET_ROLLUP_P99_S if key == "rollup" else TARGET_LIVE_P99_S
            verdict = f"{target}: {'met' if figs[2] <= limit else 'MISSED'}"
        print(f"{label:<44}" + "".join(f"{f:>8.2f}" for f in figs) + f"   {verdict}")
    print()
    names = list(results[0]["cpu"])
    print("CPU while sending (cores busy, median of runs; 'bench' is this process):  "
          + ", ".join(f"{n} {med('cpu', n):.2f}" for n in names)
          + f"; total {sum(med('cpu', n) for n in names):.2f} of {os.cpu_count()}")


if __name__ == "__main__":
    main()
