"""What the Lambda provides beside our deployment package: the Python runtime, which ships boto3, and
the AWS-managed Powertools layer, which ships Powertools with its extras (the X-Ray SDK its Tracer needs).

The package itself is then only our code (``app.py``, ``chalicelib/``, ``batch/`` and the two files of
Chalice's runtime that Chalice adds). What was established, and from where:

- **The runtime.** Chalice deploys to the Python of the interpreter it runs in (``chalice.config.Config
  .lambda_python_version``; there is no setting for it), so the runtime is pinned here, ``LAMBDA_PYTHON``,
  and ``deploy.configure`` refuses to write a configuration from another interpreter: the layer is
  built per Python version. python3.11 is the project's interpreter; AWS's runtime table lists its
  deprecation for 2027-06-30 (function creation blocked from 2027-07-31).
- **The runtime's boto3.** AWS no longer publishes it ("depends on the runtime version and your AWS
  Region"). Every request of a whole run of the control plane (all strategies, spot, serverless,
  debugger, predict, batch) validates against botocore 1.36.0's service models; the newest parameters
  are S3 PutObject ``IfNoneMatch`` (absent in 1.34.145, present in 1.35.36) and ``IfMatch`` (absent in
  1.35.36, present in 1.36.0), both sent by ``chalicelib.control.StateStore``. python3.11 Lambdas ran
  boto3 >= 1.37 from mid-2025 (boto/boto3#4579 and #4462), so nothing we send is newer than the
  runtime's botocore, and boto3/botocore are not bundled.
- **The layer.** ``arn:aws:lambda:<region>:017000801446:layer:AWSLambdaPowertoolsPythonV3-python3XY-<arch>:<n>``
  (Powertools' installation guide), without boto3. Powertools publishes the version number ``n`` of each
  release in SSM, ``/aws/service/powertools/python/<arch>/python3.X/<release>``, but not in a document
  we could read: ``POWERTOOLS_LAYER_VERSIONS`` is derived (see there) and says so.
"""

from __future__ import annotations

import re
import sys
from typing import Dict, Sequence, Tuple

LAMBDA_PYTHON = "3.11"
ARCHITECTURE = "x86_64"
ARCHITECTURES = ("x86_64", "arm64")
# The Python versions Powertools publishes V3 layers for (its installation guide).
LAYER_PYTHONS = ("3.10", "3.11", "3.12", "3.13", "3.14")
POWERTOOLS_VERSION = "3.37.0"               # requirements/control-plane.txt pins the same
POWERTOOLS_ACCOUNT = "017000801446"         # the AWS account that publishes the layer in commercial regions
# DERIVED, NOT PUBLISHED: the layer's version number per Powertools release. Every release since 3.0.0
# (layer 1) published one layer version, as far as it could be checked: 3.1.0 -> 2, 3.2.0 -> 3,
# 3.4.0 -> 5, 3.4.1 -> 6 (Powertools PRs #5344, #5426, #5785, #5869), 3.20.0 -> 23 (its release PR
# #7354), 3.23.0 -> 27 (#7757, the installation guide). 3.37.0 is the 40th release on PyPI since 3.0.0,
# hence 40; were 3.32.0 and 3.33.0 (absent from PyPI) layers all the same, it would be 42. Check it
# once with `aws ssm get-parameter --name <powertools_layer_parameter()>` (the packaging step prints it).
POWERTOOLS_LAYER_VERSIONS: Dict[str, int] = {"3.37.0": 40}

# What the runtime's site-packages hold (boto3 and its dependencies) and what the layer adds that the
# control plane imports; the packaging step stands them in from this interpreter's installation.
# The oldest botocore whose service models were checked to have every request parameter we send.
RUNTIME_BOTOCORE_FLOOR = "1.36.0"
RUNTIME_DISTRIBUTIONS = ("boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3")
LAYER_DISTRIBUTIONS = ("aws-lambda-powertools", "aws-xray-sdk", "wrapt", "typing-extensions")

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")


def chalice_python_version(version_info: Sequence[int] = sys.version_info) -> str:
    """The Lambda Python ``chalice deploy`` picks from an interpreter of ``version_info`` (Chalice's own
    rule, ``Config.lambda_python_version``): its major.minor, clamped to 3.10..3.14 (later: 3.15)."""
    major, minor = version_info[0], version_info[1]
    if (major, minor) < (3, 10):
        return "3.10"
    if (major, minor) <= (3, 14):
        return f"{major}.{minor}"
    return "3.15"


def check_runtime(chalice_python: str) -> None:
    """ValueError unless Chalice would deploy to the pinned ``LAMBDA_PYTHON`` (``chalice_python``:
    what ``chalice_python_version`` says for the interpreter that will run ``chalice deploy``)."""
    if chalice_python != LAMBDA_PYTHON:
        raise ValueError(f"chalice deploys to the Python it runs under: python{chalice_python} here, but the "
                         f"control plane is pinned to python{LAMBDA_PYTHON} (its Powertools layer is built per "
                         f"Python version); run from a Python {LAMBDA_PYTHON} venv (`make setup`)")


def powertools_layer(python_version: str = LAMBDA_PYTHON, architecture: str = ARCHITECTURE,
                     powertools_version: str = POWERTOOLS_VERSION) -> Tuple[str, int]:
    """The layer's name and version number for that Python, architecture and Powertools release;
    ValueError when Powertools publishes no such layer or its number is not known here."""
    if python_version not in LAYER_PYTHONS:
        raise ValueError(f"Powertools publishes no V3 layer for Python {python_version}; "
                         f"it does for {', '.join(LAYER_PYTHONS)}")
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture {architecture!r}: Lambda's are {' and '.join(ARCHITECTURES)}")
    if powertools_version not in POWERTOOLS_LAYER_VERSIONS:
        raise ValueError(f"no layer version is known for Powertools {powertools_version} (known: "
                         f"{', '.join(sorted(POWERTOOLS_LAYER_VERSIONS))}): add it to POWERTOOLS_LAYER_VERSIONS, "
                         f"as SSM names it: {powertools_layer_parameter(python_version, architecture, powertools_version)}")
    name = f"AWSLambdaPowertoolsPythonV3-python{python_version.replace('.', '')}-{architecture}"
    return name, POWERTOOLS_LAYER_VERSIONS[powertools_version]


def powertools_layer_arn(region: str, python_version: str = LAMBDA_PYTHON, architecture: str = ARCHITECTURE,
                         powertools_version: str = POWERTOOLS_VERSION) -> str:
    """The ARN of the AWS-managed Powertools layer version for ``powertools_version``, in ``region``, for
    that Python and architecture. ValueError for a region outside the commercial partition (China and
    GovCloud layers come from other accounts), or a Python, architecture or release without a layer."""
    if not _REGION.fullmatch(region):
        raise ValueError(f"{region!r} is not an AWS region name (like eu-west-1)")
    if region.startswith(("cn-", "us-gov-", "us-iso")):
        raise ValueError(f"{region}: outside the commercial partition the Powertools layer is published by "
                         f"another account; only commercial regions are supported")
    name, version = powertools_layer(python_version, architecture, powertools_version)
    return f"arn:aws:lambda:{region}:{POWERTOOLS_ACCOUNT}:layer:{name}:{version}"


def powertools_layer_parameter(python_version: str = LAMBDA_PYTHON, architecture: str = ARCHITECTURE,
                               powertools_version: str = POWERTOOLS_VERSION) -> str:
    """The public SSM parameter whose value (in each region) is the layer ARN of that Powertools release."""
    return f"/aws/service/powertools/python/{architecture}/python{python_version}/{powertools_version}"
