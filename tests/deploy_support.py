"""AWS for the ``dogbreeds aws deploy``/``destroy`` tests: moto in-process, every request recorded, and
the two places where moto 5.2.5 cannot stand in for AWS filled in:

- **API Gateway.** moto's apigateway backend imports ``openapi_spec_validator``, which this project does
  not install (moto's ``apigateway`` extra), so Chalice's REST API steps cannot run on it. ``ApiGateway``
  answers the six requests Chalice sends (ImportRestApi, GetRestApi, PutRestApi, UpdateRestApi,
  CreateDeployment, DeleteRestApi) from a dict, refusing an unknown API id with NotFoundException and a
  body that is not a JSON object with BadRequestException, as API Gateway does; the tests assert those
  requests.
- **S3 -> EventBridge.** moto stores a bucket's ``EventBridgeConfiguration`` but leaves it out of
  GetBucketNotificationConfiguration's answer; S3 returns it (an empty element). ``eventbridge_answered``
  patches moto's response to include it.

``Recorder`` records every request of a boto3 session (and of Chalice's deployer, which gets the same
botocore session) as ``(service, operation, params)``, before serialisation.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import json
import shutil
import zipfile
from pathlib import Path
from typing import List, Tuple

import boto3
import botocore.session
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from moto.s3.responses import S3Response

from deploy import CHALICE_DIR, lambda_runtime

READ_PREFIXES = ("Get", "List", "Describe", "Head")


def mutating(calls) -> List[Tuple[str, str]]:
    """(service, operation) of each recorded call that changes something (not Get/List/Describe/Head)."""
    return [(service, operation) for service, operation, _ in calls if not operation.startswith(READ_PREFIXES)]


def operations(calls, service=None) -> List[str]:
    return [f"{s}.{operation}" for s, operation, _ in calls if service is None or s == service]


class Recorder:
    """Every request sent through ``session`` (a boto3 session), in order."""

    def __init__(self, session):
        self.calls: List[Tuple[str, str, dict]] = []
        session._session.register("provide-client-params", self._record)

    def _record(self, params, model, **kwargs):
        self.calls.append((model.service_model.service_name, model.name, copy.deepcopy(params)))

    def take(self) -> List[Tuple[str, str, dict]]:
        """The calls recorded since the last take."""
        calls, self.calls = self.calls, []
        return calls


class ApiGateway:
    """The REST APIs Chalice's deployer makes, held in a dict (see the module's docstring)."""

    def __init__(self, session):
        self.apis = {}
        self._ids = (f"api{n:07d}" for n in itertools.count(1))
        session._session.register("before-parameter-build.api-gateway", self._keep_params)
        session._session.register("before-call.api-gateway", self._answer)

    @staticmethod
    def _keep_params(params, context, **kwargs):
        # before-call sees the serialised HTTP request; the stand-in reads the request's own parameters.
        context["api_gateway_params"] = copy.deepcopy(params)

    @staticmethod
    def _reply(status: int, body: dict):
        response = AWSResponse("https://apigateway.amazonaws.com/", status, {}, None)
        return response, {**body, "ResponseMetadata": {"HTTPStatusCode": status}}

    def _error(self, status: int, code: str, message: str):
        return self._reply(status, {"Error": {"Code": code, "Message": message}})

    def _shown(self, api_id: str) -> dict:
        api = self.apis[api_id]
        return {"id": api_id, "name": api["name"], "endpointConfiguration": copy.deepcopy(api["endpointConfiguration"])}

    def _body(self, params):
        try:
            document = json.loads(params["body"])
        except ValueError:
            document = None
        return document if isinstance(document, dict) else None

    def _answer(self, model, context, **kwargs):
        operation, params = model.name, context["api_gateway_params"]
        if operation == "ImportRestApi":
            document = self._body(params)
            if document is None:
                return self._error(400, "BadRequestException", "Invalid OpenAPI input.")
            api_id = next(self._ids)
            types = [params.get("parameters", {}).get("endpointConfigurationTypes", "EDGE")]
            self.apis[api_id] = {"name": document.get("info", {}).get("title"), "document": document,
                                 "endpointConfiguration": {"types": types}, "deployments": [], "patches": []}
            return self._reply(201, self._shown(api_id))
        api = self.apis.get(params.get("restApiId"))
        if api is None:
            return self._error(404, "NotFoundException", "Invalid API identifier specified")
        if operation == "GetRestApi":
            return self._reply(200, self._shown(params["restApiId"]))
        if operation == "PutRestApi":
            document = self._body(params)
            if document is None:
                return self._error(400, "BadRequestException", "Invalid OpenAPI input.")
            api["document"] = document
            return self._reply(200, self._shown(params["restApiId"]))
        if operation == "UpdateRestApi":
            for patch in params["patchOperations"]:
                if patch["path"].startswith("/endpointConfiguration/types/"):
                    api["endpointConfiguration"]["types"] = [patch["value"]]
            api["patches"].append(params["patchOperations"])
            return self._reply(200, self._shown(params["restApiId"]))
        if operation == "CreateDeployment":
            api["deployments"].append({"stageName": params.get("stageName"),
                                       "tracingEnabled": params.get("tracingEnabled")})
            return self._reply(201, {"id": f"dep{len(api['deployments'])}"})
        if operation == "DeleteRestApi":
            del self.apis[params["restApiId"]]
            return self._reply(202, {})
        raise NotImplementedError(f"the API Gateway stand-in does not answer {operation}")


@contextlib.contextmanager
def eventbridge_answered():
    """moto's GetBucketNotificationConfiguration with the EventBridgeConfiguration it stored, as S3 answers."""
    original = S3Response.get_bucket_notification

    def get_bucket_notification(self):
        status, headers, body = original(self)
        stored = self.backend.get_bucket_notification_configuration(self.bucket_name)
        if stored is not None and stored.event_bridge is not None:
            closing = "</NotificationConfiguration>"
            if closing in body:
                body = body.replace(closing, "<EventBridgeConfiguration/>" + closing)
            else:          # moto answered an empty configuration
                body = ('<?xml version="1.0" encoding="UTF-8"?><NotificationConfiguration '
                        'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><EventBridgeConfiguration/>'
                        '</NotificationConfiguration>')
        return status, headers, body

    S3Response.get_bucket_notification = get_bucket_notification
    try:
        yield
    finally:
        S3Response.get_bucket_notification = original


def _empty_zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("python/.keep", b"")
    return out.getvalue()


_EMPTY_ZIP = _empty_zip()


def provide_powertools_layer(lambda_client) -> None:
    """The AWS-managed Powertools layer version the stage names, as moto can know it. In AWS every
    account may use account 017000801446's layer; moto looks a layer up by name and version in the
    caller's own account only (and refuses a function naming one it lacks), so the same name is
    published here up to the pinned version number."""
    name, version = lambda_runtime.powertools_layer()
    for _ in range(version):
        lambda_client.publish_layer_version(LayerName=name, Content={"ZipFile": _EMPTY_ZIP},
                                            CompatibleRuntimes=[f"python{lambda_runtime.LAMBDA_PYTHON}"])


class FakeCloud:
    """moto, a recorded boto3 session in ``region`` and the API Gateway stand-in. A context manager."""

    def __init__(self, region: str = "eu-west-1"):
        self.region = region

    def __enter__(self) -> "FakeCloud":
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(mock_aws())
        self._stack.enter_context(eventbridge_answered())
        self.session = boto3.session.Session(region_name=self.region, botocore_session=botocore.session.get_session())
        provide_powertools_layer(self.session.client("lambda"))      # before the recorder: not a request of ours
        self.recorder = Recorder(self.session)
        self.api_gateway = ApiGateway(self.session)
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def client(self, service: str):
        return self.session.client(service)


def chalice_project(root: Path) -> Path:
    """A copy of chalice_app/ to deploy from (Chalice writes its packages and records inside), whose
    requirements.txt lists no package: pip would need the network."""
    project = root / "chalice_app"
    shutil.copytree(CHALICE_DIR, project, ignore=shutil.ignore_patterns("__pycache__", ".chalice", "vendor"))
    (project / "requirements.txt").write_text("# the test's copy: no packages, pip would need the network\n")
    return project
