"""Which stage of the worker is stuck: a retry that has lasted too long turns /health failing.

A stage (``produce``, ``clickhouse``, ``rollup_flush``, ...) is *retrying* from its first failed
attempt until the attempt that succeeds. While any stage has been retrying for longer than the
threshold, the worker's ``/health`` answers 503 with the stage named, so an orchestrator or an
operator sees an outage or a poison write at once instead of a silently frozen pipeline.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from core.exceptions import ServiceUnavailable
from core.retry import retry_forever

T = TypeVar("T")


class StageWatch:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: dict[str, float] = {}

    def failed(self, stage: str) -> None:
        self._since.setdefault(stage, self._clock())

    def recovered(self, stage: str) -> None:
        self._since.pop(stage, None)

    def stalled(self, after_s: float) -> dict[str, float]:
        """Stages retrying for more than *after_s*, with how long (seconds)."""
        now = self._clock()
        return {stage: round(now - since, 1) for stage, since in self._since.items() if now - since > after_s}

    async def retry(self, stage: str, action: Callable[[], Awaitable[T]], initial_s: float,
                    max_s: float) -> T:
        """`retry_forever`, recording the stage as retrying while its attempts fail."""

        async def attempt() -> T:
            try:
                result = await action()
            except ServiceUnavailable:
                self.failed(stage)
                raise
            self.recovered(stage)
            return result

        return await retry_forever(stage, attempt, initial_s, max_s)
