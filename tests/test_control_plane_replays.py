"""The control plane under replays, on moto through Chalice's test client: every event of the whole chain
delivered three times, in seeded and hand-picked orders that can really happen (and the two that need a
crash between a handler's actions and its state save), plus two deliveries of one event racing on the
state's conditional write."""

from __future__ import annotations

import copy
import csv
import io
import json
import random
from collections import Counter
from typing import Callable

import pytest
from aws_support import (BEST, BUCKET, DATASET, ENDPOINT, REGION, STATE_KEY, T0, FakeAws, deliver, endpoint_reply,
                         jpeg_bytes, png_bytes, state_change)
from botocore.exceptions import ClientError
from chalice.test import Client

from chalice_app import app as chalice_app
from chalicelib import names
from chalicelib.control import StateConflict
from chalicelib.state import PipelineState

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


def internal_error(operation="PutObject") -> ClientError:
    return ClientError({"Error": {"Code": "InternalError", "Message": "We encountered an internal error. "
                                                                      "Please try again."}}, operation)


BATCH = "b1"
BATCH_OUTPUTS = {"a.jpg": endpoint_reply(("Akita", "Affenpinscher"), (0.6, 0.4)),
                 "sub/b.jpg": endpoint_reply(("Affenpinscher", "Akita"), (0.9, 0.1))}

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
        endpoint = self.aws.backend.endpoints.get(ENDPOINT)
        if name == "endpoint InService" and endpoint is not None and endpoint.endpoint_status == "Creating":
            self.aws.finish_endpoint(ENDPOINT, "InService")        # SageMaker sends the event once it is so
        event = self.events[name]
        if event["source"] == "aws.sagemaker" and "TuningJobArn" not in event["detail"]:
            kind = {"SageMaker HyperParameter Tuning Job State Change": "tuning",
                    "SageMaker Training Job State Change": "training",
                    "SageMaker Transform Job State Change": "transform"}.get(event["detail-type"])
            status = next((v for k, v in event["detail"].items() if k.endswith("JobStatus")), None)
            if kind and status in ("Completed", "Failed", "Stopped"):
                self.aws.finish_job(kind, next(v for k, v in event["detail"].items() if k.endswith("JobName")),
                                    status)
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
        aws.plane.clock = lambda: 1_800_000_000.0     # the gate's choice is timed: the same time in every replay
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
    arrive for a job the state does not know: they are dropped, not remembered. The marker's
    redelivery asks for the same job again; SageMaker answers ResourceInUse, the job is described,
    found Completed, and the batch is completed then and there: a later copy of the transform's
    Completed is a duplicate."""
    def play(chain: Chain) -> None:
        for name in CHAIN[:CHAIN.index("batch marker")]:
            chain.deliver(name)
        chain.deliver_crashing("batch marker")
        assert json.loads(chain.aws.get(STATE_KEY))["batches"] == {}
        assert chain.deliver("transform InProgress") == {"handled": True, "actions": []}
        assert chain.deliver("transform Completed") == {"handled": True, "actions": []}
        assert not any(s.startswith("transform:") for s in json.loads(chain.aws.get(STATE_KEY))["events_seen"])
        assert chain.deliver("batch marker")["actions"] == ["StartTransform", "WritePredictions"]  # Lambda's retry
        assert chain.deliver("batch marker")["actions"] == []                     # a duplicate
        chain.deliver("transform InProgress")
        assert chain.deliver("transform Completed")["actions"] == []              # a duplicate too
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
