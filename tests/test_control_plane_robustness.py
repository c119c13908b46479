"""The control plane under the conditions AWS really produces, on moto through Chalice's test client.

1. Replays: every event of the whole chain delivered three times, in seeded and hand-picked orders
   that can really happen (and the two that need a crash between a handler's actions and its state
   save), plus two deliveries of one event racing on the state's conditional write.
2. The quality gate: the floor, a worse model of the same dataset, a better one deployed by
   UpdateEndpoint, another dataset's model.
3. ``POST /predict`` fed a corpus of bad requests: the right status and message for each, never a 500,
   and the server still answering afterwards; good requests forwarded exactly.
4. ``app.py`` imports nothing heavy; ``requirements.txt`` lists Powertools and the tested boto3 only.
5. Every route and every API Gateway method requires SigV4 (IAM) authentication.
6. Operations: JSON log lines with correlation ids, EMF metrics, malformed and foreign events.
"""

from __future__ import annotations

import copy
import csv
import importlib.metadata
import io
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

import pytest
from aws_support import (BUCKET, REGION, FakeAws, b64, endpoint_reply, jpeg_bytes, object_created, png_bytes,
                         state_change)
from botocore.exceptions import ClientError, ConnectionClosedError
from chalice import IAMAuthorizer
from chalice.test import Client
from test_control_plane import BEST, DATASET, deliver, post_image

from chalice_app import app as chalice_app
from chalicelib import names
from chalicelib.config import HostingConfig, QualityGate
from chalicelib.control import StateConflict
from chalicelib.predict import SUPPORTED_TYPES
from chalicelib.state import DeployedModel, Endpoint, PipelineState

ROOT = Path(__file__).resolve().parent.parent
ENDPOINT = "dogbreeds"
STATE_KEY = "pipeline/state.json"
JSON = "application/json"
IMAGE = jpeg_bytes()
PNG = png_bytes()
CREATES = ("CreateHyperParameterTuningJob", "CreateTrainingJob", "CreateModel", "CreateEndpointConfig",
           "CreateEndpoint", "CreateTransformJob")



@pytest.fixture
def unique_names(monkeypatch):
    """SageMaker refuses a second create of a name in use (ResourceInUse, or ValidationException "Cannot
    create already existing ..."); moto 5 does so for tuning jobs only and silently replaces the rest."""
    from moto.sagemaker.exceptions import ResourceInUseException, ValidationError
    from moto.sagemaker.models import SageMakerModelBackend

    def refuse_duplicates(method, registry, name_arg, error):
        original = getattr(SageMakerModelBackend, method)

        def create(self, *args, **kwargs):
            name = kwargs[name_arg]
            if name in getattr(self, registry):
                raise error(name)
            return original(self, *args, **kwargs)
        monkeypatch.setattr(SageMakerModelBackend, method, create)

    in_use = lambda kind: lambda name: ResourceInUseException(  # noqa: E731
        f"{kind} names must be unique within an AWS account and region, and a {kind.lower()} with name {name} "
        f"already exists")
    existing = lambda kind: lambda name: ValidationError(f'Cannot create already existing {kind} "{name}".')  # noqa: E731
    refuse_duplicates("create_training_job", "training_jobs", "training_job_name", in_use("Training job"))
    refuse_duplicates("create_transform_job", "transform_jobs", "transform_job_name", in_use("Transform job"))
    refuse_duplicates("create_model", "_models", "model_name", existing("model"))
    refuse_duplicates("create_endpoint_config", "endpoint_configs", "endpoint_config_name",
                      existing("endpoint configuration"))
    refuse_duplicates("create_endpoint", "endpoints", "endpoint_name", existing("endpoint"))


def operations(aws) -> Counter:
    return Counter(operation for operation, _ in aws.requests)


def internal_error(operation="PutObject") -> ClientError:
    return ClientError({"Error": {"Code": "InternalError", "Message": "We encountered an internal error. "
                                                                      "Please try again."}}, operation)


# --- 1. replays ---------------------------------------------------------------------------------------

BATCH = "b1"
BATCH_OUTPUTS = {"a.jpg": endpoint_reply(("Akita", "Affenpinscher"), (0.6, 0.4)),
                 "sub/b.jpg": endpoint_reply(("Affenpinscher", "Akita"), (0.9, 0.1))}
T0 = 1_795_000_000_000     # LastModifiedTime (epoch ms) of the endpoint's first change

# The whole chain in the order it happens when nothing goes wrong.
CHAIN = ("publish", "tuning InProgress", "trial Completed", "tuning Completed", "training InProgress",
         "training Completed", "endpoint Creating", "endpoint InService", "batch marker", "transform InProgress",
         "transform Completed")

# What must exist before an event can be delivered at all: SageMaker emits a job's events only once
# the job was created, and the job is created by handling an earlier event. So a tuning Completed
# cannot precede the publish marker, nor a transform Completed the batch marker that created its job.
# A batch marker is written by a person once a model is deployed: written before, the batch is
# recorded as NoModel, which is another final state (not a replay of this one).
REQUIRES = {
    "publish": None,
    "tuning InProgress": "CreateHyperParameterTuningJob",
    "trial Completed": "CreateHyperParameterTuningJob",
    "tuning Completed": "CreateHyperParameterTuningJob",
    "training InProgress": "CreateTrainingJob",
    "training Completed": "CreateTrainingJob",
    "endpoint Creating": "CreateEndpoint",
    "endpoint InService": "CreateEndpoint",
    "batch marker": "CreateEndpoint",
    "transform InProgress": "CreateTransformJob",
    "transform Completed": "CreateTransformJob",
    "transform Failed": "CreateTransformJob",          # not in CHAIN: the other way a transform ends
}
TRANSFORM_FAILURE = "ClientError: 1 of 3 objects failed: batch/b1/input/c.png: HTTP 400: not an image"


class Chain:
    """One pipeline run's events and the world around them: SageMaker's canned results appear once the
    job they belong to exists (moto describes every job as Completed at once)."""

    def __init__(self, aws: FakeAws, client: Client):
        self.aws, self.client = aws, client
        aws.upload_dataset(DATASET)
        for image in BATCH_OUTPUTS:
            aws.put(f"batch/{BATCH}/input/{image}", IMAGE)
        aws.write_transform_outputs(BATCH, BATCH_OUTPUTS)
        publish = aws.publish(DATASET)             # same bytes -> same ETag -> same job names in every run
        batch = aws.request_batch_marker(BATCH)
        marker = publish["detail"]["object"]["etag"]
        self.tuning = names.tuning_job_name(DATASET, marker)
        self.training = names.training_job_name(DATASET, marker)
        self.transform = names.transform_job_name(BATCH, batch["detail"]["object"]["etag"])
        trial = state_change("training", f"{self.tuning}-001-aaaaaaaa", "Completed",
                             TuningJobArn=f"arn:aws:sagemaker:{REGION}:123456789012:hyper-parameter-tuning-job/"
                                          f"{self.tuning}")
        self.events = {
            "publish": publish,
            "tuning InProgress": state_change("tuning", self.tuning, "InProgress"),
            "trial Completed": trial,
            "tuning Completed": state_change("tuning", self.tuning, "Completed"),
            "training InProgress": state_change("training", self.training, "InProgress"),
            "training Completed": state_change("training", self.training, "Completed"),
            "endpoint Creating": state_change("endpoint", ENDPOINT, "CREATING", LastModifiedTime=T0),
            "endpoint InService": state_change("endpoint", ENDPOINT, "IN_SERVICE", LastModifiedTime=T0 + 600_000),
            "batch marker": batch,
            "transform InProgress": state_change("transform", self.transform, "InProgress"),
            "transform Completed": state_change("transform", self.transform, "Completed"),
            "transform Failed": state_change("transform", self.transform, "Failed", FailureReason=TRANSFORM_FAILURE),
        }
        self.results = []          # (event name, handler result)
        self._best_set = self._metrics_set = False

    def can_happen(self, name: str) -> bool:
        needed = REQUIRES[name]
        return needed is None or bool(self.aws.created(needed))

    def deliver(self, name: str) -> dict:
        assert self.can_happen(name), f"{name} cannot be delivered before {REQUIRES[name]} was requested"
        event = copy.deepcopy(self.events[name])
        event["id"] = f"{event['id']}-{len(self.results)}"     # each delivery its own envelope id
        result = deliver(self.client, event)
        self.results.append((name, result))
        self._world()
        return result

    def deliver_crashing(self, name: str) -> None:
        """The handler performs its actions, then dies before saving the state (a timeout, an S3 500);
        Lambda will deliver the event again."""
        store = self.aws.plane.store

        def save(state, etag):
            del store.save                   # only this one save fails
            raise internal_error()
        store.save = save
        with pytest.raises(ClientError, match="InternalError"):
            self.deliver(name)
        assert "save" not in vars(store)

    def _world(self) -> None:
        if not self._best_set and self.aws.created("CreateHyperParameterTuningJob"):
            self.aws.set_best_trial(self.tuning, BEST)
            self._best_set = True
        if not self._metrics_set and self.aws.created("CreateTrainingJob"):
            self.aws.set_final_metrics(self.training, {"test:accuracy": 0.85, "test:loss": 0.41})
            self._metrics_set = True

    def outcome(self) -> dict:
        state = json.loads(self.aws.get(STATE_KEY))
        state["events_seen"] = sorted(state["events_seen"])      # a set kept in arrival order
        return {"state": state, "status": self.client.http.get("/status").json_body,
                "predictions": self.aws.get(f"batch/{BATCH}/output/predictions.csv").decode(),
                "gate_metrics": [m for m in self.aws.metrics if m[0] == "GateDecisions"]}


def run_chain(play: Callable[[Chain], None]):
    """A fresh moto world; ``play`` delivers the chain's events; returns (outcome, chain, requests). The
    moto world ends with it: look at moto's backend inside ``play``."""
    with FakeAws() as aws, Client(chalice_app.app) as client:
        aws.upload_source_pointer()
        chain = Chain(aws, client)
        play(chain)
        return chain.outcome(), chain, list(aws.requests)


def in_order(chain: Chain) -> None:
    for name in CHAIN:
        chain.deliver(name)


def thrice_shuffled(seed: int) -> Callable[[Chain], None]:
    """Each event three times; at every step any copy whose job exists may come next (seeded)."""
    def play(chain: Chain) -> None:
        rng = random.Random(seed)
        pending = [name for name in CHAIN for _ in range(3)]
        while pending:
            ready = [i for i, name in enumerate(pending) if chain.can_happen(name)]
            chain.deliver(pending.pop(rng.choice(ready)))
    return play


def fixed(order) -> Callable[[Chain], None]:
    def play(chain: Chain) -> None:
        for name in order:
            chain.deliver(name)
    return play


NASTY_ORDERS = {
    "each event three times in a row": [name for name in CHAIN for _ in range(3)],
    # every Completed before its InProgress, the endpoint's InService before its (older) Creating, the
    # tuning trial after its tuning job; then every stale copy again, newest first
    "completions first, stale copies last in reverse": [
        "publish", "tuning Completed", "trial Completed", "tuning InProgress", "training Completed",
        "training InProgress", "endpoint InService", "endpoint Creating", "batch marker", "transform Completed",
        "transform InProgress"] + [name for name in reversed(CHAIN) for _ in range(2)],
    # only the events that start something, each once, then all the progress events three times (late),
    # then the remaining duplicates of the starters
    "progress events after everything": [
        "publish", "tuning Completed", "training Completed", "endpoint InService", "batch marker",
        "transform Completed"] + ["trial Completed", "endpoint Creating", "transform InProgress",
                                  "training InProgress", "tuning InProgress"] * 3 + [
        "transform Completed", "batch marker", "endpoint InService", "training Completed", "tuning Completed",
        "publish"] * 2,
}


@pytest.fixture(scope="module")
def reference():
    """The chain delivered once, in order: what every replay must end in."""
    outcome, chain, requests = run_chain(in_order)
    return outcome, chain.results, requests


def assert_same_end(outcome: dict, reference_outcome: dict) -> None:
    assert outcome["state"] == reference_outcome["state"]
    assert outcome["status"] == reference_outcome["status"]
    assert outcome["predictions"] == reference_outcome["predictions"]
    assert outcome["gate_metrics"] == [("GateDecisions", 1, {"decision": "deploy"})]


def test_the_in_order_chain_is_a_meaningful_reference(reference):
    outcome, results, requests = reference
    assert [(name, r["actions"]) for name, r in results] == [
        ("publish", ["StartTuning"]), ("tuning InProgress", []), ("trial Completed", []),
        ("tuning Completed", ["StartTraining"]), ("training InProgress", []), ("training Completed", ["Deploy"]),
        ("endpoint Creating", []), ("endpoint InService", ["EnsureServing"]), ("batch marker", ["StartTransform"]),
        ("transform InProgress", []), ("transform Completed", ["WritePredictions"])]
    assert [op for op, _ in requests] == list(CREATES)
    status = outcome["status"]
    assert status["run"]["tuning_status"] == status["run"]["training_status"] == "Completed"
    assert status["run"]["best_hyperparameters"] == BEST and status["run"]["gate"]["deploy"] is True
    assert status["deployed"]["test_acc"] == 0.85
    assert status["endpoint"]["status"] == "InService" and status["endpoint"]["changed_at"] == T0 + 600_000
    assert status["last_batch"]["status"] == "Completed"
    assert len(outcome["predictions"].strip().splitlines()) == 1 + len(BATCH_OUTPUTS)
    # the trial's event leaves no trace; every other event is remembered
    assert len(outcome["state"]["events_seen"]) == len(CHAIN) - 1
    assert not any("-001-aaaaaaaa" in seen for seen in outcome["state"]["events_seen"])


@pytest.mark.parametrize("play", [pytest.param(thrice_shuffled(seed), id=f"shuffled-seed-{seed}")
                                  for seed in range(5)]
                         + [pytest.param(fixed(order), id=name) for name, order in NASTY_ORDERS.items()])
def test_every_event_three_times_in_any_possible_order_starts_each_job_once(play, reference):
    outcome, chain, requests = run_chain(play)
    assert Counter(name for name, _ in chain.results) == {name: 3 for name in CHAIN}
    assert [name for name, result in chain.results if result.get("handled") is not True] == []
    assert Counter(op for op, _ in requests) == {op: 1 for op in CREATES}      # nothing else, no UpdateEndpoint
    # exactly one delivery of each starting event did the work
    started = Counter(action for _, result in chain.results for action in result["actions"])
    assert started == {"StartTuning": 1, "StartTraining": 1, "Deploy": 1, "EnsureServing": 1, "StartTransform": 1,
                       "WritePredictions": 1}
    assert_same_end(outcome, reference[0])


def test_training_completed_before_tuning_completed_after_a_crash(reference):
    """The only way a training job's Completed can come before its tuning job's: the handler of the
    tuning Completed started the training job, then died before saving. The training Completed is
    gated and deployed at once; the tuning Completed, redelivered, starts nothing."""
    def play(chain: Chain) -> None:
        chain.deliver("publish")
        chain.deliver("tuning InProgress")
        chain.deliver_crashing("tuning Completed")
        state = json.loads(chain.aws.get(STATE_KEY))
        [run] = state["runs"].values()
        assert (run["tuning_status"], run["training_status"]) == ("InProgress", None)   # the crash lost the save
        assert len(chain.aws.created("CreateTrainingJob")) == 1                      # but the job was started
        chain.deliver("training InProgress")
        assert chain.deliver("training Completed")["actions"] == ["Deploy"]
        for _ in range(2):
            assert chain.deliver("tuning Completed") == {"handled": True, "actions": []}
        for name in ("trial Completed", "endpoint Creating", "endpoint InService", "batch marker",
                     "transform InProgress", "transform Completed"):
            chain.deliver(name)

    outcome, chain, requests = run_chain(play)
    assert all(result["handled"] is True for _, result in chain.results)     # every delivery but the crash
    assert Counter(op for op, _ in requests) == {op: 1 for op in CREATES}
    assert_same_end(outcome, reference[0])


def test_transform_completed_before_its_batch_is_recorded_after_a_crash(reference, unique_names):
    """Without a crash a transform job's events cannot precede its batch marker: handling the marker
    creates the job. With a crash between CreateTransformJob and the save, the transform's events
    arrive for a job the state does not know: they are dropped, not remembered, so a later copy
    still completes the batch once the marker's redelivery has recorded it. The redelivery asks for
    the same job again; SageMaker answers ResourceInUse, which counts as done."""
    def play(chain: Chain) -> None:
        for name in CHAIN[:CHAIN.index("batch marker")]:
            chain.deliver(name)
        chain.deliver_crashing("batch marker")
        assert json.loads(chain.aws.get(STATE_KEY))["batches"] == {}
        assert chain.deliver("transform InProgress") == {"handled": True, "actions": []}
        assert chain.deliver("transform Completed") == {"handled": True, "actions": []}
        assert not any(s.startswith("transform:") for s in json.loads(chain.aws.get(STATE_KEY))["events_seen"])
        assert chain.deliver("batch marker")["actions"] == ["StartTransform"]     # Lambda's retry
        assert chain.deliver("batch marker")["actions"] == []                     # a duplicate
        chain.deliver("transform InProgress")
        assert chain.deliver("transform Completed")["actions"] == ["WritePredictions"]
        first, second = chain.aws.created("CreateTransformJob")
        assert first == second and first["TransformJobName"] == chain.transform  # the same job asked for twice ...
        assert list(chain.aws.backend.transform_jobs) == [chain.transform]      # ... and one exists

    outcome, chain, requests = run_chain(play)
    assert all(result["handled"] is True for _, result in chain.results)     # every delivery but the crash
    assert Counter(op for op, _ in requests) == {**{op: 1 for op in CREATES}, "CreateTransformJob": 2}
    assert_same_end(outcome, reference[0])


def test_a_failed_transform_still_writes_what_it_classified_and_a_row_for_each_image_it_did_not():
    def play(chain: Chain) -> None:
        chain.aws.put(f"batch/{BATCH}/input/c.png", PNG)      # the image the transform failed on: no .out
        for name in CHAIN[:CHAIN.index("transform InProgress")]:
            chain.deliver(name)
        assert chain.deliver("transform Failed")["actions"] == ["Record", "WritePredictions"]
        assert chain.deliver("transform Failed")["actions"] == []          # a duplicate changes nothing

    outcome, chain, _ = run_chain(play)
    rows = list(csv.reader(io.StringIO(outcome["predictions"])))
    assert rows == [
        ["image_key", "top_label", "probability", "top_k", "error"],
        ["batch/b1/input/a.jpg", "Akita", "0.6000", "Akita:0.6000;Affenpinscher:0.4000", ""],
        ["batch/b1/input/c.png", "", "", "", f"not classified: {TRANSFORM_FAILURE}"],
        ["batch/b1/input/sub/b.jpg", "Affenpinscher", "0.9000", "Affenpinscher:0.9000;Akita:0.1000", ""]]
    batch = outcome["status"]["last_batch"]
    assert (batch["status"], batch["failure_reason"]) == ("Failed", TRANSFORM_FAILURE)
    assert batch["predictions_uri"] == f"s3://{BUCKET}/batch/{BATCH}/output/predictions.csv"


def race_on_next_save(aws, raw_event) -> dict:
    """Wrap the state store's save: the first save lets a concurrent delivery of ``raw_event`` run to
    its end (its own save included) before it writes, as another Lambda would between our load and
    our save. Returns a record of the saves and of the concurrent delivery's actions."""
    store = aws.plane.store
    original = store.save
    record = {"concurrent": None, "saves": []}

    def save(state, etag):
        if record["concurrent"] is None:
            record["concurrent"] = "running"
            record["concurrent"] = [type(a).__name__ for a in aws.plane.handle_event(copy.deepcopy(raw_event))]
        try:
            original(state, etag)
        except StateConflict:
            record["saves"].append((etag, "conflict"))
            raise
        record["saves"].append((etag, "saved"))
    store.save = save
    return record


def test_a_duplicated_publish_racing_on_the_state_starts_one_tuning_job(aws, client):
    """Both deliveries load the empty state and send CreateHyperParameterTuningJob (actions come
    before the save, by design); the second create gets ResourceInUse and counts as done. The
    slower writer's IfNoneMatch save fails, it reloads, finds the event seen and stops."""
    aws.upload_dataset(DATASET)
    publish = aws.publish(DATASET)
    marker = publish["detail"]["object"]["etag"]
    record = race_on_next_save(aws, publish)

    assert deliver(client, publish) == {"handled": True, "actions": []}     # lost the race, then saw it handled
    assert record["concurrent"] == ["StartTuning"]
    assert record["saves"] == [(None, "saved"), (None, "conflict")]          # both wrote with IfNoneMatch: *
    first, second = aws.created("CreateHyperParameterTuningJob")
    assert first == second and first["HyperParameterTuningJobName"] == names.tuning_job_name(DATASET, marker)
    assert list(aws.backend.hyper_parameter_tuning_jobs) == [names.tuning_job_name(DATASET, marker)]
    assert [m for m in aws.metrics if m[0] == "JobsStarted"] == [("JobsStarted", 1, {"kind": "tuning"})]
    state = PipelineState.from_json(aws.get(STATE_KEY).decode())
    assert state.events_seen == [f"dataset:{BUCKET}:{DATASET}:{marker}"]
    [run] = state.runs.values()
    assert (run.tuning_status, run.training_status, run.marker) == ("Requested", None, marker)
    assert state.current_dataset == {"name": DATASET, "marker": marker}
    # and the run goes on normally from this state
    aws.set_best_trial(run.tuning_job, BEST)
    assert deliver(client, state_change("tuning", run.tuning_job, "Completed"))["actions"] == ["StartTraining"]
    assert len(aws.created("CreateTrainingJob")) == 1


def test_a_duplicated_tuning_completed_racing_on_the_state_starts_one_training_job(aws, client, unique_names):
    """The same race over an existing state: the saves are IfMatch on the same ETag."""
    aws.upload_dataset(DATASET)
    publish = aws.publish(DATASET)
    deliver(client, publish)
    tuning = aws.created("CreateHyperParameterTuningJob")[0]["HyperParameterTuningJobName"]
    aws.set_best_trial(tuning, BEST)
    etag = aws.s3.head_object(Bucket=BUCKET, Key=STATE_KEY)["ETag"]
    completed = state_change("tuning", tuning, "Completed")
    record = race_on_next_save(aws, completed)

    assert deliver(client, completed) == {"handled": True, "actions": []}
    assert record["concurrent"] == ["StartTraining"]
    assert record["saves"] == [(etag, "saved"), (etag, "conflict")]
    first, second = aws.created("CreateTrainingJob")
    assert first == second
    assert list(aws.backend.training_jobs) == [first["TrainingJobName"]]
    assert [m for m in aws.metrics if m[0] == "JobsStarted"] == [("JobsStarted", 1, {"kind": "tuning"}),
                                                                  ("JobsStarted", 1, {"kind": "training"})]
    state = PipelineState.from_json(aws.get(STATE_KEY).decode())
    assert state.events_seen.count(f"tuning:{tuning}:Completed") == 1
    [run] = state.runs.values()
    assert (run.tuning_status, run.training_status, run.best_hyperparameters) == ("Completed", "Requested", BEST)


# --- 2. the quality gate --------------------------------------------------------------------------------

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


def test_a_model_chosen_while_the_endpoint_is_updating_is_deployed_when_it_is_in_service_again(aws, client):
    first, _ = train(aws, client, 0.85)
    deliver(client, state_change("endpoint", ENDPOINT, "IN_SERVICE", LastModifiedTime=T0))
    # the endpoint starts changing (SageMaker patching it, or an update from elsewhere) ...
    aws.backend.endpoints[ENDPOINT].endpoint_status = "Updating"
    assert deliver(client, state_change("endpoint", ENDPOINT, "UPDATING", LastModifiedTime=T0 + 1))["actions"] == []
    # ... while a better model passes the gate: SageMaker would refuse UpdateEndpoint now, so none is sent
    second, result = train(aws, client, 0.90, note=b"published again", upload=False)
    assert result == {"handled": True, "actions": ["Deploy"]}
    assert aws.created("UpdateEndpoint") == []
    status = client.http.get("/status").json_body
    assert status["deployed"]["marker"] == second and status["endpoint"]["status"] == "Updating"
    # InService again: the deferred update is made, to the deployed model's endpoint config
    aws.backend.endpoints[ENDPOINT].endpoint_status = "InService"
    result = deliver(client, state_change("endpoint", ENDPOINT, "IN_SERVICE", LastModifiedTime=T0 + 2))
    assert result["actions"] == ["EnsureServing"]
    assert aws.created("UpdateEndpoint") == [{"EndpointName": ENDPOINT,
                                              "EndpointConfigName": names.endpoint_config_name(DATASET, second)}]
    # later InService events find it serving the deployed model: nothing more is sent
    deliver(client, state_change("endpoint", ENDPOINT, "IN_SERVICE", LastModifiedTime=T0 + 3))
    assert len(aws.created("UpdateEndpoint")) == 1 and len(aws.created("CreateEndpoint")) == 1
    assert names.endpoint_config_name(DATASET, first) != names.endpoint_config_name(DATASET, second)


@pytest.mark.parametrize("floor, test_acc, deploy, reason", [
    (None, 0.55, False, "refused: test accuracy 0.5500 is below the floor of 0.6000"),
    (None, 0.5999, False, "refused: test accuracy 0.5999 is below the floor of 0.6000"),
    (None, None, False, "reports no test:accuracy metric, so it cannot be checked against the floor of 0.6000"),
    (None, 0.6, True, "deploy: test accuracy 0.6000 clears the floor of 0.6000; no model is deployed yet"),
    (0.9, 0.85, False, "refused: test accuracy 0.8500 is below the floor of 0.9000"),
])
def test_the_gate_refuses_a_first_model_below_the_floor(floor, test_acc, deploy, reason):
    overrides = {} if floor is None else {"gate": QualityGate(accuracy_floor=floor)}
    with FakeAws(**overrides) as aws, Client(chalice_app.app) as client:
        aws.upload_source_pointer()
        _, result = train(aws, client, test_acc)
        gate = client.http.get("/status").json_body["run"]["gate"]
        assert gate["deploy"] is deploy and reason in gate["reason"]
        assert gate["floor"] == (floor or 0.6) and gate["candidate_accuracy"] == test_acc
        assert ("GateDecisions", 1, {"decision": "deploy" if deploy else "refuse"}) in aws.metrics
        hosting = {op: n for op, n in operations(aws).items() if op not in ("CreateHyperParameterTuningJob",
                                                                             "CreateTrainingJob")}
        if deploy:
            assert result["actions"] == ["Deploy"]
            assert hosting == {"CreateModel": 1, "CreateEndpointConfig": 1, "CreateEndpoint": 1}
            return
        assert result["actions"] == ["Record"]
        assert hosting == {}
        assert client.http.get("/status").json_body["deployed"] is None
        refused = post_image(client, IMAGE)
        assert refused.status_code == 503 and "no model is deployed" in refused.json_body["Message"]


def test_the_gate_keeps_the_better_model_and_deploys_a_better_one_by_update(aws, client):
    first, result = train(aws, client, 0.85)
    assert result["actions"] == ["Deploy"]
    deliver(client, state_change("endpoint", ENDPOINT, "IN_SERVICE", LastModifiedTime=T0))
    config_1 = names.endpoint_config_name(DATASET, first)
    assert aws.created("CreateEndpoint") == [{"EndpointName": ENDPOINT, "EndpointConfigName": config_1,
                                              "Tags": [{"Key": "dogbreeds:stage", "Value": "endpoint"}]}]

    # (b) the same dataset republished (new marker), trained worse: refused, the first model stays
    second, result = train(aws, client, 0.70, note=b"published again", upload=False)
    assert second != first and result["actions"] == ["Record"]
    status = client.http.get("/status").json_body
    assert status["dataset"] == {"name": DATASET, "marker": second}
    assert status["run"]["marker"] == second and status["run"]["gate"]["deploy"] is False
    assert "test accuracy 0.7000 is worse than the deployed model's 0.8500 on the same dataset 'dogs'" \
        in status["run"]["gate"]["reason"]
    assert status["deployed"]["marker"] == first and status["deployed"]["test_acc"] == 0.85
    assert operations(aws)["CreateModel"] == 1 and not aws.created("UpdateEndpoint")
    aws.endpoint_replies.append((200, endpoint_reply()))
    assert post_image(client, IMAGE).status_code == 200          # still served by the first model

    # (c) republished again, trained better: deployed by updating the one endpoint in place
    third, result = train(aws, client, 0.90, note=b"published a third time", upload=False)
    assert result["actions"] == ["Deploy"]
    config_3 = names.endpoint_config_name(DATASET, third)
    assert aws.created("UpdateEndpoint") == [{"EndpointName": ENDPOINT, "EndpointConfigName": config_3}]
    assert len(aws.created("CreateEndpoint")) == 1
    assert [r["ModelName"] for r in aws.created("CreateModel")] == [names.model_name(DATASET, first),
                                                                   names.model_name(DATASET, third)]
    assert aws.backend.endpoints[ENDPOINT].endpoint_config_name == config_3
    status = client.http.get("/status").json_body
    assert status["deployed"]["marker"] == third and status["deployed"]["test_acc"] == 0.9
    assert "not worse than the deployed model's 0.8500 on 'dogs'" in status["run"]["gate"]["reason"]

    # the rule compares within a dataset only: another dataset's model above the floor replaces it,
    # even at a lower accuracy (its classes may differ, so the numbers are not comparable)
    other, result = train(aws, client, 0.65, dataset="cats")
    assert result["actions"] == ["Deploy"]
    status = client.http.get("/status").json_body
    assert "replaces the model of dataset 'dogs' (test accuracy 0.9000)" in status["run"]["gate"]["reason"]
    assert status["deployed"]["dataset"] == "cats" and status["deployed"]["test_acc"] == 0.65
    assert aws.created("UpdateEndpoint")[-1] == {"EndpointName": ENDPOINT,
                                                 "EndpointConfigName": names.endpoint_config_name("cats", other)}
    assert len(aws.created("CreateEndpoint")) == 1
    assert [m[2]["decision"] for m in aws.metrics if m[0] == "GateDecisions"] == ["deploy", "refuse", "deploy",
                                                                                  "deploy"]


# --- 3. POST /predict: the bad-request corpus -----------------------------------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    body: bytes
    content_type: Optional[str] = "image/jpeg"
    query: str = ""
    status: int = 400
    message: str = ""
    serving: Optional[str] = "InService"     # the endpoint's status; "no model": nothing deployed
    reply: Optional[Tuple[int, object]] = None  # the endpoint's answer, when the request reaches it
    forwarded: bool = False
    fault: Optional[Exception] = None        # invoke_endpoint raises this instead


def js(document) -> bytes:
    return json.dumps(document).encode()


B64 = b64(IMAGE)
RANDOM_BYTES = b"\x00" + random.Random(7).randbytes(511)
SIX_MIB = 6 * 2**20

BAD_REQUESTS = [
    Case("empty body", b"", message="the body is empty"),
    Case("random bytes as image/jpeg", RANDOM_BYTES, message="the body is not an image"),
    Case("text as image/png", b"this is text, not a PNG", "image/png", message="the body is not an image"),
    Case("truncated JPEG header: the endpoint refuses it", b"\xff\xd8\xff", forwarded=True,
         reply=(400, {"message": "image file is truncated (3 bytes not processed)"}),
         message="image file is truncated (3 bytes not processed)"),
    Case("JSON not UTF-8", b'{"image": "\xff\xfe"}', JSON, message="the JSON body is not UTF-8 text"),
    Case("malformed JSON", b'{"image": ', JSON, message="the body is not valid JSON"),
    Case("JSON array", js([B64]), JSON, message="the JSON body must be an object"),
    Case("JSON with neither image nor images", js({"top_k": 3}), JSON, message='exactly one of "image"'),
    Case("JSON with both image and images", js({"image": B64, "images": [B64]}), JSON,
         message='exactly one of "image"'),
    Case("bad base64", js({"image": "not base64!"}), JSON, message='"image" is not valid base64'),
    Case("base64 of text", js({"image": b64(b"hello")}), JSON, message='the decoded "image" is not an image'),
    Case("empty images list", js({"images": []}), JSON, message='"images" must be a non-empty list'),
    Case("a bad image among images", js({"images": [B64, "%%%"]}), JSON, message='"images[1]" is not valid base64'),
    Case("65 images", js({"images": [B64] * 65}), JSON, status=413, message='"images" has 65 images; the limit is 64'),
    Case("top_k=0", IMAGE, query="?top_k=0", message="top_k must be a whole number from 1 to 1000, got 0"),
    Case("top_k=-1", IMAGE, query="?top_k=-1", message="top_k must be a whole number from 1 to 1000, got -1"),
    Case("top_k=abc", IMAGE, query="?top_k=abc", message="top_k must be a whole number from 1 to 1000, got 'abc'"),
    Case("top_k=1.5", IMAGE, query="?top_k=1.5", message="top_k must be a whole number from 1 to 1000, got '1.5'"),
    Case("top_k true in JSON", js({"image": B64, "top_k": True}), JSON,
         message="top_k must be a whole number from 1 to 1000, got True"),
    Case("top_k 2.0 in JSON", js({"image": B64, "top_k": 2.0}), JSON,
         message="top_k must be a whole number from 1 to 1000, got 2.0"),
    Case("body over 6 MiB", b"\xff\xd8\xff" + bytes(SIX_MIB - 2), status=413,
         message="the body is 6,291,457 bytes; the endpoint accepts at most 6,291,456 bytes (6 MiB)"),
    Case("text/plain", b"hello", "text/plain", status=415, message="'text/plain' is not supported"),
    Case("missing Content-Type", IMAGE, None, status=415, message="no Content-Type is not supported"),
    Case("multipart/form-data", b"--x\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n" + IMAGE + b"\r\n--x--",
         "multipart/form-data; boundary=x", status=415, message="'multipart/form-data' is not supported"),
    Case("no model deployed yet", IMAGE, serving="no model", status=503, message="no model is deployed yet"),
    Case("endpoint still Creating", IMAGE, serving="Creating", status=503,
         message="endpoint dogbreeds is Creating, not InService"),
    Case("endpoint Failed", IMAGE, serving="Failed", status=503, message="endpoint dogbreeds is Failed, not InService"),
    Case("endpoint answers 500", IMAGE, forwarded=True, reply=(500, {"message": "CUDA error: out of memory"}),
         status=502, message="the model failed on this input: CUDA error: out of memory"),
    Case("endpoint answers something not JSON", IMAGE, forwarded=True, reply=(200, b"<html>gateway</html>"),
         status=502, message="the endpoint answered something that is not JSON (20 bytes)"),
    Case("connection to the endpoint lost", IMAGE, status=502, message="could not be reached",
         fault=ConnectionClosedError(endpoint_url="https://runtime.sagemaker.us-east-1.amazonaws.com")),
]


def serve(aws, serving: Optional[str]) -> None:
    """Write the state /predict reads: a deployed model and the endpoint in ``serving`` status."""
    deployed = None if serving == "no model" else DeployedModel(
        model_name=names.model_name(DATASET, "m1"), dataset=DATASET, marker="m1", test_acc=0.85,
        training_job=names.training_job_name(DATASET, "m1"))
    endpoint = None if serving in (None, "no model") else Endpoint(ENDPOINT, serving, None, T0)
    aws.s3.put_object(Bucket=BUCKET, Key=STATE_KEY, Body=PipelineState(deployed=deployed, endpoint=endpoint).to_json())


def send(aws, client, case: Case):
    """(response, number of endpoint invocations it caused)."""
    serve(aws, case.serving)
    aws.endpoint_replies.clear()
    if case.reply:
        aws.endpoint_replies.append(case.reply)
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    before = len(aws.invocations)
    runtime = aws.plane.runtime
    if case.fault is not None:
        def invoke_endpoint(**kwargs):
            raise case.fault
        runtime.invoke_endpoint = invoke_endpoint
    try:
        response = client.http.post(f"/predict{case.query}", headers=headers, body=case.body)
    finally:
        vars(runtime).pop("invoke_endpoint", None)
    return response, len(aws.invocations) - before


@dataclass(frozen=True)
class Good:
    id: str
    body: bytes
    content_type: str
    forwarded_type: str
    query: str = ""
    accept: str = JSON
    serving: str = "InService"


GOOD_REQUESTS = [
    Good("JPEG as image/jpeg", IMAGE, "image/jpeg", "image/jpeg"),
    Good("JPEG as application/octet-stream", IMAGE, "application/octet-stream", "application/octet-stream"),
    Good("JPEG as application/x-image", IMAGE, "application/x-image", "application/x-image"),
    Good("PNG as image/png", PNG, "image/png", "image/png"),
    Good("top_k as a query parameter", IMAGE, "image/jpeg", "image/jpeg", query="?top_k=2",
         accept="application/json; top_k=2"),
    Good("base64 JSON image", js({"image": B64}), JSON, JSON),
    Good("base64 JSON image as a data URL", js({"image": "data:image/jpeg;base64," + B64}), JSON, JSON),
    Good("base64 JSON images, top_k in the body wins", js({"images": [B64, b64(PNG)], "top_k": 3}),
         "application/json; charset=utf-8", JSON, query="?top_k=2", accept="application/json; top_k=3"),
    Good("an Updating endpoint still serves its model", IMAGE, "image/jpeg", "image/jpeg", serving="Updating"),
]


@pytest.fixture(scope="class")
def served():
    """One moto world for a whole class of /predict cases (each case writes the state it needs)."""
    with FakeAws() as aws, Client(chalice_app.app) as client:
        yield aws, client


class TestPredictCorpus:
    @pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda c: c.id)
    def test_a_bad_request_gets_its_status_and_a_message(self, served, case):
        response, forwarded = send(*served, case)
        assert response.status_code == case.status
        assert response.headers["Content-Type"] == "application/json"
        body = response.json_body
        assert case.message in body["Message"] and body["Code"]
        assert forwarded == int(case.forwarded)           # a refusal in Lambda costs no endpoint invocation
        if case.status == 415:
            assert all(media_type in body["Message"] for media_type in SUPPORTED_TYPES)

    @pytest.mark.parametrize("good", GOOD_REQUESTS, ids=lambda g: g.id)
    def test_a_good_request_is_forwarded_exactly(self, served, good):
        aws, client = served
        serve(aws, good.serving)
        reply = endpoint_reply(("Akita", good.id[:20]), (0.7, 0.3))
        aws.endpoint_replies[:] = [(200, reply)]
        response = client.http.post(f"/predict{good.query}", headers={"Content-Type": good.content_type},
                                    body=good.body)
        assert response.status_code == 200 and response.json_body == reply
        assert aws.invocations[-1] == {"EndpointName": ENDPOINT, "Body": good.body,
                                       "ContentType": good.forwarded_type, "Accept": good.accept}

    def test_the_server_survives_the_whole_corpus_and_never_answers_500(self, served):
        aws, client = served
        statuses = {case.id: send(aws, client, case)[0].status_code for case in BAD_REQUESTS}
        assert statuses == {case.id: case.status for case in BAD_REQUESTS}
        assert 500 not in statuses.values()
        serve(aws, "InService")
        aws.endpoint_replies[:] = [(200, endpoint_reply(("Akita",), (1.0,)))]
        after = post_image(client, IMAGE)
        assert after.status_code == 200 and after.json_body == endpoint_reply(("Akita",), (1.0,))


def test_a_serverless_endpoint_takes_at_most_4_mib():
    with FakeAws(hosting=HostingConfig(serverless=True)) as aws, Client(chalice_app.app) as client:
        serve(aws, "InService")
        limit = 4 * 2**20
        too_big = post_image(client, b"\xff\xd8\xff" + bytes(limit - 2))
        assert too_big.status_code == 413
        assert "the body is 4,194,305 bytes; the endpoint accepts at most 4,194,304 bytes (4 MiB)" \
            in too_big.json_body["Message"]
        assert aws.invocations == []
        just_fits = b"\xff\xd8\xff" + bytes(limit - 3)
        assert post_image(client, just_fits).status_code == 200
        assert aws.invocations[-1]["Body"] == just_fits


# --- 4. what app.py imports -----------------------------------------------------------------------------

FORBIDDEN = {"torch", "torchvision", "PIL", "numpy", "sagemaker", "moto", "pandas", "smdebug", "requests"}
# Third-party packages importing app.py loads (measured), plus boto3 and s3transfer, which the Lambda
# runtime provides and control_plane() imports on first use.
ALLOWED = {"aws_lambda_powertools", "aws_xray_sdk", "wrapt",          # Powertools[tracer]
           "chalice",                                                # the runtime part chalice packages
           "botocore", "jmespath", "dateutil", "six", "urllib3", "certifi", "boto3", "s3transfer",
           "typing_extensions"}

IMPORT_PROBE = """
import json, sys
before = set(sys.modules)
import app
top = lambda names: sorted({name.split(".")[0] for name in names})
print(json.dumps({"all": top(sys.modules), "loaded": top(set(sys.modules) - before),
                  "stdlib": sorted(sys.stdlib_module_names)}))
"""


def test_app_imports_only_powertools_chalice_and_the_boto_stack():
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "AWS_LAMBDA_FUNCTION_NAME": "dogbreeds-dev", "AWS_REGION": REGION}    # as on Lambda
    # From chalice_app/, as Lambda imports it: app.py, chalicelib/ and batch/ (vendored) top-level.
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT / "chalice_app", env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    loaded = set(report["loaded"])             # what importing app.py added to sys.modules
    third_party = loaded - set(report["stdlib"]) - {"app", "chalicelib", "batch"}
    assert {"app", "chalicelib", "batch", "aws_lambda_powertools", "chalice"} <= loaded     # the probe measured something
    assert not set(report["all"]) & FORBIDDEN, sorted(set(report["all"]) & FORBIDDEN)
    assert third_party <= ALLOWED, sorted(third_party - ALLOWED)


def test_the_lambda_package_requires_powertools_and_the_tested_boto3_only():
    lines = [line.strip() for line in (ROOT / "chalice_app" / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[a-z,]+\])?==([0-9.]+)", requirement)
        assert match, requirement
        name, extras, version = match.groups()
        pins[name] = (extras, version)
    assert set(pins) == {"aws-lambda-powertools", "boto3", "botocore"}
    assert pins["aws-lambda-powertools"][0] == "[tracer]"   # app.py's Tracer needs aws_xray_sdk, which this extra brings
    for name, (_, version) in pins.items():
        assert version == importlib.metadata.version(name), name    # what the tests ran against


# --- 5. authentication --------------------------------------------------------------------------------------

EXPECTED_ROUTES = {("/predict", "POST"), ("/status", "GET"), ("/batch", "POST"), ("/batch/{batch_id}", "GET")}


def test_every_route_requires_iam_authorisation():
    routes = {(path, method): entry for path, methods in chalice_app.app.routes.items()
              for method, entry in methods.items()}
    assert set(routes) == EXPECTED_ROUTES
    for (path, method), entry in routes.items():
        assert isinstance(entry.authorizer, IAMAuthorizer), (path, method)
        assert entry.cors is None, (path, method)     # CORS would add an unauthenticated OPTIONS method


@pytest.mark.parametrize("generator", ["SwaggerGenerator", "TerraformSwaggerGenerator", "CFNSwaggerGenerator"])
def test_the_api_gateway_definition_puts_sigv4_on_every_method(generator):
    from chalice.deploy import swagger
    if generator == "SwaggerGenerator":
        arn = f"arn:aws:lambda:{REGION}:123456789012:function:dogbreeds-dev"
        maker = swagger.SwaggerGenerator(REGION, {"api_handler_arn": arn, "api_handler_name": "dogbreeds-dev"})
    else:
        maker = getattr(swagger, generator)()
    api = maker.generate_swagger(chalice_app.app)
    methods = {(path, method.upper()): spec for path, item in api["paths"].items() for method, spec in item.items()}
    assert set(methods) == EXPECTED_ROUTES
    for key, spec in methods.items():
        assert spec["security"] == [{"sigv4": []}], key
        assert spec["x-amazon-apigateway-integration"]["type"] == "aws_proxy", key
    assert api["securityDefinitions"] == {"sigv4": {"in": "header", "type": "apiKey", "name": "Authorization",
                                                    "x-amazon-apigateway-authtype": "awsSigv4"}}
    # image bodies must reach Lambda as bytes, or every JPEG would be mangled as text
    assert {"image/jpeg", "image/png", "application/x-image", "application/octet-stream"} <= \
        set(api["x-amazon-apigateway-binary-media-types"])


# --- 6. operations: logs, metrics, malformed and foreign events ---------------------------------------------

class _CurrentStdout:
    """Whatever ``sys.stdout`` is at the time of writing (pytest swaps it between setup and call)."""

    def write(self, text):
        return sys.stdout.write(text)

    def flush(self):
        sys.stdout.flush()


@pytest.fixture
def stdout_json(capsys):
    """Point the Powertools logger (which keeps the stdout of its creation) at the captured stdout;
    return a reader of the lines printed since the last read, each parsed as JSON (every line
    printed must be JSON: CloudWatch Logs parses them)."""
    handler = chalice_app.logger.registered_handler
    previous = handler.setStream(_CurrentStdout())

    def read():
        lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
        return [json.loads(line) for line in lines]
    yield read
    handler.setStream(previous)


def emf(documents, metric: str):
    """The EMF documents that carry ``metric``."""
    return [d for d in documents if "_aws" in d and any(m["Name"] == metric for directive in
                                                        d["_aws"]["CloudWatchMetrics"] for m in directive["Metrics"])]


class LambdaContext:
    function_name = "dogbreeds-dev"
    memory_limit_in_mb = 512
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:dogbreeds-dev"
    aws_request_id = "lambda-request-1"

    def get_remaining_time_in_millis(self):
        return 30_000


def api_gateway_event(path, method, request_id, headers, body):
    """A REST API proxy event as API Gateway sends it (Chalice's test client sets no requestId)."""
    return {"resource": path, "path": path, "httpMethod": method, "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()}, "queryStringParameters": None,
            "multiValueQueryStringParameters": None, "pathParameters": None, "stageVariables": None,
            "body": body, "isBase64Encoded": False,
            "requestContext": {"resourcePath": path, "httpMethod": method, "requestId": request_id,
                               "path": f"/api{path}", "stage": "api", "identity": {"sourceIp": "192.0.2.1"}}}


def test_logs_are_json_lines_with_the_event_id_and_metrics_are_emf(aws, client, stdout_json):
    aws.plane.metric = chalice_app._count                 # as control_plane() wires it on Lambda
    stdout_json()
    aws.upload_dataset(DATASET)
    publish = aws.publish(DATASET)
    deliver(client, publish)
    documents = stdout_json()
    [handled] = [d for d in documents if d.get("message") == "event handled"]
    assert handled["correlation_id"] == publish["id"] and handled["actions"] == ["StartTuning"]
    assert handled["level"] == "INFO" and handled["service"] == "dogbreeds"
    [started] = emf(documents, "JobsStarted")
    assert started["kind"] == "tuning" and started["JobsStarted"] == [1.0]

    tuning = aws.created("CreateHyperParameterTuningJob")[0]["HyperParameterTuningJobName"]
    aws.set_best_trial(tuning, BEST)
    deliver(client, state_change("tuning", tuning, "Completed"))
    training = aws.created("CreateTrainingJob")[0]["TrainingJobName"]
    aws.set_final_metrics(training, {"test:accuracy": 0.85})
    completed = state_change("training", training, "Completed")
    stdout_json()
    deliver(client, completed)
    documents = stdout_json()
    # the control plane's own log (a child of the Powertools logger) carries the event's id too
    [gate_log] = [d for d in documents if d.get("message", "").startswith("quality gate for")]
    assert gate_log["correlation_id"] == completed["id"] and f"{training}: deploy" in gate_log["message"]
    [gate] = emf(documents, "GateDecisions")
    directive = gate["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "DogBreeds" and set(directive["Dimensions"][0]) == {"service", "decision"}
    assert (gate["decision"], gate["service"], gate["GateDecisions"]) == ("deploy", "dogbreeds", [1.0])
    assert sorted(d["kind"] for d in emf(documents, "JobsStarted")) == ["endpoint", "endpoint-config", "model"]


def test_an_http_refusal_logs_the_request_id_and_counts_the_status(aws, stdout_json):
    stdout_json()
    response = chalice_app.app(api_gateway_event("/predict", "POST", "apigw-request-42",
                                                 {"Content-Type": "text/plain"}, "hello"), LambdaContext())
    assert response["statusCode"] == 415
    documents = stdout_json()
    [refused] = [d for d in documents if d.get("message") == "request refused"]
    assert refused["correlation_id"] == "apigw-request-42"
    assert (refused["status"], refused["code"]) == (415, "UnsupportedMediaType")
    assert refused["function_request_id"] == "lambda-request-1"
    [error] = emf(documents, "PredictionErrors")
    assert set(error["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) == {"service", "status"}
    assert (error["status"], error["PredictionErrors"]) == ("415", [1.0])


def bucket_listing(aws) -> dict:
    return {o["Key"]: o["ETag"] for o in aws.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


@pytest.mark.parametrize("detail_type, detail, error", [
    ("Object Created", {}, "EventBridge Object Created: missing detail.bucket"),
    ("Object Created", {"bucket": {"name": BUCKET}, "object": {"key": "datasets/dogs/_READY"}},
     "datasets/dogs/_READY: the event carries neither an ETag nor a sequencer"),
    ("SageMaker Training Job State Change", {"TrainingJobName": "train-dogs-0123456789"},
     "SageMaker Training Job State Change: missing detail.TrainingJobStatus"),
    ("SageMaker Training Job State Change", {"TrainingJobName": "train-dogs-0123456789", "TrainingJobStatus": ""},
     "detail.TrainingJobStatus should be a non-empty string"),
])
def test_a_malformed_event_is_dropped_with_a_clear_error_and_writes_nothing(aws, client, stdout_json,
                                                                           detail_type, detail, error):
    before = bucket_listing(aws)
    event = object_created(BUCKET, "datasets/dogs/_READY", "etag")
    event.update({"detail-type": detail_type, "detail": detail})
    if detail_type != "Object Created":
        event["source"] = "aws.sagemaker"
    stdout_json()
    result = deliver(client, event)
    assert result["handled"] is False and error in result["error"]
    assert bucket_listing(aws) == before and STATE_KEY not in before
    assert aws.requests == []
    documents = stdout_json()
    [logged] = [d for d in documents if d.get("message") == "malformed event dropped"]
    assert logged["level"] == "ERROR" and error in logged["reason"] and logged["correlation_id"] == event["id"]
    [counted] = emf(documents, "MalformedEvents")
    assert counted["MalformedEvents"] == [1.0]


def test_events_for_another_bucket_or_endpoint_change_nothing(aws, client):
    aws.upload_dataset(DATASET)
    deliver(client, aws.publish(DATASET))
    before = bucket_listing(aws)
    state_before = aws.get(STATE_KEY)
    requests_before = list(aws.requests)
    foreign = [object_created("someone-elses-bucket", "datasets/dogs/_READY", "0123456789abcdef"),
               object_created("someone-elses-bucket", "batch/b1/_READY", "0123456789abcdef"),
               state_change("endpoint", "someone-elses-endpoint", "IN_SERVICE", LastModifiedTime=T0),
               state_change("training", "train-not-ours-0123456789", "Completed"),
               state_change("transform", "batch-not-ours-0123456789", "Completed")]
    for event in foreign:
        assert deliver(client, event) == {"handled": True, "actions": []}
    assert aws.get(STATE_KEY) == state_before and bucket_listing(aws) == before
    assert aws.requests == requests_before
