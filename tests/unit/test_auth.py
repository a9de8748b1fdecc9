"""Keys without services: their format, checking (revoked, wrong kind, forged, unknown), the
Authorization header, the rate limiter's buckets, and what the OpenAPI document says."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from app.auth import (
    ApiKey,
    Keyring,
    KeysUnavailable,
    Principal,
    RateLimiter,
    bearer,
    digest,
    new_key,
    parse_key,
    start_refreshing,
)
from app.openapi import document
from app.settings import AuthSettings, Settings


def _record(key: str, kind: str = "read", project: str = "alpha", revoked: bool = False) -> ApiKey:
    parsed = parse_key(key)
    assert parsed is not None
    return ApiKey(parsed[1], project, kind, "", datetime.now(UTC),  # type: ignore[arg-type]
                  datetime.now(UTC) if revoked else None, digest(key))


def test_a_new_key_names_its_kind_and_parses_back() -> None:
    for kind, prefix in (("write", "rvw_"), ("read", "rvr_"), ("admin", "rva_")):
        key_id, key = new_key(kind)  # type: ignore[arg-type]
        assert key.startswith(prefix) and parse_key(key) == (kind, key_id)
    assert new_key("read")[1] != new_key("read")[1]
    for bad in ("", "rvr_", "rvx_abcdefabcdef_" + "A" * 43, "rvr_ABCDEFabcdef_" + "A" * 43,
                "rvr_abcdefabcdef_" + "A" * 42, " rvr_abcdefabcdef_" + "A" * 43):
        assert parse_key(bad) is None, bad


def test_the_keyring_accepts_only_an_active_key_of_the_kind_it_was_made() -> None:
    _, read = new_key("read")
    _, revoked = new_key("write")
    ring = Keyring()
    with pytest.raises(KeysUnavailable):  # nothing loaded yet: an outage, not a refusal
        ring.check(read)
    ring.set([_record(read), _record(revoked, "write", revoked=True)])
    assert ring.check(read) == Principal("alpha", "read", parse_key(read)[1])  # type: ignore[index]
    assert ring.check(revoked) is None
    assert ring.check(None) is None and ring.check("") is None
    forged = read[:-1] + ("B" if read[-1] != "B" else "C")
    assert ring.check(forged) is None  # same id, another secret
    assert ring.check("rvw_" + read[4:]) is None  # the id of a read key, claimed as a write key
    assert ring.check(new_key("read")[1]) is None  # unknown id


def test_a_failed_reload_keeps_the_keys_loaded_before() -> None:
    _, key = new_key("write")
    answers: list[object] = [[_record(key, "write")], OSError("ClickHouse unreachable")]

    def load() -> list[ApiKey]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[return-value]

    ring = Keyring(load)
    ring.refresh()
    ring.refresh()
    assert ring.failures == 1 and ring.check(key) is not None


def test_a_starting_api_waits_for_its_first_key_load_but_not_for_a_hung_clickhouse() -> None:
    _, key = new_key("write")
    release = threading.Event()

    def slow_load() -> list[ApiKey]:  # a busy ClickHouse: the first load takes a moment
        release.wait(0.3)
        return [_record(key, "write")]

    def hung_load() -> list[ApiKey]:  # a hung ClickHouse: no answer within the start's wait
        release.wait(5)
        raise OSError("ClickHouse unreachable")

    async def start(ring: Keyring, wait_s: float) -> Principal | None | Exception:
        task = await start_refreshing(ring, every_s=60, wait_s=wait_s)
        try:
            return ring.check(key)  # the API's first request, right after the port opens
        except KeysUnavailable as exc:
            return exc
        finally:
            task.cancel()

    assert asyncio.run(start(Keyring(slow_load), wait_s=10)) == Principal("alpha", "write", parse_key(key)[1])  # type: ignore[index]
    loop = asyncio.new_event_loop()
    try:
        refused = loop.run_until_complete(start(Keyring(hung_load), wait_s=0.2))
        assert isinstance(refused, KeysUnavailable) and "still running" in str(refused)
    finally:
        release.set()  # the hung load's thread ends
        loop.close()


def test_what_each_kind_may_do() -> None:
    write, read, admin = (Principal("p", k, "id") for k in ("write", "read", "admin"))  # type: ignore[arg-type]
    assert write.may("write") and not write.may("read") and not write.may("admin")
    assert read.may("read") and not read.may("write") and not read.may("admin")
    assert admin.may("read") and admin.may("admin") and not admin.may("write")
    assert Principal("p", "admin", None).may("write")  # keys off: one principal does everything
    assert read.letter_projects() == ("p",) and admin.letter_projects() == ("p", "")
    assert Principal("p", "admin", None).letter_projects() is None


def test_the_bearer_token_of_an_authorization_header() -> None:
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("Bearer") is None and bearer(None) is None


def test_a_bucket_per_key_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10, burst=20, clock=lambda: now[0])
    assert limiter.take("a", 20) == 0
    assert limiter.take("a", 5) == pytest.approx(0.5)  # 5 tokens at 10/s
    assert limiter.take("b", 1) == 0  # another key has its own bucket
    now[0] = 0.5
    assert limiter.take("a", 5) == 0
    assert limiter.take("a", 1000) == pytest.approx(2.0)  # capped at the burst: waits for a full bucket
    assert RateLimiter(0, 1).take("a", 10**9) == 0  # rate 0: no limit


def test_the_openapi_document_asks_a_key_of_every_v1_endpoint() -> None:
    doc = document(Settings())
    assert doc["components"]["securitySchemes"]["key"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        for op in item.values():
            assert ("security" in op) == path.startswith("/v1/"), path
            if path.startswith("/v1/"):
                assert {"401", "403", "429"} <= set(op["responses"]), path
    open_doc = document(Settings(auth=AuthSettings(required=False)))
    assert all("security" not in op for item in open_doc["paths"].values() for op in item.values())
