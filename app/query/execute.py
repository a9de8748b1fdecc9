"""Running the query layer's SQL: limits on every query, and ClickHouse's refusals mapped.

Every query runs read-only with the configured `max_execution_time` and `max_memory_usage`.
ClickHouse answers a query past them with an error code, which becomes `QueryTimeout` (504)
or `QueryTooExpensive` (422) with a message naming the limit; an invalid regular expression
in a filter is the user's mistake (400). Any other failure to reach ClickHouse is
`ServiceUnavailable` (503).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from app.query.errors import BadQuery, QueryTimeout, QueryTooExpensive
from core.exceptions import ServiceUnavailable

# ClickHouse error codes (src/Common/ErrorCodes.cpp).
TIMEOUT_EXCEEDED = 159
MEMORY_LIMIT_EXCEEDED = 241
TOO_MANY_ROWS_OR_BYTES = {158, 307, 396}
BAD_REGEXP = {427, 36}
CODE = re.compile(r"Code: (\d+)")


@dataclass(frozen=True)
class Limits:
    max_execution_time_s: float = 30.0
    max_memory_usage_bytes: int = 4 * 1024**3


class Reader:
    """Runs SELECTs for the query layer under *limits*; counts the queries it ran."""

    def __init__(self, client: Client, limits: Limits) -> None:
        self.client = client
        self.limits = limits
        self.queries = 0

    def rows(self, sql: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        settings = {
            "readonly": 2,
            "max_execution_time": self.limits.max_execution_time_s,
            "timeout_overflow_mode": "throw",
            "max_memory_usage": self.limits.max_memory_usage_bytes,
            # Copies of an event share its timestamp, so its day partition: FINAL need not
            # merge across partitions (about 2x faster, see DESIGN.md).
            "do_not_merge_across_partitions_select_final": 1,
        }
        self.queries += 1
        try:
            result = self.client.query(sql, parameters=params, settings=settings)
            return [tuple(row) for row in result.result_rows]
        except DatabaseError as exc:
            raise _mapped(exc, self.limits) from exc
        except Exception as exc:  # connection refused, reset, timeouts of the HTTP client
            raise ServiceUnavailable(f"ClickHouse query failed: {exc}") from exc


def _mapped(exc: DatabaseError, limits: Limits) -> Exception:
    match = CODE.search(str(exc))
    code = int(match.group(1)) if match else 0
    if code == TIMEOUT_EXCEEDED:
        return QueryTimeout(
            f"the query ran past the {limits.max_execution_time_s:g} s limit"
            " (query.max_execution_time_s): narrow the range, or filter or group less"
        )
    if code == MEMORY_LIMIT_EXCEEDED:
        return QueryTooExpensive(
            f"the query needed more than {limits.max_memory_usage_bytes} bytes of memory"
            " (query.max_memory_usage_bytes): narrow the range or use fewer groups"
        )
    if code in TOO_MANY_ROWS_OR_BYTES:
        return QueryTooExpensive("the query would read or return more than the configured limits")
    if code in BAD_REGEXP:
        return BadQuery("filters", "a regular expression does not compile (RE2 syntax)")
    return ServiceUnavailable(f"ClickHouse query failed: {str(exc)[:300]}")
