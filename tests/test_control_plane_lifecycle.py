"""The endpoint's lifecycle on moto, which refuses what SageMaker refuses: a failed endpoint is deleted and
created again (a bounded number of times), a refused create or update is a deferral, and two deliveries
of one event racing to update the endpoint send one UpdateEndpoint that SageMaker accepts."""

from __future__ import annotations

import threading

from aws_support import (BUCKET, DATASET, ENDPOINT, STATE_KEY, T0, deliver, reconcile_tick, state_change, train,
                         without_environment_swaps)

from chalicelib import names

CAPACITY = "Unable to provision requested ML compute capacity. Please retry using a different ML instance type."
BAD_IMAGE = "The primary container for production variant AllTraffic did not pass the ping health check."
HOSTING = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint", "DeleteEndpoint")


def hosting_requests(aws) -> list:
    return [(operation, params) for operation, params in aws.requests if operation in HOSTING]


def test_a_failed_endpoint_is_deleted_and_created_again_once_and_the_run_ends_deployed(aws, client):
    marker, result = train(aws, client, 0.85)
    assert result["actions"] == ["Deploy"]
    config = names.endpoint_config_name(DATASET, marker)
    create = {"EndpointName": ENDPOINT, "EndpointConfigName": config,
              "Tags": [{"Key": "dogbreeds:stage", "Value": "endpoint"}]}
    failed = aws.finish_endpoint(ENDPOINT, "Failed", CAPACITY, modified=T0)
    assert deliver(client, failed) == {"handled": True, "actions": ["EnsureServing"]}
    assert [op for op, _ in hosting_requests(aws)] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                                       "DeleteEndpoint", "CreateEndpoint"]
    assert aws.created("DeleteEndpoint") == [{"EndpointName": ENDPOINT}]
    assert aws.created("CreateEndpoint") == [create, create]
    deployed = client.http.get("/status").json_body["deployed"]
    assert deployed["deployment"] == "Deploying" and deployed["endpoint_attempts"] == 2
    assert deployed["endpoint_failures"] == [f"endpoint {ENDPOINT} failed: {CAPACITY}"]
    assert client.http.get("/status").json_body["endpoint"]["status"] == "Creating"

    assert deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 1))["actions"] == ["EnsureServing"]
    status = client.http.get("/status").json_body
    assert status["deployed"]["deployment"] == "Serving" and status["deployed"]["waiting"] is None
    assert (status["endpoint"]["status"], status["endpoint"]["failure_reason"]) == ("InService", None)
    assert aws.backend.endpoints[ENDPOINT].endpoint_config_name == config
    assert len(hosting_requests(aws)) == 5                       # serving: nothing more is asked
    assert ("JobsStarted", 1, {"kind": "endpoint"}) in aws.metrics


def test_a_model_whose_endpoint_keeps_failing_is_given_up_with_the_reason_and_the_next_model_deploys(aws, client):
    first, _ = train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "Failed", BAD_IMAGE, modified=T0))
    assert deliver(client, aws.finish_endpoint(ENDPOINT, "Failed", BAD_IMAGE, modified=T0 + 1))["actions"] == \
        ["EnsureServing"]
    assert [op for op, _ in hosting_requests(aws)] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint",
                                                       "DeleteEndpoint", "CreateEndpoint", "DeleteEndpoint"]
    assert ENDPOINT not in aws.backend.endpoints
    deployed = client.http.get("/status").json_body["deployed"]
    assert deployed["deployment"] == "FailedToDeploy" and deployed["endpoint_attempts"] == 2
    failure = f"endpoint {ENDPOINT} failed: {BAD_IMAGE}"
    assert deployed["endpoint_failures"][:2] == [failure, failure]
    assert deployed["endpoint_failures"][2].startswith(f"model {names.model_name(DATASET, first)} not deployed: "
                                                       f"the endpoint failed after 2 attempts")
    # a late copy of the failure changes nothing: no endpoint is left to delete, no create is tried
    deliver(client, state_change("endpoint", ENDPOINT, "FAILED", LastModifiedTime=T0 + 2, FailureReason=BAD_IMAGE))
    assert len(hosting_requests(aws)) == 6
    # the next model through the gate (even a worse one of the same dataset: the failed one never served)
    second, result = train(aws, client, 0.80, note=b"published again", upload=False)
    assert result["actions"] == ["Deploy"]
    assert aws.created("CreateEndpoint")[-1]["EndpointConfigName"] == names.endpoint_config_name(DATASET, second)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 3))
    deployed = client.http.get("/status").json_body["deployed"]
    assert (deployed["marker"], deployed["deployment"], deployed["endpoint_attempts"]) == (second, "Serving", 1)


def test_a_slow_deletion_is_waited_for_then_the_reconciliation_tick_creates_the_new_endpoint(aws, client):
    # SageMaker sends no event when a deleted endpoint is gone: only the scheduled tick can notice
    aws.deletes_take_time = True
    pauses = []
    aws.plane.sleep = pauses.append
    marker, _ = train(aws, client, 0.85)
    config = names.endpoint_config_name(DATASET, marker)
    deliver(client, aws.finish_endpoint(ENDPOINT, "Failed", CAPACITY, modified=T0))
    assert [op for op, _ in hosting_requests(aws)][-2:] == ["CreateEndpoint", "DeleteEndpoint"]
    assert pauses == [5.0] * 5                                    # checked for half a minute, still Deleting
    waiting = f"endpoint {ENDPOINT} is Deleting: {config} is deployed once it is InService"
    assert client.http.get("/status").json_body["deployed"]["waiting"] == waiting

    describes = []
    aws.sagemaker.meta.events.register("provide-client-params.sagemaker.DescribeEndpoint",
                                       lambda params, **kwargs: describes.append(dict(params)))
    requests_before = len(aws.requests)
    assert deliver(client, reconcile_tick()) == {"handled": True, "actions": ["EnsureServing"]}
    assert describes == [{"EndpointName": ENDPOINT}] and len(aws.requests) == requests_before   # still Deleting
    assert client.http.get("/status").json_body["deployed"]["waiting"] == waiting

    assert aws.finish_endpoint(ENDPOINT, "Deleted") is None
    assert deliver(client, reconcile_tick()) == {"handled": True, "actions": ["EnsureServing"]}
    assert [op for op, _ in hosting_requests(aws)][-3:] == ["CreateEndpoint", "DeleteEndpoint", "CreateEndpoint"]
    assert aws.created("CreateEndpoint")[-1] == {"EndpointName": ENDPOINT, "EndpointConfigName": config,
                                                 "Tags": [{"Key": "dogbreeds:stage", "Value": "endpoint"}]}
    status = client.http.get("/status").json_body
    assert status["deployed"]["endpoint_attempts"] == 2 and status["endpoint"]["status"] == "Creating"

    # once it serves, a tick looks at nothing: no SageMaker request, no state write
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 2))
    assert client.http.get("/status").json_body["deployed"]["deployment"] == "Serving"
    requests_before, state_before = len(aws.requests), aws.s3.head_object(Bucket=BUCKET, Key=STATE_KEY)["ETag"]
    describes.clear()
    assert deliver(client, reconcile_tick()) == {"handled": True, "actions": []}
    assert len(aws.requests) == requests_before and describes == []
    assert aws.s3.head_object(Bucket=BUCKET, Key=STATE_KEY)["ETag"] == state_before


def test_a_lost_in_service_event_is_made_good_by_the_next_tick(aws, client):
    marker, _ = train(aws, client, 0.85)
    event = aws.finish_endpoint(ENDPOINT, "InService", modified=T0)    # ... and its delivery is lost
    assert event["detail"]["EndpointStatus"] == "IN_SERVICE"
    assert client.http.get("/status").json_body["deployed"]["deployment"] == "Deploying"
    assert deliver(client, reconcile_tick())["actions"] == ["EnsureServing"]
    status = client.http.get("/status").json_body
    assert (status["deployed"]["deployment"], status["deployed"]["waiting"]) == ("Serving", None)
    assert status["endpoint"]["status"] == "InService"           # so /predict serves: it reads the state
    assert [op for op, _ in hosting_requests(aws)] == ["CreateModel", "CreateEndpointConfig", "CreateEndpoint"]


def test_an_update_refused_because_the_endpoint_is_changing_is_deferred_not_an_error(aws, client):
    train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    describe = aws.plane.sagemaker.describe_endpoint

    def stale_describe(**kwargs):
        # DescribeEndpoint said InService a moment ago; by the time UpdateEndpoint arrives, it is Updating
        answer = describe(**kwargs)
        aws.backend.endpoints[ENDPOINT].endpoint_status = "Updating"
        del aws.plane.sagemaker.describe_endpoint
        return answer
    aws.plane.sagemaker.describe_endpoint = stale_describe
    second, result = train(aws, client, 0.90, note=b"published again", upload=False)
    assert result == {"handled": True, "actions": ["Deploy"]}
    config = names.endpoint_config_name(DATASET, second)
    assert aws.created("UpdateEndpoint") == [{"EndpointName": ENDPOINT, "EndpointConfigName": config}]
    deployed = client.http.get("/status").json_body["deployed"]
    assert deployed["marker"] == second and deployed["endpoint_attempts"] == 0
    assert deployed["waiting"].startswith(f"update of endpoint {ENDPOINT} to {config} deferred until it is "
                                          f"InService: ValidationException: Cannot update in-progress endpoint")
    # its InService event brings the deferred update
    aws.backend.endpoints[ENDPOINT].endpoint_status = "InService"
    assert deliver(client, state_change("endpoint", ENDPOINT, "IN_SERVICE", LastModifiedTime=T0 + 1))["actions"] == \
        ["EnsureServing"]
    assert aws.created("UpdateEndpoint") == [{"EndpointName": ENDPOINT, "EndpointConfigName": config}] * 2
    assert aws.backend.endpoints[ENDPOINT].endpoint_status == "Updating"
    assert client.http.get("/status").json_body["deployed"]["endpoint_attempts"] == 1


def test_two_deliveries_of_one_training_completed_at_once_send_one_accepted_update_and_raise_nothing(aws, client):
    first, _ = train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    # the second run up to its training job's Completed, which two Lambdas then receive at once
    aws.upload_dataset(DATASET)
    publish = aws.publish(DATASET, b"published again")
    second = publish["detail"]["object"]["etag"]
    deliver(client, publish)
    tuning, training = names.tuning_job_name(DATASET, second), names.training_job_name(DATASET, second)
    aws.set_best_trial(tuning, {"lr": "0.01", "weight-decay": "0.01", "eps": "1e-08", "batch-size": "32",
                                "arch": '"resnet18"'})
    deliver(client, state_change("tuning", tuning, "Completed"))
    aws.set_final_metrics(training, {"test:accuracy": 0.9})
    completed = state_change("training", training, "Completed")

    both_described = threading.Barrier(2, timeout=20)
    describe = aws.plane.sagemaker.describe_endpoint
    described = []

    def describe_then_meet(**kwargs):
        answer = describe(**kwargs)
        if len(described) < 2:              # only the first describe of each delivery meets the other
            described.append(answer["EndpointStatus"])
            both_described.wait()
        return answer
    aws.plane.sagemaker.describe_endpoint = describe_then_meet
    results, errors = [], []

    def handle():
        try:
            results.append(deliver(client, completed))
        except Exception as exc:           # the assertion below shows it
            errors.append(exc)
    without_environment_swaps(client)
    threads = [threading.Thread(target=handle) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == [] and described == ["InService", "InService"]
    assert sorted(r["handled"] for r in results) == [True, True]
    assert sorted(a for r in results for a in r["actions"]) == ["Deploy"]   # the other delivery found it handled
    config = names.endpoint_config_name(DATASET, second)
    # both sent it; SageMaker accepted one and refused the other (the endpoint was Updating by then)
    assert aws.created("UpdateEndpoint") == [{"EndpointName": ENDPOINT, "EndpointConfigName": config}] * 2
    assert [m for m in aws.metrics if m[2].get("kind") == "endpoint-update"] == \
        [("JobsStarted", 1, {"kind": "endpoint-update"})]
    assert aws.backend.endpoints[ENDPOINT].endpoint_status == "Updating"
    assert aws.backend.endpoints[ENDPOINT].endpoint_config_name == names.endpoint_config_name(DATASET, first)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 1))
    assert aws.backend.endpoints[ENDPOINT].endpoint_config_name == config
    deployed = client.http.get("/status").json_body["deployed"]
    assert (deployed["marker"], deployed["deployment"]) == (second, "Serving")
    assert len(aws.created("UpdateEndpoint")) == 2


def test_an_update_rolled_back_by_sagemaker_is_tried_once_more_and_recorded(aws, client):
    # SageMaker's default (blue/green) update that fails leaves the endpoint InService on the old config
    first, _ = train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    second, result = train(aws, client, 0.90, note=b"published again", upload=False)
    old, new = names.endpoint_config_name(DATASET, first), names.endpoint_config_name(DATASET, second)
    update = {"EndpointName": ENDPOINT, "EndpointConfigName": new}
    assert aws.created("UpdateEndpoint") == [update]
    rolled_back = aws.finish_endpoint(ENDPOINT, "RolledBack", BAD_IMAGE, modified=T0 + 1)
    assert deliver(client, rolled_back)["actions"] == ["EnsureServing"]
    assert aws.created("UpdateEndpoint") == [update, update]
    deployed = client.http.get("/status").json_body["deployed"]
    failure = f"update of endpoint {ENDPOINT} to {new} failed and was rolled back to {old}: {BAD_IMAGE}"
    assert (deployed["endpoint_attempts"], deployed["endpoint_failures"]) == (2, [failure])
    # a tick while the second update runs neither counts the old failure again nor asks for anything
    deliver(client, reconcile_tick())
    assert client.http.get("/status").json_body["deployed"]["endpoint_failures"] == [failure]
    assert aws.created("UpdateEndpoint") == [update, update]

    deliver(client, aws.finish_endpoint(ENDPOINT, "RolledBack", BAD_IMAGE, modified=T0 + 2))
    deployed = client.http.get("/status").json_body["deployed"]
    assert deployed["deployment"] == "FailedToDeploy" and deployed["endpoint_failures"][:2] == [failure, failure]
    assert deployed["endpoint_failures"][2] == (
        f"model {names.model_name(DATASET, second)} not deployed: the endpoint failed after 2 attempts "
        f"({failure}; {failure}); endpoint {ENDPOINT} still serves {old}; publish a dataset again to deploy another")
    assert aws.created("UpdateEndpoint") == [update, update]           # given up: no third try
    assert aws.backend.endpoints[ENDPOINT].endpoint_config_name == old  # ... and the old model still serves


def test_an_update_that_succeeds_after_a_roll_back_ends_serving(aws, client):
    train(aws, client, 0.85)
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    second, _ = train(aws, client, 0.90, note=b"published again", upload=False)
    deliver(client, aws.finish_endpoint(ENDPOINT, "RolledBack", CAPACITY, modified=T0 + 1))
    deliver(client, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 2))
    status = client.http.get("/status").json_body
    assert (status["deployed"]["marker"], status["deployed"]["deployment"]) == (second, "Serving")
    assert len(status["deployed"]["endpoint_failures"]) == 1 and status["endpoint"]["failure_reason"] is None
    assert aws.backend.endpoints[ENDPOINT].endpoint_config_name == names.endpoint_config_name(DATASET, second)


def test_a_failed_endpoint_seen_by_a_tick_and_its_event_at_once_is_deleted_once_and_neither_raises(aws, client):
    # the tick's describe said Failed; by the time its DeleteEndpoint arrives the event's handler has sent one
    aws.deletes_take_time = True
    aws.plane.sleep = lambda seconds: None
    marker, _ = train(aws, client, 0.85)
    failed = aws.finish_endpoint(ENDPOINT, "Failed", CAPACITY, modified=T0)
    assert deliver(client, failed)["actions"] == ["EnsureServing"]
    assert aws.backend.endpoints[ENDPOINT].endpoint_status == "Deleting"
    describe = aws.plane.sagemaker.describe_endpoint

    def stale_describe(**kwargs):
        answer = describe(**kwargs)
        del aws.plane.sagemaker.describe_endpoint            # only the tick's first look is stale
        return {**answer, "EndpointStatus": "Failed", "FailureReason": CAPACITY}
    aws.plane.sagemaker.describe_endpoint = stale_describe
    assert deliver(client, reconcile_tick()) == {"handled": True, "actions": ["EnsureServing"]}
    assert aws.created("DeleteEndpoint") == [{"EndpointName": ENDPOINT}] * 2      # the second one refused ...
    deployed = client.http.get("/status").json_body["deployed"]
    assert deployed["endpoint_failures"] == [f"endpoint {ENDPOINT} failed: {CAPACITY}"]   # ... and counted once
    assert deployed["waiting"] == (f"endpoint {ENDPOINT} is Deleting: {names.endpoint_config_name(DATASET, marker)} "
                                   f"is deployed once it is InService")
