"""`Client`: track events from any Python program without ever blocking or raising into it.

    client = Client("http://127.0.0.1:8000", write_key="...")   # or "grpc://127.0.0.1:50051"
    event_id = client.track("button_click", "user-1", properties={"button_id": "signup"})

`track` turns its arguments into an event (id and timestamp fixed now), puts it in a bounded
queue and returns the event's id. A daemon thread sends the queue in batches (`Buffer`: by count,
bytes and interval), retrying what may succeed later with `Backoff`. Nothing reaches the app as
an exception: every event that does not arrive is passed to ``on_error`` (a `DeliveryError` with
the events) and counted (`dropped`, `failed`); ``on_error`` is called from the app's thread for
`track`'s own refusals and a full queue, from the sender thread otherwise.

Delivery is at least once: a batch is sent again until it is acknowledged, with the same event
ids, and Rearview stores an event id once. Events still queued when the program exits are sent
by an ``atexit`` hook for at most ``exit_timeout_s``. After ``os.fork()`` the child starts with an
empty queue and its own sender thread and connection (the parent's queued events are the
parent's to send); a child that leaves with ``os._exit`` (multiprocessing workers do) skips
``atexit``: call `flush` first.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

from rearview_sdk.buffer import Backoff, Buffer
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
from rearview_sdk.transports import Refused, Retryable, Sent, Transport, transport_for

log = logging.getLogger("rearview_sdk")

OnError = Callable[[DeliveryError], object]


class Client:
    def __init__(
        self,
        url: str | None = None,
        write_key: str = "",
        *,
        transport: Transport | None = None,
        max_queue_size: int = 10_000,
        batch_size: int = 100,
        batch_bytes: int = 512 * 1024,
        flush_interval_s: float = 0.5,
        max_retries: int = 10,
        backoff: Backoff | None = None,
        gzip: bool = True,
        timeout_s: float = 10.0,
        exit_timeout_s: float = 5.0,
        on_error: OnError | None = None,
        library: str = LIBRARY,
    ) -> None:
        if transport is None:
            if url is None:
                raise ValueError("give a url (http(s)://, grpc(s)://) or a transport")
            transport = transport_for(url, write_key, gzip_level=6 if gzip else None,
                                      timeout_s=timeout_s)
        self._transport = transport
        self._limits = (max_queue_size, batch_size, batch_bytes, flush_interval_s)
        self._max_retries = max_retries
        self._backoff = backoff or Backoff()
        self._on_error = on_error
        self._library = library
        self.exit_timeout_s = exit_timeout_s
        self._reset()
        ref = weakref.ref(self)
        atexit.register(_at_exit, ref)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (whose copies of the parent's
        locks may be held by a thread that does not exist there)."""
        capacity, size, nbytes, interval = self._limits
        self._cond = threading.Condition(threading.Lock())
        self._buffer: Buffer[Event] = Buffer(capacity, size, nbytes, interval)
        self._in_flight = 0
        self._flushing = False
        self._closed = False
        self._stop_at: float | None = None  # shutdown: give up on what is unsent by then
        self._thread: threading.Thread | None = None
        self.sent = 0  # events acknowledged
        self.dropped = 0  # events refused because the queue was full
        self.failed = 0  # events refused by the collector or given up on
        self.retries = 0  # batches sent again after a retryable failure

    # -- the app's side ---------------------------------------------------------------------

    def track(
        self,
        event: str,
        user_id: str | int,
        properties: Mapping[str, Any] | None = None,
        timestamp: datetime | int | None = None,
        event_id: str | uuid.UUID | None = None,
    ) -> str:
        """Queue one event and return its id at once. *timestamp*: a datetime or epoch
        milliseconds (default: now). Never blocks, never raises; see ``on_error``."""
        try:
            ev = make_event(event, user_id, properties, timestamp, event_id, self._library)
            size = len(orjson.dumps(ev))
        except Exception as exc:  # noqa: BLE001 - never into the app
            self._report(InvalidEvent(str(exc), [{"event": event, "user_id": user_id}]))
            return _fallback_id(event_id)
        try:
            with self._cond:
                if self._closed:
                    refused: DeliveryError | None = DeliveryFailed("the client is shut down", [ev])
                elif self._buffer.add(ev, size, time.monotonic()):
                    refused = None
                    self._start()
                    due = self._buffer.due_at()
                    if len(self._buffer) == 1 or (due is not None and due <= time.monotonic()):
                        self._cond.notify()
                else:
                    self.dropped += 1
                    refused = QueueFull(f"the queue holds {self._buffer.capacity} events", [ev])
        except Exception as exc:  # noqa: BLE001 - e.g. no thread can be started at exit
            refused = DeliveryFailed(f"cannot queue: {exc}", [ev])
        if refused is not None:
            self._report(refused)
        return ev["event_id"]

    def flush(self, timeout_s: float | None = None) -> bool:
        """Send everything queued now; True when all of it was handled within *timeout_s*."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            while len(self._buffer) or self._in_flight:
                if self._thread is None or not self._thread.is_alive():
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop taking events, send what is queued for at most *timeout_s*, then stop: what is
        still unsent goes to ``on_error`` as DeliveryFailed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._stop_at = time.monotonic() + timeout_s
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s + 0.5)
        with self._cond:
            left = self._buffer.clear()
            self.failed += len(left)
        if left:
            self._report(DeliveryFailed("shutdown timed out before these were sent", left))
        try:
            self._transport.close()
        except Exception:
            log.debug("transport close failed", exc_info=True)

    @property
    def queued(self) -> int:
        return len(self._buffer)

    # -- the sender thread ------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rearview-sdk", daemon=True)
            self._thread.start()

    def _next_batch(self) -> list[Event] | None:
        """Wait for a due batch; None when the client is closed and everything is handled."""
        with self._cond:
            while True:
                now = time.monotonic()
                due = self._buffer.due_at()
                if due is None:
                    if self._flushing:
                        self._flushing = False
                        self._cond.notify_all()
                    if self._closed:
                        return None
                elif self._stop_at is not None and now >= self._stop_at:
                    return None  # shutdown's time is up: it reports what is left
                elif due <= now or self._flushing or self._closed:
                    batch = self._buffer.take()
                    self._in_flight = len(batch)
                    return batch
                self._cond.wait(None if due is None else due - now)

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._deliver(batch)
            except Exception as exc:  # the sender must outlive any bug
                log.exception("rearview sdk sender failed")
                self._fail(batch, DeliveryFailed(f"unexpected error: {exc}", batch))
            with self._cond:
                self._in_flight = 0
                self._cond.notify_all()

    def _deliver(self, batch: list[Event]) -> None:
        attempt = 0
        while True:
            try:
                result: Sent = self._transport.send(batch)
            except Retryable as exc:
                delay = self._backoff.delay(attempt, exc.retry_after_s)
                attempt += 1
                if attempt > self._max_retries:
                    self._fail(batch, DeliveryFailed(f"gave up after {attempt} tries: {exc}", batch))
                    return
                self.retries += 1
                if not self._sleep(delay):
                    self._fail(batch, DeliveryFailed(f"shutdown while retrying: {exc}", batch))
                    return
                continue
            except Refused as exc:
                self._fail(batch, EventRejected(str(exc), batch))
                return
            for index, reason in result.rejected:
                self._fail([batch[index]], EventRejected(reason, [batch[index]]))
            with self._cond:
                self.sent += len(batch) - len(result.rejected)
            return

    def _sleep(self, delay: float) -> bool:
        """Wait *delay* before a retry; False if shutdown's deadline comes first."""
        with self._cond:
            end = time.monotonic() + delay
            while True:
                now = time.monotonic()
                if self._stop_at is not None and self._stop_at < end:
                    if now >= self._stop_at:
                        return False
                elif now >= end:
                    return True
                self._cond.wait(min(end, self._stop_at or end) - now)

    def _fail(self, events: list[Event], error: DeliveryError) -> None:
        with self._cond:
            self.failed += len(events)
        self._report(error)

    def _report(self, error: DeliveryError) -> None:
        if self._on_error is None:
            log.warning("rearview: %s event(s) not delivered: %s", len(error.events), error.reason)
            return
        try:
            self._on_error(error)
        except Exception:  # an on_error that raises must not break tracking
            log.exception("rearview on_error callback raised")


def _fallback_id(event_id: object) -> str:
    try:
        return str(uuid.UUID(str(event_id))) if event_id is not None else str(uuid.uuid4())
    except ValueError:
        return str(event_id)


def _at_exit(ref: weakref.ref[Client]) -> None:
    client = ref()
    if client is not None:
        client.shutdown(client.exit_timeout_s)


def _after_fork(ref: weakref.ref[Client]) -> None:
    client = ref()
    if client is not None:
        client._reset()
        client._transport.after_fork()
