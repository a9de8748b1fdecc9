"""`GET /v1/pipeline`: the pipeline's health for the live page, from what it left behind.

    dead letters   per minute and error class over the last `dashboard.dlq_minutes`, read from
                   ClickHouse's `dlq` table (one row per letter; a letter written in parts is
                   counted once, by its head)
    consumer lag   per topic and partition, from each worker's Prometheus /metrics
    redactions     PII redactions by detector since each worker started, from the same

The worker endpoints are `dashboard.worker_metrics_urls` (default: the one worker on
`worker.web_port`). Every part is optional: a worker that does not answer, or a ClickHouse that
cannot be read, is reported in the answer (`reachable: false` and its `error`, or
`dead_letters.error`) and the rest is still served. This endpoint never answers 500 for a
service it observes being down: that is the very thing it exists to show.

Answer:

    {"as_of": "2026-12-01T10:00:03Z",
     "dead_letters": {"error": null, "minutes": ["2026-12-01T09:01:00Z", ...],
                      "by_error_class": {"undecodable": [0, 2, ...]},
                      "classes": [{"error_class", "stage", "letters"}], "total": 2},
     "workers": [{"url", "reachable", "error", "consumer_lag": [{"topic", "partition", "lag"}],
                  "redactions": {"email": 3}, "events_validated": 1200, "dead_letters": 2}],
     "workers_reachable": 1, "workers_total": 1,
     "consumer_lag": {"total": 0, "partitions": [{"worker", "topic", "partition", "lag"}]},
     "redactions": [{"detector": "email", "count": 3}]}
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson
import structlog
from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from agents.oversize import PART_STAGE
from app import clickhouse
from app.auth import PRINCIPAL, Principal
from app.settings import Settings
from core.exceptions import RearviewError

log = structlog.get_logger(__name__)

# A sample line of the text exposition format: name, optional {labels}, value, optional time.
_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?\s*$")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition (format 0.0.4); lines it cannot read are
    skipped, so one odd line from a newer worker never hides the rest."""
    out: list[Sample] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, label_text, value_text = match.groups()
        try:
            value = float(value_text)
        except ValueError:
            continue
        labels: dict[str, str] = {}
        for key, raw in _LABEL.findall(label_text or ""):
            labels[key] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], raw)
        out.append(Sample(name, labels, value))
    return out


def metrics_urls(settings: Settings) -> list[str]:
    return list(settings.dashboard.worker_metrics_urls) or [
        f"http://127.0.0.1:{settings.worker.web_port}/metrics"]


def _shown(url: str) -> str:
    """*url* without any user:password part, fit to be shown in a browser."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _partition(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _partition_key(partition: object) -> tuple[int, str]:
    text = str(partition)
    return (int(text), "") if text.isdigit() else (-1, text)


def _int(value: float) -> int:
    return int(value) if math.isfinite(value) else 0


def worker_health(url: str, samples: list[Sample]) -> dict[str, Any]:
    """One reachable worker's figures from its samples."""
    lag = [{"topic": s.labels.get("topic", ""), "partition": _partition(s.labels.get("partition", "")),
            "lag": _int(s.value)} for s in samples if s.name == "rearview_consumer_lag"]
    redactions: dict[str, int] = {}
    dead = validated = 0
    for s in samples:
        if s.name == "rearview_redactions_total":
            detector = s.labels.get("detector", "")
            redactions[detector] = redactions.get(detector, 0) + _int(s.value)
        elif s.name == "rearview_dead_letters_total":
            dead += _int(s.value)
        elif s.name == "rearview_events_validated_total":
            validated += _int(s.value)
    return {"url": _shown(url), "reachable": True, "error": None,
            "consumer_lag": sorted(lag, key=lambda x: (x["topic"], _partition_key(x["partition"]))),
            "redactions": dict(sorted(redactions.items())), "events_validated": validated,
            "dead_letters": dead}


async def scrape(session: aiohttp.ClientSession, url: str, timeout_s: float) -> dict[str, Any]:
    """A worker's figures, or `reachable: false` and why: never an exception."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        log.info("worker_metrics_unreachable", url=_shown(url), error=type(exc).__name__)
        return {"url": _shown(url), "reachable": False,
                "error": f"{type(exc).__name__}: {reason}"[:300], "consumer_lag": [],
                "redactions": {}, "events_validated": None, "dead_letters": None}
    return worker_health(url, parse_metrics(text))


def dead_letters(client: Client, minutes: int, projects: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Letters per minute and error class over the last *minutes* (the current one included),
    each minute present, from ClickHouse's clock; of *projects* only, unless None."""
    now_minute = int(client.query("SELECT toUnixTimestamp(toStartOfMinute(now()))").result_rows[0][0])
    first = now_minute - (minutes - 1) * 60
    scope = " AND project_id IN {projects:Array(String)}" if projects is not None else ""
    rows = client.query(
        "SELECT toUnixTimestamp(toStartOfMinute(failed_at)) AS m, error_class, stage, count()"
        f" FROM dlq FINAL WHERE failed_at >= toDateTime({{first:UInt32}}) AND stage != {{part:String}}{scope}"
        " GROUP BY m, error_class, stage",
        parameters={"first": first, "part": PART_STAGE, "projects": list(projects or ())},
    ).result_rows
    starts = [first + 60 * i for i in range(minutes)]
    index = {m: i for i, m in enumerate(starts)}
    series: dict[str, list[int]] = {}
    classes: dict[tuple[str, str], int] = {}
    for m, error_class, stage, n in rows:
        line = series.setdefault(str(error_class), [0] * minutes)
        i = index.get(int(m))
        if i is not None:  # a clock ahead of ClickHouse's: past the current minute, not shown
            line[i] += int(n)
        classes[(str(error_class), str(stage))] = classes.get((str(error_class), str(stage)), 0) + int(n)
    return {
        "error": None,
        "minutes": [datetime.fromtimestamp(m, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for m in starts],
        "by_error_class": dict(sorted(series.items())),
        "classes": [{"error_class": c, "stage": s, "letters": n}
                    for (c, s), n in sorted(classes.items(), key=lambda x: (-x[1], x[0]))],
        "total": sum(classes.values()),
    }


def summary(workers: list[dict[str, Any]], dlq: dict[str, Any]) -> dict[str, Any]:
    """The whole answer from each part's figures."""
    partitions = [{"worker": w["url"], **p} for w in workers for p in w["consumer_lag"]]
    redactions: dict[str, int] = {}
    for w in workers:
        for detector, n in w["redactions"].items():
            redactions[detector] = redactions.get(detector, 0) + n
    return {
        "as_of": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "dead_letters": dlq,
        "workers": workers,
        "workers_reachable": sum(1 for w in workers if w["reachable"]),
        "workers_total": len(workers),
        "consumer_lag": {"total": sum(p["lag"] for p in partitions), "partitions": partitions},
        "redactions": [{"detector": d, "count": n}
                       for d, n in sorted(redactions.items(), key=lambda x: (-x[1], x[0]))],
    }


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), **extra}


_COUNT = {"type": "integer", "minimum": 0}
_NULLABLE_COUNT = {"type": ["integer", "null"], "minimum": 0}
_TEXT = {"type": "string"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_PARTITION = {"type": ["integer", "string"]}

# The JSON Schema of the answer (GET /openapi.json documents the endpoint with it).
SCHEMA: dict[str, Any] = _object({
    "as_of": _TEXT,
    "dead_letters": _object({
        "error": _NULLABLE_TEXT,
        "minutes": {"type": "array", "items": _TEXT},
        "by_error_class": {"type": "object", "additionalProperties": {"type": "array", "items": _COUNT}},
        "classes": {"type": "array", "items": _object({"error_class": _TEXT, "stage": _TEXT, "letters": _COUNT})},
        "total": _NULLABLE_COUNT,
    }),
    "workers": {"type": "array", "items": _object({
        "url": _TEXT, "reachable": {"type": "boolean"}, "error": _NULLABLE_TEXT,
        "consumer_lag": {"type": "array", "items": _object({"topic": _TEXT, "partition": _PARTITION, "lag": _COUNT})},
        "redactions": {"type": "object", "additionalProperties": _COUNT},
        "events_validated": _NULLABLE_COUNT,
        "dead_letters": _NULLABLE_COUNT,
    })},
    "workers_reachable": _COUNT,
    "workers_total": _COUNT,
    "consumer_lag": _object({
        "total": _COUNT,
        "partitions": {"type": "array", "items": _object(
            {"worker": _TEXT, "topic": _TEXT, "partition": _PARTITION, "lag": _COUNT})},
    }),
    "redactions": {"type": "array", "items": _object({"detector": _TEXT, "count": _COUNT})},
    "elapsed_ms": {"type": "number"},
})


class Sources:
    """What the endpoint reads: a ClickHouse client made on first use, an HTTP session."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Client | None = None
        self._session: aiohttp.ClientSession | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = clickhouse.connect(self.settings.clickhouse, send_receive_timeout=10)
        return self._client

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._client is not None:
            self._client.close()


SOURCES = web.AppKey("pipeline_health_sources", Sources)


async def _dead_letters(sources: Sources, projects: tuple[str, ...] | None) -> dict[str, Any]:
    minutes = sources.settings.dashboard.dlq_minutes
    try:
        return await asyncio.to_thread(lambda: dead_letters(sources.client(), minutes, projects))
    except (ClickHouseError, OSError, RearviewError) as exc:  # unreachable, not migrated, bad URL
        log.warning("pipeline_health_dlq_failed", error=type(exc).__name__)
        return {"error": f"the dlq table could not be read: {str(exc)[:300]}", "minutes": [],
                "by_error_class": {}, "classes": [], "total": None}


async def pipeline(request: web.Request) -> web.Response:
    """A read key sees its project's dead letters and no worker: the workers' figures (lag,
    redactions, events validated) count every project's events. An admin key, an operator's,
    sees them, with its project's dead letters and those no project can be told for (a message
    that could not be decoded). Without keys, everything."""
    sources = request.app[SOURCES]
    principal: Principal = request[PRINCIPAL]
    began = time.perf_counter()
    timeout = sources.settings.dashboard.scrape_timeout_s
    urls = metrics_urls(sources.settings) if principal.kind == "admin" else []
    *workers, dlq = await asyncio.gather(*(scrape(sources.session(), u, timeout) for u in urls),
                                         _dead_letters(sources, principal.letter_projects()))
    body = summary(list(workers), dlq)
    body["elapsed_ms"] = round((time.perf_counter() - began) * 1000, 1)
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def add_routes(app: web.Application, settings: Settings) -> None:
    app[SOURCES] = Sources(settings)

    async def cleanup(app: web.Application) -> None:
        await app[SOURCES].close()

    app.on_cleanup.append(cleanup)
    app.router.add_get("/v1/pipeline", pipeline)
