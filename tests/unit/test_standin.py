"""The stand-in `rearview up` puts on the API's port while it replaces the broker
(app/embedded/standin.py): it shares the port, and answers 503 with Retry-After and why."""

from __future__ import annotations

import socket

import httpx
import pytest

from app.embedded.process import free_port, port_taken
from app.embedded.standin import Unavailable

HOST = "127.0.0.1"


def _listening(port: int, reuse_port: bool) -> socket.socket:
    """A socket standing for the API's listener."""
    sock = socket.socket()
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, port))
    sock.listen()
    return sock


def test_every_request_gets_503_retry_after_and_why_until_the_stand_in_stops() -> None:
    port = free_port()
    api = _listening(port, reuse_port=True)  # as `up` starts its API (api.reuse_port)
    url = f"http://{HOST}:{port}"
    with Unavailable(HOST, port, "beginning a new log", retry_after_s=3):
        api.close()  # the API stops: the stand-in alone answers
        answer = httpx.post(f"{url}/v1/batch", json={"events": [{"event": "e", "user_id": "u"}]}, timeout=5)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "3"
        assert answer.json() == {"error": "beginning a new log"}
        assert httpx.get(f"{url}/health", timeout=5).status_code == 503  # not ready either
        assert httpx.head(f"{url}/explore", timeout=5).status_code == 503
    with pytest.raises(httpx.ConnectError):  # stopped: the port is free for the API again
        httpx.get(f"{url}/health", timeout=5)


def _raw_request(port: int, length: bytes, body: bytes = b"{}") -> bytes:
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: rearview\r\nContent-Length: " + length + b"\r\n\r\n" + body)
        return sock.recv(100)


def test_a_forged_or_stalled_body_length_still_gets_the_503() -> None:
    port = free_port()
    with Unavailable(HOST, port, "beginning a new log"):
        # Not a number, negative, 100 GB (once read whole: MemoryError, no answer), and a body
        # that stops short of its length (answered when the read times out).
        for length in (b"abc", b"-5", b"99999999999", b"100"):
            assert _raw_request(port, length).startswith(b"HTTP/1.0 503 "), length


def test_it_cannot_share_the_port_of_an_api_started_without_reuse_port() -> None:
    port = free_port()
    api = _listening(port, reuse_port=False)  # the default: a taken port is an error, not shared
    try:
        with pytest.raises(OSError), Unavailable(HOST, port, "x"):
            pass
    finally:
        api.close()


def test_a_port_shared_or_not_is_taken_and_a_closed_one_is_free() -> None:
    port = free_port()
    assert not port_taken(HOST, port)
    for reuse_port in (False, True):
        api = _listening(port, reuse_port)
        assert port_taken(HOST, port), reuse_port  # `up` refuses to share a port by accident
        api.close()
    assert not port_taken(HOST, port)
