"""The ``create_transform_job`` request of a batch, built by a pure function of explicit arguments.

Each S3 object under the input prefix is one request to the model (``SplitType`` None,
``SingleRecord``): one whole image. Results are one ``<image>.out`` JSON file per input under the
output prefix, not concatenated (``AssembleWith`` None); ``batch.predictions`` summarises them.
"""

from __future__ import annotations

from typing import Dict, List, Protocol


class TransformSettings(Protocol):
    """The transform's knobs; the control plane's ``BatchConfig`` is one (it validates the limits)."""

    @property
    def instance_type(self) -> str: ...
    @property
    def instance_count(self) -> int: ...
    @property
    def max_payload_mb(self) -> int: ...
    @property
    def max_concurrent_transforms(self) -> int: ...
    @property
    def content_type(self) -> str: ...
    @property
    def accept(self) -> str: ...
    @property
    def invocation_timeout_seconds(self) -> int: ...
    @property
    def invocation_max_retries(self) -> int: ...


def transform_job_request(job_name: str, model_name: str, input_uri: str, output_uri: str,
                          settings: TransformSettings, tags: List[Dict[str, str]]) -> dict:
    """Keyword arguments of boto3's ``sagemaker.create_transform_job``.

    In: the job's name, the SageMaker model to run, the ``s3://`` prefix of the images and the one
    the ``.out`` files go to, the transform's settings and the resource tags. Out: the request,
    e.g. ``sagemaker.create_transform_job(**transform_job_request(...))``.
    """
    return {
        "TransformJobName": job_name,
        "ModelName": model_name,
        "MaxConcurrentTransforms": settings.max_concurrent_transforms,
        "MaxPayloadInMB": settings.max_payload_mb,
        "BatchStrategy": "SingleRecord",
        "ModelClientConfig": {"InvocationsTimeoutInSeconds": settings.invocation_timeout_seconds,
                              "InvocationsMaxRetries": settings.invocation_max_retries},
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": settings.content_type,
            "CompressionType": "None",
            "SplitType": "None",
        },
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": settings.accept, "AssembleWith": "None"},
        "TransformResources": {"InstanceType": settings.instance_type, "InstanceCount": settings.instance_count},
        "Tags": tags,
    }
