"""What ``dogbreeds aws deploy`` and ``dogbreeds aws destroy`` change, decided from what AWS describes now
(``Current``, ``Deployed``) and what the stage wants (``Wanted``). Pure: no I/O here.

A decision is a ``Plan``: the ``Change``s to make, in order, each carrying the boto3 request that makes
it (``service``, ``operation``, ``params``), and lines naming what is already as wanted or is kept.
``deploy.stack`` describes with read-only calls and applies a plan's requests; the Chalice app's own
deploy and delete are changes of the service ``"chalice"``, which ``deploy.stack`` hands to Chalice's
deployer.

What deploy makes is found again by tags and deterministic names:

- the SageMaker execution role (default ``dogbreeds-sagemaker-<stage>``) carries ``dogbreeds:deployment=<stage>``;
- the Chalice functions carry the same tag and ``dogbreeds:app-digest`` (what they were deployed from);
  the rest of the Chalice app is in Chalice's own record, ``.chalice/deployed/<stage>.json``;
- the bucket carries ``dogbreeds:deployment:<stage>`` naming what deploy added to it: ``bucket`` (it
  created the bucket) and ``eventbridge`` (it turned S3 -> EventBridge notifications on);
- the pipeline's endpoint is the stage's endpoint name; its endpoint configs and models are tagged
  ``dogbreeds:stage`` (``endpoint-config``, ``model``) by the control plane, the models run as the
  stage's role, and the configs serve those models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from deploy import iam
from deploy.package_source import (CONTENT_TYPE, SourcePackage, needs_upload, pointer_body, pointer_document,
                                   points_at)

DEPLOYMENT_TAG = "dogbreeds:deployment"          # the stage, on the role and the Chalice functions
APP_DIGEST_TAG = "dogbreeds:app-digest"          # on the Chalice functions: the code and configuration deployed
BUCKET_TAG_PREFIX = "dogbreeds:deployment:"      # + stage, on the bucket: what deploy added there
CREATED_BUCKET, ADDED_EVENTBRIDGE = "bucket", "eventbridge"
PIPELINE_TAG = "dogbreeds:stage"                 # chalicelib.sagemaker_requests.resource_tags
EVENTBRIDGE = "EventBridgeConfiguration"
DELETE_BATCH = 1000                              # the most keys one DeleteObjects takes
# kind of job -> the AWS CLI command that stops one, and its name option
STOP_JOB = {"tuning": ("stop-hyper-parameter-tuning-job", "--hyper-parameter-tuning-job-name"),
            "training": ("stop-training-job", "--training-job-name"),
            "transform": ("stop-transform-job", "--transform-job-name")}


class DeployError(Exception):
    """A deployment or teardown that cannot go ahead as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Change:
    """One step: ``verb`` ``resource`` because ``reason``, made by ``service``.``operation``(**``params``)."""
    verb: str                  # create, update, upload, tag, deploy, delete
    resource: str              # what a person calls it: "IAM role dogbreeds-sagemaker-dev"
    reason: str
    service: str               # a boto3 service name, or "chalice" for Chalice's deployer
    operation: str             # the boto3 client method (or "deploy"/"delete" for Chalice)
    params: Mapping = field(default_factory=dict, compare=False)

    def line(self) -> str:
        return f"{self.verb:<7} {self.resource}: {self.reason}"


@dataclass(frozen=True)
class Plan:
    """The changes to make, in order, and what needs none (``unchanged``: lines to show)."""
    changes: Tuple[Change, ...]
    unchanged: Tuple[str, ...] = ()

    def lines(self, unchanged: str = "ok") -> List[str]:
        """The plan as lines to print: each change, then what stays as it is, marked ``unchanged``."""
        return [change.line() for change in self.changes] + [f"{unchanged:<7} {line}" for line in self.unchanged]


# --- what AWS describes now --------------------------------------------------------------------------

@dataclass(frozen=True)
class Role:
    """An IAM role: its tags, trust policy and inline policies (name -> document)."""
    name: str
    arn: str
    tags: Mapping[str, str]
    trust: Mapping
    policies: Mapping[str, Mapping]


@dataclass(frozen=True)
class Bucket:
    """An S3 bucket: its region, tags and notification configuration (without ResponseMetadata)."""
    name: str
    region: str
    tags: Mapping[str, str]
    notification: Mapping


@dataclass(frozen=True)
class Source:
    """The training code in the bucket: the size of the object at the package's key (None: absent) and
    ``code/current.json``'s document (None: absent or unreadable)."""
    size: Optional[int] = None
    pointer: Optional[Mapping] = None


@dataclass(frozen=True)
class App:
    """The Chalice app of the stage: whether Chalice's record of it exists, the ``dogbreeds:app-digest``
    tag of each recorded function (None: no such tag), the recorded resources AWS no longer has, and
    the API's URL from the record."""
    recorded: bool = False
    digests: Mapping[str, Optional[str]] = field(default_factory=dict)
    missing: Tuple[str, ...] = ()
    api_url: Optional[str] = None


@dataclass(frozen=True)
class Current:
    """What AWS describes now of what deploy manages. ``role``/``bucket``: None when absent."""
    role: Optional[Role]
    bucket: Optional[Bucket]
    source: Source
    app: App


# --- what the stage wants ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Wanted:
    """The deployment of one stage as it should be."""
    stage: str
    region: str
    account: str
    bucket: str
    role_name: str
    role_trust: Mapping
    role_policy: Mapping
    source: SourcePackage
    source_key: str            # code/sourcedir-<digest>.tar.gz
    source_uri: str
    pointer_key: str           # code/current.json
    app_digest: str            # deploy.control_plane.StageApp's digest of the code and configuration
    create_bucket: bool = False
    created_at: str = ""       # the pointer's created_at, should it be written

    @property
    def role_arn(self) -> str:
        return role_arn(self.region, self.account, self.role_name)

    @property
    def role_policy_name(self) -> str:
        return role_policy_name(self.stage)


def default_role_name(stage: str) -> str:
    """``dogbreeds-sagemaker-<stage>``: the execution role deploy makes (Chalice's own roles are
    ``dogbreeds-<stage>...``)."""
    return f"{iam.APP_NAME}-sagemaker-{stage}"


def role_arn(region: str, account: str, name: str) -> str:
    return f"arn:{iam.partition(region)}:iam::{account}:role/{name}"


def role_policy_name(stage: str) -> str:
    """The execution role's inline policy: ``dogbreeds-<stage>`` (as deploy.configure's recipe names it)."""
    return f"{iam.APP_NAME}-{stage}"


def bucket_tag_key(stage: str) -> str:
    return BUCKET_TAG_PREFIX + stage


def canonical(document) -> str:
    """A policy document as comparable text (key order and spacing do not matter)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def _tag_set(tags: Mapping[str, str]) -> List[Dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(tags.items())]


def _recorded(bucket: Optional[Bucket], stage: str) -> set:
    """What deploy recorded on the bucket that it added for ``stage``."""
    if bucket is None:
        return set()
    return set(bucket.tags.get(bucket_tag_key(stage), "").split())


def notification_kinds(notification: Mapping) -> List[str]:
    """The kinds of notification a configuration holds, e.g. ``["QueueConfigurations (1)"]``."""
    kinds = []
    for name, value in sorted(notification.items()):
        if name == EVENTBRIDGE:
            kinds.append(name)
        elif value:
            kinds.append(f"{name} ({len(value)})")
    return kinds


def with_eventbridge(notification: Mapping) -> dict:
    """``notification`` with S3 -> EventBridge on, every other notification kept as it is (S3's
    PutBucketNotificationConfiguration replaces the whole configuration)."""
    merged = {name: value for name, value in notification.items() if value or name == EVENTBRIDGE}
    merged[EVENTBRIDGE] = {}
    return merged


def without_eventbridge(notification: Mapping) -> dict:
    """``notification`` with S3 -> EventBridge off and every other notification kept."""
    return {name: value for name, value in notification.items() if name != EVENTBRIDGE and value}


def create_bucket_request(bucket: str, region: str) -> dict:
    """CreateBucket's request: us-east-1 takes no LocationConstraint, every other region needs one."""
    if region == "us-east-1":
        return {"Bucket": bucket}
    return {"Bucket": bucket, "CreateBucketConfiguration": {"LocationConstraint": region}}


# --- deploy ----------------------------------------------------------------------------------------------

def role_changes(want: Wanted, role: Optional[Role]) -> Plan:
    """Create the execution role with its trust and inline policy, or bring them up to date. A role of
    that name that deploy did not make (no ``dogbreeds:deployment=<stage>`` tag) is refused."""
    name = f"IAM role {want.role_name}"
    policy = {"RoleName": want.role_name, "PolicyName": want.role_policy_name,
              "PolicyDocument": json.dumps(want.role_policy)}
    if role is None:
        return Plan((
            Change("create", name, "absent; SageMaker's jobs and models run as it", "iam", "create_role",
                   {"RoleName": want.role_name, "AssumeRolePolicyDocument": json.dumps(want.role_trust),
                    "Description": f"SageMaker jobs and models of the dogbreeds pipeline, stage {want.stage}",
                    "Tags": _tag_set({DEPLOYMENT_TAG: want.stage})}),
            Change("create", f"{name} policy {want.role_policy_name}", "absent", "iam", "put_role_policy", policy)))
    owner = role.tags.get(DEPLOYMENT_TAG)
    if owner != want.stage:
        raise DeployError(
            f"{name} exists but was not made by `dogbreeds aws deploy --stage {want.stage}` "
            f"(its {DEPLOYMENT_TAG} tag is {owner!r}): choose another --role-name, or let deploy manage it "
            f"with `aws iam tag-role --role-name {want.role_name} --tags Key={DEPLOYMENT_TAG},Value={want.stage}`")
    changes = []
    if canonical(role.trust) != canonical(want.role_trust):
        changes.append(Change("update", f"{name} trust policy", "differs from deploy.iam.trust_policy()", "iam",
                              "update_assume_role_policy",
                              {"RoleName": want.role_name, "PolicyDocument": json.dumps(want.role_trust)}))
    existing = role.policies.get(want.role_policy_name)
    if existing is None or canonical(existing) != canonical(want.role_policy):
        changes.append(Change("update" if existing is not None else "create", f"{name} policy {want.role_policy_name}",
                              "differs from deploy.iam.execution_role_policy()" if existing is not None else "absent",
                              "iam", "put_role_policy", policy))
    return Plan(tuple(changes), () if changes else (f"{name}: trust and policy as wanted",))


def bucket_changes(want: Wanted, bucket: Optional[Bucket]) -> Plan:
    """Create the bucket (only with ``create_bucket``), turn its S3 -> EventBridge notifications on while
    keeping its other notifications, and record on it what deploy added."""
    where = f"s3://{want.bucket}"
    changes: List[Change] = []
    unchanged: List[str] = []
    if bucket is None:
        if not want.create_bucket:
            raise DeployError(f"bucket {want.bucket} does not exist (or is not yours): create it in {want.region}, "
                              f"or pass --create-bucket and deploy creates it")
        changes.append(Change("create", f"S3 bucket {want.bucket}", f"absent; --create-bucket, in {want.region}",
                              "s3", "create_bucket", create_bucket_request(want.bucket, want.region)))
        tags: Mapping[str, str] = {}
        notification: Mapping = {}
        added = {CREATED_BUCKET}
    else:
        if bucket.region != want.region:
            raise DeployError(f"bucket {want.bucket} is in {bucket.region}, not {want.region}: deploy with "
                              f"--region {bucket.region} (SageMaker reads its data from its own region)")
        tags, notification = bucket.tags, bucket.notification
        added = _recorded(bucket, want.stage)
        unchanged.append(f"S3 bucket {want.bucket} in {want.region}")

    if EVENTBRIDGE in notification:
        unchanged.append(f"{where} notifications: S3 -> EventBridge on")
    else:
        kept = notification_kinds(notification)
        changes.append(Change(
            "update", f"{where} notifications", "turn S3 -> EventBridge on; "
            + (f"keep {', '.join(kept)}" if kept else "it has no other notification"),
            "s3", "put_bucket_notification_configuration",
            # The other destinations were checked when their owner set them; EventBridge needs no check.
            {"Bucket": want.bucket, "NotificationConfiguration": with_eventbridge(notification),
             "SkipDestinationValidation": True}))
        added.add(ADDED_EVENTBRIDGE)

    key, value = bucket_tag_key(want.stage), " ".join(sorted(added))
    if added and tags.get(key) != value:
        changes.append(Change("tag", where, f"{key}={value!r}: what deploy added, for destroy", "s3",
                              "put_bucket_tagging",
                              {"Bucket": want.bucket, "Tagging": {"TagSet": _tag_set({**tags, key: value})}}))
    return Plan(tuple(changes), tuple(unchanged))


def source_changes(want: Wanted, source: Source) -> Plan:
    """Upload the training code package when its key holds no such object; point ``code/current.json``
    at it when it points elsewhere."""
    package = want.source
    changes = []
    what = f"training code {package.short_digest} ({len(package.files)} files, {package.size:,} bytes)"
    if needs_upload(source.size, package):
        changes.append(Change("upload", f"s3://{want.bucket}/{want.source_key}",
                              what + ("" if source.size is None else f"; the key holds {source.size:,} bytes"),
                              "s3", "put_object", {"Bucket": want.bucket, "Key": want.source_key,
                                                   "Body": package.data, "ContentType": CONTENT_TYPE}))
    if not points_at(source.pointer, want.source_uri, package):
        before = (source.pointer or {}).get("uri") or "nothing"
        pointer = pointer_document(package, want.source_uri, want.created_at)
        changes.append(Change("update", f"s3://{want.bucket}/{want.pointer_key}",
                              f"points at {before}: point at {want.source_key}", "s3", "put_object",
                              {"Bucket": want.bucket, "Key": want.pointer_key, "Body": pointer_body(pointer),
                               "ContentType": "application/json"}))
    return Plan(tuple(changes), () if changes else (f"{what}: uploaded, and {want.pointer_key} points at it",))


def app_changes(want: Wanted, app: App) -> Plan:
    """Deploy the Chalice app with Chalice's deployer unless every recorded function was deployed from
    the wanted code and configuration (their ``dogbreeds:app-digest``) and the API is there."""
    name = f"Chalice app {iam.APP_NAME}, stage {want.stage}"
    if not app.recorded:
        reason = f"not deployed (no .chalice/deployed/{want.stage}.json)"
    elif app.missing:
        reason = f"recorded, but AWS no longer has {', '.join(app.missing)}"
    else:
        stale = sorted(f for f, digest in app.digests.items() if digest != want.app_digest)
        if not stale:
            return Plan((), (f"{name}: deployed from this code and configuration ({want.app_digest[:12]})",))
        before = sorted({str(app.digests[f])[:12] for f in stale})
        reason = f"code or configuration changed ({', '.join(before)} -> {want.app_digest[:12]})"
    return Plan((Change("deploy", name, reason, "chalice", "deploy", {"stage": want.stage}),))


def deploy_plan(want: Wanted, now: Current) -> Plan:
    """Everything deploy changes, in order: the role, the bucket and its notifications, the training
    code, the Chalice app. DeployError when it cannot go ahead (a role or bucket that is not ours)."""
    parts = [role_changes(want, now.role), bucket_changes(want, now.bucket), source_changes(want, now.source),
             app_changes(want, now.app)]
    return Plan(tuple(c for p in parts for c in p.changes), tuple(u for p in parts for u in p.unchanged))


# --- destroy ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    name: str
    status: str
    tags: Mapping[str, str]


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    models: Tuple[str, ...]    # its variants' ModelName
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Model:
    name: str
    role_arn: str              # ExecutionRoleArn
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Deployed:
    """What AWS describes now of a stage deploy made, and what the pipeline made with it."""
    stage: str
    bucket_name: str
    role_name: str
    role_arn: str
    endpoint: Optional[Endpoint]
    endpoint_configs: Tuple[EndpointConfig, ...]
    models: Tuple[Model, ...]
    app: Optional[Mapping]     # Chalice's record ``{"resources": [...]}``; None when there is none
    role: Optional[Role]
    bucket: Optional[Bucket]
    objects: Tuple[Tuple[str, Optional[str]], ...] = ()   # (key, version id): listed only to delete the bucket
    running_jobs: Tuple[Tuple[str, str], ...] = ()        # (kind, name) of the pipeline's jobs still InProgress


def pipeline_models(deployed: Deployed) -> List[str]:
    """The models the stage's pipeline made: tagged ``dogbreeds:stage=model`` and running as its role."""
    return sorted(m.name for m in deployed.models
                  if m.tags.get(PIPELINE_TAG) == "model" and m.role_arn == deployed.role_arn)


def pipeline_endpoint_configs(deployed: Deployed, models: Sequence[str]) -> List[str]:
    """The endpoint configs the pipeline made for ``models``: tagged ``dogbreeds:stage=endpoint-config``."""
    ours = set(models)
    return sorted(c.name for c in deployed.endpoint_configs
                  if c.tags.get(PIPELINE_TAG) == "endpoint-config" and c.models and set(c.models) <= ours)


def _chalice_resources(record: Mapping) -> List[str]:
    shown = []
    for resource in record.get("resources", []):
        kind = resource.get("resource_type", "?")
        label = (resource.get("lambda_arn", "").rsplit(":", 1)[-1] or resource.get("role_name")
                 or resource.get("rest_api_id") or resource.get("rule_name") or resource.get("name"))
        shown.append(f"{kind} {label}")
    return shown


def destroy_plan(deployed: Deployed, delete_bucket: bool = False) -> Plan:
    """Everything destroy removes, in order: the endpoint first (it bills by the hour), the pipeline's
    endpoint configs and models, the Chalice app (Chalice's own delete), the execution role, then what
    deploy added to the bucket. The bucket and its data stay unless ``delete_bucket``, which only
    removes a bucket deploy created; jobs still running are named with the command that stops them.
    DeployError when ``delete_bucket`` names a bucket deploy did not create."""
    changes: List[Change] = []
    kept: List[str] = []
    endpoint = deployed.endpoint
    if endpoint is not None and endpoint.tags.get(PIPELINE_TAG) == "endpoint" and endpoint.status != "Deleting":
        changes.append(Change("delete", f"SageMaker endpoint {endpoint.name}", f"{endpoint.status}; billed by the hour",
                              "sagemaker", "delete_endpoint", {"EndpointName": endpoint.name}))
    models = pipeline_models(deployed)
    for name in pipeline_endpoint_configs(deployed, models):
        changes.append(Change("delete", f"SageMaker endpoint config {name}", "made by the pipeline", "sagemaker",
                              "delete_endpoint_config", {"EndpointConfigName": name}))
    for name in models:
        changes.append(Change("delete", f"SageMaker model {name}",
                              f"made by the pipeline, runs as {deployed.role_name}", "sagemaker", "delete_model",
                              {"ModelName": name}))

    resources = _chalice_resources(deployed.app or {})
    if resources:
        changes.append(Change("delete", f"Chalice app {iam.APP_NAME}, stage {deployed.stage}", "; ".join(resources),
                              "chalice", "delete", {"stage": deployed.stage}))

    role = deployed.role
    if role is not None and role.tags.get(DEPLOYMENT_TAG) == deployed.stage:
        for policy in sorted(role.policies):
            changes.append(Change("delete", f"IAM role {role.name} policy {policy}", "inline policies go first", "iam",
                                  "delete_role_policy", {"RoleName": role.name, "PolicyName": policy}))
        changes.append(Change("delete", f"IAM role {role.name}", f"tagged {DEPLOYMENT_TAG}={deployed.stage}", "iam",
                              "delete_role", {"RoleName": role.name}))
    elif role is not None:
        kept.append(f"IAM role {role.name}: not made by deploy for stage {deployed.stage}")

    changes += _bucket_teardown(deployed, delete_bucket, kept)
    for kind, name in deployed.running_jobs:
        command, option = STOP_JOB[kind]
        kept.append(f"SageMaker {kind} job {name}: InProgress, billed until it ends (it cannot be deleted); "
                    f"to stop it: aws sagemaker {command} {option} {name}")
    return Plan(tuple(changes), tuple(kept))


def _bucket_teardown(deployed: Deployed, delete_bucket: bool, kept: List[str]) -> List[Change]:
    bucket, stage = deployed.bucket, deployed.stage
    if bucket is None:
        if delete_bucket:
            kept.append(f"S3 bucket {deployed.bucket_name}: already gone")
        return []
    added = _recorded(bucket, stage)
    where = f"s3://{bucket.name}"
    if delete_bucket:
        if CREATED_BUCKET not in added:
            raise DeployError(f"--delete-bucket: {where} was not created by `dogbreeds aws deploy --create-bucket "
                              f"--stage {stage}` (no {bucket_tag_key(stage)} tag naming it): destroy keeps it; "
                              f"delete it yourself if you mean to")
        changes = []
        for start in range(0, len(deployed.objects), DELETE_BATCH):
            batch = deployed.objects[start:start + DELETE_BATCH]
            objects = [{"Key": key, **({"VersionId": version} if version else {})} for key, version in batch]
            changes.append(Change("delete", f"{len(batch):,} objects in {where}",
                                  f"{start + 1:,}-{start + len(batch):,} of {len(deployed.objects):,}; --delete-bucket",
                                  "s3", "delete_objects",
                                  {"Bucket": bucket.name, "Delete": {"Objects": objects, "Quiet": True}}))
        changes.append(Change("delete", f"S3 bucket {bucket.name}", "created by deploy; --delete-bucket", "s3",
                              "delete_bucket", {"Bucket": bucket.name}))
        return changes

    changes = []
    if ADDED_EVENTBRIDGE in added and EVENTBRIDGE in bucket.notification:
        rest = without_eventbridge(bucket.notification)
        kept_kinds = notification_kinds(rest)
        changes.append(Change("update", f"{where} notifications",
                              "turn off the S3 -> EventBridge deploy turned on; "
                              + (f"keep {', '.join(kept_kinds)}" if kept_kinds else "no other notification"),
                              "s3", "put_bucket_notification_configuration",
                              {"Bucket": bucket.name, "NotificationConfiguration": rest,
                               "SkipDestinationValidation": True}))
    key = bucket_tag_key(stage)
    if key in bucket.tags:
        rest_tags = {k: v for k, v in bucket.tags.items() if k != key}
        if rest_tags:
            changes.append(Change("untag", where, f"remove {key}", "s3", "put_bucket_tagging",
                                  {"Bucket": bucket.name, "Tagging": {"TagSet": _tag_set(rest_tags)}}))
        else:
            changes.append(Change("untag", where, f"remove {key}", "s3", "delete_bucket_tagging",
                                  {"Bucket": bucket.name}))
    kept.append(f"S3 bucket {bucket.name} and its data (--delete-bucket removes "
                + ("them)" if CREATED_BUCKET in added else "only a bucket deploy created)"))
    return changes
