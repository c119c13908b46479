"""The AWS edge of ``dogbreeds aws deploy`` and ``destroy``: what the stage wants (``wanted``), what AWS
has now (``describe``, ``describe_deployed``: read-only calls only: Get, List, Describe, Head) and the
plan's requests sent in order (``apply``). The decisions between the two are ``deploy.changes``'.

Every client comes from one boto3 session (``Aws``), whose botocore session is also what Chalice's
deployer gets, so one set of credentials and one region serve every step, and a test can record every
request on it.
"""

from __future__ import annotations

import datetime
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from chalicelib.config import PipelineConfig
from chalicelib.control import error_code, not_found, read_json_object
from deploy import REPO_ROOT, iam, package_source
from deploy.changes import (APP_DIGEST_TAG, App, Bucket, Current, Deployed, DeployError, Endpoint, EndpointConfig,
                            Model, Plan, Role, Source, Wanted, role_arn)
from deploy.control_plane import AppConfiguration, StageApp, api_url, functions, rest_api_id

MODEL_PREFIX, ENDPOINT_CONFIG_PREFIX = iam.MODEL[1], iam.ENDPOINT_CONFIG[1]   # chalicelib.names
# The pipeline's jobs that may still run: (kind, list operation, result key, name key, name prefix).
RUNNING_JOBS = (
    ("tuning", "list_hyper_parameter_tuning_jobs", "HyperParameterTuningJobSummaries", "HyperParameterTuningJobName",
     iam.TUNING_JOB[1]),
    ("training", "list_training_jobs", "TrainingJobSummaries", "TrainingJobName", iam.TRAINING_JOB[1]),
    ("transform", "list_transform_jobs", "TransformJobSummaries", "TransformJobName", iam.TRANSFORM_JOB[1]),
)


class Aws:
    """The boto3 clients of one session, each made once."""

    def __init__(self, session):
        self.session = session
        self._clients: Dict[str, object] = {}

    def client(self, service: str):
        if service not in self._clients:
            self._clients[service] = self.session.client(service)
        return self._clients[service]

    @property
    def botocore_session(self):
        return self.session._session       # boto3 keeps it there; Chalice's deployer takes a botocore session

    @property
    def region(self) -> Optional[str]:
        return self.session.region_name

    def account(self) -> str:
        """The caller's account (STS GetCallerIdentity); DeployError when there are no credentials."""
        try:
            return self.client("sts").get_caller_identity()["Account"]
        except Exception as exc:
            if type(exc).__name__ in ("NoCredentialsError", "PartialCredentialsError") or error_code(exc):
                raise DeployError(f"AWS did not say who you are ({type(exc).__name__}: {exc}): check your "
                                  f"credentials (`aws sts get-caller-identity`)") from exc
            raise


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def wanted(app: StageApp, *, region: str, account: str, bucket: str, role_name: str,
           endpoint_name: Optional[str] = None, settings: Optional[Dict[str, str]] = None,
           create_bucket: bool = False, source_root: Path = REPO_ROOT,
           now: Callable[[], str] = _now) -> Tuple[Wanted, AppConfiguration, PipelineConfig]:
    """What the stage should be: the role's documents, the training code package, the Chalice app's
    configuration and its digest. Reads local files only. ConfigError/ValueError: a bad setting."""
    arn = role_arn(region, account, role_name)
    configuration = app.configuration(bucket, arn, region, endpoint_name, settings, account)
    pipeline = PipelineConfig.from_env(configuration.environment)
    documents = iam.sagemaker_execution_role(pipeline.bucket, region=pipeline.region, account=account,
                                             layout=pipeline.layout, managed_debugger=pipeline.debugger.enabled)
    package = package_source.build(source_root)
    want = Wanted(stage=app.stage, region=region, account=account, bucket=bucket, role_name=role_name,
                  role_trust=documents["trust"], role_policy=documents["permissions"], source=package,
                  source_key=package.key(pipeline.layout), source_uri=package.uri(bucket, pipeline.layout),
                  pointer_key=package_source.pointer_key(pipeline.layout), app_digest=configuration.digest,
                  create_bucket=create_bucket, created_at=now())
    return want, configuration, pipeline


# --- describe: read-only calls --------------------------------------------------------------------------

def _document(value) -> dict:
    """A policy document as boto3 returns it: decoded already, or IAM's URL-encoded JSON."""
    return json.loads(urllib.parse.unquote(value)) if isinstance(value, str) else value


def _tags(items) -> Dict[str, str]:
    return {item["Key"]: item["Value"] for item in items or []}


def describe_role(iam_client, name: str) -> Optional[Role]:
    try:
        role = iam_client.get_role(RoleName=name)["Role"]
    except Exception as exc:
        if error_code(exc) == "NoSuchEntity":
            return None
        raise
    names: List[str] = []
    for page in iam_client.get_paginator("list_role_policies").paginate(RoleName=name):
        names += page["PolicyNames"]
    policies = {policy: _document(iam_client.get_role_policy(RoleName=name, PolicyName=policy)["PolicyDocument"])
                for policy in names}
    return Role(name=name, arn=role["Arn"], tags=_tags(role.get("Tags")),
                trust=_document(role["AssumeRolePolicyDocument"]), policies=policies)


def describe_bucket(s3, name: str) -> Optional[Bucket]:
    try:
        # S3 names the legacy eu-west-1 constraint "EU" and us-east-1 none at all.
        location = s3.get_bucket_location(Bucket=name).get("LocationConstraint") or "us-east-1"
    except Exception as exc:
        if error_code(exc) in ("NoSuchBucket", "404"):
            return None
        if error_code(exc) in ("AccessDenied", "403"):
            raise DeployError(f"bucket {name} exists but your credentials may not read it (AccessDenied): it may "
                              f"belong to another account; bucket names are global, choose another") from exc
        raise
    try:
        tags = _tags(s3.get_bucket_tagging(Bucket=name)["TagSet"])
    except Exception as exc:
        if error_code(exc) != "NoSuchTagSet":
            raise
        tags = {}
    notification = s3.get_bucket_notification_configuration(Bucket=name)
    notification.pop("ResponseMetadata", None)
    return Bucket(name=name, region="eu-west-1" if location == "EU" else location, tags=tags,
                  notification=notification)


def describe_source(s3, want: Wanted, bucket_exists: bool) -> Source:
    if not bucket_exists:
        return Source()
    return Source(size=package_source.head_size(s3, want.bucket, want.source_key),
                  pointer=read_json_object(s3, want.bucket, want.pointer_key))


def describe_app(aws: Aws, record: Optional[dict]) -> App:
    """The recorded functions' digest tags and which recorded resources AWS no longer has."""
    if not record or not record.get("resources"):
        return App()
    digests: Dict[str, Optional[str]] = {}
    missing = []
    for name, arn in functions(record).items():
        try:
            tags = aws.client("lambda").list_tags(Resource=arn)["Tags"]
        except Exception as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            missing.append(f"function {name}")
            continue
        digests[name] = tags.get(APP_DIGEST_TAG)
    api = rest_api_id(record)
    if api:
        try:
            aws.client("apigateway").get_rest_api(restApiId=api)
        except Exception as exc:
            if error_code(exc) != "NotFoundException":
                raise
            missing.append(f"REST API {api}")
    return App(recorded=True, digests=digests, missing=tuple(missing), api_url=api_url(record))


def describe(aws: Aws, want: Wanted, app: StageApp) -> Current:
    """What AWS has now of what deploy manages for ``want``'s stage."""
    s3 = aws.client("s3")
    bucket = describe_bucket(s3, want.bucket)
    return Current(role=describe_role(aws.client("iam"), want.role_name), bucket=bucket,
                   source=describe_source(s3, want, bucket is not None), app=describe_app(aws, app.record()))


def _sagemaker_tags(sagemaker, arn: str) -> Dict[str, str]:
    return _tags(sagemaker.list_tags(ResourceArn=arn).get("Tags"))


def _describe_endpoint(sagemaker, name: str) -> Optional[Endpoint]:
    try:
        endpoint = sagemaker.describe_endpoint(EndpointName=name)
    except Exception as exc:
        if not_found(exc):
            return None
        raise
    return Endpoint(name, endpoint["EndpointStatus"], _sagemaker_tags(sagemaker, endpoint["EndpointArn"]))


def _listed(sagemaker, operation: str, key: str, name_key: str, prefix: str) -> List[str]:
    found = []
    for page in sagemaker.get_paginator(operation).paginate(NameContains=prefix):
        found += [item[name_key] for item in page[key] if item[name_key].startswith(prefix)]
    return found


def describe_deployed(aws: Aws, *, stage: str, bucket: str, role_name: str, account: str,
                      endpoint_name: str, app: StageApp, list_objects: bool = False) -> Deployed:
    """What AWS has now of what deploy made for ``stage`` and of what its pipeline made (endpoint,
    endpoint configs, models); with ``list_objects``, every object version in the bucket too."""
    sagemaker = aws.client("sagemaker")
    models = []
    for name in _listed(sagemaker, "list_models", "Models", "ModelName", MODEL_PREFIX):
        model = sagemaker.describe_model(ModelName=name)
        models.append(Model(name, model.get("ExecutionRoleArn", ""), _sagemaker_tags(sagemaker, model["ModelArn"])))
    configs = []
    for name in _listed(sagemaker, "list_endpoint_configs", "EndpointConfigs", "EndpointConfigName",
                        ENDPOINT_CONFIG_PREFIX):
        config = sagemaker.describe_endpoint_config(EndpointConfigName=name)
        configs.append(EndpointConfig(name, tuple(v["ModelName"] for v in config.get("ProductionVariants", [])),
                                      _sagemaker_tags(sagemaker, config["EndpointConfigArn"])))
    role = describe_role(aws.client("iam"), role_name)
    s3 = aws.client("s3")
    found = describe_bucket(s3, bucket)
    objects: List[Tuple[str, Optional[str]]] = []
    if list_objects and found is not None:
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                version = item.get("VersionId")
                objects.append((item["Key"], None if version in (None, "null") else version))
    running = []
    for kind, operation, key, name_key, prefix in RUNNING_JOBS:
        for page in sagemaker.get_paginator(operation).paginate(StatusEquals="InProgress", NameContains=prefix):
            running += [(kind, item[name_key]) for item in page[key] if item[name_key].startswith(prefix)]
    return Deployed(stage=stage, bucket_name=bucket, role_name=role_name,
                    role_arn=role.arn if role else role_arn(aws.region or "", account, role_name),
                    endpoint=_describe_endpoint(sagemaker, endpoint_name), endpoint_configs=tuple(configs),
                    models=tuple(models), app=app.record(), role=role, bucket=found, objects=tuple(objects),
                    running_jobs=tuple(running))


# --- apply: the plan's requests, in order ------------------------------------------------------------------

@dataclass(frozen=True)
class Applied:
    """What ``apply`` did: the changes made, and Chalice's deployed values when it deployed the app."""
    changes: Tuple
    chalice: Optional[dict] = None


def apply(aws: Aws, plan: Plan, app: StageApp, log: Callable[[str], None] = print) -> Applied:
    """Make each change of ``plan`` in order, logging its line first; the first failure stops it (the
    changes before it stay made; running again plans only what is left)."""
    chalice = None
    for change in plan.changes:
        log(change.line())
        if change.service == "chalice":
            if change.operation == "deploy":
                chalice = app.deploy(aws.botocore_session)
            else:
                app.delete(aws.botocore_session)
        else:
            getattr(aws.client(change.service), change.operation)(**change.params)
    return Applied(plan.changes, chalice)
