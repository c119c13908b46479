"""Models, endpoint configs and endpoints: an endpoint is a local inference server on 127.0.0.1.

``server_factory(model_dir)`` makes the server (``dogbreeds.serving.ModelServer`` in the stack), which
loads ``code/inference.py`` from the model's archive, unpacked once under ``<models_dir>/<model>/``.
``UpdateEndpoint`` swaps the model of the running server, which drops no request. Starting or swapping
runs in a thread: the endpoint is ``Creating``/``Updating`` until it serves, then ``InService``
(or ``Failed`` with the reason).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional

from .archives import safe_extract
from .job_threads import JobThreads
from .records import now
from .resources import Resources, client_error

log = logging.getLogger(__name__)


class Endpoints:
    def __init__(self, resources: Resources, threads: JobThreads, s3, models_dir: Path,
                 server_factory: Optional[Callable]):
        self.resources = resources
        self.records = resources.records
        self.threads = threads
        self.s3 = s3
        self.models_dir = models_dir
        self.server_factory = server_factory
        self._servers: Dict[str, object] = {}

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
        """CreateEndpoint: ``Creating`` now, a server started in a thread."""
        self.resources.require_new("endpoint", name, "CreateEndpoint")
        self.resources.describe("endpoint-config", config_name, "CreateEndpoint")
        record = {"EndpointName": name, "EndpointArn": self.resources.arn("endpoint", name),
                  "EndpointConfigName": config_name, "EndpointStatus": "Creating",
                  "CreationTime": now().isoformat(), "LastModifiedTime": now().isoformat(), **extra}
        self.records.put("endpoint", name, record)
        self.resources.emit("endpoint", record)
        self.threads.start(self._serve, name, config_name, name=f"endpoint-{name}")
        return {"EndpointArn": record["EndpointArn"]}

    def update_endpoint(self, name: str, config_name: str) -> dict:
        """UpdateEndpoint: refused while the endpoint is Creating or Updating; the swap runs in a thread."""
        current = self.resources.describe("endpoint", name, "UpdateEndpoint")
        if current["EndpointStatus"] not in ("InService", "Failed"):
            raise client_error("ValidationException",
                               f"Cannot update in-progress endpoint \"{current['EndpointArn']}\".", "UpdateEndpoint")
        self.resources.describe("endpoint-config", config_name, "UpdateEndpoint")
        self.resources.set_status("endpoint", name, "Updating")
        self.threads.start(self._serve, name, config_name, name=f"endpoint-{name}")
        return {"EndpointArn": current["EndpointArn"]}

    def delete_endpoint(self, name: str) -> dict:
        self.resources.describe("endpoint", name, "DeleteEndpoint")
        server = self._servers.pop(name, None)
        if server is not None:
            server.stop()
        self.records.path("endpoint", name).unlink()
        return {}

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

    def _serve(self, endpoint: str, config_name: str) -> None:
        try:
            config = self.records.get("endpoint-config", config_name)
            model_dir = self.model_dir(config["ProductionVariants"][0]["ModelName"])
            server = self._servers.get(endpoint)
            if server is None:
                server = self.server_factory(model_dir)
                server.start()
                self._servers[endpoint] = server
            else:
                server.swap(model_dir)
            self.resources.set_status("endpoint", endpoint, "InService", EndpointConfigName=config_name,
                                      _Url=server.url, FailureReason=None)
        except Exception as exc:
            log.exception("endpoint %s could not serve %s", endpoint, config_name)
            self.resources.set_status("endpoint", endpoint, "Failed", FailureReason=f"{type(exc).__name__}: {exc}")

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
            if record["EndpointStatus"] in ("InService", "Updating", "Creating"):
                self.resources.set_status("endpoint", record["EndpointName"], "Creating", emit=False)
                self.threads.start(self._serve, record["EndpointName"], record["EndpointConfigName"],
                                   name=f"endpoint-{record['EndpointName']}")
                notes.append(f"endpoint {record['EndpointName']} restarting")
        return notes

    def stop_servers(self) -> None:
        for server in list(self._servers.values()):
            server.stop()
        self._servers.clear()
