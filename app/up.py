"""`rearview up`: the whole embedded stack as child processes, in dependency order.

broker -> registry -> clickhouse -> (migrate) -> worker -> archiver -> api [-> demo traffic]

Each child runs `rearview <service>` in its own process group and is stopped by its pid:
SIGTERM first, SIGKILL if it does not exit in time. Children get their configuration through
RV_* environment variables, so each one sees the same settings as this process. If a child
dies, the stack is stopped and `up` exits non-zero.

The broker keeps its log in memory and cannot delete records, so every start begins a new log
and a new log epoch (tables/logs.py), and a long run bounds the broker's memory by doing the
same while it runs: past `broker.log_budget_mb`, once the log is read and archived, `roll_log`
replaces the broker with an empty one (docs/archive.md, "Bounding the embedded log").
"""

from __future__ import annotations

import dataclasses
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import click

from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.drain import Behind, behind, group_commits, holds_records, log_ends
from app.embedded.process import (
    ChildProcess,
    free_port,
    http_ready,
    port_taken,
    python_module,
    tcp_ready,
    tree_rss_mb,
)
from app.embedded.standin import Unavailable
from app.settings import ArchiveSettings, Settings, to_env
from core.exceptions import ServiceUnavailable
from tables.logs import NO_EPOCH, LogBases

# Children in front of Kafka (stopped first when the log rolls: nothing new comes in) and the
# ones reading it (stopped once they read everything).
_FRONT = ("api", "demo")
_READERS = ("worker", "archiver")
# What a client is told while the collector is away for a roll (app/embedded/standin.py).
ROLLING = ("the embedded broker is beginning a new log (its memory passed RV_BROKER__LOG_BUDGET_MB):"
           " send the same events again in a few seconds")


class Stack:
    def __init__(
        self,
        settings: Settings,
        host: str,
        data_dir: Path,
        api_port: int | None = None,
        free_ports: bool = False,
    ) -> None:
        self.host = host
        self.data_dir = data_dir.resolve()
        self.logs = self.data_dir / "logs"

        def port(default: int) -> int:
            return free_port(host) if free_ports else default

        self.broker_port = port(settings.broker.port)
        self.registry_port = port(settings.registry.port)
        self.clickhouse_port = port(settings.clickhouse.port)
        self.worker_port = port(settings.worker.web_port)
        self.api_port = api_port or port(settings.api.port)
        self.grpc_port = port(settings.api.grpc_port) if settings.api.grpc_port else 0
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": f"{host}:{self.broker_port}"})
        self.settings = settings.model_copy(
            update={
                "kafka": kafka,
                "registry": settings.registry.model_copy(
                    update={"url": f"http://{host}:{self.registry_port}"}),
                "clickhouse": settings.clickhouse.model_copy(
                    update={"url": f"http://{host}:{self.clickhouse_port}"}),
                "worker": settings.worker.model_copy(update={"data_dir": self.data_dir / "worker",
                                                            "web_port": self.worker_port}),
                "api": settings.api.model_copy(update={"host": host, "port": self.api_port,
                                                      "grpc_port": self.grpc_port, "reuse_port": True}),
                "archive": settings.archive.model_copy(update={"url": str(self.data_dir / "archive")})
                if settings.archive.url == ArchiveSettings().url else settings.archive,
            }
        )
        self.env = {**to_env(self.settings), "PYTHONUNBUFFERED": "1"}
        self.children: list[ChildProcess] = []
        self.keys: dict[str, str] = {}  # the demo project's keys by kind (auth on)
        self.bases: LogBases = NO_EPOCH  # the current log epoch's
        self._stop = threading.Event()

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    def _child(self, name: str, *args: str, ready_url: str | None = None, port: int = 0) -> ChildProcess:
        return ChildProcess(
            name,
            python_module("app.cli", *args),
            ready=http_ready(ready_url) if ready_url else tcp_ready(self.host, port),
            env=self.env,
            log_path=self.logs / f"{name}.log",
        )

    def _start(self, child: ChildProcess, timeout_s: float = 90.0) -> None:
        self.children.append(child)
        self._launch(child, timeout_s)

    @staticmethod
    def _launch(child: ChildProcess, timeout_s: float = 90.0) -> None:
        click.echo(f"  starting {child.name:<10}", nl=False)
        child.start()
        child.wait_ready(timeout_s)
        click.echo(f" ready (pid {child.pid}, log {child.log_path})")

    def start(self, demo_rate: float | None = None) -> None:
        h = self.host
        self._start(self._child("broker", "broker", "--host", h, "--port", str(self.broker_port),
                                port=self.broker_port))
        ensure_topics(self.settings.kafka.bootstrap_servers, pipeline_topics(self.settings.kafka))
        self._start(self._child(
            "registry", "registry", "--host", h, "--port", str(self.registry_port),
            "--data-dir", str(self.data_dir / "registry"),
            ready_url=f"http://{h}:{self.registry_port}/health"))
        self._start(self._child(
            "clickhouse", "clickhouse", "--host", h, "--port", str(self.clickhouse_port),
            "--data-dir", str(self.data_dir / "clickhouse"),
            ready_url=f"http://{h}:{self.clickhouse_port}/ping"))
        migrate = self._child("migrate", "migrate", port=0)
        migrate.start()
        assert migrate.proc is not None
        if migrate.proc.wait(120) != 0:
            raise click.ClickException(f"migrate failed; see {migrate.log_path}")
        migrate.stop()
        click.echo("  migrations applied")
        self._begin_epoch()
        if self.settings.auth.required:
            self.keys = demo_keys(self.settings, self.data_dir / "demo_keys.json")
        self._start(self._child(
            "worker", "worker", "--host", h, "--port", str(self.worker_port),
            ready_url=f"http://{h}:{self.worker_port}/health"))
        if self.settings.archive.enabled:
            # No port to probe: ready once it runs (a failure to start shows as its death).
            self._start(ChildProcess("archiver", python_module("app.cli", "archive", "run"),
                                     ready=lambda: True, env=self.env,
                                     log_path=self.logs / "archiver.log"))
        if port_taken(h, self.api_port):  # the API shares its port (a roll's stand-in): never by accident
            raise click.ClickException(f"port {self.api_port} on {h} is taken: stop what listens there,"
                                       " or choose another with --port")
        self._start(self._child("api", "api", ready_url=f"{self.api_url}/health"))
        if demo_rate:
            key = ("--key", self.keys["write"]) if self.keys else ()
            self._start(self._child(
                "demo", "generate", "--count", "0", "--rate", str(demo_rate), "--batch-size", "50",
                "--url", self.api_url, *key, port=self.api_port))

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()
        self.children.clear()

    def _begin_epoch(self) -> None:
        """This broker's log is new: positions go on past the earlier logs' (tables/logs.py)."""
        from app.archive import begin_log_epoch

        self.bases = begin_log_epoch(self.settings)
        click.echo(f"  log epoch {self.bases.epoch} (positions continue after the earlier logs')")

    # -- bounding the broker's memory ---------------------------------------------------------
    def _named(self, *names: str) -> list[ChildProcess]:
        return [c for c in self.children if c.name in names]

    def _stop_children(self, *names: str) -> None:
        for child in reversed(self._named(*names)):
            child.stop()

    def _restart(self, *names: str) -> None:
        """Start fresh copies of the named children that are not running, in the stack's order."""
        for i, child in enumerate(self.children):
            if child.name in names and not child.alive():
                fresh = dataclasses.replace(child)
                self.children[i] = fresh
                self._launch(fresh)

    def log_over_budget(self) -> float | None:
        """The broker's memory in MB when it is over its budget and its log holds records
        (None otherwise, or when rolling is off: no budget, or no archive to keep the log)."""
        budget = self.settings.broker.log_budget_mb
        brokers = self._named("broker")
        if not budget or not brokers or brokers[0].pid is None or not self.settings.archive.enabled:
            return None
        rss = tree_rss_mb(brokers[0].pid)
        if rss <= budget or not holds_records(self.settings.kafka.bootstrap_servers, self._read_topics):
            return None
        return rss

    @property
    def _read_topics(self) -> dict[str, int]:
        """The topics the pipeline reads, with their partition counts: what a roll must drain."""
        t = self.settings.kafka.topics
        return {t.raw: t.partitions, t.clean: t.partitions}

    def _log_ends(self) -> dict[tuple[str, int], int]:
        return log_ends(self.settings.kafka.bootstrap_servers, self._read_topics)

    def _waiting_for(self, ends: dict[tuple[str, int], int], archive: bool) -> list[Behind]:
        """Who has not read the log to *ends* yet: the consumer groups (the archiver's aside, its
        files are its truth) and, with *archive*, the archive."""
        from app.archive import archive_group, open_archive

        t = self.settings.kafka.topics
        commits = group_commits(self.settings.kafka.bootstrap_servers, self._read_topics)
        commits.pop(archive_group(self.settings), None)
        archived = None
        if archive:
            files = open_archive(self.settings.archive)
            archived = {(t.raw, p): max(0, self.bases.local(t.raw, p, files.next_offset(t.raw, p)))
                        for p in range(t.partitions)}
        return behind(ends, commits, {self.settings.worker.app_id: tuple(self._read_topics)}, archived)

    def _wait(self, ends: dict[tuple[str, int], int], archive: bool, deadline: float) -> list[Behind]:
        while True:
            waiting = self._waiting_for(ends, archive)
            if not waiting or time.monotonic() > deadline:
                return waiting
            time.sleep(0.5)

    def roll_log(self, rss_mb: float) -> bool:
        """Replace the broker with an empty one, in a new log epoch, once its log is drained.

        The collector (and demo traffic) stop first, so nothing new comes in; meanwhile a
        stand-in on the API's port answers 503 with Retry-After, so clients retry (the SDK does)
        and are answered again a few seconds later. Then the worker must commit,
        and the archive hold, every record to the end of the log; the archiver writes what it
        holds when it stops. A log not drained in `log_drain_timeout_s` is kept, with every
        child started again: the next check tries again. Records a producer writes straight to
        the broker while the roll waits are seen by a last look at the log's end before the
        broker stops, which postpones the roll. True when the log rolled.
        """
        budget = self.settings.broker.log_budget_mb
        click.echo(f"broker at {rss_mb:,.0f} MB (budget {budget:,} MB): beginning a new log")
        began = time.monotonic()
        # Until the collector is back, its port answers 503 with Retry-After, not a refusal.
        with Unavailable(self.host, self.api_port, ROLLING):
            self._stop_children(*_FRONT)
            waiting = self._drain(deadline=began + self.settings.broker.log_drain_timeout_s)
            if waiting:
                click.echo(f"  the log is kept, a new one is tried at the next check: waited for {waiting[0]}")
            else:
                self._stop_children("broker")
                self._restart("broker")
                ensure_topics(self.settings.kafka.bootstrap_servers, pipeline_topics(self.settings.kafka))
                self._begin_epoch()
            # The collector first: what it writes now waits in the new log for the worker.
            self._restart(*_FRONT)
        paused = time.monotonic() - began
        self._restart(*_READERS)
        if waiting:
            return False
        click.echo(f"log rolled in {time.monotonic() - began:.1f}s (collector paused {paused:.1f}s): the broker holds"
                   f" {tree_rss_mb(self._named('broker')[0].pid or 0):,.0f} MB,"
                   " the earlier logs are in the archive")
        return True

    def _drain(self, deadline: float) -> list[Behind]:
        """With nothing new coming in: wait until the worker has committed, and the archive
        holds, the end of the log, then stop both. [] when drained, else what it waited for
        (the readers may then be stopped or not; the caller starts them again)."""
        try:
            # The worker writes events.clean while it reads events.raw: wait until the ends hold still.
            ends = self._log_ends()
            while not (waiting := self._wait(ends, archive=False, deadline=deadline)):
                now = self._log_ends()
                if now == ends:
                    break
                ends = now
            if waiting:
                return waiting
            # The archiver writes what it holds as it stops; if it had not read everything yet,
            # it reads the rest when started again.
            self._stop_children("archiver")
            while (waiting := self._waiting_for(ends, archive=True)) and time.monotonic() < deadline:
                self._restart("archiver")
                self._wait(ends, archive=True, deadline=deadline)
                self._stop_children("archiver")
            if waiting:
                return waiting
            self._stop_children("worker")
            if self._log_ends() != ends:
                return [Behind("records written straight to Kafka while it waited", "", 0, 0, 0)]
            return []
        except ServiceUnavailable as exc:
            return [Behind(f"Kafka, which did not answer ({exc})", "", 0, 0, 0)]

    def run(self, demo_rate: float | None = None) -> int:
        """Start, report, supervise until a signal or a child's death, stop. Returns exit code."""

        starting = True

        def on_signal(_sig: int, _frame: FrameType | None) -> None:
            self._stop.set()
            if starting:  # interrupt a start-up that is waiting on a slow service
                raise KeyboardInterrupt

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        click.echo(f"Rearview is starting (data and logs in {self.data_dir})")
        try:
            self.start(demo_rate)
            starting = False
            grpc_line = (f"               gRPC {self.host}:{self.grpc_port} (AnalyticsService)\n"
                         if self.grpc_port else "")
            if self.keys:
                keys_text = (f"  project      {self.settings.project_id} (keys in {self.data_dir / 'demo_keys.json'})\n"
                             f"  write key    {self.keys['write']}\n"
                             f"  read key     {self.keys['read']}\n"
                             f"  admin key    {self.keys['admin']}\n")
                dashboard = f"{self.api_url}/#key={self.keys['read']}"
            else:
                keys_text = "  keys         off (RV_AUTH__REQUIRED=false): anyone reaching the API is trusted\n"
                dashboard = f"{self.api_url}/"
            click.echo(
                f"\nRearview is up.\n"
                f"  dashboard    {dashboard}\n"
                f"{keys_text}"
                f"  collector    POST {self.api_url}/v1/track, {self.api_url}/v1/batch\n"
                f"{grpc_line}"
                f"  query        POST {self.api_url}/v1/query  (docs/query.md; {self.api_url}/openapi.json)\n"
                f"  kafka        {self.host}:{self.broker_port}\n"
                f"  registry     http://{self.host}:{self.registry_port}\n"
                f"  clickhouse   http://{self.host}:{self.clickhouse_port}\n"
                f"Press Ctrl-C to stop."
            )
            next_check = time.monotonic() + self.settings.broker.log_check_s
            while not self._stop.wait(0.5):
                dead = [c for c in self.children if not c.alive()]
                if dead:
                    click.echo(f"error: {dead[0].name} exited; see {dead[0].log_path}", err=True)
                    return 1
                if time.monotonic() >= next_check:
                    rss = self.log_over_budget()
                    if rss is not None:
                        self.roll_log(rss)
                    next_check = time.monotonic() + self.settings.broker.log_check_s
            return 0
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            return 130
        except Exception as exc:
            click.echo(f"\nerror: {exc}", err=True)
            return 1
        finally:
            click.echo("stopping Rearview...", err=True)
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sys.stdout.flush()


def demo_keys(settings: Settings, path: Path) -> dict[str, str]:
    """The demo project's write, read and admin keys: made on the first start and kept in
    *path* (readable by its owner only), made again if one was revoked since."""
    import json
    import os

    from app.auth import Keyring, KeyStore
    from app.clickhouse import connect

    client = connect(settings.clickhouse)
    try:
        store = KeyStore(client, settings.validation.project_id_pattern,
                         settings.validation.max_project_id_length)
        store.ensure_project(settings.project_id, "Demo project")
        keyring = Keyring()
        keyring.set(store.list_keys(settings.project_id))
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
        keys: dict[str, str] = {}
        for kind in ("write", "read", "admin"):
            old = saved.get(kind) if isinstance(saved, dict) else None
            principal = keyring.check(old) if isinstance(old, str) else None
            if isinstance(old, str) and principal is not None and principal.kind == kind:
                keys[kind] = old
            else:
                keys[kind] = store.create_key(settings.project_id, kind, f"rearview up ({kind})")[1]  # type: ignore[arg-type]
    finally:
        client.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f, indent=2)
    return keys
