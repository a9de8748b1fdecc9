"""HTTP sessions (``session_id``): one chdb connection of their own, locked while in use.

A ClickHouse server keeps a session's settings, current database and temporary tables for
``session_timeout`` seconds after its last request, and refuses a second request of the same
session while one runs (SESSION_IS_LOCKED). chdb keeps temporary tables per connection (two
connections to one data directory never see each other's), so a session here owns a chdb
connection for its whole life: its temporary tables are invisible to every other session and
to requests without one (those run on the shared pool), and survive between its requests.
When the session expires or is closed (``close_session=1``), its connection is closed and its
temporary tables go with it.

The settings and database a session's statements chose (``SET``, ``USE``) are remembered
here too: each request applies the session's settings plus its own URL settings, which last
for that request only, as on a server.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.embedded.clickhouse.connection import PooledConnection
from app.embedded.clickhouse.exceptions import SESSION_IS_LOCKED, SESSION_NOT_FOUND, QueryFailed


@dataclass(eq=False)
class SessionState:
    session_id: str
    timeout_s: float
    expires_at: float  # inf while a request holds the session
    database: str | None = None
    settings: dict[str, str] = field(default_factory=dict)
    conn: PooledConnection | None = None  # opened on the session's first statement
    busy: bool = False


class SessionStore:
    """Live sessions by id. Not thread-safe: used from the event loop only."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[str, SessionState] = {}
        self.poisoned: list[PooledConnection] = []  # never closed (see engine.py)

    def __len__(self) -> int:
        self.expire()
        return len(self._sessions)

    def acquire(self, session_id: str, *, timeout_s: float, check: bool) -> SessionState:
        """Hold the session for one request: created unless *check*, refused while held."""
        self.expire()
        state = self._sessions.get(session_id)
        if state is None:
            if check:
                raise QueryFailed(
                    SESSION_NOT_FOUND, f"Session {session_id} not found. (SESSION_NOT_FOUND)"
                )
            state = SessionState(session_id, timeout_s, math.inf)
            self._sessions[session_id] = state
        elif state.busy:
            raise QueryFailed(
                SESSION_IS_LOCKED,
                f"Session {session_id} is locked by a concurrent client. (SESSION_IS_LOCKED)",
            )
        state.busy = True
        state.timeout_s = timeout_s
        state.expires_at = math.inf
        return state

    def release(self, state: SessionState, *, close: bool = False) -> None:
        """The request is done: the session's timeout starts now (or it ends, if *close*)."""
        state.busy = False
        state.expires_at = self._clock() + state.timeout_s
        if close or state.conn is not None and (state.conn.poisoned or state.conn.broken):
            self._end(state)

    def expire(self) -> None:
        """End every session whose timeout has passed (their connections close)."""
        now = self._clock()
        for state in [s for s in self._sessions.values() if s.expires_at <= now]:
            self._end(state)

    def close_all(self) -> list[PooledConnection]:
        """Forget every session; returns their connections for the engine to close."""
        conns = [s.conn for s in self._sessions.values() if s.conn is not None]
        self._sessions.clear()
        return conns

    def _end(self, state: SessionState) -> None:
        if self._sessions.get(state.session_id) is state:
            del self._sessions[state.session_id]
        conn, state.conn = state.conn, None
        if conn is None:
            return
        if conn.poisoned:
            conn.abandon()  # see engine.py: never touch it again
            self.poisoned.append(conn)
        else:
            conn.close()
