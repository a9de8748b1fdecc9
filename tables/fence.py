"""The fence: the hand-over between a replay and the live stores, over ClickHouse tables.

Before it swaps a generation in (tables/generations.py), a replay asks every live store to
pause, so that the live tables stop changing while it does its final catch-up, verifies and
swaps; then it releases the fence, with ``rebegin=True`` after a swap so that each store drops
what it holds in memory and begins its partitions again from the (new) tables.

The protocol (control tables in migration 0007)
-----------------------------------------------
- A live store publishes a **heartbeat** (``store_heartbeats``) with the events.clean
  partitions it owns, every few seconds and before it begins a partition it has not announced.
  `Fence.owned_partitions` is the union of the recent heartbeats' partitions: only those need
  an acknowledgement (a partition without a live owner has nothing to pause; with no store
  running, nothing does).
- The replay **requests** a fence (``replay_fences``: active, with an expiry) and **renews** it
  while it works. Expiry is judged by ClickHouse's clock alone (``now64()``), so the replay's and
  the workers' clocks never have to agree.
- Every store **polls** the recent fences on its flush timer (one small query every ~0.5 s).
  Seeing an active fence, it stops admitting batches, flushes, reports its held batches done,
  and **acknowledges** each partition it owns (``replay_fence_acks``); while paused it keeps
  polling, and acknowledges partitions assigned to it meanwhile.
- `Fence.wait` returns once every owned partition is acknowledged (a partition moved from one
  store to another during the fence was acknowledged by the first, and the second never begins
  it while the fence is active: it polls before beginning a partition it had not announced).
- **Release** (``rebegin=True`` after a swap): each store drops its in-memory dedup and rollup
  states and begins every partition again from the tables before its next batch. A store
  reacts to every release with ``rebegin`` it has not seen, even one of a fence it never paused
  for, so a store that started during a fence still begins from the swapped tables.
- A fence not renewed before its expiry is **abandoned** by the stores: they log an error and
  resume unchanged, so a replay killed mid-fence never stalls the pipeline. `Fence.renew`
  raises `FenceLost` once the fence has expired or been released: a replay must renew just
  before it swaps, with a TTL longer than the swap takes, and never swap after `FenceLost`.

Why the heartbeat and the fence cannot miss each other: the replay writes its fence before it
reads the heartbeats; a store writes its heartbeat before it polls for fences. Either the
replay reads the store's heartbeat (and waits for its acknowledgement), or the store's poll
comes after the fence was written (and it pauses before beginning anything).

`StoreFenceView` is the store's side as a pure state machine (poll results in, decisions
out); agents/store.py wires it to the timer and the batch loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client

from core.exceptions import RearviewError

FENCES = "replay_fences"
ACKS = "replay_fence_acks"
HEARTBEATS = "store_heartbeats"
ACTIVE = "active"
RELEASED = "released"
# How far back a store looks for fences: a fence lives minutes; a day is plenty and keeps the
# poll small.
POLL_WINDOW_S = 86_400
POLL_INTERVAL_S = 0.5

FenceProgress = Callable[[set[int], set[int]], None]  # (acknowledged, owned) on each poll


class FenceError(RearviewError):
    pass


class FenceTimeout(FenceError):
    pass


class FenceLost(FenceError):
    """The fence expired or was released: the stores have resumed, nothing may be swapped."""


@dataclass(frozen=True, slots=True)
class FenceRow:
    """A fence as a store sees it in a poll."""

    fence_id: str
    state: str  # active | released
    rebegin: bool
    expired: bool  # by ClickHouse's clock

    @property
    def pausing(self) -> bool:
        return self.state == ACTIVE and not self.expired


def _latest(client: Client, fence_id: str) -> tuple[int, str, str, str, int, bool] | None:
    """(revision, owner, reason, state, rebegin, expired) of *fence_id*, or None."""
    rows = client.query(
        f"SELECT revision, owner, reason, state, rebegin, expires_at <= now64(3) FROM {FENCES} FINAL"
        " WHERE fence_id = {f:String}", parameters={"f": fence_id}).result_rows
    if not rows:
        return None
    revision, owner, reason, state, rebegin, expired = rows[0]
    return int(revision), str(owner), str(reason), str(state), int(rebegin), bool(expired)


def _write(client: Client, fence_id: str, revision: int, owner: str, reason: str, state: str,
           rebegin: bool, ttl_s: float | None) -> None:
    """One revision of a fence; the expiry is ClickHouse's now + *ttl_s* (None: keep it)."""
    expires = ("now64(3) + toIntervalMillisecond({ttl:UInt64})" if ttl_s is not None else
               f"(SELECT expires_at FROM {FENCES} FINAL WHERE fence_id = {{f:String}})")
    requested = ("now64(3)" if revision == 0 else
                 f"(SELECT requested_at FROM {FENCES} FINAL WHERE fence_id = {{f:String}})")
    client.command(
        f"INSERT INTO {FENCES} (fence_id, revision, owner, reason, state, rebegin, requested_at, expires_at)"
        f" SELECT {{f:String}}, {{r:UInt64}}, {{o:String}}, {{why:String}}, {{s:String}}, {{rb:UInt8}},"
        f" {requested}, {expires}",
        parameters={"f": fence_id, "r": revision, "o": owner, "why": reason, "s": state,
                    "rb": int(rebegin), "ttl": int((ttl_s or 0) * 1000)})


class Fence:
    """The replay's side: request, renew, wait for the acknowledgements, release."""

    def __init__(self, client: Client, owner: str) -> None:
        self._client = client
        self._owner = owner
        self._ttl: dict[str, float] = {}

    def request(self, reason: str, ttl_s: float = 60.0) -> str:
        fence_id = uuid.uuid4().hex
        _write(self._client, fence_id, 0, self._owner, reason, ACTIVE, False, ttl_s)
        self._ttl[fence_id] = ttl_s
        return fence_id

    def renew(self, fence_id: str, ttl_s: float = 60.0) -> None:
        """Push the expiry to now + *ttl_s*; `FenceLost` if it expired or was released."""
        latest = self._active(fence_id)
        _write(self._client, fence_id, latest[0] + 1, latest[1], latest[2], ACTIVE, False, ttl_s)
        self._ttl[fence_id] = ttl_s

    def _active(self, fence_id: str) -> tuple[int, str, str, str, int, bool]:
        latest = _latest(self._client, fence_id)
        if latest is None:
            raise FenceError(f"no fence {fence_id}")
        if latest[3] != ACTIVE:
            raise FenceLost(f"fence {fence_id} was released")
        if latest[5]:
            raise FenceLost(f"fence {fence_id} expired: the live stores resumed")
        return latest

    def owned_partitions(self, max_age_s: float = 10.0) -> set[int]:
        rows = self._client.query(
            "SELECT DISTINCT arrayJoin(partitions) FROM (SELECT argMax(partitions, at) AS partitions"
            f" FROM {HEARTBEATS} WHERE at >= now64(3) - toIntervalMillisecond({{age:UInt64}})"
            " GROUP BY worker)",
            parameters={"age": int(max_age_s * 1000)}).result_rows
        return {int(r[0]) for r in rows}

    def acknowledged(self, fence_id: str) -> set[int]:
        rows = self._client.query(
            f"SELECT DISTINCT partition FROM {ACKS} WHERE fence_id = {{f:String}}",
            parameters={"f": fence_id}).result_rows
        return {int(r[0]) for r in rows}

    def wait(self, fence_id: str, timeout_s: float, progress: FenceProgress | None = None) -> None:
        """Until every partition with a live owner is acknowledged. The fence is renewed while
        waiting (at a third of its TTL); `FenceTimeout` names the partitions still silent."""
        deadline = time.monotonic() + timeout_s
        ttl = self._ttl.get(fence_id, 60.0)
        renewed = time.monotonic()
        self._active(fence_id)
        while True:
            owned = self.owned_partitions()
            acked = self.acknowledged(fence_id)
            if progress is not None:
                progress(acked & owned, owned)
            silent = owned - acked
            if not silent:
                return
            if time.monotonic() >= deadline:
                raise FenceTimeout(
                    f"fence {fence_id}: no acknowledgement within {timeout_s:g} s from events.clean"
                    f" partition{'s' if len(silent) > 1 else ''} {', '.join(map(str, sorted(silent)))}")
            if time.monotonic() - renewed >= ttl / 3:
                self.renew(fence_id, ttl)
                renewed = time.monotonic()
            time.sleep(min(POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))

    def release(self, fence_id: str, rebegin: bool) -> None:
        """Let the stores resume; *rebegin* after a swap: they begin again from the tables.
        Releasing an expired fence still records *rebegin* (stores react to it late)."""
        latest = _latest(self._client, fence_id)
        if latest is None:
            raise FenceError(f"no fence {fence_id}")
        _write(self._client, fence_id, latest[0] + 1, latest[1], latest[2], RELEASED, rebegin, None)
        self._ttl.pop(fence_id, None)


# -- the store's side ---------------------------------------------------------------------------

def poll(client: Client) -> list[FenceRow]:
    """The recent fences (one small query)."""
    rows = client.query(
        f"SELECT fence_id, state, rebegin, expires_at <= now64(3) FROM {FENCES} FINAL"
        " WHERE requested_at >= now64(3) - toIntervalSecond({w:UInt32})",
        parameters={"w": POLL_WINDOW_S}).result_rows
    return [FenceRow(str(f), str(s), bool(rb), bool(exp)) for f, s, rb, exp in rows]


def heartbeat(client: Client, worker: str, partitions: Iterable[int]) -> None:
    client.insert(HEARTBEATS, [[worker, sorted(partitions)]], column_names=["worker", "partitions"])


def acknowledge(client: Client, fence_id: str, worker: str, partitions: Iterable[int]) -> None:
    rows = [[fence_id, p, worker] for p in sorted(partitions)]
    if rows:
        client.insert(ACKS, rows, column_names=["fence_id", "partition", "worker"])


@dataclass(frozen=True, slots=True)
class Decision:
    """What a store does after a poll."""

    paused: bool  # admit no batch while True
    newly_paused: tuple[str, ...]  # fences to pause, flush and acknowledge for now
    abandoned: tuple[str, ...]  # fences it paused for that expired unreleased (log an error)
    released: tuple[str, ...]  # fences it paused for that were released
    rebegin: bool  # drop in-memory states and begin every partition from the tables


@dataclass
class StoreFenceView:
    """The store's view of the fences, updated by each poll (pure).

    The first poll only learns what exists: a store begins its partitions from the tables
    after that poll anyway, so earlier releases need no rebegin."""

    initialized: bool = False
    pausing: set[str] = field(default_factory=set)  # active fences this store is paused for
    acked: dict[str, set[int]] = field(default_factory=dict)
    seen_rebegin: set[str] = field(default_factory=set)

    @property
    def paused(self) -> bool:
        return bool(self.pausing)

    def observe(self, rows: Iterable[FenceRow]) -> Decision:
        by_id = {r.fence_id: r for r in rows}
        releases = {f for f, r in by_id.items() if r.state == RELEASED and r.rebegin}
        rebegin = self.initialized and bool(releases - self.seen_rebegin)
        self.seen_rebegin |= releases
        self.initialized = True
        active = {f for f, r in by_id.items() if r.pausing}
        abandoned = tuple(sorted(f for f in self.pausing if f in by_id and by_id[f].state == ACTIVE
                                 and by_id[f].expired))
        released = tuple(sorted(f for f in self.pausing if f not in active and f not in abandoned))
        newly = tuple(sorted(active - self.pausing))
        self.pausing = active
        for f in list(self.acked):
            if f not in active:
                del self.acked[f]
        return Decision(bool(active), newly, abandoned, released, rebegin)

    def to_acknowledge(self, owned: set[int]) -> dict[str, set[int]]:
        """Per pausing fence, the owned partitions not yet acknowledged (call once paused and
        flushed; then `acknowledged`)."""
        return {f: owned - self.acked.get(f, set()) for f in sorted(self.pausing)
                if owned - self.acked.get(f, set())}

    def acknowledged(self, fence_id: str, partitions: set[int]) -> None:
        if fence_id in self.pausing:
            self.acked.setdefault(fence_id, set()).update(partitions)
