"""Where a ClickHouse HTTP request's SQL ends and its inline data begins.

The HTTP interface concatenates the ``query`` URL argument (plus a newline) with the request
body and parses the result. For ``INSERT ... FORMAT fmt`` or ``INSERT ... VALUES`` the data
follows the statement in the same stream, so the endpoint must find that boundary before it
can hand the statement to chdb's streaming inserter and the data to its ``append``. This
module does it with a small lexer over the head of the stream: it understands quoting,
comments and parentheses, not the whole grammar. Anything it does not recognise is passed to
chdb verbatim, which reports the syntax error with ClickHouse's own code.

Input is ``bytes``; it is decoded as latin-1 so that character offsets equal byte offsets
(the data after the statement is usually binary).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER: Final = re.compile(r"[0-9][A-Za-z0-9_.]*")
_SPACE: Final = re.compile(r"\s+")
_QUOTES: Final = ("'", '"', "`")


@dataclass(frozen=True)
class Token:
    kind: str  # "word", "number", "string", "ident", "punct"
    text: str
    start: int
    end: int

    def is_word(self, *words: str) -> bool:
        return self.kind == "word" and self.text.upper() in words


class Incomplete(Exception):
    """The buffer ends inside a token, a comment or before a boundary can be decided."""


@dataclass(frozen=True)
class Statement:
    """A statement without inline data: the whole input is the query."""

    text: str


@dataclass(frozen=True)
class InsertWithData:
    """``INSERT ... FORMAT fmt <data>`` or ``INSERT ... VALUES <data>``.

    ``statement`` is the INSERT without its FORMAT/VALUES clause (what chdb's
    ``send_insert`` takes); the data starts at byte ``data_offset`` of the input.
    """

    statement: str
    input_format: str
    data_offset: int


Split = Statement | InsertWithData


def _tokens(text: str, complete: bool) -> Iterator[Token]:
    """Significant tokens of *text*; raises Incomplete where more input could change one."""
    pos, end = 0, len(text)
    while pos < end:
        ch = text[pos]
        if ch.isspace():
            m = _SPACE.match(text, pos)
            assert m is not None
            pos = m.end()
            continue
        if text.startswith("--", pos):
            nl = text.find("\n", pos)
            if nl < 0:
                if not complete:
                    raise Incomplete
                return
            pos = nl + 1
            continue
        if text.startswith("/*", pos):
            close = text.find("*/", pos + 2)
            if close < 0:
                if not complete:
                    raise Incomplete
                return
            pos = close + 2
            continue
        if ch in _QUOTES:
            close = _closing_quote(text, pos, complete)
            if close < 0:
                if not complete:
                    raise Incomplete
                return
            yield Token("string" if ch == "'" else "ident", text[pos : close + 1], pos, close + 1)
            pos = close + 1
            continue
        m = _WORD.match(text, pos) or _NUMBER.match(text, pos)
        if m is not None:
            if m.end() == end and not complete:
                raise Incomplete  # the word may continue in the next chunk
            kind = "word" if _WORD.match(text, pos) else "number"
            yield Token(kind, m.group(), pos, m.end())
            pos = m.end()
            continue
        yield Token("punct", ch, pos, pos + 1)
        pos += 1


def _closing_quote(text: str, start: int, complete: bool) -> int:
    """Index of the quote closing the literal at *start*, or -1 if the buffer ends first."""
    quote = text[start]
    pos = start + 1
    while True:
        nxt = text.find(quote, pos)
        bsl = text.find("\\", pos)
        if nxt < 0:
            return -1
        if 0 <= bsl < nxt:
            pos = bsl + 2
            continue
        if text.startswith(quote * 2, nxt):  # doubled quote is an escaped quote
            pos = nxt + 2
            continue
        if nxt + 1 == len(text) and not complete:
            return -1  # the next chunk may start with a quote that doubles this one
        return nxt


def first_keyword(head: bytes, complete: bool) -> str | None:
    """The statement's first keyword upper-cased (``""`` if none), or None if not yet known."""
    try:
        for token in _tokens(head.decode("latin-1"), complete):
            if token.kind == "punct" and token.text == "(":
                continue  # (SELECT ...) is a SELECT
            return token.text.upper() if token.kind == "word" else ""
    except Incomplete:
        return None
    return "" if complete else None


def split_input(buf: bytes, complete: bool) -> Split | None:
    """Split a request's input into statement and inline data.

    Returns None when *buf* is not enough to decide (read more and call again), unless
    *complete* says *buf* is the whole input, in which case it always decides.
    """
    text = buf.decode("latin-1")
    keyword = first_keyword(buf, complete)
    if keyword is None:
        return None
    if keyword != "INSERT":
        return Statement(text) if complete else None
    try:
        found = _insert_data(text, complete)
    except Incomplete:
        return None
    if found is None:
        return Statement(text) if complete else None
    return found


def _insert_data(text: str, complete: bool) -> InsertWithData | None:
    tokens = _tokens(text, complete)
    depth = 0
    prev: Token | None = None
    after_into = False
    target_seen = False
    for token in tokens:
        if token.kind == "punct" and token.text in "([":
            depth += 1
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
        elif depth == 0:
            if token.is_word("INTO"):
                after_into = True
            elif after_into and not target_seen and token.is_word("TABLE", "FUNCTION"):
                pass
            elif after_into and not target_seen:
                # The target table (maybe db.table) may itself be named like a keyword.
                target_seen = True
            elif prev is not None and prev.kind == "punct" and prev.text == ".":
                pass  # second half of db.table
            elif token.is_word("SELECT", "WITH", "INFILE"):
                return None  # INSERT ... SELECT, FROM INFILE: no inline data
            elif token.is_word("VALUES"):
                return InsertWithData(
                    text[: token.start].rstrip(), "Values", _skip_blank(text, token.end, complete)
                )
            elif token.is_word("FORMAT"):
                name = next(tokens, None)
                if name is None:
                    if complete:
                        return None
                    raise Incomplete
                if name.kind != "word":
                    return None  # let chdb report it
                return InsertWithData(
                    text[: token.start].rstrip(), name.text, _data_start(text, name.end, complete)
                )
        prev = token
    return None


def _data_start(text: str, pos: int, complete: bool) -> int:
    """ClickHouse's rule: after the format name skip blanks, then one optional CR LF."""
    end = len(text)
    while pos < end and text[pos] in " \t\f":
        pos += 1
    if pos < end and text[pos] == "\r":
        pos += 1
    if pos < end and text[pos] == "\n":
        pos += 1
    elif pos == end and not complete:
        raise Incomplete  # a newline may still come and belongs to the statement
    return pos


def _skip_blank(text: str, pos: int, complete: bool) -> int:
    end = len(text)
    while pos < end and text[pos].isspace():
        pos += 1
    if pos == end and not complete:
        raise Incomplete
    return pos


def output_format(query: str, known_formats: frozenset[str]) -> str | None:
    """The format named by the query's top-level ``FORMAT name`` clause, canonically spelled.

    *known_formats* is the set of the engine's output format names (``system.formats``); a
    word after FORMAT that is not one of them (``SELECT format FROM t``) is not a clause. The
    match is case-insensitive. Returns None when the query has no clause.
    """
    by_upper = {name.upper(): name for name in known_formats}
    depth = 0
    found: str | None = None
    tokens = list(_tokens(query, complete=True))
    for i, token in enumerate(tokens):
        if token.kind == "punct" and token.text in "([":
            depth += 1
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
        elif depth == 0 and token.is_word("FORMAT") and i + 1 < len(tokens):
            name = tokens[i + 1]
            follows = tokens[i + 2] if i + 2 < len(tokens) else None
            if (
                name.kind in ("word", "ident")
                and name.text.strip('`"').upper() in by_upper
                and not (follows is not None and follows.text == "(")
                and not (i > 0 and tokens[i - 1].text == ".")
            ):
                found = by_upper[name.text.strip('`"').upper()]
    return found


def without_format(query: str, known_formats: frozenset[str]) -> str:
    """*query* without its top-level ``FORMAT name`` clause (and a trailing semicolon), so it
    can be wrapped as ``DESCRIBE (query)``."""
    by_upper = {name.upper() for name in known_formats}
    tokens = list(_tokens(query, complete=True))
    depth = 0
    cut: tuple[int, int] | None = None
    for i, token in enumerate(tokens):
        if token.kind == "punct" and token.text in "([":
            depth += 1
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
        elif depth == 0 and token.is_word("FORMAT") and i + 1 < len(tokens):
            name = tokens[i + 1]
            if name.kind in ("word", "ident") and name.text.strip('`"').upper() in by_upper:
                cut = (token.start, name.end)
    text = query if cut is None else query[: cut[0]] + " " + query[cut[1] :]
    return text.rstrip().rstrip(";").rstrip()


def creates_temporary_table(query: str) -> bool:
    """``CREATE [OR REPLACE] TEMPORARY TABLE ...``: a table that needs a session."""
    words: list[str] = []
    try:
        for token in _tokens(query, complete=True):
            if token.kind != "word":
                break
            words.append(token.text.upper())
            if len(words) == 4:
                break
    except Incomplete:
        return False
    if not words or words[0] != "CREATE":
        return False
    rest = words[1:]
    if rest[:2] == ["OR", "REPLACE"]:
        rest = rest[2:]
    return bool(rest) and rest[0] == "TEMPORARY"
