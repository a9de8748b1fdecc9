"""Rollups kept per project, on real services: every read path sees one project only.

The collector stamps the deployment's project on what it takes; a service writing Avro straight
to Kafka sets any project. Events of two projects share windows, names and dimension values
(and so events.clean partitions and rollup partials' other key columns): each project's live
figures, rollup-routed query answers and verify report hold its events only. Rollup tables
created before projects are upgraded in place by `ensure_tables`.
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import httpx
import pytest

from app.generate import EventGenerator
from app.verify import verify
from tables import hll
from tables.rollup_tables import (
    columns,
    ensure_tables,
    recent_states,
    sorting_key,
    table_name,
    upgrade_statements,
    upgraded_sorting_key,
    upsert_rows,
)
from tables.rollups import DEFAULT_ROLLUPS, RollupSpec
from tables.state import PartialState, StateKey
from tests.integration.conftest import (
    Pipeline,
    Services,
    make_pipeline,
    send_event_batches,
    wait_for,
)

pytestmark = pytest.mark.integration

OTHER = "shop"  # the project a service writes straight to Kafka


def legacy_create_statement(spec: RollupSpec) -> str:
    """A rollup table as `ensure_tables` created it before projects (no project_id)."""
    dims = [f"`{d}` LowCardinality(String)" for d in spec.dimensions]
    sums = [f"`sum_{k}` Float64" for k in spec.sums]
    body = ",\n    ".join([
        "`window_start` DateTime('UTC')", *dims, "`partition` UInt32", "`count` UInt64",
        "`late` UInt64", *sums, "`sum_errors` UInt64", "`sketch` String", "`version` UInt64",
        "`state` String", "updated_at DateTime64(3, 'UTC') DEFAULT now64(3)"])
    order = ", ".join(["window_start", *(f"`{d}`" for d in spec.dimensions), "partition"])
    return (f"CREATE TABLE `{table_name(spec)}`\n(\n    {body}\n)\nENGINE = ReplacingMergeTree(version)\n"
            f"PARTITION BY toYYYYMM(window_start)\nORDER BY ({order})")


def _describe(p: Pipeline, table: str) -> tuple[list[tuple[str, str]], str]:
    cols = p.ch.query("SELECT name, type FROM system.columns WHERE database = currentDatabase()"
                      " AND table = {t:String} AND name != 'updated_at' ORDER BY position",
                      parameters={"t": table}).result_rows
    key = p.scalar("SELECT sorting_key FROM system.tables WHERE database = currentDatabase()"
                   " AND name = {t:String}", t=table)
    return [(str(n), str(t)) for n, t in cols], str(key).replace("`", "")


# --------------------------------------------------------------------------- table upgrade

SPEC = RollupSpec(name="legacy_by_country_1m", dimensions=("event_name", "country"),
                  uniques=True, sums=("price",))
W0 = 1_796_116_500_000 - 1_796_116_500_000 % 60_000


def _state(count: int, offset: int, users: list[str], price_micros: int) -> PartialState:
    sketch = hll.new(SPEC.lg_k)
    for u in users:
        sketch.update(u)
    return PartialState(count=count, sum_micros={"price": price_micros}, sketch=sketch,
                        applied_through=(offset, 0), watermark_ms=W0 + 61_000)


def _legacy_insert(p: Pipeline, rows: list[tuple[int, str, int, PartialState]]) -> None:
    """(window, event name, partition, state) rows, as the worker wrote them before projects."""
    p.ch.insert(table_name(SPEC), [
        [datetime.fromtimestamp(w / 1000, tz=UTC), name, "DE", partition, s.count, 0,
         s.sum_micros["price"] / 1e6, 0, hll.to_bytes(s.sketch), s.applied_through[0] << 24,  # type: ignore[arg-type]
         s.to_bytes()]
        for w, name, partition, s in rows],
        column_names=["window_start", "event_name", "country", "partition", "count", "late",
                      "sum_price", "sum_errors", "sketch", "version", "state"])


@pytest.fixture
def bare(services: Services, tmp_path: Any) -> Any:
    """A migrated database without rollup tables."""
    p = make_pipeline(services, tmp_path, aggregate={"rollups": []})
    try:
        yield p
    finally:
        p.close()


def test_a_rollup_table_created_before_projects_is_upgraded_in_place(bare: Pipeline) -> None:
    """The old rows become the legacy project's, with their states intact (a worker continues
    them exactly); new partials of two projects with equal window, dims and partition stay
    apart, through FINAL and through a merge; a second run changes nothing."""
    p, table = bare, table_name(SPEC)
    p.ch.command(legacy_create_statement(SPEC))
    old = [(W0, "page_view", 0, _state(3, 7, ["a", "b"], 2_500_000)),
           (W0, "click", 1, _state(1, 4, ["c"], 0)),
           (W0 + 60_000, "page_view", 0, _state(2, 9, ["a", "d"], 1_000_000))]
    _legacy_insert(p, old)

    done = ensure_tables(p.ch, [SPEC])
    assert (done.created, done.upgraded) == ([], [table])
    have, key = _describe(p, table)
    assert have == columns(SPEC) and key == upgraded_sorting_key(SPEC).replace("`", "")
    # The stored rows read the legacy project, and restore as its partials, bytes unchanged.
    assert p.ch.query(f"SELECT project_id, count() FROM {table} GROUP BY 1").result_rows == [("default", 3)]
    bound, states = recent_states(p.ch, SPEC, 0)
    assert bound is not None
    assert sorted(states) == sorted([
        (StateKey(0, "default", SPEC.name, W0, ("page_view", "DE")), old[0][3].to_bytes()),
        (StateKey(0, "default", SPEC.name, W0 + 60_000, ("page_view", "DE")), old[2][3].to_bytes())])

    # The worker's next flush: the legacy project's partial moves on; another project's partial
    # of the very same window, dims and partition is a row of its own.
    key0 = StateKey(0, "default", SPEC.name, W0, ("page_view", "DE"))
    newer = _state(5, 12, ["a", "b", "e"], 4_000_000)
    other = _state(4, 11, ["x"], 9_000_000)
    names, rows = upsert_rows(SPEC, [(key0, newer), (key0._replace(project_id=OTHER), other)])
    p.ch.insert(table, rows, column_names=names)
    cells = ("SELECT project_id, event_name, toUnixTimestamp(window_start), partition, count"
             f" FROM {table} FINAL ORDER BY 1, 2, 3")
    want = [("default", "click", W0 // 1000, 1, 1), ("default", "page_view", W0 // 1000, 0, 5),
            ("default", "page_view", W0 // 1000 + 60, 0, 2), (OTHER, "page_view", W0 // 1000, 0, 4)]
    assert p.ch.query(cells).result_rows == want
    p.ch.command(f"OPTIMIZE TABLE {table} FINAL")
    assert p.ch.query(cells).result_rows == want
    assert p.ch.query(cells.replace(" FINAL", "")).result_rows == want, "merged: one row a partial"

    again = ensure_tables(p.ch, [SPEC])
    assert (again.created, again.upgraded) == ([], [])
    assert _describe(p, table) == (have, key)


def test_an_upgrade_interrupted_between_its_two_alters_is_finished(bare: Pipeline) -> None:
    """ClickHouse refuses a new sorting-key column with a default, so the upgrade adds the
    column bare (old rows read '') and sets the default next: a crash in between is finished
    by the next run, with the project the deployment names."""
    p, table = bare, table_name(SPEC)
    p.ch.command(legacy_create_statement(SPEC))
    _legacy_insert(p, [(W0, "page_view", 0, _state(3, 7, ["a"], 0))])
    p.ch.command(upgrade_statements(SPEC, "acme")[0])
    assert p.scalar(f"SELECT project_id FROM {table}") == ""
    done = ensure_tables(p.ch, [SPEC], legacy_project="acme")
    assert done.upgraded == [table]
    assert p.scalar(f"SELECT project_id FROM {table}") == "acme"


def test_migrate_gives_old_rows_the_deployments_project_and_warns_if_projects_were_mixed(
        bare: Pipeline) -> None:
    """`rearview migrate` upgrades with RV_PROJECT_ID as the old rows' project; events of
    several projects in the events table mean the old rows may mix them: it says so."""
    p, table = bare, table_name(SPEC)
    p.ch.command(legacy_create_statement(SPEC))
    _legacy_insert(p, [(W0, "page_view", 0, _state(3, 7, ["a"], 0))])
    p.ch.command("INSERT INTO events (event_id, project_id, event_name, user_id, ts, received_at)"
                 " SELECT generateUUIDv4(), if(number = 0, 'acme', 'other'), 'page_view', 'u',"
                 " now64(3), now64(3) FROM numbers(2)")
    p.settings = p.settings.model_copy(update={
        "project_id": "acme", "aggregate": p.settings.aggregate.model_copy(update={"rollups": [SPEC]})})
    done = subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env={**p.env, "PATH": ""},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"upgraded rollup table {table}" in done.stdout and "project 'acme'" in done.stdout
    assert "warning: events of several projects are stored (acme, other)" in done.stderr
    assert p.scalar(f"SELECT project_id FROM {table}") == "acme"
    again = subprocess.run([sys.executable, "-m", "app.cli", "migrate"], env={**p.env, "PATH": ""},
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0 and "is up to date" in again.stdout and not again.stderr.strip(), again


def test_a_table_created_now_leads_with_the_project_and_a_wrong_key_is_refused(bare: Pipeline) -> None:
    p, table = bare, table_name(SPEC)
    assert ensure_tables(p.ch, [SPEC]).created == [table]
    assert _describe(p, table) == (columns(SPEC), sorting_key(SPEC).replace("`", ""))
    p.ch.command(f"DROP TABLE {table}")
    body = ", ".join(f"`{n}` {t}" for n, t in columns(SPEC))
    p.ch.command(f"CREATE TABLE {table} ({body}, updated_at DateTime64(3, 'UTC') DEFAULT now64(3))"
                 " ENGINE = ReplacingMergeTree(version) ORDER BY (window_start, event_name, country, partition)")
    with pytest.raises(Exception, match="would collapse into each other"):
        ensure_tables(p.ch, [SPEC])


# --------------------------------------------------------------------------- the pipeline

def _dataset(n: int, seed: int, now_ms: int) -> list[dict[str, Any]]:
    """*n* collector-format events over the last 4 minutes (a third in the current minute's
    last seconds), 150 users: HLL sketches below estimation mode, so uniques are exact."""
    gen = EventGenerator(users=150, seed=seed)
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        for e in gen.session(now_ms - rng.randint(60_000, 4 * 60_000)):
            e["timestamp"] = min(e["timestamp"], now_ms - 1_000)
            out.append(e)
    out = out[:n]
    for e in out[: n // 3]:
        e["timestamp"] = now_ms - 500
    return out


def _send_kafka(pipeline: Pipeline, events: list[dict[str, Any]], project: str) -> None:
    """EventBatch messages straight to events.raw, as a service of *project* writes them."""
    send_event_batches(pipeline, events, project=project)


def _start_api(pipeline: Pipeline, project: str) -> str:
    """A `rearview api` of *project* (the deployment's project_id) on the pipeline."""
    own = pipeline.settings
    pipeline.settings = own.model_copy(update={"project_id": project})
    try:
        return pipeline.start_api()
    finally:
        pipeline.settings = own


def _live_and_views(pipeline: Pipeline, api: str, project: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """/v1/live of *api* and the per-project views for *project*, read within one minute."""
    before = time.time()
    live = httpx.get(f"{api}/v1/live", timeout=10).json()
    row = pipeline.ch.query(
        "SELECT active_users_1m, active_users_5m, active_users_15m, events_this_minute"
        " FROM live_now_by_project WHERE project_id = {p:String}", parameters={"p": project}).result_rows
    top = pipeline.ch.query("SELECT event_name, events FROM top_events_now_by_project"
                            " WHERE project_id = {p:String}", parameters={"p": project}).result_rows
    if before // 60 != time.time() // 60 or not row:
        return None
    views = {"active_users": dict(zip(("1m", "5m", "15m"), map(int, row[0][:3]), strict=True)),
             "events_this_minute": int(row[0][3]),
             "top_events": [{"event_name": n, "count": int(c)} for n, c in top]}
    return live, views


def _query(api: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{api}/v1/query", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_read_path_sees_one_project_and_each_is_exact(pipeline: Pipeline) -> None:
    # One rollup table comes from before projects, upgraded in place: both shapes serve.
    upgraded = DEFAULT_ROLLUPS[1]
    pipeline.ch.command(f"DROP TABLE `{table_name(upgraded)}`")
    pipeline.ch.command(legacy_create_statement(upgraded))
    assert ensure_tables(pipeline.ch, pipeline.settings.aggregate.rollups).upgraded == [table_name(upgraded)]

    pipeline.start_worker()
    apis = {"default": _start_api(pipeline, "default"), OTHER: _start_api(pipeline, OTHER)}
    now = int(time.time() * 1000)
    sent = {"default": _dataset(700, seed=31, now_ms=now), OTHER: _dataset(450, seed=32, now_ms=now)}
    assert httpx.post(f"{apis['default']}/v1/batch", json={"events": sent["default"]},
                      timeout=30).status_code == 202  # the collector stamps "default"
    _send_kafka(pipeline, sent[OTHER], OTHER)
    total = sum(len(v) for v in sent.values())

    def exact() -> Any:
        if pipeline.stored() < total:
            return None
        reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
        return reports if reports and all(r.verdict == "exact" for r in reports) else None

    reports = wait_for(exact, 90, "both projects stored and rolled up exactly")
    assert [(r.project_id, r.rollup) for r in reports] == [
        (project, spec.name) for project in ("default", OTHER) for spec in DEFAULT_ROLLUPS]
    for r in reports:
        assert r.raw_events == r.rollup_events == len(sent[r.project_id]), r
    stored = dict(pipeline.ch.query("SELECT project_id, count() FROM events GROUP BY 1").result_rows)
    assert stored == {p: len(v) for p, v in sent.items()}
    # The partials of both projects do share windows, dimension values and partitions.
    shared = pipeline.scalar(
        f"SELECT count() FROM (SELECT window_start, event_name, partition FROM `{table_name(DEFAULT_ROLLUPS[0])}`"
        " FINAL GROUP BY 1, 2, 3 HAVING uniqExact(project_id) = 2)")
    assert shared > 0

    # Online now: each API its own project's figures, equal to the per-project views.
    for project, api in apis.items():
        live, views = wait_for(partial(_live_and_views, pipeline, api, project), 30,
                               f"{project}: live figures within a minute")
        assert live["top_events"] == views["top_events"], project
        assert live["events_this_minute"] == views["events_this_minute"], project
        for period in ("1m", "5m", "15m"):
            assert live["active_users"][period] == views["active_users"][period], (project, period)
        mine = Counter(e["event"] for e in sent[project])
        assert {t["event_name"]: t["count"] for t in live["top_events"]} == dict(mine), project
        assert live["active_users"]["15m"] == len({e["user_id"] for e in sent[project]})

    # Rollup-routed queries: the project's events only, equal to the raw events' answers.
    hour = datetime.fromtimestamp(now / 1000, tz=UTC).replace(minute=0, second=0, microsecond=0)
    span = [(hour - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"), (hour + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M")]
    for project, api in apis.items():
        events = sent[project]
        by_country = {"kind": "breakdown", "dimensions": ["event_name", "country"], "limit": 1000,
                      "date_range": span}
        rolled = _query(api, {**by_country, "source": "rollup"})
        assert rolled["source"] == f"rollup:{upgraded.name}"
        assert rolled["rows"] == _query(api, {**by_country, "source": "events"})["rows"]
        want = Counter((e["event"], e["properties"]["country"] or "$none") for e in events)
        assert {(r["event_name"], r["country"]): r["events"] for r in rolled["rows"] if r["events"]} == dict(want)

        hourly = {"kind": "timeseries", "interval": "hour", "date_range": span}
        rolled = _query(api, {**hourly, "source": "rollup"})
        assert rolled["source"] == f"rollup:{DEFAULT_ROLLUPS[2].name}"
        assert rolled["rows"] == _query(api, {**hourly, "source": "events"})["rows"]
        assert sum(r["events"] for r in rolled["rows"]) == len(events)

        users = _query(api, {"kind": "uniques", "method": "hll", "date_range": span})
        assert users["source"].startswith("rollup:")
        assert users["rows"] == [{"users": len({e["user_id"] for e in events})}], project

    # rearview verify: project by project; --project for one.
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app.cli", "verify", *args], env={**pipeline.env, "PATH": ""},
                              capture_output=True, text=True, timeout=120, check=False)

    both = run()
    assert both.returncode == 0, both.stdout + both.stderr
    lines = both.stdout.splitlines()
    assert lines[0] == "project default: exact" and f"project {OTHER}: exact" in lines and lines[-1] == "exact"
    assert "  events_by_name_1m: exact: " in both.stdout
    one = run("--project", OTHER)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "project default" not in one.stdout and f"project {OTHER}: exact" in one.stdout
    assert f"{len(sent[OTHER])} of {len(sent[OTHER])} raw events" in one.stdout


def test_verify_tells_a_partial_counted_under_another_project(pipeline: Pipeline) -> None:
    """A partial stored under the wrong project is caught: that project's rollup counts more
    than its raw events (differs), the right one's counts fewer (incomplete)."""
    pipeline.start_worker()
    now = int(time.time() * 1000)
    events = _dataset(200, seed=33, now_ms=now)
    _send_kafka(pipeline, events, "default")

    def exact() -> bool:
        return pipeline.stored() >= len(events) and all(
            r.verdict == "exact" for r in verify(pipeline.ch, pipeline.settings.aggregate.rollups))

    wait_for(exact, 90, "rolled up exactly")
    spec = DEFAULT_ROLLUPS[0]
    table = table_name(spec)
    window, name, partition = pipeline.ch.query(
        f"SELECT toUnixTimestamp(window_start), event_name, partition FROM {table} FINAL"
        " ORDER BY count DESC LIMIT 1").result_rows[0]
    where = (f"window_start = toDateTime({int(window)}, 'UTC') AND event_name = '{name}'"
             f" AND partition = {int(partition)}")
    moved_row = pipeline.ch.query(f"SELECT * FROM {table} FINAL WHERE project_id = 'default' AND {where}")
    [row] = moved_row.result_rows
    names = list(moved_row.column_names)
    pipeline.ch.insert(table, [[OTHER, *row[1:]]], column_names=names)
    assert names[0] == "project_id"
    pipeline.ch.command(f"ALTER TABLE {table} DELETE WHERE project_id = 'default' AND {where}"
                        " SETTINGS mutations_sync = 2")
    assert pipeline.scalar(f"SELECT sum(count) FROM {table} FINAL") == len(events), "totals unchanged"
    by = {(r.project_id, r.rollup): r for r in verify(pipeline.ch, pipeline.settings.aggregate.rollups)}
    assert by[(OTHER, spec.name)].verdict == "differs"
    assert by[("default", spec.name)].verdict == "incomplete"
    assert by[("default", DEFAULT_ROLLUPS[1].name)].verdict == "exact"
    [moved] = by[(OTHER, spec.name)].excess
    [lost] = by[("default", spec.name)].missing
    assert (moved.window_start, moved.dims, moved.raw_count) == (lost.window_start, lost.dims, 0)
    assert lost.raw_count - lost.rollup_count == moved.rollup_count > 0
