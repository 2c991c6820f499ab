"""A misbehaving external API for the tests: it ignores Idempotency-Key
(like many shipping providers) and counts what it executes, per key.

Each request chooses its behaviour by query parameters, or by a
``"scenario"`` object in its JSON body (for callers that cannot shape the
URL); "the n-th request" counts requests with the same key (the
Idempotency-Key header, else ``X-Op``):

- ``unavailable=N``: requests 1..N answer 503, nothing executed
  (``unavailable_retry_after=S`` adds ``Retry-After: S``)
- ``limited=M``, ``retry_after=S``: the next M answer 429 with
  ``Retry-After: S``, nothing executed
- ``status=400`` / ``422``: refused, nothing executed
- ``status=500``: executed, then answers 500
- ``drop=N``: requests 1..N are executed (body read), then the
  connection is closed without an answer
- ``delay=S``: executed at once, answered after S seconds

Anything else is executed and answered 200 with a label unique to that
execution: ``{"label": "L7", "key": ...}``. ``/echo`` answers the
request's headers and executes nothing.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qsl, urlsplit


class Provider:
    """The API and its books: ``executions[key]``, ``seen[key]`` (every
    request that reached it), ``labels[key]`` (issued labels)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: Counter = Counter()
        self.executions: Counter = Counter()
        self.labels: Dict[str, List[str]] = defaultdict(list)
        self._next = 0
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        provider = self

        class Handler(_Handler):
            books = provider

        server = _Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="provider", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def execute(self, key: str) -> str:
        with self.lock:
            self._next += 1
            label = f"L{self._next}"
            self.executions[key] += 1
            self.labels[key].append(label)
            return label


class _Server(ThreadingHTTPServer):
    # a test sends a score of requests at once: socketserver's listen
    # backlog of 5 would drop connections of a burst
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    books: Provider

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = lambda self: self._handle()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, doc: object, headers: Optional[Dict[str, str]] = None) -> None:
        body = json.dumps(doc).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:
            # the caller left (a gateway that gave up): the work was done anyway
            self.close_connection = True

    def _handle(self) -> None:
        books = self.books
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query))
        body = self._read_body()
        if body:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("scenario"), dict):
                params.update({k: str(v) for k, v in doc["scenario"].items()})
        key = self.headers.get("Idempotency-Key") or self.headers.get("X-Op") or "-"
        with books.lock:
            books.seen[key] += 1
            n = books.seen[key]
        if parts.path == "/echo":
            self._reply(200, {k.lower(): v for k, v in self.headers.items()})
            return
        unavailable = int(params.get("unavailable", 0))
        if n <= unavailable:
            h = {}
            if "unavailable_retry_after" in params:
                h["Retry-After"] = params["unavailable_retry_after"]
            self._reply(503, {"error": "busy"}, h)
            return
        if n <= unavailable + int(params.get("limited", 0)):
            self._reply(429, {"error": "slow down"}, {"Retry-After": params.get("retry_after", "1")})
            return
        status = int(params.get("status", 200))
        if status in (400, 422):
            self._reply(status, {"error": "invalid order"})
            return
        label = books.execute(key)
        if n <= int(params.get("drop", 0)):
            # acted on the order, then lost the connection: no answer
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        delay = float(params.get("delay", 0))
        if delay > 0:
            time.sleep(delay)
        self._reply(status, {"label": label, "key": key})
