"""moto-backed AWS for the control-plane tests: a bucket, recorded requests, and the moto patches
DESIGN.md lists (canned tuning/training results, UpdateEndpoint, binary invoke_endpoint bodies).

The endpoint follows SageMaker's lifecycle, not moto's instant one: CreateEndpoint leaves it
``Creating`` and UpdateEndpoint ``Updating`` (still serving its old endpoint config) until the test
advances it with ``FakeAws.finish_endpoint``; UpdateEndpoint is refused (ValidationException) unless
the endpoint is ``InService``, a second CreateEndpoint of a name in use is refused, and on a ``Failed``
endpoint only DeleteEndpoint (and DescribeEndpoint) are allowed.

``FakeAws`` starts ``moto.mock_aws``, creates the bucket, wires a ``ControlPlane`` into the Chalice
app and records every SageMaker and SageMaker Runtime request exactly as the control plane sent it
(botocore's ``provide-client-params`` hook, before serialisation).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import io
import itertools
import json
import os
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")      # no X-Ray daemon here
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "DogBreeds")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

import boto3  # noqa: E402
import botocore.session  # noqa: E402
from moto import mock_aws  # noqa: E402
from moto.core import DEFAULT_ACCOUNT_ID  # noqa: E402
from moto.sagemaker.exceptions import ValidationError  # noqa: E402
from moto.sagemaker.models import SageMakerModelBackend, sagemaker_backends  # noqa: E402
from moto.sagemaker.responses import SageMakerResponse  # noqa: E402
from moto.sagemakerruntime.responses import SageMakerRuntimeResponse  # noqa: E402

from chalice_app import app as chalice_app  # noqa: E402
from chalicelib.config import BucketLayout, HostingConfig, PipelineConfig  # noqa: E402
from chalicelib import names  # noqa: E402
from chalicelib.control import ControlPlane  # noqa: E402

REGION = "us-east-1"
BUCKET = "dogbreeds-test-bucket"
ROLE_ARN = f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/dogbreeds-sagemaker"
SOURCE_URI = f"s3://{BUCKET}/code/sourcedir-0123456789abcdef.tar.gz"
ENDPOINT = HostingConfig().endpoint_name
STATE_KEY = BucketLayout().state_key
DATASET = "dogs"
# The tuning job's best trial, as SageMaker reports its hyperparameters (JSON-encoded strings).
BEST = {"lr": "0.0042", "weight-decay": "0.012", "eps": "3e-08", "batch-size": "64", "arch": '"resnet34"'}
T0 = 1_795_000_000_000     # LastModifiedTime (epoch ms) of the endpoint's first change
_sequence = itertools.count(1)
_changes = itertools.count(1)


def _next_change() -> float:
    """A LastModifiedTime later than every one before it (and than T0 plus a few hours)."""
    return T0 + 10_000_000 + next(_changes) * 1000


def jpeg_bytes(size=(32, 24), color=(200, 40, 40)) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def png_bytes(size=(16, 16)) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", size, (0, 90, 200)).save(out, format="PNG")
    return out.getvalue()


def endpoint_reply(labels=("Akita", "Affenpinscher"), probabilities=(0.9, 0.1)) -> dict:
    return {"predictions": [{"label": label, "class": f"{i + 1:03d}.{label}", "index": i, "probability": p}
                            for i, (label, p) in enumerate(zip(labels, probabilities))]}


# --- events, shaped as EventBridge delivers them ---------------------------------------------------

def object_created(bucket: str, key: str, etag: str, size: int = 10) -> dict:
    n = next(_sequence)
    return {"version": "0", "id": f"s3-{n}", "detail-type": "Object Created", "source": "aws.s3",
            "account": DEFAULT_ACCOUNT_ID, "time": "2026-11-22T10:00:00Z", "region": REGION,
            "resources": [f"arn:aws:s3:::{bucket}"],
            "detail": {"version": "0", "bucket": {"name": bucket},
                       "object": {"key": key, "size": size, "etag": etag.strip('"'), "sequencer": f"{n:016X}"},
                       "request-id": f"req-{n}", "requester": DEFAULT_ACCOUNT_ID, "reason": "PutObject"}}


_DETAIL = {
    "tuning": ("SageMaker HyperParameter Tuning Job State Change", "HyperParameterTuningJobName",
               "HyperParameterTuningJobStatus"),
    "training": ("SageMaker Training Job State Change", "TrainingJobName", "TrainingJobStatus"),
    "transform": ("SageMaker Transform Job State Change", "TransformJobName", "TransformJobStatus"),
    "endpoint": ("SageMaker Endpoint State Change", "EndpointName", "EndpointStatus"),
}


def state_change(kind: str, name: str, status: str, **detail) -> dict:
    detail_type, name_field, status_field = _DETAIL[kind]
    n = next(_sequence)
    return {"version": "0", "id": f"sm-{n}", "detail-type": detail_type, "source": "aws.sagemaker",
            "account": DEFAULT_ACCOUNT_ID, "time": "2026-11-22T10:00:00Z", "region": REGION, "resources": [],
            "detail": {name_field: name, status_field: status, **detail}}


def reconcile_tick() -> dict:
    """The event of the app's rate rule, as EventBridge sends it (each tick its own id and time)."""
    n = next(_sequence)
    return {"version": "0", "id": f"tick-{n}", "detail-type": "Scheduled Event", "source": "aws.events",
            "account": DEFAULT_ACCOUNT_ID, "time": f"2026-11-22T10:{n % 60:02d}:00Z", "region": REGION,
            "resources": [f"arn:aws:events:{REGION}:{DEFAULT_ACCOUNT_ID}:rule/dogbreeds-dev-reconcile"],
            "detail": {}}


# --- the app, as EventBridge and API clients reach it ------------------------------------------------

HANDLERS = {"aws.s3": "on_bucket_event", "aws.sagemaker": "on_sagemaker_event", "aws.events": "reconcile"}


def without_environment_swaps(test_client):
    """``test_client`` (Chalice's) made safe to call from several threads at once: it swaps ``os.environ``
    for a copy with the stage's variables around each request and invocation, a process-wide swap whose
    restores interleave across threads and can leave the session on a copy (seen: a later test's setenv
    invisible to code that holds the real mapping). The app's stage has no variables, so the swap adds
    nothing and is not made."""
    assert not test_client._chalice_config.environment_variables, "the stage has no variables to set"
    for part in (test_client.http, test_client.lambda_):
        part._patched_env_vars = lambda _variables: contextlib.nullcontext()
    return test_client


def deliver(client, event, handler=None):
    """Invoke the handler EventBridge would invoke for ``event``; return its result."""
    handler = handler or HANDLERS[event["source"]]
    return client.lambda_.invoke(handler, event).payload


def train(aws, client, test_acc: Optional[float], dataset=DATASET, note=b"published", upload=True):
    """Publish ``dataset`` (``note`` is the marker's content: new content, new run) and deliver its
    events up to the training job's Completed; return (marker, that handler's result)."""
    if upload:
        aws.upload_dataset(dataset)
    publish = aws.publish(dataset, note)
    marker = publish["detail"]["object"]["etag"]
    tuning, training = names.tuning_job_name(dataset, marker), names.training_job_name(dataset, marker)
    assert deliver(client, publish)["actions"] == ["StartTuning"]
    aws.set_best_trial(tuning, BEST)
    assert deliver(client, state_change("tuning", tuning, "Completed"))["actions"] == ["StartTraining"]
    metrics = {"test:loss": 0.4} if test_acc is None else {"test:accuracy": test_acc, "test:loss": 0.4}
    aws.set_final_metrics(training, metrics)
    return marker, deliver(client, state_change("training", training, "Completed"))


def post_image(client, body, content_type="image/jpeg", query=""):
    """``POST /predict{query}`` with ``body`` through Chalice's test client."""
    return client.http.post(f"/predict{query}", headers={"Content-Type": content_type}, body=body)


# --- moto patches ------------------------------------------------------------------------------------

# kind -> (the backend's create method, its registry, the name argument, the job's status attribute)
JOBS = {
    "tuning": ("create_hyper_parameter_tuning_job", "hyper_parameter_tuning_jobs", "hyper_parameter_tuning_job_name",
               "hyper_parameter_tuning_job_status"),
    "training": ("create_training_job", "training_jobs", "training_job_name", "training_job_status"),
    "transform": ("create_transform_job", "transform_jobs", "transform_job_name", "transform_job_status"),
}


def _starts_in_progress(create, registry, name_arg, status):
    """moto describes a new job as Completed at once; SageMaker as InProgress until it ends (the job's
    end event, which a test delivers, is sent once it is so: ``FakeAws.finish_job``)."""
    def create_in_progress(backend, *args, **kwargs):
        result = create(backend, *args, **kwargs)
        setattr(getattr(backend, registry)[kwargs[name_arg]], status, "InProgress")
        return result
    return create_in_progress


class _Patches:
    """Patches moto's response classes for the duration of the fake (undone by ``stop``)."""

    def __init__(self, invocations: List[dict], replies: List[Tuple[int, dict]]):
        self._saved = []
        self.pending_configs: Dict[str, str] = {}     # endpoint -> the config an UpdateEndpoint is moving it to
        self.deletes_take_time = False                # True: DeleteEndpoint leaves it Deleting until finished
        self.invocations, self.replies = invocations, replies

        def invoke_endpoint(response_self):
            # moto JSON-encodes the raw body to key its canned results, which fails on image bytes;
            # this stands in for the endpoint: it records what arrived and answers the next reply.
            self.invocations.append({"EndpointName": response_self.path.split("/")[2],
                                     "Body": response_self.raw_body,
                                     "ContentType": response_self.headers.get("Content-Type"),
                                     "Accept": response_self.headers.get("Accept")})
            status, reply = self.replies.pop(0) if self.replies else (200, endpoint_reply())
            if status != 200:   # the container refused: SageMaker answers ModelError (424) with its status
                error = {"__type": "ModelError", "message": "Received client error from primary with message",
                         "OriginalStatusCode": status, "OriginalMessage": json.dumps(reply)}
                return 424, {"status": 424, "Content-Type": "application/json",
                             "x-amzn-ErrorType": "ModelError"}, json.dumps(error)
            if isinstance(reply, (bytes, str)):   # a reply given as raw text/bytes is sent as it is (not JSON)
                return 200, {"Content-Type": "application/json"}, reply
            return 200, {"Content-Type": "application/json"}, json.dumps(reply)

        original_create = SageMakerModelBackend.create_endpoint
        original_delete = SageMakerModelBackend.delete_endpoint

        def create_endpoint(backend, endpoint_name, endpoint_config_name, tags):
            if endpoint_name in backend.endpoints:        # moto would silently replace it
                raise ValidationError(f'Cannot create already existing endpoint "{backend.endpoints[endpoint_name].arn}".')
            endpoint = original_create(backend, endpoint_name=endpoint_name, endpoint_config_name=endpoint_config_name,
                                       tags=tags)
            endpoint.endpoint_status = "Creating"
            return endpoint

        def delete_endpoint(backend, endpoint_name):
            endpoint = backend.endpoints.get(endpoint_name)
            if endpoint is not None and endpoint.endpoint_status == "Deleting":   # as the local SageMaker does
                raise ValidationError(f'Cannot delete in-progress endpoint "{endpoint.arn}".')
            if endpoint is not None and self.deletes_take_time:
                endpoint.endpoint_status = "Deleting"
                return
            original_delete(backend, endpoint_name=endpoint_name)
            self.pending_configs.pop(endpoint_name, None)

        def update_endpoint(response_self):
            # moto 5.2.5 lacks UpdateEndpoint. SageMaker's: only an InService endpoint may be updated; it
            # is Updating (serving the old config) until it is InService with the new one.
            params = json.loads(response_self.body)
            backend = sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION]
            backend.describe_endpoint(params["EndpointName"])                 # Could not find endpoint ...
            backend.describe_endpoint_config(params["EndpointConfigName"])    # Could not find endpoint configuration ...
            endpoint = backend.endpoints[params["EndpointName"]]
            if endpoint.endpoint_status == "Failed":
                raise ValidationError(f'Cannot update failed endpoint "{endpoint.arn}": delete it first.')
            if endpoint.endpoint_status != "InService":
                raise ValidationError(f'Cannot update in-progress endpoint "{endpoint.arn}".')
            endpoint.endpoint_status = "Updating"
            self.pending_configs[params["EndpointName"]] = params["EndpointConfigName"]
            return json.dumps({"EndpointArn": endpoint.arn})

        self._patch(SageMakerRuntimeResponse, "use_raw_body", True)   # else moto decodes image bytes as UTF-8
        self._patch(SageMakerRuntimeResponse, "invoke_endpoint", invoke_endpoint)
        self._patch(SageMakerResponse, "update_endpoint", update_endpoint)
        self._patch(SageMakerModelBackend, "create_endpoint", create_endpoint)
        for method, registry, name_arg, status in JOBS.values():
            self._patch(SageMakerModelBackend, method, _starts_in_progress(
                SageMakerModelBackend.__dict__[method], registry, name_arg, status))
        self._patch(SageMakerModelBackend, "delete_endpoint", delete_endpoint)

    def _patch(self, cls, name, function):
        self._saved.append((cls, name, cls.__dict__.get(name)))
        setattr(cls, name, function)

    def stop(self):
        for cls, name, original in reversed(self._saved):
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


_LOADER = []


def _botocore_session():
    """A fresh botocore session whose loader is shared by every fake: the loader caches the service
    models, which otherwise are parsed again from JSON for each test (about 0.4 s each time)."""
    session = botocore.session.get_session()
    if _LOADER:
        session.register_component("data_loader", _LOADER[0])
    else:
        _LOADER.append(session.get_component("data_loader"))
    return session


class FakeAws:
    """moto with our bucket and a control plane wired into the Chalice app. Use as a context manager."""

    def __init__(self, **config_overrides):
        self.config_overrides = config_overrides
        self.requests: List[Tuple[str, dict]] = []         # (operation, params) to SageMaker, in order
        self.invocations: List[dict] = []                   # what the "endpoint" received
        self.endpoint_replies: List[Tuple[int, dict]] = []  # what it answers next (status, JSON; raw bytes: as is)
        self.metrics: List[Tuple[str, float, Dict[str, str]]] = []

    def __enter__(self) -> "FakeAws":
        self._mock = mock_aws()
        self._mock.start()
        self._patches = _Patches(self.invocations, self.endpoint_replies)
        session = boto3.session.Session(region_name=REGION, botocore_session=_botocore_session())
        self.s3 = session.client("s3")
        self.s3.create_bucket(Bucket=BUCKET)
        sagemaker = session.client("sagemaker")
        runtime = session.client("sagemaker-runtime")
        for client in (sagemaker, runtime):
            client.meta.events.register("provide-client-params.*.*", self._record)
        self.sagemaker = sagemaker
        config = PipelineConfig(bucket=BUCKET, role_arn=ROLE_ARN, region=REGION, **self.config_overrides)
        self.plane = ControlPlane(config, self.s3, sagemaker, runtime,
                                  metric=lambda name, value, dims: self.metrics.append((name, value, dims)))
        chalice_app.use_control_plane(self.plane)
        return self

    def __exit__(self, *exc):
        chalice_app.use_control_plane(None)
        self._patches.stop()
        self._mock.stop()

    def _record(self, params, model, **kwargs):
        if model.service_model.service_name == "sagemaker" and not model.name.startswith(("Describe", "List")):
            self.requests.append((model.name, copy.deepcopy(params)))

    def created(self, operation: str) -> List[dict]:
        return [params for name, params in self.requests if name == operation]

    # --- the bucket ------------------------------------------------------------------------------

    def put(self, key: str, body: bytes = b"x") -> str:
        """Write an object; return its ETag (quoted, as S3 returns it)."""
        return self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)["ETag"]

    def get(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()

    def upload_source_pointer(self, uri: str = SOURCE_URI) -> None:
        self.put("code/current.json", json.dumps({"uri": uri}).encode())

    def upload_dataset(self, name: str, classes=("001.Affenpinscher", "002.Akita"), per_split=None) -> None:
        per_split = per_split or {"train": 3, "valid": 1, "test": 1}
        image = jpeg_bytes()
        for split, count in per_split.items():
            for label in classes:
                for i in range(count):
                    self.put(f"datasets/{name}/{split}/{label}/{i:03d}.jpg", image)

    def publish(self, name: str, note: bytes = b"published") -> dict:
        """Write ``datasets/<name>/_READY``; return the EventBridge event S3 would send."""
        key = f"datasets/{name}/_READY"
        return object_created(BUCKET, key, self.put(key, note))

    def request_batch_marker(self, batch_id: str, note: bytes = b"go") -> dict:
        key = f"batch/{batch_id}/_READY"
        return object_created(BUCKET, key, self.put(key, note))

    # --- moto's canned job results ---------------------------------------------------------------

    @property
    def backend(self):
        return sagemaker_backends[DEFAULT_ACCOUNT_ID][REGION]

    def finish_endpoint(self, name: str, status: str, reason: Optional[str] = None,
                        modified: Optional[float] = None) -> dict:
        """Advance the endpoint as SageMaker would, minutes after a create, update or delete:
        ``"InService"`` (serving the config an update asked for), ``"Failed"`` with ``reason``,
        ``"RolledBack"`` (an update that failed with ``reason``: InService on the previous config, as
        SageMaker's default blue/green update does) or ``"Deleted"`` (gone). Returns the EventBridge state change SageMaker sends for it; None for a
        deletion, which ends with no event (there is no endpoint left to change state)."""
        endpoint = self.backend.endpoints[name]
        assert endpoint.endpoint_status in ("Creating", "Updating", "Deleting"), \
            f"endpoint {name} is {endpoint.endpoint_status}: nothing is in progress"
        if status == "Deleted":
            del self.backend.endpoints[name]
            self._patches.pending_configs.pop(name, None)
            return None
        pending = self._patches.pending_configs.pop(name, None)
        if status == "RolledBack":      # a failed update: back InService on the previous config, with the reason
            assert pending is not None and reason, "only an update is rolled back, and with a reason"
            endpoint.endpoint_status, endpoint.failure_reason = "InService", reason
            return state_change("endpoint", name, "IN_SERVICE", LastModifiedTime=modified or _next_change(),
                                FailureReason=reason)
        if status == "InService":
            endpoint.endpoint_config_name = pending or endpoint.endpoint_config_name
            endpoint.failure_reason = None
        else:
            assert status == "Failed" and reason, "an endpoint fails with a reason"
            endpoint.failure_reason = reason
        endpoint.endpoint_status = status
        detail = {"FailureReason": reason} if reason else {}
        return state_change("endpoint", name, "IN_SERVICE" if status == "InService" else "FAILED",
                            LastModifiedTime=modified or _next_change(), **detail)

    def finish_job(self, kind: str, name: str, status: str = "Completed") -> None:
        """End a tuning, training or transform job as SageMaker would (describe then says ``status``)."""
        _, registry, _, status_attribute = JOBS[kind]
        setattr(getattr(self.backend, registry)[name], status_attribute, status)

    @property
    def deletes_take_time(self) -> bool:
        return self._patches.deletes_take_time

    @deletes_take_time.setter
    def deletes_take_time(self, value: bool) -> None:
        self._patches.deletes_take_time = value

    def set_best_trial(self, tuning_job: str, hyperparameters: Dict[str, str]) -> None:
        """moto reports a fake BestTrainingJob; give it the hyperparameters a real one would have."""
        job = self.backend.hyper_parameter_tuning_jobs[tuning_job]
        job.best_training_job = dict(job.best_training_job, TunedHyperParameters=dict(hyperparameters),
                                     TrainingJobName=f"{tuning_job}-003-abcdef12")

    def set_final_metrics(self, training_job: str, metrics: Dict[str, float]) -> None:
        job = self.backend.training_jobs[training_job]
        job.final_metric_data_list = [{"MetricName": k, "Value": v, "Timestamp": job.creation_time}
                                      for k, v in metrics.items()]

    def write_transform_outputs(self, batch_id: str, outputs: Dict[str, Optional[dict]]) -> None:
        """What a transform job writes: ``batch/<id>/output/<image>.out`` per input image."""
        for image, reply in outputs.items():
            body = b"not json" if reply is None else json.dumps(reply).encode()
            self.put(f"batch/{batch_id}/output/{image}.out", body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")

