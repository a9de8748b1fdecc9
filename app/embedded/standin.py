"""A stand-in on the API's port while `rearview up` replaces its broker: 503 and Retry-After.

The collector must stop while the broker's log is drained and replaced (app/up.py,
`Stack.roll_log`), which takes several seconds. Without a stand-in, clients meet a refused
connection for that long, which tells them nothing. `up` starts its API with
``SO_REUSEPORT`` (`api.reuse_port`), so this stand-in can listen on the same port before the
API stops and until the new one is ready: every request in between is answered 503 with a
``Retry-After`` and a JSON error saying why, which the SDK and `rearview generate` honour by
sending the same events again.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class _Server(ThreadingHTTPServer):
    allow_reuse_port = True  # shares the port with the API while both run
    daemon_threads = True


_READ_LIMIT = 8 * 1024 * 1024  # bodies up to this are read (and dropped) before the answer
_CHUNK = 64 * 1024


def _body_length(header: str | None) -> int:
    """The bytes of body to read: 0 for none, and for a length that is not a number, negative,
    or over the limit (the answer then goes out unread, with the connection closed)."""
    try:
        length = int(header or 0)
    except ValueError:
        return 0
    return length if 0 < length <= _READ_LIMIT else 0


class Unavailable:
    """Answers every request on (*host*, *port*) with 503, *retry_after_s* and *why*."""

    def __init__(self, host: str, port: int, why: str, retry_after_s: int = 2) -> None:
        body = json.dumps({"error": why}).encode()

        class Handler(BaseHTTPRequestHandler):
            timeout = 5  # a client that stops sending its body is answered anyway

            def _refuse(self) -> None:
                # Read the body, so the client sees the answer rather than a reset.
                left = _body_length(self.headers.get("Content-Length"))
                try:
                    while left > 0 and (chunk := self.rfile.read(min(left, _CHUNK))):
                        left -= len(chunk)
                except OSError:
                    pass  # timed out or gone: answer (or fail to) all the same
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Retry-After", str(retry_after_s))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = do_PATCH = _refuse

            def log_message(self, format: str, *args: object) -> None:
                pass  # `up` reports the roll itself; a line per refused request is noise

        self._server = _Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="api-stand-in", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        """Stop answering: the API is back (or `up` is stopping)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
