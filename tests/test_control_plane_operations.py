"""Operating the control plane: JSON log lines with correlation ids, EMF metrics, malformed and foreign
events."""

from __future__ import annotations

import json
import sys

import pytest
from aws_support import (BEST, BUCKET, DATASET, REGION, STATE_KEY, T0, deliver, object_created, state_change)

from chalice_app import app as chalice_app


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
