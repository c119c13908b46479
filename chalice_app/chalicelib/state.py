"""The pipeline's memory, and how each event changes it.

A ``PipelineState`` is everything a cold Lambda needs to know: the current dataset, every run
(dataset + publish marker) with its tuning job, training job, metrics and gate decision, the
deployed model, the endpoint, the batches, and the identities of events already handled. It is
stored as JSON in the bucket (``pipeline/state.json``); reading and writing it is the handler's job.

Each ``on_*`` function takes a state and a parsed event and returns ``(new_state, actions)``: the
input state is never modified, and ``actions`` says what the handler must do (start a job, deploy,
write predictions, log a record). The functions are idempotent twice over:

- an event whose identity is in ``events_seen`` returns the state unchanged and no action;
- every action comes from a transition (a run first seen, a job first reaching a terminal status),
  so even an event old enough to have left the bounded ``events_seen`` starts nothing again.

Out-of-order delivery is tolerated: a terminal status (Completed, Failed, Stopped) is never
overwritten, whatever arrives later; a training ``Completed`` is recorded (and gated) even when its
tuning job's ``Completed`` has not been seen, and that late tuning event then starts nothing.
Training jobs launched by a tuning job (the trials) are ignored and leave no trace.

Events about jobs this state does not know (not started by this pipeline) change nothing and
return no action, and are not remembered, so that they stay harmless.

Standard library only: this module runs on Lambda.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from batch.keys import BATCH_ID_RULE, BATCHES_PREFIX, is_batch_id, predictions_key

from . import names
from .config import QualityGate
from .events import BatchRequested, DatasetPublished, JobStateChanged
from .pipeline import TEST_ACCURACY, LayoutReport, gate_decision

STATE_VERSION = 1
EVENTS_SEEN_LIMIT = 500
TERMINAL = ("Completed", "Failed", "Stopped")
REQUESTED = "Requested"      # our own status: we asked SageMaker, no event has come back yet
INVALID = "Invalid"          # our own status: the dataset (its name or layout) or batch id was refused
NO_MODEL = "NoModel"         # our own status: a batch arrived before any model was deployed

# A deployed model's way onto the endpoint (``DeployedModel.deployment``).
DEPLOYING = "Deploying"              # asked for, or waiting for the endpoint to accept the change
SERVING = "Serving"                  # the endpoint is InService with this model's endpoint config
FAILED_TO_DEPLOY = "FailedToDeploy"  # the endpoint failed with it ENDPOINT_ATTEMPTS_PER_MODEL times: given up
ENDPOINT_ATTEMPTS_PER_MODEL = 2      # CreateEndpoint/UpdateEndpoint calls SageMaker accepted, per model
GATE = "quality gate"                # who chose a model the gate deployed (a person's choice names the caller)
# Endpoint statuses in which no other model may be asked for: SageMaker refuses UpdateEndpoint until InService.
CHANGING = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


# --- actions: what the handler must do -----------------------------------------------------------

@dataclass(frozen=True)
class StartTuning:
    dataset: str
    marker: str


@dataclass(frozen=True)
class StartTraining:
    """Describe ``tuning_job``, take its BestTrainingJob's hyperparameters, start the instrumented run."""
    dataset: str
    marker: str
    tuning_job: str


@dataclass(frozen=True)
class Deploy:
    """Create the model from ``training_job``'s artifact, its endpoint config, and create or update
    the endpoint."""
    dataset: str
    marker: str
    training_job: str
    model_name: str
    test_acc: float


@dataclass(frozen=True)
class StartTransform:
    batch_id: str
    marker: str
    model_name: str


@dataclass(frozen=True)
class EnsureServing:
    """The endpoint is InService again: if it serves another endpoint config than the deployed model's
    (the gate chose a model while the endpoint was Creating or Updating, when SageMaker refuses an
    UpdateEndpoint), update it now."""
    dataset: str
    marker: str


@dataclass(frozen=True)
class WritePredictions:
    """Read ``batch/<id>/output/*.out`` and write ``predictions.csv`` there. With ``failure_reason``
    (the transform failed or was stopped) every input without an output gets a row saying so, so the
    images that were classified are not lost with the ones that were not."""
    batch_id: str
    transform_job: str
    output_key: str
    failure_reason: Optional[str] = None


@dataclass(frozen=True)
class Record:
    """Something a person should be able to read in the logs (a refusal, a failure)."""
    message: str


# --- the state ----------------------------------------------------------------------------------

@dataclass
class Run:
    dataset: str
    marker: str
    tuning_job: str
    training_job: str
    tuning_status: Optional[str] = None
    tuning_failure: Optional[str] = None
    training_status: Optional[str] = None
    training_failure: Optional[str] = None
    best_hyperparameters: Dict[str, str] = field(default_factory=dict)
    metrics: Dict[str, float] = field(default_factory=dict)
    gate: Optional[dict] = None
    layout_problems: List[str] = field(default_factory=list)
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)
    source_uri: Optional[str] = None     # the training code package every job of this run uses


@dataclass
class DeployedModel:
    """The model the gate chose last, and how far it got onto the endpoint: ``deployment`` (DEPLOYING,
    SERVING, FAILED_TO_DEPLOY), the endpoint changes SageMaker accepted for it, every endpoint failure
    met on the way, and ``waiting`` (why the change waits, for /status)."""
    model_name: str
    dataset: str
    marker: str
    test_acc: float
    training_job: str
    deployment: str = DEPLOYING
    endpoint_attempts: int = 0
    endpoint_failures: List[str] = field(default_factory=list)
    waiting: Optional[str] = None
    chosen_by: str = GATE
    reason: Optional[str] = None
    chosen_at: Optional[float] = None


@dataclass
class Choice:
    """One entry of the gate's record of deployments (``PipelineState.history``, oldest first): a model
    the quality gate deployed (``chosen_by`` GATE, its decision's reason), or one a person chose to serve
    again (``chosen_by`` the caller, their reason). ``chosen_at`` is seconds since the epoch."""
    model_name: str
    dataset: str
    marker: str
    training_job: str
    test_acc: Optional[float]
    metrics: Dict[str, float]
    chosen_by: str
    reason: str
    chosen_at: Optional[float]


@dataclass
class Endpoint:
    name: str
    status: str
    failure_reason: Optional[str] = None
    changed_at: Optional[float] = None


@dataclass
class Batch:
    batch_id: str
    marker: str
    transform_job: Optional[str]
    status: str
    output_key: str
    failure_reason: Optional[str] = None


@dataclass
class PipelineState:
    current_dataset: Optional[Dict[str, str]] = None      # {"name": ..., "marker": ...}
    runs: Dict[str, Run] = field(default_factory=dict)      # key: run_key(dataset, marker)
    deployed: Optional[DeployedModel] = None
    endpoint: Optional[Endpoint] = None
    batches: Dict[str, Batch] = field(default_factory=dict)
    events_seen: List[str] = field(default_factory=list)   # a set, kept in arrival order to bound it
    version: int = STATE_VERSION
    history: List[Choice] = field(default_factory=list)    # every deployment chosen, oldest first

    def to_json(self) -> str:
        # Keys keep their insertion order (runs and batches oldest first), so "the last batch" survives a reload.
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "PipelineState":
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"pipeline state version {data.get('version')!r} is not {STATE_VERSION}")
        return cls(
            current_dataset=data.get("current_dataset"),
            runs={k: Run(**v) for k, v in data.get("runs", {}).items()},
            deployed=DeployedModel(**data["deployed"]) if data.get("deployed") else None,
            endpoint=Endpoint(**data["endpoint"]) if data.get("endpoint") else None,
            batches={k: Batch(**v) for k, v in data.get("batches", {}).items()},
            events_seen=list(data.get("events_seen", [])),
            version=data["version"],
            history=[Choice(**c) for c in data.get("history", [])],   # absent from states saved before it
        )

    def run_for(self, kind: str, job_name: str) -> Optional[Run]:
        """The run whose tuning (``kind="tuning"``) or training job is ``job_name``."""
        attribute = "tuning_job" if kind == "tuning" else "training_job"
        return next((r for r in self.runs.values() if getattr(r, attribute) == job_name), None)


def run_key(dataset: str, marker: str) -> str:
    return f"{dataset}/{names.normalise_marker(marker)}"


Result = Tuple[PipelineState, list]


def _seen(state: PipelineState, identity: str) -> bool:
    return identity in state.events_seen


def _remember(state: PipelineState, identity: str) -> None:
    state.events_seen.append(identity)
    del state.events_seen[:-EVENTS_SEEN_LIMIT]


def _settle(current: Optional[str], new: str) -> Tuple[str, bool]:
    """(status to keep, whether it changed into a terminal status just now)."""
    if current in TERMINAL:
        return current, False
    return new, new in TERMINAL


# --- transitions --------------------------------------------------------------------------------

def on_dataset_published(state: PipelineState, event: DatasetPublished, layout: LayoutReport,
                         source_uri: Optional[str] = None) -> Result:
    """A ``_READY`` marker: start tuning when the layout is good, record the problems when not.
    ``source_uri`` (the training code package) is kept on the run, so its final training job runs
    the same code as its trials even if a newer package is uploaded in between."""
    if _seen(state, event.identity):
        return state, []
    new = copy.deepcopy(state)
    _remember(new, event.identity)
    key = run_key(event.name, event.marker)
    if key in new.runs:
        return new, []
    run = Run(dataset=event.name, marker=names.normalise_marker(event.marker),
              tuning_job=names.tuning_job_name(event.name, event.marker),
              training_job=names.training_job_name(event.name, event.marker),
              counts=copy.deepcopy(layout.counts), source_uri=source_uri)
    new.runs[key] = run
    name_problem = names.dataset_name_problem(event.name)
    problems = [name_problem] if name_problem else list(layout.problems)
    if problems:
        run.tuning_status = INVALID
        run.layout_problems = problems
        return new, [Record(f"dataset {event.name!r} (marker {run.marker}) not started: " + "; ".join(problems))]
    run.tuning_status = REQUESTED
    new.current_dataset = {"name": event.name, "marker": run.marker}
    return new, [StartTuning(event.name, run.marker)]


def on_tuning_changed(state: PipelineState, event: JobStateChanged,
                      best_hyperparameters: Optional[Dict[str, str]] = None) -> Result:
    """Tuning reached a status. First ``Completed`` -> StartTraining (unless training is already
    known to have run); ``Failed``/``Stopped`` -> recorded. ``best_hyperparameters`` (optional: the
    handler may only know them after describing the job) are kept on the run."""
    if _seen(state, event.identity) or state.run_for("tuning", event.name) is None:
        return state, []
    new = copy.deepcopy(state)
    _remember(new, event.identity)
    run = new.run_for("tuning", event.name)
    run.tuning_status, finished = _settle(run.tuning_status, event.status)
    if not finished:
        return new, []
    if run.tuning_status == "Completed":
        if best_hyperparameters:
            run.best_hyperparameters = dict(best_hyperparameters)
        if run.training_status is not None:      # the training job's own events came first
            return new, []
        run.training_status = REQUESTED
        return new, [StartTraining(run.dataset, run.marker, run.tuning_job)]
    run.tuning_failure = event.failure_reason
    return new, [Record(f"tuning job {run.tuning_job} for dataset {run.dataset!r} {run.tuning_status.lower()}"
                        + (f": {event.failure_reason}" if event.failure_reason else ""))]


def on_training_changed(state: PipelineState, event: JobStateChanged, metrics: Optional[Dict[str, float]] = None,
                        floor: float = QualityGate().accuracy_floor, now: Optional[float] = None) -> Result:
    """The instrumented run reached a status. First ``Completed`` -> the quality gate over
    ``metrics`` (``pipeline.final_metrics`` of the job's FinalMetricDataList) -> Deploy when it
    passes, recorded in ``history`` at ``now``; ``Failed``/``Stopped`` -> recorded. Tuning trials are
    ignored."""
    if event.launched_by_tuning_job or _seen(state, event.identity) \
            or state.run_for("training", event.name) is None:
        return state, []
    new = copy.deepcopy(state)
    _remember(new, event.identity)
    run = new.run_for("training", event.name)
    previous = run.training_status
    run.training_status, finished = _settle(None if previous == REQUESTED else previous, event.status)
    if not finished:
        return new, []
    if run.training_status != "Completed":
        run.training_failure = ending_reason(event)
        return new, [Record(f"training job {run.training_job} for dataset {run.dataset!r} "
                            f"{run.training_status.lower()}"
                            + (f": {run.training_failure}" if run.training_failure else ""))]
    run.metrics = dict(metrics or {})
    deployed = None
    if new.deployed is not None and new.deployed.deployment != FAILED_TO_DEPLOY:   # a model never served is no bar
        deployed = {"dataset": new.deployed.dataset, "test_acc": new.deployed.test_acc}
    decision = gate_decision({"dataset": run.dataset, "test_acc": run.metrics.get(TEST_ACCURACY)}, deployed, floor)
    run.gate = decision.to_dict()
    if not decision.deploy:
        return new, [Record(f"model of {run.training_job} not deployed: {decision.reason}")]
    model = names.model_name(run.dataset, run.marker)
    new.deployed = DeployedModel(model_name=model, dataset=run.dataset, marker=run.marker,
                                 test_acc=decision.candidate_accuracy, training_job=run.training_job,
                                 reason=decision.reason, chosen_at=now)
    new.history.append(Choice(model, run.dataset, run.marker, run.training_job, decision.candidate_accuracy,
                              dict(run.metrics), GATE, decision.reason, now))
    return new, [Deploy(run.dataset, run.marker, run.training_job, model, decision.candidate_accuracy)]


# --- a person's choice: serve a model the gate deployed before ------------------------------------------

@dataclass(frozen=True)
class ServeRefusal:
    """Why a model cannot be served now: ``status`` 404 (never deployed) or 409 (not now), and words."""
    status: int
    code: str
    message: str


def deployed_choice(state: PipelineState, model_name: str) -> Optional[Choice]:
    """The gate's (first) record of deploying ``model_name``; None when the gate never deployed it."""
    return next((c for c in state.history if c.model_name == model_name and c.chosen_by == GATE), None)


def serve_refusal(state: PipelineState, model_name: str, endpoint: str,
                  seen: Optional[EndpointSeen]) -> Optional[ServeRefusal]:
    """Why ``model_name`` may not be put on ``endpoint`` (as DescribeEndpoint ``seen`` it) now, or None.
    Refused: a model the gate never deployed (404); an endpoint that is changing, on which SageMaker
    refuses UpdateEndpoint, or a deployment still under way (409); the model the endpoint serves (409)."""
    if deployed_choice(state, model_name) is None:
        known = ", ".join(dict.fromkeys(c.model_name for c in state.history)) or "none yet"
        return ServeRefusal(404, "NotFound", f"model {model_name!r} was never deployed by the quality gate; "
                                             f"the models it deployed: {known} (GET /status lists them)")
    if seen is not None and seen.status in CHANGING:
        return ServeRefusal(409, "Conflict", f"endpoint {endpoint} is {seen.status}: SageMaker accepts no other "
                                             f"model until it is InService; try again in a few minutes")
    deployed = state.deployed
    if deployed is not None and deployed.deployment == DEPLOYING:
        waiting = f" ({deployed.waiting})" if deployed.waiting else ""
        return ServeRefusal(409, "Conflict", f"model {deployed.model_name} is being deployed{waiting}: choose "
                                             f"another once it serves or is given up (GET /status)")
    if (deployed is not None and deployed.model_name == model_name and deployed.deployment == SERVING
            and seen is not None and seen.status == "InService"
            and seen.config_name == names.endpoint_config_name(deployed.dataset, deployed.marker)):
        return ServeRefusal(409, "Conflict", f"endpoint {endpoint} serves model {model_name} already")
    return None


def on_serve_requested(state: PipelineState, model_name: str, chosen_by: str, reason: Optional[str],
                       now: Optional[float]) -> Result:
    """A person chose to serve ``model_name`` again (``serve_refusal`` said yes): it becomes the deployed
    model, to be put on the endpoint through the same lifecycle as a model the gate chose (Deploy), and
    the choice is added to ``history`` with who made it and why."""
    earlier = deployed_choice(state, model_name)
    new = copy.deepcopy(state)
    why = reason or "no reason given"
    new.deployed = DeployedModel(model_name=model_name, dataset=earlier.dataset, marker=earlier.marker,
                                 test_acc=earlier.test_acc, training_job=earlier.training_job,
                                 chosen_by=chosen_by, reason=why, chosen_at=now)
    new.history.append(Choice(model_name, earlier.dataset, earlier.marker, earlier.training_job, earlier.test_acc,
                              dict(earlier.metrics), chosen_by, why, now))
    return new, [Deploy(earlier.dataset, earlier.marker, earlier.training_job, model_name, earlier.test_acc)]


# Why SageMaker stopped a training job (its SecondaryStatus when the status is Stopped).
STOP_REASONS = {
    "MaxRuntimeExceeded": "the job ran past its StoppingCondition.MaxRuntimeInSeconds",
    "MaxWaitTimeExceeded": "the spot job waited past its StoppingCondition.MaxWaitTimeInSeconds",
    "Stopped": "a StopTrainingJob request (a person or the tuning job's early stopping)",
}


def ending_reason(event: JobStateChanged) -> Optional[str]:
    """What /status says about a job that did not complete: a Failed job's FailureReason; a Stopped
    job's cause from its SecondaryStatus (``stopped: MaxRuntimeExceeded: the job ran past ...``)."""
    if event.status != "Stopped":
        return event.failure_reason
    secondary = event.secondary_status or "no SecondaryStatus given"
    cause = STOP_REASONS.get(event.secondary_status or "")
    reason = f"stopped: {secondary}" + (f": {cause}" if cause else "")
    return f"{reason}; {event.failure_reason}" if event.failure_reason else reason


def on_endpoint_changed(state: PipelineState, event: JobStateChanged) -> Result:
    """The endpoint's status (``InService`` means /predict can be served). Endpoints move back and
    forth (InService -> Updating -> InService), so no status is final: the change with the latest
    ``LastModifiedTime`` wins, and an event without one counts as the latest. Becoming InService,
    Failed or Deleting with a model deployed -> EnsureServing (a deferred update is made now, a failed
    endpoint is deleted and created again; otherwise nothing)."""
    if _seen(state, event.identity):
        return state, []
    new = copy.deepcopy(state)
    _remember(new, event.identity)
    current = new.endpoint
    if (current is not None and current.name == event.name and current.changed_at is not None
            and event.changed_at is not None and event.changed_at < current.changed_at):
        return new, []                        # an older change delivered late
    new.endpoint = Endpoint(event.name, event.status, event.failure_reason, event.changed_at)
    if event.status == "Failed" and new.deployed is not None and new.deployed.deployment != FAILED_TO_DEPLOY:
        _record_failure(new.deployed, f"endpoint {event.name} failed: {event.failure_reason or 'no reason given'}")
    if event.status in RECONCILED_ON and new.deployed is not None:
        return new, [EnsureServing(new.deployed.dataset, new.deployed.marker)]
    return new, []


def on_reconcile_tick(state: PipelineState) -> Result:
    """The scheduled tick. A deployed model not yet serving (nor given up) -> EnsureServing: it
    describes the endpoint and takes the next step, so a change whose event never comes (a deleted
    endpoint sends none once it is gone; a lost delivery) is taken within one tick. Otherwise the
    state as it is (nothing is saved)."""
    deployed = state.deployed
    if deployed is None or deployed.deployment in (SERVING, FAILED_TO_DEPLOY):
        return state, []
    return copy.deepcopy(state), [EnsureServing(deployed.dataset, deployed.marker)]


def on_batch_requested(state: PipelineState, event: BatchRequested, batches_prefix: str = BATCHES_PREFIX) -> Result:
    """``batch/<id>/_READY`` or ``POST /batch``: one transform job per batch id and marker, over the
    deployed model. Without a deployed model the batch is recorded as ``NoModel``."""
    if _seen(state, event.identity):
        return state, []
    new = copy.deepcopy(state)
    _remember(new, event.identity)
    marker = names.normalise_marker(event.marker)
    existing = new.batches.get(event.batch_id)
    if existing is not None and existing.marker == marker:
        return new, []
    output_key = predictions_key(event.batch_id, batches_prefix)
    new.batches.pop(event.batch_id, None)     # a re-run moves to the end: the last batch is the latest
    if not is_batch_id(event.batch_id):       # "." or "..": a key segment, but no folder for a transform job
        reason = f"batch id {event.batch_id!r} cannot be used: a batch id is {BATCH_ID_RULE}"
        new.batches[event.batch_id] = Batch(event.batch_id, marker, None, INVALID, output_key, reason)
        return new, [Record(f"batch {event.batch_id!r} not started: {reason}")]
    if new.deployed is None:
        new.batches[event.batch_id] = Batch(event.batch_id, marker, None, NO_MODEL, output_key,
                                            "no model is deployed yet: publish a dataset first")
        return new, [Record(f"batch {event.batch_id!r} not started: no model is deployed yet")]
    job = names.transform_job_name(event.batch_id, marker)
    new.batches[event.batch_id] = Batch(event.batch_id, marker, job, REQUESTED, output_key)
    return new, [StartTransform(event.batch_id, marker, new.deployed.model_name)]


def on_transform_changed(state: PipelineState, event: JobStateChanged) -> Result:
    """A batch's transform job reached a status: ``Completed`` -> WritePredictions; ``Failed`` or
    ``Stopped`` -> the failure recorded, and WritePredictions of what was classified before it."""
    batch = next((b for b in state.batches.values() if b.transform_job == event.name), None)
    if _seen(state, event.identity) or batch is None:
        return state, []
    new = copy.deepcopy(state)
    _remember(new, event.identity)
    batch = new.batches[batch.batch_id]
    previous = None if batch.status == REQUESTED else batch.status
    batch.status, finished = _settle(previous, event.status)
    if not finished:
        return new, []
    if batch.status == "Completed":
        return new, [WritePredictions(batch.batch_id, batch.transform_job, batch.output_key)]
    batch.failure_reason = event.failure_reason
    reason = event.failure_reason or f"the transform job was {batch.status.lower()}"
    return new, [Record(f"batch {batch.batch_id!r} ({batch.transform_job}) {batch.status.lower()}"
                        + (f": {event.failure_reason}" if event.failure_reason else "")),
                 WritePredictions(batch.batch_id, batch.transform_job, batch.output_key, failure_reason=reason)]


# --- the endpoint: what to ask SageMaker for next, and what its answer changes ------------------------

RECONCILED_ON = ("InService", "Failed", "Deleting")   # endpoint statuses whose event brings EnsureServing
CREATE, UPDATE, DELETE, WAIT, NOTHING, GIVE_UP = "create", "update", "delete", "wait", "nothing", "give up"


@dataclass(frozen=True)
class EndpointSeen:
    """What DescribeEndpoint said (``None`` stands for "no such endpoint")."""
    status: str
    config_name: Optional[str] = None
    failure_reason: Optional[str] = None


def endpoint_step(deployed: Optional[DeployedModel], seen: Optional[EndpointSeen]) -> str:
    """The one call that brings the endpoint (``seen``) closer to serving ``deployed``: CREATE (no
    endpoint), UPDATE (InService with another config), DELETE (Failed: the only call SageMaker allows
    on it), WAIT (creating, updating, deleting: its next event brings EnsureServing), NOTHING (serving
    it already, or nothing to serve), GIVE_UP (no endpoint, and the model's attempts are spent)."""
    if deployed is None or deployed.deployment == FAILED_TO_DEPLOY:
        return NOTHING
    wanted = names.endpoint_config_name(deployed.dataset, deployed.marker)
    if seen is not None and seen.status == "InService" and seen.config_name == wanted:
        return NOTHING
    if seen is not None and seen.status == "Failed":
        return DELETE
    if deployed.endpoint_attempts >= ENDPOINT_ATTEMPTS_PER_MODEL and (seen is None or seen.status == "InService"):
        return GIVE_UP
    if seen is None:
        return CREATE
    return UPDATE if seen.status == "InService" else WAIT


def endpoint_deleted(state: PipelineState, name: str, seen: EndpointSeen) -> PipelineState:
    """DeleteEndpoint was sent for the Failed endpoint ``seen``: its failure is recorded on the
    deployed model, and the endpoint is Deleting."""
    new = copy.deepcopy(state)
    reason = seen.failure_reason or (new.endpoint.failure_reason if new.endpoint else None) or "no reason given"
    _record_failure(new.deployed, f"endpoint {name} failed: {reason}")
    new.deployed.waiting = f"endpoint {name} failed ({reason}): deleting it, to create it again"
    new.endpoint = _endpoint_now(new.endpoint, name, "Deleting", reason)
    return new


def endpoint_step_taken(state: PipelineState, name: str, step: str, seen: Optional[EndpointSeen],
                        refused: Optional[str] = None) -> Result:
    """Record ``step`` (from ``endpoint_step``) as done, or as ``refused`` by SageMaker because the
    endpoint is changing: a deferral, made on its next InService event. Returns (state, actions): a
    Record when the model is given up or an endpoint change is deferred."""
    new = copy.deepcopy(state)
    deployed = new.deployed
    if deployed is None or deployed.deployment == FAILED_TO_DEPLOY:
        return new, []
    wanted = names.endpoint_config_name(deployed.dataset, deployed.marker)
    if _rolled_back(seen, wanted):
        _record_failure(deployed, f"update of endpoint {name} to {wanted} failed and was rolled back to "
                                  f"{seen.config_name}: {seen.failure_reason}")
    if (deployed.endpoint_failures and seen is not None and seen.config_name == wanted
            and seen.status in ("Creating", "InService")):
        # an attempt after the recorded failures is under way: counted even if the save that counted it
        # lost a race (another delivery or a tick saved first, and this is the redone transition)
        deployed.endpoint_attempts = max(deployed.endpoint_attempts, len(deployed.endpoint_failures) + 1)
    if refused is not None:
        deployed.waiting = f"{step} of endpoint {name} to {wanted} deferred until it is InService: {refused}"
        return new, [Record(deployed.waiting)]
    if step in (CREATE, UPDATE):
        deployed.endpoint_attempts += 1
        deployed.deployment, deployed.waiting = DEPLOYING, None
        new.endpoint = _endpoint_now(new.endpoint, name, "Creating" if step == CREATE else "Updating")
    elif step == WAIT:
        deployed.waiting = f"endpoint {name} is {seen.status}: {wanted} is deployed once it is InService"
        new.endpoint = _endpoint_now(new.endpoint, name, seen.status, seen.failure_reason)
    elif step == NOTHING:
        deployed.deployment, deployed.waiting = SERVING, None
        new.endpoint = _endpoint_now(new.endpoint, name, seen.status)   # its event may never have come
    elif step == GIVE_UP:
        deployed.deployment, deployed.waiting = FAILED_TO_DEPLOY, None
        failures = "; ".join(deployed.endpoint_failures) or "no failure recorded"
        still = (f"; endpoint {name} still serves {seen.config_name}" if seen is not None and seen.config_name
                 else "")
        reason = (f"model {deployed.model_name} not deployed: the endpoint failed after "
                  f"{deployed.endpoint_attempts} attempts ({failures}){still}; publish a dataset again to "
                  f"deploy another")
        deployed.endpoint_failures.append(reason)
        return new, [Record(reason)]
    return new, []


def _rolled_back(seen: Optional[EndpointSeen], wanted: str) -> bool:
    """Is ``seen`` an update SageMaker rolled back (InService on another config, with a FailureReason)?"""
    return (seen is not None and seen.status == "InService" and seen.config_name != wanted
            and bool(seen.failure_reason))


def _record_failure(deployed: DeployedModel, failure: str) -> None:
    """Record an endpoint failure of ``deployed``: one per attempt at most, since the same failure is
    seen by its event, by the describe before its deletion and by ticks and redeliveries."""
    if len(deployed.endpoint_failures) < deployed.endpoint_attempts:
        deployed.endpoint_failures.append(failure)


def _endpoint_now(current: Optional[Endpoint], name: str, status: str,
                  failure_reason: Optional[str] = None) -> Endpoint:
    """The endpoint as our own call left it; its time stays the last event's, so any later event wins."""
    return Endpoint(name, status, failure_reason, current.changed_at if current is not None else None)
