"""`rearview worker`: the Faust worker running the validate and sink agents."""

from __future__ import annotations

import faust
import structlog

from agents.sink import EventsWriter
from agents.validate import Validator
from agents.worker import WorkerDeps, install
from app import clickhouse
from app.faust_app import create_app
from app.schema_registry import SchemaCache
from app.settings import Settings

log = structlog.get_logger(__name__)


def build(settings: Settings, web_host: str, web_port: int) -> tuple[faust.App, WorkerDeps]:
    topics = settings.kafka.topics
    w = settings.worker
    deps = WorkerDeps(
        validator=Validator(),
        schemas=SchemaCache(settings.registry.url, w.retry_initial_s, w.retry_max_s),
        events_writer=EventsWriter(
            lambda: clickhouse.connect(
                settings.clickhouse, send_receive_timeout=settings.clickhouse.insert_timeout_s
            )
        ),
        raw_topic=topics.raw,
        clean_topic=topics.clean,
        dlq_topic=topics.dlq,
        take_max=w.take_max,
        take_within_s=w.take_within_s,
        retry_initial_s=w.retry_initial_s,
        retry_max_s=w.retry_max_s,
    )
    app = create_app(settings, web_host, web_port)
    install(app, deps)

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        c = deps.counters
        return web.json(
            {"status": "ok", "raw_messages": c.read, "clean_events": c.clean,
             "dead_letters": c.dead, "inserted_rows": c.inserted}
        )

    return app, deps


def run(settings: Settings, host: str, port: int) -> None:
    app, _ = build(settings, host, port)
    log.info("worker_starting", app_id=settings.worker.app_id, web=f"http://{host}:{port}/health")
    worker = faust.Worker(app, loglevel="WARN", quiet=True)
    worker.execute_from_commandline()
