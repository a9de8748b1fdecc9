"""External data: tables a request brings along as multipart file parts, for that query only.

As on a server, a file part named ``ids`` becomes a table ``ids`` shaped by the
``ids_structure`` URL argument (``"id UInt32, name String"``) or ``ids_types`` (``"UInt32,
String"``: columns ``_1``, ``_2``...), its data parsed in ``ids_format`` (TabSeparated by
default). Here each is a temporary table on the request's connection, created and filled
before the query and dropped after it, so neither the pool nor a session keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from app.embedded.clickhouse.connection import PooledConnection, quote_identifier
from app.embedded.clickhouse.exceptions import BAD_ARGUMENTS, QueryFailed

DEFAULT_FORMAT = "TabSeparated"


@dataclass(frozen=True)
class ExternalTable:
    name: str
    structure: str  # "name Type, name2 Type2"
    input_format: str
    data: bytes


def external_table(name: str, data: bytes, settings: dict[str, str]) -> ExternalTable:
    """The table for file part *name*; its ``<name>_*`` arguments are taken out of *settings*."""
    structure = settings.pop(f"{name}_structure", None)
    types = settings.pop(f"{name}_types", None)
    input_format = settings.pop(f"{name}_format", None) or DEFAULT_FORMAT
    if structure is None and types is not None:
        structure = ", ".join(f"_{i} {t}" for i, t in enumerate(_split_types(types), start=1))
    if not structure:
        raise QueryFailed(
            BAD_ARGUMENTS,
            f"Neither structure nor types have not been provided for external table {name}. "
            f"Use fields {name}_structure or {name}_types to do so. (BAD_ARGUMENTS)",
        )
    return ExternalTable(name, structure, input_format, data)


def _split_types(types: str) -> list[str]:
    """``"UInt8,Map(String, String)"`` -> the two types (commas inside parentheses kept)."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(types):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(types[start:i].strip())
            start = i + 1
    out.append(types[start:].strip())
    return [t for t in out if t]


@contextlib.asynccontextmanager
async def external_tables(
    conn: PooledConnection, tables: Sequence[ExternalTable]
) -> AsyncIterator[None]:
    """The tables exist on *conn* inside the block, and are dropped after it."""
    created: list[str] = []
    try:
        for table in tables:
            await conn.call(conn.run, f"CREATE TEMPORARY TABLE {quote_identifier(table.name)} "
                                      f"({table.structure}) ENGINE = Memory")  # fmt: skip
            created.append(table.name)
            if table.data:
                handle = await conn.call(
                    conn.begin_insert, f"INSERT INTO {quote_identifier(table.name)}",
                    table.input_format,
                )  # fmt: skip
                try:
                    await conn.call(conn.append, handle, table.data)
                    await conn.call(conn.finish_insert, handle)
                except BaseException:
                    conn.submit(conn.abort_insert, handle)
                    raise
        yield
    finally:
        # Queued on the connection's own thread, so they run before anything the next user
        # of the connection asks, even if this request was cancelled.
        drops = [conn.start(conn.drop_temporary, name) for name in created]
        if drops:
            await asyncio.gather(*drops, return_exceptions=True)
