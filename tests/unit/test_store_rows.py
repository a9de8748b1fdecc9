"""What the store agent refuses to write: rows only a producer forging events.clean can make."""

from __future__ import annotations

import uuid

from agents.records import CleanEvent
from agents.sink import to_arrow
from agents.store import MAX_TIME_MS, implausible_rows
from tables.columns import int64


def row(event_id: str, ts: int = 1_796_116_500_000, received: int = 1_796_116_500_000) -> CleanEvent:
    return CleanEvent(event_id=event_id, project_id="default", event_name="e", user_id="u",
                      timestamp=ts, properties={}, ip=None, user_agent=None, library=None,
                      received_at=received, schema_id=1, source_partition=0, source_offset=0,
                      source_index=0)


def test_ids_that_are_not_canonical_uuids_and_unstorable_times_are_implausible() -> None:
    good = str(uuid.uuid4())
    rows = [row(good), row("not-a-uuid"), row(good.upper()), row(good[:-1]), row(good, ts=-1),
            row(good, ts=MAX_TIME_MS), row(good, received=MAX_TIME_MS + 5), row(good, ts=MAX_TIME_MS - 1)]
    block = to_arrow(rows)
    ts = int64(block.column("ts"), "ts")
    assert implausible_rows(block, ts).tolist() == [False, True, True, True, True, True, True, False]
