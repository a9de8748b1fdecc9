"""The SDK's batching, backoff and delivery rules, without services (fake transports and a
local stdlib HTTP server standing in for the collector's answers)."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import ClassVar

import pytest

from rearview_sdk import (
    Backoff,
    Buffer,
    Client,
    DeliveryError,
    DeliveryFailed,
    EventRejected,
    HttpTransport,
    InvalidEvent,
    QueueFull,
)
from rearview_sdk.events import Event, make_event
from rearview_sdk.transports import Refused, Retryable, Sent, retry_after

FAST = Backoff(initial_s=0.001, max_s=0.01)


def test_buffer_is_due_by_count_bytes_or_interval() -> None:
    b: Buffer[int] = Buffer(capacity=10, max_events=3, max_bytes=100, interval_s=0.5)
    assert b.due_at() is None
    b.add(1, 10, now=100.0)
    b.add(2, 10, now=100.2)
    assert b.due_at() == 100.5  # the oldest event's wait
    b.add(3, 10, now=100.3)
    assert b.due_at() == float("-inf")  # max_events
    assert b.take() == [1, 2, 3] and b.due_at() is None
    b.add(4, 60, now=101.0)
    b.add(5, 60, now=101.0)
    assert b.due_at() == float("-inf")  # max_bytes
    assert b.take() == [4]  # the next batch stays under max_bytes...
    b.add(6, 500, now=101.0)
    assert b.take() == [5]
    assert b.take() == [6]  # ...but an event larger than it still goes, alone


def test_buffer_refuses_past_capacity() -> None:
    b: Buffer[int] = Buffer(capacity=2)
    assert b.add(1, 1, 0) and b.add(2, 1, 0)
    assert not b.add(3, 1, 0)
    assert len(b) == 2 and b.clear() == [1, 2] and len(b) == 0


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    low, high = Backoff(0.1, 10, random=lambda: 0.0), Backoff(0.1, 10, random=lambda: 1.0)
    assert [low.delay(n) for n in range(4)] == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert [high.delay(n) for n in range(4)] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert high.delay(50) == 10 and low.delay(50) == 5
    assert low.delay(0, retry_after_s=7) == 7 and high.delay(0, retry_after_s=7) == pytest.approx(7.7)
    assert low.delay(0, retry_after_s=3600) == 60  # capped


def test_retry_after_header() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("Wed, 21 Oct 2026 07:28:05 GMT",
                       now=datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()) == 5.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_make_event_fixes_id_time_and_canonical_properties() -> None:
    ev = make_event("buy", 42, {"price": 19.5, "qty": 2.0, "ok": True, "gone": None},
                    timestamp=datetime(2026, 1, 1, tzinfo=UTC))
    assert ev["user_id"] == "42" and uuid.UUID(ev["event_id"])
    assert ev["timestamp"] == 1_767_225_600_000
    assert ev["properties"] == {"price": "19.5", "qty": "2", "ok": "true"}
    with pytest.raises(ValueError, match="properties.x is an object"):
        make_event("e", "u", {"x": {"nested": 1}})


class FakeTransport:
    def __init__(self, answers: list[object]) -> None:
        self.answers = answers  # exceptions to raise or Sent to return, in order; then Sent()
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def send(self, batch: Sequence[Event]) -> Sent:
        self.gate.wait()
        self.batches.append([e["event_id"] for e in batch])
        answer = self.answers.pop(0) if self.answers else Sent()
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, Sent)
        return answer

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


def _client(transport: FakeTransport, errors: list[DeliveryError], **kw: object) -> Client:
    return Client(transport=transport, on_error=errors.append, backoff=FAST, **kw)  # type: ignore[arg-type]


def test_retryable_failures_are_sent_again_with_the_same_ids() -> None:
    t = FakeTransport([Retryable("503"), Retryable("reset", retry_after_s=0.01)])
    errors: list[DeliveryError] = []
    c = _client(t, errors, batch_size=10)
    ids = [c.track("e", "u") for _ in range(10)]
    assert c.flush(5)
    assert t.batches == [ids, ids, ids] and not errors and c.sent == 10
    c.shutdown()


def test_refused_batches_are_not_retried_and_go_to_on_error() -> None:
    t = FakeTransport([Refused("HTTP 401: no key"), Sent(rejected=[(1, "user_id: too long")])])
    errors: list[DeliveryError] = []
    c = _client(t, errors, batch_size=2)
    a = [c.track("e", "u") for _ in range(2)]
    b = [c.track("e", "u") for _ in range(2)]
    assert c.flush(5)
    assert t.batches == [a, b]
    assert [type(e) for e in errors] == [EventRejected, EventRejected]
    assert [ev["event_id"] for ev in errors[1].events] == [b[1]]
    assert (c.sent, c.failed) == (1, 3)
    c.shutdown()


def test_retries_run_out() -> None:
    t = FakeTransport([Retryable("down")] * 4)
    errors: list[DeliveryError] = []
    c = _client(t, errors, max_retries=2)
    c.track("e", "u")
    assert c.flush(5)
    assert len(t.batches) == 3 and isinstance(errors[0], DeliveryFailed) and c.failed == 1
    c.shutdown()


def test_full_queue_drops_counts_and_reports_without_blocking() -> None:
    t = FakeTransport([])
    t.gate.clear()  # the sender is stuck on its first batch
    errors: list[DeliveryError] = []
    c = _client(t, errors, max_queue_size=5, batch_size=1)
    started = time.monotonic()
    for _ in range(100):
        c.track("e", "u")
    assert time.monotonic() - started < 1
    # One event in flight, five queued, the rest dropped.
    assert 94 <= c.dropped <= 95 and len(errors) == c.dropped
    assert all(isinstance(e, QueueFull) for e in errors)
    t.gate.set()
    assert c.flush(5) and c.sent == 100 - c.dropped
    c.shutdown()


def test_track_never_raises() -> None:
    errors: list[DeliveryError] = []
    c = _client(FakeTransport([]), errors)
    assert c.track("", "u") and c.track("e", None) and c.track("e", "u", {"a": [1]})  # type: ignore[arg-type]
    assert c.track("e", "u", timestamp="yesterday") and c.track("e", "u", event_id="x")  # type: ignore[arg-type]
    assert [type(e) for e in errors] == [InvalidEvent] * 5

    def boom(_: DeliveryError) -> None:
        raise RuntimeError("a broken callback")

    c2 = Client(transport=FakeTransport([]), on_error=boom)
    c2.track("", "u")  # the callback's exception stays inside the SDK
    c.shutdown()
    c2.shutdown()
    c.track("e", "u")  # after shutdown: reported, not raised
    assert isinstance(errors[-1], DeliveryFailed)


def test_shutdown_is_bounded_and_reports_what_is_left() -> None:
    t = FakeTransport([Retryable("down")] * 1000)
    errors: list[DeliveryError] = []
    c = Client(transport=t, on_error=errors.append, backoff=Backoff(0.2, 0.2), max_retries=1000,
               batch_size=1)
    for _ in range(3):
        c.track("e", "u")
    started = time.monotonic()
    c.shutdown(timeout_s=0.5)
    assert time.monotonic() - started < 1.5
    assert sum(len(e.events) for e in errors) == 3 and c.failed == 3


# -- HttpTransport against a local server standing in for the collector --------------------

class _Collector(http.server.BaseHTTPRequestHandler):
    answers: ClassVar[list[tuple[int, dict[str, str], dict[str, object]]]] = []
    seen: ClassVar[list[tuple[dict[str, str], list[dict[str, object]]]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.seen.append((dict(self.headers), json.loads(body)["events"]))
        status, headers, doc = self.answers.pop(0) if self.answers else (202, {}, {"accepted": 1})
        data = json.dumps(doc).encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    _Collector.answers, _Collector.seen = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_transport_sends_gzip_with_the_key(collector: str) -> None:
    t = HttpTransport(collector, "wk_123")
    batch = [make_event("e", "u") for _ in range(3)]
    assert t.send(batch) == Sent()
    headers, events = _Collector.seen[0]
    assert headers["Authorization"] == "Bearer wk_123" and headers["Content-Encoding"] == "gzip"
    assert [e["event_id"] for e in events] == [e["event_id"] for e in batch]


def test_http_transport_outcomes(collector: str) -> None:
    t = HttpTransport(collector, gzip_level=None)
    batch = [make_event("e", "u") for _ in range(3)]
    _Collector.answers = [(429, {"Retry-After": "2"}, {"error": "slow down"})]
    with pytest.raises(Retryable) as limited:
        t.send(batch)
    assert limited.value.retry_after_s == 2.0
    _Collector.answers = [(503, {}, {"error": "the pipeline is temporarily unavailable"})]
    with pytest.raises(Retryable):
        t.send(batch)
    _Collector.answers = [(401, {}, {"error": "no key"})]
    with pytest.raises(Refused, match="401"):
        t.send(batch)
    # A 400 naming an event: the others are sent again without it.
    _Collector.seen.clear()
    _Collector.answers = [(400, {}, {"error": "events[1]: timestamp is too old"}),
                          (400, {}, {"error": "events[1]: user_id is too long"})]
    sent = t.send(batch)
    assert sent.rejected == [(1, "timestamp is too old"), (2, "user_id is too long")]
    assert [len(events) for _, events in _Collector.seen] == [3, 2, 1]


def test_http_transport_network_errors_are_retryable() -> None:
    with pytest.raises(Retryable):
        HttpTransport("http://127.0.0.1:9", timeout_s=1).send([make_event("e", "u")])
