"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a real
`rearview api` and worker on seeded events.

What a page drew is read back from the page itself (the cells of its tables, the data its
ECharts charts hold, exposed as `window.rearview`) and compared with the API's own answer to
the same query, asked by the test over HTTP. A relative range ("7d") is resolved by the API
when asked, so the test asks again with the instants the page's answer resolved it to.

One pipeline, API and browser serve the whole module. Screenshots of every page go to
test-artifacts/screenshots/. Without Chromium the module is skipped locally (the reason says
how to install it) and fails on CI (the CI environment variable set), never skips there.
"""

from __future__ import annotations

import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest

from app.dashboard import pipeline_health
from app.generate import EventGenerator
from tests.integration.conftest import Pipeline, Services, make_pipeline, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
TIMEZONE = "Europe/Berlin"  # the browser's: pages ask for it unless told otherwise
OTHER = "$other"
BAD_DATA = [b"not an avro message", b"\x00\x00\x00\x00", b"{\"json\": \"is not avro\"}"]


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _unavailable(reason: str) -> None:
    if _on_ci():
        pytest.fail(f"{reason} (CI is set: browser tests must run, not skip)")
    pytest.skip(reason)


def chromium_path() -> str:
    """Debian's chromium, or a skip (a failure on CI) saying how to install it."""
    path = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if path is None:
        _unavailable("Chromium is not installed: run `apt-get install -y chromium` (Debian's package;"
                     " Playwright's own browser download is not used)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _unavailable("Playwright for Python is not installed: pip install -e '.[test]'")
    assert path is not None
    return path


# --- the seeded pipeline -------------------------------------------------------------------------

def seed_events(now_s: float) -> list[dict[str, Any]]:
    """Deterministic demo traffic (app.generate, seeded): sessions on each of the last seven
    days, so retention has cohorts, and many in the last hour, all in the past."""
    generator = EventGenerator(users=250, seed=20261201)
    times = random.Random(7)
    starts = [now_s - days * 86_400 - times.uniform(0, 6 * 3600) for days in range(1, 8) for _ in range(40)]
    starts += [now_s - times.uniform(5 * 60, 55 * 60) for _ in range(260)]
    events: list[dict[str, Any]] = []
    for start in sorted(starts):
        events += generator.session(int(start * 1000))
    return events


@dataclass
class Dashboard:
    pipeline: Pipeline
    url: str
    seeded: int

    def query(self, body: dict[str, Any]) -> dict[str, Any]:
        response = httpx.post(f"{self.url}/v1/query", json=body, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()

    def track(self, events: list[dict[str, Any]]) -> None:
        for i in range(0, len(events), 500):
            response = httpx.post(f"{self.url}/v1/batch", json={"events": events[i:i + 500]}, timeout=30)
            assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def dash(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    chromium_path()  # no pipeline for a module that cannot run
    p = make_pipeline(services, tmp_path_factory.mktemp("dashboard"))
    try:
        p.start_worker()
        health = p.settings.dashboard.model_copy(update={"worker_metrics_urls": [f"{p.urls['worker']}/metrics"]})
        p.settings = p.settings.model_copy(update={"dashboard": health})
        d = Dashboard(p, p.start_api(), 0)
        events = seed_events(time.time())
        # One event with personal data (redacted by the worker) and a few messages the
        # worker cannot decode (dead-lettered): the live page's pipeline health shows them.
        events.append({"event": "contact", "user_id": "user-1", "timestamp": int(time.time() * 1000) - 60_000,
                       "event_id": str(uuid.UUID(int=1, version=4)),
                       "properties": {"message": "write to jane.doe@example.com"}})
        d.track(events)
        producer = p.producer()
        for value in BAD_DATA:
            producer.produce(p.settings.kafka.topics.raw, value=value)
        producer.flush(10)
        d.seeded = len(events)
        wait_for(lambda: p.stored() == d.seeded, 90, f"{d.seeded} events stored")

        def rollups_caught_up() -> bool:
            body = {"kind": "breakdown", "dimensions": ["event_name"], "date_range": "all", "source": "rollup"}
            return sum(r["events"] for r in d.query(body)["rows"]) == d.seeded

        wait_for(rollups_caught_up, 60, "the rollups to hold every seeded event")
        wait_for(lambda: p.scalar("SELECT count() FROM dlq FINAL") >= len(BAD_DATA), 60, "dead letters")
        yield d
    finally:
        p.close()


# --- the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        instance = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield instance
        finally:
            instance.close()
    finally:
        playwright.stop()


@dataclass
class Tab:
    """One page in its own browser context, with every console error it logged."""

    page: Any
    base: str
    errors: list[str] = field(default_factory=list)

    def open(self, path: str) -> None:
        self.page.goto(self.base + path)

    def rv(self, expression: str) -> Any:
        """*expression* evaluated with `rv` bound to the page's window.rearview."""
        return self.page.evaluate(f"() => {{ const rv = window.rearview; return {expression}; }}")

    def settled(self, *panels: str, timeout_s: float = 30) -> None:
        """Wait until each panel has drawn an answer (ready or empty) or shown an error."""
        self.page.wait_for_function(
            "(names) => window.rearview && names.every((n) => ['ready', 'empty', 'error'].includes(window.rearview.status[n]))",
            arg=list(panels), timeout=timeout_s * 1000)

    def ready(self, *panels: str) -> None:
        self.settled(*panels)
        status = self.rv("rv.status")
        errors = self.rv("rv.errors")
        assert all(status[p] == "ready" for p in panels), (status, errors)

    def wait(self, predicate_js: str, timeout_s: float = 30) -> None:
        self.page.wait_for_function(f"() => {{ const rv = window.rearview; return {predicate_js}; }}",
                                    timeout=timeout_s * 1000)

    def sent(self, panel: str, body: dict[str, Any], timeout_s: float = 30) -> None:
        """Wait until *panel*'s last request is *body* and its answer is drawn."""
        wait_for(lambda: self.rv(f"rv.requests[{panel!r}]") == body
                 and self.rv(f"rv.status[{panel!r}]") in ("ready", "empty", "error"),
                 timeout_s, f"{panel} to send {body}")
        assert self.rv(f"rv.status[{panel!r}]") == "ready", self.rv("rv.errors")

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(600)  # the charts' draw animation
        self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def tab(browser: Any, dash: Dashboard) -> Iterator[Tab]:
    with new_tab(browser, dash) as t:
        yield t


@contextmanager
def new_tab(browser: Any, dash: Dashboard) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1366, "height": 900}, timezone_id=TIMEZONE, locale="en-US")
    page = context.new_page()
    t = Tab(page, dash.url)
    page.on("console", lambda m: t.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: t.errors.append(f"uncaught: {e}"))
    try:
        yield t
    finally:
        context.close()


# --- what a page drew ----------------------------------------------------------------------------

def absolute(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """*body* with its range replaced by the instants the API resolved it to in *answer*."""
    resolved = answer["query"]["date_range"]
    return {**body, "date_range": [resolved["from"], resolved["to"]]}


def key(row: dict[str, Any], dims: list[str]) -> str:
    return " · ".join(str(row[d]) for d in dims)


def shown(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a page draws: `$other` only when groups were folded into it."""
    dims = answer["query"]["dimensions"]
    return [r for r in answer["rows"] if answer["meta"]["truncated"] or any(r[d] != OTHER for d in dims)]


def table_rows(tab: Tab, selector: str) -> list[dict[str, str]]:
    """Each row of the table under *selector*: column -> the raw value its cell holds."""
    return tab.page.evaluate(
        """(sel) => [...document.querySelectorAll(`${sel} tbody tr`)].map((tr) =>
             Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map((td) => [td.dataset.col, td.dataset.value])))""",
        selector)


def js_string(value: Any) -> str:
    """*value* as JavaScript's String() writes it (how a cell's data-value holds it)."""
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def series_by_id(data: dict[str, Any]) -> dict[str, list[Any]]:
    return {s["id"]: s["data"] for s in data["series"]}


def build_breakdown(tab: Tab) -> dict[str, Any]:
    """In Explore, through the controls: page views, broken down by country and device type,
    top 5 groups, browsers other than Edge. Returns the body the page should send."""
    tab.open("/explore")
    tab.ready("lines", "totals")
    page = tab.page
    page.fill("#event-input", "page_view")
    page.press("#event-input", "Enter")
    for dimension in ("country", "device_type"):
        page.fill("#breakdown-input", dimension)
        page.press("#breakdown-input", "Enter")
    page.fill("#limit", "5")
    page.press("#limit", "Tab")
    page.click("#filter-add")
    page.fill("#filter-dim", "browser")
    page.select_option("#filter-op", "is_not")
    page.fill("#filter-values", "edge")
    page.click("#filter-apply")
    expected = {"kind": "breakdown", "events": ["page_view"], "metrics": ["events"],
                "dimensions": ["country", "device_type"], "limit": 5, "date_range": "7d",
                "timezone": TIMEZONE, "filters": ["is_not", "browser", ["edge"]]}
    tab.sent("totals", expected)
    tab.sent("lines", {**expected, "interval": "day"})
    return expected


def drawn_explore(tab: Tab) -> dict[str, Any]:
    return {"requests": tab.rv("rv.requests"), "lines": tab.rv("rv.chartData('lines')"),
            "bars": tab.rv("rv.chartData('bars')"), "table": table_rows(tab, "#table")}


# --- the tests -----------------------------------------------------------------------------------

PAGES = {
    "/": ("overview", ["minutes", "countries", "funnel", "live"]),
    "/explore": ("explore", ["lines", "totals"]),
    "/funnel": ("funnel", ["funnel"]),
    "/retention": ("retention", ["retention"]),
    "/live": ("live", ["minutes", "live", "pipeline"]),
}


def test_every_page_draws_the_seeded_events_without_console_errors(tab: Tab, dash: Dashboard) -> None:
    for path, (name, panels) in PAGES.items():
        tab.open(path)
        tab.ready(*panels)
        tab.screenshot(name)
    assert tab.errors == []
    # The landing page: the live tiles, and a link to every other page.
    tab.open("/")
    tab.ready("live", "minutes", "countries", "funnel")
    assert "Online now" in tab.page.content()
    assert tab.rv("rv.answers.live.active_users['15m']") > 0
    links = tab.page.eval_on_selector_all("a[href]", "as => as.map((a) => new URL(a.href).pathname)")
    assert {"/explore", "/funnel", "/retention", "/live"} <= set(links)
    funnel = tab.rv("rv.chartData('funnel')")["series"][0]["data"]
    assert [s["name"] for s in funnel] == ["Pricing page", "Signup started", "Signed up", "Purchased"]
    assert funnel[0]["value"] > funnel[-1]["value"] > 0
    # Retention: a cohort for each seeded day, each with users.
    tab.open("/retention")
    tab.ready("retention")
    sizes = [int(v) for v in tab.page.eval_on_selector_all(
        "#cohorts td[data-col=cohort_size]", "tds => tds.map((td) => td.dataset.value)")]
    assert len(sizes) == 7 and all(n > 0 for n in sizes[:-1])
    assert tab.errors == []


def test_a_breakdown_built_in_the_ui_draws_the_apis_numbers(tab: Tab, dash: Dashboard) -> None:
    expected = build_breakdown(tab)
    drawn = drawn_explore(tab)
    assert drawn["requests"]["totals"] == expected
    totals = dash.query(absolute(expected, tab.rv("rv.answers.totals")))
    assert totals["meta"]["truncated"]  # 12 countries x 3 devices: more than 5 groups
    dims = expected["dimensions"]
    rows = shown(totals)
    # The table: one row per group, with the API's number, $other last.
    assert [(r["country"], r["device_type"], int(r["events"])) for r in drawn["table"]] == \
           [(r["country"], r["device_type"], r["events"]) for r in rows]
    assert rows[-1]["country"] == OTHER and rows[-1]["events"] > 0
    # The bar chart: the same groups, in the same order, with the same numbers.
    assert drawn["bars"]["y"] == [key(r, dims) for r in rows]
    assert drawn["bars"]["series"][0]["data"] == [r["events"] for r in rows]
    # The line chart: one line per group, a point per day.
    lines_body = drawn["requests"]["lines"]
    assert lines_body == {**expected, "interval": "day"}
    lines = dash.query(absolute(lines_body, tab.rv("rv.answers.lines")))
    want: dict[str, list[int]] = {}
    for r in shown(lines):
        want.setdefault(key(r, dims), []).append(r["events"])
    assert series_by_id(drawn["lines"]) == want
    assert len(drawn["lines"]["x"]) == len(next(iter(want.values())))
    # Which table answered, and whether figures are exact, are shown.
    source = tab.page.get_attribute("#bars-meta [data-source]", "data-source")
    assert source == totals["source"] == "events"  # the browser filter: no rollup holds it
    assert tab.page.get_attribute("#bars-meta [data-approximate]", "data-approximate") == "false"
    tab.screenshot("explore-breakdown")
    assert tab.errors == []


def test_a_shared_explore_url_restores_the_same_chart(browser: Any, tab: Tab, dash: Dashboard) -> None:
    build_breakdown(tab)
    url = tab.page.url
    assert "by=country" in url and "by=device_type" in url
    before = drawn_explore(tab)
    with new_tab(browser, dash) as opened:  # someone else opens the link, in a fresh context
        opened.page.goto(url)
        opened.ready("lines", "totals")
        after = drawn_explore(opened)
        assert after["requests"] == before["requests"]
        assert after["table"] == before["table"] and after["bars"] == before["bars"]
        assert after["lines"] == before["lines"]
        chips = opened.page.eval_on_selector_all("#breakdown .chip", "cs => cs.map((c) => c.dataset.value)")
        assert chips == ["country", "device_type"]
        opened.page.reload()
        opened.ready("lines", "totals")
        assert drawn_explore(opened)["requests"] == before["requests"]
        assert opened.errors == []
    assert tab.errors == []


def test_a_funnel_built_in_the_ui_counts_what_the_api_counts(tab: Tab, dash: Dashboard) -> None:
    tab.open("/funnel?step=page_view&step=button_click&range=7d")
    tab.ready("funnel")
    page = tab.page
    step = page.locator(".step")
    # Step 1: page views of the pricing page; step 2: signup_start; a third step: signup.
    step.nth(0).locator("button.link").click()
    step.nth(0).locator("input.dim").fill("path")
    step.nth(0).locator("select").select_option("is")
    step.nth(0).locator("input.values").fill("/pricing")
    step.nth(0).locator("button.primary").click()
    step.nth(1).locator("input.event").fill("signup_start")
    step.nth(1).locator("input.event").press("Tab")
    page.click("#add-step")
    step.nth(2).locator("input.event").fill("signup")
    step.nth(2).locator("input.event").press("Tab")
    page.fill("#window-n", "1")
    page.select_option("#window-unit", "h")
    expected = {"kind": "funnel",
                "steps": [{"event": "page_view", "filters": ["is", "prop:path", ["/pricing"]]},
                          {"event": "signup_start"}, {"event": "signup"}],
                "window": "1h", "order": "ordered", "date_range": "7d", "timezone": TIMEZONE}
    tab.sent("funnel", expected)
    answer = dash.query(absolute(expected, tab.rv("rv.answers.funnel")))
    users = [r["users"] for r in answer["rows"]]
    assert users[0] > users[1] > users[2] > 0
    chart = tab.rv("rv.chartData('funnel')")["series"][0]["data"]
    assert [s["value"] for s in chart] == users
    assert [s["name"] for s in chart] == ["page_view", "signup_start", "signup"]
    table = table_rows(tab, "#table")
    columns = ("step", "label", "users", "drop_off", "conversion_from_start", "conversion_from_previous",
               "median_time_to_convert_s")
    assert [{c: r[c] for c in columns} for r in table] == \
           [{c: js_string(r[c]) for c in columns} for r in answer["rows"]]
    tab.screenshot("funnel-three-steps")
    assert tab.errors == []


def test_the_live_page_updates_itself_when_events_arrive(tab: Tab, dash: Dashboard) -> None:
    tab.open("/live")
    tab.ready("minutes", "live", "pipeline")
    # Pipeline health: the worker answers; the undecodable messages and the email are shown.
    health = tab.rv("rv.answers.pipeline")
    jsonschema.validate(health, pipeline_health.SCHEMA)
    assert health["workers_reachable"] == 1
    assert health["dead_letters"]["total"] >= len(BAD_DATA)
    assert {r["detector"]: r["count"] for r in health["redactions"]}.get("email", 0) >= 1
    assert int(tab.page.get_attribute("#dlq-total", "data-value") or 0) >= len(BAD_DATA)
    assert tab.page.get_attribute("#workers", "data-value") == "1"
    assert tab.rv("rv.chartData('dlq')")["series"], "dead letters per minute by error class"
    # New events, of an event name never seen before: the page shows them by itself.
    now = int(time.time() * 1000)
    dash.track([{"event": "live_check", "user_id": f"live-{i}", "timestamp": now - 1000 + i,
                 "properties": {"country": "DE"}} for i in range(40)])
    tab.wait("!!document.querySelector('#top-events li[data-event=live_check][data-count=\"40\"]')", timeout_s=60)
    tab.wait("(rv.chartData('minutes').series.find((s) => s.id === 'live_check') || {data: []})"
             ".data.reduce((a, b) => a + b, 0) === 40", timeout_s=60)
    tab.screenshot("live")
    assert tab.errors == []


def test_a_refused_query_shows_the_apis_error_and_an_empty_range_says_so(tab: Tab, dash: Dashboard) -> None:
    tab.open("/explore?by=prop:no%20spaces%20allowed&range=7d")
    tab.settled("lines", "totals")
    assert tab.rv("rv.status.totals") == "error"
    refused = httpx.post(f"{dash.url}/v1/query", json=tab.rv("rv.requests.totals"), timeout=30)
    assert refused.status_code == 400
    message = refused.json()["error"]
    assert tab.page.locator("#notice").inner_text() == message  # shown once, as the API wrote it
    assert "The query was refused" in tab.page.locator("#bars-card .panel-state").inner_text()
    tab.screenshot("explore-refused")
    # The browser logs each refused request; nothing else may be logged.
    assert tab.errors and all("status of 400" in e for e in tab.errors), tab.errors
    tab.errors.clear()
    tab.open("/explore?range=2020-01-01..2020-01-02")
    tab.settled("lines", "totals")
    assert tab.rv("rv.status.totals") == "empty"
    assert "No events in this range" in tab.page.locator("#bars-card .panel-state").inner_text()
    assert tab.page.locator("#notice").is_hidden()
    assert tab.errors == []
