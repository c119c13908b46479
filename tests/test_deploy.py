"""The deployment tooling: the training source package, the IAM policies, the Chalice configuration and
the Lambda package's size check. S3 is moto's; the policies are checked against the operations the
control plane's source calls and against the requests it really sends in a moto run."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
from aws_support import BUCKET, REGION, ROLE_ARN, FakeAws, jpeg_bytes, state_change

from batch.keys import predictions_key
from chalicelib import names
from chalicelib import sagemaker_requests as requests
from chalicelib.config import BucketLayout, ConfigError, PipelineConfig
from chalicelib.control import SOURCE_POINTER
from deploy import CHALICE_DIR, REPO_ROOT, configure, iam, lambda_package, lambda_runtime, package_source

ACCOUNT = ROLE_ARN.split(":")[4]
STATE_KEY = BucketLayout().state_key
BEST = {"lr": "0.0042", "weight-decay": "0.012", "eps": "3e-08", "batch-size": "64", "arch": '"resnet34"'}


@pytest.fixture
def source_tree(tmp_path) -> Path:
    """A private copy of training/ and model_code/ (with the caches a working tree has)."""
    root = tmp_path / "repo"
    for folder in package_source.SOURCE_DIRS:
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def members(package) -> dict:
    with tarfile.open(fileobj=io.BytesIO(package.data), mode="r:gz") as tar:
        return {m.name: (m, tar.extractfile(m).read()) for m in tar.getmembers()}


# --- the training source package ------------------------------------------------------------------

def test_the_package_is_byte_identical_when_built_twice_and_ignores_mtimes_and_location(source_tree):
    first, second = package_source.build(REPO_ROOT), package_source.build(REPO_ROOT)
    assert first.data == second.data and first.digest == second.digest
    for path in source_tree.rglob("*"):           # a fresh checkout elsewhere, files touched at other times
        path.touch()
    elsewhere = package_source.build(source_tree)
    assert elsewhere.digest == first.digest
    assert first.data[:2] == b"\x1f\x8b" and first.data[3] == 0          # gzip, no file name in the header
    assert first.data[4:8] == b"\x00\x00\x00\x00"                          # gzip header mtime 0


def test_the_package_holds_training_and_model_code_at_its_root_and_no_caches(source_tree):
    cache = source_tree / "training" / "__pycache__"
    cache.mkdir()
    (cache / "train.cpython-311.pyc").write_bytes(b"\x00" * 10)
    (source_tree / "model_code" / "stale.pyc").write_bytes(b"\x00")
    package = package_source.build(source_tree)
    contents = members(package)
    expected = sorted(p.relative_to(REPO_ROOT).as_posix() for folder in package_source.SOURCE_DIRS
                      for p in (REPO_ROOT / folder).rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    assert list(contents) == expected == list(package.files)               # sorted, nothing else
    assert {"training/train.py", "training/__init__.py", "model_code/inference.py",
            "model_code/requirements.txt"} <= set(contents)
    assert not [name for name in contents if "__pycache__" in name or name.endswith(".pyc")]
    for name, (member, data) in contents.items():
        assert (member.mtime, member.uid, member.gid, member.uname, member.gname) == (0, 0, 0, "", "")
        assert member.isfile() and data == (source_tree / name).read_bytes()
    assert requests.ENTRY_POINT in contents                                 # what SageMaker will run


def test_the_digest_follows_the_content(source_tree):
    before = package_source.build(source_tree)
    with open(source_tree / "training" / "train.py", "a") as handle:
        handle.write("\n# a change\n")
    after = package_source.build(source_tree)
    assert after.digest != before.digest and after.key() != before.key()
    assert re.fullmatch(r"code/sourcedir-[0-9a-f]{16}\.tar\.gz", after.key())
    assert after.key() == f"code/sourcedir-{after.digest[:16]}.tar.gz"
    assert len(after.data) == after.size and after.digest == hashlib.sha256(after.data).hexdigest()


@contextlib.contextmanager
def recorded_s3(client):
    """Every S3 request ``client`` sends inside the block, as (operation, params)."""
    calls = []

    def record(params, model, **kwargs):
        calls.append((model.name, dict(params)))

    client.meta.events.register("provide-client-params.s3.*", record)
    try:
        yield calls
    finally:
        client.meta.events.unregister("provide-client-params.s3.*", record)


def test_upload_puts_the_package_and_the_pointer_once_and_the_control_plane_finds_it():
    package = package_source.build()
    with FakeAws() as aws:
        assert aws.plane.source_uri() is None
        with recorded_s3(aws.s3) as calls:
            first = package_source.upload(aws.s3, BUCKET, package, now=lambda: "2026-11-22T10:00:00+00:00")
        puts = [params["Key"] for op, params in calls if op == "PutObject"]
        assert puts == [package.key(), "code/" + SOURCE_POINTER]
        assert first.uploaded and first.pointer_written
        listing = aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]
        assert sorted(o["Key"] for o in listing) == sorted(puts)
        assert aws.get(package.key()) == package.data
        etags = {o["Key"]: o["ETag"] for o in listing}

        # the control plane reads the pointer, and names the package as its own request builder would
        uri = requests.source_package_uri(aws.plane.config, package.digest[:16])
        assert first.uri == uri == aws.plane.source_uri()
        pointer = json.loads(aws.get("code/current.json"))
        assert pointer == {"uri": uri, "digest": package.digest, "files": len(package.files),
                           "bytes": package.size, "created_at": "2026-11-22T10:00:00+00:00"}

        with recorded_s3(aws.s3) as calls:
            second = package_source.upload(aws.s3, BUCKET, package_source.build())
        assert [op for op, _ in calls] == ["HeadObject", "GetObject"]       # looked, wrote nothing
        assert not second.uploaded and not second.pointer_written and second.uri == uri
        assert {o["Key"]: o["ETag"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]} == etags


def test_a_changed_source_uploads_a_second_package_and_moves_the_pointer(source_tree):
    with FakeAws() as aws:
        old = package_source.upload(aws.s3, BUCKET, package_source.build(source_tree))
        (source_tree / "model_code" / "inference.py").write_text("# changed\n", encoding="utf-8")
        new_package = package_source.build(source_tree)
        new = package_source.upload(aws.s3, BUCKET, new_package)
        assert new.uploaded and new.pointer_written and new.uri != old.uri
        assert aws.plane.source_uri() == new.uri
        keys = sorted(o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET, Prefix="code/")["Contents"])
        assert keys == sorted(["code/current.json", old.uri.split("/", 3)[3], new.uri.split("/", 3)[3]])


def test_the_command_the_control_plane_names_is_the_one_that_uploads(capsys, tmp_path):
    with FakeAws() as aws:
        aws.upload_dataset("dogs")
        (refusal,) = aws.plane.handle_event(aws.publish("dogs", b"no code yet"))
        command = re.search(r"`python -m deploy\.package_source ([^`]*)`", refusal.message)
        assert command, refusal.message
        assert package_source.main(shlex.split(command.group(1)), s3=aws.s3) == 0
        out = capsys.readouterr().out
        assert f"{aws.plane.source_uri()}: uploaded" in out
        assert [type(a).__name__ for a in aws.plane.handle_event(aws.publish("dogs", b"again"))] == ["StartTuning"]
        assert aws.created("CreateHyperParameterTuningJob")[0]["TrainingJobDefinition"]["StaticHyperParameters"][
            "sagemaker_submit_directory"] == json.dumps(aws.plane.source_uri())
        assert package_source.main(["--bucket", BUCKET], s3=aws.s3) == 0
        assert "already there, not uploaded again" in capsys.readouterr().out

    out_file = tmp_path / "sourcedir.tar.gz"
    assert package_source.main(["--output", str(out_file)]) == 0
    assert out_file.read_bytes() == package_source.build().data
    assert package_source.build().digest in capsys.readouterr().out
    with pytest.raises(SystemExit):
        package_source.main([])                                            # uploading needs a bucket


# --- IAM: a small evaluator of identity policies ----------------------------------------------------

def _list(value):
    return value if isinstance(value, list) else [value]


def _conditions_hold(condition: dict, context: dict) -> bool:
    for operator, tests in condition.items():
        for key, wanted in tests.items():
            if key not in context:
                return False
            match = {"StringEquals": lambda v, w: v == w, "StringLike": fnmatchcase}[operator]
            if not any(match(context[key], w) for w in _list(wanted)):
                return False
    return True


def allowed(policy: dict, action: str, resource: str, context: dict = None) -> bool:
    """Whether an Allow statement grants ``action`` on ``resource`` (no Deny statements are used)."""
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow" and "NotAction" not in statement and "NotResource" not in statement
        if not any(fnmatchcase(action.lower(), a.lower()) for a in _list(statement["Action"])):
            continue
        if not any(fnmatchcase(resource, r) for r in _list(statement["Resource"])):
            continue
        if _conditions_hold(statement.get("Condition", {}), context or {}):
            return True
    return False


def _camel(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def _kebab(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", camel).lower()


def lambda_policy(**kwargs) -> dict:
    return iam.lambda_policy(BUCKET, ROLE_ARN, REGION, ACCOUNT, **kwargs)


# One example name per SageMaker resource the control plane touches; a new kind of resource needs a row.
EXAMPLE_NAMES = {
    "HyperParameterTuningJob": names.tuning_job_name("dogs", "etag1"),
    "TrainingJob": names.training_job_name("dogs", "etag1"),
    "Model": names.model_name("dogs", "etag1"),
    "EndpointConfig": names.endpoint_config_name("dogs", "etag1"),
    "Endpoint": names.endpoint_name(),
    "TransformJob": names.transform_job_name("b1", "etag2"),
}
S3_ACTIONS = {"list_objects_v2": "s3:ListBucket", "get_object": "s3:GetObject", "head_object": "s3:GetObject",
              "put_object": "s3:PutObject"}
NOT_CALLS = {"get_paginator"}


def control_plane_calls() -> set:
    """(client, snake_case operation) of every AWS call in chalicelib/, batch/ and app.py, read from the source."""
    calls = set()
    shipped = sorted((CHALICE_DIR / "chalicelib").glob("*.py")) + sorted((REPO_ROOT / "batch").glob("*.py"))
    for path in shipped + [CHALICE_DIR / "app.py"]:
        source = path.read_text(encoding="utf-8")
        for client in ("sagemaker", "s3", "runtime"):
            calls |= {(client, op) for op in re.findall(rf"self\.{client}\.([a-z0-9_]+)\(", source)}
        calls |= {("sagemaker", op) for op in re.findall(r"_create\(\s*\"([a-z0-9_]+)\"", source)}
        calls |= {("s3", op) for op in re.findall(r"get_paginator\(\s*\"([a-z0-9_]+)\"", source)}
    return {(client, op) for client, op in calls if op not in NOT_CALLS}


def sagemaker_arn(noun: str, name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{_kebab(noun)}/{name.lower()}"


def required_permissions(client: str, op: str):
    """[(action, resource, context)] one call needs, from its name alone (S3: somewhere in the bucket)."""
    if client == "s3":
        assert op in S3_ACTIONS, f"the control plane calls s3.{op}: add its action to S3_ACTIONS and to deploy/iam.py"
        action = S3_ACTIONS[op]
        return [(action, f"arn:aws:s3:::{BUCKET}" if action == "s3:ListBucket" else f"arn:aws:s3:::{BUCKET}/*", {})]
    action = f"sagemaker:{_camel(op)}"
    noun = re.sub(r"^[A-Z][a-z]+", "", _camel(op))          # create_training_job -> TrainingJob
    assert noun in EXAMPLE_NAMES, f"the control plane calls {client}.{op}: add {noun} to EXAMPLE_NAMES and deploy/iam.py"
    resource = sagemaker_arn(noun, EXAMPLE_NAMES[noun])
    needed = [(action, resource, {})]
    if op.startswith("create_"):                         # every create carries Tags
        needed.append(("sagemaker:AddTags", resource, {}))
    return needed


def _objects_allowed(policy, action):
    """Whether ``action`` is granted on some object ARN of the bucket (any prefix)."""
    return any(fnmatchcase(action.lower(), a.lower()) and any(r.startswith(f"arn:aws:s3:::{BUCKET}/") for r in
                                                              _list(s["Resource"]))
               for s in policy["Statement"] for a in _list(s["Action"]))


def test_the_lambda_policy_has_no_wildcard_actions_and_star_resources_only_for_xray():
    policy = lambda_policy()
    assert policy["Version"] == "2012-10-17"
    for statement in policy["Statement"]:
        for action in _list(statement["Action"]):
            assert "*" not in action, statement
        if statement["Resource"] == "*" or "*" in _list(statement["Resource"]):
            assert set(_list(statement["Action"])) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
        for resource in _list(statement["Resource"]):
            if resource.startswith("arn:aws:sagemaker:") or resource.startswith("arn:aws:logs:"):
                assert f":{REGION}:{ACCOUNT}:" in resource, resource
            if resource.startswith("arn:aws:s3:::"):
                assert resource.split(":::")[1].split("/")[0] == BUCKET


def test_the_lambda_may_pass_only_the_execution_role_and_only_to_sagemaker():
    policy = lambda_policy()
    iam_statements = [s for s in policy["Statement"] if any(a.startswith("iam:") for a in _list(s["Action"]))]
    assert len(iam_statements) == 1
    (statement,) = iam_statements
    assert _list(statement["Action"]) == ["iam:PassRole"] and statement["Resource"] == ROLE_ARN
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    to_sagemaker = {"iam:PassedToService": "sagemaker.amazonaws.com"}
    assert allowed(policy, "iam:PassRole", ROLE_ARN, to_sagemaker)
    assert not allowed(policy, "iam:PassRole", ROLE_ARN, {"iam:PassedToService": "lambda.amazonaws.com"})
    assert not allowed(policy, "iam:PassRole", ROLE_ARN.replace("dogbreeds-sagemaker", "admin"), to_sagemaker)


def test_every_call_in_the_control_plane_source_is_allowed_by_the_lambda_policy():
    calls = control_plane_calls()
    # the scan sees what we know is there (else a broken regex would make this test vacuous)
    assert {("sagemaker", "create_hyper_parameter_tuning_job"), ("sagemaker", "create_training_job"),
            ("sagemaker", "create_model"), ("sagemaker", "create_endpoint_config"), ("sagemaker", "create_endpoint"),
            ("sagemaker", "update_endpoint"), ("sagemaker", "describe_endpoint"), ("sagemaker", "describe_training_job"),
            ("sagemaker", "describe_hyper_parameter_tuning_job"), ("sagemaker", "create_transform_job"),
            ("runtime", "invoke_endpoint"), ("s3", "get_object"), ("s3", "put_object"),
            ("s3", "list_objects_v2")} <= calls
    policy = lambda_policy()
    for client, op in sorted(calls):
        for action, resource, context in required_permissions(client, op):
            if resource.endswith("/*"):
                assert _objects_allowed(policy, action), f"{client}.{op}: {action} is not allowed in the bucket"
            else:
                assert allowed(policy, action, resource, context), f"{client}.{op}: {action} on {resource} is not allowed"


def test_the_lambda_policy_refuses_what_the_control_plane_never_does():
    policy = lambda_policy()
    arn = sagemaker_arn
    assert not allowed(policy, "sagemaker:DeleteEndpoint", arn("Endpoint", "another-endpoint"))
    assert not allowed(policy, "sagemaker:CreateTrainingJob", arn("TrainingJob", "someone-elses-job"))
    assert not allowed(policy, "sagemaker:InvokeEndpoint", arn("Endpoint", "another-endpoint"))
    assert not allowed(policy, "sagemaker:CreateTrainingJob",
                       f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:training-job/{EXAMPLE_NAMES['TrainingJob']}")
    assert not allowed(policy, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/code/current.json")   # code is the user's
    assert not allowed(policy, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/datasets/dogs/_READY")
    assert not allowed(policy, "s3:GetObject", f"arn:aws:s3:::other-bucket/{STATE_KEY}")
    assert not allowed(policy, "s3:DeleteObject", f"arn:aws:s3:::{BUCKET}/{STATE_KEY}")
    assert not allowed(policy, "logs:PutLogEvents",
                       f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/other-function:log-stream:x")
    # its own log groups: the REST handler's and the event handlers'
    for function in ("dogbreeds-dev", "dogbreeds-dev-on_bucket_event", "dogbreeds-dev-on_sagemaker_event"):
        assert allowed(policy, "logs:PutLogEvents",
                       f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/{function}:log-stream:2026/11/22/x")


def test_the_endpoint_name_in_the_policy_follows_the_configuration():
    policy = lambda_policy(endpoint_name="Dogs-Prod")
    assert allowed(policy, "sagemaker:InvokeEndpoint", sagemaker_arn("Endpoint", "Dogs-Prod"))  # ARNs are lower-case
    assert not allowed(policy, "sagemaker:InvokeEndpoint", sagemaker_arn("Endpoint", "dogbreeds"))


def _permissions_of_request(client: str, op: str, params: dict):
    """[(action, resource, context)] one recorded request needs, from its parameters."""
    if client == "s3":
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if op == "ListObjectsV2":
            return [("s3:ListBucket", bucket, {"s3:prefix": params.get("Prefix", "")})]
        return [(S3_ACTIONS[re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()], f"{bucket}/{params['Key']}", {})]
    noun = re.sub(r"^[A-Z][a-z]+", "", op)
    needed = [(f"sagemaker:{op}", sagemaker_arn(noun, params[f"{noun}Name"]), {})]
    if "Tags" in params:
        needed.append(("sagemaker:AddTags", needed[0][1], {}))
    if ROLE_ARN in json.dumps(params):
        needed.append(("iam:PassRole", ROLE_ARN, {"iam:PassedToService": "sagemaker.amazonaws.com"}))
    return needed


def test_every_request_of_a_whole_moto_run_is_allowed_by_the_lambda_policy():
    """Two datasets (create, then update the endpoint), a prediction and a batch: each request the
    control plane sends, with its real names and keys, must be allowed."""
    sent, recording = [], [False]
    with FakeAws() as aws:
        def record(params, model, **kwargs):
            if recording[0]:
                sent.append((model.service_model.service_name, model.name, json.loads(json.dumps(params, default=str))))

        for client in (aws.plane.s3, aws.plane.sagemaker, aws.plane.runtime):
            client.meta.events.register("provide-client-params.*.*", record)
        aws.upload_source_pointer()

        def run(note):
            aws.upload_dataset("dogs")
            publish = aws.publish("dogs", note)
            marker = publish["detail"]["object"]["etag"]
            tuning, training = names.tuning_job_name("dogs", marker), names.training_job_name("dogs", marker)
            recording[0] = True
            aws.plane.handle_event(publish)
            aws.set_best_trial(tuning, BEST)
            aws.plane.handle_event(state_change("tuning", tuning, "Completed"))
            aws.set_final_metrics(training, {"test:accuracy": 0.9, "test:loss": 0.3})
            aws.plane.handle_event(state_change("training", training, "Completed"))
            aws.plane.handle_event(aws.finish_endpoint("dogbreeds", "InService", modified=len(sent)))
            recording[0] = False

        run(b"first")
        run(b"second")
        aws.put("batch/b1/input/a.jpg", jpeg_bytes())
        recording[0] = True
        assert aws.plane.predict(jpeg_bytes(), "image/jpeg", None)["predictions"]
        job = aws.plane.request_batch("b1")["transform_job"]
        recording[0] = False
        aws.write_transform_outputs("b1", {"a.jpg": {"predictions": []}})
        recording[0] = True
        aws.plane.handle_event(state_change("transform", job, "Completed"))
        recording[0] = False
        assert aws.plane.batch_status("b1")["status"] == "Completed"

    operations = {op for _, op, _ in sent}
    assert {"CreateHyperParameterTuningJob", "CreateTrainingJob", "CreateModel", "CreateEndpointConfig",
            "CreateEndpoint", "UpdateEndpoint", "InvokeEndpoint", "CreateTransformJob", "PutObject",
            "GetObject", "ListObjectsV2"} <= operations
    policy = lambda_policy()
    client_of = {"s3": "s3", "sagemaker": "sagemaker", "sagemaker-runtime": "runtime"}
    for service, op, params in sent:
        for action, resource, context in _permissions_of_request(client_of[service], op, params):
            assert allowed(policy, action, resource, context), f"{op} needs {action} on {resource}"
    keys = {params["Key"] for service, op, params in sent if op == "PutObject"}
    assert keys == {STATE_KEY, "batch/b1/_READY", predictions_key("b1")}


# --- the SageMaker execution role ------------------------------------------------------------------

def _split(uri: str):
    bucket, _, key = uri[len("s3://"):].partition("/")
    return f"arn:aws:s3:::{bucket}", key


@pytest.mark.parametrize("region", ["eu-west-1", "af-south-1"])
def test_the_execution_role_allows_what_the_jobs_read_and_write_and_nothing_else(region):
    config = PipelineConfig(bucket=BUCKET, role_arn=ROLE_ARN, region=region)
    role = iam.sagemaker_execution_role(BUCKET, region=region, account=ACCOUNT)
    assert role["trust"]["Statement"] == [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"},
                                           "Action": "sts:AssumeRole"}]
    policy = role["permissions"]
    source = f"s3://{BUCKET}/code/sourcedir-0123456789abcdef.tar.gz"
    tuning = requests.create_hyper_parameter_tuning_job(config, "dogs", "etag1", source, ["train", "valid"])
    training = requests.create_training_job(config, "dogs", "etag1", source, BEST)
    artifact = requests.model_artifact_uri(config, training["TrainingJobName"])
    model = requests.create_model(config, "dogs", "etag1", artifact)
    transform = requests.create_transform_job(config, "b1", "etag2", model["ModelName"])

    reads = [c["DataSource"]["S3DataSource"]["S3Uri"] for c in training["InputDataConfig"]]
    features = tuning["TrainingJobDefinition"]["CheckpointConfig"]["S3Uri"]   # shared by head-only trials
    reads += [transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], training["CheckpointConfig"]["S3Uri"],
              features]
    writes = [training["OutputDataConfig"]["S3OutputPath"], tuning["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"],
              training["CheckpointConfig"]["S3Uri"], transform["TransformOutput"]["S3OutputPath"], features]
    for prefix in reads:                              # listed, then each object read
        bucket, key = _split(prefix)
        assert allowed(policy, "s3:ListBucket", bucket, {"s3:prefix": key}), prefix
        assert allowed(policy, "s3:GetObject", f"{bucket}/{key}001.Affenpinscher/a.jpg"), prefix
    for uri in (source, artifact, json.loads(training["HyperParameters"]["sagemaker_submit_directory"])):
        assert allowed(policy, "s3:GetObject", "/".join(_split(uri))), uri
    for prefix in writes:
        bucket, key = _split(prefix)
        assert allowed(policy, "s3:PutObject", f"{bucket}/{key}some-job/output/model.tar.gz"), prefix
    for image in (training["AlgorithmSpecification"]["TrainingImage"], model["PrimaryContainer"]["Image"]):
        repository = iam._repository_arn(image, "aws")
        assert allowed(policy, "ecr:BatchGetImage", repository) and allowed(policy, "ecr:GetDownloadUrlForLayer", repository)
    assert allowed(policy, "ecr:GetAuthorizationToken", "*")
    assert allowed(policy, "logs:PutLogEvents",
                   f"arn:aws:logs:{region}:{ACCOUNT}:log-group:/aws/sagemaker/TrainingJobs:log-stream:x/algo-1")
    assert allowed(policy, "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "/aws/sagemaker/TrainingJobs"})

    assert not allowed(policy, "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "Other"})
    assert not allowed(policy, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/datasets/dogs/train/x.jpg")
    assert not allowed(policy, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/code/sourcedir-x.tar.gz")
    assert not allowed(policy, "s3:PutObject", f"arn:aws:s3:::{BUCKET}/batch/b1/input/a.jpg")
    assert not allowed(policy, "s3:GetObject", "arn:aws:s3:::other-bucket/datasets/dogs/train/x.jpg")
    assert not allowed(policy, "s3:ListBucket", f"arn:aws:s3:::{BUCKET}", {"s3:prefix": "pipeline/"})
    assert not allowed(policy, "ecr:BatchGetImage", "arn:aws:ecr:eu-west-1:111122223333:repository/pytorch-training")
    for statement in policy["Statement"]:
        assert all("*" not in action for action in _list(statement["Action"]))


def test_the_managed_debugger_opt_in_adds_its_rule_image():
    config = PipelineConfig(bucket=BUCKET, role_arn=ROLE_ARN, region="eu-west-1")
    image = iam._repository_arn(requests.debugger_rules_image_uri("eu-west-1"), "aws")
    assert not allowed(iam.execution_role_policy(BUCKET, region=config.region), "ecr:BatchGetImage", image)
    assert allowed(iam.execution_role_policy(BUCKET, region=config.region, managed_debugger=True),
                   "ecr:BatchGetImage", image)


# --- configure ------------------------------------------------------------------------------------------

def test_configure_writes_a_chalice_config_whose_environment_the_control_plane_accepts(tmp_path, capsys):
    from chalice.cli.factory import CLIFactory
    role = f"arn:aws:iam::{ACCOUNT}:role/service-role/dogbreeds-sagemaker"
    chalice_dir = tmp_path / "chalice_app"
    (chalice_dir / ".chalice").mkdir(parents=True)
    (chalice_dir / ".chalice" / "config.json").write_text(json.dumps(
        {"version": "2.0", "app_name": "dogbreeds", "stages": {"prod": {"environment_variables": {"X": "1"}}}}))
    assert configure.main(["--bucket", BUCKET, "--role-arn", role, "--region", "eu-west-1",
                           "--endpoint-name", "dogs-dev", "--set", "DOGBREEDS_SERVERLESS=true",
                           "--chalice-dir", str(chalice_dir)]) == 0
    out = capsys.readouterr().out
    assert (f"aws s3api put-bucket-notification-configuration --bucket {BUCKET} --region eu-west-1 "
            "--notification-configuration '{\"EventBridgeConfiguration\": {}}'") in out
    assert "aws iam create-role --role-name dogbreeds-sagemaker --path /service-role/" in out
    assert f"python -m deploy.package_source --bucket {BUCKET}" in out and "chalice deploy --stage dev" in out
    assert out.index("python -m deploy.lambda_package --vendor-only") < out.index("chalice deploy --stage dev")

    on_disk = json.loads((chalice_dir / ".chalice" / "config.json").read_text())
    assert on_disk["stages"]["prod"] == {"environment_variables": {"X": "1"}}          # other stages kept
    chalice = CLIFactory(project_dir=str(chalice_dir)).create_config_obj("dev")     # as `chalice deploy` reads it
    assert (chalice.app_name, chalice.autogen_policy, chalice.iam_policy_file) == ("dogbreeds", False, "policy-dev.json")
    assert (chalice.lambda_timeout, chalice.lambda_memory_size, chalice.xray_enabled) == (60, 512, True)
    assert chalice.api_gateway_stage == "api"
    # Powertools and the X-Ray SDK come from the AWS-managed layer of the stage's region, for the pinned runtime
    assert chalice.layers == ["arn:aws:lambda:eu-west-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-x86_64:40"]
    assert (chalice.lambda_architecture, chalice.lambda_python_version) == ("x86_64", "python3.11")
    env = chalice.environment_variables
    assert env["POWERTOOLS_SERVICE_NAME"] == "dogbreeds"
    pipeline = PipelineConfig.from_env(env)
    assert (pipeline.bucket, pipeline.role_arn, pipeline.region) == (BUCKET, role, "eu-west-1")
    assert pipeline.hosting.serverless and pipeline.hosting.endpoint_name == "dogs-dev"

    policy = json.loads((chalice_dir / ".chalice" / "policy-dev.json").read_text())
    assert policy == iam.lambda_policy(BUCKET, role, "eu-west-1", ACCOUNT, endpoint_name="dogs-dev")
    assert allowed(policy, "sagemaker:InvokeEndpoint", f"arn:aws:sagemaker:eu-west-1:{ACCOUNT}:endpoint/dogs-dev")
    trust = json.loads((chalice_dir / ".chalice" / "sagemaker-role-trust.json").read_text())
    assert trust == iam.trust_policy()
    role_policy = json.loads((chalice_dir / ".chalice" / "sagemaker-role-policy-dev.json").read_text())
    assert role_policy == iam.execution_role_policy(BUCKET, region="eu-west-1", account=ACCOUNT)


def test_configure_refuses_a_configuration_the_lambda_would_refuse(tmp_path):
    with pytest.raises(ConfigError, match="DOGBREEDS_MAX_JOBS='many'"):
        configure.configure(BUCKET, ROLE_ARN, REGION, settings={"DOGBREEDS_MAX_JOBS": "many"}, chalice_dir=tmp_path)
    with pytest.raises(ValueError, match="not a setting"):
        configure.configure(BUCKET, ROLE_ARN, REGION, settings={"DOGBREED_SERVERLESS": "true"}, chalice_dir=tmp_path)
    with pytest.raises(ValueError, match="not an IAM role ARN"):
        configure.configure(BUCKET, "dogbreeds-sagemaker", REGION, chalice_dir=tmp_path)
    with pytest.raises(ValueError, match="cn-north-1: outside the commercial partition"):
        configure.configure(BUCKET, ROLE_ARN, "cn-north-1", chalice_dir=tmp_path)
    assert not (tmp_path / ".chalice").exists()                              # nothing written


def test_configure_refuses_to_configure_for_another_python_than_the_pinned_runtime(tmp_path, monkeypatch, capsys):
    """chalice deploys to the Python it runs under, and the layer is built per Python version."""
    monkeypatch.setattr(lambda_runtime, "chalice_python_version", lambda: "3.12")
    assert configure.main(["--bucket", BUCKET, "--role-arn", ROLE_ARN, "--region", REGION,
                           "--chalice-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not written: chalice deploys to the Python it runs under: python3.12 here" in err
    assert "pinned to python3.11" in err and "Python 3.11 venv" in err
    assert not (tmp_path / ".chalice").exists()


# --- the runtime and the Powertools layer ---------------------------------------------------------------

def test_the_layer_arn_names_the_region_python_and_architecture():
    assert (lambda_runtime.powertools_layer_arn("ap-southeast-2", "3.13", "arm64")
            == "arn:aws:lambda:ap-southeast-2:017000801446:layer:AWSLambdaPowertoolsPythonV3-python313-arm64:40")
    assert (lambda_runtime.powertools_layer_arn("us-east-1")
            == "arn:aws:lambda:us-east-1:017000801446:layer:AWSLambdaPowertoolsPythonV3-python311-x86_64:40")
    assert (lambda_runtime.powertools_layer_parameter("3.12", "arm64")
            == "/aws/service/powertools/python/arm64/python3.12/3.37.0")
    for region, problem in (("us-gov-west-1", "outside the commercial partition"), ("eu-west", "not an AWS region"),
                            ("cn-northwest-1", "another account")):
        with pytest.raises(ValueError, match=problem):
            lambda_runtime.powertools_layer_arn(region)
    with pytest.raises(ValueError, match="no V3 layer for Python 3.9"):
        lambda_runtime.powertools_layer_arn("eu-west-1", "3.9")
    with pytest.raises(ValueError, match="architecture 'aarch64'"):
        lambda_runtime.powertools_layer_arn("eu-west-1", architecture="aarch64")
    with pytest.raises(ValueError, match="no layer version is known for Powertools 3.36.0.*"
                                         "/aws/service/powertools/python/x86_64/python3.11/3.36.0"):
        lambda_runtime.powertools_layer_arn("eu-west-1", powertools_version="3.36.0")


def test_the_pinned_layer_is_the_one_of_the_powertools_the_tests_run_against():
    installed = importlib.metadata.version("aws-lambda-powertools")
    assert lambda_runtime.POWERTOOLS_VERSION == installed and installed in lambda_runtime.POWERTOOLS_LAYER_VERSIONS
    pins = (REPO_ROOT / "requirements" / "control-plane.txt").read_text()
    assert f"aws-lambda-powertools[tracer]=={installed}" in pins
    assert lambda_runtime.LAMBDA_PYTHON == "{}.{}".format(*sys.version_info[:2])        # the venv's Python


def test_the_python_version_is_the_one_chalice_deploys_to():
    from chalice.config import Config
    assert "python" + lambda_runtime.chalice_python_version() == Config.create().lambda_python_version
    assert lambda_runtime.chalice_python_version((3, 9)) == "3.10"
    assert lambda_runtime.chalice_python_version((3, 12)) == "3.12"
    assert lambda_runtime.chalice_python_version((3, 16)) == "3.15"


def test_generated_files_are_ignored_by_git():
    ignored = (REPO_ROOT / ".gitignore").read_text().splitlines()
    assert "/chalice_app/.chalice/" in ignored and "/deploy/out/" in ignored
    assert "/chalice_app/vendor/" in ignored                                   # batch/, staged for chalice


# --- the Lambda package's size check (no network: a small tree stands in for the installed packages) -----

def _tree(root: Path, files: dict) -> Path:
    for name, size in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(i % 251 for i in range(size)))
    return root


def test_measure_sizes_groups_and_finds_forbidden_packages(tmp_path):
    tree = _tree(tmp_path / "pkg", {"app.py": 300, "chalicelib/config.py": 2000, "botocore/data/s3.json": 50_000,
                                    "botocore/__init__.py": 1000, "botocore-1.44.5.dist-info/METADATA": 700,
                                    "numpy/__init__.py": 10, "pillow-11.0.0.dist-info/RECORD": 20})
    lambda_package.write_zip(tree, tmp_path / "a.zip")
    lambda_package.write_zip(tree, tmp_path / "b.zip")
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()   # reproducible
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        assert sorted(archive.namelist())[0] == "app.py" and len(archive.namelist()) == 7
    m = lambda_package.measure(tree, tmp_path / "a.zip")
    assert m.unzipped == 54_030 and m.files == 7 and m.zipped == (tmp_path / "a.zip").stat().st_size
    assert m.by_entry[:3] == (("botocore", 51_000), ("chalicelib", 2000), ("botocore (metadata)", 700))
    assert m.forbidden == ("PIL", "numpy") and not m.ok
    assert m.zipped_margin == 50 * 1024 * 1024 - m.zipped and m.unzipped_margin == 262_144_000 - 54_030
    assert m.beyond_our_code == ("botocore", "botocore (metadata)", "pillow (metadata)", "numpy")
    lines = lambda_package.report(m)
    assert "FORBIDDEN inside: PIL, numpy" in lines[-1] and "botocore 0.05 MB" in lines[2]
    assert lines[3] == "  besides our code (from requirements.txt): botocore, botocore (metadata), pillow (metadata), numpy"


def test_the_limits_and_their_margins():
    small = lambda_package.Measurement(zipped=18_386_155, unzipped=27_227_947, files=10, by_entry=(("x", 1),),
                                       forbidden=())
    assert small.ok and "margin 32.47 MB" in lambda_package.report(small)[0]
    assert "18,386,155 bytes), goal under 1.00 MB: NOT met;" in lambda_package.report(small)[0]
    ours = lambda_package.Measurement(zipped=1024 * 1024 - 1, unzipped=3_000_000, files=20,
                                      by_entry=(("chalicelib", 2_000_000), ("app.py", 1_000_000)), forbidden=())
    assert "goal under 1.00 MB: met;" in lambda_package.report(ours)[0]
    assert lambda_package.report(ours)[3].startswith("  only our code: app.py, chalicelib, batch, chalice")
    assert "not inside: numpy, PIL, sagemaker, torch, torchvision" == lambda_package.report(small)[-1].strip()
    too_big = lambda_package.Measurement(zipped=52_428_801, unzipped=262_144_000, files=1, by_entry=(), forbidden=())
    assert not too_big.ok and too_big.unzipped_margin == 0
    assert "OVER by 0.00 MB" in lambda_package.report(too_big)[0] and "margin 0.00 MB" in lambda_package.report(too_big)[1]


def test_a_package_pip_cannot_fetch_is_named_with_the_reason():
    offline = ("Collecting aws-lambda-powertools==3.37.0 (from aws-lambda-powertools[tracer]==3.37.0->-r req.txt)\n"
               "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(\"Failed to "
               "establish a new connection: [Errno -3] Temporary failure in name resolution\")': /simple/x/\n"
               "ERROR: Could not find a version that satisfies the requirement aws-lambda-powertools==3.37.0 "
               "(from versions: none)\n"
               "ERROR: No matching distribution found for aws-lambda-powertools==3.37.0\n")
    error = lambda_package.explain_pip_failure(offline, "3.11")
    assert error.package == "aws-lambda-powertools==3.37.0" and "could not be reached" in error.reason
    no_wheel = ("ERROR: Could not find a version that satisfies the requirement somepkg==1.0 (from versions: 0.9)\n"
                "ERROR: No matching distribution found for somepkg==1.0\n")
    error = lambda_package.explain_pip_failure(no_wheel, "3.11")
    assert error.package == "somepkg==1.0" and "versions with such a wheel: 0.9" in error.reason
    assert "manylinux2014_x86_64, CPython 3.11" in error.reason and "could not fetch somepkg==1.0" in str(error)
    # "from versions: none": pip index versions (any platform) tells the two causes apart
    nothing = ("ERROR: Could not find a version that satisfies the requirement sdistonly==2.0 (from versions: none)\n"
               "ERROR: No matching distribution found for sdistonly==2.0\n")
    error = lambda_package.explain_pip_failure(nothing, "3.12", "sdistonly (2.0)\nAvailable versions: 2.0, 1.0\n")
    assert "the index has it (versions: 2.0, 1.0), but no wheel for manylinux2014_x86_64, CPython 3.12" in error.reason
    error = lambda_package.explain_pip_failure(nothing, "3.12", "ERROR: No matching distribution found for sdistonly\n")
    assert error.package == "sdistonly==2.0" and "did not list it at all" in error.reason


# --- what the Lambda package holds: our code only (no network: requirements.txt lists nothing) ----------

BATCH_MODULES = {"batch/__init__.py", "batch/keys.py", "batch/predictions.py", "batch/transform.py"}

# Imports app as the Lambda does and builds the control plane's clients with the runtime's boto3.
LAMBDA_IMPORT_PROBE = """
import importlib.util, json, sys
import app
plane = app.control_plane()
modules = ("app", "chalice", "chalicelib", "batch", "boto3", "botocore", "aws_lambda_powertools", "aws_xray_sdk")
print(json.dumps({"files": {name: sys.modules[name].__file__ for name in modules}, "no_site": sys.flags.no_site,
                  "moto": importlib.util.find_spec("moto") is not None,
                  "clients": sorted(type(client).__name__ for client in (plane.s3, plane.sagemaker, plane.runtime))}))
"""


@pytest.fixture
def no_pip(monkeypatch):
    """Fails the test if the build runs pip (which would need the network)."""
    monkeypatch.setattr(lambda_package, "_pip", lambda *args: pytest.fail(f"pip ran: {args}"))


def test_the_lambda_zip_holds_only_our_code_under_a_megabyte(tmp_path, no_pip):
    measurement = lambda_package.build(tmp_path / "lambda.zip")
    with zipfile.ZipFile(tmp_path / "lambda.zip") as archive:
        entries = set(archive.namelist())
    shipped = {p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "batch").rglob("*.py")}
    assert shipped == BATCH_MODULES                       # a new batch module: add it here, it is shipped
    ours = {p.relative_to(CHALICE_DIR).as_posix() for p in (CHALICE_DIR / "chalicelib").rglob("*.py")} | {"app.py"}
    assert entries == ours | BATCH_MODULES | {"chalice/__init__.py", "chalice/app.py"}     # file by file
    assert {entry.split("/")[0] for entry in entries} == {"app.py", "chalicelib", "batch", "chalice"}
    assert {name for name, _ in measurement.by_entry} == set(lambda_package.OUR_CODE) and not measurement.beyond_our_code
    assert measurement.zipped == (tmp_path / "lambda.zip").stat().st_size < lambda_package.ZIPPED_GOAL == 1024 * 1024
    assert measurement.ok


def test_app_imports_from_the_package_with_only_the_runtime_and_the_layer_beside_it(tmp_path, no_pip):
    lambda_package.build(tmp_path / "lambda.zip")
    root = tmp_path / "task"
    with zipfile.ZipFile(tmp_path / "lambda.zip") as archive:
        archive.extractall(root)
    layer, runtime = lambda_package.stand_in(tmp_path / "opt")
    # with the opt-in tracer, so the layer's X-Ray SDK is loaded too
    env = lambda_package.lambda_environment(root, (layer, runtime), DOGBREEDS_BUCKET=BUCKET,
                                            DOGBREEDS_ROLE_ARN=ROLE_ARN, DOGBREEDS_REGION=REGION,
                                            DOGBREEDS_TRACE_AWS_CALLS="true")
    probe = subprocess.run([sys.executable, *lambda_package.LAMBDA_PYTHON_OPTIONS, "-c", LAMBDA_IMPORT_PROBE],
                           cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["no_site"] == 1 and not report["moto"]              # nothing of this venv but the stand-ins
    assert report["files"] == {
        "app": str(root / "app.py"), "chalice": str(root / "chalice" / "__init__.py"),
        "chalicelib": str(root / "chalicelib" / "__init__.py"), "batch": str(root / "batch" / "__init__.py"),
        "boto3": str(runtime / "boto3" / "__init__.py"), "botocore": str(runtime / "botocore" / "__init__.py"),
        "aws_lambda_powertools": str(layer / "aws_lambda_powertools" / "__init__.py"),
        "aws_xray_sdk": str(layer / "aws_xray_sdk" / "__init__.py")}
    assert report["clients"] == ["S3", "SageMaker", "SageMakerRuntime"]
    assert not list(root.rglob("__pycache__"))                         # compiled on each cold start, as on Lambda


def test_the_cold_import_is_timed_from_the_zip_and_its_slowest_imports_named(tmp_path, no_pip):
    lambda_package.build(tmp_path / "lambda.zip")
    timing = lambda_package.time_cold_import(tmp_path / "lambda.zip", runs=2)
    assert len(timing.seconds) == 2 and all(value > 0 for value in timing.seconds)
    assert timing.median == sum(timing.seconds) / 2
    names = [name for name, _ in timing.slowest]
    assert {"aws_lambda_powertools", "chalicelib.control", "chalice"} <= set(names)   # app's direct imports
    assert [value for _, value in timing.slowest] == sorted((value for _, value in timing.slowest), reverse=True)
    lines = lambda_package.import_report(lambda_package.ImportTiming((0.41, 0.2, 0.25), (("x.core", 0.15),)))
    assert lines[0] == ("  cold import of app: 0.25 s (median of 3 fresh interpreters: 0.41, 0.20, 0.25 s), "
                        "goal under 0.3 s: met")
    assert lines[1] == "    its slowest imports: x.core 0.15 s"


IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:        40 |         40 |   _io
import time:       300 |        300 |       botocore.compat
import time:      1000 |       1300 |     botocore.session
import time:      2000 |       3300 |   aws_xray_sdk.core
import time:       100 |        100 |     chalicelib.names
import time:       500 |        600 |   chalicelib.control
import time:       700 |       4640 | app
import time:        10 |         10 | json
"""


def test_the_slowest_imports_are_apps_direct_imports_by_cumulative_time():
    assert lambda_package.slowest_imports(IMPORTTIME) == (("aws_xray_sdk.core", 0.0033), ("chalicelib.control", 0.0006),
                                                          ("_io", 0.00004))
    assert lambda_package.slowest_imports(IMPORTTIME, "chalicelib.control") == (("chalicelib.names", 0.0001),)
    assert lambda_package.slowest_imports(IMPORTTIME, "absent") == ()


def test_chalices_own_packager_builds_the_same_files_without_pip(tmp_path, no_pip, monkeypatch):
    from chalice.deploy.packager import DependencyBuilder, LambdaDeploymentPackager
    from chalice.utils import UI, OSUtils

    project = tmp_path / "chalice_app"
    shutil.copytree(CHALICE_DIR, project, ignore=shutil.ignore_patterns("__pycache__", ".chalice", "vendor"))
    lambda_package.stage_vendor(project)
    # Chalice's own test of requirements.txt decides: with nothing listed it downloads nothing
    monkeypatch.setattr(DependencyBuilder, "_download_dependencies", lambda *a: pytest.fail("chalice ran pip"))
    packager = LambdaDeploymentPackager(OSUtils(), DependencyBuilder(OSUtils()), UI(out=io.StringIO()))
    runtime = "python" + lambda_runtime.LAMBDA_PYTHON
    with zipfile.ZipFile(packager.create_deployment_package(str(project), runtime)) as archive:
        chalice_zip = set(archive.namelist())
    assert BATCH_MODULES | {"app.py", "chalicelib/control.py"} <= chalice_zip
    lambda_package.build(tmp_path / "ours.zip", app_dir=project)
    with zipfile.ZipFile(tmp_path / "ours.zip") as archive:
        assert set(archive.namelist()) == chalice_zip          # the very files chalice deploy uploads


def test_main_prints_the_size_the_provided_parts_and_the_cold_import(tmp_path, no_pip, monkeypatch, capsys):
    timed = []
    monkeypatch.setattr(lambda_package, "stage_vendor", lambda: [CHALICE_DIR / "vendor" / "batch"])
    monkeypatch.setattr(lambda_package, "time_cold_import",
                        lambda zip_path: timed.append(zip_path) or lambda_package.ImportTiming((0.5,), ()))
    assert lambda_package.main(["--output", str(tmp_path / "lambda.zip")]) == 0
    out = capsys.readouterr().out
    assert timed == [tmp_path / "lambda.zip"]
    assert "goal under 1.00 MB: met" in out and "only our code: app.py, chalicelib, batch, chalice" in out
    assert ("from the layer AWSLambdaPowertoolsPythonV3-python311-x86_64:40: aws-lambda-powertools, aws-xray-sdk" in out
            and "aws ssm get-parameter --name /aws/service/powertools/python/x86_64/python3.11/3.37.0" in out)
    assert "from the runtime (python3.11): boto3, botocore" in out and "botocore 1.36.0" in out
    assert "cold import of app: 0.50 s (median of 1 fresh interpreters: 0.50 s), goal under 0.3 s: NOT met" in out


def test_staging_puts_a_fresh_batch_into_chalices_vendor_folder(tmp_path):
    app_dir = tmp_path / "chalice_app"
    stale = app_dir / "vendor" / "batch" / "removed_module.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise ImportError('an old copy')\n")
    staged = lambda_package.stage_vendor(app_dir)
    assert staged == [app_dir / "vendor" / "batch"]
    copied = {p.relative_to(app_dir / "vendor").as_posix() for p in (app_dir / "vendor").rglob("*") if p.is_file()}
    assert copied == BATCH_MODULES
    for module in BATCH_MODULES:
        assert (app_dir / "vendor" / module).read_bytes() == (REPO_ROOT / module).read_bytes()


def test_vendor_only_stages_without_building(monkeypatch, capsys):
    staged = []

    def stage_vendor():
        staged.append(CHALICE_DIR / "vendor" / "batch")
        return staged

    monkeypatch.setattr(lambda_package, "stage_vendor", stage_vendor)
    monkeypatch.setattr(lambda_package, "build", lambda *a, **k: pytest.fail("--vendor-only must not build"))
    assert lambda_package.main(["--vendor-only"]) == 0
    assert staged == [CHALICE_DIR / "vendor" / "batch"]
    assert "staged for chalice deploy: chalice_app/vendor/batch/" in capsys.readouterr().out

def test_the_lambda_may_not_read_images_or_overwrite_inputs():
    policy = lambda_policy()
    bucket = f"arn:aws:s3:::{BUCKET}"
    assert not allowed(policy, "s3:GetObject", f"{bucket}/batch/b1/input/a.jpg")
    assert not allowed(policy, "s3:PutObject", f"{bucket}/batch/b1/input/a.jpg")
    assert not allowed(policy, "s3:GetObject", f"{bucket}/datasets/dogs/train/001.Affenpinscher/a.jpg")
    assert allowed(policy, "s3:GetObject", f"{bucket}/batch/b1/output/a.jpg.out")
    assert allowed(policy, "s3:PutObject", f"{bucket}/{predictions_key('b1')}")
