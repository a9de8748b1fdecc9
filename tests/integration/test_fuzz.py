"""Fuzzing both ways in: the collector's HTTP API, and raw bytes straight onto events.raw.

What a user relies on, checked against the real services:
- the collector answers every malformed request with a 4xx whose ``error`` names the problem,
  never a 5xx and never silence, and a 202 only for events that will be stored;
- whatever lands on events.raw, the worker keeps running, and every event ends in exactly one
  place: the events table (once) or the DLQ (one letter per undecodable message, one per bad
  event inside a decodable batch).

Hypothesis draws the inputs. The end-to-end tests run their @given functions inside the test,
so the pipeline (worker, API) is started once per test and a ledger adds up what was sent.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from agents import dlq
from agents.codec import BatchWriter, frame
from agents.records import MAX_TIMESTAMP_MS
from agents.schema_registry import register
from app.embedded.broker import ensure_topics, pipeline_topics
from app.embedded.process import ChildProcess
from app.settings import ApiSettings
from app.verify import verify
from tests.integration.conftest import Pipeline, Services, wait_for

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
MAX_BATCH = ApiSettings().max_batch_events
MAX_BODY = ApiSettings().max_body_bytes
HTTP_TIMEOUT_S = 10.0
# A raw message this big is accepted by a default librdkafka producer (message.max.bytes
# 1,000,000) and by Kafka's default broker limit (1,048,588 bytes).
NEAR_LIMIT_BYTES = 999_900


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------------------------
# Collector payloads
# ---------------------------------------------------------------------------------------------

NAME_FIRST = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$"
NAME_REST = NAME_FIRST + " .:/-"
# Event names the worker accepts (agents/validate.py Rules.event_name_pattern).
names = st.builds(lambda a, b: a + b, st.sampled_from(NAME_FIRST), st.text(NAME_REST, max_size=60))

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
uuid_texts = st.builds(
    lambda fmt: fmt(uuid.uuid4()),  # fresh ids: two events never share one by accident
    st.sampled_from(
        [str, lambda u: str(u).upper(), lambda u: u.hex, lambda u: f"{{{u}}}", lambda u: u.urn]
    ),
)


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    """A timestamp the worker accepts (up to 364 days old, up to 20 h ahead), in every form."""
    # Offsets from now, not bounds computed from the clock: hypothesis needs stable strategies.
    ms = now_ms() + draw(st.integers(-364 * DAY_MS, 20 * 3_600_000))
    form = draw(st.sampled_from(["int", "float", "iso_z", "iso_offset", "iso_naive"]))
    if form == "int":
        return ms
    if form == "float":
        return ms + draw(st.floats(0, 0.999))
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if form == "iso_z":
        return dt.isoformat().replace("+00:00", "Z")
    if form == "iso_offset":
        hours = draw(st.integers(-12, 14))
        return dt.astimezone(timezone(timedelta(hours=hours))).isoformat()
    return dt.replace(tzinfo=None).isoformat()


@st.composite
def track_events(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON event the collector must accept and the worker must store."""
    ev: dict[str, Any] = {draw(st.sampled_from(["event", "event_name"])): draw(names)}
    ev["user_id"] = draw(st.one_of(st.text(min_size=1, max_size=256), st.integers(0, 2**64 - 1)))
    for key, values in (("timestamp", timestamps()), ("event_id", uuid_texts)):
        choice = draw(st.sampled_from(["absent", "null", "set"]))
        if choice != "absent":
            ev[key] = draw(values) if choice == "set" else None
    props = draw(
        st.one_of(st.none(), st.dictionaries(st.text(max_size=128), json_scalars, max_size=6))
    )
    if props is not None or draw(st.booleans()):
        ev["properties"] = props
    ctx = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {}, optional={"library": st.one_of(st.none(), st.text(max_size=40))}
            ),
        )
    )
    if ctx is not None or draw(st.booleans()):
        ev["context"] = ctx
    return ev


def valid_event() -> dict[str, Any]:
    return {"event": "page_view", "user_id": "u1", "properties": {"country": "DE"}}


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, allow_nan=False).encode()


@dataclass(frozen=True)
class Bad:
    """A malformed request and what the answer must say."""

    endpoint: str  # "track" or "batch"
    body: bytes
    status: int | None  # None: any 4xx
    names: str | None  # a substring the error must contain
    what: str


def _in_request(
    draw: st.DrawFn, event_body: bytes, names_: str, status: int, what: str, per_event: bool = True
) -> Bad:
    """The malformed event *event_body* sent alone to /v1/track or at a random index of a batch.

    In a batch, an error about one event names its index (``events[3]: ...``); an error about
    the body as a whole (not JSON) cannot, so *per_event* is False for those.
    """
    if draw(st.booleans()):
        return Bad("track", event_body, status, names_, what)
    before = draw(st.integers(0, 3))
    after = draw(st.integers(0, 3))
    parts = [dumps(valid_event())] * before + [event_body] + [dumps(valid_event())] * after
    body = b'{"events": [' + b", ".join(parts) + b"]}"
    return Bad("batch", body, status, f"events[{before}]: {names_}" if per_event else names_, what)


INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\xc0\xaf",
    b"\xe2\x82",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\x80",
]
NON_FINITE = [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"]


@st.composite
def invalid_utf8(draw: st.DrawFn) -> Bad:
    junk = draw(st.sampled_from(INVALID_UTF8))
    where = draw(st.sampled_from(["event", "user_id", "key", "value"]))
    head = draw(st.text("abc", max_size=3)).encode()
    if where == "event":
        body = b'{"event": "' + head + junk + b'", "user_id": "u"}'
    elif where == "user_id":
        body = b'{"event": "e", "user_id": "' + head + junk + b'"}'
    elif where == "key":
        body = b'{"event": "e", "user_id": "u", "properties": {"' + head + junk + b'": "v"}}'
    else:
        body = b'{"event": "e", "user_id": "u", "properties": {"k": "' + head + junk + b'"}}'
    return _in_request(
        draw, body, "not valid JSON", 400, f"invalid UTF-8 {junk!r} in {where}", per_event=False
    )


@st.composite
def non_finite(draw: st.DrawFn) -> Bad:
    literal = draw(st.sampled_from(NON_FINITE))
    where = draw(st.sampled_from(["timestamp", "property", "user_id"]))
    if where == "timestamp":
        body = b'{"event": "e", "user_id": "u", "timestamp": ' + literal + b"}"
    elif where == "property":
        body = b'{"event": "e", "user_id": "u", "properties": {"price": ' + literal + b"}}"
    else:
        body = b'{"event": "e", "user_id": ' + literal + b"}"
    return _in_request(
        draw, body, "not valid JSON", 400, f"{literal.decode()} as {where}", per_event=False
    )


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    return b'{"a": ' * depth + b"1" + b"}" * depth


@st.composite
def deep_nesting(draw: st.DrawFn) -> Bad:
    depth = draw(st.sampled_from([1_100, 10_000]))
    doc = nested(depth, draw(st.sampled_from(["array", "object"])))
    where = draw(st.sampled_from(["body", "property", "context"]))
    if where == "body":
        return Bad(
            draw(st.sampled_from(["track", "batch"])), doc, 400, "not valid JSON", f"{depth} levels"
        )
    field_ = b'"properties": {"p": ' if where == "property" else b'"context": {"c": '
    body = b'{"event": "e", "user_id": "u", ' + field_ + doc + b"}}"
    return _in_request(
        draw, body, "not valid JSON", 400, f"{depth} levels in {where}", per_event=False
    )


# Wrong-typed values for each field of a track payload, and the field name the error must name.
_not_str = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(json_scalars, max_size=2),
    st.dictionaries(st.text(max_size=5), json_scalars, max_size=2),
)
_not_object = st.one_of(
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
    st.lists(json_scalars, max_size=2),
)
WRONG_TYPES: dict[str, tuple[st.SearchStrategy[Any], str]] = {
    "event": (st.one_of(_not_str, st.just("")), "event"),
    "event_name": (st.one_of(_not_str, st.just("")), "event"),
    "user_id": (
        st.one_of(
            st.booleans(),
            st.floats(allow_nan=False, allow_infinity=False),
            st.just(""),
            st.lists(json_scalars, max_size=2),
            st.dictionaries(st.text(max_size=5), json_scalars, max_size=2),
        ),
        "user_id",
    ),
    "timestamp": (
        st.one_of(
            st.booleans(),
            st.lists(json_scalars, max_size=2),
            st.dictionaries(st.text(max_size=5), json_scalars, max_size=2),
            st.text("abcdefghijklmnopqrstuvwxyz !?", max_size=12),
        ),
        "timestamp",
    ),
    "event_id": (st.one_of(_not_str, st.text("ghijklmnopqrstuvwxyz-", max_size=36)), "event_id"),
    "properties": (_not_object, "properties"),
    "property_value": (
        st.one_of(
            st.lists(json_scalars, max_size=2),
            st.dictionaries(st.text(max_size=5), json_scalars, max_size=2),
        ),
        "properties.p",
    ),
    "context": (_not_object, "context"),
    "context.library": (_not_str, "context.library"),
}


def with_wrong(field_: str, value: Any) -> dict[str, Any]:
    ev = valid_event()
    if field_ == "event_name":
        del ev["event"]
        ev["event_name"] = value
    elif field_ == "property_value":
        ev["properties"] = {"country": "DE", "p": value}
    elif field_ == "context.library":
        ev["context"] = {"library": value}
    else:
        ev[field_] = value
    return ev


@st.composite
def wrong_type(draw: st.DrawFn, field_: str | None = None) -> Bad:
    field_ = field_ or draw(st.sampled_from(sorted(WRONG_TYPES)))
    values, named = WRONG_TYPES[field_]
    value = draw(values)
    return _in_request(draw, dumps(with_wrong(field_, value)), named, 400, f"{field_}={value!r}")


@st.composite
def non_object_events(draw: st.DrawFn) -> Bad:
    value = draw(st.one_of(json_scalars, st.lists(json_scalars, max_size=3)))
    return _in_request(
        draw, dumps(value), "an event must be a JSON object", 400, f"event {value!r}"
    )


@st.composite
def bad_batch_shapes(draw: st.DrawFn) -> Bad:
    body = draw(
        st.one_of(
            st.just({"events": []}),
            st.just([]),
            st.builds(
                lambda v: {"events": v},
                st.one_of(json_scalars, st.dictionaries(st.text(max_size=5), json_scalars)),
            ),
            json_scalars,
            st.dictionaries(st.sampled_from(["event", "items", "data"]), json_scalars, max_size=2),
        )
    )
    return Bad("batch", dumps(body), 400, None, f"batch body {body!r}")


random_bytes = st.builds(
    lambda ep, b: Bad(ep, b, None, None, f"random bytes {b[:40]!r}"),
    st.sampled_from(["track", "batch"]),
    st.binary(max_size=2_000),
)
random_json = st.builds(
    lambda ep, v: Bad(ep, dumps(v), None, None, f"random JSON {v!r}"),
    st.sampled_from(["track", "batch"]),
    st.one_of(
        json_scalars,
        st.lists(json_values, max_size=4),
        st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    ),
)

malformed = st.one_of(
    random_bytes,
    random_json,
    invalid_utf8(),
    non_finite(),
    deep_nesting(),
    wrong_type(),
    non_object_events(),
    bad_batch_shapes(),
)


def post(client: httpx.Client, endpoint: str, body: bytes | Iterator[bytes]) -> httpx.Response:
    try:
        return client.post(f"/v1/{endpoint}", content=body)
    except httpx.TimeoutException:
        pytest.fail(
            f"the collector did not answer POST /v1/{endpoint} within {HTTP_TIMEOUT_S:.0f} s"
        )


def check_refused(resp: httpx.Response, bad: Bad) -> None:
    body = bad.body[:200]
    assert resp.status_code != 202, (
        f"{bad.what}: the collector accepted a malformed request ({resp.text}); body {body!r}"
    )
    assert 400 <= resp.status_code < 500, (
        f"{bad.what}: expected a 4xx, got {resp.status_code} {resp.text[:300]}; body {body!r}"
    )
    if bad.status is not None:
        assert resp.status_code == bad.status, f"{bad.what}: {resp.status_code} {resp.text[:300]}"
    error = resp.json().get("error")
    assert isinstance(error, str) and error, f"{bad.what}: no error message in {resp.text[:300]}"
    if bad.names is not None:
        assert bad.names in error, f"{bad.what}: the error {error!r} does not name {bad.names!r}"


@pytest.fixture(scope="module")
def collector(
    services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """One collector (no worker) on its own topics, for the tests that look at answers only."""
    tag = f"fuzz_{uuid.uuid4().hex[:6]}"
    s = services.settings
    topics = s.kafka.topics.model_copy(
        update={
            "raw": f"{tag}.events.raw",
            "clean": f"{tag}.events.clean",
            "dlq": f"{tag}.events.dlq",
        }
    )
    settings_ = s.model_copy(
        update={
            "kafka": s.kafka.model_copy(update={"topics": topics}),
            "worker": s.worker.model_copy(update={"app_id": f"rearview-{tag}"}),
        }
    )
    ensure_topics(settings_.kafka.bootstrap_servers, pipeline_topics(settings_.kafka))
    p = Pipeline(settings_, tmp_path_factory.mktemp("collector"))
    try:
        url = p.start_api()
        with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as client:
            yield client
    finally:
        p.close()


FUZZ = settings(deadline=None, max_examples=60, database=None)


@FUZZ
@given(bad=st.one_of(random_bytes, random_json, non_object_events(), bad_batch_shapes()))
def test_collector_refuses_random_bytes_and_random_json(collector: httpx.Client, bad: Bad) -> None:
    check_refused(post(collector, bad.endpoint, bad.body), bad)


@FUZZ
@given(bad=st.one_of(invalid_utf8(), non_finite()))
def test_collector_refuses_invalid_utf8_and_nan_infinity_literals(
    collector: httpx.Client, bad: Bad
) -> None:
    check_refused(post(collector, bad.endpoint, bad.body), bad)


@settings(deadline=None, max_examples=20, database=None)
@given(bad=deep_nesting())
def test_collector_refuses_deeply_nested_json(collector: httpx.Client, bad: Bad) -> None:
    check_refused(post(collector, bad.endpoint, bad.body), bad)


@pytest.mark.parametrize("field_", sorted(WRONG_TYPES))
def test_collector_refuses_a_wrong_type_in_each_field(collector: httpx.Client, field_: str) -> None:
    @settings(deadline=None, max_examples=40, database=None)
    @given(bad=wrong_type(field_))
    def refused(bad: Bad) -> None:
        check_refused(post(collector, bad.endpoint, bad.body), bad)

    refused()


def test_collector_refuses_oversized_bodies_and_batches(collector: httpx.Client) -> None:
    huge = b'{"event": "x", "user_id": "u", "properties": {"p": "' + b"x" * (MAX_BODY + 1) + b'"}}'
    for endpoint in ("track", "batch"):
        bad = Bad(endpoint, huge, 413, "larger than", "a body over the size limit")
        check_refused(post(collector, endpoint, huge), bad)

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
            for start in range(0, len(huge), 1 << 20):
                yield huge[start : start + (1 << 20)]

        check_refused(
            post(collector, endpoint, chunks()), Bad(endpoint, huge, 413, "larger than", "chunked")
        )
    events = [{"event": "e", "user_id": "u"}] * (MAX_BATCH + 1)
    for body in ({"events": events}, events):
        bad = Bad("batch", dumps(body), 400, f"at most {MAX_BATCH} events", "one event too many")
        check_refused(post(collector, "batch", bad.body), bad)


# Events the collector takes but the worker's rules (agents/validate.py Rules) refuse.
def _rule_violations() -> dict[str, tuple[dict[str, Any], str]]:
    now = now_ms()
    return {
        "event name with '#'": ({"event": "no!such#name", "user_id": "u"}, "event"),
        "event name with a space first": ({"event": " page_view", "user_id": "u"}, "event"),
        "event name of 129 characters": ({"event": "e" * 129, "user_id": "u"}, "event"),
        "user_id of 257 characters": ({"event": "e", "user_id": "u" * 257}, "user_id"),
        "timestamp 400 days old": (
            {"event": "e", "user_id": "u", "timestamp": now - 400 * DAY_MS},
            "timestamp",
        ),
        "timestamp 0 (1970)": ({"event": "e", "user_id": "u", "timestamp": 0}, "timestamp"),
        "timestamp 2 days ahead": (
            {"event": "e", "user_id": "u", "timestamp": now + 2 * DAY_MS},
            "timestamp",
        ),
        "257 properties": (
            {"event": "e", "user_id": "u", "properties": {f"k{i}": i for i in range(257)}},
            "properties",
        ),
        "property key of 129 characters": (
            {"event": "e", "user_id": "u", "properties": {"k" * 129: "v"}},
            "propert",
        ),
        "property value of 8193 characters": (
            {"event": "e", "user_id": "u", "properties": {"k": "v" * 8193}},
            "propert",
        ),
    }


def test_collector_refuses_events_the_worker_would_dead_letter(collector: httpx.Client) -> None:
    """A 202 tells the client its event is in; one the worker's rules refuse never is."""
    let_through = []
    for case, (event, named) in _rule_violations().items():
        resp = post(collector, "track", dumps(event))
        if resp.status_code == 202:
            let_through.append(case)
            continue
        check_refused(resp, Bad("track", dumps(event), 400, named, case))
    assert not let_through, (
        f"the collector answered 202 for {len(let_through)} of {len(_rule_violations())} events "
        f"the worker's rules refuse ({'; '.join(let_through)}): the client is told they were "
        "accepted, and they go to the DLQ instead of the events table. The collector must apply "
        "the same rules (agents/validate.py Rules) and answer 400 naming the field."
    )


# ---------------------------------------------------------------------------------------------
# Collector end to end: every 202 is stored exactly once
# ---------------------------------------------------------------------------------------------


def test_every_event_the_collector_accepts_is_stored_exactly_once(pipeline: Pipeline) -> None:
    worker = pipeline.start_worker()
    url = pipeline.start_api()
    accepted = refused = 0
    with httpx.Client(base_url=url, timeout=HTTP_TIMEOUT_S) as client:

        @settings(deadline=None, max_examples=150, database=None)
        @given(
            events=st.lists(track_events(), min_size=1, max_size=25),
            as_batch=st.booleans(),
            bad=malformed,
        )
        def traffic(events: list[dict[str, Any]], as_batch: bool, bad: Bad) -> None:
            nonlocal accepted, refused
            if as_batch or len(events) > 1:
                body: Any = {"events": events} if as_batch else events
                resp = post(client, "batch", dumps(body))
            else:
                resp = post(client, "track", dumps(events[0]))
            assert resp.status_code == 202, (
                f"valid events refused: {resp.status_code} {resp.text}; {events!r}"
            )
            assert resp.json() == {"accepted": len(events)}
            accepted += len(events)
            resp = post(client, bad.endpoint, bad.body)
            assert resp.status_code == 202 or 400 <= resp.status_code < 500, (
                f"{bad.what}: {resp.status_code} {resp.text[:300]}"
            )
            if resp.status_code == 202:  # a leniency the answer tests report; its events count
                accepted += int(resp.json()["accepted"])
            else:
                refused += 1

        traffic()
        # The boundaries: the largest batch, and an event at every per-event limit.
        edge_props: dict[str, Any] = {f"k{i:03d}" + "k" * 124: "v" * 8192 for i in range(4)}
        edge_props.update({f"p{i}": i for i in range(252)})
        edge = {
            "event": "e" * 128,
            "user_id": "u" * 256,
            "event_id": str(uuid.uuid4()),
            "properties": edge_props,
        }
        full = [{"event": "bulk", "user_id": f"u{i}"} for i in range(MAX_BATCH)]
        for endpoint, body, n in (("track", edge, 1), ("batch", {"events": full}, MAX_BATCH)):
            resp = post(client, endpoint, dumps(body))
            assert resp.status_code == 202 and resp.json() == {"accepted": n}, resp.text[:300]
            accepted += n

    assert refused > 0
    wait_for(lambda: pipeline.stored() >= accepted, 60, f"{accepted} accepted events in ClickHouse")
    letters = pipeline.consume_all(pipeline.settings.kafka.topics.dlq, expected=0, timeout_s=2)
    assert pipeline.stored() == accepted, "an accepted event was stored twice"
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == accepted
    assert letters == [], describe_letters(letters, "accepted by the collector but dead-lettered")
    assert worker.alive(), "the worker stopped"


def describe_letters(letters: list[Any], what: str) -> str:
    heads = [dlq.parse_headers(m.headers()) for m in letters[:8]]
    return f"{len(letters)} events {what}, e.g. " + "; ".join(
        f"{h.get('rv.stage')}/{h.get('rv.error_class')}: {h.get('rv.reason')}" for h in heads
    )


def test_numbers_no_event_can_hold_are_refused_without_taking_other_requests_down(
    pipeline: Pipeline,
) -> None:
    """Epoch milliseconds beyond Avro's long: 1e300 is finite JSON, 2**63 a valid JSON integer.

    Each goes in together with a valid request from another client, so both share one batch
    message (the collector lingers 300 ms here): the valid one must not pay for the bad one.
    """
    s = pipeline.settings
    pipeline.settings = s.model_copy(update={"api": s.api.model_copy(update={"linger_ms": 300.0})})
    url = pipeline.start_api()
    api = pipeline.children[-1]
    answers: dict[str, tuple[httpx.Response | None, httpx.Response | None]] = {}

    def call(client: httpx.Client, body: bytes) -> httpx.Response | None:
        try:
            return client.post("/v1/track", content=body)
        except httpx.TimeoutException:
            return None

    try:
        with httpx.Client(base_url=url, timeout=3) as client, ThreadPoolExecutor(2) as pool:
            for literal in ("1e300", "9223372036854775808"):
                body = b'{"event": "e", "user_id": "u", "timestamp": ' + literal.encode() + b"}"
                bad_answer = pool.submit(call, client, body)
                time.sleep(0.05)
                good_answer = pool.submit(call, client, dumps(valid_event()))
                answers[literal] = (bad_answer.result(), good_answer.result())
    finally:
        if any(None in pair for pair in answers.values()):
            api.kill()  # a graceful stop would wait for the hung handlers
    hung = [literal for literal, (bad, _) in answers.items() if bad is None]
    lost = [literal for literal, (_, good) in answers.items() if good is None]
    assert not hung and not lost, (
        f"the collector never answered a track with timestamp {' or '.join(hung)}, nor the valid "
        f"track sent alongside ({len(lost)} of {len(answers)} never answered, their events never "
        "sent): the value passes normalize, then BatchWriter.encode raises OverflowError inside "
        "the producer's flush timer, so the batch is dropped and every request in it waits "
        "forever. Expected: 400 naming timestamp for the bad one, 202 for the other."
    )
    for literal, (bad, good) in answers.items():
        assert bad is not None and good is not None
        check_refused(bad, Bad("track", b"", 400, "timestamp", f"timestamp {literal}"))
        assert good.status_code == 202, f"a valid track sharing the batch got {good.status_code}"


# ---------------------------------------------------------------------------------------------
# Straight onto events.raw
# ---------------------------------------------------------------------------------------------

OTHER_SCHEMA = {
    "type": "record",
    "name": "Other",
    "namespace": "io.fuzz",
    "fields": [{"name": "a", "type": "long"}, {"name": "b", "type": "string"}],
}


def _plain(schema: Any) -> Any:
    """The schema without logical types (their binary encoding is the plain type)."""
    if isinstance(schema, dict):
        return {k: _plain(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema


def avro(schema: Any, record: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(_plain(schema)), record)
    return buf.getvalue()


@dataclass
class Ledger:
    """What was produced to events.raw and where each of its events must end up."""

    valid: int = 0
    letters: Counter[tuple[bytes | None, int | None]] = field(default_factory=Counter)

    def add(
        self, value: bytes | None, valid: int = 0, letters: list[int | None] | None = None
    ) -> None:
        self.valid += valid
        for index in letters or []:
            self.letters[(value, index)] += 1


def avro_event(received_at: int, **kw: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "project_id": "default",
        "event_name": "page_view",
        "user_id": "u1",
        "timestamp": received_at,
        "properties": {},
        "context": {"ip": None, "user_agent": None, "library": "fuzz", "received_at": received_at},
        **kw,
    }


# Event times no column can hold (issue 8): each crashed or wedged a stage, or was stored as
# year 0000, when the producer set context.received_at (or the Kafka CreateTime) to match.
YEAR_3000_MS = 32_503_680_000_000
EXTREME_TIMES = [2**62, 2**63 - 1, YEAR_3000_MS, MAX_TIMESTAMP_MS + 1, -(2**50), -(2**63), -1]

BAD_NAME_CHARS = "#!@%^&*()+=[]{}|\\;'\"<>?,`~é\t"


@st.composite
def raw_events(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """(an Avro Event record, whether the worker must accept it)."""
    now = now_ms()
    ev = avro_event(
        now,
        event_name=draw(names),
        user_id=draw(st.text(min_size=1, max_size=256)),
        timestamp=now + draw(st.integers(-364 * DAY_MS, 20 * 3_600_000)),
        properties=draw(st.dictionaries(st.text(max_size=128), st.text(max_size=100), max_size=5)),
    )
    flaw = draw(
        st.sampled_from(
            ["none"] * 6 + ["name", "user_id", "timestamp", "forged_time", "properties", "event_id"]
        )
    )
    if flaw == "none":
        return ev, True
    if flaw == "name":
        ev["event_name"] = draw(
            st.one_of(
                st.just(""),
                st.text(NAME_REST, min_size=129, max_size=140).map(lambda s: "e" + s),
                st.builds(
                    lambda a, c, b: a + c + b,
                    names,
                    st.sampled_from(BAD_NAME_CHARS),
                    st.text(NAME_REST, max_size=5),
                ),
                st.builds(
                    lambda c, b: c + b, st.sampled_from(" .:/-"), st.text(NAME_REST, max_size=5)
                ),
            )
        )
    elif flaw == "user_id":
        ev["user_id"] = draw(st.one_of(st.just(""), st.text(min_size=257, max_size=300)))
    elif flaw == "timestamp":
        off = draw(st.integers(3_600_000, 3650 * DAY_MS))
        ev["timestamp"] = draw(st.sampled_from([now - 365 * DAY_MS - off, now + DAY_MS + off]))
    elif flaw == "forged_time":  # a time no column holds, and a receive time that agrees
        ev["timestamp"] = draw(st.sampled_from(EXTREME_TIMES))
        ev["context"]["received_at"] = draw(st.sampled_from([ev["timestamp"], None, now]))
    elif flaw == "properties":
        ev["properties"] = draw(
            st.sampled_from(
                [{f"k{i}": "v" for i in range(257)}, {"k" * 129: "v"}, {"k": "v" * 8193}]
            )
        )
    else:
        ev["event_id"] = draw(st.text("ghijklmnopqrstuvwxyz-", max_size=36))
    return ev, False


def test_garbage_on_the_raw_topic_is_dead_lettered_once_and_never_stops_the_worker(
    pipeline: Pipeline,
) -> None:
    """Every kind of message a producer can get wrong, with one worker running throughout.

    Each message's fate is known when it is drawn, so the ledger says exactly how many events
    must be stored and which dead letters (original bytes, event index) must exist. Random bit
    flips are left out on purpose: some corrupted bodies still decode (see DESIGN.md), and their
    fate could only be predicted by re-implementing the decoder.
    """
    s = pipeline.settings
    raw = s.kafka.topics.raw
    batch_id = register(s.registry.url, raw, schemas.EVENT_BATCH)
    event_id = register(s.registry.url, raw, schemas.EVENT)
    other_id = SchemaRegistryClient({"url": s.registry.url}).register_schema(
        f"{raw}-io.fuzz.Other", Schema(json.dumps(OTHER_SCHEMA), "AVRO")
    )
    writer = BatchWriter(schemas.EVENT_BATCH, batch_id)
    event_schema = schemas.load(schemas.EVENT)
    ledger = Ledger()
    producer = pipeline.producer()
    worker = pipeline.start_worker()

    def send(value: bytes | None, valid: int = 0, letters: list[int | None] | None = None) -> None:
        producer.produce(raw, value=value)
        producer.poll(0)
        ledger.add(value, valid, letters)

    def batch_of(events: list[tuple[dict[str, Any], bool]]) -> tuple[bytes, int, list[int | None]]:
        value = writer.encode([e for e, _ in events])
        if not events:  # an empty batch is one letter for the whole message, not nothing
            return value, 0, [None]
        return value, sum(ok for _, ok in events), [i for i, (_, ok) in enumerate(events) if not ok]

    @settings(deadline=None, max_examples=300, database=None)
    @given(
        kind=st.sampled_from(
            ["batch", "single", "bytes", "magic", "unknown_id", "truncated", "wrong_schema"]
        ),
        events=st.lists(raw_events(), max_size=12),
        data=st.data(),
    )
    def garbage(kind: str, events: list[tuple[dict[str, Any], bool]], data: st.DataObject) -> None:
        if kind == "batch":  # decodable: each bad event is one letter, the rest is stored
            send(*batch_of(events))
        elif kind == "single":  # one Event per message, as a stock Confluent serializer writes
            for ev, ok in events[:3]:
                send(frame(event_id, avro(event_schema, ev)), int(ok), [] if ok else [0])
        elif kind == "bytes":  # cannot be Confluent framing: too short or a non-zero magic byte
            send(
                data.draw(st.binary(max_size=500).filter(lambda b: len(b) < 5 or b[0] != 0)),
                0,
                [None],
            )
        elif kind == "magic":
            value, _, _ = batch_of(events)
            send(bytes([data.draw(st.integers(1, 255))]) + value[1:], 0, [None])
        elif kind == "unknown_id":  # ids this high are never handed out by the registry here
            schema_id = data.draw(st.integers(1_000_000_000, 2**32 - 1))
            send(frame(schema_id, data.draw(st.binary(max_size=200))), 0, [None])
        elif kind == "truncated":  # a valid message cut short: never decodes
            value, _, _ = batch_of(events or [(avro_event(now_ms()), True)])
            send(value[: data.draw(st.integers(0, len(value) - 1))], 0, [None])
        else:  # valid Avro, but of a record that is not an event: one letter, index 0
            record = {
                "a": data.draw(st.integers(-(2**63), 2**63 - 1)),
                "b": data.draw(st.text(max_size=50)),
            }
            send(frame(other_id, avro(OTHER_SCHEMA, record)), 0, [0])

    garbage()
    # Oversized but under Kafka's limit: a batch of valid events (the clean side must split it)
    # and undecodable bytes (the dead letter is big too).
    now = now_ms()
    big = [
        (avro_event(now, user_id=f"big-{i}", properties={"pad": "x" * 8000}), True)
        for i in range(140)
    ]
    value, valid, _ = batch_of(big)
    while len(value) > 980_000:
        big.pop()
        value, valid, _ = batch_of(big)
    send(value, valid, [])
    send(b"\x07" + bytes(950_000), 0, [None])
    assert producer.flush(30) == 0

    total_letters = sum(ledger.letters.values())
    assert ledger.valid > 0 and total_letters > 0
    wait_for(lambda: pipeline.stored() >= ledger.valid, 90, f"{ledger.valid} valid events stored")
    letters = pipeline.consume_all(s.kafka.topics.dlq, expected=total_letters, timeout_s=60)
    got = Counter[tuple[bytes | None, int | None]]()
    for m in letters:
        h = dlq.parse_headers(m.headers())
        assert h["rv.source_topic"] == raw and h["rv.reason"], h
        index = h.get("rv.event_index")
        got[(m.value(), int(index) if index is not None else None)] += 1
    missing, extra = ledger.letters - got, got - ledger.letters
    assert not missing and not extra, (
        f"dead letters: {len(letters)} for {total_letters} invalid messages/events; "
        f"missing (value, index) {[(v[:30] if v else v, i) for v, i in missing][:5]}, "
        f"unexpected {[(v[:30] if v else v, i) for v, i in extra][:5]}"
    )
    assert pipeline.stored() == ledger.valid
    assert pipeline.scalar("SELECT uniqExact(event_id) FROM events") == ledger.valid
    # ... and every letter is queryable, once, in ClickHouse's dlq table.
    wait_for(lambda: _dlq_rows(pipeline) >= total_letters, 30, f"{total_letters} rows in dlq")
    assert _dlq_rows(pipeline) == total_letters
    assert worker.alive(), "garbage on events.raw stopped the worker"


def _dlq_rows(pipeline: Pipeline) -> int:
    return int(pipeline.scalar("SELECT count() FROM dlq FINAL"))


def _worker_log(pipeline: Pipeline) -> str:
    logs = [c.log_path for c in pipeline.children if c.name.startswith("worker") and c.log_path]
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _log_lines(pipeline: Pipeline, *needles: str) -> str:
    lines = [
        line[:400] for line in _worker_log(pipeline).splitlines() if any(n in line for n in needles)
    ]
    return "\n".join(lines[:4])


def _fail_stuck(worker: ChildProcess, message: str) -> None:
    # A stuck worker does not stop on SIGTERM (Faust waits for the batch in hand): kill it by
    # pid rather than let the fixture wait 15 s for it.
    worker.kill()
    pytest.fail(message)


SETTLE_S = 15  # a healthy worker joins the group and clears these in a few seconds


def test_a_message_at_the_kafka_size_limit_that_must_be_dead_lettered_does_not_wedge_the_worker(
    pipeline: Pipeline,
) -> None:
    s = pipeline.settings
    raw = s.kafka.topics.raw
    batch_id = register(s.registry.url, raw, schemas.EVENT_BATCH)
    writer = BatchWriter(schemas.EVENT_BATCH, batch_id)
    garbage = b"\x01" + bytes(NEAR_LIMIT_BYTES - 1)  # not Avro: one letter, the whole message
    after = writer.encode([avro_event(now_ms(), user_id=f"after-{i}") for i in range(10)])
    producer = pipeline.producer()
    for value in (garbage, after):
        producer.produce(raw, value=value)
    assert producer.flush(30) == 0, "Kafka refused a message under its size limit"
    worker = pipeline.start_worker()
    letters = pipeline.consume_all(s.kafka.topics.dlq, expected=1, timeout_s=SETTLE_S)
    if not letters:
        _fail_stuck(
            worker,
            (
                f"no dead letter for an undecodable message of {NEAR_LIMIT_BYTES} bytes (under "
                f"Kafka's limit) after {SETTLE_S} s: the letter is the same bytes plus headers, "
                "over the worker producer's max_request_size (1,000,000); aiokafka refuses it "
                "with MessageSizeTooLargeError, and _produce_all retries that forever as if Kafka "
                "were down, so the raw offsets are never committed (and the batch's clean records "
                "are re-sent on every retry). Worker log:\n" + _log_lines(pipeline, "_retrying")
            ),
        )
    assert [m.value() for m in letters] == [garbage]
    wait_for(lambda: pipeline.stored() == 10, SETTLE_S, "the 10 events after the big message")
    assert worker.alive()


def event_of_size(writer: BatchWriter, size: int) -> bytes:
    """One valid event framed as a batch message of exactly *size* bytes, filled with
    properties of at most 8,100 characters (the rules allow 256 of up to 8,192)."""
    props: dict[str, str] = {}

    def encode() -> bytes:
        return writer.encode([avro_event(now_ms(), user_id="huge", properties=props)])

    value = encode()
    while size - len(value) > 8_100:
        props[f"p{len(props):03d}"] = "v" * 8_100
        value = encode()
    last = f"p{len(props):03d}"
    props[last] = ""
    value = encode()
    while len(value) != size:
        props[last] = "v" * (len(props[last]) + size - len(value))
        value = encode()
    return value


def test_a_single_event_at_the_kafka_size_limit_is_stored(pipeline: Pipeline) -> None:
    """124 properties of up to 8,100 characters: within every rule, and under Kafka's limit raw."""
    s = pipeline.settings
    raw = s.kafka.topics.raw
    batch_id = register(s.registry.url, raw, schemas.EVENT_BATCH)
    writer = BatchWriter(schemas.EVENT_BATCH, batch_id)
    size = 999_000
    value = event_of_size(writer, size)
    after = writer.encode([avro_event(now_ms(), user_id=f"after-{i}") for i in range(10)])
    producer = pipeline.producer()
    for v in (value, after):
        producer.produce(raw, value=v)
    assert producer.flush(30) == 0, "Kafka refused a message under its size limit"
    worker = pipeline.start_worker()
    try:
        wait_for(lambda: pipeline.stored() == 11, SETTLE_S, "the big event and the 10 after it")
    except AssertionError:
        _fail_stuck(
            worker,
            (
                f"a valid {size}-byte event was not stored: its Arrow block for events.clean is "
                "a few KB bigger than the raw message (encode_blocks cannot split one row), over "
                "the worker producer's max_request_size (1,000,000); aiokafka refuses it and "
                "_produce_all retries that forever as if Kafka were down. Worker log:\n"
                + _log_lines(pipeline, "_retrying")
            ),
        )
    assert pipeline.consume_all(s.kafka.topics.dlq, expected=0, timeout_s=2) == []
    assert worker.alive()


def test_a_tombstone_on_the_raw_topic_is_dead_lettered_and_never_stops_the_worker(
    pipeline: Pipeline,
) -> None:
    """A null value is a legal Kafka record any producer may write (a delete marker)."""
    s = pipeline.settings
    raw = s.kafka.topics.raw
    batch_id = register(s.registry.url, raw, schemas.EVENT_BATCH)
    writer = BatchWriter(schemas.EVENT_BATCH, batch_id)
    producer = pipeline.producer()
    producer.produce(raw, value=None, key=b"some-key")
    producer.produce(
        raw, value=writer.encode([avro_event(now_ms(), user_id=f"after-{i}") for i in range(5)])
    )
    assert producer.flush(30) == 0
    worker = pipeline.start_worker()
    try:
        wait_for(lambda: pipeline.stored() == 5, SETTLE_S, "the 5 events after the tombstone")
    except AssertionError:
        _fail_stuck(
            worker,
            (
                "a record with a null value on events.raw stopped the validate stage (the worker "
                "process lives on, consuming nothing):\n"
                + _log_lines(pipeline, "Crashed", "TypeError", 'File "/')
            ),
        )
    letters = pipeline.consume_all(s.kafka.topics.dlq, expected=1, timeout_s=SETTLE_S)
    assert len(letters) == 1 and letters[0].key() == b"some-key", (
        "the tombstone was not dead-lettered: like any message that cannot be decoded, it must "
        f"give one letter (got {len(letters)})"
    )
    try:
        wait_for(lambda: _dlq_rows(pipeline) == 1, SETTLE_S, "the tombstone's row in dlq")
    except AssertionError:
        _fail_stuck(
            worker,
            "the tombstone's dead letter (a null value) never reached the dlq table:\n"
            + _log_lines(pipeline, "Crashed", "Error", 'File "/'),
        )
    assert worker.alive()


# ---------------------------------------------------------------------------------------------
# Hostile producers: forged redrive headers, forged clocks (issue 8)
# ---------------------------------------------------------------------------------------------

HOUR_MS = 3_600_000
# Kafka CreateTimes a producer can set on a message. Ahead of the worker's clock, the worker's
# clock is used instead; 1 ms (1970) dates the message before any of today's events, which then
# run more than a day ahead of their receive time: dead letters.
CLOCKS = ["own", "hour_ahead", "year_3000", "2^62", "1970"]


def create_time(clock: str) -> int | None:
    """The CreateTime to set, None to let the producer's client stamp the real time."""
    return {"own": None, "hour_ahead": now_ms() + HOUR_MS, "year_3000": YEAR_3000_MS,
            "2^62": 2**62, "1970": 1}[clock]


# Redrive headers that do not describe a letter: the message is one BadRedrive letter.
GARBLED: list[tuple[str, bytes | None]] = [
    (dlq.H_EVENT_INDEX, b"-1"),
    (dlq.H_EVENT_INDEX, b"\xff\xfe"),
    (dlq.H_EVENT_INDEX, b" 1"),
    (dlq.H_SOURCE_OFFSET, str(2**64).encode()),
    (dlq.H_SOURCE_PARTITION, None),
    (dlq.H_SOURCE_TOPIC, b"not a topic"),
    (dlq.H_ATTEMPT, b"0"),
    (dlq.H_FIRST_FAILED_AT, str(2**62).encode()),
    (dlq.H_REDRIVE_OF, b"yes"),
]


@st.composite
def timed_events(draw: st.DrawFn) -> tuple[dict[str, Any], bool]:
    """(an event, whether it is valid when its message's entry time is honest)."""
    now = now_ms()
    kind = draw(st.sampled_from(["now", "skewed", "old", "extreme"]))
    if kind == "now":
        ts, received = now + draw(st.integers(-60_000, 60_000)), now
    elif kind == "skewed":  # the producer's clock runs an hour ahead, and it says so twice
        ts = received = now + HOUR_MS
    elif kind == "old":  # an offline client's backlog, received now
        ts, received = now - draw(st.integers(1, 300)) * DAY_MS, now
    else:
        ts = draw(st.sampled_from(EXTREME_TIMES))
        received = draw(st.sampled_from([ts, now]))
    ev = avro_event(received, timestamp=ts, event_name=draw(names),
                    user_id=draw(st.text(min_size=1, max_size=20)))
    return ev, kind != "extreme"


def test_forged_headers_and_clocks_keep_every_event_accounted_for_and_the_pipeline_flowing(
    pipeline: Pipeline,
) -> None:
    """Issue 8's hostile producer, with one worker running throughout.

    Each message may carry forged rv.* headers (copied without the redrive marker, a
    well-formed redrive of one of its events, an index it does not hold, garbled values) and a
    forged Kafka CreateTime; its events may carry clocks an hour ahead or times no column holds.
    Every event read ends stored, dead-lettered or, for the other events of a redriven batch,
    skipped on purpose: stored = valid and the letters are exactly the expected (bytes, index)
    pairs. Then one producer an hour ahead must not make its partition's other events late, the
    rollups must still equal the raw events, and events sent last must still be stored.
    """
    s = pipeline.settings
    raw = s.kafka.topics.raw
    writer = BatchWriter(schemas.EVENT_BATCH, register(s.registry.url, raw, schemas.EVENT_BATCH))
    ledger = Ledger()
    skipped = 0
    producer = pipeline.producer()
    worker = pipeline.start_worker()

    def send(value: bytes, headers: list[tuple[str, bytes | None]], create: int | None,
             partition: int | None = None) -> None:
        kwargs: dict[str, Any] = {"headers": headers} if headers else {}
        if create is not None:
            kwargs["timestamp"] = create
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(raw, value=value, **kwargs)
        producer.poll(0)

    @settings(deadline=None, max_examples=150, database=None)
    @given(
        events=st.lists(timed_events(), max_size=8),
        clock=st.sampled_from(CLOCKS),
        headers_kind=st.sampled_from(["none", "copied", "redrive", "index_out", "garbled"]),
        data=st.data(),
    )
    def hostile(events: list[tuple[dict[str, Any], bool]], clock: str, headers_kind: str,
                data: st.DataObject) -> None:
        nonlocal skipped
        value = writer.encode([e for e, _ in events])
        create = create_time(clock)
        fates = [ok and clock != "1970" for _, ok in events]
        letter = {
            dlq.H_REDRIVE_OF: b"0:1", dlq.H_SOURCE_TOPIC: raw.encode(),
            dlq.H_SOURCE_PARTITION: str(data.draw(st.integers(0, 3))).encode(),
            dlq.H_SOURCE_OFFSET: str(data.draw(st.integers(0, 10**6))).encode(),
            dlq.H_ATTEMPT: b"2", dlq.H_FIRST_FAILED_AT: str(now_ms() - 60_000).encode(),
        }
        headers: list[tuple[str, bytes | None]] = []
        if headers_kind == "copied":  # rv.* headers without the redrive marker: ignored
            copied = {k: v for k, v in letter.items() if k != dlq.H_REDRIVE_OF}
            copied[dlq.H_EVENT_INDEX] = data.draw(st.binary(max_size=3))
            headers = list(copied.items())
        elif headers_kind == "redrive" and events:  # the letter of one event of this batch
            index = data.draw(st.integers(0, len(events) - 1))
            headers = [*letter.items(), (dlq.H_EVENT_INDEX, str(index).encode())]
            send(value, headers, create)
            ledger.add(value, int(fates[index]), [] if fates[index] else [index])
            skipped += len(events) - 1
            return
        elif headers_kind in ("index_out", "redrive"):  # no such event in the message
            index = len(events) + data.draw(st.integers(0, 3))
            headers = [*letter.items(), (dlq.H_EVENT_INDEX, str(index).encode())]
            send(value, headers, create)
            ledger.add(value, 0, [None])
            return
        elif headers_kind == "garbled":
            name, bad = data.draw(st.sampled_from(GARBLED))
            headers = [(k, v) for k, v in letter.items() if k != name]
            if bad is not None:
                headers.append((name, bad))
            send(value, headers, create)
            ledger.add(value, 0, [None])
            return
        send(value, headers, create)
        if not events:
            ledger.add(value, 0, [None])  # an empty batch
        else:
            ledger.add(value, sum(fates), [i for i, ok in enumerate(fates) if not ok])

    hostile()
    assert producer.flush(30) == 0

    # One partition: a producer whose clock runs an hour ahead, then 50 honest events of now.
    now = now_ms()
    ahead = [avro_event(now + HOUR_MS, event_name="skewed_clock", user_id=f"s{i}") for i in range(5)]
    honest = [avro_event(now, timestamp=now - 20_000, event_name="honest_now", user_id=f"h{i}")
              for i in range(50)]
    send(writer.encode(ahead), [], now + HOUR_MS, partition=0)
    send(writer.encode(honest), [], None, partition=0)
    ledger.add(None, 55)
    assert producer.flush(30) == 0

    letters_expected = sum(ledger.letters.values())
    wait_for(lambda: pipeline.stored() >= ledger.valid, 120, f"{ledger.valid} valid events stored")
    letters = pipeline.consume_all(s.kafka.topics.dlq, expected=letters_expected, timeout_s=60)
    got = Counter[tuple[bytes | None, int | None]]()
    for m in letters:
        h = dlq.parse_headers(m.headers())
        assert h["rv.source_topic"] == raw and h["rv.reason"], h
        index = h.get("rv.event_index")
        got[(m.value(), int(index) if index is not None else None)] += 1
    missing, extra = ledger.letters - got, got - ledger.letters
    assert not missing and not extra, (
        f"dead letters: {len(letters)} for {letters_expected} expected; missing "
        f"{[(v[:30] if v else v, i) for v, i in missing][:5]}, unexpected "
        f"{[(v[:30] if v else v, i) for v, i in extra][:5]}"
    )
    assert pipeline.stored() == ledger.valid, f"{skipped} events skipped as redrive siblings"
    # Every stored time fits every column, and no receive time is ahead of the worker's clock.
    out_of_range = pipeline.scalar(
        "SELECT countIf(ts < toDateTime64('1970-01-01', 3, 'UTC')"
        " OR ts > toDateTime64('2106-02-07 06:28:15.999', 3, 'UTC')"
        " OR received_at > now64(3) OR received_at < toDateTime64('1970-01-01', 3, 'UTC'))"
        " FROM events"
    )
    assert out_of_range == 0
    wait_for(
        lambda: pipeline.ch.query(
            "SELECT sum(count) + sum(late) FROM rollup_events_by_name_1m FINAL"
            " WHERE event_name = 'honest_now'"
        ).result_rows[0][0] == 50,
        60, "the honest events in the minute rollup",
    )
    honest_rollup = pipeline.ch.query(
        "SELECT sum(count), sum(late) FROM rollup_events_by_name_1m FINAL"
        " WHERE event_name = 'honest_now'"
    ).result_rows
    assert honest_rollup == [(50, 0)], (
        f"(count, late) of 50 honest events after a producer an hour ahead: {honest_rollup}"
    )
    reports = wait_for(lambda: _rollups_agree(pipeline), 90, "rollups equal to raw events")
    assert all(r.verdict == "exact" for r in reports)
    # ... and the pipeline still flows: events sent last are stored.
    after = writer.encode([avro_event(now_ms(), user_id=f"after-{i}") for i in range(10)])
    send(after, [], None)
    assert producer.flush(30) == 0
    wait_for(lambda: pipeline.stored() == ledger.valid + 10, 60, "the 10 events sent last")
    wait_for(lambda: _dlq_rows(pipeline) == letters_expected, 30, f"{letters_expected} dlq rows")
    assert worker.alive()


def _rollups_agree(pipeline: Pipeline) -> Any:
    reports = verify(pipeline.ch, pipeline.settings.aggregate.rollups)
    return reports if all(r.verdict == "exact" for r in reports) else None
