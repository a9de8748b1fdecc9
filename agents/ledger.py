"""Which offsets are safe to commit: strict in-order admission per partition (pure, no I/O).

Faust's own offset bookkeeping cannot be trusted across a rebalance. After an assignment it
may deliver messages fetched before it seeks to the committed offset, and it marks the jump
back (or forward) as a "gap" it treats as acked; its commit then passes offsets no agent ever
processed (faust-streaming issues #216 and #606). A worker killed and replaced under load lost
about one event in a hundred that way. So Rearview's topics are consumed with Faust's acks off,
and this ledger decides what is committed instead.

Per topic partition, each reader (an agent) admits offsets strictly in order from the
partition's committed offset, its *anchor*:

- the next expected offset is admitted;
- an offset below it is a redelivery of one already admitted, and is dropped;
- an offset above it means the consumer skipped messages: it is dropped, and the partition is
  due a seek back to the first offset some reader is missing;
- before the anchor is known, nothing is admitted (and the anchoring seeks to it).

A reader reports a batch *done* once every effect of it is durable; a reader's durable position
is the start of its oldest batch not yet done, and the committable offset of a partition is the
lowest durable position of its readers. Each anchoring starts a new epoch,
and a batch admitted in an older epoch no longer counts when it completes: an offset is only
committed after a reader that admitted it in order from the current anchor made it durable.

Consumer lag, per partition, is the log end minus the committed offset: how many messages of
the log are not yet durable in every reader and committed. The log end is what the worker
knows of it from the log itself: one past the highest offset delivered to any reader (admitted,
redelivered or out of order alike), raised by any end offset the broker listed that is higher.
The broker's figure is only ever a lower bound here, never the answer on its own: the embedded
broker lists the last batch's *base* offset + 1 (100 records at offsets 11-110 list 12), and
the deliveries correct it as soon as they are fetched. Limits: while fetching is paused (an
outage fills the stream buffer) the deliveries stop, so on the embedded broker the lag can be
short by up to one producer batch; it includes up to one commit interval of work that is
durable but not yet committed; and a partition not yet anchored has no lag figure.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum


class Admission(Enum):
    ADMITTED = "admitted"
    DUPLICATE = "duplicate"  # already admitted by this reader since the anchor
    GAP = "gap"  # offsets before it were skipped; a seek back is due
    UNANCHORED = "unanchored"  # the committed offset is not known yet


@dataclass
class _Reader:
    next: int  # the next offset this reader admits
    pending: dict[int, int] = field(default_factory=dict)  # admitted, not yet done: start -> end

    @property
    def durable(self) -> int:
        """Every offset below this one is durable (batches may complete out of order)."""
        return min(self.pending) if self.pending else self.next


@dataclass
class _Partition:
    epoch: int
    readers: dict[str, _Reader]
    committed: int
    last_event_at: float
    end: int = 0  # the log end as far as known: highest offset delivered + 1, or listed
    gap_at: float | None = None  # when a reader last saw a gap not yet repaired
    seek_at: float | None = None  # when a seek back was last requested


@dataclass(frozen=True)
class Receipt:
    """What one reader admitted from one batch: per partition, its epoch and offset range."""

    reader: str
    spans: Mapping[Hashable, tuple[int, int, int]] = field(default_factory=dict)


class OffsetLedger:
    """Admission and commit positions for every partition of the topics in *readers*.

    *readers* maps a topic to the names of the readers that consume it; a partition is
    committable up to the lowest durable position among them. Partition keys are any hashable
    with `.topic` (Faust's TP), and times are monotonic seconds supplied by the caller.
    """

    def __init__(self, readers: Mapping[str, Sequence[str]]) -> None:
        self._readers = {topic: tuple(names) for topic, names in readers.items() if names}
        self._parts: dict[Hashable, _Partition] = {}
        self._epochs: dict[Hashable, int] = defaultdict(int)

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._readers)

    # -- assignment ------------------------------------------------------------------------

    def anchor(self, tp: Hashable, committed: int, now: float) -> None:
        """Start *tp* over at its committed offset: a new epoch, every reader at *committed*."""
        self._epochs[tp] += 1
        names = self._readers[tp.topic]  # type: ignore[attr-defined]
        previous = self._parts.get(tp)
        self._parts[tp] = _Partition(
            epoch=self._epochs[tp],
            readers={name: _Reader(next=committed) for name in names},
            committed=committed,
            last_event_at=now,
            end=max(committed, previous.end if previous is not None else 0),
        )

    def forget(self, tps: Iterable[Hashable]) -> None:
        """*tps* are no longer ours (revoked); later batches of them count for nothing."""
        for tp in tps:
            self._parts.pop(tp, None)

    def anchored(self) -> set[Hashable]:
        return set(self._parts)

    # -- reading ---------------------------------------------------------------------------

    def admit(self, reader: str, tp: Hashable, offset: int, now: float) -> Admission:
        part = self._parts.get(tp)
        if part is None:
            return Admission.UNANCHORED
        part.last_event_at = now
        if offset >= part.end:
            part.end = offset + 1
        pos = part.readers[reader]
        if offset == pos.next:
            pos.next += 1
            return Admission.ADMITTED
        if offset < pos.next:
            return Admission.DUPLICATE
        if part.gap_at is None:
            part.gap_at = now
        return Admission.GAP

    def admit_batch(
        self, reader: str, offsets: Sequence[tuple[Hashable, int]], now: float
    ) -> tuple[list[bool], Receipt, Counter[Admission]]:
        """Admit a batch in order; which entries were admitted, the receipt, and the counts."""
        admitted: list[bool] = []
        spans: dict[Hashable, tuple[int, int, int]] = {}
        counts: Counter[Admission] = Counter()
        for tp, offset in offsets:
            verdict = self.admit(reader, tp, offset, now)
            counts[verdict] += 1
            ok = verdict is Admission.ADMITTED
            admitted.append(ok)
            if ok:  # admitted offsets of one partition are consecutive
                epoch, start, _ = spans.get(tp, (self._parts[tp].epoch, offset, offset))
                spans[tp] = (epoch, start, offset + 1)
        for tp, (_, start, end) in spans.items():
            self._parts[tp].readers[reader].pending[start] = end
        return admitted, Receipt(reader, spans), counts

    def done(self, receipt: Receipt) -> None:
        """Every effect of the receipt's batch is durable."""
        for tp, (epoch, start, _) in receipt.spans.items():
            part = self._parts.get(tp)
            if part is None or part.epoch != epoch:
                continue  # revoked or re-anchored since: the batch counts for nothing
            part.readers[receipt.reader].pending.pop(start, None)

    # -- committing and repairing ------------------------------------------------------------

    def committable(self) -> dict[Hashable, int]:
        """Per partition, the offset to commit now, where it moved past the last commit."""
        out = {}
        for tp, part in self._parts.items():
            low = min(r.durable for r in part.readers.values())
            if low > part.committed:
                out[tp] = low
        return out

    def committed(self, offsets: Mapping[Hashable, int]) -> None:
        for tp, offset in offsets.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = max(part.committed, offset)

    def seeks_due(self, now: float, cooldown_s: float) -> dict[Hashable, int]:
        """Partitions where a reader saw a gap: seek each back to the lowest missing offset.

        Messages already fetched past the gap keep arriving for a while after a seek; a new
        seek is requested only if the gap is still there *cooldown_s* after the last one.
        """
        out = {}
        for tp, part in self._parts.items():
            if part.gap_at is None:
                continue
            if part.seek_at is not None and now - part.seek_at < cooldown_s:
                continue
            out[tp] = min(r.next for r in part.readers.values())
            part.seek_at = now
            part.gap_at = None
        return out

    def idle(self, now: float, idle_s: float) -> dict[Hashable, int]:
        """Partitions no reader is busy with and none has seen an event of for *idle_s*.

        With their next offsets: if the broker holds messages from there on, the consumer
        stopped delivering them (dropped or never resumed), and a seek there repairs it.
        """
        return {
            tp: min(r.next for r in part.readers.values())
            for tp, part in self._parts.items()
            if now - part.last_event_at >= idle_s
            and not any(r.pending for r in part.readers.values())
        }

    # -- lag -------------------------------------------------------------------------------

    def observe_end(self, tp: Hashable, end: int) -> None:
        """The broker listed *end* as the log end of *tp*: a lower bound of the true end."""
        part = self._parts.get(tp)
        if part is not None and end > part.end:
            part.end = end

    def lag(self) -> dict[Hashable, int]:
        """Per anchored partition: messages between the committed offset and the log end."""
        return {tp: max(0, part.end - part.committed) for tp, part in self._parts.items()}

    def touch(self, tp: Hashable, now: float) -> None:
        """*tp* was just checked or sought: it is not idle again for another idle period."""
        part = self._parts.get(tp)
        if part is not None:
            part.last_event_at = now
