"""Least-privilege IAM policy documents for the control plane's Lambda and the SageMaker jobs' role.

``lambda_policy``: what the Chalice functions (one role for the REST handler, the event handlers and the reconciliation tick)
may do. Every action is named (no ``*`` and no ``service:*``) and scoped to ARNs in the deployment's
account and region; SageMaker resources are scoped by the deterministic name prefixes of
``chalicelib.names`` (``tune-``, ``train-``, ``model-``, ``config-``, ``batch-``) and the endpoint's
configured name. Only X-Ray's two write calls take ``"Resource": "*"`` (they have no resource ARN).

``sagemaker_execution_role``: the trust policy (``sagemaker.amazonaws.com``) and the permissions of the
role that tuning, training, hosting and transform run as: read the inputs, write the outputs, pull
the AWS Deep Learning Container images, write logs and metrics.

``tests/test_deploy.py`` derives the operations the control plane calls from its source and checks
that this policy allows each of them on the resource it names, so a new call needs a policy change.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from chalicelib.config import BucketLayout, HostingConfig
from chalicelib.sagemaker_requests import debugger_rules_image_uri, dlc_account

VERSION = "2012-10-17"
SAGEMAKER_SERVICE = "sagemaker.amazonaws.com"
APP_NAME = "dogbreeds"
DLC_REPOSITORIES = ("pytorch-training", "pytorch-inference")   # sagemaker_requests._pytorch_image

# The SageMaker resources the control plane creates, by ARN resource type and name prefix
# (chalicelib/names.py). SageMaker lower-cases names in ARNs.
TUNING_JOB = ("hyper-parameter-tuning-job", "tune-")
TRAINING_JOB = ("training-job", "train-")
MODEL = ("model", "model-")
ENDPOINT_CONFIG = ("endpoint-config", "config-")
TRANSFORM_JOB = ("transform-job", "batch-")


def partition(region: str) -> str:
    """The ARN partition of ``region``: ``aws``, ``aws-cn`` or ``aws-us-gov``."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _statement(sid: str, actions: List[str], resources, condition: Optional[dict] = None) -> dict:
    statement = {"Sid": sid, "Effect": "Allow", "Action": sorted(actions),
                 "Resource": resources if isinstance(resources, str) else list(resources)}
    if condition:
        statement["Condition"] = condition
    return statement


def _objects(arn: str, prefixes) -> List[str]:
    return [f"{arn}/{prefix}*" for prefix in prefixes]


def lambda_policy(bucket: str, role_arn: str, region: str, account: str, *, stage: str = "dev",
                  app_name: str = APP_NAME, endpoint_name: str = HostingConfig().endpoint_name,
                  layout: BucketLayout = BucketLayout()) -> dict:
    """The identity policy of the Chalice functions of ``app_name``'s ``stage``.

    - Logs: its own log groups only (``/aws/lambda/<app>-<stage>`` and ``<app>-<stage>-<handler>``).
    - X-Ray: PutTraceSegments and PutTelemetryRecords (Powertools' Tracer).
    - S3: ListBucket on the bucket, unconditioned: without it S3 answers a missing key with 403
      instead of 404, and the control plane reads "no ``pipeline/state.json`` yet" and "no
      ``code/current.json``" from that 404. GetObject on what it reads (``pipeline/``, ``code/``,
      ``batch/<id>/output/``); PutObject on what it writes (``pipeline/``, ``batch/<id>/_READY``,
      ``batch/<id>/output/predictions.csv``). Datasets and batch inputs are listed, never read.
    - SageMaker: the create/describe/update calls of ``chalicelib/control.py`` on the names it
      creates, AddTags there (every create carries Tags), InvokeEndpoint on the endpoint.
    - iam:PassRole on ``role_arn`` only, and only to SageMaker.
    """
    p = partition(region)
    sagemaker = f"arn:{p}:sagemaker:{region}:{account}"
    bucket_arn = f"arn:{p}:s3:::{bucket}"
    function = f"{app_name}-{stage}"
    log_groups = [f"arn:{p}:logs:{region}:{account}:log-group:/aws/lambda/{name}"
                  for name in (function, f"{function}:*", f"{function}-*")]

    def arn(kind, name_prefix_or_name: str, wildcard: bool = True) -> str:
        return f"{sagemaker}:{kind}/{name_prefix_or_name.lower()}{'*' if wildcard else ''}"

    tuning, training = arn(*TUNING_JOB), arn(*TRAINING_JOB)
    model, endpoint_config, transform = arn(*MODEL), arn(*ENDPOINT_CONFIG), arn(*TRANSFORM_JOB)
    endpoint = arn("endpoint", endpoint_name, wildcard=False)

    statements = [
        _statement("OwnLogs", ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], log_groups),
        _statement("XRayTracing", ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], "*"),
        _statement("ListBucket", ["s3:ListBucket"], bucket_arn),
        _statement("ReadState", ["s3:GetObject"], _objects(bucket_arn, (layout.state, layout.code))
                   + [f"{bucket_arn}/{layout.batches}*/output/*"]),
        _statement("WriteState", ["s3:PutObject"], _objects(bucket_arn, (layout.state,))
                   + [f"{bucket_arn}/{layout.batches}*/_READY", f"{bucket_arn}/{layout.batches}*/output/*"]),
        _statement("Tuning", ["sagemaker:CreateHyperParameterTuningJob", "sagemaker:DescribeHyperParameterTuningJob"],
                   [tuning]),
        _statement("Training", ["sagemaker:CreateTrainingJob", "sagemaker:DescribeTrainingJob"], [training]),
        _statement("Model", ["sagemaker:CreateModel"], [model]),
        _statement("EndpointConfig", ["sagemaker:CreateEndpointConfig"], [endpoint_config]),
        # IAM may evaluate the endpoint configuration named in the request as well as the endpoint.
        _statement("Endpoint", ["sagemaker:CreateEndpoint", "sagemaker:UpdateEndpoint"], [endpoint, endpoint_config]),
        _statement("EndpointState", ["sagemaker:DescribeEndpoint", "sagemaker:InvokeEndpoint",
                                      "sagemaker:DeleteEndpoint"], [endpoint]),      # a Failed one is recreated
        _statement("Transform", ["sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob"], [transform, model]),
        _statement("TagOnCreate", ["sagemaker:AddTags"],
                   [tuning, training, model, endpoint_config, endpoint, transform]),
        _statement("PassExecutionRoleToSageMaker", ["iam:PassRole"], role_arn,
                   {"StringEquals": {"iam:PassedToService": SAGEMAKER_SERVICE}}),
    ]
    return {"Version": VERSION, "Statement": statements}


def trust_policy() -> dict:
    """Who may assume the execution role: SageMaker."""
    return {"Version": VERSION, "Statement": [{
        "Effect": "Allow", "Principal": {"Service": SAGEMAKER_SERVICE}, "Action": "sts:AssumeRole"}]}


def _repository_arn(image_uri: str, p: str) -> str:
    """``<account>.dkr.ecr.<region>.<domain>/<repository>:<tag>`` -> the repository's ARN."""
    host, _, path = image_uri.partition("/")
    account, _, _, region = host.split(".")[:4]
    return f"arn:{p}:ecr:{region}:{account}:repository/{path.split(':')[0]}"


def execution_role_policy(bucket: str, *, region: Optional[str] = None, account: Optional[str] = None,
                          layout: BucketLayout = BucketLayout(), managed_debugger: bool = False) -> dict:
    """What the jobs' role may do. ``region``/``account`` narrow logs and images to the deployment's
    (``*`` when not given; the DLC registry is then the main one, 763104351884). ``managed_debugger``
    (needs ``region``): also pull SageMaker Debugger's rule image, for the opt-in.

    - S3 read: ``datasets/`` (channels), ``batch/`` (transform inputs), ``code/`` (sourcedir.tar.gz),
      ``jobs/`` (the model.tar.gz that endpoints and transforms load), ``checkpoints/`` (resume) and
      ``features/`` (feature sets shared by head-only tuning trials).
    - S3 write: ``jobs/`` (outputs, model artifacts), ``checkpoints/``, ``features/``, ``batch/<id>/output/``.
    - ECR: pull the PyTorch training and inference DLC images.
    - CloudWatch: logs under ``/aws/sagemaker/*``; metrics in ``/aws/sagemaker/*`` namespaces.
    """
    p = partition(region or "")
    where = f"{region or '*'}:{account or '*'}"
    bucket_arn = f"arn:{p}:s3:::{bucket}"
    read = (layout.datasets, layout.batches, layout.code, layout.jobs, layout.checkpoints, layout.features)
    write = (_objects(bucket_arn, (layout.jobs, layout.checkpoints, layout.features))
             + [f"{bucket_arn}/{layout.batches}*/output/*"])
    registry = dlc_account(region) if region else "763104351884"
    repositories = [f"arn:{p}:ecr:{region or '*'}:{registry}:repository/{name}" for name in DLC_REPOSITORIES]
    if managed_debugger:
        if not region:
            raise ValueError("the managed Debugger's rule image depends on the region: pass region")
        repositories.append(_repository_arn(debugger_rules_image_uri(region), p))
    log_resources = [f"arn:{p}:logs:{where}:log-group:/aws/sagemaker/*",
                     f"arn:{p}:logs:{where}:log-group:/aws/sagemaker/*:log-stream:*"]
    statements = [
        _statement("ListPipelinePrefixes", ["s3:ListBucket"], bucket_arn,
                   {"StringLike": {"s3:prefix": [f"{prefix}*" for prefix in read]}}),
        _statement("BucketLocation", ["s3:GetBucketLocation"], bucket_arn),
        _statement("ReadInputs", ["s3:GetObject"], _objects(bucket_arn, read)),
        _statement("WriteOutputs", ["s3:PutObject", "s3:AbortMultipartUpload"], write),
        _statement("EcrLogin", ["ecr:GetAuthorizationToken"], "*"),
        _statement("PullDeepLearningContainers",
                   ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
                   repositories),
        _statement("Logs", ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:DescribeLogStreams",
                            "logs:PutLogEvents"], log_resources),
        _statement("Metrics", ["cloudwatch:PutMetricData"], "*",
                   {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}),
    ]
    return {"Version": VERSION, "Statement": statements}


def sagemaker_execution_role(bucket: str, *, region: Optional[str] = None, account: Optional[str] = None,
                             layout: BucketLayout = BucketLayout(), managed_debugger: bool = False) -> Dict[str, dict]:
    """``{"trust": <assume-role policy>, "permissions": <identity policy>}`` of the jobs' role."""
    return {"trust": trust_policy(),
            "permissions": execution_role_policy(bucket, region=region, account=account, layout=layout,
                                                 managed_debugger=managed_debugger)}
