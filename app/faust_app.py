"""The Faust application for `rearview worker`, configured from Settings."""

from __future__ import annotations

import logging

import faust

from app.settings import Settings


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
    )
    # Faust's start-up can leave these at DEBUG; a log record per message costs 5-12%.
    for name in ("aiokafka", "faust", "mode"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Connection errors are retried and logged (throttled) by the agents themselves.
    for name in ("urllib3", "clickhouse_connect"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return app
