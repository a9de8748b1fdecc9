"""The query API over 1M, 10M (and 100M) events: latency of each query kind, and what FINAL costs.

    PYTHONPATH=. .venv/bin/python bench/query.py [--rows 1e6,1e7] [--with-100m] [--runs 7]
        [--dup-fraction 0.005] [--dup-parts 1] [--keep-data]

Starts the embedded ClickHouse (`python -m app.cli clickhouse`, a free loopback port, a
temporary data directory removed at the end; the child is stopped by its pid), and for each
size, in a database of its own (dropped afterwards):

1. creates the tables with the real migrations and rollup tables (the configured rollups plus
   one bench-only hourly country x device rollup), and loads N synthetic events server-side,
   one day partition at a time, with ``INSERT INTO events SELECT ... FROM numbers(...)``:
   30 days before a fixed "now" (today's UTC midnight: discovery reads the server clock),
   20 event names with a Zipf-like skew, ids for N/10 users drawn with a skew (a few heavy
   users), per-user country, device type, browser, plan and app version in ``properties``
   (the hot columns fill from their DEFAULTs), a price on purchases, a path on page views,
   and provenance columns;
2. fills every rollup table from the events with the GROUP BY the worker computes (window,
   dimensions, events.clean partition by event_id; ``sketch`` and ``state`` empty), a day
   at a time;
3. inserts copies of --dup-fraction of the events (same event_id and ts, a later offset), as
   redeliveries would: --dup-parts unmerged parts in every day partition, so FINAL has work;
   then waits for background merges to stop;
4. runs every case once (the warm-up, whose answers are checked: a routed breakdown or time
   series must name a rollup and equal the raw answer; the funnel's users per step must equal
   ``windowFunnel``'s), then times all of them interleaved, --runs rounds (three calls a round
   for cases under 0.3 s), and prints p50, p95 (nearest rank), min, the ClickHouse process's
   CPU time a call (steadier than wall time on a shared machine) and rows read. Cases: through
   the function API (``app.query.run`` over HTTP with clickhouse-connect, what
   ``POST /v1/query`` runs): a 2-dimension breakdown of one event over the raw events, the
   same routed to the configured rollups and to the bench-only hourly one, a time series by
   day (raw and routed), a 4-step funnel, 8-week retention, exact uniques and the discovery
   functions; as SQL: the funnel's counts by ``windowFunnel``; the raw breakdown's own SQL
   with plain FINAL, partition-local FINAL (what the query layer runs:
   ``do_not_merge_across_partitions_select_final=1``) and no FINAL; and the funnel, retention
   and uniques SQL without FINAL (answers compared with FINAL's).

A case that fails (a query-layer time or memory limit, say) is reported and not timed. Then one
table for all sizes, with the growth from one size to the next (p50 and CPU ratios), beside
the targets (printed, never asserted): raw 2-dim breakdown at 100M under 1 s, routed
breakdown p95 under 50 ms, 4-step funnel at 10M under 1 s. 100M rows take ~6 GB of disk for
the events plus the rollups and ~9 min to load on 2 cores; ``--rows 1e8 --runs 3`` ran in ~20 min.
Query kinds not present in app/query yet are reported as not measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clickhouse_connect.driver.client import Client

from app import clickhouse
from app.embedded.process import ChildProcess, free_port, http_ready, python_module
from app.query import QueryConfig, run
from app.settings import Settings
from tables.migrate import migrate
from tables.rollup_tables import columns, ensure_tables, table_name
from tables.rollups import RollupSpec

HOST = "127.0.0.1"
DAYS = 30
PARTITIONS = 4  # events.clean partitions: rollup partials are per partition
DAY_MS = 86_400_000

# (name, weight): a Zipf-like mix; the funnel is session_start > view_item > add_to_cart > purchase.
EVENTS = [
    ("page_view", 22), ("screen_view", 12), ("button_click", 12), ("session_start", 8),
    ("scroll", 7), ("search", 6), ("view_item", 6), ("video_play", 4), ("login", 3),
    ("app_open", 3), ("add_to_cart", 3), ("logout", 2), ("form_submit", 2),
    ("notification_open", 2), ("begin_checkout", 1.5), ("purchase", 1), ("signup", 1),
    ("share", 1), ("error", 1), ("remove_from_cart", 0.5),
]
COUNTRIES = [("US", 30), ("DE", 10), ("GB", 10), ("FR", 8), ("IN", 8), ("BR", 7), ("JP", 6),
             ("CA", 5), ("ES", 4), ("IT", 4), ("NL", 3), ("SE", 2), ("PL", 2), ("MX", 1)]
DEVICES = [("mobile", 55), ("desktop", 40), ("tablet", 5)]
BROWSERS = [("Chrome", 60), ("Safari", 25), ("Firefox", 6), ("Edge", 5), ("Samsung Internet", 4)]
PLANS = [("free", 70), ("pro", 20), ("team", 8), ("enterprise", 2)]
VERSIONS = [("3.2.0", 40), ("3.1.4", 30), ("3.1.3", 15), ("3.0.9", 10), ("2.9.1", 5)]
FUNNEL = ["session_start", "view_item", "add_to_cart", "purchase"]
BREAKDOWN_EVENT = "button_click"

# A bench-only rollup: the configured country x device rollup is per minute, which at these
# densities holds nearly a row per event; this shows what an hourly one would give.
HOURLY = RollupSpec(name="bench_events_by_name_country_device_1h",
                    dimensions=("event_name", "country", "device_type"), granularity="hour",
                    allowed_lateness_s=3600)

TARGETS = {
    "breakdown raw (events)": "p50 < 1 s at 100M",
    "breakdown routed, default rollups": "p95 < 50 ms",
    "breakdown routed, + hourly rollup": "p95 < 50 ms",
    "funnel 4 steps": "< 1 s at 10M",
}


# --- data -----------------------------------------------------------------------------------

def _uniform(key: str, salt: int) -> str:
    """SQL: a number in [0, 1) hashed from *key* and *salt* (deterministic, so reruns agree), at
    Float64 resolution (a coarser grid would cap the number of distinct user ids)."""
    return f"(cityHash64({key}, {salt}) / 18446744073709551616.)"


def _pick(choices: Sequence[tuple[str, float]], u: str) -> str:
    """SQL: one of *choices* by weight, from the uniform number *u*."""
    total = sum(w for _, w in choices)
    bounds = list(itertools.accumulate(w / total for _, w in choices))
    bounds[-1] = 2.0
    values = ", ".join(f"'{v}'" for v, _ in choices)
    return f"[{values}][arrayFirstIndex(c -> c > {u}, [{', '.join(f'{b:.6f}' for b in bounds)}])]"


def events_sql(first: int, count: int, users: int, day_start_ms: int) -> str:
    """INSERT of *count* events numbered from *first*, all on the UTC day from *day_start_ms*."""
    uid = "uid"
    return f"""
INSERT INTO events (event_id, project_id, event_name, user_id, ts, received_at, properties,
                    library, schema_id, _partition, _offset, _index)
SELECT generateUUIDv4(number), 'default', ev, concat('u', toString(uid)), t,
       t + toIntervalMillisecond(cityHash64(number, 5) % 3000),
       mapFilter((k, v) -> v != '', map(
           'country', if({_uniform(uid, 7)} < 0.01, '', {_pick(COUNTRIES, _uniform(uid, 8))}),
           'device_type', {_pick(DEVICES, _uniform(uid, 9))},
           'browser', {_pick(BROWSERS, _uniform(uid, 10))},
           'plan', {_pick(PLANS, _uniform(uid, 11))},
           'app_version', {_pick(VERSIONS, _uniform(uid, 12))},
           'price', if(ev = 'purchase', toString(round(5 + 195 * {_uniform('number', 13)}, 2)), ''),
           'path', if(ev = 'page_view', concat('/page/', toString(cityHash64(number, 14) % 50)), ''))),
       'bench', 1, cityHash64({uid}) % {PARTITIONS}, number, 0
FROM (
    SELECT number,
           -- skewed users: the lowest ids are the heaviest (10% of users make ~30% of events)
           toUInt64({users} * pow({_uniform('number', 2)}, 2)) AS uid,
           {_pick(EVENTS, _uniform('number', 1))} AS ev,
           fromUnixTimestamp64Milli(toInt64({day_start_ms} + cityHash64(number, 3) % {DAY_MS}), 'UTC') AS t
    FROM numbers({first}, {count})
)"""


def duplicates_sql(fraction: float, part: int, parts: int) -> str:
    """Copies of about *fraction* of the events, share *part* of *parts*: same event_id and ts,
    a later offset."""
    per_million = round(fraction * 1_000_000)
    return f"""
INSERT INTO events (event_id, project_id, event_name, user_id, ts, received_at, properties,
                    library, schema_id, _partition, _offset, _index)
SELECT event_id, project_id, event_name, user_id, ts, received_at + toIntervalSecond(2), properties,
       library, schema_id, _partition, _offset + 1000000000000, _index
FROM events WHERE cityHash64(event_id) % 1000000 < {per_million} AND cityHash64(event_id, 1) % {parts} = {part}"""


def rollup_sql(spec: RollupSpec, day_start_ms: int) -> str:
    """INSERT of *spec*'s partials for one day, grouped as the worker groups them: window,
    dimensions (properties; an absent key is ''), events.clean partition (by event_id)."""
    window = "toStartOfMinute(ts)" if spec.granularity == "minute" else "toStartOfHour(ts)"
    dims = ["event_name", *(f"properties['{k}']" for k in spec.property_keys)]
    sums = [f"sumIf(toFloat64OrZero(properties['{k}']), properties['{k}'] != '')" for k in spec.sums]
    names = ", ".join(f"`{n}`" for n, _ in columns(spec))
    values = ", ".join([f"{window} AS w", *dims, f"cityHash64(event_id) % {PARTITIONS} AS p",
                        "count()", "0", *sums, "0", "''", "max(_offset)", "''"])
    groups = ", ".join(["w", *dims, "p"])
    return (f"INSERT INTO `{table_name(spec)}` ({names}) SELECT {values} FROM events"
            f" WHERE ts >= fromUnixTimestamp64Milli({day_start_ms}, 'UTC')"
            f" AND ts < fromUnixTimestamp64Milli({day_start_ms + DAY_MS}, 'UTC') GROUP BY {groups}")


def load(client: Client, n: int, now: datetime, specs: Sequence[RollupSpec], dup_fraction: float,
         dup_parts: int = 1) -> dict[str, float]:
    """Loads *n* events over the DAYS days before *now*, the rollups and the duplicates (in
    *dup_parts* inserts: that many small parts in every day partition); returns the seconds
    each phase took."""
    users = max(1, n // 10)
    start_ms = int(now.timestamp() * 1000) - DAYS * DAY_MS
    took: dict[str, float] = {}
    began = time.perf_counter()
    done = 0
    for day in range(DAYS):
        count = n // DAYS + (n % DAYS if day == DAYS - 1 else 0)
        client.command(events_sql(done, count, users, start_ms + day * DAY_MS))
        done += count
        if day % 5 == 4 or day == DAYS - 1:
            elapsed = time.perf_counter() - began
            print(f"  events: day {day + 1}/{DAYS}, {done:,} rows, {elapsed:.0f} s"
                  f" ({done / elapsed:,.0f} rows/s)", flush=True)
    took["events"] = time.perf_counter() - began
    began = time.perf_counter()
    for day in range(DAYS):
        for spec in specs:
            client.command(rollup_sql(spec, start_ms + day * DAY_MS))
    took["rollups"] = time.perf_counter() - began
    print(f"  rollups filled in {took['rollups']:.0f} s", flush=True)
    began = time.perf_counter()
    for part in range(dup_parts):
        client.command(duplicates_sql(dup_fraction, part, dup_parts))
    took["duplicates"] = time.perf_counter() - began
    began = time.perf_counter()
    settle(client)
    took["merges"] = time.perf_counter() - began
    return took


def settle(client: Client, timeout_s: float = 900) -> None:
    """Waits until no background merge has run for 3 s (merges of the rollups just filled would
    otherwise compete with the first queries timed)."""
    quiet_since = time.monotonic()
    deadline = quiet_since + timeout_s
    while time.monotonic() < deadline:
        busy = client.query("SELECT count() FROM system.merges WHERE database = currentDatabase()").result_rows[0][0]
        if busy:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 3:
            return
        time.sleep(0.5)


# --- measuring ------------------------------------------------------------------------------

@dataclass
class Recorder:
    """A clickhouse-connect client that remembers the SQL the query layer sends, and what it read."""

    client: Client
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    read_rows: int = 0

    def query(self, sql: str, parameters: dict[str, Any] | None = None,
              settings: dict[str, Any] | None = None, **kwargs: Any) -> Any:
        self.calls.append((sql, dict(parameters or {}), dict(settings or {})))
        result = self.client.query(sql, parameters=parameters, settings=settings, **kwargs)
        self.read_rows += int(result.summary.get("read_rows", 0) or 0)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def reset(self) -> None:
        self.calls.clear()
        self.read_rows = 0


@dataclass
class Figure:
    name: str
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # ClickHouse process CPU seconds per call
    read_rows: int = 0
    note: str = ""
    failures: int = 0  # timed runs that failed (a limit hit under load), not in times
    failure: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.times) if self.times else math.nan

    @property
    def p95(self) -> float:
        if not self.times:
            return math.nan
        ordered = sorted(self.times)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]

    @property
    def cpu50(self) -> float:
        return statistics.median(self.cpu) if self.cpu else math.nan

    def line(self) -> str:
        return (f"  {self.name:<48} p50 {ms(self.p50):>9} ms  p95 {ms(self.p95):>9} ms"
                f"  min {ms(min(self.times, default=math.nan)):>9} ms  server CPU {ms(self.cpu50):>9} ms"
                f"  read {self.read_rows:>12,} rows  {self.note}"
                + (f" ({self.failures} runs FAILED: {self.failure})" if self.failures else ""))


@dataclass
class Case:
    """One thing to time: a call, its answer from the warm-up, and the SQL that call sent."""

    figure: Figure
    fn: Callable[[], Any]
    answer: Any = None
    warmup_s: float = 0.0
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    failed: bool = False


def warm(case: Case, rec: Recorder) -> Case:
    """Runs *case* once, keeping its answer and SQL; a failure (a time or memory limit of the
    query layer, a ClickHouse error) is reported and the case is not timed."""
    rec.reset()
    began = time.perf_counter()
    try:
        case.answer = case.fn()
    except Exception as exc:  # noqa: BLE001 - reported, not raised: the other cases still run
        case.failed = True
        case.figure.note = f"FAILED after {time.perf_counter() - began:.1f} s: {type(exc).__name__}: {str(exc)[:300]}"
        print(f"  {case.figure.name}: {case.figure.note}", flush=True)
    case.warmup_s = time.perf_counter() - began
    case.figure.read_rows = rec.read_rows
    case.calls = list(rec.calls)
    return case


def cpu_seconds(pid: int) -> float:
    """utime+stime of *pid* and its threads (chdb runs its queries on the process's threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_round_robin(cases: Sequence[Case], runs: int, server_pid: int) -> None:
    """*runs* rounds, each timing every case once (three times when its warm-up took under
    0.3 s): interleaved, so a burst of load from elsewhere on the machine spreads over all
    the cases instead of landing on one. The ClickHouse process's CPU time per call is kept
    too: on a shared machine it moves far less than wall time (10 ms clock ticks)."""
    for _ in range(runs):
        for case in cases:
            for _ in range(0 if case.failed else 3 if case.warmup_s < 0.3 else 1):
                cpu = cpu_seconds(server_pid)
                began = time.perf_counter()
                try:
                    case.fn()
                except Exception as exc:  # noqa: BLE001 - a limit hit in one run: counted, not timed
                    case.figure.failures += 1
                    case.figure.failure = f"{type(exc).__name__}: {str(exc)[:160]}"
                    continue
                case.figure.times.append(time.perf_counter() - began)
                case.figure.cpu.append(cpu_seconds(server_pid) - cpu)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def replay(client: Client, calls: Sequence[tuple[str, dict[str, Any], dict[str, Any]]], final: bool,
           local: int = 1) -> Callable[[], list[list[Any]]]:
    """A call that re-sends *calls* (the query layer's SQL): with FINAL as written, or without
    (``events FINAL`` read as ``events``); *local* sets do_not_merge_across_partitions_select_final."""
    def go() -> list[list[Any]]:
        return [list(client.query(sql if final else sql.replace("events FINAL", "events"), parameters=params,
                                  settings={**st, "do_not_merge_across_partitions_select_final": local}).result_rows)
                for sql, params, st in calls]
    return go


def bench_size(client: Client, now: datetime, settings: Settings, runs: int,
               server_pid: int) -> tuple[list[Figure], list[str]]:
    rec = Recorder(client)
    api = cast(Client, rec)
    config = QueryConfig.from_settings(settings)
    config = dataclasses.replace(config, rollups=tuple(settings.aggregate.rollups))
    config_hourly = dataclasses.replace(config, rollups=(*config.rollups, HOURLY))
    first_day = (now - timedelta(days=DAYS)).date()
    last_day: date = (now - timedelta(milliseconds=1)).date()
    days = [first_day.isoformat(), last_day.isoformat()]
    notes: list[str] = []
    cases: dict[str, Case] = {}

    def api_case(name: str, body: dict[str, Any], cfg: QueryConfig = config) -> dict[str, Any] | None:
        case = warm(Case(Figure(name), lambda: run(api, body, cfg, now=now)), rec)
        if not case.failed:
            case.figure.note = f"{case.answer['source']}, {case.answer['meta']['queries']} queries"
        cases[name] = case
        return cast(dict[str, Any] | None, case.answer)

    def sql_case(name: str, fn: Callable[[], Any], note: str = "") -> Any:
        case = warm(Case(Figure(name, note=note), fn), rec)
        cases[name] = case
        return case.answer

    breakdown = {"kind": "breakdown", "events": [BREAKDOWN_EVENT], "dimensions": ["country", "device_type"],
                 "date_range": days}
    raw = api_case("breakdown raw (events)", {**breakdown, "source": "events"})
    for name, cfg in (("breakdown routed, default rollups", config),
                      ("breakdown routed, + hourly rollup", config_hourly)):
        routed = api_case(name, {**breakdown, "source": "auto"}, cfg)
        if routed is None or raw is None:
            continue
        if not routed["source"].startswith("rollup:"):
            notes.append(f"{name}: answered by {routed['source']}, not a rollup"
                         f" ({routed['meta'].get('rollup_not_used')})")
        elif routed["rows"] != raw["rows"]:
            diff = next((a, b) for a, b in itertools.zip_longest(raw["rows"], routed["rows"]) if a != b)
            notes.append(f"WRONG: {name}: rows differ from the raw answer, first difference raw {diff[0]}"
                         f" vs {routed['source']} {diff[1]}")
        else:
            notes.append(f"{name}: {routed['source']}, {len(routed['rows'])} rows, equal to the raw answer")

    series = {"kind": "timeseries", "events": [BREAKDOWN_EVENT], "interval": "day", "date_range": days}
    ts_raw = api_case("timeseries by day (events)", {**series, "source": "events"})
    ts_routed = api_case("timeseries by day (auto)", {**series, "source": "auto"})
    if ts_raw is None or ts_routed is None:
        pass
    elif ts_raw["rows"] != ts_routed["rows"]:
        notes.append(f"WRONG: timeseries: {ts_routed['source']} rows differ from the raw answer")
    else:
        notes.append(f"timeseries by day: {ts_routed['source']}, {len(ts_routed['rows'])} rows, equal to the raw answer")

    if have("app.query.funnel"):
        answer = api_case("funnel 4 steps", {"kind": "funnel", "steps": FUNNEL, "window": "14d", "date_range": days})
        wf_users = sql_case("funnel 4 steps, windowFunnel (counts only)", window_funnel(api, now))
        if answer is not None:
            users = [row["users"] for row in answer["rows"]]
            same = "the same" if users == wf_users else "DIFFERENT counts"
            notes.append(f"funnel users per step {users}; windowFunnel gives {same} {wf_users}")
    else:
        notes.append("funnel: app/query/funnel.py is not on this branch yet: not measured")
    if have("app.query.retention"):
        answer = api_case("retention 8 weeks", {"kind": "retention", "start_event": "session_start",
                                                "period": "week", "periods": 8, "date_range": days})
        if answer is not None:
            first = [r for r in answer["rows"] if r["cohort"] == answer["rows"][0]["cohort"]]
            notes.append(f"retention: {len(answer['rows'])} rows; first cohort {first[0]['cohort']}:"
                         f" {first[0]['cohort_size']:,} users, by week "
                         + " ".join("-" if r["rate"] is None else f"{r['rate']:.0%}" for r in first))
    else:
        notes.append("retention: app/query/retention.py is not on this branch yet: not measured")
    if have("app.query.uniques"):
        answer = api_case("uniques exact", {"kind": "uniques", "date_range": days})
        if answer is not None:
            notes.append(f"uniques exact: {answer['rows'][0]['users']:,} users"
                         " (method hll needs real sketches, which this bench's rollups do not hold)")
    else:
        notes.append("uniques: app/query/uniques.py is not on this branch yet: not measured")
    if have("app.query.discovery"):
        from app.query import discovery
        for name, fn in (
            ("discovery events", lambda: discovery.events(api, config)),
            ("discovery properties (all events)", lambda: discovery.properties(api, config, None)),
            ("discovery properties (purchase)", lambda: discovery.properties(api, config, "purchase")),
            ("discovery values country", lambda: discovery.values(api, config, "country", None, "", None)),
            ("discovery values prop:path q='page/1'",
             lambda: discovery.values(api, config, "prop:path", "page_view", "page/1", None)),
        ):
            sql_case(name, fn)
    else:
        notes.append("discovery: app/query/discovery.py is not on this branch yet: not measured")

    # What FINAL costs: the raw breakdown's own SQL three ways; and the kinds whose answers
    # do not depend on duplicates (sets of users) without FINAL, answers compared.
    raw_case = cases["breakdown raw (events)"]
    if not raw_case.failed:
        calls = raw_case.calls
        assert len(calls) == 1 and "events FINAL" in calls[0][0], calls
        counts = {}
        for name, final, local in (("FINAL", True, 0), ("FINAL, partition-local (current)", True, 1),
                                   ("no FINAL", False, 1)):
            answer = sql_case(f"breakdown SQL, {name}", replay(api, calls, final, local))
            if answer is not None:
                counts[name] = sum(int(r[len(r) - 2]) for r in answer[0])
                cases[f"breakdown SQL, {name}"].figure.note = f"{counts[name]:,} events"
        if "no FINAL" in counts and "FINAL" in counts:
            extra = counts["no FINAL"] - counts["FINAL"]
            notes.append(f"without FINAL the breakdown counts {extra:,} copies twice"
                         f" ({extra / max(1, counts['FINAL']):.2%} of {counts['FINAL']:,})")
    for kind in ("funnel 4 steps", "retention 8 weeks", "uniques exact"):
        if kind in cases and not cases[kind].failed:
            kind_calls = cases[kind].calls
            without = sql_case(f"{kind}, its SQL without FINAL", replay(api, kind_calls, False))
            if without is None:
                continue
            try:
                with_final = replay(api, kind_calls, True)()
            except Exception as exc:  # noqa: BLE001 - a limit hit again: say so, go on
                notes.append(f"{kind}: not compared without FINAL, its SQL failed: {str(exc)[:160]}")
                continue
            # Rows compared as sets: a GROUP BY without ORDER BY returns them in any order.
            same = "the same" if [sorted(map(repr, r)) for r in without] == \
                [sorted(map(repr, r)) for r in with_final] else "DIFFERENT"
            notes.append(f"{kind}: its SQL without FINAL gives {same} result rows")

    print(f"  timing {len(cases)} cases, {runs} rounds (load average {load_average()})", flush=True)
    time_round_robin(list(cases.values()), runs, server_pid)
    print(f"  done (load average {load_average()})")
    for case in cases.values():
        print(case.figure.line())
    return [case.figure for case in cases.values()], notes


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def window_funnel(client: Client, now: datetime) -> Callable[[], list[int]]:
    """The funnel's users per step by `windowFunnel` (ms timestamps, 14-day window), for scale."""
    end_ms = int(now.timestamp() * 1000)
    start_ms = end_ms - DAYS * DAY_MS
    window_ms = 14 * DAY_MS
    steps = ", ".join(
        [f"event_name = '{FUNNEL[0]}' AND ts < fromUnixTimestamp64Milli({end_ms}, 'UTC')",
         *(f"event_name = '{e}'" for e in FUNNEL[1:])])
    names = ", ".join(f"'{e}'" for e in FUNNEL)
    sql = (f"SELECT level, count() FROM (SELECT user_id, windowFunnel({window_ms})("
           f"toUInt64(toUnixTimestamp64Milli(ts)), {steps}) AS level FROM events FINAL"
           f" WHERE project_id = 'default' AND event_name IN ({names})"
           f" AND ts >= fromUnixTimestamp64Milli({start_ms}, 'UTC')"
           f" AND ts < fromUnixTimestamp64Milli({end_ms + window_ms}, 'UTC') GROUP BY user_id)"
           " WHERE level > 0 GROUP BY level")

    def go() -> list[int]:
        rows = client.query(sql, settings={"do_not_merge_across_partitions_select_final": 1}).result_rows
        at = {int(level): int(users) for level, users in rows}
        return [sum(u for lv, u in at.items() if lv >= k) for k in range(1, len(FUNNEL) + 1)]
    return go


# --- report ---------------------------------------------------------------------------------

def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n:,}"


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.1f}"


def report(results: dict[int, list[Figure]], runs: int) -> None:
    sizes = sorted(results)
    if not sizes:
        return
    names = list(dict.fromkeys(f.name for n in sizes for f in results[n]))
    width = max(len(n) for n in names) + 2
    head = f"{'query (ms)':<{width}}"
    for i, n in enumerate(sizes):
        head += f"{label(n) + ' p50':>12}{label(n) + ' p95':>12}{label(n) + ' CPU':>12}"
        if i:
            head += f"{'x' + label(sizes[i - 1]):>8}{'CPU x':>7}"
    print(f"\np50 and p95 (nearest rank) of {runs} runs ({3 * runs} for queries under 0.3 s) after one"
          " warm-up, all queries interleaved, wall time through the function API (HTTP included);\n"
          "CPU: median ClickHouse process CPU time a call (10 ms ticks); x: growth of p50, CPU x: of CPU,"
          " from the previous size")
    print(head + "   target")
    for name in names:
        line = f"{name:<{width}}"
        previous: Figure | None = None
        for i, n in enumerate(sizes):
            figure = next((f for f in results[n] if f.name == name), Figure(name))
            line += f"{ms(figure.p50):>12}{ms(figure.p95):>12}{ms(figure.cpu50):>12}"
            if i:
                line += f"{ratio(figure.p50, previous.p50 if previous else math.nan):>8}"
                line += f"{ratio(figure.cpu50, previous.cpu50 if previous else math.nan):>7}"
            previous = figure
        print(line + (f"   {TARGETS[name]}" if name in TARGETS else ""))


def ratio(now: float, before: float) -> str:
    return "-" if math.isnan(now) or math.isnan(before) or before <= 0 else f"{now / before:.1f}x"


def phases(took: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in took.items())


def describe(client: Client, specs: Sequence[RollupSpec]) -> None:
    """Prints what was loaded: rows, events, users and their events, parts, bytes, rollup sizes."""
    rows, users, q50, q99, top = client.query(
        "SELECT sum(c), count(), quantileExact(0.5)(c), quantileExact(0.99)(c), max(c)"
        " FROM (SELECT user_id, count() AS c FROM events GROUP BY user_id)").result_rows[0]
    distinct = client.query("SELECT uniqExact(event_id) FROM events").result_rows[0][0]
    parts, partitions, size = client.query(
        "SELECT count(), uniqExact(partition), sum(bytes_on_disk) FROM system.parts"
        " WHERE database = currentDatabase() AND table = 'events' AND active").result_rows[0]
    print(f"  {rows:,} rows = {distinct:,} events + {rows - distinct:,} copies; {users:,} users"
          f" (events a user: median {q50}, p99 {q99}, max {top:,}); {parts} parts in {partitions}"
          f" day partitions, {size / 1e9:.2f} GB on disk")
    for spec in specs:
        count = int(client.query(f"SELECT count() FROM `{table_name(spec)}`").result_rows[0][0])
        print(f"  rollup {spec.name}: {count:,} rows ({distinct / max(count, 1):.1f} events a row)")


def sizes_from(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1e6,1e7", help="sizes, comma-separated [1e6,1e7]")
    parser.add_argument("--with-100m", action="store_true", help="add 1e8 to --rows")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per query [7]")
    parser.add_argument("--dup-fraction", type=float, default=0.005,
                        help="events copied as redelivered duplicates [0.005]")
    parser.add_argument("--dup-parts", type=int, default=1,
                        help="inserts the copies arrive in: unmerged parts per day partition [1]")
    parser.add_argument("--keep-data", action="store_true", help="do not drop each size's database")
    args = parser.parse_args()
    # SIGINT (timeout -s INT) and SIGTERM end the run through the finally below, which stops the
    # ClickHouse child by its pid and removes the data; set explicitly, since a background job
    # may inherit SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sizes = sorted(set(sizes_from(args.rows) + ([100_000_000] if args.with_100m else [])))

    now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tmp = Path(tempfile.mkdtemp(prefix="rv-bench-query-"))
    port = free_port(HOST)
    child = ChildProcess(
        "clickhouse",
        python_module("app.cli", "clickhouse", "--host", HOST, "--port", str(port), "--data-dir", str(tmp / "chdb")),
        http_ready(f"http://{HOST}:{port}/ping"), log_path=tmp / "clickhouse.log")
    base = Settings()
    results: dict[int, list[Figure]] = {}
    all_notes: dict[int, list[str]] = {}
    loads: dict[int, dict[str, float]] = {}
    interrupted = False
    try:
        child.start()
        child.wait_ready(90)
        server_pid = child.pid
        assert server_pid is not None
        print(f"embedded ClickHouse pid {server_pid} on {HOST}:{port}, data in {tmp};"
              f" now = {now.isoformat()}, {DAYS} days of events before it")
        try:
            for n in sizes:
                settings = base.model_copy(update={"clickhouse": base.clickhouse.model_copy(
                    update={"url": f"http://{HOST}:{port}", "database": f"rv_bench_query_{label(n).lower()}"})})
                clickhouse.ensure_database(settings.clickhouse)
                client = clickhouse.connect(settings.clickhouse, send_receive_timeout=3600)
                try:
                    migrate(client)
                    specs = [*settings.aggregate.rollups, HOURLY]
                    ensure_tables(client, specs)
                    print(f"\n{label(n)} events: loading", flush=True)
                    loads[n] = load(client, n, now, specs, args.dup_fraction, args.dup_parts)
                    print(f"  loaded in {sum(loads[n].values()):.0f} s: {phases(loads[n])}")
                    describe(client, specs)
                    results[n], all_notes[n] = bench_size(client, now, settings, args.runs, server_pid)
                    for note in all_notes[n]:
                        print(f"  - {note}")
                    if not args.keep_data:
                        client.command(f"DROP DATABASE `{settings.clickhouse.database}` SYNC")
                finally:
                    client.close()
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: reporting the sizes done", flush=True)
    finally:
        child.stop()
        if not args.keep_data:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"data kept in {tmp}")
    report(results, args.runs)
    for n in sizes:
        if n in loads:
            print(f"load {label(n)}: {phases(loads[n])}")
    if interrupted:
        sys.exit(130)


if __name__ == "__main__":
    main()
