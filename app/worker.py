"""`rearview worker`: the Faust worker running the validate and sink agents."""

from __future__ import annotations

import faust
import structlog
from clickhouse_connect.driver.client import Client

from agents.sink import EventsWriter
from agents.validate import Validator
from agents.rollup import RollupDeps, RollupWriter
from agents.rollup import install as install_rollups
from agents.worker import WorkerDeps, install
from app import clickhouse
from app.faust_app import create_app
from app.schema_registry import SchemaCache
from app.settings import Settings
from tables.aggregate import Aggregator

log = structlog.get_logger(__name__)


def build(settings: Settings, web_host: str, web_port: int) -> tuple[faust.App, WorkerDeps]:
    topics = settings.kafka.topics
    w = settings.worker

    def ch_client() -> Client:
        return clickhouse.connect(
            settings.clickhouse, send_receive_timeout=settings.clickhouse.insert_timeout_s
        )

    deps = WorkerDeps(
        validator=Validator(),
        schemas=SchemaCache(settings.registry.url, w.retry_initial_s, w.retry_max_s),
        events_writer=EventsWriter(ch_client),
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
    rollups = None
    if settings.aggregate.enabled and settings.aggregate.rollups:
        specs = tuple(settings.aggregate.rollups)
        rollups = RollupDeps(
            aggregator=Aggregator(specs),
            writer=RollupWriter(ch_client, specs),
            clean_topic=topics.clean,
            partitions=settings.kafka.topics.partitions,
            take_max=w.take_max,
            take_within_s=w.take_within_s,
            flush_interval_s=settings.aggregate.flush_interval_s,
            retry_initial_s=w.retry_initial_s,
            retry_max_s=w.retry_max_s,
        )
        install_rollups(app, rollups)

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        c = deps.counters
        body: dict[str, object] = {
            "status": "ok", "raw_messages": c.read, "clean_events": c.clean,
            "dead_letters": c.dead, "inserted_rows": c.inserted,
        }
        if rollups is not None:
            r = rollups.counters
            body["rollups"] = {"applied": r.applied, "skipped_redelivered": r.skipped,
                               "late_events": r.late, "flushes": r.flushes,
                               "partials_written": r.keys_written}
        return web.json(body)

    return app, deps


def run(settings: Settings, host: str, port: int) -> None:
    app, _ = build(settings, host, port)
    log.info("worker_starting", app_id=settings.worker.app_id, web=f"http://{host}:{port}/health")
    worker = faust.Worker(app, loglevel="WARN", quiet=True)
    worker.execute_from_commandline()
