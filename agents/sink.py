"""Clean events as Arrow blocks: the events.clean wire format, and the ClickHouse writer.

events.clean carries Arrow IPC streams (one record batch of clean events per message, schema
EVENTS_ARROW_SCHEMA), not Avro. It is an internal topic between Rearview's own stages, and
Arrow makes both ends nearly free: the validate stage builds columns once (~2 us an event),
and the sink (and any columnar consumer) reads them without per-row decoding and hands them to
ClickHouse as is. Re-encoding as Avro and decoding again cost ~22 us an event, more than
validation itself. Each row keeps its provenance (source partition, offset, index).

`to_arrow`, `encode_blocks` and `decode_block` are pure. `EventsWriter` knows ClickHouse and
nothing of Faust or Kafka: the agent gives it a block and learns only whether it is durable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client

from agents.records import CleanEvent
from core.exceptions import ServiceUnavailable

log = structlog.get_logger(__name__)

EVENTS_TABLE = "events"

EVENTS_ARROW_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("project_id", pa.string()),
        ("event_name", pa.string()),
        ("user_id", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("received_at", pa.timestamp("ms", tz="UTC")),
        ("properties", pa.map_(pa.string(), pa.string())),
        ("ip", pa.string()),
        ("user_agent", pa.string()),
        ("library", pa.string()),
        ("schema_id", pa.uint32()),
        ("_partition", pa.uint32()),
        ("_offset", pa.uint64()),
        ("_index", pa.uint32()),
    ]
)


def to_arrow(events: Sequence[CleanEvent]) -> pa.Table:
    """One Arrow table holding *events*, in the column order of EVENTS_ARROW_SCHEMA."""
    columns = [
        [e["event_id"] for e in events],
        [e["project_id"] for e in events],
        [e["event_name"] for e in events],
        [e["user_id"] for e in events],
        [e["timestamp"] for e in events],
        [e["received_at"] for e in events],
        [list(e["properties"].items()) for e in events],
        [e["ip"] for e in events],
        [e["user_agent"] for e in events],
        [e["library"] for e in events],
        [e["schema_id"] for e in events],
        [e["source_partition"] for e in events],
        [e["source_offset"] for e in events],
        [e["source_index"] for e in events],
    ]
    arrays = [
        pa.array(col, type=field.type) for col, field in zip(columns, EVENTS_ARROW_SCHEMA, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=EVENTS_ARROW_SCHEMA)


def encode_blocks(events: Sequence[CleanEvent], max_bytes: int, rows_per_block: int = 2000) -> list[bytes]:
    """Arrow IPC stream messages holding *events*, each under *max_bytes* when possible."""
    out: list[bytes] = []
    for start in range(0, len(events), rows_per_block):
        out.extend(_encode_fitting(events[start : start + rows_per_block], max_bytes))
    return out


def _encode_fitting(events: Sequence[CleanEvent], max_bytes: int) -> list[bytes]:
    table = to_arrow(events)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, EVENTS_ARROW_SCHEMA) as writer:
        writer.write_table(table)
    data = sink.getvalue().to_pybytes()
    if len(data) <= max_bytes or len(events) == 1:
        return [data]
    mid = len(events) // 2
    return _encode_fitting(events[:mid], max_bytes) + _encode_fitting(events[mid:], max_bytes)


def decode_block(data: bytes) -> pa.Table:
    """The Arrow table in one events.clean message; ValueError if it is not one."""
    try:
        table = pa.ipc.open_stream(data).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from exc
    if not table.schema.equals(EVENTS_ARROW_SCHEMA):
        raise ValueError("Arrow block does not have the clean-events schema")
    return table


class BlockWriter(Protocol):
    async def write(self, block: pa.Table) -> None:
        """Return once the block is durable; raise ServiceUnavailable when it may not be."""


class ClickHouseCalls:
    """One clickhouse-connect client used from a worker thread, with every call wrapped.

    The client is synchronous, so calls run in a thread: the event loop (heartbeats, other
    agents) never waits on ClickHouse. A failed call drops the client (a fresh one after an
    outage does not inherit a broken session) and raises ServiceUnavailable, and the caller
    retries; every Rearview insert is idempotent, so a retry after an ambiguous failure cannot
    double count.
    """

    def __init__(self, client_factory: Callable[[], Client]) -> None:
        self._factory = client_factory
        self._client: Client | None = None

    def _call(self, fn: Callable[[Client], None]) -> None:
        if self._client is None:
            self._client = self._factory()
        try:
            fn(self._client)
        except Exception:
            client, self._client = self._client, None
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort on an already failing client
                pass
            raise

    async def run(self, what: str, fn: Callable[[Client], None]) -> None:
        try:
            await asyncio.to_thread(self._call, fn)
        except Exception as exc:
            raise ServiceUnavailable(f"ClickHouse {what} failed: {exc}") from exc


class EventsWriter:
    """Inserts Arrow blocks into the events table (idempotent by event_id)."""

    def __init__(self, client_factory: Callable[[], Client], table: str = EVENTS_TABLE) -> None:
        self._calls = ClickHouseCalls(client_factory)
        self._table = table

    async def write(self, block: pa.Table) -> None:
        # The table is partitioned by day and valid events span up to 365 days back and 1 day
        # ahead: a block of an import may touch that many partitions (ClickHouse's default
        # limit of 100 would refuse it, and a refusal would be retried forever).
        await self._calls.run(f"insert of {block.num_rows} rows",
                              lambda client: client.insert_arrow(
                                  self._table, block, settings={"max_partitions_per_insert_block": 400}))


class RowsWriter:
    """Inserts rows (dicts with the same keys) into one table: for small, low-rate tables."""

    def __init__(self, client_factory: Callable[[], Client], table: str) -> None:
        self._calls = ClickHouseCalls(client_factory)
        self._table = table

    async def write(self, rows: Sequence[dict[str, object]]) -> None:
        columns = list(rows[0])
        data = [[r[c] for c in columns] for r in rows]
        await self._calls.run(f"insert into {self._table}",
                              lambda client: client.insert(self._table, data, column_names=columns))
