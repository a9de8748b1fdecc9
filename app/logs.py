"""structlog, configured once per process: console in a terminal, JSON otherwise.

Never log payloads or user ids: log counts, offsets, schema ids and reasons.
"""

from __future__ import annotations

import logging
import sys

import structlog

from app.settings import LogSettings

_configured = False


def configure(settings: LogSettings) -> None:
    global _configured
    if _configured:
        return
    level = getattr(logging, settings.level.upper())
    fmt = settings.format
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(level, logging.WARNING), stream=sys.stderr)
    _configured = True
