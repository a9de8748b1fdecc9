"""The pipeline owns time: receive time bounded by the worker's clock, event time by the columns.

Each case of issue 8 is a message a hostile or broken producer can write today; the outcome a
user cares about is that every stored timestamp fits every column it goes into, that one bad
clock cannot make other events late, and that replays and redrives of old data stay valid.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from agents.codec import BatchWriter, writer_schema
from agents.dlq import Redrive
from agents.records import MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS, CleanEvent, SourceMeta
from agents.sink import to_arrow
from agents.validate import DAY_MS, Rules, Validator, entry_time
from app.collector.normalize import BadEvent, to_event
from tables.aggregate import Aggregator
from tables.rollups import DEFAULT_ROLLUPS

NOW = 1_796_116_500_000  # 2026-12-01T09:15:00Z
HOUR_MS = 3_600_000
BATCH_ID = 10
SCHEMAS = {BATCH_ID: writer_schema(BATCH_ID, schemas.schema_str(schemas.EVENT_BATCH))}
WRITER = BatchWriter(schemas.EVENT_BATCH, BATCH_ID)
INT64 = st.integers(-(2**63), 2**63 - 1)
YEAR_3000_MS = 32_503_680_000_000

validator = Validator()


def event(timestamp: int, received_at: int | None, user: str = "u1") -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "project_id": "default",
        "event_name": "page_view",
        "user_id": user,
        "timestamp": timestamp,
        "properties": {"country": "DE"},
        "context": {"ip": None, "user_agent": None, "library": None, "received_at": received_at},
    }


def run(events: list[dict[str, Any]], kafka_ts: int, now: int = NOW, offset: int = 0,
        redrive: Redrive | None = None, v: Validator = validator) -> tuple[list[CleanEvent], list[str]]:
    meta = SourceMeta("events.raw", 0, offset, kafka_ts)
    result = v.validate_message(WRITER.encode(events), None, meta, SCHEMAS, now, redrive=redrive)
    return result.clean, [i.reason for i in result.invalid]


def test_a_timestamp_of_2_to_the_62_ms_is_dead_lettered_even_when_every_clock_agrees() -> None:
    far = 2**62
    clean, reasons = run([event(far, far)], kafka_ts=far)
    assert clean == [] and "timestamp" in reasons[0]


def test_the_year_3000_is_dead_lettered_not_left_to_fail_the_rollup_upsert() -> None:
    clean, reasons = run([event(YEAR_3000_MS, YEAR_3000_MS)], kafka_ts=YEAR_3000_MS)
    assert clean == [] and "timestamp" in reasons[0]


def test_an_event_before_1970_is_dead_lettered_not_stored_as_year_0000() -> None:
    for ts in (-(2**50), -1):
        clean, reasons = run([event(ts, ts)], kafka_ts=ts)
        assert clean == [] and "outside the storable range" in reasons[0]


def test_the_last_storable_millisecond_is_accepted_and_the_next_is_not() -> None:
    lenient = Validator(Rules(max_future_ms=MAX_TIMESTAMP_MS))
    clean, _ = run([event(MAX_TIMESTAMP_MS, None)], kafka_ts=NOW, v=lenient)
    assert [e["timestamp"] for e in clean] == [MAX_TIMESTAMP_MS]
    clean, reasons = run([event(MAX_TIMESTAMP_MS + 1, None)], kafka_ts=NOW, v=lenient)
    assert clean == [] and "outside the storable range" in reasons[0]


def test_a_receive_time_ahead_of_the_worker_clock_is_replaced_by_the_worker_clock() -> None:
    ahead = NOW + HOUR_MS
    [clean], _ = run([event(ahead, ahead)], kafka_ts=ahead)
    assert clean["received_at"] == NOW  # the event's own time is allowed 1 day of skew
    assert clean["timestamp"] == ahead


def test_a_producer_clock_an_hour_ahead_does_not_make_the_partitions_other_events_late() -> None:
    ahead = NOW + HOUR_MS
    skewed, _ = run([event(ahead, ahead, user="skewed")], kafka_ts=ahead, offset=0)
    honest, _ = run([event(NOW - 30_000 - i, NOW - 10, user=f"h{i}") for i in range(20)],
                    kafka_ts=NOW - 5, offset=1)
    agg = Aggregator(DEFAULT_ROLLUPS)
    result = agg.apply(to_arrow(skewed + honest), 0, 0)
    assert result.rows == 21 and result.applied == 21 * len(DEFAULT_ROLLUPS)
    # The watermark (which decides what leaves memory) follows Rearview's receive clock, so
    # the skewed producer cannot push the honest events' windows out.
    assert agg.partition_watermarks()[0] <= NOW


def test_a_forged_old_receive_time_is_replaced_by_the_entry_time() -> None:
    forged = NOW - 30 * DAY_MS  # more than max_receive_lag before the message entered Kafka
    [clean], _ = run([event(forged, forged)], kafka_ts=NOW - 100)
    assert clean["received_at"] == NOW - 100
    # ...so an event time far in the past is judged against the entry time, not the claim.
    clean, reasons = run([event(NOW - 400 * DAY_MS, NOW - 400 * DAY_MS)], kafka_ts=NOW - 100)
    assert clean == [] and "further in the past" in reasons[0]


def test_a_worker_hours_behind_keeps_the_collectors_receive_time() -> None:
    [clean], _ = run([event(NOW - 1000, NOW - 5)], kafka_ts=NOW, now=NOW + 3 * HOUR_MS)
    assert clean["received_at"] == NOW - 5


def test_a_replay_years_later_gives_the_same_verdicts_and_receive_times_as_the_first_read() -> None:
    then = NOW - 2 * 365 * DAY_MS
    events = [event(then - 1000, then - 3), event(then - 400 * DAY_MS, then - 3),
              event(then + 2 * DAY_MS, then - 3), event(then - 5, None)]
    first = run(events, kafka_ts=then, now=then + 200)
    replay = run(events, kafka_ts=then, now=NOW)
    assert first == replay
    assert [e["received_at"] for e in first[0]] == [then - 3, then]
    assert len(first[1]) == 2


def test_a_redrive_long_after_the_first_failure_judges_time_as_the_first_read_did() -> None:
    then = NOW - 500 * DAY_MS
    redrive = Redrive(SourceMeta("events.raw", 3, 77, NOW), None, 2, then + 50)
    # The redrive is a new message: its Kafka timestamp is the redrive's time, now.
    [clean], reasons = run([event(then - 1000, then)], kafka_ts=NOW, redrive=redrive)
    assert reasons == [] and clean["received_at"] == then
    assert entry_time(SourceMeta("events.raw", 0, 0, NOW), NOW, redrive) == then + 50


def test_a_message_without_a_kafka_timestamp_is_stamped_with_the_worker_clock() -> None:
    [clean], _ = run([event(NOW - 1000, None)], kafka_ts=-1)
    assert clean["received_at"] == NOW


def test_the_collector_check_applies_the_same_time_rules() -> None:
    ok = event(NOW - 1000, NOW)
    assert validator.check(ok, NOW) is None
    reason = validator.check(event(NOW + 2 * DAY_MS, NOW), NOW)
    assert reason is not None and reason.startswith("timestamp is further in the future")
    reason = validator.check(event(YEAR_3000_MS, NOW), NOW)
    assert reason is not None and "timestamp" in reason


@settings(max_examples=400, deadline=None)
@given(
    timestamp=INT64,
    received_at=st.one_of(st.none(), INT64, st.integers(NOW - 2 * DAY_MS, NOW + 2 * DAY_MS)),
    kafka_ts=st.one_of(st.just(-1), INT64, st.integers(NOW - 2 * DAY_MS, NOW + 2 * DAY_MS)),
    first_failed_at=st.one_of(st.none(), st.integers(MIN_TIMESTAMP_MS, MAX_TIMESTAMP_MS)),
    now=st.integers(NOW - 3650 * DAY_MS, NOW + 3650 * DAY_MS),
    near=st.booleans(),
)
def test_whatever_the_clocks_say_a_stored_event_fits_every_column_and_the_rules(
    timestamp: int, received_at: int | None, kafka_ts: int, first_failed_at: int | None,
    now: int, near: bool,
) -> None:
    if near:  # also draw event times close to the clocks, where the bounds are decided
        timestamp = now + timestamp % (4 * DAY_MS) - 2 * DAY_MS
    redrive = (None if first_failed_at is None
               else Redrive(SourceMeta("events.raw", 1, 2, kafka_ts), None, 2, first_failed_at))
    clean, invalid = run([event(timestamp, received_at)], kafka_ts=kafka_ts, now=now,
                         redrive=redrive)
    assert len(clean) + len(invalid) == 1
    for e in clean:
        assert MIN_TIMESTAMP_MS <= e["timestamp"] <= MAX_TIMESTAMP_MS
        assert MIN_TIMESTAMP_MS <= e["received_at"] <= now  # never ahead of the worker's clock
        r = validator.rules
        assert e["received_at"] - r.max_past_ms <= e["timestamp"] <= e["received_at"] + r.max_future_ms
        # The rollup window (DateTime, whole seconds since 1970) fits in 32 bits.
        assert 0 <= (e["timestamp"] // HOUR_MS) * HOUR_MS // 1000 <= 2**32 - 1


def test_the_collector_reads_iso_timestamps_to_the_exact_millisecond() -> None:
    # float seconds * 1000 gives 1079337347471 for this one.
    ev = to_event({"event": "x", "user_id": "u", "timestamp": "2004-03-15T07:55:47.472Z"},
                  received_at_ms=NOW)
    assert ev["timestamp"] == 1_079_337_347_472


def test_the_collector_refuses_a_timestamp_no_column_can_hold() -> None:
    for ts in ("2106-02-08T00:00:00Z", YEAR_3000_MS, 2**62, -(2**50), "1969-12-31T23:59:59Z"):
        with pytest.raises(BadEvent, match=r"timestamp is outside 1970-01-01 \.\. 2106-02-07"):
            to_event({"event": "x", "user_id": "u", "timestamp": ts}, received_at_ms=NOW)
