"""Reading a ClickHouse HTTP request: form fields, the decoded body, the statement's end.

The body is read in chunks of :data:`READ_CHUNK` and decompressed off the event loop. Only
the statement is held in memory; an INSERT's data is handed on chunk by chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Final

from aiohttp import BodyPartReader, web

from app.embedded.clickhouse.compression import Decoder, IdentityDecoder
from app.embedded.clickhouse.exceptions import BAD_ARGUMENTS, QUERY_IS_TOO_LARGE, QueryFailed
from app.embedded.clickhouse.external import ExternalTable, external_table
from app.embedded.clickhouse.protocol import PARAM_PREFIX, RequestOptions
from app.embedded.clickhouse.statement import InsertWithData, Split, split_input

READ_CHUNK: Final = 1 << 20  # body read size, and the least size of a decoded slice
MAX_STATEMENT_BYTES: Final = 16 << 20  # a statement (with inline VALUES) held in memory


@dataclass(frozen=True)
class Form:
    """What a request carries besides its body's statement: the ``query`` prefix, options
    completed by multipart fields, and external tables (multipart file parts)."""

    prefix: bytes
    opts: RequestOptions
    external: list[ExternalTable] = field(default_factory=list)


async def read_form(request: web.Request, opts: RequestOptions) -> Form:
    """The statement prefix (``query`` argument + newline), multipart fields and files.

    clickhouse-connect posts ``query`` and ``param_*`` as multipart/form-data when asked to
    (``form_encode_query_params``), and external data as file parts: each becomes a table
    named after its part, shaped by the ``<name>_structure`` (or ``<name>_types``) and
    ``<name>_format`` URL arguments, as on a server. Other fields are settings.
    """
    query = opts.query
    if request.content_type != "multipart/form-data":
        return Form((query + "\n").encode() if query else b"", opts)
    params = dict(opts.params)
    settings = dict(opts.settings)
    files: list[tuple[str, bytes]] = []
    reader = await request.multipart()
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            raise QueryFailed(BAD_ARGUMENTS, "Nested multipart bodies are not supported")
        if (
            part.filename is not None
            or part.name not in _FORM_FIELDS
            and not (part.name or "").startswith(PARAM_PREFIX)
        ):
            if part.filename is None:
                settings[part.name or ""] = (await part.read()).decode()
                continue
            files.append((part.name or part.filename, bytes(await part.read(decode=True))))
            continue
        value = (await part.read()).decode()
        if part.name == "query":
            query = f"{query}\n{value}" if query else value
        elif part.name and part.name.startswith(PARAM_PREFIX):
            params[part.name[len(PARAM_PREFIX) :]] = value
    tables = [external_table(name, data, settings) for name, data in files]
    return Form(query.encode(), replace(opts, params=params, settings=settings), tables)


_FORM_FIELDS: Final = frozenset({"query"})


async def decoded_body(request: web.Request, decoder: Decoder) -> AsyncIterator[bytes]:
    """The request body, decompressed off the event loop, in slices of about READ_CHUNK bytes."""
    loop = asyncio.get_running_loop()
    identity = isinstance(decoder, IdentityDecoder)
    pending: list[bytes] = []
    size = 0
    while True:
        raw = await request.content.read(READ_CHUNK)
        if not raw:
            break
        out = raw if identity else await loop.run_in_executor(None, decoder.feed, raw)
        if out:
            pending.append(out)
            size += len(out)
        if size >= READ_CHUNK:
            yield b"".join(pending)
            pending.clear()
            size = 0
    tail = decoder.finish()
    if tail:
        pending.append(tail)
    if pending:
        yield b"".join(pending)


async def read_statement(prefix: bytes, body: AsyncIterator[bytes]) -> tuple[Split, bytes]:
    """Read until the statement is known: a whole query, or an INSERT's head + first data."""
    buf = bytearray(prefix)
    complete = False
    while True:
        split = split_input(bytes(buf), complete)
        if split is not None:
            if isinstance(split, InsertWithData):
                return split, bytes(buf[split.data_offset :])
            return split, b""
        if len(buf) > MAX_STATEMENT_BYTES:
            raise QueryFailed(
                QUERY_IS_TOO_LARGE,
                f"The statement is longer than {MAX_STATEMENT_BYTES} bytes. (QUERY_IS_TOO_LARGE)",
            )
        chunk = await anext(body, None)
        if chunk is None:
            complete = True
        else:
            buf += chunk
