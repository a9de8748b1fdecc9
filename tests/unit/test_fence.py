"""The store's view of the replay fences (tables/fence.py StoreFenceView), poll by poll."""

from __future__ import annotations

from tables.fence import FenceRow, StoreFenceView


def active(fence_id: str, expired: bool = False) -> FenceRow:
    return FenceRow(fence_id, "active", False, expired)


def released(fence_id: str, rebegin: bool) -> FenceRow:
    return FenceRow(fence_id, "released", rebegin, False)


def test_pause_acknowledge_then_release_with_rebegin() -> None:
    view = StoreFenceView()
    first = view.observe([])
    assert not first.paused and not first.rebegin
    d = view.observe([active("f")])
    assert d.paused and d.newly_paused == ("f",)
    assert view.to_acknowledge({0, 1}) == {"f": {0, 1}}
    view.acknowledged("f", {0, 1})
    assert view.to_acknowledge({0, 1}) == {}
    assert view.to_acknowledge({0, 1, 3}) == {"f": {3}}, "a partition assigned during the fence"
    again = view.observe([active("f")])
    assert again.paused and again.newly_paused == ()
    done = view.observe([released("f", rebegin=True)])
    assert not done.paused and done.released == ("f",) and done.rebegin
    assert not view.observe([released("f", rebegin=True)]).rebegin, "once per release"


def test_an_expired_fence_is_abandoned_once_and_a_late_rebegin_still_counts() -> None:
    view = StoreFenceView()
    view.observe([])
    view.observe([active("f")])
    d = view.observe([active("f", expired=True)])
    assert not d.paused and d.abandoned == ("f",) and not d.rebegin
    assert view.observe([active("f", expired=True)]).abandoned == ()
    # The replay swapped anyway and released with rebegin: the store begins again, late.
    assert view.observe([released("f", rebegin=True)]).rebegin


def test_releases_before_the_first_poll_need_no_rebegin_but_later_unseen_ones_do() -> None:
    view = StoreFenceView()
    assert not view.observe([released("old", rebegin=True)]).rebegin
    # A fence this store never saw active (it started during it): its release still rebegins.
    assert view.observe([released("old", rebegin=True), released("new", rebegin=True)]).rebegin
    assert not view.observe([released("x", rebegin=False)]).rebegin


def test_two_fences_pause_until_both_are_gone() -> None:
    view = StoreFenceView()
    view.observe([])
    view.observe([active("a"), active("b")])
    assert view.to_acknowledge({2}) == {"a": {2}, "b": {2}}
    d = view.observe([released("a", rebegin=False), active("b")])
    assert d.paused and d.released == ("a",)
    assert not view.observe([released("a", rebegin=False), released("b", rebegin=False)]).paused
