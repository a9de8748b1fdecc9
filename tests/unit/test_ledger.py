"""The offset ledger: nothing is committed that every reader has not made durable, in order."""

from __future__ import annotations

from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ledger import Admission, OffsetLedger


class TP(NamedTuple):
    topic: str
    partition: int


RAW = TP("events.raw", 0)
CLEAN = TP("events.clean", 0)


def ledger() -> OffsetLedger:
    return OffsetLedger({"events.raw": ["validate"], "events.clean": ["sink", "aggregate"]})


def test_nothing_is_admitted_before_the_partition_is_anchored() -> None:
    book = ledger()
    assert book.admit("validate", RAW, 0, now=0) is Admission.UNANCHORED
    assert book.committable() == {}


def test_offsets_are_admitted_in_order_and_committed_only_once_done() -> None:
    book = ledger()
    book.anchor(RAW, 10, now=0)
    flags, receipt, _ = book.admit_batch("validate", [(RAW, 10), (RAW, 11), (RAW, 12)], now=1)
    assert flags == [True, True, True]
    assert book.committable() == {}, "admitted is not durable"
    book.done(receipt)
    assert book.committable() == {RAW: 13}
    book.committed({RAW: 13})
    assert book.committable() == {}


def test_a_redelivery_is_dropped() -> None:
    book = ledger()
    book.anchor(RAW, 0, now=0)
    book.admit_batch("validate", [(RAW, 0), (RAW, 1)], now=1)
    flags, _, counts = book.admit_batch("validate", [(RAW, 0), (RAW, 1), (RAW, 2)], now=2)
    assert flags == [False, False, True]
    assert counts[Admission.DUPLICATE] == 2


def test_a_skip_is_never_committed_past_and_asks_for_a_seek_back() -> None:
    """The Faust failure seen under load: 50..99, then 111 (100..110 never delivered)."""
    book = ledger()
    book.anchor(RAW, 50, now=0)
    first = [(RAW, o) for o in range(50, 100)]
    _, receipt, _ = book.admit_batch("validate", first, now=1)
    book.done(receipt)
    flags, receipt, counts = book.admit_batch("validate", [(RAW, 111), (RAW, 112)], now=1.5)
    assert flags == [False, False] and counts[Admission.GAP] == 2
    book.done(receipt)
    assert book.committable() == {RAW: 100}
    assert book.seeks_due(now=2, cooldown_s=5) == {RAW: 100}
    assert book.seeks_due(now=3, cooldown_s=5) == {}, "one seek per gap"
    # After the seek, the missing offsets arrive, then the rest again.
    _, receipt, _ = book.admit_batch("validate", [(RAW, o) for o in range(100, 113)], now=3)
    book.done(receipt)
    assert book.committable() == {RAW: 113}


def test_a_gap_still_there_after_the_cooldown_is_sought_again() -> None:
    book = ledger()
    book.anchor(RAW, 0, now=0)
    book.admit("validate", RAW, 5, now=1)
    assert book.seeks_due(now=1, cooldown_s=2) == {RAW: 0}
    book.admit("validate", RAW, 6, now=2)  # still out of order: the seek was lost
    assert book.seeks_due(now=2, cooldown_s=2) == {}
    assert book.seeks_due(now=3.5, cooldown_s=2) == {RAW: 0}


def test_a_partition_is_committed_up_to_its_slowest_reader() -> None:
    book = ledger()
    book.anchor(CLEAN, 0, now=0)
    _, sink, _ = book.admit_batch("sink", [(CLEAN, o) for o in range(5)], now=1)
    _, agg, _ = book.admit_batch("aggregate", [(CLEAN, o) for o in range(3)], now=1)
    book.done(sink)
    assert book.committable() == {}, "the aggregate has made nothing durable yet"
    book.done(agg)
    assert book.committable() == {CLEAN: 3}


def test_a_batch_admitted_before_a_rebalance_counts_for_nothing_after_it() -> None:
    book = ledger()
    book.anchor(RAW, 0, now=0)
    _, stale, _ = book.admit_batch("validate", [(RAW, 0), (RAW, 1)], now=1)
    book.forget([RAW])
    book.anchor(RAW, 0, now=2)
    book.done(stale)
    assert book.committable() == {}
    assert book.admit("validate", RAW, 0, now=3) is Admission.ADMITTED


def test_an_idle_partition_is_reported_with_its_next_offset_unless_a_batch_is_in_flight() -> None:
    book = ledger()
    book.anchor(RAW, 0, now=0)
    _, receipt, _ = book.admit_batch("validate", [(RAW, 0)], now=1)
    assert book.idle(now=10, idle_s=5) == {}, "a batch is still being processed"
    book.done(receipt)
    assert book.idle(now=10, idle_s=5) == {RAW: 1}
    book.touch(RAW, now=10)
    assert book.idle(now=12, idle_s=5) == {}, "checked a moment ago"
    assert book.idle(now=15, idle_s=5) == {RAW: 1}


deliveries = st.lists(
    st.tuples(st.sampled_from(["sink", "aggregate"]), st.integers(0, 30), st.booleans()),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(deliveries)
def test_whatever_the_consumer_delivers_every_committed_offset_was_made_durable_by_every_reader(
    script: list[tuple[str, int, bool]],
) -> None:
    """Deliveries in any order, with skips, rewinds and repeats; some batches complete."""
    book = ledger()
    book.anchor(CLEAN, 0, now=0)
    durable: dict[str, set[int]] = {"sink": set(), "aggregate": set()}
    committed = 0
    for reader, offset, completes in script:
        flags, receipt, _ = book.admit_batch(reader, [(CLEAN, offset)], now=1)
        if completes:
            book.done(receipt)
            if flags[0]:
                durable[reader].add(offset)
        for tp, upto in book.committable().items():
            assert upto > committed
            for name in ("sink", "aggregate"):
                missing = set(range(upto)) - durable[name]
                assert not missing, f"{name} never made {sorted(missing)} durable"
            book.committed({tp: upto})
            committed = upto


# -- consumer lag ------------------------------------------------------------------------------


def test_lag_is_the_log_end_seen_in_deliveries_minus_the_committed_offset() -> None:
    book = ledger()
    book.anchor(RAW, 100, now=0)
    assert book.lag() == {RAW: 0}
    flags, receipt, _ = book.admit_batch("validate", [(RAW, o) for o in range(100, 150)], now=1)
    assert all(flags)
    assert book.lag() == {RAW: 50}, "delivered but not durable is lag"
    book.done(receipt)
    assert book.lag() == {RAW: 50}, "durable but not committed is still lag"
    book.committed(book.committable())
    assert book.lag() == {RAW: 0}


def test_a_stale_broker_end_offset_never_lowers_the_log_end() -> None:
    """The embedded broker lists the last batch's base offset + 1: 100 records at 11-110 list 12."""
    book = ledger()
    book.anchor(RAW, 11, now=0)
    book.admit_batch("validate", [(RAW, o) for o in range(11, 111)], now=1)
    book.observe_end(RAW, 12)
    assert book.lag() == {RAW: 100}
    # While fetching is paused, only the broker knows the log grew; it raises the end.
    book.observe_end(RAW, 400)
    assert book.lag() == {RAW: 389}


def test_out_of_order_and_redelivered_deliveries_still_show_how_far_the_log_goes() -> None:
    book = ledger()
    book.anchor(RAW, 0, now=0)
    book.admit_batch("validate", [(RAW, 0), (RAW, 1)], now=1)
    flags, _, _ = book.admit_batch("validate", [(RAW, 7), (RAW, 1)], now=2)  # a gap, a duplicate
    assert flags == [False, False]
    assert book.lag() == {RAW: 8}


def test_lag_of_a_partition_with_several_readers_counts_from_the_slowest() -> None:
    book = ledger()
    book.anchor(CLEAN, 0, now=0)
    _, sink, _ = book.admit_batch("sink", [(CLEAN, o) for o in range(10)], now=1)
    book.done(sink)
    book.committed(book.committable())
    assert book.lag() == {CLEAN: 10}, "the aggregate reader has not made any of it durable"
    _, agg, _ = book.admit_batch("aggregate", [(CLEAN, o) for o in range(10)], now=2)
    book.done(agg)
    book.committed(book.committable())
    assert book.lag() == {CLEAN: 0}


def test_re_anchoring_keeps_the_known_log_end_and_forgetting_drops_the_partition() -> None:
    book = ledger()
    book.anchor(RAW, 0, now=0)
    book.admit_batch("validate", [(RAW, o) for o in range(30)], now=1)
    book.anchor(RAW, 0, now=2)  # a new assignment: back to the committed offset
    assert book.lag() == {RAW: 30}
    book.forget([RAW])
    assert book.lag() == {}
