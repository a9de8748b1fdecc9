"""Projects and API keys on the real stack: the CLI, the collector (HTTP and gRPC), every read
path's isolation between projects, revocation across processes, rate limits, admin operations
and the dashboard's key in a real browser."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from app.auth import KeyStore
from rearview_sdk import Client
from schemas import analytics_pb2, analytics_pb2_grpc
from tests.integration.conftest import Pipeline, Services, make_pipeline, wait_for
from tests.integration.test_dashboard import browser  # noqa: F401 - the fixture
from tests.integration.test_projects import _send_kafka

pytestmark = pytest.mark.integration



def _keyed(services: Services, tmp_path: Path, **auth: Any) -> Pipeline:
    return make_pipeline(services, tmp_path, auth={"required": True, "refresh_s": 1.0, **auth})


def _keys(p: Pipeline, project: str) -> dict[str, str]:
    """A new project with a key of each kind."""
    store = KeyStore(p.ch)
    store.create_project(project)
    return {kind: store.create_key(project, kind)[1] for kind in ("write", "read", "admin")}  # type: ignore[arg-type]


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_projects_and_keys_from_the_cli(services: Services, tmp_path: Path) -> None:
    p = _keyed(services, tmp_path)
    try:
        made = p.cli("projects", "create", "alpha", "--name", "Alpha shop")
        assert made.returncode == 0 and "created project alpha" in made.stdout, made.stderr
        again = p.cli("projects", "create", "alpha")
        assert again.returncode == 1 and "exists already" in again.stderr
        bad = p.cli("projects", "create", "not a project")
        assert bad.returncode == 1 and "must match" in bad.stderr

        created = p.cli("keys", "create", "--project", "alpha", "--kind", "read", "--name", "grafana")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert key.startswith("rvr_") and "cannot be shown again" in created.stderr
        unknown = p.cli("keys", "create", "--project", "nowhere", "--kind", "write")
        assert unknown.returncode == 1 and "no project 'nowhere'" in unknown.stderr

        # Only the hash is stored; the list shows the public id, never the secret.
        key_id = key.split("_")[1]
        stored = p.ch.query("SELECT key_id, secret_sha256 FROM api_keys FINAL").result_rows
        assert [(r[0], bytes(r[1]) if not isinstance(r[1], str) else r[1].encode("latin-1")) for r in stored] \
            == [(key_id, hashlib.sha256(key.encode()).digest())]
        listed = p.cli("keys", "list", "--project", "alpha")
        assert key_id in listed.stdout and "active" in listed.stdout and key.split("_")[2] not in listed.stdout
        projects = p.cli("projects", "list")
        assert "alpha" in projects.stdout and "Alpha shop" in projects.stdout

        revoked = p.cli("keys", "revoke", key_id)
        assert revoked.returncode == 0 and f"revoked read key {key_id} of project alpha" in revoked.stdout
        assert "revoked" in p.cli("keys", "list").stdout
        missing = p.cli("keys", "revoke", "nosuchkeyid0")
        assert missing.returncode == 1 and "no key" in missing.stderr

        # Replay rebuilds every project's tables: an operator's work, with an admin key.
        refused = p.cli("replay", "start", "events", "--dry-run")
        assert refused.returncode == 1 and "an admin key is required" in refused.stderr
        admin = p.cli("keys", "create", "--project", "alpha", "--kind", "admin").stdout.strip()
        planned = p.cli("replay", "start", "events", "--dry-run", "--key", admin)
        assert planned.returncode == 0, planned.stderr
    finally:
        p.close()


def test_the_collector_takes_write_keys_and_the_project_comes_from_the_key(
        services: Services, tmp_path: Path) -> None:
    p = _keyed(services, tmp_path)
    try:
        alpha, beta = _keys(p, "alpha"), _keys(p, "beta")
        p.start_worker()
        api = p.start_api()
        event = {"event": "signup", "user_id": "u1", "project_id": "beta"}  # a payload's project is ignored

        refused = httpx.post(f"{api}/v1/batch", json={"events": [event]})
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
        assert "write key is required" in refused.json()["error"]
        assert httpx.post(f"{api}/v1/batch", json={"events": [event]}, headers=_auth(alpha["read"])).status_code == 403
        forged = alpha["write"][:-4] + ("AAAA" if not alpha["write"].endswith("AAAA") else "BBBB")
        assert httpx.post(f"{api}/v1/batch", json={"events": [event]}, headers=_auth(forged)).status_code == 401

        assert httpx.post(f"{api}/v1/batch", json={"events": [event] * 5},
                          headers=_auth(alpha["write"])).status_code == 202
        # A browser's beacon cannot set headers: the key may come in the body.
        beacon = httpx.post(f"{api}/v1/track", content=json.dumps({**event, "key": beta["write"]}),
                            headers={"Content-Type": "text/plain"})
        assert beacon.status_code == 202, beacon.text

        with grpc.insecure_channel(p.urls["api_grpc"]) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            proto = analytics_pb2.Event(event_name="signup", user_id="u2")
            for metadata, code in [((), grpc.StatusCode.UNAUTHENTICATED),
                                   ((("authorization", f"Bearer {beta['read']}"),), grpc.StatusCode.PERMISSION_DENIED)]:
                with pytest.raises(grpc.RpcError) as failed:
                    stub.TrackEvent(proto, metadata=metadata)
                assert failed.value.code() == code
            stub.TrackEvent(proto, metadata=(("authorization", f"Bearer {beta['write']}"),))

        def projects() -> dict[str, int]:
            return dict(p.ch.query("SELECT project_id, count() FROM events GROUP BY 1").result_rows)

        wait_for(lambda: projects() == {"alpha": 5, "beta": 2}, 60, "alpha 5, beta 2", describe=lambda: str(projects()))
    finally:
        p.close()


# --- isolation ------------------------------------------------------------------------------------

def _dataset(project: str, now_ms: int) -> list[dict[str, Any]]:
    """Events of the two minutes before *now_ms* whose names, property keys, values and users
    belong to *project* alone, plus a shared event name (`signup`) with different counts."""
    n, out = (30 if project == "alpha" else 45), []
    for i in range(n):
        ts = now_ms - 60_000 - i * 1_000
        user = f"{project}-user-{i % (7 if project == 'alpha' else 11)}"
        out.append({"event": f"{project}_view", "user_id": user, "timestamp": ts,
                    "properties": {f"{project}_plan": f"{project}-gold", "country": project.upper()[:2]}})
        if i % 3 == 0:
            out.append({"event": "signup", "user_id": user, "timestamp": ts + 10})
    return out


def _letter(project: str, now_ms: int) -> dict[str, Any]:
    """An event the worker dead-letters (its time is years before it was received)."""
    return {"event": f"{project}_late", "user_id": f"{project}-user-0", "timestamp": now_ms - 5 * 365 * 86_400_000}


# "2h" is the previous and the current clock hour ("1h" alone would lose the events sent a
# minute before the hour turns).
QUERIES = [
    {"kind": "timeseries", "interval": "minute", "date_range": "2h"},
    {"kind": "breakdown", "dimensions": ["event_name", "country"], "date_range": "2h", "source": "events"},
    {"kind": "breakdown", "dimensions": ["event_name"], "date_range": "2h", "source": "rollup"},
    {"kind": "funnel", "steps": [{"event": "alpha_view"}, {"event": "signup"}], "date_range": "2h"},
    {"kind": "funnel", "steps": [{"event": "beta_view"}, {"event": "signup"}], "date_range": "2h"},
    {"kind": "retention", "start_event": {"event": "signup"}, "period": "day", "date_range": "7d"},
    {"kind": "uniques", "date_range": "2h"},
]


def test_every_read_path_sees_its_keys_project_only(services: Services, tmp_path: Path, browser: Any) -> None:  # noqa: F811
    p = _keyed(services, tmp_path)
    try:
        keys = {"alpha": _keys(p, "alpha"), "beta": _keys(p, "beta")}
        p.start_worker()
        api = p.start_api()
        now_ms = int(time.time() * 1000)
        sent = {project: _dataset(project, now_ms) for project in keys}
        for project, events in sent.items():
            assert httpx.post(f"{api}/v1/batch", json={"events": events},
                              headers=_auth(keys[project]["write"]), timeout=30).status_code == 202
            _send_kafka(p, [_letter(project, now_ms)], project)  # a service of the project, straight to Kafka
        total = sum(len(v) for v in sent.values())
        wait_for(lambda: p.stored() == total and p.scalar("SELECT count() FROM dlq FINAL") == 2, 90,
                 "both projects stored, two dead letters")
        for project, events in sent.items():
            body = {"kind": "timeseries", "interval": "minute", "date_range": "2h", "source": "rollup"}

            def rolled(project: str = project, body: dict[str, Any] = body) -> int:
                answer = httpx.post(f"{api}/v1/query", json=body, headers=_auth(keys[project]["read"])).json()
                return sum(r["events"] for r in answer["rows"])

            wait_for(lambda: rolled() == len(events), 60, f"{project}'s rollups",  # noqa: B023
                     describe=lambda: str(rolled()))

        for project, mine in keys.items():
            other = "beta" if project == "alpha" else "alpha"
            headers = _auth(mine["read"])
            answers: list[Any] = []

            def get(path: str, headers: dict[str, str] = headers, answers: list[Any] = answers,
                    other: str = other) -> Any:
                response = httpx.get(f"{api}{path}", headers=headers, timeout=30)
                assert response.status_code == 200, (path, response.text)
                if other not in path:  # an answer may repeat what it was asked
                    answers.append(response.json())
                return response.json()

            events, users = sent[project], {e["user_id"] for e in sent[project]}
            by_name: dict[str, int] = {}
            for e in events:
                by_name[e["event"]] = by_name.get(e["event"], 0) + 1

            for body in QUERIES:
                response = httpx.post(f"{api}/v1/query", json=body, headers=headers, timeout=60)
                assert response.status_code == 200, (body, response.text)
                rows = response.json()["rows"]
                if other not in json.dumps(body):  # a funnel of the other's events names them
                    answers.append(response.json())
                if body["kind"] == "timeseries":
                    assert sum(r["events"] for r in rows) == len(events)
                elif body["kind"] == "breakdown":
                    got = {r["event_name"]: r["events"] for r in rows if r["events"] and r["event_name"] != "$other"}
                    assert got == by_name, (project, body)
                elif body["kind"] == "funnel":
                    assert rows[0]["users"] == (len({e["user_id"] for e in events if e["event"] == rows[0]["event"]}))
                elif body["kind"] == "uniques":
                    assert rows == [{"users": len(users)}]
            count = get("/v1/events/count")
            assert count["count"] == len(events)
            assert get(f"/v1/events/count?event_name={other}_view")["count"] == 0
            assert {e["event"] for e in get("/v1/schema/events")["events"]} == set(by_name)
            assert f"{other}_plan" not in {r["property"] for r in get("/v1/schema/properties")["properties"]}
            assert get(f"/v1/schema/values?property=prop:{other}_plan")["values"] == []
            assert {v["value"] for v in get("/v1/schema/values?property=country")["values"]} == {project.upper()[:2]}
            live = wait_for(lambda: (a := get("/v1/live"))["top_events"] and a, 30, "live figures")
            assert {t["event_name"] for t in live["top_events"]} <= set(by_name)
            health = get("/v1/pipeline")
            assert health["dead_letters"]["total"] == 1 and health["workers"] == []
            # An admin key, an operator's: the workers' figures, still its project's letters.
            operator = get("/v1/pipeline", _auth(mine["admin"]))
            assert operator["workers_total"] == 1 and operator["dead_letters"]["total"] == 1

            # Not a name, value, user or count of the other project in any answer (but the
            # request each answer repeats).
            text = json.dumps([{k: v for k, v in a.items() if k != "query"} for a in answers])
            for word in (f"{other}_view", f"{other}_plan", f"{other}-gold", f"{other}-user", f"{other}_late"):
                assert word not in text, (project, word)

            listed = p.cli("dlq", "list", "--project", project)
            assert listed.returncode == 0 and listed.stdout.count("InvalidField") == 1, listed.stdout
            stats = p.cli("dlq", "stats", "--project", project)
            assert stats.stdout.strip().endswith("1 letters"), stats.stdout

        # The dashboard: the key from the address, kept in the browser, sent with each request.
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(f"{api}/explore#key={keys['beta']['read']}")
            page.wait_for_function("() => window.rearview && window.rearview.status.totals === 'ready'", timeout=30_000)
            assert "#key=" not in page.url
            assert page.evaluate("() => localStorage.getItem('rearview.key')") == keys["beta"]["read"]
            drawn = json.dumps(page.evaluate("() => window.rearview.answers"))
            assert "beta_view" in drawn and "alpha_view" not in drawn and "alpha-user" not in drawn
            assert page.locator("#key-form").is_hidden()
            # A key that is refused asks for another.
            page.evaluate("() => localStorage.setItem('rearview.key', 'rvr_aaaaaaaaaaaa_" + "A" * 43 + "')")
            page.goto(f"{api}/explore")
            page.wait_for_selector("#key-form:not([hidden])", timeout=30_000)
            assert "refused" in page.locator("#key-message").inner_text()
        finally:
            context.close()

        # Redrive is an admin operation, limited to the admin key's project.
        # So is beginning a log epoch (every position moves).
        for key, why in [(None, "an admin key is required"), (keys["alpha"]["read"], "a read key cannot do this")]:
            for command in (("dlq", "redrive"), ("epochs", "begin")):
                denied = p.cli(*command, *(("--key", key) if key else ()))
                assert denied.returncode == 1 and why in denied.stderr, (command, denied.stderr)
        assert "no log epoch" in p.cli("epochs", "status").stdout
        redriven = p.cli("dlq", "redrive", "--key", keys["beta"]["admin"])
        assert redriven.returncode == 0 and "redrove 1 letters" in redriven.stdout, redriven.stderr
        assert "InvalidField" in p.cli("dlq", "list", "--project", "alpha").stdout  # alpha's still pending
    finally:
        p.close()


def test_a_revoked_key_is_refused_by_every_api_within_5_seconds(services: Services, tmp_path: Path) -> None:
    p = make_pipeline(services, tmp_path, auth={"required": True})  # the default reload interval
    try:
        key = _keys(p, "alpha")["read"]
        apis = [p.start_api(), p.start_api()]
        for api in apis:
            assert httpx.get(f"{api}/v1/events/count", headers=_auth(key)).status_code == 200
        assert p.cli("keys", "revoke", key).returncode == 0
        revoked_at = time.monotonic()

        def refused_everywhere() -> bool:
            return all(httpx.get(f"{a}/v1/events/count", headers=_auth(key)).status_code == 401 for a in apis)

        wait_for(refused_everywhere, 5, "both APIs to refuse the revoked key")
        assert time.monotonic() - revoked_at <= 5.5
    finally:
        p.close()


def test_a_key_over_its_rate_gets_429_with_retry_after_and_the_sdk_waits(
        services: Services, tmp_path: Path) -> None:
    p = _keyed(services, tmp_path, read_requests_per_s=1, read_burst_requests=2,
               write_events_per_s=200, write_burst_events=200)
    try:
        keys, spare = _keys(p, "alpha"), KeyStore(p.ch).create_key("alpha", "read")[1]
        p.start_worker()
        api = p.start_api()
        statuses = [httpx.get(f"{api}/v1/schema/events", headers=_auth(keys["read"])) for _ in range(3)]
        assert [r.status_code for r in statuses] == [200, 200, 429]
        assert int(statuses[2].headers["Retry-After"]) >= 1 and "over its rate" in statuses[2].json()["error"]
        assert httpx.get(f"{api}/v1/schema/events", headers=_auth(spare)).status_code == 200  # per key

        events = [{"event": "burst", "user_id": f"u{i}"} for i in range(200)]
        assert httpx.post(f"{api}/v1/batch", json={"events": events}, headers=_auth(keys["write"])).status_code == 202
        over = httpx.post(f"{api}/v1/batch", json={"events": events[:50]}, headers=_auth(keys["write"]))
        assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
        with grpc.insecure_channel(p.urls["api_grpc"]) as channel:
            stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
            batch = analytics_pb2.EventBatch(events=[analytics_pb2.Event(event_name="burst", user_id="g")] * 200)
            with pytest.raises(grpc.RpcError) as failed:
                stub.TrackBatch(batch, metadata=(("authorization", f"Bearer {keys['write']}"),))
            assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert dict(failed.value.trailing_metadata())["retry-after"] >= "1"

        # The SDK honours Retry-After and delivers everything, once.
        client = Client(api, keys["write"], batch_size=100, flush_interval_s=0.05)
        ids = [client.track("paced", f"u{i}") for i in range(600)]
        assert client.flush(60) and client.sent == 600 and client.failed == 0 and client.retries > 0
        client.shutdown()
        wait_for(lambda: p.scalar("SELECT uniqExact(event_id) FROM events WHERE event_name = 'paced'") == 600,
                 60, "600 paced events")
        assert p.scalar("SELECT count() FROM events WHERE event_name = 'paced'") == len(set(ids)) == 600
    finally:
        p.close()


@pytest.fixture
def open_pipeline(services: Services, tmp_path: Path) -> Iterator[Pipeline]:
    p = make_pipeline(services, tmp_path)  # auth off
    try:
        yield p
    finally:
        p.close()


def test_without_keys_the_api_says_so_and_serves_the_configured_project(open_pipeline: Pipeline) -> None:
    p = open_pipeline
    api = p.start_api()
    assert httpx.post(f"{api}/v1/track", json={"event": "e", "user_id": "u"}).status_code == 202
    assert httpx.get(f"{api}/v1/events/count").status_code == 200
    assert p.api_child is not None and p.api_child.log_path is not None
    assert "auth_disabled" in p.api_child.log_path.read_text()


def test_generate_sends_with_a_write_key_and_to_kafka_as_a_project(services: Services, tmp_path: Path) -> None:
    p = _keyed(services, tmp_path)
    try:
        keys = _keys(p, "alpha")
        p.start_worker()
        api = p.start_api()
        http = p.cli("generate", "--count", "200", "--url", api, "--key", keys["write"], "--seed", "1")
        assert http.returncode == 0, http.stderr
        without = p.cli("generate", "--count", "10", "--url", api)
        assert without.returncode != 0 and "401" in without.stderr
        kafka = p.cli("generate", "--count", "100", "--target", "kafka", "--project", "shop", "--seed", "2")
        assert kafka.returncode == 0, kafka.stderr
        wait_for(lambda: dict(p.ch.query("SELECT project_id, count() FROM events GROUP BY 1").result_rows)
                 == {"alpha": 200, "shop": 100}, 60, "200 alpha events, 100 shop events")
    finally:
        p.close()
