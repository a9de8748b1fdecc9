"""The replay's plan: targets, ranges, and where each partition is read from."""

from __future__ import annotations

import pytest

from app.replay.jobs import ReplayError
from app.replay.plan import Logs, parse_offsets, parse_targets, parse_time, plan_events
from app.replay.sources import Quiet
from tables.rollups import DEFAULT_ROLLUPS


def test_targets_events_alone_or_configured_rollups_in_configuration_order() -> None:
    names = [s.name for s in DEFAULT_ROLLUPS]
    assert parse_targets(["events"], DEFAULT_ROLLUPS) == ("events",)
    assert parse_targets(["rollups"], DEFAULT_ROLLUPS) == tuple(f"rollup:{n}" for n in names)
    assert parse_targets([f"rollup:{names[1]}", f"rollup:{names[0]}"], DEFAULT_ROLLUPS) == (
        f"rollup:{names[0]}", f"rollup:{names[1]}")
    with pytest.raises(ReplayError, match="not configured"):
        parse_targets(["rollup:nope"], DEFAULT_ROLLUPS)
    with pytest.raises(ReplayError, match="unknown target"):
        parse_targets(["tables"], DEFAULT_ROLLUPS)


def test_times_and_offsets() -> None:
    assert parse_time("1700000000000") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000_000  # zone-less is UTC
    with pytest.raises(ReplayError, match="ISO-8601"):
        parse_time("yesterday")
    assert parse_offsets("0:10-20, 3:5-") == {0: (10, 20), 3: (5, None)}
    for bad in ("0:20-10", "x:1-2", "1"):
        with pytest.raises(ReplayError):
            parse_offsets(bad)


def test_auto_reads_the_archive_up_to_where_kafka_begins_and_refuses_a_gap() -> None:
    logs = Logs(kafka_low={0: 0, 1: 500, 2: 900}, archive_next={0: 0, 1: 700, 2: 800},
                archive_records=lambda p, a, b: (b or 0) - a)
    plans = plan_events([0, 1], "auto", logs, {0: (0, None), 1: (0, None)}, {0: 10, 1: 0})
    assert [(p.source, p.start, p.switch_at) for p in plans] == [("kafka", 0, None), ("archive+kafka", 0, 500)]
    assert plans[1].estimated_events == 500
    with pytest.raises(ReplayError, match="neither in the archive"):
        plan_events([2], "auto", logs, {2: (0, None)}, {})
    with pytest.raises(ReplayError, match="no longer in Kafka"):
        plan_events([1], "kafka", logs, {1: (0, None)}, {})
    no_archive = Logs(kafka_low={1: 500}, archive_next=None)
    with pytest.raises(ReplayError, match="no archive"):
        plan_events([1], "auto", no_archive, {1: (0, None)}, {})
    archive_only = plan_events([1], "archive", logs, {1: (100, None)}, {})
    assert [(p.source, p.start, p.stop) for p in archive_only] == [("archive", 100, 700)]


def test_caught_up_after_a_quiet_period_of_deliveries() -> None:
    now = [0.0]
    quiet = Quiet(2.0, clock=lambda: now[0])
    now[0] = 1.5
    quiet.saw(10)
    now[0] = 3.0
    assert not quiet.caught_up
    quiet.saw(0)
    now[0] = 3.6
    assert quiet.caught_up
