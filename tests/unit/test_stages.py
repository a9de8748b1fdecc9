"""A stage that keeps retrying is named as stalled; it recovers with its first success."""

from __future__ import annotations

import pytest

from agents.stages import StageWatch
from core.exceptions import ServiceUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_a_retrying_stage_is_stalled_after_the_threshold_and_recovers_on_success() -> None:
    clock = Clock()
    watch = StageWatch(clock)
    attempts = []

    async def insert() -> str:
        attempts.append(clock.now)
        if len(attempts) < 4:
            clock.now += 20  # each failed attempt and its backoff: 20 s of the clock
            assert watch.stalled(30) == ({} if len(attempts) < 3 else {"events_insert": 40.0})
            raise ServiceUnavailable("ClickHouse insert failed")
        return "durable"

    assert await watch.retry("events_insert", insert, 0.001, 0.001) == "durable"
    assert len(attempts) == 4
    assert watch.stalled(0) == {}, "recovered"


async def test_other_errors_are_not_retried() -> None:
    watch = StageWatch()

    async def bug() -> None:
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        await watch.retry("rollup_flush", bug, 0.001, 0.001)
    assert watch.stalled(-1) == {}
