"""``dogbreeds aws deploy``, ``deploy --plan`` and ``destroy`` against moto in-process, every request
recorded (tests/deploy_support.py). API Gateway is the one service moto cannot run here: its requests
are answered by a small stand-in and asserted."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from botocore.awsrequest import AWSResponse
from deploy_support import FakeCloud, chalice_project, mutating, operations
from moto.sagemaker.models import sagemaker_backends

from chalicelib import names
from chalicelib import sagemaker_requests as requests
from chalicelib.config import PipelineConfig
from deploy import REPO_ROOT, changes, cli, configure, iam, package_source, target
from deploy.changes import (APP_DIGEST_TAG, DEPLOYMENT_TAG, Bucket, DeployError, Deployed, Endpoint, EndpointConfig,
                            Model, Role)

REGION = "eu-west-1"
BUCKET = "dogbreeds-deploy-test"
ACCOUNT = "123456789012"                      # moto's
ROLE = "dogbreeds-sagemaker-dev"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/{ROLE}"
FUNCTIONS = ["dogbreeds-dev", "dogbreeds-dev-on_bucket_event", "dogbreeds-dev-on_sagemaker_event",
             "dogbreeds-dev-reconcile"]
ROUTES = {"/predict", "/status", "/batch", "/batch/{batch_id}", "/models/{model}/serve"}
# What deploy reads when it decides: the same calls for --plan and for a deploy that changes nothing.
READS_OF_A_DEPLOYED_STAGE = [
    "sts.GetCallerIdentity", "s3.GetBucketLocation", "s3.GetBucketTagging", "s3.GetBucketNotificationConfiguration",
    "iam.GetRole", "iam.ListRolePolicies", "iam.GetRolePolicy", "s3.HeadObject", "s3.GetObject",
    "lambda.ListTags", "lambda.ListTags", "lambda.ListTags", "lambda.ListTags", "apigateway.GetRestApi"]


@pytest.fixture
def cloud():
    with FakeCloud(REGION) as fake:
        yield fake


@pytest.fixture
def project(tmp_path) -> Path:
    return chalice_project(tmp_path)


def aws(cloud, project, *argv, expect=0):
    """Run ``dogbreeds aws <argv>`` on the fake cloud; return (its output lines, the requests it sent)."""
    lines = []
    code = cli.main([*argv, "--chalice-dir", str(project)], session=cloud.session, out=lines.append,
                    chalice_out=io.StringIO())
    assert code == expect, "\n".join(lines)
    return lines, cloud.recorder.take()


def deploy(cloud, project, *argv, expect=0):
    return aws(cloud, project, "deploy", "--bucket", BUCKET, *argv, expect=expect)


def requests_of(calls, operation):
    return [params for _, name, params in calls if name == operation]


def tags_of(cloud, function):
    arn = cloud.client("lambda").get_function(FunctionName=function)["Configuration"]["FunctionArn"]
    return cloud.client("lambda").list_tags(Resource=arn)["Tags"]


# --- deploy ----------------------------------------------------------------------------------------------

def test_deploy_creates_what_the_readme_recipe_made_and_records_the_api_url(cloud, project):
    lines, calls = deploy(cloud, project, "--create-bucket")

    # it looks (three reads: nothing is there), then our own steps, each once, in this order, then Chalice's
    assert operations(calls)[:3] == ["sts.GetCallerIdentity", "s3.GetBucketLocation", "iam.GetRole"]
    assert mutating(calls)[:7] == [("iam", "CreateRole"), ("iam", "PutRolePolicy"), ("s3", "CreateBucket"),
                                   ("s3", "PutBucketNotificationConfiguration"), ("s3", "PutBucketTagging"),
                                   ("s3", "PutObject"), ("s3", "PutObject")]
    create_role = requests_of(calls, "CreateRole")[0]
    assert create_role["RoleName"] == ROLE and create_role["Tags"] == [{"Key": DEPLOYMENT_TAG, "Value": "dev"}]
    assert requests_of(calls, "CreateBucket") == [
        {"Bucket": BUCKET, "CreateBucketConfiguration": {"LocationConstraint": REGION}}]
    assert requests_of(calls, "PutBucketNotificationConfiguration") == [
        {"Bucket": BUCKET, "NotificationConfiguration": {"EventBridgeConfiguration": {}},
         "SkipDestinationValidation": True}]
    assert requests_of(calls, "PutBucketTagging") == [
        {"Bucket": BUCKET, "Tagging": {"TagSet": [{"Key": "dogbreeds:deployment:dev", "Value": "bucket eventbridge"}]}}]

    # the SageMaker execution role, as deploy.iam writes it
    client = cloud.client("iam")
    role = client.get_role(RoleName=ROLE)["Role"]
    assert role["Arn"] == ROLE_ARN and role["AssumeRolePolicyDocument"] == iam.trust_policy()
    assert client.list_role_policies(RoleName=ROLE)["PolicyNames"] == ["dogbreeds-dev"]
    assert client.get_role_policy(RoleName=ROLE, PolicyName="dogbreeds-dev")["PolicyDocument"] == \
        iam.execution_role_policy(BUCKET, region=REGION, account=ACCOUNT)

    # the bucket, S3 -> EventBridge on, the training code and its pointer
    s3 = cloud.client("s3")
    assert s3.get_bucket_location(Bucket=BUCKET)["LocationConstraint"] == REGION
    notification = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert notification.get("EventBridgeConfiguration") == {}
    package = package_source.build()
    assert s3.get_object(Bucket=BUCKET, Key=package.key())["Body"].read() == package.data
    pointer = json.loads(s3.get_object(Bucket=BUCKET, Key="code/current.json")["Body"].read())
    assert pointer["uri"] == f"s3://{BUCKET}/{package.key()}" and pointer["digest"] == package.digest

    # the Chalice app: three functions with the stage's environment and tags, two rules, one API
    functions = sorted(f["FunctionName"] for f in cloud.client("lambda").list_functions()["Functions"])
    assert functions == sorted(FUNCTIONS)
    env = cloud.client("lambda").get_function_configuration(FunctionName="dogbreeds-dev")["Environment"]["Variables"]
    assert env == configure.environment(BUCKET, ROLE_ARN, REGION)
    pipeline = PipelineConfig.from_env(env)
    assert (pipeline.bucket, pipeline.role_arn, pipeline.region) == (BUCKET, ROLE_ARN, REGION)
    digests = {tags_of(cloud, f)[APP_DIGEST_TAG] for f in FUNCTIONS}
    assert len(digests) == 1 and all(tags_of(cloud, f)[DEPLOYMENT_TAG] == "dev" for f in FUNCTIONS)
    rules = cloud.client("events").list_rules()["Rules"]
    assert sorted(r["Name"] for r in rules) == ["dogbreeds-dev-on_bucket_event-event",
                                                "dogbreeds-dev-on_sagemaker_event-event",
                                                "dogbreeds-dev-reconcile-event"]
    assert next(r for r in rules if "reconcile" in r["Name"])["ScheduleExpression"] == "rate(5 minutes)"
    assert json.loads(next(r for r in rules if "bucket" in r["Name"])["EventPattern"])["source"] == ["aws.s3"]

    # API Gateway (the stand-in): the imported API routes every path to the function, IAM-authorised
    (api_id,) = cloud.api_gateway.apis
    api = cloud.api_gateway.apis[api_id]
    assert set(api["document"]["paths"]) == ROUTES
    for path in ROUTES:
        for method in api["document"]["paths"][path].values():
            assert method["security"] == [{"sigv4": []}]
            assert method["x-amazon-apigateway-integration"]["uri"].endswith(
                ":function:dogbreeds-dev/invocations")
    assert api["deployments"] == [{"stageName": "api", "tracingEnabled": True}]
    assert [p["Principal"] for p in requests_of(calls, "AddPermission")].count("apigateway.amazonaws.com") == 1

    url = f"https://{api_id}.execute-api.{REGION}.amazonaws.com/api/"
    assert f"API: {url}" in lines
    assert target.load("dev", project) == target.Target("dev", REGION, BUCKET, url, "dogbreeds", ACCOUNT)


def test_a_second_deploy_with_nothing_changed_makes_no_mutating_call_and_says_so(cloud, project):
    deploy(cloud, project, "--create-bucket")
    lines, calls = deploy(cloud, project)
    assert mutating(calls) == []
    assert operations(calls) == READS_OF_A_DEPLOYED_STAGE
    assert lines[0] == f"nothing to change: stage dev in {REGION}, account {ACCOUNT}, bucket {BUCKET} is as wanted"
    assert lines[-2].startswith("API: https://api0000001.execute-api")

    # options left out keep the stage's values: no --bucket either
    lines, calls = aws(cloud, project, "deploy")
    assert mutating(calls) == [] and lines[0].startswith("nothing to change")


def test_after_a_code_change_deploy_uploads_the_new_package_and_updates_the_functions(cloud, project, tmp_path):
    source = tmp_path / "source"
    for folder in package_source.SOURCE_DIRS:
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    deploy(cloud, project, "--create-bucket", "--source-root", str(source))
    before = tags_of(cloud, "dogbreeds-dev")[APP_DIGEST_TAG]

    # training code: a new package and the pointer, nothing else
    with open(source / "training" / "train.py", "a") as handle:
        handle.write("\n# a change\n")
    lines, calls = deploy(cloud, project, "--source-root", str(source))
    new = package_source.build(source)
    assert [(op, params["Key"]) for op, params in ((o, p) for _, o, p in calls) if op == "PutObject"] == [
        ("PutObject", new.key()), ("PutObject", "code/current.json")]
    assert mutating(calls) == [("s3", "PutObject"), ("s3", "PutObject")]
    pointer = json.loads(cloud.client("s3").get_object(Bucket=BUCKET, Key="code/current.json")["Body"].read())
    assert pointer["digest"] == new.digest

    # the control plane's code: Chalice updates each function's code, nothing else of ours moves
    with open(project / "chalicelib" / "pipeline.py", "a") as handle:
        handle.write("\n# a change\n")
    lines, calls = deploy(cloud, project, "--source-root", str(source))
    assert any(line.startswith("  deploy  Chalice app dogbreeds, stage dev: code or configuration changed")
               for line in lines)
    assert sorted(p["FunctionName"] for p in requests_of(calls, "UpdateFunctionCode")) == sorted(FUNCTIONS)
    assert not [op for op in mutating(calls) if op[0] == "s3" or op == ("iam", "CreateRole")]
    after = {tags_of(cloud, f)[APP_DIGEST_TAG] for f in FUNCTIONS}
    assert after != {before} and len(after) == 1
    assert mutating(deploy(cloud, project, "--source-root", str(source))[1]) == []      # settled again


def test_a_changed_setting_redeploys_the_app_with_the_new_environment(cloud, project):
    deploy(cloud, project, "--create-bucket")
    lines, calls = deploy(cloud, project, "--set", "DOGBREEDS_SERVERLESS=true")
    assert [p["FunctionName"] for p in requests_of(calls, "UpdateFunctionConfiguration")] != []
    env = cloud.client("lambda").get_function_configuration(FunctionName="dogbreeds-dev")["Environment"]["Variables"]
    assert env["DOGBREEDS_SERVERLESS"] == "true"
    assert mutating(deploy(cloud, project)[1]) == []                  # the setting is kept when --set is left out


def test_the_buckets_other_notifications_survive_deploy_and_destroy(cloud, project):
    s3, sqs = cloud.client("s3"), cloud.client("sqs")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [{"Key": "team", "Value": "vision"}]})
    queue = sqs.get_queue_attributes(QueueUrl=sqs.create_queue(QueueName="uploads")["QueueUrl"],
                                     AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    theirs = {
        "QueueConfigurations": [{"Id": "uploads", "QueueArn": queue, "Events": ["s3:ObjectCreated:*"]}],
        "LambdaFunctionConfigurations": [{
            "Id": "thumbnails", "LambdaFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:thumbnails",
            "Events": ["s3:ObjectCreated:Put"],
            "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".jpg"}]}}}]}
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration=theirs)
    cloud.recorder.take()

    lines, calls = deploy(cloud, project)
    (sent,) = requests_of(calls, "PutBucketNotificationConfiguration")
    assert sent["NotificationConfiguration"] == {**theirs, "EventBridgeConfiguration": {}}
    assert "  update  s3://dogbreeds-deploy-test notifications: turn S3 -> EventBridge on; keep " \
           "LambdaFunctionConfigurations (1), QueueConfigurations (1)" in lines
    now = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    now.pop("ResponseMetadata")
    assert now == {**theirs, "EventBridgeConfiguration": {}}
    assert requests_of(calls, "PutBucketTagging")[0]["Tagging"]["TagSet"] == [
        {"Key": "dogbreeds:deployment:dev", "Value": "eventbridge"}, {"Key": "team", "Value": "vision"}]

    lines, calls = aws(cloud, project, "destroy", "--yes")
    (sent,) = requests_of(calls, "PutBucketNotificationConfiguration")
    assert sent["NotificationConfiguration"] == theirs
    now = s3.get_bucket_notification_configuration(Bucket=BUCKET)
    now.pop("ResponseMetadata")
    assert now == theirs
    assert s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"] == [{"Key": "team", "Value": "vision"}]


def test_an_eventbridge_notification_deploy_did_not_add_stays_after_destroy(cloud, project):
    s3 = cloud.client("s3")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={"EventBridgeConfiguration": {}})
    cloud.recorder.take()
    _, calls = deploy(cloud, project)
    assert requests_of(calls, "PutBucketNotificationConfiguration") == []
    assert requests_of(calls, "PutBucketTagging") == []                     # it added nothing to record
    _, calls = aws(cloud, project, "destroy", "--yes")
    assert [op for op in mutating(calls) if op[0] == "s3"] == []
    assert s3.get_bucket_notification_configuration(Bucket=BUCKET).get("EventBridgeConfiguration") == {}


def test_a_deploy_cut_short_says_so_and_the_next_one_does_only_what_is_left(cloud, project, capsys):
    def access_denied(**kwargs):      # as a bucket policy denying writes under code/ would answer
        return AWSResponse("https://s3/", 403, {}, None), {
            "Error": {"Code": "AccessDenied", "Message": "Access Denied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}

    cloud.session._session.register("before-call.s3.PutObject", access_denied)
    _, calls = deploy(cloud, project, "--create-bucket", expect=1)
    assert mutating(calls) == [("iam", "CreateRole"), ("iam", "PutRolePolicy"), ("s3", "CreateBucket"),
                               ("s3", "PutBucketNotificationConfiguration"), ("s3", "PutBucketTagging"),
                               ("s3", "PutObject")]
    err = capsys.readouterr().err
    assert "stopped: An error occurred (AccessDenied) when calling the PutObject operation" in err
    assert "run the same command again to finish" in err
    assert not target.target_path("dev", project).exists()

    cloud.session._session.unregister("before-call.s3.PutObject", access_denied)
    lines, calls = deploy(cloud, project, "--create-bucket")
    assert [op for op in mutating(calls) if op[0] == "s3"] == [("s3", "PutObject"), ("s3", "PutObject")]
    assert ROLE not in [params["RoleName"] for params in requests_of(calls, "CreateRole")]     # Chalice's roles only
    assert [line.split(": ")[0] for line in lines if line.startswith("  ")] == [
        f"  upload  s3://{BUCKET}/{package_source.build().key()}", f"  update  s3://{BUCKET}/code/current.json",
        "  deploy  Chalice app dogbreeds, stage dev"]


# --- refusals: nothing is changed --------------------------------------------------------------------

def test_deploy_refuses_a_missing_bucket_without_create_bucket_and_a_role_it_did_not_make(cloud, project, capsys):
    _, calls = deploy(cloud, project, expect=2)
    assert mutating(calls) == []
    assert f"bucket {BUCKET} does not exist" in capsys.readouterr().err
    cloud.client("iam").create_role(RoleName=ROLE, AssumeRolePolicyDocument=json.dumps(iam.trust_policy()))
    cloud.recorder.take()
    _, calls = deploy(cloud, project, "--create-bucket", expect=2)
    assert mutating(calls) == []
    assert f"aws iam tag-role --role-name {ROLE} --tags Key={DEPLOYMENT_TAG},Value=dev" in capsys.readouterr().err
    assert not (project / ".chalice").exists()


def test_deploy_refuses_a_bucket_in_another_region_and_a_bad_setting(cloud, project, capsys):
    cloud.session.client("s3", region_name="us-west-2").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    cloud.recorder.take()
    _, calls = deploy(cloud, project, expect=2)
    assert mutating(calls) == [] and "is in us-west-2, not eu-west-1" in capsys.readouterr().err
    _, calls = deploy(cloud, project, "--set", "DOGBREEDS_MAX_JOBS=many", expect=2)
    assert mutating(calls) == [] and "DOGBREEDS_MAX_JOBS='many'" in capsys.readouterr().err


# --- --plan --------------------------------------------------------------------------------------------------

def test_plan_makes_no_mutating_call_writes_nothing_and_ends_with_the_cost_lines(cloud, project):
    lines, calls = deploy(cloud, project, "--create-bucket", "--plan")
    assert mutating(calls) == []
    package = package_source.build()
    blank = lines.index("")
    assert lines[:blank] == [
        f"dogbreeds aws deploy --plan: stage dev in {REGION}, account {ACCOUNT}, bucket {BUCKET}",
        f"  create  IAM role {ROLE}: absent; SageMaker's jobs and models run as it",
        f"  create  IAM role {ROLE} policy dogbreeds-dev: absent",
        f"  create  S3 bucket {BUCKET}: absent; --create-bucket, in {REGION}",
        f"  update  s3://{BUCKET} notifications: turn S3 -> EventBridge on; it has no other notification",
        f"  tag     s3://{BUCKET}: dogbreeds:deployment:dev='bucket eventbridge': what deploy added, for destroy",
        f"  upload  s3://{BUCKET}/{package.key()}: training code {package.digest[:16]} "
        f"({len(package.files)} files, {package.size:,} bytes)",
        f"  update  s3://{BUCKET}/code/current.json: points at nothing: point at {package.key()}",
        "  deploy  Chalice app dogbreeds, stage dev: not deployed (no .chalice/deployed/dev.json)"]
    # the cost lines close the plan: moto has no Price List API, so the shipped table's prices, saying why
    costs = lines[blank + 1:]
    assert costs[0].startswith(f"What the running parts cost in {REGION} at on-demand list prices")
    assert costs[1].startswith("  prices: table shipped with the code, prices of ")
    assert costs[2].startswith("  the Price List API was not used: ")
    assert any(line.startswith("  endpoint, 1 x ml.m5.large running 24/7: ") for line in costs)
    assert [op for op in operations(calls) if not op.startswith("pricing.")] == [
        "sts.GetCallerIdentity", "s3.GetBucketLocation", "iam.GetRole"]
    assert not (project / ".chalice").exists() and not (project / "vendor").exists()

    deploy(cloud, project, "--create-bucket")
    lines, calls = deploy(cloud, project, "--plan", "--set", "DOGBREEDS_INFERENCE_INSTANCE=ml.c5.large")
    assert mutating(calls) == []
    assert [op for op in operations(calls) if not op.startswith("pricing.")] == READS_OF_A_DEPLOYED_STAGE
    blank = lines.index("")
    assert [line.split(":")[0] for line in lines[1:blank] if not line.startswith("  ok")] == [
        "  deploy  Chalice app dogbreeds, stage dev"]
    assert any(line.startswith("  endpoint, 1 x ml.c5.large running 24/7: ") for line in lines[blank + 1:])


# --- destroy ---------------------------------------------------------------------------------------------

RUNNING = names.training_job_name("dogs", "etag2")


def run_the_pipeline(cloud):
    """What the control plane makes once a model passes the gate: a model, an endpoint config and the
    endpoint, with its own request builders; a model of someone else's in the same account; and the
    next run's training job, still running (moto completes jobs at once; SageMaker's run for minutes)."""
    sagemaker = cloud.client("sagemaker")
    sagemaker.create_training_job(
        TrainingJobName=RUNNING, RoleArn=ROLE_ARN,
        AlgorithmSpecification={"TrainingImage": "pytorch-training", "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/jobs/"}, StoppingCondition={"MaxRuntimeInSeconds": 3600},
        ResourceConfig={"InstanceType": "ml.g4dn.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30})
    sagemaker_backends[ACCOUNT][REGION].training_jobs[RUNNING].training_job_status = "InProgress"
    config = PipelineConfig(bucket=BUCKET, role_arn=ROLE_ARN, region=REGION)
    sagemaker.create_model(**requests.create_model(config, "dogs", "etag1", f"s3://{BUCKET}/jobs/t/model.tar.gz"))
    sagemaker.create_endpoint_config(**requests.create_endpoint_config(config, "dogs", "etag1"))
    sagemaker.create_endpoint(**requests.create_endpoint(config, "dogs", "etag1"))
    other = PipelineConfig(bucket=BUCKET, role_arn=f"arn:aws:iam::{ACCOUNT}:role/someone-else", region=REGION)
    sagemaker.create_model(**requests.create_model(other, "cats", "etag9", f"s3://{BUCKET}/jobs/c/model.tar.gz"))
    cloud.recorder.take()


def test_destroy_lists_first_and_with_yes_removes_everything_deploy_and_the_pipeline_made(cloud, project):
    deploy(cloud, project, "--create-bucket")
    run_the_pipeline(cloud)
    model, config = names.model_name("dogs", "etag1"), names.endpoint_config_name("dogs", "etag1")

    lines, calls = aws(cloud, project, "destroy", expect=1)
    assert mutating(calls) == []
    assert lines[1:5] == [
        "  delete  SageMaker endpoint dogbreeds: InService; billed by the hour",
        f"  delete  SageMaker endpoint config {config}: made by the pipeline",
        f"  delete  SageMaker model {model}: made by the pipeline, runs as {ROLE}",
        "  delete  Chalice app dogbreeds, stage dev: iam_role dogbreeds-dev-on_bucket_event; lambda_function "
        "dogbreeds-dev-on_bucket_event; cloudwatch_event dogbreeds-dev-on_bucket_event-event; iam_role "
        "dogbreeds-dev-on_sagemaker_event; lambda_function dogbreeds-dev-on_sagemaker_event; cloudwatch_event "
        "dogbreeds-dev-on_sagemaker_event-event; iam_role dogbreeds-dev-reconcile; lambda_function dogbreeds-dev-reconcile; "
        "cloudwatch_event dogbreeds-dev-reconcile-event; iam_role dogbreeds-dev-api_handler; lambda_function dogbreeds-dev; "
        "rest_api api0000001"]
    assert lines[-3:] == [
        "  kept    S3 bucket dogbreeds-deploy-test and its data (--delete-bucket removes them)",
        f"  kept    SageMaker training job {RUNNING}: InProgress, billed until it ends (it cannot be deleted); "
        f"to stop it: aws sagemaker stop-training-job --training-job-name {RUNNING}",
        "nothing deleted: run again with --yes to delete the above"]

    lines, calls = aws(cloud, project, "destroy", "--yes")
    deletes = mutating(calls)
    assert deletes[:3] == [("sagemaker", "DeleteEndpoint"), ("sagemaker", "DeleteEndpointConfig"),
                           ("sagemaker", "DeleteModel")]                       # the endpoint first
    assert deletes[-4:] == [("iam", "DeleteRolePolicy"), ("iam", "DeleteRole"),
                            ("s3", "PutBucketNotificationConfiguration"), ("s3", "DeleteBucketTagging")]
    assert requests_of(calls, "DeleteModel") == [{"ModelName": model}]

    # nothing it made is left; someone else's model and the bucket's data are
    sagemaker = cloud.client("sagemaker")
    assert sagemaker.list_endpoints()["Endpoints"] == [] and sagemaker.list_endpoint_configs()["EndpointConfigs"] == []
    assert [m["ModelName"] for m in sagemaker.list_models()["Models"]] == [names.model_name("cats", "etag9")]
    assert cloud.client("lambda").list_functions()["Functions"] == []
    assert cloud.client("events").list_rules()["Rules"] == []
    assert cloud.client("iam").list_roles()["Roles"] == []
    assert cloud.api_gateway.apis == {}
    s3 = cloud.client("s3")
    assert "EventBridgeConfiguration" not in s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]] == [
        "code/current.json", package_source.build().key()]
    assert not target.target_path("dev", project).exists()

    lines, calls = aws(cloud, project, "destroy", "--yes")               # again: nothing left to remove
    assert mutating(calls) == [] and lines[0].startswith("nothing to remove")


def test_destroy_with_delete_bucket_empties_and_deletes_only_a_bucket_deploy_created(cloud, project, capsys):
    cloud.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    deploy(cloud, project)
    _, calls = aws(cloud, project, "destroy", "--yes", "--delete-bucket", expect=2)
    assert mutating(calls) == []
    assert "--delete-bucket: s3://dogbreeds-deploy-test was not created by" in capsys.readouterr().err

    aws(cloud, project, "destroy", "--yes")
    s3 = cloud.client("s3")
    for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    s3.delete_bucket(Bucket=BUCKET)
    cloud.recorder.take()

    deploy(cloud, project, "--create-bucket")
    s3.put_object(Bucket=BUCKET, Key="datasets/dogs/train/001.A/a.jpg", Body=b"x")
    _, calls = aws(cloud, project, "destroy", "--yes", "--delete-bucket")
    (batch,) = requests_of(calls, "DeleteObjects")
    assert sorted(o["Key"] for o in batch["Delete"]["Objects"]) == sorted(
        ["code/current.json", package_source.build().key(), "datasets/dogs/train/001.A/a.jpg"])
    assert mutating(calls)[-2:] == [("s3", "DeleteObjects"), ("s3", "DeleteBucket")]
    assert BUCKET not in [b["Name"] for b in s3.list_buckets()["Buckets"]]


# --- the decisions, without AWS --------------------------------------------------------------------------

def _bucket(tags=None, notification=None, region=REGION):
    return Bucket(BUCKET, region, tags or {}, notification or {})


def test_merging_keeps_every_other_notification_and_drops_empty_lists():
    theirs = {"TopicConfigurations": [],
              "QueueConfigurations": [{"Id": "q", "QueueArn": "arn:aws:sqs:x", "Events": []}]}
    assert changes.with_eventbridge(theirs) == {"QueueConfigurations": theirs["QueueConfigurations"],
                                                "EventBridgeConfiguration": {}}
    assert changes.without_eventbridge(changes.with_eventbridge(theirs)) == {
        "QueueConfigurations": theirs["QueueConfigurations"]}


def _deployed(**overrides):
    fields = dict(stage="dev", bucket_name=BUCKET, role_name=ROLE, role_arn=ROLE_ARN, endpoint=None,
                  endpoint_configs=(), models=(), app=None, role=None, bucket=_bucket())
    fields.update(overrides)
    return Deployed(**fields)


def test_destroy_takes_only_the_pipelines_models_and_configs_of_this_stage():
    ours = Model("model-dogs-1", ROLE_ARN, {"dogbreeds:stage": "model"})
    untagged = Model("model-dogs-2", ROLE_ARN, {})
    other_stage = Model("model-dogs-3", ROLE_ARN.replace("-dev", "-prod"), {"dogbreeds:stage": "model"})
    configs = (EndpointConfig("config-dogs-1", ("model-dogs-1",), {"dogbreeds:stage": "endpoint-config"}),
               EndpointConfig("config-dogs-3", ("model-dogs-3",), {"dogbreeds:stage": "endpoint-config"}))
    endpoint = Endpoint("dogbreeds", "Deleting", {"dogbreeds:stage": "endpoint"})
    plan = changes.destroy_plan(_deployed(models=(ours, untagged, other_stage), endpoint_configs=configs,
                                          endpoint=endpoint))
    assert [(c.operation, c.params) for c in plan.changes] == [
        ("delete_endpoint_config", {"EndpointConfigName": "config-dogs-1"}),
        ("delete_model", {"ModelName": "model-dogs-1"})]                  # a Deleting endpoint is on its way


def test_destroy_keeps_a_role_deploy_did_not_make_and_refuses_to_delete_a_bucket_it_did_not_create():
    role = Role(ROLE, ROLE_ARN, {}, iam.trust_policy(), {"dogbreeds-dev": {}})
    plan = changes.destroy_plan(_deployed(role=role))
    assert plan.changes == () and plan.unchanged[0] == f"IAM role {ROLE}: not made by deploy for stage dev"
    with pytest.raises(DeployError, match="was not created by"):
        changes.destroy_plan(_deployed(bucket=_bucket({"dogbreeds:deployment:dev": "eventbridge"})), delete_bucket=True)


# --- the `dogbreeds aws` hook ------------------------------------------------------------------------------

def test_dogbreeds_aws_hands_its_arguments_to_the_deploy_command(monkeypatch):
    from dogbreeds import cli as dogbreeds_cli
    seen = []
    monkeypatch.setattr(cli, "main", lambda argv: seen.append(argv) or 7)
    assert dogbreeds_cli.main(["aws", "deploy", "--plan", "--bucket", "b"]) == 7
    assert seen == [["deploy", "--plan", "--bucket", "b"]]


def test_destroy_names_the_pipelines_running_jobs_with_the_command_that_stops_them():
    plan = changes.destroy_plan(_deployed(running_jobs=(("training", "train-dogs-abc"), ("tuning", "tune-dogs-abc"))))
    assert plan.unchanged[-2:] == (
        "SageMaker training job train-dogs-abc: InProgress, billed until it ends (it cannot be deleted); "
        "to stop it: aws sagemaker stop-training-job --training-job-name train-dogs-abc",
        "SageMaker tuning job tune-dogs-abc: InProgress, billed until it ends (it cannot be deleted); "
        "to stop it: aws sagemaker stop-hyper-parameter-tuning-job --hyper-parameter-tuning-job-name tune-dogs-abc")
