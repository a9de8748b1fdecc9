"""The worker's registry cache never serves a stale failure: a fix applies to the next batch."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

import schemas
from agents.schema_registry import SchemaCache

TOPIC = "events.raw"
NAME = "com.shop.Purchase"


def purchase(price_type: Any) -> str:
    doc = schemas.load(schemas.EVENT)
    doc.update(name="Purchase", namespace="com.shop")
    doc["fields"] = [*doc["fields"], {"name": "price", "type": price_type}]
    return json.dumps(doc)


class FakeRegistry:
    """Schemas by id, the latest id per subject, and a count of requests by path."""

    def __init__(self) -> None:
        self.by_id: dict[int, str] = {}
        self.latest: dict[str, int] = {}
        self.requests: Counter[str] = Counter()

    def app(self) -> web.Application:
        async def by_id(request: web.Request) -> web.Response:
            self.requests[request.path] += 1
            schema_id = int(request.match_info["id"])
            if schema_id not in self.by_id:
                return web.json_response({"error_code": 40403}, status=404)
            return web.json_response({"schema": self.by_id[schema_id]})

        async def latest(request: web.Request) -> web.Response:
            self.requests[request.path] += 1
            subject = request.match_info["subject"]
            if subject not in self.latest:
                return web.json_response({"error_code": 40401}, status=404)
            schema_id = self.latest[subject]
            return web.json_response({"id": schema_id, "schema": self.by_id[schema_id]})

        app = web.Application()
        app.router.add_get("/schemas/ids/{id}", by_id)
        app.router.add_get("/subjects/{subject}/versions/latest", latest)
        return app


@pytest.fixture
async def registry() -> AsyncIterator[tuple[FakeRegistry, str]]:
    fake = FakeRegistry()
    server = TestServer(fake.app())
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


SUBJECT = schemas.subject(TOPIC, NAME)


async def test_a_fix_registered_just_now_applies_to_the_next_batch(
    registry: tuple[FakeRegistry, str],
) -> None:
    fake, url = registry
    fake.by_id = {1: purchase("string"), 2: purchase("int")}  # 1: the reader, 2: a rogue writer
    fake.latest = {SUBJECT: 1}
    cache = SchemaCache(url, topic=TOPIC, reader_ttl_s=30.0)
    try:
        await cache.ensure({2})
        rogue = cache.get(2)
        assert rogue is not None and rogue.resolution_error is not None
        assert "price" in rogue.resolution_error

        # The fix: a reader that reads both, registered well within the 30 s reader TTL.
        fake.by_id[3] = purchase(["string", "int"])
        fake.latest[SUBJECT] = 3
        await cache.ensure({2})
        fixed = cache.get(2)
        assert fixed is not None and fixed.resolution_error is None and fixed.reader_id == 3
    finally:
        await cache.close()


async def test_a_writer_first_seen_after_a_fix_is_not_failed_on_the_cached_reader(
    registry: tuple[FakeRegistry, str],
) -> None:
    """Letters dead-lettered by another worker, redriven here: this cache has never seen their
    writer, but it holds the reader from its own (good) traffic, fetched before the fix."""
    fake, url = registry
    fake.by_id = {1: purchase("string"), 2: purchase("int")}
    fake.latest = {SUBJECT: 1}
    cache = SchemaCache(url, topic=TOPIC, reader_ttl_s=30.0)
    try:
        await cache.ensure({1})
        fake.by_id[3] = purchase(["string", "int"])
        fake.latest[SUBJECT] = 3
        await cache.ensure({2})
        fixed = cache.get(2)
        assert fixed is not None and fixed.resolution_error is None and fixed.reader_id == 3
    finally:
        await cache.close()


async def test_readable_writers_are_served_from_the_cache_within_the_ttl(
    registry: tuple[FakeRegistry, str],
) -> None:
    fake, url = registry
    fake.by_id = {1: purchase("string"), 2: purchase("int")}
    fake.latest = {SUBJECT: 1}
    cache = SchemaCache(url, topic=TOPIC, reader_ttl_s=30.0)
    try:
        for _ in range(5):
            await cache.ensure({1})
        assert fake.requests[f"/subjects/{SUBJECT}/versions/latest"] == 1
        assert fake.requests["/schemas/ids/1"] == 1
        # A failing writer costs one reader request per call (per batch), not one per id.
        fake.by_id[4] = purchase("long")
        before = fake.requests[f"/subjects/{SUBJECT}/versions/latest"]
        for _ in range(3):
            await cache.ensure({2, 4})
        assert fake.requests[f"/subjects/{SUBJECT}/versions/latest"] - before == 3
        assert fake.requests["/schemas/ids/2"] == 1  # writers are immutable: fetched once
    finally:
        await cache.close()


async def test_an_unknown_id_is_asked_again_after_the_ttl(registry: tuple[FakeRegistry, str]) -> None:
    fake, url = registry
    fake.by_id = {1: purchase("string")}
    fake.latest = {SUBJECT: 1}
    cache = SchemaCache(url, topic=TOPIC, reader_ttl_s=0.05)
    try:
        await cache.ensure({7})
        assert 7 in cache.known and cache.get(7) is None
        await cache.ensure({7})
        assert fake.requests["/schemas/ids/7"] == 1  # within the TTL: remembered
        fake.by_id[7] = purchase("string")
        await asyncio.sleep(0.1)
        await cache.ensure({7})
        assert cache.get(7) is not None
    finally:
        await cache.close()
