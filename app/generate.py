"""`rearview generate`: synthetic, realistic traffic.

A fixed population of users, each with a country, device and browser, browses in sessions:
page views, clicks, and a signup funnel (pricing page -> signup_start -> signup -> purchase)
with realistic drop-off, so funnels and breakdowns in the dashboard have shape. Events go to
the collector over HTTP (the path apps use) or straight to Kafka as EventBatch messages (the
path services use).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp

COUNTRIES = [("US", 30), ("DE", 12), ("GB", 10), ("FR", 8), ("IN", 10), ("BR", 8), ("JP", 6),
             ("CA", 5), ("ES", 4), ("NL", 3), ("SE", 2), ("PL", 2)]
DEVICES = [("desktop", 50), ("mobile", 42), ("tablet", 8)]
BROWSERS = {"desktop": [("chrome", 60), ("firefox", 15), ("safari", 12), ("edge", 13)],
            "mobile": [("chrome", 55), ("safari", 45)],
            "tablet": [("safari", 70), ("chrome", 30)]}
PAGES = ["/", "/pricing", "/docs", "/blog", "/features", "/about", "/changelog"]
BUTTONS = ["signup-cta", "play-video", "download", "contact-sales", "upgrade", "share"]
PLANS = [("free", 70), ("pro", 25), ("team", 5)]
PRICES = {"pro": "29.0", "team": "99.0"}


def _pick(rng: random.Random, weighted: list[tuple[str, int]]) -> str:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@dataclass(frozen=True)
class User:
    user_id: str
    country: str
    device_type: str
    browser: str


class EventGenerator:
    """Endless stream of collector-format JSON events (dicts), deterministic for a seed."""

    def __init__(self, users: int = 1000, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.users = [self._user(i) for i in range(max(1, users))]

    def _user(self, i: int) -> User:
        device = _pick(self.rng, DEVICES)
        return User(f"user-{i}", _pick(self.rng, COUNTRIES), device, _pick(self.rng, BROWSERS[device]))

    def _event(self, name: str, user: User, ts_ms: int, **props: str) -> dict[str, Any]:
        return {
            "event_id": str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            "event": name,
            "user_id": user.user_id,
            "timestamp": ts_ms,
            "properties": {"country": user.country, "device_type": user.device_type,
                           "browser": user.browser, **props},
            "context": {"library": "rearview-generate/1"},
        }

    def session(self, now_ms: int) -> list[dict[str, Any]]:
        """One user's session: a few page views and clicks, sometimes the signup funnel."""
        rng = self.rng
        user = rng.choice(self.users)
        ts = now_ms - rng.randint(0, 5_000)
        out = []
        for _ in range(rng.randint(1, 6)):
            out.append(self._event("page_view", user, ts, path=rng.choice(PAGES)))
            ts += rng.randint(500, 20_000)
            if rng.random() < 0.4:
                out.append(self._event("button_click", user, ts, button_id=rng.choice(BUTTONS)))
                ts += rng.randint(200, 5_000)
        if rng.random() < 0.3:  # the funnel
            out.append(self._event("page_view", user, ts, path="/pricing"))
            if rng.random() < 0.5:
                out.append(self._event("signup_start", user, ts + 3_000))
                if rng.random() < 0.6:
                    plan = _pick(rng, PLANS)
                    out.append(self._event("signup", user, ts + 9_000, plan=plan))
                    if plan in PRICES and rng.random() < 0.5:
                        out.append(self._event("purchase", user, ts + 15_000, plan=plan,
                                               price=PRICES[plan], currency="USD"))
        return out

    def events(self, clock: Callable[[], float] = time.time) -> Iterator[dict[str, Any]]:
        while True:
            yield from self.session(int(clock() * 1000))


class Pacer:
    """Sleeps so that a sender averages *rate* events/s (0: as fast as possible)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.start = time.monotonic()
        self.sent = 0

    async def after(self, n: int) -> None:
        self.sent += n
        if self.rate > 0:
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
            if ahead > 0:
                await asyncio.sleep(ahead)


async def send_http(
    url: str,
    events: Iterator[dict[str, Any]],
    count: int,
    rate: float,
    batch_size: int,
    on_progress: Callable[[int], None] = lambda n: None,
    key: str | None = None,
    retry_s: float = 60.0,
) -> int:
    """POST batches to the collector's /v1/batch with the write *key*; returns events
    accepted. count 0: forever. A batch the collector cannot take now (unreachable, 503: `up`
    pauses it while its broker's log rolls) is sent again, with the same event ids, for up to
    *retry_s*."""
    pacer = Pacer(rate)
    sent = 0
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession(base_url=url.rstrip("/") + "/", headers=headers) as http:
        while count == 0 or sent < count:
            n = batch_size if count == 0 else min(batch_size, count - sent)
            chunk = [next(events) for _ in range(n)]
            deadline, delay = time.monotonic() + retry_s, 0.2
            while True:
                try:
                    async with http.post("v1/batch", json={"events": chunk}) as resp:
                        if resp.status == 202:
                            break
                        if resp.status != 503:
                            raise RuntimeError(f"collector answered {resp.status}: {await resp.text()}")
                        why = f"answered 503: {await resp.text()}"
                except aiohttp.ClientConnectionError as exc:
                    why = f"unreachable: {exc}"
                if time.monotonic() + delay > deadline:
                    raise RuntimeError(f"collector {why} for {retry_s:g}s")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            sent += n
            on_progress(n)
            await pacer.after(n)
    return sent


def send_kafka(
    bootstrap_servers: str,
    topic: str,
    batch_schema_id: int,
    events: Iterator[dict[str, Any]],
    count: int,
    rate: float,
    batch_size: int,
    on_progress: Callable[[int], None] = lambda n: None,
    project_id: str = "default",
) -> int:
    """Produce EventBatch messages of *project_id* straight to Kafka (as a service would: a
    producer with Kafka access is trusted with its events' project). count 0: forever."""
    from confluent_kafka import Producer

    import schemas
    from agents.codec import BatchWriter
    from app.collector.normalize import to_event

    writer = BatchWriter(schemas.EVENT_BATCH, batch_schema_id)
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 5,
                         "compression.type": "lz4"})
    pacer = Pacer(rate)
    sent = 0
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    loop = asyncio.new_event_loop()
    try:
        while count == 0 or sent < count:
            n = batch_size if count == 0 else min(batch_size, count - sent)
            now = int(time.time() * 1000)
            batch = [to_event(next(events), received_at_ms=now, project_id=project_id) for _ in range(n)]
            for value in writer.encode_chunks(batch, 900_000):
                while True:
                    try:
                        producer.produce(topic, value=value, on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.1)
            producer.poll(0)
            if failures:
                raise RuntimeError(f"Kafka delivery failed: {failures[0]}")
            sent += n
            on_progress(n)
            loop.run_until_complete(pacer.after(n))
        producer.flush(30)
    finally:
        loop.close()
    if failures:
        raise RuntimeError(f"Kafka delivery failed: {failures[0]}")
    return sent
