"""The gRPC collector: `AnalyticsService` (schemas/analytics.proto) inside `rearview api`.

    TrackEvent(Event) -> Ack            the seed's call: one event
    TrackBatch(EventBatch) -> BatchAck  many events; rejections by index, field and reason

It runs on ``grpc.aio`` in the API's own event loop, on ``api.grpc_port`` (0: off), and shares
everything with the HTTP collector: the BatchingProducer the API's start-up creates (so gRPC and
HTTP events fill the same batch messages), `to_event` for parsing, and the API's `Validator`
check, so an event is refused by the same rule with the same words on either path. Status
codes: a bad event is INVALID_ARGUMENT whose message names the field (in a batch: a Rejection,
the good events are still accepted); Kafka unreachable is UNAVAILABLE, with nothing of the call
accepted. Standard health checking (`grpc.health.v1.Health`) and server reflection are served
beside it, so `grpcurl -plaintext 127.0.0.1:50051 list` works.

The project of a call is the project of the write key in its ``authorization: Bearer <key>``
metadata (`call_principal`), never a field of the payload. No valid key is UNAUTHENTICATED, a
read or admin key PERMISSION_DENIED, a key over its rate RESOURCE_EXHAUSTED with a
``retry-after`` (seconds) in the trailing metadata.

Why no client-streaming call: its single answer comes when the stream ends, so a client cannot
tell which of the events it streamed are safe in Kafka until then, and a broken stream leaves it
resending everything. TrackBatch calls multiplexed on one HTTP/2 connection give the same
throughput with an answer per batch.
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import structlog
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from app.access import COUNTERS, PRODUCER, SETTINGS, VALIDATOR, Unauthorized, charge, principal_of
from app.auth import Principal, bearer, retry_after
from app.collector.normalize import BadEvent, to_event
from app.settings import Settings
from core.exceptions import ServiceUnavailable
from schemas import analytics_pb2, analytics_pb2_grpc

log = structlog.get_logger(__name__)

SERVICE = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name
GRPC_SERVER = web.AppKey("grpc_server", grpc.aio.Server)
GRPC_HEALTH = web.AppKey("grpc_health", health.aio.HealthServicer)
# How long in-flight calls may take to finish when the API stops.
STOP_GRACE_S = 5.0


def call_principal(app: web.Application, metadata: Mapping[str, str]) -> Principal:
    """Who a call is from: the write key in its ``authorization: Bearer <key>`` metadata, or
    Unauthorized (401, 403, 429), exactly as the HTTP collector decides."""
    return principal_of(app, bearer(metadata.get("authorization")), "write")


_AUTH_CODES = {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
               429: grpc.StatusCode.RESOURCE_EXHAUSTED}


# The proto's names for the fields a reason starts with (normalize says "event" for the name).
_LEADING = re.compile(r"(event_name|event_id|event|user_id|project_id|timestamp|properties"
                      r"|context\.library)\b")
_PROPERTY = re.compile(r"""property ('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*") """)
# normalize: "properties.<key> is ..." (the key may hold spaces; the last " is " ends it).
_PROPERTY_KEY = re.compile(r"properties\.(.*) is ")
_PROTO_NAME = {"event": "event_name", "context.library": "library"}


def field_of(reason: str) -> str:
    """The Event field a rejection's *reason* is about, named as in the proto ("" if none).

    Reasons come from `to_event` and `Validator.check`, which start with the field or quote the
    property key (``property 'price' value is too long``)."""
    if reason.startswith(("more than ", "a property key ")):
        return "properties"
    quoted = _PROPERTY.match(reason)
    if quoted:
        try:
            return f"properties.{ast.literal_eval(quoted.group(1))}"
        except (ValueError, SyntaxError):
            return "properties"
    leading = _LEADING.match(reason)
    if leading is None:
        return ""
    name = leading.group(1)
    if name == "properties":
        key = _PROPERTY_KEY.match(reason)
        return f"properties.{key.group(1)}" if key else name
    return _PROTO_NAME.get(name, name)


def _peer_ip(peer: str) -> str | None:
    """The address of a peer as grpc names it: ``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


def _as_json(event: analytics_pb2.Event) -> dict[str, Any]:
    """The JSON shape `to_event` reads, from a proto Event (empty scalars are unset)."""
    return {
        "event_name": event.event_name or None,
        "user_id": event.user_id or None,
        "timestamp": event.timestamp or None,
        "event_id": event.event_id or None,
        "properties": dict(event.properties),
        "context": {"library": event.library} if event.library else None,
    }


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._settings = app[SETTINGS]
        self._validator = app[VALIDATOR]

    async def _kwargs(self, context: grpc.aio.ServicerContext[Any, Any], events: int) -> dict[str, Any]:
        """The collector's fields of the call's events; aborts the call without a valid write
        key or over the key's rate (*events* is what the call would take of it)."""
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        try:
            principal = call_principal(self._app, metadata)
            charge(self._app, principal, events)
        except Unauthorized as exc:
            log.info("request_refused", status=_AUTH_CODES[exc.status].name, error="Unauthorized")
            if exc.status == 429:
                context.set_trailing_metadata((("retry-after", retry_after(exc.wait_s)),))
            await context.abort(_AUTH_CODES[exc.status], str(exc))
        except ServiceUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return {
            "received_at_ms": int(time.time() * 1000),
            "project_id": principal.project_id,
            "ip": _peer_ip(context.peer()),
            "user_agent": metadata.get("user-agent"),
        }

    def _record(self, event: analytics_pb2.Event, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The Avro record of *event*, or BadEvent naming the field."""
        record = to_event(_as_json(event), **kwargs)
        reason = self._validator.check(record, kwargs["received_at_ms"])
        if reason is not None:
            raise BadEvent(reason)
        return record

    async def _send(self, records: list[dict[str, Any]],
                    context: grpc.aio.ServicerContext[Any, Any]) -> None:
        try:
            await self._app[PRODUCER].send(records)
        except ServiceUnavailable as exc:
            log.warning("grpc_unavailable", error=str(exc))
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                "the pipeline is temporarily unavailable; retry later")
        self._app[COUNTERS].accepted_events += len(records)

    async def TrackEvent(self, request: analytics_pb2.Event,
                         context: grpc.aio.ServicerContext[Any, Any]) -> analytics_pb2.Ack:
        kwargs = await self._kwargs(context, 1)
        try:
            record = self._record(request, kwargs)
        except BadEvent as exc:
            log.info("request_refused", status="INVALID_ARGUMENT", error="BadEvent",
                     path="/AnalyticsService/TrackEvent")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        await self._send([record], context)
        return analytics_pb2.Ack(event_id=record["event_id"])

    async def TrackBatch(self, request: analytics_pb2.EventBatch,
                         context: grpc.aio.ServicerContext[Any, Any]) -> analytics_pb2.BatchAck:
        events: Sequence[analytics_pb2.Event] = request.events
        limit = self._settings.api.max_batch_events
        if not events:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the batch holds no events")
        if len(events) > limit:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"a batch holds at most {limit} events, this one {len(events)}")
        kwargs = await self._kwargs(context, len(events))
        records: list[dict[str, Any]] = []
        rejections: list[analytics_pb2.Rejection] = []
        event_ids: list[str] = []
        for i, event in enumerate(events):
            try:
                record = self._record(event, kwargs)
            except BadEvent as exc:
                reason = str(exc)
                rejections.append(analytics_pb2.Rejection(index=i, field=field_of(reason),
                                                          reason=reason))
                event_ids.append(event.event_id)
                continue
            records.append(record)
            event_ids.append(record["event_id"])
        if rejections:
            log.info("request_refused", status="INVALID_ARGUMENT", error="BadEvent",
                     path="/AnalyticsService/TrackBatch", rejected=len(rejections))
        if records:
            await self._send(records, context)
        return analytics_pb2.BatchAck(accepted=len(records), rejections=rejections,
                                      event_ids=event_ids)


def server_options(settings: Settings) -> list[tuple[str, Any]]:
    return [
        # gRPC sets SO_REUSEPORT by default: a second server on a port in use would start and
        # silently take half its calls. A busy port must be an error, as it is for HTTP.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", settings.api.max_body_bytes),
    ]


async def start_grpc(app: web.Application) -> None:
    """Start the gRPC server (an aiohttp start-up hook, after the producer exists)."""
    settings = app[SETTINGS]
    port = settings.api.grpc_port
    if not port:
        return
    server = grpc.aio.server(options=server_options(settings))
    analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server(AnalyticsServicer(app), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    address = f"{settings.api.host}:{port}"
    server.add_insecure_port(address)  # raises RuntimeError when the port is taken
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    app[GRPC_SERVER], app[GRPC_HEALTH] = server, health_servicer
    log.info("grpc_started", address=address)


async def stop_grpc(app: web.Application) -> None:
    """Stop taking calls and let in-flight ones finish (before the producer is closed)."""
    if GRPC_SERVER not in app:
        return
    await app[GRPC_HEALTH].enter_graceful_shutdown()
    await app[GRPC_SERVER].stop(STOP_GRACE_S)


def install(app: web.Application) -> None:
    """Serve gRPC with *app*: started after the API's start-up hooks, stopped before its
    shutdown hooks (which close the producer the in-flight calls still need)."""
    app.on_startup.append(start_grpc)
    app.on_shutdown.insert(0, stop_grpc)
