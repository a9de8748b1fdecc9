"""The real embedded services, started once per test session on free loopback ports.

Every test that uses `pipeline` gets its own topics, ClickHouse database and consumer group
on those shared services, so tests do not see each other's events. Every process a fixture
starts is stopped by its pid when the fixture ends.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, Producer

import schemas
from agents.codec import BatchWriter
from agents.schema_registry import register
from app import clickhouse
from app.collector.normalize import to_event
from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.process import ChildProcess, free_port, http_ready, python_module, tcp_ready
from app.settings import Settings, to_env
from tables.migrate import migrate
from tables.rollup_tables import ensure_tables

HOST = "127.0.0.1"
# A group join on the embedded broker takes half the session timeout (DESIGN.md): 1 s with
# these instead of 3 s with the defaults, at every worker start and rebalance of the suite.
QUICK_GROUPS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 400}


def wait_for(predicate: Callable[[], Any], timeout_s: float = 60, what: str = "condition",
             describe: Callable[[], str] | None = None) -> Any:
    """Poll *predicate* until it is truthy; on timeout, fail with *describe()* (what was seen)
    or the predicate's last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.2)
    seen = describe() if describe is not None else repr(last)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {seen})")


class NotYet:
    """Why a pipeline has not converged yet: falsy, so `wait_for` keeps polling and shows it."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.why


@dataclass
class Services:
    settings: Settings
    tmp: Path
    children: dict[str, ChildProcess]


def _start(name: str, argv: list[str], ready: Callable[[], bool], tmp: Path, env: dict[str, str]) -> ChildProcess:
    child = ChildProcess(name, argv, ready, env=env, log_path=tmp / f"{name}.log")
    child.start()
    try:
        child.wait_ready(90)
    except Exception:
        child.stop()
        raise
    return child


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    tmp = tmp_path_factory.mktemp("services")
    ports = {name: free_port() for name in ("broker", "registry", "clickhouse")}
    base = Settings()
    settings = base.model_copy(
        update={
            # Keys off for the tests that are not about keys (test_auth.py turns them on).
            "auth": base.auth.model_copy(update={"required": False}),
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": f"{HOST}:{ports['broker']}",
                                                   **QUICK_GROUPS}),
            "registry": base.registry.model_copy(update={"url": f"http://{HOST}:{ports['registry']}"}),
            "clickhouse": base.clickhouse.model_copy(update={"url": f"http://{HOST}:{ports['clickhouse']}"}),
        }
    )
    env = to_env(settings)
    children: dict[str, ChildProcess] = {}
    try:
        children["broker"] = _start(
            "broker", python_module("app.cli", "broker", "--host", HOST, "--port", str(ports["broker"])),
            tcp_ready(HOST, ports["broker"]), tmp, env)
        children["registry"] = _start(
            "registry", python_module("app.cli", "registry", "--host", HOST, "--port", str(ports["registry"]),
                                      "--data-dir", str(tmp / "registry")),
            http_ready(f"http://{HOST}:{ports['registry']}/health"), tmp, env)
        children["clickhouse"] = _start(
            "clickhouse", python_module("app.cli", "clickhouse", "--host", HOST, "--port",
                                        str(ports["clickhouse"]), "--data-dir", str(tmp / "chdb")),
            http_ready(f"http://{HOST}:{ports['clickhouse']}/ping"), tmp, env)
        yield Services(settings, tmp, children)
    finally:
        for child in reversed(list(children.values())):
            child.stop()


_LOG_TAIL_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report ends with the last lines of every service log it wrote (workers,
    APIs, `rearview up`): a timeout in CI is then explained by what the processes said."""
    outcome = yield
    report = outcome.get_result()
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not report.failed or call.when != "call" or not isinstance(tmp, Path):
        return
    for log in sorted(tmp.rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()[-_LOG_TAIL_LINES:]
        report.sections.append((f"{log.relative_to(tmp)} (last {len(lines)} lines)", "\n".join(lines)))


_ids = itertools.count(1)


@dataclass
class Pipeline:
    """One isolated pipeline on the shared services: its own topics, database and group."""

    settings: Settings
    tmp: Path
    children: list[ChildProcess] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)  # child name -> its HTTP base URL
    api_child: ChildProcess | None = None  # the API process start_api started last
    _ch: Client | None = None

    @property
    def env(self) -> dict[str, str]:
        return to_env(self.settings)

    def start_worker(self, name: str = "worker") -> ChildProcess:
        port = free_port()
        child = _start(f"{name}-{self.settings.worker.app_id}",
                       python_module("app.cli", "worker", "--host", HOST, "--port", str(port)),
                       http_ready(f"http://{HOST}:{port}/health"), self.tmp, self.env)
        self.children.append(child)
        self.urls[name] = f"http://{HOST}:{port}"
        return child

    def start_api(self, grpc_port: int | None = None, port: int | None = None) -> str:
        """Start an API on *port* (default: a free one); its gRPC port is *grpc_port* or a free
        one (in ``urls["api_grpc"]``)."""
        port = free_port() if port is None else port
        grpc_port = free_port() if grpc_port is None else grpc_port
        url = f"http://{HOST}:{port}"
        child = _start(f"api-{self.settings.worker.app_id}",
                       python_module("app.cli", "api", "--host", HOST, "--port", str(port),
                                     "--grpc-port", str(grpc_port)),
                       http_ready(f"{url}/health"), self.tmp, self.env)
        self.children.append(child)
        self.urls["api"] = url
        self.urls["api_grpc"] = f"{HOST}:{grpc_port}"
        self.api_child = child
        return url

    @property
    def ch(self) -> Client:
        if self._ch is None:
            self._ch = clickhouse.connect(self.settings.clickhouse)
        return self._ch

    def scalar(self, sql: str, **params: Any) -> Any:
        return self.ch.query(sql, parameters=params).result_rows[0][0]

    def stored(self) -> int:
        """Distinct events in ClickHouse, as queries see them."""
        return int(self.scalar("SELECT count() FROM events FINAL"))

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`rearview ARGS...` on this pipeline's settings, as an operator runs it."""
        return subprocess.run([sys.executable, "-m", "app.cli", *args],
                              env={**self.env, "PATH": os.environ.get("PATH", "")},
                              capture_output=True, text=True, timeout=120, check=False)

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.settings.kafka.bootstrap_servers, "linger.ms": 5})

    def consume_all(self, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
        """Every message of *topic* (waits until at least *expected* arrived)."""
        consumer = Consumer({
            "bootstrap.servers": self.settings.kafka.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        })
        consumer.subscribe([topic])
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(out) < expected and time.monotonic() < deadline:
                out.extend(m for m in consumer.consume(500, 0.5) if m.error() is None)
            # Anything more that arrives shortly after is a duplicate the test should see.
            out.extend(m for m in consumer.consume(500, 1.0) if m.error() is None)
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop()
        if self._ch is not None:
            self._ch.close()


def make_pipeline(services: Services, tmp_path: Path, **sections: Any) -> Pipeline:
    """A new isolated pipeline: its own topics, database (migrated) and consumer group.

    *sections* change settings sections, e.g. ``aggregate={"rollups": [...]}``. API keys are
    off unless a test asks for them (``auth={"required": True}``): the tests of keys are in
    test_auth.py, the others speak for the configured project without one."""
    n = next(_ids)
    tag = f"t{n}_{uuid.uuid4().hex[:6]}"
    s = services.settings
    topics = s.kafka.topics.model_copy(
        update={"raw": f"{tag}.events.raw", "clean": f"{tag}.events.clean", "dlq": f"{tag}.events.dlq"}
    )
    settings = s.model_copy(
        update={
            "kafka": s.kafka.model_copy(update={"topics": topics}),
            "clickhouse": s.clickhouse.model_copy(update={"database": f"rv_{tag}"}),
            "worker": s.worker.model_copy(update={"app_id": f"rearview-{tag}", "data_dir": tmp_path / tag}),
            **{name: getattr(s, name).model_copy(update=changes) for name, changes in sections.items()},
        }
    )
    ensure_topics(settings.kafka.bootstrap_servers, pipeline_topics(settings.kafka))
    clickhouse.ensure_database(settings.clickhouse)
    client = clickhouse.connect(settings.clickhouse)
    try:
        migrate(client)
        ensure_tables(client, settings.aggregate.rollups)
    finally:
        client.close()
    return Pipeline(settings, tmp_path)


@pytest.fixture
def pipeline(services: Services, tmp_path: Path) -> Iterator[Pipeline]:
    p = make_pipeline(services, tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def new_pipeline(services: Services, tmp_path: Path) -> Iterator[Callable[[], Pipeline]]:
    """Makes as many isolated pipelines as a test needs; all are closed after it."""
    made: list[Pipeline] = []

    def make() -> Pipeline:
        made.append(make_pipeline(services, tmp_path))
        return made[-1]

    try:
        yield make
    finally:
        for p in made:
            p.close()


def send_event_batches(pipeline: Pipeline, events: list[dict[str, Any]], per_message: int = 100, *,
                       project: str = "default", library: str | None = None, corrupt: int = 0) -> int:
    """Collector-format *events* as EventBatch messages of *per_message* straight to events.raw,
    as a service of *project* writes them (optionally with *library* in each event's context),
    then *corrupt* messages that cannot be decoded (dead letters). Returns the messages written."""
    s = pipeline.settings
    writer = BatchWriter(schemas.EVENT_BATCH, register(s.registry.url, s.kafka.topics.raw, schemas.EVENT_BATCH))
    producer = Producer({"bootstrap.servers": s.kafka.bootstrap_servers, "linger.ms": 5})
    failures: list[str] = []
    now = int(time.time() * 1000)
    records = [to_event(e, received_at_ms=now, project_id=project) for e in events]
    if library is not None:
        for r in records:
            r["context"]["library"] = library
    sent = 0
    for i in range(0, len(records), per_message):
        producer.produce(s.kafka.topics.raw, value=writer.encode(records[i:i + per_message]),
                         on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
        producer.poll(0)
        sent += 1
    for i in range(corrupt):
        producer.produce(s.kafka.topics.raw, value=b"\x00\x00\x00\x00\x09not avro " + bytes([i]))
        sent += 1
    assert producer.flush(30) == 0 and not failures, failures
    return sent
