"""Grafana's dashboards, checked by running what Grafana would run (Grafana cannot run here).

docker/grafana holds the provisioning (data sources, dashboard provider), the dashboards and
the Prometheus configuration; docker/compose.yaml starts Grafana and Prometheus beside the
pipeline. These tests check, in order of cost:

1. **Statically**: the provisioning reads every connection setting from the environment that
   compose sets, every dashboard is valid JSON whose panels and variables name a provisioned
   data source uid, panel ids are unique, every variable used is defined and used safely
   (quoted, or as a ``$__conditionalAll`` guard: see tests/grafana_macros.py), every
   ClickHouse panel but the live views honours the dashboard's time range, and every PromQL
   query is well formed.
2. **Expanded and run**: every panel's SQL, expanded by tests/grafana_macros.py (the plugin's
   macros and Grafana's variables) for a fixed range, runs on the embedded ClickHouse through
   clickhouse-connect (Native format, as the plugin's HTTP client asks) with ``readonly``
   set, on data sent through the real pipeline (collector ``POST /v1/batch``, a worker), and
   returns what its format needs: a time series starts with a DateTime column named ``time``
   in ascending order, then numbers (and label strings); a table has rows.
3. **Cross-checked**: one or more figures of each dashboard equal the query API's answer
   (``POST /v1/query`` over HTTP) for the same range; dead letters equal the worker's own
   counters, and every metric and label the PromQL panels name is one the running worker
   (or API) exposes.
"""

from __future__ import annotations

import json
import math
import re
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import clickhouse_connect
import httpx
import pytest
import yaml
from clickhouse_connect.driver.client import Client

import schemas
from agents.codec import BatchWriter
from agents.schema_registry import register
from app.collector.normalize import to_event
from app.generate import EventGenerator
from tests.grafana_macros import (
    QueryRange,
    Variable,
    check_variable_uses,
    expand,
    variable_uses,
)
from tests.integration.conftest import Pipeline, Services, make_pipeline, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "docker" / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
TIME_SERIES, TABLE = 0, 1
# Panels reading "now" views rather than the picked range.
LIVE_VIEWS = ("live_now", "top_events_now")
ENV_REF = re.compile(r"^\$\{?([A-Z][A-Z0-9_]*)\}?$")
FUNNEL_STEPS = ("1. pricing page", "2. signup_start", "3. signup", "4. purchase")


# --- loading ---------------------------------------------------------------------------------

def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def datasources() -> dict[str, dict[str, Any]]:
    """The provisioned data sources by uid."""
    provisioned = load_yaml(GRAFANA / "provisioning" / "datasources" / "rearview.yaml")
    return {ds["uid"]: ds for ds in provisioned["datasources"]}


def compose() -> dict[str, Any]:
    return load_yaml(ROOT / "docker" / "compose.yaml")


def dashboards() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def interval_seconds(text: str | None) -> float:
    """Seconds of a Grafana interval such as ``10s``, ``1m``, ``1h`` (0 when unset)."""
    if not text:
        return 0.0
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    assert match, f"not a Grafana interval: {text!r}"
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400}[match.group(2)]
    return int(match.group(1)) * unit


@dataclass(frozen=True)
class Query:
    """One ClickHouse query of a panel, with what the plugin needs to expand and shape it."""

    board: str
    panel_id: int
    title: str
    ref: str
    sql: str
    fmt: int
    min_interval_s: float

    @property
    def name(self) -> str:
        return f"{self.board}#{self.panel_id} {self.title!r} {self.ref}"


def clickhouse_queries(board_name: str, board: dict[str, Any]) -> list[Query]:
    out = []
    for panel in board["panels"]:
        for target in panel["targets"]:
            if target["datasource"]["type"] == CLICKHOUSE_PLUGIN:
                out.append(Query(board_name, panel["id"], panel["title"], target["refId"],
                                 target["rawSql"], target["format"],
                                 interval_seconds(panel.get("interval"))))
    return out


def prometheus_targets(board: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(panel["title"], target) for panel in board["panels"] for target in panel["targets"]
            if target["datasource"]["type"] == "prometheus"]


ALL_QUERIES = [q for name, board in dashboards().items() for q in clickhouse_queries(name, board)]


# --- 1. static checks ---------------------------------------------------------------------------

def test_datasources_take_every_connection_setting_from_the_environment_compose_sets() -> None:
    """The ClickHouse data source speaks HTTP with host, port, database, user and password
    from environment variables (so one file serves every deployment), its uid is fixed (the
    dashboards name it), and compose's grafana service sets every variable the file reads,
    installs the plugin and mounts the provisioning and the dashboards where the provider
    looks for them."""
    sources = datasources()
    ch = sources["rearview-clickhouse"]
    assert ch["type"] == CLICKHOUSE_PLUGIN and ch["jsonData"]["protocol"] == "http"
    referenced = set()
    for where, key in [("jsonData", "host"), ("jsonData", "port"), ("jsonData", "defaultDatabase"),
                       ("jsonData", "username"), ("secureJsonData", "password")]:
        match = ENV_REF.match(str(ch[where][key]))
        assert match, f"{where}.{key} must come from the environment, got {ch[where][key]!r}"
        referenced.add(match.group(1))
    prometheus = sources["rearview-prometheus"]
    assert prometheus["type"] == "prometheus"
    referenced.add(ENV_REF.match(prometheus["url"]).group(1))  # type: ignore[union-attr]

    services = compose()["services"]
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    assert CLICKHOUSE_PLUGIN in grafana["environment"]["GF_INSTALL_PLUGINS"].split(",")
    assert referenced <= set(grafana["environment"]), referenced - set(grafana["environment"])
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana["volumes"] if m.startswith("./")}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = load_yaml(GRAFANA / "provisioning" / "dashboards" / "rearview.yaml")["providers"][0]
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    # The database Grafana reads is the one the read-only user may read, and its password is
    # the one the clickhouse service gives that user.
    users = ET.parse(GRAFANA / "clickhouse_users.xml").getroot()
    user = users.find("users/grafana")
    assert user is not None
    assert grafana["environment"]["RV_CLICKHOUSE_USER"] == "grafana"
    database = grafana["environment"]["RV_CLICKHOUSE_DATABASE"]
    assert user.findtext("grants/query") == f"GRANT SELECT ON {database}.*"
    profile = users.find(f"profiles/{user.findtext('profile')}")
    assert profile is not None and profile.findtext("readonly") == "2"
    password_env = user.find("password").get("from_env")  # type: ignore[union-attr]
    assert password_env in services["clickhouse"]["environment"]
    assert (services["clickhouse"]["environment"][password_env]
            == grafana["environment"]["RV_CLICKHOUSE_PASSWORD"])


def test_prometheus_scrapes_every_worker_on_its_status_port() -> None:
    """Redaction counts live only on the workers' /metrics: Prometheus must find every
    replica (DNS service discovery of the compose service) on the port the worker listens on
    (its status page, settings.worker.web_port), and Grafana's data source must point at it."""
    from app.settings import WorkerSettings

    services = compose()["services"]
    config = load_yaml(GRAFANA / "prometheus.yml")
    [worker_job] = [j for j in config["scrape_configs"] if j["job_name"] == "rearview-worker"]
    [sd] = worker_job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == WorkerSettings().web_port
    assert "--port" not in services["worker"]["command"]  # so the worker uses web_port
    assert "0.0.0.0" in services["worker"]["command"]
    assert any(m.startswith("./grafana/prometheus.yml:/etc/prometheus/prometheus.yml")
               for m in services["prometheus"]["volumes"])
    url = services["grafana"]["environment"]["RV_PROMETHEUS_URL"]
    assert url == "http://prometheus:9090"


def test_dashboards_have_distinct_uids_and_titles() -> None:
    """Grafana keys provisioned dashboards by uid: two files with one uid would hide one."""
    boards = dashboards().values()
    assert len({b["uid"] for b in boards}) == len({b["title"] for b in boards}) == len(boards) == 4


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_dashboard_is_valid_and_names_only_provisioned_datasources(path: Path) -> None:
    """Valid JSON; a uid; unique panel ids; every panel, target and variable names a
    provisioned data source by uid with its type; panels fit the 24-column grid; each
    ClickHouse target is raw SQL with a format the plugin knows (0 time series, 1 table)."""
    board = json.loads(path.read_text())
    sources = datasources()
    assert board["uid"].startswith("rearview-") and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    refs = [(p.get("datasource"), f"panel {p['id']}") for p in board["panels"]]
    refs += [(t["datasource"], f"panel {p['id']} target {t['refId']}")
             for p in board["panels"] for t in p["targets"]]
    refs += [(v["datasource"], f"variable {v['name']}")
             for v in board["templating"]["list"] if v["type"] == "query"]
    for ref, where in refs:
        assert ref and ref["uid"] in sources, f"{where}: unknown data source {ref!r}"
        assert ref["type"] == sources[ref["uid"]]["type"], where
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            if target["datasource"]["type"] == CLICKHOUSE_PLUGIN:
                assert target["editorType"] == "sql" and target["rawSql"].strip()
                assert target["format"] in (TIME_SERIES, TABLE)
                assert target["queryType"] == ("timeseries" if target["format"] == TIME_SERIES
                                               else "table")


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_every_variable_use_is_defined_and_safe(path: Path) -> None:
    """Every ``$var`` in panel SQL and in variable queries is a variable of the dashboard,
    inside quotes (``${var:singlequote}``) or the guard of a ``$__conditionalAll``; a
    variable offering All is only used under its own ``$__conditionalAll`` and has no custom
    all value. No variable takes custom values, and no fixed option holds a quote or a
    backslash (Grafana's quoting does not escape backslashes, ClickHouse reads them)."""
    board = json.loads(path.read_text())
    variables = board["templating"]["list"]
    defined = {v["name"]: v for v in variables}
    assert len(defined) == len(variables), "two variables share a name"
    problems: list[str] = []
    for q in clickhouse_queries(path.stem, board):
        problems += check_variable_uses(q.sql, defined, q.name)
    for v in variables:
        assert v.get("allowCustomValue") is False, f"${v['name']} accepts custom values"
        if v["type"] == "query":
            problems += check_variable_uses(v["query"], defined, f"variable {v['name']}")
            assert v["query"] == v["definition"]
        elif v["type"] == "custom":
            for option in v["options"]:
                assert not set(option["value"]) & {"'", "\\"}, option
            assert v["current"]["value"] in [o["value"] for o in v["options"]]
        else:
            pytest.fail(f"${v['name']}: variable type {v['type']} is not checked here")
    texts = [q.sql for q in clickhouse_queries(path.stem, board)]
    texts += [v["query"] for v in variables if v["type"] == "query"]
    for name in defined:
        used = any(u.name == name for text in texts for u in variable_uses(text))
        assert used, f"${name} is offered but no query uses it"
    assert problems == []


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.stem)
def test_every_clickhouse_panel_honours_the_time_range(path: Path) -> None:
    """A panel without a time macro would scan all of history whatever range is picked; only
    the live views (which are "now" by definition) may do without."""
    board = json.loads(path.read_text())
    for q in clickhouse_queries(path.stem, board):
        if any(view in q.sql for view in LIVE_VIEWS):
            continue
        assert re.search(r"\$__(timeFilter|fromTime|toTime)", q.sql), q.name
        if q.fmt == TIME_SERIES:
            assert re.search(r"AS time\b", q.sql), f"{q.name}: a time series needs `time`"


PROMQL_FUNCTIONS = {"sum", "rate", "increase", "max", "min", "avg", "by", "without",
                    "histogram_quantile", "irate", "delta", "deriv", "topk", "count"}


def promql_problems(expr: str) -> list[str]:
    """Why *expr* is not a well-formed query of Rearview's counters ([] when it is): brackets
    balance, functions are known, range selectors use Grafana's $__rate_interval or a
    literal duration, and every metric is a rearview_* counter read with rate/increase."""
    problems = []
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in expr:
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            problems.append(f"unbalanced {char!r}")
    if stack:
        problems.append(f"unclosed {stack!r}")
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\s*\(", expr))
    problems += [f"unknown function {w}" for w in sorted(words - PROMQL_FUNCTIONS)]
    for selector in re.findall(r"\[([^\]]*)\]", expr):
        if selector != "$__rate_interval" and not re.fullmatch(r"\d+[smhd]", selector):
            problems.append(f"range selector [{selector}]")
    for metric in re.findall(r"\b(rearview_\w+)", expr):
        if metric.endswith("_total") and not re.search(rf"(rate|increase)\({metric}\[", expr):
            problems.append(f"counter {metric} must be read with rate() or increase()")
    return problems


def test_promql_panels_are_well_formed() -> None:
    """Prometheus cannot run here either: each PromQL query is checked for shape, and against
    the running worker's metric names and labels in test_pipeline_health_matches_the_worker."""
    targets = [t for board in dashboards().values() for t in prometheus_targets(board)]
    assert targets, "the redactions exist only in Prometheus: some panel must read it"
    for title, target in targets:
        assert promql_problems(target["expr"]) == [], (title, target["expr"])
    assert promql_problems("sum(rate(rearview_x_total[5m])") != []
    assert promql_problems("sum(rearview_x_total)") != []


# --- 2. against the real services -----------------------------------------------------------------

@dataclass
class Seeded:
    """A pipeline with known traffic, and the facts the tests compare the dashboards with."""

    pipeline: Pipeline
    api: str
    range: QueryRange
    stored: int  # events of the default project
    late: int  # of those, received more than LATE_AFTER_S after their timestamp
    dead_letters: Counter[str] = field(default_factory=Counter)
    panel_client: Client | None = None

    def rows(self, sql: str) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
        """Column names, ClickHouse types and rows, read as the plugin reads them."""
        assert self.panel_client is not None
        result = self.panel_client.query(sql)
        types = [t.name for t in result.column_types]
        return list(result.column_names), types, [tuple(r) for r in result.result_rows]

    def query_api(self, body: dict[str, Any]) -> dict[str, Any]:
        body = {"date_range": [self.range.start.isoformat(), self.range.end.isoformat()],
                "timezone": "UTC", **body}
        response = httpx.post(f"{self.api}/v1/query", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()


LATE_AFTER_S = 300
HOSTILE_PROJECT = "x\\' OR 1=1 --"
BAD_EVENTS = 3  # invalid event names, dead-lettered by the validate stage
GARBAGE_MESSAGES = 2  # raw bytes that are not Avro, dead-lettered by the decode stage


def _post(api: str, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 500):
        response = httpx.post(f"{api}/v1/batch", json={"events": events[start:start + 500]},
                              timeout=30)
        assert response.status_code == 202, response.text


def _minute_floor(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def panel_client(p: Pipeline) -> Client:
    """A client like the plugin's: HTTP, Native format, the pipeline's database, and only
    allowed to read (``readonly`` 2, as the profile of Grafana's ClickHouse user)."""
    url = urlparse(p.settings.clickhouse.url)
    return clickhouse_connect.get_client(
        host=url.hostname or "127.0.0.1", port=url.port or 8123,
        database=p.settings.clickhouse.database, username=p.settings.clickhouse.username,
        password=p.settings.clickhouse.password.get_secret_value(), compress="lz4",
        settings={"readonly": 2})


@pytest.fixture(scope="module")
def seeded(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    """Traffic through the real collector and worker: an hour of backfilled sessions (received
    now, so late), a minute of live ones, a few with an email (redacted), a few with invalid
    names and some raw garbage (dead letters); then rows of two other projects, one with an
    id built to break out of a quoted string, inserted straight into the events table."""
    p = make_pipeline(services, tmp_path_factory.mktemp("grafana"))
    try:
        p.start_worker()
        api = p.start_api()
        gen = EventGenerator(users=150, seed=7)
        now = datetime.now(UTC)
        start = _minute_floor(now - timedelta(minutes=75))
        backfill: list[dict[str, Any]] = []
        clock = start + timedelta(minutes=1)
        while clock < now - timedelta(minutes=20):
            backfill += gen.session(int(clock.timestamp() * 1000))
            clock += timedelta(seconds=9)
        # Live: sessions as they happen. The collector stamps received_at on arrival.
        live: list[dict[str, Any]] = []
        for _ in range(40):
            live += gen.session(int(time.time() * 1000))
        contact = [{"event": "contact_form", "user_id": f"user-{i}",
                    "properties": {"email": f"someone{i}@example.com", "country": "DE"}}
                   for i in range(5)]
        _post(api, sorted(backfill, key=lambda e: e["timestamp"]))
        _post(api, sorted(live, key=lambda e: e["timestamp"]) + contact)
        # The collector refuses an invalid name itself: a service writing to Kafka does not.
        raw = p.settings.kafka.topics.raw
        writer = BatchWriter(schemas.EVENT_BATCH, register(p.settings.registry.url, raw,
                                                           schemas.EVENT_BATCH))
        now_ms = int(time.time() * 1000)
        bad = [to_event({"event": "no!such#name", "user_id": "user-1"}, received_at_ms=now_ms)
               for _ in range(BAD_EVENTS)]
        producer = p.producer()
        producer.produce(raw, value=writer.encode(bad))
        for _ in range(GARBAGE_MESSAGES):
            producer.produce(raw, value=b"not avro at all")
        producer.flush(10)

        stored = len(backfill) + len(live) + len(contact)
        wait_for(lambda: p.stored() >= stored, 90, f"{stored} events stored")
        dead = BAD_EVENTS + GARBAGE_MESSAGES
        wait_for(lambda: p.scalar("SELECT count() FROM dlq FINAL") >= dead, 60, "dead letters")
        late = p.scalar("SELECT countIf(dateDiff('millisecond', ts, received_at)"
                        " > {s:UInt32} * 1000) FROM events FINAL", s=LATE_AFTER_S)
        # Every backfilled event was received 20 minutes or more after it happened, every
        # live one within seconds: the late count is known, nowhere near the threshold.
        assert late == len(backfill)

        old = start + timedelta(minutes=10)
        p.ch.insert("events", [
            [f"00000000-0000-4000-8000-00000000000{i}", project, "page_view", f"u{i}", old, old,
             {"path": "/"}, 1, 0, i, 0]
            for i, project in enumerate(["shop", "shop", HOSTILE_PROJECT])
        ], column_names=["event_id", "project_id", "event_name", "user_id", "ts", "received_at",
                         "properties", "schema_id", "_partition", "_offset", "_index"])

        newest = p.scalar("SELECT max(ts) FROM events")
        last = max(newest.replace(tzinfo=UTC), datetime.now(UTC))
        end = _minute_floor(last) + timedelta(minutes=2)
        seeded = Seeded(p, api, QueryRange(start, end, interval_s=60), stored, late,
                        Counter({"InvalidField": BAD_EVENTS, "FramingError": GARBAGE_MESSAGES}))
        seeded.panel_client = panel_client(p)

        def rollups_caught_up() -> bool:
            # The API answers counts from the rollups, flushed a moment after the rows land.
            answer = seeded.query_api({"kind": "breakdown", "dimensions": ["event_name"]})
            return bool(sum(r["events"] for r in answer["rows"]) == stored
                        and answer["source"].startswith("rollup:"))

        wait_for(rollups_caught_up, 60, "the rollups to hold every event")
        yield seeded
        seeded.panel_client.close()
    finally:
        p.close()


def variable_values(seeded: Seeded, board: dict[str, Any],
                    chosen: dict[str, str | list[str]]) -> dict[str, Variable]:
    """The dashboard's variables as Grafana would hold them: query variables' options come
    from running their own SQL (expanded, for the range), the current value from *chosen* or
    the dashboard's default."""
    out: dict[str, Variable] = {}
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            sql = expand(v["query"], seeded.range, out)
            _, _, rows = seeded.rows(sql)
            options = [str(r[0]) for r in rows]
        else:
            options = [o["value"] for o in v["options"]]
        current = chosen.get(v["name"], v["current"]["value"])
        out[v["name"]] = Variable(v["name"], current, options)
    return out


def run_panel(seeded: Seeded, q: Query, chosen: dict[str, str | list[str]] | None = None
              ) -> tuple[list[str], list[str], list[tuple[Any, ...]]]:
    board = dashboards()[q.board]
    values = variable_values(seeded, board, chosen or {})
    return seeded.rows(expand(q.sql, seeded.range, values, q.min_interval_s))


def shape_problems(q: Query, names: list[str], types: list[str],
                   rows: list[tuple[Any, ...]]) -> list[str]:
    """What keeps the plugin from drawing this result in the panel's format."""
    problems = []
    if q.fmt == TIME_SERIES:
        if names[:1] != ["time"] or not types[0].startswith("DateTime"):
            problems.append(f"a time series starts with a DateTime column `time`, got {names[:1]}"
                            f" {types[:1]}")
        times = [r[0] for r in rows]
        if times != sorted(times):
            problems.append("rows must be in ascending time (the long-to-wide conversion)")
        numeric = [n for n, t in zip(names[1:], types[1:], strict=True)
                   if re.match(r"(U?Int|Float|Decimal)", t)]
        if not numeric:
            problems.append(f"a time series needs a numeric column, got {types}")
        other = [t for t in types[1:]
                 if not re.match(r"(U?Int|Float|Decimal|String|LowCardinality)", t)]
        if other:
            problems.append(f"columns the plugin cannot use as value or label: {other}")
    if not names:
        problems.append("no columns")
    return problems


@pytest.mark.parametrize("q", ALL_QUERIES, ids=lambda q: f"{q.board}-{q.panel_id}{q.ref}")
def test_panel_sql_runs_and_fits_its_format(seeded: Seeded, q: Query) -> None:
    """Each panel, with the dashboard's default variables and with a narrower choice (two
    events; the shortest window or delay), returns rows whose shape its format needs."""
    narrower: dict[str, str | list[str]] = {"event": ["page_view", "signup"], "window": "3600",
                                            "late_after": "60"}
    for chosen in ({}, narrower):
        names, types, rows = run_panel(seeded, q, chosen)
        assert shape_problems(q, names, types, rows) == [], (q.name, chosen, names, types)
        assert rows, f"{q.name} shows nothing on the seeded data with {chosen}"


def test_variables_offer_only_values_that_quoting_keeps_inside_the_string(seeded: Seeded) -> None:
    """The project variable lists the projects with events, but not an id holding a quote or
    a backslash: through ${project:singlequote} that id would run as SQL, as this shows."""
    overview = dashboards()["overview"]
    values = variable_values(seeded, overview, {})
    assert values["project"].options == ["default", "shop"]
    assert set(values["event"].options) >= {"page_view", "button_click", "signup", "purchase"}
    assert "no!such#name" not in values["event"].options  # dead-lettered, never stored
    [events_panel] = [q for q in ALL_QUERIES if q.board == "overview" and q.title == "Events"]
    hostile = {**values, "project": Variable("project", HOSTILE_PROJECT)}
    sql = expand(events_panel.sql, seeded.range, hostile)
    _, _, [(count,)] = seeded.rows(sql)
    everything = seeded.pipeline.scalar("SELECT count() FROM events FINAL")
    assert count == everything > 1  # the injected OR 1=1 ran: every project's events


def _panel(board: str, title: str) -> Query:
    [q] = [q for q in ALL_QUERIES if q.board == board and q.title == title]
    return q


def test_overview_matches_the_query_api(seeded: Seeded) -> None:
    """Events by name, events per minute, unique users per hour and the country x device
    breakdown equal POST /v1/query's answers for the same range (the API rounds nothing: the
    range's ends are whole minutes and no event sits on its last second)."""
    _, _, rows = run_panel(seeded, _panel("overview", "Events by name"))
    grafana = {name: n for name, n in rows}
    answer = seeded.query_api({"kind": "breakdown", "dimensions": ["event_name"], "limit": 1000})
    api = {r["event_name"]: r["events"] for r in answer["rows"] if r["events"]}
    assert grafana == api and sum(api.values()) == seeded.stored

    _, _, rows = run_panel(seeded, _panel("overview", "Events"))
    assert rows == [(seeded.stored,)]

    _, _, rows = run_panel(seeded, _panel("overview", "Events per minute"))
    per_minute = {(t.replace(tzinfo=UTC), name): n for t, name, n in rows}
    names = sorted(api)
    answer = seeded.query_api({"kind": "timeseries", "events": names, "interval": "minute"})
    expected = {(datetime.fromisoformat(r["bucket"]), r["series"]): r["events"]
                for r in answer["rows"] if r["events"]}
    assert per_minute == expected

    _, _, rows = run_panel(seeded, _panel("overview", "Unique users per hour"))
    hourly = {t.replace(tzinfo=UTC): n for t, n in rows}
    answer = seeded.query_api({"kind": "timeseries", "series": [{"event": None}],
                               "metrics": ["users"], "interval": "hour"})
    assert hourly == {datetime.fromisoformat(r["bucket"]): r["users"]
                      for r in answer["rows"] if r["users"]}

    _, _, rows = run_panel(seeded, _panel("overview", "Unique users"))
    answer = seeded.query_api({"kind": "uniques"})
    assert rows == [(answer["rows"][0]["users"],)]

    _, _, rows = run_panel(seeded, _panel("overview", "Country × device type"))
    grafana_groups = {(c, d): (n, u) for c, d, n, u in rows}
    answer = seeded.query_api({"kind": "breakdown", "dimensions": ["country", "device_type"],
                               "metrics": ["events", "users"], "limit": 1000})
    none = {"$none": "(none)"}
    assert grafana_groups == {
        (none.get(r["country"], r["country"]), none.get(r["device_type"], r["device_type"])):
            (r["events"], r["users"]) for r in answer["rows"] if r["events"]}


def test_funnel_matches_the_query_api(seeded: Seeded) -> None:
    """windowFunnel over toDateTime(ts) gives the API's ordered funnel (its own definition,
    one arrayFold pass per user) the same users at every step, for two windows."""
    q = _panel("funnel", "Signup funnel")
    steps = [{"event": "page_view", "filters": ["is", "prop:path", ["/pricing"]]},
             "signup_start", "signup", "purchase"]
    for window in ("1209600", "3600"):
        _, _, rows = run_panel(seeded, q, {"window": window})
        answer = seeded.query_api({"kind": "funnel", "steps": steps, "window": int(window),
                                   "order": "ordered"})
        assert [(step, users) for step, users, _ in rows] == list(
            zip(FUNNEL_STEPS, [r["users"] for r in answer["rows"]], strict=True))
        assert rows[0][1] > rows[-1][1] > 0  # a funnel with drop-off and some purchases
        assert [c for _, _, c in rows] == [
            round(r["conversion_from_start"], 4) for r in answer["rows"]]


def test_live_matches_the_query_api(seeded: Seeded) -> None:
    """top_events_now counts the last five minute windows and the current one: the API's
    breakdown over the same instants gives the same counts (retried if a minute turns
    between the two reads)."""
    q = _panel("live", "Top events, last 5 minutes")
    for _ in range(3):
        minute = _minute_floor(datetime.now(UTC))
        _, _, rows = run_panel(seeded, q)
        response = httpx.post(f"{seeded.api}/v1/query", timeout=60, json={
            "kind": "breakdown", "dimensions": ["event_name"], "timezone": "UTC",
            "date_range": [(minute - timedelta(minutes=5)).isoformat(),
                           (minute + timedelta(minutes=1)).isoformat()]})
        if _minute_floor(datetime.now(UTC)) == minute:
            break
    api = {r["event_name"]: r["events"] for r in response.json()["rows"] if r["events"]}
    top = sorted(api.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert rows == top and rows
    _, _, [(users_1m, users_5m, users_15m, this_minute)] = run_panel(
        seeded, _panel("live", "Online now"))
    assert 0 < users_5m <= users_15m and this_minute >= 0 and users_1m <= users_5m

    # Another project's events of this very minute are its own: the board shows one project.
    now = datetime.now(UTC)
    seeded.pipeline.ch.insert("events", [
        [f"00000000-0000-4000-8000-0000000001{i:02d}", "shop", "shop_checkout", f"s{i}", now, now,
         {}, 1, 0, 100 + i, 0] for i in range(3)
    ], column_names=["event_id", "project_id", "event_name", "user_id", "ts", "received_at",
                     "properties", "schema_id", "_partition", "_offset", "_index"])
    _, _, default_rows = run_panel(seeded, q)
    _, _, shop_rows = run_panel(seeded, q, {"project": "shop"})
    assert "shop_checkout" not in dict(default_rows) and shop_rows == [("shop_checkout", 3)]
    _, _, [shop_now] = run_panel(seeded, _panel("live", "Online now"), {"project": "shop"})
    assert shop_now[2] == 3  # active users, 15 minutes


def _exposition(url: str) -> dict[str, set[str]]:
    """Metric names of a /metrics page and the label names their samples carry."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            labels.setdefault(line.split()[2], set())
        elif line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            name = name.split()[0]
            labels.setdefault(name, set()).update(re.findall(r"(\w+)=\"", rest))
    return labels


def test_pipeline_health_matches_the_api_and_the_worker(seeded: Seeded) -> None:
    """Arrivals over the range equal the API's event count (every seeded event was both sent
    and received inside it), late arrivals equal the backfilled events, dead letters by class
    equal the worker's counters (the API does not serve the DLQ), and each PromQL panel names
    metrics and labels the running worker or API exposes, with redactions among them."""
    arrivals = _panel("pipeline_health", "Arrivals and late arrivals per minute")
    _, _, rows = run_panel(seeded, arrivals, {"late_after": str(LATE_AFTER_S)})
    assert math.isclose(sum(r[1] for r in rows), seeded.stored)
    assert math.isclose(sum(r[2] for r in rows), seeded.late)
    answer = seeded.query_api({"kind": "breakdown", "dimensions": ["event_name"], "limit": 1000})
    assert sum(r["events"] for r in answer["rows"]) == seeded.stored

    _, _, rows = run_panel(seeded, _panel("pipeline_health",
                                          "Dead letters by stage and error class"))
    by_class = Counter({error_class: n for _, error_class, n, _ in rows})
    assert by_class == seeded.dead_letters
    worker = seeded.pipeline.urls["worker"]
    text = httpx.get(f"{worker}/metrics", timeout=10).text
    for error_class, n in seeded.dead_letters.items():
        assert re.search(rf'rearview_dead_letters_total\{{error_class="{error_class}",'
                         rf'stage="\w+"\}} {n}\n', text), error_class
    _, _, rows = run_panel(seeded, _panel("pipeline_health",
                                          "Dead letters per minute by error class"))
    assert {c for _, c, _ in rows} == set(seeded.dead_letters)
    # At a one-minute interval a bucket's letters per minute are its letters.
    assert math.isclose(sum(n for _, _, n in rows), sum(seeded.dead_letters.values()))

    exposed = _exposition(worker)
    for name, labels in _exposition(seeded.api).items():
        exposed.setdefault(name, set()).update(labels)
    assert "detector" in exposed["rearview_redactions_total"]  # the email was redacted
    for title, target in prometheus_targets(dashboards()["pipeline_health"]):
        expr = target["expr"]
        metrics = re.findall(r"\b(rearview_\w+)", expr)
        for metric in metrics:
            assert metric in exposed, (title, metric)
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (s.strip() for s in group.split(",")):
                assert any(label in exposed[m] for m in metrics), (title, label)
        for label in re.findall(r"\{\{(\w+)\}\}", target.get("legendFormat", "")):
            assert any(label in exposed[m] for m in metrics), (title, label)


def test_panels_never_write(seeded: Seeded) -> None:
    """The panel client is read-only, as Grafana's ClickHouse user is: a write is refused."""
    assert seeded.panel_client is not None
    with pytest.raises(Exception, match="(?i)readonly|read-only|cannot"):
        seeded.panel_client.command("CREATE TABLE grafana_probe (x UInt8) ENGINE = Memory")
