"""chdb, the ClickHouse engine in-process: one data directory, a pool of connections.

Measured with chdb 4.4.0 (ClickHouse 26.9) on 2 cores:

- One process may own a data directory; a second process fails with "Cannot lock file
  .../status". :meth:`ChdbEngine.open` checks that lock first and raises
  :class:`DataDirLocked` naming the owner's pid.
- Any number of connections to the owned path may be open. Queries on *different*
  connections run in parallel (two 0.18 s scans took 0.19 s together); two threads on *one*
  connection are serialised inside chdb (0.38 s). So every request leases a connection of
  its own (see connection.py), at most ``max_connections`` at a time.
- Opening another connection to the running engine costs ~0.3 ms, so a connection whose
  state is uncertain is closed rather than repaired.
- Inserts use ``send_insert`` + ``insert_append``: chdb parses the input format as the
  bytes arrive, in constant memory, while the endpoint reads the next chunk. 1M rows of an
  events table (UUID, LowCardinality, DateTime64, Map, Int64; 76-89 MB of Native) into a
  MergeTree took 0.3-0.8 s by each of ``send_insert``, ``INSERT ... FROM INFILE`` (Native
  or Arrow) and ``INSERT ... SELECT FROM file(..., Native)``, medians within the run-to-run
  noise of a shared 2-core machine (0.15-0.24 s each into an unsorted table). No path is
  faster, and only ``send_insert`` needs no temp file and no whole body in memory.
  bench/clickhouse_insert.py measures these and the end-to-end HTTP figures.
- ``send_query`` streams a result block by block, but only row formats without a header or
  footer concatenate into a valid stream, and DDL cannot be streamed at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import structlog
from chdb import _chdb

from app.embedded.clickhouse.connection import PooledConnection
from app.embedded.clickhouse.exceptions import DataDirLocked, EngineStartError, QueryFailed
from app.embedded.clickhouse.sessions import SessionState, SessionStore

log = structlog.get_logger(__name__)

DEFAULT_MAX_CONNECTIONS: Final = 8
DESCRIBED_CACHE_SIZE: Final = 256


class DescribedCache:
    """``DESCRIBE`` answers by (session, database, query, params, settings), least recently
    used first out; emptied whenever a statement other than a read runs (DDL may change
    the types a query returns)."""

    def __init__(self, size: int = DESCRIBED_CACHE_SIZE) -> None:
        self._size = size
        self._items: OrderedDict[object, list[tuple[str, str]]] = OrderedDict()

    def get(self, key: object) -> list[tuple[str, str]] | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: object, value: list[tuple[str, str]]) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


@dataclass(frozen=True)
class EngineInfo:
    version: str
    timezone: str
    output_formats: frozenset[str]
    # Settings chdb changes from ClickHouse's defaults on every new connection.
    baseline_settings: Mapping[str, str]
    # chdb's default for enable_http_compression (1, unlike a server's 0). clickhouse-connect
    # reads it from system.settings and then expects compressed responses when it asks.
    http_compression_default: bool = True


class ChdbEngine:
    """Owns a chdb data directory for the life of the process and leases connections."""

    def __init__(self, data_dir: Path, anchor: Any, info: EngineInfo, max_connections: int) -> None:
        self.data_dir = data_dir
        self.info = info
        self.sessions = SessionStore()
        self.described = DescribedCache()
        self._anchor = anchor  # keeps the engine (and the directory lock) up while idle
        self._max = max_connections
        self._idle: list[PooledConnection] = []
        self._all: set[PooledConnection] = set()
        self._poisoned: list[PooledConnection] = []
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._aux: PooledConnection | None = None
        self._aux_lock: asyncio.Lock | None = None
        self._closed = False

    @classmethod
    def open(cls, data_dir: Path, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> ChdbEngine:
        """Start chdb on *data_dir* (created if missing), or fail if another process owns it."""
        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        _check_not_locked(data_dir)
        try:
            anchor = _connect(data_dir)
        except RuntimeError as exc:
            _check_not_locked(data_dir)
            raise EngineStartError(f"chdb cannot open {data_dir}: {exc}") from None
        try:
            info = _read_info(anchor)
        except (RuntimeError, UnicodeDecodeError) as exc:
            anchor.close()
            raise EngineStartError(f"chdb on {data_dir} does not answer: {exc}") from None
        return cls(data_dir, anchor, info, max_connections)

    @contextlib.asynccontextmanager
    async def connection(
        self, session: SessionState | None = None
    ) -> AsyncIterator[PooledConnection]:
        """The connection for one request: the session's own (opened on first use), else one
        leased from the pool. A session's connection stays with the session whatever
        happens here; :class:`SessionStore` closes it when the session ends."""
        if session is not None:
            if session.conn is None:
                with self._lock:
                    if self._closed:
                        raise RuntimeError("the chdb engine is closed")
                    number = next(self._numbers)
                session.conn = PooledConnection(
                    lambda: _connect(self.data_dir), number, self.info.baseline_settings
                )
            yield session.conn
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max)
        async with self._slots:
            conn = self._take()
            try:
                yield conn
            except QueryFailed:
                # A ClickHouse error leaves the connection in a known state unless a call
                # marked it broken (a failed SET, a stream that would not cancel).
                self._give_back(conn, healthy=not conn.broken)
                raise
            except BaseException:
                self._give_back(conn, healthy=False)  # cancelled, or a defect: state unknown
                raise
            self._give_back(conn, healthy=not conn.broken)

    def schema_changed(self) -> None:
        self.described.clear()

    @contextlib.asynccontextmanager
    async def auxiliary(self) -> AsyncIterator[PooledConnection]:
        """A spare connection for short side questions (``DESCRIBE`` of a running query)
        that must not wait for a pool slot the asking request may be holding."""
        if self._aux_lock is None:
            self._aux_lock = asyncio.Lock()
        async with self._aux_lock:
            if self._aux is None or self._aux.broken or self._aux.poisoned:
                if self._aux is not None:
                    self._aux.close()
                self._aux = PooledConnection(
                    lambda: _connect(self.data_dir), 0, self.info.baseline_settings
                )
            yield self._aux

    @property
    def has_poisoned_connections(self) -> bool:
        return bool(self._poisoned) or bool(self.sessions.poisoned)

    def close(self) -> None:
        """Close every connection (waiting for running calls), then the engine."""
        with self._lock:
            self._closed = True
            conns = list(self._all)
            self._all.clear()
            self._idle.clear()
        conns += self.sessions.close_all()
        if self._aux is not None:
            conns.append(self._aux)
            self._aux = None
        for conn in conns:
            if conn.poisoned:
                self._poisoned.append(conn)
            else:
                conn.close_and_wait()
        if self.has_poisoned_connections:
            log.warning("chdb_engine_left_open", poisoned_connections=len(self._poisoned))
            return  # closing the engine would touch them: the process must just exit
        with contextlib.suppress(Exception):
            self._anchor.close()

    def _take(self) -> PooledConnection:
        with self._lock:
            if self._closed:
                raise RuntimeError("the chdb engine is closed")
            if self._idle:
                return self._idle.pop()
            conn = PooledConnection(
                lambda: _connect(self.data_dir),
                next(self._numbers),
                self.info.baseline_settings,
            )
            self._all.add(conn)
            return conn

    def _give_back(self, conn: PooledConnection, healthy: bool) -> None:
        # Calls queued on the connection's thread before this point (an abort_insert after
        # a cancelled request) still run first, in order, so reuse is safe.
        if conn.poisoned:
            log.warning("chdb_connection_poisoned", hint="left open until the process exits")
            with self._lock:
                self._all.discard(conn)
                self._poisoned.append(conn)
            conn.abandon()
            return
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(conn)
                return
            self._all.discard(conn)
        conn.close()


def _connect(data_dir: Path) -> Any:
    return _chdb.connect(str(data_dir))  # type: ignore[attr-defined]  # untyped extension


def _read_info(conn: Any) -> EngineInfo:
    def rows(sql: str) -> list[str]:
        return str(conn.query(sql, "TSVRaw").bytes().decode()).splitlines()

    version, _, tz = rows("SELECT version(), timezone()")[0].partition("\t")
    changed = rows("SELECT name, value FROM system.settings WHERE changed AND name != 'database'")
    compression = rows("SELECT getSetting('enable_http_compression')")[0]
    return EngineInfo(
        version=version,
        timezone=tz,
        output_formats=frozenset(rows("SELECT name FROM system.formats WHERE is_output")),
        baseline_settings=dict(line.partition("\t")[::2] for line in changed),
        http_compression_default=compression.strip().lower() in ("1", "true"),
    )


def _check_not_locked(data_dir: Path) -> None:
    """Fail clearly if a live process holds chdb's lock on ``data_dir/status``."""
    status = data_dir / "status"
    if not status.exists():
        return
    with open(status, "rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _owner_pid(status)
            owner = f"process {pid}" if pid else "another process"
            raise DataDirLocked(
                f"ClickHouse data directory {data_dir} is in use by {owner}; "
                "stop it or choose another --data-dir"
            ) from None
        fcntl.flock(fh, fcntl.LOCK_UN)


def _owner_pid(status: Path) -> str | None:
    try:
        for line in status.read_text(errors="replace").splitlines():
            if line.startswith("PID:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
