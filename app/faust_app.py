"""The Faust application for `rearview worker`, configured from Settings."""

from __future__ import annotations

import asyncio
import logging

import faust
import structlog

from app.settings import Settings

log = structlog.get_logger(__name__)

# What Rearview's own topics (clean, dlq) accept: raw's 1 MB plus room for headers and framing.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def broker_url(bootstrap_servers: str) -> str:
    return ";".join(f"kafka://{server.strip()}" for server in bootstrap_servers.split(","))


def create_app(settings: Settings, web_host: str = "127.0.0.1", web_port: int | None = None) -> faust.App:
    k = settings.kafka
    w = settings.worker
    w.data_dir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        w.app_id,
        broker=broker_url(k.bootstrap_servers),
        store="memory://",
        datadir=str(w.data_dir),
        # at_least_once: Faust's exactly_once needs an idempotent producer, which the embedded
        # broker lacks; every effect is made idempotent instead (see DESIGN.md).
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=k.session_timeout_ms / 1000,
        broker_heartbeat_interval=k.heartbeat_interval_ms / 1000,
        broker_commit_interval=1.0,
        topic_partitions=k.topics.partitions,
        topic_replication_factor=k.topics.replication_factor,
        web_enabled=True,
        web_bind=web_host,
        web_host=web_host,
        web_port=web_port or w.web_port,
        web_in_thread=False,
        # Kafka's default message limit is ~1 MB for raw messages; a clean block or a dead
        # letter carries one more header or a few KB of Arrow framing on top of that.
        producer_max_request_size=MAX_MESSAGE_BYTES,
    )
    # Faust's start-up can leave these at DEBUG; a log record per message costs 5-12%.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Connection errors are retried and logged (throttled) by the agents themselves.
    for name in ("urllib3", "clickhouse_connect"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    install_fetch_wait(app, k.fetch_max_wait_ms)
    return app


def install_fetch_wait(app: faust.App, fetch_max_wait_ms: int) -> None:
    """Apply ``kafka.fetch_max_wait_ms`` to the worker's consumer.

    Faust builds its aiokafka consumer with a fixed ``fetch_max_wait_ms=1500`` and offers no
    setting for it. Once the consumer exists, this sets the value aiokafka's fetcher reads for
    every fetch request. Guarded: if a Faust or aiokafka upgrade renames these internals, the
    worker logs it and keeps Faust's default.
    """

    @app.task
    async def set_fetch_wait() -> None:
        for _ in range(600):
            consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
            fetcher = getattr(consumer, "_fetcher", None)
            if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
                fetcher._fetch_max_wait_ms = fetch_max_wait_ms
                return
            await asyncio.sleep(0.1)
        log.warning("fetch_max_wait_not_applied", wanted_ms=fetch_max_wait_ms)
