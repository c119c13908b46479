"""The trainer end to end: script-mode contract, the cached fast path, resume, data problems, weights.

Every run here really trains, on small generated images at 64 px on the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from paths import ROOT
from training_support import SAGEMAKER_METRIC_DEFINITIONS, run_training, train_args

from chalicelib.sagemaker_requests import decode_hyperparameter as control_plane_decode
from dogbreeds.synthetic import generate_dataset
from model_code.inference import ARCHITECTURES
from training import data as data_lib
from training import train
from training.models import (FINETUNE_MODES, WEIGHTS_FALLBACKS, WeightsUnavailable, create_model,
                             imagenet_weights_file, pretrained_state)

TRAIN_PY = ROOT / "training" / "train.py"


def sagemaker_env(data: Path, out: Path, hps: dict) -> dict:
    """The environment SageMaker's training toolkit gives the entry point."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
    env.update({
        "SM_CHANNEL_TRAIN": str(data / "train"), "SM_CHANNEL_VALID": str(data / "valid"),
        "SM_CHANNEL_TEST": str(data / "test"), "SM_CHANNELS": json.dumps(["test", "train", "valid"]),
        "SM_MODEL_DIR": str(out / "model"), "SM_OUTPUT_DATA_DIR": str(out / "output"),
        "SM_OUTPUT_DIR": str(out), "SM_HPS": json.dumps(hps), "SM_NUM_GPUS": "0", "SM_NUM_CPUS": "2",
        "PYTHONUNBUFFERED": "1", "KINETO_LOG_LEVEL": "5",
    })
    return env


def as_toolkit_argv(hps: dict) -> list[str]:
    """SageMaker passes each hyperparameter as --name value, strings JSON-encoded by the SDK."""
    argv = []
    for name, value in hps.items():
        argv += [f"--{name}", json.dumps(value)]
    return argv


def load_handlers(code_dir: Path):
    spec = importlib.util.spec_from_file_location(f"inference_{abs(hash(code_dir))}", code_dir / "inference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as a normal import would (its dataclasses look themselves up there)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ script-mode contract

def test_script_mode_run_learns_logs_sagemaker_metrics_and_writes_a_deployable_artifact(dataset5, tmp_path):
    hps = {"arch": "resnet18", "epochs": 8, "batch-size": 32, "lr": 0.003, "weight-decay": 0.01,
           "eps": 1e-8, "finetune": "full", "augment": "flip", "weights": "none", "image-size": 64,
           "seed": 0, "early-stopping-patience": 0, "num-workers": 1, "_tuning_objective_metric": "val_acc"}
    proc = subprocess.run([sys.executable, str(TRAIN_PY), *as_toolkit_argv(hps)], cwd=tmp_path,
                          env=sagemaker_env(dataset5, tmp_path, hps), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()

    epoch_lines = [line for line in lines if line.startswith("epoch=")]
    assert [int(re.match(r"epoch=(\d+)", line).group(1)) for line in epoch_lines] == list(range(1, 9))
    values = {d["Name"]: [float(m.group(1)) for line in lines for m in [re.search(d["Regex"], line)] if m]
              for d in SAGEMAKER_METRIC_DEFINITIONS}
    for name in ("train:loss", "train:accuracy", "validation:loss", "validation:accuracy"):
        assert len(values[name]) == 8, name
    assert len(values["test:accuracy"]) == len(values["test:loss"]) == 1
    test_acc = values["test:accuracy"][0]
    assert test_acc >= 0.6, f"test accuracy {test_acc} is not far above chance (0.2)"
    assert values["train:loss"][-1] < values["train:loss"][0]

    model_dir = tmp_path / "model"
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["classes"] == sorted(p.name for p in (dataset5 / "train").iterdir())
    assert meta["labels"][0] == "Affenpinscher" and meta["arch"] == "resnet18" and meta["image_size"] == 64
    assert meta["metrics"]["test_acc"] == pytest.approx(test_acc, abs=1e-4)
    assert meta["hyperparameters"]["lr"] == 0.003 and meta["hyperparameters"]["finetune"] == "full"
    # output/ is what SageMaker uploads as output.tar.gz: the checkpoints stay in $SM_OUTPUT_DIR
    assert set(os.listdir(tmp_path / "output")) == {"diagnostics.json", "metrics.jsonl", "report.html",
                                                    "profiler-trace.json"}
    assert (tmp_path / "checkpoints" / "checkpoint.pth").is_file()
    trace = json.loads((tmp_path / "output" / "profiler-trace.json").read_text())
    assert any("conv" in e.get("name", "") for e in trace["traceEvents"])

    # The artifact as SageMaker packs it: tar czf model.tar.gz -C $SM_MODEL_DIR .
    archive = tmp_path / "model.tar.gz"
    subprocess.run(["tar", "czf", str(archive), "-C", str(model_dir), "."], check=True)
    served = tmp_path / "served"
    with tarfile.open(archive) as tar:
        tar.extractall(served, filter="data")
    handlers = load_handlers(served / "code")
    model = handlers.model_fn(str(served))
    test_images = sorted((dataset5 / "test").rglob("*.jpg"))
    correct = 0
    for path in test_images:
        request = handlers.input_fn(path.read_bytes(), "image/jpeg")
        body, content_type = handlers.output_fn(handlers.predict_fn(request, model), "application/json")
        top = json.loads(body)["predictions"]
        assert content_type == "application/json" and len(top) == 5
        assert sum(p["probability"] for p in top) == pytest.approx(1.0, abs=1e-4)
        correct += top[0]["class"] == path.parent.name
    # Served predictions are the evaluated ones: same decode, same transform, same weights.
    assert correct / len(test_images) == pytest.approx(test_acc, abs=1.5 / len(test_images))


def test_hyperparameters_decode_json_values_and_sm_hps_with_cli_precedence():
    env = {"SM_HPS": json.dumps({"lr": 0.5, "arch": "resnet34", "epochs": 4}), "SM_MODEL_DIR": "/m",
           "SM_NUM_CPUS": "4"}
    args = train.parse_args(['--lr', '"0.01"', "--batch-size", "64", "--finetune", '"full"',
                             "--fail-on-exploding-tensor", "true", "--model-dir", "s3://bucket/model",
                             "--_tuning_objective_metric", "val_acc"], env=env)
    assert args.lr == 0.01 and args.arch == "resnet34" and args.epochs == 4 and args.batch_size == 64
    assert args.finetune == "full" and args.augment == "standard" and args.fail_on_exploding_tensor is True
    assert args.model_dir == "/m" and args.num_workers == 3
    with pytest.raises(SystemExit):
        train.parse_args(["--arch", "resnet9"], env={})


# Hyperparameter values as SageMaker passes them: SDK-encoded JSON, raw console text, and the awkward ones.
SAGEMAKER_VALUES = ['"head"', '0.001', '32', '1e-08', '-3', 'true', 'false', 'null', 'head', 'resnet18', '[1,2]',
                    '{"a": 1}', '', '"', '""', ' 7 ', '1,5', 'NaN', 'Infinity', '"0.001"', "'head'", 'True',
                    '/opt/ml/input/data/weights/resnet18.pth', '{"unclosed": ', '\u00e9']


def test_the_trainer_and_the_control_plane_decode_hyperparameters_alike():
    decoded = [train.decode_hyperparameter(text) for text in SAGEMAKER_VALUES]
    assert decoded == [control_plane_decode(text) for text in SAGEMAKER_VALUES]
    # and the rule is "JSON, else the raw text"
    assert decoded[:9] == ["head", 0.001, 32, 1e-08, -3, True, False, None, "head"]
    assert decoded[SAGEMAKER_VALUES.index("")] == "" and decoded[SAGEMAKER_VALUES.index('"')] == '"'
    assert decoded[SAGEMAKER_VALUES.index("[1,2]")] == [1, 2] and decoded[SAGEMAKER_VALUES.index(" 7 ")] == 7


def test_the_choice_lists_are_the_owning_modules_and_every_default_is_one_of_them():
    actions = {a.dest: a for a in train.get_args_parser(env={})._actions}
    assert actions["arch"].choices == ARCHITECTURES == ("resnet18", "resnet34", "resnet50")
    assert actions["finetune"].choices == FINETUNE_MODES == ("head", "full")
    assert actions["augment"].choices == train.AUGMENT_MODES == ("auto", *data_lib.AUGMENTATIONS)
    assert actions["weights_fallback"].choices == WEIGHTS_FALLBACKS == ("error", "none")
    assert actions["feature_cache"].choices == train.FEATURE_CACHE_MODES == ("auto", "off")
    for name, choices in train.CHOICES.items():
        assert train.DEFAULTS[name] in choices, name


# ----------------------------------------------------------------------------------- cached fast path

def test_cached_features_train_the_same_head_as_the_uncached_loop(dataset5, tmp_path):
    common = ("--finetune=head", "--augment=none", "--lr=0.01", "--epochs=6", "--early-stopping-patience=0")
    cached = run_training(dataset5, tmp_path / "cached", *common)
    uncached = run_training(dataset5, tmp_path / "uncached", *common, "--feature-cache=off")
    assert cached.job["mode"] == "cached" and uncached.job["mode"] == "frozen"
    for a, b in zip(cached.epochs, uncached.epochs):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-3)
        assert a.val_acc == pytest.approx(b.val_acc, abs=0.021)  # at most one image in 50
    assert cached.test.test_acc == pytest.approx(uncached.test.test_acc, abs=0.021)
    head_cached = torch.load(tmp_path / "cached/model/model.pth", weights_only=True)["fc.weight"]
    head_uncached = torch.load(tmp_path / "uncached/model/model.pth", weights_only=True)["fc.weight"]
    assert torch.allclose(head_cached, head_uncached, atol=1e-3)
    # the cached run never ran the backbone during its epochs: no loader batches after extraction
    assert set(cached.loader_batches["phase"]) == {"extract-train", "extract-valid", "extract-test"}


# ------------------------------------------------------------------------------------------- resume

def _start(dataset, out, *extra):
    return subprocess.Popen([sys.executable, str(TRAIN_PY), *train_args(dataset, out, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "KINETO_LOG_LEVEL": "5"})


def test_a_killed_job_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(dataset5, tmp_path):
    config = ("--finetune=head", "--augment=none", "--feature-cache=off", "--lr=0.01", "--epochs=5",
              "--early-stopping-patience=0")
    reference = run_training(dataset5, tmp_path / "reference", *config)

    out = tmp_path / "interrupted"
    proc = _start(dataset5, out, *config)
    for line in proc.stdout:  # kill it hard (a spot interruption) right after epoch 2 is logged
        if line.startswith("epoch=2 "):
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode != 0
    checkpoint = torch.load(out / "output/checkpoints/checkpoint.pth", weights_only=True)
    interrupted_after = checkpoint["epoch"]
    assert 1 <= interrupted_after < 5  # the epoch-2 checkpoint may not be written yet when killed

    resumed = _start(dataset5, out, *config)
    text, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, text[-3000:]
    assert f"resumed from {out / 'output/checkpoints/checkpoint.pth'} after epoch {interrupted_after}" in text
    epochs_logged = [int(m) for m in re.findall(r"^epoch=(\d+) ", text, re.M)]
    assert epochs_logged == list(range(interrupted_after + 1, 6))
    test_acc = float(re.search(r"test_acc=([0-9.]+)", text).group(1))
    assert test_acc == pytest.approx(reference.test.test_acc, abs=0.021)
    history = json.loads((out / "model/model.json").read_text())["metrics"]
    assert history["epochs_run"] == 5
    assert history["best_val_acc"] == pytest.approx(max(e.val_acc for e in reference.epochs), abs=0.021)


def test_a_checkpoint_from_other_hyperparameters_is_not_resumed(dataset5, tmp_path):
    run_training(dataset5, tmp_path, "--lr=0.01", "--epochs=2")
    again = run_training(dataset5, tmp_path, "--lr=0.02", "--epochs=2")
    assert [e.epoch for e in again.epochs] == [1, 2]


# ------------------------------------------------------------------------------------- data problems

def test_unreadable_images_are_reported_with_their_paths_and_skipped(dataset_copy, tmp_path):
    cls = dataset_copy / "train" / "001.Affenpinscher"
    good = sorted(cls.glob("*.jpg"))[0].read_bytes()
    (cls / "empty.jpg").write_bytes(b"")
    (cls / "notes.jpg").write_text("these are not pixels")
    (cls / "truncated.jpg").write_bytes(good[: len(good) // 2])
    summary = run_training(dataset_copy, tmp_path / "out", "--feature-cache=off", "--epochs=1")
    skipped = {Path(s["path"]).name: s["reason"] for s in summary.dataset["skipped_images"]}
    assert set(skipped) == {"empty.jpg", "notes.jpg", "truncated.jpg"}
    assert "truncated" in skipped["truncated.jpg"]
    assert summary.status == "Completed"
    # empty and text files fail the header check at planning; the truncated one only when decoded
    assert sum(summary.dataset["class_counts"]["train"].values()) == 201
    assert summary.steps["step"][-1] == 7  # ceil(201 / 32) batches, the truncated image dropped from one


def test_missing_valid_and_test_are_split_from_train_stratified_and_seeded(tmp_path):
    generate_dataset(tmp_path, num_classes=3, train_per_class=20, valid_per_class=0, test_per_class=0,
                     seed=1, splits=("train",), min_side=40, max_side=48)
    plan = data_lib.plan_dataset(tmp_path / "train", tmp_path / "valid", None, seed=7)
    again = data_lib.plan_dataset(tmp_path / "train", None, None, seed=7)
    assert plan.derived_splits == ["valid", "test"]
    assert plan.class_counts() == {s: dict.fromkeys(plan.classes, n)
                                   for s, n in (("train", 16), ("valid", 2), ("test", 2))}
    assert plan.samples == again.samples
    assert not set(plan.samples["train"]) & set(plan.samples["valid"])


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "train").rename(root / "training"), "train channel not found"),
    (lambda root: (root / "valid" / "999.Unicorn").mkdir(), "valid has class folders that train lacks: 999.Unicorn"),
    (lambda root: [p.unlink() for p in (root / "train" / "002.Afghan_hound").iterdir()],
     "have no readable images: 002.Afghan_hound"),
])
def test_a_broken_layout_fails_before_training_with_a_clear_reason(dataset_copy, tmp_path, damage, message, capsys):
    damage(dataset_copy)
    (tmp_path / "sm").mkdir()
    argv = train_args(dataset_copy, tmp_path)
    assert train.main(argv) == 2
    assert message in capsys.readouterr().out
    diagnostics = json.loads((tmp_path / "output" / "diagnostics.json").read_text())
    assert diagnostics["status"] == "Failed" and message in diagnostics["failure_reason"]


def test_failure_reason_is_written_where_sagemaker_reads_it(dataset_copy, tmp_path, monkeypatch):
    (dataset_copy / "train").rename(dataset_copy / "elsewhere")
    monkeypatch.setenv("SM_OUTPUT_DIR", str(tmp_path))
    assert train.main(train_args(dataset_copy, tmp_path)) == 2
    assert (tmp_path / "failure").read_text().startswith("DatasetError: train channel not found")


# --------------------------------------------------------------------------------------------- weights

def test_weights_from_a_file_are_loaded_and_the_head_is_new(tmp_path):
    source = create_model("resnet18", 10, "none", "full")
    torch.save(source.state_dict(), tmp_path / "backbone.pth")
    model = create_model("resnet18", 3, str(tmp_path / "backbone.pth"), "head")
    assert torch.equal(model.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert model.fc.out_features == 3
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    with pytest.raises(WeightsUnavailable, match="do not fit resnet34"):
        create_model("resnet34", 3, str(tmp_path / "backbone.pth"), "head")


def test_imagenet_weights_come_from_the_torch_hub_cache_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = create_model("resnet18", 1000, "none", "full").state_dict()
    cached = imagenet_weights_file("resnet18")
    assert cached.name == "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(reference, cached)
    state = pretrained_state("resnet18", "imagenet")
    assert torch.equal(state["layer1.0.conv1.weight"], reference["layer1.0.conv1.weight"])


def test_unavailable_imagenet_weights_fail_with_instructions(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.models._api as api

    def offline(*_args, **_kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable) as info:
        pretrained_state("resnet50", "imagenet")
    message = str(info.value)
    assert str(imagenet_weights_file("resnet50")) in message and "--weights none" in message
    assert "Name or service not known" in message
