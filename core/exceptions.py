"""The project's base exception and the errors shared across packages."""

from __future__ import annotations


class RearviewError(Exception):
    """Base of every error Rearview raises on purpose. The CLI prints these as one line."""


class ConfigurationError(RearviewError):
    """Settings that cannot work (a bad URL, a missing binary)."""


class ServiceUnavailable(RearviewError):
    """An infrastructure dependency (broker, registry, ClickHouse) cannot be reached.

    Never a reason to dead-letter an event: callers retry with backoff.
    """
