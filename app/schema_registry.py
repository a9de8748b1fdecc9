"""Talking to the schema registry (any Confluent-compatible one): register at start-up, and a
cached, async lookup of writer schemas by id for the worker.

A registry that cannot be reached is an infrastructure fault: callers wait and retry, and no
event is dead-lettered for it. Only an id the registry positively does not know (40403) makes
a message invalid.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import aiohttp
import structlog
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

import schemas
from agents.codec import WriterSchema, writer_schema
from app.exceptions import RearviewError, ServiceUnavailable
from app.retry import Backoff

log = structlog.get_logger(__name__)


def register(url: str, topic: str, full_name: str, timeout_s: float = 60.0) -> int:
    """Register a schema of ``schemas/`` under the topic's TopicRecordNameStrategy subject.

    Idempotent: registering the same schema again returns the same id. Waits for the registry
    up to *timeout_s*; an incompatible or invalid schema raises RearviewError at once.
    """
    client = SchemaRegistryClient({"url": url, "timeout": 10})
    subject = schemas.subject(topic, full_name)
    backoff = Backoff(0.2, 2.0)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return int(client.register_schema(subject, Schema(schemas.schema_str(full_name), "AVRO")))
        except SchemaRegistryError as exc:
            if exc.http_status_code and exc.http_status_code < 500:
                raise RearviewError(f"registry refused {subject}: {exc.error_message}") from exc
            error: Exception = exc
        except Exception as exc:  # connection refused, timeouts
            error = exc
        if time.monotonic() > deadline:
            raise ServiceUnavailable(f"schema registry at {url} unreachable: {error}") from error
        time.sleep(backoff.next())


class SchemaCache:
    """Writer schemas by id, fetched once over HTTP and kept for the life of the process.

    Schemas under an id never change (the registry guarantees it), so the cache never expires.
    Unknown ids are remembered as None only after the registry answered 404.
    """

    def __init__(self, url: str, retry_initial_s: float = 0.2, retry_max_s: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._known: dict[int, WriterSchema | None] = {}
        self._session: aiohttp.ClientSession | None = None
        self._retry = (retry_initial_s, retry_max_s)

    def get(self, schema_id: int) -> WriterSchema | None:
        return self._known.get(schema_id)

    @property
    def known(self) -> dict[int, WriterSchema | None]:
        return self._known

    async def ensure(self, ids: Iterable[int]) -> None:
        """Fetch every id not cached yet, retrying (forever, with backoff) while unreachable."""
        missing = {i for i in ids if i not in self._known}
        if not missing:
            return
        backoff = Backoff(*self._retry)
        for schema_id in sorted(missing):
            while True:
                try:
                    self._known[schema_id] = await self._fetch(schema_id)
                    break
                except ServiceUnavailable as exc:
                    delay = backoff.next()
                    if backoff.should_log():
                        log.warning("registry_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                    await asyncio.sleep(delay)

    async def _fetch(self, schema_id: int) -> WriterSchema | None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.get(f"{self._url}/schemas/ids/{schema_id}") as resp:
                body = await resp.json(content_type=None)
                if resp.status == 404:
                    log.info("schema_unknown", schema_id=schema_id)
                    return None
                if resp.status != 200:
                    raise ServiceUnavailable(f"registry answered {resp.status}: {body}")
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ServiceUnavailable(f"registry at {self._url}: {exc!r}") from exc
        if body.get("schemaType", "AVRO") != "AVRO":
            return None
        try:
            return writer_schema(schema_id, body["schema"])
        except ValueError:
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
