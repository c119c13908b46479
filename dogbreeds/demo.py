"""The main job on the embedded local default: the whole pipeline on generated images, one command.

    python -m dogbreeds.demo [--workdir runs/demo] [--classes 6] [--train-per-class 40]

1. generates a labelled ImageFolder (train/valid/test, one folder per breed);
2. starts the local stack: the unchanged Chalice control plane over the filesystem bucket, the
   Docker-free SageMaker, the event bus and the API on 127.0.0.1;
3. publishes the dataset exactly as ``dogbreeds publish`` does (copy, then the ``_READY`` marker)
   and follows what the control plane does with it: a tuning job (3 trials, Bayesian), the
   instrumented training run with the best trial's hyperparameters, the quality gate, the endpoint;
4. classifies held-out images through ``POST /predict``;
5. runs a batch transform over the test folder and reads its ``predictions.csv``;
6. unpacks the training report; then stops the stack and says where everything is.

The stack's data stays in ``<workdir>/stack``: ``dogbreeds up --data-dir <workdir>/stack`` brings the
endpoint back, and ``dogbreeds status|logs|predict|batch|report --data-dir <workdir>/stack`` work on it.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from pathlib import Path

from chalicelib.config import PROFILES
from chalicelib.sagemaker_requests import split_s3_uri
from dogbreeds import client, progress
from dogbreeds.stack import ROOT, LocalStack, local_config
from dogbreeds.synthetic import generate_dataset
from model_code.inference import display_label


def say(line: str) -> None:
    print(line, flush=True)


def batch_accuracy(csv_path: Path) -> tuple:
    """(right, rows) of ``predictions.csv`` whose image sits in a ``<n>.<breed>`` folder named after its label."""
    right = total = 0
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            truth = display_label(row["image_key"].split("/")[-2])
            total += 1
            right += row["top_label"] == truth
    return right, total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="dogbreeds demo", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--show", type=int, default=6, help="how many test images to classify through /predict")
    parser.add_argument("--seed", type=int, default=0, help="the tuner's seed (the trainer's is 0)")
    parser.add_argument("--timeout", type=float, default=1500, help="seconds to wait for the deployment")
    args = parser.parse_args(argv)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")   # EMF lines are CloudWatch's, not a terminal's
    progress.plain_logging()
    started = time.monotonic()
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh run, not a resume of the last demo
    args.workdir.mkdir(parents=True)

    data = args.workdir / "data"
    say(f"1/6 generating {args.classes} breeds of labelled images into {data}")
    summary = generate_dataset(data, num_classes=args.classes, train_per_class=args.train_per_class,
                               valid_per_class=10, test_per_class=10, seed=0, min_side=64, max_side=160)
    say(f"    {summary['images']} JPEG images in {summary['seconds']:.1f}s")

    say("2/6 starting the local stack: filesystem bucket, SageMaker without Docker, event bus, API")
    stack = LocalStack(args.workdir / "stack", config=local_config("quick", seed=args.seed)).start()
    stack.app_module.logger.setLevel("ERROR")        # the progress lines below say what its warnings say
    try:
        home = client.Home(stack.data_dir)
        say(f"    API {stack.api_url}, bucket {stack.raw_s3.prefix_path(stack.config.bucket, '')}")

        say(f"3/6 publishing the dataset; the control plane tunes, trains, gates and deploys (profile quick: "
            f"{PROFILES['quick'].summary()})")
        run_key = client.publish_dataset(home, data, "dogs", say=lambda line: say("    " + line))
        if client.follow_run(home, run_key, timeout=args.timeout, say=lambda line: say("    " + line)) != 0:
            say(f"the run did not deploy: `dogbreeds status --data-dir {stack.data_dir}` and "
                f"`dogbreeds logs --data-dir {stack.data_dir}` say why")
            return 1
        run = home.state()["runs"][run_key]

        say(f"4/6 classifying held-out images through POST {stack.api_url}/predict")
        tests = sorted((data / "test").rglob("*.jpg"))
        shown = tests[:: max(1, len(tests) // args.show)][: args.show]
        right = 0
        for path in shown:
            top = client.predict_file(home, path, top_k=3)
            truth = display_label(path.parent.name)
            right += top[0]["label"] == truth
            guesses = ", ".join(f"{p['label']} {p['probability']:.0%}" for p in top)
            say(f"    {'ok  ' if top[0]['label'] == truth else 'MISS'} {path.name:<32} top-3: {guesses}")

        say("5/6 batch transform over the test folder")
        predictions = client.run_batch(home, data / "test", "demo-test", say=lambda line: say("    " + line))
        batch_right, batch_total = batch_accuracy(predictions)

        say("6/6 the instrumented run's report")
        report = client.extract_report(home, run["training_job"])
        model = stack.sagemaker.describe_training_job(TrainingJobName=run["training_job"])
        archive = stack.raw_s3.path_of(*split_s3_uri(model["ModelArtifacts"]["S3ModelArtifacts"]))
    finally:
        say("    stopping the local stack")
        stack.stop()

    metrics = run["metrics"]
    best = {k: v for k, v in run["best_hyperparameters"].items() if not k.startswith(("sagemaker_", "_"))}
    say(f"\ndone in {time.monotonic() - started:.0f}s: test accuracy {metrics.get('test:accuracy', float('nan')):.1%} "
        f"(chance {1 / args.classes:.0%}); /predict {right}/{len(shown)} right; batch {batch_right}/{batch_total} "
        f"right")
    say(f"   best trial's hyperparameters: {progress.format_hyperparameters(best)}")
    say(f"   report:      {report}")
    say(f"   model:       {archive}")
    say(f"   predictions: {predictions}")
    say(f"   job logs:    {stack.data_dir / 'jobs'}")
    say(f"   again:       .venv/bin/python -m dogbreeds up --data-dir {stack.data_dir}   (then status, predict, "
        f"batch, report, logs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
