"""The local inference server behind the embedded runtime's SageMaker endpoints.

``ModelServer(model_dir)`` serves a model directory as SageMaker's PyTorch container does: it imports
``<model_dir>/code/inference.py`` (the handlers shipped inside ``model.tar.gz``), calls its
``model_fn(model_dir)`` and answers each request with ``input_fn`` -> forward -> ``output_fn``, over
HTTP on 127.0.0.1 (the container protocol, ``dogbreeds.serving_http``: ``/ping``, ``/invocations``,
``/stats``, ``/metrics`` in Prometheus text format: ``dogbreeds.metrics``) or in this process (``invoke``):

    with ModelServer("/tmp/model") as server:          # model.tar.gz extracted there: code/, model.*
        print(server.url)                               # http://127.0.0.1:<free port>
        reply = server.invoke(jpeg_bytes, "image/jpeg") # Reply(status=200, body=b'{"predictions": ...}', ...)
        server.swap("/tmp/model-v2")                    # new code and weights, no request dropped

Errors: a ``ClientError`` (anything with an integer ``status_code`` 400..499) raised by the handlers
becomes that status with ``{"message": ...}``; any other exception fails only its own request with
500 and is logged. A body over the handlers' ``MAX_BODY_BYTES`` is 413.

Dynamic batching, because a forward of several images costs less than that many forwards of one.
``input_fn`` and ``LoadedModel.preprocess`` run in the request's own thread, so requests decode in
parallel and the forwards, which other requests wait for, stay short. The preprocessed tensors go into
one queue. A free forward worker takes up to ``max_batch_size`` images of the oldest model version in
the queue, ``torch.cat``\\ s them and runs one ``LoadedModel.probabilities`` forward under
``torch.inference_mode()``; each request then gets its rows and calls ``output_fn`` itself.
A worker waits for more images only while other requests are being read or decoded right now (an
in-flight counter) and never longer than ``max_wait_ms`` after the oldest queued request: a lone
request runs at once, with no window. A request with several images (JSON ``"images"``) counts as
that many items; one larger than ``max_batch_size`` runs as a batch of its own. A failed forward
fails the requests of that batch only. Handler modules without ``LoadedModel.preprocess/
probabilities`` and ``InferenceResult`` still work: their ``predict_fn`` runs per request.

``swap(model_dir)`` loads the new model completely (its own ``code/inference.py``, under its own
module name, so two models with different code live side by side) and warms it up, then switches one
reference. Requests that already started keep the model they started with, through the forward and
``output_fn``; batches never mix models; nothing is refused during a swap.

Threads: how many forward workers, torch threads and decode slots, and when a request alone in the
server runs with a team of every core, is decided from the usable CPUs by ``dogbreeds.serving_threads``
(the measurements behind it: bench/README.md). ``torch.set_num_threads`` in a thread sets that thread's
OpenMP team size and also the default that threads starting their first torch op later inherit;
``stop()`` restores the default seen when the server was created. The chosen numbers are logged at
``start()`` and reported by ``stats()``.

Not emulated: ``code/requirements.txt`` is not installed (the local runtime's environment already has
what the project's handlers import), and only ``code/inference.py`` is loaded (``SAGEMAKER_PROGRAM``
is not read). ``code/`` is on ``sys.path`` while the module is imported, as in the container, so
helpers next to it import; they are cached under their plain names, shared by all models.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import sys
import threading
import time
from collections import Counter, deque
from pathlib import Path
from types import ModuleType

import torch

from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ModelServerMetrics
from .serving_http import JSON_TYPE, ROUTES, ContainerHTTPServer, Reply
from .serving_threads import LoneTuner, default_threads, usable_cores

log = logging.getLogger(__name__)

# On CPU images/s hardly grows past a batch of 4-8 while a bigger batch makes its requests wait longer.
DEFAULT_MAX_BATCH_SIZE = {"cpu": 8, "cuda": 32}
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker realtime endpoints; used if the handlers set none

_module_numbers = itertools.count(1)


class ModelCodeError(RuntimeError):
    """``code/inference.py`` is missing or lacks a handler the server needs."""


def load_handlers(model_dir) -> ModuleType:
    """Import ``<model_dir>/code/inference.py`` under a module name of its own."""
    code = Path(model_dir) / "code" / "inference.py"
    if not code.is_file():
        raise ModelCodeError(f"{code} not found: a model directory extracted from model.tar.gz holds the "
                             "inference handlers in code/inference.py")
    name = f"dogbreeds_serving_model_{next(_module_numbers)}_inference"
    spec = importlib.util.spec_from_file_location(name, code)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up by module name
    code_dir = str(code.parent)
    sys.path.insert(0, code_dir)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    finally:
        try:
            sys.path.remove(code_dir)
        except ValueError:
            pass
    missing = [f for f in ("model_fn", "input_fn", "output_fn") if not callable(getattr(module, f, None))]
    if missing:
        raise ModelCodeError(f"{code} defines no {', '.join(missing)}")
    return module


class _Version:
    """One loaded model: its handler module and what its model_fn returned."""

    def __init__(self, number: int, model_dir: Path, module: ModuleType, model):
        self.number, self.model_dir, self.module, self.model = number, model_dir, module, model
        self.batchable = (callable(getattr(model, "preprocess", None))
                          and callable(getattr(model, "probabilities", None))
                          and callable(getattr(module, "InferenceResult", None))
                          and hasattr(model, "classes") and hasattr(model, "labels"))
        if not self.batchable and not callable(getattr(module, "predict_fn", None)):
            raise ModelCodeError(f"{model_dir}/code/inference.py defines no predict_fn and its model "
                                 "has no preprocess/probabilities to batch with")
        device = getattr(model, "device", None)
        self.device_type = device.type if isinstance(device, torch.device) else "cpu"

    @property
    def max_body_bytes(self) -> int:
        value = getattr(self.module, "MAX_BODY_BYTES", None)  # read per request: tests may patch it
        return value if isinstance(value, int) and value > 0 else DEFAULT_MAX_BODY_BYTES

    def client_status(self, exc: BaseException) -> int | None:
        """The 4xx status of a handler's ClientError (or any exception carrying one), else None."""
        status = getattr(exc, "status_code", None)
        return status if isinstance(status, int) and 400 <= status < 500 else None


class _Pending:
    """One decoded request waiting for its forward."""

    __slots__ = ("version", "data", "batch", "size", "enqueued", "done", "rows", "prediction", "error")

    def __init__(self, version: _Version, data, batch):
        self.version, self.data, self.batch = version, data, batch
        self.size = int(batch.shape[0]) if batch is not None else 1
        self.enqueued = 0.0
        self.done = threading.Event()
        self.rows = self.prediction = self.error = None


class ModelServer:
    """SageMaker-container-style server for one model directory, with dynamic batching; ``invoke`` in
    this process, or over HTTP once started."""

    def __init__(self, model_dir, host: str = "127.0.0.1", port: int = 0,
                 max_batch_size: int | None = None, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 torch_threads: int | None = None, forward_workers: int | None = None):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        for name, value in (("torch_threads", torch_threads), ("forward_workers", forward_workers)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.host, self._requested_port = host, port
        self._max_batch_size_arg, self.max_wait_ms = max_batch_size, float(max_wait_ms)
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)   # forward workers wait here
        self._gate = threading.Condition(self._lock)   # decoders wait here for a slot
        self._queue: deque[_Pending] = deque()
        self._in_flight = 0        # requests between their headers and the queue (reading, decoding)
        self._decoding = 0         # requests holding a decode slot
        self._busy_workers = 0     # forwards running
        self._exclusive = 0        # multi-threaded forwards that want or hold every core
        self._team_running = False  # a forward with the lone team runs: other workers wait
        self._closing = False
        self._stop_workers = False
        self._front: ContainerHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._versions = itertools.count(1)
        self._swap_lock = threading.Lock()
        self._torch_default = torch.get_num_threads()
        self._stats = {"requests": 0, "images": 0, "forwards": 0, "forward_seconds": 0.0,
                       "status": Counter(), "batch_sizes": Counter(), "swaps": 0, "forward_failures": 0,
                       "lone_team_forwards": 0}
        self._cores = usable_cores()
        self._tuner = LoneTuner()
        self._plan_args = (torch_threads, forward_workers)
        self._current = self._load(model_dir, first=True)
        self.metrics = ModelServerMetrics(ROUTES, queued=self._queued_now, in_flight=lambda: self._in_flight,
                                          model_version=lambda: self._current.number)

    def _apply_plan(self, version: _Version) -> None:
        plan = default_threads(self._cores, version.device_type, *self._plan_args)
        self.forward_workers = plan.forward_workers
        self.torch_threads = plan.torch_threads
        self.lone_threads = plan.lone_threads
        self.decode_slots = plan.decode_slots
        self.exclusive_forward = plan.exclusive_forward
        self.max_batch_size = int(self._max_batch_size_arg or DEFAULT_MAX_BATCH_SIZE.get(version.device_type, 8))

    # ------------------------------------------------------------------------------------- lifecycle

    def _load(self, model_dir, first: bool = False) -> _Version:
        model_dir = Path(model_dir)
        started = time.perf_counter()
        module = load_handlers(model_dir)
        model = module.model_fn(str(model_dir))
        version = _Version(next(self._versions), model_dir, module, model)
        if first:
            self._apply_plan(version)
        self._warm_up(version, seed_tuner=first)
        log.info("loaded model %d from %s in %.2f s (%s)", version.number, model_dir,
                 time.perf_counter() - started, "batched" if version.batchable else "predict_fn per request")
        return version

    def _warm_up(self, version: _Version, seed_tuner: bool) -> None:
        """Run the new model once per thread count it will see, so the first request pays no set-up
        (oneDNN primitives, allocator); on first load the best of two more runs seeds the lone-forward
        choice. Runs in a thread of its own: set_num_threads must not touch the caller's thread."""
        size = getattr(version.model, "image_size", None)
        if not version.batchable or not isinstance(size, int):
            return
        from PIL import Image

        def run():
            try:
                batch = version.model.preprocess([Image.new("RGB", (size, size), (128, 128, 128))])
                for team, threads in ((False, self.torch_threads), (True, self.lone_threads)):
                    if threads is None:
                        continue
                    torch.set_num_threads(threads)
                    timings = []
                    with torch.inference_mode():
                        version.model.probabilities(batch)
                        for _ in range(2 if seed_tuner and self.lone_threads is not None else 0):
                            started = time.perf_counter()
                            version.model.probabilities(batch)
                            timings.append(time.perf_counter() - started)
                    if timings:
                        self._tuner.record(team, min(timings))
            except Exception:  # a model that cannot run a blank image fails on real requests too
                log.warning("warm-up of model %d failed", version.number, exc_info=True)

        thread = threading.Thread(target=run, name="dogbreeds-serving-warm-up")
        thread.start()
        thread.join()

    @property
    def port(self) -> int:
        if self._front is None:
            raise RuntimeError("server not started: call start() first")
        return self._front.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def model_dir(self) -> Path:
        return self._current.model_dir

    @property
    def closing(self) -> bool:
        """``stop()`` has begun: replies close their connection and ``/ping`` says 503."""
        return self._closing

    def start(self) -> "ModelServer":
        """Start the forward workers and the HTTP front on ``host``:``port`` (0: a free port)."""
        if self._front is not None:
            raise RuntimeError("server already started")
        self._front = ContainerHTTPServer((self.host, self._requested_port), self)
        self._closing = self._stop_workers = False
        self._threads = [threading.Thread(target=self._worker_loop, name=f"dogbreeds-serving-forward-{i}",
                                          daemon=True) for i in range(self.forward_workers)]
        for thread in self._threads:
            thread.start()
        self._front.start()
        log.info("serving %s at %s: %d usable cores; %d forward worker(s) on %s with %d torch thread(s) "
                 "each%s; up to %d request(s) decoding at once with 1 torch thread each (%s); "
                 "max batch %d images, max wait %g ms",
                 self._current.model_dir, self.url, self._cores, self.forward_workers,
                 self._current.device_type, self.torch_threads,
                 f", {self.lone_threads} for a lone request when that is measured faster"
                 if self.lone_threads else "",
                 self.decode_slots,
                 "waiting while a forward runs" if self.exclusive_forward else "alongside the forwards",
                 self.max_batch_size, self.max_wait_ms)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let started requests finish, close idle connections, join every thread."""
        front = self._front
        if front is None:
            return
        front.stop_accepting()
        with self._lock:
            self._closing = True
            self._work.notify_all()
        front.close(timeout)  # the workers still run: requests in progress get their answer
        with self._lock:
            self._stop_workers = True
            self._work.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []
        self._front = None
        # Put back the torch thread default that threads inherit (set_num_threads in a throwaway thread
        # changes that default without touching the caller's own OpenMP team).
        restore = threading.Thread(target=torch.set_num_threads, args=(self._torch_default,),
                                   name="dogbreeds-serving-restore")
        restore.start()
        restore.join()
        log.info("stopped serving %s", self._current.model_dir)

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def swap(self, model_dir) -> None:
        """Load ``model_dir`` (its own code/inference.py) completely, then serve it from the next request on.

        Requests already started finish on the model they started with. Raises whatever loading
        raises, and then the old model keeps serving.
        """
        with self._swap_lock:
            new = self._load(model_dir)
            with self._lock:
                old, self._current = self._current, new
                self._stats["swaps"] += 1
            log.info("swapped model %d (%s) for model %d (%s)", old.number, old.model_dir,
                     new.number, new.model_dir)

    def stats(self) -> dict:
        """Counters since creation: requests by status, forwards, images per forward, the thread plan."""
        with self._lock:
            s = self._stats
            tuner = {("team" if k else "single"): (None if v is None else round(v * 1000, 3))
                     for k, v in self._tuner.seconds_per_image.items()}
            return {
                "model_dir": str(self._current.model_dir), "model_version": self._current.number,
                "requests": s["requests"], "status": {str(k): v for k, v in sorted(s["status"].items())},
                "images": s["images"], "forwards": s["forwards"], "forward_failures": s["forward_failures"],
                "forward_seconds": round(s["forward_seconds"], 6),
                "batch_sizes": {str(k): v for k, v in sorted(s["batch_sizes"].items())},
                "lone_team_forwards": s["lone_team_forwards"], "lone_ms_per_image": tuner,
                "swaps": s["swaps"], "queued": sum(p.size for p in self._queue), "in_flight": self._in_flight,
                "usable_cores": self._cores, "forward_workers": self.forward_workers,
                "torch_threads": self.torch_threads, "lone_threads": self.lone_threads,
                "decode_slots": self.decode_slots, "exclusive_forward": self.exclusive_forward,
                "max_batch_size": self.max_batch_size, "max_wait_ms": self.max_wait_ms,
            }

    # ---------------------------------------------------------------------------------- request path

    def invoke(self, body: bytes, content_type: str | None = None, accept: str | None = None) -> Reply:
        """One ``/invocations`` request in this process: the body with its ``Content-Type`` and
        ``Accept`` in, the status, body and content type the HTTP front would send out. The server
        must be started: its forward workers answer."""
        invocation = self.begin()
        return invocation.refuse_oversized(len(body)) or invocation.finish(body, content_type, accept)

    def begin(self) -> "Invocation":
        """A request's headers are in: count it as in flight (a batch forming waits for it) and pin the
        model it will use. End it with ``finish`` or ``abandon``."""
        with self._lock:
            self._in_flight += 1
            return Invocation(self, self._current)

    def _queued_now(self) -> int:
        with self._lock:
            return sum(p.size for p in self._queue)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        """Count an HTTP request the front answered in ``/metrics`` (route, status, latency)."""
        self.metrics.observe_request(path, status, seconds)

    def metrics_text(self) -> tuple[bytes, str]:
        """``/metrics``: the Prometheus text exposition and its content type."""
        return self.metrics.text(), METRICS_CONTENT_TYPE

    def count_reply(self, status: int) -> None:
        """Count a reply in ``stats()`` (the HTTP front counts the protocol errors it sends itself)."""
        with self._lock:
            self._stats["requests"] += 1
            self._stats["status"][status] += 1

    def _abandon(self) -> None:
        """The request failed before reaching the queue."""
        with self._lock:
            self._in_flight -= 1
            self._work.notify_all()

    def _decode(self, version: _Version, body: bytes, content_type):
        """input_fn (+ preprocess) in the request thread, within the decode slots."""
        with self._lock:
            while self._decoding >= self.decode_slots or self._exclusive:
                self._gate.wait()
            self._decoding += 1
        try:
            if torch.get_num_threads() != 1:
                torch.set_num_threads(1)
            data = version.module.input_fn(body, content_type)
            batch = version.model.preprocess(list(data.images)) if version.batchable else None
            return data, batch
        finally:
            with self._lock:
                self._decoding -= 1
                self._gate.notify()
                if self._decoding == 0 and self._exclusive:
                    self._work.notify_all()  # a worker waits for the decodes to drain

    def _submit(self, pending: _Pending) -> None:
        with self._lock:
            pending.enqueued = time.perf_counter()
            self._in_flight -= 1
            self._queue.append(pending)
            self._work.notify_all()

    def _predict(self, version: _Version, body: bytes, content_type):
        """Decode, wait for the forward, return the handlers' prediction object."""
        if self._claim_team(version):
            return self._predict_alone(version, body, content_type)
        try:
            data, batch = self._decode(version, body, content_type)
        except BaseException:
            self._abandon()
            raise
        pending = _Pending(version, data, batch)
        self._submit(pending)
        pending.done.wait()
        if pending.error is not None:
            raise pending.error
        if pending.prediction is not None:
            return pending.prediction
        return self._result(version, data, pending.rows)

    @staticmethod
    def _result(version: _Version, data, rows):
        """The handlers' InferenceResult for a request's rows of a batched forward; when the request asked for
        an explanation, the handlers' ``explain_fn`` adds it here, in the request's thread (it needs
        gradients, so it stays out of the shared inference_mode forwards)."""
        model = version.model
        result = version.module.InferenceResult(
            probabilities=rows, classes=model.classes, labels=model.labels,
            top_k=getattr(data, "top_k", None), is_list=getattr(data, "is_list", False))
        explain_fn = getattr(version.module, "explain_fn", None)
        if getattr(data, "explain", False) and callable(explain_fn):
            result = explain_fn(data, model, result)
        return result

    def _claim_team(self, version: _Version) -> bool:
        """True if this request is alone in the server and the lone team is (measured) faster: it then
        holds every core until it has its answer; decoders and workers wait."""
        if not (self.lone_threads and version.batchable):
            return False
        with self._lock:
            if (self._in_flight != 1 or self._decoding or self._busy_workers or self._queue
                    or self._team_running or self._exclusive):
                return False
            if not self._tuner.choose():
                return False  # the usual path; its worker times it as a lone single-thread forward
            self._team_running = True
            self._exclusive += 1
            return True

    def _predict_alone(self, version: _Version, body: bytes, content_type):
        """A lone request start to end in this thread with the lone team: decode, preprocess, forward,
        with no hand-off, as a one-request-at-a-time server does: a hand-off to a worker whose OpenMP
        team has gone idle costs the request milliseconds (bench/README.md)."""
        started = size = None
        failed = True
        try:
            torch.set_num_threads(self.lone_threads)
            data = version.module.input_fn(body, content_type)
            batch = version.model.preprocess(list(data.images))
            size = int(batch.shape[0])
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    rows = version.model.probabilities(batch)
            except Exception:
                log.exception("forward of a lone request on model %d failed", version.number)
                raise
            failed = False
        finally:
            seconds = time.perf_counter() - started if started is not None else 0.0
            torch.set_num_threads(1)
            with self._lock:
                self._in_flight -= 1
                self._team_running = False
                self._exclusive -= 1
                if started is not None:
                    self._count_forward(size, seconds, failed, lone_team=True)
                    if not failed:
                        self._tuner.record(True, seconds / size)
                self._gate.notify_all()
                self._work.notify_all()
        return self._result(version, data, rows)

    def _count_forward(self, size: int, seconds: float, failed: bool, lone_team: bool = False) -> None:
        """Account one forward in ``stats()``; the caller holds the lock."""
        stats = self._stats
        stats["forwards"] += 1
        stats["lone_team_forwards"] += lone_team
        stats["forward_failures"] += failed
        stats["forward_seconds"] += seconds
        stats["batch_sizes"][size] += 1
        self.metrics.observe_forward(size, failed)
        if not failed:
            stats["images"] += size

    # ------------------------------------------------------------------------------- forward workers

    def _worker_loop(self) -> None:
        torch.set_num_threads(self.torch_threads)
        while True:
            with self._lock:
                items, lone = self._next_batch()
                if items is None:
                    return
                exclusive = self.exclusive_forward
                if exclusive:  # decoding waits; the decodes already running finish first
                    self._exclusive += 1
                    while self._decoding:
                        self._work.wait()
                self._busy_workers += 1
            started, failed = time.perf_counter(), True
            try:
                failed = self._forward(items)
            finally:
                seconds = time.perf_counter() - started
                size = sum(p.size for p in items)
                with self._lock:
                    self._busy_workers -= 1
                    if exclusive:
                        self._exclusive -= 1
                    if lone and not failed:  # timed for the lone-request choice
                        self._tuner.record(False, seconds / size)
                    self._count_forward(size, seconds, failed)
                    self._gate.notify_all()
                    self._work.notify_all()
                for item in items:
                    item.done.set()

    def _next_batch(self):
        """Under the lock: wait for work and gather a batch. Returns (items, lone): lone is True when
        nothing else is in the server (its timing feeds the lone-request choice); (None, False) once
        stopped and drained."""
        while True:
            while not self._queue or self._team_running:
                if self._stop_workers and not self._queue:
                    return None, False
                self._work.wait()
            first = self._queue[0]
            if first.version.batchable:
                deadline = first.enqueued + self.max_wait_ms / 1000
                while not self._closing and self._queue and self._queue[0] is first:
                    if self._queued_images(first.version) >= self.max_batch_size or self._in_flight == 0:
                        break
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._work.wait(left)
                if not self._queue or self._queue[0] is not first or self._team_running:
                    continue  # another worker took it meanwhile
            items = self._take(first.version)
            lone = bool(self.lone_threads and self._busy_workers == 0 and not self._queue
                        and self._in_flight == 0 and len(items) == 1)
            return items, lone

    def _queued_images(self, version: _Version) -> int:
        return sum(p.size for p in self._queue if p.version is version)

    def _take(self, version: _Version) -> list[_Pending]:
        """The oldest request plus, in order, later ones of the same model while they fit."""
        first = self._queue.popleft()
        items, total = [first], first.size
        if not version.batchable:
            return items
        kept = deque()
        while self._queue:
            item = self._queue.popleft()
            if item.version is version and total + item.size <= self.max_batch_size:
                items.append(item)
                total += item.size
            else:
                kept.append(item)
        self._queue = kept
        return items

    def _forward(self, items: list[_Pending]) -> bool:
        """One forward for ``items`` (all of one model); returns True if it failed (each item then
        carries the error)."""
        version = items[0].version
        try:
            with torch.inference_mode():
                if version.batchable:
                    batch = items[0].batch if len(items) == 1 else torch.cat([p.batch for p in items])
                    probabilities = version.model.probabilities(batch)
                    offset = 0
                    for item in items:
                        item.rows = probabilities[offset:offset + item.size]
                        offset += item.size
                else:
                    items[0].prediction = version.module.predict_fn(items[0].data, version.model)
            return False
        except Exception as exc:  # fails this batch only
            log.exception("forward of %d request(s) on model %d failed", len(items), version.number)
            for item in items:
                item.error = exc
            return True


class Invocation:
    """One request from the moment its headers are in (``ModelServer.begin``) until it is answered
    or abandoned, on the model that was current then."""

    def __init__(self, server: ModelServer, version: _Version):
        self._server, self._version = server, version

    @property
    def max_body_bytes(self) -> int:
        return self._version.max_body_bytes

    def refuse_oversized(self, length: int) -> Reply | None:
        """The 413 reply (the request then ends, counted) when a body of ``length`` bytes is over the
        model's limit; None when it may be read."""
        limit = self.max_body_bytes
        if length <= limit:
            return None
        self.abandon()
        self._server.count_reply(413)
        return Reply.error(413, f"request body is {length:,} bytes, over the limit of {limit:,} bytes "
                                f"({limit / 2**20:g} MiB)")

    def abandon(self) -> None:
        """The request ends before its body reached the model (a short or refused body)."""
        self._server._abandon()

    def finish(self, body: bytes, content_type: str | None, accept: str | None) -> Reply:
        """Run the body through the handlers: ``input_fn``, the (batched) forward, ``output_fn``."""
        server, version = self._server, self._version
        if not accept or accept.strip() == "*/*":  # as the toolkit does before calling output_fn
            accept = JSON_TYPE
        try:
            prediction = server._predict(version, body, content_type)
            result = version.module.output_fn(prediction, accept)
            payload, reply_type = result if isinstance(result, tuple) else (result, accept)
            if isinstance(payload, str):
                payload = payload.encode("utf-8")
            elif not isinstance(payload, (bytes, bytearray)):
                payload = json.dumps(payload).encode("utf-8")
        except Exception as exc:
            status = version.client_status(exc)
            if status is None:
                log.exception("request to model %d failed", version.number)
                reply = Reply.error(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}")
            else:
                reply = Reply.error(status, str(getattr(exc, "message", None) or exc))
            server.count_reply(reply.status)
            return reply
        server.count_reply(200)
        return Reply(200, bytes(payload), str(reply_type))
