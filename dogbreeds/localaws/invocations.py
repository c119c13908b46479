"""``POST /invocations`` to a local inference server, over kept-alive connections.

SageMaker Runtime and batch transform both call a model's server once per request. Opening a TCP
connection (and a server thread) per call costs more than the hop itself under load, so idle
connections wait in a pool per server address and the next call, from any thread, takes one. A kept
connection the server has closed meanwhile (it closes idle ones after a while, and all of them when it
stops) fails before an answer arrives; that call is sent again once on a new connection.
"""

from __future__ import annotations

import http.client
import threading
from collections import defaultdict
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 120
MAX_IDLE_PER_SERVER = 64
# What a kept connection the server closed looks like when it is used again.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class InvocationClient:
    """``post(url, ...)`` for any number of threads; at most ``MAX_IDLE_PER_SERVER`` idle connections
    are kept per server."""

    def __init__(self):
        self._idle: dict = defaultdict(list)   # (host, port, timeout) -> idle HTTPConnections
        self._lock = threading.Lock()

    def post(self, url: str, body: bytes, content_type: str, accept: str,
             timeout: float = TIMEOUT_SECONDS) -> tuple:
        """POST ``body`` to ``<url>/invocations``: (status, body bytes). Raises OSError when the server
        cannot be reached (or, as socket.timeout, does not answer within ``timeout`` seconds)."""
        parts = urlsplit(url)
        key = (parts.hostname, parts.port, timeout)
        headers = {"Content-Type": content_type, "Accept": accept}
        conn, reused = self._take(key)
        try:
            status, answer = self._exchange(conn, body, headers)
        except _STALE:
            conn.close()
            if not reused:
                raise
            conn, reused = http.client.HTTPConnection(key[0], key[1], timeout=timeout), False
            try:
                status, answer = self._exchange(conn, body, headers)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        self._give_back(key, conn)
        return status, answer

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, body: bytes, headers: dict) -> tuple:
        conn.request("POST", "/invocations", body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        if response.will_close:
            conn.close()
        return response.status, answer

    def _take(self, key) -> tuple:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return http.client.HTTPConnection(key[0], key[1], timeout=key[2]), False

    def _give_back(self, key, conn: http.client.HTTPConnection) -> None:
        if conn.sock is None:      # the server closed it after answering
            return
        with self._lock:
            idle = self._idle[key]
            if len(idle) < MAX_IDLE_PER_SERVER:
                idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, defaultdict(list)
        for connections in idle.values():
            for conn in connections:
                conn.close()
