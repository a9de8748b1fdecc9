"""What one HTTP request resolved to: settings, database, session, and its response headers."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Final

from app.embedded.clickhouse.compression import choose_response_encoding
from app.embedded.clickhouse.engine import ChdbEngine
from app.embedded.clickhouse.protocol import (
    QueryStats,
    RequestOptions,
    content_type,
    progress_header,
    summary_header,
)
from app.embedded.clickhouse.sessions import SessionState

HOSTNAME: Final = socket.gethostname()
_TRUE: Final = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True)
class RequestContext:
    """A request, resolved before it touches chdb."""

    engine: ChdbEngine
    opts: RequestOptions
    query_id: str
    database: str
    settings: dict[str, str]
    session: SessionState | None
    accept_encoding: str | None

    @property
    def timezone(self) -> str:
        return self.settings.get("session_timezone") or self.engine.info.timezone

    def flag(self, setting: str) -> bool:
        return self.settings.get(setting, "0").strip().lower() in _TRUE

    @property
    def native_revision(self) -> int:
        """The client's protocol revision when the answer is Native (0: as chdb writes it)."""
        return self.opts.client_protocol_version

    @property
    def response_encoding(self) -> str | None:
        value = self.settings.get("enable_http_compression")
        if value is None:
            enabled = self.engine.info.http_compression_default
        else:
            enabled = value.strip().lower() in _TRUE
        return choose_response_encoding(self.accept_encoding) if enabled else None

    def headers(
        self, fmt: str | None, stats: QueryStats, encoding: str | None = None
    ) -> dict[str, str]:
        headers = {
            "Content-Type": content_type(fmt),
            "X-ClickHouse-Query-Id": self.query_id,
            "X-ClickHouse-Timezone": self.timezone,
            "X-ClickHouse-Server-Display-Name": HOSTNAME,
            "X-ClickHouse-Summary": summary_header(stats),
        }
        if self.flag("send_progress_in_http_headers"):
            # A server sends one every http_headers_progress_interval_ms while the query runs;
            # here the progress known when the response starts (module docs of server.py).
            headers["X-ClickHouse-Progress"] = progress_header(stats)
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
        if encoding is not None:
            headers["Content-Encoding"] = encoding
        return headers
