"""The dashboard: five pages over the query API, and the pipeline-health endpoint.

    /            overview: demo traffic as a line, a bar and a funnel chart, the live tiles
    /explore     insights: events, metric, interval, range, timezone, filters, breakdowns
    /funnel      funnels: steps, conversion window, order, breakdown
    /retention   cohort table with a colour scale
    /live        online now, events per minute, top events, pipeline health
    /static/...  the pages' ES modules, CSS and the vendored Apache ECharts
    /v1/pipeline dead letters, consumer lag and redactions (pipeline_health.py)

A page is plain HTML and ES modules, with no build step: `layout.html` holds what every page
shares (head, navigation), `pages/<name>.html` its body, `static/<name>.js` its script. Every
figure a page draws comes from the API (`POST /v1/query`, discovery, `GET /v1/live`,
`GET /v1/pipeline`), never from SQL of its own, so a chart shows exactly what any other client
of the API gets. Each page exposes what it drew as `window.rearview` (requests, answers,
chart data) for the browser tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from aiohttp import web

from app.dashboard import pipeline_health
from app.settings import Settings

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
PAGES_DIR = HERE / "pages"


@dataclass(frozen=True)
class Page:
    path: str
    name: str  # pages/<name>.html and static/<name>.js
    title: str


PAGES = (
    Page("/", "index", "Overview"),
    Page("/explore", "explore", "Explore"),
    Page("/funnel", "funnel", "Funnels"),
    Page("/retention", "retention", "Retention"),
    Page("/live", "live", "Live"),
)


def _version() -> str:
    """A digest of the static files: changes whenever one does, so browsers fetch anew."""
    digest = hashlib.sha256()
    for path in sorted(STATIC.rglob("*")):
        if path.is_file() and path.suffix in {".js", ".css"}:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def render(page: Page, version: str) -> str:
    """The page's HTML: the shared layout around its body."""
    active = ' class="active" aria-current="page"'
    nav = "\n".join(f'<a href="{p.path}"{active if p == page else ""}>{escape(p.title)}</a>'
                    for p in PAGES)
    body = (PAGES_DIR / f"{page.name}.html").read_text()
    layout = (HERE / "layout.html").read_text()
    for key, value in (("title", escape(page.title)), ("nav", nav), ("page", page.name),
                       ("version", version), ("body", body)):
        layout = layout.replace("{{" + key + "}}", value)
    return layout


async def _static(request: web.Request) -> web.StreamResponse:
    path = (STATIC / request.match_info["path"]).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file():
        raise web.HTTPNotFound()
    # Revalidated on every load (a 304 when unchanged): an upgrade never runs stale scripts.
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})


def add_routes(app: web.Application, settings: Settings) -> None:
    """Register the pages, their static files and `GET /v1/pipeline` on *app*."""
    version = _version()
    for page in PAGES:
        html = render(page, version)

        async def handler(_request: web.Request, html: str = html) -> web.Response:
            return web.Response(text=html, content_type="text/html",
                                headers={"Cache-Control": "no-cache"})

        app.router.add_get(page.path, handler)
    app.router.add_get("/static/{path:.+}", _static)
    pipeline_health.add_routes(app, settings)


def openapi_paths() -> dict[str, Any]:
    """The OpenAPI path items of the routes `add_routes` registers (app/openapi.py adds them)."""
    error = {"$ref": "#/components/schemas/Error"}
    html = {"description": "An HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}
    paths: dict[str, Any] = {
        page.path: {"get": {"summary": f"Dashboard: {page.title}", "tags": ["service"],
                            "operationId": f"dashboard{page.title}", "responses": {"200": html}}}
        for page in PAGES
    }
    paths["/static/{path}"] = {"get": {
        "summary": "The dashboard's scripts, stylesheet and vendored Apache ECharts",
        "tags": ["service"], "operationId": "dashboardStatic",
        "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
        "responses": {
            "200": {"description": "The file (revalidated on each load: `Cache-Control: no-cache`).",
                    "content": {"*/*": {"schema": {"type": "string"}}}},
            "404": {"description": "No such file.", "content": {"application/json": {"schema": error}}},
        },
    }}
    paths["/v1/pipeline"] = {"get": {
        "summary": "Pipeline health",
        "description": "Dead letters per minute by error class (the dlq table), consumer lag and"
                       " redactions by detector (each worker's /metrics). A worker or ClickHouse"
                       " that cannot be read is reported in the answer: never a 500.",
        "tags": ["service"], "operationId": "pipelineHealth",
        "responses": {"200": {"description": "app/dashboard/pipeline_health.py gives the shape.",
                              "content": {"application/json": {"schema": pipeline_health.SCHEMA}}}},
    }}
    return paths
