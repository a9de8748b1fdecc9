"""Projects and API keys: who may send events and read answers, and for which project.

Three kinds of key, each bound to one project:

    write   the collector (HTTP /v1/track and /v1/batch, gRPC TrackEvent/TrackBatch). Safe to
            ship in an app or a web page: it can only add events to its project.
    read    the query API, discovery, live figures, the dashboard's data, pipeline health.
    admin   what a read key can do, plus operations (`rearview dlq redrive`, `rearview replay`).

An event's project is the project of the key it came with, never a field of the payload.
A read key sees its project only: every query the API runs is bound to that project.

A key reads ``rv<kind>_<key_id>_<secret>`` (``rvw_``, ``rvr_``, ``rva_``). ``key_id`` is its
public part, shown by `rearview keys list`; the secret is 32 random bytes. Only the SHA-256 of
the whole key is stored (the `api_keys` table): a key is shown once, when it is created. A
key's secret is random, not a password, so a plain hash is as strong as a slow one here, and
checking costs microseconds. The stored hash is compared with `hmac.compare_digest`, in
constant time: the time an answer takes says nothing about how much of a guess was right.

Every API process keeps the keys in memory (`Keyring`) and reloads them every
``auth.refresh_s`` (2 s by default), so a revoked key is refused by every process within that
interval plus one reload. While ClickHouse cannot be read, a process keeps the keys it last
loaded (and says so in its log); one that never loaded any answers 503, so clients retry
rather than lose events. A starting process waits for its first load (`start_refreshing`)
before it opens its port, so its first requests are checked, not refused.

`RateLimiter` gives each key a token bucket: write keys by events per second, read and admin
keys by requests per second. A request over the limit gets 429 with ``Retry-After``. Buckets are
per process: N API processes behind a balancer allow N times the rate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import structlog
from aiohttp import web
from clickhouse_connect.driver.client import Client

from core.exceptions import RearviewError

log = structlog.get_logger(__name__)

Kind = Literal["write", "read", "admin"]
KINDS: tuple[Kind, ...] = ("write", "read", "admin")
_PREFIX: dict[Kind, str] = {"write": "rvw", "read": "rvr", "admin": "rva"}
_KIND_OF = {prefix: kind for kind, prefix in _PREFIX.items()}
_KEY = re.compile(r"^(rv[wra])_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class AuthError(RearviewError):
    """A project or key operation that cannot be done (unknown project, unknown key, ...)."""


@dataclass(frozen=True)
class Project:
    project_id: str
    name: str
    created_at: datetime


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    project_id: str
    kind: Kind
    name: str
    created_at: datetime
    revoked_at: datetime | None
    secret_sha256: bytes = b""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Principal:
    """Who a request is from: the project it acts for and the kind of its key."""

    project_id: str
    kind: Kind
    key_id: str | None  # None: auth is off, every request acts for the configured project

    def may(self, needed: Kind) -> bool:
        """write keys write; read keys read; admin keys read and operate."""
        if needed == "write":
            return self.kind == "write" or self.key_id is None
        if needed == "read":
            return self.kind in ("read", "admin")
        return self.kind == "admin"

    def letter_projects(self) -> tuple[str, ...] | None:
        """The projects whose dead letters this principal sees (None: every one, keys off).
        An admin key, an operator's, also sees the letters no project can be told for ('':
        a message that could not be decoded)."""
        if self.key_id is None:
            return None
        return (self.project_id, "") if self.kind == "admin" else (self.project_id,)


# The request's Principal, set by the API's auth middleware before any /v1/ handler runs.
PRINCIPAL = web.RequestKey("principal", Principal)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key(kind: Kind) -> tuple[str, str]:
    """(key_id, the whole key) of a fresh key of *kind*."""
    key_id = "".join(secrets.choice(_ALPHABET) for _ in range(12))
    return key_id, f"{_PREFIX[kind]}_{key_id}_{secrets.token_urlsafe(32)}"


def parse_key(key: str) -> tuple[Kind, str] | None:
    """(kind, key_id) of a well-formed key, None for anything else."""
    match = _KEY.match(key)
    if match is None:
        return None
    return _KIND_OF[match.group(1)], match.group(2)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (any case of "Bearer")."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


# -- the store: the `projects` and `api_keys` tables ------------------------------------------


class KeyStore:
    """Projects and keys in ClickHouse (migration 0006). Used by the CLI and by `Keyring`."""

    def __init__(self, client: Client, project_pattern: str = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                 max_project_length: int = 64) -> None:
        self._client = client
        self._pattern = re.compile(project_pattern)
        self._max_length = max_project_length

    def create_project(self, project_id: str, name: str = "") -> Project:
        if not self._pattern.match(project_id) or len(project_id) > self._max_length:
            raise AuthError(f"project id {project_id!r} must match {self._pattern.pattern}"
                            f" and be at most {self._max_length} characters")
        if self.project(project_id) is not None:
            raise AuthError(f"project {project_id!r} exists already")
        now = datetime.now(UTC)
        self._client.insert("projects", [[project_id, name or project_id, now]],
                            column_names=["project_id", "name", "created_at"])
        return Project(project_id, name or project_id, now)

    def ensure_project(self, project_id: str, name: str = "") -> Project:
        found = self.project(project_id)
        return found if found is not None else self.create_project(project_id, name)

    def project(self, project_id: str) -> Project | None:
        rows = self._client.query(
            "SELECT project_id, name, created_at FROM projects FINAL WHERE project_id = {p:String}",
            parameters={"p": project_id}).result_rows
        return Project(*rows[0]) if rows else None

    def projects(self) -> list[Project]:
        rows = self._client.query(
            "SELECT project_id, name, created_at FROM projects FINAL ORDER BY project_id").result_rows
        return [Project(*row) for row in rows]

    def create_key(self, project_id: str, kind: Kind, name: str = "") -> tuple[ApiKey, str]:
        """A new key of *project_id*: (its record, the key itself, to show once)."""
        if kind not in KINDS:
            raise AuthError(f"a key's kind is one of {', '.join(KINDS)}, not {kind!r}")
        if self.project(project_id) is None:
            raise AuthError(f"no project {project_id!r}: create it with `rearview projects create`")
        key_id, key = new_key(kind)
        record = ApiKey(key_id, project_id, kind, name, datetime.now(UTC), None, digest(key))
        self._write(record, version=1)
        return record, key

    def list_keys(self, project_id: str | None = None) -> list[ApiKey]:
        where = "WHERE project_id = {p:String}" if project_id is not None else ""
        rows = self._client.query(
            "SELECT key_id, project_id, kind, name, created_at, revoked_at, secret_sha256"
            f" FROM api_keys FINAL {where} ORDER BY project_id, created_at",
            parameters={"p": project_id or ""}).result_rows
        return [ApiKey(r[0], r[1], r[2], r[3], r[4], r[5], _bytes(r[6])) for r in rows]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke *key_id* (the public part, or a whole key); revoking twice is harmless."""
        parsed = parse_key(key_id)
        key_id = parsed[1] if parsed else key_id
        found = [k for k in self.list_keys() if k.key_id == key_id]
        if not found:
            raise AuthError(f"no key {key_id!r} (see `rearview keys list`)")
        key = found[0]
        if key.revoked_at is not None:
            return key
        revoked = ApiKey(key.key_id, key.project_id, key.kind, key.name, key.created_at,
                         datetime.now(UTC), key.secret_sha256)
        self._write(revoked, version=2)
        return revoked

    def _write(self, key: ApiKey, version: int) -> None:
        self._client.insert(
            "api_keys",
            [[key.key_id, key.project_id, key.kind, key.secret_sha256, key.name, key.created_at,
              key.revoked_at, version]],
            column_names=["key_id", "project_id", "kind", "secret_sha256", "name", "created_at",
                          "revoked_at", "version"])


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("latin-1")


# -- checking keys in an API process ------------------------------------------------------------


class KeysUnavailable(RearviewError):
    """No key has ever been loaded (ClickHouse unreachable since start): retry later."""


class Keyring:
    """The keys of every project, in memory, reloaded every *refresh_s* by `refresh`."""

    def __init__(self, load: Callable[[], list[ApiKey]] | None = None) -> None:
        self._load = load
        self._keys: Mapping[str, ApiKey] | None = None
        self._lock = threading.Lock()
        self.loaded_at = 0.0
        self.failures = 0

    def refresh(self) -> None:
        """Load the keys again; on failure keep the last ones (logged once per outage)."""
        assert self._load is not None
        try:
            keys = self._load()
        except Exception as exc:  # noqa: BLE001 - an outage: keep serving the last keys
            if self.failures == 0:
                log.warning("keys_reload_failed", error=str(exc),
                            keeping=len(self._keys) if self._keys is not None else 0)
            self.failures += 1
            return
        self.set(keys)
        if self.failures:
            log.info("keys_reloaded", after_failures=self.failures)
        self.failures = 0

    def set(self, keys: list[ApiKey]) -> None:
        """Replace the keys held (what `refresh` loaded, or a one-off check's)."""
        with self._lock:
            self._keys = {k.key_id: k for k in keys}
            self.loaded_at = time.monotonic()

    def check(self, key: str | None) -> Principal | None:
        """The principal of a valid, unrevoked key; None for a missing, malformed, unknown or
        revoked one. Raises KeysUnavailable if no keys were ever loaded."""
        if self._keys is None:
            why = "ClickHouse unreachable" if self.failures else "the first load is still running"
            raise KeysUnavailable(f"API keys are not loaded yet ({why}); retry shortly")
        if not key:
            return None
        parsed = parse_key(key)
        if parsed is None:
            return None
        kind, key_id = parsed
        found = self._keys.get(key_id)
        # Compared even when the key_id is unknown, so both cases take the same time.
        stored = found.secret_sha256 if found is not None else b"\0" * 32
        if not hmac.compare_digest(stored, digest(key)) or found is None:
            return None
        if found.revoked_at is not None or found.kind != kind:
            return None
        return Principal(found.project_id, found.kind, found.key_id)


async def start_refreshing(keyring: Keyring, every_s: float, wait_s: float) -> asyncio.Task[None]:
    """Reload *keyring* every *every_s* in a task, and wait up to *wait_s* for the first load.

    Called before the API opens its port: its first requests then find the keys (without the
    wait, they raced the first load and got 503 on a busy machine). A ClickHouse down or hung
    at start holds the start no longer than *wait_s*; requests get 503 until a load succeeds.
    """
    first = asyncio.Event()

    async def reload_forever() -> None:
        while True:
            await asyncio.to_thread(keyring.refresh)
            first.set()
            await asyncio.sleep(every_s)

    task = asyncio.create_task(reload_forever())
    try:
        await asyncio.wait_for(first.wait(), wait_s)
    except TimeoutError:
        log.warning("keys_not_loaded_at_start", waited_s=wait_s,
                    detail="requests that need a key get 503 until the keys load")
    return task


class RateLimiter:
    """A token bucket per key: *rate* tokens a second, at most *burst* saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str, cost: float = 1.0) -> float:
        """0 when *cost* tokens were taken; else the seconds to wait before it would fit."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        cost = min(cost, self.burst)  # a request bigger than the burst waits for a full bucket
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (cost - tokens) / self.rate


def retry_after(wait_s: float) -> str:
    """The Retry-After header value (whole seconds, at least 1) for a wait of *wait_s*."""
    return str(max(1, math.ceil(wait_s)))
