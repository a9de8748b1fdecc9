"""Exponential backoff with jitter, and log throttling for repeated failures."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from core.exceptions import ServiceUnavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")


class Backoff:
    """Delays that double from *initial_s* up to *max_s*, with +-20% jitter.

    `should_log` answers True for the first failure and then at most every 10 s, so an outage
    of an hour writes a few hundred lines, not millions.
    """

    def __init__(self, initial_s: float = 0.2, max_s: float = 10.0) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempts = 0
        self._last_log = float("-inf")

    def next(self) -> float:
        delay = min(self.max_s, self.initial_s * (2**self.attempts))
        self.attempts += 1
        return delay * random.uniform(0.8, 1.2)

    def should_log(self, every_s: float = 10.0) -> bool:
        now = time.monotonic()
        if now - self._last_log >= every_s:
            self._last_log = now
            return True
        return False

    def reset(self) -> None:
        self.attempts = 0


async def retry_forever(
    what: str, action: Callable[[], Awaitable[T]], initial_s: float = 0.2, max_s: float = 10.0
) -> T:
    """Await *action* until it succeeds, backing off while it raises ServiceUnavailable.

    For infrastructure failures only (broker, registry, ClickHouse): while they last, the
    caller simply does not proceed, so nothing is acked and nothing is dead-lettered.
    """
    backoff = Backoff(initial_s, max_s)
    while True:
        try:
            return await action()
        except ServiceUnavailable as exc:
            delay = backoff.next()
            if backoff.should_log():
                log.warning(f"{what}_retrying", error=str(exc), retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
