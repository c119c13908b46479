"""Transfer-learning trainer: the SageMaker script-mode entry point and a plain command.

    python training/train.py --train data/train --valid data/valid --arch resnet18 --epochs 5 --weights none

Under SageMaker the same file runs with ``--name value`` hyperparameters (values possibly JSON-encoded)
and the ``SM_*`` environment (DESIGN.md, Contract 1). It logs one greppable metric line per epoch and
a final test line, checkpoints every epoch (and resumes from the checkpoint directory), writes the
model artifact to ``--model-dir`` (model.pth, model.json, code/) and the diagnostics to
``--output-data-dir`` (diagnostics.json, metrics.jsonl, report.html, profiler-trace.json).

Three ways to train, chosen from the hyperparameters:
- ``cached``: finetune=head and augment=none. The frozen backbone's output for an image never
  changes, so it is computed once per image and every epoch trains the head on those features.
- ``frozen``: finetune=head with augmentation. Every epoch runs the frozen backbone on new
  augmented views (features can't be cached because the pixels change), backward only through the head.
- ``full``: finetune=full. Everything trains.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

if __package__ in (None, ""):  # run as a script (SageMaker script mode): make the packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torchvision
from torch.nn import functional as F

from model_code.inference import (ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, build_network, check_variants,
                                  eval_transform)
from training import data as data_lib
from training import features as features_lib
from training.diagnostics import (ActivationProbe, RuleThresholds, StepRecorder, SystemSampler, evaluate_rules,
                                  exploding_in_step)
from training.models import (FINETUNE_MODES, WEIGHTS_FALLBACKS, WeightsUnavailable, backbone_of, create_model,
                             layer_group)
from training.summary import ISSUES, EpochResult, TestResult, TrainingSummary

log = logging.getLogger("train")

# Defaults: the reference projects' choices (DESIGN.md). Each is a hyperparameter of the same name.
DEFAULTS = {
    "arch": "resnet18",               # resnet18 | resnet34 | resnet50
    "epochs": 10,
    "batch-size": 32,
    "lr": 1e-3,                       # AdamW
    "weight-decay": 1e-2,
    "eps": 1e-8,
    "finetune": "head",               # head: frozen backbone, new fc only | full: everything trains
    "weights": "imagenet",            # imagenet | none | path to a state_dict
    "weights-fallback": "error",      # error | none: what to do when ImageNet weights are unavailable
    "image-size": 224,
    "augment": "auto",                # auto (none for head, standard for full) | none | flip | standard
    "feature-cache": "auto",          # auto: cache backbone features when finetune=head, augment=none | off
    "feature-store": "",              # folder of shared feature sets (training/features.py); "" = <checkpoint-dir>/features
    "seed": 0,
    "early-stopping-patience": 3,     # epochs without a better val_acc before stopping; 0 = never stop early
    "num-workers": -1,                # -1: one per CPU but one, at most 8
    "valid-fraction": 0.1,            # split from train when there is no valid channel
    "test-fraction": 0.1,
    "fail-on-exploding-tensor": False,
    "profile-steps": 3,               # torch.profiler trace of this many steps (0 = off)
}

AUGMENT_MODES = ("auto", *data_lib.AUGMENTATIONS)  # auto: resolved by parse_args from finetune
FEATURE_CACHE_MODES = ("auto", "off")
# The hyperparameters with a fixed set of values, each list owned by the module that acts on it.
CHOICES = {"arch": ARCHITECTURES, "finetune": FINETUNE_MODES, "augment": AUGMENT_MODES,
           "feature-cache": FEATURE_CACHE_MODES, "weights-fallback": WEIGHTS_FALLBACKS}


def decode_hyperparameter(text: str):
    """A hyperparameter value as SageMaker passes it, decoded: JSON when it parses ('"resnet18"' -> 'resnet18',
    '0.001' -> 0.001), else the raw text. The control plane's ``decode_hyperparameter`` is the same rule
    (training may not import it; tests/test_training.py holds the two together)."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _hp(cast):
    def convert(text):
        value = decode_hyperparameter(text)
        if cast is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        try:
            return cast(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {cast.__name__}, got {text!r}") from None
    convert.__name__ = cast.__name__
    return convert


def get_args_parser(env=None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name, default in DEFAULTS.items():
        cast = type(default) if not isinstance(default, bool) else bool
        parser.add_argument(f"--{name}", type=_hp(cast), default=default, choices=CHOICES.get(name))
    parser.add_argument("--train", default=env.get("SM_CHANNEL_TRAIN"), help="train channel (ImageFolder)")
    parser.add_argument("--valid", default=env.get("SM_CHANNEL_VALID"), help="valid channel (optional)")
    parser.add_argument("--test", default=env.get("SM_CHANNEL_TEST"), help="test channel (optional)")
    parser.add_argument("--model-dir", default=env.get("SM_MODEL_DIR", "model"))
    parser.add_argument("--output-data-dir", default=env.get("SM_OUTPUT_DATA_DIR", "output"))
    parser.add_argument("--checkpoint-dir",
                        default="/opt/ml/checkpoints" if Path("/opt/ml/checkpoints").is_dir() else None,
                        help="checkpoint every epoch here and resume from it (default: $SM_OUTPUT_DIR/checkpoints "
                             "when set, else <output-data-dir>/checkpoints)")
    return parser


def parse_args(argv=None, env=None) -> argparse.Namespace:
    """Hyperparameters from ``SM_HPS`` (if set) overridden by ``--name value`` arguments."""
    env = os.environ if env is None else env
    parser = get_args_parser(env)
    argv = list(sys.argv[1:] if argv is None else argv)
    sm_hps = json.loads(env.get("SM_HPS") or "{}")
    known = {a.dest for a in parser._actions}
    from_env = []
    for name, value in sm_hps.items():
        if name.replace("-", "_") in known and f"--{name}" not in argv:
            from_env += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    args, unknown = parser.parse_known_args(from_env + argv)
    if unknown:  # e.g. _tuning_objective_metric, added by SageMaker tuning jobs
        log.info("ignoring unknown arguments: %s", " ".join(unknown))
    # A tuning trial's model is compared, not served: it skips the serving-variant checks.
    args.tuning_trial = any(u.lstrip("-").startswith("_tuning_objective_metric") for u in unknown)
    if str(args.model_dir).startswith("s3://"):  # the SageMaker SDK sometimes passes an S3 URI here
        args.model_dir = env.get("SM_MODEL_DIR", "model")
    if args.augment == "auto":
        args.augment = "none" if args.finetune == "head" else "standard"
    if args.num_workers < 0:
        args.num_workers = min(8, max(0, int(env.get("SM_NUM_CPUS", os.cpu_count() or 1)) - 1))
    if not args.checkpoint_dir:
        # Under SageMaker everything in the output data dir is uploaded as output.tar.gz: a job without a
        # CheckpointConfig (tuning trials) would ship its checkpoints (weights, optimiser state, the
        # feature cache: 170 MB for a full resnet18) in it. $SM_OUTPUT_DIR/checkpoints stays on the instance.
        base = env.get("SM_OUTPUT_DIR")
        args.checkpoint_dir = str(Path(base if base else args.output_data_dir) / "checkpoints")
    return args


def training_mode(args) -> str:
    if args.finetune == "full":
        return "full"
    return "cached" if args.augment == "none" and args.feature_cache == "auto" else "frozen"


def hyperparameters(args) -> dict:
    return {name: getattr(args, name.replace("-", "_")) for name in DEFAULTS}


# ------------------------------------------------------------------------------------------ helpers

class TrainingAborted(RuntimeError):
    """The run was stopped on purpose (a fail-fast rule) or by a broken data loader."""


def atomic_save(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(obj, path: Path):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=float))
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl: one JSON object per step, epoch and test result, flushed as it goes."""

    def __init__(self, path: Path):
        self.file = open(path, "a", buffering=1)

    def write(self, kind: str, **values):
        self.file.write(json.dumps({"type": kind, "time": round(time.time(), 3), **values}) + "\n")

    def close(self):
        self.file.close()


class StepProfiler:
    """A torch.profiler trace of a few steps of the first hot loop, exported for chrome://tracing."""

    def __init__(self, output_dir: Path, steps: int, cuda: bool):
        self.path = output_dir / "profiler-trace.json"
        self.top_ops: list[dict] = []
        self.profiled_steps: list[int] = []
        self.prof = None
        if steps > 0:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if cuda:
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(
                activities=activities, record_shapes=False,
                schedule=torch.profiler.schedule(wait=1, warmup=1, active=steps, repeat=1),
                on_trace_ready=self._save)
            self.prof.start()
        self.count = 0

    def _save(self, prof):
        prof.export_chrome_trace(str(self.path))
        ops = sorted(prof.key_averages(), key=lambda e: e.cpu_time_total, reverse=True)[:15]
        self.top_ops = [{"name": e.key, "calls": e.count, "cpu_ms": round(e.cpu_time_total / 1e3, 3),
                         "self_cpu_ms": round(e.self_cpu_time_total / 1e3, 3),
                         "cuda_ms": round(getattr(e, "device_time_total", 0) / 1e3, 3)} for e in ops]

    def step(self, step: int):
        """Call after every step of the hot loop; stops itself once the trace is written."""
        if self.prof is not None:
            self.count += 1
            if self.count > 2:  # after the wait and warm-up steps of the schedule
                self.profiled_steps.append(step)
            self.prof.step()
            if self.top_ops:
                self.stop()

    def stop(self):
        if self.prof is not None:
            prof, self.prof = self.prof, None
            prof.stop()

    def summary(self) -> dict:
        return {"trace_file": self.path.name if self.path.exists() else None,
                "steps": self.profiled_steps, "top_ops": self.top_ops}


# What reading a dead worker's queue raises when its pipe closes before PyTorch has noticed the death.
WORKER_CONNECTION_LOST = (EOFError, ConnectionError)


class WorkerDeaths:
    """Catches PyTorch's reports of dead data-loader workers, so none can interrupt the handling of a failure.

    PyTorch's SIGCHLD handler raises "DataLoader worker (pid N) is killed by signal" at whatever line the main
    process is running. During training that is what stops a loop waiting on a dead worker, so it still raises
    then; but the same death is often seen first as an EOFError from the worker's queue, and the handler's
    RuntimeError then landed inside the failure path (while the EOFError was being classified), replacing the
    failure. Wrapped here: every report is kept in ``errors``, and raised only while training runs and no
    exception is being handled."""

    def __init__(self):
        self.errors: list[RuntimeError] = []
        self.training = True
        self._wrapped = None

    def watch(self):
        """Wrap PyTorch's handler; call once a worker-backed iterator exists (PyTorch installs it then)."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread; a loader elsewhere keeps PyTorch's own
        current = signal.getsignal(signal.SIGCHLD)
        if callable(current) and current != self._on_child_exit:
            self._wrapped = current
            signal.signal(signal.SIGCHLD, self._on_child_exit)

    def _on_child_exit(self, signum, frame):
        interrupt = self.training and sys.exc_info()[1] is None  # never a failure already being handled
        try:
            self._wrapped(signum, frame)
        except RuntimeError as exc:
            self.errors.append(exc)
            if interrupt:
                raise

    def wait(self, seconds: float) -> list[RuntimeError]:
        """The reports so far, waiting up to ``seconds`` for a first one (the kernel reports a worker dead
        a moment after its queue's pipe closes)."""
        deadline = time.monotonic() + seconds
        while not self.errors and self._wrapped is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.errors

    def close(self):
        """The run is over: nothing raises any more. PyTorch's handler comes back unless a worker died (its
        siblings are still exiting, and each exit would report the dead one again)."""
        self.training = False
        if not self.errors and self._wrapped is not None and signal.getsignal(signal.SIGCHLD) == self._on_child_exit:
            signal.signal(signal.SIGCHLD, self._wrapped)
            self._wrapped = None


def exception_chain(exc: BaseException):
    """``exc`` and the exceptions it was raised from or while handling, newest first."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def first_line(exc: BaseException) -> str:
    """An exception's message, first line only (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def loader_failure(exc: BaseException, worker_deaths: WorkerDeaths | None) -> str | None:
    """The report of a dead or hung data-loader worker behind ``exc``, as one line; None for other failures.

    PyTorch reports a dead worker as a RuntimeError naming the DataLoader, from the iterator or from its
    SIGCHLD handler wherever the main process is (often inside backward); reading the dead worker's queue can
    fail first, with an EOFError, and the report follows a moment later. So the reports are looked for in
    ``exc``'s whole chain and among those ``worker_deaths`` caught; the one naming the worker is preferred."""
    chain = list(exception_chain(exc))
    if any(isinstance(e, TrainingAborted) for e in chain):
        return None
    reports = [e for e in chain if isinstance(e, RuntimeError) and "DataLoader" in first_line(e)]
    if worker_deaths is not None:
        lost = any(isinstance(e, WORKER_CONNECTION_LOST) for e in chain)
        reports += worker_deaths.wait(5.0 if lost and not reports else 0.0)
    if not reports:
        return None
    reports.sort(key=lambda e: "pid" not in first_line(e))
    return first_line(reports[0])


def iterate_loader(loader, phase: str, ctx, skipped: list):
    """Yield (inputs, targets, data_seconds) from a DataLoader, recording skipped images."""
    ctx.recorder.phase = phase
    iterator = iter(loader)
    if loader.num_workers:
        ctx.worker_deaths.watch()
    while True:
        started = time.perf_counter()
        try:
            inputs, targets, bad = next(iterator)
        except StopIteration:
            return
        for item in bad:
            if item not in skipped:
                log.warning("skipping unreadable image %s: %s", item["path"], item["reason"])
                skipped.append(item)
        if len(targets):
            yield inputs, targets, time.perf_counter() - started


def feature_batches(features, targets, batch_size, generator):
    order = torch.randperm(len(targets), generator=generator)
    if data_lib.drops_last_batch(len(order), batch_size):
        order = order[:-1]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield features[idx], targets[idx], 0.0


# ------------------------------------------------------------------------------------------- training

def train_one_epoch(forward, batches, optimizer, scaler, args, ctx, epoch: int) -> tuple[float, float]:
    """One pass over ``batches``; records every step's diagnostics; returns (mean loss, accuracy)."""
    total_loss, correct, seen = 0.0, 0, 0
    for inputs, targets, data_seconds in batches:
        ctx.step += 1
        compute_started = time.perf_counter()
        inputs = inputs.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        sample = ctx.probe.active = ctx.probe.wants_sample() and ctx.mode != "cached"
        with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.amp_dtype is not None):
            logits = forward(inputs)
            loss = F.cross_entropy(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grads, weights = ctx.recorder.norms()  # reads the loss's device too: one sync per step
        scaler.step(optimizer)
        scaler.update()
        loss_value = loss.item()
        if sample:
            ctx.probe.active = False
            ctx.probe.collect(ctx.step)
        compute_seconds = time.perf_counter() - compute_started
        ctx.recorder.record_step(ctx.step, epoch, loss_value, data_seconds, compute_seconds, grads, weights)
        if ctx.mode != "cached":
            ctx.recorder.record_loader_batch(f"train-{epoch}", data_seconds, compute_seconds)
        ctx.metrics.write("step", step=ctx.step, epoch=epoch, loss=loss_value,
                          data_seconds=round(data_seconds, 6), compute_seconds=round(compute_seconds, 6))
        if ctx.mode != "cached":
            ctx.profiler.step(ctx.step)
        if args.fail_on_exploding_tensor:
            exploded = exploding_in_step(loss_value, grads, weights, ctx.thresholds)
            if exploded:
                raise TrainingAborted(f"ExplodingTensor at step {ctx.step}: {', '.join(exploded[:4])} "
                                      "(stopped because fail-on-exploding-tensor is set)")
        n = len(targets)
        total_loss += loss_value * n
        correct += (logits.argmax(1) == targets).sum().item()
        seen += n
    return (total_loss / seen if seen else math.nan), (correct / seen if seen else math.nan)


@torch.inference_mode()
def evaluate(forward, batches, ctx) -> dict:
    """Loss, accuracy, predictions and targets of ``forward`` over ``batches``."""
    losses, predictions, truths = [], [], []
    for inputs, targets, _ in batches:
        inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
        with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.amp_dtype is not None):
            logits = forward(inputs).float()
        losses.append(F.cross_entropy(logits, targets, reduction="sum"))
        predictions.append(logits.argmax(1).cpu())
        truths.append(targets.cpu())
    if not truths:
        return {"loss": math.nan, "acc": math.nan, "predictions": [], "targets": []}
    predictions, truths = torch.cat(predictions), torch.cat(truths)
    return {"loss": (torch.stack(losses).sum() / len(truths)).item(),
            "acc": (predictions == truths).float().mean().item(),
            "predictions": predictions.tolist(), "targets": truths.tolist()}


@torch.inference_mode()
def extract_features(backbone, loader, phase: str, ctx, skipped: list):
    """Run the frozen backbone once over ``loader``: (features on CPU, targets)."""
    features, targets = [], []
    for inputs, batch_targets, data_seconds in iterate_loader(loader, phase, ctx, skipped):
        started = time.perf_counter()
        ctx.probe.active = ctx.probe.wants_sample()
        with torch.autocast(ctx.device.type, dtype=ctx.amp_dtype, enabled=ctx.amp_dtype is not None):
            out = backbone(inputs.to(ctx.device, non_blocking=True)).float()
        if ctx.probe.active:
            ctx.probe.active = False
            ctx.probe.collect(0)
        features.append(out.cpu())
        targets.append(batch_targets)
        ctx.recorder.record_loader_batch(phase, data_seconds, time.perf_counter() - started)
        ctx.profiler.step(len(features))
    if not targets:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(features), torch.cat(targets)


class Context:
    """What the loops share: device, precision, recorders, the step counter."""

    def __init__(self, args, model, output_dir: Path):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.amp_dtype = None
        if self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.mode = training_mode(args)
        self.recorder = StepRecorder(model)
        self.probe = ActivationProbe(model)
        self.profiler = StepProfiler(output_dir, args.profile_steps, self.device.type == "cuda")
        self.metrics = MetricsLog(output_dir / "metrics.jsonl")
        self.thresholds = RuleThresholds()
        self.worker_deaths = WorkerDeaths()
        self.step = 0

    def close(self):
        """Stop the profiler, unhook the probe, close metrics.jsonl and stop raising worker deaths."""
        self.worker_deaths.close()
        self.profiler.stop()
        self.probe.remove()
        self.metrics.close()


def per_class_and_confusion(result: dict, classes: list[str]) -> tuple[list[dict], dict]:
    n = len(classes)
    matrix = [[0] * n for _ in range(n)]
    for truth, pred in zip(result["targets"], result["predictions"]):
        matrix[truth][pred] += 1
    per_class = [{"class": c, "label": data_lib.display_label(c), "correct": matrix[i][i],
                  "total": sum(matrix[i])} for i, c in enumerate(classes)]
    return per_class, {"classes": classes, "matrix": matrix}


def resume_key(args, plan) -> dict:
    """What must match for a checkpoint to be continued rather than ignored."""
    hp = hyperparameters(args)
    return {"hyperparameters": {k: v for k, v in hp.items() if k not in ("num-workers", "profile-steps", "feature-store")},
            "dataset": plan.fingerprint}


def serving_variants(state: dict, args, plan, valid_batches, device: torch.device) -> dict:
    """model.json's "variants": each serving variant of the network built from ``state`` (as model_fn
    builds it) checked against eager fp32 on ``valid_batches`` ((inputs, targets) pairs)."""
    network = build_network(args.arch, len(plan.classes))
    network.load_state_dict(state)
    network.eval().to(device)
    started = time.monotonic()
    checks = check_variants(network, valid_batches)
    for name, check in checks.items():
        log.info("serving variant %s: %s (top-1 agreement %s, accuracy %s vs eager %s, max probability "
                 "difference %s)%s", name, "passed" if check.passed else "failed", check.top1_agreement,
                 check.accuracy, check.eager_accuracy, check.max_prob_diff,
                 f": {check.reason}" if check.reason else "")
    log.info("serving variants checked in %.1f s on %d validation images", time.monotonic() - started,
             max((c.images for c in checks.values()), default=0))
    return {name: check.record() for name, check in checks.items()}


def write_model_dir(model_dir: Path, state: dict, args, plan, metrics: dict, variants: dict | None = None):
    """model.pth (state_dict), model.json, and code/ with the inference handlers (Contract 1).
    ``variants``: serving_variants' record (None: not checked, e.g. a tuning trial)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(state, model_dir / "model.pth")
    write_json({
        "format_version": 1, "arch": args.arch, "image_size": args.image_size,
        "classes": plan.classes, "labels": plan.labels,
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "hyperparameters": hyperparameters(args), "metrics": metrics,
        "dataset": {"fingerprint": plan.fingerprint, "class_counts": plan.class_counts(),
                    "derived_splits": plan.derived_splits},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
        **({"variants": variants} if variants is not None else {}),
    }, model_dir / "model.json")
    code_dir = model_dir / "code"
    code_dir.mkdir(exist_ok=True)
    source = Path(__file__).resolve().parent.parent / "model_code"
    for name in ("inference.py", "explain.py", "requirements.txt"):
        shutil.copy2(source / name, code_dir / name)


def write_failure(message: str, env=None):
    """SageMaker shows /opt/ml/output/failure as the job's FailureReason."""
    env = os.environ if env is None else env       # read when called, not when this module was imported
    output_dir = Path(env.get("SM_OUTPUT_DIR", "/opt/ml/output"))
    if output_dir.is_dir():
        (output_dir / "failure").write_text(message[:1024])


class BatchSource(NamedTuple):
    """How one training mode feeds the loops: the forward pass, and batches per epoch and per split."""

    forward: Callable
    train_batches: Callable  # epoch -> iterable of (inputs, targets, data_seconds)
    eval_batches: Callable   # split -> iterable of (inputs, targets, data_seconds)


# The batch size of feature extraction: fixed, so a shared feature set does not depend on which trial
# (and which batch-size hyperparameter) computed it.
EXTRACT_BATCH_SIZE = 64


def feature_inputs(args, ctx, plan, backbone) -> dict:
    """What a feature set depends on (training/features.py hashes it into the set's key)."""
    return {"dataset": plan.fingerprint, "arch": args.arch, "backbone_sha256": features_lib.weights_digest(backbone),
            "image_size": args.image_size, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "device": ctx.device.type, "precision": str(ctx.amp_dtype or torch.float32)}


def cached_source(args, ctx, model, plan, loader, skipped) -> BatchSource:
    """Backbone features computed once per image, or read from the feature store when a whole set with
    the same key is there (training/features.py); the head trains on them. Valid because the backbone
    is frozen in eval mode and the pixels never change."""
    backbone = backbone_of(model).eval()
    store = features_lib.FeatureStore(args.feature_store or Path(args.checkpoint_dir) / "features")
    inputs = feature_inputs(args, ctx, plan, backbone)
    key = features_lib.feature_key(inputs)
    rows = {split: len(plan.samples[split]) for split in data_lib.SPLITS}
    with store.lock(key):
        found, why = store.load(key, rows, model.fc.in_features)
        if found is not None:
            features, stored_skipped = found
            skipped += [s for s in stored_skipped if s not in skipped]
            log.info("loaded feature set %s from %s", key, store.root)
            ctx.metrics.write("features", source="loaded", key=key, images=0, store=str(store.root), reason=why)
        else:
            if why != "absent":
                log.warning("feature set %s in %s is not usable, recomputing: %s", key, store.root, why)
            features, images = {}, 0
            for split in data_lib.SPLITS:
                t0 = time.perf_counter()
                features[split] = extract_features(backbone, loader(split, batch_size=EXTRACT_BATCH_SIZE),
                                                   f"extract-{split}", ctx, skipped)
                images += len(features[split][1])
                log.info("computed %s features for %d images in %.1fs", split, len(features[split][1]),
                         time.perf_counter() - t0)
            store.save(key, inputs, features, skipped, rows)
            ctx.metrics.write("features", source="computed", key=key, images=images, store=str(store.root),
                              reason=why)
    ctx.profiler.stop()

    def train_batches(epoch):
        return feature_batches(*features["train"], args.batch_size, data_lib.epoch_generator(args.seed, epoch))

    def eval_batches(split):
        feats, targets = features[split]
        return ((feats[i:i + 1024], targets[i:i + 1024], 0.0) for i in range(0, len(targets), 1024))

    return BatchSource(model.fc, train_batches, eval_batches)


def image_source(args, ctx, model, plan, loader, skipped) -> BatchSource:
    """Decoded images every epoch: through the frozen backbone (no gradient) or the whole network."""
    if ctx.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    backbone = backbone_of(model)

    def forward(x):
        if ctx.mode == "frozen":
            with torch.no_grad():
                x = backbone(x)
            return model.fc(x)
        return model(x)

    def train_batches(epoch):
        return iterate_loader(loader("train", epoch, shuffle=True), f"train-{epoch}", ctx, skipped)

    def eval_batches(split):
        return iterate_loader(loader(split), f"eval-{split}", ctx, skipped)

    return BatchSource(forward, train_batches, eval_batches)


@dataclass
class TrainingState:
    """What a checkpoint carries besides weights and optimiser: enough to continue exactly."""

    history: list[EpochResult] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_acc": -1.0, "epoch": 0, "state": None})
    stale_epochs: int = 0
    start_epoch: int = 1
    checkpoint_file: Path | None = None


def changing_state(model, mode: str) -> dict:
    """The part of the state_dict training can change: all of it for ``full``, else the head alone
    (the frozen backbone, BatchNorm statistics included, stays as it was built)."""
    state = model.state_dict()
    return {k: v.detach().clone() for k, v in state.items() if mode == "full" or k.startswith("fc.")}


def restore_state(model, saved: dict, mode: str):
    missing, unexpected = model.load_state_dict(saved, strict=False)
    if unexpected or (mode == "full" and missing):
        raise RuntimeError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def resume(checkpoint_file: Path, args, plan, model, optimizer, ctx) -> TrainingState:
    """Continue from ``checkpoint_file`` when it was written for the same hyperparameters and data."""
    state = TrainingState(checkpoint_file=checkpoint_file)
    if not checkpoint_file.exists():
        return state
    ckpt = torch.load(checkpoint_file, map_location=ctx.device, weights_only=True)
    if ckpt.get("resume_key") != json.loads(json.dumps(resume_key(args, plan))):
        log.warning("ignoring %s: it was written for other hyperparameters or data", checkpoint_file)
        return state
    restore_state(model, ckpt["model"], ctx.mode)
    optimizer.load_state_dict(ckpt["optimizer"])
    state.history = [EpochResult(**row) for row in ckpt["history"]]
    state.best, state.stale_epochs = ckpt["best"], ckpt["stale_epochs"]
    state.start_epoch, ctx.step = ckpt["epoch"] + 1, ckpt["step"]
    ctx.recorder.load_dict(json.loads(ckpt["record"]))
    ctx.probe.records = json.loads(ckpt["activations"])
    log.info("resumed from %s after epoch %d (best val_acc %.4f at epoch %d)", checkpoint_file,
             ckpt["epoch"], state.best["val_acc"], state.best["epoch"])
    return state


def fit(args, ctx, model, optimizer, scaler, source: BatchSource, state: TrainingState, plan):
    """The epoch loop: train, validate, log the metric line, keep the best state, checkpoint, stop early."""
    patience = args.early_stopping_patience
    for epoch in range(state.start_epoch, args.epochs + 1):
        if patience and state.stale_epochs >= patience:
            log.info("early stopping: val_acc has not improved for %d epochs (best %.4f at epoch %d)",
                     state.stale_epochs, state.best["val_acc"], state.best["epoch"])
            break
        t0 = time.perf_counter()
        torch.manual_seed(args.seed * 1000 + epoch)  # augmentation in the main process
        model.train(ctx.mode == "full")  # a frozen backbone keeps its BatchNorm statistics
        train_loss, train_acc = train_one_epoch(source.forward, source.train_batches(epoch), optimizer, scaler,
                                                args, ctx, epoch)
        model.eval()
        val = evaluate(source.forward, source.eval_batches("valid"), ctx)
        row = EpochResult(epoch, train_loss, train_acc, val["loss"], val["acc"], round(time.perf_counter() - t0, 3))
        state.history.append(row)
        print(f"epoch={epoch} train_loss={train_loss:.4f} train_acc={train_acc:.4f} "
              f"val_loss={val['loss']:.4f} val_acc={val['acc']:.4f}", flush=True)
        ctx.metrics.write("epoch", **asdict(row))
        if val["acc"] > state.best["val_acc"]:
            state.best = {"val_acc": val["acc"], "epoch": epoch, "state": changing_state(model, ctx.mode)}
            state.stale_epochs = 0
        else:
            state.stale_epochs += 1
        atomic_save({"epoch": epoch, "step": ctx.step, "model": changing_state(model, ctx.mode),
                     "optimizer": optimizer.state_dict(), "history": [asdict(row) for row in state.history],
                     "best": state.best,
                     "stale_epochs": state.stale_epochs, "resume_key": resume_key(args, plan),
                     "record": json.dumps(ctx.recorder.as_dict()),
                     "activations": json.dumps(ctx.probe.records)}, state.checkpoint_file)
    ctx.profiler.stop()


# ----------------------------------------------------------------------------------------------- main

class Outcome(NamedTuple):
    """What a completed run learned: its epochs, the best one, and that model's test results."""

    history: list[EpochResult]
    best_epoch: int
    test: TestResult
    per_class: list[dict]
    confusion: dict


def run(args) -> TrainingSummary:
    """Train per ``args``; return the summary that went into diagnostics.json and report.html.

    Both files are written whatever happens; a failure is raised after that (a dead data loader as
    TrainingAborted, whichever exception reported it)."""
    output_dir, model_dir = Path(args.output_data_dir), Path(args.model_dir)
    for d in (output_dir, model_dir, Path(args.checkpoint_dir)):
        d.mkdir(parents=True, exist_ok=True)
    started_at, started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
    sampler = SystemSampler()
    sampler.start()
    plan = ctx = model = outcome = failure = None
    skipped: list[dict] = []
    try:
        torch.manual_seed(args.seed)
        plan = data_lib.plan_dataset(args.train, args.valid, args.test, seed=args.seed,
                                     valid_fraction=args.valid_fraction, test_fraction=args.test_fraction)
        for warning in plan.warnings:
            log.warning(warning)
        skipped += plan.skipped
        log.info("dataset %s: %d classes, %s images; %d skipped; derived splits: %s", plan.fingerprint,
                 len(plan.classes), {s: len(v) for s, v in plan.samples.items()}, len(skipped),
                 plan.derived_splits or "none")
        try:
            model = create_model(args.arch, len(plan.classes), args.weights, args.finetune)
        except WeightsUnavailable as exc:
            if args.weights != "imagenet" or args.weights_fallback != "none":
                raise
            log.warning("%s -- training from scratch because weights-fallback=none", exc)
            model = create_model(args.arch, len(plan.classes), "none", args.finetune)
        ctx = Context(args, model, output_dir)
        model.to(ctx.device)
        log.info("training mode %s on %s (amp %s), %d data-loader workers", ctx.mode, device_name(ctx.device),
                 ctx.amp_dtype, args.num_workers)

        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, eps=args.eps)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.amp_dtype == torch.float16)

        eval_tf = eval_transform(args.image_size)
        datasets = {split: data_lib.ImageSamples(plan.samples[split],
                                                 data_lib.train_transform(args.image_size, args.augment,
                                                                          IMAGENET_MEAN, IMAGENET_STD)
                                                 if split == "train" else eval_tf, args.image_size)
                    for split in data_lib.SPLITS}
        pin = ctx.device.type == "cuda"

        def loader(split, epoch=0, shuffle=False, batch_size=None):
            return data_lib.make_loader(datasets[split], batch_size or args.batch_size, args.num_workers,
                                        pin_memory=pin,
                                        shuffle_seed=args.seed if shuffle else None, epoch=epoch, timeout=300)

        source = (cached_source if ctx.mode == "cached" else image_source)(args, ctx, model, plan, loader, skipped)
        state = resume(Path(args.checkpoint_dir) / "checkpoint.pth", args, plan, model, optimizer, ctx)
        fit(args, ctx, model, optimizer, scaler, source, state, plan)
        best, history = state.best, state.history
        ctx.profiler.stop()

        if best["state"] is not None:
            restore_state(model, best["state"], ctx.mode)
        model.eval()
        test_split = "test" if plan.samples["test"] else "valid"
        test = evaluate(source.forward, source.eval_batches(test_split), ctx)
        print(f"test_loss={test['loss']:.4f} test_acc={test['acc']:.4f}", flush=True)
        ctx.metrics.write("test", split=test_split, test_loss=test["loss"], test_acc=test["acc"])
        per_class, confusion = per_class_and_confusion(test, plan.classes)
        metrics = {"test_loss": test["loss"], "test_acc": test["acc"], "best_val_acc": best["val_acc"],
                   "best_epoch": best["epoch"], "epochs_run": len(history), "test_split": test_split}
        state_dict = {k: v.cpu() for k, v in model.state_dict().items()}
        variants = None
        if not getattr(args, "tuning_trial", False):
            valid = ((x, y) for x, y, _ in iterate_loader(loader("valid"), "variants", ctx, skipped))
            variants = serving_variants(state_dict, args, plan, valid, ctx.device)
        write_model_dir(model_dir, state_dict, args, plan, metrics, variants)
        outcome = Outcome(history, best["epoch"], TestResult(test["loss"], test["acc"]), per_class, confusion)
    except Exception as exc:
        # PyTorch's report of a dead worker cannot interrupt this path (see WorkerDeaths)
        stalled = loader_failure(exc, ctx.worker_deaths) if ctx is not None else None
        if stalled is None:
            failure = exc
            raise
        ctx.recorder.loader_failures.append({"phase": ctx.recorder.phase, "error": stalled})
        failure = TrainingAborted(f"data loader failed during {ctx.recorder.phase}: {stalled}")
        raise failure from exc
    finally:
        system = sampler.stop()
        if ctx is not None:
            ctx.close()
        summary = summarize(args, started_at=started_at, seconds=round(time.monotonic() - started, 3),
                            system=system, gpu_error=sampler.gpu_error, plan=plan, skipped=skipped, ctx=ctx,
                            model=model, outcome=outcome, failure=failure)
        finish_diagnostics(summary, output_dir)
    return summary


def device_name(device: torch.device) -> str:
    """``cpu``, or ``cuda (<the GPU's name>)``."""
    return str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")


def summarize(args, *, started_at: str, seconds: float, system: dict, gpu_error: str | None, plan, skipped: list,
              ctx: Context | None, model, outcome: Outcome | None, failure: BaseException | None
              ) -> TrainingSummary:
    """The run's summary from whatever it got to: a None ``plan``, ``ctx`` or ``outcome`` means the run
    ended before making it, and what comes from it is not recorded. The rules judge the rest, last."""
    job_name = os.environ.get("TRAINING_JOB_NAME") or Path(args.output_data_dir).resolve().parent.name  # SageMaker's
    recorder = ctx.recorder if ctx else None
    summary = TrainingSummary(
        title=f"Training report: {job_name}",
        job={**hyperparameters(args), **({"mode": ctx.mode} if ctx else {})},
        started_at=started_at,
        status="Completed" if outcome is not None else "Failed" if failure is not None else "InProgress",
        failure_reason=f"{type(failure).__name__}: {failure}" if failure else None,
        device=device_name(ctx.device) if ctx else None,
        dataset={"fingerprint": plan.fingerprint, "class_counts": plan.class_counts(), "skipped_images": skipped,
                 "derived_splits": plan.derived_splits} if plan else None,
        # a failed run reports no epochs (its checkpoint has them)
        epochs=outcome.history if outcome else [] if ctx else None,
        best_epoch=outcome.best_epoch if outcome else None,
        test=outcome.test if outcome else None,
        per_class=outcome.per_class if outcome else None,
        confusion=outcome.confusion if outcome else None,
        system=system,
        seconds=seconds,
        steps=recorder.steps if recorder else None,
        gradients=recorder.gradients if recorder else None,
        weights=recorder.weights if recorder else None,
        loader_batches=recorder.loader_batches if recorder else None,
        loader_failures=recorder.loader_failures if recorder else None,
        activations=ctx.probe.records if ctx else None,
        profiler=ctx.profiler.summary() if ctx else None,
        gpu=ctx.device.type == "cuda" if ctx else None,
        gpu_error=gpu_error if ctx else None,
        trainable_groups=sorted({layer_group(n) for n, p in model.named_parameters() if p.requires_grad})
        if ctx else None)
    summary.rules = evaluate_rules(summary.record(), ctx.thresholds if ctx else RuleThresholds())
    return summary


def finish_diagnostics(summary: TrainingSummary, output_dir: Path):
    """Write diagnostics.json and report.html, and log the rules that found issues."""
    from training.report import write_report

    write_json(summary.diagnostics(), output_dir / "diagnostics.json")
    write_report(summary, output_dir / "report.html")
    for rule in summary.rules:
        if rule.status == ISSUES:
            log.warning("rule %s: %s -- %s", rule.name, rule.message, rule.advice)
    issues = summary.issues_found
    log.info("diagnostics: %d rule(s) found issues%s; report at %s", len(issues),
             f" ({', '.join(issues)})" if issues else "", output_dir / "report.html")


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout, force=True)
    args = parse_args(argv)
    try:
        run(args)
    except (data_lib.DatasetError, WeightsUnavailable, TrainingAborted) as exc:
        log.error("%s", exc)
        write_failure(f"{type(exc).__name__}: {exc}")
        return 2
    except Exception as exc:
        write_failure(f"{type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
