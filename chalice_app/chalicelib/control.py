"""The control plane's side effects: read the state, apply an event's transition, call AWS, save.

``ControlPlane`` is given boto3-shaped clients (``s3``, ``sagemaker``, ``sagemaker-runtime``), so the
same code drives AWS from Lambda and the embedded local runtime's stand-ins on one machine. The
decisions themselves are the pure functions of ``state``, ``pipeline`` and ``sagemaker_requests``
(and, for a batch's summary, of the ``batch`` package).

Delivery is at least once and unordered, so handling an event is:

1. load ``pipeline/state.json`` and its ETag;
2. if the event was seen, stop; else fetch what its transition needs (the dataset listing, the best
   trial's hyperparameters, the final metrics) and compute ``(new_state, actions)``;
3. perform the actions; every one is idempotent (deterministic names: ``ResourceInUse`` and
   "already exists" count as done);
4. save the state only if it is unchanged since step 1 (S3 conditional write); on a conflict start
   again from step 1: the event is then either seen (the other writer handled it) or handled again,
   harmlessly.

Actions come before the save, so a crash in between means the event's redelivery redoes them.

Standard library and boto3 only: this module runs on Lambda.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from batch import keys as batch_keys
from batch.predictions import predictions_csv

from . import names, predict, sagemaker_requests as requests
from .config import PipelineConfig
from .events import (BatchRequested, DatasetPublished, EventError, Ignored, JobStateChanged, ReconcileTick,
                     parse_event)
from .pipeline import check_dataset_layout, final_metrics
from .state import (CREATE, DELETE, TERMINAL, UPDATE, Deploy, EndpointSeen, EnsureServing, PipelineState, Record,
                    StartTraining, StartTransform, StartTuning, WritePredictions, endpoint_deleted, endpoint_step,
                    endpoint_step_taken, on_batch_requested, on_dataset_published, on_endpoint_changed,
                    on_reconcile_tick, on_serve_requested, on_training_changed, on_transform_changed,
                    on_tuning_changed, serve_refusal)

log = logging.getLogger("dogbreeds.control")

SOURCE_POINTER = "current.json"       # under the code prefix: {"uri": "s3://.../sourcedir-<digest>.tar.gz", ...}
SAVE_ATTEMPTS = 5
SERVING_STATUSES = ("InService", "Updating", "SystemUpdating")   # an updating endpoint still serves its old model
# A failed endpoint's deletion is watched this long (checks x seconds) before its recreation is left to
# the next reconciliation tick (SageMaker sends no event when a deleted endpoint is gone); deleting an
# endpoint without instances takes seconds.
DELETION_CHECKS, DELETION_CHECK_INTERVAL_S = 6, 5.0
RERUNNABLE_BATCH = ("Failed", "Stopped", "NoModel")


class StateConflict(Exception):
    """Another writer saved the state between our read and our write."""


def error_code(exc: Exception) -> str:
    """The AWS error code of a botocore ClientError (or a stand-in with the same ``response``)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


def already_done(exc: Exception) -> bool:
    """A create that failed because its deterministic name exists: the earlier delivery did it."""
    code, message = error_code(exc), error_message(exc).lower()
    return code == "ResourceInUse" or (code == "ValidationException" and "already exist" in message)


def _connection_failure(exc: Exception) -> bool:
    """A network failure on the way to the endpoint, which carries no AWS error code: botocore's
    connection errors (EndpointConnectionError, ConnectionClosedError...) or the standard library's."""
    if isinstance(exc, ConnectionError):
        return True
    try:
        from botocore.exceptions import ConnectionError as BotocoreConnectionError, HTTPClientError
    except ImportError:        # a stand-in client without botocore
        return False
    return isinstance(exc, (BotocoreConnectionError, HTTPClientError))


def not_found(exc: Exception) -> bool:
    """The error says the object or resource does not exist (S3 get/head, SageMaker describe)."""
    code, message = error_code(exc), error_message(exc).lower()
    return code in ("NoSuchKey", "404", "NotFound", "ResourceNotFound") or (
        code == "ValidationException" and ("could not find" in message or "not found" in message))


def read_json_object(s3, bucket: str, key: str) -> Optional[dict]:
    """The JSON object stored at ``key``; None when there is no such object or it is not a JSON object."""
    try:
        response = s3.get_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if not_found(exc):
            return None
        raise
    try:
        document = json.loads(response["Body"].read().decode("utf-8"))
    except ValueError:                  # includes UnicodeDecodeError
        return None
    return document if isinstance(document, dict) else None


class StateStore:
    """``PipelineState`` as one JSON object in the bucket, written only over the version it was read as."""

    def __init__(self, s3, bucket: str, key: str):
        self.s3, self.bucket, self.key = s3, bucket, key

    def load(self) -> Tuple[PipelineState, Optional[str]]:
        try:
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:
            if not_found(exc):
                return PipelineState(), None
            raise
        return PipelineState.from_json(response["Body"].read().decode("utf-8")), response["ETag"]

    def save(self, state: PipelineState, etag: Optional[str]) -> None:
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=state.to_json().encode("utf-8"),
                               ContentType="application/json", **condition)
        except Exception as exc:
            if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                raise StateConflict(str(exc)) from exc
            raise


@dataclass
class Performed:
    """What handling one event did: the actions, in order, and the job ends found by describing a job
    a create found already there (``ControlPlane._catch_up``)."""
    actions: List[object] = field(default_factory=list)
    caught_up: List[JobStateChanged] = field(default_factory=list)


MetricSink = Callable[[str, float, Dict[str, str]], None]   # (name, value, dimensions)


class ControlPlane:
    def __init__(self, config: PipelineConfig, s3, sagemaker, runtime, metric: Optional[MetricSink] = None):
        self.config = config
        self.s3, self.sagemaker, self.runtime = s3, sagemaker, runtime
        self.metric = metric or (lambda name, value, dimensions: None)
        self.store = StateStore(s3, config.bucket, config.layout.state_key)
        self.sleep = time.sleep
        self.clock = time.time          # when the gate or a person chose a model (the history's times)

    # --- events ---------------------------------------------------------------------------------

    def handle_event(self, raw_event) -> List[object]:
        """Handle an S3 or SageMaker event (any shape ``events.parse_event`` reads); return the
        actions performed. Raises EventError for a malformed event (retrying it cannot help) and
        lets AWS errors through (the delivery is retried; handling is idempotent)."""
        performed: List[object] = []
        for event in parse_event(raw_event):
            if isinstance(event, Ignored):
                log.debug("ignored: %s", event.reason)
                continue
            if isinstance(event, (DatasetPublished, BatchRequested)) and event.bucket != self.config.bucket:
                log.info("ignored: an object in bucket %s, not %s", event.bucket, self.config.bucket)
                continue
            performed.extend(self.handle(event))
        return performed

    def handle(self, event) -> List[object]:
        for _ in range(SAVE_ATTEMPTS):
            state, etag = self.store.load()
            if event.identity in state.events_seen:
                log.info("already handled: %s", event.identity)
                return []
            new, actions = self._transition(state, event)
            if new is state:
                return []
            performed = Performed()
            for action in actions:
                new = self._perform(action, new, performed)
            try:
                self.store.save(new, etag)
            except StateConflict:
                log.info("state changed while handling %s: handling it again", event.identity)
                continue
            for handled in [event] + performed.caught_up:
                self._count_gate_decision(state, new, handled)
            return performed.actions
        raise RuntimeError(f"the pipeline state kept changing while handling {event.identity}; "
                           f"the event will be redelivered")

    def _count_gate_decision(self, old: PipelineState, new: PipelineState, event) -> None:
        if isinstance(event, JobStateChanged) and event.kind == "training":
            before, after = old.run_for("training", event.name), new.run_for("training", event.name)
            if after is not None and after.gate and not (before is not None and before.gate):
                decision = "deploy" if after.gate.get("deploy") else "refuse"
                log.info("quality gate for %s: %s (%s)", event.name, decision, after.gate.get("reason"))
                self.metric("GateDecisions", 1, {"decision": decision})

    def _transition(self, state: PipelineState, event):
        if isinstance(event, DatasetPublished):
            return on_dataset_published(state, event, *self._dataset_facts(event.name))
        if isinstance(event, BatchRequested):
            return on_batch_requested(state, event, self.config.layout.batches)
        if isinstance(event, ReconcileTick):
            return on_reconcile_tick(state)
        if event.kind == "tuning":
            best = None
            run = state.run_for("tuning", event.name)
            if run is not None and event.status == "Completed" and not run.best_hyperparameters:
                best = self._best_hyperparameters(event.name)
            return on_tuning_changed(state, event, best)
        if event.kind == "training":
            metrics = None
            if event.status == "Completed" and not event.launched_by_tuning_job \
                    and state.run_for("training", event.name) is not None:
                description = self.sagemaker.describe_training_job(TrainingJobName=event.name)
                metrics = final_metrics(description.get("FinalMetricDataList"))
            return on_training_changed(state, event, metrics, self.config.gate.accuracy_floor, self.clock())
        if event.kind == "endpoint":
            if event.name != names.endpoint_name(self.config.hosting.endpoint_name):
                return state, []
            return on_endpoint_changed(state, event)
        if event.kind == "transform":
            return on_transform_changed(state, event)
        raise EventError(f"no handler for a {event.kind} state change")

    def _dataset_facts(self, name: str):
        """(layout report, source package URI) for a published dataset. A missing code package is a
        problem of the run: nothing could be started."""
        prefix = f"{self.config.layout.datasets}{name}/"
        layout = check_dataset_layout(self._list(prefix), name, self.config.layout.datasets)
        source_uri = self.source_uri()
        if source_uri is None:
            key = self.config.layout.code + SOURCE_POINTER
            layout = dataclasses.replace(layout, ok=False, problems=layout.problems + [
                f"no training code package: s3://{self.config.bucket}/{key} is missing; upload one with "
                f"`python -m deploy.package_source --bucket {self.config.bucket}` and publish again"])
        return layout, source_uri

    def _list(self, prefix: str) -> List[Tuple[str, int]]:
        objects = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
            objects.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
        return objects

    def source_uri(self) -> Optional[str]:
        """The current training code package, from ``code/current.json``; None when it is missing or
        unreadable (the run is then refused with the upload advice)."""
        pointer = read_json_object(self.s3, self.config.bucket, self.config.layout.code + SOURCE_POINTER)
        uri = (pointer or {}).get("uri")
        return uri if isinstance(uri, str) and uri.startswith("s3://") else None

    def _best_hyperparameters(self, tuning_job: str) -> Dict[str, str]:
        description = self.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=tuning_job)
        best = description.get("BestTrainingJob") or {}
        return dict(best.get("TunedHyperParameters") or {})

    # --- actions --------------------------------------------------------------------------------

    def _create(self, operation: str, request: dict, kind: str) -> bool:
        """Send a create; False when its deterministic name exists already (an earlier delivery made it)."""
        try:
            getattr(self.sagemaker, operation)(**request)
        except Exception as exc:
            if not already_done(exc):
                raise
            log.info("%s: already exists (an earlier delivery created it)", operation)
            return False
        self.metric("JobsStarted", 1, {"kind": kind})
        return True

    def _catch_up(self, kind: str, name: str, state: PipelineState, performed: Performed) -> PipelineState:
        """A job our create found already there: an earlier delivery created it and died before saving
        the state, so the job's own end event may have come and gone unrecognised. Describe it and,
        when it has ended, apply that end as its event would have (same identity: the real event, if
        it comes, is then a duplicate)."""
        if kind == "tuning":
            description = self.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
            status = description.get("HyperParameterTuningJobStatus")
        elif kind == "training":
            description = self.sagemaker.describe_training_job(TrainingJobName=name)
            status = description.get("TrainingJobStatus")
        else:
            description = self.sagemaker.describe_transform_job(TransformJobName=name)
            status = description.get("TransformJobStatus")
        if status not in TERMINAL:
            return state
        event = JobStateChanged(kind, name, status, failure_reason=description.get("FailureReason") or None,
                                secondary_status=description.get("SecondaryStatus") or None)
        log.info("%s job %s already exists and is %s: continuing from there", kind, name, status)
        new, actions = self._transition(state, event)
        performed.caught_up.append(event)
        for action in actions:
            new = self._perform(action, new, performed)
        return new

    def _perform(self, action, state: PipelineState, performed: Performed) -> PipelineState:
        """Do ``action`` (appended to ``performed``, with any it led to); return ``state`` with what
        SageMaker's answers changed (the endpoint's steps, a job found already ended)."""
        performed.actions.append(action)
        config = self.config
        if isinstance(action, (StartTuning, StartTraining)):
            run = next(r for r in state.runs.values() if r.dataset == action.dataset and r.marker == action.marker)
            channels = [split for split in requests.CHANNELS if split in run.counts]
            if isinstance(action, StartTuning):
                request = requests.create_hyper_parameter_tuning_job(config, run.dataset, run.marker,
                                                                     run.source_uri, channels)
                if not self._create("create_hyper_parameter_tuning_job", request, "tuning"):
                    return self._catch_up("tuning", run.tuning_job, state, performed)
            else:
                best = run.best_hyperparameters or self._best_hyperparameters(run.tuning_job)
                request = requests.create_training_job(config, run.dataset, run.marker, run.source_uri,
                                                       best, channels)
                if not self._create("create_training_job", request, "training"):
                    return self._catch_up("training", run.training_job, state, performed)
        elif isinstance(action, Deploy):
            self._deploy(action)
            return self._ensure_serving(state)
        elif isinstance(action, EnsureServing):
            return self._ensure_serving(state)
        elif isinstance(action, StartTransform):
            request = requests.create_transform_job(config, action.batch_id, action.marker, action.model_name)
            if not self._create("create_transform_job", request, "transform"):
                return self._catch_up("transform", request["TransformJobName"], state, performed)
        elif isinstance(action, WritePredictions):
            self._write_predictions(action)
        elif isinstance(action, Record):
            log.warning(action.message)
        return state

    def _deploy(self, action: Deploy) -> None:
        """The model and its endpoint config; the endpoint itself is ``_ensure_serving``'s."""
        config = self.config
        job = self.sagemaker.describe_training_job(TrainingJobName=action.training_job)
        artifact = job["ModelArtifacts"]["S3ModelArtifacts"]
        self._create("create_model", requests.create_model(config, action.dataset, action.marker, artifact), "model")
        self._create("create_endpoint_config",
                     requests.create_endpoint_config(config, action.dataset, action.marker), "endpoint-config")

    def _ensure_serving(self, state: PipelineState) -> PipelineState:
        """Bring the endpoint one step closer to serving the deployed model (``state.endpoint_step``
        decides): create it, update it, or delete it when Failed and then create it again. A create or
        update SageMaker refuses because the endpoint is changing is a deferral, recorded in the state:
        the endpoint's next InService event brings EnsureServing again."""
        name = names.endpoint_name(self.config.hosting.endpoint_name)
        seen = self._describe_endpoint(name)
        step = endpoint_step(state.deployed, seen)
        if step == DELETE:
            self._delete_endpoint(name)
            state = endpoint_deleted(state, name, seen)
            seen = self._wait_until_deleted(name)
            step = endpoint_step(state.deployed, seen)
        refused = None
        if step in (CREATE, UPDATE):
            deployed = state.deployed
            try:
                if step == CREATE:
                    self.sagemaker.create_endpoint(**requests.create_endpoint(self.config, deployed.dataset,
                                                                              deployed.marker))
                else:
                    self.sagemaker.update_endpoint(**requests.update_endpoint(self.config, deployed.dataset,
                                                                              deployed.marker))
            except Exception as exc:
                if not self._endpoint_busy(exc, name, step):
                    raise
                refused = f"{error_code(exc)}: {error_message(exc)}"
            else:
                self.metric("JobsStarted", 1, {"kind": "endpoint" if step == CREATE else "endpoint-update"})
        state, records = endpoint_step_taken(state, name, step, seen, refused)
        for record in records:
            log.warning(record.message)
        return state

    def _describe_endpoint(self, name: str) -> Optional[EndpointSeen]:
        try:
            description = self.sagemaker.describe_endpoint(EndpointName=name)
        except Exception as exc:
            if not_found(exc):
                return None
            raise
        return EndpointSeen(description.get("EndpointStatus", ""), description.get("EndpointConfigName"),
                            description.get("FailureReason"))

    def _delete_endpoint(self, name: str) -> None:
        """DeleteEndpoint; done too when another delivery or a tick deleted it already (gone, or Deleting
        and the second request refused)."""
        try:
            self.sagemaker.delete_endpoint(EndpointName=name)
        except Exception as exc:
            if not_found(exc):
                pass
            elif error_code(exc) == "ValidationException" and self._being_deleted(name):
                log.info("endpoint %s is being deleted already (%s)", name, error_message(exc))
            else:
                raise
        log.info("endpoint %s was Failed: deleted, to create it again", name)

    def _being_deleted(self, name: str) -> bool:
        seen = self._describe_endpoint(name)
        return seen is None or seen.status == "Deleting"

    def _wait_until_deleted(self, name: str) -> Optional[EndpointSeen]:
        """The endpoint after a bounded wait for its deletion: None once it is gone."""
        seen = self._describe_endpoint(name)
        for _ in range(DELETION_CHECKS - 1):
            if seen is None or seen.status != "Deleting":
                break
            self.sleep(DELETION_CHECK_INTERVAL_S)
            seen = self._describe_endpoint(name)
        return seen

    def _endpoint_busy(self, exc: Exception, name: str, step: str) -> bool:
        """Was ``step`` refused because the endpoint is changing (or, for a create, exists already)?
        Told by the endpoint as it is now, not by the error's wording: a refusal of anything else
        (a missing endpoint config, a bad request) is an error."""
        if error_code(exc) not in ("ValidationException", "ResourceInUse"):
            return False
        now = self._describe_endpoint(name)
        return now is not None if step == CREATE else (now is not None and now.status != "InService")

    def _write_predictions(self, action: WritePredictions) -> None:
        batches = self.config.layout.batches
        rows = []
        for key, _ in self._list(batch_keys.output_prefix(action.batch_id, batches)):
            if key.endswith(batch_keys.OUTPUT_SUFFIX):
                body = self.s3.get_object(Bucket=self.config.bucket, Key=key)["Body"].read()
                rows.append((batch_keys.image_key_for_output(key, action.batch_id, batches), body))
        unclassified = []
        if action.failure_reason:
            done = {image_key for image_key, _ in rows}
            unclassified = [(key, f"not classified: {action.failure_reason}")
                            for key, _ in self._list(batch_keys.input_prefix(action.batch_id, batches))
                            if key not in done]
        self.s3.put_object(Bucket=self.config.bucket, Key=action.output_key,
                           Body=predictions_csv(rows, unclassified).encode("utf-8"), ContentType="text/csv")
        log.info("batch %s: %d predictions and %d unclassified images written to %s", action.batch_id,
                 len(rows), len(unclassified), action.output_key)

    # --- routes ---------------------------------------------------------------------------------

    def predict(self, body: Optional[bytes], content_type: Optional[str], top_k: Optional[str],
                explain: Optional[str] = None) -> dict:
        """``POST /predict``: the endpoint's JSON, or ApiError (400/413/415/502/503/504). ``top_k`` and
        ``explain`` are the query parameters as given (None: absent)."""
        limit = predict.payload_limit(self.config.hosting.serverless)
        request = predict.endpoint_request(body, content_type, top_k, limit, explain)
        state, _ = self.store.load()
        endpoint = names.endpoint_name(self.config.hosting.endpoint_name)
        if state.deployed is None:
            raise predict.ApiError(503, "NoModel", "no model is deployed yet: publish a dataset (write "
                                   "datasets/<name>/_READY) and wait for training and the quality gate; "
                                   "GET /status shows where the pipeline is")
        if state.endpoint is None or state.endpoint.status not in SERVING_STATUSES:
            status = state.endpoint.status if state.endpoint else "Creating"
            raise predict.ApiError(503, "EndpointNotInService", f"endpoint {endpoint} is {status}, not InService: "
                                   f"try again in a few minutes; GET /status shows its state")
        try:
            response = self.runtime.invoke_endpoint(EndpointName=endpoint, Body=request.body,
                                                    ContentType=request.content_type, Accept=request.accept)
        except Exception as exc:
            code = error_code(exc)
            if not code:
                if "timeout" in type(exc).__name__.lower():
                    raise predict.ApiError(504, "EndpointTimeout", "the endpoint did not answer in time: "
                                                                   "retry, or send a smaller image") from exc
                if _connection_failure(exc):
                    raise predict.ApiError(502, "EndpointUnreachable", f"the endpoint could not be reached "
                                                                       f"({type(exc).__name__}): retry in a few "
                                                                       f"seconds") from exc
                raise
            response = getattr(exc, "response", {})
            raise predict.endpoint_failure(code, error_message(exc), response.get("OriginalStatusCode"),
                                           response.get("OriginalMessage")) from exc
        raw = response["Body"].read()
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise predict.ApiError(502, "EndpointError", f"the endpoint answered something that is not JSON "
                                                         f"({len(raw)} bytes)") from exc

    def serve_model(self, model_name: str, chosen_by: str, reason: Optional[str] = None) -> dict:
        """``POST /models/{model}/serve``: put a model the gate deployed before back on the endpoint, through
        the same lifecycle as the gate's choices; ApiError 404 (never deployed) or 409 (the endpoint is
        changing, a deployment is under way, or it serves that model already: ``state.serve_refusal``).

        Three steps, so that no endpoint change is sent for a choice that is not saved: the model and its
        endpoint config are created again if they were deleted (idempotent creates); the choice is saved
        over the state it was checked against (checked again on a conflict, nothing sent yet); then the
        endpoint is brought one step closer to serving it, as the scheduled tick would (which also makes
        good a crash in between: the saved state says the model waits to be deployed)."""
        endpoint, now = names.endpoint_name(self.config.hosting.endpoint_name), self.clock()
        state, _ = self.store.load()
        self._refuse_serving(state, model_name, endpoint)
        new, actions = on_serve_requested(state, model_name, chosen_by, reason, now)
        self._deploy(actions[0])
        for _ in range(SAVE_ATTEMPTS):
            state, etag = self.store.load()
            self._refuse_serving(state, model_name, endpoint)
            new, _ = on_serve_requested(state, model_name, chosen_by, reason, now)
            try:
                self.store.save(new, etag)
            except StateConflict:
                continue
            break
        else:
            raise predict.ApiError(409, "Conflict", "the pipeline state kept changing: try again")
        log.info("model %s chosen by %s to serve again: %s", model_name, chosen_by, new.deployed.reason)
        self.metric("ModelsServedAgain", 1, {})
        self._reconcile_now(now)
        return self.status()

    def _refuse_serving(self, state: PipelineState, model_name: str, endpoint: str) -> None:
        refusal = serve_refusal(state, model_name, endpoint, self._describe_endpoint(endpoint))
        if refusal is not None:
            raise predict.ApiError(refusal.status, refusal.code, refusal.message)

    def _reconcile_now(self, now: float) -> None:
        """What the scheduled tick does, now: the deployed model's next endpoint step, saved."""
        self.handle(ReconcileTick(f"serve-{now:.6f}"))

    def status(self) -> dict:
        """``GET /status``: the current dataset's run, the deployed model, the endpoint, the last batch, and
        ``history``: every deployment chosen (by the gate or a person), oldest first."""
        state, _ = self.store.load()
        current = None
        if state.current_dataset:
            key = f"{state.current_dataset['name']}/{state.current_dataset['marker']}"
            current = state.runs.get(key)
        last_batch = next(reversed(state.batches.values()), None) if state.batches else None
        runs = list(state.runs.values())
        return {
            "dataset": state.current_dataset,
            "run": dataclasses.asdict(current) if current else None,
            "latest_run": dataclasses.asdict(runs[-1]) if runs else None,
            "deployed": dataclasses.asdict(state.deployed) if state.deployed else None,
            "endpoint": dataclasses.asdict(state.endpoint) if state.endpoint else None,
            "last_batch": self._batch_view(last_batch) if last_batch else None,
            "runs": len(runs),
            "batches": len(state.batches),
            "history": [dataclasses.asdict(choice) for choice in state.history],
        }

    def _batch_view(self, batch) -> dict:
        view = dataclasses.asdict(batch)
        # A failed or stopped transform still writes predictions.csv: what it classified, and a row
        # with the reason for every image it did not.
        view["predictions_uri"] = (f"s3://{self.config.bucket}/{batch.output_key}"
                                   if batch.status in TERMINAL else None)
        return view

    def batch_status(self, batch_id: str) -> dict:
        state, _ = self.store.load()
        batch = state.batches.get(batch_id)
        if batch is None:
            raise predict.ApiError(404, "NotFound", f"no batch {batch_id!r}: start one with POST /batch "
                                                    f'{{"batch_id": "{batch_id}"}}')
        return self._batch_view(batch)

    def request_batch(self, batch_id) -> dict:
        """``POST /batch``: write ``batch/<id>/_READY`` and handle it at once (its S3 event, when it
        arrives, is then a duplicate). Refuses an unknown input folder and a batch already running."""
        if not batch_keys.is_batch_id(batch_id):
            raise predict.ApiError(400, "BadRequest", f"batch_id must be {batch_keys.BATCH_ID_RULE}, got {batch_id!r}")
        input_prefix = batch_keys.input_prefix(batch_id, self.config.layout.batches)
        listing = self.s3.list_objects_v2(Bucket=self.config.bucket, Prefix=input_prefix, MaxKeys=1)
        if not listing.get("Contents"):
            raise predict.ApiError(400, "BadRequest", f"s3://{self.config.bucket}/{input_prefix} has no objects: "
                                                      f"upload the images to classify there first")
        state, _ = self.store.load()
        existing = state.batches.get(batch_id)
        if existing is not None and existing.status not in RERUNNABLE_BATCH:
            raise predict.ApiError(409, "Conflict", f"batch {batch_id!r} already exists ({existing.status}); "
                                                    f"GET /batch/{batch_id} shows it, or use a new batch_id")
        marker_key = f"{self.config.layout.batches}{batch_id}/_READY"
        written = self.s3.put_object(Bucket=self.config.bucket, Key=marker_key, ContentType="application/json",
                                     Body=json.dumps({"requested_at": time.time(), "by": "POST /batch"}).encode())
        self.handle(BatchRequested(self.config.bucket, batch_id, names.normalise_marker(written["ETag"])))
        return self.batch_status(batch_id)
