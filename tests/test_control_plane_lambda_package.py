"""What the Lambda needs: ``app.py`` imports nothing heavy, and nothing that the runtime (boto3) and the
Powertools layer do not provide, so ``requirements.txt`` lists nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from aws_support import REGION

from deploy import lambda_package, lambda_runtime
from paths import ROOT


FORBIDDEN = {"torch", "torchvision", "PIL", "numpy", "sagemaker", "moto", "pandas", "smdebug", "requests"}


def provided_modules(distributions) -> set:
    """The top-level modules these distributions install here (what the runtime or the layer provides)."""
    return {path.name.removesuffix(".py") for name in distributions
            for path in lambda_package.installed_top_levels(name)}


# What the Lambda finds besides our package: the runtime's boto3 stack and the layer's Powertools with
# the X-Ray SDK, as deploy/lambda_runtime.py names them, and Chalice's runtime, which chalice packages.
# botocore imports certifi when it is installed (here it is), else it uses the CA bundle it ships.
ALLOWED = (provided_modules(lambda_runtime.RUNTIME_DISTRIBUTIONS) | provided_modules(lambda_runtime.LAYER_DISTRIBUTIONS)
           | {"chalice", "certifi"})

IMPORT_PROBE = """
import json, sys
before = set(sys.modules)
import app
top = lambda names: sorted({name.split(".")[0] for name in names})
print(json.dumps({"all": top(sys.modules), "loaded": top(set(sys.modules) - before),
                  "stdlib": sorted(sys.stdlib_module_names)}))
"""


def import_app(**environment) -> dict:
    """What importing app.py in a fresh interpreter loads, with Lambda's environment plus ``environment``."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "AWS_LAMBDA_FUNCTION_NAME": "dogbreeds-dev", "AWS_REGION": REGION, **environment}    # as on Lambda
    # From chalice_app/, as Lambda imports it: app.py, chalicelib/ and batch/ (vendored) top-level.
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT / "chalice_app", env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    return json.loads(probe.stdout.strip().splitlines()[-1])


def test_app_imports_only_powertools_chalice_and_the_boto_stack():
    report = import_app()
    loaded = set(report["loaded"])             # what importing app.py added to sys.modules
    third_party = loaded - set(report["stdlib"]) - {"app", "chalicelib", "batch"}
    assert {"app", "chalicelib", "batch", "aws_lambda_powertools", "chalice"} <= loaded     # the probe measured something
    assert not set(report["all"]) & FORBIDDEN, sorted(set(report["all"]) & FORBIDDEN)
    assert third_party <= ALLOWED, sorted(third_party - ALLOWED)


def test_the_x_ray_sdk_is_loaded_only_when_aws_calls_are_traced():
    # the X-Ray SDK is most of a cold start: Powertools' Tracer (subsegments per boto3 call) is opt-in
    assert "aws_xray_sdk" not in import_app()["loaded"]
    assert "aws_xray_sdk" in import_app(DOGBREEDS_TRACE_AWS_CALLS="true")["loaded"]


def test_the_runtime_and_the_layer_distributions_name_the_modules_app_needs():
    assert provided_modules(lambda_runtime.RUNTIME_DISTRIBUTIONS) >= {"boto3", "botocore", "s3transfer", "dateutil"}
    assert provided_modules(lambda_runtime.LAYER_DISTRIBUTIONS) >= {"aws_lambda_powertools", "aws_xray_sdk", "wrapt"}
    assert not ALLOWED & FORBIDDEN


def test_the_lambda_package_requires_nothing_and_says_why():
    requirements = ROOT / "chalice_app" / "requirements.txt"
    lines = [line.strip() for line in requirements.read_text().splitlines()]
    assert lines and all(line.startswith("#") for line in lines if line)        # comments only
    assert not lambda_package.has_requirements(requirements)                    # so neither chalice nor we run pip
    comment = " ".join(lines)
    assert "runtime" in comment and "layer" in comment and "deploy/lambda_runtime.py" in comment
