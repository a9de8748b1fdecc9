"""The ClickHouse HTTP interface's conventions, as pure functions.

What the URL arguments mean, which HTTP status an error code gets, what the error body and
the ``X-ClickHouse-*`` response headers look like. Modelled on ClickHouse's
``HTTPHandler`` so that clickhouse-connect (and curl users) see what a real server sends.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from app.embedded.clickhouse.exceptions import (
    INVALID_SESSION_TIMEOUT,
    NOT_IMPLEMENTED,
    UNKNOWN_SETTING,
    QueryFailed,
)

# URL arguments the HTTP handler consumes itself; every other non-``param_`` argument is a
# setting. Same list as ClickHouse's HTTPHandler (external-table arguments aside).
RESERVED_ARGS: Final = frozenset(
    {
        "query", "database", "default_format", "compress", "decompress", "user", "password",
        "quota_key", "query_id", "stacktrace", "role", "buffer_size", "wait_end_of_query",
        "session_id", "session_timeout", "session_check", "client_protocol_version",
        "close_session",
    }
)  # fmt: skip
PARAM_PREFIX: Final = "param_"
DEFAULT_FORMAT: Final = "TabSeparated"
DEFAULT_SESSION_TIMEOUT_S: Final = 60.0
MAX_SESSION_TIMEOUT_S: Final = 3600.0

_SETTING_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})

# Formats whose per-block outputs concatenate into one valid stream (no header, footer or
# file structure): only these are streamed block by block; others are produced whole.
STREAMABLE_FORMATS: Final = frozenset(
    {
        "Native", "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "CSV", "RowBinary",
        "JSONEachRow", "JSONLines", "NDJSON", "JSONCompactEachRow", "JSONStringsEachRow",
        "JSONCompactStringsEachRow", "CustomSeparated", "LineAsString",
    }
)  # fmt: skip

# ClickHouse's exceptionCodeToHTTPStatus (HTTPHandler.cpp); anything else is a 500.
_STATUS_BY_CODE: Final[dict[int, int]] = {
    194: 401,  # REQUIRED_PASSWORD
    192: 403, 193: 403, 516: 403, 512: 403, 497: 403, 164: 403,  # auth, ACCESS_DENIED, READONLY
    6: 400, 25: 400, 26: 400, 27: 400, 38: 400, 41: 400, 72: 400, 441: 400, 675: 400,
    676: 400, 376: 400, 15: 400, 44: 400, 37: 400, 123: 400, 8: 400, 167: 400, 168: 400,
    223: 400, 62: 400, 117: 400, 53: 400, 321: 400, 456: 400, 457: 400,  # bad request
    60: 404, 46: 404, 47: 404, 50: 404, 56: 404, 81: 404, 115: 404, 152: 404, 63: 404,
    73: 404, 336: 404, 78: 404, 674: 404,  # unknown things
    229: 413,  # QUERY_IS_TOO_LARGE
    48: 501,  # NOT_IMPLEMENTED
    209: 503, 76: 503,  # SOCKET_TIMEOUT, CANNOT_OPEN_FILE
    381: 411,  # HTTP_LENGTH_REQUIRED
    159: 408,  # TIMEOUT_EXCEEDED
}  # fmt: skip


@dataclass(frozen=True)
class RequestOptions:
    """A request's URL arguments (and the equivalent ``X-ClickHouse-*`` headers), sorted out."""

    query: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    default_format: str = DEFAULT_FORMAT
    query_id: str | None = None
    session_id: str | None = None
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    session_check: bool = False
    close_session: bool = False
    wait_end_of_query: bool = False
    client_protocol_version: int = 0


def parse_options(args: Iterable[tuple[str, str]], headers: Mapping[str, str]) -> RequestOptions:
    """Sort URL arguments into query, bound parameters, settings and handler options.

    Raises QueryFailed for a setting name that cannot be one, a bad session timeout, or
    ClickHouse's own block compression (``compress``/``decompress=1``), which this endpoint
    does not implement (HTTP Content-Encoding is supported instead: every client that
    compresses over HTTP, clickhouse-connect included, uses it).
    """
    values: dict[str, str] = {}
    settings: dict[str, str] = {}
    params: dict[str, str] = {}
    for name, value in args:
        if name.startswith(PARAM_PREFIX):
            params[name[len(PARAM_PREFIX) :]] = value
        elif name in RESERVED_ARGS:
            values[name] = value
        elif _SETTING_NAME_RE.match(name):
            settings[name] = value
        else:
            raise QueryFailed(UNKNOWN_SETTING, f"Unknown setting '{name}'. (UNKNOWN_SETTING)")
    for flag in ("compress", "decompress"):
        if _is_true(values.get(flag, "0")):
            raise QueryFailed(
                NOT_IMPLEMENTED,
                f"Setting '{flag}=1' (ClickHouse's own block compression with CityHash "
                f"checksums) is not supported by Rearview's embedded endpoint: compress with "
                f"HTTP Content-Encoding / Accept-Encoding (lz4, zstd, gzip, deflate) instead. "
                f"See README, 'Differences from a real server'. (NOT_IMPLEMENTED)",
            )
    timeout_s = DEFAULT_SESSION_TIMEOUT_S
    if "session_timeout" in values:
        try:
            timeout_s = float(values["session_timeout"])
        except ValueError:
            timeout_s = -1.0
        if not 0 < timeout_s <= MAX_SESSION_TIMEOUT_S:
            raise QueryFailed(
                INVALID_SESSION_TIMEOUT,
                f"Invalid session timeout: '{values['session_timeout']}'. "
                "(INVALID_SESSION_TIMEOUT)",
            )
    lower = {k.lower(): v for k, v in headers.items()}
    return RequestOptions(
        query=values.get("query", ""),
        settings=settings,
        params=params,
        database=values.get("database") or lower.get("x-clickhouse-database") or None,
        default_format=(
            values.get("default_format") or lower.get("x-clickhouse-format") or DEFAULT_FORMAT
        ),
        query_id=values.get("query_id") or None,
        session_id=values.get("session_id") or None,
        session_timeout_s=timeout_s,
        session_check=_is_true(values.get("session_check", "0")),
        close_session=_is_true(values.get("close_session", "0")),
        wait_end_of_query=_is_true(values.get("wait_end_of_query", "0")),
        client_protocol_version=_revision(values.get("client_protocol_version", "0")),
    )


def _revision(value: str) -> int:
    try:
        return max(int(value), 0)
    except ValueError:
        return 0


def _is_true(value: str) -> bool:
    return value.strip().lower() in _TRUE


def http_status(code: int) -> int:
    """The HTTP status ClickHouse answers a failed query with, by error code."""
    return _STATUS_BY_CODE.get(code, 500)


def error_body(error: QueryFailed, version: str) -> bytes:
    """ClickHouse's error body: ``Code: 62. DB::Exception: ... (SYNTAX_ERROR) (version v)``."""
    return f"Code: {error.code}. DB::Exception: {error.message} (version {version})\n".encode()


def exception_block(tag: str, error: QueryFailed, version: str) -> bytes:
    """The marker ClickHouse (25.11+) appends when a query fails after the response started.

    Announced by the ``X-ClickHouse-Exception-Tag`` header; clickhouse-connect turns it into
    a ``StreamFailureError`` carrying the code.
    """
    message = error_body(error, version).decode().rstrip("\n")
    return (
        f"__exception__\r\n{tag}\r\n{message}\n{len(message)} {tag}\r\n__exception__\r\n".encode()
    )


@dataclass(frozen=True)
class QueryStats:
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    result_bytes: int = 0
    elapsed_ns: int = 0


def progress_header(stats: QueryStats) -> str:
    """``X-ClickHouse-Progress``: what a server sends while ``send_progress_in_http_headers``."""
    return json.dumps(
        {
            "read_rows": str(stats.read_rows),
            "read_bytes": str(stats.read_bytes),
            "written_rows": str(stats.written_rows),
            "written_bytes": str(stats.written_bytes),
            "total_rows_to_read": str(stats.read_rows),
            "result_rows": str(stats.result_rows),
            "result_bytes": str(stats.result_bytes),
            "elapsed_ns": str(stats.elapsed_ns),
        },
        separators=(",", ":"),
    )


def summary_header(stats: QueryStats) -> str:
    """``X-ClickHouse-Summary``: a JSON object of string values, as ClickHouse sends it."""
    return json.dumps(
        {
            "read_rows": str(stats.read_rows),
            "read_bytes": str(stats.read_bytes),
            "written_rows": str(stats.written_rows),
            "written_bytes": str(stats.written_bytes),
            "total_rows_to_read": str(stats.read_rows),
            "result_rows": str(stats.result_rows),
            "result_bytes": str(stats.result_bytes),
            "elapsed_ns": str(stats.elapsed_ns),
        },
        separators=(",", ":"),
    )


_TEXT = "; charset=UTF-8"


def content_type(output_format: str | None) -> str:
    """The Content-Type ClickHouse gives a result in *output_format* (None: no result)."""
    if output_format is None:
        return "text/plain" + _TEXT
    f = output_format
    if f.startswith(("TabSeparated", "TSV")):
        return "text/tab-separated-values" + _TEXT
    if f.startswith("CSV"):
        return "text/csv" + _TEXT + ("; header=present" if "WithNames" in f else "; header=absent")
    if f.startswith("JSON") or f == "NDJSON":
        each_row = "EachRow" in f or f in ("JSONLines", "NDJSON")
        return ("application/x-ndjson" if each_row else "application/json") + _TEXT
    if f == "XML":
        return "application/xml" + _TEXT
    if f.startswith(("Pretty", "Vertical", "Markdown", "Values", "LineAsString", "Custom")):
        return "text/plain" + _TEXT
    return "application/octet-stream"
