"""The Python SDK against the real collector, worker and ClickHouse.

Exactly once is judged by event_id in the events table, without FINAL: what a plain query sees.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest

from rearview_sdk import AsyncClient, Backoff, Client, DeliveryError, KafkaTransport, QueueFull
from tests.integration.conftest import Pipeline, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _url(pipeline: Pipeline, transport: str) -> str:
    return pipeline.urls["api"] if transport == "http" else f"grpc://{pipeline.urls['api_grpc']}"


def _stored_ids(pipeline: Pipeline) -> list[str]:
    return [r[0] for r in pipeline.ch.query("SELECT toString(event_id) FROM events").result_rows]


def _exactly_once(pipeline: Pipeline, ids: list[str], timeout_s: float = 120) -> None:
    wanted = set(ids)
    wait_for(lambda: len(set(_stored_ids(pipeline)) & wanted) == len(ids), timeout_s,
             f"{len(ids)} events in ClickHouse",
             describe=lambda: f"{len(set(_stored_ids(pipeline)) & wanted)} stored")
    time.sleep(1.5)  # a late duplicate would show up now
    stored = _stored_ids(pipeline)
    assert len(stored) == len(set(stored)) == len(ids) and set(stored) == set(ids)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_collector_killed_and_restarted_mid_stream_every_event_once(
        pipeline: Pipeline, transport: str) -> None:
    pipeline.start_worker()
    api = pipeline.start_api()
    port, grpc_port = int(api.rsplit(":", 1)[1]), int(pipeline.urls["api_grpc"].rsplit(":", 1)[1])
    errors: list[DeliveryError] = []
    client = Client(_url(pipeline, transport), "wk_test", on_error=errors.append, batch_size=50,
                    flush_interval_s=0.05, max_retries=100, backoff=Backoff(0.05, 0.5),
                    timeout_s=5)
    ids: list[str] = []

    def produce() -> None:
        for i in range(6000):
            ids.append(client.track("sdk_event", f"u{i % 97}", {"i": i}))
            if i % 100 == 99:
                time.sleep(0.05)  # ~2,000 events/s for 3 s

    sender = threading.Thread(target=produce)
    sender.start()
    time.sleep(1.0)
    assert pipeline.api_child is not None
    pipeline.api_child.kill()  # SIGKILL by pid: requests in flight get no answer
    time.sleep(1.0)
    pipeline.start_api(grpc_port=grpc_port, port=port)
    sender.join()
    assert client.flush(120), "the SDK did not deliver its queue"
    assert not errors, errors[:3]
    assert client.sent == 6000 and client.dropped == client.failed == 0
    assert client.retries > 0  # the outage was seen, and ridden out
    _exactly_once(pipeline, ids)
    client.shutdown()


def test_a_full_queue_drops_and_counts(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    api = pipeline.start_api()
    dropped: list[QueueFull] = []
    client = Client(api, on_error=lambda e: dropped.append(e) if isinstance(e, QueueFull) else None,
                    max_queue_size=100, batch_size=20)
    ids = [client.track("burst", "u1", {"n": n}) for n in range(5000)]
    assert client.flush(60)
    assert client.dropped == len(dropped) > 0
    assert client.sent + client.dropped == 5000 and client.failed == 0
    lost = {e.events[0]["event_id"] for e in dropped}
    _exactly_once(pipeline, [i for i in ids if i not in lost])
    client.shutdown()


FORK_SCRIPT = textwrap.dedent("""
    import json, logging, os, sys
    from rearview_sdk import Client

    logging.basicConfig()  # a failure in the sender shows with its traceback

    client = Client(sys.argv[1], max_queue_size=1000, flush_interval_s=0.2)
    parent = [client.track("before_fork", "p") for _ in range(150)]
    pid = os.fork()
    if pid == 0:
        child = [client.track("in_child", "c") for _ in range(200)]
        print(json.dumps({"child": child}), flush=True)
        sys.exit(0)  # atexit sends the child's queue
    os.waitpid(pid, 0)
    parent += [client.track("after_fork", "p") for _ in range(100)]
    print(json.dumps({"parent": parent}), flush=True)
    # no flush(): atexit sends the rest, for at most exit_timeout_s
""")


def test_a_forked_child_keeps_sending_and_exit_flushes(pipeline: Pipeline, tmp_path: Path) -> None:
    pipeline.start_worker()
    api = pipeline.start_api()
    script = tmp_path / "fork.py"
    script.write_text(FORK_SCRIPT)
    done = subprocess.run([sys.executable, str(script), api], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stderr
    assert "not delivered" not in done.stderr, done.stderr
    parts = [json.loads(line) for line in done.stdout.splitlines()]
    child = next(p["child"] for p in parts if "child" in p)
    parent = next(p["parent"] for p in parts if "parent" in p)
    assert len(child) == 200 and len(parent) == 250
    _exactly_once(pipeline, child + parent)
    names = dict(pipeline.ch.query(
        "SELECT event_name, count() FROM events GROUP BY event_name").result_rows)
    assert names == {"before_fork": 150, "in_child": 200, "after_fork": 100}


def test_kafka_mode_writes_event_batches_the_worker_stores(pipeline: Pipeline) -> None:
    pipeline.start_worker()
    s = pipeline.settings
    errors: list[DeliveryError] = []
    client = Client(transport=KafkaTransport(s.kafka.bootstrap_servers, s.registry.url,
                                             topic=s.kafka.topics.raw),
                    on_error=errors.append, batch_size=500)
    ids = [client.track("from_service", f"u{i}", {"i": i, "price": 19.5}) for i in range(3000)]
    assert client.flush(60) and not errors
    _exactly_once(pipeline, ids)
    assert pipeline.scalar("SELECT count() FROM events WHERE properties['price'] = '19.5'") == 3000
    client.shutdown()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_async_client(pipeline: Pipeline, transport: str) -> None:
    pipeline.start_worker()
    pipeline.start_api()
    errors: list[DeliveryError] = []

    async def main() -> list[str]:
        client = AsyncClient(_url(pipeline, transport), "wk_test", on_error=errors.append,
                             batch_size=100)
        ids = [client.track("async_event", f"u{i}", {"i": i}) for i in range(1000)]
        assert await client.flush(30)
        assert client.sent == 1000
        ids.append(client.track("bad name!", "u"))  # the collector refuses it: on_error
        await client.shutdown()
        return ids

    ids = asyncio.run(main())
    assert [type(e).__name__ for e in errors] == ["EventRejected"]
    assert "event_name" in errors[0].reason
    _exactly_once(pipeline, ids[:-1])


def test_collector_accepts_gzip_and_limits_the_decompressed_body(pipeline: Pipeline) -> None:
    api = pipeline.start_api()
    body = gzip.compress(json.dumps({"events": [{"event": "e", "user_id": "u"}] * 10}).encode())
    resp = httpx.post(f"{api}/v1/batch", content=body, headers={"Content-Encoding": "gzip"})
    assert resp.status_code == 202 and resp.json() == {"accepted": 10}
    bomb = gzip.compress(b" " * (200 * 1024 * 1024))  # 200 KB that inflate to 200 MB
    resp = httpx.post(f"{api}/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"},
                      timeout=30)
    assert resp.status_code == 413 and "larger than" in resp.json()["error"]
    assert httpx.get(f"{api}/health").status_code == 200
