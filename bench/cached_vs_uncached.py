"""Benchmark: head-only training with cached backbone features vs. running the frozen backbone every epoch.

    .venv/bin/python bench/cached_vs_uncached.py            # default size: about 1-3 min on 2 idle CPU cores
    .venv/bin/python bench/cached_vs_uncached.py --quick    # about 30 s
    .venv/bin/python bench/cached_vs_uncached.py --classes 10 --train-per-class 40 --epochs 3 --image-size 112

Generates one synthetic dataset, then trains the same hyperparameters twice in this process with
``training.train.run``:

- ``cached``  (``--finetune head --augment none``): the frozen backbone runs once per image (the one-off
  feature extraction); every epoch trains the head on the stored features.
- ``uncached`` (the same plus ``--feature-cache off``, the trainer's ``frozen`` mode): every epoch decodes
  the images and runs the frozen backbone again.

Both runs use ``--weights none`` (no download), ``--early-stopping-patience 0`` (both run every epoch),
the same seed, the same data and the same ``torch.set_num_threads``. Every number printed is measured
in this run; nothing is typed in. See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # before torch loads: the profiler's C++ chatter about missing GPUs

import torch  # noqa: E402
import torchvision  # noqa: E402

from dogbreeds.synthetic import generate_dataset  # noqa: E402
from training import train  # noqa: E402
from training.models import create_model  # noqa: E402

MODES = ("cached", "uncached")
TRAINER_MODE = {"cached": "cached", "uncached": "frozen"}  # what train.training_mode() calls each

DEFAULT_SIZE = dict(classes=10, train_per_class=60, valid_per_class=15, test_per_class=15,
                    epochs=5, image_size=112)
QUICK_SIZE = dict(classes=5, train_per_class=40, valid_per_class=10, test_per_class=10,
                  epochs=3, image_size=112)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])

    def size(name, text):
        p.add_argument(f"--{name.replace('_', '-')}", type=int,
                       help=f"{text} (default {DEFAULT_SIZE[name]}; with --quick {QUICK_SIZE[name]})")

    p.add_argument("--quick", action="store_true",
                   help="a smaller dataset and fewer epochs (about 30 s); explicit size flags still win")
    size("classes", "number of classes")
    size("train_per_class", "train images per class")
    size("valid_per_class", "valid images per class")
    size("test_per_class", "test images per class")
    size("epochs", "epochs per mode")
    size("image_size", "training resolution in px")
    p.add_argument("--min-side", type=int, default=96, help="smallest stored image side in px (default 96)")
    p.add_argument("--max-side", type=int, default=256, help="largest stored image side in px (default 256)")
    p.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet34", "resnet50"),
                   help="backbone (default resnet18)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--seed", type=int, default=0, help="dataset and training seed (default 0)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch.set_num_threads, the same for both modes (default: the CPU count, %(default)s)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="data-loader workers for both modes (default 0: decode in the main process)")
    p.add_argument("--order", choices=("cached-first", "uncached-first"), default="cached-first",
                   help="which mode runs first (default cached-first)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (data, models, trainer logs)")
    p.add_argument("--verbose", action="store_true", help="show the trainer's own output")
    args = p.parse_args(argv)
    preset = QUICK_SIZE if args.quick else DEFAULT_SIZE
    for name, default in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


# ------------------------------------------------------------------------------------------ measuring

def others_cpu_percent(seconds: float = 1.0) -> float:
    """Whole-machine CPU use while this process sleeps: what other processes are taking right now."""
    import psutil  # a trainer dependency

    return psutil.cpu_percent(interval=seconds)


def machine_facts(busy: dict) -> list[tuple[str, str]]:
    cpu_model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    device = "cuda (" + torch.cuda.get_device_name() + ")" if torch.cuda.is_available() else "cpu"
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("device", device),
        ("cpu", cpu_model),
        ("cpu count", f"{os.cpu_count()} logical, {affinity} usable by this process"),
        ("torch threads", f"{torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op"),
        ("torch", f"{torch.__version__} (torchvision {torchvision.__version__}, "
                  f"mkldnn {'on' if torch.backends.mkldnn.is_available() else 'off'})"),
        ("python", f"{platform.python_version()} on {platform.system()} {platform.machine()}"),
        ("other load", "CPU use by other processes in a 1 s sample just before each mode: "
                       + ", ".join(f"{m} {v:.0f}%" for m, v in busy.items()) + f" of {os.cpu_count()} CPUs"),
    ]


@contextlib.contextmanager
def timing_extraction(seconds: list):
    """Wall time of each ``extract_features`` call ``train.run`` makes (one per split, cached mode only)."""
    original = train.extract_features

    def timed(*a, **kw):
        started = time.perf_counter()
        try:
            return original(*a, **kw)
        finally:
            seconds.append(time.perf_counter() - started)

    train.extract_features = timed
    try:
        yield
    finally:
        train.extract_features = original


@contextlib.contextmanager
def trainer_output(log_file: Path, verbose: bool):
    """The trainer prints per-epoch lines and logs; keep them in a file unless --verbose."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    handler = logging.StreamHandler(sys.stdout) if verbose else logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.handlers, root.level = [handler], logging.INFO
    try:
        if verbose:
            yield
        else:
            with open(log_file, "a") as f, contextlib.redirect_stdout(f):
                yield
    finally:
        handler.close()
        root.handlers, root.level = saved


def run_mode(mode: str, data: Path, work: Path, args) -> dict:
    out = work / mode  # a fresh dir per mode: no feature cache or checkpoint carried between runs
    argv = [f"--train={data / 'train'}", f"--valid={data / 'valid'}", f"--test={data / 'test'}",
            f"--model-dir={out / 'model'}", f"--output-data-dir={out / 'output'}",
            f"--arch={args.arch}", f"--epochs={args.epochs}", f"--batch-size={args.batch_size}",
            f"--image-size={args.image_size}", f"--seed={args.seed}", f"--num-workers={args.num_workers}",
            "--weights=none", "--finetune=head", "--augment=none", "--early-stopping-patience=0",
            "--profile-steps=0"]
    if mode == "uncached":
        argv.append("--feature-cache=off")
    hp = train.parse_args(argv, env={})
    if train.training_mode(hp) != TRAINER_MODE[mode]:
        raise RuntimeError(f"{mode}: the trainer chose mode {train.training_mode(hp)!r}")
    extract_wall: list[float] = []
    with trainer_output(work / f"{mode}.log", args.verbose), timing_extraction(extract_wall):
        started = time.perf_counter()
        summary = train.run(hp)
        total = time.perf_counter() - started
    if summary.status != "Completed" or summary.job.get("mode") != TRAINER_MODE[mode]:
        raise RuntimeError(f"{mode}: status {summary.status}, mode {summary.job.get('mode')}")

    batches = summary.loader_batches
    extract_batches = sum(d + c for ph, d, c in zip(batches["phase"], batches["data_seconds"],
                                                    batches["compute_seconds"]) if ph.startswith("extract-"))
    epoch_seconds = [row.seconds for row in summary.epochs]
    # The trainer checkpoints after every epoch, outside its per-epoch "seconds". The gaps between
    # consecutive epoch records in metrics.jsonl are the whole loop iteration: epoch + checkpoint.
    stamps = [json.loads(line)["time"] for line in (out / "output" / "metrics.jsonl").read_text().splitlines()
              if line.strip() and json.loads(line).get("type") == "epoch"]
    loop_seconds = [b - a for a, b in zip(stamps, stamps[1:])]
    steps = summary.steps
    train_steps = [(d, c) for d, c in zip(steps["data_seconds"], steps["compute_seconds"])]
    return {
        "mode": mode,
        "extract_wall": sum(extract_wall),
        "extract_batches": extract_batches,
        "epoch_seconds": epoch_seconds,
        "median_epoch": statistics.median(epoch_seconds),
        "median_loop": statistics.median(loop_seconds) if loop_seconds else math.nan,
        "total": total,
        "train_step_data": sum(d for d, _ in train_steps) / len(epoch_seconds),
        "train_step_compute": sum(c for _, c in train_steps) / len(epoch_seconds),
        "steps_per_epoch": len(train_steps) / len(epoch_seconds),
        "test_acc": summary.test.test_acc,
        "test_loss": summary.test.test_loss,
        "val_acc": [row.val_acc for row in summary.epochs],
        "confusion": summary.confusion["matrix"],
        "state": torch.load(out / "model" / "model.pth", weights_only=True),
    }


def warm_up(args):
    """One untimed forward pass so neither mode pays for first-call setup (allocator, kernel choice)."""
    model = create_model(args.arch, 2, "none", "head").eval()
    with torch.inference_mode():
        model(torch.randn(args.batch_size, 3, args.image_size, args.image_size))


# ------------------------------------------------------------------------------------------ reporting

def fmt_s(x: float) -> str:
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(results: dict, dataset: dict, args, facts, gen_seconds: float, bench_seconds: float,
           busy: dict):
    c, u = results["cached"], results["uncached"]
    n_train = sum(dataset["counts"]["train"].values())
    n_valid = sum(dataset["counts"]["valid"].values())
    n_test = sum(dataset["counts"]["test"].values())
    print()
    print("== cached vs uncached head training: ONE run on THIS machine (not an average) ==")
    for k, v in facts:
        print(f"  {k:14s} {v}")
    print(f"  {'dataset':14s} {len(dataset['classes'])} classes; {n_train} train / {n_valid} valid / "
          f"{n_test} test images, stored {args.min_side}-{args.max_side} px, generated in {fmt_s(gen_seconds)}")
    print(f"  {'run':14s} {args.arch}, weights none, {args.image_size} px, batch {args.batch_size}, "
          f"{args.epochs} epochs, seed {args.seed}, {args.num_workers} loader workers, "
          f"order {args.order}")
    print()
    rows = [["mode", "extract (one-off)", "median epoch", "epochs min..max", "epoch+checkpoint", "total wall",
             "test acc"]]
    for r in (c, u):
        rows.append([r["mode"], fmt_s(r["extract_wall"]) if r["mode"] == "cached" else "-",
                     fmt_s(r["median_epoch"]),
                     f"{min(r['epoch_seconds']):.3f}..{max(r['epoch_seconds']):.3f}",
                     fmt_s(r["median_loop"]) if not math.isnan(r["median_loop"]) else "-",
                     fmt_s(r["total"]), f"{r['test_acc']:.4f}"])
    print(table(rows))
    print()
    print("  epoch = train + validation (the trainer's per-epoch 'seconds').")
    print("  epoch+checkpoint = median gap between epoch records in metrics.jsonl: adds the checkpoint the trainer")
    print("  writes after every epoch (needs 2+ epochs).")
    print("  total = wall time of train.run(): setup + extraction + epochs + checkpoints + test + model dir, report.")
    print(f"  cached extraction: {fmt_s(c['extract_wall'])} wall for {n_train + n_valid + n_test} images "
          f"(sum of extract-* batch times {fmt_s(c['extract_batches'])}).")
    for r in (c, u):
        plural = "s" if r["steps_per_epoch"] != 1 else ""
        print(f"  {r['mode']:8s} per epoch: {r['steps_per_epoch']:.0f} train step{plural}, "
              f"{fmt_s(r['train_step_data'])} waiting for data + {fmt_s(r['train_step_compute'])} compute "
              f"(rest of the epoch: validation and loop overhead)")
    print()
    epoch_ratio = u["median_epoch"] / c["median_epoch"]
    total_ratio = u["total"] / c["total"]
    print(f"  median epoch ratio  uncached / cached = {fmt_s(u['median_epoch'])} / {fmt_s(c['median_epoch'])}"
          f" = {epoch_ratio:.1f}x")
    if not math.isnan(c["median_loop"]):
        print(f"    incl. checkpoint  uncached / cached = {fmt_s(u['median_loop'])} / {fmt_s(c['median_loop'])}"
              f" = {u['median_loop'] / c['median_loop']:.1f}x")
    print(f"  total ratio         uncached / cached = {fmt_s(u['total'])} / {fmt_s(c['total'])}"
          f" = {total_ratio:.2f}x  (cached total includes the one-off extraction; "
          f"{args.epochs} epoch{'s' if args.epochs != 1 else ''})")
    saving = u["median_epoch"] - c["median_epoch"]
    if saving > 0:
        simple = c["extract_wall"] / saving
        # Everything outside the epochs (setup, extraction, test pass, writing outputs) in each mode:
        # cached wins an N-epoch run when fixed_c + N * cached_epoch < fixed_u + N * uncached_epoch.
        fixed_c = c["total"] - sum(c["epoch_seconds"])
        fixed_u = u["total"] - sum(u["epoch_seconds"])
        whole = (fixed_c - fixed_u) / saving
        print(f"  break-even          one-off extraction / per-epoch saving = {fmt_s(c['extract_wall'])} / "
              f"{fmt_s(saving)} = {simple:.2f} epochs")
        print(f"                      counting all non-epoch time of both runs (setup, checkpoints, test pass,"
              f" outputs): {whole:.2f} epochs")
        verdict = ("from the first epoch" if whole <= 0 else
                   f"for runs longer than {whole:.2f} epochs, i.e. {math.floor(whole) + 1} or more")
        print(f"                      -> projected from these timings, caching comes out ahead {verdict}")
    else:
        print("  break-even          none: the cached epoch was not faster in this run")
    print()
    acc_diff = abs(c["test_acc"] - u["test_acc"])
    weight_diff = max((c["state"][k].float() - u["state"][k].float()).abs().max().item() for k in c["state"])
    same_confusion = c["confusion"] == u["confusion"]
    val_diff = max(abs(a - b) for a, b in zip(c["val_acc"], u["val_acc"]))
    print(f"  same quality?       test acc cached {c['test_acc']:.4f} vs uncached {u['test_acc']:.4f}: "
          f"difference {acc_diff:.4f}")
    print(f"                      test confusion matrices {'identical' if same_confusion else 'DIFFER'}; "
          f"largest val acc difference over the epochs {val_diff:.4f}")
    print(f"                      largest |weight difference| between the two saved models {weight_diff:.2e}")
    print(f"  (accuracy is near chance, 1/{len(dataset['classes'])} = {1 / len(dataset['classes']):.2f}, by design: "
          "--weights none means a random, frozen")
    print("   backbone. The bench is about speed at equal quality, not about accuracy.)")
    print()
    print(f"  bench wall time {fmt_s(bench_seconds)} (incl. dataset generation and 2 s of load sampling).")
    print("  These numbers come from this one run on this machine; the 'epochs min..max' column shows how much")
    print("  epochs doing identical work varied within it.")
    spreads = {r["mode"]: max(r["epoch_seconds"]) / min(r["epoch_seconds"]) for r in (c, u)
               if len(r["epoch_seconds"]) > 1 and min(r["epoch_seconds"]) > 0}
    uneven = {m: x for m, x in spreads.items() if x > 2}
    if uneven:
        print("  NOTE: epochs doing identical work took up to "
              + ", ".join(f"{x:.1f}x as long as each other ({m})" for m, x in uneven.items()) + ":")
        print("  probably the machine's load changed during the run, so the ratios above are rough; rerun to compare.")
    if max(busy.values()) > 25:
        threads = f"{args.threads} thread" + ("s" if args.threads != 1 else "")
        print(f"  NOTE: other processes were using up to {max(busy.values()):.0f}% of the CPUs when a mode started;"
              f" they compete with")
        print(f"  torch's {threads}, which inflates and scatters the timings (with 2+ threads every parallel op")
        print("  waits for its slowest thread). Rerun on an idle machine"
              + (", or compare with --threads 1." if args.threads != 1 else "."))


def main(argv=None) -> int:
    args = parse_args(argv)
    bench_started = time.perf_counter()
    busy: dict[str, float] = {}
    torch.set_num_threads(args.threads)  # once, before any work: both modes see the same setting
    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-cached-"))
    try:
        print(f"generating dataset in {work} ...", flush=True)
        dataset = generate_dataset(work / "data", num_classes=args.classes, train_per_class=args.train_per_class,
                                   valid_per_class=args.valid_per_class, test_per_class=args.test_per_class,
                                   seed=args.seed, min_side=args.min_side, max_side=args.max_side)
        gen_seconds = dataset["seconds"]
        warm_up(args)
        order = MODES if args.order == "cached-first" else MODES[::-1]
        results = {}
        for mode in order:
            busy[mode] = others_cpu_percent()
            print(f"training {mode} ({args.epochs} epochs; other processes were using {busy[mode]:.0f}% of the"
                  " CPUs) ...", flush=True)
            results[mode] = run_mode(mode, work / "data", work, args)
            r = results[mode]
            print(f"  done in {fmt_s(r['total'])}; epochs: {', '.join(f'{s:.3f}' for s in r['epoch_seconds'])} s",
                  flush=True)
        report(results, dataset, args, machine_facts(busy), gen_seconds, time.perf_counter() - bench_started,
               busy)
    except BaseException:
        args.keep = True  # leave the trainer logs for a post-mortem
        raise
    finally:
        if args.keep:
            print(f"\nkept {work} (data/, cached/, uncached/, *.log)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
