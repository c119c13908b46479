"""Model history and rollback on moto: every model the gate deployed is listed with its metrics and time,
and ``POST /models/{model}/serve`` puts an earlier one back through the endpoint's lifecycle (UpdateEndpoint
only when InService, CreateEndpoint when there is none), refused while the endpoint is changing and for a
model never deployed, and recorded with who chose it and why."""

from __future__ import annotations

import json

from aws_support import DATASET, ENDPOINT, T0, deliver, endpoint_reply, jpeg_bytes, post_image, train
from chalice.local import LambdaContext

from chalice_app import app as chalice_app
from chalicelib import names

HOSTING = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint", "DeleteEndpoint")
BAD_IMAGE = "The primary container for production variant AllTraffic did not pass the ping health check."
ALICE = "arn:aws:iam::123456789012:user/alice"


def hosting_requests(aws) -> list:
    return [(operation, params) for operation, params in aws.requests if operation in HOSTING]


def serve(client, model: str, body=None, raw: bytes = None):
    payload = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
    return client.http.post(f"/models/{model}/serve", headers={"Content-Type": "application/json"}, body=payload)


class Clock:
    """The control plane's clock, advanced by hand: each reading is one second after the one before."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def two_models_serving_the_second(aws, client):
    """The gate deploys dataset ``dogs`` at 0.85, then its republication at 0.90 (by UpdateEndpoint)."""
    first, _ = train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    second, result = train(aws, client, 0.90, note=b"published again", upload=False)
    assert result["actions"] == ["Deploy"]
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 1))
    return first, second


def test_the_history_lists_each_model_the_gate_deployed_with_its_metrics_reason_and_time(aws, client):
    aws.plane.clock = clock = Clock()
    first, _ = train(aws, client, 0.85)
    first_time = clock.now
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    refused, _ = train(aws, client, 0.70, note=b"published again", upload=False)        # not deployed: not listed
    second, _ = train(aws, client, 0.90, note=b"published a third time", upload=False)
    status = client.http.get("/status").json_body
    gate_reasons = {status["run"]["marker"]: status["run"]["gate"]["reason"]}
    assert [(c["model_name"], c["marker"], c["test_acc"], c["chosen_by"]) for c in status["history"]] == [
        (names.model_name(DATASET, first), first, 0.85, "quality gate"),
        (names.model_name(DATASET, second), second, 0.90, "quality gate")]
    assert status["history"][0]["chosen_at"] == first_time and status["history"][1]["chosen_at"] == clock.now
    assert status["history"][1]["reason"] == gate_reasons[second]
    assert status["history"][0]["metrics"] == {"test:accuracy": 0.85, "test:loss": 0.4}
    assert status["history"][1]["training_job"] == names.training_job_name(DATASET, second)
    assert (status["deployed"]["chosen_by"], status["deployed"]["reason"]) == ("quality gate", gate_reasons[second])


def test_serving_an_earlier_model_updates_the_endpoint_to_its_config_and_records_who_and_why(aws, client):
    first, second = two_models_serving_the_second(aws, client)
    aws.plane.clock = clock = Clock()
    model_1, config_1 = names.model_name(DATASET, first), names.endpoint_config_name(DATASET, first)
    before = len(aws.requests)
    answer = serve(client, model_1, {"reason": "  the new model calls every Akita an Affenpinscher "})
    assert answer.status_code == 202, answer.json_body
    # the same model and endpoint config requests as the gate's deployment (creates of what exists are
    # refused and taken as done), then the update, sent once the choice was saved
    sent = aws.requests[before:]
    assert [op for op, _ in sent] == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert sent[0][1] == aws.created("CreateModel")[0] and sent[1][1] == aws.created("CreateEndpointConfig")[0]
    assert sent[1][1]["EndpointConfigName"] == config_1
    assert sent[2][1] == {"EndpointName": ENDPOINT, "EndpointConfigName": config_1}
    deployed = answer.json_body["deployed"]
    assert (deployed["model_name"], deployed["marker"], deployed["test_acc"]) == (model_1, first, 0.85)
    assert (deployed["chosen_by"], deployed["reason"]) == ("local user", "the new model calls every Akita an "
                                                                         "Affenpinscher")
    assert (deployed["deployment"], deployed["endpoint_attempts"]) == ("Deploying", 1)
    assert answer.json_body["endpoint"]["status"] == "Updating"
    choice = answer.json_body["history"][-1]
    assert len(answer.json_body["history"]) == 3 and choice["chosen_at"] == clock.now
    assert (choice["model_name"], choice["chosen_by"], choice["metrics"]) == (
        model_1, "local user", {"test:accuracy": 0.85, "test:loss": 0.4})
    assert ("ModelsServedAgain", 1, {}) in aws.metrics

    # a second choice while the endpoint updates is refused, and sends nothing
    during = serve(client, names.model_name(DATASET, second))
    assert during.status_code == 409
    assert during.json_body["Message"] == (f"endpoint {ENDPOINT} is Updating: SageMaker accepts no other model "
                                           f"until it is InService; try again in a few minutes")
    assert len(aws.requests) == before + 3

    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 2))
    assert aws.backend.endpoints[ENDPOINT].endpoint_config_name == config_1
    status = client.http.get("/status").json_body
    assert (status["deployed"]["model_name"], status["deployed"]["deployment"]) == (model_1, "Serving")
    aws.endpoint_replies.append((200, endpoint_reply(("Akita", "Affenpinscher"), (0.7, 0.3))))
    assert post_image(client, jpeg_bytes()).json_body == endpoint_reply(("Akita", "Affenpinscher"), (0.7, 0.3))
    again = serve(client, model_1)
    assert again.status_code == 409 and again.json_body["Message"] == f"endpoint {ENDPOINT} serves model {model_1} already"

    # the gate now measures a new candidate against the model served again (0.85), not the 0.90 one
    third, result = train(aws, client, 0.87, note=b"published a fourth time", upload=False)
    assert result["actions"] == ["Deploy"]
    assert "not worse than the deployed model's 0.8500" in client.http.get("/status").json_body["run"]["gate"]["reason"]


def test_a_model_never_deployed_is_404_and_bad_bodies_are_400_and_nothing_is_sent(aws, client):
    first, _ = two_models_serving_the_second(aws, client)
    refused, _ = train(aws, client, 0.5, note=b"published badly", upload=False)     # below the floor
    before = len(aws.requests)
    for model in (names.model_name(DATASET, refused), "model-cats-0000"):
        answer = serve(client, model)
        assert answer.status_code == 404
        assert answer.json_body["Message"].startswith(f"model {model!r} was never deployed by the quality gate; "
                                                      f"the models it deployed: {names.model_name(DATASET, first)}, ")
    model_1 = names.model_name(DATASET, first)
    for raw, words in ((b"not json", "the body must be JSON"), (b"[1]", "the body must be a JSON object"),
                       (json.dumps({"reason": 3}).encode(), "reason must be a string"),
                       (json.dumps({"reason": "x" * 501}).encode(), "reason is 501 characters; at most 500")):
        answer = serve(client, model_1, raw=raw)
        assert answer.status_code == 400 and words in answer.json_body["Message"], answer.json_body
    assert len(aws.requests) == before
    assert client.http.get("/status").json_body["deployed"]["model_name"] != model_1


def test_after_a_model_is_given_up_the_earlier_one_is_served_by_creating_the_endpoint_again(aws, client):
    first, _ = train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    second, _ = train(aws, client, 0.90, note=b"published again", upload=False)
    # the update fails outright twice: the endpoint is deleted and created again, then given up
    deliver(client, aws.finish_endpoint(ENDPOINT, "Failed", BAD_IMAGE, modified=T0 + 1))
    deliver(client, aws.finish_endpoint(ENDPOINT, "Failed", BAD_IMAGE, modified=T0 + 2))
    assert client.http.get("/status").json_body["deployed"]["deployment"] == "FailedToDeploy"
    assert ENDPOINT not in aws.backend.endpoints
    before = len(aws.requests)
    answer = serve(client, names.model_name(DATASET, first), {"reason": "the new one does not start"})
    assert answer.status_code == 202
    config_1 = names.endpoint_config_name(DATASET, first)
    assert [op for op, _ in aws.requests[before:]] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    assert aws.requests[-1][1] == {"EndpointName": ENDPOINT, "EndpointConfigName": config_1,
                                   "Tags": [{"Key": "dogbreeds:stage", "Value": "endpoint"}]}
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 3))
    status = client.http.get("/status").json_body
    assert (status["deployed"]["marker"], status["deployed"]["deployment"]) == (first, "Serving")
    assert [c["chosen_by"] for c in status["history"]] == ["quality gate", "quality gate", "local user"]


def test_on_aws_the_record_names_the_iam_identity_that_signed_the_request(aws, client):
    first, _ = two_models_serving_the_second(aws, client)
    model_1 = names.model_name(DATASET, first)
    # the event API Gateway sends the Lambda for a SigV4-signed request it has authorised
    event = {"resource": "/models/{model}/serve", "path": f"/models/{model_1}/serve", "httpMethod": "POST",
             "headers": {"content-type": "application/json"}, "multiValueHeaders": {},
             "queryStringParameters": None, "multiValueQueryStringParameters": None,
             "pathParameters": {"model": model_1}, "stageVariables": None,
             "requestContext": {"resourcePath": "/models/{model}/serve", "httpMethod": "POST",
                                "path": f"/api/models/{model_1}/serve", "requestId": "req-1", "stage": "api",
                                "identity": {"userArn": ALICE, "caller": "AIDAEXAMPLE", "accountId": "123456789012",
                                             "sourceIp": "203.0.113.9"}},
             "body": json.dumps({"reason": "rolling back the 0.90 model"}), "isBase64Encoded": False}
    response = chalice_app.app(event, LambdaContext("api_handler", 512))
    assert response["statusCode"] == 202, response
    status = client.http.get("/status").json_body
    assert (status["deployed"]["chosen_by"], status["deployed"]["reason"]) == (ALICE, "rolling back the 0.90 model")
    assert status["history"][-1]["chosen_by"] == ALICE
