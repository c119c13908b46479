"""Benchmark: the local stack's ``default`` profile end to end on a dataset the size of the Udacity dog-breed set.

    .venv/bin/python bench/default_profile.py --scale 0.05      # 133 classes, ~5% of the images: minutes
    nice -n 10 .venv/bin/python bench/default_profile.py        # full size: 6,680 / 835 / 836 images

Generates 133 classes of photo-sized synthetic JPEGs (``--min-side``/``--max-side``, default 300..500 px),
then runs the ``default`` profile (224 px, finetune head, 6 trials 2 at a time, then the instrumented run)
through the local stack exactly as ``dogbreeds up --profile default`` does: publish, tune, instrumented
training, gate, deploy, and a batch transform over the test split. It prints the wall time of each stage.

Then, on the same published data and with the same tuning request except for what is compared, it runs:

- **per-trial extraction**: the tuning job with ``share_features=False`` (every trial extracts its own
  features, as before issue 12); its wall time against the shared tuning job's.
- **the seeds' loop** (the frozen backbone every epoch of every trial): estimated, not run. One uncached
  epoch (``feature-cache off``) is measured per architecture, as a tuning job of two 1-epoch trials run
  two at a time, as the profile's trials run; the estimate is the sum over the shared job's trials of
  (epochs it ran x that architecture's uncached epoch) / 2 in parallel. It leaves out start-up and the
  test pass, so it is a lower bound.

Two changes to the profile, both said in the output: ``weights none`` (no ImageNet download here; the
backbone costs the same compute, its accuracy is not the point) and an accuracy floor of 0 (so the gate
deploys a model of a random backbone). Everything printed is measured in this run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

from chalicelib import sagemaker_requests as requests  # noqa: E402
from chalicelib.config import CategoricalRange, PipelineConfig  # noqa: E402
from dogbreeds import client, progress  # noqa: E402
from dogbreeds.localaws.sagemaker import LocalSageMaker  # noqa: E402
from dogbreeds.stack import LocalStack, local_config  # noqa: E402
from dogbreeds.synthetic import generate_dataset  # noqa: E402

# The Udacity dog-breed set (DESIGN.md): 133 classes, 6,680 train, 835 valid, 836 test images.
UDACITY = {"classes": 133, "train": 6680, "valid": 835, "test": 836}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the Udacity image counts (default 1)")
    p.add_argument("--classes", type=int, default=UDACITY["classes"])
    p.add_argument("--min-side", type=int, default=300)
    p.add_argument("--max-side", type=int, default=500)
    p.add_argument("--seed", type=int, default=1, help="the tuner's seed")
    p.add_argument("--cores", type=int, default=None, help="cores the local SageMaker uses (default: all usable)")
    p.add_argument("--skip", choices=("per-trial", "seeds", "both", "none"), default="none",
                   help="leave out a comparison (the pipeline always runs)")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir, deleted)")
    p.add_argument("--timeout", type=float, default=6 * 3600)
    return p.parse_args(argv)


def others_cpu_percent(seconds: float = 1.0) -> float:
    """Whole-machine CPU use in a short sample while this process sleeps: what others are taking."""
    import psutil

    return psutil.cpu_percent(interval=seconds)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f}, CPU busy {others_cpu_percent():.0f}% (1 s sample)"


def per_class(count: int, args) -> int:
    return max(1, round(count * args.scale / args.classes))


def ts(value) -> float:
    return value.timestamp() if hasattr(value, "timestamp") else datetime.datetime.fromisoformat(value).timestamp()


def say(line: str) -> None:
    print(line, flush=True)


def profile_config(args, **tuning_changes) -> PipelineConfig:
    config = local_config("default", seed=args.seed, accuracy_floor=0.0)
    tuning = replace(config.tuning, static_hyperparameters={**config.tuning.static_hyperparameters, "weights": "none"},
                     **tuning_changes)
    final = replace(config.final_training, static_hyperparameters={**config.final_training.static_hyperparameters,
                                                                   "weights": "none"})
    return replace(config, tuning=tuning, final_training=final)


def trial_facts(sagemaker, tuning_name: str) -> list[dict]:
    """Per trial: name, tuned values, seconds, epochs run, what its feature event said, final val acc."""
    facts = []
    summaries = sagemaker.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=tuning_name)["TrainingJobSummaries"]
    for summary in sorted(summaries, key=lambda s: ts(s["CreationTime"])):
        name = summary["TrainingJobName"]
        job = sagemaker.describe_training_job(TrainingJobName=name)
        rows = [json.loads(line) for line in
                (sagemaker.job_dir(name) / "output" / "data" / "metrics.jsonl").read_text().splitlines()]
        feature = next((r for r in rows if r["type"] == "features"), {})
        epochs = [r for r in rows if r["type"] == "epoch"]
        metrics = {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])}
        facts.append({"name": name, "status": job["TrainingJobStatus"],
                      "tuned": {k: json.loads(v) for k, v in summary.get("TunedHyperParameters", {}).items()},
                      "seconds": ts(job["TrainingEndTime"]) - ts(job["CreationTime"]),
                      "epochs": len(epochs), "epoch_seconds": [e["seconds"] for e in epochs],
                      "features": f"{feature.get('source', '-')} {feature.get('images', '')}".strip(),
                      "val_acc": metrics.get("validation:accuracy")})
    return facts


def tuning_seconds(sagemaker, name: str) -> float:
    job = sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
    assert job["HyperParameterTuningJobStatus"] == "Completed", job.get("FailureReason")
    return ts(job["HyperParameterTuningEndTime"]) - ts(job["CreationTime"])


def print_trials(facts: list[dict]) -> None:
    for f in facts:
        tuned = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(f["tuned"].items()))
        say(f"    {f['name']:<40} {f['status']:<9} {f['seconds']:7.1f}s  {f['epochs']} epochs  features "
            f"{f['features']:<13} val_acc {f['val_acc']}  [{tuned}]")


def side_tuning(stack: LocalStack, work: Path, request: dict, label: str, cores) -> tuple[float, list]:
    """Run ``request`` on a second local SageMaker over the stack's bucket (the control plane does not see
    it); outputs go below ``jobs/<name>-<label>/``. Returns (wall seconds, trial facts)."""
    request["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"] = \
        request["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"-{label}/"
    sagemaker = LocalSageMaker(stack.raw_s3, work / label, lambda event: None, cores=cores)
    try:
        say(f"    {label}: {load_line()}")
        sagemaker.create_hyper_parameter_tuning_job(**request)
        if not sagemaker.wait_idle(6 * 3600):
            raise RuntimeError(f"the {label} tuning job did not finish")
        name = request["HyperParameterTuningJobName"]
        return tuning_seconds(sagemaker, name), trial_facts(sagemaker, name)
    finally:
        sagemaker.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    progress.plain_logging()
    started = time.monotonic()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="default-profile-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sizes = {split: per_class(UDACITY[split], args) for split in ("train", "valid", "test")}
    say(f"default-profile bench, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), scale {args.scale}")
    say(f"  before: {load_line()}")

    data = work / "data"
    t0 = time.monotonic()
    gen = generate_dataset(data, num_classes=args.classes, train_per_class=sizes["train"],
                           valid_per_class=sizes["valid"], test_per_class=sizes["test"], seed=0,
                           min_side=args.min_side, max_side=args.max_side, workers=len(os.sched_getaffinity(0)))
    counts = {split: sum(c.values()) for split, c in gen["counts"].items()}
    say(f"  generated {gen['images']} JPEGs ({counts}, {args.classes} classes, {args.min_side}..{args.max_side} px) "
        f"in {time.monotonic() - t0:.0f}s (not a stage)")

    config = profile_config(args)
    say(f"  profile default with weights none and accuracy floor 0: {config.tuning.max_training_jobs} trials "
        f"({config.tuning.max_parallel_training_jobs} at a time), {config.tuning.strategy}, seed {args.seed}")
    stages: dict[str, float] = {}
    stack = LocalStack(work / "stack", config=config, cores=args.cores).start()
    stack.app_module.logger.setLevel("ERROR")
    try:
        home = client.Home(stack.data_dir)
        t = time.time()
        run_key = client.publish_dataset(home, data, "dogs", say=lambda line: None)
        stages["publish"] = time.time() - t
        published = time.time()
        if client.follow_run(home, run_key, timeout=args.timeout, say=lambda line: say("    " + line)) != 0:
            say("the run did not deploy; see the stack's logs in " + str(stack.data_dir))
            return 1
        deployed = time.time()
        run = home.state()["runs"][run_key]
        tuning = stack.sagemaker.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=run["tuning_job"])
        training = stack.sagemaker.describe_training_job(TrainingJobName=run["training_job"])
        stages["publish -> tuning starts"] = ts(tuning["CreationTime"]) - published
        stages["tune"] = ts(tuning["HyperParameterTuningEndTime"]) - ts(tuning["CreationTime"])
        stages["tuning ends -> training starts"] = ts(training["CreationTime"]) - ts(tuning["HyperParameterTuningEndTime"])
        stages["instrumented training"] = ts(training["TrainingEndTime"]) - ts(training["CreationTime"])
        stages["gate + deploy (endpoint InService)"] = deployed - ts(training["TrainingEndTime"])
        shared_trials = trial_facts(stack.sagemaker, run["tuning_job"])
        t = time.time()
        predictions = client.run_batch(home, data / "test", "bench-test", say=lambda line: None)
        stages["batch over the test split"] = time.time() - t
        rows = sum(1 for _ in open(predictions)) - 1
        say(f"  after the pipeline: {load_line()}")

        source = json.loads(tuning["TrainingJobDefinition"]["StaticHyperParameters"]["sagemaker_submit_directory"])
        marker = run_key.split("/", 1)[1]
        channels = sorted(c["ChannelName"] for c in tuning["TrainingJobDefinition"]["InputDataConfig"])
        per_trial = seeds = None
        if args.skip not in ("per-trial", "both"):
            request = requests.create_hyper_parameter_tuning_job(profile_config(args, share_features=False), "dogs",
                                                                 marker, source, channels)
            assert "CheckpointConfig" not in request["TrainingJobDefinition"]
            per_trial = side_tuning(stack, work, request, "per-trial", args.cores)
        if args.skip not in ("seeds", "both"):
            base = profile_config(args)
            statics = {**base.tuning.static_hyperparameters, "epochs": 1, "early-stopping-patience": 0,
                       "feature-cache": "off"}
            archs = next(r.values for r in base.tuning.categorical_ranges if r.name == "arch")
            one_epoch = replace(base.tuning, strategy="Grid", continuous_ranges=(),
                                categorical_ranges=(CategoricalRange("arch", archs),), static_hyperparameters=statics,
                                max_training_jobs=len(archs))
            request = requests.create_hyper_parameter_tuning_job(replace(base, tuning=one_epoch), "dogs", marker,
                                                                 source, channels)
            seeds = side_tuning(stack, work, request, "seeds-epoch", args.cores)
    finally:
        stack.stop()

    say("")
    say(f"stages (the default profile, shared feature extraction), {counts['train']}/{counts['valid']}/"
        f"{counts['test']} images:")
    for stage, seconds in stages.items():
        say(f"  {stage:<38} {seconds:8.1f}s")
    total = sum(stages.values())
    say(f"  {'total':<38} {total:8.1f}s  ({total / 60:.1f} min; batch wrote {rows} predictions)")
    say("shared tuning trials:")
    print_trials(shared_trials)
    tune = stages["tune"]
    if per_trial:
        seconds, facts = per_trial
        say("per-trial extraction trials:")
        print_trials(facts)
        same = [a["tuned"] == b["tuned"] for a, b in zip(shared_trials, facts)]
        say(f"tuning, per-trial extraction: {seconds:.1f}s against shared {tune:.1f}s: ratio {seconds / tune:.2f}x "
            f"(same trials: {sum(same)}/{len(same)}; extractions: shared "
            f"{sum(f['features'].startswith('computed') for f in shared_trials)}, per-trial "
            f"{sum(f['features'].startswith('computed') for f in facts)})")
    if seeds:
        _, facts = seeds
        epoch = {f["tuned"]["arch"]: f["epoch_seconds"][0] for f in facts if f["epoch_seconds"]}
        say("one uncached epoch per architecture (two 1-epoch trials at once, as the profile runs trials): "
            + ", ".join(f"{a} {s:.1f}s" for a, s in epoch.items()))
        parallel = config.tuning.max_parallel_training_jobs
        estimate = sum(f["epochs"] * epoch[f["tuned"]["arch"]] for f in shared_trials) / parallel
        say(f"tuning, the seeds' loop (estimated lower bound: epochs run x uncached epoch / {parallel}): "
            f"{estimate:.1f}s against shared {tune:.1f}s: ratio {estimate / tune:.2f}x")
    say(f"bench wall time {time.monotonic() - started:.0f}s; end: {load_line()}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"kept {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
