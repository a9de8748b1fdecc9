"""The SDK's batching and backoff decisions, as pure objects (no threads, no clock of their own).

`Buffer` holds queued events and says when a batch is due: as soon as it holds ``max_events``
events or ``max_bytes`` bytes, or when its oldest event has waited ``interval_s``, or at once
when a flush was asked for. It is bounded: `add` refuses an event when ``capacity`` events are
already waiting, and the caller drops it. `Backoff` spaces the retries of one batch.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class Buffer(Generic[T]):
    capacity: int = 10_000
    max_events: int = 100
    max_bytes: int = 512 * 1024
    interval_s: float = 0.5
    _items: deque[tuple[T, int, float]] = field(default_factory=deque, repr=False)
    _bytes: int = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T, size: int, now: float) -> bool:
        """Queue *item* of *size* bytes, tracked at *now*; False (not queued) when full."""
        if len(self._items) >= self.capacity:
            return False
        self._items.append((item, size, now))
        self._bytes += size
        return True

    def due_at(self) -> float | None:
        """When the next batch is due (<= now: at once), or None when empty."""
        if not self._items:
            return None
        if len(self._items) >= self.max_events or self._bytes >= self.max_bytes:
            return float("-inf")
        return self._items[0][2] + self.interval_s

    def take(self) -> list[T]:
        """The next batch: the oldest events, at most max_events and max_bytes (at least one)."""
        batch: list[T] = []
        size = 0
        while self._items and len(batch) < self.max_events:
            item, n, _ = self._items[0]
            if batch and size + n > self.max_bytes:
                break
            self._items.popleft()
            self._bytes -= n
            size += n
            batch.append(item)
        return batch

    def clear(self) -> list[T]:
        items = [item for item, _, _ in self._items]
        self._items.clear()
        self._bytes = 0
        return items


@dataclass
class Backoff:
    """Exponential backoff with jitter, or the server's Retry-After when it gave one.

    Attempt n waits a random time in [d/2, d], d = min(max_s, initial_s * 2^n): the jitter keeps
    many clients that failed together from retrying together. A Retry-After is honoured as
    given (up to ``max_retry_after_s``), plus up to 10% jitter."""

    initial_s: float = 0.1
    max_s: float = 10.0
    max_retry_after_s: float = 60.0
    random: Callable[[], float] = random.random

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        if retry_after_s is not None and retry_after_s >= 0:
            wait = min(retry_after_s, self.max_retry_after_s)
            return wait + wait * 0.1 * self.random()
        d = min(self.max_s, self.initial_s * 2 ** min(attempt, 32))
        return d / 2 + d / 2 * self.random()
