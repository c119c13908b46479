"""The verbs against a deployment on AWS (``dogbreeds ... --api URL`` / ``--stage S``): the Chalice app on
moto behind an API Gateway stand-in that checks SigV4 signatures (``cloud_support.Gateway``).

The same state prints the same lines through the signed path as through the local one; API Gateway's
refusals are said in words and reach nothing; publishing uploads each file once, in parallel, and the
marker last, or no marker at all when an upload fails.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from aws_support import (BUCKET, DATASET, ENDPOINT, REGION, STATE_KEY, T0, FakeAws, deliver, endpoint_reply,
                         jpeg_bytes, state_change, train, without_environment_swaps)
from botocore.exceptions import ClientError
from chalice.test import Client
from cloud_support import Gateway
from local_support import http, wait_for

from chalice_app import app as chalice_app
from chalicelib import names
from chalicelib.state import Batch, DeployedModel, Endpoint, PipelineState, Run
from deploy import target as targets
from dogbreeds import cli, client, cloud
from dogbreeds.stack import BUCKET as LOCAL_BUCKET

KEY, SECRET = "AKIDCLOUDVERBSTEST01", "the-cloud-verbs-tests-secret-key"
STRANGER = "AKIDNOBODYKNOWSTHIS1"
API = "https://abc123defg.execute-api.eu-west-1.amazonaws.com/api/"


@pytest.fixture
def profiles(tmp_path, monkeypatch):
    """AWS profiles in files of this test's own: ``tester`` (the key the gateway knows), ``stranger`` (a
    key it does not) and ``forger`` (the known key with the wrong secret)."""
    credentials = tmp_path / "aws-credentials"
    credentials.write_text(f"[tester]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n\n"
                           f"[stranger]\naws_access_key_id = {STRANGER}\naws_secret_access_key = {SECRET}\n\n"
                           f"[forger]\naws_access_key_id = {KEY}\naws_secret_access_key = not-{SECRET}\n")
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def deployment(profiles, monkeypatch):
    """moto with the bucket and the control plane, and the app behind a SigV4-checking gateway."""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")    # the app's metric lines are not the command's
    with FakeAws() as aws, Gateway(chalice_app.app, REGION, keys={KEY: SECRET}) as gateway:
        aws.upload_source_pointer()
        yield aws, gateway


def on_aws(gateway: Gateway, profile: str = "tester", region: str = REGION) -> list:
    return ["--api", gateway.url, "--region", region, "--bucket", BUCKET, "--aws-profile", profile]


def serve(aws, endpoint_status: str = "InService") -> None:
    """A deployed model on the endpoint, as the state /predict reads says it."""
    deployed = DeployedModel(model_name=names.model_name(DATASET, "m1"), dataset=DATASET, marker="m1", test_acc=0.85,
                             training_job=names.training_job_name(DATASET, "m1"))
    aws.put(STATE_KEY, PipelineState(deployed=deployed, endpoint=Endpoint(ENDPOINT, endpoint_status, None, T0)).to_json()
            .encode())


def local_home(tmp_path: Path, api_url: str = None) -> Path:
    """A local stack's data directory; with ``api_url``, one whose stack (this process) serves that API."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if api_url:
        (home / client.STACK_FILE).write_text(json.dumps({"pid": os.getpid(), "api_url": api_url,
                                                          "bucket": LOCAL_BUCKET}))
    return home


# --- predict and status: the same output through either path ---------------------------------------

def test_predict_through_the_signed_api_prints_what_the_local_api_prints(deployment, tmp_path, capsys):
    aws, gateway = deployment
    image = tmp_path / "rex.jpg"
    image.write_bytes(jpeg_bytes())
    reply = endpoint_reply(("Akita", "Affenpinscher"), (0.875, 0.125))
    outputs = {}
    with Gateway(chalice_app.app, REGION) as unauthorised:          # the local stack's API: no IAM
        home = local_home(tmp_path, unauthorised.url.rstrip("/"))
        for path, argv in (("local", ["--data-dir", str(home)]), ("signed", on_aws(gateway))):
            serve(aws)
            aws.endpoint_replies[:] = [(200, reply)]
            code = cli.main(["predict", str(image), "--top-k", "2", *argv])
            serve(aws, "Creating")
            refused = cli.main(["predict", str(image), *argv])
            outputs[path] = (code, refused, capsys.readouterr())
    assert outputs["signed"] == outputs["local"]
    code, refused, printed = outputs["signed"]
    assert (code, refused) == (0, 1)
    assert printed.out == f"{image}: Akita 87.5%, Affenpinscher 12.5%\n"
    assert printed.err == (f"{image}: HTTP 503 EndpointNotInService: endpoint {ENDPOINT} is Creating, not InService: "
                           f"try again in a few minutes; GET /status shows its state\n")
    assert [(i["Body"], i["Accept"]) for i in aws.invocations] == [(image.read_bytes(), "application/json; top_k=2")] * 2
    assert gateway.seen == [("POST", "/api/predict?top_k=2", None), ("POST", "/api/predict", None)]


def a_state(batch_status: str = "Failed") -> PipelineState:
    """A run that trained and passed the gate, an endpoint that failed, and a batch."""
    run = Run(dataset=DATASET, marker="m2", tuning_job=names.tuning_job_name(DATASET, "m2"),
              training_job=names.training_job_name(DATASET, "m2"), tuning_status="Completed",
              training_status="Completed", metrics={"test:accuracy": 0.8125},
              gate={"deploy": True, "reason": "deploy: test accuracy 0.8125 is at least the floor of 0.6000"})
    batch = Batch(batch_id="b1", marker="x", transform_job="batch-b1-x", status=batch_status,
                  output_key="batch/b1/output/predictions.csv",
                  failure_reason="ClientError: 1 of 4 objects failed\nmore detail" if batch_status == "Failed" else None)
    return PipelineState(current_dataset={"name": DATASET, "marker": "m2"}, runs={f"{DATASET}/m2": run},
                         endpoint=Endpoint(ENDPOINT, "Failed", "no capacity", T0), batches={"b1": batch})


def test_status_through_the_signed_api_prints_what_the_local_status_prints_for_the_same_state(
        deployment, tmp_path, capsys):
    aws, gateway = deployment
    home = local_home(tmp_path)
    state = a_state()
    (home / "s3" / LOCAL_BUCKET / STATE_KEY).parent.mkdir(parents=True)
    (home / "s3" / LOCAL_BUCKET / STATE_KEY).write_text(state.to_json())
    aws.put(STATE_KEY, state.to_json().encode())

    assert cli.main(["status", "--data-dir", str(home)]) == 0
    local = capsys.readouterr().out.splitlines()
    assert cli.main(["status", *on_aws(gateway)]) == 0
    signed = capsys.readouterr().out.splitlines()
    run = state.runs[f"{DATASET}/m2"]
    assert local[0] == f"stack     not running ({home.resolve()})"
    assert signed[0] == f"stack     AWS API {gateway.url} (region {REGION}, bucket {BUCKET})"
    assert signed[1:] == local[1:] == [
        f"dataset   {DATASET} published (marker m2)",
        "run       tuning Completed, training Completed, test accuracy 0.8125",
        f"gate      {run.gate['reason']}",
        f"endpoint  {ENDPOINT} Failed: no capacity",
        "batch     b1 Failed: ClientError: 1 of 4 objects failed"]
    assert gateway.seen == [("GET", "/api/status", None)]

    # a completed batch: its predictions where each path keeps them
    state = a_state("Completed")
    (home / "s3" / LOCAL_BUCKET / STATE_KEY).write_text(state.to_json())
    aws.put(STATE_KEY, state.to_json().encode())
    assert cli.main(["status", "--data-dir", str(home)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"batch     b1 predictions: {home.resolve() / 's3' / LOCAL_BUCKET / 'batch/b1/output/predictions.csv'}"
    assert cli.main(["status", *on_aws(gateway)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == \
        f"batch     b1 predictions: s3://{BUCKET}/batch/b1/output/predictions.csv"


def test_status_on_aws_shows_the_jobs_sagemaker_describes(deployment, capsys):
    aws, gateway = deployment
    with Client(chalice_app.app) as lambda_client:
        marker, handled = train(aws, lambda_client, test_acc=0.8125)
    assert handled["actions"] == ["Deploy"]
    tuning, training = names.tuning_job_name(DATASET, marker), names.training_job_name(DATASET, marker)
    aws.finish_job("tuning", tuning)
    aws.finish_job("training", training)

    assert cli.main(["status", *on_aws(gateway)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:4] == [f"dataset   {DATASET} published (marker {marker[:12]})",
                          "run       tuning Completed, training Completed, test accuracy 0.8125",
                          lines[3]]
    assert lines[3].startswith("gate      deploy")
    assert lines[4] == f"endpoint  {ENDPOINT} Creating"            # DescribeEndpoint's status: moto's endpoint
    table = lines[lines.index("") + 1:]
    assert table[0].split() == ["started", "kind", "job", "status", "took", "result"]
    rows = {row.split()[2]: row.split()[1:4] for row in table[1:]}
    assert rows == {tuning: ["tuning", tuning, "Completed"], training: ["training", training, "Completed"]}
    assert [row for row in table if training in row][0].endswith("test:accuracy=0.8125")

    assert cli.main(["status", "--json", *on_aws(gateway)]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["status"]["run"]["training_job"] == training
    assert [r["TrainingJobName"] for r in document["jobs"]["training"]] == [training]
    assert document["target"]["api_url"] == gateway.url


def test_status_on_aws_without_sagemaker_permissions_shows_the_rest_and_says_why(deployment, session_hooks, capsys):
    aws, gateway = deployment
    with Client(chalice_app.app) as lambda_client:
        marker, _ = train(aws, lambda_client, test_acc=0.8125)

    def refuse(**kwargs):
        raise refusal("DescribeHyperParameterTuningJob", "AccessDeniedException")

    session_hooks["provide-client-params.sagemaker.DescribeHyperParameterTuningJob"] = refuse
    assert cli.main(["status", *on_aws(gateway)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "run       tuning Completed, training Completed, test accuracy 0.8125"
    assert ("jobs      not shown: SageMaker refused DescribeHyperParameterTuningJob (AccessDeniedException); the "
            "table needs sagemaker:Describe* on the pipeline's jobs") in lines
    training = names.training_job_name(DATASET, marker)
    assert [line.split()[2] for line in lines[lines.index("") + 2:]] == [training]   # what SageMaker did describe


def test_a_run_followed_through_get_status_is_over_once_its_model_serves(deployment):
    aws, gateway = deployment
    stack = cloud.Cloud(cloud.resolve_target(api=gateway.url, region=REGION, bucket=BUCKET), profile="tester")
    with Client(chalice_app.app) as lambda_client:
        marker, _ = train(aws, lambda_client, test_acc=0.8125)
        run_key = f"{DATASET}/{marker}"
        assert client.run_outcome(client.state_of_view(stack.status_view()), run_key) is None   # endpoint Creating
        deliver(lambda_client, aws.finish_endpoint(ENDPOINT, "InService"))
    said = []
    assert client.follow_run(stack, run_key, timeout=30, say=said.append) == 0
    model = names.model_name(DATASET, marker)
    assert said == [f"deployed: endpoint {ENDPOINT} serves {model}"]
    assert client.run_outcome(client.state_of_view(stack.status_view()), f"{DATASET}/another-marker") is None


# --- what API Gateway refuses --------------------------------------------------------------------

def test_an_unsigned_or_wrongly_signed_request_is_refused_and_the_command_says_why(deployment, tmp_path, capsys):
    aws, gateway = deployment
    serve(aws)
    assert http("GET", gateway.url + "status") == (403, {"message": "Missing Authentication Token"})

    image = tmp_path / "rex.jpg"
    image.write_bytes(jpeg_bytes())
    expected = {
        "stranger": "API Gateway refused the request (HTTP 403 UnrecognizedClientException: The security token "
                    "included in the request is invalid.): AWS does not know these credentials",
        "forger": "API Gateway refused the request (HTTP 403 InvalidSignatureException: The request signature we "
                  "calculated does not match",
    }
    for profile, words in expected.items():
        assert cli.main(["status", *on_aws(gateway, profile)]) == 2
        assert capsys.readouterr().err.startswith(f"dogbreeds status: {words}")
    assert cli.main(["status", *on_aws(gateway, region="eu-west-1")]) == 2
    assert "the request was signed for region eu-west-1, which is not the API's: give the API's region with --region" \
        in capsys.readouterr().err
    wrong_stage = ["--api", gateway.url.replace("/api/", "/prod/"), *on_aws(gateway)[2:]]
    assert cli.main(["status", *wrong_stage]) == 2
    assert (f"(HTTP 403 MissingAuthenticationTokenException: Missing Authentication Token): the request carried no "
            f"signature, or the API has no such stage or route (API Gateway answers both alike): check the URL "
            f"{gateway.url.replace('/api/', '/prod/')}") in capsys.readouterr().err
    # a refused caller is refused for every image: predict stops at the first
    assert cli.main(["predict", str(image), str(image), *on_aws(gateway, "stranger")]) == 2
    err = capsys.readouterr().err
    assert err.count("UnrecognizedClientException") == 1 and err.startswith("dogbreeds predict: API Gateway refused")
    assert [refusal for _, _, refusal in gateway.seen] == [
        "MissingAuthenticationTokenException", "UnrecognizedClientException", "InvalidSignatureException",
        "InvalidSignatureException", "MissingAuthenticationTokenException", "UnrecognizedClientException"]
    assert aws.invocations == []


def test_without_credentials_nothing_is_sent_and_the_command_says_how_to_get_some(tmp_path, monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "empty").write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "empty"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    image = tmp_path / "rex.jpg"
    image.write_bytes(jpeg_bytes())
    assert cli.main(["predict", str(image), "--api", API]) == 1
    assert capsys.readouterr().err == f"{image}: {cloud.NO_CREDENTIALS}\n"
    assert cli.main(["status", "--api", API, "--aws-profile", "nobody"]) == 2
    assert "AWS profile 'nobody' is not in your AWS config" in capsys.readouterr().err


# --- where the deployment is ---------------------------------------------------------------------

def test_the_target_is_the_stages_record_with_what_the_options_replace(tmp_path):
    record = targets.Target(stage="prod", region="eu-west-1", bucket="prod-bucket", api_url=API,
                            endpoint_name="dogbreeds", account="123456789012")
    targets.save(record, chalice_dir=tmp_path)
    assert cloud.resolve_target("prod", chalice_dir=tmp_path) == record
    other = "https://zzz999.execute-api.us-west-2.amazonaws.com/api"
    assert cloud.resolve_target("prod", api=other, bucket="s3://bucket-two/", chalice_dir=tmp_path) == targets.Target(
        stage="prod", region="us-west-2", bucket="bucket-two", api_url=other + "/", endpoint_name="dogbreeds",
        account="123456789012")
    assert cloud.resolve_target(api=API).region == "eu-west-1"            # the URL names its region
    assert cloud.resolve_target(bucket="bucket-three", region="us-east-2") == targets.Target(
        stage="", region="us-east-2", bucket="bucket-three", api_url="", endpoint_name="")
    for kwargs, message in (({"stage": "dev"}, "no deployment of stage 'dev' is recorded"),
                            ({"api": "https://api.example.com/v1/"}, "does not name its region"),
                            ({"api": "http://api.example.com/"}, "give the API's https URL"),
                            ({"bucket": "s3://bucket-two/datasets/"}, "give a bucket name")):
        with pytest.raises(client.UserError, match=message):
            cloud.resolve_target(chalice_dir=tmp_path, **kwargs)


def test_aws_options_are_refused_without_a_deployment_to_apply_to(tmp_path, capsys):
    assert cli.main(["status", "--region", "eu-west-1", "--data-dir", str(tmp_path)]) == 2
    assert "--region and --aws-profile go with --aws, --stage S, --api URL or --bucket B" in capsys.readouterr().err
    args = cli.build_parser().parse_args(["predict", "--aws", "x.jpg"])       # --aws takes no value
    assert (args.aws, args.stage, args.images) == (True, None, ["x.jpg"])


# --- publish to the bucket -------------------------------------------------------------------------

@pytest.fixture
def session_hooks(monkeypatch):
    """Handlers to register, by botocore event name, on every boto3 session the command makes."""
    hooks = {}
    session = cloud.aws_session

    def hooked_session(profile=None, region=None):
        made = session(profile, region)
        for event, handler in hooks.items():
            made.events.register(event, handler)
        return made

    monkeypatch.setattr(cloud, "aws_session", hooked_session)
    return hooks


def refusal(operation: str, code: str = "AccessDenied") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "Access Denied"}}, operation)


@pytest.fixture
def put_objects(session_hooks):
    """The PutObject calls the command's S3 client makes, in order: (key, thread name). Keys ending in one
    of ``refused`` are refused (AccessDenied), as S3 refuses a write the credentials may not make."""
    calls, refused = [], []

    def record(params, **kwargs):
        if any(params["Key"].endswith(suffix) for suffix in refused):
            raise refusal("PutObject")
        calls.append((params["Key"], threading.current_thread().name))

    session_hooks["provide-client-params.s3.PutObject"] = record
    return calls, refused


def bucket_objects(aws, prefix: str) -> dict:
    pages = aws.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"][len(prefix):]: aws.get(item["Key"]) for page in pages for item in page.get("Contents", [])}


def test_publish_uploads_each_file_once_in_parallel_then_the_marker_last(profiles, dataset_copy, put_objects, capsys):
    calls, _ = put_objects
    files = {p.relative_to(dataset_copy).as_posix(): p.read_bytes() for p in dataset_copy.rglob("*") if p.is_file()}
    argv = ["publish", str(dataset_copy), "--name", "dogs", "--bucket", f"s3://{BUCKET}", "--region", REGION,
            "--aws-profile", "tester"]
    with FakeAws() as aws:
        assert cli.main(argv) == 0
        out = capsys.readouterr().out
        keys = [key for key, _ in calls]
        assert keys[-1] == "datasets/dogs/_READY"
        assert sorted(keys[:-1]) == sorted(f"datasets/dogs/{name}" for name in files)      # each once
        assert len({thread for _, thread in calls[:-1]}) > 1                                  # in parallel
        stored = bucket_objects(aws, "datasets/dogs/")
        marker = json.loads(stored.pop("_READY"))
        assert stored == files and marker["files"] == len(files)
        assert f"{len(files)} copied, 0 unchanged, 0 removed (no longer in the folder) under s3://{BUCKET}/datasets/dogs/" \
            in out
        assert out.splitlines()[-1] == ("S3 tells EventBridge, and the control plane takes it from there: tuning, then "
                                        "the instrumented training, the gate and the deployment. Follow with "
                                        "`dogbreeds status --aws --watch` (or --stage S, --api URL).")

        # again, after one image changed and one was removed: only the change goes, the removed one is deleted
        changed, removed = sorted(p for p in dataset_copy.rglob("*.jpg"))[:2]
        changed.write_bytes(changed.read_bytes() + b"\0")
        removed.unlink()
        calls.clear()
        assert cli.main(argv) == 0
        assert f"1 copied, {len(files) - 2} unchanged, 1 removed" in capsys.readouterr().out
        assert [key for key, _ in calls] == [f"datasets/dogs/{changed.relative_to(dataset_copy).as_posix()}",
                                             "datasets/dogs/_READY"]
        assert removed.relative_to(dataset_copy).as_posix() not in bucket_objects(aws, "datasets/dogs/")


def test_a_failed_upload_writes_no_marker_and_names_the_file(profiles, dataset_copy, put_objects, capsys):
    calls, refused = put_objects
    victim = sorted(p for p in dataset_copy.rglob("*.jpg"))[3].relative_to(dataset_copy).as_posix()
    refused.append(victim)
    files = [p for p in dataset_copy.rglob("*") if p.is_file()]
    with FakeAws() as aws:
        assert cli.main(["publish", str(dataset_copy), "--name", "dogs", "--bucket", BUCKET, "--region", REGION,
                         "--aws-profile", "tester"]) == 2
        err = capsys.readouterr().err
        assert f"1 of {len(files)} files could not be uploaded to s3://{BUCKET}, so nothing was started" in err
        assert f"{dataset_copy / victim} -> datasets/dogs/{victim}: " in err and "AccessDenied" in err
        stored = bucket_objects(aws, "datasets/dogs/")
        assert "_READY" not in stored and victim not in stored and len(stored) == len(files) - 1
        assert "datasets/dogs/_READY" not in [key for key, _ in calls]


def test_publish_refuses_a_folder_that_is_not_a_dataset_before_uploading(profiles, dataset_copy, put_objects, capsys):
    calls, _ = put_objects
    for extra in sorted((dataset_copy / "train").iterdir())[1:]:
        for image in extra.iterdir():
            image.unlink()
        extra.rmdir()
    with FakeAws() as aws:
        assert cli.main(["publish", str(dataset_copy), "--bucket", BUCKET, "--aws-profile", "tester"]) == 2
        assert "classification needs at least 2" in capsys.readouterr().err
        assert calls == [] and bucket_objects(aws, "datasets/") == {}


# --- batch and report ----------------------------------------------------------------------------

def test_batch_on_aws_uploads_the_folder_requests_it_and_says_where_the_predictions_are(
        deployment, tmp_path, monkeypatch, capsys):
    aws, gateway = deployment
    serve(aws)
    folder = tmp_path / "to-sort"
    folder.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (folder / name).write_bytes(jpeg_bytes())
    (folder / "notes.txt").write_text("not an image")
    monkeypatch.setattr(cloud.Cloud, "poll_interval", 0.05)
    outputs = {f"{name}": endpoint_reply() for name in ("a.jpg", "b.jpg")}

    def transform_ends():    # SageMaker, minutes later: the outputs, then the job's end event
        job = wait_for(lambda: aws.created("CreateTransformJob"), 30, "the transform job")[0]["TransformJobName"]
        aws.write_transform_outputs("b9", outputs)
        aws.finish_job("transform", job)
        with Client(chalice_app.app) as lambda_client:
            deliver(without_environment_swaps(lambda_client), state_change("transform", job, "Completed"))

    ending = threading.Thread(target=transform_ends)
    ending.start()
    try:
        assert cli.main(["batch", str(folder), "--id", "b9", *on_aws(gateway)]) == 0
    finally:
        ending.join(30)
    out = capsys.readouterr().out
    assert out.splitlines()[-1] == f"predictions: s3://{BUCKET}/batch/b9/output/predictions.csv"
    assert "classified 2/2" in out
    assert set(bucket_objects(aws, "batch/b9/input/")) == {"a.jpg", "b.jpg"}
    assert aws.created("CreateTransformJob")[0]["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] == \
        f"s3://{BUCKET}/batch/b9/input/"
    rows = aws.get("batch/b9/output/predictions.csv").decode().splitlines()
    assert len(rows) == 3 and rows[1].startswith("batch/b9/input/a.jpg,Akita,")
    assert gateway.seen[0] == ("POST", "/api/batch", None)
    assert {seen for seen in gateway.seen[1:]} == {("GET", "/api/batch/b9", None)}


def output_tar(files: dict) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), time.time()
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_report_on_aws_unpacks_the_completed_runs_report_from_the_bucket(deployment, tmp_path, capsys):
    aws, gateway = deployment
    state = a_state()
    job = state.runs[f"{DATASET}/m2"].training_job
    html = b"<html><title>Training report</title></html>"
    aws.put(STATE_KEY, state.to_json().encode())
    aws.put(f"jobs/{job}/{job}/output/output.tar.gz", output_tar({
        "report.html": html, "diagnostics.json": json.dumps({"issues_found": ["Overfit"]}).encode(),
        "metrics.jsonl": b"{}\n"}))
    home = local_home(tmp_path)
    assert cli.main(["report", "--data-dir", str(home), *on_aws(gateway)]) == 0
    report = tmp_path / "aws-api" / "reports" / job / "report.html"
    assert capsys.readouterr().out == f"report: {report}\nrules with issues: Overfit\n"
    assert report.read_bytes() == html
    assert sorted(p.name for p in report.parent.iterdir()) == ["diagnostics.json", "report.html"]

    assert cli.main(["report", "train-never-ran", "--data-dir", str(home), *on_aws(gateway)]) == 2
    assert (f"there is no s3://{BUCKET}/jobs/train-never-ran/train-never-ran/output/output.tar.gz: training job "
            f"'train-never-ran' has not completed") in capsys.readouterr().err


# --- rollback: the same command, locally and signed ----------------------------------------------------

def test_rollback_serves_the_earlier_model_locally_and_signed_and_records_who(deployment, tmp_path, capsys):
    aws, gateway = deployment
    with Client(chalice_app.app) as events, Gateway(chalice_app.app, REGION) as unauthorised:
        first, _ = train(aws, events, 0.85)
        deliver(events, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
        second, _ = train(aws, events, 0.90, note=b"published again", upload=False)
        deliver(events, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 1))
        home = local_home(tmp_path, unauthorised.url.rstrip("/"))
        model_1, model_2 = names.model_name(DATASET, first), names.model_name(DATASET, second)

        assert cli.main(["rollback", model_1, "--reason", "the 0.90 model mislabels Akitas", *on_aws(gateway)]) == 0
        printed = capsys.readouterr()
        who = f"arn:aws:iam::123456789012:user/{KEY}"
        assert printed.out == (f"chosen    {model_1} (dataset {DATASET}, test accuracy 0.8500) by {who}: the 0.90 "
                               f"model mislabels Akitas\n"
                               f"endpoint  {ENDPOINT} is Updating: it serves the model once it is InService "
                               f"(`dogbreeds status --watch` follows it)\n")
        assert aws.created("UpdateEndpoint")[-1] == {"EndpointName": ENDPOINT,
                                                     "EndpointConfigName": names.endpoint_config_name(DATASET, first)}
        assert gateway.seen[-1] == ("POST", f"/api/models/{model_1}/serve", None)

        # while it updates, the local command is refused with the API's words, and nothing is sent
        updates = len(aws.created("UpdateEndpoint"))
        assert cli.main(["rollback", model_2, "--data-dir", str(home)]) == 2
        assert capsys.readouterr().err == (f"dogbreeds rollback: HTTP 409 Conflict: endpoint {ENDPOINT} is Updating: "
                                           f"SageMaker accepts no other model until it is InService; try again in a "
                                           f"few minutes\n")
        deliver(events, aws.finish_endpoint(ENDPOINT, "InService", modified=T0 + 2))
        assert cli.main(["rollback", model_2, "--data-dir", str(home)]) == 0
        assert capsys.readouterr().out.startswith(f"chosen    {model_2} (dataset {DATASET}, test accuracy 0.9000) by "
                                                  f"local user: no reason given\n")
        assert len(aws.created("UpdateEndpoint")) == updates + 1
        history = events.http.get("/status").json_body["history"]
        assert [(c["model_name"], c["chosen_by"]) for c in history] == [
            (model_1, "quality gate"), (model_2, "quality gate"), (model_1, who), (model_2, "local user")]


def test_the_console_on_aws_serves_the_page_here_and_forwards_its_calls_signed(deployment, capsys):
    from dogbreeds.console_aws import make_server
    aws, gateway = deployment
    with Client(chalice_app.app) as events:
        first, _ = train(aws, events, 0.85)
        deliver(events, aws.finish_endpoint(ENDPOINT, "InService", modified=T0))
    stack = cli.place(cli.build_parser().parse_args(["console", *on_aws(gateway)]))
    server = make_server(stack, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        local = f"http://127.0.0.1:{server.server_address[1]}"
        with urllib.request.urlopen(local + "/") as page:
            assert b'<section id="pipeline">' in page.read()
        assert gateway.seen == []                                   # the page itself is served here
        status, view = http("GET", local + "/console/pipeline")
        assert status == 200 and view["status"]["deployed"]["model_name"] == names.model_name(DATASET, first)
        assert view["training"]["name"] == names.training_job_name(DATASET, first)
        assert view["status"]["history"][0]["chosen_by"] == "quality gate"
        aws.endpoint_replies[:] = [(200, endpoint_reply(("Akita", "Affenpinscher"), (0.75, 0.25)))]
        status, answer = http("POST", local + "/predict", jpeg_bytes(), "image/jpeg")
        assert (status, answer) == (200, endpoint_reply(("Akita", "Affenpinscher"), (0.75, 0.25)))
        status, answer = http("POST", local + "/models/model-cats-0000/serve", b"{}", "application/json")
        assert status == 404 and answer["Message"].startswith("model 'model-cats-0000' was never deployed")
        # every call reached the API signed (no refusal), the page's pipeline view through GET /status
        assert gateway.seen == [("GET", "/api/status", None), ("POST", "/api/predict", None),
                                ("POST", "/api/models/model-cats-0000/serve", None)]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
