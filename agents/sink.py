"""The ClickHouse side of the sink stage: clean events to columnar blocks, blocks to inserts.

`to_arrow` is pure. `EventsWriter` knows ClickHouse and nothing of Faust or Kafka: the agent
gives it a block and learns only whether the block is durable. Arrow goes to ClickHouse as is
(no per-row Python serialisation), which is what makes 10k+-row blocks cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import pyarrow as pa
import structlog
from clickhouse_connect.driver.client import Client

from agents.records import CleanEvent
from app.exceptions import ServiceUnavailable

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


class BlockWriter(Protocol):
    async def write(self, block: pa.Table) -> None:
        """Return once the block is durable; raise ServiceUnavailable when it may not be."""


class EventsWriter:
    """Inserts Arrow blocks into the events table through clickhouse-connect.

    The client is synchronous, so inserts run in a thread: the event loop (heartbeats, other
    agents) never waits on ClickHouse. Each insert has a timeout; a failed or timed-out insert
    raises ServiceUnavailable and the caller retries the same block (rows are idempotent by
    event_id, so a retry after an ambiguous failure cannot double count).
    """

    def __init__(self, client_factory: Callable[[], Client], table: str = EVENTS_TABLE) -> None:
        self._client_factory = client_factory
        self._client: Client | None = None
        self._table = table

    def _insert(self, block: pa.Table) -> None:
        if self._client is None:
            self._client = self._client_factory()
        try:
            self._client.insert_arrow(self._table, block)
        except Exception:
            # Drop the client: a fresh one after an outage does not inherit a broken session.
            client, self._client = self._client, None
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort on an already failing client
                pass
            raise

    async def write(self, block: pa.Table) -> None:
        try:
            await asyncio.to_thread(self._insert, block)
        except Exception as exc:
            raise ServiceUnavailable(f"ClickHouse insert of {block.num_rows} rows failed: {exc}") from exc
