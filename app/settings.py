"""Rearview configuration: one pydantic-settings root, built once by the CLI and passed down.

Every value can be set from the environment with the ``RV_`` prefix and ``__`` between a section
and its field, e.g. ``RV_KAFKA__BOOTSTRAP_SERVERS=kafka-1:9092`` or
``RV_CLICKHOUSE__URL=https://ch.example.com:8443``. The defaults point at the embedded stack
that ``rearview up`` starts on 127.0.0.1; production changes URLs only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.validate import Rules
from tables.rollups import DEFAULT_ROLLUPS, RollupSpec


class TopicSettings(BaseModel):
    raw: str = "events.raw"
    clean: str = "events.clean"
    dlq: str = "events.dlq"
    # Partition counts are final: topics are created at start-up with these counts (the
    # embedded broker cannot add partitions later, and re-partitioning moves keys anyway).
    partitions: int = Field(default=4, ge=1)
    replication_factor: int = Field(default=1, ge=1)


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    topics: TopicSettings = TopicSettings()
    # Embedded broker: a group join takes about half the session timeout, so keep it short.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    # Longest wait of a worker's fetch for new data. Faust hard-codes 1500 ms; the embedded
    # broker does not answer a waiting fetch when data arrives, so each hop costs up to this.
    fetch_max_wait_ms: int = Field(default=200, ge=1)
    # Extra librdkafka properties for the producers (collector, generator), e.g. security.
    producer_config: dict[str, str] = {}


class BrokerSettings(BaseModel):
    """The embedded Tansu broker (`rearview broker`)."""

    host: str = "127.0.0.1"
    port: int = 9092
    # The broker keeps every record in memory and cannot delete any, so `rearview up` bounds it
    # by beginning a new log (a new broker and log epoch) once its memory passes log_budget_mb
    # and the current log is read and archived; 0 never does (docs/archive.md, "Bounding the
    # embedded log"). Checked every log_check_s; a log not drained within log_drain_timeout_s
    # is kept, and tried again at the next check.
    log_budget_mb: int = Field(default=2048, ge=0)
    log_check_s: float = Field(default=30.0, gt=0)
    log_drain_timeout_s: float = Field(default=120.0, gt=0)


class RegistrySettings(BaseModel):
    url: str = "http://127.0.0.1:8081"
    # Embedded registry (`rearview registry`): where it keeps its durable state.
    host: str = "127.0.0.1"
    port: int = 8081
    data_dir: Path = Path(".rearview/registry")
    basic_auth_user_info: SecretStr | None = None
    # How often the worker re-reads the reader schemas (latest versions) of the raw topic.
    reader_ttl_s: float = Field(default=30.0, gt=0)


class ClickHouseSettings(BaseModel):
    # http(s)://host:port of a ClickHouse server, or chdb:///path for in-process chdb.
    url: str = "http://127.0.0.1:8123"
    database: str = "rearview"
    username: str = "default"
    password: SecretStr = SecretStr("")
    # Embedded endpoint (`rearview clickhouse`): chdb served over the ClickHouse HTTP interface.
    host: str = "127.0.0.1"
    port: int = 8123
    data_dir: Path = Path(".rearview/clickhouse")
    insert_timeout_s: float = 30.0


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    # Requests larger than this are refused with 413 before they are parsed.
    max_body_bytes: int = 5 * 1024 * 1024
    max_batch_events: int = 10_000
    # How long the collector may linger to fill a batch message before producing it.
    linger_ms: float = 5.0
    batch_max_events: int = 500
    # The gRPC collector (schemas/analytics.proto), served by the same process on its own
    # port (on the API's host); 0 turns it off.
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # Listen with SO_REUSEPORT, sharing the port with another process. `rearview up` sets it,
    # so a stand-in answers 503 on the port while it replaces the broker (app/embedded/standin.py);
    # left off, a second API started on a taken port fails instead of sharing it unnoticed.
    reuse_port: bool = False


class WorkerSettings(BaseModel):
    app_id: str = "rearview"
    data_dir: Path = Path(".rearview/worker")
    web_port: int = 6066
    take_max: int = 200
    take_within_s: float = 0.2
    sink_block_rows: int = 50_000
    sink_flush_s: float = 1.0
    # How long the store agent remembers an event_id to drop later copies (client retries,
    # the same event over two paths) before they reach ClickHouse; 24 bytes an id in memory.
    dedup_horizon_s: int = Field(default=3600, ge=1)
    # Backoff for infrastructure failures (registry or ClickHouse unreachable).
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    # A stage retrying longer than this turns the worker's /health failing (503), naming it.
    stall_after_s: float = Field(default=30.0, gt=0)
    # How often the store announces the events.clean partitions it owns to a replay's fence
    # (tables/fence.py; a replay counts a store as gone after 10 s without one). The fences
    # themselves are polled on the rollup flush timer.
    fence_heartbeat_s: float = Field(default=2.0, gt=0)


class ValidationSettings(BaseModel):
    """The validate stage's rules (agents/validate.py); a violation dead-letters the event.

    Times are checked against the event's receive time, which the pipeline stamps or bounds
    by its own clock (agents/validate.py explains the rule).
    """

    event_name_pattern: str = r"^[A-Za-z0-9_$][A-Za-z0-9_ .:/$-]{0,127}$"
    max_user_id_length: int = Field(default=256, ge=1)
    max_project_id_length: int = Field(default=64, ge=1)
    project_id_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
    max_past_s: int = Field(default=365 * 86400, ge=0)  # event time before receive time
    max_future_s: int = Field(default=86400, ge=0)  # event time after receive time
    # How long before its message entered Kafka a producer's context.received_at may be.
    max_receive_lag_s: int = Field(default=86400, ge=0)
    max_properties: int = Field(default=256, ge=0)
    max_key_length: int = Field(default=128, ge=1)
    max_value_length: int = Field(default=8192, ge=1)

    def rules(self) -> Rules:
        return Rules(
            event_name_pattern=self.event_name_pattern,
            max_user_id_length=self.max_user_id_length,
            max_project_id_length=self.max_project_id_length,
            project_id_pattern=self.project_id_pattern,
            max_past_ms=self.max_past_s * 1000,
            max_future_ms=self.max_future_s * 1000,
            max_receive_lag_ms=self.max_receive_lag_s * 1000,
            max_properties=self.max_properties,
            max_key_length=self.max_key_length,
            max_value_length=self.max_value_length,
        )


class PiiSettings(BaseModel):
    """Automatic redaction of personal data in clean events (see agents/pii)."""

    enabled: bool = True
    # HMAC key of the hash policy (emails by default). Every worker must use the same one.
    # When unset, a random key is generated once and kept in the worker's data directory.
    secret: SecretStr | None = None
    # Per detector: card, email, phone, iban, ssn, ip, bearer, jwt -> mask | hash | drop.
    policies: dict[str, Literal["mask", "hash", "drop"]] = {}
    allowlist: list[str] = []  # property keys never scanned (order_id, sku, ...)
    ip_policy: Literal["keep", "truncate", "hash", "drop"] = "truncate"
    hash_user_id_if_pii: bool = True


class AggregateSettings(BaseModel):
    """Real-time rollups (see tables/rollups.py for the fields of a rollup definition)."""

    enabled: bool = True
    # Changed partials are upserted into their rollup tables this often, not per event.
    flush_interval_s: float = Field(default=0.5, gt=0)
    # How often closed, idle windows are evicted from memory (they are loaded back if a late
    # event needs them); a window stays at least this long after its last change.
    evict_interval_s: float = Field(default=10.0, gt=0)
    rollups: list[RollupSpec] = list(DEFAULT_ROLLUPS)


class QuerySettings(BaseModel):
    """The query API (`POST /v1/query`, discovery, `rearview query`); see docs/query.md."""

    # IANA timezone of buckets and dates when a request names none.
    timezone: str = "UTC"
    date_range: str = "7d"
    # ClickHouse stops a query past these: 504 (time) or 422 (memory), never a hung request.
    max_execution_time_s: float = Field(default=30.0, gt=0)
    max_memory_usage_bytes: int = Field(default=4 * 1024**3, ge=1024**2)
    # Discovery endpoints look at this many days of recent events.
    discovery_days: int = Field(default=30, ge=1)


class AuthSettings(BaseModel):
    """API keys (app/auth.py). `required=False` is for local experiments only: every request
    then acts for `project_id`, and the API logs a warning at start."""

    required: bool = True
    refresh_s: float = Field(default=2.0, gt=0, le=4.0)  # a revoked key is refused within ~5 s
    write_events_per_s: float = Field(default=50_000, ge=0)  # per write key and API process; 0: no limit
    write_burst_events: float = Field(default=100_000, ge=1)
    read_requests_per_s: float = Field(default=50, ge=0)  # per read or admin key and API process
    read_burst_requests: float = Field(default=100, ge=1)


class DashboardSettings(BaseModel):
    """The dashboard's pipeline-health panel (`GET /v1/pipeline`, app/dashboard)."""

    # Prometheus endpoints of the workers to scrape for consumer lag and redactions; empty:
    # http://127.0.0.1:{worker.web_port}/metrics, the one worker `rearview up` starts.
    worker_metrics_urls: list[str] = []
    scrape_timeout_s: float = Field(default=2.0, gt=0)
    # Dead letters per minute are shown for this many minutes.
    dlq_minutes: int = Field(default=60, ge=1, le=1440)


class ReplaySettings(BaseModel):
    """`rearview replay` (app/replay): rebuilding tables into a generation, then the swap."""

    # Caught up: no new record on any partition for this long (offsets seen while consuming,
    # never the broker's end offsets).
    quiet_s: float = Field(default=2.0, gt=0)
    fetch_messages: int = Field(default=2000, ge=1)
    # Rollup states are flushed and positions committed this often: the most a resumed job
    # reads again.
    checkpoint_s: float = Field(default=2.0, gt=0)
    # The replay remembers every event_id it stored for this long (24 bytes an id), so copies
    # are dropped across the whole replay, whichever raw partition they are on.
    dedup_horizon_s: int = Field(default=30 * 86400, ge=1)
    # The hand-over: how long the live stores may take to pause, and the fence's lease.
    fence_timeout_s: float = Field(default=60.0, gt=0)
    fence_ttl_s: float = Field(default=30.0, gt=0)
    # Unique users of a rebuilt rollup may differ from the exact count by this much.
    hll_tolerance: float = Field(default=0.05, ge=0)


class ArchiveSettings(BaseModel):
    """The raw archive (agents/archive.py, docs/archive.md): every events.raw record as Parquet.

    `rearview archive run` fills it; `rearview up` starts it when `enabled`. A file is rolled
    per partition at `roll_records` records, `roll_bytes` bytes of records or `roll_interval_s`
    after its first record, whichever comes first, so a quiet partition's tail is archived
    within `roll_interval_s`; offsets are committed only after the file is written.
    """

    enabled: bool = True
    # A local folder, a file:// URL, or any filesystem pyarrow opens from a URI (s3://bucket/path,
    # gs://, hdfs://). `rearview up` puts the default one in its data directory.
    url: str = ".rearview/archive"
    roll_records: int = Field(default=100_000, ge=1)
    roll_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    roll_interval_s: float = Field(default=30.0, gt=0)
    compression: Literal["zstd", "snappy", "lz4", "gzip", "none"] = "zstd"
    # Backoff while Kafka or the archive's filesystem fails; the archiver never gives up.
    retry_initial_s: float = Field(default=0.5, gt=0)
    retry_max_s: float = Field(default=30.0, gt=0)


class LogSettings(BaseModel):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RV_", env_nested_delimiter="__", extra="ignore", frozen=True
    )

    project_id: str = "default"
    kafka: KafkaSettings = KafkaSettings()
    broker: BrokerSettings = BrokerSettings()
    registry: RegistrySettings = RegistrySettings()
    clickhouse: ClickHouseSettings = ClickHouseSettings()
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()
    aggregate: AggregateSettings = AggregateSettings()
    validation: ValidationSettings = ValidationSettings()
    pii: PiiSettings = PiiSettings()
    query: QuerySettings = QuerySettings()
    dashboard: DashboardSettings = DashboardSettings()
    auth: AuthSettings = AuthSettings()
    replay: ReplaySettings = ReplaySettings()
    archive: ArchiveSettings = ArchiveSettings()
    log: LogSettings = LogSettings()


def to_env(settings: BaseSettings | BaseModel, prefix: str = "RV_") -> dict[str, str]:
    """RV_* environment variables that rebuild *settings* in a child process."""
    import json

    env: dict[str, str] = {}
    for name, value in settings:
        key = f"{prefix}{name.upper()}"
        if isinstance(value, BaseModel):
            env.update(to_env(value, key + "__"))
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            env[key] = json.dumps([v.model_dump(mode="json") for v in value])
        elif isinstance(value, SecretStr):
            env[key] = value.get_secret_value()
        elif value is None:
            continue
        elif isinstance(value, (dict, list)):
            env[key] = json.dumps(value)
        else:
            env[key] = str(value)
    return env
