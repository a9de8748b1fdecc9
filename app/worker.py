"""`rearview worker`: the Faust worker running the validate, store and dead-letter agents."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import sys
import threading
from typing import Any

import faust
import structlog
from clickhouse_connect.driver.client import Client

from agents.ledger import OffsetLedger
from agents.offsets import OffsetCounters, OffsetKeeper
from agents.pii import Redactor
from agents.pii.detectors import KINDS
from agents.pii.policy import DEFAULT_POLICIES, RedactionConfig
from agents.rollup import RollupWriter
from agents.schema_registry import SchemaCache
from agents.sink import ClickHouseCalls, EventsWriter, RowsWriter
from agents.stages import StageWatch
from agents.store import FenceLink, FirstCopies, StoreDeps
from agents.store import install as install_store
from agents.validate import Validator
from agents.worker import WorkerDeps, dead_letter, install, readers
from app import clickhouse
from app.faust_app import create_app
from app.metrics import CONTENT_TYPE, Metric, render
from app.settings import Settings
from tables.aggregate import Aggregator
from tables.dedup import Deduper

log = structlog.get_logger(__name__)


def build(settings: Settings, web_host: str, web_port: int) -> tuple[faust.App, WorkerDeps]:
    topics = settings.kafka.topics
    w = settings.worker

    def ch_client() -> Client:
        return clickhouse.connect(
            settings.clickhouse, send_receive_timeout=settings.clickhouse.insert_timeout_s
        )

    stages = StageWatch()
    # Positions are stored as base + offset (tables/logs.py): read the bases before any agent runs.
    bases = clickhouse.log_bases(settings.clickhouse)
    if bases.epoch:
        log.info("log_epoch", epoch=bases.epoch, bases=bases.describe())
    deps = WorkerDeps(
        stages=stages,
        validator=Validator(settings.validation.rules()),
        redactor=Redactor(redaction_config(settings)),
        schemas=SchemaCache(settings.registry.url, w.retry_initial_s, w.retry_max_s,
                            topic=topics.raw, reader_ttl_s=settings.registry.reader_ttl_s),
        dlq_writer=RowsWriter(ch_client, "dlq"),
        raw_topic=topics.raw,
        clean_topic=topics.clean,
        dlq_topic=topics.dlq,
        clean_partitions=topics.partitions,
        take_max=w.take_max,
        take_within_s=w.take_within_s,
        retry_initial_s=w.retry_initial_s,
        retry_max_s=w.retry_max_s,
        log=bases,
    )
    app = create_app(settings, web_host, web_port)
    offsets = OffsetKeeper(app, OffsetLedger(readers(deps)), settings.kafka.bootstrap_servers,
                           retry_initial_s=w.retry_initial_s, retry_max_s=w.retry_max_s)
    install(app, deps, offsets)

    with_rollups = bool(settings.aggregate.enabled and settings.aggregate.rollups)
    specs = tuple(settings.aggregate.rollups)
    store = StoreDeps(
        deduper=Deduper(w.dedup_horizon_s * 1000),
        first_copies=FirstCopies(ClickHouseCalls(ch_client), topics.partitions, w.dedup_horizon_s),
        events_writer=EventsWriter(ch_client),
        aggregator=Aggregator(specs) if with_rollups else None,
        rollups=RollupWriter(ch_client, specs) if with_rollups else None,
        clean_topic=topics.clean,
        take_max=w.take_max,
        take_within_s=w.take_within_s,
        flush_interval_s=settings.aggregate.flush_interval_s,
        evict_interval_s=settings.aggregate.evict_interval_s,
        dead_letter=functools.partial(dead_letter, app, deps),
        stages=stages,
        retry_initial_s=w.retry_initial_s,
        retry_max_s=w.retry_max_s,
        fence=FenceLink(ClickHouseCalls(ch_client), w.fence_heartbeat_s),
        log=bases,
    )
    install_store(app, store, offsets)
    offsets.install()

    @app.page("/health")
    async def health(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        c, st = deps.counters, store.counters
        stalled = stages.stalled(w.stall_after_s)
        body: dict[str, object] = {
            "status": "failing" if stalled else "ok", "stalled_stages": stalled, "raw_messages": c.read, "clean_events": c.clean,
            "dead_letters": c.dead, "inserted_rows": st.inserted,
            "dedup": {"duplicates_dropped": st.duplicates,
                      "found_in_events_table": st.duplicates_beyond_horizon,
                      "already_stored": st.already_stored,
                      "ids_remembered": store.deduper.entries(),
                      "memory_bytes": store.deduper.nbytes()},
            "offsets": {"commits": offsets.counters.commits, "seeks_back": offsets.counters.reseeks,
                        "out_of_order_dropped": offsets.counters.out_of_order,
                        "redelivered_dropped": offsets.counters.redelivered},
            "consumer_lag": lag_by_topic(offsets.counters.lag),
            "replay_fences": {"paused_for": st.fences_paused, "abandoned": st.fences_abandoned,
                              "rebegins": st.rebegins},
        }
        if store.aggregator is not None:
            body["rollups"] = {"applied": st.applied, "skipped_redelivered": st.skipped,
                               "states_in_memory": len(store.aggregator.states()),
                               "states_loaded": st.states_loaded, "states_evicted": st.states_evicted,
                               "flushes": st.flushes, "partials_written": st.keys_written}
        return web.json(body, status=503 if stalled else 200)

    @app.page("/metrics")
    async def metrics(web: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        return web.text(render(worker_metrics(deps, store, offsets.counters)), content_type=CONTENT_TYPE)

    return app, deps


def redaction_config(settings: Settings) -> RedactionConfig:
    """The PII configuration; a missing secret is generated once and kept in the data dir."""
    pii = settings.pii
    if pii.secret is not None:
        secret = pii.secret.get_secret_value().encode()
    else:
        path = settings.worker.data_dir / "pii.secret"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
            log.warning("pii_secret_generated", path=str(path),
                        hint="set RV_PII__SECRET to the same value on every worker")
        secret = path.read_bytes()
    return RedactionConfig(
        enabled=pii.enabled,
        policies={**DEFAULT_POLICIES, **pii.policies},  # type: ignore[dict-item]
        secret=secret,
        allowlist=frozenset(pii.allowlist),
        ip_policy=pii.ip_policy,
        hash_user_id_if_pii=pii.hash_user_id_if_pii,
    )


def lag_by_topic(lag: dict[tuple[str, int], int]) -> dict[str, dict[str, int]]:
    """Consumer lag as {topic: {partition: messages}} for /health."""
    out: dict[str, dict[str, int]] = {}
    for (topic, partition), n in sorted(lag.items()):
        out.setdefault(topic, {})[str(partition)] = n
    return out


def worker_metrics(deps: WorkerDeps, store: StoreDeps, offsets: OffsetCounters) -> list[Metric]:
    c = deps.counters
    dead = Metric("rearview_dead_letters_total", "Dead letters written, by stage and error class.")
    for key, n in sorted(c.by_reason.items()):
        stage, error_class = key.split(":", 1)
        dead.add(n, stage=stage, error_class=error_class)
    out = [
        Metric("rearview_raw_messages_total", "Messages read from the raw topic.").add(c.read),
        Metric("rearview_events_validated_total", "Events that passed validation.").add(c.clean),
        dead,
        Metric("rearview_rows_inserted_total", "Rows inserted into the events table.").add(store.counters.inserted),
        Metric("rearview_duplicates_dropped_total",
               "Copies of an already seen event_id dropped by the dedup stage.").add(store.counters.duplicates),
        Metric("rearview_dedup_ids", "Event ids remembered by the dedup stage (its horizon).")
        .add(store.deduper.entries()),
    ]
    redactions = Metric("rearview_redactions_total", "PII redactions in clean events, by detector.")
    # Every detector from the start, at 0: a rate() over a series that appears with its first
    # increment misses that increment.
    for detector in sorted(set(KINDS) | set(c.redactions)):
        redactions.add(c.redactions.get(detector, 0), detector=detector)
    out.append(redactions)
    out += [
        Metric("rearview_offset_commits_total", "Offset commits of the worker's topics.").add(offsets.commits),
        Metric("rearview_offset_seeks_back_total",
               "Seeks back over messages the consumer skipped or stopped delivering.").add(offsets.reseeks),
        Metric("rearview_deliveries_out_of_order_total",
               "Deliveries dropped because earlier offsets were missing (redelivered after a seek back).")
        .add(offsets.out_of_order),
        Metric("rearview_deliveries_redelivered_total",
               "Deliveries dropped because the agent already had them.").add(offsets.redelivered),
    ]
    lag = Metric("rearview_consumer_lag",
                 "Messages between the committed offset and the log end (the highest offset"
                 " delivered + 1, or the broker's end offset if higher), per partition held.",
                 kind="gauge")
    for (topic, partition), n in sorted(offsets.lag.items()):
        lag.add(n, topic=topic, partition=str(partition))
    out.append(lag)
    if store.aggregator is not None:
        r = store.counters
        out += [
            Metric("rearview_rollup_events_applied_total",
                   "Event x rollup applications to windowed partials.").add(r.applied),
            Metric("rearview_rollup_redelivered_skipped_total",
                   "Event x rollup applications skipped as redeliveries.").add(r.skipped),
            Metric("rearview_rollup_states_loaded_total",
                   "Evicted window states loaded back for late events.").add(r.states_loaded),
            Metric("rearview_rollup_states_in_memory", "Window states held in memory.")
            .add(len(store.aggregator.states())),
            Metric("rearview_rollup_flushes_total", "Completed rollup flushes.").add(r.flushes),
        ]
    return out


# How long an orderly stop may take after SIGTERM or SIGINT before the process exits anyway.
STOP_DEADLINE_S = 4.0


class _Worker(faust.Worker):
    """faust.Worker whose stop on a signal has a deadline (see `run`)."""

    def __init__(self, *args: Any, stop_deadline_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop_deadline_s = stop_deadline_s
        self._deadline: threading.Timer | None = None

    def _arm_deadline(self, signal_name: str) -> None:
        if self._deadline is None:
            log.info("worker_stopping", signal=signal_name, deadline_s=self._stop_deadline_s)
            self._deadline = threading.Timer(self._stop_deadline_s, _exit_now, args=(1, "deadline"))
            self._deadline.daemon = True
            self._deadline.start()

    def _on_sigterm(self) -> None:
        self._arm_deadline("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_deadline("SIGINT")
        super()._on_sigint()


def _exit_now(code: int, why: str) -> None:
    """Leave the process at once: nothing left running can commit what is not durable."""
    blocked = [t.name for t in threading.enumerate()
               if t is not threading.main_thread() and t is not threading.current_thread()
               and t.is_alive() and not t.daemon]
    log.warning("worker_exit_forced", why=why, blocked_threads=len(blocked), exit_code=code)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def run(settings: Settings, host: str, port: int) -> None:
    """Run the worker until SIGTERM or SIGINT; the process exits within seconds of either.

    Faust's stop is orderly: agents are cancelled (a batch in retry is abandoned, never
    reported done), the offset keeper commits what is durable, the producer flushes. Two
    things could hold the process long after a signal, past the grace period of a supervisor
    (which then SIGKILLs):

    - a thread blocked in a synchronous call. ClickHouse calls run in threads (clickhouse-connect
      is synchronous); against a service that accepts connections but never answers, a call
      blocks until its send/receive timeout (`clickhouse.insert_timeout_s`, 30 s), and Python
      joins such threads at exit: measured 28.7 s from SIGTERM to exit. Once Faust has
      stopped, the process exits without waiting for them;
    - Faust's stop itself waiting on a hung broker (a rollup flush holding its lock while its
      changelog write waits up to 30 s, the producer's flush): measured 30 s and a SIGKILL.
      A deadline of `STOP_DEADLINE_S` from the signal bounds it.

    Either exit is safe for the same reason a crash is: offsets are committed only up to what
    every reader made durable (agents/ledger.py), so work cut short is redelivered and redone,
    idempotently; the offset keeper's final commit is bounded to fit in the deadline.
    """
    app, _ = build(settings, host, port)
    log.info("worker_starting", app_id=settings.worker.app_id, web=f"http://{host}:{port}/health")
    worker = _Worker(app, loglevel="WARN", quiet=True, stop_deadline_s=STOP_DEADLINE_S)
    code: int = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    if any(t is not threading.main_thread() and t.is_alive() and not t.daemon
           for t in threading.enumerate()):
        _exit_now(code, "threads_blocked_after_stop")
    raise SystemExit(code)
