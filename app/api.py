"""`rearview api`: the collector, the query API and the dashboard, in one aiohttp app.

    POST /v1/track            one JSON event          -> 202 {"accepted": 1}
    POST /v1/batch            {"events": [...]}       -> 202 {"accepted": n}
    GET  /v1/events/count     ?event_name=&from=&to=  -> {"count": n, "source": "events"}
    GET  /v1/live             active users 1/5/15 min, events this minute, top events now
    POST /v1/query            {"kind": ...}           -> rows, source, meta (docs/query.md)
    GET  /v1/schema/events    event names with counts and last seen (for pickers)
    GET  /v1/schema/properties?event=            property keys of an event, with counts
    GET  /v1/schema/values?property=&event=&q=   the top values of a property
    GET  /openapi.json        the OpenAPI 3.1 description of every endpoint
    GET  /health              liveness
    GET  /metrics             Prometheus counters (accepted events, responses by status)
    GET  /, /explore, ...     the dashboard and GET /v1/pipeline (app/dashboard)

Keys (app/auth.py): the collector takes a write key (`Authorization: Bearer`, or a `key` field
in the JSON body for browsers' beacons, which cannot set headers); every other /v1/ endpoint a
read (or admin) key, and answers for that key's project only. 401 without a valid key, 403 for
a key of the wrong kind, 429 with Retry-After over a key's rate. /health, /metrics (for the
operator's scraper), /openapi.json and the dashboard's pages and scripts need no key: the pages
ask for one and send it with every data request.

Malformed requests get a 4xx with {"error": "..."} naming the problem; a Kafka or ClickHouse
outage gets 503 (retry later), never a 500 that blames the client. A 4xx is logged as one
`request_refused` line at info (status, path, error class), never with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from clickhouse_connect.driver.client import Client

import schemas
from agents.codec import BatchWriter
from agents.schema_registry import register
from agents.validate import Validator
from app import clickhouse, grpc_server, query
from app.access import (
    COUNTERS,
    KEYRING,
    PRODUCER,
    READ_LIMIT,
    SETTINGS,
    VALIDATOR,
    WRITE_LIMIT,
    WRITE_PATHS,
    CollectorCounters,
    Unauthorized,
    charge,
    principal_of,
)
from app.auth import (
    PRINCIPAL,
    Keyring,
    KeyStore,
    Principal,
    RateLimiter,
    bearer,
    retry_after,
    start_refreshing,
)
from app.collector.normalize import BadEvent, parse_body, to_event, to_events
from app.collector.producer import BatchingProducer
from app.dashboard import add_routes as add_dashboard_routes
from app.live import live, live_rollup
from app.metrics import CONTENT_TYPE, Metric, render
from app.query import (
    BadQuery,
    CountRequest,
    QueryTimeout,
    QueryTooExpensive,
    count_events,
    discovery,
    parse_time,
)
from app.settings import Settings
from core.exceptions import RearviewError, ServiceUnavailable

log = structlog.get_logger(__name__)



class LazyClient:
    """Connects on first use, so the collector starts (and takes events) while ClickHouse is down."""

    def __init__(self, factory: Callable[[], Client]) -> None:
        self._factory = factory
        self._client: Client | None = None

    def get(self) -> Client:
        if self._client is None:
            self._client = self._factory()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


CH_CLIENT = web.AppKey("clickhouse", LazyClient)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]




@web.middleware
async def count_responses(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    if request.path.startswith("/v1/"):
        request.app[COUNTERS].response(request.path if request.match_info.route.resource else "other",
                                       response.status)
    return response


def _refused(status: int, error: BaseException, path: str | None = None) -> None:
    """One info line for a request the client got wrong: no traceback, no payload, no address
    (the message of a parse error quotes the offending bytes, so only its class is logged)."""
    log.info("request_refused", status=status, error=type(error).__name__,
             **({"path": path} if path is not None else {}))


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        _refused(413, exc, request.path)
        limit = request.app[SETTINGS].api.max_body_bytes
        return _error(413, f"request body is larger than {limit} bytes")
    except web.HTTPException as exc:
        if exc.status >= 400:
            if exc.status < 500:
                _refused(exc.status, exc, request.path)
            return _error(exc.status, exc.reason)
        raise
    except Unauthorized as exc:
        _refused(exc.status, exc, request.path)
        response = _error(exc.status, str(exc))
        if exc.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        elif exc.status == 429:
            response.headers["Retry-After"] = retry_after(exc.wait_s)
        return response
    except BadQuery as exc:
        _refused(400, exc, request.path)
        return _json({"error": str(exc), "field": exc.field}, 400)
    except BadEvent as exc:
        _refused(400, exc, request.path)
        return _error(400, str(exc))
    except QueryTimeout as exc:
        log.warning("query_timeout", path=request.path)
        return _error(504, str(exc))
    except QueryTooExpensive as exc:
        log.warning("query_too_expensive", path=request.path)
        return _error(422, str(exc))
    except ServiceUnavailable as exc:
        log.warning("request_unavailable", path=request.path, error=str(exc))
        return _error(503, "the pipeline is temporarily unavailable; retry later")
    except RearviewError as exc:
        log.error("request_failed", path=request.path, error=str(exc))
        return _error(500, str(exc))


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Read endpoints need a read key; the collector's write key may be in the body, so
    `track` and `batch` check theirs (`_writer`)."""
    path = request.path
    if path.startswith("/v1/") and path not in WRITE_PATHS:
        principal = principal_of(request.app, bearer(request.headers.get("Authorization")), "read")
        charge(request.app, principal)
        request[PRINCIPAL] = principal
    return await handler(request)


def _writer(request: web.Request, body: Any) -> Principal:
    key = bearer(request.headers.get("Authorization"))
    if key is None and isinstance(body, dict) and isinstance(body.get("key"), str):
        key = body["key"]
    return principal_of(request.app, key, "write")


def _project(request: web.Request) -> str:
    return request[PRINCIPAL].project_id


async def _body(request: web.Request) -> Any:
    """The JSON body; integers of any size keep their digits (see normalize.parse_body)."""
    return parse_body(await request.read())


def _event_kwargs(request: web.Request, principal: Principal) -> dict[str, Any]:
    return {
        "received_at_ms": int(time.time() * 1000),
        "project_id": principal.project_id,
        "ip": request.remote,
        "user_agent": request.headers.get("User-Agent"),
    }


def _check(request: web.Request, events: list[dict[str, Any]], indexed: bool) -> None:
    """Refuse, naming the field, an event the worker's rules would dead-letter."""
    validator = request.app[VALIDATOR]
    for i, event in enumerate(events):
        reason = validator.check(event, event["context"]["received_at"])
        if reason is not None:
            raise BadEvent(f"events[{i}]: {reason}" if indexed else reason)


async def track(request: web.Request) -> web.Response:
    body = await _body(request)
    principal = _writer(request, body)
    charge(request.app, principal)
    event = to_event(body, **_event_kwargs(request, principal))
    _check(request, [event], indexed=False)
    await request.app[PRODUCER].send([event])
    request.app[COUNTERS].accepted_events += 1
    return _json({"accepted": 1}, 202)


async def batch(request: web.Request) -> web.Response:
    body = await _body(request)
    principal = _writer(request, body)
    events = to_events(body, **_event_kwargs(request, principal))
    limit = request.app[SETTINGS].api.max_batch_events
    if len(events) > limit:
        raise BadEvent(f"a batch holds at most {limit} events, this one {len(events)}")
    charge(request.app, principal, len(events))
    _check(request, events, indexed=True)
    await request.app[PRODUCER].send(events)
    request.app[COUNTERS].accepted_events += len(events)
    return _json({"accepted": len(events)}, 202)


async def events_count(request: web.Request) -> web.Response:
    q = request.query
    req = CountRequest(
        project_id=_project(request),
        event_name=q.get("event_name") or None,
        start=parse_time("from", q.get("from")),
        end=parse_time("to", q.get("to")),
    )
    lazy = request.app[CH_CLIENT]
    try:
        result = await asyncio.to_thread(lambda: count_events(lazy.get(), req))
    except Exception as exc:
        raise ServiceUnavailable(f"ClickHouse query failed: {exc}") from exc
    return _json({"count": result.count, "source": result.source})


async def live_now(request: web.Request) -> web.Response:
    spec = live_rollup(request.app[SETTINGS].aggregate.rollups)
    lazy = request.app[CH_CLIENT]
    try:
        result = await asyncio.to_thread(lambda: live(lazy.get(), spec, _project(request)))
    except Exception as exc:
        raise ServiceUnavailable(f"ClickHouse query failed: {exc}") from exc
    return _json({"active_users": result.active_users, "events_this_minute": result.events_this_minute,
                  "top_events": result.top_events, "as_of": result.as_of, "source": f"rollup:{spec.name}"})


QUERY_CONFIG = web.AppKey("query_config", query.QueryConfig)


def _config(request: web.Request) -> query.QueryConfig:
    """The query configuration bound to the request's project."""
    return request.app[QUERY_CONFIG].for_project(_project(request))


async def run_query(request: web.Request) -> web.Response:
    body = await _body(request)
    lazy, config = request.app[CH_CLIENT], _config(request)
    return _json(await asyncio.to_thread(lambda: query.run(lazy.get(), body, config)))


async def schema_events(request: web.Request) -> web.Response:
    lazy, config = request.app[CH_CLIENT], _config(request)
    return _json(await asyncio.to_thread(lambda: discovery.events(lazy.get(), config)))


async def schema_properties(request: web.Request) -> web.Response:
    lazy, config = request.app[CH_CLIENT], _config(request)
    event = request.query.get("event") or None
    return _json(await asyncio.to_thread(lambda: discovery.properties(lazy.get(), config, event)))


async def schema_values(request: web.Request) -> web.Response:
    lazy, config = request.app[CH_CLIENT], _config(request)
    q = request.query
    return _json(await asyncio.to_thread(lambda: discovery.values(
        lazy.get(), config, q.get("property"), q.get("event") or None, q.get("q") or "",
        q.get("limit"))))


OPENAPI = web.AppKey("openapi", bytes)


async def openapi(request: web.Request) -> web.Response:
    if OPENAPI not in request.app:
        from app.openapi import document

        request.app[OPENAPI] = orjson.dumps(document(request.app[SETTINGS]))
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    c = request.app[COUNTERS]
    responses = Metric("rearview_collector_responses_total", "API responses by path and status.")
    for (path, status), n in sorted(c.responses.items()):
        responses.add(n, path=path, status=str(status))
    body = render([
        Metric("rearview_collector_events_accepted_total",
               "Events acknowledged by Kafka and answered with 202.").add(c.accepted_events),
        responses,
    ])
    return web.Response(text=body, content_type=CONTENT_TYPE)


async def health(_request: web.Request) -> web.Response:
    return _json({"status": "ok"})


KEY_REFRESH = web.AppKey("key_refresh", asyncio.Task)  # type: ignore[type-abstract]
KEYS_FIRST_LOAD_WAIT_S = 10.0  # at most this long a start waits for the keys (ClickHouse down)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.api.max_body_bytes,
                          middlewares=[count_responses, errors, authenticate])
    app[SETTINGS] = settings
    auth = settings.auth
    app[KEYRING] = Keyring(lambda: KeyStore(app[CH_CLIENT].get()).list_keys())
    app[WRITE_LIMIT] = RateLimiter(auth.write_events_per_s, auth.write_burst_events)
    app[READ_LIMIT] = RateLimiter(auth.read_requests_per_s, auth.read_burst_requests)
    app[COUNTERS] = CollectorCounters()
    app[VALIDATOR] = Validator(settings.validation.rules())
    app[QUERY_CONFIG] = query.QueryConfig.from_settings(settings)

    async def startup(app: web.Application) -> None:
        topic = settings.kafka.topics.raw
        batch_id = await asyncio.to_thread(
            register, settings.registry.url, topic, schemas.EVENT_BATCH
        )
        app[PRODUCER] = BatchingProducer(
            {"bootstrap.servers": settings.kafka.bootstrap_servers, **settings.kafka.producer_config},
            topic,
            BatchWriter(schemas.EVENT_BATCH, batch_id),
            linger_s=settings.api.linger_ms / 1000,
            max_events=settings.api.batch_max_events,
        )
        app[CH_CLIENT] = LazyClient(lambda: clickhouse.connect(settings.clickhouse))
        if auth.required:
            # A key revoked anywhere is refused here within refresh_s.
            app[KEY_REFRESH] = await start_refreshing(app[KEYRING], auth.refresh_s, KEYS_FIRST_LOAD_WAIT_S)
        else:
            log.warning("auth_disabled", project_id=settings.project_id,
                        detail="RV_AUTH__REQUIRED=false: anyone who reaches this API writes and"
                               " reads this project without a key; for local experiments only")

    async def shutdown(app: web.Application) -> None:
        if KEY_REFRESH in app:
            app[KEY_REFRESH].cancel()
        if PRODUCER in app:
            await app[PRODUCER].aclose()
        app[CH_CLIENT].close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    grpc_server.install(app)
    app.router.add_post("/v1/track", track)
    app.router.add_post("/v1/batch", batch)
    app.router.add_get("/v1/events/count", events_count)
    app.router.add_get("/v1/live", live_now)
    app.router.add_post("/v1/query", run_query)
    app.router.add_get("/v1/schema/events", schema_events)
    app.router.add_get("/v1/schema/properties", schema_properties)
    app.router.add_get("/v1/schema/values", schema_values)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    add_dashboard_routes(app, settings)
    return app


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger, except for requests its HTTP parser refuses.

    A request line or header aiohttp cannot parse (a 16 KB User-Agent is over its 8,190-byte
    line limit, a malformed header, a bad method) is answered 400 by aiohttp itself, before any
    handler or middleware runs, and logged with `logger.exception`: an ERROR with a traceback
    for what is the client's mistake. Those become one `request_refused` line at info; every
    other record (a handler's unexpected exception, a 500) is logged as aiohttp logs it.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(error, HttpProcessingError) and 400 <= (error.code or 0) < 500:
            _refused(error.code, error)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)


def serve(settings: Settings, host: str, port: int) -> None:
    log.info("api_starting", url=f"http://{host}:{port}/")
    web.run_app(create_app(settings), host=host, port=port, reuse_port=settings.api.reuse_port or None,
                print=None, access_log=None,
                logger=ServerLog(logging.getLogger("aiohttp.server"), {}))
