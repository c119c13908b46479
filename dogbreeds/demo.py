"""The main job on the local default: generate labelled images, train, classify held-out images.

    python -m dogbreeds.demo [--classes 6] [--epochs 8] [--workdir runs/demo]

It runs ``training/train.py`` exactly as SageMaker's training toolkit would (a subprocess with the
``SM_*`` environment and JSON-encoded ``--name value`` hyperparameters), packs the model directory as
``model.tar.gz``, loads ``code/inference.py`` from the extracted archive, and prints the top breeds for
a few test images.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from dogbreeds.synthetic import generate_dataset

ROOT = Path(__file__).resolve().parent.parent


def train_like_sagemaker(data: Path, workdir: Path, hyperparameters: dict) -> Path:
    """Run train.py under the script-mode contract, streaming its log; return the model directory."""
    model_dir, output_dir = workdir / "model", workdir / "output"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KINETO_LOG_LEVEL": "5",
           "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(output_dir), "SM_OUTPUT_DIR": str(workdir),
           "SM_HPS": json.dumps(hyperparameters), "SM_CHANNELS": json.dumps(["test", "train", "valid"]),
           "SM_NUM_CPUS": str(os.cpu_count() or 1), "SM_NUM_GPUS": "0"}
    env.update({f"SM_CHANNEL_{split.upper()}": str(data / split) for split in ("train", "valid", "test")})
    argv = [arg for name, value in hyperparameters.items() for arg in (f"--{name}", json.dumps(value))]
    proc = subprocess.Popen([sys.executable, str(ROOT / "training" / "train.py"), *argv], env=env, cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith(("epoch=", "test_")) or " WARNING " in line or " ERROR " in line or "INFO train:" in line:
            print("   |", line.rstrip().split(" train: ")[-1])
    if proc.wait():
        raise SystemExit(f"training failed (exit {proc.returncode}); see {workdir}")
    return model_dir


def load_packaged_handlers(model_dir: Path, workdir: Path):
    """tar czf model.tar.gz -C model_dir . ; extract elsewhere; import code/inference.py from there."""
    archive = workdir / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    served = workdir / "served"
    shutil.rmtree(served, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(served, filter="data")
    spec = importlib.util.spec_from_file_location("inference", served / "code" / "inference.py")
    handlers = importlib.util.module_from_spec(spec)
    sys.modules["inference"] = handlers
    spec.loader.exec_module(handlers)
    return handlers, handlers.model_fn(str(served)), archive


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "demo")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--train-per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--show", type=int, default=6, help="how many test images to classify")
    args = parser.parse_args(argv)
    started = time.monotonic()
    shutil.rmtree(args.workdir, ignore_errors=True)  # a fresh run, not a resume of the last demo
    args.workdir.mkdir(parents=True)

    data = args.workdir / "data"
    print(f"1/3 generating {args.classes} classes of labelled images into {data}")
    summary = generate_dataset(data, num_classes=args.classes, train_per_class=args.train_per_class,
                               valid_per_class=10, test_per_class=10, seed=0, min_side=64, max_side=160)
    print(f"   | {summary['images']} JPEG images in {summary['seconds']:.1f}s")

    hyperparameters = {"arch": "resnet18", "epochs": args.epochs, "batch-size": 32, "lr": 0.003,
                       "finetune": "full", "augment": "flip", "weights": "none", "image-size": 64,
                       "early-stopping-patience": 0, "seed": 0}
    print("2/3 training resnet18 under the SageMaker script-mode contract (weights=none: no internet here)")
    model_dir = train_like_sagemaker(data, args.workdir, hyperparameters)

    print("3/3 serving held-out test images through code/inference.py from model.tar.gz")
    handlers, model, archive = load_packaged_handlers(model_dir, args.workdir)
    images = sorted((data / "test").rglob("*.jpg"))[:: max(1, len(list((data / "test").rglob("*.jpg"))) // args.show)]
    right = 0
    for path in images[: args.show]:
        request = handlers.input_fn(path.read_bytes(), "image/jpeg")
        body, _ = handlers.output_fn(handlers.predict_fn(request, model), "application/json; top_k=3")
        top = json.loads(body)["predictions"]
        truth = path.parent.name
        right += top[0]["class"] == truth
        guesses = ", ".join(f"{p['label']} {p['probability']:.0%}" for p in top)
        print(f"   | {'ok ' if top[0]['class'] == truth else 'MISS'} {path.name:<34} true {truth.split('.', 1)[1]:<22} top-3: {guesses}")

    metrics = json.loads((model_dir / "model.json").read_text())["metrics"]
    diagnostics = json.loads((args.workdir / "output" / "diagnostics.json").read_text())
    print(f"\ndone in {time.monotonic() - started:.0f}s: test accuracy {metrics['test_acc']:.1%} "
          f"(chance {1 / args.classes:.0%}), {right}/{min(len(images), args.show)} shown images right")
    print(f"   rules with issues: {', '.join(diagnostics['issues_found']) or 'none'}")
    print(f"   report:   {args.workdir / 'output' / 'report.html'}")
    print(f"   model:    {archive}")
    print(f"   log data: {args.workdir / 'output' / 'metrics.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
