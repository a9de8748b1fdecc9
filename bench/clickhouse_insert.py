"""Insert and query throughput of the embedded ClickHouse endpoint (chdb over HTTP).

    .venv/bin/python bench/clickhouse_insert.py [--rows 1000000] [--runs 3]

Starts ``python -m app.embedded.clickhouse`` on a free port and a temporary data directory,
then times (median of --runs runs after a warm-up) 1M rows of an events table (UUID, 2 LowCardinality
strings, String, DateTime64(3,'UTC'), Map(String,String), Int64):

  * clickhouse-connect ``insert()`` (client-side Native encoding included), lz4 and none;
  * ``raw_insert`` of pre-encoded Native, lz4 multi-frame: the endpoint's own cost;
  * ``insert_arrow`` of a pyarrow table;
  * reading it back: ``query()`` (Native, wait_end_of_query), raw Native bytes, ``query_arrow``.

Then, as the baseline the endpoint is compared with, chdb in this process inserting the same
Native bytes by each path it offers: ``send_insert`` streaming (what the endpoint uses),
``INSERT ... FROM INFILE`` (Native and Arrow) and ``INSERT ... SELECT FROM file()``.

Finally, head to head, the same clickhouse-connect calls through the endpoint and in this
process (clickhouse-connect's chdb backend, ``chdb:///path``), runs interleaved so that load
on the machine hits both alike: ``insert_arrow`` of the 1M rows and a small GROUP BY. The last
lines print the ratios (in-process time / HTTP time: 1.0 means as fast as in-process).
``--ratio-only`` runs just that part.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect
import lz4.frame
import pyarrow as pa
from clickhouse_connect.driver.client import Client

from app.embedded.process import ChildProcess, free_port, http_ready, python_module

HOST = "127.0.0.1"
COLUMNS = ["event_id", "project_id", "event_name", "user_id", "ts", "properties", "value"]
DDL = """CREATE TABLE {name} (event_id UUID, project_id LowCardinality(String),
    event_name LowCardinality(String), user_id String, ts DateTime64(3, 'UTC'),
    properties Map(String, String), value Int64) ENGINE = MergeTree
    ORDER BY (project_id, event_name, ts)"""


def events(n: int) -> list[list[object]]:
    countries = ("de", "fr", "us")
    return [
        [(0x0123456789ABCDEF << 64) | i for i in range(n)],
        [f"p{i % 5}" for i in range(n)],
        [("click", "view", "buy")[i % 3] for i in range(n)],
        [f"u{i % 100000}" for i in range(n)],
        [1_767_225_600_000 + i for i in range(n)],
        [
            {"country": countries[i % 3], "device": ("ios", "web")[i % 2], "k": str(i)}
            for i in range(n)
        ],
        list(range(n)),
    ]


def median_time(runs: int, setup: Callable[[], None], action: Callable[[], object]) -> float:
    """Median wall-clock seconds of *action* over *runs* runs, after one untimed warm-up."""
    setup()
    action()
    times = []
    for _ in range(runs):
        setup()
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ratio-runs", type=int, default=7)
    parser.add_argument("--ratio-only", action="store_true")
    args = parser.parse_args()
    n, runs = args.rows, args.runs

    tmp = Path(tempfile.mkdtemp(prefix="bench-clickhouse-"))
    port = free_port()
    server = ChildProcess(
        "clickhouse",
        python_module(
            "app.embedded.clickhouse", "--port", str(port), "--data-dir", str(tmp / "data")
        ),
        http_ready(f"http://{HOST}:{port}/ping"),
        log_path=tmp / "clickhouse.log",
    )
    server.start()
    results: list[tuple[str, float, int]] = []
    try:
        server.wait_ready(60)
        lz4_client = clickhouse_connect.get_client(host=HOST, port=port, compress="lz4")
        plain_client = clickhouse_connect.get_client(host=HOST, port=port, compress=False)
        data = events(n)
        if args.ratio_only:
            lz4_client.command(DDL.format(name="bench"))
            lz4_client.insert("bench", data, COLUMNS, column_oriented=True)
            arrow = lz4_client.query_arrow("SELECT * FROM bench")
            ratios = head_to_head(lz4_client, arrow, tmp, args.ratio_runs)
            print_ratios(ratios, n, args.ratio_runs)
            return

        def fresh() -> None:
            lz4_client.command("DROP TABLE IF EXISTS bench")
            lz4_client.command(DDL.format(name="bench"))

        for label, client in (("lz4", lz4_client), ("none", plain_client)):

            def insert(c: Client = client) -> object:
                return c.insert("bench", data, COLUMNS, column_oriented=True)

            t = median_time(runs, fresh, insert)
            results.append((f"HTTP insert(), client encodes, {label}", t, n))

        native = lz4_client.raw_query("SELECT * FROM bench FORMAT Native")
        frames = b"".join(
            lz4.frame.compress(native[i : i + (1 << 20)]) for i in range(0, len(native), 1 << 20)
        )
        t = median_time(
            runs,
            fresh,
            lambda: lz4_client.raw_insert("bench", None, frames, fmt="Native", compression="lz4"),
        )
        results.append((f"HTTP raw_insert Native lz4 ({len(native) >> 20} MiB)", t, n))

        arrow = lz4_client.query_arrow("SELECT * FROM bench")
        t = median_time(runs, fresh, lambda: lz4_client.insert_arrow("bench", arrow))
        results.append(("HTTP insert_arrow()", t, n))

        def noop() -> None:
            return None

        t = median_time(runs, noop, lambda: lz4_client.query("SELECT * FROM bench").result_rows)
        results.append(("HTTP query() 1M rows -> Python rows", t, n))
        t = median_time(
            runs, noop, lambda: lz4_client.raw_query("SELECT * FROM bench FORMAT Native")
        )
        results.append(("HTTP raw_query Native bytes", t, n))
        t = median_time(runs, noop, lambda: lz4_client.query_arrow("SELECT * FROM bench"))
        results.append(("HTTP query_arrow()", t, n))
        ratios = head_to_head(lz4_client, arrow, tmp, args.ratio_runs)
    finally:
        code = server.stop()

    results += in_process(native, arrow, tmp, runs, n)
    baseline = next(t for label, t, _ in results if label.startswith("chdb send_insert"))
    print(f"\n{n:,} rows, median of {runs} runs; endpoint exit code {code}\n")
    print(f"{'path':<48} {'seconds':>8} {'rows/s':>12} {'x send_insert':>14}")
    for label, t, rows in results:
        print(f"{label:<48} {t:>8.2f} {rows / t:>12,.0f} {t / baseline:>14.2f}")
    print_ratios(ratios, n, args.ratio_runs)


GROUP_BY = "SELECT event_name, count(), uniq(user_id) FROM bench GROUP BY event_name ORDER BY 1"


def head_to_head(
    http: Client, arrow: pa.Table, tmp: Path, runs: int
) -> list[tuple[str, float, float]]:
    """(label, HTTP median s, in-process median s), each pair of runs interleaved."""
    from clickhouse_connect.driver._chdbclient import ChdbClient

    local = ChdbClient(path=str(tmp / "inproc"))
    local.command(DDL.format(name="bench"))
    local.insert_arrow("bench", arrow)
    out = []
    for label, action in (
        ("insert_arrow() 1M rows", lambda c: c.insert_arrow("bench", arrow)),
        ("small GROUP BY query()", lambda c: c.query(GROUP_BY).result_rows),
    ):
        times: dict[str, list[float]] = {"http": [], "local": []}
        inserting = label.startswith("insert")
        for i in range(runs + 1):
            for name, client in (("http", http), ("local", local)):
                if inserting:
                    client.command("DROP TABLE IF EXISTS bench")
                    client.command(DDL.format(name="bench"))
                start = time.perf_counter()
                action(client)
                if i:  # the first round warms up
                    times[name].append(time.perf_counter() - start)
        out.append((label, statistics.median(times["http"]), statistics.median(times["local"])))
    local.close()
    return out


def print_ratios(ratios: list[tuple[str, float, float]], n: int, runs: int) -> None:
    print(
        f"\nclickhouse-connect through the endpoint vs in-process (chdb backend), median of {runs}"
    )
    print(f"{'call':<28} {'HTTP s':>8} {'in-process s':>13} {'in-process/HTTP':>16}")
    for label, http_s, local_s in ratios:
        print(f"{label:<28} {http_s:>8.3f} {local_s:>13.3f} {local_s / http_s:>16.2f}")


def in_process(
    native: bytes, arrow: pa.Table, tmp: Path, runs: int, n: int
) -> list[tuple[str, float, int]]:
    """The insert paths chdb offers, same bytes, no HTTP: which one should the endpoint use?"""
    from chdb import _chdb

    conn = _chdb.connect(str(tmp / "inproc"))  # type: ignore[attr-defined]  # one path/process
    native_file, arrow_file = tmp / "data.native", tmp / "data.arrow"
    native_file.write_bytes(native)
    with pa.OSFile(str(arrow_file), "wb") as sink, pa.ipc.new_file(sink, arrow.schema) as writer:
        writer.write_table(arrow)

    def fresh() -> None:
        conn.query("DROP TABLE IF EXISTS b", "TabSeparated")
        conn.query(DDL.format(name="b"), "TabSeparated")

    def streaming() -> None:
        handle = conn.send_insert("INSERT INTO b", "Native")
        for i in range(0, len(native), 1 << 20):
            conn.insert_append(handle, native[i : i + (1 << 20)])
        conn.insert_done(handle)

    paths: list[tuple[str, Callable[[], object]]] = [
        ("chdb send_insert Native, 1 MiB appends", streaming),
        ("chdb INSERT FROM INFILE Native", lambda: conn.query(
            f"INSERT INTO b FROM INFILE '{native_file}' FORMAT Native", "TabSeparated")),
        ("chdb INSERT FROM INFILE Arrow", lambda: conn.query(
            f"INSERT INTO b FROM INFILE '{arrow_file}' FORMAT Arrow", "TabSeparated")),
        ("chdb INSERT SELECT FROM file(Native)", lambda: conn.query(
            f"INSERT INTO b SELECT * FROM file('{native_file}', Native)", "TabSeparated")),
    ]  # fmt: skip
    out = [(label, median_time(runs, fresh, action), n) for label, action in paths]
    conn.close()
    return out


if __name__ == "__main__":
    main()
