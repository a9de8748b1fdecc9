"""One pooled chdb connection: its own thread, its tracked state, and chdb's quirks.

chdb facts this module is built on (chdb 4.4.0, ClickHouse 26.9; see engine.py for more):

- A connection keeps a current database and settings, like a server session. The pool
  reuses connections, so :meth:`PooledConnection.prepare` sets exactly the database and
  settings a request asks for (a diff against what the connection has, usually nothing).
- While a streaming query or insert is open on a connection, it runs nothing else, and two
  threads on one connection are serialised inside chdb. Each connection is therefore driven
  by a single thread of its own, in FIFO order: a clean-up queued after a cancelled request
  still runs before the next request's first call.
- chdb raises ``RuntimeError("Code: N. DB::Exception: ...")``, but ``UnicodeDecodeError``
  when the engine's message holds binary bytes (corrupt input quoted back); the message is
  then read from the exception's bytes. Both become :class:`QueryFailed` with their code.
- Some corrupt Native input makes ``insert_append`` fail with a bare "streaming insert
  append failed" (no code). After that, ``insert_cancel`` or closing the connection trips a
  libc++ assertion inside chdb and the whole process hangs in ClickHouse's signal handler.
  ``insert_done`` ends such an insert cleanly (keeping the blocks already parsed, as a
  ClickHouse server does when an insert fails midway), so :meth:`abort_insert` uses it then.
  A connection that cannot be ended at all is *poisoned*: never used or closed again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from app.embedded.clickhouse.exceptions import INCORRECT_DATA, UNKNOWN_EXCEPTION, QueryFailed
from app.embedded.clickhouse.protocol import QueryStats

T = TypeVar("T")

DEFAULT_DATABASE: Final = "default"
# What chdb raises for an engine error (UnicodeDecodeError: see the module docs).
_CHDB_ERRORS: Final = (RuntimeError, UnicodeDecodeError)
_NOT_STREAMABLE_CODE: Final = 36  # BAD_ARGUMENTS "Streaming query is not supported ..."


@dataclass(frozen=True)
class QueryClass:
    kind: str  # chdb's classify_query: READ_ONLY, MUTATING, CONTROL or UNKNOWN
    statement_count: int


@dataclass(frozen=True)
class ConnectionState:
    database: str
    settings: Mapping[str, str]


class BufferedResult:
    """A whole result held by chdb; :attr:`data` views its memory without a copy."""

    def __init__(self, result: Any) -> None:
        self._result = result
        self._view = result.get_memview() if result.size() else None
        self.data: memoryview = self._view.view() if self._view is not None else memoryview(b"")
        self.stats = _stats(result)


@dataclass(frozen=True)
class StreamChunk:
    data: bytes
    stats: QueryStats


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def quote_value(value: str) -> str:
    """A setting value as a SQL string literal; ClickHouse converts it to the setting's type."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _stats(result: Any) -> QueryStats:
    return QueryStats(
        read_rows=int(result.storage_rows_read()),
        read_bytes=int(result.storage_bytes_read()),
        written_rows=int(result.rows_written()),
        written_bytes=int(result.bytes_written()),
        result_rows=int(result.rows_read()),
        result_bytes=int(result.size()),
        elapsed_ns=int(result.elapsed() * 1e9),
    )


def _failed(exc: Exception) -> QueryFailed:
    if isinstance(exc, UnicodeDecodeError) and isinstance(exc.object, bytes):
        # The engine's own error, whose message quotes binary input: read it leniently.
        return QueryFailed.from_engine(RuntimeError(exc.object.decode("utf-8", "replace")))
    return QueryFailed.from_engine(exc)


class PooledConnection:
    """One chdb connection and the thread that drives it.

    Methods below :meth:`abandon` run on that thread, through :meth:`call` (await the
    result), :meth:`start` (await later) or :meth:`submit` (fire and forget).
    """

    def __init__(
        self, connect: Callable[[], Any], number: int, baseline_settings: Mapping[str, str]
    ) -> None:
        self._conn = connect()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"chdb-{number}")
        self.database = DEFAULT_DATABASE
        self.settings: dict[str, str] = dict(baseline_settings)
        self.broken = False  # state unknown: close it rather than reuse it
        self.poisoned = False  # chdb may take the process down if this connection is touched
        self._insert_open = False
        self._insert_wrecked = False

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.start(fn, *args)

    def start(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Queue *fn* on the connection's thread now; await the result later."""
        return asyncio.wrap_future(self._thread.submit(fn, *args))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._thread.submit(fn, *args)

    def close(self) -> None:
        """Close on the connection's own thread, after anything already queued."""

        def _close() -> None:
            with contextlib.suppress(Exception):
                self._conn.close()

        self._thread.submit(_close)
        self._thread.shutdown(wait=False)

    def close_and_wait(self) -> None:
        self.close()
        self._thread.shutdown(wait=True)

    def abandon(self) -> None:
        """Stop the thread, leave the chdb connection untouched (see *poisoned*)."""
        self._thread.shutdown(wait=False)

    # -- on the connection's thread ----------------------------------------------------

    def prepare(self, database: str, settings: Mapping[str, str]) -> None:
        """Make the connection's current database and settings exactly these."""
        if database != self.database:
            try:
                self._conn.query(f"USE {quote_identifier(database)}", "TabSeparated")
            except _CHDB_ERRORS as exc:
                raise _failed(exc) from None
            self.database = database
        changes = [
            f"{name} = {quote_value(value)}"
            for name, value in settings.items()
            if self.settings.get(name) != value
        ]
        changes += [f"{name} = DEFAULT" for name in self.settings if name not in settings]
        if not changes:
            return
        try:
            self._conn.query("SET " + ", ".join(changes), "TabSeparated")
        except _CHDB_ERRORS as exc:
            # Part of the list may have been applied: learn what the connection now has (a
            # session's connection must survive a bad setting; its temporary tables live here).
            failed = _failed(exc)
            try:
                self.read_state()
            except QueryFailed:
                self.broken = True
            raise failed from None
        self.settings = dict(settings)

    def read_state(self) -> ConnectionState:
        """Re-read database and changed settings (after a statement such as SET or USE)."""
        try:
            db = self._conn.query("SELECT currentDatabase()", "TSVRaw").bytes()
            rows = self._conn.query(
                "SELECT name, value FROM system.settings WHERE changed", "TSVRaw"
            ).bytes()
        except _CHDB_ERRORS as exc:
            self.broken = True
            raise _failed(exc) from None
        changed: dict[str, str] = {}
        for line in rows.decode().splitlines():
            name, _, value = line.partition("\t")
            if name != "database":
                changed[name] = value
        self.database = db.decode().strip()
        self.settings = changed
        return ConnectionState(self.database, dict(changed))

    def describe(self, sql: str, params: Mapping[str, str]) -> list[tuple[str, str]]:
        """(name, type) of each column *sql* returns (``DESCRIBE (sql)``)."""
        try:
            raw = self._conn.query(f"DESCRIBE ({sql})", "TSVRaw", params=dict(params)).bytes()
        except _CHDB_ERRORS as exc:
            raise _failed(exc) from None
        rows = []
        for line in raw.decode("utf-8", "replace").splitlines():
            name, _, rest = line.partition("\t")
            rows.append((name, rest.partition("\t")[0]))
        return rows

    def run(self, sql: str) -> None:
        """A statement whose answer does not matter (DDL of the endpoint's own)."""
        try:
            self._conn.query(sql, "TabSeparated")
        except _CHDB_ERRORS as exc:
            raise _failed(exc) from None

    def drop_temporary(self, name: str) -> None:
        """Drop an external table after its query; a connection that keeps it is not reused."""
        try:
            self._conn.query(f"DROP TEMPORARY TABLE IF EXISTS {quote_identifier(name)}", "TSV")
        except _CHDB_ERRORS:
            self.broken = True

    def begin_statement(
        self, sql: bytes, fmt: str, params: Mapping[str, str], stream: bool
    ) -> tuple[QueryClass, Any | None, StreamChunk | None]:
        """Classify *sql* and, for a single read when *stream*, open its stream and fetch the
        first block: one trip to this thread instead of three."""
        kind = self.classify(sql)
        if not stream or kind.kind != "READ_ONLY" or kind.statement_count != 1:
            return kind, None, None
        handle = self.open_stream(sql, fmt, params)
        if handle is None:
            return kind, None, None
        return kind, handle, self.fetch(handle)

    def classify(self, sql: bytes) -> QueryClass:
        info = self._conn.classify_query(sql)
        return QueryClass(info["query_class"].name, int(info["statement_count"]))

    def query(self, sql: bytes, fmt: str, params: Mapping[str, str]) -> BufferedResult:
        try:
            return BufferedResult(self._conn.query(sql, fmt, params=dict(params)))
        except _CHDB_ERRORS as exc:
            raise _failed(exc) from None

    def open_stream(self, sql: bytes, fmt: str, params: Mapping[str, str]) -> Any | None:
        """Start a streaming query; None if chdb cannot stream this statement."""
        try:
            return self._conn.send_query(sql, fmt, params=dict(params))
        except _CHDB_ERRORS as exc:
            failed = _failed(exc)
            if failed.code == _NOT_STREAMABLE_CODE and "Streaming query" in failed.message:
                return None
            raise failed from None

    def fetch(self, handle: Any) -> StreamChunk | None:
        """The next block of a streaming query, None at its end."""
        try:
            result = self._conn.streaming_fetch_result(handle)
        except _CHDB_ERRORS as exc:
            raise _failed(exc) from None
        if result is None or result.rows_read() == 0:
            return None
        return StreamChunk(result.bytes(), _stats(result))

    def cancel_stream(self, handle: Any) -> None:
        try:
            self._conn.streaming_cancel_query(handle)
        except _CHDB_ERRORS:
            self.broken = True

    def begin_insert(self, statement: str, fmt: str) -> Any:
        try:
            handle = self._conn.send_insert(statement, fmt)
        except _CHDB_ERRORS as exc:
            raise _failed(exc) from None
        self._insert_open = True
        self._insert_wrecked = False
        return handle

    def append(self, handle: Any, data: bytes) -> None:
        try:
            self._conn.insert_append(handle, data)
        except _CHDB_ERRORS as exc:
            failed = _failed(exc)
            if failed.code == UNKNOWN_EXCEPTION:
                self._insert_wrecked = True  # must not be cancelled (module docs)
                failed = QueryFailed(
                    INCORRECT_DATA,
                    f"The insert data cannot be parsed (chdb: {failed.message}). (INCORRECT_DATA)",
                )
            raise failed from None

    def finish_insert(self, handle: Any) -> QueryStats:
        self._insert_open = False
        try:
            result = self._conn.insert_done(handle)
        except _CHDB_ERRORS as exc:
            failed = _failed(exc)
            if failed.code == UNKNOWN_EXCEPTION or self._insert_wrecked:
                self.poisoned = True  # unknown state after a codeless failure
            raise failed from None
        return QueryStats(
            written_rows=int(result.rows_written()),
            written_bytes=int(result.bytes_written()),
            elapsed_ns=int(result.elapsed() * 1e9),
        )

    def abort_insert(self, handle: Any) -> None:
        """End an insert that failed or whose client went away, without crashing chdb."""
        if not self._insert_open:
            return
        self._insert_open = False
        if self._insert_wrecked:
            try:
                self._conn.insert_done(handle)
            except _CHDB_ERRORS:
                self.poisoned = True
            return
        try:
            self._conn.insert_cancel(handle)
        except _CHDB_ERRORS:
            self.broken = True
