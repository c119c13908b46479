"""SageMaker's container protocol over HTTP, in front of a ``ModelServer`` (``dogbreeds.serving``).

- ``GET /ping``: 200 while the server runs (503 while it stops);
- ``POST /invocations`` with ``Content-Type`` and ``Accept``: the server's ``invoke``;
- ``GET /stats``: the server's counters as JSON (not part of SageMaker's protocol; handy locally).

``Content-Length`` is required (411) and checked against the model's body limit before a byte of the
body is read (413, then the connection is closed); unknown paths get 404, known paths with the wrong
method 405. Every error is JSON ``{"message": ...}``. Connections are kept alive (HTTP/1.1), one thread
each; ``close`` lets the requests in progress finish and closes the idle connections at once.

The front uses only the server's public API: ``begin()`` (a request's headers are in), the
``Invocation`` it returns, ``count_reply``, ``closing`` and ``stats()``.
"""

from __future__ import annotations

import json
import logging
import socket
import socketserver
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# A child of the server's logger, which the CLI configures.
log = logging.getLogger("dogbreeds.serving.http")

JSON_TYPE = "application/json"
IDLE_CONNECTION_TIMEOUT_S = 60.0
ROUTES = {"/ping": ("GET", "HEAD"), "/invocations": ("POST",), "/stats": ("GET",), "/metrics": ("GET",)}


@dataclass(frozen=True)
class Reply:
    """An answer to ``/invocations``: status, body bytes and their content type."""

    status: int
    body: bytes
    content_type: str = JSON_TYPE

    @classmethod
    def error(cls, status: int, message: str) -> "Reply":
        """An error as the protocol gives it: ``{"message": ...}`` in JSON."""
        return cls(status, json.dumps({"message": message}).encode("utf-8"))


def _shutdown_socket(sock) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class LocalHTTPServer(ThreadingHTTPServer):
    """A thread per connection, a deep listen backlog and no DNS lookup at bind: what every local
    server here (the endpoint's container protocol, the local stack's API) needs under load."""

    daemon_threads = True        # never keep the interpreter alive; server_close() still joins them
    block_on_close = True
    request_queue_size = 128     # a burst of clients connecting at once must not hit a 5-deep backlog

    def __init__(self, address, handler_cls):
        self.connections: set = set()          # the open connections' handlers (TrackedConnection)
        self.connections_lock = threading.Lock()
        super().__init__(address, handler_cls)

    def server_bind(self):
        # HTTPServer.server_bind also resolves the host name (socket.getfqdn): a DNS round trip that
        # can stall without a network and that nothing here uses.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class TrackedConnection:
    """A request handler mixin (before the handler class) that keeps each open connection in its
    ``LocalHTTPServer``'s ``connections``, so ``close`` can end idle keep-alive connections at once."""

    server: LocalHTTPServer

    def setup(self):
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self)

    def finish(self):
        with self.server.connections_lock:
            self.server.connections.discard(self)
        try:
            super().finish()
        except OSError:                # the client went away
            pass


class ContainerHTTPServer(LocalHTTPServer):
    """Binds ``address`` at once (port 0: a free one) and serves ``app`` from ``start()`` on."""

    def __init__(self, address, app):
        self.app = app
        self._thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        """Accept connections in a thread of its own."""
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="dogbreeds-serving-http", daemon=True)
        self._thread.start()

    def stop_accepting(self) -> None:
        self.shutdown()

    def close(self, timeout: float) -> None:
        """After ``stop_accepting`` and once ``app.closing``: close idle keep-alive connections now, let
        busy ones finish their request (up to ``timeout`` seconds), then close them all and join every
        connection thread."""
        with self.connections_lock:
            connections = list(self.connections)
        for handler in connections:  # idle keep-alive connections: wake their readline with EOF
            if not handler.busy:
                _shutdown_socket(handler.connection)
        deadline = time.monotonic() + timeout
        while True:  # busy ones finish their request (the server's workers still run), then close
            with self.connections_lock:
                left = [h for h in self.connections if h.busy]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        with self.connections_lock:
            for handler in self.connections:
                _shutdown_socket(handler.connection)
        self.server_close()  # joins the connection threads
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


class _Handler(TrackedConnection, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connection
    server_version = "dogbreeds-serving"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    timeout = IDLE_CONNECTION_TIMEOUT_S
    busy = False
    _expect_continue = False
    server: ContainerHTTPServer

    @property
    def app(self):
        return self.server.app


    def handle_one_request(self):
        self.busy = False
        if self.app.closing:
            self.close_connection = True
            return
        try:
            super().handle_one_request()
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        finally:
            self.busy = False

    def parse_request(self):
        self.busy = True
        self._expect_continue = False
        return super().parse_request()

    def handle_expect_100(self):
        self._expect_continue = True  # answered with 100 only once the length is acceptable
        return True

    def log_message(self, format, *args):
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code, message=None, explain=None):
        """Errors found by http.server itself (bad request line, unknown method): JSON, then close."""
        self.close_connection = True
        self._send(Reply.error(int(code), message or HTTPStatus(code).phrase), close=True)

    # ---------------------------------------------------------------------------------- responses

    def _send(self, reply: Reply, close: bool = False, headers=()) -> None:
        self._status = reply.status
        if self.app.closing:
            close = True
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in headers:
                self.send_header(name, value)
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
        except OSError:  # the client went away
            self.close_connection = True

    def _error(self, status: int, message: str, close: bool = False, headers=()) -> None:
        """A protocol error found here, counted in the server's stats."""
        self.app.count_reply(status)
        self._send(Reply.error(status, message), close=close, headers=headers)

    # ---------------------------------------------------------------------------------- routing

    _status: int | None = None

    def _dispatch(self):
        """Route the request, then count it (route, status, seconds since its headers) in the app's metrics."""
        started, self._status = time.perf_counter(), None
        path = urlsplit(self.path).path
        try:
            self._route(path)
        finally:
            if self._status is not None and path != "/metrics":
                self.app.observe_request(path, self._status, time.perf_counter() - started)

    def _route(self, path: str):
        has_body = self.headers.get("Content-Length") not in (None, "0") or "Transfer-Encoding" in self.headers
        allowed = ROUTES.get(path)
        if allowed is None:
            self._error(404, f"no such path {path!r}: the endpoint serves GET /ping and POST /invocations",
                        close=has_body)
        elif self.command not in allowed:
            self._error(405, f"{self.command} is not allowed on {path}: use {' or '.join(allowed)}",
                        close=has_body, headers=[("Allow", ", ".join(allowed))])
        elif path == "/ping":
            ok = not self.app.closing
            self._send(_json(200 if ok else 503, {"status": "healthy" if ok else "stopping"}), close=has_body)
        elif path == "/stats":
            self._send(_json(200, self.app.stats()), close=has_body)
        elif path == "/metrics":
            text, content_type = self.app.metrics_text()
            self._send(Reply(200, text, content_type), close=has_body)
        else:
            self._invocations()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _invocations(self):
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            self._error(411, "Content-Length is required"
                             + (" (chunked bodies are not accepted)" if chunked else ""), close=True)
            return
        if not length_text.strip().isdigit():
            self._error(400, f"Content-Length {length_text!r} is not a non-negative integer", close=True)
            return
        length = int(length_text.strip())
        invocation = self.app.begin()  # in flight from here until it is finished or abandoned
        try:
            refused = invocation.refuse_oversized(length)
            if refused is None:
                if self._expect_continue:
                    self.send_response_only(100)
                    self.end_headers()
                body = self.rfile.read(length) if length else b""
        except BaseException:
            invocation.abandon()
            raise
        if refused is not None:  # refused before reading: the rest of the body is never read
            self._send(refused, close=True)
            return
        if len(body) != length:
            invocation.abandon()
            self._error(400, f"body ended after {len(body):,} of {length:,} bytes", close=True)
            return
        self._send(invocation.finish(body, self.headers.get("Content-Type"), self.headers.get("Accept")))


def _json(status: int, document) -> Reply:
    return Reply(status, json.dumps(document).encode("utf-8"))
