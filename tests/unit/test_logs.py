"""Log epochs (tables/logs.py): positions keep growing when the broker begins a new log."""

from __future__ import annotations

from tables.logs import NO_EPOCH, LogBases, next_bases

PARTITIONS = {"events.raw": 2, "events.clean": 2}


def test_without_an_epoch_positions_are_the_brokers_offsets() -> None:
    assert NO_EPOCH.logical("events.raw", 1, 41) == 41
    assert NO_EPOCH.local("events.raw", 1, 41) == 41
    assert NO_EPOCH.describe() == "epoch 0: every base 0"


def test_a_position_goes_to_the_broker_and_back_and_earlier_logs_are_negative() -> None:
    bases = LogBases(2, {("events.raw", 0): 1_000, ("events.clean", 0): 50})
    assert bases.logical("events.raw", 0, 7) == 1_007
    assert bases.local("events.raw", 0, 1_007) == 7
    assert bases.local("events.raw", 0, 999) == -1, "a position of an earlier log is not the broker's"
    assert bases.logical("events.raw", 1, 7) == 7, "a partition without a base starts at 0"
    assert bases.describe() == "epoch 2: events.clean[0]+50, events.raw[0]+1,000"


def test_a_new_epoch_begins_past_everything_stored_or_archived() -> None:
    stored = {("events.raw", 0): 120, ("events.clean", 1): 80}
    archived = {("events.raw", 0): 150, ("events.raw", 1): 30}
    assert next_bases(NO_EPOCH, PARTITIONS, stored, archived) == {
        ("events.raw", 0): 150, ("events.raw", 1): 30, ("events.clean", 0): 0, ("events.clean", 1): 80}


def test_bases_never_go_back_even_when_the_tables_were_emptied() -> None:
    previous = LogBases(3, {("events.raw", 0): 5_000, ("events.clean", 1): 900})
    emptied: dict[tuple[str, int], int] = {}
    assert next_bases(previous, PARTITIONS, emptied) == {
        ("events.raw", 0): 5_000, ("events.raw", 1): 0, ("events.clean", 0): 0, ("events.clean", 1): 900}


def test_every_position_of_a_new_epoch_is_above_every_stored_one() -> None:
    previous = LogBases(1, {("events.raw", 0): 100})
    stored = {("events.raw", 0): 260}  # the first epoch stored positions up to 259
    bases = LogBases(2, next_bases(previous, {"events.raw": 1}, stored))
    assert bases.logical("events.raw", 0, 0) == 260
