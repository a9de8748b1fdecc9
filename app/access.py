"""What the HTTP and gRPC servers of `rearview api` share: the application's state (settings,
the producer, counters, the validator, the keys and their rate limiters) and the key checks
both collectors and the read endpoints make (`principal_of`, `charge`).

Its own module so that app/api.py (which installs the gRPC server) and app/grpc_server.py
(which uses this state) need not import each other.
"""

from __future__ import annotations

from aiohttp import web

from agents.validate import Validator
from app.auth import Keyring, KeysUnavailable, Kind, Principal, RateLimiter
from app.collector.producer import BatchingProducer
from app.settings import Settings
from core.exceptions import ServiceUnavailable

PRODUCER = web.AppKey("producer", BatchingProducer)
SETTINGS = web.AppKey("settings", Settings)


class CollectorCounters:
    def __init__(self) -> None:
        self.accepted_events = 0
        self.responses: dict[tuple[str, int], int] = {}

    def response(self, path: str, status: int) -> None:
        key = (path, status)
        self.responses[key] = self.responses.get(key, 0) + 1


COUNTERS = web.AppKey("counters", CollectorCounters)
VALIDATOR = web.AppKey("validator", Validator)
KEYRING = web.AppKey("keyring", Keyring)
WRITE_LIMIT = web.AppKey("write_limit", RateLimiter)
READ_LIMIT = web.AppKey("read_limit", RateLimiter)
WRITE_PATHS = frozenset(("/v1/track", "/v1/batch"))  # the collector's: a write key


class Unauthorized(Exception):
    """401 (no valid key), 403 (a key of the wrong kind) or 429 (over the key's rate)."""

    def __init__(self, status: int, message: str, wait_s: float = 0.0) -> None:
        super().__init__(message)
        self.status = status
        self.wait_s = wait_s


def principal_of(app: web.Application, key: str | None, needed: Kind) -> Principal:
    """The principal of *key* for an operation of kind *needed*, or Unauthorized (also used
    by the gRPC collector)."""
    settings = app[SETTINGS]
    if not settings.auth.required:
        return Principal(settings.project_id, "admin", None)
    try:
        principal = app[KEYRING].check(key)
    except KeysUnavailable as exc:
        raise ServiceUnavailable(str(exc)) from None
    if principal is None:
        what = "a write key" if needed == "write" else "a read key"
        how = ("Authorization: Bearer <key>, or a \"key\" field in the body" if needed == "write"
               else "Authorization: Bearer <key>")
        raise Unauthorized(401, f"{what} is required ({how}); this one is missing, unknown or revoked"
                           if key else f"{what} is required ({how})")
    if not principal.may(needed):
        raise Unauthorized(403, f"a {principal.kind} key cannot {'send events' if needed == 'write' else 'read'}:"
                                f" use a {needed} key of project {principal.project_id!r}")
    return principal


def charge(app: web.Application, principal: Principal, cost: float = 1.0) -> None:
    """Take *cost* from the key's rate (events for a write key, else requests): Unauthorized
    429 when over it."""
    if principal.key_id is None:
        return
    limiter = app[WRITE_LIMIT if principal.kind == "write" else READ_LIMIT]
    wait_s = limiter.take(principal.key_id, cost)
    if wait_s > 0:
        raise Unauthorized(429, f"key {principal.key_id} is over its rate of {limiter.rate:g}"
                                f" {'events' if principal.kind == 'write' else 'requests'} a second", wait_s)
