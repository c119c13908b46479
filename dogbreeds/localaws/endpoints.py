"""Models, endpoint configs and endpoints: an endpoint is a local inference server on 127.0.0.1.

``server_factory(model_dir)`` makes the server (``dogbreeds.serving.ModelServer`` in the stack), which
loads ``code/inference.py`` from the model's archive, unpacked once under ``<models_dir>/<model>/``.

An endpoint changes as on SageMaker, and refuses what SageMaker refuses:

- ``CreateEndpoint`` makes it ``Creating``, ``UpdateEndpoint`` makes it ``Updating``; a thread waits
  at least ``change_seconds`` (SageMaker takes minutes), then loads and warms the model up (a new
  server, or ``swap`` on the running one), and only then is the endpoint ``InService``. Each status
  change emits its State Change event, under the records lock, so events leave in the order the statuses
  were recorded. While ``Updating``, the old model keeps serving.
- A model that cannot be loaded (no ``code/inference.py``, a handler that raises) ends a create
  ``Failed`` with the error as ``FailureReason``; so does a failure armed with ``fail_next_change``
  (the stand-in for no capacity or a bad image), for the next create or update of that endpoint.
- A failed update is rolled back, as SageMaker's default (blue/green) update does: the endpoint is
  ``InService`` again on its previous config, the old model still serving, with the ``FailureReason``.
  ``fail_next_change(..., rollback=False)`` makes the update end ``Failed`` instead, which the
  documentation allows too ("could not be created, updated, or re-scaled") and which is the harder case.
- ``UpdateEndpoint`` is refused (``ValidationException``) unless the endpoint is ``InService``;
  ``CreateEndpoint`` of an existing name is refused (``ValidationException``, "Cannot create already
  existing endpoint"), whatever its status, ``Deleting`` included. On a ``Failed`` endpoint only
  ``DeleteEndpoint`` (and ``DescribeEndpoint``) works.
- ``DeleteEndpoint`` stops the server at once and leaves the endpoint ``Deleting`` (with its event) for
  ``change_seconds``; a second DeleteEndpoint meanwhile is refused (an assumption: SageMaker's answer
  is not documented; refusing is the harder case for the control plane); then it is gone, with no event, as on SageMaker, where nothing announces the end
  of a deletion (the control plane's reconciliation tick notices).
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .archives import safe_extract
from .job_threads import JobThreads
from .records import now
from .resources import Resources, client_error

log = logging.getLogger(__name__)

MIN_CHANGE_SECONDS = 1.0     # locally: long enough to be seen, short enough for the demo
FAULT_KIND = "endpoint-fault"    # records of armed failures: one per endpoint, consumed by its next change
DEFAULT_FAULT_REASON = ("Failed on purpose by the local runtime (the stand-in for a failure such as no capacity "
                        "for the instance type or an image that does not start)")


class Endpoints:
    def __init__(self, resources: Resources, threads: JobThreads, s3, models_dir: Path,
                 server_factory: Optional[Callable], change_seconds: float = MIN_CHANGE_SECONDS):
        self.resources = resources
        self.records = resources.records
        self.threads = threads
        self.s3 = s3
        self.models_dir = models_dir
        self.server_factory = server_factory
        self.change_seconds = change_seconds
        self._servers: Dict[str, object] = {}     # guarded by records.lock

    def create_model(self, request: dict) -> dict:
        name = request["ModelName"]
        self.resources.require_new("model", name, "CreateModel")
        self.records.put("model", name, {**request, "ModelArn": self.resources.arn("model", name),
                                         "CreationTime": now().isoformat()})
        return {"ModelArn": self.resources.arn("model", name)}

    def create_endpoint_config(self, request: dict) -> dict:
        """CreateEndpointConfig; every variant's model must exist."""
        name = request["EndpointConfigName"]
        self.resources.require_new("endpoint-config", name, "CreateEndpointConfig")
        for variant in request.get("ProductionVariants", []):
            self.resources.describe("model", variant["ModelName"], "CreateEndpointConfig")
        self.records.put("endpoint-config", name, {**request,
                                                   "EndpointConfigArn": self.resources.arn("endpoint-config", name),
                                                   "CreationTime": now().isoformat()})
        return {"EndpointConfigArn": self.resources.arn("endpoint-config", name)}

    def create_endpoint(self, name: str, config_name: str, extra: dict) -> dict:
        """CreateEndpoint: ``Creating`` now, served from a thread (see the module's docstring)."""
        with self.records.lock:
            self.resources.require_new("endpoint", name, "CreateEndpoint")
            self.resources.describe("endpoint-config", config_name, "CreateEndpoint")
            change, fault = uuid.uuid4().hex, self._take_fault(name)
            record = {"EndpointName": name, "EndpointArn": self.resources.arn("endpoint", name),
                      "EndpointConfigName": config_name, "EndpointStatus": "Creating",
                      "CreationTime": now().isoformat(), "LastModifiedTime": now().isoformat(), **extra,
                      "_Change": change}
            self.records.put("endpoint", name, record)
            self.resources.emit("endpoint", record)
        self._start_change(name, config_name, change, fault)
        return {"EndpointArn": record["EndpointArn"]}

    def update_endpoint(self, name: str, config_name: str) -> dict:
        """UpdateEndpoint: refused unless the endpoint is InService; ``Updating`` now, the old model
        serving until the new one is loaded in a thread."""
        with self.records.lock:
            current = self.resources.describe("endpoint", name, "UpdateEndpoint")
            refusal = update_refusal(current["EndpointStatus"], current["EndpointArn"])
            if refusal:
                raise client_error("ValidationException", refusal, "UpdateEndpoint")
            self.resources.describe("endpoint-config", config_name, "UpdateEndpoint")
            change, fault = uuid.uuid4().hex, self._take_fault(name)
            record = self.resources.set_status("endpoint", name, "Updating", emit=False, _Change=change)
            self.resources.emit("endpoint", record)
        self._start_change(name, config_name, change, fault)
        return {"EndpointArn": current["EndpointArn"]}

    def delete_endpoint(self, name: str) -> dict:
        """DeleteEndpoint, in any status but Deleting: the server stops now, the endpoint is ``Deleting`` and gone
        after ``change_seconds`` (no event then); a create or update still running ends without effect."""
        with self.records.lock:
            current = self.resources.describe("endpoint", name, "DeleteEndpoint")
            if current["EndpointStatus"] == "Deleting":
                raise client_error("ValidationException", f'Cannot delete in-progress endpoint '
                                   f'"{current["EndpointArn"]}".', "DeleteEndpoint")
            server = self._servers.pop(name, None)
            change = uuid.uuid4().hex
            record = self.resources.set_status("endpoint", name, "Deleting", emit=False, _Change=change,
                                               _Url=None)
            self.resources.emit("endpoint", record)
        if server is not None:
            server.stop()
        self.threads.start(self._forget, name, change, name=f"endpoint-{name}-delete")
        return {}

    def _forget(self, endpoint: str, change: str) -> None:
        """The end of a deletion: the record goes (unless the runtime is closing: ``recover`` ends it)."""
        if self.threads.stopping.wait(self.change_seconds):
            return
        with self.records.lock:
            current = self.records.get("endpoint", endpoint)
            if current is not None and current.get("_Change") == change:
                self.records.path("endpoint", endpoint).unlink()

    def fail_next_change(self, name: str, reason: str = DEFAULT_FAULT_REASON, rollback: bool = True) -> None:
        """Arm a failure: the next CreateEndpoint or UpdateEndpoint of endpoint ``name`` (which need not
        exist yet) fails with ``FailureReason`` ``reason``, after the usual wait, without loading the
        model: a create ends ``Failed``; an update is rolled back (``InService`` on the old config) or,
        with ``rollback=False``, ends ``Failed``. Kept on disk (``<data_dir>/sagemaker/endpoint-fault/``)
        until used."""
        self.records.put(FAULT_KIND, name, {"EndpointName": name, "FailureReason": reason, "Rollback": rollback})

    def _take_fault(self, name: str) -> Optional[dict]:
        """The failure armed for ``name`` (``FailureReason``, ``Rollback``), disarmed; None when none is."""
        fault = self.records.get(FAULT_KIND, name)
        if fault is None:
            return None
        self.records.path(FAULT_KIND, name).unlink()
        return fault

    def model_dir(self, model_name: str) -> Path:
        """The model's ``model.tar.gz``, unpacked under ``models_dir`` (once)."""
        model = self.records.get("model", model_name)
        target = self.models_dir / model_name
        if not (target / ".complete").exists():
            if target.exists():
                shutil.rmtree(target)
            safe_extract(self.s3.path_of_uri(model["PrimaryContainer"]["ModelDataUrl"]), target)
            (target / ".complete").touch()
        return target

    def _start_change(self, endpoint: str, config_name: str, change: str, fault: Optional[dict]) -> None:
        self.threads.start(self._change, endpoint, config_name, change, fault, name=f"endpoint-{endpoint}")

    def _change(self, endpoint: str, config_name: str, change: str, fault: Optional[dict]) -> None:
        """The thread of one create or update: wait, load (or fail as armed), then InService or Failed
        (a failed update rolled back: InService on the config it had, the old model serving)."""
        if self.threads.stopping.wait(self.change_seconds):
            return    # the runtime is closing: recover() restarts the endpoint next time
        if fault is not None:
            with self.records.lock:
                updating = self._servers.get(endpoint) is not None
            if updating and fault.get("Rollback", True):
                self._finish(endpoint, change, "InService", FailureReason=fault["FailureReason"])
            else:
                self._finish(endpoint, change, "Failed", FailureReason=fault["FailureReason"])
            return
        server = None
        try:
            config = self.records.get("endpoint-config", config_name)
            model_dir = self.model_dir(config["ProductionVariants"][0]["ModelName"])
            with self.records.lock:
                server = self._servers.get(endpoint)
            if server is None:
                server = self.server_factory(model_dir)
                server.start()
            else:
                server.swap(model_dir)    # loads and warms up first; the old model serves meanwhile
        except Exception as exc:
            log.exception("endpoint %s could not serve %s", endpoint, config_name)
            self._finish(endpoint, change, "Failed", FailureReason=f"{type(exc).__name__}: {exc}")
            return
        if not self._finish(endpoint, change, "InService", server=server, EndpointConfigName=config_name,
                            _Url=server.url, FailureReason=None):
            server.stop()     # the endpoint was deleted (or recreated) while this change ran

    def _finish(self, endpoint: str, change: str, status: str, server=None, **changes) -> bool:
        """Record the end of ``change``, with its event, unless the endpoint was deleted or another change
        began since; True when recorded. A ``server`` given becomes the endpoint's."""
        with self.records.lock:
            current = self.records.get("endpoint", endpoint)
            if current is None or current.get("_Change") != change:
                log.info("endpoint %s changed while it was being served; not marking it %s", endpoint, status)
                return False
            if server is not None:
                self._servers[endpoint] = server
            record = self.resources.set_status("endpoint", endpoint, status, emit=False, **changes)
            self.resources.emit("endpoint", record)
        return True

    def url(self, endpoint: str) -> Optional[str]:
        """The URL of the endpoint's server while it serves (InService or Updating), else None."""
        record = self.records.get("endpoint", endpoint)
        if record is None or record["EndpointStatus"] not in ("InService", "Updating"):
            return None
        return record.get("_Url")

    def recover(self) -> List[str]:
        """After a restart: endpoints that were serving (or about to) start serving again."""
        notes = []
        for record in self.records.all("endpoint"):
            if record["EndpointStatus"] == "Deleting":     # its deletion ends now
                self.records.path("endpoint", record["EndpointName"]).unlink()
                continue
            if record["EndpointStatus"] in ("InService", "Updating", "Creating"):
                name, change = record["EndpointName"], uuid.uuid4().hex
                self.resources.set_status("endpoint", name, "Creating", emit=False, _Change=change)
                self._start_change(name, record["EndpointConfigName"], change, None)
                notes.append(f"endpoint {name} restarting")
        return notes

    def stop_servers(self) -> None:
        with self.records.lock:
            servers, self._servers = list(self._servers.values()), {}
        for server in servers:
            server.stop()


def update_refusal(status: str, arn: str) -> Optional[str]:
    """Why SageMaker refuses UpdateEndpoint on an endpoint in ``status`` (the ValidationException's
    message), or None when it accepts it: only an InService endpoint can be updated."""
    if status == "InService":
        return None
    if status == "Failed":
        return f'Cannot update failed endpoint "{arn}". Only DeleteEndpoint is possible on a failed endpoint.'
    return f'Cannot update in-progress endpoint "{arn}".'
