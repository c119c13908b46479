"""Write the Chalice configuration and the IAM policy files of one deployment stage.

    python -m deploy.configure --bucket B --role-arn arn:aws:iam::123456789012:role/dogbreeds-sagemaker \
        --region eu-west-1 [--stage dev] [--endpoint-name dogbreeds] [--set DOGBREEDS_SERVERLESS=true ...]

writes, in ``chalice_app/.chalice/`` (git ignores them: they name your account):

- ``config.json``: app ``dogbreeds``, our own policy (``autogen_policy: false``), 60 s / 512 MB
  functions, X-Ray on, and the stage's ``DOGBREEDS_*`` environment, architecture and layer: the
  AWS-managed Powertools layer of the region for the pinned runtime (``deploy.lambda_runtime``), so
  that the package holds only our code. Other stages already in the file are kept;
- ``policy-<stage>.json``: the Lambda's least-privilege policy (``deploy.iam.lambda_policy``);
- ``sagemaker-role-trust.json`` and ``sagemaker-role-policy-<stage>.json``: the jobs' execution role;

and prints the commands to run once: create that role, turn on the bucket's EventBridge notifications,
upload the training code, deploy. The environment is checked with ``PipelineConfig.from_env`` first,
exactly as the Lambda will read it, so a bad value fails here and not in the first event; so is the
Python that ``chalice deploy`` will pick (the interpreter's), against the pinned runtime.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List, Optional

from chalicelib.config import ENV_VARIABLES, PipelineConfig
from deploy import CHALICE_DIR, iam, lambda_runtime

LAMBDA_TIMEOUT_SECONDS = 60
LAMBDA_MEMORY_MB = 512
API_GATEWAY_STAGE = "api"
_ROLE_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):iam::(?P<account>\d{12}):role(?P<path>/(?:[^/]+/)*)(?P<name>[^/]+)")
# Set by configure itself, from its named options.
_OWN = ("DOGBREEDS_BUCKET", "DOGBREEDS_ROLE_ARN", "DOGBREEDS_REGION")


def parse_role_arn(role_arn: str) -> Dict[str, str]:
    """``{"partition", "account", "path", "name"}`` of an IAM role ARN; ValueError if it is not one."""
    match = _ROLE_ARN.fullmatch(role_arn)
    if not match:
        raise ValueError(f"{role_arn!r} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
    return match.groupdict()


def environment(bucket: str, role_arn: str, region: str, endpoint_name: Optional[str] = None,
                settings: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The Lambda's environment variables. ``settings``: further ``DOGBREEDS_*`` variables of
    ``ENV_VARIABLES`` (e.g. ``DOGBREEDS_SERVERLESS``)."""
    env = {"DOGBREEDS_BUCKET": bucket, "DOGBREEDS_ROLE_ARN": role_arn, "DOGBREEDS_REGION": region}
    for name, value in sorted((settings or {}).items()):
        if name not in ENV_VARIABLES:
            raise ValueError(f"{name} is not a setting of the control plane; known: {', '.join(sorted(ENV_VARIABLES))}")
        if name in _OWN:
            raise ValueError(f"{name} is set by --bucket, --role-arn and --region, not --set")
        env[name] = value
    if endpoint_name:
        env["DOGBREEDS_ENDPOINT_NAME"] = endpoint_name
    env["POWERTOOLS_SERVICE_NAME"] = iam.APP_NAME
    env["POWERTOOLS_METRICS_NAMESPACE"] = "DogBreeds"
    return env


def chalice_config(existing: Optional[dict], stage: str, env: Dict[str, str]) -> dict:
    """``existing`` (or an empty configuration) with this app's settings and ``stage``'s section, whose
    layer is the Powertools layer of ``env``'s ``DOGBREEDS_REGION``."""
    config = dict(existing or {})
    config.update({"version": "2.0", "app_name": iam.APP_NAME, "autogen_policy": False,
                   "lambda_timeout": LAMBDA_TIMEOUT_SECONDS, "lambda_memory_size": LAMBDA_MEMORY_MB,
                   "xray": True})
    stages = dict(config.get("stages") or {})
    # The layer brings Powertools and the X-Ray SDK; the runtime brings boto3 (deploy.lambda_runtime).
    stages[stage] = {"api_gateway_stage": API_GATEWAY_STAGE, "autogen_policy": False,
                     "iam_policy_file": policy_file_name(stage), "environment_variables": dict(env),
                     "lambda_architecture": lambda_runtime.ARCHITECTURE,
                     "layers": [lambda_runtime.powertools_layer_arn(env["DOGBREEDS_REGION"])]}
    config["stages"] = stages
    return config


def policy_file_name(stage: str) -> str:
    return f"policy-{stage}.json"


def _write_json(path: Path, document: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def configure(bucket: str, role_arn: str, region: str, stage: str = "dev", endpoint_name: Optional[str] = None,
              settings: Optional[Dict[str, str]] = None, account: Optional[str] = None,
              chalice_dir: Path = CHALICE_DIR) -> Dict[str, Path]:
    """Check the configuration, write the four files; return their paths by role."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", stage):
        raise ValueError(f"stage {stage!r}: letters, digits and underscores only (it names functions and files)")
    lambda_runtime.check_runtime(lambda_runtime.chalice_python_version())
    role = parse_role_arn(role_arn)
    env = environment(bucket, role_arn, region, endpoint_name, settings)
    pipeline = PipelineConfig.from_env(env)          # ConfigError: the Lambda would refuse this too
    account = account or role["account"]

    folder = Path(chalice_dir) / ".chalice"
    paths = {"config": folder / "config.json", "lambda_policy": folder / policy_file_name(stage),
             "role_trust": folder / "sagemaker-role-trust.json",
             "role_policy": folder / f"sagemaker-role-policy-{stage}.json"}
    existing = json.loads(paths["config"].read_text(encoding="utf-8")) if paths["config"].exists() else None
    _write_json(paths["config"], chalice_config(existing, stage, env))
    _write_json(paths["lambda_policy"], iam.lambda_policy(pipeline.bucket, role_arn, pipeline.region, account,
                                                          stage=stage, endpoint_name=pipeline.hosting.endpoint_name,
                                                          layout=pipeline.layout))
    role_documents = iam.sagemaker_execution_role(pipeline.bucket, region=pipeline.region, account=account,
                                                  layout=pipeline.layout, managed_debugger=pipeline.debugger.enabled)
    _write_json(paths["role_trust"], role_documents["trust"])
    _write_json(paths["role_policy"], role_documents["permissions"])
    return paths


def next_steps(bucket: str, role_arn: str, region: str, stage: str, paths: Dict[str, Path]) -> List[str]:
    """The commands to run once, in order, as lines to print."""
    role = parse_role_arn(role_arn)
    q = shlex.quote
    path_option = f" --path {q(role['path'])}" if role["path"] != "/" else ""
    chalice_dir = _shown(paths["config"].parent.parent)
    return [
        "Run once, in this order:",
        "",
        f"1. the SageMaker execution role {role['name']} (skip if it exists with these permissions):",
        f"   aws iam create-role --role-name {q(role['name'])}{path_option} "
        f"--assume-role-policy-document file://{_shown(paths['role_trust'])}",
        f"   aws iam put-role-policy --role-name {q(role['name'])} --policy-name {q(f'dogbreeds-{stage}')} "
        f"--policy-document file://{_shown(paths['role_policy'])}",
        "",
        "2. S3 -> EventBridge notifications on the bucket (this REPLACES the bucket's notification",
        f"   configuration: look at `aws s3api get-bucket-notification-configuration --bucket {q(bucket)}` first):",
        f"   aws s3api put-bucket-notification-configuration --bucket {q(bucket)} --region {q(region)} "
        "--notification-configuration '{\"EventBridgeConfiguration\": {}}'",
        "",
        "3. the training code package:",
        f"   python -m deploy.package_source --bucket {q(bucket)} --region {q(region)}",
        "",
        "4. the control plane (uses your AWS credentials and region; set AWS_DEFAULT_REGION to match);",
        "   batch/ is staged into its vendor/ folder first, so that chalice ships it beside chalicelib/:",
        "   python -m deploy.lambda_package --vendor-only",
        f"   cd {q(chalice_dir)} && AWS_DEFAULT_REGION={q(region)} chalice deploy --stage {q(stage)}",
    ]


def _settings(values: List[str]) -> Dict[str, str]:
    settings = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE")
        settings[name.strip()] = value.strip()
    return settings


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.configure",
                                     description="Write chalice_app/.chalice/config.json and the IAM policy files.")
    parser.add_argument("--bucket", required=True, help="the S3 bucket of datasets, batches, jobs and state")
    parser.add_argument("--role-arn", required=True, help="the IAM role SageMaker jobs and models run as")
    parser.add_argument("--region", required=True, help="the AWS region of the bucket, SageMaker and the Lambda")
    parser.add_argument("--stage", default="dev", help="the Chalice stage (default dev)")
    parser.add_argument("--endpoint-name", help="the SageMaker endpoint's name (default dogbreeds)")
    parser.add_argument("--account", help="the AWS account id (default: the role ARN's)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another DOGBREEDS_* setting, e.g. DOGBREEDS_SERVERLESS=true (repeatable)")
    parser.add_argument("--chalice-dir", type=Path, default=CHALICE_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        paths = configure(args.bucket, args.role_arn, args.region, args.stage, args.endpoint_name,
                          _settings(args.set), args.account, args.chalice_dir)
    except ValueError as exc:                         # ConfigError is one too
        print(f"not written: {exc}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(f"wrote {_shown(path)}")
    print()
    print("\n".join(next_steps(args.bucket, args.role_arn, args.region, args.stage, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
