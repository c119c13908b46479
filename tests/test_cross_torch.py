"""A model trained under one torch serves under the other: ours (.venv, requirements/training.txt) and the
SageMaker PyTorch containers' (.venv-containers, requirements/containers.txt, `make setup-containers`).

Each venv trains a small model with training/train.py; each model is then served by
tests/cross_torch_serve.py (model_fn, input_fn, predict_fn, output_fn from the artifact's code/) under the
venv that trained it and under the other one, and the two answers must agree. Skipped when a venv is
missing, except under `make test-containers` (DOGBREEDS_CROSS_TORCH=required), where that is a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from paths import ROOT
from training_support import train_args

from chalicelib.config import FrameworkConfig

VENVS = {"ours": ROOT / ".venv", "containers": ROOT / ".venv-containers"}
REQUIREMENTS = {"ours": ROOT / "requirements" / "training.txt", "containers": ROOT / "requirements" / "containers.txt"}
SERVE_PY = ROOT / "tests" / "cross_torch_serve.py"
TRAIN_PY = ROOT / "training" / "train.py"
REQUIRED = os.environ.get("DOGBREEDS_CROSS_TORCH") == "required"

# Same weights, same handlers, same decoded pixels (Pillow 13 and 11.3 decode these JPEGs alike), but
# torchvision 0.29 and 0.21 resize with different rounding: about a sixth of the input values differ by one
# grey level, which moved the trained models' probabilities by at most 8.3e-4 (the network alone, on the same
# input, answers identically). The tolerance leaves 12x room for other CPUs' training; a wrong transform, a
# wrong state_dict or another label order moves probabilities by tenths or changes the top class.
PROBABILITY_TOLERANCE = 1e-2
# The comparison serves eager fp32 on both sides (DOGBREEDS_INFERENCE_VARIANT=eager): model_fn would otherwise
# serve the fastest serving variant that passed training's check, and bf16's drift from eager (bounded by
# top-class agreement, not by probabilities: tests/test_inference_variants.py) differs between the two torches'
# oneDNN builds, so it would measure the variants, not whether the artifact means the same under both.
SERVE_ENV = {"DOGBREEDS_INFERENCE_VARIANT": "eager"}


def python_of(venv: str) -> Path:
    return VENVS[venv] / "bin" / "python"


def pinned(requirements: Path, package: str) -> str:
    """The ``package==X`` version pinned in a requirements file."""
    for line in requirements.read_text().splitlines():
        name, _, version = line.split("#", 1)[0].strip().partition("==")
        if name == package:
            return version
    raise LookupError(f"{package} is not pinned in {requirements}")


@pytest.fixture(scope="module")
def venvs() -> dict[str, Path]:
    """Both interpreters, or a skip (a failure under DOGBREEDS_CROSS_TORCH=required) saying which is missing."""
    missing = [f"{python_of(name)}" for name in VENVS if not python_of(name).is_file()]
    if missing:
        reason = (f"cross-torch check needs both venvs; missing {', '.join(missing)} "
                  "(`make setup` and `make setup-containers` create them)")
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    return {name: python_of(name) for name in VENVS}


def run(python: Path, *args, cwd: Path, extra_env: dict[str, str] | None = None) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "PYTHON", "VIRTUAL_ENV", "DOGBREEDS_INFERENCE_VARIANT"))}
    env["KINETO_LOG_LEVEL"] = "5"
    env.update(extra_env or {})
    proc = subprocess.run([str(python), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"{python} {args[0]}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def models(venvs, dataset5, tmp_path_factory) -> dict[str, Path]:
    """The model directory each venv trained on dataset5 (full fine-tuning from scratch, a few epochs)."""
    trained = {}
    for name, python in venvs.items():
        out = tmp_path_factory.mktemp(f"trained-{name}")
        run(python, TRAIN_PY, *train_args(dataset5, out, "--arch=resnet18", "--finetune=full", "--epochs=4",
                                          "--early-stopping-patience=0", "--batch-size=32", "--lr=0.003"),
            cwd=out)
        trained[name] = out / "model"
    return trained


def served(venvs, model_dir: Path, venv: str, images: list[Path], tmp_path: Path) -> dict:
    """What cross_torch_serve.py wrote serving ``model_dir`` under ``venv``."""
    out = tmp_path / f"served-{model_dir.parent.name}-by-{venv}.json"
    run(venvs[venv], SERVE_PY, model_dir, out, *images, cwd=tmp_path, extra_env=SERVE_ENV)
    answer = json.loads(out.read_text())
    assert answer["variant"] == "eager"
    return answer


def test_each_venv_has_the_versions_it_stands_for(venvs, dataset5, tmp_path, models):
    image = sorted((dataset5 / "test").rglob("*.jpg"))[:1]
    framework = FrameworkConfig()
    containers = served(venvs, models["ours"], "containers", image, tmp_path)
    # the versions the control plane configures for the SageMaker containers (chalicelib/config.py)
    assert containers["torch"].split("+")[0] == framework.pytorch_version == pinned(REQUIREMENTS["containers"], "torch")
    assert containers["python"].startswith(f"3.{framework.py_version.removeprefix('py3')}.")
    assert containers["torchvision"].split("+")[0] == pinned(REQUIREMENTS["containers"], "torchvision")
    ours = served(venvs, models["ours"], "ours", image, tmp_path)
    assert ours["torch"].split("+")[0] == pinned(REQUIREMENTS["ours"], "torch")
    assert ours["python"].startswith("3.11.")


@pytest.mark.parametrize("trained_by, served_by", [("ours", "containers"), ("containers", "ours")])
def test_a_model_trained_under_one_torch_serves_the_same_answers_under_the_other(
        venvs, dataset5, models, tmp_path, trained_by, served_by):
    images = sorted((dataset5 / "test").rglob("*.jpg"))
    model_dir = models[trained_by]
    at_home = served(venvs, model_dir, trained_by, images, tmp_path)["predictions"]
    abroad = served(venvs, model_dir, served_by, images, tmp_path)["predictions"]

    assert len(at_home) == len(abroad) == len(images)
    classes = sorted(p.name for p in (dataset5 / "train").iterdir())
    worst, decided = 0.0, 0
    for image, home, away in zip(images, at_home, abroad):
        assert sorted(p["class"] for p in home) == classes, image  # every class ranked
        if home[0]["probability"] - home[1]["probability"] > 2 * PROBABILITY_TOLERANCE:  # else a tie, either way
            assert away[0]["class"] == home[0]["class"], f"{image}: top {away[0]} under {served_by}, {home[0]}"
            decided += 1
        home_p = {p["class"]: p["probability"] for p in home}
        away_p = {p["class"]: p["probability"] for p in away}
        worst = max(worst, *(abs(home_p[c] - away_p[c]) for c in classes))
    assert decided >= 0.9 * len(images), f"only {decided} of {len(images)} images have a clear top class"
    assert worst <= PROBABILITY_TOLERANCE, f"probabilities differ by up to {worst} ({trained_by} -> {served_by})"
    # the model learned something (else agreeing answers would say little): most top classes are right
    correct = sum(home[0]["class"] == image.parent.name for image, home in zip(images, at_home))
    assert correct / len(images) >= 0.6
    print(f"{trained_by} -> {served_by}: probabilities differ by at most {worst:.2e}; "
          f"{correct} of {len(images)} top classes right")
