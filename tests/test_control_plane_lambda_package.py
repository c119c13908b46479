"""What the Lambda package holds: ``app.py`` imports nothing heavy; ``requirements.txt`` lists Powertools
and the tested boto3 only."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys

from aws_support import REGION

from paths import ROOT


FORBIDDEN = {"torch", "torchvision", "PIL", "numpy", "sagemaker", "moto", "pandas", "smdebug", "requests"}
# Third-party packages importing app.py loads (measured), plus boto3 and s3transfer, which the Lambda
# runtime provides and control_plane() imports on first use.
ALLOWED = {"aws_lambda_powertools", "aws_xray_sdk", "wrapt",          # Powertools[tracer]
           "chalice",                                                # the runtime part chalice packages
           "botocore", "jmespath", "dateutil", "six", "urllib3", "certifi", "boto3", "s3transfer",
           "typing_extensions"}

IMPORT_PROBE = """
import json, sys
before = set(sys.modules)
import app
top = lambda names: sorted({name.split(".")[0] for name in names})
print(json.dumps({"all": top(sys.modules), "loaded": top(set(sys.modules) - before),
                  "stdlib": sorted(sys.stdlib_module_names)}))
"""


def test_app_imports_only_powertools_chalice_and_the_boto_stack():
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
           "AWS_LAMBDA_FUNCTION_NAME": "dogbreeds-dev", "AWS_REGION": REGION}    # as on Lambda
    # From chalice_app/, as Lambda imports it: app.py, chalicelib/ and batch/ (vendored) top-level.
    probe = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT / "chalice_app", env=env,
                           capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    loaded = set(report["loaded"])             # what importing app.py added to sys.modules
    third_party = loaded - set(report["stdlib"]) - {"app", "chalicelib", "batch"}
    assert {"app", "chalicelib", "batch", "aws_lambda_powertools", "chalice"} <= loaded     # the probe measured something
    assert not set(report["all"]) & FORBIDDEN, sorted(set(report["all"]) & FORBIDDEN)
    assert third_party <= ALLOWED, sorted(third_party - ALLOWED)


def test_the_lambda_package_requires_powertools_and_the_tested_boto3_only():
    lines = [line.strip() for line in (ROOT / "chalice_app" / "requirements.txt").read_text().splitlines()]
    requirements = [line for line in lines if line and not line.startswith("#")]
    pins = {}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9._-]+)(\[[a-z,]+\])?==([0-9.]+)", requirement)
        assert match, requirement
        name, extras, version = match.groups()
        pins[name] = (extras, version)
    assert set(pins) == {"aws-lambda-powertools", "boto3", "botocore"}
    assert pins["aws-lambda-powertools"][0] == "[tracer]"   # app.py's Tracer needs aws_xray_sdk, which this extra brings
    for name, (_, version) in pins.items():
        assert version == importlib.metadata.version(name), name    # what the tests ran against
