"""Decoded views of a string: what a value says once URL-decoded or JSON-unescaped.

PII is often stored encoded: ``?email=jane%40example.com`` in a URL, ``card=4111+1111+1111+1111``
in a form body, ``"call\\n030 1234567"`` or ``jane\\u0040example.com`` in JSON text kept as a string.
The detectors only see characters, so the redactor also runs them on these views and maps each
match back to the span of the original string it came from.

A view is ``(text, pos)``: ``pos[i]`` is where the source character(s) of ``text[i]`` start in the
original, and ``pos[len(text)]`` is the original's length, so a match ``text[s:e]`` covers
``original[pos[s]:pos[e]]``. Views nest (``%2540`` is ``%40`` is ``@``) up to `MAX_DEPTH`; their
maps compose. Pure functions, no state.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

View = tuple[str, list[int]]

MAX_DEPTH = 3

_HEX = frozenset("0123456789abcdefABCDEF")
_JSON_SIMPLE = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def might_be_encoded(text: str) -> bool:
    """Cheap: could a view of *text* differ from it?"""
    return "%" in text or "\\" in text or "+" in text


def _utf8_chars(raw: bytes, starts: list[int]) -> Iterator[tuple[str, int]]:
    """(character, source position of its first byte) for the bytes of a %XX run.

    Invalid sequences give U+FFFD per byte, like ``bytes.decode(errors="replace")`` would, but
    each character keeps the position of its own first byte.
    """
    i, n = 0, len(raw)
    while i < n:
        b = raw[i]
        size = 1 if b < 0x80 else 2 if 0xC2 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF5 else 0
        if size == 0 or i + size > n:
            yield "\ufffd", starts[i]
            i += 1
            continue
        try:
            ch = raw[i : i + size].decode("utf-8")
        except UnicodeDecodeError:
            yield "\ufffd", starts[i]
            i += 1
            continue
        yield ch, starts[i]
        i += size


def url_decoded(text: str, plus: bool) -> View | None:
    """*text* with %XX sequences decoded as UTF-8 (and '+' as a space when *plus*, as in
    ``application/x-www-form-urlencoded``); None when that changes nothing."""
    if (_PERCENT.search(text) is None) and not (plus and "+" in text):
        return None
    out: list[str] = []
    pos: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
            raw = bytearray()
            starts: list[int] = []
            while i + 2 < n and text[i] == "%" and text[i + 1] in _HEX and text[i + 2] in _HEX:
                raw.append(int(text[i + 1 : i + 3], 16))
                starts.append(i)
                i += 3
            for ch, start in _utf8_chars(bytes(raw), starts):
                out.append(ch)
                pos.append(start)
            continue
        out.append(" " if plus and c == "+" else c)
        pos.append(i)
        i += 1
    pos.append(n)
    decoded = "".join(out)
    return None if decoded == text else (decoded, pos)


def json_unescaped(text: str) -> View | None:
    """*text* with JSON (and JavaScript ``\\xXX``) string escapes decoded; None when there are
    none. Escapes that are not valid are kept as they are."""
    if "\\" not in text:
        return None
    out: list[str] = []
    pos: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c != "\\" or i + 1 >= n:
            out.append(c)
            pos.append(i)
            i += 1
            continue
        e = text[i + 1]
        if e in _JSON_SIMPLE:
            out.append(_JSON_SIMPLE[e])
            pos.append(i)
            i += 2
        elif e == "u" and i + 6 <= n and all(h in _HEX for h in text[i + 2 : i + 6]):
            unit = int(text[i + 2 : i + 6], 16)
            width = 6
            if 0xD800 <= unit < 0xDC00 and text[i + 6 : i + 8] == "\\u" and i + 12 <= n and all(
                h in _HEX for h in text[i + 8 : i + 12]
            ):
                low = int(text[i + 8 : i + 12], 16)
                if 0xDC00 <= low < 0xE000:
                    unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    width = 12
            out.append("\ufffd" if 0xD800 <= unit < 0xE000 else chr(unit))
            pos.append(i)
            i += width
        elif e == "x" and i + 4 <= n and text[i + 2] in _HEX and text[i + 3] in _HEX:
            out.append(chr(int(text[i + 2 : i + 4], 16)))
            pos.append(i)
            i += 4
        else:
            out.append(c)
            pos.append(i)
            i += 1
    pos.append(n)
    decoded = "".join(out)
    return None if decoded == text else (decoded, pos)


def _compose(outer: list[int], inner: list[int]) -> list[int]:
    """Positions in the original of a view of a view (*inner* indexes *outer*'s text)."""
    return [outer[p] for p in inner]


def views(text: str, depth: int = MAX_DEPTH) -> Iterator[View]:
    """Every distinct decoded view of *text*, nested up to *depth* decodings, with positions in
    *text*. Yields nothing for text without '%', '+' or '\\\\'."""
    seen = {text}
    frontier: list[View] = [(text, list(range(len(text) + 1)))]
    for level in range(depth):
        following: list[View] = []
        for current, pos in frontier:
            if not might_be_encoded(current):
                continue
            # '+' means a space only in the form-encoded text itself, not once decoded.
            plus = level == 0 and "+" in current
            for decoded in (
                json_unescaped(current),
                url_decoded(current, plus=plus),
                url_decoded(current, plus=False) if plus and "%" in current else None,
            ):
                if decoded is None or decoded[0] in seen:
                    continue
                seen.add(decoded[0])
                view = (decoded[0], _compose(pos, decoded[1]))
                following.append(view)
                yield view
        frontier = following
        if not frontier:
            return
