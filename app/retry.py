"""Exponential backoff with jitter, and log throttling for repeated failures."""

from __future__ import annotations

import random
import time


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
