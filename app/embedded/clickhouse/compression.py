"""HTTP body codecs as the ClickHouse HTTP interface uses them.

Requests: clickhouse-connect compresses each insert block separately, so an ``lz4`` or
``zstd`` body is a *sequence* of frames (one per block); ``gzip`` may be several members.
The decoders here restart at every frame end and are fed chunk by chunk, so a body of any
size is decoded in constant memory.

Responses: one frame for the whole response (clickhouse-connect's lz4 and zstd readers use a
single decompressor), flushed per written chunk so results still stream.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from typing import Final, Protocol

import lz4.frame

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the backport clickhouse-connect depends on
    from backports import zstd

from app.embedded.clickhouse.exceptions import QueryFailed

# ClickHouse error codes used by this module.
UNKNOWN_COMPRESSION_METHOD: Final = 89
CANNOT_DECOMPRESS: Final = 271

RESPONSE_ENCODINGS: Final = ("lz4", "zstd", "gzip", "deflate")


class _FrameDecompressor(Protocol):
    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


class Decoder(Protocol):
    def feed(self, data: bytes) -> bytes:
        """Decoded bytes available after *data* (may be empty)."""
        ...

    def finish(self) -> bytes:
        """Check the body ended cleanly; returns any remaining decoded bytes."""
        ...


class IdentityDecoder:
    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""


class FramesDecoder:
    """Decodes a concatenation of independent frames (lz4, zstd) or members (gzip)."""

    def __init__(self, name: str, factory: Callable[[], _FrameDecompressor]) -> None:
        self._name = name
        self._factory = factory
        self._current = factory()
        self._in_frame = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        try:
            while data:
                self._in_frame = True
                out.append(self._current.decompress(data))
                if not self._current.eof:
                    break
                data = self._current.unused_data
                self._current = self._factory()
                self._in_frame = False
        except (RuntimeError, zlib.error, zstd.ZstdError, EOFError) as exc:
            raise QueryFailed(
                CANNOT_DECOMPRESS, f"Cannot decompress {self._name} request body: {exc}"
            ) from exc
        return b"".join(out)

    def finish(self) -> bytes:
        if self._in_frame:
            raise QueryFailed(
                CANNOT_DECOMPRESS, f"The {self._name} request body ends inside a frame"
            )
        return b""


def _gzip() -> _FrameDecompressor:
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # type: ignore[return-value]


def _zstd() -> _FrameDecompressor:
    return zstd.ZstdDecompressor()  # type: ignore[return-value]  # unused_data is a property


def _deflate() -> _FrameDecompressor:
    return zlib.decompressobj()  # type: ignore[return-value]


_DECODERS: Final[dict[str, Callable[[], _FrameDecompressor]]] = {
    "lz4": lz4.frame.LZ4FrameDecompressor,
    "zstd": _zstd,
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
}


def request_decoder(content_encoding: str | None) -> Decoder:
    """The decoder for a request's ``Content-Encoding`` (absent or identity: none)."""
    name = (content_encoding or "").strip().lower()
    if name in ("", "identity", "none"):
        return IdentityDecoder()
    factory = _DECODERS.get(name)
    if factory is None:
        raise QueryFailed(
            UNKNOWN_COMPRESSION_METHOD,
            f"Unknown Content-Encoding {content_encoding!r}; "
            f"supported: {', '.join(sorted(set(_DECODERS) - {'x-gzip'}))}",
        )
    return FramesDecoder(name, factory)


def choose_response_encoding(accept_encoding: str | None) -> str | None:
    """The first encoding the client lists that this endpoint can produce, else None."""
    for item in (accept_encoding or "").split(","):
        name = item.split(";", 1)[0].strip().lower()
        if name in RESPONSE_ENCODINGS:
            return name
    return None


class Encoder(Protocol):
    def compress(self, data: bytes | memoryview) -> bytes: ...

    def finish(self) -> bytes: ...


class IdentityEncoder:
    def compress(self, data: bytes | memoryview) -> bytes:
        return bytes(data)

    def finish(self) -> bytes:
        return b""


class Lz4Encoder:
    """One LZ4 frame for the whole response."""

    def __init__(self) -> None:
        self._comp = lz4.frame.LZ4FrameCompressor()
        self._header: bytes = self._comp.begin()

    def compress(self, data: bytes | memoryview) -> bytes:
        out: bytes = self._header + self._comp.compress(data)
        self._header = b""
        return out

    def finish(self) -> bytes:
        out: bytes = self._header + self._comp.flush()
        self._header = b""
        return out


class ZstdEncoder:
    def __init__(self, level: int = 3) -> None:
        self._comp = zstd.ZstdCompressor(level=level)

    def compress(self, data: bytes | memoryview) -> bytes:
        return bytes(self._comp.compress(data, zstd.ZstdCompressor.FLUSH_BLOCK))

    def finish(self) -> bytes:
        return bytes(self._comp.flush(zstd.ZstdCompressor.FLUSH_FRAME))


class ZlibEncoder:
    def __init__(self, gzip: bool, level: int = 3) -> None:
        wbits = 16 + zlib.MAX_WBITS if gzip else zlib.MAX_WBITS
        self._comp = zlib.compressobj(level=level, wbits=wbits)

    def compress(self, data: bytes | memoryview) -> bytes:
        return self._comp.compress(data) + self._comp.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._comp.flush(zlib.Z_FINISH)


def response_encoder(encoding: str | None) -> Encoder:
    if encoding is None:
        return IdentityEncoder()
    if encoding == "lz4":
        return Lz4Encoder()
    if encoding == "zstd":
        return ZstdEncoder()
    if encoding in ("gzip", "deflate"):
        return ZlibEncoder(gzip=encoding == "gzip")
    raise ValueError(f"unsupported response encoding {encoding!r}")
