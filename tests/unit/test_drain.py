"""`behind` (app/embedded/drain.py): when the embedded broker's log may be dropped."""

from __future__ import annotations

from app.embedded.drain import behind

RAW, CLEAN = "events.raw", "events.clean"
ENDS = {(RAW, 0): 10, (RAW, 1): 0, (CLEAN, 0): 7, (CLEAN, 1): 3}


def test_a_log_read_and_archived_to_its_end_is_drained() -> None:
    commits = {"rearview": {(RAW, 0): 10, (CLEAN, 0): 7, (CLEAN, 1): 3}}
    assert behind(ENDS, commits, {"rearview": (RAW, CLEAN)}, {(RAW, 0): 10, (RAW, 1): 0}) == []


def test_a_group_short_of_an_end_keeps_the_log() -> None:
    commits = {"rearview": {(RAW, 0): 10, (CLEAN, 0): 6, (CLEAN, 1): 3}}
    (waiting,) = behind(ENDS, commits, {"rearview": (RAW, CLEAN)})
    assert str(waiting) == "group rearview at 6 of 7 on events.clean[0]"


def test_a_reader_that_committed_nothing_has_read_nothing() -> None:
    waiting = behind(ENDS, {}, {"rearview": (RAW, CLEAN)})
    assert [(w.topic, w.partition) for w in waiting] == [(CLEAN, 0), (CLEAN, 1), (RAW, 0)]


def test_any_other_group_counts_for_the_topics_it_committed_on() -> None:
    commits = {"rearview": {(RAW, 0): 10, (CLEAN, 0): 7, (CLEAN, 1): 3}, "audit": {(RAW, 0): 4}}
    (waiting,) = behind(ENDS, commits, {"rearview": (RAW, CLEAN)})
    assert (waiting.who, waiting.topic, waiting.at) == ("group audit", RAW, 4)


def test_the_archive_must_hold_every_raw_record() -> None:
    commits = {"rearview": {(RAW, 0): 10, (CLEAN, 0): 7, (CLEAN, 1): 3}}
    (waiting,) = behind(ENDS, commits, {"rearview": (RAW, CLEAN)}, {(RAW, 0): 9, (RAW, 1): 0})
    assert str(waiting) == "the archive at 9 of 10 on events.raw[0]"
