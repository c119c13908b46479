"""What the control plane refuses or records instead of raising, on moto: unusable dataset and batch names,
a job stopped by its time limit or by a person, a create that finds its job already there after a crash."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError
from aws_support import BEST, BUCKET, DATASET, deliver, object_created, state_change, train

from chalicelib import names

DOTS = [".", ".."]


@pytest.mark.parametrize("name", DOTS)
def test_a_dataset_named_dot_or_dot_dot_is_an_invalid_publication_with_the_reason(aws, client, name):
    aws.upload_dataset(name)                      # S3 keeps datasets/../train/... as it is written
    key = f"datasets/{name}/_READY"
    result = deliver(client, object_created(BUCKET, key, aws.put(key)))
    assert result == {"handled": True, "actions": ["Record"]}
    assert aws.requests == []
    status = client.http.get("/status").json_body
    run = status["latest_run"]
    assert (run["dataset"], run["tuning_status"]) == (name, "Invalid")
    assert run["layout_problems"] == [
        f"dataset name {name!r} cannot be used: '.' and '..' are not folder names; move the images to "
        f"datasets/<name>/ with a name of letters, digits, '.', '_' or '-' and publish again"]
    assert status["dataset"] is None                # nothing became the current dataset
    # a redelivery is a duplicate, not a retry loop
    assert deliver(client, object_created(BUCKET, key, aws.put(key)))["actions"] == []


@pytest.mark.parametrize("batch_id", DOTS)
def test_a_batch_named_dot_or_dot_dot_is_refused_with_the_reason(aws, client, batch_id):
    train(aws, client, 0.85)                       # a model is deployed: the batch would start a transform
    before = list(aws.requests)
    aws.put(f"batch/{batch_id}/input/a.jpg")
    key = f"batch/{batch_id}/_READY"
    assert deliver(client, object_created(BUCKET, key, aws.put(key))) == {"handled": True, "actions": ["Record"]}
    assert aws.requests == before
    batch = client.http.get("/status").json_body["last_batch"]
    assert (batch["batch_id"], batch["status"], batch["transform_job"]) == (batch_id, "Invalid", None)
    assert batch["failure_reason"] == (f"batch id {batch_id!r} cannot be used: a batch id is 1-100 letters, "
                                       f"digits, '.', '_' or '-' starting with a letter or digit")
    assert batch["predictions_uri"] is None


def run_to_training(aws, client):
    """Publish and complete tuning: the instrumented training job is running; return its name."""
    aws.upload_dataset(DATASET)
    publish = aws.publish(DATASET)
    marker = publish["detail"]["object"]["etag"]
    deliver(client, publish)
    aws.set_best_trial(names.tuning_job_name(DATASET, marker), BEST)
    deliver(client, state_change("tuning", names.tuning_job_name(DATASET, marker), "Completed"))
    return names.training_job_name(DATASET, marker)


@pytest.mark.parametrize("secondary, shown", [
    ("MaxRuntimeExceeded", "stopped: MaxRuntimeExceeded: the job ran past its StoppingCondition.MaxRuntimeInSeconds"),
    ("Stopped", "stopped: Stopped: a StopTrainingJob request (a person or the tuning job's early stopping)"),
    (None, "stopped: no SecondaryStatus given"),
])
def test_a_stopped_training_job_shows_why_it_stopped_in_status(aws, client, secondary, shown):
    training = run_to_training(aws, client)
    detail = {"SecondaryStatus": secondary} if secondary else {}
    stopped = state_change("training", training, "Stopped", FailureReason="", **detail)
    assert deliver(client, stopped) == {"handled": True, "actions": ["Record"]}
    run = client.http.get("/status").json_body["run"]
    assert (run["training_status"], run["training_failure"], run["gate"]) == ("Stopped", shown, None)
    assert [op for op, _ in aws.requests] == ["CreateHyperParameterTuningJob", "CreateTrainingJob"]


def test_a_tuning_job_created_before_a_crash_and_already_completed_moves_the_run_on(aws, client):
    """The publish handler created the tuning job and died before saving; the job completed and its
    event, for a job the state did not know, was dropped. Lambda's retry of the publish finds the job
    there (ResourceInUse), describes it and continues from Completed: it starts the training job."""
    aws.upload_dataset(DATASET)
    publish = aws.publish(DATASET)
    marker = publish["detail"]["object"]["etag"]
    tuning, training = names.tuning_job_name(DATASET, marker), names.training_job_name(DATASET, marker)
    store = aws.plane.store

    def save(state, etag):
        del store.save
        raise ClientError({"Error": {"Code": "InternalError", "Message": "try again"}}, "PutObject")
    store.save = save
    with pytest.raises(ClientError):
        aws.plane.handle_event(publish)
    aws.set_best_trial(tuning, BEST)
    aws.finish_job("tuning", tuning, "Completed")
    assert deliver(client, state_change("tuning", tuning, "Completed")) == {"handled": True, "actions": []}

    assert deliver(client, publish) == {"handled": True, "actions": ["StartTuning", "StartTraining"]}
    assert [op for op, _ in aws.requests] == ["CreateHyperParameterTuningJob", "CreateHyperParameterTuningJob",
                                              "CreateTrainingJob"]
    first, second = aws.created("CreateHyperParameterTuningJob")
    assert first == second and first["HyperParameterTuningJobName"] == tuning
    [training_request] = aws.created("CreateTrainingJob")
    assert training_request["TrainingJobName"] == training
    assert {k: training_request["HyperParameters"][k] for k in BEST} == BEST
    run = client.http.get("/status").json_body["run"]
    assert (run["tuning_status"], run["training_status"], run["best_hyperparameters"]) == \
        ("Completed", "Requested", BEST)
    # the tuning job's Completed, delivered again, is a duplicate now
    assert deliver(client, state_change("tuning", tuning, "Completed"))["actions"] == []
    assert len(aws.created("CreateTrainingJob")) == 1

