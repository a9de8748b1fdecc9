"""How a batch reaches Rearview: HTTP (POST /v1/batch), gRPC (TrackBatch) or Kafka (EventBatch).

A transport's `send` returns only when the batch is acknowledged (HTTP 202, a gRPC BatchAck,
the broker's acks), listing the events the collector refused, or raises:
- `Retryable`: nothing of the batch is known to be accepted and sending it again is safe
  (network errors, timeouts, HTTP 429 and 5xx, gRPC UNAVAILABLE and the like, Kafka
  unreachable). Events keep their ids, so a batch that did arrive the first time is stored once;
- `Refused`: the collector refused the whole batch for good (a 4xx that names no event, gRPC
  INVALID_ARGUMENT, UNAUTHENTICATED, ...); sending it again would give the same answer.
An HTTP 400 that names one event (``events[3]: user_id is required``) refuses that event alone:
the transport sends the others again without it, as gRPC's TrackBatch accepts them at once.

A transport is used by one sender at a time. After a fork, `after_fork` drops what the child
must not share with its parent (connections, channels, producers); they are made anew on use.
"""

from __future__ import annotations

# getaddrinfo encodes the host name with the idna codec, which Python imports on first use. A
# first connection made while the interpreter exits (the atexit flush of a forked child that
# had not sent yet) can no longer import it: "LookupError: unknown encoding: idna".
import encodings.idna  # noqa: F401
import gzip
import http.client
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson

from rearview_sdk.events import LIBRARY, Event


class Retryable(Exception):
    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class Refused(Exception):
    """The whole batch is refused for good."""


@dataclass
class Sent:
    # (index in the batch sent, reason) of each event the collector refused.
    rejected: list[tuple[int, str]] = field(default_factory=list)


class Transport(Protocol):
    def send(self, batch: Sequence[Event]) -> Sent: ...

    def close(self) -> None: ...

    def after_fork(self) -> None: ...


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


_INDEXED = re.compile(r"events\[(\d+)\]: ")


class HttpTransport:
    """POST /v1/batch, JSON, gzip-compressed, over one kept-alive connection."""

    def __init__(self, url: str, write_key: str = "", *, gzip_level: int | None = 6,
                 timeout_s: float = 10.0, user_agent: str = LIBRARY) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path.rstrip("/") + "/v1/batch"
        self._gzip_level = gzip_level
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", "User-Agent": user_agent}
        if gzip_level is not None:
            self._headers["Content-Encoding"] = "gzip"
        if write_key:
            self._headers["Authorization"] = f"Bearer {write_key}"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout_s)
        return self._conn

    def body(self, batch: Sequence[Event]) -> bytes:
        data = orjson.dumps({"events": batch})
        return data if self._gzip_level is None else gzip.compress(data, self._gzip_level)

    def _post(self, batch: Sequence[Event]) -> tuple[int, bytes, str | None]:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=self.body(batch), headers=self._headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Retryable(f"{type(exc).__name__}: {exc}") from exc
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        return resp.status, data, resp.getheader("Retry-After")

    def send(self, batch: Sequence[Event]) -> Sent:
        positions = list(range(len(batch)))  # original index of each event still being sent
        pending = list(batch)
        rejected: list[tuple[int, str]] = []
        while pending:
            refused = refused_event(*self._post(pending), len(pending))
            if refused is None:
                return Sent(rejected)
            rejected.append((positions.pop(refused[0]), refused[1]))
            pending.pop(refused[0])
        return Sent(rejected)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def after_fork(self) -> None:
        self._conn = None  # the parent's socket: not closed here, the parent still uses it


def refused_event(status: int, data: bytes, retry_after_header: str | None,
                  sent: int) -> tuple[int, str] | None:
    """What the collector's answer to a batch of *sent* events means, for both HTTP
    transports: None when it was accepted; (index, reason) when a 400 names one event, which
    is dropped and the rest sent again; raises Retryable (429, 5xx) or Refused (any other
    4xx)."""
    if 200 <= status < 300:
        return None
    error = _error_text(data) or f"HTTP {status}"
    if status == 429 or status >= 500:
        raise Retryable(f"HTTP {status}: {error}", retry_after(retry_after_header))
    indexed = _INDEXED.match(error) if status == 400 else None
    if indexed is None or int(indexed.group(1)) >= sent:
        raise Refused(f"HTTP {status}: {error}")
    return int(indexed.group(1)), error[indexed.end():]


def _error_text(data: bytes) -> str:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return data[:200].decode("utf-8", "replace")
    return str(doc.get("error", "")) if isinstance(doc, dict) else ""


def to_proto(event: Event) -> Any:
    from schemas import analytics_pb2

    return analytics_pb2.Event(
        event_name=event["event"], user_id=event["user_id"], timestamp=event["timestamp"],
        properties=event["properties"], event_id=event["event_id"],
        library=event["context"].get("library", ""))


# gRPC codes after which the same call may succeed.
RETRY_CODES = frozenset(("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED",
                         "INTERNAL", "UNKNOWN", "CANCELLED"))


def grpc_target(url: str) -> tuple[str, bool]:
    """(host:port, secure) of ``grpc://host:port`` or ``grpcs://host:port``."""
    parts = urlsplit(url)
    if parts.scheme not in ("grpc", "grpcs") or not parts.hostname:
        raise ValueError(f"not a grpc(s):// URL: {url!r}")
    secure = parts.scheme == "grpcs"
    return f"{parts.hostname}:{parts.port or (443 if secure else 50051)}", secure


def grpc_outcome(code_name: str, details: str, trailing: Any) -> Exception:
    after = None
    for key, value in trailing or ():
        if key == "retry-after" and isinstance(value, str):
            after = retry_after(value)
    if code_name in RETRY_CODES:
        return Retryable(f"gRPC {code_name}: {details}", after)
    return Refused(f"gRPC {code_name}: {details}")


def batch_ack(answer: Any) -> Sent:
    return Sent([(r.index, f"{r.field}: {r.reason}" if r.field else r.reason)
                 for r in answer.rejections])


class GrpcTransport:
    """AnalyticsService.TrackBatch over one channel; the write key as ``authorization`` metadata."""

    def __init__(self, url: str, write_key: str = "", *, timeout_s: float = 10.0) -> None:
        self._target, self._secure = grpc_target(url)
        self._timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {write_key}"),) if write_key else ()
        self._channel: Any = None
        self._call: Callable[..., Any] | None = None

    def _stub_call(self) -> Callable[..., Any]:
        if self._call is None:
            import grpc

            from schemas import analytics_pb2_grpc

            options = [("grpc.primary_user_agent", LIBRARY)]
            self._channel = (grpc.secure_channel(self._target, grpc.ssl_channel_credentials(), options)
                             if self._secure else grpc.insecure_channel(self._target, options))
            self._call = analytics_pb2_grpc.AnalyticsServiceStub(self._channel).TrackBatch
        return self._call

    def send(self, batch: Sequence[Event]) -> Sent:
        import grpc

        from schemas import analytics_pb2

        request = analytics_pb2.EventBatch(events=[to_proto(e) for e in batch])
        try:
            answer = self._stub_call()(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise grpc_outcome(exc.code().name, exc.details() or "",
                               exc.trailing_metadata()) from exc
        return batch_ack(answer)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._call = None

    def after_fork(self) -> None:
        # gRPC channels do not survive a fork; the child makes its own on first use.
        self._channel = self._call = None


class KafkaTransport:
    """EventBatch messages (Avro, Confluent framing) straight to events.raw, as the collector
    writes them: for services inside the trust boundary that want the highest throughput.

    The schema is registered (idempotently) with the registry on first use. Nothing checks these
    events before the worker does: an event the worker refuses becomes a dead letter, not an
    ``on_error`` call. The project is this transport's *project_id*: a service writing to Kafka is
    trusted with it, as any Kafka producer is."""

    def __init__(self, bootstrap_servers: str, registry_url: str, *, topic: str = "events.raw",
                 project_id: str = "default", producer_config: dict[str, Any] | None = None,
                 timeout_s: float = 10.0, max_message_bytes: int = 900_000) -> None:
        self._config = {"bootstrap.servers": bootstrap_servers, "linger.ms": 5,
                        "compression.type": "lz4", "message.timeout.ms": int(timeout_s * 1000),
                        **(producer_config or {})}
        self._registry_url = registry_url
        self._topic = topic
        self._project_id = project_id
        self._timeout_s = timeout_s
        self._max_bytes = max_message_bytes
        self._writer: Any = None
        self._producer: Any = None

    def _ready(self) -> tuple[Any, Any]:
        if self._writer is None:
            import schemas
            from agents.codec import BatchWriter
            from agents.schema_registry import register

            try:
                schema_id = register(self._registry_url, self._topic, schemas.EVENT_BATCH,
                                     timeout_s=self._timeout_s)
            except Exception as exc:  # registry down is an outage: retry
                raise Retryable(f"schema registry: {exc}") from exc
            self._writer = BatchWriter(schemas.EVENT_BATCH, schema_id)
        if self._producer is None:
            from confluent_kafka import Producer

            self._producer = Producer(self._config)
        return self._writer, self._producer

    def record(self, event: Event) -> dict[str, Any]:
        return {
            "event_id": event["event_id"], "project_id": self._project_id,
            "event_name": event["event"], "user_id": event["user_id"],
            "timestamp": event["timestamp"], "properties": event["properties"],
            "context": {"ip": None, "user_agent": None,
                        "library": event["context"].get("library"), "received_at": None},
        }

    def send(self, batch: Sequence[Event]) -> Sent:
        writer, producer = self._ready()
        messages = writer.encode_chunks([self.record(e) for e in batch], self._max_bytes)
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err.str())

        try:
            for value in messages:
                producer.produce(self._topic, value=value, on_delivery=delivered)
        except BufferError as exc:
            raise Retryable(f"Kafka producer queue full: {exc}") from exc
        except Exception as exc:  # KafkaException: the broker, not the data
            raise Retryable(f"Kafka: {exc}") from exc
        left = producer.flush(self._timeout_s)
        if errors or left:
            raise Retryable(f"Kafka: {errors[0] if errors else f'{left} messages unacknowledged'}")
        return Sent()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self._timeout_s)
            self._producer = None

    def after_fork(self) -> None:
        self._producer = None  # librdkafka's threads are not in the child: make a new one


def transport_for(url: str, write_key: str = "", *, gzip_level: int | None = 6,
                  timeout_s: float = 10.0) -> Transport:
    """HTTP for http(s):// URLs, gRPC for grpc:// (plaintext) and grpcs:// (TLS)."""
    if url.startswith(("grpc://", "grpcs://")):
        return GrpcTransport(url, write_key, timeout_s=timeout_s)
    return HttpTransport(url, write_key, gzip_level=gzip_level, timeout_s=timeout_s)
