"""`AsyncClient`: the SDK for asyncio programs, over HTTP (aiohttp) or gRPC (grpc.aio).

    client = AsyncClient("http://127.0.0.1:8000", write_key="...")
    client.track("page_view", "user-1")         # plain call: queues and returns the id
    await client.flush()
    await client.shutdown()                     # before the loop ends: no atexit for a loop

Same queue, batching, retries and ``on_error`` as `Client`; the sender is a task in the running
loop, started by the first `track` (which must be called from inside the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson

from rearview_sdk.buffer import Backoff, Buffer
from rearview_sdk.client import OnError, _fallback_id
from rearview_sdk.events import (
    LIBRARY,
    DeliveryError,
    DeliveryFailed,
    Event,
    EventRejected,
    InvalidEvent,
    QueueFull,
    make_event,
)
from rearview_sdk.transports import (
    Refused,
    Retryable,
    Sent,
    batch_ack,
    grpc_outcome,
    grpc_target,
    refused_event,
    to_proto,
)

log = logging.getLogger("rearview_sdk")


class AsyncTransport(Protocol):
    async def send(self, batch: Sequence[Event]) -> Sent: ...

    async def close(self) -> None: ...


class AsyncHttpTransport:
    def __init__(self, url: str, write_key: str = "", *, gzip_level: int | None = 6,
                 timeout_s: float = 10.0) -> None:
        self._url = url.rstrip("/") + "/v1/batch"
        self._gzip_level = gzip_level
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", "User-Agent": LIBRARY}
        if gzip_level is not None:
            self._headers["Content-Encoding"] = "gzip"
        if write_key:
            self._headers["Authorization"] = f"Bearer {write_key}"
        self._session: Any = None

    async def _post(self, batch: Sequence[Event]) -> tuple[int, bytes, str | None]:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        data = orjson.dumps({"events": batch})
        if self._gzip_level is not None:
            data = gzip.compress(data, self._gzip_level)
        try:
            async with self._session.post(self._url, data=data, headers=self._headers) as resp:
                return resp.status, await resp.read(), resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from exc

    async def send(self, batch: Sequence[Event]) -> Sent:
        positions, pending = list(range(len(batch))), list(batch)
        rejected: list[tuple[int, str]] = []
        while pending:
            refused = refused_event(*await self._post(pending), len(pending))
            if refused is None:
                return Sent(rejected)
            rejected.append((positions.pop(refused[0]), refused[1]))
            pending.pop(refused[0])
        return Sent(rejected)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class AsyncGrpcTransport:
    def __init__(self, url: str, write_key: str = "", *, timeout_s: float = 10.0) -> None:
        self._target, self._secure = grpc_target(url)
        self._timeout_s = timeout_s
        self._metadata = (("authorization", f"Bearer {write_key}"),) if write_key else ()
        self._channel: Any = None
        self._call: Any = None

    async def send(self, batch: Sequence[Event]) -> Sent:
        import grpc

        from schemas import analytics_pb2, analytics_pb2_grpc

        if self._call is None:
            options = [("grpc.primary_user_agent", LIBRARY)]
            self._channel = (
                grpc.aio.secure_channel(self._target, grpc.ssl_channel_credentials(), options)
                if self._secure else grpc.aio.insecure_channel(self._target, options))
            self._call = analytics_pb2_grpc.AnalyticsServiceStub(self._channel).TrackBatch
        request = analytics_pb2.EventBatch(events=[to_proto(e) for e in batch])
        try:
            answer = await self._call(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            raise grpc_outcome(exc.code().name, exc.details() or "",
                               exc.trailing_metadata()) from exc
        return batch_ack(answer)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = self._call = None


class AsyncClient:
    def __init__(
        self,
        url: str | None = None,
        write_key: str = "",
        *,
        transport: AsyncTransport | None = None,
        max_queue_size: int = 10_000,
        batch_size: int = 100,
        batch_bytes: int = 512 * 1024,
        flush_interval_s: float = 0.5,
        max_retries: int = 10,
        backoff: Backoff | None = None,
        gzip: bool = True,
        timeout_s: float = 10.0,
        on_error: OnError | None = None,
        library: str = LIBRARY,
    ) -> None:
        if transport is None:
            if url is None:
                raise ValueError("give a url (http(s)://, grpc(s)://) or a transport")
            transport = (AsyncGrpcTransport(url, write_key, timeout_s=timeout_s)
                         if url.startswith(("grpc://", "grpcs://")) else
                         AsyncHttpTransport(url, write_key, gzip_level=6 if gzip else None,
                                            timeout_s=timeout_s))
        self._transport = transport
        self._buffer: Buffer[Event] = Buffer(max_queue_size, batch_size, batch_bytes,
                                             flush_interval_s)
        self._max_retries = max_retries
        self._backoff = backoff or Backoff()
        self._on_error = on_error
        self._library = library
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._flushing = False
        self._closed = False
        self._stop_at: float | None = None
        self.sent = self.dropped = self.failed = self.retries = 0

    def track(self, event: str, user_id: str | int, properties: Mapping[str, Any] | None = None,
              timestamp: datetime | int | None = None,
              event_id: str | uuid.UUID | None = None) -> str:
        """Queue one event and return its id at once; never blocks, never raises."""
        try:
            ev = make_event(event, user_id, properties, timestamp, event_id, self._library)
            size = len(orjson.dumps(ev))
        except Exception as exc:  # noqa: BLE001 - never into the app
            self._report(InvalidEvent(str(exc), [{"event": event, "user_id": user_id}]))
            return _fallback_id(event_id)
        if self._closed:
            self._report(DeliveryFailed("the client is shut down", [ev]))
        elif not self._buffer.add(ev, size, time.monotonic()):
            self.dropped += 1
            self._report(QueueFull(f"the queue holds {self._buffer.capacity} events", [ev]))
        else:
            try:
                self._start()
            except RuntimeError as exc:  # no running loop
                self._buffer.clear()
                self._report(DeliveryFailed(f"track() needs a running event loop: {exc}", [ev]))
            else:
                assert self._wake is not None
                self._wake.set()
        return ev["event_id"]

    def _start(self) -> None:
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._wake, self._idle = asyncio.Event(), asyncio.Event()
            self._task = loop.create_task(self._run(), name="rearview-sdk")

    async def flush(self, timeout_s: float | None = None) -> bool:
        if self._task is None:
            return not len(self._buffer)
        assert self._wake is not None and self._idle is not None
        self._flushing = True
        self._idle.clear()
        self._wake.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_at = time.monotonic() + timeout_s
        if self._task is not None:
            assert self._wake is not None
            self._wake.set()
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s + 0.5)
            if not done:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        left = self._buffer.clear()
        if left:
            self.failed += len(left)
            self._report(DeliveryFailed("shutdown timed out before these were sent", left))
        await self._transport.close()

    async def _run(self) -> None:
        assert self._wake is not None and self._idle is not None
        while True:
            now = time.monotonic()
            due = self._buffer.due_at()
            if self._stop_at is not None and now >= self._stop_at:
                return
            if due is None:
                self._flushing = False
                self._idle.set()
                if self._closed:
                    return
            elif due <= now or self._flushing or self._closed:
                batch = self._buffer.take()
                try:
                    await self._deliver(batch)
                except Exception as exc:  # the sender must outlive any bug
                    log.exception("rearview sdk sender failed")
                    self._fail(batch, DeliveryFailed(f"unexpected error: {exc}", batch))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if due is None else due - now)

    async def _deliver(self, batch: list[Event]) -> None:
        attempt = 0
        while True:
            try:
                result = await self._transport.send(batch)
            except Retryable as exc:
                delay = self._backoff.delay(attempt, exc.retry_after_s)
                attempt += 1
                if attempt > self._max_retries:
                    self._fail(batch, DeliveryFailed(f"gave up after {attempt} tries: {exc}", batch))
                    return
                self.retries += 1
                if self._stop_at is not None and time.monotonic() + delay > self._stop_at:
                    self._fail(batch, DeliveryFailed(f"shutdown while retrying: {exc}", batch))
                    return
                await asyncio.sleep(delay)
                continue
            except Refused as exc:
                self._fail(batch, EventRejected(str(exc), batch))
                return
            for index, reason in result.rejected:
                self._fail([batch[index]], EventRejected(reason, [batch[index]]))
            self.sent += len(batch) - len(result.rejected)
            return

    def _fail(self, events: list[Event], error: DeliveryError) -> None:
        self.failed += len(events)
        self._report(error)

    def _report(self, error: DeliveryError) -> None:
        if self._on_error is None:
            log.warning("rearview: %s event(s) not delivered: %s", len(error.events), error.reason)
            return
        try:
            self._on_error(error)
        except Exception:
            log.exception("rearview on_error callback raised")
