"""Errors of the embedded ClickHouse endpoint."""

from __future__ import annotations

import re
from typing import Final

from core.exceptions import RearviewError

# ClickHouse error codes the endpoint raises itself (values from the engine's system.errors).
BAD_ARGUMENTS: Final = 36
NOT_IMPLEMENTED: Final = 48
SYNTAX_ERROR: Final = 62
THERE_IS_NO_SESSION: Final = 113
UNKNOWN_SETTING: Final = 115
INCORRECT_DATA: Final = 117
READONLY: Final = 164
QUERY_IS_TOO_LARGE: Final = 229
SESSION_NOT_FOUND: Final = 372
SESSION_IS_LOCKED: Final = 373
INVALID_SESSION_TIMEOUT: Final = 374
UNKNOWN_EXCEPTION: Final = 1002

_CODE_RE: Final = re.compile(r"Code:\s*(\d+)\.\s*")
_NAME_RE: Final = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")
_VERSION_TRAILER_RE: Final = re.compile(r"\s*\(version [^()]*(?:\([^()]*\))?[^()]*\)\s*$")
_EXCEPTION_PREFIX: Final = "DB::Exception: "


class ClickHouseEndpointError(RearviewError):
    """Base of the endpoint's own errors."""


class DataDirLocked(ClickHouseEndpointError):
    """Another process owns the chdb data directory."""


class EngineStartError(ClickHouseEndpointError):
    """chdb could not open its data directory."""


class QueryFailed(ClickHouseEndpointError):
    """A ClickHouse error to report to the HTTP client, with ClickHouse's code.

    ``message`` is the text after ``DB::Exception:``, without the version trailer.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"Code: {code}. {_EXCEPTION_PREFIX}{message}")
        self.code = code
        self.message = message

    @property
    def name(self) -> str | None:
        found = _NAME_RE.findall(self.message)
        return found[-1] if found else None

    @classmethod
    def from_engine(cls, exc: BaseException) -> QueryFailed:
        """Parse chdb's ``RuntimeError("Code: 60. DB::Exception: ... (UNKNOWN_TABLE)")``."""
        if isinstance(exc, QueryFailed):
            return exc
        text = str(exc)
        match = _CODE_RE.search(text)
        if match is None:
            return cls(
                UNKNOWN_EXCEPTION, f"{text.strip() or type(exc).__name__} (UNKNOWN_EXCEPTION)"
            )
        message = text[match.end() :]
        message = message.removeprefix(_EXCEPTION_PREFIX)
        message = _VERSION_TRAILER_RE.sub("", message.strip())
        return cls(int(match.group(1)), message)
