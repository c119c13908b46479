"""The SageMaker containers' surroundings, for tests/test_container_toolkits.py: the /opt/ml tree a training
job sees, and the request context TorchServe hands the inference toolkit's handler service.

The toolkits themselves (sagemaker-training, sagemaker-inference, sagemaker-pytorch-inference) are pinned in
requirements/toolkits.txt; this module writes only what SageMaker and TorchServe would provide around them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from chalicelib.sagemaker_requests import encode_hyperparameters

# SageMaker names the hosts of a training job algo-1, algo-2, ...; one instance here.
HOST = "algo-1"


def lay_out_opt_ml(base: Path, request: dict, data: Path, source_package: Path, overrides: dict) -> None:
    """Write under ``base`` what SageMaker gives a training container for the CreateTrainingJob ``request``.

    ``input/config/hyperparameters.json``: the request's HyperParameters as sent (JSON-encoded strings),
    with ``overrides`` (plain values, encoded the same way) and ``sagemaker_submit_directory`` pointing at
    the local ``source_package`` instead of S3. ``inputdataconfig.json`` and ``resourceconfig.json``: the
    request's channels and instance type. ``input/data/<channel>/``: a copy of ``data/<channel>`` for each
    channel of the request (SageMaker downloads each S3 prefix there in File mode). Empty ``model/`` and
    ``output/data/``.
    """
    config = base / "input" / "config"
    config.mkdir(parents=True)
    hyperparameters = {**request["HyperParameters"], **encode_hyperparameters(overrides),
                       **encode_hyperparameters({"sagemaker_submit_directory": str(source_package)})}
    channels = {c["ChannelName"]: {"ContentType": c["ContentType"], "TrainingInputMode": c["InputMode"],
                                   "S3DistributionType": c["DataSource"]["S3DataSource"]["S3DataDistributionType"],
                                   "RecordWrapperType": "None"}
                for c in request["InputDataConfig"]}
    instance_type = request["ResourceConfig"]["InstanceType"]
    resources = {"current_host": HOST, "hosts": [HOST], "current_instance_type": instance_type,
                 "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
                 "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                      "hosts": [HOST]}]}
    for name, content in (("hyperparameters.json", hyperparameters), ("inputdataconfig.json", channels),
                          ("resourceconfig.json", resources)):
        (config / name).write_text(json.dumps(content))
    for channel in channels:
        shutil.copytree(data / channel, base / "input" / "data" / channel)
    (base / "model").mkdir()
    (base / "output" / "data").mkdir(parents=True)


class _RequestProcessor:
    def __init__(self, headers: dict):
        self._headers = headers

    def get_request_properties(self) -> dict:
        return self._headers


@dataclass
class ToolkitContext:
    """The parts of TorchServe's ``ts.context.Context`` that sagemaker-inference's Transformer uses: the
    model directory, one request's headers, and where the reply's status and content type are set."""

    model_dir: str
    headers: dict = field(default_factory=dict)
    status: int | None = None          # None: TorchServe answers 200
    phrase: str | None = None
    content_type: str | None = None

    @property
    def system_properties(self) -> dict:
        return {"model_dir": self.model_dir}

    @property
    def request_processor(self) -> list:
        return [_RequestProcessor(self.headers)]

    def set_response_status(self, code: int, phrase: str) -> None:
        self.status, self.phrase = int(code), phrase

    def set_response_content_type(self, index: int, content_type: str) -> None:
        self.content_type = content_type


@dataclass(frozen=True)
class ToolkitReply:
    """What the handler service answered one request with, as TorchServe would send it."""

    status: int
    body: bytes
    content_type: str | None


def handle(service, model_dir: Path, body: bytes, content_type: str | None, accept: str | None) -> ToolkitReply:
    """One request through the handler service's ``handle``, as TorchServe makes it: the body as a
    bytearray, the headers the client sent (none left out, none made up)."""
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if accept is not None:
        headers["Accept"] = accept
    context = ToolkitContext(str(model_dir), headers)
    [payload] = service.handle([{"body": bytearray(body)}], context)
    payload = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    return ToolkitReply(context.status or 200, payload, context.content_type)
