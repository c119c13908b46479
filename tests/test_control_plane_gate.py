"""The quality gate on moto through Chalice's test client: the floor, a worse model of the same dataset,
a better one deployed by UpdateEndpoint, another dataset's model, a model chosen while the endpoint
is updating."""

from __future__ import annotations

from collections import Counter
import pytest
from aws_support import (DATASET, ENDPOINT, T0, FakeAws, deliver, endpoint_reply, jpeg_bytes, post_image,
                         state_change, train)
from chalice.test import Client

from chalice_app import app as chalice_app
from chalicelib import names
from chalicelib.config import QualityGate

IMAGE = jpeg_bytes()


def operations(aws) -> Counter:
    return Counter(operation for operation, _ in aws.requests)


def test_a_model_chosen_while_the_endpoint_is_updating_is_deployed_when_it_is_in_service_again(aws, client):
    first, _ = train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
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
    result = deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 2))
    assert result["actions"] == ["EnsureServing"]
    assert aws.created("UpdateEndpoint") == [{"EndpointName": ENDPOINT,
                                              "EndpointConfigName": names.endpoint_config_name(DATASET, second)}]
    # later InService events find it serving the deployed model: nothing more is sent
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 3))
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
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
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
    assert aws.backend.endpoints[ENDPOINT].endpoint_status == "Updating"
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 1))
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
