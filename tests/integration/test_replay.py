"""`rearview replay` on the real embedded stack: rebuild, verify, hand over, swap, resume."""

from __future__ import annotations

import pytest

from app import replay as rp
from app.verify import overall, verify
from tests.integration.conftest import Pipeline, wait_for
from tests.integration.replay_helpers import events_over_days, exact, send

pytestmark = pytest.mark.integration


def test_events_replay_rebuilds_every_event_once_and_swaps_with_a_live_worker(pipeline: Pipeline) -> None:
    events = events_over_days(3000, 3)
    send(pipeline, events, corrupt=3)
    send(pipeline, events[:500])  # the same events again: duplicates
    pipeline.start_worker()
    wait_for(lambda: exact(pipeline, 3000), 120, "the live pipeline to store 3,000 events exactly")
    letters = pipeline.scalar("SELECT count() FROM dlq")

    job = rp.start(pipeline.settings, rp.Request(("events",), source="kafka"))

    assert isinstance(job, rp.Job)
    assert job.status == "swapped", job.error
    totals = job.totals()
    assert totals["events"] == 3500 + 3 and totals["duplicates"] == 500 and totals["letters"] == 3
    assert pipeline.scalar("SELECT count() FROM events") == 3000
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == 3000
    assert pipeline.scalar("SELECT countIf(_clean_offset = 549755813887) FROM events") == 3000
    assert pipeline.scalar("SELECT count() FROM dlq FINAL") == letters  # not written twice
    assert overall(verify(pipeline.ch, pipeline.settings.aggregate.rollups)) == "exact"
