"""Batching events from many requests into few Kafka messages, and knowing when they are safe.

Every request adds its events to the open batch and awaits the batch's delivery. A batch is
sent when it holds `max_events` events or `linger_s` after its first event, whichever comes
first, as one EventBatch message (or a few, if it would exceed `max_bytes`). The request is
answered only after the broker acknowledged every message holding its events, so a 202 means
the events are in Kafka.

confluent-kafka's Producer is thread-safe and non-blocking; a background thread serves its
delivery callbacks and hands results back to the event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Producer

from agents.codec import BatchWriter
from core.exceptions import ServiceUnavailable

log = structlog.get_logger(__name__)


class BatchingProducer:
    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        writer: BatchWriter,
        *,
        linger_s: float = 0.005,
        max_events: int = 500,
        max_bytes: int = 900_000,
        delivery_timeout_s: float = 30.0,
    ) -> None:
        self._producer = Producer(
            {
                "linger.ms": 2,
                "compression.type": "lz4",
                "message.max.bytes": 1_000_000,
                "delivery.timeout.ms": int(delivery_timeout_s * 1000),
                **config,
            }
        )
        self._topic = topic
        self._writer = writer
        self._linger_s = linger_s
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._pending: list[dict[str, Any]] = []
        self._pending_done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()
        self.sent_events = 0

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send(self, events: list[dict[str, Any]]) -> None:
        """Return when every event is acknowledged by the broker; ServiceUnavailable otherwise."""
        loop = asyncio.get_running_loop()
        if self._pending_done is None:
            self._pending_done = loop.create_future()
            self._timer = loop.call_later(self._linger_s, self._flush)
        done = self._pending_done
        self._pending.extend(events)
        if len(self._pending) >= self._max_events:
            self._flush()
        await asyncio.shield(done)

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        events, done = self._pending, self._pending_done
        self._pending, self._pending_done = [], None
        if done is None or not events:
            return
        loop = asyncio.get_running_loop()
        try:
            messages = self._writer.encode_chunks(events, self._max_bytes)
        except Exception as exc:  # noqa: BLE001 - every waiter must get an answer
            log.error("batch_encode_failed", events=len(events), error=str(exc))
            _fail(done, ServiceUnavailable(f"cannot encode the batch: {exc}"))
            return
        remaining = len(messages)

        def delivered(err: KafkaError | None, _msg: object) -> None:
            nonlocal remaining
            if err is not None:
                loop.call_soon_threadsafe(_fail, done, ServiceUnavailable(f"Kafka: {err.str()}"))
                return
            remaining -= 1
            if remaining == 0:
                loop.call_soon_threadsafe(_succeed, done)

        try:
            for value in messages:
                self._produce(value, delivered)
        except (KafkaException, BufferError) as exc:
            _fail(done, ServiceUnavailable(f"Kafka: {exc}"))
            return
        self.sent_events += len(events)

    def _produce(self, value: bytes, callback: Any) -> None:
        try:
            self._producer.produce(self._topic, value=value, on_delivery=callback)
        except BufferError:
            # Local queue full (broker slow or down): give the poller a moment to drain it.
            self._producer.poll(0.5)
            self._producer.produce(self._topic, value=value, on_delivery=callback)

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Send what is pending, wait for outstanding deliveries, stop the poller."""
        self._flush()
        await asyncio.to_thread(self._close, timeout_s)

    def _close(self, timeout_s: float) -> None:
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning("producer_unflushed", messages=remaining)
        self._stop.set()
        self._poller.join(timeout=1)


def _succeed(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _fail(fut: asyncio.Future[None], exc: Exception) -> None:
    if not fut.done():
        fut.set_exception(exc)
