"""``GET /metrics`` in Prometheus text format for the local servers: the model server and the local API.

Each server owns a ``CollectorRegistry`` of its own (never prometheus-client's global one), so several
servers in one process, and the tests, keep separate counts. On AWS the control plane's metrics stay
Powertools' (CloudWatch EMF); these exist only on 127.0.0.1.

- ``ModelServerMetrics``: requests by route and status, latency by route, images per forward (the batch
  sizes), the images queued for a forward and the requests in flight at scrape time, the model version.
- ``ApiMetrics`` with ``metered(handler_cls, metrics)``: the local API's requests by route, method and
  status and their latency, for any ``BaseHTTPRequestHandler`` class (Chalice's local one here); the
  subclass answers ``GET /metrics`` itself and passes every other request on.

Routes are labelled by their pattern (``/batch/{batch_id}``), and any path that is not a route as
``other``, so a scan of random paths cannot grow the label sets.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Optional
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

METRICS_PATH = "/metrics"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds: a lone CPU forward is tens of milliseconds, a queued one under load up to a second or more.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
OTHER_ROUTE = "other"


class ModelServerMetrics:
    """The model server's metrics in a registry of their own. ``queued`` and ``in_flight`` are read at scrape
    time (callables returning a number), as is ``model_version``."""

    def __init__(self, routes: Iterable[str], queued: Callable[[], float], in_flight: Callable[[], float],
                 model_version: Callable[[], float]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.routes = frozenset(routes)
        self.requests = Counter("dogbreeds_serving_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("dogbreeds_serving_request_seconds", "From a request's headers to its reply",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("dogbreeds_serving_batch_size", "Images per forward pass",
                                    buckets=BATCH_SIZE_BUCKETS, registry=self.registry)
        self.forward_failures = Counter("dogbreeds_serving_forward_failures", "Forward passes that raised",
                                        registry=self.registry)
        Gauge("dogbreeds_serving_queue_images", "Images decoded and waiting for a forward",
              registry=self.registry).set_function(queued)
        Gauge("dogbreeds_serving_in_flight_requests", "Requests being read or decoded",
              registry=self.registry).set_function(in_flight)
        Gauge("dogbreeds_serving_model_version", "The number of the model served (1 at start, +1 per swap)",
              registry=self.registry).set_function(model_version)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = path if path in self.routes else OTHER_ROUTE
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_forward(self, images: int, failed: bool) -> None:
        self.batch_size.observe(images)
        if failed:
            self.forward_failures.inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)


class ApiMetrics:
    """The local API's metrics in a registry of their own; ``route_of(path)`` names a request's route."""

    def __init__(self, route_of: Callable[[str], Optional[str]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.route_of = route_of
        self.requests = Counter("dogbreeds_api_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("dogbreeds_api_request_seconds", "From a request's headers to its reply",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_request(self, method: str, path: str, status: int, seconds: float) -> None:
        route = self.route_of(urlsplit(path).path) or OTHER_ROUTE
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


def chalice_route_of(app) -> Callable[[str], Optional[str]]:
    """The Chalice ``app``'s route pattern for a path (``/batch/b1`` -> ``/batch/{batch_id}``), None if none."""
    from chalice.local import RouteMatcher

    matcher = RouteMatcher(list(app.routes))

    def route_of(path: str) -> Optional[str]:
        try:
            return matcher.match_route(path).route
        except ValueError:
            return None

    return route_of


def metered(handler_cls, metrics: ApiMetrics):
    """A subclass of the ``BaseHTTPRequestHandler`` class ``handler_cls`` that answers ``GET /metrics`` with
    ``metrics`` and counts and times every other request it answers."""

    class MeteredHandler(handler_cls):
        _started: Optional[float] = None
        _status: Optional[int] = None

        def parse_request(self):
            self._started, self._status = time.perf_counter(), None
            return super().parse_request()

        def send_response(self, code, message=None):
            self._status = int(code)
            super().send_response(code, message)

        def handle_one_request(self):
            self._started = None
            super().handle_one_request()
            if self._started is not None and self._status is not None and not self._is_metrics():
                metrics.observe_request(self.command, self.path, self._status, time.perf_counter() - self._started)

        def _is_metrics(self) -> bool:
            return self.command == "GET" and urlsplit(self.path).path == METRICS_PATH

        def do_GET(self):
            if not self._is_metrics():
                return super().do_GET()
            body = metrics.text()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    MeteredHandler.__name__ = MeteredHandler.__qualname__ = f"Metered{handler_cls.__name__}"
    return MeteredHandler
