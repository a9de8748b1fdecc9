"""Ordinary client errors are one log line at info or warning, never an ERROR with a traceback."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.integration.conftest import Pipeline, wait_for

pytestmark = pytest.mark.integration


def _api_log(pipeline: Pipeline) -> str:
    logs = [c.log_path for c in pipeline.children if c.name.startswith("api") and c.log_path]
    return "\n".join(p.read_text(errors="replace") for p in logs)


def _raw_request(url: str, request: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_ordinary_client_errors_log_one_line_without_a_traceback(pipeline: Pipeline) -> None:
    url = pipeline.start_api()
    event = {"event": "button_click", "user_id": "u1", "properties": {}}
    with httpx.Client(base_url=url, timeout=10) as http:
        huge_agent = http.post("/v1/track", json=event, headers={"User-Agent": "Mozilla/5.0 " + "x" * 16_000})
        bad_json = http.post("/v1/track", content=b"{not json")
        missing = http.post("/v1/track", json={"event": "button_click"})
        not_found = http.get("/v1/nothing-here")
    assert huge_agent.status_code == 400
    assert (bad_json.status_code, missing.status_code, not_found.status_code) == (400, 400, 404)
    garbage = _raw_request(url, b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
    assert garbage.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request"), garbage[:200]

    log = wait_for(lambda: (text := _api_log(pipeline)).count("request_refused") >= 5 and text, 10,
                   "the refusals in the api log")
    assert "Traceback" not in log, log[-3000:]
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert not [line for line in lines if line.get("level") in ("error", "critical")], log[-3000:]
    refused = [line for line in lines if line.get("event") == "request_refused"]
    assert sorted(line["status"] for line in refused) == [400, 400, 400, 400, 404], refused
    assert all(line["level"] in ("info", "warning") for line in refused)
    assert "x" * 100 not in log  # the offending header itself is not logged
