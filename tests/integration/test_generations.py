"""Table generations on the real embedded ClickHouse endpoint: same DDL, swap, rollback, gc,
and queries that never fail across a swap."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client

from app import clickhouse
from app.query import QueryConfig, run
from tables import generations, rollup_tables
from tables.generations import GenerationError, rollup_target
from tables.rollups import RollupSpec
from tables.state import PartialState, StateKey, replay_partition
from tests.integration.conftest import Pipeline

pytestmark = pytest.mark.integration

WINDOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _events(client: Client, table: str, n: int, project: str = "default") -> None:
    names = ["event_id", "project_id", "event_name", "user_id", "ts", "received_at", "properties",
             "schema_id", "_partition", "_offset", "_index", "_clean_offset", "_clean_index"]
    rows = [[uuid.uuid4(), project, "page_view", f"u{i}", WINDOW + timedelta(seconds=i % 50),
             WINDOW, {}, 1, 0, i, 0, i, 0] for i in range(n)]
    client.insert(table, rows, column_names=names)


def _partials(client: Client, spec: RollupSpec, table: str, counts: dict[int, int]) -> None:
    """Partials of one cell (page_view, WINDOW) with the given count per partition."""
    items = [(StateKey(partition, "default", spec.name, int(WINDOW.timestamp() * 1000),
                       ("page_view",) + ("",) * (len(spec.dimensions) - 1)),
              PartialState(count=count, applied_through=(count, 0)))
             for partition, count in counts.items()]
    names, rows = rollup_tables.upsert_rows(spec, items)
    client.insert(table, rows, column_names=names)


def _ddl(client: Client, table: str) -> str:
    text = str(client.command(f"SHOW CREATE TABLE `{table}`"))
    text = text.replace("\\n", "\n").split("\nCOMMENT ")[0].rstrip()
    return text.replace(f"`{table}`", "<t>").replace(f".{table}\n", ".<t>\n")


def _by_name(pipeline: Pipeline) -> RollupSpec:
    return pipeline.settings.aggregate.rollups[0]


def test_a_generation_has_the_live_tables_ddl_and_a_new_rollup_gets_its_live_table(pipeline: Pipeline) -> None:
    ch = pipeline.ch
    rollups = list(pipeline.settings.aggregate.rollups)
    gen = generations.create(ch, rollups, [generations.TARGET_EVENTS], "default")
    assert set(gen.tables) == {"events", *(rollup_tables.table_name(s) for s in rollups)}
    assert gen.state == "building" and generations.get(ch, gen.number) == gen
    for live, table in gen.tables.items():
        assert _ddl(ch, table) == _ddl(ch, live), live
    # The events generation keeps the dedup columns and indexes that migration 0004 added.
    assert "event_id_bloom" in _ddl(ch, gen.tables["events"])

    added = RollupSpec(name="by_browser_1m", dimensions=("event_name", "browser"))
    second = generations.create(ch, [*rollups, added], [rollup_target("by_browser_1m")], "default")
    assert second.number == gen.number + 1
    assert second.tables == {"rollup_by_browser_1m": "rollup_by_browser_1m__gen2"}
    assert pipeline.scalar("SELECT count() FROM rollup_by_browser_1m") == 0  # the live one, empty
    assert _ddl(ch, "rollup_by_browser_1m__gen2") == _ddl(ch, "rollup_by_browser_1m")

    with pytest.raises(GenerationError, match="no rollup named 'nope'"):
        generations.create(ch, rollups, [rollup_target("nope")], "default")


def test_swap_rollback_and_gc(pipeline: Pipeline) -> None:
    ch, spec = pipeline.ch, _by_name(pipeline)
    rollups = list(pipeline.settings.aggregate.rollups)
    _events(ch, "events", 10)
    first = generations.create(ch, rollups, ["events"], "default")
    _events(ch, first.tables["events"], 25)
    _partials(ch, spec, first.tables[rollup_tables.table_name(spec)], {replay_partition(0): 25})

    with pytest.raises(GenerationError, match="only a verified generation"):
        generations.swap(ch, first.number)
    generations.mark(ch, first.number, "verified")
    generations.swap(ch, first.number)
    generations.swap(ch, first.number)  # again: nothing left to exchange
    assert pipeline.scalar("SELECT count() FROM events") == 25
    assert pipeline.scalar(f"SELECT sum(count) FROM `{rollup_tables.table_name(spec)}` FINAL") == 25
    assert pipeline.scalar(f"SELECT count() FROM `{first.tables['events']}`") == 10  # the retired data
    assert generations.get(ch, first.number).state == "live"
    assert generations.get(ch, first.number).swapped_at is not None

    generations.rollback(ch, first.number)
    assert pipeline.scalar("SELECT count() FROM events") == 10
    assert generations.get(ch, first.number).state == "retired"
    with pytest.raises(GenerationError, match="only a live generation"):
        generations.rollback(ch, first.number)

    second = generations.create(ch, rollups, ["events"], "default")
    _events(ch, second.tables["events"], 40)
    generations.mark(ch, second.number, "verified")
    generations.swap(ch, second.number)
    third = generations.create(ch, rollups, ["events"], "default")
    _events(ch, third.tables["events"], 7)
    generations.mark(ch, third.number, "verified")
    generations.swap(ch, third.number)
    assert pipeline.scalar("SELECT count() FROM events") == 7
    assert generations.get(ch, second.number).state == "retired"
    with pytest.raises(GenerationError, match="only a live generation"):
        generations.rollback(ch, second.number)

    # gc keeping the newest live generation's previous tables: the rolled-back first and the
    # retired second go; the third can still be rolled back.
    dropped = generations.gc(ch, keep=1)
    assert set(dropped) == {*first.tables.values(), *second.tables.values()}
    assert {g.number: g.state for g in generations.all_generations(ch)} == {
        first.number: "dropped", second.number: "dropped", third.number: "live"}
    generations.rollback(ch, third.number)
    assert pipeline.scalar("SELECT count() FROM events") == 40
    generations.mark(ch, third.number, "verified")
    generations.swap(ch, third.number)  # a rolled-back generation verified again goes back in
    assert pipeline.scalar("SELECT count() FROM events") == 7
    assert set(generations.gc(ch)) == set(third.tables.values())
    with pytest.raises(GenerationError, match="gc dropped"):
        generations.rollback(ch, third.number)
    assert pipeline.scalar("SELECT count() FROM events") == 7


def test_an_interrupted_swap_finishes_when_run_again(pipeline: Pipeline) -> None:
    ch = pipeline.ch
    rollups = list(pipeline.settings.aggregate.rollups)
    _events(ch, "events", 3)
    gen = generations.create(ch, rollups, ["events"], "default")
    _events(ch, gen.tables["events"], 5)
    generations.mark(ch, gen.number, "verified")
    ch.command(f"EXCHANGE TABLES events AND `{gen.tables['events']}`")  # the first pair, then a crash
    generations.swap(ch, gen.number)
    assert pipeline.scalar("SELECT count() FROM events") == 5
    for live, table in gen.tables.items():
        rows = ch.query("SELECT name, comment FROM system.tables WHERE database = currentDatabase()"
                        " AND name IN {n:Array(String)}", parameters={"n": [live, table]}).result_rows
        comments = {str(name): str(comment) for name, comment in rows}
        assert comments[live] == f"rearview generation {gen.number}", live
        assert comments[table] == "", table


def test_swap_refuses_a_database_that_is_not_atomic(pipeline: Pipeline) -> None:
    settings = pipeline.settings.clickhouse.model_copy(update={"database": f"{pipeline.settings.clickhouse.database}_mem"})
    pipeline.ch.command(f"CREATE DATABASE `{settings.database}` ENGINE = Memory")
    client = clickhouse.connect(settings)
    try:
        with pytest.raises(GenerationError, match="uses the Memory engine: swapping tables needs an Atomic database"):
            generations.check_atomic(client)
    finally:
        client.close()
        pipeline.ch.command(f"DROP DATABASE `{settings.database}`")
    assert generations.database_engine(pipeline.ch) == "Atomic"


def test_queries_never_fail_across_swaps_and_rollbacks(pipeline: Pipeline) -> None:
    """Threads query the events table and a rollup (through the query layer) while a
    generation is swapped in and rolled back, repeatedly: every answer is the old total or the
    new one, never an error, a missing table or a mix."""
    ch, spec = pipeline.ch, _by_name(pipeline)
    rollups = list(pipeline.settings.aggregate.rollups)
    rollup = rollup_tables.table_name(spec)
    _events(ch, "events", 100)
    _partials(ch, spec, rollup, {0: 60, 1: 40})
    gen = generations.create(ch, rollups, ["events"], "default")
    _events(ch, gen.tables["events"], 250)
    _partials(ch, spec, gen.tables[rollup], {replay_partition(0): 130, replay_partition(1): 120})
    generations.mark(ch, gen.number, "verified")

    config = QueryConfig.from_settings(pipeline.settings)
    body = {"kind": "breakdown", "dimensions": ["event_name"], "source": "rollup",
            "date_range": [WINDOW.isoformat(), (WINDOW + timedelta(minutes=1)).isoformat()]}
    stop = threading.Event()
    seen: dict[str, set[Any]] = {"events": set(), "rollup": set()}
    errors: list[BaseException] = []

    def count_loop() -> None:
        client = clickhouse.connect(pipeline.settings.clickhouse)
        try:
            while not stop.is_set():
                seen["events"].add(client.query("SELECT count() FROM events").result_rows[0][0])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    def rollup_loop() -> None:
        client = clickhouse.connect(pipeline.settings.clickhouse)
        try:
            while not stop.is_set():
                answer = run(client, body, config)
                assert answer["source"] == f"rollup:{spec.name}"
                seen["rollup"].add(tuple(tuple(r.values()) if isinstance(r, dict) else tuple(r)
                                         for r in answer["rows"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            client.close()

    threads = [threading.Thread(target=f) for f in (count_loop, count_loop, rollup_loop, rollup_loop)]
    for t in threads:
        t.start()
    try:
        for _ in range(6):
            generations.swap(ch, gen.number)
            generations.rollback(ch, gen.number)
            generations.mark(ch, gen.number, "verified")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:3]
    assert seen["events"] <= {100, 250} and seen["events"], seen["events"]
    totals = {sum(v for row in rows for v in row if isinstance(v, int)) for rows in seen["rollup"]}
    assert totals <= {100, 250} and totals, seen["rollup"]
