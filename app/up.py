"""`rearview up`: the whole embedded stack as child processes, in dependency order.

broker -> registry -> clickhouse -> (migrate) -> worker -> archiver -> api [-> demo traffic]

Each child runs `rearview <service>` in its own process group and is stopped by its pid:
SIGTERM first, SIGKILL if it does not exit in time. Children get their configuration through
RV_* environment variables, so each one sees the same settings as this process. If a child
dies, the stack is stopped and `up` exits non-zero.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.process import ChildProcess, free_port, http_ready, python_module, tcp_ready
from app.settings import ArchiveSettings, Settings, to_env


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
                                                      "grpc_port": self.grpc_port}),
                "archive": settings.archive.model_copy(update={"url": str(self.data_dir / "archive")})
                if settings.archive.url == ArchiveSettings().url else settings.archive,
            }
        )
        self.env = {**to_env(self.settings), "PYTHONUNBUFFERED": "1"}
        self.children: list[ChildProcess] = []
        self.keys: dict[str, str] = {}  # the demo project's keys by kind (auth on)
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
        click.echo(f"  starting {child.name:<10}", nl=False)
        self.children.append(child)
        child.start()
        child.wait_ready(timeout_s)
        click.echo(f" ready (pid {child.pid}, log {child.log_path})")

    def start(self, demo_rate: float | None = None) -> None:
        h = self.host
        self._start(self._child("broker", "broker", "--host", h, "--port", str(self.broker_port),
                                port=self.broker_port))
        ensure_topics(f"{h}:{self.broker_port}", pipeline_topics(self.settings.kafka))
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
        # This broker's log is new: positions go on past the earlier logs' (tables/logs.py).
        from app.archive import begin_log_epoch

        bases = begin_log_epoch(self.settings)
        click.echo(f"  log epoch {bases.epoch} (positions continue after the earlier logs')")
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
            while not self._stop.wait(0.5):
                dead = [c for c in self.children if not c.alive()]
                if dead:
                    click.echo(f"error: {dead[0].name} exited; see {dead[0].log_path}", err=True)
                    return 1
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
