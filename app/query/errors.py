"""Errors of the query layer; the API maps each to its status code."""

from __future__ import annotations

from core.exceptions import RearviewError


class BadQuery(RearviewError):
    """A request that cannot be answered as asked (400). *field* is the JSON path of the part
    at fault (``series[1].filters[0][2]``), empty when the whole request is."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.reason = message


class QueryTimeout(RearviewError):
    """ClickHouse stopped the query at the configured execution time limit (504)."""


class QueryTooExpensive(RearviewError):
    """ClickHouse refused the query at a memory or size limit (422)."""
