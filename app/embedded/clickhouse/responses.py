"""Writing ClickHouse HTTP responses: whole, spooled (wait_end_of_query) or block by block.

Compression of large payloads runs off the event loop (on the connection's thread for
streamed blocks, on the default executor otherwise). A streamed response announces an
``X-ClickHouse-Exception-Tag``, so an error after the first block still reaches the client.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import IO, Any, Final

import structlog
from aiohttp import web

from app.embedded.clickhouse.compression import Encoder, IdentityEncoder, response_encoder
from app.embedded.clickhouse.connection import PooledConnection, StreamChunk
from app.embedded.clickhouse.context import HOSTNAME, RequestContext
from app.embedded.clickhouse.engine import ChdbEngine
from app.embedded.clickhouse.exceptions import QueryFailed
from app.embedded.clickhouse.native import NativeRewriter
from app.embedded.clickhouse.protocol import QueryStats, error_body, exception_block, http_status

log = structlog.get_logger(__name__)

WRITE_CHUNK: Final = 1 << 20  # slices written (and compressed) at a time
SPOOL_IN_MEMORY: Final = 8 << 20  # wait_end_of_query buffers up to this, then a temp file
INLINE_COMPRESSION_BYTES: Final = 64 << 10  # compress on the event loop only below this


def error_response(error: QueryFailed, engine: ChdbEngine, query_id: str) -> web.Response:
    return web.Response(
        status=http_status(error.code),
        body=error_body(error, engine.info.version),
        headers={
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(error.code),
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": engine.info.timezone,
            "X-ClickHouse-Server-Display-Name": HOSTNAME,
        },
    )


async def send_whole(
    request: web.Request,
    ctx: RequestContext,
    data: memoryview,
    fmt: str | None,
    stats: QueryStats,
) -> web.StreamResponse:
    encoding = ctx.response_encoding if data else None
    response = web.StreamResponse(headers=ctx.headers(fmt, stats, encoding))
    encoder = response_encoder(encoding)
    if len(data) <= WRITE_CHUNK:
        if encoding is not None and len(data) > INLINE_COMPRESSION_BYTES:
            loop = asyncio.get_running_loop()
            payload = await loop.run_in_executor(None, _encode_all, encoder, data)
        else:
            payload = _encode_all(encoder, data)
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        return response
    if encoding is None:
        response.content_length = len(data)
    await response.prepare(request)
    await _write_encoded(
        response, encoder, (data[i : i + WRITE_CHUNK] for i in range(0, len(data), WRITE_CHUNK))
    )
    return response


def _encode_all(encoder: Encoder, data: memoryview) -> bytes:
    return encoder.compress(data) + encoder.finish()


async def _write_encoded(
    response: web.StreamResponse, encoder: Encoder, slices: Iterator[memoryview]
) -> None:
    loop = asyncio.get_running_loop()
    identity = isinstance(encoder, IdentityEncoder)
    for piece in slices:
        out = piece if identity else await loop.run_in_executor(None, encoder.compress, piece)
        if out:
            await response.write(out)
    tail = encoder.finish()
    if tail:
        await response.write(tail)
    await response.write_eof()


async def send_stream(
    request: web.Request,
    conn: PooledConnection,
    ctx: RequestContext,
    handle: Any,
    fmt: str,
    first: StreamChunk | None,
    rewriter: NativeRewriter | None = None,
) -> web.StreamResponse:
    """A streaming query's result. Errors before the first block get a proper HTTP error.

    With ``wait_end_of_query=1`` (clickhouse-connect's ``query()``), the whole result is
    buffered first, so any error is an HTTP error and the summary header is complete.
    Otherwise blocks are sent as chdb produces them and a late error is reported in the
    body with ClickHouse's exception marker. *first* is the first block, already fetched
    (None: the result is empty); *rewriter* adapts Native blocks to the client's revision.
    """
    open_stream = True
    try:
        if first is None:
            open_stream = False
            return await send_whole(request, ctx, memoryview(b""), fmt, QueryStats())
        if rewriter is not None:
            first = StreamChunk(rewriter.block(first.data), first.stats)
        if ctx.opts.wait_end_of_query:
            spool, size, stats = await conn.call(_spool_all, conn, handle, first, rewriter)
            open_stream = False
            with spool:
                return await _send_spool(request, ctx, spool, size, fmt, stats)
        response = await _send_blocks(request, conn, ctx, handle, fmt, first, rewriter)
        open_stream = False  # ran to its end (or to chdb's error)
        return response
    except QueryFailed:
        open_stream = False  # chdb ended the stream with the error
        raise
    finally:
        if open_stream:
            conn.submit(conn.cancel_stream, handle)


def _spool_all(
    conn: PooledConnection, handle: Any, first: StreamChunk, rewriter: NativeRewriter | None
) -> tuple[IO[bytes], int, QueryStats]:
    """Runs on the connection's thread: the whole result into memory, then a temp file."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - returned
    try:
        total = first.stats
        spool.write(first.data)
        while (chunk := conn.fetch(handle)) is not None:
            spool.write(rewriter.block(chunk.data) if rewriter is not None else chunk.data)
            total = _add(total, chunk.stats)
    except BaseException:
        spool.close()
        raise
    size = spool.tell()
    spool.seek(0)
    return spool, size, total


def _add(a: QueryStats, b: QueryStats) -> QueryStats:
    return QueryStats(
        read_rows=a.read_rows + b.read_rows,
        read_bytes=a.read_bytes + b.read_bytes,
        written_rows=a.written_rows + b.written_rows,
        written_bytes=a.written_bytes + b.written_bytes,
        result_rows=a.result_rows + b.result_rows,
        result_bytes=a.result_bytes + b.result_bytes,
        elapsed_ns=max(a.elapsed_ns, b.elapsed_ns),
    )


async def _send_spool(
    request: web.Request,
    ctx: RequestContext,
    spool: IO[bytes],
    size: int,
    fmt: str,
    stats: QueryStats,
) -> web.StreamResponse:
    if size <= WRITE_CHUNK:
        # A small answer (most of them): no executor round trips, one write.
        data = spool.read()
        return await send_whole(request, ctx, memoryview(data), fmt, stats)
    loop = asyncio.get_running_loop()
    encoding = ctx.response_encoding
    response = web.StreamResponse(headers=ctx.headers(fmt, stats, encoding))
    if encoding is None:
        response.content_length = size
    await response.prepare(request)

    async def slices() -> AsyncIterator[bytes]:
        while piece := await loop.run_in_executor(None, spool.read, WRITE_CHUNK):
            yield piece

    encoder = response_encoder(encoding)
    async for piece in slices():
        out = await loop.run_in_executor(None, encoder.compress, piece) if encoding else piece
        if out:
            await response.write(out)
    tail = encoder.finish()
    if tail:
        await response.write(tail)
    await response.write_eof()
    return response


def _fetch_encoded(
    conn: PooledConnection, handle: Any, encoder: Encoder, rewriter: NativeRewriter | None
) -> tuple[bytes, QueryStats] | None:
    """Runs on the connection's thread: next block, adapted and compressed."""
    chunk: StreamChunk | None = conn.fetch(handle)
    if chunk is None:
        return None
    data = rewriter.block(chunk.data) if rewriter is not None else chunk.data
    return encoder.compress(data), chunk.stats


async def _send_blocks(
    request: web.Request,
    conn: PooledConnection,
    ctx: RequestContext,
    handle: Any,
    fmt: str,
    first: StreamChunk,
    rewriter: NativeRewriter | None,
) -> web.StreamResponse:
    encoding = ctx.response_encoding
    encoder = response_encoder(encoding)
    tag = secrets.token_hex(8)
    headers = ctx.headers(fmt, first.stats, encoding)  # progress so far, as ClickHouse does
    headers["X-ClickHouse-Exception-Tag"] = tag
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    out = await loop.run_in_executor(None, encoder.compress, first.data)
    try:
        while True:
            if out:
                await response.write(out)
            nxt = await conn.call(_fetch_encoded, conn, handle, encoder, rewriter)
            if nxt is None:
                break
            out = nxt[0]
    except QueryFailed as exc:
        log.info("clickhouse_query_failed_midstream", query_id=ctx.query_id, code=exc.code)
        await response.write(encoder.compress(exception_block(tag, exc, ctx.engine.info.version)))
    tail = encoder.finish()
    if tail:
        await response.write(tail)
    await response.write_eof()
    return response
