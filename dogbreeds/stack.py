"""The embedded local default: the control plane that runs on Lambda, driving local stand-ins.

``LocalStack(data_dir).start()`` wires, in this process:

- a filesystem bucket (``localaws.s3.LocalS3``) under ``<data_dir>/s3/``, which tells the event bus
  when a ``/_READY`` marker is written (the EventBridge rule on AWS filters on the same suffix);
- the Docker-free SageMaker (``localaws.sagemaker.LocalSageMaker``) with its SageMaker Runtime;
- the event bus (``localaws.eventbus.EventBus``) delivering S3 and SageMaker events, at least
  once, to the Chalice app's own ``on_bucket_event`` and ``on_sagemaker_event`` handlers, and a
  ticker sending its ``reconcile`` handler the scheduled event every ``reconcile_seconds`` (on AWS an
  EventBridge rate rule, every few minutes; here seconds, as everything local is quicker);
- the Chalice app's routes (``/predict``, ``/status``, ``/batch``, ``/models/{model}/serve``) on 127.0.0.1,
  beside them the web console (``dogbreeds.console``) at ``/``, and ``GET /metrics`` (Prometheus text:
  ``dogbreeds.metrics``; on AWS the app's Powertools metrics stand instead);
- the training code package, built from this checkout and uploaded as on AWS.

``fail_endpoint_once`` (a reason) makes the endpoint's next create or update end ``Failed`` with that
reason, armed before any event is delivered: the way to watch the control plane recover from it.

The control plane is the unchanged ``chalice_app``: every local run sends the requests AWS would get.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Optional

from chalice.local import ChaliceRequestHandler

from chalicelib.config import PipelineConfig

from .metrics import ApiMetrics, chalice_route_of, metered
from .serving_http import LocalHTTPServer, TrackedConnection

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")      # no X-Ray daemon on this machine

ROOT = Path(__file__).resolve().parent.parent        # the checkout: the training code package is built from it

log = logging.getLogger("dogbreeds.stack")

BUCKET = "dogbreeds-local"
ROLE_ARN = "arn:aws:iam::000000000000:role/dogbreeds-local"
REGION = "us-east-1"     # nominal: nothing leaves this machine, but the control plane validates a region
READY_SUFFIX = "/_READY"
RECONCILE_SECONDS = 2.0


def local_config(profile: str = "default", bucket: str = BUCKET, **overrides) -> PipelineConfig:
    """The control plane's configuration locally: ``PROFILES[profile]`` (``chalicelib.config``: ``default``
    is the AWS configuration, ``quick`` is sized for this machine's CPU and a generated dataset) in the
    local account, with ``PipelineConfig.from_profile``'s ``overrides`` (strategy, trials, parallel,
    trial_epochs, epochs, accuracy_floor, seed). Raises ConfigError for an unknown profile or a bad value."""
    return PipelineConfig.from_profile(profile, bucket=bucket, role_arn=ROLE_ARN, region=REGION, **overrides)


class NotifyingS3:
    """The filesystem bucket, plus S3 -> EventBridge: writing a key ending in ``/_READY`` emits an
    "Object Created" event with the object's ETag."""

    def __init__(self, s3, emit):
        self._s3, self._emit = s3, emit

    def __getattr__(self, name):
        return getattr(self._s3, name)

    def _notify(self, bucket: str, key: str, etag: str) -> None:
        if key.endswith(READY_SUFFIX):
            self._emit(object_created_event(bucket, key, etag))

    def put_object(self, **kwargs):
        response = self._s3.put_object(**kwargs)
        self._notify(kwargs["Bucket"], kwargs["Key"], response["ETag"])
        return response

    def copy_object(self, **kwargs):
        response = self._s3.copy_object(**kwargs)
        etag = response.get("CopyObjectResult", {}).get("ETag") or self._s3.head_object(
            Bucket=kwargs["Bucket"], Key=kwargs["Key"])["ETag"]
        self._notify(kwargs["Bucket"], kwargs["Key"], etag)
        return response

    def upload_file(self, Filename, Bucket, Key, **kwargs):
        response = self._s3.upload_file(Filename, Bucket, Key, **kwargs)
        self._notify(Bucket, Key, self._s3.head_object(Bucket=Bucket, Key=Key)["ETag"])
        return response


def _eventbridge(detail_type: str, source: str, resources: list, detail: dict) -> dict:
    """An EventBridge event as the control plane's handlers receive it on AWS."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type, "source": source,
            "account": "000000000000", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "region": REGION, "resources": resources, "detail": detail}


def object_created_event(bucket: str, key: str, etag: str) -> dict:
    """The event S3 sends to EventBridge for a new object (the fields the control plane reads)."""
    return _eventbridge("Object Created", "aws.s3", [f"arn:aws:s3:::{bucket}"],
                        {"version": "0", "bucket": {"name": bucket},
                         "object": {"key": key, "etag": etag.strip('"'), "sequencer": f"{time.time_ns():020X}"},
                         "reason": "PutObject"})


def scheduled_event() -> dict:
    """What EventBridge's rate rule sends the ``reconcile`` handler."""
    return _eventbridge("Scheduled Event", "aws.events",
                        [f"arn:aws:events:{REGION}:000000000000:rule/dogbreeds-local-reconcile"], {})


class ApiServer(LocalHTTPServer):
    """The Chalice app's routes over HTTP/1.1 on ``address``: chalice.local's request handler (its
    LocalGateway does API Gateway's routing and the app answers), one thread per keep-alive connection
    and a listen backlog deep enough for a burst of clients (Chalice's own LocalDevServer listens with
    5, and a burst of 32 clients had connections reset). ``close`` after ``shutdown``: idle
    connections end at once, a request in progress gets its answer first."""

    def __init__(self, address, app, config, handler_cls=None):
        super().__init__(address, functools.partial(handler_cls or _ApiHandler, app_object=app, config=config))

    def close(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for handler in connections:
            try:
                handler.connection.shutdown(socket.SHUT_RD)   # the next read sees EOF; a reply in progress goes out
            except OSError:
                pass
        self.server_close()                                   # joins the connection threads


class _ApiHandler(TrackedConnection, ChaliceRequestHandler):
    disable_nagle_algorithm = True     # headers and body go out in separate writes
    timeout = 60.0                     # an idle keep-alive connection is closed after a minute
    server: ApiServer


    def log_message(self, format, *args):     # one stderr line per request is noise in a terminal
        log.debug("api: " + format, *args)


HANDLERS = {"aws.s3": "on_bucket_event", "aws.sagemaker": "on_sagemaker_event", "aws.events": "reconcile"}


class LocalStack:
    def __init__(self, data_dir: Path, config: Optional[PipelineConfig] = None, api_port: int = 0,
                 cores: Optional[int] = None, serve_api: bool = True, fail_endpoint_once: Optional[str] = None,
                 reconcile_seconds: float = RECONCILE_SECONDS):
        self.data_dir = Path(data_dir).resolve()
        self.reconcile_seconds = reconcile_seconds
        self._stopping = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        self.fail_endpoint_once = fail_endpoint_once
        self.config = config or local_config()
        self.api_port = api_port
        self.cores = cores
        self.serve_api = serve_api
        self.api_url: Optional[str] = None
        self._api_server: Optional[ApiServer] = None
        self._api_thread: Optional[threading.Thread] = None
        self._app_class: Optional[type] = None

    def start(self) -> "LocalStack":
        from chalice_app import app as chalice_app
        from chalicelib.control import ControlPlane
        from deploy import package_source

        from .localaws.eventbus import EventBus
        from .localaws.s3 import LocalS3
        from .localaws.sagemaker import LocalSageMaker
        from .localaws.sagemaker_runtime import LocalSageMakerRuntime
        from .serving import ModelServer

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.app_module = chalice_app
        if self.serve_api:
            self._bind_api()           # first: a port in use fails the start before anything else runs
        self.bus = EventBus(self.data_dir / "events", self._deliver)
        self.raw_s3 = LocalS3(self.data_dir / "s3")
        self.raw_s3.create_bucket(Bucket=self.config.bucket)
        self.s3 = NotifyingS3(self.raw_s3, self.bus.emit)
        self.sagemaker = LocalSageMaker(self.s3, self.data_dir, self.bus.emit, cores=self.cores,
                                        server_factory=lambda model_dir: ModelServer(model_dir))
        self.runtime = LocalSageMakerRuntime(self.sagemaker)
        self.plane = ControlPlane(self.config, self.s3, self.sagemaker, self.runtime)
        chalice_app.use_control_plane(self.plane)
        self._log_level = chalice_app.logger.log_level
        chalice_app.logger.setLevel(logging.WARNING)     # the handlers' per-event INFO lines are Lambda's business
        self.source_uri = package_source.upload(self.s3, self.config.bucket, package_source.build(ROOT),
                                               self.config.layout).uri
        for note in self.sagemaker.recover():
            log.warning(note)
        if self.fail_endpoint_once:
            self.sagemaker.fail_next_endpoint_change(self.endpoint_name, self.fail_endpoint_once)
        self.bus.start()
        self._stopping.clear()
        self._ticker = threading.Thread(target=self._tick, name="reconcile", daemon=True)
        self._ticker.start()
        if self._api_server is not None:
            self._api_thread = threading.Thread(target=self._api_server.serve_forever, name="api",
                                                kwargs={"poll_interval": 0.1}, daemon=True)
            self._api_thread.start()
        (self.data_dir / "stack.json").write_text(json.dumps({"pid": os.getpid(), "api_url": self.api_url,
                                                              "bucket": self.config.bucket}))
        return self

    @property
    def endpoint_name(self) -> str:
        """The one endpoint the control plane deploys to."""
        from chalicelib.names import endpoint_name
        return endpoint_name(self.config.hosting.endpoint_name)

    def deploy_model_dir(self, model_dir: Path, dataset: str = "imported", marker: str = "m1") -> str:
        """Serve a model directory trained elsewhere (``model.json``, the weights, ``code/inference.py``)
        as if the gate had chosen it: its ``model.tar.gz`` goes into the bucket, the control plane's own
        CreateModel and CreateEndpointConfig requests are sent, the state records it as the deployed model,
        and the next reconciliation tick creates the endpoint. For benchmarks and tests of the serving path
        without a training run; returns the model's name. Wait for ``plane.status()["endpoint"]``."""
        import io
        import tarfile

        from chalicelib import names
        from chalicelib import sagemaker_requests as requests
        from chalicelib.state import DeployedModel

        key = f"imported/{dataset}/{marker}/model.tar.gz"
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            for path in sorted(Path(model_dir).rglob("*")):
                if path.is_file():
                    tar.add(path, arcname=str(path.relative_to(model_dir)))
        self.s3.put_object(Bucket=self.config.bucket, Key=key, Body=archive.getvalue())
        model_name = names.model_name(dataset, marker)
        self.sagemaker.create_model(**requests.create_model(self.config, dataset, marker,
                                                            f"s3://{self.config.bucket}/{key}"))
        self.sagemaker.create_endpoint_config(**requests.create_endpoint_config(self.config, dataset, marker))
        state, etag = self.plane.store.load()
        state.deployed = DeployedModel(model_name=model_name, dataset=dataset, marker=marker, test_acc=0.0,
                                       training_job="")
        self.plane.store.save(state, etag)
        return model_name

    def _bind_api(self) -> None:
        import warnings

        from chalice.config import Config
        from chalice.local import LocalChalice

        from .console import Console, LocalSource

        console = Console(LocalSource(self.data_dir, self.config.bucket, lambda: self.plane.status()))

        class ConsoleHandler(_ApiHandler):
            def do_GET(self):
                """The console's page, files and pipeline view; every other GET is the API's."""
                reply = console.answer(self.path) if Console.owns(self.path) else None
                if reply is None:
                    return super().do_GET()
                status, content_type, body = reply
                self._send_http_response(status, {"Content-Type": content_type, "Cache-Control": "no-store"}, body)

        # On AWS the routes' IAMAuthorizer checks SigV4; Chalice's local gateway (127.0.0.1 only) says
        # once per request that it does not, which is known here.
        warnings.filterwarnings("ignore", message="IAMAuthorizer is not a supported in local mode")
        app = self.app_module.app
        if not isinstance(app, LocalChalice):
            # Chalice keeps the request being handled in one attribute of the app, which concurrent
            # requests would overwrite; `chalice local` makes it per thread the same way.
            self._app_class = type(app)
            app.__class__ = type("ThreadLocalChalice", (LocalChalice, self._app_class), {})
        self.metrics = ApiMetrics(chalice_route_of(app))       # GET /metrics: requests by route and status
        self._api_server = ApiServer(("127.0.0.1", self.api_port), app, Config.create(),
                                     handler_cls=metered(ConsoleHandler, self.metrics))
        host, port = self._api_server.server_address[:2]
        self.api_url = f"http://{host}:{port}"

    def _deliver(self, event: dict) -> None:
        from chalice.local import LambdaContext
        handler = HANDLERS[event.get("source")]
        self.app_module.app.handler_map[handler](event, LambdaContext(handler, 512))

    def _tick(self) -> None:
        """The rate rule's events, delivered as EventBridge would (a failed tick is Lambda's logged error)."""
        while not self._stopping.wait(self.reconcile_seconds):
            try:
                self._deliver(scheduled_event())
            except Exception:
                log.exception("the reconciliation tick failed; the next one tries again")

    def stop(self) -> None:
        if self._api_server is not None:
            if self._api_thread is not None:      # shutdown() waits for serve_forever: only once it runs
                self._api_server.shutdown()
                self._api_thread.join(10)
                self._api_thread = None
            self._api_server.close()
            self._api_server = None
        if self._app_class is not None:
            self.app_module.app.__class__ = self._app_class
            self._app_class = None
        self._stopping.set()
        if self._ticker is not None:
            self._ticker.join(30)
            self._ticker = None
        self.bus.stop()
        self.sagemaker.close()
        self.runtime.close()
        self.app_module.use_control_plane(None)
        self.app_module.logger.setLevel(self._log_level)
        (self.data_dir / "stack.json").unlink(missing_ok=True)

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
