"""The Chalice control plane end to end on moto: events in, exact SageMaker requests out, state kept
in the bucket, routes answering from it."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from aws_support import (BEST, BUCKET, DATASET, REGION, ROLE_ARN, SOURCE_URI, FakeAws, deliver, endpoint_reply,
                         jpeg_bytes, post_image, state_change)

from chalicelib import names

LOG_LINES = ("epoch=3 train_loss=0.4123 train_acc=0.8812 val_loss=0.5231 val_acc=0.8431",
             "test_loss=0.5012 test_acc=0.8500")


def test_the_whole_chain_from_a_published_dataset_to_batch_predictions(aws, client):
    aws.upload_dataset(DATASET)
    publish = aws.publish(DATASET)
    marker = publish["detail"]["object"]["etag"]
    tuning_name, training_name = names.tuning_job_name(DATASET, marker), names.training_job_name(DATASET, marker)

    # 1. the marker -> exactly one tuning request
    assert deliver(client, publish) == {"handled": True, "actions": ["StartTuning"]}
    assert [op for op, _ in aws.requests] == ["CreateHyperParameterTuningJob"]
    tuning = aws.created("CreateHyperParameterTuningJob")[0]
    assert tuning["HyperParameterTuningJobName"] == tuning_name and len(tuning_name) <= 32
    job_config = tuning["HyperParameterTuningJobConfig"]
    assert job_config["Strategy"] == "Bayesian"
    assert job_config["TrainingJobEarlyStoppingType"] == "Auto"
    assert job_config["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:accuracy"}
    assert job_config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    continuous = {r["Name"]: r for r in job_config["ParameterRanges"]["ContinuousParameterRanges"]}
    assert continuous["lr"] == {"Name": "lr", "MinValue": "0.0001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}
    assert continuous["weight-decay"]["ScalingType"] == "Logarithmic"
    assert (continuous["eps"]["MinValue"], continuous["eps"]["MaxValue"]) == ("1e-09", "1e-07")
    categorical = {r["Name"]: r["Values"] for r in job_config["ParameterRanges"]["CategoricalParameterRanges"]}
    assert categorical == {"batch-size": ["32", "64"], "arch": ['"resnet18"', '"resnet34"']}
    definition = tuning["TrainingJobDefinition"]
    regexes = {m["Name"]: m["Regex"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]}
    found = {name: re.search(regex, " ".join(LOG_LINES)).group(1) for name, regex in regexes.items()}
    assert found == {"train:loss": "0.4123", "train:accuracy": "0.8812", "validation:loss": "0.5231",
                     "validation:accuracy": "0.8431", "test:loss": "0.5012", "test:accuracy": "0.8500"}
    static = definition["StaticHyperParameters"]
    assert static["sagemaker_program"] == '"training/train.py"'
    assert static["sagemaker_submit_directory"] == json.dumps(SOURCE_URI)
    assert static["sagemaker_region"] == json.dumps(REGION)
    assert definition["RoleArn"] == ROLE_ARN
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in definition["InputDataConfig"]}
    assert channels == {split: f"s3://{BUCKET}/datasets/{DATASET}/{split}/" for split in ("train", "valid", "test")}
    # head-only trials share backbone feature sets through the dataset's features/ prefix
    assert definition["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/features/{DATASET}/",
                                              "LocalPath": "/opt/ml/features"}
    assert static["feature-store"] == '"/opt/ml/features"'

    # 2. tuning Completed -> one training request with the best trial's hyperparameters, instrumented
    aws.set_best_trial(tuning_name, BEST)
    assert deliver(client, state_change("tuning", tuning_name, "Completed"))["actions"] == ["StartTraining"]
    [training] = aws.created("CreateTrainingJob")
    assert training["TrainingJobName"] == training_name
    hp = training["HyperParameters"]
    assert {k: hp[k] for k in BEST} == {"lr": "0.0042", "weight-decay": "0.012", "eps": "3e-08",
                                         "batch-size": "64", "arch": '"resnet34"'}
    assert json.loads(hp["epochs"]) == 15 and json.loads(hp["profile-steps"]) == 5   # diagnostics + profiler trace
    assert hp["sagemaker_submit_directory"] == json.dumps(SOURCE_URI)
    assert training["CheckpointConfig"]["S3Uri"] == f"s3://{BUCKET}/checkpoints/{training_name}/"
    assert "DebugHookConfig" not in training     # managed Debugger is opt-in (closed to new customers)
    # a trial of the tuning job reporting in is not the instrumented run: nothing happens
    trial = state_change("training", f"{tuning_name}-001-aaaaaaaa", "Completed",
                         TuningJobArn=f"arn:aws:sagemaker:{REGION}:123456789012:hyper-parameter-tuning-job/x")
    assert deliver(client, trial)["actions"] == []

    # 3. training Completed -> gate passes -> model, endpoint config, endpoint
    aws.set_final_metrics(training_name, {"test:accuracy": 0.85, "test:loss": 0.41, "validation:accuracy": 0.83})
    assert deliver(client, state_change("training", training_name, "Completed"))["actions"] == ["Deploy"]
    [model] = aws.created("CreateModel")
    assert model["ModelName"] == names.model_name(DATASET, marker)
    assert model["PrimaryContainer"]["ModelDataUrl"] == \
        f"s3://{BUCKET}/jobs/{training_name}/{training_name}/output/model.tar.gz"
    assert model["PrimaryContainer"]["Environment"]["SAGEMAKER_PROGRAM"] == "inference.py"
    assert "pytorch-inference:2.6.0-cpu-py312" in model["PrimaryContainer"]["Image"]
    [endpoint_config] = aws.created("CreateEndpointConfig")
    assert endpoint_config["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": model["ModelName"], "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1, "InitialVariantWeight": 1.0}]
    [endpoint] = aws.created("CreateEndpoint")
    assert (endpoint["EndpointName"], endpoint["EndpointConfigName"]) == \
        ("dogbreeds", endpoint_config["EndpointConfigName"])
    assert ("GateDecisions", 1, {"decision": "deploy"}) in aws.metrics

    # 4. /predict: 503 until the endpoint is in service, then the endpoint's JSON for real JPEG bytes
    image = jpeg_bytes()
    waiting = post_image(client, image)
    assert waiting.status_code == 503 and "not InService" in waiting.json_body["Message"]
    deliver(client, aws.finish_endpoint("dogbreeds", "InService", modified=1700000000000))
    reply = endpoint_reply(("Akita", "Affenpinscher"), (0.75, 0.25))
    aws.endpoint_replies.append((200, reply))
    answer = post_image(client, image, query="?top_k=2")
    assert answer.status_code == 200 and answer.json_body == reply
    assert aws.invocations[-1] == {"EndpointName": "dogbreeds", "Body": image, "ContentType": "image/jpeg",
                                   "Accept": "application/json; top_k=2"}

    # 5. a batch marker -> one transform request -> Completed -> predictions.csv with a row per image
    for name in ("a.jpg", "sub/b.jpg"):
        aws.put(f"batch/b1/input/{name}", image)
    marker_event = aws.request_batch_marker("b1")
    assert deliver(client, marker_event)["actions"] == ["StartTransform"]
    [transform] = aws.created("CreateTransformJob")
    transform_name = transform["TransformJobName"]
    assert transform["ModelName"] == model["ModelName"]
    assert transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{BUCKET}/batch/b1/input/"
    assert transform["TransformInput"]["SplitType"] == "None" and transform["BatchStrategy"] == "SingleRecord"
    assert transform["TransformOutput"]["S3OutputPath"] == f"s3://{BUCKET}/batch/b1/output/"
    aws.write_transform_outputs("b1", {"a.jpg": endpoint_reply(("Akita", "Affenpinscher"), (0.6, 0.4)),
                                       "sub/b.jpg": endpoint_reply(("Affenpinscher", "Akita"), (0.9, 0.1))})
    assert deliver(client, state_change("transform", transform_name, "Completed"))["actions"] == ["WritePredictions"]
    rows = list(csv.DictReader(io.StringIO(aws.get("batch/b1/output/predictions.csv").decode())))
    assert [(r["image_key"], r["top_label"], r["probability"], r["top_k"]) for r in rows] == [
        ("batch/b1/input/a.jpg", "Akita", "0.6000", "Akita:0.6000;Affenpinscher:0.4000"),
        ("batch/b1/input/sub/b.jpg", "Affenpinscher", "0.9000", "Affenpinscher:0.9000;Akita:0.1000")]

    # /status and /batch/{id} tell the story
    status = client.http.get("/status").json_body
    assert status["dataset"] == {"name": DATASET, "marker": marker}
    assert status["run"]["tuning_job"] == tuning_name and status["run"]["tuning_status"] == "Completed"
    assert status["run"]["training_status"] == "Completed" and status["run"]["gate"]["deploy"] is True
    assert status["deployed"]["model_name"] == model["ModelName"] and status["deployed"]["test_acc"] == 0.85
    assert status["endpoint"]["status"] == "InService"
    assert status["last_batch"]["status"] == "Completed"
    assert status["last_batch"]["predictions_uri"] == f"s3://{BUCKET}/batch/b1/output/predictions.csv"
    assert client.http.get("/batch/b1").json_body["transform_job"] == transform_name
    assert [op for op, _ in aws.requests] == ["CreateHyperParameterTuningJob", "CreateTrainingJob", "CreateModel",
                                              "CreateEndpointConfig", "CreateEndpoint", "CreateTransformJob"]


@pytest.mark.parametrize("pointer", [None, b"{not json", b'{"uri": "file:///tmp/x.tar.gz"}'])
def test_a_publish_without_a_usable_code_package_starts_nothing_and_says_how_to_fix_it(client, pointer):
    with FakeAws() as aws:
        if pointer is not None:
            aws.put("code/current.json", pointer)
        aws.upload_dataset(DATASET)
        result = deliver(client, aws.publish(DATASET))
        assert result == {"handled": True, "actions": ["Record"]}
        assert aws.requests == []
        run = client.http.get("/status").json_body["latest_run"]
        assert run["tuning_status"] == "Invalid"
        assert any("no training code package" in p and "python -m deploy.package_source --bucket "
                   f"{BUCKET}" in p for p in run["layout_problems"])
