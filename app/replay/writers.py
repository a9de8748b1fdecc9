"""The replay's I/O: generation tables, dead letters, and reading state back for a resume.

Synchronous clickhouse-connect and confluent-kafka calls (the replay is one process with one
loop; nothing else waits on it). An infrastructure failure is retried with backoff, forever,
as in the live worker: a replay never turns an outage into lost or dead-lettered events.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client
from confluent_kafka import Producer

from agents import dlq, preview
from agents.codec import WriterSchema
from agents.pii import Redactor
from agents.records import Invalid
from core.retry import Backoff
from tables import rollup_tables
from tables.dedup import ids_from_strings
from tables.logs import NO_EPOCH, LogBases
from tables.rollups import RollupSpec
from tables.state import PartialState, StateKey

log = structlog.get_logger(__name__)
T = TypeVar("T")


def retrying(what: str, action: Callable[[], T], initial_s: float = 0.2, max_s: float = 10.0) -> T:
    """*action* until it succeeds; failures of a service are logged (throttled) and retried."""
    backoff = Backoff(initial_s, max_s)
    while True:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - clickhouse-connect and librdkafka raise many types
            delay = backoff.next()
            if backoff.should_log():
                log.warning("replay_retrying", stage=what, error=str(exc)[:300], retry_in_s=round(delay, 2))
            time.sleep(delay)


class GenerationTables:
    """One generation's tables: events rows in, rollup states in and back out."""

    def __init__(self, client_factory: Callable[[], Client], tables: dict[str, str],
                 specs: Sequence[RollupSpec]) -> None:
        self._factory = client_factory
        self._client: Client | None = None
        self.tables = tables
        self.specs = {s.name: s for s in specs}

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def _run(self, what: str, fn: Callable[[Client], T]) -> T:
        def attempt() -> T:
            try:
                return fn(self.client)
            except Exception:
                client, self._client = self._client, None
                if client is not None:
                    with contextlib.suppress(Exception):  # best effort on a failing client
                        client.close()
                raise
        return retrying(what, attempt)

    @property
    def events(self) -> str:
        return self.tables["events"]

    def rollup(self, name: str) -> str:
        return self.tables[rollup_tables.table_name(self.specs[name])]

    def insert_rows(self, rows: pa.Table) -> None:
        # Up to 366 day partitions in one block (see agents/sink.EventsWriter).
        self._run("generation insert", lambda c: c.insert_arrow(
            self.events, rows, settings={"max_partitions_per_insert_block": 400}))

    def upsert_states(self, items: Iterable[tuple[StateKey, bytes]]) -> int:
        by_rollup: dict[str, list[tuple[StateKey, PartialState]]] = defaultdict(list)
        for key, data in items:
            by_rollup[key.rollup].append((key, PartialState.from_bytes(data)))
        inserts = []
        for name, part in by_rollup.items():
            columns, rows = rollup_tables.upsert_rows(self.specs[name], part)
            inserts.append((self.rollup(name), rows, columns))

        def insert_all(client: Client) -> None:
            for table, rows, columns in inserts:
                client.insert(table, rows, column_names=columns)

        self._run("generation rollup upsert", insert_all)
        return sum(len(p) for p in by_rollup.values())

    def stored_states(self) -> dict[int, list[tuple[StateKey, bytes]]]:
        """Every state the generation's rollup tables hold, by partition (a resume restores all
        of them: a replay keeps its windows in memory until it ends)."""
        out: dict[int, list[tuple[StateKey, bytes]]] = defaultdict(list)

        def read(client: Client) -> None:
            out.clear()
            for spec in self.specs.values():
                dims = ", ".join(f"`{d}`" for d in spec.dimensions)
                rows = client.query(
                    f"SELECT partition, project_id, toUnixTimestamp(window_start), {dims}, base64Encode(state)"
                    f" FROM `{self.rollup(spec.name)}` FINAL").result_rows
                n = len(spec.dimensions)
                for row in rows:
                    key = StateKey(int(row[0]), str(row[1]), spec.name, int(row[2]) * 1000,
                                   tuple(str(v) for v in row[3:3 + n]))
                    out[key.partition].append((key, base64.b64decode(row[3 + n])))

        self._run("generation rollup restore", read)
        return dict(out)

    def first_copies(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, raw partitions, raw offsets, indexes) of every generation row."""
        found: list[pa.Table] = []

        def read(client: Client) -> None:
            found[:] = [client.query_arrow(
                f"SELECT toString(event_id) AS id, _partition, _offset, _index FROM `{self.events}`")]

        self._run("generation dedup restore", read)
        table = found[0]
        ids = ids_from_strings([_text(v) for v in table.column("id").to_pylist()])
        return (ids, table.column("_partition").to_numpy().astype(np.uint64),
                table.column("_offset").to_numpy().astype(np.uint64),
                table.column("_index").to_numpy().astype(np.uint64))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Letters:
    """Dead letters found by a replay: each source position once, across resumes.

    A letter already in the `dlq` table for (topic, partition, offset, index) is not written
    again (the live pipeline, or an earlier run of this job, recorded it). A new one is produced
    to events.dlq, as the live validate agent would, and inserted into the `dlq` table at the
    position the broker gave it: the live dead-letter agent inserting the same letter later
    writes the same key (dlq partition, offset), which ReplacingMergeTree keeps once.
    """

    def __init__(self, client_factory: Callable[[], Client], bootstrap: str, dlq_topic: str,
                 schema_of: Callable[[int], WriterSchema | None], redactor: Redactor,
                 producer_config: dict[str, str] | None = None, bases: LogBases = NO_EPOCH) -> None:
        self._tables = GenerationTables(client_factory, {}, ())
        self._bases = bases  # a letter's dlq position is base + the broker's offset
        self._producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                   "message.max.bytes": 10_000_000, **(producer_config or {})})
        self._topic = dlq_topic
        self._schema_of, self._redactor = schema_of, redactor
        self.written = 0
        self.known = 0

    def write(self, letters: Sequence[Invalid], now_ms: int) -> None:
        if not letters:
            return
        recorded = self._recorded(letters)
        new = [inv for inv in letters if _identity(inv) not in recorded]
        self.known += len(letters) - len(new)
        if not new:
            return
        header_lists: list[Any] = [dlq.headers(inv, now_ms) for inv in new]
        positions = retrying("dead letter produce", lambda: self._produce(new, header_lists))
        rows = []
        for inv, headers, (partition, offset) in zip(new, header_lists, positions, strict=True):
            parsed = dlq.parse_headers(headers)
            rows.append(dlq.letter_row(partition, offset, now_ms, inv.raw, parsed,
                                       preview.letter_preview(inv.raw, parsed, self._schema_of, self._redactor)))
        columns = list(rows[0])
        data = [[r[c] for c in columns] for r in rows]
        self._tables._run("dlq insert", lambda c: c.insert("dlq", data, column_names=columns))
        self.written += len(new)

    def _recorded(self, letters: Sequence[Invalid]) -> set[tuple[str, int, int, int]]:
        wanted = {_identity(inv) for inv in letters}
        by_partition: dict[tuple[str, int], set[int]] = defaultdict(set)
        for topic, partition, offset, _ in wanted:
            by_partition[(topic, partition)].add(offset)
        found: set[tuple[str, int, int, int]] = set()

        def read(client: Client) -> None:
            for (topic, partition), offsets in by_partition.items():
                rows = client.query(
                    "SELECT source_offset, event_index FROM dlq WHERE source_topic = {t:String}"
                    " AND source_partition = {p:UInt32} AND source_offset IN {o:Array(UInt64)}",
                    parameters={"t": topic, "p": partition, "o": sorted(offsets)}).result_rows
                found.update((topic, partition, int(o), int(i)) for o, i in rows)

        self._tables._run("dlq lookup", read)
        return found

    def _produce(self, letters: Sequence[Invalid], header_lists: list[Any]) -> list[tuple[int, int]]:
        out: list[tuple[int, int] | BaseException | None] = [None] * len(letters)

        def delivered(i: int) -> Callable[[Any, Any], None]:
            def report(err: Any, msg: Any) -> None:
                out[i] = RuntimeError(str(err)) if err is not None else (
                    msg.partition(), self._bases.logical(self._topic, msg.partition(), msg.offset()))
            return report

        for i, (inv, headers) in enumerate(zip(letters, header_lists, strict=True)):
            self._producer.produce(self._topic, value=inv.raw, key=inv.key, headers=headers, on_delivery=delivered(i))
            self._producer.poll(0)
        self._producer.flush(60)
        failed = [o for o in out if not isinstance(o, tuple)]
        if failed:
            raise RuntimeError(f"{len(failed)} dead letters not acknowledged: {failed[0]!r}")
        return [o for o in out if isinstance(o, tuple)]

    def close(self) -> None:
        self._producer.flush(10)
        self._tables.close()


def _identity(inv: Invalid) -> tuple[str, int, int, int]:
    return (inv.source.topic, inv.source.partition, inv.source.offset, -1 if inv.index is None else inv.index)
