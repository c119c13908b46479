"""``dogbreeds``: the pipeline on this machine, one command per thing a user does.

    dogbreeds up                      start the local stack (bucket, SageMaker, events, API) in the foreground
    dogbreeds publish FOLDER          copy an ImageFolder (train/valid/test/<breed>/...) into the bucket, then
                                      write its _READY marker: tuning, training, gate and deployment follow
    dogbreeds status [--watch]        the pipeline and its jobs
    dogbreeds logs [JOB] [--follow]   a job's log (default: the newest training job)
    dogbreeds predict IMAGE...        the top breeds through POST /predict
    dogbreeds batch FOLDER            classify a folder through batch transform; says where predictions.csv is
    dogbreeds report [JOB] [--open]   the training report (report.html) of the instrumented run
    dogbreeds console [--aws]         the web console: try a photo, watch the pipeline, roll back (a local
                                      stack serves it at its API's /; --aws serves it here, signed to AWS)
    dogbreeds rollback MODEL          serve again a model the gate deployed before (`status --json` lists
                                      them under history); --reason says why, for the gate's record
    dogbreeds fetch                   download the public Udacity dog-breed dataset (resume, checksum)
    dogbreeds demo                    the whole main job on generated images
    dogbreeds aws deploy|destroy      the same pipeline on AWS: one command up (--plan first), one down

Every command takes ``--data-dir`` (default ``$DOGBREEDS_HOME``, else ``runs/local`` in this checkout):
the stack's bucket, job records, logs and event spool live there, so ``publish``, ``status`` and
``logs`` work from any terminal, and ``publish`` also while no stack runs (the stack picks the
marker's event up when it starts). ``predict`` and ``batch`` need the running stack's API.

On AWS: ``publish``, ``status``, ``predict``, ``batch``, ``report`` and ``rollback`` take ``--aws`` (the deployment of
stage dev), ``--stage S``, or ``--api URL`` (with ``--region R``) and ``--bucket B``: the same command,
the same output, against the deployed API (SigV4-signed with your AWS credentials; ``--aws-profile``)
and bucket. ``dogbreeds aws deploy`` records where a stage's deployment is.

``up --fail-endpoint-once [REASON]`` makes the endpoint's next create or update end Failed, as a
SageMaker endpoint does without capacity or with a bad image: a way to watch the pipeline recover.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

from chalicelib.config import PROFILES, STRATEGIES, ConfigError, PipelineConfig, QualityGate, TuningConfig
from dogbreeds import client, progress
from dogbreeds.client import Home, UserError
from deploy.target import DEFAULT_STAGE
from dogbreeds.localaws.endpoints import DEFAULT_FAULT_REASON
from dogbreeds.stack import LocalStack, local_config


def stack_config(args) -> PipelineConfig:
    """The local stack's configuration from ``up``'s options: the profile with what they change."""
    return local_config(args.profile, strategy=args.strategy, trials=args.trials, parallel=args.parallel,
                        trial_epochs=args.trial_epochs, epochs=args.epochs, accuracy_floor=args.accuracy_floor,
                        seed=args.seed)


def cmd_up(args) -> int:
    home = Home(args.data_dir)
    already = home.running()
    if already:
        raise UserError(f"a stack already runs for {home.data_dir} (pid {already['pid']}, API {already['api_url']})")
    config = stack_config(args)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")   # EMF lines are CloudWatch's, not a terminal's
    progress.plain_logging()
    stack = LocalStack(home.data_dir, config=config, api_port=args.port, cores=args.cores,
                       fail_endpoint_once=args.fail_endpoint_once)
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"starting the local stack in {home.data_dir} (profile {args.profile}) ...", flush=True)
    try:
        stack.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        raise UserError(f"port {args.port} on 127.0.0.1 is in use: choose another with --port N "
                        f"(--port 0 takes any free one)") from exc
    stack.app_module.logger.setLevel("ERROR")   # the feed below says what the handlers' warnings say
    try:
        print(f"  API      {stack.api_url}   (POST /predict, GET /status, POST /batch, GET /batch/<id>)")
        print(f"  bucket   {stack.raw_s3.prefix_path(stack.config.bucket, '')}")
        if args.fail_endpoint_once:
            print(f"  failure  the next create or update of endpoint {stack.endpoint_name} ends Failed: "
                  f"{args.fail_endpoint_once}")
        print("  publish  dogbreeds publish <folder with train/ valid/ test/>   (Ctrl-C stops the stack)",
              flush=True)
        watcher = progress.Watcher(home.data_dir, stack.config.bucket)
        if watcher.changes():      # what happened before this start is history: `dogbreeds status` shows it
            print(f"  earlier  {len(watcher.seen)} records of earlier work: `dogbreeds status` lists them")
        while not stopping:
            for line in watcher.changes():
                print(progress.stamp(line), flush=True)
            time.sleep(args.poll)
        print("stopping: running jobs end Stopped, endpoints shut down ...", flush=True)
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def place(args) -> client.Stack:
    """Where a verb runs: the local stack of ``--data-dir``, or with ``--aws``, ``--stage``, ``--api`` or
    ``--bucket`` the deployment on AWS (``dogbreeds.cloud``)."""
    if not (args.aws or args.stage or args.api or args.bucket):
        if args.region or args.aws_profile:
            raise UserError("--region and --aws-profile go with --aws, --stage S, --api URL or --bucket B")
        return Home(args.data_dir)
    from dogbreeds import cloud
    stage = args.stage or (cloud.DEFAULT_STAGE if args.aws else None)
    target = cloud.resolve_target(stage, args.api, args.region, args.bucket)
    return cloud.Cloud(target, profile=args.aws_profile, data_dir=cloud.cloud_home(args.data_dir, target.stage))


def _again(args) -> str:
    """The options that name the same deployment again, for a command a message suggests."""
    named = [f"--{name.replace('_', '-')} {getattr(args, name)}" for name in ("stage", "api", "region", "aws_profile")
             if getattr(args, name)]
    return " ".join((["--aws"] if args.aws and not args.stage else []) + named)


def cmd_publish(args) -> int:
    stack = place(args)
    on_aws = not isinstance(stack, Home)
    if on_aws and args.follow:
        stack.require_api()                    # following reads GET /status: say so before uploading anything
    run_key = client.publish_dataset(stack, Path(args.folder), args.name)
    if on_aws:
        follow = (f"`dogbreeds status {_again(args)} --watch`" if stack.target.api_url else
                  "`dogbreeds status --aws --watch` (or --stage S, --api URL)")
        print(f"S3 tells EventBridge, and the control plane takes it from there: tuning, then the instrumented "
              f"training, the gate and the deployment. Follow with {follow}.")
    elif stack.running():
        print("the stack is on it: tuning, then the instrumented training, the gate and the deployment. "
              "Follow with `dogbreeds status --watch`.")
    else:
        print(f"no stack runs for {stack.data_dir} right now: `dogbreeds up` starts one, and it picks this up.")
    if args.follow:
        return client.follow_run(stack, run_key, timeout=args.timeout)
    return 0


def cmd_status(args) -> int:
    stack = place(args)
    if args.json:
        print(json.dumps(stack.status_document(), indent=1, default=str))
        return 0
    print("\n".join(client.status_lines(stack)))
    if args.watch:
        watcher = stack.watcher()
        watcher.changes()        # what was just printed is not news
        print("\nwatching (Ctrl-C stops) ...", flush=True)
        try:
            while True:
                for line in watcher.changes():
                    print(progress.stamp(line), flush=True)
                time.sleep(max(1.0, stack.poll_interval))
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_logs(args) -> int:
    home = Home(args.data_dir)
    name, log = client.training_log(home, args.job)
    print(f"== {log}", file=sys.stderr, flush=True)
    for chunk in client.log_chunks(home, name, log, follow=args.follow):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    if args.follow:
        print(f"== job {name} {client.job_status(home, name)}", file=sys.stderr)
    return 0


def cmd_predict(args) -> int:
    stack = place(args)
    failed = 0
    for image in args.images:
        path = Path(image)
        if not path.is_file():
            print(f"{image}: no such file", file=sys.stderr)
            failed += 1
            continue
        explain_to = None
        if args.explain is not None:
            out = Path(args.explain)
            explain_to = out if len(args.images) == 1 else out.with_name(f"{out.stem}-{path.stem}.png")
        try:
            predictions = client.predict_file(stack, path, args.top_k, explain_to)
        except client.AccessRefused:
            raise                    # the caller is refused: every other image would be too
        except UserError as exc:
            print(f"{image}: {exc}", file=sys.stderr)
            failed += 1
            continue
        guesses = ", ".join(f"{p['label']} {p['probability']:.1%}" for p in predictions)
        print(f"{image}: {guesses}" + (f" (heatmap over the photo: {explain_to})" if explain_to else ""))
    return 1 if failed else 0


def cmd_batch(args) -> int:
    client.run_batch(place(args), Path(args.folder), args.id, wait=not args.no_wait, timeout=args.timeout)
    return 0


def cmd_report(args) -> int:
    report = place(args).fetch_report(args.job)
    print(f"report: {report}")
    issues = client.rules_with_issues(report)
    if issues is not None:
        print(f"rules with issues: {', '.join(issues) or 'none'}")
    if args.open:
        import webbrowser
        webbrowser.open(report.as_uri())
    return 0


def cmd_rollback(args) -> int:
    view = client.serve_model(place(args), args.model, args.reason)
    print("\n".join(client.served_lines(view)))
    return 0


def cmd_console(args) -> int:
    stack = place(args)
    if isinstance(stack, Home):
        url = stack.api_url() + "/"
        print(f"the console: {url}   (served by the stack of {stack.data_dir})")
        if args.open:
            import webbrowser
            webbrowser.open(url)
        return 0
    from dogbreeds.console_aws import make_server
    stack.require_api()
    try:
        server = make_server(stack, args.port)
    except OSError as exc:
        raise UserError(f"port {args.port} on 127.0.0.1 cannot be used ({exc.strerror}): choose another with "
                        f"--port N (0 takes any free one)") from exc
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"the console of {stack.target.api_url}: {url}   (on this machine only; its calls are signed with your "
          f"AWS credentials; Ctrl-C stops it)", flush=True)
    if args.open:
        import webbrowser
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_fetch(args) -> int:
    from dogbreeds import fetch
    return fetch.main(args.rest)


def cmd_demo(args) -> int:
    from dogbreeds import demo
    return demo.main(args.rest)


def cmd_aws(args) -> int:
    from deploy import cli as aws
    return aws.main(args.rest)


def _per_profile(value) -> str:
    """``per profile: default 6, quick 3``: what each profile sets, for an option's help."""
    return "per profile: " + ", ".join(f"{name} {value(profile)}" for name, profile in PROFILES.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dogbreeds", description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=client.default_home(),
                        help="the stack's data directory (default: $DOGBREEDS_HOME or runs/local)")
    cloud_options = argparse.ArgumentParser(add_help=False)
    on_aws = cloud_options.add_argument_group("on AWS (instead of the local stack)")
    on_aws.add_argument("--aws", action="store_true",
                        help=f"the deployment of stage {DEFAULT_STAGE} (the record `dogbreeds aws deploy` wrote)")
    on_aws.add_argument("--stage", metavar="S", help="the deployment of stage S (implies --aws)")
    on_aws.add_argument("--api", metavar="URL", help="the API's URL, instead of the record's (implies --aws)")
    on_aws.add_argument("--region", metavar="R", help="the API's region (default: the record's, else the URL's)")
    on_aws.add_argument("--bucket", metavar="B", help="the bucket, B or s3://B (default: the record's)")
    on_aws.add_argument("--aws-profile", metavar="NAME",
                        help="AWS credentials profile (default: boto3's chain: AWS_PROFILE, environment, SSO, role)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", parents=[common], help="start the local stack in the foreground")
    up.add_argument("--port", type=int, default=8000, help="API port on 127.0.0.1 (0: any free port)")
    up.add_argument("--profile", choices=tuple(PROFILES), default="quick",
                    help="the pipeline's sizing (default: quick, for a CPU); "
                    + "; ".join(f"{name}: {profile.summary()}" for name, profile in PROFILES.items()))
    up.add_argument("--cores", type=int, default=None, help="cores jobs may use (default: all)")
    up.add_argument("--strategy", choices=STRATEGIES, help=f"tuning strategy (default {TuningConfig.strategy})")
    up.add_argument("--trials", type=int, help=f"most tuning trials ({_per_profile(lambda p: p.max_training_jobs)})")
    up.add_argument("--parallel", type=int, help="trials at once, within the cores "
                                                 f"({_per_profile(lambda p: p.max_parallel_training_jobs)})")
    up.add_argument("--trial-epochs", type=int, help=f"epochs per trial ({_per_profile(lambda p: p.trial['epochs'])})")
    up.add_argument("--epochs", type=int,
                    help=f"epochs of the instrumented run ({_per_profile(lambda p: p.final['epochs'])})")
    up.add_argument("--accuracy-floor", type=float,
                    help=f"the gate's test-accuracy floor (default {QualityGate().accuracy_floor})")
    up.add_argument("--seed", type=int, help="the tuner's seed (default: none, a new choice each time)")
    up.add_argument("--fail-endpoint-once", nargs="?", const=DEFAULT_FAULT_REASON, metavar="REASON",
                    help="make the endpoint's next create end Failed, or its next update fail and roll back (with "
                         "REASON), as SageMaker's do without capacity or with a bad image: to watch the pipeline "
                         "recover")
    up.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    up.set_defaults(run=cmd_up)

    publish = commands.add_parser("publish", parents=[common, cloud_options], help="publish an ImageFolder as a dataset")
    publish.add_argument("folder", help="the dataset's root: train/<breed>/<image> (and valid/, test/)")
    publish.add_argument("--name", help="dataset name (default: the folder's name)")
    publish.add_argument("--follow", action="store_true", help="follow the run until it is deployed or fails")
    publish.add_argument("--timeout", type=float, default=6 * 3600, help=argparse.SUPPRESS)
    publish.set_defaults(run=cmd_publish)

    status = commands.add_parser("status", parents=[common, cloud_options], help="the pipeline and its jobs")
    status.add_argument("--watch", action="store_true", help="then print what changes")
    status.add_argument("--json", action="store_true", help="state and job records as JSON")
    status.set_defaults(run=cmd_status)

    logs = commands.add_parser("logs", parents=[common], help="a training job's log")
    logs.add_argument("job", nargs="?", help="job name (default: the newest training job)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(run=cmd_logs)

    predict = commands.add_parser("predict", parents=[common, cloud_options], help="classify images through POST /predict")
    predict.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    predict.add_argument("--top-k", type=int, help="how many breeds to show (default: the endpoint's)")
    predict.add_argument("--explain", metavar="OUT.png",
                         help="also write the photo with a heatmap of where the model looked (Grad-CAM of the "
                              "top breed); with several images, OUT-<image name>.png each")
    predict.set_defaults(run=cmd_predict)

    batch = commands.add_parser("batch", parents=[common, cloud_options], help="classify a folder through batch transform")
    batch.add_argument("folder", help="a folder of images (sub-folders included)")
    batch.add_argument("--id", help="batch id (default: the folder's name and the time)")
    batch.add_argument("--no-wait", action="store_true", help="start it and return")
    batch.add_argument("--timeout", type=float, default=3600, help="seconds to wait for it (default 3600)")
    batch.set_defaults(run=cmd_batch)

    report = commands.add_parser("report", parents=[common, cloud_options], help="the instrumented run's report.html")
    report.add_argument("job", nargs="?", help="training job (default: the current run's)")
    report.add_argument("--open", action="store_true", help="open it in a browser")
    report.set_defaults(run=cmd_report)

    console = commands.add_parser("console", parents=[common, cloud_options],
                                  help="the web console (a local stack serves it; --aws serves it here, signed)")
    console.add_argument("--port", type=int, default=8080, help="with --aws: the port on 127.0.0.1 (0: any free one)")
    console.add_argument("--open", action="store_true", help="open it in a browser")
    console.set_defaults(run=cmd_console)

    rollback = commands.add_parser("rollback", parents=[common, cloud_options],
                                   help="serve again a model the gate deployed before")
    rollback.add_argument("model", help="the model's name (GET /status's history lists them: model-<dataset>-<hash>)")
    rollback.add_argument("--reason", help="why: kept in the gate's record with who chose it")
    rollback.set_defaults(run=cmd_rollback)

    for name, run, what in (("fetch", cmd_fetch, "download the Udacity dog-breed dataset (see --help)"),
                            ("demo", cmd_demo, "the whole main job on generated images (see --help)"),
                            ("aws", cmd_aws, "deploy to AWS, or destroy, with --plan first (see --help)")):
        sub = commands.add_parser(name, help=what, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(run=run)
    return parser


PASS_THROUGH = {"fetch": cmd_fetch, "demo": cmd_demo, "aws": cmd_aws}    # their own parsers take every argument after the name


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        return PASS_THROUGH[argv[0]](argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (UserError, ConfigError) as exc:
        print(f"dogbreeds {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from dogbreeds.cloud import aws_failure     # botocore's errors, in words; any other is a bug: raised
        message = aws_failure(exc)
        if message is None:
            raise
        print(f"dogbreeds {args.command}: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:          # `dogbreeds status | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
