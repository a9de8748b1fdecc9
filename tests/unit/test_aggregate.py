"""The aggregator against a brute-force model, and exactness under at-least-once delivery,
client resends, any arrival order, crashes and evictions."""

from __future__ import annotations

import math
import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.records import CleanEvent
from agents.sink import to_arrow
from tables import hll
from tables.aggregate import Aggregator, ApplyResult, MissingStates
from tables.columns import NUMBER_PATTERN
from tables.dedup import Deduper, ids_from_strings, pack_position
from tables.rollups import DEFAULT_ROLLUPS, RollupSpec
from tables.state import PartialState, StateKey, merge_partials

T0 = 1_796_116_500_000 - 1_796_116_500_000 % 3_600_000  # an hour boundary
MIN = 60_000
HOUR = 60 * MIN

SPECS = (
    *DEFAULT_ROLLUPS,
    RollupSpec(name="revenue_by_name_country_1m", dimensions=("event_name", "country"),
               granularity="minute", allowed_lateness_s=60, uniques=True, lg_k=10, sums=("price", "qty")),
)


def event(partition: int = 0, offset: int = 0, index: int = 0, *, name: str = "page_view",
          user: str = "u1", ts: int = T0, received: int | None = None, event_id: str | None = None,
          project: str = "default", **props: str) -> CleanEvent:
    return CleanEvent(
        event_id=event_id or str(uuid.uuid4()), project_id=project, event_name=name, user_id=user,
        timestamp=ts, properties=props, ip=None, user_agent=None, library=None,
        received_at=ts if received is None else received, schema_id=1,
        source_partition=partition, source_offset=offset, source_index=index,
    )



# --------------------------------------------------------------------------- brute force model

@dataclass
class Expected:
    count: int = 0
    sum_micros: dict[str, int] = field(default_factory=dict)
    sum_errors: int = 0
    sketch: Any = None


def parse_micros(value: str | None) -> tuple[int, int]:
    """(micro-units, error) of one summed property value, as the docs define it."""
    if value is None:
        return 0, 0
    if not re.fullmatch(NUMBER_PATTERN, value):
        return 0, 1
    number = float(value)
    if not math.isfinite(number) or abs(number) > 1e12:
        return 0, 1
    return round(number * 1_000_000), 0



def brute_force(specs: tuple[RollupSpec, ...],
                rows: list[tuple[int, CleanEvent]]) -> dict[StateKey, Expected]:
    """Each (partition, event) once, in the order given, one row at a time, keyed by the
    event's project as an implicit first dimension."""
    out: dict[StateKey, Expected] = {}
    for p, e in rows:
        for spec in specs:
            g = spec.granularity_ms
            start = e["timestamp"] // g * g
            dims = (e["event_name"], *(e["properties"].get(k, "") for k in spec.property_keys))
            state = out.setdefault(StateKey(p, e["project_id"], spec.name, start, dims), Expected(
                sum_micros={k: 0 for k in spec.sums}, sketch=hll.new(spec.lg_k) if spec.uniques else None))
            state.count += 1
            if state.sketch is not None:
                state.sketch.update(e["user_id"])
            for k in spec.sums:
                micros, error = parse_micros(e["properties"].get(k))
                state.sum_micros[k] += micros
                state.sum_errors += error
    return out


def assert_same(states: dict[StateKey, PartialState], expected: dict[StateKey, Expected]) -> None:
    assert set(states) == set(expected)
    for key, want in expected.items():
        got = states[key]
        assert (got.count, got.late, got.sum_micros, got.sum_errors) == (
            want.count, 0, want.sum_micros, want.sum_errors), key
        if want.sketch is None:
            assert got.sketch is None
        else:
            assert hll.estimate(got.sketch) == hll.estimate(want.sketch), key


def apply_messages(agg: Aggregator, messages: list[tuple[int, int, list[CleanEvent]]]) -> ApplyResult:
    """Apply (partition, offset, events) messages; totals of the results."""
    total = [0, 0, 0, 0]
    for p, offset, events in messages:
        r = agg.apply(to_arrow(events), p, offset)
        total = [a + b for a, b in zip(total, [r.rows, r.applied, r.skipped, r.loaded], strict=True)]
    return ApplyResult(*total)


def generated(n: int, partitions: int, seed: int) -> list[tuple[int, int, list[CleanEvent]]]:
    """Messages of several partitions interleaved, offsets increasing per partition, event
    times out of order (some hours behind), some clients ahead of the collector, events of
    three projects mixed in every message."""
    rng = random.Random(seed)
    offsets = [0] * partitions
    clock = T0
    out = []
    made = 0
    while made < n:
        p = rng.randrange(partitions)
        offsets[p] += rng.choice([1, 1, 1, 2])
        events = []
        for _ in range(rng.randint(1, 40)):
            clock += rng.randint(0, 30)
            r = rng.random()
            ts = clock - (rng.randint(0, 3 * HOUR) if r < 0.1 else rng.randint(0, 5000))
            if r > 0.98:
                ts = clock + rng.randint(0, HOUR)  # a client clock ahead
            props: dict[str, str] = {}
            if rng.random() < 0.9:
                props["country"] = rng.choice(["DE", "US", "FR", ""])
            if rng.random() < 0.8:
                props["device_type"] = rng.choice(["mobile", "desktop"])
            if rng.random() < 0.3:
                props["price"] = rng.choice(["29.0", "99", "-1.5", "1e3", "0.1", "abc", "NaN", "1e400", " 5"])
            if rng.random() < 0.2:
                props["qty"] = str(rng.randint(1, 5))
            events.append(event(name=rng.choice(["page_view", "click", "purchase"]),
                                user=f"u{rng.randint(0, 400)}", ts=ts, received=clock,
                                project=rng.choice(["default", "default", "shop", "a|b"]), **props))
        made += len(events)
        out.append((p, offsets[p], events))
    return out


def rows_of(messages: list[tuple[int, int, list[CleanEvent]]]) -> list[tuple[int, CleanEvent]]:
    return [(p, e) for p, _, events in messages for e in events]


# --------------------------------------------------------------------------- examples

def test_matches_a_brute_force_group_by_whatever_the_event_time_order() -> None:
    messages = generated(6000, partitions=3, seed=7)
    agg = Aggregator(SPECS)
    result = apply_messages(agg, messages)
    expected = brute_force(SPECS, rows_of(messages))
    assert_same(agg.states(), expected)
    assert result.skipped == 0 and result.applied == result.rows * len(SPECS)
    assert any(s.sum_errors for s in expected.values())
    assert any(s.sum_micros.get("price") for s in expected.values())
    assert {k.project_id for k in expected} == {"default", "shop", "a|b"}


def test_projects_never_share_a_partial() -> None:
    """Events of two projects in the same window, with the same dimension values, in one
    message of one partition: two partials, each with its project's events only."""
    spec = RollupSpec(name="by_name_1m", uniques=True, sums=("price",))
    agg = Aggregator([spec])
    agg.apply(to_arrow([event(project="default", user="a", price="1"),
                        event(project="shop", user="b", price="10"),
                        event(project="default", user="c", price="2"),
                        event(project="shop", user="b", price="20")]), 0, 0)
    got = {k.project_id: (s.count, s.sums, round(s.uniques or 0), s.applied_through)
           for k, s in agg.states().items()}
    assert got == {"default": (2, {"price": 3.0}, 2, (0, 2)), "shop": (2, {"price": 30.0}, 1, (0, 3))}
    assert {k._replace(project_id="") for k in agg.states()} == {StateKey(0, "", "by_name_1m", T0, ("page_view",))}
    # A redelivery applies nothing to either project's partial.
    again = agg.apply(to_arrow([event(project="shop"), event(project="default")]), 0, 0, index=[1, 2])
    assert (again.applied, again.skipped) == (0, 2)


def test_a_whole_redelivered_stream_changes_nothing() -> None:
    messages = generated(3000, partitions=2, seed=3)
    agg = Aggregator(SPECS)
    apply_messages(agg, messages)
    before = {k: s.to_bytes() for k, s in agg.dirty().items()}
    agg.mark_flushed()
    again = apply_messages(agg, messages)
    assert again.applied == 0 and again.skipped == again.rows * len(SPECS)
    assert {k: s.to_bytes() for k, s in agg.states().items()} == before
    assert agg.dirty() == {}


def test_a_redelivered_message_applies_only_the_rows_not_applied_yet() -> None:
    events = [event(ts=T0 + i) for i in range(10)]
    agg = Aggregator(DEFAULT_ROLLUPS[:1])
    agg.apply(to_arrow(events[:4]), 0, 5, index=[0, 1, 2, 3])
    result = agg.apply(to_arrow(events), 0, 5)
    assert (result.applied, result.skipped) == (6, 4)
    state = agg.get(StateKey(0, "default", "events_by_name_1m", T0, ("page_view",)))
    assert state is not None and state.count == 10 and state.applied_through == (5, 9)
    with pytest.raises(ValueError, match="strictly increasing"):
        agg.apply(to_arrow(events[:2]), 0, 6, index=[1, 1])


def test_events_hours_late_are_counted_not_set_aside() -> None:
    spec = RollupSpec(name="by_name_1m", granularity="minute", allowed_lateness_s=0)
    agg = Aggregator([spec])
    agg.apply(to_arrow([event(ts=T0 + 5 * HOUR, received=T0 + 5 * HOUR)]), 0, 0)
    result = agg.apply(to_arrow([event(ts=T0 + 10, received=T0 + 5 * HOUR),
                                 event(ts=T0 - 3 * HOUR, received=T0 + 5 * HOUR)]), 0, 1)
    assert result.applied == 2
    assert sorted(s.count for s in agg.states().values()) == [1, 1, 1]
    assert all(s.late == 0 for s in agg.states().values())


def test_the_watermark_is_receive_time_so_a_client_clock_cannot_move_it() -> None:
    spec = RollupSpec(name="by_name_1m", granularity="minute", allowed_lateness_s=0)
    agg = Aggregator([spec])
    agg.apply(to_arrow([event(ts=T0 + 86_400_000, received=T0 + 1_000),
                        event(ts=T0 + 2_000, received=T0 + 2_000)]), 0, 0)
    assert agg.partition_watermarks() == {0: T0 + 2_000}
    agg.dirty()
    agg.mark_flushed()
    assert agg.evict() == 0, "no window closed by receive time: the one a day ahead stays too"


def test_evicted_windows_are_loaded_back_for_a_late_event_and_applied_once() -> None:
    spec = RollupSpec(name="by_name_1m", granularity="minute", allowed_lateness_s=0, uniques=True)
    stored: dict[StateKey, bytes] = {}
    agg = Aggregator([spec])

    def flush() -> None:
        stored.update({k: s.to_bytes() for k, s in agg.dirty().items()})
        agg.mark_flushed()

    agg.apply(to_arrow([event(ts=T0, user="a"), event(ts=T0 + 1, user="b")]), 0, 0)
    flush()
    assert agg.evict() == 0, "touched since the last eviction pass"
    agg.apply(to_arrow([event(ts=T0 + 3 * MIN, received=T0 + 3 * MIN)]), 0, 1)
    flush()
    assert agg.evict() == 1 and len(agg.states()) == 1, "closed, flushed, idle: evicted"
    late = to_arrow([event(ts=T0 + 5, user="c", received=T0 + 4 * MIN)])
    with pytest.raises(MissingStates) as missing:
        agg.apply(late, 0, 2)
    key = StateKey(0, "default", "by_name_1m", T0, ("page_view",))
    assert missing.value.keys == [key]
    assert agg.get(key) is None, "nothing changed"
    agg.load_stored(key, stored[key])
    agg.apply(late, 0, 2)
    state = agg.get(key)
    assert state is not None and state.count == 3 and round(state.uniques or 0) == 3
    assert state.applied_through == (2, 0) and key in agg.dirty()
    # With a load callback, the same happens inside apply.
    auto = Aggregator([spec], load=lambda k: stored.get(k))
    auto.restore(0, [], {"by_name_1m": T0 + MIN})
    result = auto.apply(late, 0, 2)
    assert result.loaded == 1 and auto.get(key).count == 3  # type: ignore[union-attr]


def test_restore_loads_recent_states_and_asks_for_older_ones() -> None:
    spec = RollupSpec(name="by_name_1m", granularity="minute", allowed_lateness_s=0)
    agg = Aggregator([spec])
    old, new = (StateKey(0, "default", "by_name_1m", w, ("page_view",)) for w in (T0, T0 + 10 * MIN))
    data = PartialState(count=4, applied_through=(7, 0), watermark_ms=T0 + 11 * MIN).to_bytes()
    assert agg.restore(0, [(new, data)], {"by_name_1m": T0 + 9 * MIN}) == 1
    assert agg.partition_watermarks() == {0: T0 + 11 * MIN} and agg.dirty() == {}
    agg.apply(to_arrow([event(ts=T0 + 10 * MIN)]), 0, 8)
    assert agg.get(new).count == 5  # type: ignore[union-attr]
    with pytest.raises(MissingStates) as missing:
        agg.apply(to_arrow([event(ts=T0)]), 0, 9)
    assert missing.value.keys == [old]
    agg.apply(to_arrow([event(ts=T0 + 20 * MIN)]), 0, 9)  # above the bound: a new window
    with pytest.raises(ValueError, match="not of partition 0"):
        agg.restore(0, [(StateKey(1, "default", "by_name_1m", T0, ("x",)), data)], {})


def test_dimensions_with_missing_and_empty_properties_group_as_empty_string() -> None:
    spec = DEFAULT_ROLLUPS[1]
    block = to_arrow([
        event(0, 0, country="DE", device_type="mobile"),
        event(0, 1, country="DE"),
        event(0, 2, device_type="mobile", other="x"),
        event(0, 3, country="", device_type="mobile"),
        event(0, 4),
        event(0, 5, country="a|b\\c", device_type="mobile"),
    ])
    agg = Aggregator([spec])
    agg.apply(block, 0, 0)
    counts = {k.dims: s.count for k, s in agg.states().items()}
    assert counts == {
        ("page_view", "DE", "mobile"): 1, ("page_view", "DE", ""): 1, ("page_view", "", "mobile"): 2,
        ("page_view", "", ""): 1, ("page_view", "a|b\\c", "mobile"): 1,
    }
    for key in agg.states():
        assert StateKey.parse(key.to_str()) == key


def test_null_maps_repeated_keys_and_sliced_blocks_are_read_correctly() -> None:
    spec = RollupSpec(name="by_country_1m", dimensions=("event_name", "country"), sums=("price",))
    table = to_arrow([event(0, i, country=f"c{i}", price=str(i)) for i in range(6)])
    props = pa.array(
        [[("country", "DE"), ("country", "US"), ("price", "2")], None, [("price", "x")],
         [], [("country", "FR")], [("price", "1.25"), ("country", "FR")]],
        type=table.schema.field("properties").type,
    )
    table = table.set_column(table.schema.get_field_index("properties"), "properties", props)
    agg = Aggregator([spec])
    agg.apply(table.slice(1, 5), 0, 0)  # a sliced block: the map's children are not sliced
    got = {k.dims[1]: (s.count, s.sums, s.sum_errors) for k, s in agg.states().items()}
    assert got == {"": (3, {"price": 0.0}, 1), "FR": (2, {"price": 1.25}, 0)}
    fresh = Aggregator([spec])
    fresh.apply(table.slice(0, 1), 0, 0)
    assert {k.dims[1]: s.sums for k, s in fresh.states().items()} == {"DE": {"price": 2.0}}


@pytest.mark.parametrize(
    ("value", "micros", "error"),
    [("29.0", 29_000_000, 0), ("-2.5", -2_500_000, 0), ("1e3", 1_000_000_000, 0), (".5", 500_000, 0),
     ("0.1", 100_000, 0), ("1e12", 10**18, 0), ("abc", 0, 1), ("NaN", 0, 1), ("inf", 0, 1),
     ("1e400", 0, 1), ("1e13", 0, 1), (" 5", 0, 1), ("1_000", 0, 1), ("", 0, 1), (None, 0, 0)],
)
def test_sums_are_exact_micro_units_and_non_numbers_count_as_errors(
    value: str | None, micros: int, error: int
) -> None:
    spec = RollupSpec(name="price_1m", sums=("price",))
    props: dict[str, Any] = {} if value is None else {"price": value}
    agg = Aggregator([spec])
    agg.apply(to_arrow([event(0, 0, **props), event(0, 1, price="1")]), 0, 0)
    (state,) = agg.states().values()
    assert state.sum_micros == {"price": micros + 1_000_000} and state.sum_errors == error
    assert parse_micros(value) == (micros, error)


def test_sums_do_not_depend_on_batch_boundaries() -> None:
    spec = RollupSpec(name="price_1m", sums=("price",))
    events = [event(0, i, price=p) for i, p in enumerate(["0.1", "0.2", "0.3", "1e-7", "7.0000005"] * 40)]
    one, many = Aggregator([spec]), Aggregator([spec])
    one.apply(to_arrow(events), 0, 0)
    for offset, e in enumerate(events, start=1):
        many.apply(to_arrow([e]), 0, offset)
    (a,), (b,) = one.states().values(), many.states().values()
    assert a.sum_micros == b.sum_micros == {"price": 40 * (600_000 + 0 + 7_000_000)}
    assert a.sums == {"price": 304.0}


def test_state_bytes_round_trip_and_restore_continues_exactly() -> None:
    messages = generated(2000, partitions=1, seed=11)
    half = len(messages) // 2
    agg = Aggregator(SPECS)
    apply_messages(agg, messages[:half])
    stored = []
    for key, state in agg.dirty().items():
        data = state.to_bytes()
        again = PartialState.from_bytes(data)
        assert (again.count, again.late, again.sum_micros, again.sum_errors, again.applied_through,
                again.watermark_ms) == (state.count, state.late, state.sum_micros, state.sum_errors,
                                        state.applied_through, state.watermark_ms)
        stored.append((StateKey.parse(key.to_str()), data))
    restored = Aggregator(SPECS)
    restored.restore(0, stored, {})
    assert restored.partition_watermarks() == agg.partition_watermarks()
    assert restored.dirty() == {}
    apply_messages(restored, messages[half - 3:])  # three messages again: skipped
    assert_same(restored.states(), brute_force(SPECS, rows_of(messages)))


def test_bad_state_bytes_and_keys_are_refused() -> None:
    state = PartialState(count=3, sum_micros={"price": 5}, sketch=hll.new(12))
    data = state.to_bytes()
    for bad, message in [(b"", "too short"), (b"\x09" + data[1:], "format version 9"),
                         (data[:40], "too short"), (data[:60], "truncated in its sums"),
                         (data[:-1], "not a serialized HLL sketch")]:
        with pytest.raises(ValueError, match=message):
            PartialState.from_bytes(bad)
    with pytest.raises(ValueError, match="trailing bytes"):
        PartialState.from_bytes(PartialState(count=1).to_bytes() + b"x")
    for text in ("0|x", "0|default|x|1", "0|default|x|soon|a", "p|default|x|1|a"):
        with pytest.raises(ValueError, match="not a state key"):
            StateKey.parse(text)
    with pytest.raises(ValueError, match="lone backslash"):
        StateKey.parse("0|x|1|a\\")
    assert not Aggregator(SPECS).load_stored(StateKey(0, "default", "removed_rollup", T0, ("x",)), data)


@given(st.integers(0, 2**31), st.text(alphabet="a1|\\ é\x00-"),
       st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
       st.integers(-(2**62), 2**62), st.lists(st.text(alphabet="a1|\\ é\x00"), min_size=1, max_size=4))
def test_state_keys_round_trip_through_their_string_form(
    p: int, project: str, rollup: str, start: int, dims: list[str]
) -> None:
    key = StateKey(p, project, rollup, start, tuple(dims))
    assert StateKey.parse(key.to_str()) == key


@pytest.mark.parametrize("text", ["3|events_by_name_1m|1796116500000|page_view",
                                  "3|events_by_name_1m|1796116500000|42|DE"])
def test_a_state_key_written_before_projects_is_refused_not_misread(text: str) -> None:
    with pytest.raises(ValueError, match="before projects"):
        StateKey.parse(text)
    assert StateKey.parse("3|default|events_by_name_1m|1796116500000|42|DE") == StateKey(
        3, "default", "events_by_name_1m", 1_796_116_500_000, ("42", "DE"))


def test_drop_partition_forgets_only_that_partition() -> None:
    messages = generated(1500, partitions=3, seed=5)
    agg = Aggregator(SPECS)
    apply_messages(agg, messages)
    keys = set(agg.states())
    dropped = agg.drop_partition(1)
    assert dropped == len([k for k in keys if k.partition == 1]) > 0
    assert set(agg.states()) == {k for k in keys if k.partition != 1}
    assert all(k.partition != 1 for k in agg.dirty())
    assert 1 not in agg.partition_watermarks() and set(agg.partition_watermarks()) == {0, 2}
    # Its next owner starts from storage: here, nothing was flushed, so from scratch.
    apply_messages(agg, [m for m in messages if m[0] == 1])
    assert_same(agg.states(), brute_force(SPECS, rows_of(messages)))


def test_keys_changed_after_dirty_stay_dirty_after_mark_flushed() -> None:
    agg = Aggregator(DEFAULT_ROLLUPS[:1])
    agg.apply(to_arrow([event(ts=T0)]), 0, 0)
    snapshot = agg.dirty()
    agg.apply(to_arrow([event(ts=T0 + 1), event(ts=T0 + 2 * MIN)]), 0, 1)  # while flushing
    agg.mark_flushed()
    assert {k.window_start_ms for k in agg.dirty()} == {T0, T0 + 2 * MIN}
    agg.dirty()
    agg.mark_flushed()
    assert agg.dirty() == {} and len(snapshot) == 1


def test_malformed_blocks_raise_value_error_and_change_nothing() -> None:
    table = to_arrow([event()])
    nulls = table.set_column(table.schema.get_field_index("ts"), "ts",
                             pa.array([None], type=table.schema.field("ts").type))
    agg = Aggregator(SPECS)
    with pytest.raises(ValueError, match="null ts"):
        agg.apply(nulls, 0, 0)
    with pytest.raises(ValueError, match="2 row numbers"):
        agg.apply(table, 0, 0, index=[0, 1])
    assert agg.states() == {} and agg.dirty() == {}
    assert agg.apply(table.slice(0, 0), 0, 0) == ApplyResult()


# --------------------------------------------------------------------------- the store, as a model

NAMES = ["a", "b"]
PROJECTS = ["default", "shop", "default"]
COUNTRIES = ["DE", "US", None]
PRICES = ["1.5", "2", "x", None]
@st.composite
def partition_log(draw: st.DrawFn, partition: int) -> list[tuple[int, list[CleanEvent]]]:
    """The events.clean log of one partition: (offset, events) messages.

    Offsets may skip (dead-lettered blocks). Event ids come from a small pool, so a message
    may resend events of earlier ones (client retries, the same event over HTTP and Kafka),
    sometimes with other content, their project included (the first copy must win). Events of
    several projects are mixed in a message. Event times jump back by hours. Every copy of an
    id is in the same partition, as `event_partition` makes it.
    """
    ids = [str(uuid.UUID(int=(partition << 64) | i)) for i in range(40)]
    log = []
    offset, clock = draw(st.integers(0, 3)), T0
    for _ in range(draw(st.integers(0, 10))):
        clock += draw(st.integers(0, 40_000))
        events = []
        for _ in range(draw(st.integers(1, 4))):
            props = {"country": draw(st.sampled_from(COUNTRIES)), "device_type": "m",
                     "price": draw(st.sampled_from(PRICES))}
            late = draw(st.sampled_from([0, 0, 0, 90_000, 200_000, 3 * HOUR]))
            events.append(event(event_id=draw(st.sampled_from(ids)), name=draw(st.sampled_from(NAMES)),
                                user=f"u{draw(st.integers(0, 12))}", ts=clock - late, received=clock,
                                project=draw(st.sampled_from(PROJECTS)),
                                **{k: v for k, v in props.items() if v is not None}))  # type: ignore[arg-type]
        log.append((offset, events))
        offset += draw(st.integers(1, 2))
    return log


Step = tuple[str, int, int]


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[list[tuple[int, list[CleanEvent]]]], list[Step]]:
    n = draw(st.integers(1, 3))
    logs = [draw(partition_log(p)) for p in range(n)]
    steps = draw(st.lists(
        st.tuples(st.sampled_from(["read", "read", "read", "flush", "flush", "flush_during_read",
                                   "crash", "crash_mid_flush", "revoke"]),
                  st.integers(0, n - 1), st.integers(1, 4)),
        max_size=25))
    return logs, steps


def first_copies(logs: list[list[tuple[int, list[CleanEvent]]]]) -> list[tuple[int, CleanEvent]]:
    """What must be counted: per partition, the first copy of each event id, in log order,
    in its own project (a later copy naming another project changes nothing)."""
    out = []
    for p, log in enumerate(logs):
        seen: set[str] = set()
        for _, events in log:
            for e in events:
                if e["event_id"] not in seen:
                    seen.add(e["event_id"])
                    out.append((p, e))
    return out


LATENESS_SPECS = (
    RollupSpec(name="by_name_1m", granularity="minute", allowed_lateness_s=30),
    RollupSpec(name="by_country_1m", dimensions=("event_name", "country"), granularity="minute",
               allowed_lateness_s=0, uniques=True, lg_k=8, sums=("price",)),
    RollupSpec(name="uniques_1h", granularity="hour", allowed_lateness_s=0, uniques=True),
)


class Store:
    """A model of the store agent (agents/store.py) over several partitions: dedup, the events
    table insert, the aggregator with evictions and loads, flushes to the rollup tables (the
    only durable copy of rollup state), commits, crashes and revocations."""

    def __init__(self, specs: tuple[RollupSpec, ...], logs: list[list[tuple[int, list[CleanEvent]]]],
                 rng: random.Random) -> None:
        self.specs, self.logs, self.rng = specs, logs, rng
        self.rollups: dict[StateKey, bytes] = {}  # the rollup tables
        self.events: dict[str, tuple[int, int, int]] = {}  # the events table: id -> (p, offset, index)
        self.cursor = [0] * len(logs)  # index into the log of the next message
        self.committed = [0] * len(logs)
        self.dedup = Deduper(HOUR)
        self.agg = Aggregator(specs)
        self.started: set[int] = set()

    def _begin(self, p: int) -> None:
        """What the agent does before a partition's first message: restore both states."""
        stored = [(i, pos) for i, pos in self.events.items() if pos[0] == p]
        self.dedup.restore(p, ids_from_strings([i for i, _ in stored]),
                           pack_position(np.array([pos[1] for _, pos in stored], dtype=np.uint64),
                                         np.array([pos[2] for _, pos in stored], dtype=np.uint64)), T0)
        resident, recent = {}, []
        for spec in self.specs:
            mine = [(k, d) for k, d in self.rollups.items() if k.partition == p and k.rollup == spec.name]
            if mine:
                cutoff = max(k.window_start_ms for k, _ in mine) - spec.granularity_ms - spec.allowed_lateness_ms
                resident[spec.name] = cutoff
                recent += [(k, d) for k, d in mine if k.window_start_ms >= cutoff]
        self.agg.restore(p, recent, resident)
        self.started.add(p)

    def read(self, p: int, k: int) -> None:
        if p not in self.started:
            self._begin(p)
        for offset, events in self.logs[p][self.cursor[p]:self.cursor[p] + k]:
            self.cursor[p] += 1
            ids = [e["event_id"] for e in events]
            verdict = self.dedup.check(p, ids_from_strings(ids), pack_position(offset, np.arange(len(ids))), T0)
            kept = np.flatnonzero(verdict.keep)
            for i in kept.tolist():
                self.events.setdefault(ids[i], (p, offset, i))
            block = to_arrow([events[i] for i in kept.tolist()])
            try:
                self.agg.apply(block, p, offset, kept)
            except MissingStates as missing:
                for key in missing.keys:
                    self.agg.load_stored(key, self.rollups.get(key))
                self.agg.apply(block, p, offset, kept)

    def flush(self, concurrent_read: tuple[int, int] | None = None, partial: bool = False) -> None:
        consumed = list(self.cursor)
        dirty = {key: state.to_bytes() for key, state in self.agg.dirty().items()}
        if concurrent_read is not None:  # a block applied while the writes are in flight
            self.read(*concurrent_read)
        if partial:  # a crash in the middle of the writes: some reached the tables
            self.rollups.update((k, d) for k, d in dirty.items() if self.rng.random() < 0.5)
            return
        self.rollups.update(dirty)
        self.agg.mark_flushed()
        self.agg.evict()
        self.committed = consumed

    def crash(self, mid_flush: bool) -> None:
        if mid_flush:
            self.flush(partial=True)
        self.dedup = Deduper(HOUR)
        self.agg = Aggregator(self.specs)
        self.started.clear()
        self.cursor = [self.rng.randint(0, c) for c in self.committed]

    def revoke(self, p: int) -> None:
        self.dedup.drop_partition(p)
        self.agg.drop_partition(p)
        self.started.discard(p)
        self.cursor[p] = self.rng.randint(0, self.committed[p])

    def run(self, steps: list[Step]) -> None:
        for action, p, k in steps:
            if action == "read":
                self.read(p, k)
            elif action == "flush":
                self.flush()
            elif action == "flush_during_read":
                self.flush((p, k))
            elif action in ("crash", "crash_mid_flush"):
                self.crash(action == "crash_mid_flush")
            elif action == "revoke":
                self.revoke(p)
        for p in range(len(self.logs)):  # then consume the rest
            self.read(p, len(self.logs[p]))
        self.flush()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.integers(0, 2**32))
def test_each_event_counted_once_under_resends_replays_crashes_and_evictions(data: tuple, seed: int) -> None:
    """Counts, sums and HLL estimates in the rollup tables equal applying the first copy of
    each event once, in log order, to its own project's partials; the events table holds
    exactly the first copies."""
    logs, steps = data
    store = Store(LATENESS_SPECS, logs, random.Random(seed))
    store.run(steps)
    want = first_copies(logs)
    expected = brute_force(LATENESS_SPECS, want)
    projects = {e["project_id"] for _, e in want}
    assert {k.project_id for k in store.rollups} == projects
    assert_same({k: PartialState.from_bytes(d) for k, d in store.rollups.items()}, expected)
    assert set(store.events) == {e["event_id"] for _, e in want}
    merged = merge_partials(sorted((k, PartialState.from_bytes(d)) for k, d in store.rollups.items()))
    assert merged == merge_partials(sorted(
        (k, PartialState(e.count, 0, e.sum_micros, e.sum_errors, e.sketch)) for k, e in expected.items()))
