"""Talking to the schema registry (any Confluent-compatible one): register at start-up, and a
cached, async lookup of writer schemas by id for the worker.

A registry that cannot be reached is an infrastructure fault: callers wait and retry, and no
event is dead-lettered for it. Only an id the registry positively does not know (40403) makes
a message invalid.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

import schemas
from agents.codec import WriterSchema, with_reader, writer_schema
from core.exceptions import RearviewError, ServiceUnavailable
from core.retry import Backoff

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
    """Writer schemas by id, each resolved against the pipeline's reader schema.

    A writer schema under an id never changes (the registry guarantees it), so writers are
    fetched once. The reader for a record name is the latest version registered under
    ``<topic>-<record full name>`` (TopicRecordNameStrategy), re-read every *reader_ttl_s* so
    that a registered evolution is picked up without a restart; a name with no such subject
    has no reader and is decoded with its writer schema alone.

    A failure is never served from the cache. A writer the cached reader cannot read (its
    messages would be dead-lettered as ResolutionError) has its reader re-read in every
    `ensure` call that names it, that is before every batch holding such a message (and so
    does a writer seen for the first time that the cached reader cannot read), so a fix
    registered a moment ago applies to the very next message: a redrive right after the fix
    (`rearview dlq redrive`) goes through, where it used to re-fail for up to *reader_ttl_s*.
    This costs one registry request per failing record name per batch, only while failing
    data flows. An id the registry answered 404 for is asked again after *reader_ttl_s*
    (a registry restored from a backup may learn it). A fix that changes how a *readable*
    writer is read (a new default a rule needs) still applies within *reader_ttl_s*.
    """

    def __init__(
        self,
        url: str,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 10.0,
        topic: str | None = None,
        reader_ttl_s: float = 30.0,
    ) -> None:
        self._url = url.rstrip("/")
        self._writers: dict[int, WriterSchema | None] = {}
        self._unknown_at: dict[int, float] = {}  # when the registry last answered 404 for an id
        self._known: dict[int, WriterSchema | None] = {}
        self._readers: dict[str, tuple[float, int | None, str | None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._retry = (retry_initial_s, retry_max_s)
        self._topic = topic
        self._reader_ttl_s = reader_ttl_s

    def get(self, schema_id: int) -> WriterSchema | None:
        return self._known.get(schema_id)

    @property
    def known(self) -> dict[int, WriterSchema | None]:
        """Resolved writer schemas by id (None: the registry does not know the id)."""
        return self._known

    async def ensure(self, ids: Iterable[int]) -> None:
        """Fetch and resolve every id, retrying (forever, with backoff) while unreachable."""
        ids = set(ids)
        backoff = Backoff(*self._retry)
        while True:
            try:
                await self._ensure(ids)
                return
            except ServiceUnavailable as exc:
                delay = backoff.next()
                if backoff.should_log():
                    log.warning("registry_unavailable", error=str(exc), retry_in_s=round(delay, 2))
                await asyncio.sleep(delay)

    async def _ensure(self, ids: set[int]) -> None:
        now = time.monotonic()
        for schema_id in sorted(i for i in ids if self._writer_due(i, now)):
            writer = await self._fetch_writer(schema_id)
            self._writers[schema_id] = writer
            if writer is None:
                self._unknown_at[schema_id] = now
            else:
                self._unknown_at.pop(schema_id, None)
        refreshed: set[str] = set()  # names whose reader this call already re-read
        for schema_id in ids:
            writer = self._writers[schema_id]
            if writer is None or self._topic is None:
                self._known[schema_id] = writer
                continue
            name = writer.full_name
            cached = self._readers.get(name)
            if cached is None or now - cached[0] > self._reader_ttl_s:
                cached = await self._refresh_reader(name, now, refreshed)
            current = self._known.get(schema_id)
            if current is None or current.reader_id != cached[1]:
                current = with_reader(writer, cached[1], cached[2])
                self._known[schema_id] = current
            if current.resolution_error is not None and name not in refreshed:
                # About to fail every message of this writer: not on a cached reader's word.
                cached = await self._refresh_reader(name, now, refreshed)
                if cached[1] != current.reader_id:
                    self._known[schema_id] = with_reader(writer, cached[1], cached[2])

    async def _refresh_reader(
        self, name: str, now: float, refreshed: set[str]
    ) -> tuple[float, int | None, str | None]:
        reader_id, reader_text = await self._fetch_reader(name)
        self._readers[name] = (now, reader_id, reader_text)
        refreshed.add(name)
        return self._readers[name]

    def _writer_due(self, schema_id: int, now: float) -> bool:
        if schema_id not in self._writers:
            return True
        unknown_at = self._unknown_at.get(schema_id)
        return unknown_at is not None and now - unknown_at > self._reader_ttl_s

    async def _get(self, path: str) -> tuple[int, Any]:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        try:
            async with self._session.get(f"{self._url}{path}") as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ServiceUnavailable(f"registry at {self._url}: {exc!r}") from exc
        if resp.status not in (200, 404):
            raise ServiceUnavailable(f"registry answered {resp.status}: {body}")
        return resp.status, body

    async def _fetch_writer(self, schema_id: int) -> WriterSchema | None:
        status, body = await self._get(f"/schemas/ids/{schema_id}")
        if status == 404:
            log.info("schema_unknown", schema_id=schema_id)
            return None
        if body.get("schemaType", "AVRO") != "AVRO":
            return None
        try:
            return writer_schema(schema_id, body["schema"])
        except ValueError:
            return None

    async def _fetch_reader(self, full_name: str) -> tuple[int | None, str | None]:
        subject = quote(schemas.subject(str(self._topic), full_name), safe="")
        status, body = await self._get(f"/subjects/{subject}/versions/latest")
        if status == 404:
            return None, None
        return int(body["id"]), str(body["schema"])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass(frozen=True)
class SchemaFile:
    """A schema to register or check: its record full name and its text."""

    full_name: str
    text: str

    @classmethod
    def load(cls, path: Path) -> SchemaFile:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RearviewError(f"{path}: not a readable Avro schema file ({exc})") from exc
        name = schemas.full_name(doc)
        if not name:
            raise RearviewError(f"{path}: the top level must be a named record")
        return cls(name, json.dumps(doc, separators=(",", ":")))

    @classmethod
    def bundled(cls) -> list[SchemaFile]:
        return [cls(name, schemas.schema_str(name)) for name in schemas.bundled()]


def register_file(url: str, topic: str, schema: SchemaFile) -> tuple[str, int, int]:
    """(subject, id, version) after registering; RearviewError with the registry's message."""
    client = SchemaRegistryClient({"url": url, "timeout": 10})
    subject = schemas.subject(topic, schema.full_name)
    try:
        schema_id = client.register_schema(subject, Schema(schema.text, "AVRO"))
        version = client.lookup_schema(subject, Schema(schema.text, "AVRO")).version
    except SchemaRegistryError as exc:
        raise RearviewError(f"{subject}: {exc.error_message}") from exc
    except Exception as exc:  # connection refused, timeouts
        raise ServiceUnavailable(f"schema registry at {url} unreachable: {exc}") from exc
    return subject, int(schema_id), int(version or 0)


def check_file(url: str, topic: str, schema: SchemaFile) -> tuple[str, list[str]]:
    """(subject, problems) of registering *schema* now; no problems means compatible."""
    subject = schemas.subject(topic, schema.full_name)
    path = f"/compatibility/subjects/{quote(subject, safe='')}/versions/latest?verbose=true"
    request = urllib.request.Request(
        url.rstrip("/") + path,
        data=json.dumps({"schema": schema.text, "schemaType": "AVRO"}).encode(),
        headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read() or b"{}")
        if body.get("error_code") in (40401, 40402):
            return subject, []  # a new subject: nothing registered to break
        raise RearviewError(f"{subject}: {body.get('message', exc)}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ServiceUnavailable(f"schema registry at {url} unreachable: {exc}") from exc
    if body.get("is_compatible"):
        return subject, []
    return subject, [str(m) for m in body.get("messages", [])] or ["incompatible"]
