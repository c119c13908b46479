"""The control plane's decisions as pure functions: event parsing, dataset layout, the quality gate,
and the pipeline state's transitions (idempotent, order-tolerant).

Event dicts follow the shapes AWS documents: S3 event notifications (``Records[].s3``), S3 ->
EventBridge "Object Created" (``detail.bucket``/``detail.object``) and SageMaker's EventBridge
state changes (``detail`` mirrors the Describe* response).
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from chalicelib import events, names, pipeline, state
from chalicelib.events import EventError

BUCKET = "dogbreeds-bucket"
ETAG = "9b2cf535f27731c974343645a3985328"
ACCOUNT = "123456789012"


# --- event builders ------------------------------------------------------------------------------

def s3_notification(key: str, etag: str = ETAG, sequencer: str = "0A1B2C3D4E5F678901", bucket: str = BUCKET,
                    event_name: str = "ObjectCreated:Put") -> dict:
    obj = {"key": key, "size": 0, "sequencer": sequencer}
    if etag is not None:
        obj["eTag"] = etag
    return {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
        "eventTime": "2026-11-20T10:00:00.000Z", "eventName": event_name,
        "s3": {"s3SchemaVersion": "1.0", "configurationId": "ready-markers",
               "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
               "object": obj}}]}


def eventbridge_object_created(key: str, etag: str = ETAG, sequencer: str = "006408CAD69598B05E",
                               event_id: str = "17793124-05d4-b198-2fde-7ededc63b103") -> dict:
    obj = {"key": key, "size": 0, "sequencer": sequencer}
    if etag is not None:
        obj["etag"] = etag
    return {"version": "0", "id": event_id, "detail-type": "Object Created", "source": "aws.s3",
            "account": ACCOUNT, "time": "2026-11-20T10:00:00Z", "region": "us-east-1",
            "resources": [f"arn:aws:s3:::{BUCKET}"],
            "detail": {"version": "0", "bucket": {"name": BUCKET}, "object": obj,
                       "request-id": "57H08PA84AB1JZW0", "requester": ACCOUNT, "reason": "PutObject"}}


def sagemaker_event(detail_type: str, detail: dict, event_id: str = "844e2571-85d4-695f-b930-0153b71dcb42") -> dict:
    return {"version": "0", "id": event_id, "detail-type": detail_type, "source": "aws.sagemaker",
            "account": ACCOUNT, "time": "2026-11-20T10:00:00Z", "region": "us-east-1", "resources": [],
            "detail": detail}


def tuning_event(name: str, status: str, reason: str = None) -> dict:
    detail = {"HyperParameterTuningJobName": name,
              "HyperParameterTuningJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:hyper-parameter-tuning-job/{name}",
              "HyperParameterTuningJobStatus": status,
              "TrainingJobStatusCounters": {"Completed": 6, "InProgress": 0, "RetryableError": 0,
                                            "NonRetryableError": 0, "Stopped": 0}}
    if reason:
        detail["FailureReason"] = reason
    return sagemaker_event("SageMaker HyperParameter Tuning Job State Change", detail)


def training_event(name: str, status: str, reason: str = None, tuning_job: str = None) -> dict:
    detail = {"TrainingJobName": name,
              "TrainingJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:training-job/{name}",
              "TrainingJobStatus": status, "SecondaryStatus": status,
              "HyperParameters": {"lr": "0.0031"}}
    if reason:
        detail["FailureReason"] = reason
    if tuning_job:
        detail["TuningJobArn"] = f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:hyper-parameter-tuning-job/{tuning_job}"
    return sagemaker_event("SageMaker Training Job State Change", detail)


def transform_event(name: str, status: str, reason: str = None) -> dict:
    detail = {"TransformJobName": name,
              "TransformJobArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:transform-job/{name}",
              "TransformJobStatus": status, "ModelName": "model-x"}
    if reason:
        detail["FailureReason"] = reason
    return sagemaker_event("SageMaker Transform Job State Change", detail)


def endpoint_event(name: str, status, modified=1592411994287.0) -> dict:
    detail = {"EndpointName": name, "EndpointArn": f"arn:aws:sagemaker:us-east-1:{ACCOUNT}:endpoint/{name}",
              "EndpointConfigName": "config-x", "EndpointStatus": status, "CreationTime": 1592411992203.0}
    if modified is not None:
        detail["LastModifiedTime"] = modified
    return sagemaker_event("SageMaker Endpoint State Change", detail)


# --- events: S3 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [s3_notification, eventbridge_object_created])
def test_ready_markers_are_classified_and_the_rest_ignored(shape):
    [published] = events.parse_event(shape("datasets/dogimages/_READY", etag=f'"{ETAG}"'))
    assert published == events.DatasetPublished(BUCKET, "dogimages", ETAG)   # quotes gone
    [batch] = events.parse_event(shape("batch/run-7/_READY"))
    assert batch == events.BatchRequested(BUCKET, "run-7", ETAG)
    for key in ("datasets/dogimages/train/001.Affenpinscher/a.jpg", "batch/run-7/input/x.jpg",
                "datasets/dogimages/train/_READY", "datasets/_READY", "other/_READY", "datasets//_READY"):
        [ignored] = events.parse_event(shape(key))
        assert isinstance(ignored, events.Ignored), key
        assert key in ignored.reason


def test_notification_keys_are_url_decoded():
    [published] = events.parse_s3_event(s3_notification("datasets/dog+images%2C+v2/_READY"))
    assert published.name == "dog images, v2"
    [batch] = events.parse_s3_event(s3_notification("batch/a%2Bb/_READY"))
    assert batch.batch_id == "a+b"                        # %2B is a real '+', '+' is a space


def test_the_same_upload_twice_has_the_same_identity_and_sequencer_is_the_fallback():
    first = events.parse_event(eventbridge_object_created("datasets/d/_READY", event_id="id-1"))[0]
    again = events.parse_event(eventbridge_object_created("datasets/d/_READY", event_id="id-2"))[0]
    via_s3 = events.parse_event(s3_notification("datasets/d/_READY", etag=f'"{ETAG}"'))[0]
    assert first.identity == again.identity == via_s3.identity
    [no_etag] = events.parse_event(s3_notification("datasets/d/_READY", etag=None, sequencer="00AB12"))
    assert no_etag.marker == "00AB12"


def test_non_creation_records_are_ignored():
    [ignored] = events.parse_s3_event(s3_notification("datasets/d/_READY", event_name="ObjectRemoved:Delete"))
    assert isinstance(ignored, events.Ignored) and "ObjectRemoved" in ignored.reason


# --- events: SageMaker -----------------------------------------------------------------------------

def test_sagemaker_state_changes_are_parsed_and_statuses_normalised():
    assert events.parse_sagemaker_event(endpoint_event("dogbreeds", "IN_SERVICE")) == \
        events.JobStateChanged("endpoint", "dogbreeds", "InService", None, False, 1592411994287.0)
    assert events.parse_sagemaker_event(endpoint_event("e", "Creating", modified="1970-01-01T00:00:02Z")).changed_at \
        == 2000.0
    assert events.parse_sagemaker_event(endpoint_event("e", "Creating", modified="1583831889050")).changed_at \
        == 1583831889050.0
    assert events.parse_sagemaker_event(endpoint_event("dogbreeds", "InService")).status == "InService"
    assert events.parse_sagemaker_event(endpoint_event("dogbreeds", "OUT_OF_SERVICE")).status == "OutOfService"
    tuning = events.parse_sagemaker_event(tuning_event("tune-d-1", "COMPLETED"))
    assert (tuning.kind, tuning.name, tuning.status) == ("tuning", "tune-d-1", "Completed")
    failed = events.parse_sagemaker_event(training_event("train-d-1", "Failed", reason="AlgorithmError: boom"))
    assert (failed.kind, failed.status, failed.failure_reason, failed.launched_by_tuning_job) == \
        ("training", "Failed", "AlgorithmError: boom", False)
    trial = events.parse_sagemaker_event(training_event("tune-d-1-001-abcdef12", "Completed", tuning_job="tune-d-1"))
    assert trial.launched_by_tuning_job is True
    transform = events.parse_sagemaker_event(transform_event("batch-x-1", "Stopped"))
    assert (transform.kind, transform.status) == ("transform", "Stopped")


def _without(event: dict, *path: str) -> dict:
    event = copy.deepcopy(event)
    target = event
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return event


@pytest.mark.parametrize("event, expected", [
    (None, "must be an object"),
    ([], "must be an object"),
    ("Object Created", "must be an object"),
    ({}, "missing Records"),
    ({"Records": []}, "non-empty list"),
    ({"Records": "x"}, "non-empty list"),
    ({"Records": [7]}, "record 0: should be an object"),
    (_without(s3_notification("datasets/d/_READY"), "Records", 0, "s3", "bucket", "name"), "missing s3.bucket.name"),
    (_without(s3_notification("datasets/d/_READY"), "Records", 0, "s3", "object", "key"), "missing s3.object.key"),
    (_without(s3_notification("datasets/d/_READY"), "Records", 0, "s3"), "missing s3"),
    (s3_notification("datasets/d/_READY", etag=None, sequencer=None), "neither an ETag nor a sequencer"),
    (_without(eventbridge_object_created("datasets/d/_READY"), "detail"), "missing detail"),
    (_without(eventbridge_object_created("datasets/d/_READY"), "detail", "object", "key"),
     "missing detail.object.key"),
    ({**eventbridge_object_created("d"), "detail": "oops"}, "detail should be an object"),
    ({"detail-type": "Object Deleted", "detail": {}}, "'Object Deleted'"),
    (sagemaker_event("SageMaker Model State Change", {}), "unknown detail-type 'SageMaker Model State Change'"),
    (_without(training_event("t", "Completed"), "detail", "TrainingJobStatus"), "missing detail.TrainingJobStatus"),
    (_without(tuning_event("t", "Completed"), "detail", "HyperParameterTuningJobName"),
     "missing detail.HyperParameterTuningJobName"),
    (_without(endpoint_event("e", "IN_SERVICE"), "detail", "EndpointStatus"), "missing detail.EndpointStatus"),
    (_without(transform_event("b", "Completed"), "detail", "TransformJobName"), "missing detail.TransformJobName"),
    (endpoint_event("e", 3), "EndpointStatus should be a non-empty string"),
    ({"detail-type": "Scheduled Event", "source": "aws.s3", "detail": {}}, "must come from source 'aws.events'"),
])
def test_malformed_events_raise_event_error_naming_the_problem(event, expected):
    with pytest.raises(EventError, match=None) as info:
        events.parse_event(event)
    assert expected in str(info.value)


def _paths(value, prefix=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield prefix + (i,)
            yield from _paths(item, prefix + (i,))


def test_any_missing_or_mistyped_field_gives_event_error_or_a_result_never_another_exception():
    valid = [s3_notification("datasets/d/_READY"), eventbridge_object_created("batch/b/_READY"),
             tuning_event("t", "Completed"), training_event("t", "Failed", reason="x", tuning_job="u"),
             transform_event("b", "Completed"), endpoint_event("e", "IN_SERVICE")]
    tried = 0
    for event in valid:
        for path in _paths(event):
            for replacement in ("<delete>", None, 7, "", [], {}, True):
                broken = copy.deepcopy(event)
                target = broken
                for part in path[:-1]:
                    target = target[part]
                if replacement == "<delete>":
                    del target[path[-1]]
                else:
                    target[path[-1]] = replacement
                tried += 1
                try:
                    events.parse_event(broken)
                except EventError as exc:
                    assert str(exc)
    assert tried > 300


def test_malformed_sagemaker_event_via_the_sagemaker_parser():
    with pytest.raises(EventError, match="missing detail-type"):
        events.parse_sagemaker_event({"detail": {}})
    with pytest.raises(EventError, match="must be an object"):
        events.parse_sagemaker_event(["x"])


# --- dataset layout ----------------------------------------------------------------------------------

def _listing(files):
    return [(f"datasets/dogs/{key}", size) for key, size in files] + [("datasets/dogs/_READY", 0)]


def test_a_good_layout_is_counted():
    files = [("train/001.Affenpinscher/a.jpg", 10), ("train/001.Affenpinscher/b.JPEG", 10),
             ("train/002.Afghan_hound/c.png", 10), ("train/002.Afghan_hound/notes.txt", 5),
             ("valid/001.Affenpinscher/d.webp", 10), ("test/002.Afghan_hound/e.TIFF", 10),
             ("train/002.Afghan_hound/deeper/f.jpg", 10), ("README.md", 100)]
    report = pipeline.check_dataset_layout(_listing(files), "dogs")
    assert report.ok and report.problems == []
    assert report.counts == {"train": {"001.Affenpinscher": 2, "002.Afghan_hound": 1},
                             "valid": {"001.Affenpinscher": 1}, "test": {"002.Afghan_hound": 1}}


def test_layout_problems_are_sentences_with_the_class_names():
    no_train = pipeline.check_dataset_layout(_listing([("valid/a/x.jpg", 1)]), "dogs")
    assert not no_train.ok and "no train/" in no_train.problems[0]

    one_class = pipeline.check_dataset_layout(_listing([("train/001.Affenpinscher/x.jpg", 1)]), "dogs")
    assert one_class.problems == ["train/ has 1 class (001.Affenpinscher); classification needs at least 2"]

    report = pipeline.check_dataset_layout(_listing([
        ("train/a/1.jpg", 1), ("train/b/2.jpg", 1), ("valid/c/3.jpg", 1), ("test/b/empty.png", 0),
        ("train/a/zero.jpg", 0)]), "dogs")
    assert not report.ok
    assert "valid/ has classes that train/ lacks: c" in report.problems
    assert "test/b has no usable images" in report.problems
    assert "train/a has 1 zero-byte image: zero.jpg" in report.problems
    assert "test/b has 1 zero-byte image: empty.png" in report.problems
    assert report.counts["train"] == {"a": 1, "b": 1}


# --- metrics and the gate ----------------------------------------------------------------------------

def test_final_metrics():
    data = [{"MetricName": "test:accuracy", "Value": 0.85, "Timestamp": "2026-11-20T10:00:00Z"},
            {"MetricName": "validation:loss", "Value": 0.5231, "Timestamp": "2026-11-20T10:00:00Z"},
            {"MetricName": "broken", "Value": float("nan")}, {"Value": 1.0}, "junk"]
    assert pipeline.final_metrics(data) == {"test:accuracy": 0.85, "validation:loss": 0.5231}
    assert pipeline.final_metrics(None) == {}


def test_gate_refuses_below_the_floor():
    decision = pipeline.gate_decision({"dataset": "dogs", "test_acc": 0.55}, None, 0.6)
    assert not decision.deploy and "0.5500" in decision.reason and "0.6000" in decision.reason
    assert (decision.candidate_accuracy, decision.deployed_accuracy, decision.floor) == (0.55, None, 0.6)


def test_gate_refuses_worse_than_deployed_on_the_same_dataset():
    decision = pipeline.gate_decision({"dataset": "dogs", "test_acc": 0.80}, {"dataset": "dogs", "test_acc": 0.85}, 0.6)
    assert not decision.deploy
    assert "0.8000" in decision.reason and "0.8500" in decision.reason and "same dataset" in decision.reason


def test_gate_accepts_better_equal_and_other_dataset():
    better = pipeline.gate_decision({"dataset": "dogs", "test_acc": 0.9}, {"dataset": "dogs", "test_acc": 0.85}, 0.6)
    assert better.deploy and "0.9000" in better.reason and "0.8500" in better.reason
    equal = pipeline.gate_decision({"dataset": "dogs", "test_acc": 0.85}, {"dataset": "dogs", "test_acc": 0.85}, 0.6)
    assert equal.deploy
    other = pipeline.gate_decision({"dataset": "cats", "test_acc": 0.7}, {"dataset": "dogs", "test_acc": 0.95}, 0.6)
    assert other.deploy and "'dogs'" in other.reason and "0.9500" in other.reason and "0.7000" in other.reason
    first = pipeline.gate_decision({"dataset": "dogs", "test_acc": 0.6}, None, 0.6)
    assert first.deploy                                         # the floor itself is allowed


def test_gate_refuses_a_missing_metric():
    decision = pipeline.gate_decision({"dataset": "dogs"}, None, 0.6)
    assert not decision.deploy and "test:accuracy" in decision.reason and "0.6000" in decision.reason
    nan = pipeline.gate_decision({"dataset": "dogs", "test_acc": float("nan")}, None, 0.6)
    assert not nan.deploy


# --- pipeline state ----------------------------------------------------------------------------------

GOOD_LAYOUT = pipeline.LayoutReport(ok=True, problems=[], counts={"train": {"a": 3, "b": 3}})
TEST_METRICS = {"test:accuracy": 0.85, "test:loss": 0.5}


def dispatch(st, raw, metrics=TEST_METRICS, layout=GOOD_LAYOUT):
    """What app.py's handlers will do, minus the I/O: parse, then the matching transition."""
    actions = []
    for event in events.parse_event(raw):
        if isinstance(event, events.DatasetPublished):
            st, new = state.on_dataset_published(st, event, layout)
        elif isinstance(event, events.BatchRequested):
            st, new = state.on_batch_requested(st, event)
        elif isinstance(event, events.Ignored):
            new = []
        elif event.kind == "tuning":
            st, new = state.on_tuning_changed(st, event, {"lr": "0.0031"})
        elif event.kind == "training":
            st, new = state.on_training_changed(st, event, metrics, floor=0.6)
        elif event.kind == "transform":
            st, new = state.on_transform_changed(st, event)
        else:
            st, new = state.on_endpoint_changed(st, event)
        actions += new
    return st, actions


TUNING = names.tuning_job_name("dogs", ETAG)
TRAINING = names.training_job_name("dogs", ETAG)
TRANSFORM = names.transform_job_name("b1", ETAG)


def chain_events():
    return [
        eventbridge_object_created("datasets/dogs/train/a/1.jpg"),
        eventbridge_object_created("datasets/dogs/_READY"),
        tuning_event(TUNING, "InProgress"),
        training_event(f"{TUNING}-001-abcdef12", "Completed", tuning_job=TUNING),
        training_event(f"{TUNING}-002-abcdef13", "Failed", reason="OOM", tuning_job=TUNING),
        tuning_event(TUNING, "Completed"),
        training_event(TRAINING, "InProgress"),
        training_event(TRAINING, "Completed"),
        endpoint_event("dogbreeds", "CREATING", modified=1000.0),
        endpoint_event("dogbreeds", "IN_SERVICE", modified=2000.0),
        s3_notification("batch/b1/_READY"),
        transform_event(TRANSFORM, "InProgress"),
        transform_event(TRANSFORM, "Completed"),
    ]


def run_chain():
    st, all_actions = state.PipelineState(), []
    for raw in chain_events():
        st, actions = dispatch(st, raw)
        all_actions += actions
    return st, all_actions


def test_the_whole_chain():
    st, actions = run_chain()
    model = names.model_name("dogs", ETAG)
    assert actions == [
        state.StartTuning("dogs", ETAG),
        state.StartTraining("dogs", ETAG, TUNING),
        state.Deploy("dogs", ETAG, TRAINING, model, 0.85),
        state.EnsureServing("dogs", ETAG),            # InService: make sure it serves the deployed model
        state.StartTransform("b1", ETAG, model),
        state.WritePredictions("b1", TRANSFORM, "batch/b1/output/predictions.csv"),
    ]
    run = st.runs[f"dogs/{ETAG}"]
    assert (run.tuning_status, run.training_status) == ("Completed", "Completed")
    assert run.best_hyperparameters == {"lr": "0.0031"} and run.metrics == TEST_METRICS
    assert run.gate["deploy"] is True and "0.8500" in run.gate["reason"]
    assert st.current_dataset == {"name": "dogs", "marker": ETAG}
    assert (st.deployed.model_name, st.deployed.test_acc) == (model, 0.85)
    assert (st.endpoint.name, st.endpoint.status) == ("dogbreeds", "InService")
    assert st.batches["b1"].status == "Completed"


def test_replaying_every_event_three_times_in_any_order_changes_nothing():
    final, _ = run_chain()
    final_json = final.to_json()
    rng = random.Random(1234)
    for _ in range(8):
        replay = chain_events() * 3
        rng.shuffle(replay)
        st = state.PipelineState.from_json(final_json)
        for raw in replay:
            st, actions = dispatch(st, raw)
            assert actions == [], raw
        assert st.to_json() == final_json


def test_transitions_do_not_modify_their_input():
    st, _ = run_chain()
    before = st.to_json()
    dispatch(st, eventbridge_object_created("datasets/dogs/_READY", etag="ffff"))
    dispatch(st, training_event(TRAINING, "Failed"))
    assert st.to_json() == before


def test_out_of_order_training_before_tuning_and_failed_after_completed():
    st, actions = dispatch(state.PipelineState(), eventbridge_object_created("datasets/dogs/_READY"))
    assert actions == [state.StartTuning("dogs", ETAG)]
    st, actions = dispatch(st, training_event(TRAINING, "Completed"))       # tuning Completed never seen
    assert [type(a) for a in actions] == [state.Deploy]
    assert st.runs[f"dogs/{ETAG}"].training_status == "Completed"
    st, actions = dispatch(st, tuning_event(TUNING, "Completed"))           # late: starts nothing
    assert actions == [] and st.runs[f"dogs/{ETAG}"].tuning_status == "Completed"
    st, actions = dispatch(st, training_event(TRAINING, "Failed", reason="late and wrong"))
    assert actions == []
    assert st.runs[f"dogs/{ETAG}"].training_status == "Completed"
    assert st.runs[f"dogs/{ETAG}"].training_failure is None


def test_trials_and_unknown_jobs_leave_no_trace():
    st, _ = dispatch(state.PipelineState(), eventbridge_object_created("datasets/dogs/_READY"))
    before = st.to_json()
    for raw in (training_event(f"{TUNING}-001-abcdef12", "Completed", tuning_job=TUNING),
                training_event("someone-elses-job", "Completed"), tuning_event("tune-other", "Completed"),
                transform_event("batch-other", "Completed")):
        st, actions = dispatch(st, raw)
        assert actions == []
    assert st.to_json() == before


def test_bad_layout_records_and_starts_nothing():
    bad = pipeline.LayoutReport(ok=False, problems=["train/ has 1 class (a); classification needs at least 2"],
                                counts={"train": {"a": 4}})
    st, actions = dispatch(state.PipelineState(), eventbridge_object_created("datasets/dogs/_READY"), layout=bad)
    assert len(actions) == 1 and isinstance(actions[0], state.Record) and "1 class (a)" in actions[0].message
    run = st.runs[f"dogs/{ETAG}"]
    assert run.tuning_status == state.INVALID and run.layout_problems == bad.problems
    assert st.current_dataset is None


def test_gate_refusal_and_failures_are_recorded():
    st, _ = dispatch(state.PipelineState(), eventbridge_object_created("datasets/dogs/_READY"))
    st, actions = dispatch(st, training_event(TRAINING, "Completed"), metrics={"test:accuracy": 0.4})
    assert len(actions) == 1 and "0.4000" in actions[0].message and "0.6000" in actions[0].message
    assert st.deployed is None and st.runs[f"dogs/{ETAG}"].gate["deploy"] is False

    st2, _ = dispatch(state.PipelineState(), eventbridge_object_created("datasets/dogs/_READY"))
    st2, actions = dispatch(st2, tuning_event(TUNING, "Failed", reason="ResourceLimitExceeded"))
    assert "ResourceLimitExceeded" in actions[0].message
    assert st2.runs[f"dogs/{ETAG}"].tuning_failure == "ResourceLimitExceeded"


def test_batches_without_a_model_and_failed_transforms():
    st, actions = dispatch(state.PipelineState(), s3_notification("batch/b1/_READY"))
    assert "no model" in actions[0].message and st.batches["b1"].status == state.NO_MODEL
    st, _ = run_chain()
    st, actions = dispatch(st, s3_notification("batch/b2/_READY", etag="abc"))
    job = names.transform_job_name("b2", "abc")
    assert actions == [state.StartTransform("b2", "abc", st.deployed.model_name)]
    st, actions = dispatch(st, transform_event(job, "Failed", reason="ClientError: 415"))
    assert "ClientError: 415" in actions[0].message
    assert actions[1] == state.WritePredictions("b2", job, "batch/b2/output/predictions.csv",
                                                failure_reason="ClientError: 415")
    assert (st.batches["b2"].status, st.batches["b2"].failure_reason) == ("Failed", "ClientError: 415")


def test_state_json_round_trip_and_bounded_memory():
    st, _ = run_chain()
    text = st.to_json()
    again = state.PipelineState.from_json(text)
    assert again == st and again.to_json() == text
    assert state.PipelineState.from_json(state.PipelineState().to_json()) == state.PipelineState()
    for i in range(state.EVENTS_SEEN_LIMIT + 20):
        st, _ = dispatch(st, endpoint_event("dogbreeds", "IN_SERVICE" if i % 2 else "UPDATING", modified=1e4 + i))
    assert len(st.events_seen) == state.EVENTS_SEEN_LIMIT
    with pytest.raises(ValueError, match="version"):
        state.PipelineState.from_json(json.dumps({"version": 99}))


def test_endpoint_status_follows_the_latest_change_and_comes_back_to_in_service():
    st = state.PipelineState()
    for status, t in (("CREATING", 1.0), ("IN_SERVICE", 2.0), ("UPDATING", 3.0), ("IN_SERVICE", 4.0)):
        st, actions = dispatch(st, endpoint_event("dogbreeds", status, modified=t))
        assert actions == []
    assert (st.endpoint.status, st.endpoint.changed_at) == ("InService", 4.0)
    st, _ = dispatch(st, endpoint_event("dogbreeds", "UPDATING", modified=2.5))    # old news, delivered late
    assert st.endpoint.status == "InService"
    st, _ = dispatch(st, endpoint_event("dogbreeds", "FAILED", modified=None))     # no time: taken as latest
    assert st.endpoint.status == "Failed"


def test_the_layout_check_counts_exactly_the_images_the_trainer_reads():
    from training.data import IMAGE_EXTENSIONS as trainer_extensions
    assert set(pipeline.IMAGE_EXTENSIONS) == trainer_extensions


def test_the_endpoint_step_toward_serving_the_deployed_model():
    model = state.DeployedModel("model-x", "dogs", ETAG, 0.9, "train-x")
    wanted = names.endpoint_config_name("dogs", ETAG)
    seen = state.EndpointSeen
    spent = state.DeployedModel("model-x", "dogs", ETAG, 0.9, "train-x",
                                endpoint_attempts=state.ENDPOINT_ATTEMPTS_PER_MODEL)
    given_up = state.DeployedModel("model-x", "dogs", ETAG, 0.9, "train-x", deployment=state.FAILED_TO_DEPLOY)
    cases = [(None, seen("InService", "config-old"), state.NOTHING),
             (model, None, state.CREATE),
             (model, seen("InService", "config-old"), state.UPDATE),
             (model, seen("InService", wanted), state.NOTHING),
             (model, seen("Failed", wanted, "no capacity"), state.DELETE),
             (model, seen("Creating", wanted), state.WAIT),
             (model, seen("Updating", wanted), state.WAIT),
             (model, seen("Deleting"), state.WAIT),
             (spent, None, state.GIVE_UP),
             (spent, seen("InService", "config-old"), state.GIVE_UP),
             (spent, seen("InService", wanted), state.NOTHING),
             (spent, seen("Failed", wanted, "no capacity"), state.DELETE),
             (given_up, None, state.NOTHING)]
    assert [state.endpoint_step(deployed, s) for deployed, s, _ in cases] == [step for _, _, step in cases]


def test_a_stopped_jobs_secondary_status_is_parsed_and_becomes_its_reason():
    raw = training_event("train-x", "Stopped")
    raw["detail"]["SecondaryStatus"] = "MaxRuntimeExceeded"
    event = events.parse_sagemaker_event(raw)
    assert (event.status, event.secondary_status, event.failure_reason) == ("Stopped", "MaxRuntimeExceeded", None)
    assert state.ending_reason(event) == \
        "stopped: MaxRuntimeExceeded: the job ran past its StoppingCondition.MaxRuntimeInSeconds"
    failed = events.parse_sagemaker_event(training_event("train-x", "Failed", reason="AlgorithmError: boom"))
    assert state.ending_reason(failed) == "AlgorithmError: boom"


def test_the_scheduled_event_is_a_tick_that_is_never_taken_for_a_duplicate():
    tick = {"version": "0", "id": "a", "detail-type": "Scheduled Event", "source": "aws.events",
            "time": "2026-12-03T10:05:00Z", "resources": [], "detail": {}}
    parsed = events.parse_event(tick)
    assert parsed == [events.ReconcileTick("2026-12-03T10:05:00Z")]
    # the tick's transition remembers nothing: the next tick (even with the same time) is looked at again
    empty = state.PipelineState()
    new, actions = state.on_reconcile_tick(empty)
    assert new is empty and actions == []
