"""`send_http` (`rearview generate`, demo traffic): a collector that is paused or unreachable for
a while gets the same batch again, with the same event ids; any other refusal stops it."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from app.embedded.process import free_port
from app.generate import EventGenerator, send_http


async def collector(answers: list[int], seen: list[list[str]]) -> tuple[web.AppRunner, str]:
    """A collector answering each POST with the next status of *answers* (then 202)."""

    async def batch(request: web.Request) -> web.Response:
        body: dict[str, Any] = await request.json()
        seen.append([e["event_id"] for e in body["events"]])
        status = answers.pop(0) if answers else 202
        return web.json_response({"detail": "paused"}, status=status)

    app = web.Application()
    app.router.add_post("/v1/batch", batch)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


async def test_a_paused_collector_gets_the_same_batch_again() -> None:
    seen: list[list[str]] = []
    runner, url = await collector([503, 503, 202, 503], seen)
    try:
        sent = await send_http(url, EventGenerator(users=10, seed=3).events(), 20, 1e6, 10, retry_s=10)
    finally:
        await runner.cleanup()
    assert sent == 20
    assert len(seen) == 5
    assert seen[0] == seen[1] == seen[2], "the same events, ids and all, until accepted"
    assert seen[3] == seen[4] and seen[3] != seen[0]


async def test_an_unreachable_collector_is_retried_until_it_answers() -> None:
    seen: list[list[str]] = []
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    import asyncio

    async def start_later() -> web.AppRunner:
        await asyncio.sleep(1.0)
        app = web.Application()

        async def batch(request: web.Request) -> web.Response:
            seen.append([e["event_id"] for e in (await request.json())["events"]])
            return web.json_response({}, status=202)

        app.router.add_post("/v1/batch", batch)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    later = asyncio.create_task(start_later())
    sent = await send_http(url, EventGenerator(users=10, seed=3).events(), 10, 1e6, 10, retry_s=10)
    await (await later).cleanup()
    assert sent == 10 and len(seen) == 1


async def test_a_refused_batch_stops_with_the_collectors_answer() -> None:
    seen: list[list[str]] = []
    runner, url = await collector([400], seen)
    try:
        with pytest.raises(RuntimeError, match="collector answered 400"):
            await send_http(url, EventGenerator(users=10, seed=3).events(), 10, 1e6, 10, retry_s=10)
    finally:
        await runner.cleanup()
    assert len(seen) == 1


async def test_a_collector_paused_for_too_long_is_reported() -> None:
    seen: list[list[str]] = []
    runner, url = await collector([503] * 100, seen)
    try:
        with pytest.raises(RuntimeError, match="answered 503.*for 1s"):
            await send_http(url, EventGenerator(users=10, seed=3).events(), 10, 1e6, 10, retry_s=1)
    finally:
        await runner.cleanup()
