"""The worker's offset commits, kept by Rearview instead of Faust (wiring for agents/ledger.py).

Rearview's topics are declared with Faust's acks off, so Faust never commits them. Instead:

- on every assignment, each partition is anchored at its committed offset (fetched from the
  group coordinator; the log start if none) and the consumer is sought there;
- each agent admits its batches through the ledger, which drops redeliveries and anything
  that arrives out of order, and reports a batch done once its effects are durable;
- every `commit_interval_s`, the offsets every reader of a partition has made durable are
  committed, and partitions where the consumer skipped messages are sought back to the first
  missing one; a partition that holds messages no reader has been given for `idle_s` is
  sought back too (a stall is repaired the same way as a skip);
- on revocation, what is durable is committed before the partitions are let go;
- per partition, the consumer lag (log end - committed offset, see agents/ledger.py for what
  the log end is and the figure's limits) is kept in `counters.lag`, refreshed on every tick;
  every `end_interval_s` the consumer's positions (messages handed to Faust but not yet taken
  by an agent) and the broker's end offsets raise the known log end too; the broker's figure
  is only a lower bound (on the embedded broker it is stale).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import structlog
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from agents.ledger import Admission, OffsetLedger, Receipt
from core.exceptions import ServiceUnavailable
from core.retry import Backoff, retry_forever

log = structlog.get_logger(__name__)

# Bounded to fit in the worker's stop deadline (app/worker.py STOP_DEADLINE_S): what it cannot
# commit in time is redelivered to the next owner and redone, idempotently.
FINAL_COMMIT_TIMEOUT_S = 2.5


@dataclass
class OffsetCounters:
    commits: int = 0
    reseeks: int = 0  # seeks back over messages the consumer skipped or stopped delivering
    out_of_order: int = 0  # deliveries dropped because earlier offsets were missing
    redelivered: int = 0  # deliveries dropped because the reader already had them
    # Consumer lag by (topic, partition), of the partitions this worker holds: a snapshot.
    lag: dict[tuple[str, int], int] = field(default_factory=dict)


class OffsetKeeper:
    def __init__(
        self,
        app: faust.App,
        ledger: OffsetLedger,
        bootstrap_servers: str,
        commit_interval_s: float = 1.0,
        gap_cooldown_s: float = 2.0,
        idle_s: float = 5.0,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 10.0,
        end_interval_s: float = 5.0,
    ) -> None:
        self.app = app
        self.ledger = ledger
        self.counters = OffsetCounters()
        self._bootstrap = bootstrap_servers
        self._commit_interval_s = commit_interval_s
        self._gap_cooldown_s = gap_cooldown_s
        self._idle_s = idle_s
        self._retry = (retry_initial_s, retry_max_s)
        self._end_interval_s = end_interval_s
        self._assignments = 0
        self._admin: AIOKafkaAdminClient | None = None
        self._anchoring: set[asyncio.Future[None]] = set()
        self._lock = asyncio.Lock()  # one commit or seek round at a time

    # -- what the agents call ----------------------------------------------------------------

    def admit(self, reader: str, events: Sequence[faust.EventT]) -> tuple[list[faust.EventT], Receipt]:
        """The events of a batch *reader* should process, and the receipt to report done."""
        flags, receipt, counts = self.ledger.admit_batch(
            reader, [(e.message.tp, e.message.offset) for e in events], time.monotonic())
        self.counters.out_of_order += counts[Admission.GAP] + counts[Admission.UNANCHORED]
        self.counters.redelivered += counts[Admission.DUPLICATE]
        return [e for e, ok in zip(events, flags, strict=True) if ok], receipt

    async def done(self, stream: faust.StreamT, taken: Sequence[faust.EventT], receipt: Receipt) -> None:
        """Every effect of the batch is durable: its offsets may be committed, and every event
        taken (admitted or dropped) is released to Faust."""
        self.ledger.done(receipt)
        for event in taken:
            await stream.ack(event)

    # -- wiring ------------------------------------------------------------------------------

    def install(self) -> None:
        app = self.app

        @app.on_partitions_assigned.connect
        async def on_assigned(app: faust.App, assigned: set[Any], **kwargs: Any) -> None:
            self._assignments += 1
            ours = [tp for tp in assigned if tp.topic in self.ledger.topics]
            if ours:
                # Not awaited: the assignment callback must not wait on the network.
                task = asyncio.ensure_future(self._anchor(ours, self._assignments))
                self._anchoring.add(task)
                task.add_done_callback(self._anchoring.discard)

        @app.on_partitions_revoked.connect
        async def on_revoked(app: faust.App, revoked: set[Any], **kwargs: Any) -> None:
            self._assignments += 1
            ours = {tp for tp in revoked if tp.topic in self.ledger.topics}
            await self._final_commit("revoke", ours)
            self.ledger.forget(ours)
            self.refresh_lag()

        backoff = Backoff()

        @app.timer(self._commit_interval_s)
        async def offsets_tick() -> None:
            try:
                await self.tick()
                backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a broker outage: the next tick retries
                if backoff.should_log():
                    log.warning("offsets_tick_failed", error=repr(exc))

        end_backoff = Backoff()

        @app.timer(self._end_interval_s)
        async def log_ends() -> None:
            try:
                await self.observe_ends()
                end_backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the deliveries still bound the log end
                if end_backoff.should_log():
                    log.warning("offsets_log_end_failed", error=repr(exc))

        @app.on_before_shutdown.connect
        async def close_admin(app: faust.App, **kwargs: Any) -> None:
            await self._final_commit("shutdown", self.ledger.anchored())
            for task in list(self._anchoring):
                task.cancel()
            if self._admin is not None:
                await self._admin.close()

        _ = (on_assigned, on_revoked, offsets_tick, log_ends, close_admin)

    async def tick(self) -> None:
        """Seek back where needed, then commit what is durable; refresh the lag."""
        try:
            await self._tick()
        finally:
            self.refresh_lag()

    def refresh_lag(self) -> None:
        self.counters.lag = {(tp.topic, tp.partition): n  # type: ignore[attr-defined]
                             for tp, n in self.ledger.lag().items()}

    async def observe_ends(self, timeout_s: float = 5.0) -> None:
        """Raise the known log end of the partitions held: to the consumer's position (one past
        the last message handed to Faust, buffered ones included), and to the broker's listed
        end offset where that is higher."""
        if self.app.rebalancing:
            return
        consumer = self.app.consumer
        tps = [tp for tp in self.ledger.anchored() if tp in consumer.assignment()]
        if not tps:
            return

        async def ends() -> list[tuple[Any, int | None]]:
            positions = [(tp, await consumer.position(tp)) for tp in tps]
            listed = await consumer.highwaters(*tps)
            return positions + list(listed.items())

        for tp, end in await asyncio.wait_for(ends(), timeout_s):
            if end is not None:
                self.ledger.observe_end(tp, end)
        self.refresh_lag()

    async def _tick(self) -> None:
        if self.app.rebalancing:
            return
        async with self._lock:
            assignment = self.app.consumer.assignment()
            now = time.monotonic()
            seeks = self.ledger.seeks_due(now, self._gap_cooldown_s)
            idle = {tp: o for tp, o in self.ledger.idle(now, self._idle_s).items()
                    if tp in assignment and tp not in seeks}
            if idle:
                ends = await self.app.consumer.highwaters(*idle)
                seeks.update({tp: o for tp, o in idle.items() if ends.get(tp, 0) > o})
                for tp in idle:
                    self.ledger.touch(tp, now)
                    if tp in ends:
                        self.ledger.observe_end(tp, ends[tp])
            seeks = {tp: o for tp, o in seeks.items() if tp in assignment}
            if seeks:
                log.warning("offsets_seek_back", partitions={_name(tp): o for tp, o in seeks.items()})
                await self.app.consumer.seek_wait(seeks)
                self.counters.reseeks += len(seeks)
            offsets = {tp: o for tp, o in self.ledger.committable().items() if tp in assignment}
            if offsets:
                await self._commit(offsets)

    async def _final_commit(self, when: str, tps: set[Hashable]) -> None:
        """Commit what is durable of *tps* before letting them go; whatever fails is redone."""
        offsets = {tp: o for tp, o in self.ledger.committable().items() if tp in tps}
        if offsets:
            try:
                await asyncio.wait_for(self._commit(offsets), FINAL_COMMIT_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - the next owner starts from the last commit
                log.warning("offsets_final_commit_failed", on=when, error=repr(exc))

    async def _commit(self, offsets: dict[Hashable, int]) -> None:
        # Faust's own commit call (the consumer runs in its own thread); it returns False when
        # the group rebalanced meanwhile, and the next owner starts from the last commit.
        if await self.app.consumer._commit(offsets):
            self.ledger.committed(offsets)
            self.counters.commits += 1

    async def _anchor(self, tps: list[Any], assignment: int) -> None:
        try:
            starts = await retry_forever("offsets_anchor", lambda: self._starts(tps), *self._retry)
            if assignment != self._assignments:
                return  # a newer rebalance anchors its own assignment
            async with self._lock:
                now = time.monotonic()
                for tp in tps:
                    self.ledger.anchor(tp, starts[tp], now)
                # Whatever was delivered before the anchor was dropped: start over from it.
                await self.app.consumer.seek_wait(starts)
            log.info("offsets_anchored", partitions={_name(tp): o for tp, o in starts.items()})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the partitions stay unanchored; a rebalance retries
            log.error("offsets_anchor_failed", error=repr(exc))

    async def _starts(self, tps: list[Any]) -> dict[Any, int]:
        """Each partition's committed offset, or its first offset where the group has none."""
        try:
            if self._admin is None:
                admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap)
                await admin.start()
                self._admin = admin
            by_key = {(tp.topic, tp.partition): tp for tp in tps}
            answer = await self._admin.list_consumer_group_offsets(
                self.app.conf.id, partitions=[TopicPartition(t, p) for t, p in by_key])
            starts = {by_key[(tp.topic, tp.partition)]: meta.offset for tp, meta in answer.items()
                      if (tp.topic, tp.partition) in by_key}
            missing = [tp for tp in tps if starts.get(tp, -1) < 0]
            if missing:
                earliest = await self.app.consumer.earliest_offsets(*missing)
                starts.update({tp: earliest.get(tp, 0) for tp in missing})
            return starts
        except (TimeoutError, KafkaError, OSError) as exc:
            admin, self._admin = self._admin, None
            if admin is not None:
                await admin.close()
            raise ServiceUnavailable(f"reading committed offsets failed: {exc!r}") from exc


def bytes_topic(app: faust.App, name: str) -> faust.TopicT:
    """A topic of raw bytes whose offsets the keeper commits: Faust's acks are off for it."""
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", acks=False)


def _name(tp: Any) -> str:
    return f"{tp.topic}[{tp.partition}]"
