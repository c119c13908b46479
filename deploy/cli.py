"""``dogbreeds aws``: the control plane on AWS, one command up and one down (also ``python -m deploy.cli``).

    dogbreeds aws deploy --bucket B --region R [--create-bucket] [--stage dev] [--role-name N]
                         [--endpoint-name E] [--set DOGBREEDS_SERVERLESS=true ...] [--plan]
    dogbreeds aws destroy [--stage dev] [--delete-bucket] [--yes]

``deploy`` makes the SageMaker execution role and its policy, the bucket (with --create-bucket), the
bucket's S3 -> EventBridge notifications (merged into what it has), the training code package, the
Chalice configuration and the Chalice app (Chalice's own deployer), then prints the API's URL and
records the stage (``deploy.target``). Run again, it changes only what differs, and nothing when
nothing does; options left out keep the stage's values (``.chalice/config.json``), ``--set`` replaces
its settings. ``--plan`` prints what it would change and calls no mutating API. ``destroy`` lists what
deploy and the pipeline made for the stage (endpoint first), and deletes it with ``--yes``; the bucket
and its data stay unless ``--delete-bucket`` (only a bucket deploy created).

Uses your AWS credentials (the usual chain: environment, ``~/.aws``, ``--profile``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from chalicelib.config import ENV_VARIABLES, ConfigError, HostingConfig, PipelineConfig
from deploy import CHALICE_DIR, REPO_ROOT, configure, costs, stack, target
from deploy.changes import DeployError, Plan, default_role_name, deploy_plan, destroy_plan
from deploy.control_plane import StageApp, api_url

# Set by deploy from its own options (--bucket, --region, the role, --endpoint-name), not by --set.
OWN_VARIABLES = ("DOGBREEDS_BUCKET", "DOGBREEDS_ROLE_ARN", "DOGBREEDS_REGION", "DOGBREEDS_ENDPOINT_NAME")


def plan_costs(pipeline: PipelineConfig, region: str, session) -> List[str]:
    """The lines that close ``deploy --plan``'s output: what the running parts cost per month, at Price
    List API prices when it answers, else the shipped table's (``deploy.costs``; GetProducts only)."""
    return list(costs.cost_report(pipeline, region, session).lines)


def plan_lines(title: str, plan: Plan, cost_lines: Sequence[str] = ()) -> List[str]:
    """``--plan``'s output: the title, each change and what stays as it is, then the cost lines."""
    lines = [title]
    lines += [f"  {line}" for line in plan.lines()]
    if not plan.changes:
        lines.append("  nothing to change")
    if cost_lines:
        lines += ["", *cost_lines]
    return lines


def stage_environment(stage: str, chalice_dir: Path) -> Dict[str, str]:
    """The Lambda environment of ``stage`` in ``.chalice/config.json`` (empty when there is none)."""
    try:
        config = json.loads((chalice_dir / ".chalice" / "config.json").read_text(encoding="utf-8"))
        return dict(config["stages"][stage]["environment_variables"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def stage_settings(environment: Dict[str, str]) -> Dict[str, str]:
    """The ``--set`` settings in a stage's environment: its ``DOGBREEDS_*`` variables other than those
    deploy sets from its own options."""
    return {name: value for name, value in environment.items()
            if name in ENV_VARIABLES and name not in OWN_VARIABLES}


def _role_name(args, environment: Dict[str, str]) -> str:
    if args.role_name:
        return args.role_name
    try:
        return configure.parse_role_arn(environment["DOGBREEDS_ROLE_ARN"])["name"]
    except (KeyError, ValueError):
        return default_role_name(args.stage)


def _session(region: Optional[str], profile: Optional[str]):
    import boto3
    try:
        return boto3.session.Session(region_name=region, profile_name=profile)
    except Exception as exc:                      # botocore's ProfileNotFound
        raise DeployError(str(exc)) from exc


def _region(aws: stack.Aws) -> str:
    if not aws.region:
        raise DeployError("no region: pass --region (or set AWS_DEFAULT_REGION)")
    return aws.region


def cmd_deploy(args, aws: stack.Aws, out=print) -> int:
    environment = stage_environment(args.stage, args.chalice_dir)
    bucket = args.bucket or environment.get("DOGBREEDS_BUCKET")
    if not bucket:
        raise DeployError(f"--bucket is required (stage {args.stage!r} has no configuration yet)")
    region = _region(aws)
    account = aws.account()
    app = StageApp(args.stage, args.chalice_dir, ui_out=args.chalice_out)
    want, configuration, pipeline = stack.wanted(
        app, region=region, account=account, bucket=bucket, role_name=_role_name(args, environment),
        endpoint_name=args.endpoint_name or environment.get("DOGBREEDS_ENDPOINT_NAME"),
        settings=configure._settings(args.set) if args.set else stage_settings(environment),
        create_bucket=args.create_bucket, source_root=args.source_root)
    plan = deploy_plan(want, stack.describe(aws, want, app))
    title = f"stage {args.stage} in {region}, account {account}, bucket {bucket}"
    if args.plan:
        for line in plan_lines(f"dogbreeds aws deploy --plan: {title}", plan,
                               plan_costs(pipeline, region, aws.session)):
            out(line)
        return 0

    app.write(configuration)
    if plan.changes:
        out(f"deploying {title}")
        stack.apply(aws, plan, app, log=lambda line: out(f"  {line}"))
    else:
        out(f"nothing to change: {title} is as wanted")
        for line in plan.lines():
            out(f"  {line}")
    url = api_url(app.record())
    if not url:
        raise DeployError(f"Chalice's record {app.record_path} names no REST API: run deploy again")
    path = target.save(target.Target(args.stage, region, bucket, url, pipeline.hosting.endpoint_name, account),
                       args.chalice_dir)
    out(f"API: {url}")
    out(f"recorded in {path}")
    return 0


def cmd_destroy(args, aws: stack.Aws, out=print) -> int:
    environment = stage_environment(args.stage, args.chalice_dir)
    bucket = args.bucket or environment.get("DOGBREEDS_BUCKET")
    if not bucket:
        raise DeployError(f"stage {args.stage!r} has no configuration here: pass --bucket and --region")
    region = _region(aws)
    account = aws.account()
    app = StageApp(args.stage, args.chalice_dir, ui_out=args.chalice_out)
    endpoint_name = (args.endpoint_name or environment.get("DOGBREEDS_ENDPOINT_NAME")
                     or HostingConfig().endpoint_name)
    deployed = stack.describe_deployed(aws, stage=args.stage, bucket=bucket, role_name=_role_name(args, environment),
                                       account=account, endpoint_name=endpoint_name, app=app,
                                       list_objects=args.delete_bucket)
    plan = destroy_plan(deployed, delete_bucket=args.delete_bucket)
    title = f"stage {args.stage} in {region}, account {account}, bucket {bucket}"
    if not plan.changes:
        out(f"nothing to remove: {title}")
        for line in plan.lines("kept"):
            out(f"  {line}")
        target.target_path(args.stage, args.chalice_dir).unlink(missing_ok=True)
        return 0
    if not args.yes:
        out(f"would remove {title}:")
        for line in plan.lines("kept"):
            out(f"  {line}")
        out("nothing deleted: run again with --yes to delete the above")
        return 1
    out(f"removing {title}:")
    stack.apply(aws, plan, app, log=lambda line: out(f"  {line}"))
    for line in Plan((), plan.unchanged).lines("kept"):
        out(f"  {line}")
    target.target_path(args.stage, args.chalice_dir).unlink(missing_ok=True)
    out(f"removed: stage {args.stage}")
    return 0


def _stage(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_]+", value):
        raise argparse.ArgumentTypeError("letters, digits and underscores only (it names functions and files)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dogbreeds aws", description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--stage", type=_stage, default=target.DEFAULT_STAGE, help="the Chalice stage (default dev)")
    common.add_argument("--region", help="the AWS region (default: the stage's recorded one, else your AWS config's)")
    common.add_argument("--profile", help="the AWS profile whose credentials to use")
    common.add_argument("--bucket", help="the pipeline's S3 bucket (default: the stage's recorded one)")
    common.add_argument("--role-name", help="the SageMaker execution role (default dogbreeds-sagemaker-<stage>)")
    common.add_argument("--endpoint-name", help=f"the SageMaker endpoint (default {HostingConfig().endpoint_name})")
    common.add_argument("--chalice-dir", type=Path, default=CHALICE_DIR, help=argparse.SUPPRESS)
    common.add_argument("--source-root", type=Path, default=REPO_ROOT, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    deploy = commands.add_parser("deploy", parents=[common], help="create or update the stage; prints the API URL")
    deploy.add_argument("--plan", action="store_true", help="print what would change and cost; change nothing")
    deploy.add_argument("--create-bucket", action="store_true", help="create the bucket when it does not exist")
    deploy.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="another DOGBREEDS_* setting, e.g. DOGBREEDS_SERVERLESS=true (repeatable)")
    deploy.set_defaults(run=cmd_deploy)

    destroy = commands.add_parser("destroy", parents=[common], help="list, then with --yes delete, what deploy made")
    destroy.add_argument("--yes", action="store_true", help="delete what is listed")
    destroy.add_argument("--delete-bucket", action="store_true",
                         help="also empty and delete the bucket (only one deploy --create-bucket created)")
    destroy.set_defaults(run=cmd_destroy)
    return parser


def main(argv: Optional[List[str]] = None, session=None, out=print, chalice_out=None) -> int:
    """Run ``dogbreeds aws <argv>``; ``session``: a boto3 session to use instead of a new one;
    ``chalice_out``: where Chalice's progress lines go (default stdout)."""
    args = build_parser().parse_args(argv)
    args.chalice_out = chalice_out
    try:
        if session is None:
            region = args.region or stage_environment(args.stage, args.chalice_dir).get("DOGBREEDS_REGION")
            session = _session(region, args.profile)
        elif args.region and args.region != session.region_name:
            raise DeployError(f"--region {args.region} differs from the session's {session.region_name}")
        return args.run(args, stack.Aws(session), out)
    except (DeployError, ConfigError, ValueError) as exc:
        print(f"dogbreeds aws {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from botocore.exceptions import BotoCoreError
        from chalice.deploy.deployer import ChaliceDeploymentError
        from chalicelib.control import error_code
        # AWS refused a request, or could not be reached: say so; a traceback would not help the user.
        if isinstance(exc, (ChaliceDeploymentError, BotoCoreError)) or error_code(exc):
            print(f"dogbreeds aws {args.command}: stopped: {exc}\n  what was done before stays done; run the same "
                  f"command again to finish (it plans only what is left)", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
