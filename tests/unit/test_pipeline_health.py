"""GET /v1/pipeline without services: the metrics parser, and what it answers when the worker
and ClickHouse it observes are down (a 200 saying so, never a 500)."""

from __future__ import annotations

from typing import Any

import jsonschema
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from app.auth import PRINCIPAL, Principal
from app.dashboard import pipeline_health
from app.embedded.process import free_port
from app.metrics import Metric, render
from app.settings import Settings


def test_the_parser_reads_what_the_worker_renders() -> None:
    text = render([
        Metric("rearview_consumer_lag", "lag", kind="gauge").add(7, topic="events.raw", partition="3")
        .add(0, topic="events.raw", partition="10"),
        Metric("rearview_redactions_total", "r").add(2, detector="email").add(1, detector='we"ird\\n'),
        Metric("rearview_dead_letters_total", "d").add(4, stage="decode", error_class="FramingError"),
        Metric("rearview_events_validated_total", "v").add(1200),
    ]) + "not a sample line\nrearview_odd{x=\"1\"} NaN\n"
    samples = pipeline_health.parse_metrics(text)
    assert {(s.name, tuple(sorted(s.labels.items())), s.value) for s in samples if s.name != "rearview_odd"} == {
        ("rearview_consumer_lag", (("partition", "3"), ("topic", "events.raw")), 7.0),
        ("rearview_consumer_lag", (("partition", "10"), ("topic", "events.raw")), 0.0),
        ("rearview_redactions_total", (("detector", "email"),), 2.0),
        ("rearview_redactions_total", (("detector", 'we"ird\\n'),), 1.0),
        ("rearview_dead_letters_total", (("error_class", "FramingError"), ("stage", "decode")), 4.0),
        ("rearview_events_validated_total", (), 1200.0),
    }
    health = pipeline_health.worker_health("http://user:secret@127.0.0.1:6066/metrics", samples)
    assert health["url"] == "http://127.0.0.1:6066/metrics"  # no credentials shown
    assert health["consumer_lag"] == [{"topic": "events.raw", "partition": 3, "lag": 7},
                                      {"topic": "events.raw", "partition": 10, "lag": 0}]
    assert health["redactions"] == {"email": 2, 'we"ird\\n': 1}
    assert (health["dead_letters"], health["events_validated"]) == (4, 1200)


def test_the_default_worker_url_follows_the_worker_port() -> None:
    settings = Settings()
    port = settings.worker.web_port
    assert pipeline_health.metrics_urls(settings) == [f"http://127.0.0.1:{port}/metrics"]
    custom = settings.model_copy(update={"dashboard": settings.dashboard.model_copy(
        update={"worker_metrics_urls": ["http://w1:6066/metrics", "http://w2:6066/metrics"]})})
    assert pipeline_health.metrics_urls(custom) == ["http://w1:6066/metrics", "http://w2:6066/metrics"]


async def test_a_worker_and_clickhouse_that_do_not_answer_are_reported_not_a_500() -> None:
    base = Settings()
    closed = free_port()  # nothing listens there
    settings = base.model_copy(update={
        "clickhouse": base.clickhouse.model_copy(update={"url": f"http://127.0.0.1:{free_port()}"}),
        "dashboard": base.dashboard.model_copy(update={
            "worker_metrics_urls": [f"http://127.0.0.1:{closed}/metrics"], "scrape_timeout_s": 1.0}),
    })

    @web.middleware
    async def operator(request: web.Request, handler: Any) -> web.StreamResponse:
        request[PRINCIPAL] = Principal(settings.project_id, "admin", None)  # keys off
        return await handler(request)

    app = web.Application(middlewares=[operator])
    pipeline_health.add_routes(app, settings)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/v1/pipeline")
        assert response.status == 200
        body = await response.json()
    assert body["workers_total"] == 1 and body["workers_reachable"] == 0
    worker = body["workers"][0]
    assert worker["reachable"] is False and worker["error"]
    assert worker["url"] == f"http://127.0.0.1:{closed}/metrics"
    assert body["consumer_lag"] == {"total": 0, "partitions": []}
    assert body["dead_letters"]["error"].startswith("the dlq table could not be read")
    assert body["dead_letters"]["total"] is None
    jsonschema.validate(body, pipeline_health.SCHEMA)  # what GET /openapi.json says it answers
