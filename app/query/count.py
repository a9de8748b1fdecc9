"""`GET /v1/events/count`: how many events match a name and a time range."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client

from app.query.errors import BadQuery


def parse_time(name: str, value: str | None) -> datetime | None:
    """ISO-8601 (naive means UTC) or epoch milliseconds."""
    if value is None or value == "":
        return None
    try:
        if value.lstrip("-").isdigit():
            return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
        parsed = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        raise BadQuery(name, f"must be ISO-8601 or epoch milliseconds, got {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CountRequest:
    project_id: str = "default"
    event_name: str | None = None
    start: datetime | None = None  # inclusive
    end: datetime | None = None  # exclusive

    def __post_init__(self) -> None:
        if self.start and self.end and self.start >= self.end:
            raise BadQuery("from", "must be before to")


@dataclass(frozen=True)
class CountResponse:
    count: int
    source: str


def count_events(client: Client, req: CountRequest) -> CountResponse:
    """Events matching *req*, each counted once (FINAL collapses redelivered copies)."""
    where = ["project_id = {project_id:String}"]
    params: dict[str, object] = {"project_id": req.project_id}
    if req.event_name:
        where.append("event_name = {event_name:String}")
        params["event_name"] = req.event_name
    if req.start:
        where.append("ts >= {start:DateTime64(3, 'UTC')}")
        params["start"] = req.start
    if req.end:
        where.append("ts < {end:DateTime64(3, 'UTC')}")
        params["end"] = req.end
    sql = f"SELECT count() FROM events FINAL WHERE {' AND '.join(where)}"
    count = client.query(sql, parameters=params).result_rows[0][0]
    return CountResponse(int(count), "events")
