"""What unique users cost Grafana: raw ``uniqCombined64`` over the events, or a pre-aggregated table.

    .venv/bin/python bench/grafana_uniques.py [--rows 1000000] [--users 20000] [--runs 7]

Grafana cannot merge the rollups' DataSketches sketches, so its unique users come from SQL. Two
ways were weighed for the Overview dashboard's "unique users per hour":

* **raw**: ``uniqCombined64(user_id)`` over the events table, without FINAL (a redelivered
  copy of a row has the same user_id, so a distinct count cannot count it twice);
* **mv**: an AggregatingMergeTree of ``uniqCombined64State(user_id)`` per (project, event name,
  minute), fed by a materialized view on every insert into events, read with
  ``uniqCombined64Merge``.

This starts the embedded ClickHouse endpoint on a free port and a temporary directory, applies
the migrations, fills the events table with --rows events over 7 days (--users users, 5 event
names), and reports the median of --runs runs (after a warm-up) of each query, sent as Grafana's
plugin sends them (HTTP, Native format, through clickhouse-connect), the extra cost of the view
on inserts (up to 1M rows in the sink's 50,000-row Arrow blocks, with and without it), and the
extra storage. It also checks that both give the same figures, so a cheaper wrong answer cannot
win.

Measured on this machine kind (2 cores; median of 7 runs at 1M, of 3 at 10M), per query of
168 hourly buckets:

=========================  ===================  ===================  =====================
                           raw uniqCombined64   mv Merge             /v1/query's exact
=========================  ===================  ===================  =====================
1M events, 20k users       87 ms (one event 34) 106 ms (one event 31)  181 ms (FINAL)
10M events, 200k users     730 ms (116)         303 ms (78)           1,858 ms (FINAL)
=========================  ===================  ===================  =====================

The view costs +24% (1M rows, 20k users) to +46% (200k users) on every insert into events and
~20% more storage. At a million events raw is as fast and costs nothing else, so the dashboards
read the events; past roughly ten million events in a dashboard's range the view pays for
itself, and is one migration away (the DDL above, plus a backfill ``INSERT ... SELECT``, which
redelivered rows cannot skew: a uniq state ignores a user seen twice).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from app.embedded.process import ChildProcess, free_port, http_ready, python_module
from tables.migrate import migrate

HOST = "127.0.0.1"
START_S = 1_772_323_200  # 2026-03-01 00:00:00 UTC
SPAN_S = 7 * 86_400
BLOCK_ROWS = 50_000  # the worker's sink_block_rows

FILL = """
INSERT INTO {table} (event_id, project_id, event_name, user_id, ts, received_at, properties,
                     schema_id, _partition, _offset, _index)
SELECT generateUUIDv4(), 'default',
       ['page_view', 'button_click', 'signup_start', 'signup', 'purchase'][1 + number % 13 % 5],
       concat('user-', toString(cityHash64(number) % {users})),
       fromUnixTimestamp64Milli(toInt64({start} * 1000 + intDiv(number * {span} * 1000, {rows})), 'UTC'),
       fromUnixTimestamp64Milli(toInt64({start} * 1000 + intDiv(number * {span} * 1000, {rows}) + 500), 'UTC'),
       map('country', ['US', 'DE', 'FR', 'IN'][1 + number % 4],
           'device_type', ['desktop', 'mobile', 'tablet'][1 + number % 3]),
       1, 0, number, 0
FROM numbers({rows})
"""

MV_TABLE = """
CREATE TABLE users_1m
(
    project_id LowCardinality(String),
    event_name LowCardinality(String),
    minute     DateTime('UTC'),
    users      AggregateFunction(uniqCombined64, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (project_id, event_name, minute)
"""
MV_SELECT = """
SELECT project_id, event_name, toStartOfMinute(ts) AS minute, uniqCombined64State(user_id) AS users
FROM {source} GROUP BY project_id, event_name, minute
"""


def median_ms(runs: int, action: Callable[[], object]) -> float:
    """Median wall-clock milliseconds of *action* over *runs* runs, after one untimed warm-up."""
    action()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def queries(event: str | None) -> dict[str, str]:
    """The panel's SQL for the fixed 7-day range, as the plugin expands it, per method."""
    raw_filter = f"ts >= toDateTime({START_S}) AND ts <= toDateTime({START_S + SPAN_S})"
    mv_filter = f"minute >= toDateTime({START_S}) AND minute <= toDateTime({START_S + SPAN_S})"
    which = f" AND event_name = '{event}'" if event else ""
    return {
        "raw uniqCombined64, no FINAL": (
            "SELECT toStartOfHour(ts) AS time, uniqCombined64(user_id) AS users FROM events"
            f" WHERE project_id = 'default'{which} AND {raw_filter} GROUP BY time ORDER BY time"),
        "raw uniqExact FINAL (as /v1/query users)": (
            "SELECT toStartOfHour(ts) AS time, uniqExact(user_id) AS users FROM events FINAL"
            f" WHERE project_id = 'default'{which} AND {raw_filter} GROUP BY time ORDER BY time"),
        "mv uniqCombined64Merge": (
            "SELECT toStartOfHour(minute) AS time, uniqCombined64Merge(users) AS users FROM users_1m"
            f" WHERE project_id = 'default'{which} AND {mv_filter} GROUP BY time ORDER BY time"),
    }


def insert_cost(client: Client, rows: int, runs: int, with_view: bool) -> float:
    """Median ms to insert min(rows, 1M) rows (50k-row Arrow blocks) into an events-shaped
    table."""
    blocks = [client.query_arrow(f"SELECT * FROM events ORDER BY ts LIMIT {BLOCK_ROWS} OFFSET {i}")
              for i in range(0, min(rows, 1_000_000), BLOCK_ROWS)]

    def once() -> None:
        client.command("DROP VIEW IF EXISTS users_probe_mv")
        client.command("DROP TABLE IF EXISTS users_probe")
        client.command("DROP TABLE IF EXISTS events_probe")
        client.command("CREATE TABLE events_probe AS events")
        if with_view:
            client.command(MV_TABLE.replace("users_1m", "users_probe"))
            client.command("CREATE MATERIALIZED VIEW users_probe_mv TO users_probe AS "
                           + MV_SELECT.format(source="events_probe"))

    times = []
    for i in range(runs + 1):
        once()
        start = time.perf_counter()
        for block in blocks:
            client.insert_arrow("events_probe", block)
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-grafana-uniques-"))
    port = free_port()
    server = ChildProcess(
        "clickhouse",
        python_module("app.embedded.clickhouse", "--port", str(port), "--data-dir", str(tmp / "data")),
        http_ready(f"http://{HOST}:{port}/ping"),
        log_path=tmp / "clickhouse.log",
    )
    server.start()
    try:
        server.wait_ready(60)
        client = clickhouse_connect.get_client(host=HOST, port=port, compress="lz4")
        migrate(client)
        client.command(FILL.format(table="events", users=args.users, start=START_S, span=SPAN_S,
                                   rows=args.rows))
        client.command("OPTIMIZE TABLE events FINAL")
        client.command(MV_TABLE)
        start = time.perf_counter()
        client.command("INSERT INTO users_1m " + MV_SELECT.format(source="events"))
        backfill_ms = (time.perf_counter() - start) * 1000
        client.command("OPTIMIZE TABLE users_1m FINAL")

        print(f"\n{args.rows:,} events over 7 days, {args.users:,} users; median of {args.runs}"
              " runs, ms (HTTP, Native, clickhouse-connect)\n")
        for event in (None, "button_click"):
            answers: dict[str, object] = {}
            print(f"unique users per hour, 168 hours, {'every event' if event is None else event}:")
            for label, sql in queries(event).items():
                answers[label] = client.query(sql).result_rows
                ms = median_ms(args.runs, partial(client.query, sql))
                print(f"  {label:<44} {ms:>8.1f}")
            approximate = [v for k, v in answers.items() if "uniqExact" not in k]
            assert approximate[0] == approximate[1], "raw and mv uniqCombined64 must agree"
        sizes: dict[str, int] = {str(table): int(size) for table, size in client.query(
            "SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active AND"
            " database = currentDatabase() AND table IN ('events', 'users_1m') GROUP BY table"
        ).result_rows}
        print(f"\nusers_1m: {client.command('SELECT count() FROM users_1m'):,} rows,"
              f" {sizes['users_1m'] / 2**20:.1f} MiB on disk"
              f" ({sizes['users_1m'] / sizes['events']:.0%} of events'"
              f" {sizes['events'] / 2**20:.1f} MiB); backfill {backfill_ms:.0f} ms")
        without = insert_cost(client, args.rows, max(3, args.runs // 2), with_view=False)
        with_mv = insert_cost(client, args.rows, max(3, args.runs // 2), with_view=True)
        print(f"insert {min(args.rows, 1_000_000):,} rows in {BLOCK_ROWS:,}-row Arrow blocks:"
              f" {without:.0f} ms without the view,"
              f" {with_mv:.0f} ms with it ({with_mv / without - 1:+.0%})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
