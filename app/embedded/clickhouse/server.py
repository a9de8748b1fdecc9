"""chdb served over the ClickHouse HTTP interface, for clickhouse-connect, curl and Grafana.

One request is one statement, as on a real server: the ``query`` URL argument and/or the
body, ``param_*`` bound parameters, settings as URL arguments, ``database``,
``default_format``, ``query_id``, ``session_id``, ``wait_end_of_query``; request bodies in
lz4 (multi-frame), zstd, gzip or deflate; responses compressed when the client sends
``Accept-Encoding``. ``INSERT ... FORMAT fmt`` data is streamed into chdb as it arrives.

Also as on a server: sessions with their own temporary tables and SESSION_IS_LOCKED
(sessions.py), ``client_protocol_version`` for Native answers (native.py), external data
(external.py), ``param_*`` in every kind of statement, and ``send_progress_in_http_headers``
(one ``X-ClickHouse-Progress`` header, with the progress known when the answer starts, where a
server repeats it while the query runs). ``compress=1`` (ClickHouse's own block compression) is
refused with an error naming it.

The event loop only moves bytes: chdb calls run on each pooled connection's own thread and
(de)compression of large bodies on the default executor, so ``/ping`` answers while a long
query or insert runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import structlog
from aiohttp import web

from app.embedded.clickhouse.compression import request_decoder
from app.embedded.clickhouse.connection import DEFAULT_DATABASE, PooledConnection, StreamChunk
from app.embedded.clickhouse.context import RequestContext
from app.embedded.clickhouse.engine import ChdbEngine
from app.embedded.clickhouse.exceptions import (
    QUERY_IS_TOO_LARGE,
    READONLY,
    SYNTAX_ERROR,
    THERE_IS_NO_SESSION,
    UNKNOWN_EXCEPTION,
    ClickHouseEndpointError,
    QueryFailed,
)
from app.embedded.clickhouse.external import external_tables
from app.embedded.clickhouse.native import (
    CannotSkip,
    NativeRewriter,
    zone_stripped_columns,
    zoned_types,
)
from app.embedded.clickhouse.protocol import STREAMABLE_FORMATS, parse_options
from app.embedded.clickhouse.request_body import (
    MAX_STATEMENT_BYTES,
    READ_CHUNK,
    decoded_body,
    read_form,
    read_statement,
)
from app.embedded.clickhouse.responses import error_response, send_stream, send_whole
from app.embedded.clickhouse.statement import (
    InsertWithData,
    Statement,
    creates_temporary_table,
    output_format,
    without_format,
)

log = structlog.get_logger(__name__)

ENGINE: Final = web.AppKey("clickhouse_engine", ChdbEngine)


def runner_options() -> dict[str, Any]:
    """Options the aiohttp runner must get for this app.

    Request bodies are decoded by the endpoint (aiohttp knows no lz4, and would decode gzip
    on the event loop); URLs carry bound parameters and may be long (ClickHouse accepts 1 MiB).
    """
    return {
        "auto_decompress": False,
        "max_line_size": 1 << 20,
        "max_field_size": 1 << 16,
        "read_bufsize": READ_CHUNK,
        "handler_cancellation": True,
    }


def create_app(engine: ChdbEngine) -> web.Application:
    """The aiohttp application; run it with :func:`runner_options` (``serve`` does)."""
    app = web.Application()
    app[ENGINE] = engine
    app.router.add_get("/ping", _ping)
    app.router.add_route("*", "/", _root)
    app.cleanup_ctx.append(_session_reaper)
    return app


SESSION_SWEEP_S: Final = 1.0


async def _session_reaper(app: web.Application) -> AsyncIterator[None]:
    """End expired sessions (closing their connections) even when no request comes."""

    async def sweep() -> None:
        while True:
            await asyncio.sleep(SESSION_SWEEP_S)
            app[ENGINE].sessions.expire()

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="Ok.\n")


async def _root(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    query_id = request.query.get("query_id") or str(uuid.uuid4())
    started = time.monotonic()
    try:
        if (
            request.method in ("GET", "HEAD")
            and "query" not in request.query
            and not request.body_exists
        ):
            return web.Response(text="Ok.\n")  # a health check, as on ClickHouse
        response = await _execute(request, engine, query_id)
    except QueryFailed as exc:
        log.info("clickhouse_query_failed", query_id=query_id, code=exc.code, error=exc.name)
        return error_response(exc, engine, query_id)
    except ConnectionResetError:
        # The client went away mid-answer: one line, and nothing for aiohttp to report.
        log.info("clickhouse_client_gone", query_id=query_id)
        raise asyncio.CancelledError from None
    except asyncio.CancelledError:
        log.info("clickhouse_client_gone", query_id=query_id)
        raise
    except Exception as exc:  # a defect here: answer like ClickHouse, keep serving
        log.exception("clickhouse_endpoint_error", query_id=query_id)
        return error_response(
            QueryFailed(UNKNOWN_EXCEPTION, f"{type(exc).__name__}: {exc} (UNKNOWN_EXCEPTION)"),
            engine,
            query_id,
        )
    log.debug(
        "clickhouse_query_done",
        query_id=query_id,
        status=response.status,
        elapsed_ms=round((time.monotonic() - started) * 1000, 1),
    )
    return response


async def _execute(request: web.Request, engine: ChdbEngine, query_id: str) -> web.StreamResponse:
    opts = parse_options(request.query.items(), request.headers)
    opts = replace(opts, query_id=query_id)
    form = await read_form(request, opts)
    opts = form.opts
    session = None
    if opts.session_id is not None:
        session = engine.sessions.acquire(
            opts.session_id, timeout_s=opts.session_timeout_s, check=opts.session_check
        )
    try:
        ctx = RequestContext(
            engine=engine,
            opts=opts,
            query_id=query_id,
            database=opts.database or (session.database if session else None) or DEFAULT_DATABASE,
            settings=_without_readonly(
                {
                    **engine.info.baseline_settings,
                    **(session.settings if session else {}),
                    **opts.settings,
                }
            ),
            session=session,
            accept_encoding=request.headers.get("Accept-Encoding"),
        )
        body = decoded_body(request, request_decoder(request.headers.get("Content-Encoding")))
        split, leftover = await read_statement(form.prefix, body)
        if session is None and creates_temporary_table(_text_of(split)):
            raise QueryFailed(
                THERE_IS_NO_SESSION,
                "There is no session or session context has expired: temporary tables need a "
                "session_id. (THERE_IS_NO_SESSION)",
            )
        async with engine.connection(session) as conn:
            await conn.call(conn.prepare, ctx.database, ctx.settings)
            async with external_tables(conn, form.external):
                if isinstance(split, InsertWithData):
                    if split.input_format == "Values" and opts.params:
                        # Bound parameters inside VALUES: chdb substitutes them only when it
                        # parses the whole statement, not in a streamed insert.
                        whole = await _rest_of_body(split, leftover, body)
                        return await _statement(request, conn, ctx, whole)
                    return await _insert(request, conn, ctx, split, leftover, body)
                return await _statement(request, conn, ctx, split.text.encode("latin-1"))
    finally:
        if session is not None:
            engine.sessions.release(session, close=opts.close_session)


def _text_of(split: Statement | InsertWithData) -> str:
    return split.text if isinstance(split, Statement) else split.statement


async def _rest_of_body(
    split: InsertWithData, leftover: bytes, body: AsyncIterator[bytes]
) -> bytes:
    """The whole INSERT ... VALUES statement, its data included (bounded like a statement)."""
    parts = [f"{split.statement} VALUES ".encode("latin-1"), leftover]
    size = sum(len(p) for p in parts)
    async for chunk in body:
        size += len(chunk)
        if size > MAX_STATEMENT_BYTES:
            raise QueryFailed(
                QUERY_IS_TOO_LARGE,
                f"An INSERT ... VALUES with bound parameters is longer than "
                f"{MAX_STATEMENT_BYTES} bytes. (QUERY_IS_TOO_LARGE)",
            )
        parts.append(chunk)
    return b"".join(parts)


async def _insert(
    request: web.Request,
    conn: PooledConnection,
    ctx: RequestContext,
    split: InsertWithData,
    leftover: bytes,
    body: AsyncIterator[bytes],
) -> web.StreamResponse:
    """Stream the data into chdb: append block k while block k+1 is read and decoded."""
    statement = split.statement.encode("latin-1").decode("utf-8", errors="replace")
    if _read_only(request):
        raise _readonly_error()
    handle = await conn.call(conn.begin_insert, statement, split.input_format)
    pending: asyncio.Future[None] | None = None
    try:
        if leftover:
            pending = conn.start(conn.append, handle, leftover)
        async for chunk in body:
            if pending is not None:
                await pending
            pending = conn.start(conn.append, handle, chunk)
        if pending is not None:
            await pending
            pending = None
        stats = await conn.call(conn.finish_insert, handle)
    except BaseException:
        if pending is not None:
            pending.add_done_callback(_consume_exception)
        conn.submit(conn.abort_insert, handle)
        raise
    response = web.Response(headers=ctx.headers(None, stats))
    return response


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _without_readonly(settings: dict[str, str]) -> dict[str, str]:
    """The settings to apply to a pooled engine connection: all but ``readonly``.

    ClickHouse applies a request's settings to that query alone. Here they are SET on a
    connection that serves later requests too, and once ``readonly`` is set there it cannot be
    set back (READONLY): the connection would refuse every later request's settings. The
    endpoint enforces ``readonly`` itself instead (`_read_only`)."""
    return {name: value for name, value in settings.items() if name != "readonly"}


def _read_only(request: web.Request) -> bool:
    """Whether the request may only read: a GET, or ``readonly`` set to 1 or 2."""
    value = request.query.get("readonly", "0").strip()
    return request.method in ("GET", "HEAD") or value not in ("", "0")


def _readonly_error() -> QueryFailed:
    return QueryFailed(
        READONLY,
        "Cannot execute query in readonly mode. For queries over HTTP, method GET implies "
        "readonly. You should use method POST for modifying queries. (READONLY)",
    )


async def _statement(
    request: web.Request, conn: PooledConnection, ctx: RequestContext, sql: bytes
) -> web.StreamResponse:
    if not sql.strip():
        raise QueryFailed(SYNTAX_ERROR, "Empty query. (SYNTAX_ERROR)")
    text = sql.decode("latin-1")
    fmt = output_format(text, ctx.engine.info.output_formats) or ctx.opts.default_format
    kind, handle, first = await conn.call(
        conn.begin_statement, sql, ctx.opts.default_format, ctx.opts.params,
        fmt in STREAMABLE_FORMATS,
    )  # fmt: skip
    if kind.statement_count > 1:
        if handle is not None:
            conn.submit(conn.cancel_stream, handle)
        raise QueryFailed(SYNTAX_ERROR, "Multi-statements are not allowed (SYNTAX_ERROR)")
    if _read_only(request) and kind.kind == "MUTATING":
        raise _readonly_error()
    native = fmt == "Native" and ctx.native_revision > 0
    if handle is not None:
        rewriter = None
        if native and first is not None:
            handle, first, rewriter = await _native_for_client(conn, ctx, sql, handle, first)
        return await send_stream(request, conn, ctx, handle, fmt, first, rewriter)
    result = await conn.call(conn.query, sql, ctx.opts.default_format, ctx.opts.params)
    if kind.kind != "READ_ONLY":
        ctx.engine.schema_changed()
    if kind.kind == "CONTROL":
        await _remember_session_state(conn, ctx)
    produces_result = kind.kind == "READ_ONLY" or len(result.data) > 0
    data = result.data
    if native and produces_result and data:
        data = memoryview(NativeRewriter(ctx.native_revision).blocks(data))
    return await send_whole(request, ctx, data, fmt if produces_result else None, result.stats)


async def _native_for_client(
    conn: PooledConnection, ctx: RequestContext, sql: bytes, handle: Any, first: StreamChunk
) -> tuple[Any, StreamChunk | None, NativeRewriter]:
    """The rewriter that gives the client Native of its revision (see native.py).

    When the first block has a top-level plain ``DateTime`` column, ``DESCRIBE`` tells
    whether it carries a zone: on the spare connection (same database and settings) while the
    stream waits, or, for a session whose temporary tables only its own connection sees, on
    that connection, re-running the query after it (chdb runs one statement at a time).
    """
    revision = ctx.native_revision
    try:
        stripped = zone_stripped_columns(first.data)
    except CannotSkip:
        return handle, first, NativeRewriter(revision)
    if not stripped:
        return handle, first, NativeRewriter(revision)
    query = without_format(sql.decode("utf-8", "replace"), ctx.engine.info.output_formats)
    key = (ctx.session.session_id if ctx.session else "", ctx.database, query,
           tuple(sorted(ctx.opts.params.items())), tuple(sorted(ctx.settings.items())))  # fmt: skip
    described = ctx.engine.described.get(key)
    if described is None:
        try:
            async with ctx.engine.auxiliary() as aux:
                await aux.call(aux.prepare, ctx.database, ctx.settings)
                described = await aux.call(aux.describe, query, ctx.opts.params)
        except QueryFailed:
            if ctx.session is None:
                log.debug("clickhouse_native_zone_unknown", query_id=ctx.query_id)
                return handle, first, NativeRewriter(revision)
            await conn.call(conn.cancel_stream, handle)
            described = await conn.call(conn.describe, query, ctx.opts.params)
            handle = await conn.call(
                conn.open_stream, sql, ctx.opts.default_format, ctx.opts.params
            )
            again: StreamChunk | None = await conn.call(conn.fetch, handle)
            ctx.engine.described.put(key, described)
            return handle, again, NativeRewriter(revision, zoned_types(described, stripped))
        ctx.engine.described.put(key, described)
    return handle, first, NativeRewriter(revision, zoned_types(described, stripped))


async def _remember_session_state(conn: PooledConnection, ctx: RequestContext) -> None:
    """After SET/USE: keep what changed in the session (if any) and track the connection."""
    state = await conn.call(conn.read_state)
    if ctx.session is None:
        return
    baseline = ctx.engine.info.baseline_settings
    requested_db = ctx.opts.database or DEFAULT_DATABASE
    ctx.session.database = state.database if state.database != requested_db else None
    ctx.session.settings = {
        name: value
        for name, value in state.settings.items()
        if baseline.get(name) != value and ctx.opts.settings.get(name) != value
    }


# -- running the endpoint ------------------------------------------------------------------


def serve(host: str, port: int, data_dir: Path) -> None:
    """Serve chdb on ``http://host:port`` until SIGINT or SIGTERM, then shut down cleanly.

    Raises DataDirLocked if another process owns *data_dir*, ClickHouseEndpointError if the
    port is taken (both RearviewErrors: the CLI prints them as one line).
    """
    engine = ChdbEngine.open(data_dir)
    try:
        asyncio.run(_serve(engine, host, port))
    finally:
        engine.close()
    log.info("clickhouse_endpoint_stopped", data_dir=str(engine.data_dir))
    if engine.has_poisoned_connections:
        # Finalizing a poisoned chdb connection would hang the process (see engine.py);
        # every committed part is already on disk, so leave without running finalizers.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


async def _serve(engine: ChdbEngine, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(
        create_app(engine), access_log=None, shutdown_timeout=5.0, **runner_options()
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ClickHouseEndpointError(
                f"cannot listen on {host}:{port}: {exc.strerror}"
            ) from None
        log.info(
            "clickhouse_endpoint_started",
            url=f"http://{host}:{port}",
            data_dir=str(engine.data_dir),
            engine=f"chdb {engine.info.version}",
        )
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
