"""HTTP sessions (``session_id``): what ``SET`` and ``USE`` left behind, kept between requests.

ClickHouse keeps a session's settings and current database for ``session_timeout`` seconds
after its last request. The endpoint runs every request on a pooled chdb connection, so it
keeps that state here and re-applies it to whichever connection serves the next request of
the session. Temporary tables, which live in a real session's context, are not carried over.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.embedded.clickhouse.exceptions import SESSION_NOT_FOUND, QueryFailed


@dataclass
class SessionState:
    timeout_s: float
    expires_at: float
    database: str | None = None
    settings: dict[str, str] = field(default_factory=dict)


class SessionStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[str, SessionState] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._sessions)

    def touch(self, session_id: str, *, timeout_s: float, check: bool) -> SessionState:
        """The session's state, created unless *check* (then a missing one is an error)."""
        self._expire()
        now = self._clock()
        state = self._sessions.get(session_id)
        if state is None:
            if check:
                raise QueryFailed(
                    SESSION_NOT_FOUND, f"Session {session_id} not found. (SESSION_NOT_FOUND)"
                )
            state = SessionState(timeout_s=timeout_s, expires_at=now + timeout_s)
            self._sessions[session_id] = state
        state.timeout_s = timeout_s
        state.expires_at = now + timeout_s
        return state

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _expire(self) -> None:
        now = self._clock()
        for sid in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[sid]
